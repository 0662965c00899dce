"""An inbound SMS is kept before Twilio hears 200 and acted on right after (issue 7, case (4)):
a process that stops in between loses nothing, since the scheduler's ``process_replies`` job acts
on any SMS left unprocessed, and an SMS is acted on once even when the request's own follow-up
and the job reach it at the same time."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col

from service.app import create_app
from service.audit.models import AuditEvent
from service.contacts.messaging.models import InboundMessage
from service.contacts.models import Client, FollowUp, FollowUpStatus
from service.db import session_scope
from service.jobs import run_job
from service.outcomes import answer_routes, answers
from tests.outcomes.test_webhooks import (  # noqa: F401  (settings: the Twilio token, a fixture)
    SMS,
    outcomes_of,
    post_signed,
    replies_to,
    rows,
    sent_check_in,
    settings,
    sms,
)
from tests.test_ops import sample, scrape

SID = "SM" + "5" * 32


def _stop_after_answering(monkeypatch):
    """As if the process stopped once Twilio had its 200: the SMS is never acted on."""

    def stopped(*_args, **_kwargs):
        raise RuntimeError("the process stopped")

    monkeypatch.setattr(answer_routes, "_process_sms", stopped)


@pytest.mark.parametrize("body", ["1", "STOP"])
def test_an_sms_left_unprocessed_is_acted_on_by_the_recovery_job(api, http, factory, clock, monkeypatch, body):
    ci = sent_check_in(api, http, factory, clock)
    _stop_after_answering(monkeypatch)
    r = post_signed(http, SMS, sms(ci, body, SID))
    assert r.status_code == 200  # a 200 means kept ...
    (kept,) = rows(factory, InboundMessage, InboundMessage.provider_id == SID)
    assert kept.processed_at is None and kept.outcome_id is None and kept.command is None  # ... not acted on
    assert outcomes_of(factory, ci) == [] and replies_to(factory, ci) == []

    messaging = http.app.state.messaging
    # The request that kept it may still be at it: the job leaves a fresh row alone.
    assert run_job("process_replies", factory, clock, messaging) == 0
    clock.set(clock.now() + answers.WAITING_GRACE + timedelta(seconds=1))
    assert run_job("process_replies", factory, clock, messaging) == 1
    assert run_job("process_replies", factory, clock, messaging) == 0  # once

    (row,) = rows(factory, InboundMessage, InboundMessage.provider_id == SID)
    assert row.processed_at == clock.now()
    if body == "1":
        (outcome,) = outcomes_of(factory, ci)
        assert (outcome.source, outcome.wellbeing) == ("sms", 4)
        assert row.outcome_id == outcome.id and row.outbox_id == ci.outbox_id and row.body is None
        (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)
        assert fu.status == FollowUpStatus.done
    else:
        assert row.command == "stop" and row.client_id == ci.client_id
        assert len(replies_to(factory, ci)) == 1  # the confirmation, once
        (client,) = rows(factory, Client, Client.id == ci.client_id)
        assert client.opted_out_at is not None
    # Audited: kept (create), then acted on (update).
    events = rows(factory, AuditEvent, AuditEvent.record_type == "inbound_message", AuditEvent.record_id == row.id)
    assert sorted(e.action for e in events) == ["create", "update"]


def test_a_redelivery_of_a_kept_sms_changes_nothing(api, http, factory, clock, monkeypatch):
    ci = sent_check_in(api, http, factory, clock)
    _stop_after_answering(monkeypatch)
    assert post_signed(http, SMS, sms(ci, "2", SID)).status_code == 200
    monkeypatch.undo()
    # Twilio delivers it again: 200, and it is neither kept twice nor acted on by this request.
    assert post_signed(http, SMS, sms(ci, "2", SID)).status_code == 200
    assert len(rows(factory, InboundMessage, InboundMessage.provider_id == SID)) == 1
    assert outcomes_of(factory, ci) == []
    clock.set(clock.now() + answers.WAITING_GRACE + timedelta(seconds=1))
    assert run_job("process_replies", factory, clock, http.app.state.messaging) == 1
    assert len(outcomes_of(factory, ci)) == 1


def test_acted_on_once_when_the_request_and_the_job_reach_it_together(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    messaging = http.app.state.messaging
    with session_scope(factory) as s:
        inbound_id = answers.receive_sms(s, message_sid=SID, from_phone=ci.phone, body="3", clock=clock)
    results, start = [], threading.Barrier(2)

    def act():
        start.wait()
        with session_scope(factory) as s:
            results.append(answers.process_sms(s, messaging=messaging, inbound_id=inbound_id, clock=clock))

    threads = [threading.Thread(target=act) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r is None for r in results) == [False, True]  # one acted, the other found it done
    assert len(outcomes_of(factory, ci)) == 1


def test_an_api_beside_scheduler_processes_only_keeps_and_the_scheduler_acts_at_once(api, http, factory, clock, engine):
    """``serve --no-scheduler`` (act_on_sms_in_api off): the API answers Twilio once the SMS is kept
    and leaves the acting to the scheduler processes, whose process_replies takes it without the
    grace a self-acting API gets: a `teichaku scheduler` process acts on it at its next run."""
    ci = sent_check_in(api, http, factory, clock)
    base = http.app.state.settings
    http.app.state.settings = base.model_copy(update={"act_on_sms_in_api": False})
    assert post_signed(http, SMS, sms(ci, "1", SID)).status_code == 200
    (kept,) = rows(factory, InboundMessage, InboundMessage.provider_id == SID)
    assert kept.processed_at is None and outcomes_of(factory, ci) == []  # kept, not acted on

    # A scheduler process of its own (public=False): its start-up run of process_replies acts at
    # once, the clock unmoved. (Its interval is reply_interval_seconds, 2 s by default.)
    role = base.model_copy(update={"scheduler_enabled": True})
    scheduler_app = create_app(role, engine=engine, clock=clock, public=False)
    with TestClient(scheduler_app) as ops_client:
        assert ops_client.get("/healthz").status_code == 200
    (row,) = rows(factory, InboundMessage, InboundMessage.provider_id == SID)
    assert row.processed_at == clock.now()
    (outcome,) = outcomes_of(factory, ci)
    assert (outcome.source, outcome.wellbeing) == ("sms", 4) and row.outcome_id == outcome.id


def test_an_api_that_acts_itself_leaves_its_fresh_sms_to_itself(api, http, factory, clock, engine):
    """``serve`` in one process: the scheduler in it leaves an SMS kept a moment ago to the request
    that kept it (which acts right after the response), and takes it only after the grace."""
    ci = sent_check_in(api, http, factory, clock)
    base = http.app.state.settings
    http.app.state.settings = base.model_copy(update={"act_on_sms_in_api": False})  # as if it stopped
    assert post_signed(http, SMS, sms(ci, "1", SID)).status_code == 200
    one_process = create_app(base.model_copy(update={"scheduler_enabled": True}), engine=engine, clock=clock)
    with TestClient(one_process):
        pass
    assert outcomes_of(factory, ci) == []
    clock.set(clock.now() + answers.WAITING_GRACE + timedelta(seconds=1))
    with TestClient(one_process):
        pass
    assert len(outcomes_of(factory, ci)) == 1


def test_the_job_acts_on_many_senders_at_once_each_in_order_and_attributed(api, http, factory, clock, monkeypatch):
    """process_replies acts on a backlog from many senders (three threads on PostgreSQL), each
    SMS once, a sender's own in the order received (STOP then START ends started), every change
    attributed to the job."""
    ci = sent_check_in(api, http, factory, clock)
    http.app.state.settings = http.app.state.settings.model_copy(update={"act_on_sms_in_api": False})
    messaging = http.app.state.messaging
    monkeypatch.setattr(messaging, "settings", messaging.settings.model_copy(update={"reply_threads": 3}))
    strangers = [f"+8190{n:08d}" for n in range(12)]  # numbers we do not know: kept, nothing else
    posted = [sms(ci, "STOP", "SM" + "a" * 32), sms(ci, "START", "SM" + "b" * 32)]
    posted += [sms(ci, "1", f"SM{n:032d}") | {"From": phone} for n, phone in enumerate(strangers)]
    for params in posted:
        assert post_signed(http, SMS, params).status_code == 200
        clock.set(clock.now() + timedelta(seconds=1))  # received in this order
    assert run_job("process_replies", factory, clock, http.app.state.messaging) == 0  # within the grace
    clock.set(clock.now() + answers.WAITING_GRACE)
    assert run_job("process_replies", factory, clock, http.app.state.messaging) == len(posted)
    assert run_job("process_replies", factory, clock, http.app.state.messaging) == 0

    kept = rows(factory, InboundMessage)
    assert len(kept) == len(posted) and all(r.processed_at == clock.now() for r in kept)
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is None  # stopped, then started again
    assert len(replies_to(factory, ci)) == 2  # both confirmations
    acted = rows(factory, AuditEvent, AuditEvent.record_type == "inbound_message", AuditEvent.action == "update")
    assert len(acted) == len(posted)
    assert {(e.actor_type.value, e.actor_label) for e in acted} == {("job", "process_replies")}


def test_an_api_acting_itself_acts_on_a_senders_sms_in_the_order_kept(api, http, factory, clock, monkeypatch):
    """``serve`` in one process acts on kept SMS after each response, on two threads: a sender's
    own go one after the other, in the order kept, even when the first takes its time (STOP, then
    START a moment later, ends started)."""
    ci = sent_check_in(api, http, factory, clock)
    state = http.app.state
    state.settings = state.settings.model_copy(update={"act_on_sms_in_api": False})  # kept; acted on below
    for params in (sms(ci, "STOP", "SM" + "a" * 32), sms(ci, "START", "SM" + "b" * 32)):
        assert post_signed(http, SMS, params).status_code == 200
    stop, start = (r.id for r in sorted(rows(factory, InboundMessage), key=lambda r: r.id))
    real = answers.process_sms

    def slow_stop(session, *, inbound_id, **kw):
        if inbound_id == stop:
            time.sleep(0.5)  # the STOP is slow to act on: the START must not overtake it
        return real(session, inbound_id=inbound_id, **kw)

    monkeypatch.setattr(answers, "process_sms", slow_stop)

    async def both() -> None:
        await asyncio.gather(*(answer_routes._act_on_sms(state, i, ci.phone) for i in (stop, start)))

    asyncio.run(both())
    assert all(r.processed_at is not None for r in rows(factory, InboundMessage))
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is None  # stopped, then started again


def test_an_sms_that_cannot_be_acted_on_is_put_off_and_holds_up_no_other(api, http, factory, clock, monkeypatch):
    """A fault of ours that fails the acting on some SMS, every time: each is kept (never dropped),
    counted and tried again after a backoff, while the SMS behind it are acted on; once the fault is
    gone, the next due try acts on it."""
    ci = sent_check_in(api, http, factory, clock)
    http.app.state.settings = http.app.state.settings.model_copy(update={"act_on_sms_in_api": False})
    messaging = http.app.state.messaging
    for n, phone in enumerate(["+819011110000", "+819022220000"]):
        assert post_signed(http, SMS, sms(ci, "HELP", f"SM{n:032d}") | {"From": phone}).status_code == 200
        clock.set(clock.now() + timedelta(seconds=1))
    assert post_signed(http, SMS, sms(ci, "2", SID)).status_code == 200  # the client's answer, received last
    failing = {r.id for r in rows(factory, InboundMessage) if r.provider_id != SID}
    real = answers.process_sms

    def faulty(session, *, inbound_id, **kw):
        if inbound_id in failing:
            raise RuntimeError("a fault of ours")
        return real(session, inbound_id=inbound_id, **kw)

    monkeypatch.setattr(answers, "process_sms", faulty)
    clock.set(clock.now() + answers.WAITING_GRACE)

    def run() -> int:  # the job, two SMS at a time: the two failing ones are the oldest
        return answers.process_waiting_sms(factory, messaging, clock, limit=2)

    assert run() == 0
    assert run() == 1  # the two put off, the answer behind them acted on
    assert len(outcomes_of(factory, ci)) == 1
    put_off = [r for r in rows(factory, InboundMessage) if r.id in failing]
    assert [(r.processed_at, r.attempts, r.next_attempt_at) for r in put_off] == [
        (None, 1, clock.now() + answers.RETRY_BACKOFF[0])
    ] * 2
    # Each try that failed is in the audit trail, attributed like the rest of the job's changes.
    trail = rows(
        factory,
        AuditEvent,
        AuditEvent.record_type == "inbound_message",
        AuditEvent.action == "update",
        col(AuditEvent.record_id).in_(failing),
    )
    retry_at = (clock.now() + answers.RETRY_BACKOFF[0]).isoformat()
    assert sorted((e.record_id, e.changes) for e in trail) == [
        (i, {"attempts": {"old": 0, "new": 1}, "next_attempt_at": {"old": None, "new": retry_at}})
        for i in sorted(failing)
    ]
    metrics = scrape(http)
    assert sample(metrics, "teichaku_inbound_sms_waiting", state="put_off") == 2  # for the operators to look into
    assert sample(metrics, "teichaku_inbound_sms_waiting", state="new") == 0
    clock.set(clock.now() + answers.RETRY_BACKOFF[0] - timedelta(seconds=1))
    assert run() == 0  # not due yet
    clock.set(clock.now() + timedelta(seconds=1))
    assert run() == 0
    assert {r.attempts for r in rows(factory, InboundMessage) if r.id in failing} == {2}

    monkeypatch.setattr(answers, "process_sms", real)  # the fault fixed
    clock.set(clock.now() + answers.RETRY_BACKOFF[1])
    assert run() == 2
    assert all(r.processed_at is not None for r in rows(factory, InboundMessage))
    assert sample(scrape(http), "teichaku_inbound_sms_waiting", state="put_off") == 0


def test_a_put_off_sms_keeps_its_senders_later_ones_behind_it(api, http, factory, clock, monkeypatch):
    """A client's STOP whose acting fails is put off; the START they sent after it waits behind it,
    in the job and in the API's own acting, and goes after it once it is acted on: started, as sent."""
    ci = sent_check_in(api, http, factory, clock)
    state = http.app.state
    state.settings = state.settings.model_copy(update={"act_on_sms_in_api": False})
    assert post_signed(http, SMS, sms(ci, "STOP", "SM" + "a" * 32)).status_code == 200
    clock.set(clock.now() + timedelta(seconds=1))
    assert post_signed(http, SMS, sms(ci, "START", "SM" + "b" * 32)).status_code == 200
    stop, start = sorted(r.id for r in rows(factory, InboundMessage))
    real = answers.process_sms

    def faulty(session, *, inbound_id, **kw):
        if inbound_id == stop:
            raise RuntimeError("a fault of ours")
        return real(session, inbound_id=inbound_id, **kw)

    monkeypatch.setattr(answers, "process_sms", faulty)
    clock.set(clock.now() + answers.WAITING_GRACE)
    assert run_job("process_replies", factory, clock, state.messaging) == 0  # STOP failed, START held
    assert run_job("process_replies", factory, clock, state.messaging) == 0  # still held behind it
    # The API acting on a new SMS of the same sender leaves it waiting too.
    state.settings = state.settings.model_copy(update={"act_on_sms_in_api": True})
    assert post_signed(http, SMS, sms(ci, "2", SID)).status_code == 200
    assert [r.processed_at for r in rows(factory, InboundMessage)] == [None, None, None]
    assert outcomes_of(factory, ci) == []

    monkeypatch.setattr(answers, "process_sms", real)
    clock.set(clock.now() + answers.RETRY_BACKOFF[0])
    assert run_job("process_replies", factory, clock, state.messaging) == 3
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is None  # STOP, then START: started
    assert len(outcomes_of(factory, ci)) == 1
