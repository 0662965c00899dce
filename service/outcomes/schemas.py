from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from service.contacts.models import Channel, FollowUpKind, Party
from service.contacts.schemas import FollowUpPublic
from service.outcomes.models import RiskSignal, StillEmployed


class OutcomeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reached: bool
    still_employed: StillEmployed = StillEmployed.unknown
    wellbeing: int | None = Field(default=None, ge=1, le=5, description="1 (very bad) to 5 (very good)")
    risk_signals: list[RiskSignal] = Field(default_factory=list, max_length=len(RiskSignal))
    note: str | None = Field(default=None, max_length=4000)


class OutcomePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    follow_up_id: int
    placement_id: int
    party: Party
    channel: Channel
    recorded_by: int | None
    recorded_at: datetime
    reached: bool
    still_employed: StillEmployed
    wellbeing: int | None
    risk_signals: list[str]
    unreachable: bool
    note: str | None
    late: bool


class OutcomeResult(BaseModel):
    outcome: OutcomePublic
    follow_up: FollowUpPublic
    retry: FollowUpPublic | None = None
    separation_required: bool = False
    next_step: str | None = Field(default=None, description="what the worker should do next, if anything")


class QueueContact(BaseModel):
    name: str | None
    relationship: str | None = None
    phone: str | None
    email: str | None
    address: str | None


class QueueClient(BaseModel):
    id: int
    name: str
    kana: str | None


class QueueItem(BaseModel):
    follow_up_id: int
    placement_id: int
    group: str = Field(description="crisis, overdue or today")
    due_date: date
    days_overdue: int
    party: Party
    channel: Channel
    kind: FollowUpKind
    attempt: int
    action: str
    client: QueueClient
    contact: QueueContact
    employer_name: str | None
    last_outcome: OutcomePublic | None


class Queue(BaseModel):
    date: date
    worker_id: int
    worker_name: str
    counts: dict[str, int]
    items: list[QueueItem]
