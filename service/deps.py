"""FastAPI dependencies, declared once: the session, the signed-in user, the clock, paging."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel
from sqlmodel import Session

from service import policy
from service.accounts.models import Role, StaffUser
from service.audit import capture as audit
from service.audit.models import ActorType
from service.clock import Clock
from service.schedules.plans import PlanTemplate
from service.security import TokenSigner

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the route returns and before the response is sent
    (``scope="function"`` below): a 201 means the row is stored, and a commit the database refuses
    becomes the error response instead of a success already on its way to the client."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_clock(request: Request) -> Clock:
    return request.app.state.clock


def get_plans(request: Request) -> dict[str, PlanTemplate]:
    return request.app.state.plans


def get_signer(request: Request) -> TokenSigner:
    return request.app.state.signer


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ClockDep = Annotated[Clock, Depends(get_clock)]
PlansDep = Annotated[dict[str, PlanTemplate], Depends(get_plans)]
SignerDep = Annotated[TokenSigner, Depends(get_signer)]

_UNAUTHORIZED = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="not signed in, or the session has expired",
    headers={"WWW-Authenticate": "Bearer"},
)


def get_current_user(
    request: Request, session: SessionDep, signer: SignerDep, token: Annotated[str, Depends(oauth2_scheme)]
) -> StaffUser:
    from service.accounts import service as accounts

    user = accounts.user_for_token(session, signer.read_claims(token))
    if user is None:
        raise _UNAUTHORIZED
    return admit(request, session, user)


def admit(request: Request, session: Session, user: StaffUser) -> StaffUser:
    """After sign-in is checked (bearer token here; a page session in service/web): apply the
    access policy for this route, attribute the session's writes to the user in the audit trail,
    and record a view where the policy says so."""
    rule = policy.enforce(request, user)
    audit.bind_actor(session, audit.Actor(ActorType.user, user.id))
    if rule.audit_view is not None:
        record_type, param = rule.audit_view
        raw = request.path_params.get(param)
        record_id = int(raw) if isinstance(raw, str) and raw.isdecimal() and len(raw) <= 10 else None
        audit.record(session, action="view", record_type=record_type, record_id=record_id, office_id=user.office_id)
    return user


CurrentUser = Annotated[StaffUser, Depends(get_current_user)]


def require_role(*roles: Role):
    def check(user: CurrentUser) -> StaffUser:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="your role may not do this")
        return user

    return Depends(check)


ManagerUser = Annotated[StaffUser, require_role(Role.manager, Role.admin)]
AdminUser = Annotated[StaffUser, require_role(Role.admin)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="rows per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="rows to skip")] = 0,
) -> PageParams:
    return PageParams(limit, offset)


PageDep = Annotated[PageParams, Depends(page_params)]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
