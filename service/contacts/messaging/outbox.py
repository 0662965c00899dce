"""The outbox: every outbound message is written before it is sent, then claimed and sent once.

1. ``plan_check_ins`` writes a row per due automated follow-up, keyed ``fu:<id>:<attempt>`` (a
   unique key, so two planners never write two), at the first moment inside the client's
   sending window. A check-in more than ``late_cancel_days`` late (after an outage) is
   cancelled with a reason instead.
2. ``claim`` moves due rows to ``sending`` with a conditional UPDATE (PostgreSQL adds
   ``FOR UPDATE SKIP LOCKED``) and commits, so two dispatchers never take the same row.
3. ``dispatch_once`` sends what it claimed and records each result under its claim token.
   A crash between the provider accepting and our commit leaves the row in ``sending``;
   ``reconcile_stuck`` turns it into ``unknown`` (a status callback may still settle it). It is
   never re-sent blindly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from operator import attrgetter
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    Integer,
    Row,
    String,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    type_coerce,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from service.accounts.models import Office
from service.audit.capture import event_row, record_events, summary_rows, updated_changes
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.ports import (
    Call,
    DevelopmentAdapter,
    Email,
    EmailPort,
    MaybeSent,
    NotTried,
    PermanentError,
    PhonePort,
    SendError,
    Sent,
    Sms,
    TransientError,
)
from service.contacts.messaging.replies import Classifier, ReplyLinks
from service.contacts.messaging.texts import Texts
from service.contacts.models import (
    Channel,
    Client,
    Employer,
    FollowUp,
    FollowUpStatus,
    Party,
    Placement,
    PlacementStatus,
)
from service.db import session_scope
from service.settings import Settings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2))
STUCK_AFTER = timedelta(minutes=10)


@dataclass
class Messaging:
    """What the messaging jobs and webhooks need, built once in the lifespan."""

    settings: Settings
    links: ReplyLinks
    texts: Texts
    classifier: Classifier
    email: EmailPort
    phone: PhonePort

    @classmethod
    def from_settings(cls, settings: Settings) -> Messaging:
        from service.contacts.messaging.smtp import SmtpAdapter
        from service.contacts.messaging.twilio_adapter import TwilioAdapter

        dev = DevelopmentAdapter()
        email: EmailPort = dev
        phone: PhonePort = dev
        if settings.smtp_host:
            email = SmtpAdapter.from_settings(settings)
        if settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from:
            phone = TwilioAdapter(
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token,
                sender=settings.twilio_from,
                public_url=settings.public_url,
                base_url=settings.twilio_api_base_url,
                timeout=settings.twilio_timeout_seconds,
                rate_per_second=settings.send_rate_per_second,
            )
        return cls(
            settings=settings,
            links=ReplyLinks(settings.secret_key, settings.public_url, settings.reply_link_days),
            texts=Texts.load(settings.config_dir / "messages.toml"),
            classifier=Classifier.from_files(settings.config_dir / "reply_rules.toml"),
            email=email,
            phone=phone,
        )


# ---------------------------------------------------------------- sending windows


def _hm(value: str) -> time:
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def window_for(settings: Settings, office: Office, client: Client | None) -> tuple[str, str]:
    start = (client and client.send_window_start) or office.send_window_start or settings.send_window_start
    end = (client and client.send_window_end) or office.send_window_end or settings.send_window_end
    return start, end


def next_in_window(now: datetime, tz: str, start: str, end: str) -> datetime:
    """``now`` if it is inside the local window, else the window's next opening (UTC).
    A window may cross midnight (e.g. 22:00-06:00 for a night-shift worker)."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    s, e = _hm(start), _hm(end)
    t = local.time()
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if inside or s == e:
        return now
    opening = datetime.combine(local.date(), s, zone)
    if opening <= local:
        opening = datetime.combine(local.date() + timedelta(days=1), s, zone)
    return opening.astimezone(now.tzinfo)


def in_window(row: OutboxMessage, now: datetime) -> bool:
    if not row.send_tz or not row.window_start or not row.window_end:
        return True
    return next_in_window(now, row.send_tz, row.window_start, row.window_end) == now


# ---------------------------------------------------------------- planning


def _insert_once(session: Session, row: OutboxMessage) -> OutboxMessage | None:
    """Insert unless the idempotency key exists (another planner was first)."""
    if session.exec(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == row.idempotency_key)).first():
        return None
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def plan_check_ins(session: Session, clock: Clock, messaging: Messaging) -> int:
    """Write an outbox row for every automated follow-up that is due; returns how many."""
    settings, now, written = messaging.settings, clock.now(), 0
    has_message = exists().where(OutboxMessage.follow_up_id == FollowUp.id)
    for office in session.exec(select(Office)).all():
        today = contacts.office_today(office, clock)
        rows = session.exec(
            select(FollowUp, Placement, Client, Employer)
            .join(Placement, col(Placement.id) == FollowUp.placement_id)
            .join(Client, col(Client.id) == Placement.client_id)
            .join(Employer, col(Employer.id) == Placement.employer_id)
            .where(
                FollowUp.office_id == office.id,
                FollowUp.automated == True,  # noqa: E712
                FollowUp.status == FollowUpStatus.pending,
                FollowUp.due_date <= today,
                Placement.status == PlacementStatus.active,
                ~has_message,
            )
            .order_by(FollowUp.due_date, FollowUp.id)
        ).all()
        for fu, _placement, client, employer in rows:
            reason = _why_not(fu, client, employer, today, settings)
            if reason:
                fu.status = FollowUpStatus.cancelled if "late" in reason else FollowUpStatus.skipped
                fu.status_reason, fu.updated_at = reason, now
                session.add(fu)
                continue
            if _write_check_in(session, messaging, office, fu, client, employer, now):
                written += 1
    session.flush()
    return written


def _why_not(fu: FollowUp, client: Client, employer: Employer, today, settings: Settings) -> str | None:
    if (today - fu.due_date).days > settings.late_cancel_days:
        return f"not sent: more than {settings.late_cancel_days} days late (the service was down)"
    if fu.party == Party.client and client.opted_out_at is not None:
        return "not sent: the client stopped automated messages"
    block = contacts.consent_block(party=fu.party, channel=fu.channel, automated=True, client=client, has_family=True)
    if block:
        return f"not sent: {block}"
    if fu.party == Party.employer and not employer.email:
        return "not sent: no e-mail address for the on-site supervisor"
    if fu.party == Party.family:
        return "not sent: automated messages to family are not supported"
    return None


def _write_check_in(
    session: Session,
    messaging: Messaging,
    office: Office,
    fu: FollowUp,
    client: Client,
    employer: Employer,
    now: datetime,
) -> OutboxMessage | None:
    settings = messaging.settings
    to_employer = fu.party == Party.employer
    start, end = window_for(settings, office, None if to_employer else client)
    channel = MessageChannel(fu.channel.value)
    row = OutboxMessage(
        idempotency_key=f"fu:{fu.id}:{fu.attempt}",
        office_id=office.id,
        purpose=Purpose.employer_check_in if to_employer else Purpose.check_in,
        channel=channel,
        follow_up_id=fu.id,
        placement_id=fu.placement_id,
        client_id=client.id,
        to_address=(
            employer.email if to_employer else (client.email if channel == MessageChannel.email else client.phone)
        )
        or "",
        language="ja" if to_employer else client.language.value,
        body="",
        send_tz=office.timezone,
        window_start=start,
        window_end=end,
        next_attempt_at=next_in_window(now, office.timezone, start, end),
    )
    if _insert_once(session, row) is None:
        return None
    render_body(messaging, row, office)
    session.add(row)
    return row


def render_body(messaging: Messaging, row: OutboxMessage, office: Office) -> None:
    """Fill the text in (it carries a reply link, which needs the row's id)."""
    t, lang = messaging.texts, row.language
    values = {"office": office.name, "phone": display_phone(office.phone), "link": messaging.links.url(row.id)}
    if row.purpose == Purpose.employer_check_in:
        row.subject = t.render("employer_subject", lang, **values)
        row.body = t.render("employer_body", lang, **values)
    elif row.channel == MessageChannel.email:
        row.subject = t.render("email_check_in_subject", lang, **values)
        row.body = t.render("email_check_in_body", lang, **values)
    elif row.channel == MessageChannel.sms:
        key = "sms_check_in_two_way" if messaging.settings.twilio_two_way_sms else "sms_check_in"
        row.body = t.render(key, lang, **values)
    else:
        row.body = t.render("voice_prompt", lang, **values)


def display_phone(e164: str | None) -> str:
    if not e164:
        return ""
    import phonenumbers

    number = phonenumbers.parse(e164)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def enqueue(session: Session, row: OutboxMessage) -> OutboxMessage | None:
    """Write any other message (replies to STOP, digests, alerts) once per idempotency key."""
    return _insert_once(session, row)


# ---------------------------------------------------------------- claiming and sending


_OUTBOX = OutboxMessage.__table__


class Claimed(NamedTuple):
    """A claimed row: what the send needs, what its result is recorded against, and, read in the
    same statement, the client's consent (None: no client) and the follow-up's status. A plain
    tuple, not the result's row: its attributes are read a dozen times per message."""

    id: int
    office_id: int
    purpose: str  # the enums as their plain values (a StrEnum member compares equal to its value)
    channel: str
    follow_up_id: int | None
    client_id: int | None
    to_address: str
    subject: str | None
    body: str
    send_tz: str | None
    window_start: str | None
    window_end: str | None
    attempts: int
    claim_token: str
    error_code: str | None
    error_reason: str | None
    client_flags: int | None  # the client's consent, read once: None (no client) or _OPTED_OUT | ...
    fu_status: str | None


# ``Claimed.client_flags``: the bits of the client's consent, so the claim reads the client once.
_OPTED_OUT, _CONSENT_AUTOMATED, _CONSENT_EMPLOYER = 1, 2, 4


def _claimed_columns() -> list:
    """The ``RETURNING`` of a claim, in the order of ``Claimed``."""
    t, c, f = _OUTBOX, Client.__table__, FollowUp.__table__
    # Spelled out: SQLite's RETURNING drops the table names, so a plain column would be ambiguous.
    client_id, follow_up_id = literal_column("outbox_message.client_id"), literal_column("outbox_message.follow_up_id")

    def bit(condition, value: int):
        return case((condition, literal_column(str(value), Integer)), else_=literal_column("0", Integer))

    # One lookup of the client per row (not one per column): its consent as the bits of an integer.
    flags = bit(c.c.opted_out_at.is_not(None), _OPTED_OUT) + bit(c.c.consent_automated, _CONSENT_AUTOMATED)
    flags = flags + bit(c.c.consent_employer, _CONSENT_EMPLOYER)
    computed = {
        "purpose": type_coerce(t.c.purpose, String),  # no conversion per row and column
        "channel": type_coerce(t.c.channel, String),
        "client_flags": sa_select(flags).where(c.c.id == client_id).scalar_subquery(),
        "fu_status": type_coerce(sa_select(f.c.status).where(f.c.id == follow_up_id).scalar_subquery(), String),
    }
    return [computed[name].label(name) if name in computed else t.c[name] for name in Claimed._fields]


def _status_is(status: MessageStatus):
    """``outbox_message.status = '<status>'`` with the value written into the SQL: the partial
    indexes over the queued and the sending rows (migration 0011) serve a query only if it says
    which status; a bound parameter hides it from PostgreSQL's generic plans (psycopg prepares a
    statement from its fifth execution on)."""
    return _OUTBOX.c.status == literal_column(f"'{status.value}'", _OUTBOX.c.status.type)


def claim(session: Session, *, now: datetime, limit: int) -> list[Claimed]:
    """Take up to ``limit`` due rows for this dispatcher and commit: one ``UPDATE ... RETURNING``
    (the rows, in id order) and one summary audit event per office naming the rows claimed."""
    token = uuid.uuid4().hex
    t = _OUTBOX
    queued = _status_is(MessageStatus.queued)
    due = (
        sa_select(t.c.id)
        .where(queued, t.c.next_attempt_at <= now)
        .order_by(t.c.next_attempt_at, t.c.id)  # ix_outbox_message_due's order: read off the index
        .limit(limit)
    )
    claiming = update(t)
    if session.get_bind().dialect.name == "postgresql":
        # The ids locked (SKIP LOCKED) as one array, ``id = ANY (ARRAY(SELECT ...))``: an init plan,
        # evaluated once, then the rows by primary key. As a plain ``IN (SELECT ...)``, PostgreSQL
        # may rescan the locking subquery per row, and each rescan skips the rows this very UPDATE
        # already changed, so the LIMIT no longer holds (it claimed every due row); joined to a
        # CTE, it may hash the whole table. One statement, one round trip, no list of ids to bind.
        locked = func.array(due.with_for_update(skip_locked=True).scalar_subquery())
        claiming = claiming.where(t.c.id == any_(locked))
    else:  # SQLite: one writer at a time; the subquery is evaluated once
        claiming = claiming.where(t.c.id.in_(due))
    result = session.execute(
        claiming.where(queued)
        .values(status=MessageStatus.sending, claim_token=token, claimed_at=now, updated_at=now)
        .values(attempts=t.c.attempts + 1)
        .returning(*_claimed_columns()),
        execution_options={"audit_skip": True},  # a summary event per office, below, not one per row
    )
    # The driver's own tuples: the columns need no conversion (see _claimed_columns), and a
    # result row per message would cost more than the rest of the claim's Python.
    raw = result.cursor.fetchall()
    result.close()
    rows = sorted(map(Claimed._make, raw), key=attrgetter("id"))
    record_events(
        session,
        summary_rows(
            session,
            action="update",
            record_type=t.name,
            records=[(r.id, r.office_id) for r in rows],
            changes={"status": (MessageStatus.queued, MessageStatus.sending)},
        ),
    )
    session.commit()
    return rows


async def dispatch_once(factory: sessionmaker[Session], messaging: Messaging, clock: Clock) -> int:
    """Claim what is due, send it, record every result. Returns how many were sent."""
    now = clock.now()

    def _claim() -> list[Claimed]:
        with factory() as session:
            return _drop_unwanted(session, claim(session, now=now, limit=messaging.settings.dispatch_batch), now)

    rows = await asyncio.to_thread(_claim)
    if not rows:
        return 0
    results: dict[int, Sent | SendError | datetime] = {}
    sendable = []
    opening: dict[tuple[str, str, str], datetime] = {}  # per sending window: now if open, else its next opening
    for row in rows:
        if row.send_tz and row.window_start and row.window_end:
            window = (row.send_tz, row.window_start, row.window_end)
            at = opening.get(window)
            if at is None:
                at = opening[window] = next_in_window(now, *window)
            if at != now:  # claimed just after the window closed: wait for the next one
                results[row.id] = at
                continue
        sendable.append(row)
    in_flight: list[Claimed] = []  # handed to an adapter that has not answered yet
    _RUNNING.add(asyncio.current_task())
    try:
        await _send(messaging, sendable, results, in_flight)
    except asyncio.CancelledError:
        # Stopped mid-batch (the service is shutting down): what was sent is recorded as sent, what
        # was in the adapter's hands may have gone ("unknown", never re-sent), and the rest goes
        # back to the queue untried, due now (for the next scheduler to start), not as an attempt.
        for row in in_flight:
            results.setdefault(row.id, MaybeSent("stopped", "the service stopped while sending it"))
        for row in rows:
            results.setdefault(row.id, now)
        await asyncio.shield(asyncio.to_thread(_record_results, factory, rows, results, clock))
        raise
    finally:
        _RUNNING.discard(asyncio.current_task())
    await asyncio.to_thread(_record_results, factory, rows, results, clock)
    return sum(1 for r in results.values() if isinstance(r, Sent))


# The dispatch ticks of this process under way: the service waits for them when it stops.
_RUNNING: set[asyncio.Task] = set()


async def settle(timeout: float = 30.0) -> None:
    """Wait (up to ``timeout`` seconds) for the dispatch ticks under way, e.g. cancelled by the
    scheduler's shutdown, to record their results before the service's connections close."""
    running = [t for t in _RUNNING if t is not asyncio.current_task() and not t.done()]
    if running:
        await asyncio.wait(running, timeout=timeout)


async def _send(messaging: Messaging, sendable: list[Claimed], results: dict, in_flight: list[Claimed]) -> None:
    """Hand ``sendable`` to the adapters: the e-mails as one batch, then each SMS and call;
    ``results`` gets each row's result as it comes, ``in_flight`` holds what is being handed over."""
    emails = [r for r in sendable if r.channel == MessageChannel.email]
    if emails:
        batch = [Email(r.id, r.to_address, r.subject or "", r.body) for r in emails]
        in_flight[:] = emails
        try:
            sent = await messaging.email.send_batch(batch)
        except Exception as exc:  # an adapter bug must not leave rows claimed forever
            log.exception("e-mail adapter failed")
            sent = [MaybeSent("adapter", f"the mail adapter failed ({type(exc).__name__})")] * len(batch)
        results.update({r.id: res for r, res in zip(emails, sent, strict=True)})
    for row in sendable:
        if row.channel == MessageChannel.email:
            continue
        in_flight[:] = [row]
        try:
            if row.channel == MessageChannel.sms:
                results[row.id] = await messaging.phone.send_sms(Sms(row.id, row.to_address, row.body))
            else:
                url = f"{messaging.settings.public_url.rstrip('/')}/webhooks/twilio/voice/{row.id}"
                results[row.id] = await messaging.phone.start_call(Call(row.id, row.to_address, url))
        except SendError as exc:
            results[row.id] = exc
        except Exception as exc:
            log.exception("phone adapter failed")
            results[row.id] = MaybeSent("adapter", f"the phone adapter failed ({type(exc).__name__})")
    in_flight.clear()


_CHECKED_PURPOSES = (Purpose.check_in, Purpose.escalation, Purpose.employer_check_in, Purpose.program_invitation)
_STILL_UNANSWERED = (FollowUpStatus.pending, FollowUpStatus.missed)


def _unwanted(row: Claimed) -> str | None:
    """Why a claimed check-in must not go out after all: since it was written, the client
    stopped automated messages or took back consent, or its follow-up was skipped. The client's
    consent and the follow-up's status come with the claimed row."""
    flags = row.client_flags
    if row.client_id is None or row.purpose not in _CHECKED_PURPOSES or flags is None:
        return None  # not a check-in, or no such client
    if row.purpose == Purpose.employer_check_in:
        if not flags & _CONSENT_EMPLOYER:
            return "not sent: no consent to contact the employer"
    elif flags & _OPTED_OUT:
        return "not sent: the client stopped automated messages"
    elif not flags & _CONSENT_AUTOMATED:
        return "not sent: no consent to automated messages"
    fu_status = row.fu_status
    if fu_status in (FollowUpStatus.skipped, FollowUpStatus.cancelled):
        return f"not sent: the follow-up was {fu_status}"
    if row.purpose == Purpose.escalation and fu_status is not None and fu_status not in _STILL_UNANSWERED:
        # Answered (by the client, or a worker reached them) since the escalation was written.
        return "not sent: the check-in was answered or closed meanwhile"
    return None


def _drop_unwanted(session: Session, rows: list[Claimed], now: datetime) -> list[Claimed]:
    """Cancel (under our claim) the claimed rows that must not be sent any more; the rest. No
    query for the check: the claim read the consent. One UPDATE per reason (rare, so audited row
    by row by the bulk-update hook), whatever the batch's size."""
    keep, dropped = [], defaultdict(list)
    for row in rows:
        reason = _unwanted(row)
        if reason is None:
            keep.append(row)
        else:
            dropped[reason, row.claim_token].append(row)
    for (reason, token), group in dropped.items():
        session.exec(
            update(OutboxMessage)
            .where(
                col(OutboxMessage.id).in_([r.id for r in group]),
                OutboxMessage.claim_token == token,
                OutboxMessage.status == MessageStatus.sending,
            )  # fmt: skip
            .values(status=MessageStatus.cancelled, error_reason=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        skipped = sorted({r.follow_up_id for r in group if r.follow_up_id is not None})
        if skipped:
            session.exec(
                update(FollowUp)
                .where(col(FollowUp.id).in_(skipped), FollowUp.status == FollowUpStatus.pending)
                .values(status=FollowUpStatus.skipped, status_reason=reason, updated_at=now)
                .execution_options(synchronize_session=False)
            )
    session.commit()
    return keep


# What recording a result may change on a row (every parameter set of the executemany has them all).
_RESULT_COLUMNS = ("status", "next_attempt_at", "attempts", "provider_id", "sent_at", "error_code", "error_reason")


def _result_values(current: Row, result: Sent | SendError | datetime, now: datetime) -> dict | None:
    """The row's new values for ``result``; None for a permanent failure (handed to the worker)."""
    new = {name: getattr(current, name) for name in _RESULT_COLUMNS}
    if isinstance(result, datetime):  # claimed outside its window: back to the queue, this was no attempt
        new.update(status=MessageStatus.queued, next_attempt_at=result, attempts=current.attempts - 1)
    elif isinstance(result, Sent):
        new.update(status=MessageStatus.sent, provider_id=result.provider_id, sent_at=now)
        new.update(error_code=None, error_reason=None)
    elif isinstance(result, MaybeSent):
        new.update(status=MessageStatus.unknown, error_code=result.code, error_reason=result.reason)
    elif isinstance(result, TransientError) and (isinstance(result, NotTried) or current.attempts < MAX_ATTEMPTS):
        backoff = BACKOFF[min(max(current.attempts - 1, 0), len(BACKOFF) - 1)]
        retry_at = now + backoff
        if current.send_tz and current.window_start and current.window_end:
            retry_at = next_in_window(retry_at, current.send_tz, current.window_start, current.window_end)
        new.update(status=MessageStatus.queued, error_code=result.code, error_reason=result.reason)
        new.update(next_attempt_at=retry_at)
        if isinstance(result, NotTried):  # the batch stopped before it: this was no attempt
            new.update(attempts=current.attempts - 1)
    else:
        assert isinstance(result, (PermanentError, TransientError))
        return None
    new["updated_at"] = now
    return new


def _json_value(value: object) -> str:
    if isinstance(value, datetime):  # (SQLite's processors already made datetimes text; kept as a guard)
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a claimed row's new values")


def _update_claimed(
    session: Session,
    rows: list[tuple],
    varying: tuple[str, ...],
    fixed: dict[str, object],
    returning: tuple = (),
) -> list[tuple]:
    """The one way a dispatch records results: UPDATE the rows still under their claim (same id,
    same claim token, still ``sending``; a row settled meanwhile, e.g. by a status callback, is
    left alone). ``rows`` are ``(id, claim token, *new values of varying)``; per claim token (a
    tick's rows share one), one statement: the token bound once, the rows joined by id from
    bound parameters whatever the batch (no per-row statement): on PostgreSQL one array per
    column (``unnest``), on SQLite one JSON array of ``(id, *new values)`` (``json_each``);
    ``fixed`` are new values the same for every row. Returns the changed rows' ``returning``
    columns, as tuples. Serves the sends of a batch (``_mark_sent``: only the provider id varies)
    and every other result (``_record_one_by_one``: all of ``_RESULT_COLUMNS``)."""
    t = _OUTBOX
    dialect = session.get_bind().dialect
    postgres = dialect.name == "postgresql"
    by_token: dict[str, list[tuple]] = defaultdict(list)
    # On SQLite each value as the column would bind it (enums as their value, datetimes as its
    # text), for the JSON; PostgreSQL's arrays are typed as the columns and bound as they would be.
    processors = [] if postgres else [t.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in varying]
    convert = any(processors)
    for row in rows:
        values = [p(v) if p else v for p, v in zip(processors, row[2:], strict=True)] if convert else row[2:]
        by_token[row[1]].append((row[0], *values))
    types = [Integer(), *(t.c[name].type for name in varying)]
    if postgres:
        sending = _status_is(MessageStatus.sending)  # the rows in flight, by their partial index
    else:
        # Unary plus: not by the index of the rows in flight (every row of every batch in flight,
        # each against the whole array), but each array entry by its id.
        sending = literal_column("+outbox_message.status", t.c.status.type) == MessageStatus.sending
    changed: list[tuple] = []
    for token, values in by_token.items():
        if postgres:
            arrays = [
                bindparam(f"claimed_{i}", list(column), type_=ARRAY(type_))
                for i, (column, type_) in enumerate(zip(zip(*values, strict=True), types, strict=True))
            ]
            each = func.unnest(*arrays).table_valued(*(f"c{i}" for i in range(len(types)))).render_derived()
            items = [each.c[f"c{i}"] for i in range(len(types))]
        else:
            each = func.json_each(bindparam("claimed_rows", json.dumps(values, default=_json_value)))
            each = each.table_valued("value")
            # The JSON values as they are (SQLite compares and stores them as the bound values).
            items = [func.json_extract(each.c.value, f"$[{i}]") for i in range(len(types))]
        statement = (
            update(t)
            .where(t.c.id == items[0], t.c.claim_token == token, sending)
            .values({**dict(zip(varying, items[1:], strict=True)), **fixed})
        )
        if returning:
            statement = statement.returning(*returning)
        result = session.execute(statement, execution_options={"audit_skip": True})  # the callers audit
        if returning:
            # The driver's own tuples (the columns asked for need no conversion): a result row
            # per message would cost more than the statement's Python.
            changed.extend(result.cursor.fetchall())
            result.close()
    return changed


def _mark_sent(session: Session, sent: list[tuple[int, str, str]], now: datetime) -> list[tuple]:
    """``(id, claim token, provider id)`` of rows sent: one ``_update_claimed``; the rows it changed
    as ``(id, office id, provider id)``."""
    t = _OUTBOX
    return _update_claimed(
        session,
        sent,
        varying=("provider_id",),
        fixed={"status": MessageStatus.sent, "sent_at": now, "updated_at": now},
        returning=(t.c.id, t.c.office_id, t.c.provider_id),
    )


def _record_results(
    factory: sessionmaker[Session],
    rows: list[Claimed],
    results: dict[int, Sent | SendError | datetime],
    clock: Clock,
) -> None:
    """Record every result under its claim; a row settled meanwhile (e.g. by a status callback)
    is left alone. The usual result, sent (by a row without an earlier error to clear), for the
    whole batch at once: ``_mark_sent`` and one summary audit event per office (old and new
    status, the sending time, each row's provider id). The rest (retries, unknown, back to the
    queue) with one read, one UPDATE (``_update_results``) and one audit event per row with its
    old and new values; permanent failures row by row: each becomes a phone call."""
    now = clock.now()
    if not rows:
        return
    sent, others = [], []
    for claimed in rows:
        result = results[claimed.id]
        if isinstance(result, Sent) and claimed.error_code is None and claimed.error_reason is None:
            sent.append((claimed.id, claimed.claim_token, result.provider_id))
        else:
            others.append(claimed)
    with session_scope(factory) as session:
        changed = _mark_sent(session, sent, now) if sent else []
        record_events(
            session,
            summary_rows(
                session,
                action="update",
                record_type=_OUTBOX.name,
                records=[(sent_id, office_id) for sent_id, office_id, _ in changed],
                changes={"status": (MessageStatus.sending, MessageStatus.sent), "sent_at": (None, now)},
                per_record={"provider_id": (None, {sent_id: provider for sent_id, _, provider in changed})},
            ),
        )
        if others:
            _record_one_by_one(session, others, results, now)


def _record_one_by_one(
    session: Session, rows: list[Claimed], results: dict[int, Sent | SendError | datetime], now: datetime
) -> None:
    """The results other than a plain "sent": one read of these rows (locked on PostgreSQL, so a
    status callback waits), one UPDATE and one insert of the audit events (the same events, old and
    new values, as the flush hook writes)."""
    table = _OUTBOX
    current = sa_select(
        table.c.id, table.c.office_id, table.c.claim_token, table.c.updated_at,
        table.c.send_tz, table.c.window_start, table.c.window_end,
        *(table.c[name] for name in _RESULT_COLUMNS),
    ).where(table.c.id.in_(sorted(r.id for r in rows)))  # fmt: skip
    if session.get_bind().dialect.name == "postgresql":
        current = current.with_for_update()
    conn = session.connection()
    by_id = {r.id: r for r in conn.execute(current)}
    params, events, failed = [], [], []
    for claimed in rows:
        cur = by_id.get(claimed.id)
        if cur is None or cur.claim_token != claimed.claim_token or cur.status != MessageStatus.sending:
            continue  # settled meanwhile: leave it
        new = _result_values(cur, results[claimed.id], now)
        if new is None:
            failed.append(claimed)
            continue
        params.append((cur.id, cur.claim_token, *(new[name] for name in _RESULT_COLUMNS), new["updated_at"]))
        events.append(
            event_row(
                session,
                action="update",
                record_type=table.name,
                record_id=cur.id,
                office_id=cur.office_id,
                changes=updated_changes(cur, new),
            )
        )
    if params:
        _update_claimed(session, params, varying=(*_RESULT_COLUMNS, "updated_at"), fixed={})
        record_events(session, events)
    for claimed in failed:
        result = results[claimed.id]
        row = session.get(OutboxMessage, claimed.id)
        assert row is not None and isinstance(result, (PermanentError, TransientError))
        row.updated_at = now
        row.status, row.error_code, row.error_reason = MessageStatus.failed, result.code, result.reason
        hand_to_worker(session, row, now)
        session.add(row)


def hand_to_worker(session: Session, row: OutboxMessage, now: datetime) -> None:
    """A check-in that cannot be delivered becomes a phone call in the worker's queue,
    with the reason in plain words. Once: only a still-pending follow-up is handed over (this
    turns it into ``attempted``), whether the failure came at send time or by a status callback."""
    if row.follow_up_id is None:
        return
    fu = session.get(FollowUp, row.follow_up_id)
    if fu is None or fu.status != FollowUpStatus.pending:
        return
    office = session.get(Office, fu.office_id)
    fu.status = FollowUpStatus.attempted
    fu.status_reason = f"{row.channel.value} not delivered: {row.error_reason}"
    fu.updated_at = now
    session.add(fu)
    call = contacts.schedule_retry(session, follow_up=fu, office=office, today=contacts.office_today_at(office, now))
    call.automated, call.channel = False, Channel.phone
    call.status_reason = fu.status_reason
    session.add(call)


# ---------------------------------------------------------------- opt-out (one source of truth)

OPT_OUT_REASON = "the client stopped automated messages"
_STOPPABLE = (Purpose.check_in, Purpose.escalation, Purpose.program_invitation)


def stop_automated(session: Session, client: Client, *, via: str, now: datetime) -> bool:
    """The client stops automated messages (an SMS STOP word, or "stop" on a reply page): recorded
    on the client (when and by which way), and check-ins still waiting to go out are cancelled,
    their follow-ups skipped with the reason. True when the client had not stopped them before."""
    first = client.opted_out_at is None
    if first:
        client.opted_out_at, client.opted_out_via = now, via[:32]
    waiting = select(OutboxMessage.follow_up_id).where(
        OutboxMessage.client_id == client.id,
        OutboxMessage.status == MessageStatus.queued,
        col(OutboxMessage.purpose).in_(_STOPPABLE),
    )
    session.exec(
        update(FollowUp)
        .where(col(FollowUp.id).in_(waiting), FollowUp.status == FollowUpStatus.pending)
        .values(status=FollowUpStatus.skipped, status_reason=f"not sent: {OPT_OUT_REASON}", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.exec(
        update(OutboxMessage)
        .where(
            OutboxMessage.client_id == client.id,
            OutboxMessage.status == MessageStatus.queued,
            col(OutboxMessage.purpose).in_(_STOPPABLE),
        )
        .values(status=MessageStatus.cancelled, error_reason=OPT_OUT_REASON, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    client.updated_at = now
    session.add(client)
    return first


def resume_automated(session: Session, client: Client, *, now: datetime) -> None:
    """START / 再開 (or the office, on the client's word): automated messages resume."""
    client.opted_out_at, client.opted_out_via = None, None
    client.updated_at = now
    session.add(client)


def reconcile_stuck(session: Session, clock: Clock) -> int:
    """Rows left in ``sending`` by a dispatcher that died: the provider may have them. Mark
    them unknown (a status callback can still move them on); never send them again."""
    now = clock.now()
    result = session.exec(
        update(OutboxMessage)
        .where(_status_is(MessageStatus.sending), OutboxMessage.claimed_at < now - STUCK_AFTER)  # by its index
        .values(
            status=MessageStatus.unknown, updated_at=now, error_reason="the sender stopped while sending; not re-sent"
        )  # fmt: skip
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
