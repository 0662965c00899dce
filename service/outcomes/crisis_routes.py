"""Crisis flags over HTTP: the office's flags, one flag with the signals behind it, acknowledging
and resolving, and the measures managers judge the response by. The API shapes live here too,
beside the only routes that use them."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.contacts.models import FollowUp, FollowUpStatus
from service.deps import ClockDep, CurrentUser, ManagerUser, Page, PageDep, SessionDep
from service.i18n import label
from service.outcomes import crisis
from service.outcomes.models import CrisisSeverity, CrisisSignalKind, CrisisSignalParty, CrisisStatus
from service.validation import MAX_ID, no_control_chars

router = APIRouter(prefix="/api/v1/crisis-flags", tags=["crisis flags"])

FlagId = Annotated[int, Path(ge=1, le=MAX_ID)]


class CrisisClient(BaseModel):
    id: int
    name: str
    kana: str | None
    phone: str | None


class CrisisFlagPublic(BaseModel):
    id: int
    placement_id: int
    client: CrisisClient
    severity: CrisisSeverity
    severity_label: str
    status: CrisisStatus
    owner_id: int
    opened_at: datetime
    escalated_at: datetime = Field(description="when the flag reached its present severity")
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    resolved_at: datetime | None
    resolved_by: int | None
    resolution_note: str | None
    crisis_follow_up_id: int | None
    signal_count: int
    last_signal_at: datetime | None
    signal_kinds: list[CrisisSignalKind]


class CrisisSignalPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: CrisisSignalKind
    kind_label: str = ""
    source_party: CrisisSignalParty = Field(description="from whom: client, family, employer, or the system")
    source: str = Field(description='where it came from, e.g. "outcome:123"')
    detail: str | None
    occurred_at: datetime
    recorded_by: int | None


class CrisisAlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    recipient_id: int
    severity: CrisisSeverity
    created_at: datetime
    delivered_at: datetime | None


class CrisisCall(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    due_date: date
    status: FollowUpStatus
    assignee_id: int | None


class CrisisFlagDetail(CrisisFlagPublic):
    what_to_do: str | None
    signals: list[CrisisSignalPublic]
    alerts: list[CrisisAlertPublic]
    crisis_call: CrisisCall | None


class CrisisResolve(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: str = Field(min_length=1, max_length=4000, description="how the crisis was resolved")

    check_text = field_validator("note")(no_control_chars)


class Durations(BaseModel):
    count: int
    median_minutes: float | None
    p90_minutes: float | None


class CrisisMeasures(BaseModel):
    as_of: datetime
    opened_from: date | None
    opened_to: date | None
    total: int
    by_severity: dict[str, int]
    by_status: dict[str, int]
    by_severity_and_status: dict[str, dict[str, int]]
    time_to_acknowledge: Durations = Field(
        description="from the flag reaching its present severity to its acknowledgment"
    )
    time_to_acknowledge_by_severity: dict[str, Durations]
    time_to_resolve: Durations = Field(description="from opening to resolution")
    time_to_resolve_by_severity: dict[str, Durations]
    open_by_age: dict[str, int] = Field(description="open or acknowledged flags by age: <1d, 1-3d, 3-7d, >7d")


def _public(row: crisis.FlagRow, language: str, cls: type[CrisisFlagPublic] = CrisisFlagPublic, **extra):
    f, c = row.flag, row.client
    return cls(
        id=f.id,
        placement_id=f.placement_id,
        client=CrisisClient(id=c.id, name=c.name, kana=c.kana, phone=c.phone),
        severity=f.severity,
        severity_label=label(f.severity, "crisis_severity", language),
        status=f.status,
        owner_id=f.owner_id,
        opened_at=f.opened_at,
        escalated_at=f.escalated_at,
        acknowledged_at=f.acknowledged_at,
        acknowledged_by=f.acknowledged_by,
        resolved_at=f.resolved_at,
        resolved_by=f.resolved_by,
        resolution_note=f.resolution_note,
        crisis_follow_up_id=f.crisis_follow_up_id,
        signal_count=row.signal_count,
        last_signal_at=row.last_signal_at,
        signal_kinds=row.signal_kinds,
        **extra,
    )


def _detail(session, user, flag_id: int) -> CrisisFlagDetail:
    crisis.get_flag(session, office_id=user.office_id, flag_id=flag_id)  # 404 for another office
    [row], _ = crisis.list_flags(session, office_id=user.office_id, limit=1, offset=0, flag_id=flag_id)
    lang = user.language.value
    signals = [
        CrisisSignalPublic.model_validate(s).model_copy(update={"kind_label": label(s.kind, "crisis_signal", lang)})
        for s in crisis.flag_signals(session, flag_id=flag_id)
    ]
    call = session.get(FollowUp, row.flag.crisis_follow_up_id) if row.flag.crisis_follow_up_id else None
    return _public(
        row,
        lang,
        CrisisFlagDetail,
        what_to_do=crisis.rules_for(session).guidance(row.flag.severity, lang),
        signals=signals,
        alerts=[CrisisAlertPublic.model_validate(a) for a in crisis.flag_alerts(session, flag_id=flag_id)],
        crisis_call=CrisisCall.model_validate(call) if call else None,
    )


@router.get("", response_model=Page[CrisisFlagPublic])
def list_flags(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    status: Annotated[list[CrisisStatus] | None, Query(description="one or more; default all")] = None,
    severity: Annotated[list[CrisisSeverity] | None, Query(description="one or more; default all")] = None,
    owner_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    placement_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
):
    """The office's crisis flags: open first, the most severe first, the longest waiting first."""
    rows, total = crisis.list_flags(
        session,
        office_id=user.office_id,
        limit=page.limit,
        offset=page.offset,
        statuses=status or (),
        severities=severity or (),
        owner_id=owner_id,
        placement_id=placement_id,
    )
    lang = user.language.value
    return Page(items=[_public(r, lang) for r in rows], total=total, limit=page.limit, offset=page.offset)


@router.get("/measures", response_model=CrisisMeasures)
def measures(
    session: SessionDep,
    user: ManagerUser,
    clock: ClockDep,
    opened_from: Annotated[date | None, Query(alias="from", description="opened on or after (local date)")] = None,
    opened_to: Annotated[date | None, Query(alias="to", description="opened on or before (local date)")] = None,
):
    """For managers: flags by severity and status, time to acknowledge and to resolve (median and
    90th percentile, minutes), open flags by age."""
    m = crisis.flag_measures(
        session, office_id=user.office_id, clock=clock, opened_from=opened_from, opened_to=opened_to
    )
    return CrisisMeasures.model_validate(asdict(m))


@router.get("/{flag_id}", response_model=CrisisFlagDetail)
def get_flag(flag_id: FlagId, session: SessionDep, user: CurrentUser):
    """One flag with every signal behind it (what, from whom, when), its alerts and crisis call."""
    return _detail(session, user, flag_id)


@router.post("/{flag_id}/acknowledge", response_model=CrisisFlagDetail)
def acknowledge(flag_id: FlagId, session: SessionDep, user: CurrentUser, clock: ClockDep):
    crisis.acknowledge_flag(session, office_id=user.office_id, flag_id=flag_id, user_id=user.id, clock=clock)
    return _detail(session, user, flag_id)


@router.post("/{flag_id}/resolve", response_model=CrisisFlagDetail)
def resolve(flag_id: FlagId, body: CrisisResolve, session: SessionDep, user: CurrentUser, clock: ClockDep):
    crisis.resolve_flag(
        session, office_id=user.office_id, flag_id=flag_id, user_id=user.id, note=body.note, clock=clock
    )
    return _detail(session, user, flag_id)
