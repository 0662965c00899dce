"""The post-employment program (Iwamizawa): small-group sessions every few months for clients who
started work or finished follow-up recently, their invitations, attendance, and the follow-up a
missed session makes for a client at risk.

**Planning** (``plan_program_sessions``, a scheduler job). Each office has a cycle every
``every_months`` months (counted from January 2000, so the cadence runs across year boundaries:
with 2, January, March, May...). ``plan_ahead_days`` before a cycle's target day
(``day_of_month``, moved to the office's next business day: holidays, New Year, Golden Week), the
job lists the eligible clients, splits them into groups of at most ``group_size`` (women get their
own sessions when ``women_only`` is set), and writes one session per group, at the office-time
``times`` of that day and, for more groups, of the following business days. Each client gets one
invitation (unique per session and client) and, when they can get automated messages (consent,
not opted out, an address), one outbox message (key ``program:<session>:<client>``) on their
channel. Everything is keyed by unique constraints, so two scheduler processes write it once.

**Attendance** is recorded per invitation (attended, absent, excused). An absence by a client
who has an open crisis flag, or an ``isolation`` / ``unreachable`` signal within
``risk_window_days``, makes a phone follow-up for the placement's worker due the next business
day (kind ``missed_session_call``) and raises a ``missed_session`` crisis signal. Once.
"""

from __future__ import annotations

import enum
import math
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import case, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from service.accounts.models import Office
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.messaging.models import MessageChannel, OutboxMessage, Purpose
from service.contacts.messaging.outbox import Messaging, display_phone, enqueue, next_in_window, window_for
from service.contacts.models import (
    Channel,
    Client,
    FollowUp,
    FollowUpKind,
    Party,
    Placement,
    PlacementStatus,
    Sex,
)
from service.db import StrEnumType, UTCDateTime, utcnow
from service.errors import NotFound, ValidationFailed
from service.outcomes import crisis
from service.outcomes.models import CrisisFlag, CrisisSignal, CrisisSignalKind, CrisisStatus

# ================================================================ settings (config/program.toml)


class ProgramSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    every_months: int = Field(default=2, ge=1, le=12)
    day_of_month: int = Field(default=15, ge=1, le=28)
    times: list[str] = Field(default_factory=lambda: ["10:00", "14:00"], min_length=1, max_length=8)
    duration_minutes: int = Field(default=90, ge=15, le=480)
    place: str = Field(default="相談室", min_length=1, max_length=200)
    group_size: int = Field(default=3, ge=1, le=30)
    women_only: bool = True
    eligible_months: int = Field(default=12, ge=1, le=60)
    plan_ahead_days: int = Field(default=21, ge=1, le=120)
    risk_window_days: int = Field(default=60, ge=1, le=365)

    @field_validator("times")
    @classmethod
    def _times(cls, values: list[str]) -> list[str]:
        for v in values:
            try:
                time.fromisoformat(v)
            except ValueError:
                raise ValueError(f"{v!r} is not a time of day (HH:MM)") from None
        return sorted(values)


@dataclass(frozen=True)
class ProgramConfig:
    defaults: ProgramSettings
    offices: dict[int, ProgramSettings]

    def for_office(self, office_id: int) -> ProgramSettings:
        return self.offices.get(office_id, self.defaults)


def load_program_config(path: Path) -> ProgramConfig:
    """Read and validate ``config/program.toml``; ``ValueError`` naming the field when wrong."""
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    unknown = set(data) - {"defaults", "offices"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}")
    base = data.get("defaults", {})
    try:
        defaults = ProgramSettings(**base)
        offices = {}
        for key, override in data.get("offices", {}).items():
            if not str(key).isdigit():
                raise ValueError(f"[offices.{key}]: the key must be an office id")
            offices[int(key)] = ProgramSettings(**(base | override))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
    return ProgramConfig(defaults, offices)


@lru_cache(maxsize=8)
def config_at(path: Path) -> ProgramConfig:
    return load_program_config(path)


# ================================================================ tables


class Attendance(enum.StrEnum):
    attended = "attended"
    absent = "absent"
    excused = "excused"


class Delivery(enum.StrEnum):
    queued = "queued"  # an outbox message was written
    not_sent = "not_sent"  # no automated message (no consent, opted out, no address): invite in person


class ProgramSession(SQLModel, table=True):
    __tablename__ = "program_session"
    __table_args__ = (sa.UniqueConstraint("office_id", "cycle", "group_no", name="uq_program_session_group"),)

    id: int | None = SQLField(default=None, primary_key=True)
    office_id: int = SQLField(foreign_key="office.id", index=True)
    cycle: str = SQLField(max_length=7)  # "2027-01": the cycle's month
    group_no: int  # 1, 2, ... within the cycle
    starts_at: datetime = SQLField(sa_type=UTCDateTime)
    duration_minutes: int
    place: str = SQLField(max_length=200)
    capacity: int
    women_only: bool = False
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=UTCDateTime)


class ProgramInvitation(SQLModel, table=True):
    __tablename__ = "program_invitation"
    __table_args__ = (sa.UniqueConstraint("session_id", "client_id", name="uq_program_invitation_client"),)

    id: int | None = SQLField(default=None, primary_key=True)
    office_id: int = SQLField(foreign_key="office.id", index=True)
    session_id: int = SQLField(foreign_key="program_session.id", index=True)
    client_id: int = SQLField(foreign_key="client.id", index=True)
    placement_id: int = SQLField(foreign_key="placement.id")  # the client's latest placement
    delivery: Delivery = SQLField(sa_type=StrEnumType(Delivery))
    delivery_note: str | None = SQLField(default=None, max_length=200)
    outbox_id: int | None = SQLField(default=None, foreign_key="outbox_message.id")
    attendance: Attendance | None = SQLField(default=None, sa_type=StrEnumType(Attendance))
    attendance_recorded_at: datetime | None = SQLField(default=None, sa_type=UTCDateTime)
    attendance_recorded_by: int | None = SQLField(default=None, foreign_key="staff_user.id")
    follow_up_id: int | None = SQLField(default=None, foreign_key="follow_up.id")
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=UTCDateTime)


# ================================================================ planning


def _month_index(day: date) -> int:
    return (day.year - 2000) * 12 + day.month - 1


def cycle_days(cfg: ProgramSettings, office: Office, today: date) -> list[tuple[str, date]]:
    """The cycles whose (business-day) target falls within today .. today + plan_ahead_days."""
    cal = contacts.office_calendar(office)
    horizon = today + timedelta(days=cfg.plan_ahead_days)
    out = []
    first = date(today.year, today.month, 1)
    for i in range(_month_index(horizon) - _month_index(first) + 2):
        index = _month_index(first) + i
        if index % cfg.every_months:
            continue
        year, month = 2000 + index // 12, index % 12 + 1
        day = cal.on_or_after(date(year, month, cfg.day_of_month))
        if today <= day <= horizon:
            out.append((f"{year:04d}-{month:02d}", day))
    return out


def eligible_clients(
    session: Session, office: Office, today: date, cfg: ProgramSettings
) -> list[tuple[Client, Placement]]:
    """Clients with a placement started, or whose follow-up finished, within ``eligible_months``
    (not separated), each with their latest such placement; in client id order."""
    from service.schedules.calendar import add_months

    cutoff = add_months(today, -cfg.eligible_months)
    cutoff_at = datetime.combine(cutoff, time(0), ZoneInfo(office.timezone))
    rows = session.exec(
        select(Client, Placement)
        .join(Placement, col(Placement.client_id) == Client.id)
        .where(
            Client.office_id == office.id,
            Placement.status != PlacementStatus.separated,
            sa.or_(
                sa.and_(Placement.start_date >= cutoff, Placement.start_date <= today),
                sa.and_(Placement.status == PlacementStatus.completed, Placement.updated_at >= cutoff_at),
            ),
        )
        .order_by(Client.id, col(Placement.start_date).desc(), col(Placement.id).desc())
    ).all()
    latest: dict[int, tuple[Client, Placement]] = {}
    for client, placement in rows:
        latest.setdefault(client.id, (client, placement))
    return list(latest.values())


def split_groups(members: list, size: int) -> list[list]:
    """Balanced groups of at most ``size`` (7 by 3 -> 3, 2, 2), in order."""
    if not members:
        return []
    count = math.ceil(len(members) / size)
    base, extra = divmod(len(members), count)
    groups, at = [], 0
    for i in range(count):
        n = base + (1 if i < extra else 0)
        groups.append(members[at : at + n])
        at += n
    return groups


def _insert(session: Session, row: SQLModel) -> bool:
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return False
    return True


def plan_program_sessions(session: Session, clock: Clock, messaging: Messaging, config: ProgramConfig) -> int:
    """Write the sessions and invitations due within the planning horizon; returns how many
    invitations were written."""
    written = 0
    for office in session.exec(select(Office).order_by(Office.id)).all():
        cfg = config.for_office(office.id)
        if not cfg.enabled:
            continue
        today = contacts.office_today(office, clock)
        for cycle, first_day in cycle_days(cfg, office, today):
            exists = session.exec(
                select(ProgramSession.id).where(ProgramSession.office_id == office.id, ProgramSession.cycle == cycle)
            ).first()
            if exists is not None:
                continue
            written += _plan_cycle(session, clock, messaging, office, cfg, cycle, first_day, today)
    session.flush()
    return written


def _plan_cycle(
    session: Session,
    clock: Clock,
    messaging: Messaging,
    office: Office,
    cfg: ProgramSettings,
    cycle: str,
    first_day: date,
    today: date,
) -> int:
    people = eligible_clients(session, office, today, cfg)
    women = [p for p in people if cfg.women_only and p[0].sex == Sex.female]
    others = [p for p in people if not (cfg.women_only and p[0].sex == Sex.female)]
    groups = [(True, g) for g in split_groups(women, cfg.group_size)]
    groups += [(False, g) for g in split_groups(others, cfg.group_size)]
    cal, zone = contacts.office_calendar(office), ZoneInfo(office.timezone)
    written = 0
    day = first_day
    for i, (women_only, members) in enumerate(groups):
        slot = i % len(cfg.times)
        if i and slot == 0:
            day = cal.add_business_days(day, 1)
        starts = datetime.combine(day, time.fromisoformat(cfg.times[slot]), zone)
        row = ProgramSession(
            office_id=office.id,
            cycle=cycle,
            group_no=i + 1,
            starts_at=starts,
            duration_minutes=cfg.duration_minutes,
            place=cfg.place,
            capacity=cfg.group_size,
            women_only=women_only,
        )
        if not _insert(session, row):
            continue  # another scheduler process planned this group (and invites its members)
        for client, placement in members:
            if _invite(session, clock, messaging, office, row, client, placement):
                written += 1
    return written


def _channel(session: Session, client: Client) -> tuple[MessageChannel | None, str | None]:
    if client.opted_out_at is not None:
        return None, "the client stopped automated messages"
    if not client.consent_automated:
        return None, "no consent to automated messages"
    used = session.exec(
        select(FollowUp.channel)
        .join(Placement, col(Placement.id) == FollowUp.placement_id)
        .where(
            Placement.client_id == client.id,
            FollowUp.party == Party.client,
            FollowUp.automated == True,  # noqa: E712
            col(FollowUp.channel).in_([Channel.sms, Channel.email]),
        )
        .order_by(col(FollowUp.due_date).desc())
    ).first()
    if used == Channel.email and client.email:
        return MessageChannel.email, None
    if client.phone:
        return MessageChannel.sms, None
    if client.email:
        return MessageChannel.email, None
    return None, "no phone number or e-mail address on record"


def _when(starts_at: datetime, office: Office, language: str) -> tuple[str, str]:
    local = starts_at.astimezone(ZoneInfo(office.timezone))
    if language == "ja":
        weekday = "月火水木金土日"[local.weekday()]
        return f"{local.year}年{local.month}月{local.day}日（{weekday}）", local.strftime("%H:%M")
    return local.strftime("%a %d %b %Y"), local.strftime("%H:%M")


def _invite(
    session: Session,
    clock: Clock,
    messaging: Messaging,
    office: Office,
    prog: ProgramSession,
    client: Client,
    placement: Placement,
) -> ProgramInvitation | None:
    channel, why_not = _channel(session, client)
    inv = ProgramInvitation(
        office_id=office.id,
        session_id=prog.id,
        client_id=client.id,
        placement_id=placement.id,
        delivery=Delivery.queued if channel else Delivery.not_sent,
        delivery_note=why_not,
    )
    if not _insert(session, inv):
        return None
    if channel is None:
        return inv
    start, end = window_for(messaging.settings, office, client)
    now = clock.now()
    lang = client.language.value
    day, at = _when(prog.starts_at, office, lang)
    values = {"office": office.name, "phone": display_phone(office.phone), "date": day, "time": at}
    values["place"] = prog.place
    t = messaging.texts
    row = OutboxMessage(
        idempotency_key=f"program:{prog.id}:{client.id}",
        office_id=office.id,
        purpose=Purpose.program_invitation,
        channel=channel,
        placement_id=placement.id,
        client_id=client.id,
        to_address=(client.email if channel == MessageChannel.email else client.phone) or "",
        language=lang,
        subject=t.render("program_email_subject", lang, **values) if channel == MessageChannel.email else None,
        body=t.render("program_email_body" if channel == MessageChannel.email else "program_sms", lang, **values),
        send_tz=office.timezone,
        window_start=start,
        window_end=end,
        next_attempt_at=next_in_window(now, office.timezone, start, end),
    )
    if enqueue(session, row) is not None:
        inv.outbox_id = row.id
        session.add(inv)
    return inv


# ================================================================ attendance


def get_session_in_office(session: Session, *, office_id: int, session_id: int) -> ProgramSession:
    row = session.get(ProgramSession, session_id)
    if row is None or row.office_id != office_id:
        raise NotFound("program session")
    return row


def get_invitation(session: Session, *, office_id: int, invitation_id: int) -> ProgramInvitation:
    row = session.get(ProgramInvitation, invitation_id)
    if row is None or row.office_id != office_id:
        raise NotFound("invitation")
    return row


def at_risk(session: Session, *, client_id: int, now: datetime, window_days: int) -> str | None:
    """Why the client is at risk (an open flag, recent isolation / unreachable signals), or None."""
    open_flag = session.exec(
        select(CrisisFlag.id).where(CrisisFlag.client_id == client_id, CrisisFlag.status != CrisisStatus.resolved)
    ).first()
    if open_flag is not None:
        return "an open crisis flag"
    signal = session.exec(
        select(CrisisSignal.kind)
        .join(Placement, col(Placement.id) == CrisisSignal.placement_id)
        .where(
            Placement.client_id == client_id,
            col(CrisisSignal.kind).in_([CrisisSignalKind.isolation, CrisisSignalKind.unreachable]),
            CrisisSignal.occurred_at >= now - timedelta(days=window_days),
        )
    ).first()
    if signal is not None:
        return f"a recent {signal.value} signal"
    return None


def record_attendance(
    session: Session,
    *,
    office_id: int,
    invitation_id: int,
    attendance: Attendance,
    user_id: int,
    clock: Clock,
    config: ProgramConfig,
) -> ProgramInvitation:
    inv = get_invitation(session, office_id=office_id, invitation_id=invitation_id)
    prog = session.get(ProgramSession, inv.session_id)
    now = clock.now()
    if attendance != Attendance.excused and prog.starts_at > now:
        raise ValidationFailed.one("attendance", "the session has not started yet: only 'excused' can be recorded")
    inv.attendance, inv.attendance_recorded_at, inv.attendance_recorded_by = attendance, now, user_id
    session.add(inv)
    session.flush()
    if attendance == Attendance.absent and inv.follow_up_id is None:
        cfg = config.for_office(office_id)
        reason = at_risk(session, client_id=inv.client_id, now=now, window_days=cfg.risk_window_days)
        if reason:
            _missed_by_client_at_risk(session, clock, inv, prog, reason)
    return inv


def _missed_by_client_at_risk(
    session: Session, clock: Clock, inv: ProgramInvitation, prog: ProgramSession, reason: str
) -> None:
    office = session.get(Office, inv.office_id)
    placement = session.get(Placement, inv.placement_id)
    day = prog.starts_at.astimezone(ZoneInfo(office.timezone)).date().isoformat()
    call = contacts.phone_call_next_business_day(
        session, office=office, placement=placement, clock=clock, kind=FollowUpKind.missed_session_call,
        reason=f"missed the program session of {day} ({reason}): please phone the client",
    )  # fmt: skip
    inv.follow_up_id = call.id
    session.add(inv)
    crisis.raise_signal(
        session,
        placement_id=inv.placement_id,
        kind=CrisisSignalKind.missed_session,
        source_party="system",
        source=f"program:{inv.id}",
        detail=f"missed the program session of {day}",
        clock=clock,
    )
    session.flush()


# ================================================================ attendance over time


def _counts():
    return (
        func.count(ProgramInvitation.id),
        func.sum(case((ProgramInvitation.attendance == Attendance.attended, 1), else_=0)),
        func.sum(case((ProgramInvitation.attendance == Attendance.absent, 1), else_=0)),
        func.sum(case((ProgramInvitation.attendance == Attendance.excused, 1), else_=0)),
    )


def _rate(attended: int, invited: int) -> float | None:
    return round(attended / invited, 4) if invited else None


def office_attendance(
    session: Session, *, office_id: int, date_from: date | None, date_to: date | None
) -> dict[str, list[dict]]:
    """Per session (invited, attended, absent, excused, rate = attended / invited) and per month
    of the office's time zone; the counts are SQL aggregates."""
    office = session.get(Office, office_id)
    zone = ZoneInfo(office.timezone)
    query = (
        select(ProgramSession, *_counts())
        .join(ProgramInvitation, col(ProgramInvitation.session_id) == ProgramSession.id, isouter=True)
        .where(ProgramSession.office_id == office_id)
        .group_by(ProgramSession.id)
        .order_by(ProgramSession.starts_at, ProgramSession.id)
    )
    if date_from is not None:
        query = query.where(ProgramSession.starts_at >= datetime.combine(date_from, time(0), zone))
    if date_to is not None:
        query = query.where(ProgramSession.starts_at < datetime.combine(date_to + timedelta(days=1), time(0), zone))
    sessions, months = [], {}
    for prog, invited, attended, absent, excused in session.exec(query).all():
        attended, absent, excused = int(attended or 0), int(absent or 0), int(excused or 0)
        sessions.append(
            {
                "session": prog,
                "invited": invited,
                "attended": attended,
                "absent": absent,
                "excused": excused,
                "rate": _rate(attended, invited),
            }
        )
        month = prog.starts_at.astimezone(zone).strftime("%Y-%m")
        m = months.setdefault(month, {"month": month, "sessions": 0, "invited": 0, "attended": 0})
        m["sessions"] += 1
        m["invited"] += invited
        m["attended"] += attended
    for m in months.values():
        m["rate"] = _rate(m["attended"], m["invited"])
    return {"sessions": sessions, "months": list(months.values())}


def client_attendance(session: Session, *, office_id: int, client_id: int) -> list[tuple[ProgramInvitation, Any]]:
    contacts.get_client(session, office_id=office_id, client_id=client_id)  # 404 across offices
    return list(
        session.exec(
            select(ProgramInvitation, ProgramSession)
            .join(ProgramSession, col(ProgramSession.id) == ProgramInvitation.session_id)
            .where(ProgramInvitation.office_id == office_id, ProgramInvitation.client_id == client_id)
            .order_by(ProgramSession.starts_at)
        ).all()
    )


def session_invitations(
    session: Session, *, office_id: int, session_id: int
) -> list[tuple[ProgramInvitation, Client, Any]]:
    """The session's invitations with each client and the status of its message (None: not sent)."""
    get_session_in_office(session, office_id=office_id, session_id=session_id)
    return list(
        session.exec(
            select(ProgramInvitation, Client, OutboxMessage.status)
            .join(Client, col(Client.id) == ProgramInvitation.client_id)
            .join(OutboxMessage, col(OutboxMessage.id) == ProgramInvitation.outbox_id, isouter=True)
            .where(ProgramInvitation.session_id == session_id, ProgramInvitation.office_id == office_id)
            .order_by(ProgramInvitation.id)
        ).all()
    )
