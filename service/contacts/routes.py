from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.accounts.models import Role
from service.contacts import service as contacts
from service.contacts.models import PlacementStatus
from service.contacts.schemas import (
    ClientCreate,
    ClientPublic,
    ClientUpdate,
    EmployerCreate,
    EmployerPublic,
    FamilyContactCreate,
    FamilyContactPublic,
    FollowUpPublic,
    FollowUpReschedule,
    PlacementCreate,
    PlacementPublic,
    PlacementUpdate,
    SeparationCreate,
    SeparationPublic,
)
from service.deps import ClockDep, CurrentUser, Page, PageDep, PlansDep, SessionDep
from service.errors import ValidationFailed

router = APIRouter(prefix="/api/v1", tags=["contacts"])


@router.post("/clients", response_model=ClientPublic, status_code=201)
def create_client(body: ClientCreate, session: SessionDep, user: CurrentUser):
    return contacts.create_client(session, office_id=user.office_id, created_by=user.id, **body.model_dump())


@router.get("/clients", response_model=Page[ClientPublic])
def list_clients(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    q: Annotated[str | None, Query(max_length=100, description="name, kana or reference")] = None,
):
    rows, total = contacts.list_clients(session, office_id=user.office_id, limit=page.limit, offset=page.offset, q=q)
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get("/clients/{client_id}", response_model=ClientPublic)
def get_client(client_id: int, session: SessionDep, user: CurrentUser):
    return contacts.get_client(session, office_id=user.office_id, client_id=client_id)


@router.patch("/clients/{client_id}", response_model=ClientPublic)
def update_client(client_id: int, body: ClientUpdate, session: SessionDep, user: CurrentUser, clock: ClockDep):
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "category", "language"):
        if required in changes and changes[required] is None:
            raise ValidationFailed.one(required, "may not be empty")
    return contacts.update_client(session, office_id=user.office_id, client_id=client_id, clock=clock, **changes)


@router.post("/clients/{client_id}/family-contacts", response_model=FamilyContactPublic, status_code=201)
def add_family_contact(
    client_id: int, body: FamilyContactCreate, session: SessionDep, user: CurrentUser, clock: ClockDep
):
    return contacts.add_family_contact(
        session, office_id=user.office_id, client_id=client_id, clock=clock, **body.model_dump()
    )


@router.get("/clients/{client_id}/family-contacts", response_model=list[FamilyContactPublic])
def list_family_contacts(client_id: int, session: SessionDep, user: CurrentUser):
    return contacts.list_family_contacts(session, office_id=user.office_id, client_id=client_id)


@router.post("/employers", response_model=EmployerPublic, status_code=201)
def create_employer(body: EmployerCreate, session: SessionDep, user: CurrentUser):
    return contacts.create_employer(session, office_id=user.office_id, **body.model_dump())


@router.get("/employers", response_model=Page[EmployerPublic])
def list_employers(session: SessionDep, user: CurrentUser, page: PageDep):
    rows, total = contacts.list_employers(session, office_id=user.office_id, limit=page.limit, offset=page.offset)
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get("/employers/{employer_id}", response_model=EmployerPublic)
def get_employer(employer_id: int, session: SessionDep, user: CurrentUser):
    return contacts.get_employer(session, office_id=user.office_id, employer_id=employer_id)


@router.post("/placements", response_model=PlacementPublic, status_code=201)
def create_placement(body: PlacementCreate, session: SessionDep, user: CurrentUser, plans: PlansDep):
    data = body.model_dump()
    if data["worker_id"] is None:
        if user.role != Role.worker:
            raise ValidationFailed.one("worker_id", "name the support worker for this placement")
        data["worker_id"] = user.id
    return contacts.create_placement(session, office_id=user.office_id, created_by=user.id, plans=plans, **data)


@router.get("/placements", response_model=Page[PlacementPublic])
def list_placements(
    session: SessionDep,
    user: CurrentUser,
    page: PageDep,
    client_id: int | None = None,
    worker_id: int | None = None,
    status: PlacementStatus | None = None,
):
    rows, total = contacts.list_placements(
        session,
        office_id=user.office_id,
        limit=page.limit,
        offset=page.offset,
        client_id=client_id,
        worker_id=worker_id,
        status=status,
    )
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get("/placements/{placement_id}", response_model=PlacementPublic)
def get_placement(placement_id: int, session: SessionDep, user: CurrentUser):
    return contacts.get_placement(session, office_id=user.office_id, placement_id=placement_id)


@router.patch("/placements/{placement_id}", response_model=PlacementPublic)
def update_placement(
    placement_id: int,
    body: PlacementUpdate,
    session: SessionDep,
    user: CurrentUser,
    plans: PlansDep,
    clock: ClockDep,
):
    return contacts.update_placement(
        session,
        office_id=user.office_id,
        placement_id=placement_id,
        plans=plans,
        clock=clock,
        **body.model_dump(exclude_unset=True, exclude_none=True),
    )


@router.post("/placements/{placement_id}/separation", response_model=SeparationPublic, status_code=201)
def record_separation(
    placement_id: int, body: SeparationCreate, session: SessionDep, user: CurrentUser, clock: ClockDep
):
    return contacts.record_separation(
        session,
        office_id=user.office_id,
        placement_id=placement_id,
        separation_date=body.date,
        reason=body.reason,
        note=body.note,
        recorded_by=user.id,
        clock=clock,
    )


@router.get("/placements/{placement_id}/follow-ups", response_model=list[FollowUpPublic])
def list_follow_ups(placement_id: int, session: SessionDep, user: CurrentUser):
    return contacts.list_follow_ups(session, office_id=user.office_id, placement_id=placement_id)


@router.get("/follow-ups/{follow_up_id}", response_model=FollowUpPublic)
def get_follow_up(follow_up_id: int, session: SessionDep, user: CurrentUser):
    return contacts.get_follow_up(session, office_id=user.office_id, follow_up_id=follow_up_id)


@router.post("/follow-ups/{follow_up_id}/reschedule", response_model=FollowUpPublic)
def reschedule_follow_up(
    follow_up_id: int, body: FollowUpReschedule, session: SessionDep, user: CurrentUser, clock: ClockDep
):
    """Move an open (pending or missed) follow-up to another day with a reason, as the client page
    does. The day is kept as given (a closed day too: the worker chose it); its window moves with it."""
    return contacts.reschedule_follow_up(
        session,
        office_id=user.office_id,
        follow_up_id=follow_up_id,
        new_date=body.due_date,
        reason=body.reason,
        clock=clock,
    )
