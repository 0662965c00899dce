from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service.accounts import service as accounts
from service.accounts.models import Role
from service.accounts.schemas import (
    OfficeCreate,
    OfficePublic,
    PasswordChange,
    PasswordReset,
    Token,
    UserCreate,
    UserPublic,
)
from service.deps import (
    AdminUser,
    ClockDep,
    CurrentUser,
    ManagerUser,
    Page,
    PageDep,
    PlansDep,
    SessionDep,
    SignerDep,
)
from service.errors import NotFound
from service.validation import MAX_ID

router = APIRouter(prefix="/api/v1", tags=["accounts"])
UserId = Annotated[int, Path(ge=1, le=MAX_ID)]


_SIGNED_IN = {401: {"description": "not signed in, or the session has ended"}}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/auth/token",
    response_model=Token,
    tags=["auth"],
    responses={401: {"description": "wrong e-mail or password"}, 429: {"description": "too many failures"}},
)
def sign_in(
    request: Request,
    session: SessionDep,
    signer: SignerDep,
    clock: ClockDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> Token:
    try:
        user = accounts.authenticate(
            session, email=form.username, password=form.password, address=client_address(request), now=clock.now()
        )
    except accounts.Throttled as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, detail=exc.message, headers={"Retry-After": str(exc.retry_after)}
        ) from None
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="wrong e-mail or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Token(access_token=signer.issue(user.id, user.token_version), expires_in=signer.ttl_seconds)


@router.post("/auth/logout", status_code=204, tags=["auth"], responses=_SIGNED_IN)
def sign_out(session: SessionDep, user: CurrentUser) -> Response:
    """Ends this token and every other one the user holds."""
    accounts.sign_out(session, user=user)
    return Response(status_code=204)


@router.post("/auth/password", response_model=Token, tags=["auth"], responses=_SIGNED_IN | {422: {}})
def change_password(body: PasswordChange, session: SessionDep, signer: SignerDep, user: CurrentUser, clock: ClockDep):
    """Your own password; every earlier token ends, and a fresh one is returned."""
    accounts.change_password(
        session, user=user, old_password=body.old_password, new_password=body.new_password, now=clock.now()
    )
    return Token(access_token=signer.issue(user.id, user.token_version), expires_in=signer.ttl_seconds)


@router.post(
    "/users/{user_id}/reset-password",
    response_model=UserPublic,
    responses=_SIGNED_IN | {403: {}, 404: {}, 422: {}},
)
def reset_password(user_id: UserId, body: PasswordReset, session: SessionDep, admin: AdminUser, clock: ClockDep):
    """A temporary password; the user must change it at the next sign-in (their tokens end now)."""
    return accounts.reset_password(
        session, office_id=admin.office_id, user_id=user_id, new_password=body.new_password, now=clock.now()
    )


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
def get_office(office_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep, user: CurrentUser):
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
