"""What happened when a follow-up was made."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.contacts.models import Channel, Party
from service.db import StrEnumType, UTCDateTime, utcnow


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
    still_employed: StillEmployed = Field(
        default=StillEmployed.unknown, sa_type=StrEnumType(StillEmployed)
    )
    wellbeing: int | None = Field(default=None, ge=1, le=5)
    risk_signals: list[str] = Field(
        default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    # Set by the system when the client could not be reached after the retries (an isolation sign).
    unreachable: bool = False
    note: str | None = Field(default=None, max_length=4000)
    late: bool = False
