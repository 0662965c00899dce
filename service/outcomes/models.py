"""What happened when a follow-up was made."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.contacts.models import Channel, Party
from service.db import StrEnumType, UTCDateTime, partial_index, utcnow


class StillEmployed(enum.StrEnum):
    yes = "yes"
    no = "no"
    unknown = "unknown"


class RiskSignal(enum.StrEnum):
    absence = "absence"
    lateness = "lateness"
    conflict = "conflict"  # conflict at work
    health = "health"
    money = "money"
    housing = "housing"
    isolation = "isolation"
    wants_to_quit = "wants_to_quit"
    family_trouble = "family_trouble"
    other = "other"


class Outcome(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    follow_up_id: int = Field(foreign_key="follow_up.id", index=True)
    placement_id: int = Field(foreign_key="placement.id", index=True)
    party: Party = Field(sa_type=StrEnumType(Party))
    channel: Channel = Field(sa_type=StrEnumType(Channel))
    recorded_by: int | None = Field(default=None, foreign_key="staff_user.id")  # None: the system
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    reached: bool
    still_employed: StillEmployed = Field(default=StillEmployed.unknown, sa_type=StrEnumType(StillEmployed))
    wellbeing: int | None = Field(default=None, ge=1, le=5)
    risk_signals: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))
    # Set by the system when the client could not be reached after the retries (an isolation sign).
    unreachable: bool = False
    note: str | None = Field(default=None, max_length=4000)
    late: bool = False
    # Where it came from: "worker", or the client's own answer ("sms", "email", "voice", "link").
    source: str = Field(default="worker", max_length=16)
    # The class of a client's or employer's answer (none, watch, urgent, emergency) and why.
    reply_class: str | None = Field(default=None, max_length=16)
    reply_reason: str | None = Field(default=None, max_length=200)


# -- crisis flags (service/outcomes/crisis.py) ------------------------------------------------


class CrisisSeverity(enum.StrEnum):
    watch = "watch"
    urgent = "urgent"
    emergency = "emergency"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {CrisisSeverity.watch: 1, CrisisSeverity.urgent: 2, CrisisSeverity.emergency: 3}


class CrisisStatus(enum.StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


class CrisisSignalKind(enum.StrEnum):
    """What a signal says. The first ten are the risk signals a worker records (RiskSignal);
    the rest are derived by the system or reported by other parts of it."""

    absence = "absence"
    lateness = "lateness"
    conflict = "conflict"
    health = "health"
    money = "money"
    housing = "housing"
    isolation = "isolation"
    wants_to_quit = "wants_to_quit"
    family_trouble = "family_trouble"
    other = "other"
    unreachable = "unreachable"  # not reached after the retries
    wellbeing_drop = "wellbeing_drop"  # the client's wellbeing fell by N points or more
    reply_urgent = "reply_urgent"  # a client's reply classed urgent (messaging)
    reply_emergency = "reply_emergency"  # a client's reply classed emergency (messaging)
    employer_absence = "employer_absence"  # the employer reports the client absent
    employer_lateness = "employer_lateness"
    employer_conflict = "employer_conflict"
    discordance = "discordance"  # the employer reports trouble, the client says all is well
    missed_session = "missed_session"  # a missed post-employment program session


class CrisisSignalParty(enum.StrEnum):
    """From whom a signal came: one of the parties, or the system (a derived signal)."""

    client = "client"
    family = "family"
    employer = "employer"
    system = "system"


# At most one flag per placement is open or acknowledged. Partial unique indexes work the same
# on PostgreSQL and SQLite; the code also joins the open flag, this only stops a race.
_OPEN_FLAG = "status != 'resolved'"


class CrisisFlag(SQLModel, table=True):
    __tablename__ = "crisis_flag"
    __table_args__ = (
        partial_index("uq_crisis_flag_open_placement", "placement_id", unique=True, where=_OPEN_FLAG),
        sa.Index("ix_crisis_flag_office_status", "office_id", "status", "opened_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id")
    placement_id: int = Field(foreign_key="placement.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    severity: CrisisSeverity = Field(sa_type=StrEnumType(CrisisSeverity))
    status: CrisisStatus = Field(default=CrisisStatus.open, sa_type=StrEnumType(CrisisStatus))
    owner_id: int = Field(foreign_key="staff_user.id")  # the placement's worker when it opened
    opened_at: datetime = Field(sa_type=UTCDateTime)
    # When the flag reached its present severity (= opened_at unless it was raised since).
    escalated_at: datetime = Field(sa_type=UTCDateTime)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: int | None = Field(default=None, foreign_key="staff_user.id")
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: int | None = Field(default=None, foreign_key="staff_user.id")
    resolution_note: str | None = Field(default=None, max_length=4000)
    crisis_follow_up_id: int | None = Field(default=None, foreign_key="follow_up.id")


class CrisisSignal(SQLModel, table=True):
    """One thing that was noticed. ``flag_id`` is None while the signal has not (yet) made or
    joined a flag: e.g. the first of two work problems a rule needs within its window."""

    __tablename__ = "crisis_signal"
    __table_args__ = (sa.Index("ix_crisis_signal_placement_time", "placement_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    flag_id: int | None = Field(default=None, foreign_key="crisis_flag.id", index=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    placement_id: int = Field(foreign_key="placement.id")
    kind: CrisisSignalKind = Field(sa_type=StrEnumType(CrisisSignalKind))
    source_party: CrisisSignalParty = Field(sa_type=StrEnumType(CrisisSignalParty))
    source: str = Field(max_length=64)  # "outcome:123", "reply:45", "session:6"
    detail: str | None = Field(default=None, max_length=500)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    recorded_by: int | None = Field(default=None, foreign_key="staff_user.id")  # None: the system


class CrisisAlert(SQLModel, table=True):
    """An emergency alert owed to one person (the worker, each manager of the office).
    Written here; delivered (e-mail, SMS where configured) by messaging, which sets
    ``delivered_at``. The text comes from ``crisis.alert_message``."""

    __tablename__ = "crisis_alert"

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    flag_id: int = Field(foreign_key="crisis_flag.id", index=True)
    recipient_id: int = Field(foreign_key="staff_user.id")
    severity: CrisisSeverity = Field(sa_type=StrEnumType(CrisisSeverity))
    created_at: datetime = Field(sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
