"""Two periodic jobs of the follow-up work: escalation when nobody answers, and the morning digest.

Both are plain ``(session, clock, messaging) -> int`` functions registered in ``service/jobs.py``;
all their state is in the database, so they can run in several processes, be restarted at any
moment and be run at any chosen instant by a test.

**Escalation** (``escalate_unanswered``, every 15 minutes). A client's automated check-in that
was sent (sent, delivered or unknown) and whose follow-up has no answer (still pending, or
missed after its window, and no reached outcome) ``unanswered_hours`` (default 48) after it went
out:

1. is sent once more by the client's other channel (SMS <-> e-mail, voice -> SMS) when the client
   has that address, automated-message consent and has not opted out: an outbox row of purpose
   ``escalation``, keyed ``esc:<check-in outbox id>``, for the same follow-up (its reply link
   answers it), inside the client's quiet-hours window;
2. if there is no other channel, or the escalation too is unanswered ``unanswered_hours`` after it
   went out (or could not be sent at all), becomes a phone call for the placement's worker: a
   follow-up (kind retry, channel phone, ``retry_of`` the check-in's follow-up) due the next
   business day of the office, with the reason in ``status_reason``. Exactly once: the follow-up
   row is locked (PostgreSQL) and a phone follow-up already made for it ends the matter.
3. When a check-in reaches that stage and the placement's previous check-in was unanswered too
   (it also reached the phone stage, or expired unanswered), an ``unreachable`` crisis signal is
   raised (once per check-in, ``source`` ``"escalation:<follow-up id>"``).

A check-in sent more than ``reply_link_days`` ago is left alone (its link has expired; this is not
the place to dig up old history), and one the job finds more than ``late_cancel_days`` past its
escalation time (the service was down) is not sent again: a late message is noise, so it goes
straight to the worker. A queued escalation whose check-in was answered meanwhile is cancelled.

**The morning digest** (``morning_digest``, every few minutes and once at start-up). From 08:00
office time on the office's business days, each active worker (and manager) with a caseload gets
one e-mail: crisis items, overdue work and today's work from their daily queue, with counts and a
line per item (client name, action, due date; never the client's category or notes). A worker
whose queue is empty gets a short "nothing due today" e-mail instead, so silence never means
"the system is down". Someone with no active placement and an empty queue gets nothing.
Exactly once per person per office day: the outbox key ``digest:<user id>:<local date>`` is
unique. The job acts whenever the local time is between ``DIGEST_FROM`` (08:00) and
``DIGEST_UNTIL`` (18:00) and the day's digest is not yet written, so a service that was down at
08:00 catches up once when it comes back; after 18:00 that day's digest is not sent at all (a stale
morning digest is noise; the queue itself is always up to date).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, func, or_
from sqlmodel import Session, col, select

from service.accounts.models import Office, Role, StaffUser
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import Messaging, display_phone, enqueue, next_in_window, window_for
from service.contacts.messaging.texts import Texts
from service.contacts.models import (
    Client,
    FollowUp,
    FollowUpKind,
    FollowUpStatus,
    Party,
    Placement,
    PlacementStatus,
)
from service.outcomes import crisis
from service.outcomes.models import CrisisSignal, CrisisSignalKind, CrisisSignalParty, Outcome
from service.outcomes.queue import daily_queue
from service.outcomes.schemas import QueueItem

# ================================================================ escalation

SENT = (MessageStatus.sent, MessageStatus.delivered, MessageStatus.unknown)
UNANSWERED = (FollowUpStatus.pending, FollowUpStatus.missed)
# The other channel of an unanswered check-in; a voice call is followed by an SMS.
OTHER_CHANNEL = {
    MessageChannel.sms: MessageChannel.email,
    MessageChannel.email: MessageChannel.sms,
    MessageChannel.voice: MessageChannel.sms,
}
# Other rows of the same tables, for "has a phone follow-up" and "was escalated" subqueries.
_Retry = FollowUp.__table__.alias("retry").c  # type: ignore[attr-defined]
_Esc = OutboxMessage.__table__.alias("esc").c  # type: ignore[attr-defined]
_CHANNEL_WORDS = {MessageChannel.sms: "SMS", MessageChannel.email: "e-mail", MessageChannel.voice: "automated call"}


def _went_out_at():
    # "unknown" rows (the sender stopped mid-send) may have no sent_at: the claim is the best guess.
    return func.coalesce(OutboxMessage.sent_at, OutboxMessage.claimed_at)


def _unanswered_rows(session: Session, purpose: Purpose, *, sent_before: datetime, sent_after: datetime):
    """Rows of ``purpose`` sent in (sent_after, sent_before] whose follow-up is still unanswered
    and has no phone follow-up yet, for clients of active placements."""
    reached = exists().where(Outcome.follow_up_id == FollowUp.id, Outcome.reached == True)  # noqa: E712
    phone_made = exists().where(_Retry.retry_of == FollowUp.id)
    query = (
        select(OutboxMessage, FollowUp, Placement, Client, Office)
        .join(FollowUp, col(FollowUp.id) == OutboxMessage.follow_up_id)
        .join(Placement, col(Placement.id) == FollowUp.placement_id)
        .join(Client, col(Client.id) == Placement.client_id)
        .join(Office, col(Office.id) == FollowUp.office_id)
        .where(
            OutboxMessage.purpose == purpose,
            col(OutboxMessage.answered_at).is_(None),
            FollowUp.party == Party.client,
            col(FollowUp.status).in_(UNANSWERED),
            Placement.status == PlacementStatus.active,
            ~reached,
            ~phone_made,
        )
        .order_by(OutboxMessage.id)
    )
    settled = and_(col(OutboxMessage.status).in_(SENT), _went_out_at() <= sent_before, _went_out_at() > sent_after)
    if purpose == Purpose.escalation:
        # An escalation that could not go out (refused, or the client said STOP) ends in a call too.
        settled = or_(
            settled,
            and_(
                col(OutboxMessage.status).in_([MessageStatus.failed, MessageStatus.cancelled]),
                OutboxMessage.updated_at > sent_after,
            ),
        )
    else:
        escalated = exists().where(_Esc.follow_up_id == FollowUp.id, _Esc.purpose == Purpose.escalation)
        query = query.where(~escalated)
    return session.exec(query.where(settled)).all()


def escalate_unanswered(session: Session, clock: Clock, messaging: Messaging) -> int:
    """Re-send unanswered check-ins by the other channel, then hand them to the worker; returns
    how many escalations and phone follow-ups were written."""
    settings, now = messaging.settings, clock.now()
    wait = timedelta(hours=settings.unanswered_hours)
    oldest = now - timedelta(days=settings.reply_link_days)
    too_late = timedelta(days=settings.late_cancel_days)
    _cancel_answered_escalations(session, now)
    acted = 0

    for row, fu, placement, client, office in _unanswered_rows(
        session, Purpose.check_in, sent_before=now - wait, sent_after=oldest
    ):
        went_out = row.sent_at or row.claimed_at
        other = _other_channel(row.channel, client)
        if other is not None and now - (went_out + wait) <= too_late:
            if _write_escalation(session, messaging, office, row, fu, client, other, now):
                acted += 1
            continue
        if other is None:
            why = (
                f"no answer to the {_CHANNEL_WORDS[row.channel]} check-in sent {_local(went_out, office)}; "
                f"no other channel to try ({_no_other_reason(row.channel, client)}): please phone the client"
            )
        else:
            why = (
                f"no answer to the {_CHANNEL_WORDS[row.channel]} check-in sent {_local(went_out, office)}; "
                "too late to send it again: please phone the client"
            )
        if _hand_to_worker(session, clock, fu, placement, office, why):
            acted += 1

    for row, fu, placement, _client, office in _unanswered_rows(
        session, Purpose.escalation, sent_before=now - wait, sent_after=oldest
    ):
        if row.status in (MessageStatus.failed, MessageStatus.cancelled):
            why = (
                f"no answer to the check-in, and sending it again by {_CHANNEL_WORDS[row.channel]} failed "
                f"({row.error_reason or row.status.value}): please phone the client"
            )
        else:
            why = (
                f"no answer to the check-in, nor to the {_CHANNEL_WORDS[row.channel]} sent again "
                f"{_local(row.sent_at or row.claimed_at, office)}: please phone the client"
            )
        if _hand_to_worker(session, clock, fu, placement, office, why):
            acted += 1
    session.flush()
    return acted


def _cancel_answered_escalations(session: Session, now: datetime) -> None:
    """A queued escalation whose check-in was answered meanwhile (or whose follow-up ended) is
    not sent."""
    rows = session.exec(
        select(OutboxMessage)
        .join(FollowUp, col(FollowUp.id) == OutboxMessage.follow_up_id)
        .where(
            OutboxMessage.purpose == Purpose.escalation,
            OutboxMessage.status == MessageStatus.queued,
            col(FollowUp.status).not_in(UNANSWERED),
        )
    ).all()
    for row in rows:
        row.status, row.updated_at = MessageStatus.cancelled, now
        row.error_reason = "not sent: the check-in was answered or closed meanwhile"
        session.add(row)


def _other_channel(channel: MessageChannel, client: Client) -> MessageChannel | None:
    if client.opted_out_at is not None or not client.consent_automated:
        return None
    other = OTHER_CHANNEL.get(channel)
    if other == MessageChannel.email and client.email:
        return other
    if other == MessageChannel.sms and client.phone:
        return other
    return None


def _no_other_reason(channel: MessageChannel, client: Client) -> str:
    if client.opted_out_at is not None:
        return "the client stopped automated messages"
    if not client.consent_automated:
        return "no consent to automated messages"
    if OTHER_CHANNEL[channel] == MessageChannel.email:
        return "no e-mail address on record"
    return "no phone number on record"


def _write_escalation(
    session: Session,
    messaging: Messaging,
    office: Office,
    check_in: OutboxMessage,
    fu: FollowUp,
    client: Client,
    channel: MessageChannel,
    now: datetime,
) -> OutboxMessage | None:
    start, end = window_for(messaging.settings, office, client)
    row = OutboxMessage(
        idempotency_key=f"esc:{check_in.id}",
        office_id=office.id,
        purpose=Purpose.escalation,
        channel=channel,
        follow_up_id=fu.id,  # its reply link answers the same follow-up
        placement_id=fu.placement_id,
        client_id=client.id,
        to_address=(client.email if channel == MessageChannel.email else client.phone) or "",
        language=client.language.value,
        body="",
        send_tz=office.timezone,
        window_start=start,
        window_end=end,
        next_attempt_at=next_in_window(now, office.timezone, start, end),
    )
    if enqueue(session, row) is None:
        return None  # another scheduler process wrote it first
    t, lang = messaging.texts, row.language
    values = {"office": office.name, "phone": display_phone(office.phone), "link": messaging.links.url(row.id)}
    if channel == MessageChannel.email:
        row.subject = t.render("escalation_email_subject", lang, **values)
        row.body = t.render("escalation_email_body", lang, **values)
    else:
        row.body = t.render("escalation_sms", lang, **values)
    session.add(row)
    session.flush()
    return row


def _lock(session: Session, fu: FollowUp) -> FollowUp:
    """The follow-up, re-read under a row lock (PostgreSQL; SQLite ignores it): two scheduler
    processes deciding about the same check-in take turns, and the second sees the first's work."""
    return session.exec(
        select(FollowUp).where(FollowUp.id == fu.id).with_for_update().execution_options(populate_existing=True)
    ).one()


def _phone_follow_up_of(session: Session, fu_id: int) -> int | None:
    return session.exec(select(FollowUp.id).where(FollowUp.retry_of == fu_id)).first()


def _hand_to_worker(
    session: Session, clock: Clock, fu: FollowUp, placement: Placement, office: Office, why: str
) -> FollowUp | None:
    """A phone call for the placement's worker, due the next business day; once per check-in."""
    fu = _lock(session, fu)
    if fu.status not in UNANSWERED or _phone_follow_up_of(session, fu.id) is not None:
        return None
    call = contacts.phone_call_next_business_day(
        session, office=office, placement=placement, clock=clock, kind=FollowUpKind.retry, reason=why,
        retry_of=fu.id, attempt=fu.attempt + 1,
    )  # fmt: skip
    _maybe_unreachable(session, clock, fu, placement)
    return call


def _was_sent(fu_id_column):
    return exists().where(
        OutboxMessage.follow_up_id == fu_id_column,
        OutboxMessage.purpose == Purpose.check_in,
        col(OutboxMessage.status).in_(SENT),
    )


def _maybe_unreachable(session: Session, clock: Clock, fu: FollowUp, placement: Placement) -> None:
    """This check-in went unanswered up to the phone stage; if the placement's previous sent
    check-in was unanswered too, the client may be slipping away: an ``unreachable`` signal."""
    previous = session.exec(
        select(FollowUp)
        .where(
            FollowUp.placement_id == fu.placement_id,
            FollowUp.party == Party.client,
            FollowUp.automated == True,  # noqa: E712
            FollowUp.id != fu.id,
            or_(FollowUp.due_date < fu.due_date, and_(FollowUp.due_date == fu.due_date, FollowUp.id < fu.id)),
            _was_sent(FollowUp.id),
        )
        .order_by(col(FollowUp.due_date).desc(), col(FollowUp.id).desc())
    ).first()
    if previous is None or not _unanswered_before(session, previous):
        return
    source = f"escalation:{fu.id}"
    if session.exec(
        select(CrisisSignal.id).where(
            CrisisSignal.placement_id == placement.id,
            CrisisSignal.kind == CrisisSignalKind.unreachable,
            CrisisSignal.source == source,
        )
    ).first():
        return
    detail = (
        f"two check-ins in a row went unanswered (due {previous.due_date.isoformat()} and {fu.due_date.isoformat()})"
    )
    _raise_unreachable(session, clock, placement, fu, source, detail)


def _unanswered_before(session: Session, fu: FollowUp) -> bool:
    """The earlier check-in was never answered: it reached the phone stage, or expired."""
    if fu.status not in (FollowUpStatus.pending, FollowUpStatus.missed, FollowUpStatus.attempted):
        return False  # done (answered, or reached by phone), cancelled, skipped
    if session.exec(
        select(Outcome.id).where(Outcome.follow_up_id == fu.id, Outcome.reached == True)  # noqa: E712
    ).first():
        return False
    return fu.status == FollowUpStatus.missed or _phone_follow_up_of(session, fu.id) is not None


def _raise_unreachable(
    session: Session, clock: Clock, placement: Placement, fu: FollowUp, source: str, detail: str
) -> None:
    """Through the crisis rules (an ``unreachable`` signal is urgent: a crisis call for today)."""
    crisis.raise_signal(
        session,
        placement_id=placement.id,
        kind=CrisisSignalKind.unreachable.value,
        source_party=CrisisSignalParty.system.value,
        source=source,
        detail=detail,
        clock=clock,
    )


def _local(instant: datetime | None, office: Office) -> str:
    if instant is None:
        return "earlier"
    return instant.astimezone(ZoneInfo(office.timezone)).strftime("%Y-%m-%d %H:%M")


# ================================================================ the morning digest

DIGEST_FROM = time(8, 0)
# After this local time the day's digest is no longer sent (caught up only within the day's
# working hours: a morning digest arriving in the evening is noise).
DIGEST_UNTIL = time(18, 0)
MAX_LINES = 30  # per section; the rest is counted ("and 12 more")
GROUPS = ("crisis", "overdue", "today")


def morning_digest(session: Session, clock: Clock, messaging: Messaging) -> int:
    """Write today's digest for every worker who has not had it yet; returns how many."""
    now, written = clock.now(), 0
    for office in session.exec(select(Office).order_by(Office.id)).all():
        local = now.astimezone(ZoneInfo(office.timezone))
        today = local.date()
        if not (DIGEST_FROM <= local.time() < DIGEST_UNTIL):
            continue
        if not contacts.office_calendar(office).is_business_day(today):
            continue
        staff = session.exec(
            select(StaffUser)
            .where(
                StaffUser.office_id == office.id,
                StaffUser.is_active == True,  # noqa: E712
                col(StaffUser.role).in_([Role.worker, Role.manager]),
            )
            .order_by(StaffUser.id)
        ).all()
        keys = {u.id: f"digest:{u.id}:{today.isoformat()}" for u in staff}
        if not keys:
            continue
        done = set(
            session.exec(
                select(OutboxMessage.idempotency_key).where(col(OutboxMessage.idempotency_key).in_(list(keys.values())))
            ).all()
        )
        for user in staff:
            if keys[user.id] in done:
                continue
            if _write_digest(session, messaging, office, user, today, keys[user.id], now):
                written += 1
    session.flush()
    return written


def _has_caseload(session: Session, user: StaffUser) -> bool:
    return (
        session.exec(
            select(Placement.id).where(Placement.worker_id == user.id, Placement.status == PlacementStatus.active)
        ).first()
        is not None
    )


def _write_digest(
    session: Session, messaging: Messaging, office: Office, user: StaffUser, today: date, key: str, now: datetime
) -> OutboxMessage | None:
    queue = daily_queue(session, worker=user, on=today)
    if not queue.items and not _has_caseload(session, user):
        return None
    lang = user.language.value
    t = messaging.texts
    values = {
        "name": user.name,
        "date": _day(today, lang),
        "office": office.name,
        **{g: str(queue.counts.get(g, 0)) for g in GROUPS},
    }
    if queue.items:
        subject = t.render("digest_subject", lang, **values)
        body = t.render("digest_body", lang, sections=_sections(t, lang, queue.items), **values)
    else:
        subject = t.render("digest_none_subject", lang, **values)
        body = t.render("digest_none_body", lang, **values)
    return enqueue(
        session,
        OutboxMessage(
            idempotency_key=key,
            office_id=office.id,
            purpose=Purpose.digest,
            channel=MessageChannel.email,
            staff_id=user.id,
            to_address=user.email,
            language=lang,
            subject=subject[:300],
            body=body[:10_000],
            send_tz=None,  # staff e-mail: no quiet hours
            next_attempt_at=now,
        ),
    )


def _sections(t: Texts, lang: str, items: list[QueueItem]) -> str:
    out = []
    for group in GROUPS:
        rows = [i for i in items if i.group == group]
        if not rows:
            continue
        lines = [t.render(f"digest_{group}", lang, count=str(len(rows)))]
        for i in rows[:MAX_LINES]:
            key = "digest_line_overdue" if i.days_overdue > 0 else "digest_line"
            due, days = _day(i.due_date, lang), str(i.days_overdue)
            lines.append(t.render(key, lang, client=i.client.name, action=i.action, due=due, days=days))
        if len(rows) > MAX_LINES:
            lines.append(t.render("digest_more", lang, count=str(len(rows) - MAX_LINES)))
        out.append("\n".join(lines))
    return "\n\n".join(out)


_JA_WEEKDAYS = "月火水木金土日"
_EN_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _day(d: date, lang: str) -> str:
    if lang == "ja":
        return f"{d.month}月{d.day}日（{_JA_WEEKDAYS[d.weekday()]}）"
    return f"{_EN_WEEKDAYS[d.weekday()]} {d.day} {_EN_MONTHS[d.month - 1]}"


def deliver_alerts(session: Session, clock: Clock, messaging: Messaging) -> int:
    """Emergency flags: an e-mail to the worker and each manager of the office, whatever the
    hour (no quiet hours for staff alerts), written to the outbox once per alert (key
    ``alert:<id>``) and sent by the next dispatch. Returns how many were written."""
    now, written = clock.now(), 0
    for alert in crisis.pending_alerts(session, limit=500):
        user = session.get(StaffUser, alert.recipient_id)
        if user is None or not user.is_active:
            crisis.mark_alert_delivered(session, alert_id=alert.id, at=now)
            continue
        message = crisis.alert_message(session, alert=alert, language=user.language.value)
        row = OutboxMessage(
            idempotency_key=f"alert:{alert.id}",
            office_id=alert.office_id,
            purpose=Purpose.alert,
            channel=MessageChannel.email,
            staff_id=user.id,
            to_address=user.email,
            language=user.language.value,
            subject=message.subject,
            body=message.body,
            next_attempt_at=now,
        )
        if enqueue(session, row) is not None:
            written += 1
        crisis.mark_alert_delivered(session, alert_id=alert.id, at=now)
    return written
