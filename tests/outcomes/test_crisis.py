"""Crisis flags: each shipped rule, signals merging into one flag, discordance, the same-day crisis
call at the top of the queue, the flag's life, the measures, office isolation, and the rules file.

The clock starts on Monday 20 April 2026, 09:00 in Tokyo. A placement started on Monday 13 April
(plan standard-3m) has: a client phone call due 14 April, an employer phone call due 20 April,
a client visit due 23 April, a three-party meeting due 27 April."""

from __future__ import annotations

import shutil
import threading
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import session_scope
from service.outcomes import crisis
from service.outcomes.models import CrisisFlag, CrisisSeverity
from service.settings import Settings

TOKYO = ZoneInfo("Asia/Tokyo")
ROOT = Path(__file__).resolve().parents[2]
RULES = crisis.load_crisis_rules(ROOT / "config" / "crisis_rules.toml")


def at(day: str, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time().replace(hour=hour, minute=minute), TOKYO)


def same_instant(api_value: str, day: str, hour: int = 10, minute: int = 0) -> bool:
    return datetime.fromisoformat(api_value.replace("Z", "+00:00")) == at(day, hour, minute)


def follow_up(api, placement_id: int, party: str, channel: str, kind: str | None = None) -> dict:
    return next(
        r
        for r in api.follow_ups("a.worker", placement_id)
        if r["party"] == party and r["channel"] == channel and r["status"] == "pending" and kind in (None, r["kind"])
    )


def record(api, fu_id: int, who: str = "a.worker", **body) -> dict:
    return api.ok(api.post(who, f"/api/v1/follow-ups/{fu_id}/outcome", {"reached": True} | body), 201)


def client_call(api, p, **body) -> dict:
    return record(api, follow_up(api, p["id"], "client", "phone")["id"], **body)


def client_visit(api, p, **body) -> dict:
    return record(api, follow_up(api, p["id"], "client", "visit")["id"], **body)


def employer_call(api, p, **body) -> dict:
    return record(api, follow_up(api, p["id"], "employer", "phone")["id"], **body)


def flags(api, who: str = "a.worker", **params) -> list[dict]:
    return api.ok(api.get(who, "/api/v1/crisis-flags", params=params))["items"]


def flags_of(api, p) -> list[dict]:
    return flags(api, placement_id=p["id"])


def detail(api, flag_id: int, who: str = "a.worker") -> dict:
    return api.ok(api.get(who, f"/api/v1/crisis-flags/{flag_id}"))


def the_flag(api, p) -> dict:
    rows = flags_of(api, p)
    assert len(rows) == 1, rows
    return detail(api, rows[0]["id"])


def kinds(flag: dict) -> list[str]:
    return [s["kind"] for s in flag["signals"]]


def signal(factory, clock, p, kind: str, *, party: str = "client", source: str = "reply:1", detail=None):
    """What messaging (a classed reply) or the program (a missed session) will call."""
    with session_scope(factory) as session:
        flag = crisis.raise_signal(
            session,
            placement_id=p["id"],
            kind=kind,
            source_party=party,
            source=source,
            detail=detail,
            clock=clock,
            rules=RULES,
        )
        return flag.id if flag else None


# ---------------------------------------------------------------- each shipped rule


def test_wants_to_quit_is_urgent_with_a_crisis_call_at_the_top_of_the_queue(api, clock):
    behind = api.placement(start="2026-04-06", client=api.client(name="遅れ 一郎"))  # overdue work
    p = api.placement(start="2026-04-13")
    body = client_call(api, p, still_employed="yes", wellbeing=2, risk_signals=["wants_to_quit"], note="辞めたいと話す")
    f = the_flag(api, p)
    assert (f["severity"], f["status"], f["owner_id"]) == ("urgent", "open", api.world.users["a.worker"])
    assert f["severity_label"] == "緊急" and "本日中に本人へ電話" in f["what_to_do"]
    assert same_instant(f["opened_at"], "2026-04-20", 9) and f["escalated_at"] == f["opened_at"]
    [s] = f["signals"]
    assert (s["kind"], s["kind_label"], s["source_party"]) == ("wants_to_quit", "退職の意向", "client")
    assert s["source"] == f"outcome:{body['outcome']['id']}" and s["detail"] == "辞めたいと話す"
    assert s["recorded_by"] == api.world.users["a.worker"] and same_instant(s["occurred_at"], "2026-04-20", 9)
    call = f["crisis_call"]
    assert (call["due_date"], call["status"], call["assignee_id"]) == (
        "2026-04-20",
        "pending",
        api.world.users["a.worker"],
    )
    assert f["alerts"] == []  # urgent: no alert, the queue carries it

    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    top = q["items"][0]
    assert (top["follow_up_id"], top["group"], top["kind"], top["party"], top["channel"]) == (
        call["id"],
        "crisis",
        "crisis_call",
        "client",
        "phone",
    )
    assert top["action"] == "危機対応の電話：本人（電話）" and top["contact"]["phone"] == "+819012345678"
    assert q["counts"]["crisis"] == 1 and q["counts"]["overdue"] >= 1
    assert {i["group"] for i in q["items"][1:]} <= {"overdue", "today"}
    assert any(i["placement_id"] == behind["id"] for i in q["items"][1:])


def test_unreachable_after_two_retries_is_urgent(api, clock):
    p = api.placement(start="2026-04-20")
    fu = follow_up(api, p["id"], "client", "phone")  # due 21 April
    clock.set(at("2026-04-21", 15))
    retry1 = record(api, fu["id"], reached=False)["retry"]
    clock.set(at("2026-04-22", 15))
    retry2 = record(api, retry1["id"], reached=False)["retry"]
    assert flags_of(api, p) == []  # not reached once or twice is not yet a crisis
    clock.set(at("2026-04-23", 15))
    last = record(api, retry2["id"], reached=False)
    assert last["outcome"]["unreachable"] is True
    f = the_flag(api, p)
    assert f["severity"] == "urgent"
    assert kinds(f) == ["unreachable"]  # the isolation the system adds is not counted twice
    assert f["signals"][0]["source"] == f"outcome:{last['outcome']['id']}"
    assert f["crisis_call"]["due_date"] == "2026-04-23"


def test_a_money_signal_is_watch_without_a_crisis_call(api, clock):
    p = api.placement(start="2026-04-13")
    client_call(api, p, wellbeing=4, risk_signals=["money"])
    f = the_flag(api, p)
    assert (f["severity"], kinds(f), f["crisis_call"], f["crisis_follow_up_id"]) == ("watch", ["money"], None, None)
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert q["counts"]["crisis"] == 0


def test_two_work_problems_within_14_days_are_urgent(api, clock):
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["lateness"])  # 20 April: one work problem is watch
    first = the_flag(api, p)
    assert (first["severity"], first["crisis_call"]) == ("watch", None)
    clock.set(at("2026-04-21", 14))
    employer_call(api, p, risk_signals=["absence"])  # the employer reports absence the next day
    f = the_flag(api, p)
    assert f["id"] == first["id"] and f["severity"] == "urgent"
    assert kinds(f) == ["lateness", "employer_absence"]
    assert [s["source_party"] for s in f["signals"]] == ["client", "employer"]
    assert same_instant(f["escalated_at"], "2026-04-21", 14) and same_instant(f["opened_at"], "2026-04-20", 9)
    assert f["crisis_call"]["due_date"] == "2026-04-21"


def test_work_problems_further_apart_or_in_one_report_stay_watch(api, clock):
    apart = api.placement(start="2026-04-13")
    client_call(api, apart, risk_signals=["absence"])  # 20 April
    clock.set(at("2026-05-05", 10))  # 15 days later
    client_visit(api, apart, risk_signals=["conflict"])
    f = the_flag(api, apart)
    assert f["severity"] == "watch" and kinds(f) == ["absence", "conflict"]

    one_report = api.placement(start="2026-04-13")
    client_call(api, one_report, risk_signals=["absence", "lateness"])  # one outcome is one report
    assert the_flag(api, one_report)["severity"] == "watch"


def test_a_lone_signal_below_a_rules_count_waits_for_the_next(api, clock, factory):
    """A signal no rule fires on is kept and counts later: with a rules file where only repeated
    lateness matters, the first lateness makes no flag, the second (within 14 days) does."""
    rules = crisis.CrisisRules.model_validate(
        {
            "what_to_do": {"urgent": {"ja": "電話", "en": "call"}, "emergency": {"ja": "今すぐ", "en": "now"}},
            "rules": [
                {"name": "late-twice", "signals": ["lateness"], "min_count": 2, "window_days": 14, "severity": "urgent"}
            ],
        }
    )
    p = api.placement(start="2026-04-13")
    with session_scope(factory) as s:
        assert crisis.raise_signal(s, placement_id=p["id"], kind="lateness", source_party="employer",
                                   source="report:1", detail=None, clock=clock, rules=rules) is None  # fmt: skip
    clock.set(at("2026-04-24"))
    with session_scope(factory) as s:
        flag = crisis.raise_signal(s, placement_id=p["id"], kind="lateness", source_party="employer",
                                   source="report:2", detail=None, clock=clock, rules=rules)  # fmt: skip
        assert flag.severity == CrisisSeverity.urgent
    f = the_flag(api, p)
    assert [s["source"] for s in f["signals"]] == ["report:1", "report:2"]  # both behind the flag


def test_a_wellbeing_drop_of_two_points_is_watch(api, clock):
    p = api.placement(start="2026-04-13")
    client_call(api, p, wellbeing=5)
    assert flags_of(api, p) == []
    clock.set(at("2026-04-23"))
    client_visit(api, p, wellbeing=3)
    f = the_flag(api, p)
    assert f["severity"] == "watch" and kinds(f) == ["wellbeing_drop"]
    assert f["signals"][0]["detail"] == "wellbeing 5 → 3"

    small = api.placement(start="2026-04-13")
    clock.set(at("2026-04-20"))
    client_call(api, small, wellbeing=5)
    clock.set(at("2026-04-23"))
    client_visit(api, small, wellbeing=4)  # one point is not a drop
    assert flags_of(api, small) == []


def test_reply_emergency_alerts_the_worker_and_the_managers(api, clock, factory):
    p = api.placement(start="2026-04-13")
    flag_id = signal(factory, clock, p, "reply_emergency", detail="もう無理です")
    f = detail(api, flag_id)
    assert (f["severity"], kinds(f), f["signals"][0]["source"]) == ("emergency", ["reply_emergency"], "reply:1")
    assert f["crisis_call"]["due_date"] == "2026-04-20"
    users = api.world.users
    # The worker and the office's managers (not admins, not other workers, not office B).
    assert sorted(a["recipient_id"] for a in f["alerts"]) == sorted([users["a.worker"], users["a.manager"]])
    assert all(a["delivered_at"] is None and a["severity"] == "emergency" for a in f["alerts"])

    crisis.use_rules(factory, RULES)
    with session_scope(factory) as s:
        pending = crisis.pending_alerts(s)
        assert [a.flag_id for a in pending] == [flag_id, flag_id]
        ja = crisis.alert_message(s, alert=pending[0], language="ja")
        en = crisis.alert_message(s, alert=pending[0], language="en")
        assert "【非常】山田 太郎さん" in ja.subject and "119番" in ja.body and "もう無理です" in ja.body
        assert "[emergency]" in en.subject and "call 119" in en.body and "+819012345678" in en.body
        # Delivery is claimed once: a second claim of the same alert is refused.
        assert crisis.mark_alert_delivered(s, alert_id=pending[0].id, at=clock.now()) is True
        assert crisis.mark_alert_delivered(s, alert_id=pending[0].id, at=clock.now()) is False
    assert sum(a["delivered_at"] is not None for a in detail(api, flag_id)["alerts"]) == 1
    # A burst of emergency replies alerts once; a new one after delivery alerts again.
    signal(factory, clock, p, "reply_emergency", source="reply:2")
    assert len(detail(api, flag_id)["alerts"]) == 2
    with session_scope(factory) as s:
        for a in crisis.pending_alerts(s):
            crisis.mark_alert_delivered(s, alert_id=a.id, at=clock.now())
    signal(factory, clock, p, "reply_emergency", source="reply:3")
    assert len(detail(api, flag_id)["alerts"]) == 4


def test_raise_signal_refuses_an_unknown_kind(api, clock, factory):
    from service.errors import ValidationFailed

    p = api.placement(start="2026-04-13")
    with pytest.raises(ValidationFailed, match="unknown signal kind 'sad'"):
        signal(factory, clock, p, "sad")


# ---------------------------------------------------------------- one flag, merging


def test_signals_join_one_flag_raise_never_lower_and_a_new_flag_after_resolve(api, clock, factory):
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["money"])
    first = the_flag(api, p)
    assert first["severity"] == "watch"
    signal(factory, clock, p, "missed_session", source="session:3")
    signal(factory, clock, p, "reply_urgent", source="reply:7")
    f = the_flag(api, p)
    assert f["id"] == first["id"] and f["severity"] == "urgent"
    assert kinds(f) == ["money", "missed_session", "reply_urgent"]
    assert f["signal_count"] == 3 and sorted(f["signal_kinds"]) == ["missed_session", "money", "reply_urgent"]
    clock.set(at("2026-04-23"))
    client_visit(api, p, risk_signals=["housing"])  # a watch signal joins, the severity stays urgent
    f = the_flag(api, p)
    assert (f["id"], f["severity"], len(f["signals"])) == (first["id"], "urgent", 4)

    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{f['id']}/resolve", {"note": "家計相談につないだ"}))
    clock.set(at("2026-04-24"))
    signal(factory, clock, p, "money", source="reply:8")
    rows = flags_of(api, p)
    assert len(rows) == 2
    new = next(r for r in rows if r["id"] != first["id"])
    assert (new["status"], new["severity"], new["signal_count"]) == ("open", "watch", 1)  # a fresh start


def test_the_database_refuses_a_second_open_flag(api, clock, factory):
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["money"])
    f = flags_of(api, p)[0]
    with pytest.raises(sa.exc.IntegrityError), session_scope(factory) as s:
        s.add(CrisisFlag(office_id=api.world.office_a, placement_id=p["id"], client_id=p["client_id"],
                         severity="watch", owner_id=f["owner_id"], opened_at=clock.now(),
                         escalated_at=clock.now()))  # fmt: skip
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{f['id']}/resolve", {"note": "ok"}))
    with session_scope(factory) as s:  # a resolved flag does not count
        s.add(CrisisFlag(office_id=api.world.office_a, placement_id=p["id"], client_id=p["client_id"],
                         severity="watch", owner_id=f["owner_id"], opened_at=clock.now(),
                         escalated_at=clock.now()))  # fmt: skip


@pytest.mark.postgres  # SQLite has one writer at a time
def test_two_signals_at_once_make_one_flag(api, clock, factory):
    """PostgreSQL, two transactions: the second waits on the partial unique index, then joins the
    flag the first opened instead of failing or opening a duplicate."""
    p = api.placement(start="2026-04-13")
    crisis.use_rules(factory, RULES)
    first = factory()
    crisis.raise_signal(first, placement_id=p["id"], kind="money", source_party="client", source="reply:1",
                        detail=None, clock=clock)  # fmt: skip
    outcome: dict = {}

    def second() -> None:
        with session_scope(factory) as s:
            flag = crisis.raise_signal(s, placement_id=p["id"], kind="wants_to_quit", source_party="client",
                                       source="reply:2", detail=None, clock=clock)  # fmt: skip
            outcome["flag"] = (flag.id, flag.severity)

    worker = threading.Thread(target=second)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()  # waiting for the first transaction
    first.commit()
    first.close()
    worker.join(10)
    f = the_flag(api, p)
    assert outcome["flag"] == (f["id"], CrisisSeverity.urgent)
    assert (f["severity"], kinds(f)) == ("urgent", ["money", "wants_to_quit"])
    assert f["crisis_call"] is not None


def test_raising_an_acknowledged_flag_opens_it_again(api, clock, factory):
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["wants_to_quit"])
    f = the_flag(api, p)
    call_id = f["crisis_call"]["id"]
    clock.set(at("2026-04-20", 9, 20))
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{f['id']}/acknowledge"))
    clock.set(at("2026-04-20", 11))
    signal(factory, clock, p, "reply_emergency")
    f = the_flag(api, p)
    assert (f["severity"], f["status"], f["acknowledged_at"], f["acknowledged_by"]) == ("emergency", "open", None, None)
    assert same_instant(f["escalated_at"], "2026-04-20", 11)
    assert len(f["alerts"]) == 2
    assert f["crisis_call"]["id"] == call_id  # one open crisis call per flag


# ---------------------------------------------------------------- discordance


def test_discordance_employer_reports_trouble_after_the_client_said_all_is_well(api, clock):
    p = api.placement(start="2026-04-13")
    fine = client_call(api, p, still_employed="yes", wellbeing=5)
    assert flags_of(api, p) == []
    clock.set(at("2026-04-22"))
    employer_call(api, p, risk_signals=["absence"], note="無断欠勤が2日")
    f = the_flag(api, p)
    assert f["severity"] == "watch" and kinds(f) == ["employer_absence", "discordance"]
    disc = f["signals"][1]
    assert disc["source_party"] == "system" and f"outcome:{fine['outcome']['id']}" in disc["detail"]
    assert disc["kind_label"] == "本人と事業所の話の食い違い"


def test_discordance_client_says_all_is_well_after_the_employer_reported_trouble(api, clock):
    p = api.placement(start="2026-04-13")
    report = employer_call(api, p, risk_signals=["conflict"])  # 20 April, no client answer yet
    first = the_flag(api, p)
    assert kinds(first) == ["employer_conflict"]
    clock.set(at("2026-04-21"))
    client_call(api, p, wellbeing=4)
    f = the_flag(api, p)
    assert f["id"] == first["id"] and kinds(f) == ["employer_conflict", "discordance"]
    assert f"outcome:{report['outcome']['id']}" in f["signals"][1]["detail"]


def test_a_report_of_trouble_is_discordant_with_the_clients_next_answer_only(api, clock):
    """Counted from the later of the window's start and the client's previous answer: the
    employer's report meets the client's first "all is well" after it, not every one after that."""
    p = api.placement(start="2026-04-13")
    employer_call(api, p, risk_signals=["conflict"])  # 20 April
    clock.set(at("2026-04-21"))
    client_call(api, p, wellbeing=4)
    assert kinds(the_flag(api, p)) == ["employer_conflict", "discordance"]
    clock.set(at("2026-04-22"))
    client_visit(api, p, wellbeing=5)  # answered in between: this report is not new to this answer
    assert kinds(the_flag(api, p)) == ["employer_conflict", "discordance"]


def test_no_discordance_when_the_accounts_agree_or_are_far_apart(api, clock):
    agree = api.placement(start="2026-04-13")
    client_call(api, agree, wellbeing=3)  # the client does not say all is well
    clock.set(at("2026-04-21"))
    employer_call(api, agree, risk_signals=["lateness"])
    assert kinds(the_flag(api, agree)) == ["employer_lateness"]

    apart = api.placement(start="2026-04-13")
    clock.set(at("2026-04-20"))
    employer_call(api, apart, risk_signals=["absence"])
    clock.set(at("2026-05-05"))  # 15 days later
    client_visit(api, apart, wellbeing=5)
    assert kinds(the_flag(api, apart)) == ["employer_absence"]


# ---------------------------------------------------------------- the crisis call


@pytest.mark.parametrize(
    ("day", "due"),
    [
        ("2026-04-21", "2026-04-21"),  # a Tuesday: today
        ("2026-04-25", "2026-04-27"),  # a Saturday: Monday
        ("2026-05-02", "2026-05-07"),  # Golden Week: Sat, Sun and three holidays and a substitute
    ],
)
def test_the_crisis_call_is_due_the_same_business_day(api, clock, factory, day, due):
    p = api.placement(start="2026-04-13")
    clock.set(at(day, 22))  # late in the evening: still that day in Tokyo
    signal(factory, clock, p, "reply_urgent")
    f = the_flag(api, p)
    assert f["crisis_call"]["due_date"] == due
    q = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": due}))
    assert q["items"][0]["follow_up_id"] == f["crisis_call"]["id"] and q["items"][0]["group"] == "crisis"


def test_the_crisis_call_stays_until_made_or_the_flag_is_resolved(api, clock, factory):
    from service.schedules.jobs import mark_missed

    p = api.placement(start="2026-04-13")
    signal(factory, clock, p, "reply_urgent")
    f = the_flag(api, p)
    call_id = f["crisis_call"]["id"]
    signal(factory, clock, p, "wants_to_quit", source="reply:2")  # the call is still to be made
    assert the_flag(api, p)["crisis_call"]["id"] == call_id
    assert [r["kind"] for r in api.follow_ups("a.worker", p["id"])].count("crisis_call") == 1

    clock.set(at("2026-04-21", 9))
    with session_scope(factory) as s:
        mark_missed(s, clock)  # its day passed: missed, but the flag is open, so it stays on top
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert (q["items"][0]["follow_up_id"], q["items"][0]["group"]) == (call_id, "crisis")

    # Reaching the client does not resolve the flag: a person decides.
    record(api, call_id, still_employed="yes", wellbeing=3)
    f = the_flag(api, p)
    assert f["status"] == "open" and f["crisis_call"]["status"] == "done"
    # A new urgent signal after the call was made asks for a new one.
    signal(factory, clock, p, "reply_urgent", source="reply:3")
    f = the_flag(api, p)
    assert f["crisis_call"]["id"] != call_id and f["crisis_call"]["status"] == "pending"
    api.ok(api.post("a.manager", f"/api/v1/crisis-flags/{f['id']}/resolve", {"note": "落ち着いた"}))
    calls = {r["id"]: r for r in api.follow_ups("a.worker", p["id"])}
    assert calls[f["crisis_call"]["id"]]["status"] == "cancelled"
    assert calls[f["crisis_call"]["id"]]["status_reason"] == "crisis flag resolved"
    assert api.ok(api.get("a.worker", "/api/v1/queue"))["counts"]["crisis"] == 0


def test_an_unanswered_crisis_call_is_retried_in_the_crisis_group(api, clock, factory):
    p = api.placement(start="2026-04-13")
    signal(factory, clock, p, "reply_urgent")
    call = the_flag(api, p)["crisis_call"]
    retry = record(api, call["id"], reached=False)["retry"]
    assert retry["due_date"] == "2026-04-21"
    clock.set(at("2026-04-21", 9))
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert (q["items"][0]["follow_up_id"], q["items"][0]["group"]) == (retry["id"], "crisis")
    signal(factory, clock, p, "reply_urgent", source="reply:2")  # the retry is the open call
    assert [r["kind"] for r in api.follow_ups("a.worker", p["id"])].count("crisis_call") == 1


# ---------------------------------------------------------------- the flag's life


def test_acknowledge_then_resolve_records_who_and_when(api, clock):
    users = api.world.users
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["health"])
    f = flags_of(api, p)[0]
    url = f"/api/v1/crisis-flags/{f['id']}"
    clock.set(at("2026-04-20", 9, 45))
    acked = api.ok(api.post("a.worker2", f"{url}/acknowledge"))  # any worker of the office
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", users["a.worker2"])
    assert same_instant(acked["acknowledged_at"], "2026-04-20", 9, 45)
    assert api.post("a.worker", f"{url}/acknowledge").status_code == 409

    assert api.post("a.manager", f"{url}/resolve", {}).status_code == 422
    assert api.post("a.manager", f"{url}/resolve", {"note": "   "}).status_code == 422
    clock.set(at("2026-04-21", 16))
    done = api.ok(api.post("a.manager", f"{url}/resolve", {"note": "受診につないだ"}))
    assert (done["status"], done["resolved_by"]) == ("resolved", users["a.manager"])
    assert done["resolution_note"] == "受診につないだ"
    assert same_instant(done["resolved_at"], "2026-04-21", 16)
    assert done["acknowledged_by"] == users["a.worker2"]  # kept
    assert api.post("a.manager", f"{url}/resolve", {"note": "again"}).status_code == 409
    assert api.post("a.worker", f"{url}/acknowledge").status_code == 409

    # Resolving an unacknowledged flag acknowledges it at the same moment.
    q = api.placement(start="2026-04-13")
    client_call(api, q, risk_signals=["money"])
    g = flags_of(api, q)[0]
    done = api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{g['id']}/resolve", {"note": "相談済み"}))
    assert done["acknowledged_at"] == done["resolved_at"] and done["acknowledged_by"] == users["a.worker"]


def test_list_filters_and_order(api, clock, factory):
    watch = api.placement(start="2026-04-13")
    urgent = api.placement(start="2026-04-13")
    client_call(api, watch, risk_signals=["money"])
    clock.set(at("2026-04-20", 10))
    client_call(api, urgent, risk_signals=["wants_to_quit"])
    assert [f["placement_id"] for f in flags(api)] == [urgent["id"], watch["id"]]  # the most severe first
    assert [f["placement_id"] for f in flags(api, severity="watch")] == [watch["id"]]
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{flags_of(api, urgent)[0]['id']}/acknowledge"))
    assert [f["placement_id"] for f in flags(api, status=["open"])] == [watch["id"]]
    assert len(flags(api, status=["open", "acknowledged"])) == 2
    page = api.ok(api.get("a.manager", "/api/v1/crisis-flags", params={"limit": 1, "offset": 1}))
    assert (page["total"], len(page["items"]), page["items"][0]["placement_id"]) == (2, 1, urgent["id"])
    assert api.get("a.worker", "/api/v1/crisis-flags", params={"status": "bogus"}).status_code == 422


# ---------------------------------------------------------------- measures


def test_measures_on_a_hand_built_case(api, clock, factory):
    ps = [api.placement(start="2026-04-01") for _ in range(6)]

    def open_at(p, kind, day, hour, minute=0):
        clock.set(at(day, hour, minute))
        return signal(factory, clock, p, kind)

    def act(flag_id, what, day, hour, minute=0, who="a.manager"):
        clock.set(at(day, hour, minute))
        body = {"note": "対応済み"} if what == "resolve" else None
        api.ok(api.post(who, f"/api/v1/crisis-flags/{flag_id}/{what}", body))

    f1 = open_at(ps[0], "money", "2026-04-20", 9)  # watch: ack after 30 min, resolved after 2 h
    act(f1, "acknowledge", "2026-04-20", 9, 30)
    act(f1, "resolve", "2026-04-20", 11)
    f2 = open_at(ps[1], "wants_to_quit", "2026-04-20", 10)  # urgent: ack after 10 min, still open
    act(f2, "acknowledge", "2026-04-20", 10, 10)
    f3 = open_at(ps[2], "reply_emergency", "2026-04-20", 11)  # emergency: ack 90 min, resolved after 1 day
    act(f3, "acknowledge", "2026-04-20", 12, 30)
    act(f3, "resolve", "2026-04-21", 11)
    open_at(ps[3], "housing", "2026-04-14", 9)  # open 8 days
    open_at(ps[4], "health", "2026-04-17", 12)  # open 5 days
    open_at(ps[5], "isolation", "2026-04-22", 8)  # open 4 hours
    clock.set(at("2026-04-22", 12))

    m = api.ok(api.get("a.manager", "/api/v1/crisis-flags/measures"))
    assert m["total"] == 6
    assert m["by_severity"] == {"watch": 4, "urgent": 1, "emergency": 1}
    assert m["by_status"] == {"open": 3, "acknowledged": 1, "resolved": 2}
    assert m["by_severity_and_status"]["watch"] == {"open": 3, "acknowledged": 0, "resolved": 1}
    # Acknowledged after 30, 10 and 90 minutes; resolved after 120 and 1440 minutes.
    assert m["time_to_acknowledge"] == {"count": 3, "median_minutes": 30.0, "p90_minutes": 78.0}
    assert m["time_to_resolve"] == {"count": 2, "median_minutes": 780.0, "p90_minutes": 1308.0}
    assert m["time_to_acknowledge_by_severity"]["emergency"] == {
        "count": 1,
        "median_minutes": 90.0,
        "p90_minutes": 90.0,
    }
    assert m["time_to_resolve_by_severity"]["urgent"] == {"count": 0, "median_minutes": None, "p90_minutes": None}
    assert m["open_by_age"] == {"<1d": 1, "1-3d": 1, "3-7d": 1, ">7d": 1}

    period = {"from": "2026-04-20", "to": "2026-04-21"}
    since = api.ok(api.get("a.manager", "/api/v1/crisis-flags/measures", params=period))
    assert since["total"] == 3 and since["open_by_age"] == {"<1d": 0, "1-3d": 1, "3-7d": 0, ">7d": 0}
    # Workers do not see the measures; office B sees none of office A's flags.
    assert api.get("a.worker", "/api/v1/crisis-flags/measures").status_code == 403
    assert api.ok(api.get("b.manager", "/api/v1/crisis-flags/measures"))["total"] == 0


# ---------------------------------------------------------------- offices


@pytest.mark.parametrize("who", ["b.worker", "b.manager"])
def test_another_office_cannot_see_or_touch_a_flag(api, clock, who):
    p = api.placement(start="2026-04-13")
    client_call(api, p, risk_signals=["wants_to_quit"])
    f = flags_of(api, p)[0]
    url = f"/api/v1/crisis-flags/{f['id']}"
    assert api.get(who, url).status_code == 404
    assert api.post(who, f"{url}/acknowledge").status_code == 404
    assert api.post(who, f"{url}/resolve", {"note": "x"}).status_code == 404
    assert flags(api, who) == []
    assert api.ok(api.get(who, "/api/v1/queue"))["counts"]["crisis"] == 0
    assert detail(api, f["id"])["status"] == "open"  # nothing changed
    assert api.get("a.worker", "/api/v1/crisis-flags/2147483648").status_code in (404, 422)


# ---------------------------------------------------------------- the rules file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crisis_rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


GUIDANCE = """
[what_to_do.urgent]
ja = "電話"
en = "call"
[what_to_do.emergency]
ja = "今すぐ"
en = "now"
"""


def test_the_shipped_rules_are_valid():
    names = {r.name for r in RULES.rules}
    assert {"wants-to-quit", "unreachable", "work-problems-repeated", "reply-emergency", "discordance"} <= names
    assert RULES.guidance(CrisisSeverity.emergency, "en")


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            '[[rules]]\nname = "ok"\nsignals = ["money"]\nseverity = "watch"\n'
            '[[rules]]\nname = "bad-rule"\nsignals = ["money", "feelings"]\nseverity = "urgent"\n',
            ["rule 2 ('bad-rule')", "field 'signals'", "unknown signal kind 'feelings'"],
        ),
        (
            '[[rules]]\nname = "twice"\nsignals = ["absence"]\nmin_count = 2\nseverity = "urgent"\n',
            ["rule 1 ('twice')", "field 'window_days'", "needs a window_days"],
        ),
        (
            '[[rules]]\nname = "loud"\nsignals = ["money"]\nseverity = "panic"\n',
            ["rule 1 ('loud')", "field 'severity'"],
        ),
        (
            '[[rules]]\nname = "x"\nsignals = ["money"]\nseverity = "watch"\nwindow = 3\n',
            ["rule 1 ('x')", "field 'window'", "Extra inputs"],
        ),
    ],
)
def test_invalid_rules_are_refused_naming_file_rule_and_field(tmp_path, rules, expected):
    path = write(tmp_path, GUIDANCE + rules)
    with pytest.raises(crisis.CrisisRuleError) as err:
        crisis.load_crisis_rules(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_rules_without_emergency_guidance_or_broken_toml_are_refused(tmp_path):
    no_emergency = '[what_to_do.watch]\nja = "a"\nen = "b"\n'
    path = write(tmp_path, no_emergency + '[[rules]]\nname = "a"\nsignals = ["money"]\nseverity = "watch"\n')
    with pytest.raises(crisis.CrisisRuleError, match="field 'what_to_do'.*emergency"):
        crisis.load_crisis_rules(path)
    with pytest.raises(crisis.CrisisRuleError, match="not valid TOML"):
        crisis.load_crisis_rules(write(tmp_path, "[[rules]\n"))


def test_the_service_does_not_start_with_invalid_rules(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config" / "plans", config / "plans")
    write(config, GUIDANCE + '[[rules]]\nname = "bad"\nsignals = ["nope"]\nseverity = "watch"\n')
    settings = Settings(
        environment="test",
        database_url=f"sqlite:///{tmp_path / 'never.db'}",
        secret_key="test-secret-key-with-more-than-32-characters",
        scheduler_enabled=False,
        config_dir=config,
    )
    refused = pytest.raises(crisis.CrisisRuleError, match=r"crisis_rules\.toml: rule 1 \('bad'\), field 'signals'")
    with refused, TestClient(create_app(settings)):
        pass
