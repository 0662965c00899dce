"""Answers from clients and employers become outcomes on their follow-ups.

Each answer is recorded once: its ``inbound_message`` row is keyed by the provider's id
(MessageSid, CallSid, or ``link:<outbox id>`` for a reply link) and written once, with
``INSERT ... ON CONFLICT (provider_id) DO NOTHING`` (no read before it): a second delivery of the
same id, even a concurrent one, inserts nothing and changes nothing.

An answer is a handful of statements in one transaction (Twilio posts hundreds a second at
peak): one query finds the message answered with its follow-up, the outcome and the inbound row
are inserted, the follow-up is closed by a conditional UPDATE, and their audit events (the same
events the flush hook writes) go in one INSERT; then the crisis rules.

An inbound SMS is kept first (``receive_sms``: its row, ``processed_at`` NULL, committed before
Twilio hears 200) and acted on right after, in a transaction of its own (``process_sms``), which
marks it processed by a conditional UPDATE so that it is acted on once; the scheduler's
``process_replies`` job acts on any left waiting (``process_waiting_sms``).
"""

from __future__ import annotations

import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from pydantic_core import PydanticUndefined
from sqlalchemy import bindparam, exists, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from service.accounts.models import Office
from service.audit.capture import created_changes, event_row, record_events, shown, updated_changes
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
    DIGITS,
    EMPLOYER_ANSWERS,
    Command,
    ReplyClass,
    combine,
    command_of,
)
from service.contacts.models import Channel, Client, FollowUp, FollowUpStatus, Party, Placement
from service.db import session_scope, sqlite_indexed_by
from service.outcomes import crisis
from service.outcomes.models import CrisisSignalKind, CrisisSignalParty, Outcome

log = logging.getLogger(__name__)

WELLBEING = {"doing_well": 4, "some_worries": 3, "struggling": 2}


@dataclass
class Answered:
    duplicate: bool
    outcome: Outcome | None = None
    reply_class: ReplyClass = ReplyClass.none
    reason: str | None = None
    command: Command | None = None


# Statements built once (with bind parameters), run on the session's connection (its transaction)
# without the ORM: at hundreds of answers a second, building, keying and routing a statement
# through the ORM per request costs more than running it. Nothing here goes through the flush or
# update hooks of the audit trail: each write's event is written explicitly (``record_events``).
_INBOUND = InboundMessage.__table__
_INBOUND_COLUMNS = [c.name for c in _INBOUND.columns if c.name != "id"]
_CLAIM = {
    name: insert(_INBOUND).on_conflict_do_nothing(index_elements=["provider_id"]).returning(_INBOUND.c.id)
    for name, insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


def _claim_inbound(session: Session, **given: object) -> tuple[int, dict] | None:
    """Insert the inbound row unless its provider id was recorded before (even concurrently: the
    unique index decides, PostgreSQL's waits for the other transaction). One statement, no read
    first; the row's columns as given, the others None (no failed tries). Returns its id and its
    "create" audit event (to write with the answer's others), or None for a duplicate."""
    values = dict.fromkeys(_INBOUND_COLUMNS) | {"attempts": 0} | given
    conn = session.connection()
    inbound_id = conn.execute(_CLAIM[conn.dialect.name], values).scalar()
    if inbound_id is None:
        return None
    event = event_row(
        session,
        action="create",
        record_type=_INBOUND.name,
        record_id=inbound_id,
        office_id=values["office_id"],
        changes=created_changes(values),
    )
    return inbound_id, event


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
    """Record an answer to ``outbox`` once per ``provider_id``.

    A duplicate (the provider id is recorded already, or is being recorded by a concurrent request)
    rolls back the session's transaction: the outcome written before the inbound row (which links
    to it) goes, and nothing of the answer stays. Call it before any other write of the request."""
    message = Message(outbox.id, outbox.office_id, outbox.client_id, outbox.purpose)
    target = Target(message, None, False)
    if outbox.follow_up_id is not None:
        found = session.connection().execute(_FOLLOW_UP, {"follow_up_id": outbox.follow_up_id}).one()
        target = Target(message, AnsweredFollowUp(*found[:-1]), found[-1])
    return _record(session, messaging, target, provider_id, channel, answer, text, from_address, source, clock)


def _record(
    session: Session,
    messaging: Messaging,
    target: Target,
    provider_id: str,
    channel: MessageChannel,
    answer: str | None,
    text: str | None,
    from_address: str | None,
    source: str,
    clock: Clock,
    kept: Kept | None = None,
) -> Answered:
    """The answer's outcome, its inbound row and the rest. ``kept``: an SMS whose row was kept
    already (``receive_sms``) and has just been taken (``_take``): that row is filled in, not
    inserted, and no duplicate is possible any more."""
    now = clock.now()
    message, fu = target.message, target.follow_up
    employer = message.purpose == Purpose.employer_check_in
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
    events: list[dict] = []
    outcome = None
    if fu is not None:
        outcome = _insert_outcome(session, fu, employer, answer, text, cls, reason, signals, source, now)
        events.append(outcome.event)
    links = {
        "office_id": message.office_id,
        "client_id": message.client_id,
        "outbox_id": message.id,
        "body": (text or None) and text[:2000],
        "reply_class": cls.name,
        "matched_reason": reason,
        "outcome_id": outcome.row.id if outcome else None,
    }
    if kept is not None:
        inbound_id = kept.id
        events.append(_fill(session, kept, links, now))
    else:
        claimed = _claim_inbound(
            session,
            provider_id=provider_id,
            channel=channel,
            from_address=from_address,
            received_at=now,
            processed_at=now,
            **links,
        )
        if claimed is None:
            session.rollback()  # the outcome written above: the first delivery has its own
            return Answered(duplicate=True)
        inbound_id, event = claimed
        events.append(event)
    if outcome is None:
        record_events(session, events)
        return Answered(False, None, cls, reason)
    events += _close_follow_up(session, fu, source, now)
    record_events(session, events)
    if target.escalation_waiting:
        _cancel_waiting_escalations(session, fu.id, now)
    _to_crisis(session, outcome.row, crisis_cls, crisis_reason, inbound_id, clock)
    return Answered(False, outcome.row, cls, reason)


class Message(NamedTuple):
    """What an answer needs of the outbox message it answers."""

    id: int
    office_id: int
    client_id: int | None
    purpose: Purpose


class AnsweredFollowUp(NamedTuple):
    """What an answer needs of the follow-up it closes (the old values are audited)."""

    id: int
    office_id: int
    placement_id: int
    party: Party
    channel: Channel
    status: FollowUpStatus
    status_reason: str | None
    completed_at: datetime | None
    updated_at: datetime


@dataclass
class Target:
    """The message answered, its follow-up, and whether an escalation of it waits to be sent."""

    message: Message
    follow_up: AnsweredFollowUp | None
    escalation_waiting: bool


def _escalation_waiting_clause():
    other = OutboxMessage.__table__.alias("escalation")
    return exists().where(
        other.c.follow_up_id == FollowUp.id,
        other.c.purpose == Purpose.escalation,
        other.c.status == MessageStatus.queued,
    )


# Columns, not entities: nothing of these rows is changed through the ORM.
_MESSAGE_COLUMNS = [getattr(OutboxMessage, name) for name in Message._fields]
_FOLLOW_UP_COLUMNS = [getattr(FollowUp, name) for name in AnsweredFollowUp._fields]
# An escalation of the follow-up (the check-in again by another channel) still queued.
_ESCALATION_WAITING = _escalation_waiting_clause().label("escalation_waiting")
_FOLLOW_UP = select(*_FOLLOW_UP_COLUMNS, _ESCALATION_WAITING).where(FollowUp.id == bindparam("follow_up_id"))
_LATEST_SMS = (
    select(*_MESSAGE_COLUMNS, *_FOLLOW_UP_COLUMNS, _ESCALATION_WAITING)
    .join(Client, col(Client.id) == OutboxMessage.client_id)
    .join(FollowUp, col(FollowUp.id) == OutboxMessage.follow_up_id)
    .where(
        Client.phone == bindparam("phone"),
        OutboxMessage.channel == MessageChannel.sms,
        col(OutboxMessage.status).in_([MessageStatus.sent, MessageStatus.delivered, MessageStatus.unknown]),
    )
    # The latest by when it went out: a message whose send ended "unknown" has no sent_at, but its
    # claim says when it was tried (NULLs last on both databases: PostgreSQL sorts them first).
    .order_by(func.coalesce(OutboxMessage.sent_at, OutboxMessage.claimed_at).desc().nulls_last())
    .order_by(col(OutboxMessage.id).desc())
    .limit(1)
)


def latest_sms_check_in(session: Session, phone: str) -> Target | None:
    """The latest SMS check-in sent to a client with this phone number (the one an SMS reply
    answers), with its follow-up, in one query."""
    row = session.connection().execute(_LATEST_SMS, {"phone": phone}).first()
    if row is None:
        return None
    n = len(Message._fields)
    return Target(Message(*row[:n]), AnsweredFollowUp(*row[n:-1]), row[-1])


# A reply classed urgent or emergency is a crisis signal of that kind (config/crisis_rules.toml).
_REPLY_KINDS = {
    ReplyClass.urgent: CrisisSignalKind.reply_urgent,
    ReplyClass.emergency: CrisisSignalKind.reply_emergency,
}


def _to_crisis(
    session: Session, outcome: Outcome, cls: ReplyClass, reason: str | None, inbound_id: int, clock: Clock
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
            source=f"reply:{inbound_id}",
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


# An answer closes a follow-up still waiting for one; a late one (missed) too, marked late.
_ANSWERABLE = (FollowUpStatus.pending, FollowUpStatus.missed, FollowUpStatus.attempted)


_OUTCOME_COLUMNS = [c.name for c in Outcome.__table__.columns if c.name != "id"]
# The model's defaults for the columns an answer does not set (a fixed default, or None).
_OUTCOME_DEFAULTS = {
    name: (None if field.default is PydanticUndefined else field.default)
    for name, field in Outcome.model_fields.items()
    if name in _OUTCOME_COLUMNS
}
_INSERT_OUTCOME = Outcome.__table__.insert().returning(Outcome.__table__.c.id)
_FOLLOW_UP_TABLE = FollowUp.__table__
_CLOSE_FOLLOW_UP = update(_FOLLOW_UP_TABLE).where(
    _FOLLOW_UP_TABLE.c.id == bindparam("b_id"), _FOLLOW_UP_TABLE.c.status.in_(_ANSWERABLE)
)


@dataclass
class _Written:
    row: Outcome
    event: dict


def _insert_outcome(
    session: Session,
    fu: AnsweredFollowUp,
    employer: bool,
    answer: str | None,
    text: str | None,
    cls: ReplyClass,
    reason: str | None,
    signals: list[str],
    source: str,
    now: datetime,
) -> _Written:
    """The answer's outcome, inserted by one statement; its "create" event for the caller to write."""
    note = " / ".join(p for p in (answer and answer.replace("_", " "), text) if p)
    values = _OUTCOME_DEFAULTS | {
        "office_id": fu.office_id,
        "follow_up_id": fu.id,
        "placement_id": fu.placement_id,
        "party": fu.party,
        "channel": fu.channel,
        "recorded_by": None,
        "recorded_at": now,
        "reached": True,
        "wellbeing": None if employer else WELLBEING.get(answer or ""),
        "risk_signals": signals,
        "note": note[:4000] or None,
        "late": fu.status == FollowUpStatus.missed,
        "source": source,
        "reply_class": cls.name,
        "reply_reason": reason,
    }
    outcome_id = session.connection().execute(_INSERT_OUTCOME, values).scalar_one()
    # The row as inserted, for the crisis rules and the caller to read, built without the model's
    # constructor (a seventh of the cost): it is not added to the session, nothing writes it back.
    outcome = Outcome.model_construct(id=outcome_id, **values)
    event = event_row(
        session,
        action="create",
        record_type=Outcome.__tablename__,
        record_id=outcome.id,
        office_id=outcome.office_id,
        changes=created_changes(values),
    )
    return _Written(outcome, event)


def _close_follow_up(session: Session, fu: AnsweredFollowUp, source: str, now: datetime) -> list[dict]:
    """Done, by a conditional UPDATE (a worker's outcome may have closed it meanwhile); its
    "update" event as the flush hook would write it, or nothing when it was closed already."""
    if fu.status not in _ANSWERABLE:
        return []
    new = {
        "status": FollowUpStatus.done,
        "status_reason": f"answered by {source}",
        "completed_at": now,
        "updated_at": now,
    }
    result = session.connection().execute(_CLOSE_FOLLOW_UP, {"b_id": fu.id, **new})
    if (result.rowcount or 0) != 1:
        return []
    return [
        event_row(
            session,
            action="update",
            record_type=_FOLLOW_UP_TABLE.name,
            record_id=fu.id,
            office_id=fu.office_id,
            changes=updated_changes(fu, new),
        )
    ]


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


def receive_sms(session: Session, *, message_sid: str, from_phone: str, body: str, clock: Clock) -> int | None:
    """Keep an inbound SMS, once per MessageSid, not acted on yet: one INSERT and its audit
    event. Once this is committed Twilio may hear 200 (a crash after it loses nothing: the row
    waits for ``process_sms``). The row's id, or None for a re-delivery (the first is kept)."""
    claimed = _claim_inbound(
        session,
        provider_id=message_sid,
        channel=MessageChannel.sms,
        from_address=from_phone,
        body=body[:2000],
        received_at=clock.now(),
    )
    if claimed is None:
        return None
    record_events(session, [claimed[1]])
    return claimed[0]


@dataclass
class Kept:
    """An inbound SMS kept by ``receive_sms`` and just taken to act on: what it said."""

    id: int
    provider_id: str
    from_address: str
    body: str


# What acting on a kept SMS writes on its row, by one statement built once. As ``receive_sms``
# kept it, every one of these is NULL but the body (what the "update" event shows as old).
_FILLED = ("office_id", "client_id", "outbox_id", "body", "reply_class", "matched_reason", "outcome_id", "command")
# Read through the partial index of the put-off rows (nearly always empty), never by scanning.
_EARLIER = sqlite_indexed_by(_INBOUND, "ix_inbound_message_put_off", "earlier")


def _held(row, now):  # type: ignore[no-untyped-def]
    """``row`` waits behind an earlier SMS of its sender that was put off (its acting failed, its
    next try not due by ``now``): a sender's SMS are acted on in the order kept, a STOP never
    overtaken by the START after it."""
    e = _EARLIER.c
    return exists().where(
        e.from_address == row.from_address,
        e.processed_at.is_(None),
        e.next_attempt_at > now,
        e.id < row.id,
    )


_TAKE = (
    update(_INBOUND)
    .where(
        _INBOUND.c.id == bindparam("b_id"),
        _INBOUND.c.processed_at.is_(None),
        ~_held(_INBOUND.c, bindparam("b_at")),
    )
    .values(processed_at=bindparam("b_at"))
    .returning(_INBOUND.c.provider_id, _INBOUND.c.from_address, _INBOUND.c.body)
)
_FILL = (
    update(_INBOUND)
    .where(_INBOUND.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in _FILLED})
)


def _take(session: Session, inbound_id: int, now: datetime) -> Kept | None:
    """Mark a kept SMS as acted on, in the transaction that acts on it, unless it has been: the
    conditional UPDATE takes the row's lock, so of the request's own follow-up and the recovery
    job at once, one acts and the other (waiting for it) finds it done and does nothing. Nor while
    an earlier SMS of its sender is put off: it stays waiting, for the job, behind that one."""
    row = session.connection().execute(_TAKE, {"b_id": inbound_id, "b_at": now}).first()
    if row is None:
        return None
    return Kept(inbound_id, row[0], row[1] or "", row[2] or "")


def _fill(session: Session, kept: Kept, values: dict, now: datetime) -> dict:
    """The kept row's links (office, client, message answered, outcome...) written now it is
    acted on (the body as kept unless ``values`` say otherwise); its "update" event."""
    old = dict.fromkeys(_FILLED) | {"body": kept.body or None, "processed_at": None}
    new = old | values | {"processed_at": now}
    session.connection().execute(_FILL, {"b_id": kept.id, **{f"b_{name}": new[name] for name in _FILLED}})
    changes = {
        name: {"old": shown(name, old[name]), "new": shown(name, value)}
        for name, value in new.items()
        if old[name] != value
    }
    return event_row(
        session,
        action="update",
        record_type=_INBOUND.name,
        record_id=kept.id,
        office_id=new["office_id"],
        changes=changes,
    )


def process_sms(session: Session, *, messaging: Messaging, inbound_id: int, clock: Clock) -> Answered | None:
    """Act on an SMS kept by ``receive_sms``: STOP / START / HELP first, else an answer to the
    latest SMS check-in (its outcome, the follow-up closed, the crisis rules). None when it has
    been acted on already (by the request that kept it, or the recovery job)."""
    now = clock.now()
    kept = _take(session, inbound_id, now)
    if kept is None:
        return None
    message_sid, from_phone, body = kept.provider_id, kept.from_address, kept.body
    command = command_of(body)
    if command is not None:
        clients = clients_by_phone(session, from_phone)
        links = {
            "command": command.value,
            "body": None,
            "office_id": clients[0].office_id if clients else None,
            "client_id": clients[0].id if clients else None,
        }
        record_events(session, [_fill(session, kept, links, now)])
        for client in clients:
            _apply_command(session, messaging, client, command, message_sid, now)
        return Answered(False, command=command)
    target = latest_sms_check_in(session, from_phone)
    if target is None:
        # From a number we do not know, or with nothing to answer: keep it, change nothing else.
        record_events(session, [_fill(session, kept, {}, now)])
        return Answered(False)
    digit = body.strip().translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    answer = DIGITS.get(digit)
    text = None if answer else body
    return _record(
        session, messaging, target, message_sid, MessageChannel.sms, answer, text, from_phone, "sms", clock, kept
    )


def handle_sms(
    session: Session,
    *,
    messaging: Messaging,
    message_sid: str,
    from_phone: str,
    body: str,
    clock: Clock,
) -> Answered:
    """An inbound SMS kept and acted on in one transaction (``receive_sms``, then ``process_sms``)."""
    inbound_id = receive_sms(session, message_sid=message_sid, from_phone=from_phone, body=body, clock=clock)
    if inbound_id is None:
        return Answered(duplicate=True, command=command_of(body))
    answered = process_sms(session, messaging=messaging, inbound_id=inbound_id, clock=clock)
    assert answered is not None  # kept by this transaction a moment ago
    return answered


# The request that kept an SMS acts on it at once; the job takes only rows older than this.
WAITING_GRACE = timedelta(seconds=30)


def process_waiting_sms(
    factory: sessionmaker[Session],
    messaging: Messaging,
    clock: Clock,
    *,
    grace: timedelta = WAITING_GRACE,
    threads: int = 1,
    limit: int = 500,
) -> int:
    """The scheduler's ``process_replies`` job: act on each SMS kept but not acted on, received
    ``grace`` ago or earlier, each in its own transaction (an API process that acts on what it keeps
    stopped after answering Twilio; or API processes that only keep). How many it acted on.

    On PostgreSQL in up to ``threads`` threads at once (SQLite writes one transaction at a time): a
    sender's messages stay on one thread, in the order received, so a STOP then a START ends started."""
    with session_scope(factory) as session:
        waiting = waiting_sms(session, received_before=clock.now() - grace, limit=limit, now=clock.now())
        threads = threads if session.get_bind().dialect.name == "postgresql" else 1
    lanes: dict[int, list[int]] = {}
    for inbound_id, sender in waiting:
        lanes.setdefault(hash(sender) % threads, []).append(inbound_id)

    def act(ids: list[int]) -> int:
        # One that fails is put off before the next is taken, and its sender's later SMS are then
        # held behind it by the take itself (``_held``).
        done = 0
        for inbound_id in ids:
            try:
                with session_scope(factory) as session:
                    done += process_sms(session, messaging=messaging, inbound_id=inbound_id, clock=clock) is not None
            except Exception:
                log.exception("acting on kept SMS %s failed", inbound_id)  # its id and the error's type, no data
                try:
                    _put_off(factory, inbound_id, clock.now())
                except Exception:
                    log.exception("kept SMS %s could not be put off; the next run tries again", inbound_id)
        return done

    if len(lanes) <= 1:
        return sum(act(ids) for ids in lanes.values())
    # Each thread in a copy of this context: what it writes is attributed to the job (the audit actor).
    contexts = [contextvars.copy_context() for _ in lanes]
    with ThreadPoolExecutor(len(lanes), thread_name_prefix="process-replies") as pool:
        return sum(pool.map(lambda context, ids: context.run(act, ids), contexts, lanes.values()))


# A kept SMS whose acting failed (a fault of ours: the message is kept, the change rolled back) is
# tried again after these, then every 2 h; never dropped, holding up no other sender's SMS (its own
# sender's later ones wait behind it, to keep their order).
RETRY_BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2))


def _put_off(factory: sessionmaker[Session], inbound_id: int, now: datetime) -> None:
    """One more failed try on a kept SMS, and when the next is due. Through the session, so the
    audit trail has the change (old and new ``attempts`` and ``next_attempt_at``) and who made it."""
    with session_scope(factory) as session:
        attempts = session.exec(
            select(_INBOUND.c.attempts)
            .where(_INBOUND.c.id == inbound_id, _INBOUND.c.processed_at.is_(None))
            .with_for_update()  # PostgreSQL: two schedulers putting it off count two tries
        ).first()
        if attempts is None:
            return  # acted on meanwhile (by the API that kept it)
        attempts += 1
        retry_at = now + RETRY_BACKOFF[min(attempts, len(RETRY_BACKOFF)) - 1]
        session.exec(
            update(_INBOUND)
            .where(_INBOUND.c.id == inbound_id, _INBOUND.c.processed_at.is_(None))
            .values(attempts=attempts, next_attempt_at=retry_at)
        )
    log.warning("kept SMS %s: %s failed tries; the next at %s", inbound_id, attempts, retry_at.isoformat())


def waiting_sms(session: Session, *, received_before: datetime, now: datetime, limit: int) -> list[tuple[int, str]]:
    """Kept SMS not acted on, received at or before ``received_before``, oldest first, with their
    senders (process_replies); one whose acting failed only once its next try is due (``now``), and
    its sender's later ones not before it."""
    m = _INBOUND.c
    due = m.next_attempt_at.is_(None) | (m.next_attempt_at <= now)
    query = (
        select(m.id, m.from_address)
        .where(m.processed_at.is_(None), m.received_at <= received_before, due, ~_held(m, now))
        .order_by(m.received_at, m.id)
        .limit(limit)
    )
    return [(inbound_id, sender) for inbound_id, sender in session.connection().execute(query)]


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
