"""Page sessions and CSRF.

* Signing in goes through ``service.accounts.service.authenticate`` (the API's own check and
  throttle). A session is a row in ``web_session``; the cookie holds a random token (only its
  SHA-256 is stored): HttpOnly, SameSite=Lax, Secure when ``public_url`` is https.
* Signing out deletes the row and calls ``accounts.sign_out`` (every token and session of the
  user ends). A user's password change or reset ends the sessions too (token_version).
* CSRF: every form carries ``csrf_token``; it is an HMAC of the session token (or, before
  signing in, of a random ``teichaku_pre`` cookie) with the secret key. Every POST checks it
  (403 without or with a wrong one); GET never changes state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy import delete
from sqlmodel import Session, select

from service.accounts import service as accounts
from service.accounts.models import Role, StaffUser
from service.db import utcnow
from service.deps import SessionDep, admit
from service.web.models import WebSession

SESSION_COOKIE = "teichaku_session"
PRE_COOKIE = "teichaku_pre"  # before signing in: what the sign-in form's CSRF token is bound to
SESSION_TTL = timedelta(hours=12)
CSRF_FIELD = "csrf_token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _secure(request: Request) -> bool:
    return request.app.state.settings.public_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=_secure(request), path="/")


def start_session(request: Request, response: Response, session: Session, user: StaffUser) -> None:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.exec(delete(WebSession).where(WebSession.expires_at < now))
    session.add(
        WebSession(
            token_hash=_hash(token), user_id=user.id, token_version=user.token_version, expires_at=now + SESSION_TTL
        )
    )
    session.flush()
    set_cookie(request, response, SESSION_COOKIE, token, int(SESSION_TTL.total_seconds()))
    response.delete_cookie(PRE_COOKIE, path="/")


def end_session(request: Request, response: Response, session: Session, user: StaffUser) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        session.exec(delete(WebSession).where(WebSession.token_hash == _hash(token)))
    accounts.sign_out(session, user=user)
    response.delete_cookie(SESSION_COOKIE, path="/")


def session_user(request: Request, session: Session) -> StaffUser | None:
    """The signed-in user of this browser, or None (no cookie, expired, signed out)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 100:
        return None
    row = session.exec(select(WebSession).where(WebSession.token_hash == _hash(token))).first()
    if row is None or row.expires_at <= utcnow():
        return None
    user = session.get(StaffUser, row.user_id)
    if user is None or not user.is_active or user.token_version != row.token_version:
        return None
    return user


class SignInRequired(Exception):
    """Raised by :func:`page_user`; the app answers with a redirect to the sign-in page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def sign_in_redirect_url(next_url: str) -> str:
    return "/sign-in?next=" + quote(next_url, safe="")


def page_user(request: Request, session: SessionDep) -> StaffUser:
    """The dependency of every signed-in page: the user, with the access policy applied
    (service/policy.py lists every page route) and the audit actor bound."""
    user = session_user(request, session)
    if user is None:
        raise SignInRequired(request.url.path)
    request.state.user = user
    return admit(request, session, user)


PageUser = Annotated[StaffUser, Depends(page_user)]


def require_page_role(*roles: Role):
    def check(user: PageUser) -> StaffUser:
        if user.role not in roles:
            raise HTTPException(403, detail="your role may not do this")
        return user

    return Depends(check)


ManagerPageUser = Annotated[StaffUser, require_page_role(Role.manager, Role.admin)]


# -- CSRF ---------------------------------------------------------------------------------------


def _mac(request: Request, value: str) -> str:
    key = request.app.state.settings.secret_key.encode()
    return hmac.new(key, b"csrf:" + value.encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Request, response: Response | None = None) -> str:
    """The token to put in this page's forms. Before signing in, a ``teichaku_pre`` cookie is
    made (its value is set on ``request.state`` and the caller's response via ``pending_cookie``)."""
    bound = request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)
    if not bound:
        bound = getattr(request.state, "pre_cookie", None) or secrets.token_urlsafe(24)
        request.state.pre_cookie = bound
    return _mac(request, bound)


def check_csrf(request: Request, submitted: str | None) -> None:
    bound = request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)
    if not bound or not submitted or not hmac.compare_digest(_mac(request, bound), submitted):
        raise HTTPException(403, detail="the form has expired or did not come from this site; reload and try again")


async def csrf_protect(request: Request) -> None:
    """Dependency for every page POST (the form field ``csrf_token``)."""
    form = await request.form()
    value = form.get(CSRF_FIELD)
    check_csrf(request, value if isinstance(value, str) else None)


CSRF = Depends(csrf_protect)
