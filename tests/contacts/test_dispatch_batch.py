"""The dispatch tick works per batch (one query for consent, one for follow-ups, one executemany
for results): a batch that mixes rows which must not go out with rows that must, and a batch of
mixed send results, come out as they did row by row; every row's change is found in the audit trail
by its id (a claim and a batch's sends as one summary event per office naming the rows, the rest row
by row)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from service.audit.capture import RECORD_IDS, Actor, acting_as
from service.audit.models import ActorType, AuditEvent
from service.audit.service import list_events
from service.clock import FixedClock
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import _record_results, _unwanted, claim, enqueue
from service.contacts.messaging.ports import MaybeSent, PermanentError, Sent, TransientError
from service.contacts.models import FollowUp, FollowUpStatus
from service.db import session_scope
from service.jobs import run_job
from tests.contacts.smtp_sink import smtp_messaging, smtp_sink
from tests.contacts.test_outbox import START, email_check_in, outbox, update_client


def audit(factory, office_id: int, record_type: str, record_id: int) -> list[AuditEvent]:
    """The record's events as the trail's readers (the audit API) find them, oldest first."""
    with factory() as s:
        rows, total = list_events(
            s, office_id=office_id, limit=500, offset=0, record_type=record_type, record_id=record_id
        )
    assert total == len(rows)
    return rows[::-1]


def test_one_batch_mixing_stopped_withdrawn_skipped_and_normal_rows(api, settings, factory, clock):
    people = {
        name: api.client(name=f"人 {name}", email=f"{name}@example.jp")
        for name in ("ok1", "stopped", "ok2", "withdrew", "skipped", "ok3")
    }
    placements = {name: api.placement(start=START, client=c) for name, c in people.items()}
    with smtp_sink() as (handler, port):
        m = smtp_messaging(settings, port)
        assert run_job("plan_check_ins", factory, clock, m) == 6
        # Between planning and sending: a STOP, a consent taken back, a follow-up skipped by the worker.
        update_client(factory, people["stopped"]["id"], opted_out_at=clock.now(), opted_out_via="sms")
        api.ok(api.patch("a.worker", f"/api/v1/clients/{people['withdrew']['id']}", {"consent_automated": False}))
        skipped_fu = email_check_in(api, "a.worker", placements["skipped"])["id"]
        with session_scope(factory) as s:
            fu = s.get(FollowUp, skipped_fu)
            fu.status, fu.status_reason = FollowUpStatus.skipped, "the worker called instead"
            s.add(fu)

        assert run_job("dispatch", factory, clock, m) == 3  # one batch: the default is 200 rows
        received = sorted(to for r in handler.received for to in r.rcpt_tos)
        assert received == ["ok1@example.jp", "ok2@example.jp", "ok3@example.jp"]

    rows = {r.to_address.split("@")[0]: r for r in outbox(factory)}
    assert {n: r.status for n, r in rows.items()} == {
        "ok1": MessageStatus.sent, "ok2": MessageStatus.sent, "ok3": MessageStatus.sent,
        "stopped": MessageStatus.cancelled, "withdrew": MessageStatus.cancelled, "skipped": MessageStatus.cancelled,
    }  # fmt: skip
    assert rows["stopped"].error_reason == "not sent: the client stopped automated messages"
    assert rows["withdrew"].error_reason == "not sent: no consent to automated messages"
    assert rows["skipped"].error_reason == "not sent: the follow-up was skipped"
    assert all(rows[n].provider_id and rows[n].error_reason is None for n in ("ok1", "ok2", "ok3"))
    fu = email_check_in(api, "a.worker", placements["stopped"])
    assert fu["status"] == "skipped" and fu["status_reason"] == rows["stopped"].error_reason
    assert email_check_in(api, "a.worker", placements["withdrew"])["status"] == "skipped"  # already, by the PATCH
    # The worker's own reason stays.
    assert email_check_in(api, "a.worker", placements["skipped"])["status_reason"] == "the worker called instead"
    # Every row's change is in the trail, attributed to the job, with old and new values.
    for name, row in rows.items():
        updates = [e for e in audit(factory, row.office_id, "outbox_message", row.id) if e.action == "update"]
        claimed = [e for e in updates if e.changes.get("status") == {"old": "queued", "new": "sending"}]
        final = [e for e in updates if e.changes.get("status", {}).get("old") == "sending"]
        assert len(claimed) == 1 and len(final) == 1, (name, [e.changes for e in updates])
        for event in claimed + final:
            assert (event.actor_type, event.actor_label, event.office_id) == ("job", "dispatch", row.office_id)
        assert final[0].changes["status"]["new"] == row.status.value
        # The claim is one event for the batch; so are the sends. A cancellation is the row's own.
        assert row.id in claimed[0].changes[RECORD_IDS] and claimed[0].record_id is None
        if row.status == MessageStatus.sent:
            assert row.id in final[0].changes[RECORD_IDS] and final[0].record_id is None
            assert final[0].changes["provider_id"]["new"][str(row.id)] == row.provider_id
        else:
            assert final[0].record_id == row.id and final[0].changes["error_reason"]["new"] == row.error_reason
    office = rows["ok1"].office_id
    (sends,) = {e.id: e for r in rows.values() for e in audit(factory, office, "outbox_message", r.id)
                if e.changes.get("status", {}).get("new") == "sent"}.values()  # fmt: skip
    assert sends.changes[RECORD_IDS] == sorted(rows[n].id for n in ("ok1", "ok2", "ok3"))
    fu_events = [
        e for e in audit(factory, office, "follow_up", rows["stopped"].follow_up_id) if e.actor_label == "dispatch"
    ]
    assert [e.changes["status"] for e in fu_events] == [{"old": "pending", "new": "skipped"}]


def test_one_batch_of_mixed_results_is_recorded_row_by_row(factory, world, clock):
    now = clock.now()
    with session_scope(factory) as s:
        for i in range(7):
            enqueue(
                s,
                OutboxMessage(
                    idempotency_key=f"mix:{i}", office_id=world.office_a, purpose=Purpose.alert,
                    channel=MessageChannel.email, to_address=f"staff{i}@example.jp", subject="件名", body="本文",
                    next_attempt_at=now - timedelta(minutes=1), send_tz="Asia/Tokyo",
                    window_start="09:00", window_end="20:00",
                ),
            )  # fmt: skip
    with factory() as s:
        rows = claim(s, now=now, limit=100)
    assert len(rows) == 7
    a, b, c, d, e, f, g = (r.id for r in rows)
    # A status callback settled one row before we recorded: ours must not overwrite it.
    with session_scope(factory) as s:
        settled = s.get(OutboxMessage, f)
        settled.status = MessageStatus.delivered
        s.add(settled)
    later = datetime(2026, 4, 21, 0, 0, tzinfo=UTC)
    results = {
        a: Sent("p-a"),
        b: MaybeSent("timeout", "no answer from the server"),
        c: TransientError("421", "try later"),
        d: PermanentError("550", "no such mailbox"),
        e: later,  # claimed outside its window: back to the queue
        f: Sent("p-f"),
        g: Sent("p-g"),
    }
    record_at = FixedClock(now + timedelta(seconds=5))
    with acting_as(Actor(ActorType.job, label="dispatch")):
        asyncio.run(asyncio.to_thread(_record_results, factory, rows, results, record_at))

    got = {r.id: r for r in outbox(factory)}
    assert (got[a].status, got[a].provider_id, got[a].sent_at) == (MessageStatus.sent, "p-a", record_at.now())
    assert (got[b].status, got[b].error_code) == (MessageStatus.unknown, "timeout")
    assert (got[c].status, got[c].error_code, got[c].attempts) == (MessageStatus.queued, "421", 1)
    assert got[c].next_attempt_at >= record_at.now() + timedelta(minutes=1)  # backed off, inside the window
    assert (got[d].status, got[d].error_code, got[d].error_reason) == (MessageStatus.failed, "550", "no such mailbox")
    assert (got[e].status, got[e].next_attempt_at, got[e].attempts) == (MessageStatus.queued, later, 0)
    assert (got[f].status, got[f].provider_id) == (MessageStatus.delivered, None)
    assert (got[g].status, got[g].provider_id) == (MessageStatus.sent, "p-g")
    assert all(got[i].updated_at == record_at.now() for i in (a, b, c, d, e, g))

    def recorded(i: int) -> list[dict]:
        return [
            ev.changes for ev in audit(factory, world.office_a, "outbox_message", i) if ev.actor_label == "dispatch"
        ]

    assert recorded(f) == []
    (sent,) = recorded(a)  # the batch's sends: one event naming them, each with its provider id
    assert sent == recorded(g)[0] and sent[RECORD_IDS] == [a, g]
    assert sent["status"] == {"old": "sending", "new": "sent"} and sent["sent_at"]["new"] == record_at.now().isoformat()
    assert sent["provider_id"] == {"old": None, "new": {str(a): "p-a", str(g): "p-g"}}
    assert "error_code" not in sent  # unchanged values are not listed
    (back,) = recorded(e)
    assert back["attempts"] == {"old": 1, "new": 0} and back["next_attempt_at"]["new"] == later.isoformat()
    assert [ch["status"]["new"] for ch in recorded(d)] == ["failed"]


class _Stalling:
    """Twilio standing in: answers the first ``answer`` SMS at once, then takes one and never answers."""

    def __init__(self, answer: int) -> None:
        self.answer, self.handed = answer, []
        self.stalled = asyncio.Event()

    async def send_sms(self, sms):
        self.handed.append(sms.outbox_id)
        if len(self.handed) <= self.answer:
            return Sent(f"SM{sms.outbox_id:032d}")
        self.stalled.set()
        await asyncio.Event().wait()  # the answer never comes before the service stops

    async def start_call(self, call):  # pragma: no cover - no calls here
        raise AssertionError("no calls in this test")


def test_a_tick_stopped_mid_batch_keeps_what_was_sent_and_requeues_what_was_not_tried(api, http, factory, clock):
    """The service stops while a tick sends (the scheduler's shutdown cancels it): the sent SMS are
    recorded sent, the one in the adapter's hands "unknown" (it may have gone: never re-sent), and
    the rest go back to the queue, due now and not counted as an attempt, for the next scheduler."""
    from service.contacts.messaging.outbox import settle
    from service.contacts.models import Channel
    from service.jobs import JobContext, arun_job
    from tests.outcomes.test_webhooks import check_in

    for i in range(5):
        check_in(api, factory, phone=f"090-1234-56{i:02d}", channel=Channel.sms)
    m = http.app.state.messaging
    assert run_job("plan_check_ins", factory, clock, m) == 5
    twilio = _Stalling(answer=2)
    m.phone = twilio

    async def stop_mid_batch() -> None:
        tick = asyncio.create_task(arun_job("dispatch", JobContext(factory, clock, m)))
        await asyncio.wait_for(twilio.stalled.wait(), 10)
        tick.cancel()  # what AsyncIOScheduler.shutdown does to a job under way
        await settle()
        assert tick.cancelled()

    asyncio.run(stop_mid_batch())
    by_id = {r.id: r for r in outbox(factory)}
    sent, stalled = twilio.handed[:2], twilio.handed[2]
    assert [by_id[i].status for i in sent] == [MessageStatus.sent] * 2
    assert by_id[stalled].status == MessageStatus.unknown and by_id[stalled].attempts == 1
    untried = set(by_id) - set(twilio.handed)
    assert len(untried) == 2
    for i in untried:
        row = by_id[i]
        assert (row.status, row.attempts) == (MessageStatus.queued, 0)
        assert row.next_attempt_at <= clock.now()
    # The next tick sends exactly the untried ones, nothing twice.
    m.phone = _Stalling(answer=10)
    assert run_job("dispatch", factory, clock, m) == 2
    assert set(m.phone.handed) == untried


def test_the_claim_reads_each_clients_consent_with_its_row(api, factory, world, clock):
    """The claim reads a client's consent once per row (as the bits of ``client_flags``): every
    combination of a STOP, automated consent and employer consent decides as the flags say, for a
    check-in to the client and one to the employer; a message with no client is not checked."""
    now = clock.now()
    cases = {}
    for opted_out in (False, True):
        for automated in (False, True):
            for employer in (False, True):
                client = api.client(consent_automated=automated, consent_employer=employer)
                if opted_out:
                    update_client(factory, client["id"], opted_out_at=now, opted_out_via="sms")
                cases[opted_out, automated, employer] = client["id"]
    with session_scope(factory) as s:
        for client_id in cases.values():
            for purpose in (Purpose.check_in, Purpose.employer_check_in):
                enqueue(
                    s,
                    OutboxMessage(
                        idempotency_key=f"consent:{client_id}:{purpose}", office_id=world.office_a,
                        purpose=purpose, channel=MessageChannel.email, client_id=client_id,
                        to_address="x@example.jp", body="本文", next_attempt_at=now,
                    ),
                )  # fmt: skip
        enqueue(
            s,
            OutboxMessage(
                idempotency_key="consent:none", office_id=world.office_a, purpose=Purpose.alert,
                channel=MessageChannel.email, to_address="staff@example.jp", body="本文", next_attempt_at=now,
            ),
        )  # fmt: skip
    with factory() as s:
        claimed = claim(s, now=now, limit=100)
    assert len(claimed) == 2 * len(cases) + 1
    by_client = {(r.client_id, r.purpose): r for r in claimed}
    for (opted_out, automated, employer), client_id in cases.items():
        to_client = _unwanted(by_client[client_id, Purpose.check_in])
        to_employer = _unwanted(by_client[client_id, Purpose.employer_check_in])
        if opted_out:
            assert to_client == "not sent: the client stopped automated messages"
        elif not automated:
            assert to_client == "not sent: no consent to automated messages"
        else:
            assert to_client is None
        assert to_employer == (None if employer else "not sent: no consent to contact the employer")
    (alert,) = [r for r in claimed if r.client_id is None]
    assert alert.client_flags is None and _unwanted(alert) is None
