"""E-mail check-ins against a real SMTP server (aiosmtpd on loopback), and the reply link.

Nothing of ours is faked: plans are written by ``plan_check_ins``, sent by ``dispatch`` through
the real ``SmtpAdapter`` (aiosmtplib), and answered through the real reply page.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.utils import parseaddr

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlmodel import col, select

from service.accounts.models import Office
from service.app import create_app
from service.clock import FixedClock
from service.contacts.messaging.models import InboundMessage, MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.replies import ReplyLinks
from service.contacts.models import FollowUp, FollowUpStatus, Party
from service.db import session_scope
from service.jobs import JobContext, arun_job, run_job
from service.outcomes.models import Outcome
from tests.conftest import TEST_SECRET
from tests.contacts.smtp_sink import free_port, secure_settings, smtp_messaging, smtp_sink

# The clock fixture stands on Monday 2026-04-20 09:00 in Tokyo: a placement that started on
# 2026-03-20 has its one-month e-mail check-in (standard-3m) due today.
START = "2026-03-20"
LINK = re.compile(r"http://127\.0\.0\.1:8000/r/([A-Za-z0-9._-]+)")


@pytest.fixture
def sink():
    with smtp_sink() as (handler, port):
        yield handler, port


def rows(factory, **where) -> list[OutboxMessage]:
    with factory() as s:
        q = select(OutboxMessage).order_by(OutboxMessage.id)
        for k, v in where.items():
            q = q.where(getattr(OutboxMessage, k) == v)
        return list(s.exec(q).all())


def one_row(factory, **where) -> OutboxMessage:
    found = rows(factory, **where)
    assert len(found) == 1, found
    return found[0]


def email_follow_up(api, placement: dict, party: str = "client") -> dict:
    return next(
        f for f in api.follow_ups("a.worker", placement["id"])
        if f["channel"] == "email" and f["party"] == party and f["automated"]
    )  # fmt: skip


def placements_with_emails(api, n: int, start: str = START) -> list[dict]:
    employer = api.employer()
    return [
        api.placement(start=start, employer=employer, client=api.client(name=f"利用者 {i}", email=f"c{i}@example.jp"))
        for i in range(n)
    ]  # fmt: skip


def outcomes_of(factory, follow_up_id: int) -> list[Outcome]:
    with factory() as s:
        return list(s.exec(select(Outcome).where(Outcome.follow_up_id == follow_up_id)).all())


# ------------------------------------------------------------------ what arrives


def test_a_due_check_in_arrives_with_its_japanese_text_and_a_reply_link(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    fu = email_follow_up(api, placement)
    m = smtp_messaging(settings, port)

    assert run_job("plan_check_ins", factory, clock, m) == 1
    assert handler.received == []  # written first, sent by the dispatcher
    assert run_job("dispatch", factory, clock, m) == 1

    assert len(handler.received) == 1
    got = handler.received[0]
    assert got.mail_from == "office@example.jp" and got.rcpt_tos == ["taro@example.jp"]
    msg = got.message
    assert parseaddr(msg["From"])[1] == "office@example.jp"
    assert parseaddr(msg["To"])[1] == "taro@example.jp"
    assert str(msg["Subject"]) == "Office Aより：お仕事はいかがですか"
    body = msg.get_body(("plain",)).get_content()
    assert "こんにちは。Office Aです。" in body
    assert "新しいお仕事はいかがですか" in body
    assert "0126-22-1001" in body  # the office's phone, written the Japanese way
    token = LINK.search(body).group(1)

    row = one_row(factory, follow_up_id=fu["id"])
    assert row.status == MessageStatus.sent and row.sent_at == clock.now()
    assert row.purpose == Purpose.check_in and row.attempts == 1
    assert msg["X-Teichaku-Outbox"] == str(row.id)
    assert row.provider_id == msg["Message-ID"]
    # The link in the e-mail is signed for exactly this message.
    assert ReplyLinks(TEST_SECRET, settings.public_url).read(token) == (row.id, None)
    # And it opens the reply page.
    assert api.http.get(f"/r/{token}").status_code == 200

    # Sent once: another plan and dispatch change nothing.
    assert run_job("plan_check_ins", factory, clock, m) == 0
    assert run_job("dispatch", factory, clock, m) == 0
    assert len(handler.received) == 1


def test_a_batch_uses_one_connection_and_every_message_id_is_unique(api, settings, factory, clock, sink):
    handler, port = sink
    placements_with_emails(api, 5)
    m = smtp_messaging(settings, port)
    assert run_job("plan_check_ins", factory, clock, m) == 5

    assert run_job("dispatch", factory, clock, m) == 5
    assert m.email.connections == 1
    assert handler.connections == 1
    assert len({r.peer for r in handler.received}) == 1
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(5)]
    ids = [r.message["Message-ID"] for r in handler.received]
    assert len(set(ids)) == 5 and all(re.fullmatch(r"<[^<>@\s]+@example\.jp>", i) for i in ids)
    assert sorted(r.provider_id for r in rows(factory)) == sorted(ids)


def test_a_dispatch_run_on_its_own_closes_its_connection_when_done(api, settings, factory, clock, sink):
    # `teichaku jobs run dispatch` (and run_job) runs in an event loop of its own: its session
    # cannot outlive it, so it says QUIT at the end and the next run opens its own.
    handler, port = sink
    placements_with_emails(api, 4)
    m = smtp_messaging(settings, port, dispatch_batch=1)
    assert run_job("plan_check_ins", factory, clock, m) == 4

    assert [run_job("dispatch", factory, clock, m) for _ in range(5)] == [1, 1, 1, 1, 0]
    assert m.email.connections == 4
    assert handler.connections == 4
    assert len({r.peer for r in handler.received}) == 4
    assert sorted(handler.quits) == sorted(handler.sessions)  # every one closed politely
    assert m.email.idle_sessions == 0


def test_starttls_required_but_not_offered_sends_nothing_in_clear(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    m = smtp_messaging(settings, port, smtp_starttls=True)
    run_job("plan_check_ins", factory, clock, m)

    assert run_job("dispatch", factory, clock, m) == 0
    assert handler.received == [] and handler.refused == []  # not even MAIL FROM / RCPT TO
    row = one_row(factory, follow_up_id=email_follow_up(api, placement)["id"])
    assert row.status == MessageStatus.queued and row.sent_at is None
    assert row.next_attempt_at > clock.now()  # tried again later, not in a loop
    assert "mail server" in row.error_reason


# ------------------------------------------------------------------ refusals and outages


def test_a_refused_address_fails_for_good_and_becomes_a_phone_call_for_the_worker(api, settings, factory, clock):
    with smtp_sink(rcpt_codes={"gone@example.jp": "550 5.1.1 No such user"}) as (handler, port):
        placement = api.placement(start=START, client=api.client(email="gone@example.jp"))
        fu = email_follow_up(api, placement)
        m = smtp_messaging(settings, port)
        run_job("plan_check_ins", factory, clock, m)
        assert run_job("dispatch", factory, clock, m) == 0

        row = one_row(factory, follow_up_id=fu["id"])
        assert row.status == MessageStatus.failed and row.error_code == "550"
        assert row.error_reason == "the address was refused by the mail server"
        # Never retried: not later, not the next day.
        later = FixedClock(clock.now() + timedelta(days=1))
        assert run_job("dispatch", factory, later, m) == 0
        assert handler.refused == [("gone@example.jp", "550 5.1.1 No such user")]
        assert handler.received == []
        assert one_row(factory, follow_up_id=fu["id"]).status == MessageStatus.failed

    after = {f["id"]: f for f in api.follow_ups("a.worker", placement["id"])}
    assert after[fu["id"]]["status"] == "attempted"
    assert "refused" in after[fu["id"]]["status_reason"]
    retry = next(f for f in after.values() if f["retry_of"] == fu["id"])
    assert retry["channel"] == "phone" and not retry["automated"] and retry["status"] == "pending"
    assert retry["due_date"] == "2026-04-21"  # the next business day
    queue = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-04-21"}))
    item = next(i for i in queue["items"] if i["follow_up_id"] == retry["id"])
    assert item["channel"] == "phone" and item["client"]["name"] == "山田 太郎"


def test_a_temporary_refusal_is_retried_after_a_backoff_and_then_sent(api, settings, factory, clock):
    codes = {"busy@example.jp": ["451 4.3.0 Try again later"]}  # once, then accepted
    with smtp_sink(rcpt_codes=codes) as (handler, port):
        placement = api.placement(start=START, client=api.client(email="busy@example.jp"))
        fu = email_follow_up(api, placement)
        m = smtp_messaging(settings, port)
        run_job("plan_check_ins", factory, clock, m)

        assert run_job("dispatch", factory, clock, m) == 0
        row = one_row(factory, follow_up_id=fu["id"])
        assert row.status == MessageStatus.queued and row.error_code == "451"
        assert row.next_attempt_at > clock.now()
        # Not before its time.
        assert run_job("dispatch", factory, FixedClock(row.next_attempt_at - timedelta(seconds=1)), m) == 0
        assert handler.received == []

        assert run_job("dispatch", factory, FixedClock(row.next_attempt_at), m) == 1
        row = one_row(factory, follow_up_id=fu["id"])
        assert row.status == MessageStatus.sent and row.attempts == 2
        assert [r.rcpt_tos for r in handler.received] == [["busy@example.jp"]]
        assert len(handler.refused) == 1
    fu_after = next(f for f in api.follow_ups("a.worker", placement["id"]) if f["id"] == fu["id"])
    assert fu_after["status"] == "pending"  # waiting for the answer, not handed to the worker


def test_a_server_that_hangs_up_mid_batch_loses_nothing(api, settings, factory, clock):
    # A server that will take no more on this connection answers 421 and closes it. The
    # messages after that one were never handed over: they wait for the next dispatch, they
    # are not "unknown" (which would never be sent).
    codes = {"c1@example.jp": ["421 4.7.0 Too many messages, closing connection"]}
    with smtp_sink(rcpt_codes=codes) as (handler, port):
        placements_with_emails(api, 4)
        # One session: with more, c2 could start on a second one while c1's 421 is on its way.
        m = smtp_messaging(settings, port, smtp_pool_size=1)
        run_job("plan_check_ins", factory, clock, m)

        assert run_job("dispatch", factory, clock, m) == 1
        assert [r.rcpt_tos for r in handler.received] == [["c0@example.jp"]]
        by_to = {r.to_address: r for r in rows(factory)}
        assert by_to["c0@example.jp"].status == MessageStatus.sent
        for to in ("c1@example.jp", "c2@example.jp", "c3@example.jp"):
            assert by_to[to].status == MessageStatus.queued and by_to[to].next_attempt_at > clock.now()
        # c1 was tried (and refused for now); c2 and c3 never reached the server: not an attempt.
        assert [by_to[f"c{i}@example.jp"].attempts for i in (1, 2, 3)] == [1, 0, 0]

        retry = FixedClock(max(r.next_attempt_at for r in by_to.values()))
        assert run_job("dispatch", factory, retry, m) == 3
        assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(4)]
    assert {r.status for r in rows(factory)} == {MessageStatus.sent}


def test_a_mail_server_that_is_down_loses_nothing(api, settings, factory, clock):
    port = free_port()  # nobody listens here yet
    placements_with_emails(api, 3)
    m = smtp_messaging(settings, port)
    assert run_job("plan_check_ins", factory, clock, m) == 3

    assert run_job("dispatch", factory, clock, m) == 0
    queued = rows(factory)
    assert [r.status for r in queued] == [MessageStatus.queued] * 3
    assert all(r.next_attempt_at > clock.now() and "could not be reached" in r.error_reason for r in queued)

    with smtp_sink(port=port) as (handler, _):
        later = FixedClock(max(r.next_attempt_at for r in queued))
        assert run_job("dispatch", factory, later, m) == 3
        assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(3)]
    assert {r.status for r in rows(factory)} == {MessageStatus.sent}


def test_the_send_rate_is_never_exceeded(api, settings, factory, clock, sink):
    handler, port = sink
    placements_with_emails(api, 6)
    # Two batches of three: the rate holds inside a batch and from one batch to the next.
    m = smtp_messaging(settings, port, send_rate_per_second=5.0, dispatch_batch=3)
    run_job("plan_check_ins", factory, clock, m)

    started = time.monotonic()
    assert run_job("dispatch", factory, clock, m) == 3
    assert run_job("dispatch", factory, clock, m) == 3
    assert time.monotonic() - started >= 1.0
    assert handler.connections == 2
    stamps = [r.at for r in handler.received]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert len(gaps) == 5
    # 5 a second: five gaps take at least a second in all (unpaced, they arrive milliseconds apart).
    # The server sees arrivals, which a loaded machine delays unevenly, so the spacing of each turn
    # is checked exactly on a virtual clock in test_rate_limiter.py, not here.
    assert stamps[-1] - stamps[0] >= 1.0 - 0.02, gaps


def test_over_several_sessions_at_once_the_send_rate_still_holds(api, settings, factory, clock):
    # A slow server (a second per message) cannot keep up with 5 a second over one session: the
    # adapter opens more (up to the pool's size) and sends over them at once, and still never
    # starts two messages (MAIL FROM, as the server sees it) within 0.2 s of each other.
    with smtp_sink(data_delay=1.0) as (handler, port):
        placements_with_emails(api, 6)
        m = smtp_messaging(settings, port, send_rate_per_second=5.0, smtp_pool_size=3)
        run_job("plan_check_ins", factory, clock, m)

        started = time.monotonic()
        assert run_job("dispatch", factory, clock, m) == 6
        took = time.monotonic() - started
        assert handler.connections == m.email.connections == 3
        assert len({r.peer for r in handler.received}) == 3
        assert took < 6 * 1.0 * 0.75  # well under one message after another over one session
        stamps = sorted(handler.transactions)
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert stamps[-1] - stamps[0] >= 1.0 - 0.02, gaps  # as above: paced in all
        assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(6)]


# ------------------------------------------------------------------ sessions kept open between ticks
# The scheduler runs every dispatch in the service's one event loop: the SMTP sessions stay open
# from one tick to the next. These tests do the same: several dispatches in one loop.


def _ticks(factory, clock, m, *steps) -> list:
    """Run ``steps`` in one event loop, as the scheduler does: "dispatch" runs the dispatch job,
    a callable is called (an async one awaited), a number sleeps that long."""

    async def run() -> list:
        out = []
        for step in steps:
            if step == "dispatch":
                out.append(await arun_job("dispatch", JobContext(factory, clock, m)))
            elif isinstance(step, int | float):
                await asyncio.sleep(step)
            else:
                got = step()
                out.append(await got if inspect.isawaitable(got) else got)
        return out

    return asyncio.run(run())


@pytest.mark.parametrize(
    "answer",
    ["454 4.7.0 Temporary authentication failure",  # try again later
     "535 5.7.8 Authentication credentials invalid"],  # our account is wrong: no e-mail is at fault
    ids=["454", "535"],
)  # fmt: skip
def test_a_refused_sign_in_sends_nothing_and_leaves_the_e_mails_queued(answer, api, settings, factory, clock):
    with smtp_sink(tls=True, auth_answer=answer) as (handler, port):
        placements_with_emails(api, 2)
        m = smtp_messaging(settings, port, **secure_settings())
        assert run_job("plan_check_ins", factory, clock, m) == 2
        assert run_job("dispatch", factory, clock, m) == 0
        assert handler.received == [] and handler.logins == []
    code = answer[:3]
    # Not an attempt: no e-mail fails for good (a phone call for a worker) over the office's account.
    assert {(r.status, r.error_code, r.attempts) for r in rows(factory)} == {(MessageStatus.queued, code, 0)}


def test_later_batches_reuse_the_open_session_with_no_new_starttls_or_sign_in(api, settings, factory, clock):
    with smtp_sink(tls=True) as (handler, port):
        placements_with_emails(api, 6)
        m = smtp_messaging(settings, port, dispatch_batch=2, **secure_settings())
        assert run_job("plan_check_ins", factory, clock, m) == 6

        assert _ticks(factory, clock, m, "dispatch", "dispatch", "dispatch", "dispatch") == [2, 2, 2, 0]
        assert m.email.connections == 1 and handler.connections == 1  # one EHLO'd peer
        assert len(handler.logins) == 1  # signed in once
        assert len({r.peer for r in handler.received}) == 1
        assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(6)]
        assert {r.status for r in rows(factory)} == {MessageStatus.sent}


@pytest.mark.parametrize(
    "how",
    ["hang_up", "silently_at_next_mail", "421_at_next_mail"],
)
def test_a_session_the_server_dropped_between_batches_is_reopened_and_nothing_is_lost_or_sent_twice(
    how, api, settings, factory, clock
):
    # Between two ticks the server gives up on the idle session: it says 421 and hangs up at once
    # ("hang_up", as at its idle timeout), or only when we next speak, with or without a word.
    # Either way the adapter opens another and sends there: everything arrives, once.
    with smtp_sink(tls=True) as (handler, port):
        placements_with_emails(api, 4)
        m = smtp_messaging(settings, port, dispatch_batch=2, **secure_settings())
        run_job("plan_check_ins", factory, clock, m)

        def drop() -> None:
            if how == "hang_up":
                assert handler.hang_up() == 1
            else:
                handler.at_next_mail = "" if how.startswith("silently") else "421 4.4.2 Idle too long"

        assert _ticks(factory, clock, m, "dispatch", drop, 0.1, "dispatch", "dispatch") == [2, None, 2, 0]
        assert m.email.connections == 2 and handler.connections == 2 and len(handler.logins) == 2
        assert sorted(handler.outbox_ids()) == sorted(r.id for r in rows(factory))  # each exactly once
        assert all(r.status == MessageStatus.sent and r.attempts == 1 for r in rows(factory))


def test_a_connection_broken_before_the_message_was_handed_over_leaves_it_queued(api, settings, factory, clock):
    # Nothing reached the server (cut at MAIL FROM, on a session opened for this batch): not
    # "unknown" but tried again later, once.
    with smtp_sink() as (handler, port):
        placements_with_emails(api, 2)
        m = smtp_messaging(settings, port)
        run_job("plan_check_ins", factory, clock, m)
        handler.at_next_mail = ""

        assert run_job("dispatch", factory, clock, m) == 0
        assert [r.status for r in rows(factory)] == [MessageStatus.queued] * 2
        later = FixedClock(max(r.next_attempt_at for r in rows(factory)))
        assert run_job("dispatch", factory, later, m) == 2
        assert sorted(handler.outbox_ids()) == sorted(r.id for r in rows(factory))
        assert {r.status for r in rows(factory)} == {MessageStatus.sent}


def test_a_message_cut_off_mid_send_is_unknown_and_never_sent_again(api, settings, factory, clock):
    # The line is cut after c1's DATA, before the server's answer: c1 may well have arrived (here
    # it did), so it is "unknown" and never re-sent; c2 was never handed over and goes later.
    with smtp_sink(tls=True, hang_up_in_data={"c1@example.jp"}) as (handler, port):
        placements_with_emails(api, 3)
        m = smtp_messaging(settings, port, smtp_pool_size=1, **secure_settings())
        run_job("plan_check_ins", factory, clock, m)

        assert _ticks(factory, clock, m, "dispatch") == [1]
        by_to = {r.to_address: r for r in rows(factory)}
        assert by_to["c0@example.jp"].status == MessageStatus.sent
        assert by_to["c1@example.jp"].status == MessageStatus.unknown
        assert by_to["c2@example.jp"].status == MessageStatus.queued
        later = FixedClock(by_to["c2@example.jp"].next_attempt_at)
        assert _ticks(factory, later, m, "dispatch", "dispatch") == [1, 0]

        assert sorted(r.rcpt_tos[0] for r in handler.received) == [f"c{i}@example.jp" for i in range(3)]
        by_to = {r.to_address: r for r in rows(factory)}
        assert by_to["c1@example.jp"].status == MessageStatus.unknown and by_to["c1@example.jp"].attempts == 1
        assert by_to["c2@example.jp"].status == MessageStatus.sent
        assert m.email.connections == 2


def test_an_idle_session_is_closed_after_the_idle_time(api, settings, factory, clock, sink):
    handler, port = sink
    placements_with_emails(api, 2)
    m = smtp_messaging(settings, port, dispatch_batch=1, smtp_idle_seconds=0.3)
    run_job("plan_check_ins", factory, clock, m)

    got = _ticks(
        factory, clock, m,
        "dispatch", lambda: m.email.idle_sessions, lambda: list(handler.quits),
        0.6, lambda: m.email.idle_sessions, lambda: list(handler.quits),
        "dispatch",
    )  # fmt: skip
    assert got[:3] == [1, 1, []]  # kept open at first
    assert got[3:5] == [0, handler.sessions[:1]]  # then closed with a QUIT
    assert got[5] == 1 and m.email.connections == 2  # the next tick opens a fresh one


def test_shutting_the_service_down_closes_the_open_sessions(api, settings, factory, clock, engine):
    with smtp_sink(tls=True) as (handler, port):
        placements_with_emails(api, 2)
        m = smtp_messaging(settings, port, **secure_settings())
        run_job("plan_check_ins", factory, clock, m)
        app = create_app(settings, engine=engine, clock=clock, messaging=m, public=False)
        with TestClient(app) as client:
            # A dispatch tick in the service's own event loop, as its scheduler runs it.
            assert client.portal.call(arun_job, "dispatch", JobContext(factory, clock, m)) == 2
            assert m.email.idle_sessions == 1 and handler.quits == []
        # The lifespan ended: the session was closed with a QUIT.
        assert m.email.idle_sessions == 0
        assert handler.quits == handler.sessions and len(handler.sessions) == 1


# ------------------------------------------------------------------ the reply link


def _sent_link(api, settings, factory, clock, port, *, placement: dict, party: str = "client") -> tuple[str, int]:
    m = smtp_messaging(settings, port)
    run_job("plan_check_ins", factory, clock, m)
    run_job("dispatch", factory, clock, m)
    fu = email_follow_up(api, placement, party)
    row = one_row(factory, follow_up_id=fu["id"])
    assert row.status == MessageStatus.sent
    return row.id, fu["id"]


def _token_in_mail(handler, outbox_id: int) -> str:
    got = next(r for r in handler.received if r.outbox_id == outbox_id)
    return LINK.search(got.message.get_body(("plain",)).get_content()).group(1)


def test_the_reply_link_records_one_answer_and_refuses_a_second(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)

    page = api.http.get(f"/r/{token}")
    assert page.status_code == 200
    for value, label in (("doing_well", "順調です"), ("some_worries", "少し心配なことがある"),
                         ("struggling", "つらい"), ("call_me", "電話がほしい")):  # fmt: skip
        assert f'value="{value}"' in page.text and label in page.text
    assert "Office A" in page.text and "0126-22-1001" in page.text

    r = api.http.post(f"/r/{token}", data={"answer": "some_worries", "text": "上司が少しこわいです"})
    assert r.status_code == 200 and "お返事ありがとうございました" in r.text

    fu = next(f for f in api.follow_ups("a.worker", placement["id"]) if f["id"] == fu_id)
    assert fu["status"] == "done" and fu["completed_at"]
    [outcome] = outcomes_of(factory, fu_id)
    assert outcome.party == Party.client and outcome.reached and outcome.source == "link"
    assert outcome.wellbeing == 3 and outcome.recorded_by is None
    assert "some worries" in outcome.note and "上司が少しこわいです" in outcome.note
    assert outcome.reply_class in ("watch", "urgent")  # at least the tapped answer's class

    again = api.http.post(f"/r/{token}", data={"answer": "struggling", "text": "もう一度"})
    assert again.status_code == 410 and "もう使われています" in again.text
    assert api.http.get(f"/r/{token}").status_code == 410
    assert len(outcomes_of(factory, fu_id)) == 1
    with factory() as s:
        assert s.get(Outcome, outcome.id).note == outcome.note


def test_answers_sent_at_the_same_moment_through_one_link_count_once(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)
    answers = ["doing_well", "some_worries", "struggling", "call_me"] * 2
    barrier = threading.Barrier(len(answers))

    def tap(answer: str) -> int:
        barrier.wait()
        return api.http.post(f"/r/{token}", data={"answer": answer}).status_code

    with ThreadPoolExecutor(len(answers)) as pool:
        codes = list(pool.map(tap, answers))
    assert sorted(codes) == [200] + [410] * (len(answers) - 1)
    assert len(outcomes_of(factory, fu_id)) == 1
    with factory() as s:
        assert len(s.exec(select(InboundMessage).where(InboundMessage.outbox_id == outbox_id)).all()) == 1


class _SignedDaysAgo(TimestampSigner):
    """A signer whose clock is ``days`` behind: what a link mailed that long ago carries."""

    days = 0

    def get_timestamp(self) -> int:
        return int(time.time()) - self.days * 86400


def _old_token(outbox_id: int, days: int) -> str:
    signer = type("Signer", (_SignedDaysAgo,), {"days": days})
    return URLSafeTimedSerializer(TEST_SECRET, salt="teichaku.reply-link", signer=signer).dumps(outbox_id)


def test_an_expired_or_tampered_link_says_so_kindly_and_records_nothing(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)

    # Thirteen days old still works (links live 14 days); fifteen days old does not.
    assert api.http.get(f"/r/{_old_token(outbox_id, 13)}").status_code == 200
    expired = _old_token(outbox_id, 15)
    for r in (api.http.get(f"/r/{expired}"), api.http.post(f"/r/{expired}", data={"answer": "doing_well"})):
        assert r.status_code == 410
        assert "期限が切れています" in r.text and "お電話ください" in r.text
        assert "0126-22-1001" in r.text  # the number to call, right there

    payload, stamp, sig = token.split(".")
    other = ReplyLinks(TEST_SECRET, settings.public_url).token(outbox_id + 1).split(".")[0]
    forged = URLSafeTimedSerializer("not-our-secret", salt="teichaku.reply-link").dumps(outbox_id)
    tampered = [
        f"{payload}.{stamp}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",  # signature changed
        f"{other}.{stamp}.{sig}",  # another message's id under this signature
        forged,  # signed with another key
        "not-a-token",
    ]
    for bad in tampered:
        for r in (api.http.get(f"/r/{bad}"), api.http.post(f"/r/{bad}", data={"answer": "call_me"})):
            assert r.status_code in (404, 410), r.status_code
            assert "このリンクは使えません" in r.text

    assert outcomes_of(factory, fu_id) == []
    assert one_row(factory, id=outbox_id).answered_at is None
    # The real link still works afterwards.
    assert api.http.post(f"/r/{token}", data={"answer": "doing_well"}).status_code == 200
    assert len(outcomes_of(factory, fu_id)) == 1


# ------------------------------------------------------------------ the employer's check-in


def test_the_employer_check_in_goes_only_with_consent_and_records_the_employers_report(
    api, settings, factory, clock, sink
):
    handler, port = sink
    # Started two months ago: the employer e-mail step (offset_months = 2) is due today.
    yes = api.placement(
        start="2026-02-20",
        client=api.client(name="同意 あり", email="yes@example.jp", consent_employer=True),
        employer=api.employer(name="A社", email="boss-a@example.jp"),
    )
    no = api.placement(
        start="2026-02-20",
        client=api.client(name="同意 なし", email="no@example.jp", consent_employer=False),
        employer=api.employer(name="B社", email="boss-b@example.jp"),
    )
    no_email = api.placement(
        start="2026-02-20",
        client=api.client(name="連絡先 なし", email="x@example.jp", consent_employer=True),
        employer=api.employer(name="C社", email=None),
    )
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=yes, party="employer")

    assert [r.rcpt_tos for r in handler.received] == [["boss-a@example.jp"]]
    got = handler.received[0].message
    assert str(got["Subject"]) == "Office Aより：職場でのご様子について"
    assert "職場でのご様子" in got.get_body(("plain",)).get_content()
    row = one_row(factory, id=outbox_id)
    assert row.purpose == Purpose.employer_check_in and row.to_address == "boss-a@example.jp"
    # Nothing to B社 (no consent) or C社 (no address); and the reasons are there.
    assert rows(factory, to_address="boss-b@example.jp") == []
    without = email_follow_up(api, no, "employer")
    assert without["status"] == "skipped" and "consent" in without["status_reason"]
    missing = email_follow_up(api, no_email, "employer")
    assert missing["status"] == "skipped" and "e-mail" in missing["status_reason"]

    token = _token_in_mail(handler, outbox_id)
    page = api.http.get(f"/r/{token}")
    assert page.status_code == 200
    for value in ("attending_well", "some_concerns", "absences", "call_me"):
        assert f'value="{value}"' in page.text
    assert 'value="doing_well"' not in page.text
    # A client's answer is not an employer's answer.
    assert api.http.post(f"/r/{token}", data={"answer": "doing_well"}).status_code == 422
    r = api.http.post(f"/r/{token}", data={"answer": "absences", "text": "今週2回遅刻"})
    assert r.status_code == 200

    [outcome] = outcomes_of(factory, fu_id)
    assert outcome.party == Party.employer and outcome.source == "link"
    assert sorted(outcome.risk_signals) == ["absence", "lateness"]
    assert outcome.reply_class == "urgent" and outcome.wellbeing is None
    assert "今週2回遅刻" in outcome.note
    with factory() as s:
        fu = s.get(FollowUp, fu_id)
        assert fu.status == FollowUpStatus.done and fu.party == Party.employer
        # It is the employer's report: nothing is recorded as the client's own answer.
        assert s.exec(select(Outcome).where(col(Outcome.placement_id) == yes["id"])).all() == [outcome]


# ------------------------------------------------------------------ answers become crisis flags


def _flags(api, placement_id: int) -> list[dict]:
    listed = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": placement_id}))["items"]
    return [api.ok(api.get("a.worker", f"/api/v1/crisis-flags/{f['id']}")) for f in listed]


def test_struggling_through_the_link_opens_an_urgent_flag_with_the_reason(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)
    assert _flags(api, placement["id"]) == []

    assert api.http.post(f"/r/{token}", data={"answer": "struggling"}).status_code == 200
    [flag] = _flags(api, placement["id"])
    assert (flag["severity"], flag["status"]) == ("urgent", "open")
    [inbound] = [i for i in _inbound(factory) if i.outbox_id == outbox_id]
    reply = [s for s in flag["signals"] if s["kind"] == "reply_urgent"]
    assert [(s["source_party"], s["source"], s["detail"]) for s in reply] == [
        ("client", f"reply:{inbound.id}", "struggling")
    ]
    assert flag["crisis_call"]["due_date"] == "2026-04-20"


def test_words_of_dying_in_the_free_text_open_an_emergency_flag(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)

    r = api.http.post(f"/r/{token}", data={"answer": "some_worries", "text": "もう死にたい"})
    assert r.status_code == 200
    [flag] = _flags(api, placement["id"])
    assert flag["severity"] == "emergency"
    [s] = [s for s in flag["signals"] if s["kind"] == "reply_emergency"]
    assert s["detail"] == "talk of dying or self-harm" and s["source_party"] == "client"
    assert flag["alerts"]  # the worker and the managers are alerted at once


def test_a_doing_well_answer_opens_no_flag(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    assert api.http.post(f"/r/{_token_in_mail(handler, outbox_id)}", data={"answer": "doing_well"}).status_code == 200
    assert len(outcomes_of(factory, fu_id)) == 1
    assert _flags(api, placement["id"]) == []


def test_the_employer_reports_absences_while_the_client_says_all_is_well_a_discordance(
    api, settings, factory, clock, sink
):
    handler, port = sink
    p = api.placement(start="2026-02-20", client=api.client(name="食い違い", email="d@example.jp"))
    # The client said all is well (a worker's call, reached, wellbeing 4, nothing of concern).
    client_fu = next(
        f for f in api.follow_ups("a.worker", p["id"]) if f["party"] == "client" and not f["automated"]
    )  # fmt: skip
    api.ok(
        api.post("a.worker", f"/api/v1/follow-ups/{client_fu['id']}/outcome", {"reached": True, "wellbeing": 4}), 201
    )
    assert _flags(api, p["id"]) == []

    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=p, party="employer")
    r = api.http.post(f"/r/{_token_in_mail(handler, outbox_id)}", data={"answer": "absences"})
    assert r.status_code == 200
    [flag] = _flags(api, p["id"])
    kinds = sorted(s["kind"] for s in flag["signals"])
    assert kinds == ["discordance", "employer_absence", "employer_lateness"]
    assert flag["severity"] == "watch"  # one report of work trouble and a discordance: watch
    assert {s["source_party"] for s in flag["signals"]} == {"employer", "system"}


def test_the_employer_asks_to_be_called_an_urgent_reply_from_the_employer(api, settings, factory, clock, sink):
    handler, port = sink
    p = api.placement(start="2026-02-20", client=api.client(name="電話希望", email="e@example.jp"))
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=p, party="employer")
    assert api.http.post(f"/r/{_token_in_mail(handler, outbox_id)}", data={"answer": "call_me"}).status_code == 200
    [flag] = _flags(api, p["id"])
    assert flag["severity"] == "urgent"
    assert [(s["kind"], s["source_party"]) for s in flag["signals"]] == [("reply_urgent", "employer")]


def _inbound(factory) -> list[InboundMessage]:
    with factory() as s:
        return list(s.exec(select(InboundMessage).order_by(InboundMessage.id)).all())


def test_an_answer_cancels_the_escalation_waiting_to_go_out(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    m = smtp_messaging(settings, port)
    later = FixedClock(clock.now() + timedelta(hours=49))
    # 49 hours later, at 10:00 Tokyo (inside the quiet-hours window): the SMS escalation is written.
    assert run_job("escalate_unanswered", factory, later, m) == 1
    esc = one_row(factory, follow_up_id=fu_id, purpose=Purpose.escalation)
    assert esc.status == MessageStatus.queued
    # The client answers the e-mail before the escalation is sent: it never goes out.
    assert api.http.post(f"/r/{_token_in_mail(handler, outbox_id)}", data={"answer": "doing_well"}).status_code == 200
    esc = one_row(factory, follow_up_id=fu_id, purpose=Purpose.escalation)
    assert esc.status == MessageStatus.cancelled and "answered" in esc.error_reason


# ------------------------------------------------------------------ stopping messages from the page


def test_the_page_offers_stop_with_a_confirmation_and_records_it_as_sms_stop_does(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)
    client_id = placement["client_id"]
    # A later check-in already waiting in the outbox.
    with session_scope(factory) as s:
        waiting_fu = s.exec(
            select(FollowUp).where(
                FollowUp.placement_id == placement["id"], FollowUp.status == FollowUpStatus.pending,
                FollowUp.automated == True, FollowUp.id != fu_id,  # noqa: E712
            ).order_by(FollowUp.due_date)
        ).first()  # fmt: skip
        s.add(
            OutboxMessage(
                idempotency_key="test:waiting", office_id=api.world.office_a, purpose=Purpose.check_in,
                channel=MessageChannel.email, follow_up_id=waiting_fu.id, client_id=client_id,
                to_address="taro@example.jp", language="ja", body="x", next_attempt_at=clock.now() + timedelta(days=9),
            )
        )  # fmt: skip
        waiting_id = waiting_fu.id

    page = api.http.get(f"/r/{token}")
    assert page.status_code == 200
    assert f'action="/r/{token}/stop"' in page.text and "配信停止" in page.text
    assert "<script" not in page.text  # works without JavaScript: plain forms

    # GET never changes anything; the first POST only asks.
    assert api.http.get(f"/r/{token}/stop").status_code in (404, 405)
    ask = api.http.post(f"/r/{token}/stop")
    assert ask.status_code == 200 and "停止しますか" in ask.text
    assert 'name="confirm" value="yes"' in ask.text and f'href="/r/{token}"' in ask.text
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{client_id}"))["opted_out_at"] is None

    done = api.http.post(f"/r/{token}/stop", data={"confirm": "yes"})
    assert done.status_code == 200 and "停止しました" in done.text and "再開" in done.text
    assert "0126-22-1001" in done.text
    seen = api.ok(api.get("a.worker", f"/api/v1/clients/{client_id}"))
    assert seen["opted_out_at"] is not None and seen["opted_out_via"] == "link"
    # As the SMS STOP word does: the waiting check-in is cancelled, its follow-up skipped with why.
    waiting = one_row(factory, idempotency_key="test:waiting")
    assert waiting.status == MessageStatus.cancelled
    with factory() as s:
        fu = s.get(FollowUp, waiting_id)
        assert fu.status == FollowUpStatus.skipped and "stopped automated messages" in fu.status_reason
    # Once is enough: again says it is already stopped, and the recorded time does not move.
    again = api.http.post(f"/r/{token}/stop", data={"confirm": "yes"})
    assert again.status_code == 200 and "すでに停止" in again.text
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{client_id}"))["opted_out_at"] == seen["opted_out_at"]
    # The answer link itself still works (stopping is not answering).
    assert api.http.post(f"/r/{token}", data={"answer": "doing_well"}).status_code == 200


def test_stop_works_from_a_used_link_but_not_from_a_tampered_one(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)
    assert api.http.post(f"/r/{token}", data={"answer": "doing_well"}).status_code == 200
    used = api.http.get(f"/r/{token}")
    assert used.status_code == 410 and "0126-22-1001" in used.text and f"/r/{token}/stop" in used.text

    bad = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    r = api.http.post(f"/r/{bad}/stop", data={"confirm": "yes"})
    assert r.status_code == 404 and "このリンクは使えません" in r.text
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{placement['client_id']}"))["opted_out_at"] is None

    assert api.http.post(f"/r/{token}/stop", data={"confirm": "yes"}).status_code == 200
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{placement['client_id']}"))["opted_out_via"] == "link"


def test_the_employers_page_offers_no_stop_of_the_clients_messages(api, settings, factory, clock, sink):
    handler, port = sink
    p = api.placement(start="2026-02-20", client=api.client(name="事業所", email="f@example.jp"))
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=p, party="employer")
    token = _token_in_mail(handler, outbox_id)
    assert "/stop" not in api.http.get(f"/r/{token}").text
    assert api.http.post(f"/r/{token}/stop", data={"confirm": "yes"}).status_code == 404
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{p['client_id']}"))["opted_out_at"] is None


@pytest.mark.parametrize("bad", ["not-a-token", "eyJ4IjoxfQ.aaaa.bbbb", "x" * 300])
def test_an_unknown_link_shows_a_kind_message_and_never_an_empty_phone_link(bad, api):
    for r in (api.http.get(f"/r/{bad}"), api.http.post(f"/r/{bad}", data={"answer": "doing_well"})):
        assert r.status_code == 404
        assert "このリンクは使えません" in r.text and "窓口" in r.text
        assert 'href="tel:' not in r.text  # we do not know the office: no number, and no empty link


def test_an_office_without_a_phone_gets_no_empty_phone_link(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=placement)
    with session_scope(factory) as s:
        office = s.get(Office, api.world.office_a)
        office.phone = None
        s.add(office)
    page = api.http.get(f"/r/{_token_in_mail(handler, outbox_id)}")
    assert page.status_code == 200 and 'href="tel:' not in page.text


def test_the_page_fits_a_320px_screen_and_needs_no_script(api, settings, factory, clock, sink):
    """What the page's markup promises for small phones: the viewport meta, full-width buttons
    sized in relative units, long words wrapped, and no script anywhere. The style is a file of its
    own (the CSP allows no inline style), linked from every state of the page."""
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, _ = _sent_link(api, settings, factory, clock, port, placement=placement)
    token = _token_in_mail(handler, outbox_id)
    for r in (api.http.get(f"/r/{token}"), api.http.post(f"/r/{token}/stop")):
        assert 'name="viewport" content="width=device-width, initial-scale=1"' in r.text
        assert "<script" not in r.text and "<style" not in r.text and " style=" not in r.text
        assert '<link rel="stylesheet" href="/static/reply.css">' in r.text
    css = api.http.get("/static/reply.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "overflow-wrap: anywhere" in css.text
    assert re.search(r"button \{[^}]*width: 100%", css.text)
    assert not re.search(r"width:\s*\d{3,}px", css.text)  # no fixed width wider than a phone


def test_an_escalation_is_not_sent_once_a_worker_has_reached_the_client(api, settings, factory, clock, sink):
    handler, port = sink
    placement = api.placement(start=START)
    outbox_id, fu_id = _sent_link(api, settings, factory, clock, port, placement=placement)
    m = smtp_messaging(settings, port)
    later = FixedClock(clock.now() + timedelta(hours=49))
    assert run_job("escalate_unanswered", factory, later, m) == 1
    assert one_row(factory, follow_up_id=fu_id, purpose=Purpose.escalation).status == MessageStatus.queued
    # The worker phones the client first and records it; the dispatcher then drops the escalation.
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{fu_id}/outcome", {"reached": True, "wellbeing": 4}), 201)
    assert run_job("dispatch", factory, later, m) == 0
    esc = one_row(factory, follow_up_id=fu_id, purpose=Purpose.escalation)
    assert esc.status == MessageStatus.cancelled and "answered or closed" in esc.error_reason
    assert esc.sent_at is None
