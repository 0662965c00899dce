"""Recording outcomes: every follow-up ends in one, and an unreachable client is a signal."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from service.accounts.models import Office
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.models import FollowUp, FollowUpStatus, Placement, PlacementStatus
from service.db import utcnow
from service.errors import Conflict
from service.outcomes import crisis
from service.outcomes.models import Outcome, RiskSignal, StillEmployed

MAX_RETRIES = 2  # after the planned contact and 2 failed retries the client is "unreachable"


@dataclass
class Recorded:
    outcome: Outcome
    follow_up: FollowUp
    retry: FollowUp | None
    separation_required: bool
    next_step: str | None


def record_outcome(
    session: Session,
    *,
    office_id: int,
    follow_up_id: int,
    recorded_by: int | None,
    clock: Clock,
    reached: bool,
    still_employed: StillEmployed = StillEmployed.unknown,
    wellbeing: int | None = None,
    risk_signals: list[RiskSignal] | None = None,
    note: str | None = None,
) -> Recorded:
    fu = contacts.get_follow_up(session, office_id=office_id, follow_up_id=follow_up_id)
    if fu.status in (FollowUpStatus.done, FollowUpStatus.cancelled, FollowUpStatus.skipped):
        raise Conflict(f"this follow-up is already {fu.status.value}")
    if fu.status == FollowUpStatus.attempted:
        raise Conflict("this contact was already attempted; record the outcome on its retry")
    office = session.get(Office, office_id)
    today = contacts.office_today(office, clock)
    now = clock.now()
    late = fu.status == FollowUpStatus.missed or today > fu.window_end
    signals = list(dict.fromkeys(RiskSignal(s).value for s in (risk_signals or [])))
    retry, unreachable, next_step = None, False, None

    if reached:
        fu.status, fu.status_reason, fu.completed_at = FollowUpStatus.done, None, now
        if fu.retry_of is not None:
            root = session.get(FollowUp, fu.retry_of)
            root.status, root.completed_at = FollowUpStatus.done, now
            root.status_reason = f"reached on retry {fu.attempt}"
            root.updated_at = utcnow()
            session.add(root)
    elif fu.status == FollowUpStatus.missed:
        next_step = "still not reached; the follow-up stays missed"
    elif fu.attempt < MAX_RETRIES:
        fu.status, fu.status_reason = FollowUpStatus.attempted, "not reached"
        retry = contacts.schedule_retry(session, follow_up=fu, office=office, today=today)
        next_step = f"retry due {retry.due_date.isoformat()}"
    else:
        unreachable = True
        reason = f"unreachable after {MAX_RETRIES} retries"
        fu.status, fu.status_reason = FollowUpStatus.missed, reason
        if fu.retry_of is not None:
            root = session.get(FollowUp, fu.retry_of)
            root.status, root.status_reason, root.updated_at = FollowUpStatus.missed, reason, utcnow()
            session.add(root)
        if RiskSignal.isolation.value not in signals:
            signals.append(RiskSignal.isolation.value)
        next_step = "unreachable: consider a home visit or contacting family (with consent)"
    fu.updated_at = utcnow()
    session.add(fu)

    outcome = Outcome(
        office_id=office_id,
        follow_up_id=fu.id,
        placement_id=fu.placement_id,
        party=fu.party,
        channel=fu.channel,
        recorded_by=recorded_by,
        recorded_at=now,
        reached=reached,
        still_employed=still_employed,
        wellbeing=wellbeing,
        risk_signals=signals,
        unreachable=unreachable,
        note=note,
        late=late,
    )
    session.add(outcome)
    session.flush()
    crisis.on_outcome(session, outcome=outcome, clock=clock)  # crisis rules: flags, crisis calls, alerts

    placement = session.get(Placement, fu.placement_id)
    separation_required = still_employed == StillEmployed.no and placement.status == PlacementStatus.active
    if separation_required:
        next_step = f"record the separation: POST /api/v1/placements/{placement.id}/separation"
    return Recorded(outcome, fu, retry, separation_required, next_step)


def last_outcomes(session: Session, placement_ids: list[int]) -> dict[int, Outcome]:
    """The latest outcome of each placement, in one query."""
    if not placement_ids:
        return {}
    latest = (
        select(func.max(Outcome.id)).where(col(Outcome.placement_id).in_(placement_ids)).group_by(Outcome.placement_id)
    )
    rows = session.exec(select(Outcome).where(col(Outcome.id).in_(latest))).all()
    return {o.placement_id: o for o in rows}
