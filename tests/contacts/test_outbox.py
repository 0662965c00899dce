"""The outbox: quiet hours in two time zones, late and opted-out check-ins, idempotent planning,
concurrent dispatchers, stuck rows, and ``teichaku outbox``.

Messages go to a real SMTP server (aiosmtpd on loopback), so "nothing was sent" is what the
server saw, not what our code says it did.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from service.accounts.models import Office
from service.cli import app as cli_app
from service.clock import FixedClock
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import claim, enqueue
from service.contacts.models import Client
from service.db import session_scope
from service.jobs import run_job
from service.settings import get_settings
from tests.contacts.smtp_sink import smtp_messaging, smtp_sink

ROOT = Path(__file__).resolve().parents[2]
START = "2026-03-20"  # the one-month e-mail check-in of standard-3m is due on 2026-04-20
OFFICES = [("a.worker", "Asia/Tokyo"), ("b.worker", "America/New_York")]


def local(tz: str, day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def at(tz: str, day: date, hour: int, minute: int = 0, second: int = 0) -> FixedClock:
    return FixedClock(local(tz, day, hour, minute, second))


DUE = date(2026, 4, 20)
NEXT = date(2026, 4, 21)


@pytest.fixture
def sink():
    with smtp_sink() as (handler, port):
        yield handler, port


def outbox(factory) -> list[OutboxMessage]:
    with factory() as s:
        return list(s.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())


def email_check_in(api, who: str, placement: dict) -> dict:
    return next(
        f for f in api.follow_ups(who, placement["id"])
        if f["channel"] == "email" and f["party"] == "client" and f["automated"]
    )  # fmt: skip


def update_client(factory, client_id: int, **fields) -> None:
    with session_scope(factory) as s:
        client = s.get(Client, client_id)
        for k, v in fields.items():
            setattr(client, k, v)
        s.add(client)


def add_due_rows(factory, office_id: int, n: int, due: datetime) -> list[int]:
    """``n`` e-mails due at ``due`` (no window), written as any message is: through ``enqueue``."""
    with session_scope(factory) as s:
        rows = [
            enqueue(
                s,
                OutboxMessage(
                    idempotency_key=f"test:{i}",
                    office_id=office_id,
                    purpose=Purpose.alert,
                    channel=MessageChannel.email,
                    to_address=f"staff{i}@example.jp",
                    subject="test",
                    body=f"本文 {i}",
                    next_attempt_at=due,
                ),
            )  # fmt: skip
            for i in range(n)
        ]
        return [r.id for r in rows]


# ------------------------------------------------------------------ quiet hours


@pytest.mark.parametrize(("who", "tz"), OFFICES, ids=["tokyo", "new_york"])
def test_a_check_in_due_before_the_window_waits_for_nine_oclock_local(api, settings, factory, sink, who, tz):
    handler, port = sink
    placement = api.placement(who, start=START, client=api.client(who, email="early@example.jp"))
    assert email_check_in(api, who, placement)["due_date"] == "2026-04-20"
    m = smtp_messaging(settings, port)

    assert run_job("plan_check_ins", factory, at(tz, DUE, 7), m) == 1
    [row] = outbox(factory)
    assert row.send_tz == tz and (row.window_start, row.window_end) == ("09:00", "20:00")
    assert row.next_attempt_at == local(tz, DUE, 9)

    for hour, minute, second in ((7, 0, 0), (8, 30, 0), (8, 59, 59)):
        assert run_job("dispatch", factory, at(tz, DUE, hour, minute, second), m) == 0
    assert handler.received == [] and handler.connections == 0

    assert run_job("dispatch", factory, at(tz, DUE, 9), m) == 1
    assert [r.rcpt_tos for r in handler.received] == [["early@example.jp"]]
    [row] = outbox(factory)
    assert row.status == MessageStatus.sent and row.sent_at == local(tz, DUE, 9)


@pytest.mark.parametrize(("who", "tz"), OFFICES, ids=["tokyo", "new_york"])
def test_a_check_in_claimed_just_after_eight_pm_waits_for_the_next_morning(api, settings, factory, sink, who, tz):
    handler, port = sink
    api.placement(who, start=START)
    m = smtp_messaging(settings, port)

    assert run_job("plan_check_ins", factory, at(tz, DUE, 19, 59), m) == 1
    [row] = outbox(factory)
    assert row.next_attempt_at == local(tz, DUE, 19, 59)  # inside the window: due at once

    # The dispatcher was late: it claims the row at 20:01 and must put it back, unsent.
    assert run_job("dispatch", factory, at(tz, DUE, 20, 1), m) == 0
    assert handler.received == []
    [row] = outbox(factory)
    assert row.status == MessageStatus.queued and row.next_attempt_at == local(tz, NEXT, 9)
    assert row.attempts == 0  # putting it back is not an attempt
    for hour, minute in ((20, 2), (23, 59)):
        assert run_job("dispatch", factory, at(tz, DUE, hour, minute), m) == 0
    assert run_job("dispatch", factory, at(tz, NEXT, 3), m) == 0
    assert handler.received == []

    assert run_job("dispatch", factory, at(tz, NEXT, 9), m) == 1
    assert len(handler.received) == 1
    assert outbox(factory)[0].status == MessageStatus.sent


def test_a_night_shift_workers_own_window_is_honoured(api, settings, factory, sink):
    handler, port = sink
    tz = "Asia/Tokyo"
    night = api.client(name="夜勤 さん", email="night@example.jp")
    day = api.client(name="日勤 さん", email="day@example.jp")
    api.placement(start=START, client=night)
    api.placement(start=START, client=day)
    update_client(factory, night["id"], send_window_start="22:00", send_window_end="06:00")
    m = smtp_messaging(settings, port)

    # Planned at 05:59 (inside 22:00-06:00 for the night worker, before 09:00 for the other)...
    assert run_job("plan_check_ins", factory, at(tz, DUE, 5, 59), m) == 2
    by_to = {r.to_address: r for r in outbox(factory)}
    assert (by_to["night@example.jp"].window_start, by_to["night@example.jp"].window_end) == ("22:00", "06:00")
    assert by_to["night@example.jp"].next_attempt_at == local(tz, DUE, 5, 59)
    assert by_to["day@example.jp"].next_attempt_at == local(tz, DUE, 9)

    # ...but claimed at 06:01: the night window has closed, so it waits for 22:00.
    assert run_job("dispatch", factory, at(tz, DUE, 6, 1), m) == 0
    assert handler.received == []
    assert {r.to_address: r for r in outbox(factory)}["night@example.jp"].next_attempt_at == local(tz, DUE, 22)

    assert run_job("dispatch", factory, at(tz, DUE, 9), m) == 1
    assert run_job("dispatch", factory, at(tz, DUE, 21, 59), m) == 0
    assert [r.rcpt_tos for r in handler.received] == [["day@example.jp"]]
    assert run_job("dispatch", factory, at(tz, DUE, 22), m) == 1
    assert [r.rcpt_tos for r in handler.received] == [["day@example.jp"], ["night@example.jp"]]


def test_an_office_window_applies_unless_the_client_has_one(api, settings, factory, world, sink):
    handler, port = sink
    tz = "Asia/Tokyo"
    with session_scope(factory) as s:
        office = s.get(Office, world.office_a)
        office.send_window_start, office.send_window_end = "10:30", "17:00"
        s.add(office)
    own = api.client(name="自分の時間", email="own@example.jp")
    api.placement(start=START, client=own)
    api.placement(start=START, client=api.client(name="事業所の時間", email="office@example.jp"))
    update_client(factory, own["id"], send_window_start="09:00", send_window_end="10:00")
    m = smtp_messaging(settings, port)

    run_job("plan_check_ins", factory, at(tz, DUE, 9, 15), m)
    by_to = {r.to_address: r for r in outbox(factory)}
    assert by_to["own@example.jp"].next_attempt_at == local(tz, DUE, 9, 15)
    assert by_to["office@example.jp"].next_attempt_at == local(tz, DUE, 10, 30)
    assert run_job("dispatch", factory, at(tz, DUE, 9, 15), m) == 1
    assert run_job("dispatch", factory, at(tz, DUE, 10, 29), m) == 0
    assert run_job("dispatch", factory, at(tz, DUE, 10, 30), m) == 1
    assert [r.rcpt_tos[0] for r in handler.received] == ["own@example.jp", "office@example.jp"]


# ------------------------------------------------------------------ not sent at all


def test_a_check_in_more_than_two_days_late_is_cancelled_not_sent(api, settings, factory, sink):
    handler, port = sink
    late = api.placement(start=START, client=api.client(name="遅い", email="late@example.jp"))
    in_time = api.placement(start="2026-03-22", client=api.client(name="まだ", email="intime@example.jp"))
    assert email_check_in(api, "a.worker", in_time)["due_date"] == "2026-04-22"
    m = smtp_messaging(settings, port)
    # The service was down from before 2026-04-20 until Friday 2026-04-24.
    back = at("Asia/Tokyo", date(2026, 4, 24), 9)

    assert run_job("plan_check_ins", factory, back, m) == 1  # two days late still goes
    assert run_job("dispatch", factory, back, m) == 1
    assert [r.rcpt_tos for r in handler.received] == [["intime@example.jp"]]

    fu = email_check_in(api, "a.worker", late)
    assert fu["status"] == "cancelled"
    assert "more than 2 days late" in fu["status_reason"]
    for later in (back, FixedClock(back.now() + timedelta(days=1))):
        assert run_job("plan_check_ins", factory, later, m) == 0
        assert run_job("dispatch", factory, later, m) == 0
    assert [r.to_address for r in outbox(factory)] == ["intime@example.jp"]
    assert len(handler.received) == 1


def test_an_opted_out_client_gets_nothing(api, settings, factory, clock, sink):
    handler, port = sink
    stopped = api.client(name="停止した人", email="stopped@example.jp")
    p_stopped = api.placement(start=START, client=stopped)
    later = api.client(name="あとで停止", email="later@example.jp")
    p_later = api.placement(start=START, client=later)
    withdrew = api.client(name="同意撤回", email="withdrew@example.jp")
    p_withdrew = api.placement(start=START, client=withdrew)
    update_client(factory, stopped["id"], opted_out_at=clock.now() - timedelta(days=3), opted_out_via="sms")
    m = smtp_messaging(settings, port)

    assert run_job("plan_check_ins", factory, clock, m) == 2
    fu = email_check_in(api, "a.worker", p_stopped)
    assert fu["status"] == "skipped" and "stopped automated messages" in fu["status_reason"]
    assert {r.to_address for r in outbox(factory)} == {"later@example.jp", "withdrew@example.jp"}

    # Between planning and sending, one client stops the messages (STOP), and another takes
    # back the consent through the worker: neither message may go out.
    update_client(factory, later["id"], opted_out_at=clock.now(), opted_out_via="sms")
    api.ok(api.patch("a.worker", f"/api/v1/clients/{withdrew['id']}", {"consent_automated": False}))

    assert run_job("dispatch", factory, clock, m) == 0
    assert handler.received == [] and handler.connections == 0
    assert {r.status for r in outbox(factory)} == {MessageStatus.cancelled}
    assert all(r.error_reason and r.error_reason.startswith("not sent:") for r in outbox(factory))
    fu = email_check_in(api, "a.worker", p_later)
    assert fu["status"] == "skipped" and "stopped automated messages" in fu["status_reason"]
    assert email_check_in(api, "a.worker", p_withdrew)["status"] == "skipped"
    assert run_job("dispatch", factory, FixedClock(clock.now() + timedelta(hours=1)), m) == 0
    assert handler.received == []


# ------------------------------------------------------------------ idempotency and claims


def test_planning_twice_or_at_the_same_time_writes_one_row_per_check_in(api, settings, factory, clock, sink):
    _, port = sink
    employer = api.employer()
    for i in range(6):
        api.placement(start=START, employer=employer, client=api.client(name=f"人 {i}", email=f"p{i}@example.jp"))
    m = smtp_messaging(settings, port)

    barrier, counts, errors = threading.Barrier(2), [], []

    def planner() -> None:
        try:
            barrier.wait()
            counts.append(run_job("plan_check_ins", factory, clock, m))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=planner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and sum(counts) == 6
    assert run_job("plan_check_ins", factory, clock, m) == 0
    rows = outbox(factory)
    assert len(rows) == 6 and len({r.idempotency_key for r in rows}) == 6
    assert len({r.follow_up_id for r in rows}) == 6
    # The key is the follow-up and its attempt; writing it again is refused.
    with session_scope(factory) as s:
        copy = OutboxMessage(**{k: v for k, v in rows[0].model_dump().items() if k != "id"})
        assert enqueue(s, copy) is None
    assert len(outbox(factory)) == 6


def test_two_dispatchers_claiming_at_once_never_take_the_same_row(factory, world, clock):
    now = clock.now()
    ids = add_due_rows(factory, world.office_a, 300, now - timedelta(minutes=1))
    barrier = threading.Barrier(2)
    taken: dict[str, list[list[int]]] = {"one": [], "two": []}
    errors: list[Exception] = []

    def dispatcher(name: str) -> None:
        try:
            with factory() as session:
                barrier.wait()
                while batch := claim(session, now=now, limit=7):
                    taken[name].append([r.id for r in batch])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert all(1 <= len(b) <= 7 for batches in taken.values() for b in batches)  # the limit holds
    one = [i for b in taken["one"] for i in b]
    two = [i for b in taken["two"] for i in b]
    assert len(one) == len(set(one)) and len(two) == len(set(two))
    assert set(one) & set(two) == set()
    assert sorted(one + two) == sorted(ids)
    assert one and two  # both really took part
    with factory() as s:
        rows = s.exec(select(OutboxMessage)).all()
        assert {r.status for r in rows} == {MessageStatus.sending}
        assert all(r.attempts == 1 and r.claimed_at == now for r in rows)
        # Every row carries the token of the batch that claimed it, and batches do not share one.
        tokens = {r.id: r.claim_token for r in rows}
        for batches in taken.values():
            for batch in batches:
                assert len({tokens[i] for i in batch}) == 1
        assert len(set(tokens.values())) == len(taken["one"]) + len(taken["two"])


def test_rows_left_sending_become_unknown_and_are_never_sent_again(api, settings, factory, clock, sink):
    handler, port = sink
    employer = api.employer()
    for i in range(3):
        api.placement(start=START, employer=employer, client=api.client(name=f"人 {i}", email=f"s{i}@example.jp"))
    m = smtp_messaging(settings, port)
    run_job("plan_check_ins", factory, clock, m)
    # A dispatcher claims two and dies before sending or recording anything.
    with factory() as session:
        stuck = [r.id for r in claim(session, now=clock.now(), limit=2)]
    assert len(stuck) == 2

    assert run_job("reconcile_outbox", factory, FixedClock(clock.now() + timedelta(minutes=9)), m) == 0
    assert run_job("reconcile_outbox", factory, FixedClock(clock.now() + timedelta(minutes=11)), m) == 2
    by_id = {r.id: r for r in outbox(factory)}
    for i in stuck:
        assert by_id[i].status == MessageStatus.unknown
        assert "not re-sent" in by_id[i].error_reason
    [fresh] = [i for i in by_id if i not in stuck]
    assert by_id[fresh].status == MessageStatus.queued  # untouched by reconcile

    for later in (timedelta(minutes=12), timedelta(hours=3), timedelta(days=1)):
        run_job("dispatch", factory, FixedClock(clock.now() + later), m)
        run_job("reconcile_outbox", factory, FixedClock(clock.now() + later), m)
    assert handler.outbox_ids() == [fresh]
    by_id = {r.id: r for r in outbox(factory)}
    assert [by_id[i].status for i in stuck] == [MessageStatus.unknown] * 2
    assert by_id[fresh].status == MessageStatus.sent


# ------------------------------------------------------------------ teichaku outbox


def test_the_outbox_command_lists_messages_with_status_and_address(api, settings, factory, clock, db_url, monkeypatch):
    with smtp_sink(rcpt_codes={"bad@example.jp": "550 no such user"}) as (_, port):
        api.placement(start=START, client=api.client(name="届く", email="ok@example.jp"))
        api.placement(start=START, client=api.client(name="届かない", email="bad@example.jp"))
        waiting = api.client(name="夜", email="wait@example.jp")
        api.placement(start=START, client=waiting)
        update_client(factory, waiting["id"], send_window_start="22:00", send_window_end="23:00")
        m = smtp_messaging(settings, port)
        run_job("plan_check_ins", factory, clock, m)
        run_job("dispatch", factory, clock, m)
    status = {r.to_address: r.status for r in outbox(factory)}
    assert status == {"ok@example.jp": "sent", "bad@example.jp": "failed", "wait@example.jp": "queued"}

    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    monkeypatch.setenv("DATABASE_URL", db_url)

    def teichaku(*args: str):
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(cli_app, ["outbox", *args])
        finally:
            get_settings.cache_clear()

    r = teichaku()
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("#")]
    assert len(lines) == 3
    by_address = {a: [line for line in lines if f"  {a}" in line] for a in ("ok@", "bad@", "wait@")}
    assert all(len(found) == 1 for found in by_address.values()), lines
    ok, bad, wait = (by_address[a][0] for a in ("ok@", "bad@", "wait@"))
    assert " sent " in ok and " email " in ok and " check_in " in ok
    assert " failed " in bad and "(the address was refused by the mail server)" in bad
    assert " queued " in wait

    r = teichaku("--status", "queued", "--body")
    assert r.exit_code == 0, r.output
    assert "wait@example.jp" in r.output and "ok@example.jp" not in r.output
    assert "お仕事はいかがですか" in r.output and "/r/" in r.output

    r = teichaku("--status", "lost")
    assert r.exit_code != 0 and "unknown status" in r.output
