"""Escalation when nobody answers (service/outcomes/jobs.py), at chosen instants.

A placement started on Monday 20 April 2026 (plan standard-3m) has an automated SMS check-in due
Friday 24 April and an automated e-mail check-in due Wednesday 20 May. The check-in is written
and sent at 10:00 Tokyo time on its day (development adapter), so 48 hours later is 10:00 on
Sunday 26 April. Unanswered for 48 hours, it goes once more by the other channel; unanswered
again, a phone call lands in the worker's queue; two check-ins in a row unanswered raise an
``unreachable`` crisis signal.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import col, select

from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import Messaging
from service.contacts.models import Channel, Client, FollowUp, FollowUpKind, FollowUpStatus, Party
from service.db import session_scope
from service.jobs import run_job
from service.outcomes import jobs as follow_up_jobs
from service.outcomes.models import CrisisFlag, CrisisSignal, CrisisSignalKind

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")


def at(day: str, hour: int = 10, minute: int = 0, tz: ZoneInfo = TOKYO) -> datetime:
    d = date.fromisoformat(day)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=tz)


@pytest.fixture
def messaging(settings) -> Messaging:
    return Messaging.from_settings(settings)


class Steps:
    """Runs the jobs at chosen instants on the shared test clock."""

    def __init__(self, api, factory, clock, messaging) -> None:
        self.api, self.factory, self.clock, self.messaging = api, factory, clock, messaging

    def run(self, name: str, when: datetime) -> int:
        self.clock.set(when)
        return run_job(name, self.factory, self.clock, self.messaging)

    def send_check_ins(self, when: datetime) -> None:
        self.run("plan_check_ins", when)
        self.run("dispatch", when)

    def escalate(self, when: datetime) -> int:
        return self.run("escalate_unanswered", when)

    def rows(self, purpose: Purpose | None = None) -> list[OutboxMessage]:
        with self.factory() as s:
            query = select(OutboxMessage).order_by(OutboxMessage.id)
            if purpose is not None:
                query = query.where(OutboxMessage.purpose == purpose)
            return list(s.exec(query).all())

    def phone_calls(self, follow_up_id: int) -> list[FollowUp]:
        with self.factory() as s:
            return list(s.exec(select(FollowUp).where(FollowUp.retry_of == follow_up_id)).all())

    def follow_up(self, follow_up_id: int) -> FollowUp:
        with self.factory() as s:
            return s.get(FollowUp, follow_up_id)

    def answer(self, row: OutboxMessage, answer: str = "doing_well") -> None:
        token = self.messaging.links.token(row.id)
        r = self.api.http.post(f"/r/{token}", data={"answer": answer})
        assert r.status_code == 200, r.text

    def unreachable_signals(self, placement_id: int) -> list[CrisisSignal]:
        with self.factory() as s:
            return list(
                s.exec(
                    select(CrisisSignal).where(
                        CrisisSignal.placement_id == placement_id, CrisisSignal.kind == CrisisSignalKind.unreachable
                    )
                ).all()
            )


@pytest.fixture
def steps(api, factory, clock, messaging) -> Steps:
    return Steps(api, factory, clock, messaging)


def sms_check_in(steps: Steps, sent: datetime) -> OutboxMessage:
    steps.send_check_ins(sent)
    [row] = steps.rows(Purpose.check_in)
    assert row.channel == MessageChannel.sms and row.status == MessageStatus.sent, row
    assert row.sent_at == sent
    return row


def test_unanswered_sms_check_in_goes_once_more_by_email_after_48_hours(api, steps):
    p = api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))

    assert steps.escalate(at("2026-04-26", 9)) == 0  # 47 hours: still waiting
    assert steps.rows(Purpose.escalation) == []

    assert steps.escalate(at("2026-04-26", 10)) == 1  # 48 hours
    [esc] = steps.rows(Purpose.escalation)
    assert esc.idempotency_key == f"esc:{check_in.id}"
    assert esc.channel == MessageChannel.email and esc.to_address == "taro@example.jp"
    assert esc.follow_up_id == check_in.follow_up_id and esc.placement_id == p["id"]
    assert esc.client_id == check_in.client_id and esc.status == MessageStatus.queued
    # Inside the client's window (09:00-20:00 Tokyo): it may go at once.
    assert (esc.send_tz, esc.window_start, esc.window_end) == ("Asia/Tokyo", "09:00", "20:00")
    assert esc.next_attempt_at == at("2026-04-26", 10)
    # The body's reply link opens this message (its token is signed with the time: compare what it reads as).
    links = steps.messaging.links
    (token,) = re.findall(re.escape(links.public_url.rstrip("/")) + r"/r/(\S+)", esc.body)
    assert esc.subject and links.read(token) == (esc.id, None)
    # Once only, however often the job runs.
    assert steps.escalate(at("2026-04-26", 10, 15)) == 0
    assert steps.escalate(at("2026-04-26", 11)) == 0
    assert len(steps.rows(Purpose.escalation)) == 1
    assert steps.phone_calls(check_in.follow_up_id) == []

    steps.run("dispatch", at("2026-04-26", 10, 1))
    sent = [m for m in steps.messaging.email.sent if getattr(m, "outbox_id", None) == esc.id]
    assert len(sent) == 1 and sent[0].to == "taro@example.jp"

    # Its reply link answers the same follow-up: nothing more happens after that.
    steps.answer(steps.rows(Purpose.escalation)[0], "some_worries")
    fu = steps.follow_up(check_in.follow_up_id)
    assert fu.status == FollowUpStatus.done
    assert steps.escalate(at("2026-04-28", 11)) == 0
    assert steps.phone_calls(check_in.follow_up_id) == []


@pytest.mark.parametrize(
    ("who", "tz", "late_evening", "next_morning"),
    [
        ("a.worker", TOKYO, at("2026-04-26", 22, 30), at("2026-04-27", 9)),
        ("b.worker", NEW_YORK, at("2026-04-26", 22, 30, NEW_YORK), at("2026-04-27", 9, tz=NEW_YORK)),
    ],
)
def test_escalation_waits_for_the_clients_sending_window(api, steps, who, tz, late_evening, next_morning):
    api.placement(who, start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24", 10, tz=tz))
    # The job runs late in the evening (60.5 hours): the e-mail is written, to go at 09:00.
    assert steps.escalate(late_evening) == 1
    [esc] = steps.rows(Purpose.escalation)
    assert esc.send_tz == str(tz) and esc.next_attempt_at == next_morning
    assert steps.run("dispatch", late_evening + timedelta(minutes=5)) == 0
    assert steps.run("dispatch", next_morning - timedelta(minutes=1)) == 0
    assert steps.run("dispatch", next_morning) == 1
    [esc] = steps.rows(Purpose.escalation)
    assert esc.status == MessageStatus.sent and esc.sent_at == next_morning
    assert esc.follow_up_id == check_in.follow_up_id


def test_an_answer_cancels_the_escalation_still_waiting_to_go(api, steps):
    api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24", 10))
    assert steps.escalate(at("2026-04-26", 22, 30)) == 1  # written, to go at 09:00
    [esc] = steps.rows(Purpose.escalation)
    assert esc.status == MessageStatus.queued
    steps.clock.set(at("2026-04-26", 23))
    steps.answer(check_in)  # by the check-in's reply link, before the escalation went
    [esc] = steps.rows(Purpose.escalation)
    assert (esc.status, esc.error_reason) == (
        MessageStatus.cancelled,
        "not sent: the check-in was answered or closed meanwhile",
    )
    assert steps.run("dispatch", at("2026-04-27", 9)) == 0


def test_a_client_window_of_their_own_is_respected(api, steps, factory):
    p = api.placement(start="2026-04-20")
    with session_scope(factory) as s:
        client = s.get(Client, p["client_id"])
        client.send_window_start, client.send_window_end = "18:00", "22:00"  # works days
    steps.send_check_ins(at("2026-04-24", 18))
    assert steps.escalate(at("2026-04-26", 18)) == 1
    [esc] = steps.rows(Purpose.escalation)
    assert (esc.window_start, esc.window_end, esc.next_attempt_at) == ("18:00", "22:00", at("2026-04-26", 18))
    assert steps.escalate(at("2026-04-26", 23)) == 0


def test_answered_before_48_hours_nothing_happens(api, steps):
    api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))
    steps.clock.set(at("2026-04-25", 20))
    steps.answer(check_in)
    for when in (at("2026-04-26", 10), at("2026-04-28", 10), at("2026-05-01", 10)):
        assert steps.escalate(when) == 0
    assert steps.rows(Purpose.escalation) == []
    assert steps.phone_calls(check_in.follow_up_id) == []


def test_unanswered_escalation_becomes_one_phone_call_in_the_workers_queue(api, steps):
    p = api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))
    steps.escalate(at("2026-04-26", 10))
    steps.run("dispatch", at("2026-04-26", 10))
    assert steps.rows(Purpose.escalation)[0].status == MessageStatus.sent
    # mark_missed closes the check-in's window meanwhile: a missed follow-up is still unanswered.
    steps.run("mark_missed", at("2026-04-27", 10))
    assert steps.follow_up(check_in.follow_up_id).status == FollowUpStatus.missed

    assert steps.escalate(at("2026-04-28", 9)) == 0  # the escalation has waited 47 hours
    assert steps.escalate(at("2026-04-28", 10)) == 1
    assert steps.escalate(at("2026-04-28", 10)) == 0
    assert steps.escalate(at("2026-04-28", 10, 15)) == 0
    [call] = steps.phone_calls(check_in.follow_up_id)
    assert (call.kind, call.channel, call.party, call.automated) == (
        FollowUpKind.retry,
        Channel.phone,
        Party.client,
        False,
    )
    assert call.assignee_id == api.world.users["a.worker"] and call.status == FollowUpStatus.pending
    # Tuesday 28 April: the next business day is Thursday 30 April (29 April is Shōwa Day).
    assert call.due_date == date(2026, 4, 30)
    assert "no answer" in call.status_reason and "e-mail" in call.status_reason

    queue = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-04-30"}))
    mine = [i for i in queue["items"] if i["follow_up_id"] == call.id]
    assert len(mine) == 1
    assert mine[0]["kind"] == "retry" and mine[0]["channel"] == "phone" and mine[0]["placement_id"] == p["id"]
    assert mine[0]["contact"]["phone"]
    # One unanswered check-in is not yet a sign of anything.
    assert steps.unreachable_signals(p["id"]) == []

    # Reaching the client on that call closes the check-in too.
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{call.id}/outcome", {"reached": True}), 201)
    assert steps.follow_up(check_in.follow_up_id).status == FollowUpStatus.done


def test_no_email_on_record_goes_straight_to_the_phone_call(api, steps):
    client = api.client(email=None)
    p = api.placement(start="2026-04-20", client=client)
    check_in = sms_check_in(steps, at("2026-04-24"))
    assert steps.escalate(at("2026-04-26", 9)) == 0
    assert steps.escalate(at("2026-04-26", 10)) == 1
    for _ in range(2):
        assert steps.escalate(at("2026-04-26", 10, 30)) == 0
    assert steps.rows(Purpose.escalation) == []
    [call] = steps.phone_calls(check_in.follow_up_id)
    assert "no e-mail address" in call.status_reason
    # Sunday 26 April: due Monday 27 April.
    assert call.due_date == date(2026, 4, 27)
    queue = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-04-27"}))
    assert [i["follow_up_id"] for i in queue["items"] if i["placement_id"] == p["id"] and i["kind"] == "retry"] == [
        call.id
    ]


def test_an_opted_out_client_gets_no_second_message(api, steps, factory):
    p = api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))
    with session_scope(factory) as s:
        client = s.get(Client, p["client_id"])
        client.opted_out_at, client.opted_out_via = at("2026-04-25"), "sms"
    assert steps.escalate(at("2026-04-26", 10)) == 1
    assert steps.rows(Purpose.escalation) == []
    [call] = steps.phone_calls(check_in.follow_up_id)
    assert "stopped automated messages" in call.status_reason


def test_an_escalation_answered_while_queued_is_not_sent(api, steps):
    api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))
    steps.escalate(at("2026-04-26", 22))  # queued for 09:00 tomorrow
    steps.clock.set(at("2026-04-26", 23))
    steps.answer(check_in)  # the client answers the first message late at night
    steps.escalate(at("2026-04-26", 23, 15))
    [esc] = steps.rows(Purpose.escalation)
    assert esc.status == MessageStatus.cancelled and "answered" in esc.error_reason
    assert steps.run("dispatch", at("2026-04-27", 9)) == 0


def test_a_check_in_found_days_late_is_not_sent_again(api, steps):
    """After a long outage, a second message about an old check-in is noise: the worker calls."""
    api.placement(start="2026-04-20")
    check_in = sms_check_in(steps, at("2026-04-24"))
    assert steps.escalate(at("2026-04-28", 11)) == 1  # 73 hours: due 48 h + more than 2 days late
    assert steps.rows(Purpose.escalation) == []
    [call] = steps.phone_calls(check_in.follow_up_id)
    assert "too late" in call.status_reason


def test_two_consecutive_unanswered_check_ins_raise_the_unreachable_signal(api, steps):
    p = api.placement(start="2026-04-20")
    # 1. The SMS check-in of 24 April: e-mail again on the 26th, a phone call on the 28th.
    first = sms_check_in(steps, at("2026-04-24"))
    steps.escalate(at("2026-04-26"))
    steps.run("dispatch", at("2026-04-26"))
    assert steps.escalate(at("2026-04-28")) == 1
    assert len(steps.phone_calls(first.follow_up_id)) == 1
    assert steps.unreachable_signals(p["id"]) == []
    steps.run("mark_missed", at("2026-05-07"))  # the check-in and the call expire unanswered

    # 2. The e-mail check-in of 20 May: by SMS again on the 22nd, a phone call on the 24th.
    steps.send_check_ins(at("2026-05-20"))
    second = steps.rows(Purpose.check_in)[-1]
    assert second.channel == MessageChannel.email and second.status == MessageStatus.sent
    assert steps.escalate(at("2026-05-22")) == 1
    [esc] = [r for r in steps.rows(Purpose.escalation) if r.follow_up_id == second.follow_up_id]
    assert esc.channel == MessageChannel.sms and esc.to_address == "+819012345678"
    steps.run("dispatch", at("2026-05-22"))
    assert steps.escalate(at("2026-05-24")) == 1
    assert len(steps.phone_calls(second.follow_up_id)) == 1

    [signal] = steps.unreachable_signals(p["id"])
    assert signal.source == f"escalation:{second.follow_up_id}" and "two check-ins" in signal.detail
    # The crisis rules take it from there (unreachable is urgent: a flag and a crisis call).
    with steps.factory() as s:
        flag = s.exec(select(CrisisFlag).where(CrisisFlag.placement_id == p["id"])).one()
        assert flag.severity.value == "urgent" and signal.flag_id == flag.id
    for when in (at("2026-05-24", 10, 15), at("2026-05-25"), at("2026-05-26")):
        steps.escalate(when)
    assert len(steps.unreachable_signals(p["id"])) == 1
    assert len(steps.phone_calls(second.follow_up_id)) == 1


def test_an_answered_check_in_between_breaks_the_run(api, steps):
    """Unanswered, answered, unanswered: no two in a row, so no signal."""
    p = api.placement(start="2026-04-20")
    first = sms_check_in(steps, at("2026-04-24"))
    steps.escalate(at("2026-04-26"))
    steps.run("dispatch", at("2026-04-26"))
    steps.escalate(at("2026-04-28"))
    [call] = steps.phone_calls(first.follow_up_id)
    # The worker reaches the client on the phone call: the first check-in is done after all.
    steps.clock.set(at("2026-04-30"))
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{call.id}/outcome", {"reached": True}), 201)

    steps.send_check_ins(at("2026-05-20"))
    steps.escalate(at("2026-05-22"))
    steps.run("dispatch", at("2026-05-22"))
    assert steps.escalate(at("2026-05-24")) == 1
    assert steps.unreachable_signals(p["id"]) == []


def test_other_channel_of_each_check_in():
    client = Client(office_id=1, name="x", category="needy_person", phone="+819012345678", email="x@example.jp",
                    consent_automated=True)  # fmt: skip
    other = follow_up_jobs._other_channel
    assert other(MessageChannel.sms, client) == MessageChannel.email
    assert other(MessageChannel.email, client) == MessageChannel.sms
    assert other(MessageChannel.voice, client) == MessageChannel.sms
    client.phone = None
    assert other(MessageChannel.email, client) is None and other(MessageChannel.voice, client) is None
    client.phone, client.consent_automated = "+819012345678", False
    assert other(MessageChannel.sms, client) is None


def test_only_sent_check_ins_are_escalated(api, steps, factory):
    """A check-in still queued (or failed: the outbox hands those to the worker itself) is not."""
    api.placement(start="2026-04-20")
    steps.run("plan_check_ins", at("2026-04-24"))
    with session_scope(factory) as s:
        row = s.exec(select(OutboxMessage).where(col(OutboxMessage.purpose) == Purpose.check_in)).one()
        row.status, row.error_reason = MessageStatus.failed, "refused"
    assert steps.escalate(at("2026-04-27")) == 0
    assert steps.rows(Purpose.escalation) == []
