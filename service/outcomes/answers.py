"""Answers from clients and employers become outcomes on their follow-ups.

Each answer is recorded once: an ``inbound_message`` row keyed by the provider's id
(MessageSid, CallSid, or ``link:<outbox id>`` for a reply link) is written first, inside a
savepoint, and a second delivery of the same id finds it and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.accounts.models import Office
from service.clock import Clock
from service.contacts.messaging.models import (
    InboundMessage,
    MessageChannel,
    MessageStatus,
    OutboxMessage,
    Purpose,
)
from service.contacts.messaging.outbox import Messaging, display_phone, enqueue
from service.contacts.messaging.replies import (
    ANSWERS,
    EMPLOYER_ANSWERS,
    Command,
    ReplyClass,
    combine,
    command_of,
)
from service.contacts.models import Client, FollowUp, FollowUpStatus, Placement
from service.outcomes.models import Outcome

WELLBEING = {"doing_well": 4, "some_worries": 3, "struggling": 2}


@dataclass
class Answered:
    duplicate: bool
    outcome: Outcome | None = None
    reply_class: ReplyClass = ReplyClass.none
    reason: str | None = None
    command: Command | None = None


def _claim_inbound(session: Session, row: InboundMessage) -> bool:
    """True if this provider id is new; False if it was recorded before (even concurrently)."""
    if session.exec(select(InboundMessage.id).where(InboundMessage.provider_id == row.provider_id)).first():
        return False
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def record_answer(
    session: Session,
    *,
    messaging: Messaging,
    outbox: OutboxMessage,
    provider_id: str,
    channel: MessageChannel,
    answer: str | None,
    text: str | None,
    from_address: str | None,
    source: str,
    clock: Clock,
) -> Answered:
    inbound = InboundMessage(
        provider_id=provider_id,
        office_id=outbox.office_id,
        client_id=outbox.client_id,
        outbox_id=outbox.id,
        channel=channel,
        from_address=from_address,
        body=(text or None) and text[:2000],
        received_at=clock.now(),
    )
    if not _claim_inbound(session, inbound):
        return Answered(duplicate=True)
    employer = outbox.purpose == Purpose.employer_check_in
    table = EMPLOYER_ANSWERS if employer else ANSWERS
    tapped: tuple[ReplyClass, str | None] = (ReplyClass.none, None)
    signals: list[str] = []
    if answer is not None:
        entry = table[answer]
        tapped = (entry[0], entry[1])
        if employer:
            signals = list(entry[2])
    cls, reason = combine(tapped, messaging.classifier.classify(text))
    outcome = _outcome(session, outbox, channel, answer, text, cls, reason, signals, source, clock.now())
    inbound.reply_class, inbound.matched_reason = cls.name, reason
    inbound.outcome_id = outcome.id if outcome else None
    session.add(inbound)
    session.flush()
    return Answered(False, outcome, cls, reason)


def _outcome(
    session: Session,
    outbox: OutboxMessage,
    channel: MessageChannel,
    answer: str | None,
    text: str | None,
    cls: ReplyClass,
    reason: str | None,
    signals: list[str],
    source: str,
    now: datetime,
) -> Outcome | None:
    if outbox.follow_up_id is None:
        return None
    fu = session.get(FollowUp, outbox.follow_up_id)
    late = fu.status == FollowUpStatus.missed
    if fu.status in (FollowUpStatus.pending, FollowUpStatus.missed, FollowUpStatus.attempted):
        fu.status, fu.completed_at, fu.updated_at = FollowUpStatus.done, now, now
        fu.status_reason = f"answered by {source}"
        session.add(fu)
    note = " / ".join(p for p in (answer and answer.replace("_", " "), text) if p)
    outcome = Outcome(
        office_id=fu.office_id,
        follow_up_id=fu.id,
        placement_id=fu.placement_id,
        party=fu.party,
        channel=fu.channel,
        recorded_by=None,
        recorded_at=now,
        reached=True,
        wellbeing=None if outbox.purpose == Purpose.employer_check_in else WELLBEING.get(answer or ""),
        risk_signals=signals,
        note=note[:4000] or None,
        late=late,
        source=source,
        reply_class=cls.name,
        reply_reason=reason,
    )
    session.add(outcome)
    session.flush()
    return outcome


def use_reply_link(session: Session, *, outbox_id: int, now: datetime) -> bool:
    """Single use: only the first answer through a link counts, even when two arrive at once."""
    result = session.exec(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, col(OutboxMessage.answered_at).is_(None))
        .values(answered_at=now)
        .execution_options(synchronize_session=False)
    )
    return (result.rowcount or 0) == 1


def clients_by_phone(session: Session, phone: str) -> list[Client]:
    return list(session.exec(select(Client).where(Client.phone == phone).order_by(Client.id)).all())


def handle_sms(
    session: Session,
    *,
    messaging: Messaging,
    message_sid: str,
    from_phone: str,
    body: str,
    clock: Clock,
) -> Answered:
    """An inbound SMS: STOP / START / HELP first, else an answer to the latest SMS check-in."""
    now = clock.now()
    clients = clients_by_phone(session, from_phone)
    command = command_of(body)
    if command is not None:
        inbound = InboundMessage(
            provider_id=message_sid,
            channel=MessageChannel.sms,
            from_address=from_phone,
            command=command.value,
            office_id=clients[0].office_id if clients else None,
            client_id=clients[0].id if clients else None,
            received_at=now,
        )
        if not _claim_inbound(session, inbound):
            return Answered(duplicate=True, command=command)
        for client in clients:
            _apply_command(session, messaging, client, command, message_sid, now)
        return Answered(False, command=command)
    latest = None
    if clients:
        latest = session.exec(
            select(OutboxMessage)
            .where(
                col(OutboxMessage.client_id).in_([c.id for c in clients]),
                OutboxMessage.channel == MessageChannel.sms,
                col(OutboxMessage.status).in_([MessageStatus.sent, MessageStatus.delivered, MessageStatus.unknown]),
                col(OutboxMessage.follow_up_id).is_not(None),
            )
            .order_by(col(OutboxMessage.sent_at).desc(), col(OutboxMessage.id).desc())
        ).first()
    if latest is None:
        # From a number we do not know, or with nothing to answer: keep it, change nothing else.
        _claim_inbound(
            session,
            InboundMessage(
                provider_id=message_sid,
                channel=MessageChannel.sms,
                from_address=from_phone,
                body=body[:2000],
                received_at=now,
            ),  # fmt: skip
        )
        return Answered(False)
    digit = body.strip().translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    answer = {"1": "doing_well", "2": "some_worries", "3": "struggling", "9": "call_me"}.get(digit)
    return record_answer(
        session,
        messaging=messaging,
        outbox=latest,
        provider_id=message_sid,
        channel=MessageChannel.sms,
        answer=answer,
        text=None if answer else body,
        from_address=from_phone,
        source="sms",
        clock=clock,
    )


def _apply_command(
    session: Session, messaging: Messaging, client: Client, command: Command, sid: str, now: datetime
) -> None:
    office = session.get(Office, client.office_id)
    if command == Command.stop:
        if client.opted_out_at is None:
            client.opted_out_at, client.opted_out_via = now, "sms"
        # Check-ins still waiting to go out are not sent; their follow-ups say why, as the planner's do.
        waiting = select(OutboxMessage.follow_up_id).where(
            OutboxMessage.client_id == client.id,
            OutboxMessage.status == MessageStatus.queued,
            col(OutboxMessage.purpose).in_([Purpose.check_in, Purpose.escalation]),
        )
        session.exec(
            update(FollowUp)
            .where(col(FollowUp.id).in_(waiting), FollowUp.status == FollowUpStatus.pending)
            .values(
                status=FollowUpStatus.skipped,
                status_reason="not sent: the client stopped automated messages",
                updated_at=now,
            )  # fmt: skip
            .execution_options(synchronize_session=False)
        )
        session.exec(
            update(OutboxMessage)
            .where(
                OutboxMessage.client_id == client.id,
                OutboxMessage.status == MessageStatus.queued,
                col(OutboxMessage.purpose).in_([Purpose.check_in, Purpose.escalation]),
            )
            .values(
                status=MessageStatus.cancelled, error_reason="the client stopped automated messages", updated_at=now
            )  # fmt: skip
            .execution_options(synchronize_session=False)
        )
        key = "opt_out_confirm"
    elif command == Command.start:
        client.opted_out_at, client.opted_out_via = None, None
        key = "opt_in_confirm"
    else:
        key = "help"
    client.updated_at = now
    session.add(client)
    body = messaging.texts.render(
        key, client.language.value, office=office.name, phone=display_phone(office.phone), link=""
    )
    enqueue(
        session,
        OutboxMessage(
            idempotency_key=f"reply:{sid}:{client.id}",
            office_id=office.id,
            purpose=Purpose.reply,
            channel=MessageChannel.sms,
            client_id=client.id,
            to_address=client.phone or "",
            language=client.language.value,
            body=body,
            next_attempt_at=now,
        ),
    )


def latest_placement(session: Session, client_id: int) -> Placement | None:
    return session.exec(
        select(Placement).where(Placement.client_id == client_id).order_by(col(Placement.start_date).desc())
    ).first()
