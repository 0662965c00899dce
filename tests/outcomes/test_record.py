"""Recording outcomes: reached, not reached with retries, unreachable, late, separation asked."""

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

TOKYO = ZoneInfo("Asia/Tokyo")


def at(day: str, hour: int = 10) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time().replace(hour=hour), TOKYO)


def first_phone_call(api, placement_id: int) -> dict:
    rows = api.follow_ups("a.worker", placement_id)
    return next(r for r in rows if r["channel"] == "phone" and r["party"] == "client")


def outcome(api, fu_id: int, who: str = "a.worker", **body):
    return api.post(who, f"/api/v1/follow-ups/{fu_id}/outcome", {"reached": True} | body)


def test_reached_marks_done_and_stores_the_outcome(api, clock):
    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])
    assert fu["due_date"] == "2026-04-21"
    clock.set(at("2026-04-21"))
    body = api.ok(
        outcome(api, fu["id"], still_employed="yes", wellbeing=4, risk_signals=["money", "money"], note="元気"),
        201,
    )
    assert body["follow_up"]["status"] == "done"
    assert body["follow_up"]["completed_at"].startswith("2026-04-21T01:00:00")  # 10:00 JST in UTC
    o = body["outcome"]
    assert (o["reached"], o["still_employed"], o["wellbeing"], o["late"]) == (True, "yes", 4, False)
    assert o["risk_signals"] == ["money"]  # duplicates folded
    assert o["recorded_by"] == api.world.users["a.worker"]
    assert body["separation_required"] is False and body["retry"] is None
    # Recording twice is refused: the first outcome stands.
    r = outcome(api, fu["id"])
    assert r.status_code == 409 and "already done" in r.json()["detail"]


def test_not_reached_twice_retried_then_unreachable(api, clock):
    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])
    clock.set(at("2026-04-21", 15))
    first = api.ok(outcome(api, fu["id"], reached=False), 201)
    assert first["follow_up"]["status"] == "attempted"
    retry1 = first["retry"]
    assert (retry1["kind"], retry1["attempt"], retry1["due_date"]) == ("retry", 1, "2026-04-22")
    assert retry1["retry_of"] == fu["id"] and retry1["status"] == "pending"
    assert first["outcome"]["unreachable"] is False

    # The attempted follow-up cannot take another outcome; the retry carries on.
    assert outcome(api, fu["id"], reached=False).status_code == 409

    clock.set(at("2026-04-22", 15))
    second = api.ok(outcome(api, retry1["id"], reached=False), 201)
    retry2 = second["retry"]
    assert (retry2["attempt"], retry2["due_date"], retry2["retry_of"]) == (2, "2026-04-23", fu["id"])

    clock.set(at("2026-04-23", 15))
    third = api.ok(outcome(api, retry2["id"], reached=False), 201)
    assert third["retry"] is None
    assert third["follow_up"]["status"] == "missed"
    assert third["outcome"]["unreachable"] is True
    assert "isolation" in third["outcome"]["risk_signals"]
    rows = {r["id"]: r for r in api.follow_ups("a.worker", p["id"])}
    assert rows[fu["id"]]["status"] == "missed"
    assert "unreachable" in rows[fu["id"]]["status_reason"]
    assert rows[retry1["id"]]["status"] == "attempted"


def test_retry_lands_on_the_next_business_day_across_golden_week(api, clock):
    # A call due Friday 1 May 2026: the next business day is Thursday 7 May
    # (Sat, Sun, then Constitution Day, Greenery Day, Children's Day and the substitute holiday).
    p = api.placement(start="2026-04-30")
    fu = first_phone_call(api, p["id"])
    assert fu["due_date"] == "2026-05-01"
    clock.set(at("2026-05-01", 16))
    body = api.ok(outcome(api, fu["id"], reached=False), 201)
    assert body["retry"]["due_date"] == "2026-05-07"


def test_reached_on_retry_completes_the_planned_contact(api, clock):
    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])
    clock.set(at("2026-04-21", 15))
    retry = api.ok(outcome(api, fu["id"], reached=False), 201)["retry"]
    clock.set(at("2026-04-22", 11))
    api.ok(outcome(api, retry["id"], reached=True, still_employed="yes"), 201)
    rows = {r["id"]: r for r in api.follow_ups("a.worker", p["id"])}
    assert rows[fu["id"]]["status"] == "done"
    assert rows[fu["id"]]["status_reason"] == "reached on retry 1"


def test_missed_follow_up_may_be_completed_late(api, clock, factory):
    from service.jobs import run_job

    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])  # due 21 April, window 2 days
    clock.set(at("2026-04-24", 9))
    assert run_job("mark_missed", factory, clock) >= 1
    assert api.ok(api.get("a.worker", f"/api/v1/follow-ups/{fu['id']}"))["status"] == "missed"
    body = api.ok(outcome(api, fu["id"], still_employed="yes"), 201)
    assert body["follow_up"]["status"] == "done"
    assert body["outcome"]["late"] is True


def test_late_when_recorded_after_the_window(api, clock):
    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])  # window ends 23 April
    clock.set(at("2026-04-24"))
    body = api.ok(outcome(api, fu["id"]), 201)
    assert body["outcome"]["late"] is True


def test_not_employed_asks_for_a_separation(api, clock):
    p = api.placement(start="2026-04-20")
    fu = first_phone_call(api, p["id"])
    clock.set(at("2026-04-21"))
    body = api.ok(outcome(api, fu["id"], still_employed="no"), 201)
    assert body["separation_required"] is True
    assert f"/api/v1/placements/{p['id']}/separation" in body["next_step"]
    # Once the separation is recorded nothing more is asked.
    api.ok(api.post("a.worker", f"/api/v1/placements/{p['id']}/separation",
                    {"date": "2026-04-21", "reason": "voluntary"}), 201)  # fmt: skip
    sep_call = next(r for r in api.follow_ups("a.worker", p["id"]) if r["kind"] == "separation_call")
    body = api.ok(outcome(api, sep_call["id"], still_employed="no"), 201)
    assert body["separation_required"] is False


@pytest.mark.parametrize("status", ["cancelled", "skipped"])
def test_no_outcome_on_cancelled_or_skipped(api, clock, status):
    client = api.client(consent_employer=False)
    p = api.placement(start="2026-04-20", client=client)
    if status == "cancelled":
        api.ok(api.post("a.worker", f"/api/v1/placements/{p['id']}/separation",
                        {"date": "2026-04-20", "reason": "health"}), 201)  # fmt: skip
    target = next(r for r in api.follow_ups("a.worker", p["id"]) if r["status"] == status)
    r = outcome(api, target["id"])
    assert r.status_code == 409
    assert status in r.json()["detail"]
