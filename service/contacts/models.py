"""Clients, their family contacts, employers, placements, separations and follow-ups."""

from __future__ import annotations

import datetime as dt
import enum
from datetime import date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.accounts.models import Language
from service.db import StrEnumType, UTCDateTime, partial_index, utcnow


class ClientCategory(enum.StrEnum):
    needy_person = "needy_person"  # 生活困窮者
    public_assistance = "public_assistance"  # 被保護者


class EmploymentType(enum.StrEnum):
    general = "general"  # 一般就労
    certified_training = "certified_training"  # 認定就労訓練（雇用型）
    other = "other"


class PlacementStatus(enum.StrEnum):
    active = "active"
    separated = "separated"
    completed = "completed"


class SeparationReason(enum.StrEnum):
    voluntary = "voluntary"
    dismissed = "dismissed"
    contract_ended = "contract_ended"
    health = "health"
    other = "other"


class Party(enum.StrEnum):
    client = "client"
    family = "family"
    employer = "employer"


class Channel(enum.StrEnum):
    phone = "phone"
    sms = "sms"
    email = "email"
    voice = "voice"
    visit = "visit"
    meeting = "meeting"


AUTOMATED_CHANNELS = frozenset({Channel.sms, Channel.email, Channel.voice})


class FollowUpKind(enum.StrEnum):
    check_in = "check_in"
    three_party_meeting = "three_party_meeting"
    employer_visit = "employer_visit"
    family_contact = "family_contact"
    final_review = "final_review"
    separation_call = "separation_call"
    retry = "retry"
    crisis_call = "crisis_call"  # made by a crisis flag (service/outcomes/crisis.py)
    missed_session_call = "missed_session_call"  # an at-risk client missed a program session (program.py)


class Sex(enum.StrEnum):
    """Optional and sensitive: used only to offer women-only program sessions."""

    female = "female"
    male = "male"
    other = "other"
    unspecified = "unspecified"


class FollowUpStatus(enum.StrEnum):
    pending = "pending"
    done = "done"
    attempted = "attempted"
    missed = "missed"
    cancelled = "cancelled"
    skipped = "skipped"


class Client(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("office_id", "ref", name="uq_client_office_ref"),)

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    ref: str | None = Field(default=None, max_length=64)  # the office's own reference number
    name: str = Field(max_length=200)
    kana: str | None = Field(default=None, max_length=200)
    # E.164; indexed: every inbound SMS finds its sender by it (service/outcomes/answers.py)
    phone: str | None = Field(default=None, max_length=32, index=True)
    email: str | None = Field(default=None, max_length=320)
    address: str | None = Field(default=None, max_length=500)
    language: Language = Field(default=Language.ja, sa_type=StrEnumType(Language))
    category: ClientCategory = Field(sa_type=StrEnumType(ClientCategory))
    consent_automated: bool = False  # automated check-in messages
    consent_family: bool = False  # contacting family
    consent_employer: bool = False  # contacting the employer
    # Shift workers may want their own window for automated messages ("HH:MM").
    send_window_start: str | None = Field(default=None, max_length=5)
    send_window_end: str | None = Field(default=None, max_length=5)
    # STOP / 停止: no automated message goes out while this is set.
    opted_out_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    opted_out_via: str | None = Field(default=None, max_length=32)
    # Optional and sensitive (women-only program sessions); never logged nor exported.
    sex: Sex | None = Field(default=None, sa_type=StrEnumType(Sex))
    created_by: int | None = Field(default=None, foreign_key="staff_user.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class FamilyContact(SQLModel, table=True):
    __tablename__ = "family_contact"

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    name: str = Field(max_length=200)
    relationship: str = Field(max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=320)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Employer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    name: str = Field(max_length=200)
    address: str | None = Field(default=None, max_length=500)
    supervisor_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=320)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Placement(SQLModel, table=True):
    # Retention (service/outcomes/retention.py): the office's placements by start date with
    # every group key, and the office's clients in order (who has several placements).
    __table_args__ = (
        sa.Index(
            "ix_placement_retention",
            "office_id",
            "start_date",
            "worker_id",
            "employer_id",
            "employment_type",
            "client_id",
        ),
        sa.Index("ix_placement_office_client", "office_id", "client_id", "start_date"),
        sa.Index("ix_placement_worker_start", "office_id", "worker_id", "start_date"),  # by worker (0018)
        # The separated ones by end date, with every group key (migration 0017).
        partial_index(
            "ix_placement_separated",
            "office_id",
            "separated_on",
            "start_date",
            "worker_id",
            "employer_id",
            "employment_type",
            "client_id",
            where="separated_on IS NOT NULL",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    client_id: int = Field(foreign_key="client.id", index=True)
    employer_id: int = Field(foreign_key="employer.id", index=True)
    job_title: str = Field(max_length=200)
    employment_type: EmploymentType = Field(sa_type=StrEnumType(EmploymentType))
    start_date: date
    weekly_hours: float | None = None
    worker_id: int = Field(foreign_key="staff_user.id", index=True)
    plan: str = Field(max_length=64)
    status: PlacementStatus = Field(default=PlacementStatus.active, sa_type=StrEnumType(PlacementStatus))
    # The separation's date (``Separation.date``), kept on the placement too so that retention
    # reads one table's indexes; written with the separation (``record_separation``).
    separated_on: date | None = None
    created_by: int | None = Field(default=None, foreign_key="staff_user.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Separation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    placement_id: int = Field(foreign_key="placement.id", sa_column_kwargs={"unique": True})
    date: dt.date
    reason: SeparationReason = Field(sa_type=StrEnumType(SeparationReason))
    note: str | None = Field(default=None, max_length=2000)
    recorded_by: int | None = Field(default=None, foreign_key="staff_user.id")
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class FollowUp(SQLModel, table=True):
    __tablename__ = "follow_up"
    __table_args__ = (
        # The worker's queue: my pending work up to a date.
        sa.Index("ix_follow_up_queue", "assignee_id", "status", "due_date"),
        # The ticks: everything pending whose window has passed.
        sa.Index("ix_follow_up_status_window", "status", "window_end"),
    )

    id: int | None = Field(default=None, primary_key=True)
    office_id: int = Field(foreign_key="office.id", index=True)
    placement_id: int = Field(foreign_key="placement.id", index=True)
    party: Party = Field(sa_type=StrEnumType(Party))
    channel: Channel = Field(sa_type=StrEnumType(Channel))
    kind: FollowUpKind = Field(sa_type=StrEnumType(FollowUpKind))
    due_date: date  # a local date in the office's time zone
    window_days: int = 0
    window_end: date  # last day it still counts as on time: due_date + window_days
    automated: bool = False
    status: FollowUpStatus = Field(default=FollowUpStatus.pending, sa_type=StrEnumType(FollowUpStatus))
    status_reason: str | None = Field(default=None, max_length=500)
    assignee_id: int | None = Field(default=None, foreign_key="staff_user.id")
    step_index: int | None = None  # which step of the plan template made it
    needs_consent: bool = False
    retry_of: int | None = Field(default=None, foreign_key="follow_up.id")
    attempt: int = 0  # 0 for the planned contact, 1 and 2 for retries
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
