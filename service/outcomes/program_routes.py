"""The post-employment program over HTTP: the office's sessions with attendance over time, one
session's invitations, recording attendance, and one client's attendance. Every route is bound to
the caller's office (another office's records are 404). The API shapes live here, beside the only
routes that use them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from service.contacts.messaging.models import MessageStatus
from service.deps import ClockDep, CurrentUser, SessionDep
from service.outcomes import program
from service.outcomes.program import Attendance, Delivery
from service.validation import MAX_ID

router = APIRouter(prefix="/api/v1/program", tags=["program"])

Id = Annotated[int, Path(ge=1, le=MAX_ID)]


def _config(request: Request) -> program.ProgramConfig:
    return program.config_at(request.app.state.settings.config_dir / "program.toml")


class SessionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    cycle: str = Field(description='the cycle\'s month, e.g. "2027-01"')
    group_no: int
    starts_at: datetime
    duration_minutes: int
    place: str
    capacity: int
    women_only: bool


class SessionAttendance(BaseModel):
    session: SessionPublic
    invited: int
    attended: int
    absent: int
    excused: int
    rate: float | None = Field(description="attended / invited; null when nobody was invited")


class MonthAttendance(BaseModel):
    month: str = Field(description="YYYY-MM in the office's time zone")
    sessions: int
    invited: int
    attended: int
    rate: float | None


class OfficeAttendance(BaseModel):
    sessions: list[SessionAttendance]
    months: list[MonthAttendance]


class InvitationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    session_id: int
    client_id: int
    placement_id: int
    delivery: Delivery
    delivery_note: str | None
    outbox_id: int | None
    attendance: Attendance | None
    attendance_recorded_at: datetime | None
    attendance_recorded_by: int | None
    follow_up_id: int | None = Field(description="the phone follow-up a missed session made for a client at risk")


class SessionInvitation(InvitationPublic):
    client_name: str
    message_status: MessageStatus | None = Field(description="the invitation message's status; null: not sent")


class SessionDetail(BaseModel):
    session: SessionPublic
    invitations: list[SessionInvitation]


class ClientSession(BaseModel):
    session: SessionPublic
    invitation: InvitationPublic


class AttendanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attendance: Attendance


@router.get("/attendance", response_model=OfficeAttendance)
def office_attendance(
    session: SessionDep,
    user: CurrentUser,
    date_from: Annotated[date | None, Query(alias="from")] = None,
    date_to: Annotated[date | None, Query(alias="to")] = None,
):
    return program.office_attendance(session, office_id=user.office_id, date_from=date_from, date_to=date_to)


@router.get("/sessions/{session_id}", response_model=SessionDetail)
def session_detail(session_id: Id, session: SessionDep, user: CurrentUser):
    prog = program.get_session_in_office(session, office_id=user.office_id, session_id=session_id)
    rows = program.session_invitations(session, office_id=user.office_id, session_id=session_id)
    invitations = [
        SessionInvitation(
            **InvitationPublic.model_validate(inv).model_dump(), client_name=client.name, message_status=status
        )
        for inv, client, status in rows
    ]
    return SessionDetail(session=SessionPublic.model_validate(prog), invitations=invitations)


@router.post("/invitations/{invitation_id}/attendance", response_model=InvitationPublic)
def record_attendance(
    invitation_id: Id, body: AttendanceIn, request: Request, session: SessionDep, user: CurrentUser, clock: ClockDep
):
    return program.record_attendance(
        session,
        office_id=user.office_id,
        invitation_id=invitation_id,
        attendance=body.attendance,
        user_id=user.id,
        clock=clock,
        config=_config(request),
    )


@router.get("/clients/{client_id}/attendance", response_model=list[ClientSession])
def client_attendance(client_id: Id, session: SessionDep, user: CurrentUser):
    rows = program.client_attendance(session, office_id=user.office_id, client_id=client_id)
    return [
        ClientSession(session=SessionPublic.model_validate(s), invitation=InvitationPublic.model_validate(i))
        for i, s in rows
    ]
