"""The office's audit trail: read and export, for managers and admins. No route changes it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.audit import service as audit
from service.audit.models import ActorType
from service.audit.schemas import AuditEventPublic
from service.deps import ManagerUser, Page, PageDep, SessionDep
from service.validation import MAX_ID

router = APIRouter(prefix="/api/v1", tags=["audit"])

RecordType = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$", description="table name, e.g. client")]
RecordId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
ActorId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="staff user id (or client id for links)")]
Since = Annotated[datetime | None, Query(description="from this instant (inclusive)")]
Until = Annotated[datetime | None, Query(description="up to this instant (exclusive)")]

_RESPONSES = {401: {"description": "not signed in"}, 403: {"description": "managers and admins only"}}


def _check_zone(**instants: datetime | None) -> None:
    from service.errors import ValidationFailed

    for name, value in instants.items():
        if value is not None and value.tzinfo is None:
            raise ValidationFailed.one(name, "give a time zone, e.g. 2026-04-01T00:00:00+09:00")


@router.get("/audit", response_model=Page[AuditEventPublic], responses=_RESPONSES | {422: {}})
def list_audit_events(
    session: SessionDep,
    user: ManagerUser,
    page: PageDep,
    record_type: RecordType = None,
    record_id: RecordId = None,
    actor_type: ActorType | None = None,
    actor_id: ActorId = None,
    since: Since = None,
    until: Until = None,
):
    _check_zone(since=since, until=until)
    rows, total = audit.list_events(
        session,
        office_id=user.office_id,
        limit=page.limit,
        offset=page.offset,
        record_type=record_type,
        record_id=record_id,
        actor_type=actor_type,
        actor_id=actor_id,
        since=since,
        until=until,
    )
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/audit.csv",
    response_class=Response,
    responses=_RESPONSES | {200: {"content": {"text/csv": {}}, "description": "the trail as CSV"}, 422: {}},
)
def export_audit_events(
    session: SessionDep,
    user: ManagerUser,
    record_type: RecordType = None,
    record_id: RecordId = None,
    actor_type: ActorType | None = None,
    actor_id: ActorId = None,
    since: Since = None,
    until: Until = None,
):
    _check_zone(since=since, until=until)
    text = "".join(
        audit.export_csv(
            session,
            office_id=user.office_id,
            record_type=record_type,
            record_id=record_id,
            actor_type=actor_type,
            actor_id=actor_id,
            since=since,
            until=until,
        )
    )
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )
