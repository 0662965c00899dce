from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.contacts.models import Channel, FollowUpKind, Party
from service.contacts.schemas import FollowUpPublic
from service.outcomes.models import RiskSignal, StillEmployed
from service.validation import no_control_chars


class OutcomeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reached: bool
    still_employed: StillEmployed = StillEmployed.unknown
    wellbeing: int | None = Field(default=None, ge=1, le=5, description="1 (very bad) to 5 (very good)")
    risk_signals: list[RiskSignal] = Field(default_factory=list, max_length=len(RiskSignal))
    note: str | None = Field(default=None, max_length=4000)

    check_text = field_validator("note")(no_control_chars)


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
    opted_out_at: datetime | None = Field(default=None, description="when the client stopped automated messages")
    opted_out_via: str | None = Field(default=None, description="how: sms (a STOP word) or link (the reply page)")


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
    reason: str | None = Field(default=None, description="why this is here, e.g. a message that could not be delivered")
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


# -- retention (service/outcomes/retention.py) ----------------------------------------------


class RetentionCell(BaseModel):
    eligible: int = Field(description="placements (or spells) whose N-month date is on or before as_of")
    retained: int = Field(description="of those, still employed after the N-month date")
    rate: float | None = Field(description="retained / eligible; null when nothing is eligible")


class RetentionGroup(BaseModel):
    key: str
    label: str
    started: int = Field(description="placements (or spells) started on or before as_of, mature or not")
    months: dict[str, RetentionCell] = Field(description='per N months: "1", "3", "6", "12"')


class RetentionReport(BaseModel):
    as_of: date
    by: str
    reference_rate: float = Field(description="the national reference line (0.5)")
    months: list[int]
    groups: list[RetentionGroup] = Field(description="job retention: one unit per placement")
    employment: list[RetentionGroup] = Field(
        description="employment retention: one unit per employment spell of a client, grouped by "
        "the placement that started the spell"
    )


class CurvePoint(BaseModel):
    time: int = Field(description="days since the start")
    at_risk: int
    events: int = Field(description="separations on this day")
    censored: int = Field(description="still employed, observed up to this day")
    survival: float
    lower: float = Field(description="95% band, exponential Greenwood")
    upper: float


class CurveGroup(BaseModel):
    key: str
    label: str
    started: int
    events: int
    points: list[CurvePoint]


class RetentionCurve(BaseModel):
    as_of: date
    by: str
    confidence: float
    reference_rate: float
    groups: list[CurveGroup]


# -- plan adherence (service/outcomes/adherence.py) -----------------------------------------


class AdherenceCounts(BaseModel):
    due: int = Field(description="follow-ups due in the period; retries, cancelled and skipped ones excluded")
    done: int
    on_time: int = Field(description="done on or before the last day of the window (office time zone)")
    late: int = Field(description="done after the window")
    missed: int = Field(description="window passed, never reached")
    open: int = Field(description="still pending, or attempted with a retry under way")
    done_rate: float | None
    on_time_rate: float | None
    attempts: int = Field(description="outcomes recorded on follow-ups (retries included) due in the period")
    contacts: int = Field(description="of those, a two-way exchange (reached)")
    reach_rate: float | None


class AdherenceBreakdown(AdherenceCounts):
    key: str
    label: str


class WorkerLoad(BaseModel):
    worker_id: int
    name: str
    caseload: int = Field(description="active placements")
    overdue: int = Field(description="pending worker follow-ups due before today")
    oldest_overdue: date | None


class AdherenceReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    period_from: date = Field(serialization_alias="from")
    period_to: date = Field(serialization_alias="to")
    today: date
    total: AdherenceCounts
    by_channel: list[AdherenceBreakdown]
    by_party: list[AdherenceBreakdown]
    workers: list[WorkerLoad]
