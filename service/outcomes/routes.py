from __future__ import annotations

from datetime import date

from fastapi import APIRouter

from service.accounts import service as accounts
from service.accounts.models import Office, Role
from service.contacts import service as contacts
from service.contacts.schemas import FollowUpPublic
from service.deps import ClockDep, CurrentUser, SessionDep
from service.errors import NotFound
from service.outcomes import service as outcomes
from service.outcomes.queue import daily_queue
from service.outcomes.schemas import OutcomeCreate, OutcomePublic, OutcomeResult, Queue

router = APIRouter(prefix="/api/v1", tags=["follow-up work"])


@router.get("/queue", response_model=Queue)
def queue(
    session: SessionDep,
    user: CurrentUser,
    clock: ClockDep,
    date: date | None = None,
    worker_id: int | None = None,
):
    """The signed-in worker's follow-ups due on ``date`` (default: today in the office's time
    zone) and the overdue ones. Managers may look at a worker of their office with ``worker_id``."""
    worker = user
    if worker_id is not None and worker_id != user.id:
        if user.role == Role.worker:
            raise NotFound("worker")
        worker = accounts.get_user_in_office(session, user_id=worker_id, office_id=user.office_id)
    on = date or contacts.office_today(session.get(Office, user.office_id), clock)
    return daily_queue(session, worker=worker, on=on)


@router.post("/follow-ups/{follow_up_id}/outcome", response_model=OutcomeResult, status_code=201)
def record_outcome(follow_up_id: int, body: OutcomeCreate, session: SessionDep, user: CurrentUser, clock: ClockDep):
    r = outcomes.record_outcome(
        session,
        office_id=user.office_id,
        follow_up_id=follow_up_id,
        recorded_by=user.id,
        clock=clock,
        **body.model_dump(),
    )
    return OutcomeResult(
        outcome=OutcomePublic.model_validate(r.outcome),
        follow_up=FollowUpPublic.model_validate(r.follow_up),
        retry=FollowUpPublic.model_validate(r.retry) if r.retry else None,
        separation_required=r.separation_required,
        next_step=r.next_step,
    )
