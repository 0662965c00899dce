"""Manager reports: retention rates and curves, plan adherence and worker load.

Managers and admins only (a worker gets 403): the numbers cover every worker's caseload.
Everyone sees their own office only, an admin too. Dates default to today in the office's
time zone.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from service.accounts.models import Office
from service.contacts import service as contacts
from service.deps import ClockDep, ManagerUser, SessionDep
from service.outcomes import adherence as adherence_ops
from service.outcomes import retention as retention_ops
from service.outcomes.retention import Grouping
from service.outcomes.schemas import AdherenceReport, RetentionCurve, RetentionReport

router = APIRouter(prefix="/api/v1", tags=["reports"])

AsOf = Annotated[date | None, Query(description="YYYY-MM-DD; default today in the office's time zone")]
By = Annotated[Grouping, Query(description="the breakdown")]


def _today(session, user, clock) -> date:
    return contacts.office_today(session.get(Office, user.office_id), clock)


@router.get("/retention", response_model=RetentionReport)
def retention(
    session: SessionDep,
    user: ManagerUser,
    clock: ClockDep,
    as_of: AsOf = None,
    by: By = Grouping.none,
):
    """Job and employment retention at 1, 3, 6 and 12 months, per group, with the national
    reference rate. See ``service/outcomes/retention.py`` for the definitions."""
    return retention_ops.retention(
        session,
        office_id=user.office_id,
        as_of=as_of or _today(session, user, clock),
        by=by,
        language=user.language.value,
    )


@router.get("/retention/curve", response_model=RetentionCurve)
def retention_curve(
    session: SessionDep,
    user: ManagerUser,
    clock: ClockDep,
    as_of: AsOf = None,
    by: By = Grouping.none,
):
    """The Kaplan-Meier curve of days employed, per group, with the 95% Greenwood band."""
    return retention_ops.retention_curve(
        session,
        office_id=user.office_id,
        as_of=as_of or _today(session, user, clock),
        by=by,
        language=user.language.value,
    )


@router.get("/adherence", response_model=AdherenceReport, response_model_by_alias=True)
def adherence(
    session: SessionDep,
    user: ManagerUser,
    clock: ClockDep,
    date_from: Annotated[date | None, Query(alias="from", description="default: 29 days before 'to'")] = None,
    date_to: Annotated[date | None, Query(alias="to", description="default: today")] = None,
):
    """Follow-ups due in the period: done, on time, late, missed, open and reach, in total, by
    channel and by party; and each worker's caseload and overdue work as of today."""
    today = _today(session, user, clock)
    date_to = date_to or today
    return adherence_ops.adherence(
        session,
        office_id=user.office_id,
        date_from=date_from or date_to - timedelta(days=29),
        date_to=date_to,
        today=today,
        language=user.language.value,
    )
