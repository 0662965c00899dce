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
from service.contacts.messaging.outbox import Messaging, display_phone, enqueue, resume_automated, stop_automated
from service.contacts.messaging.replies import (
    ANSWERS,
    EMPLOYER_ANSWERS,
    Command,
    ReplyClass,
    combine,
    command_of,
)
from service.contacts.models import Client, FollowUp, FollowUpStatus, Party, Placement
from service.outcomes import crisis
from service.outcomes.models import CrisisSignalKind, CrisisSignalParty, Outcome

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
    from_text = messaging.classifier.classify(text)
    cls, reason = combine(tapped, from_text)
    # The crisis rules weigh an employer's tapped absence or lateness themselves (its risk
    # signals); only what goes beyond it (the text, or "please call me") is a reply signal.
    crisis_cls, crisis_reason = combine(tapped if not signals else (ReplyClass.none, None), from_text)
    outcome = _outcome(session, outbox, channel, answer, text, cls, reason, signals, source, clock.now())
    inbound.reply_class, inbound.matched_reason = cls.name, reason
    inbound.outcome_id = outcome.id if outcome else None
    session.add(inbound)
    session.flush()
    if outcome is not None:
        _cancel_waiting_escalations(session, outcome.follow_up_id, clock.now())
        _to_crisis(session, outcome, crisis_cls, crisis_reason, inbound, clock)
    return Answered(False, outcome, cls, reason)


# A reply classed urgent or emergency is a crisis signal of that kind (config/crisis_rules.toml).
_REPLY_KINDS = {
    ReplyClass.urgent: CrisisSignalKind.reply_urgent,
    ReplyClass.emergency: CrisisSignalKind.reply_emergency,
}


def _to_crisis(
    session: Session, outcome: Outcome, cls: ReplyClass, reason: str | None, inbound: InboundMessage, clock: Clock
) -> None:
    """The answer's outcome goes through the crisis rules as a worker's would (risk signals, the
    employer's absence or lateness, wellbeing drops, discordance); an urgent or emergency reply is
    also a ``reply_urgent`` / ``reply_emergency`` signal, with the matched reason as its detail."""
    crisis.on_outcome(session, outcome=outcome, clock=clock)
    kind = _REPLY_KINDS.get(cls)
    if kind is not None:
        party = CrisisSignalParty.employer if outcome.party == Party.employer else CrisisSignalParty.client
        crisis.raise_signal(
            session,
            placement_id=outcome.placement_id,
            kind=kind,
            source_party=party,
            source=f"reply:{inbound.id}",
            detail=reason,
            clock=clock,
        )


def _cancel_waiting_escalations(session: Session, follow_up_id: int, now: datetime) -> None:
    """An answered check-in is not sent again by the other channel (the escalation job also
    cancels these on its next run; doing it here closes the gap before that run)."""
    session.exec(
        update(OutboxMessage)
        .where(
            OutboxMessage.follow_up_id == follow_up_id,
            OutboxMessage.purpose == Purpose.escalation,
            OutboxMessage.status == MessageStatus.queued,
        )
        .values(
            status=MessageStatus.cancelled,
            error_reason="not sent: the check-in was answered or closed meanwhile",
            updated_at=now,
        )  # fmt: skip
        .execution_options(synchronize_session=False)
    )


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
        stop_automated(session, client, via="sms", now=now)
        key = "opt_out_confirm"
    elif command == Command.start:
        resume_automated(session, client, now=now)
        key = "opt_in_confirm"
    else:
        key = "help"
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
