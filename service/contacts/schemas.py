from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.accounts.models import Language
from service.contacts.models import (
    Channel,
    ClientCategory,
    EmploymentType,
    FollowUpKind,
    FollowUpStatus,
    Party,
    PlacementStatus,
    SeparationReason,
    Sex,
)
from service.validation import MAX_ID, OptionalEmail, OptionalPhone, no_control_chars

Name = Field(min_length=1, max_length=200)
# Later start dates are typing mistakes, and the plan's dates would run past the calendar.
LATEST_START = date(2100, 1, 1)


def _id(description: str | None = None):
    return Field(ge=1, le=MAX_ID, description=description)


class _In(BaseModel):
    # Unknown fields are refused, so a caller cannot slip in office_id or ids.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    check_text = field_validator("*")(no_control_chars)


class ClientBase(_In):
    name: str = Name
    kana: str | None = Field(default=None, max_length=200)
    phone: OptionalPhone = None
    email: OptionalEmail = None
    address: str | None = Field(default=None, max_length=500)
    language: Language = Language.ja
    category: ClientCategory
    consent_automated: bool = False
    consent_family: bool = False
    consent_employer: bool = False
    sex: Sex | None = Field(default=None, description="optional and sensitive: only for women-only program sessions")


class ClientCreate(ClientBase):
    ref: str | None = Field(default=None, max_length=64)


class ClientUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    kana: str | None = Field(default=None, max_length=200)
    phone: OptionalPhone = None
    email: OptionalEmail = None
    address: str | None = Field(default=None, max_length=500)
    language: Language | None = None
    category: ClientCategory | None = None
    consent_automated: bool | None = None
    consent_family: bool | None = None
    consent_employer: bool | None = None
    sex: Sex | None = None


class ClientPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    office_id: int
    ref: str | None
    name: str
    kana: str | None
    phone: str | None
    email: str | None
    address: str | None
    language: Language
    category: ClientCategory
    consent_automated: bool
    consent_family: bool
    consent_employer: bool
    sex: Sex | None = None
    created_at: datetime
    # Set only by the client (an SMS STOP word, "stop" on a reply page); never by a create or
    # update payload, which refuses unknown fields.
    opted_out_at: datetime | None = Field(default=None, description="when the client stopped automated messages")
    opted_out_via: str | None = Field(default=None, description="how: sms (a STOP word) or link (the reply page)")


class FamilyContactCreate(_In):
    name: str = Name
    relationship: str = Field(min_length=1, max_length=100)
    phone: OptionalPhone = None
    email: OptionalEmail = None


class FamilyContactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    client_id: int
    name: str
    relationship: str
    phone: str | None
    email: str | None


class EmployerCreate(_In):
    name: str = Name
    address: str | None = Field(default=None, max_length=500)
    supervisor_name: str | None = Field(default=None, max_length=200)
    phone: OptionalPhone = None
    email: OptionalEmail = None


class EmployerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    office_id: int
    name: str
    address: str | None
    supervisor_name: str | None
    phone: str | None
    email: str | None


class PlacementCreate(_In):
    client_id: int = _id()
    employer_id: int = _id()
    job_title: str = Name
    employment_type: EmploymentType
    start_date: date = Field(lt=LATEST_START)
    weekly_hours: float | None = Field(default=None, gt=0, le=80)
    worker_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="defaults to the caller")
    plan: str | None = Field(default=None, max_length=64, description="defaults to the office's plan")


class PlacementUpdate(_In):
    start_date: date | None = Field(default=None, lt=LATEST_START)
    worker_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    plan: str | None = Field(default=None, max_length=64)
    job_title: str | None = Field(default=None, min_length=1, max_length=200)
    weekly_hours: float | None = Field(default=None, gt=0, le=80)


class PlacementPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    office_id: int
    client_id: int
    employer_id: int
    job_title: str
    employment_type: EmploymentType
    start_date: date
    weekly_hours: float | None
    worker_id: int
    plan: str
    status: PlacementStatus


class SeparationCreate(_In):
    date: date
    reason: SeparationReason
    note: str | None = Field(default=None, max_length=2000)


class SeparationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    placement_id: int
    date: date
    reason: SeparationReason
    note: str | None
    recorded_at: datetime


class FollowUpPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    placement_id: int
    party: Party
    channel: Channel
    kind: FollowUpKind
    due_date: date
    window_days: int
    window_end: date
    automated: bool
    status: FollowUpStatus
    status_reason: str | None
    assignee_id: int | None
    attempt: int
    retry_of: int | None
    completed_at: datetime | None


class FollowUpReschedule(_In):
    """Move an open follow-up to another day, as the client page does; the reason is kept on the follow-up."""

    due_date: date = Field(description="the new day (office's calendar): today or later, at most a year ahead")
    reason: str = Field(max_length=300, description="why the day moved (required, not blank)")
