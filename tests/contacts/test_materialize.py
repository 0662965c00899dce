"""Placements turned into follow-ups, through the HTTP API: business days, month ends, consent,
re-dating, plan and worker changes, separation.

Expected dates are worked out here from the plan files, ``holidays`` and ``weekday()``, and a
few are written out by hand from the 2026/2027 calendar.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest

from service.schedules.plans import load_plans

TOKYO = ZoneInfo("Asia/Tokyo")
ROOT = Path(__file__).resolve().parents[2]
PLANS = load_plans(ROOT / "config" / "plans")
STANDARD = PLANS["standard-3m"].steps
JP = holidays.country_holidays("JP", years=range(2025, 2030))
NEW_YEAR = {(12, 29), (12, 30), (12, 31), (1, 1), (1, 2), (1, 3)}  # office A's closed days

NO_CONSENT = {"consent_automated": False, "consent_family": False, "consent_employer": False}
ALL_CONSENT = {"consent_automated": True, "consent_family": True, "consent_employer": True}


def d(s: str) -> date:
    return date.fromisoformat(s)


def workable(day: date) -> bool:
    return day.weekday() < 5 and day not in JP and (day.month, day.day) not in NEW_YEAR


def raw_due(step, start: date) -> date:
    """Calendar months (clamped to the month's end), then days; worked out by hand."""
    months = start.month - 1 + step.offset_months
    year, month = start.year + months // 12, months % 12 + 1
    day = start.day
    while True:
        try:
            base = date(year, month, day)
            break
        except ValueError:
            day -= 1
    return base + timedelta(days=step.offset_days)


def expected_due(step, start: date) -> date:
    due = raw_due(step, start)
    if not step.automated:
        while not workable(due):
            due += timedelta(days=1)
    return due


def plan_rows(rows: list[dict]) -> list[dict]:
    """The planned follow-ups in step order (materialize writes them in step order)."""
    return sorted((r for r in rows if r["kind"] not in ("separation_call", "retry")), key=lambda r: r["id"])


def set_today(clock, day: str, hour: int = 9) -> None:
    clock.set(datetime.fromisoformat(day).replace(hour=hour, tzinfo=TOKYO))


def outcome(api, fu_id: int, who: str = "a.worker", **body) -> dict:
    body = {"reached": True, "still_employed": "yes"} | body
    return api.ok(api.post(who, f"/api/v1/follow-ups/{fu_id}/outcome", body), 201)


def family(api, client_id: int, who: str = "a.worker") -> dict:
    body = {"name": "山田 花子", "relationship": "母", "phone": "090-9999-0000"}
    return api.ok(api.post(who, f"/api/v1/clients/{client_id}/family-contacts", body), 201)


def patch_client(api, client_id: int, who: str = "a.worker", **changes) -> dict:
    return api.ok(api.patch(who, f"/api/v1/clients/{client_id}", changes))


def queue_ids(api, who: str = "a.worker") -> set[int]:
    """The follow-ups in the worker's queue today (overdue and due)."""
    return {i["follow_up_id"] for i in api.ok(api.get(who, "/api/v1/queue"))["items"]}


def by_status(rows: list[dict]) -> Counter:
    return Counter(r["status"] for r in rows)


# ------------------------------------------------------------------ dates


def check_plan_dates(rows: list[dict], steps, start: date) -> None:
    assert len(rows) == len(steps)
    for row, step in zip(rows, steps, strict=True):
        assert (row["party"], row["channel"], row["automated"]) == (
            step.party.value,
            step.channel.value,
            step.automated,
        )
        assert row["due_date"] == expected_due(step, start).isoformat(), (step, row)
        assert row["window_days"] == step.window_days
        assert d(row["window_end"]) == d(row["due_date"]) + timedelta(days=step.window_days)
        if not row["automated"]:
            assert workable(d(row["due_date"])), row
        else:
            assert row["due_date"] == raw_due(step, start).isoformat()


def test_golden_week_start(api):
    p = api.placement(start="2026-04-28", client=api.client(**ALL_CONSENT))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    check_plan_dates(rows, STANDARD, d("2026-04-28"))
    due = [r["due_date"] for r in rows]
    # written out by hand from the 2026 calendar
    assert due[0] == "2026-04-30"  # day 1 = 4/29 Showa Day (Wed) -> Thu
    assert due[1] == "2026-05-02"  # automated SMS keeps its Saturday
    assert due[2] == "2026-05-07"  # day 7 = 5/5 Children's Day; 5/6 substitute holiday -> Thu
    assert due[3] == "2026-05-08"  # day 10, a Friday
    assert due[4] == "2026-05-12"  # the three-party meeting, day 14
    assert due[7] == "2026-06-01"  # 1 month + 3 days = Sun 5/31 -> Mon
    assert due[10] == "2026-06-28"  # automated e-mail to the employer on a Sunday: kept
    assert due[12] == "2026-07-13"  # day 75 = Sun 7/12 -> Mon
    assert due[13] == "2026-07-28"  # final review, 3 months
    golden_week = {"2026-04-29", "2026-05-03", "2026-05-04", "2026-05-05", "2026-05-06"}
    assert not golden_week & {r["due_date"] for r in rows if not r["automated"]}
    # consent to everything, but no family contact on record yet
    assert [r["status"] for r in rows if r["party"] != "family"] == ["pending"] * 12
    assert [r["status"] for r in rows if r["party"] == "family"] == ["skipped"] * 2
    assert {r["assignee_id"] for r in rows} == {api.world.users["a.worker"]}
    assert rows[4]["kind"] == "three_party_meeting" and rows[13]["kind"] == "final_review"


def test_new_year_start(api):
    p = api.placement(start="2026-12-24", client=api.client(**ALL_CONSENT))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    check_plan_dates(rows, STANDARD, d("2026-12-24"))
    due = [r["due_date"] for r in rows]
    assert due[0] == "2026-12-25"  # Friday
    assert due[1] == "2026-12-28"  # automated, Monday
    assert due[2] == "2027-01-04"  # 12/31 is closed: the office reopens Monday 1/4
    assert due[3] == "2027-01-04"  # 1/3 closed (and a Sunday)
    assert due[6] == "2027-01-24"  # automated e-mail, a Sunday, kept
    assert due[8] == "2027-02-08"  # day 45 = Sun 2/7 -> Mon
    assert due[13] == "2027-03-24"
    for r in rows:
        if not r["automated"]:
            day = d(r["due_date"])
            assert day.weekday() < 5 and day not in JP and (day.month, day.day) not in NEW_YEAR


@pytest.mark.parametrize("start", ["2026-07-17", "2026-09-18", "2027-03-19"])
def test_holiday_weekends(api, start):
    """Marine Day, Silver Week (with its 国民の休日) and a substitute holiday."""
    p = api.placement(start=start, client=api.client(**ALL_CONSENT), plan="extended-6m")
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    check_plan_dates(rows, PLANS["extended-6m"].steps, d(start))
    day1 = rows[0]["due_date"]
    assert day1 == {"2026-07-17": "2026-07-21", "2026-09-18": "2026-09-24", "2027-03-19": "2027-03-23"}[start]


def test_month_end_offsets_from_31_january_2027(api):
    p = api.placement(start="2027-01-31", client=api.client(**ALL_CONSENT))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    check_plan_dates(rows, STANDARD, d("2027-01-31"))
    month_steps = {i: r["due_date"] for i, (r, s) in enumerate(zip(rows, STANDARD, strict=True)) if s.offset_months}
    assert month_steps == {
        6: "2027-02-28",  # +1 month, automated: 28 February (2027 is no leap year), a Sunday
        7: "2027-03-03",  # +1 month +3 days = 28 Feb + 3 = Wed 3 March
        10: "2027-03-31",  # +2 months, automated
        11: "2027-04-01",  # +2 months +1 day
        13: "2027-04-30",  # +3 months = 30 April (Fri), the day after Showa Day
    }


def test_month_end_offsets_from_29_february_2028(api):
    p = api.placement(start="2028-02-29", client=api.client(**ALL_CONSENT))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    check_plan_dates(rows, STANDARD, d("2028-02-29"))
    month_steps = {i: r["due_date"] for i, (r, s) in enumerate(zip(rows, STANDARD, strict=True)) if s.offset_months}
    assert month_steps == {
        6: "2028-03-29",  # automated
        7: "2028-04-03",  # 3/29 + 3 = Sat 4/1 -> Mon 4/3
        10: "2028-04-29",  # automated: Showa Day (a Saturday) is kept for a message
        11: "2028-04-30",  # automated, Sunday
        13: "2028-05-29",  # Monday
    }
    # the extended plan goes up to 6 months: 29 August 2028
    p6 = api.placement(start="2028-02-29", client=api.client(**ALL_CONSENT), plan="extended-6m")
    rows6 = plan_rows(api.follow_ups("a.worker", p6["id"]))
    check_plan_dates(rows6, PLANS["extended-6m"].steps, d("2028-02-29"))
    assert rows6[-1]["due_date"] == "2028-08-29"


def test_office_closed_days_are_honoured(api, factory):
    """An office's own one-off closed day moves worker tasks, not automated ones."""
    from service.accounts.models import Office
    from service.db import session_scope

    with session_scope(factory) as s:
        office = s.get(Office, api.world.office_a)
        office.closed_days = [*office.closed_days, "2026-04-30", "05-28"]
        s.add(office)
    p = api.placement(start="2026-04-28", client=api.client(**ALL_CONSENT))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert rows[0]["due_date"] == "2026-05-01"  # 4/29 holiday, 4/30 closed -> Fri 5/1
    assert rows[6]["due_date"] == "2026-05-28"  # automated e-mail on a closed day: kept


def test_an_office_keeps_its_own_countrys_holidays(api, factory):
    """An office set to New York's holidays works through Golden Week and closes for Thanksgiving."""
    from service.accounts.models import Office
    from service.db import session_scope

    with session_scope(factory) as s:
        office = s.get(Office, api.world.office_a)
        office.holiday_country, office.holiday_subdivision = "US", "NY"
        s.add(office)
    golden = plan_rows(
        api.follow_ups("a.worker", api.placement(start="2026-04-28", client=api.client(**ALL_CONSENT))["id"])
    )
    assert golden[0]["due_date"] == "2026-04-29"  # Showa Day is a working day in New York
    assert golden[2]["due_date"] == "2026-05-05"  # and so is Children's Day
    autumn = plan_rows(
        api.follow_ups("a.worker", api.placement(start="2026-11-25", client=api.client(**ALL_CONSENT))["id"])
    )
    assert autumn[0]["due_date"] == "2026-11-27"  # day 1 = Thanksgiving (Thu 11/26) -> Fri
    with session_scope(factory) as s:  # back to Japan's: the same start lands on Labour Thanksgiving Day's week
        office = s.get(Office, api.world.office_a)
        office.holiday_country, office.holiday_subdivision = "JP", None
        s.add(office)
    japan = plan_rows(
        api.follow_ups("a.worker", api.placement(start="2026-11-25", client=api.client(**ALL_CONSENT))["id"])
    )
    assert japan[0]["due_date"] == "2026-11-26"  # an ordinary Thursday in Japan


# ------------------------------------------------------------------ consent


def test_without_consent_steps_are_skipped_with_a_reason(api):
    c = api.client(**NO_CONSENT)
    p = api.placement(start="2026-04-28", client=c)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert len(rows) == len(STANDARD)  # never silently dropped
    skipped = [r for r in rows if r["status"] == "skipped"]
    expected_skipped = [i for i, s in enumerate(STANDARD) if s.needs_consent]
    assert [rows.index(r) for r in skipped] == expected_skipped
    assert len(skipped) == 9
    reasons = Counter(r["status_reason"] for r in skipped)
    assert reasons == {
        "no consent to contact family": 2,
        "no consent to contact the employer": 4,
        "no consent to automated messages": 3,
    }
    assert all("consent" in r["status_reason"] for r in skipped)
    pending = [r for r in rows if r["status"] == "pending"]
    assert all(r["party"] == "client" and not r["automated"] for r in pending)
    assert all(r["status_reason"] is None for r in pending)
    assert len(pending) == 5


def test_automated_messages_need_a_phone_or_email(api):
    no_phone = api.client(phone=None, **(ALL_CONSENT | {"consent_family": False}))
    rows = plan_rows(api.follow_ups("a.worker", api.placement(start="2026-04-28", client=no_phone)["id"]))
    client_auto = [
        (r["channel"], r["status"], r["status_reason"]) for r in rows if r["automated"] and r["party"] == "client"
    ]
    assert client_auto == [
        ("sms", "skipped", "no phone number on record"),
        ("email", "pending", None),
        ("sms", "skipped", "no phone number on record"),
    ]
    no_email = api.client(email=None, **ALL_CONSENT)
    rows = plan_rows(api.follow_ups("a.worker", api.placement(start="2026-04-28", client=no_email)["id"]))
    client_auto = [
        (r["channel"], r["status"], r["status_reason"]) for r in rows if r["automated"] and r["party"] == "client"
    ]
    assert client_auto == [
        ("sms", "pending", None),
        ("email", "skipped", "no e-mail address on record"),
        ("sms", "pending", None),
    ]


def test_family_steps_need_consent_and_a_family_contact(api):
    c = api.client(**ALL_CONSENT)
    rows = plan_rows(api.follow_ups("a.worker", api.placement(start="2026-04-28", client=c)["id"]))
    fam = [(r["status"], r["status_reason"]) for r in rows if r["party"] == "family"]
    assert fam == [("skipped", "no family contact on record")] * 2
    assert by_status(rows) == {"pending": 12, "skipped": 2}
    # a family contact on record before the placement: everything pending
    c2 = api.client(**ALL_CONSENT)
    family(api, c2["id"])
    rows2 = plan_rows(api.follow_ups("a.worker", api.placement(start="2026-04-28", client=c2)["id"]))
    assert by_status(rows2) == {"pending": 14}


def test_later_consent_brings_back_only_steps_still_ahead(api, clock):
    c = api.client(**NO_CONSENT)
    p = api.placement(start="2026-04-28", client=c)
    set_today(clock, "2026-06-01")  # steps 0-7 are due on or before 1 June
    patch_client(api, c["id"], consent_employer=True)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    employer = [(r["due_date"], r["status"]) for r in rows if r["party"] == "employer"]
    assert employer == [
        ("2026-05-07", "skipped"),  # past: stays skipped, history is kept
        ("2026-05-12", "skipped"),
        ("2026-06-01", "pending"),  # today counts as ahead
        ("2026-06-28", "pending"),
    ]
    past = [r for r in rows if r["party"] == "employer" and r["status"] == "skipped"]
    assert all(r["status_reason"] == "no consent to contact the employer" for r in past)
    back = [r for r in rows if r["party"] == "employer" and r["status"] == "pending"]
    assert all(r["status_reason"] is None for r in back)

    patch_client(api, c["id"], consent_automated=True)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    auto = [(r["due_date"], r["status"]) for r in rows if r["automated"] and r["party"] == "client"]
    assert auto == [("2026-05-02", "skipped"), ("2026-05-28", "skipped"), ("2026-06-29", "pending")]

    # family: consent alone is not enough, a family contact must be on record too
    patch_client(api, c["id"], consent_family=True)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    fam = [(r["due_date"], r["status"], r["status_reason"]) for r in rows if r["party"] == "family"]
    assert fam == [
        ("2026-05-19", "skipped", "no consent to contact family"),
        ("2026-06-12", "skipped", "no family contact on record"),  # the reason is current
    ]
    family(api, c["id"])
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    fam = [(r["due_date"], r["status"]) for r in rows if r["party"] == "family"]
    assert fam == [("2026-05-19", "skipped"), ("2026-06-12", "pending")]


def test_withdrawn_consent_skips_pending_work(api, clock):
    c = api.client(**ALL_CONSENT)
    family(api, c["id"])
    p = api.placement(start="2026-04-28", client=c)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    done_id = rows[2]["id"]  # the employer call of 7 May
    set_today(clock, "2026-05-07")
    outcome(api, done_id)
    set_today(clock, "2026-05-13")  # the meeting of 12 May is overdue but still in its window
    assert rows[4]["due_date"] == "2026-05-12" and rows[4]["window_end"] >= "2026-05-13"
    assert rows[4]["id"] in queue_ids(api)
    patch_client(api, c["id"], consent_employer=False)
    assert rows[4]["id"] not in queue_ids(api)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    employer = {r["due_date"]: (r["status"], r["status_reason"]) for r in rows if r["party"] == "employer"}
    assert employer["2026-05-07"] == ("done", None)  # done work is history
    # the overdue meeting must not stay in the worker's queue without consent
    assert employer["2026-05-12"] == ("skipped", "no consent to contact the employer")
    assert employer["2026-06-01"] == ("skipped", "no consent to contact the employer")
    assert employer["2026-06-28"] == ("skipped", "no consent to contact the employer")
    # other parties untouched
    assert all(r["status"] == "pending" for r in rows if r["party"] == "family")

    patch_client(api, c["id"], consent_family=False)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert [r["status_reason"] for r in rows if r["party"] == "family"] == ["no consent to contact family"] * 2


def test_consent_is_per_client(api, clock):
    c1, c2 = api.client(**NO_CONSENT), api.client(**NO_CONSENT)
    p1 = api.placement(start="2026-04-28", client=c1)
    p2 = api.placement(start="2026-04-28", client=c2)
    patch_client(api, c1["id"], consent_employer=True)
    assert by_status(api.follow_ups("a.worker", p1["id"]))["skipped"] == 5
    assert by_status(api.follow_ups("a.worker", p2["id"]))["skipped"] == 9


# ------------------------------------------------------------------ re-dating


def test_redating_moves_open_follow_ups_but_not_done_ones(api, clock):
    p = api.placement(start="2026-04-28")  # default client: no family consent
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    set_today(clock, "2026-04-30")
    outcome(api, rows[0]["id"])  # the first call, due 4/30, done
    r = api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "2026-05-11"})
    assert api.ok(r)["start_date"] == "2026-05-11"
    after = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert [r["id"] for r in after] == [r["id"] for r in rows]  # moved, not re-created
    assert after[0]["due_date"] == "2026-04-30" and after[0]["status"] == "done"
    new_start = d("2026-05-11")
    for row, step in zip(after[1:], STANDARD[1:], strict=True):
        assert row["due_date"] == expected_due(step, new_start).isoformat(), row
        assert d(row["window_end"]) == d(row["due_date"]) + timedelta(days=step.window_days)
    # skipped ones move too and stay skipped
    fam = [(r["due_date"], r["status"]) for r in after if r["party"] == "family"]
    assert fam == [("2026-06-01", "skipped"), ("2026-06-25", "skipped")]
    assert after[2]["due_date"] == "2026-05-18"  # +7 = Monday 5/18
    assert after[13]["due_date"] == "2026-08-12"  # 8/11 is Mountain Day
    # an unchanged start date is a no-op
    api.ok(api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "2026-05-11"}))
    assert plan_rows(api.follow_ups("a.worker", p["id"])) == after


def test_redating_rejects_bad_dates(api):
    p = api.placement(start="2026-04-28")
    r = api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "1999-12-31"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "start_date"]


def test_redating_a_skipped_step_into_the_future_applies_current_consent(api, clock):
    """A step skipped because it was past when consent came comes back if a corrected start
    date puts it ahead again."""
    c = api.client(**NO_CONSENT)
    p = api.placement(start="2026-04-28", client=c)
    set_today(clock, "2026-05-20")
    patch_client(api, c["id"], consent_employer=True)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert rows[4]["status"] == "skipped"  # the meeting of 5/12 was past
    api.ok(api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "2026-05-18"}))
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert rows[4]["due_date"] == "2026-06-01"
    assert (rows[4]["status"], rows[4]["status_reason"]) == ("pending", None)
    # the automated ones still have no consent
    assert rows[1]["status"] == "skipped"


# ------------------------------------------------------------------ plan and worker change


def test_plan_change_cancels_old_and_writes_new_from_today(api, clock):
    p = api.placement(start="2026-04-28")
    old = plan_rows(api.follow_ups("a.worker", p["id"]))
    set_today(clock, "2026-04-30")
    outcome(api, old[0]["id"])
    set_today(clock, "2026-05-11")
    r = api.ok(api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"plan": "short-1m"}))
    assert r["plan"] == "short-1m"
    rows = api.follow_ups("a.worker", p["id"])
    old_ids = {o["id"] for o in old}
    kept = [r for r in rows if r["id"] in old_ids]
    assert len(kept) == len(old)  # nothing deleted
    by_id = {r["id"]: r for r in kept}
    assert by_id[old[0]["id"]]["status"] == "done"
    for o in old[1:]:
        assert by_id[o["id"]]["status"] == "cancelled"
        assert by_id[o["id"]]["status_reason"] == "plan changed to short-1m"
    new = sorted((r for r in rows if r["id"] not in old_ids), key=lambda r: r["id"])
    # short-1m from 4/28: 4/30, 5/7, 5/12 (sms), 5/12 (visit), 5/28 (final review); from 5/11 on
    start = d("2026-04-28")
    expected = [
        (expected_due(s, start).isoformat(), s.channel.value, s.kind.value)
        for s in PLANS["short-1m"].steps
        if expected_due(s, start) >= d("2026-05-11")
    ]
    assert [(r["due_date"], r["channel"], r["kind"]) for r in new] == expected
    assert [r["due_date"] for r in new] == ["2026-05-12", "2026-05-12", "2026-05-28"]
    assert new[-1]["kind"] == "final_review"
    assert all(r["status"] == "pending" for r in new)
    # unknown plan
    r = api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"plan": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "plan"]
    assert len(api.follow_ups("a.worker", p["id"])) == len(rows)


def test_plan_change_respects_consent(api, clock):
    c = api.client(**NO_CONSENT)
    p = api.placement(start="2026-04-28", client=c)
    set_today(clock, "2026-05-01")
    api.ok(api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"plan": "short-1m"}))
    new = [r for r in api.follow_ups("a.worker", p["id"]) if r["status"] not in ("cancelled",)]
    assert [(r["due_date"], r["party"], r["status"]) for r in new] == [
        ("2026-05-07", "employer", "skipped"),
        ("2026-05-12", "client", "skipped"),  # automated SMS, no consent
        ("2026-05-12", "client", "pending"),
        ("2026-05-28", "client", "pending"),
    ]


def test_worker_change_moves_pending_follow_ups(api, clock):
    users = api.world.users
    c = api.client(**(ALL_CONSENT | {"consent_family": False}))
    p = api.placement(start="2026-04-28", client=c)
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    set_today(clock, "2026-04-30")
    outcome(api, rows[0]["id"])
    r = api.ok(api.patch("a.manager", f"/api/v1/placements/{p['id']}", {"worker_id": users["a.worker2"]}))
    assert r["worker_id"] == users["a.worker2"]
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    assert rows[0]["assignee_id"] == users["a.worker"]  # done by a.worker: stays theirs
    for row in rows[1:]:
        if row["status"] == "pending":
            assert row["assignee_id"] == users["a.worker2"], row
    # the family steps were skipped; once consent comes they belong to the new worker
    family(api, c["id"])
    patch_client(api, c["id"], consent_family=True)
    fam = [r for r in plan_rows(api.follow_ups("a.worker", p["id"])) if r["party"] == "family"]
    assert [r["status"] for r in fam] == ["pending", "pending"]
    assert [r["assignee_id"] for r in fam] == [users["a.worker2"]] * 2
    # a worker of another office is refused
    r = api.patch("a.manager", f"/api/v1/placements/{p['id']}", {"worker_id": users["b.worker"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "worker_id"]


# ------------------------------------------------------------------ separation


def separate(api, pid: int, date_: str, who: str = "a.worker", **body):
    body = {"date": date_, "reason": "voluntary", "note": "体調不良のため"} | body
    return api.post(who, f"/api/v1/placements/{pid}/separation", body)


def separation_call(rows: list[dict]) -> dict:
    [call] = [r for r in rows if r["kind"] == "separation_call"]
    return call


def test_separation_cancels_pending_and_adds_a_call(api, clock):
    p = api.placement(start="2026-04-06")  # default client: family steps skipped
    rows = plan_rows(api.follow_ups("a.worker", p["id"]))
    set_today(clock, "2026-04-07")
    outcome(api, rows[0]["id"])
    set_today(clock, "2026-04-24")  # a Friday
    sep = api.ok(separate(api, p["id"], "2026-04-24"), 201)
    assert (sep["date"], sep["reason"], sep["note"]) == (
        "2026-04-24",
        "voluntary",
        "体調不良のため",
    )
    assert api.ok(api.get("a.worker", f"/api/v1/placements/{p['id']}"))["status"] == "separated"
    after = api.follow_ups("a.worker", p["id"])
    plan = plan_rows(after)
    assert len(plan) == len(rows)  # kept
    assert plan[0]["status"] == "done"
    for before, now in zip(rows[1:], plan[1:], strict=True):
        if before["status"] == "pending":
            assert (now["status"], now["status_reason"]) == ("cancelled", "separated on 2026-04-24")
        else:
            assert now["status"] == before["status"] == "skipped"
    call = separation_call(after)
    assert call["due_date"] == "2026-04-27"  # Friday -> Monday
    assert call["window_end"] == "2026-04-28"
    assert (call["party"], call["channel"], call["status"]) == ("client", "phone", "pending")
    assert call["assignee_id"] == api.world.users["a.worker"]
    # once only
    r = separate(api, p["id"], "2026-04-24")
    assert r.status_code == 409
    assert len(api.follow_ups("a.worker", p["id"])) == len(after)
    # the plan of a separated placement can no longer change
    assert api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "2026-04-13"}).status_code == 409
    assert api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"plan": "short-1m"}).status_code == 409


def test_separation_in_the_past_is_called_after_today(api, clock):
    p = api.placement(start="2026-04-01")
    set_today(clock, "2026-04-20")  # Monday; the separation was on Friday the 17th
    api.ok(separate(api, p["id"], "2026-04-17"), 201)
    call = separation_call(api.follow_ups("a.worker", p["id"]))
    assert (call["due_date"], call["window_end"]) == ("2026-04-21", "2026-04-22")


@pytest.mark.parametrize(
    ("today", "sep_date", "due", "window_end"),
    [
        ("2026-04-28", "2026-04-28", "2026-04-30", "2026-05-01"),  # before Showa Day
        ("2026-05-01", "2026-05-01", "2026-05-07", "2026-05-08"),  # before the Golden Week run
        ("2026-12-25", "2026-12-25", "2026-12-28", "2027-01-04"),  # before the New Year closure
        ("2026-04-20", "2026-07-17", "2026-07-21", "2026-07-22"),  # a future date: Marine Day
    ],
)
def test_separation_call_before_holidays(api, clock, today, sep_date, due, window_end):
    p = api.placement(start="2026-04-06")
    set_today(clock, today)
    api.ok(separate(api, p["id"], sep_date), 201)
    call = separation_call(api.follow_ups("a.worker", p["id"]))
    assert (call["due_date"], call["window_end"]) == (due, window_end)
    assert workable(d(call["due_date"])) and workable(d(call["window_end"]))


def test_separation_date_checks(api):
    p = api.placement(start="2026-04-28")
    r = separate(api, p["id"], "2026-04-27")
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "date"]]
    r = separate(api, p["id"], "2027-06-01")  # more than a year ahead of 2026-04-20
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "date"]
    # nothing changed
    assert api.ok(api.get("a.worker", f"/api/v1/placements/{p['id']}"))["status"] == "active"
    assert by_status(api.follow_ups("a.worker", p["id"]))["cancelled"] == 0
    # the start date itself is allowed
    api.ok(separate(api, p["id"], "2026-04-28"), 201)


def test_consent_does_not_revive_a_separated_placement(api, clock):
    c = api.client(**NO_CONSENT)
    p = api.placement(start="2026-04-28", client=c)
    api.ok(separate(api, p["id"], "2026-05-08"), 201)
    before = api.follow_ups("a.worker", p["id"])
    patch_client(api, c["id"], **ALL_CONSENT)
    family(api, c["id"])
    assert api.follow_ups("a.worker", p["id"]) == before


def test_new_placement_of_the_same_client_has_its_own_plan(api, clock):
    c = api.client(**ALL_CONSENT)
    first = api.placement(start="2026-04-06", client=c)
    set_today(clock, "2026-05-11")
    api.ok(separate(api, first["id"], "2026-05-08"), 201)
    first_rows = api.follow_ups("a.worker", first["id"])
    second = api.placement(start="2026-06-01", client=c, employer=api.employer(name="次の職場"))
    rows = plan_rows(api.follow_ups("a.worker", second["id"]))
    check_plan_dates(rows, STANDARD, d("2026-06-01"))
    assert {r["placement_id"] for r in rows} == {second["id"]}
    assert not {r["id"] for r in rows} & {r["id"] for r in first_rows}
    assert all(r["status"] in ("pending", "skipped") for r in rows)
    assert api.follow_ups("a.worker", first["id"]) == first_rows  # untouched
    # consent changes now affect only the active placement
    patch_client(api, c["id"], consent_employer=False)
    assert api.follow_ups("a.worker", first["id"]) == first_rows
    emp = [r["status"] for r in plan_rows(api.follow_ups("a.worker", second["id"])) if r["party"] == "employer"]
    assert emp == ["skipped"] * 4


# ------------------------------------------------------------------ the other office


def test_office_b_uses_the_japanese_calendar_and_is_scoped(api):
    c = api.client("b.worker", **ALL_CONSENT)
    e = api.employer("b.worker", name="Brooklyn Bakery")
    p = api.placement("b.worker", start="2026-04-28", client=c, employer=e)
    rows = plan_rows(api.follow_ups("b.worker", p["id"]))
    check_plan_dates(rows, STANDARD, d("2026-04-28"))  # Japanese holidays, by design for now
    assert rows[0]["due_date"] == "2026-04-30"
    assert {r["assignee_id"] for r in rows} == {api.world.users["b.worker"]}
    # office A cannot see or change it
    assert api.get("a.worker", f"/api/v1/placements/{p['id']}/follow-ups").status_code == 404
    assert api.get("a.manager", f"/api/v1/follow-ups/{rows[0]['id']}").status_code == 404
    assert api.patch("a.manager", f"/api/v1/placements/{p['id']}", {"start_date": "2026-05-01"}).status_code == 404
    assert separate(api, p["id"], "2026-05-01", who="a.manager").status_code == 404
    # and office B cannot use office A's client or worker
    a_client = api.client("a.worker")
    r = api.post(
        "b.worker",
        "/api/v1/placements",
        {
            "client_id": a_client["id"],
            "employer_id": e["id"],
            "job_title": "x",
            "employment_type": "general",
            "start_date": "2026-04-28",
            "worker_id": api.world.users["a.worker"],
        },
    )
    assert r.status_code == 422
    assert {tuple(x["loc"]) for x in r.json()["detail"]} == {
        ("body", "client_id"),
        ("body", "worker_id"),
    }


def test_unknown_plan_and_default_plan(api):
    c, e = api.client(), api.employer()
    body = {
        "client_id": c["id"],
        "employer_id": e["id"],
        "job_title": "x",
        "employment_type": "general",
        "start_date": "2026-04-28",
    }
    r = api.post("a.worker", "/api/v1/placements", body | {"plan": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "plan"]
    p = api.ok(api.post("a.worker", "/api/v1/placements", body), 201)
    assert p["plan"] == "standard-3m"  # the office's default
    assert len(api.follow_ups("a.worker", p["id"])) == len(STANDARD)
