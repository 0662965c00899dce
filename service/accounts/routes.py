from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from service.accounts import service as accounts
from service.accounts.models import Role
from service.accounts.schemas import OfficeCreate, OfficePublic, Token, UserCreate, UserPublic
from service.deps import (
    AdminUser,
    CurrentUser,
    ManagerUser,
    Page,
    PageDep,
    PlansDep,
    SessionDep,
    SignerDep,
)
from service.errors import NotFound

router = APIRouter(prefix="/api/v1", tags=["accounts"])


@router.post("/auth/token", response_model=Token, tags=["auth"])
def sign_in(
    session: SessionDep,
    signer: SignerDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> Token:
    user = accounts.authenticate(session, email=form.username, password=form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong e-mail or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Token(access_token=signer.issue(user.id), expires_in=signer.ttl_seconds)


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser):
    return user


@router.post("/offices", response_model=OfficePublic, status_code=201)
def create_office(body: OfficeCreate, session: SessionDep, plans: PlansDep, _: AdminUser):
    return accounts.create_office(session, **body.model_dump(), known_plans=set(plans))


@router.get("/offices", response_model=Page[OfficePublic])
def list_offices(session: SessionDep, page: PageDep, user: CurrentUser):
    if user.role != Role.admin:
        office = accounts.get_office(session, user.office_id)
        return Page(items=[office], total=1, limit=page.limit, offset=page.offset)
    rows, total = accounts.list_offices(session, limit=page.limit, offset=page.offset)
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get("/offices/{office_id}", response_model=OfficePublic)
def get_office(office_id: int, session: SessionDep, user: CurrentUser):
    if user.role != Role.admin and office_id != user.office_id:
        raise NotFound("office")
    return accounts.get_office(session, office_id)


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, session: SessionDep, _: AdminUser):
    return accounts.create_user(session, **body.model_dump())


@router.get("/users", response_model=Page[UserPublic])
def list_users(session: SessionDep, page: PageDep, user: ManagerUser):
    rows, total = accounts.list_users(session, office_id=user.office_id, limit=page.limit, offset=page.offset)
    return Page(items=rows, total=total, limit=page.limit, offset=page.offset)


@router.get("/users/{user_id}", response_model=UserPublic)
def get_user(user_id: int, session: SessionDep, user: CurrentUser):
    return accounts.get_user_in_office(session, user_id=user_id, office_id=user.office_id)
