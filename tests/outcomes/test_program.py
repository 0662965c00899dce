"""The post-employment program (Iwamizawa): sessions planned every two months by the scheduler job
(across a year boundary, moved off holidays), small groups, women-only sessions, invitations
written once through the outbox on the client's channel, attendance, and a missed session by an
at-risk client making a follow-up in the worker's queue and a crisis signal.

The shipped config/program.toml: every 2 months (January, March, May...), target day 15, groups of
at most 3 at 10:00 and 14:00 office time, women-only sessions, planned 21 days ahead."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from service.audit.models import AuditEvent
from service.contacts.messaging import outbox
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import Messaging
from service.contacts.models import Client, FollowUp, FollowUpKind
from service.db import session_scope
from service.jobs import run_job
from service.outcomes import program
from service.outcomes.models import CrisisSignal
from service.outcomes.program import ProgramInvitation, ProgramSession
from tests.contacts.smtp_sink import smtp_messaging, smtp_sink

TOKYO = ZoneInfo("Asia/Tokyo")
ROOT = Path(__file__).resolve().parents[2]


def at(day: str, hour: int = 9, minute: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), datetime.min.time().replace(hour=hour, minute=minute), TOKYO)


def local(api_value: str) -> datetime:
    return datetime.fromisoformat(api_value.replace("Z", "+00:00")).astimezone(TOKYO)


@pytest.fixture
def messaging(settings) -> Messaging:
    return Messaging.from_settings(settings)


def plan(factory, clock, messaging) -> int:
    return run_job("plan_program_sessions", factory, clock, messaging)


def attendance(api, who: str = "a.worker", **params) -> dict:
    return api.ok(api.get(who, "/api/v1/program/attendance", params=params))


def session_detail(api, session_id: int, who: str = "a.worker") -> dict:
    return api.ok(api.get(who, f"/api/v1/program/sessions/{session_id}"))


def record(api, invitation_id: int, value: str, who: str = "a.worker"):
    return api.post(who, f"/api/v1/program/invitations/{invitation_id}/attendance", {"attendance": value})


def invitation_of(api, client_id: int) -> dict:
    rows = api.ok(api.get("a.worker", f"/api/v1/program/clients/{client_id}/attendance"))
    assert len(rows) == 1, rows
    return rows[0]["invitation"]


# ---------------------------------------------------------------- cadence and holidays


def test_sessions_every_two_months_across_the_new_year_and_off_holidays(api, factory, clock, messaging, tmp_path):
    # Target day 1: 1 January 2027 is a holiday (and the office is closed 29 Dec - 3 Jan), and
    # 1 May 2027 is a Saturday followed by Golden Week (3, 4, 5 May).
    toml = tmp_path / "program.toml"
    toml.write_text("[defaults]\nday_of_month = 1\neligible_months = 24\ntimes = ['14:00']\n", encoding="utf-8")
    config = program.load_program_config(toml)
    api.placement(start="2026-04-13")

    day = date(2026, 10, 1)
    while day <= date(2027, 12, 1):  # the job ticks weekly here; it plans 21 days ahead
        clock.set(at(day.isoformat()))
        with session_scope(factory) as s:
            program.plan_program_sessions(s, clock, messaging, config)
        day += timedelta(days=7)

    with session_scope(factory) as s:
        starts = [r.starts_at.astimezone(TOKYO) for r in s.exec(select(ProgramSession).order_by("starts_at")).all()]
    assert [d.date().isoformat() for d in starts] == [
        "2026-11-02",  # 1 Nov 2026 is a Sunday
        "2027-01-04",  # not New Year's Day nor the closed days
        "2027-03-01",
        "2027-05-06",  # after Golden Week
        "2027-07-01",
        "2027-09-01",
        "2027-11-01",
    ]
    assert {(d.hour, d.minute) for d in starts} == {(14, 0)}


def test_every_n_months_is_configurable_per_office(tmp_path, world):
    toml = tmp_path / "program.toml"
    toml.write_text(f"[defaults]\nevery_months = 2\n[offices.{world.office_a}]\nevery_months = 3\n", encoding="utf-8")
    config = program.load_program_config(toml)
    assert config.for_office(world.office_a).every_months == 3
    assert config.for_office(world.office_b).every_months == 2


@pytest.mark.parametrize(
    "text, field",
    [
        ("[defaults]\nevery_months = 0\n", "every_months"),
        ("[defaults]\ntimes = ['25:00']\n", "times"),
        ("[defaults]\ncadence = 2\n", "cadence"),
        ("[offices.x]\nplace = 'a'\n", "offices.x"),
    ],
)
def test_a_bad_program_config_is_refused_naming_the_field(tmp_path, text, field):
    toml = tmp_path / "program.toml"
    toml.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=field):
        program.load_program_config(toml)


def test_the_shipped_config_is_valid():
    config = program.load_program_config(ROOT / "config" / "program.toml")
    assert config.defaults.every_months == 2 and config.defaults.group_size == 3


# ---------------------------------------------------------------- groups and women-only


def test_small_groups_and_women_only_sessions(api, factory, clock, messaging):
    women = [api.placement(start="2026-04-13", client=api.client(name=f"女性 {i}", sex="female")) for i in range(5)]
    others = [api.placement(start="2026-04-13", client=api.client(name=f"他 {i}")) for i in range(3)]
    others.append(api.placement(start="2026-04-13", client=api.client(name="男性", sex="male")))
    clock.set(at("2026-04-27"))  # 15 May 2026 (a Friday) is within 21 days

    assert plan(factory, clock, messaging) == 9
    sessions = attendance(api)["sessions"]
    assert [s["invited"] for s in sessions] == [3, 2, 2, 2]
    assert [s["session"]["women_only"] for s in sessions] == [True, True, False, False]
    assert [local(s["session"]["starts_at"]).strftime("%m-%d %H:%M") for s in sessions] == [
        "05-15 10:00",
        "05-15 14:00",
        "05-18 10:00",  # the next business day (Monday)
        "05-18 14:00",
    ]
    members = {s["session"]["id"]: session_detail(api, s["session"]["id"])["invitations"] for s in sessions}
    women_ids = {p["client_id"] for p in women}
    for s in sessions:
        ids = {i["client_id"] for i in members[s["session"]["id"]]}
        assert (ids <= women_ids) if s["session"]["women_only"] else not (ids & women_ids)
    invited = [i["client_id"] for rows in members.values() for i in rows]
    assert sorted(invited) == sorted(p["client_id"] for p in women + others)  # each exactly once


def test_clients_outside_the_period_or_separated_are_not_invited(api, factory, clock, messaging):
    recent = api.placement(start="2026-04-13")
    api.placement(start="2025-03-02")  # more than 12 months before
    gone = api.placement(start="2026-03-02")
    api.ok(
        api.post(
            "a.worker", f"/api/v1/placements/{gone['id']}/separation", {"date": "2026-04-10", "reason": "voluntary"}
        ),
        201,
    )
    clock.set(at("2026-04-27"))
    assert plan(factory, clock, messaging) == 1
    (s,) = attendance(api)["sessions"]
    assert [i["client_id"] for i in session_detail(api, s["session"]["id"])["invitations"]] == [recent["client_id"]]


# ---------------------------------------------------------------- invitations


def test_invitations_are_written_once_through_the_outbox_and_respect_consent(api, factory, clock, messaging):
    by_sms = api.placement(start="2026-04-13", client=api.client(email=None))
    by_email = api.placement(start="2026-04-13", client=api.client(phone=None, language="en"))
    no_consent = api.placement(start="2026-04-13", client=api.client(consent_automated=False))
    stopped = api.placement(start="2026-04-13")
    with session_scope(factory) as s:
        s.get(Client, stopped["client_id"]).opted_out_at = clock.now()
    clock.set(at("2026-04-27"))

    assert plan(factory, clock, messaging) == 4
    assert plan(factory, clock, messaging) == 0  # the job runs again (another tick, another process)

    with session_scope(factory) as s:
        rows = s.exec(select(OutboxMessage).where(OutboxMessage.purpose == Purpose.program_invitation)).all()
        by_client = {r.client_id: r for r in rows}
        assert set(by_client) == {by_sms["client_id"], by_email["client_id"]}
        sms, email = by_client[by_sms["client_id"]], by_client[by_email["client_id"]]
        assert sms.channel == MessageChannel.sms and sms.to_address == "+819012345678"
        assert "5月15日" in sms.body and "相談室" in sms.body
        assert email.channel == MessageChannel.email and email.to_address == "taro@example.jp"
        assert "15 May 2026" in email.body and email.subject
        assert s.exec(select(sa.func.count()).select_from(ProgramInvitation)).one() == 4
    for placement, delivery in ((no_consent, "not_sent"), (stopped, "not_sent"), (by_sms, "queued")):
        assert invitation_of(api, placement["client_id"])["delivery"] == delivery
    assert "consent" in invitation_of(api, no_consent["client_id"])["delivery_note"]
    status = {  # four clients: two sessions of two
        i["client_id"]: i["message_status"]
        for s in attendance(api)["sessions"]
        for i in session_detail(api, s["session"]["id"])["invitations"]
    }
    assert status == {by_sms["client_id"]: "queued", by_email["client_id"]: "queued",
                      no_consent["client_id"]: None, stopped["client_id"]: None}  # fmt: skip


def test_an_invitation_is_unique_per_session_and_client(api, factory, clock, messaging):
    p = api.placement(start="2026-04-13")
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    with session_scope(factory) as s:
        inv = s.exec(select(ProgramInvitation)).one()
        twin = ProgramInvitation(
            office_id=inv.office_id,
            session_id=inv.session_id,
            client_id=p["client_id"],
            placement_id=inv.placement_id,
            delivery=inv.delivery,
        )
        s.add(twin)
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()


@pytest.mark.postgres  # concurrent writers: SQLite serialises whole transactions
def test_two_scheduler_processes_plan_the_cycle_once(api, factory, clock, messaging, db_url):
    for i in range(4):
        api.placement(start="2026-04-13", client=api.client(name=f"C {i}"))
    clock.set(at("2026-04-27"))
    config = program.config_at(ROOT / "config" / "program.toml")
    results: list[int] = []
    first = factory()
    results.append(program.plan_program_sessions(first, clock, messaging, config))  # not committed yet

    def second() -> None:
        with session_scope(factory) as s:
            results.append(program.plan_program_sessions(s, clock, messaging, config))

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=1)  # it waits on the first one's unique keys
    first.commit()
    first.close()
    t.join(timeout=30)
    assert not t.is_alive()
    assert results == [4, 0]
    with session_scope(factory) as s:
        assert s.exec(select(sa.func.count()).select_from(ProgramSession)).one() == 2
        assert s.exec(select(sa.func.count()).select_from(ProgramInvitation)).one() == 4


# ---------------------------------------------------------------- attendance and follow-up


def _isolation(api, placement: dict) -> None:
    """The worker's call records an isolation sign: a crisis signal (and a watch flag)."""
    fu = next(
        r
        for r in api.follow_ups("a.worker", placement["id"])
        if r["party"] == "client" and r["channel"] == "phone" and r["status"] == "pending"
    )
    api.ok(
        api.post(
            "a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", {"reached": True, "risk_signals": ["isolation"]}
        ),
        201,
    )


def test_attendance_is_recorded_and_shown_per_client_and_per_office(api, factory, clock, messaging):
    a = api.placement(start="2026-04-13")
    b = api.placement(start="2026-04-13", client=api.client(name="B"))
    c = api.placement(start="2026-04-13", client=api.client(name="C"))
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    ia, ib, ic = (invitation_of(api, p["client_id"]) for p in (a, b, c))

    # Before the session: only "excused" (the client called in advance).
    r = record(api, ia["id"], "attended")
    assert r.status_code == 422 and "attendance" in r.text
    assert api.ok(record(api, ic["id"], "excused"))["attendance"] == "excused"

    clock.set(at("2026-05-15", 12))
    assert api.ok(record(api, ia["id"], "attended"))["attendance"] == "attended"
    got = api.ok(record(api, ib["id"], "absent"))
    assert got["attendance"] == "absent" and got["follow_up_id"] is None  # not at risk: nothing else

    rows = api.ok(api.get("a.worker", f"/api/v1/program/clients/{a['client_id']}/attendance"))
    assert [r["invitation"]["attendance"] for r in rows] == ["attended"]
    report = attendance(api, **{"from": "2026-05-01", "to": "2026-05-31"})
    (s,) = report["sessions"]
    assert (s["invited"], s["attended"], s["absent"], s["excused"]) == (3, 1, 1, 1)
    assert s["rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["months"] == [{"month": "2026-05", "sessions": 1, "invited": 3, "attended": 1, "rate": s["rate"]}]
    assert attendance(api, **{"from": "2026-06-01"})["sessions"] == []

    # Nothing was made for the client who was not at risk.
    with session_scope(factory) as s_:
        assert s_.exec(select(FollowUp).where(FollowUp.kind == FollowUpKind.missed_session_call)).all() == []
        assert s_.exec(select(CrisisSignal).where(CrisisSignal.kind == "missed_session")).all() == []
    assert api.ok(api.get("a.worker", "/api/v1/crisis-flags"))["items"] == []


def test_a_missed_session_by_an_at_risk_client_makes_a_follow_up_and_a_signal(api, factory, clock, messaging):
    p = api.placement(start="2026-04-13")
    _isolation(api, p)
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    inv = invitation_of(api, p["client_id"])

    clock.set(at("2026-05-15", 17))  # Friday, after the 10:00 session
    got = api.ok(record(api, inv["id"], "absent"))
    assert got["follow_up_id"] is not None
    again = api.ok(record(api, inv["id"], "absent"))  # recorded twice: still one follow-up
    assert again["follow_up_id"] == got["follow_up_id"]

    queue = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-05-18"}))  # next business day
    (item,) = [i for i in queue["items"] if i["kind"] == "missed_session_call"]
    assert item["follow_up_id"] == got["follow_up_id"]
    assert (item["due_date"], item["channel"], item["party"]) == ("2026-05-18", "phone", "client")
    assert "program session of 2026-05-15" in item["reason"]

    (flag,) = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": p["id"]}))["items"]
    assert "missed_session" in flag["signal_kinds"] and "isolation" in flag["signal_kinds"]
    with session_scope(factory) as s:
        assert len(s.exec(select(CrisisSignal).where(CrisisSignal.kind == "missed_session")).all()) == 1


def test_an_old_isolation_signal_no_longer_makes_the_client_at_risk(api, factory, clock, messaging, tmp_path):
    p = api.placement(start="2026-04-13")
    _isolation(api, p)
    flag = api.ok(api.get("a.worker", "/api/v1/crisis-flags"))["items"][0]
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{flag['id']}/resolve", {"note": "話を聞いた"}))
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    inv = invitation_of(api, p["client_id"])
    clock.set(at("2026-07-01"))  # more than risk_window_days (60) after the signal; the flag is resolved
    assert api.ok(record(api, inv["id"], "absent"))["follow_up_id"] is None


# ---------------------------------------------------------------- offices and bad input


def test_another_office_sees_nothing_and_bad_input_is_a_422(api, factory, clock, messaging):
    p = api.placement(start="2026-04-13")
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    inv = invitation_of(api, p["client_id"])
    for who in ("b.worker", "b.manager"):
        assert record(api, inv["id"], "excused", who).status_code == 404
        assert api.get(who, f"/api/v1/program/sessions/{inv['session_id']}").status_code == 404
        assert api.get(who, f"/api/v1/program/clients/{p['client_id']}/attendance").status_code == 404
        assert attendance(api, who)["sessions"] == []
    assert api.get("a.manager", f"/api/v1/program/sessions/{inv['session_id']}").status_code == 200
    r = record(api, inv["id"], "maybe")
    assert r.status_code == 422 and "attendance" in r.text
    r = api.post("a.worker", f"/api/v1/program/invitations/{inv['id']}/attendance", {"attendance": "excused", "x": 1})
    assert r.status_code == 422
    assert api.get("a.worker", "/api/v1/program/attendance", params={"from": "2026-13-01"}).status_code == 422
    assert invitation_of(api, p["client_id"])["attendance"] is None


def test_sex_is_optional_validated_and_kept_out_of_the_audit_trail(api, factory):
    c = api.client()
    assert c["sex"] is None
    assert api.ok(api.patch("a.worker", f"/api/v1/clients/{c['id']}", {"sex": "female"}))["sex"] == "female"
    r = api.patch("a.worker", f"/api/v1/clients/{c['id']}", {"sex": "f"})
    assert r.status_code == 422 and "sex" in r.text
    with session_scope(factory) as s:
        changes = [
            e.changes["sex"]
            for e in s.exec(select(AuditEvent).where(AuditEvent.record_type == "client")).all()
            if "sex" in e.changes
        ]
    assert changes == [{"old": None, "new": "[personal]"}]


# ---------------------------------------------------------------- sending (a real local SMTP server)


def test_an_invitation_arrives_by_e_mail_and_a_stop_cancels_one_not_yet_sent(api, settings, factory, clock):
    reader = api.placement(start="2026-04-13", client=api.client(phone=None, email="reader@example.jp"))
    stopper = api.placement(start="2026-04-13", client=api.client(phone=None, email="stopper@example.jp"))
    clock.set(at("2026-04-27", 10))
    with smtp_sink() as (handler, port):
        m = smtp_messaging(settings, port)
        assert run_job("plan_program_sessions", factory, clock, m) == 2
        with session_scope(factory) as s:  # the client replies STOP before the dispatcher runs
            outbox.stop_automated(s, s.get(Client, stopper["client_id"]), via="sms", now=clock.now())
        assert run_job("dispatch", factory, clock, m) == 1

        (got,) = handler.received
        assert got.rcpt_tos == ["reader@example.jp"]
        assert str(got.message["Subject"]) == "Office Aより：2026年5月15日（金）の集まりのご案内"
        body = got.message.get_body(("plain",)).get_content()
        assert "2026年5月15日（金） 10:00から" in body and "0126-22-1001" in body
    with session_scope(factory) as s:
        rows = {
            r.client_id: r
            for r in s.exec(select(OutboxMessage).where(OutboxMessage.purpose == Purpose.program_invitation)).all()
        }
        assert rows[reader["client_id"]].status == MessageStatus.sent
        assert rows[stopper["client_id"]].status == MessageStatus.cancelled


# ---------------------------------------------------------------- the command line


def test_the_job_runs_from_the_command_line(api, factory, db_url, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app as cli
    from service.settings import get_settings

    api.placement(start="2026-04-13")
    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        args = ["jobs", "run", "plan_program_sessions", "--at", "2026-04-27T10:00:00+09:00"]
        first, second = CliRunner().invoke(cli, args), CliRunner().invoke(cli, args)
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and "plan_program_sessions: 1 row(s)" in first.stdout, first.output
    assert second.exit_code == 0 and "plan_program_sessions: 0 row(s)" in second.stdout
    with session_scope(factory) as s:
        (prog,) = s.exec(select(ProgramSession)).all()
        assert prog.starts_at.astimezone(TOKYO) == at("2026-05-15", 10)


def test_a_recent_isolation_signal_alone_makes_the_client_at_risk(api, factory, clock, messaging):
    p = api.placement(start="2026-04-13")
    _isolation(api, p)
    flag = api.ok(api.get("a.worker", "/api/v1/crisis-flags"))["items"][0]
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{flag['id']}/resolve", {"note": "話を聞いた"}))
    clock.set(at("2026-04-27"))
    plan(factory, clock, messaging)
    clock.set(at("2026-05-15", 17))  # the isolation signal is 25 days old; no open flag
    got = api.ok(record(api, invitation_of(api, p["client_id"])["id"], "absent"))
    assert got["follow_up_id"] is not None
    (new_flag,) = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"status": "open"}))["items"]
    assert new_flag["signal_kinds"] == ["missed_session"]


def test_sessions_are_planned_in_the_office_time_zone(api, factory, clock, messaging):
    api.placement("b.worker", start="2026-04-13")
    clock.set(at("2026-04-27", 23))  # still 27 April in New York
    assert plan(factory, clock, messaging) == 1
    (s,) = attendance(api, "b.worker")["sessions"]
    ny = ZoneInfo("America/New_York")
    starts = datetime.fromisoformat(s["session"]["starts_at"].replace("Z", "+00:00"))
    assert starts == datetime(2026, 5, 15, 10, tzinfo=ny)  # 14:00 UTC (daylight saving time)
    assert attendance(api)["sessions"] == []  # nothing in office A
