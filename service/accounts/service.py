"""Offices and staff accounts."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from service.accounts.models import DEFAULT_CLOSED_DAYS, Language, Office, Role, SignInFailure, StaffUser
from service.audit import capture as audit
from service.audit.models import ActorType
from service.db import utcnow
from service.errors import Conflict, DomainError, FieldError, NotFound, ValidationFailed
from service.schedules.calendar import DEFAULT_COUNTRY, check_holiday_region
from service.security import check_password_strength, hash_password, verify_password
from service.validation import parse_email, parse_timezone


def create_office(
    session: Session,
    *,
    name: str,
    timezone: str = "Asia/Tokyo",
    closed_days: list[str] | None = None,
    holiday_country: str = DEFAULT_COUNTRY,
    holiday_subdivision: str | None = None,
    default_plan: str = "standard-3m",
    phone: str | None = None,
    known_plans: set[str] | None = None,
) -> Office:
    try:
        parse_timezone(timezone)
    except ValueError as exc:
        raise ValidationFailed.one("timezone", str(exc)) from exc
    if wrong := check_holiday_region(holiday_country, holiday_subdivision):
        raise ValidationFailed([FieldError(field, message) for field, message in wrong])
    if known_plans is not None and default_plan not in known_plans:
        raise ValidationFailed.one(
            "default_plan", f"no plan named {default_plan!r}; known: {', '.join(sorted(known_plans))}"
        )
    if session.exec(select(Office).where(Office.name == name)).first():
        raise Conflict(f"an office named {name!r} already exists")
    office = Office(
        name=name,
        timezone=timezone,
        closed_days=list(DEFAULT_CLOSED_DAYS if closed_days is None else closed_days),
        holiday_country=holiday_country,
        holiday_subdivision=holiday_subdivision,
        default_plan=default_plan,
        phone=phone,
    )
    session.add(office)
    session.flush()
    return office


def get_office(session: Session, office_id: int) -> Office:
    office = session.get(Office, office_id)
    if office is None:
        raise NotFound("office")
    return office


def find_office(session: Session, name_or_id: str) -> Office:
    if name_or_id.isdigit():
        office = session.get(Office, int(name_or_id))
    else:
        office = session.exec(select(Office).where(Office.name == name_or_id)).first()
    if office is None:
        raise NotFound(f"office {name_or_id!r}")
    return office


def list_offices(session: Session, *, limit: int, offset: int) -> tuple[list[Office], int]:
    total = session.exec(select(func.count()).select_from(Office)).one()
    rows = session.exec(select(Office).order_by(Office.id).limit(limit).offset(offset)).all()
    return list(rows), total


def create_user(
    session: Session,
    *,
    email: str,
    name: str,
    role: Role,
    office_id: int,
    password: str,
    language: Language = Language.ja,
) -> StaffUser:
    try:
        email = parse_email(email)
    except ValueError as exc:
        raise ValidationFailed.one("email", str(exc)) from exc
    if problem := check_password_strength(password):
        raise ValidationFailed.one("password", problem)
    if session.get(Office, office_id) is None:
        raise ValidationFailed.one("office_id", "no such office")
    if session.exec(select(StaffUser).where(func.lower(StaffUser.email) == email.lower())).first():
        raise Conflict("a user with this e-mail already exists")
    user = StaffUser(
        email=email,
        name=name,
        role=Role(role),
        office_id=office_id,
        language=Language(language),
        password_hash=hash_password(password),
    )
    session.add(user)
    session.flush()
    return user


# Throttling: this many failed sign-ins per account, and per client address, in the window.
MAX_FAILURES = 10
FAILURE_WINDOW = timedelta(minutes=15)


class Throttled(DomainError):
    """Too many failed sign-ins; try again after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed sign-ins; try again later")
        self.retry_after = retry_after


def _account_key(email: str) -> str:
    # The e-mail typed is not kept, only a hash of it (the same for an account that does not exist).
    return hashlib.sha256(("teichaku-sign-in:" + email.strip().lower()).encode()).hexdigest()


def _retry_after(session: Session, where, now: datetime) -> int:
    since = now - FAILURE_WINDOW
    recent = select(SignInFailure.at).where(where, SignInFailure.at > since).order_by(col(SignInFailure.at).desc())
    rows = session.exec(recent.limit(MAX_FAILURES)).all()
    if len(rows) < MAX_FAILURES:
        return 0
    # Free again when the oldest of the last MAX_FAILURES leaves the window.
    return max(1, math.ceil((rows[-1] + FAILURE_WINDOW - now).total_seconds()))


def _record_failure(session: Session, *, key: str, address: str, now: datetime) -> None:
    # In its own transaction: the request's own work is rolled back when the sign-in is refused.
    with Session(session.get_bind()) as own:
        own.add(SignInFailure(account_key=key, address=address, at=now))
        own.exec(delete(SignInFailure).where(col(SignInFailure.at) < now - timedelta(days=1)))
        own.commit()


def authenticate(
    session: Session,
    *,
    email: str,
    password: str,
    address: str | None = None,
    now: datetime | None = None,
) -> StaffUser | None:
    """The user, or None; the same work is done whether or not the account exists.

    Every sign-in form (the API's and the pages') goes through here, so all of them are
    throttled: after MAX_FAILURES failures in FAILURE_WINDOW for the account or for the client
    address, ``Throttled`` is raised (also for an account that does not exist) until the window
    moves on. A success clears the account's failures.
    """
    now = now or utcnow()
    key, address = _account_key(email), (address or "unknown")[:64]
    wait = max(
        _retry_after(session, SignInFailure.account_key == key, now),
        _retry_after(session, SignInFailure.address == address, now),
    )
    if wait:
        raise Throttled(wait)
    # A NUL or an over-long "address" names no account (and PostgreSQL refuses NUL in text).
    storable = "\x00" not in email and len(email) <= 320
    user = (
        session.exec(select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower())).first()
        if storable
        else None
    )
    if user is None or not user.is_active:
        verify_password(password, None)
        user = None
    elif not verify_password(password, user.password_hash):
        user = None
    if user is None:
        _record_failure(session, key=key, address=address, now=now)
        return None
    session.exec(delete(SignInFailure).where(col(SignInFailure.account_key) == key))
    audit.bind_actor(session, audit.Actor(ActorType.user, user.id))
    audit.record(session, action="sign_in", record_type="staff_user", record_id=user.id, office_id=user.office_id)
    return user


def user_for_token(session: Session, claims: tuple[int, int] | None) -> StaffUser | None:
    """The active user a token's claims name, if the token has not been ended since."""
    if claims is None:
        return None
    user_id, version = claims
    user = session.get(StaffUser, user_id)
    if user is None or not user.is_active or user.token_version != version:
        return None
    return user


def sign_out(session: Session, *, user: StaffUser) -> None:
    """Ends every token (and page session) the user holds."""
    user.token_version += 1
    session.add(user)
    audit.record(session, action="sign_out", record_type="staff_user", record_id=user.id, office_id=user.office_id)
    session.flush()


def _password_problems(password: str, user: StaffUser, field: str) -> list[FieldError]:
    problems = []
    if problem := check_password_strength(password):
        problems.append(FieldError(field, problem))
    email = user.email.lower()
    local = email.split("@", 1)[0]
    lowered = password.lower()
    if email in lowered or (len(local) >= 3 and local in lowered):
        problems.append(FieldError(field, "must not contain your e-mail address"))
    return problems


def change_password(
    session: Session, *, user: StaffUser, old_password: str, new_password: str, now: datetime | None = None
) -> StaffUser:
    """The user's own change; ends every token issued before it."""
    if not verify_password(old_password, user.password_hash):
        raise ValidationFailed.one("old_password", "is not your current password")
    problems = _password_problems(new_password, user, "new_password")
    if new_password == old_password:
        problems.append(FieldError("new_password", "must differ from the current password"))
    if problems:
        raise ValidationFailed(problems)
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.password_changed_at = now or utcnow()
    user.token_version += 1
    session.add(user)
    session.flush()
    return user


def reset_password(
    session: Session, *, office_id: int, user_id: int, new_password: str, now: datetime | None = None
) -> StaffUser:
    """An admin sets a temporary password; the user must change it at the next sign-in."""
    user = get_user_in_office(session, user_id=user_id, office_id=office_id)
    if problems := _password_problems(new_password, user, "new_password"):
        raise ValidationFailed(problems)
    user.password_hash = hash_password(new_password)
    user.must_change_password = True
    user.password_changed_at = now or utcnow()
    user.token_version += 1
    session.add(user)
    session.flush()
    return user


def get_user_in_office(session: Session, *, user_id: int, office_id: int) -> StaffUser:
    user = session.get(StaffUser, user_id)
    if user is None or user.office_id != office_id:
        raise NotFound("user")
    return user


def find_user_by_email(session: Session, email: str) -> StaffUser:
    user = session.exec(select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower())).first()
    if user is None:
        raise NotFound(f"user {email!r}")
    return user


def list_users(session: Session, *, office_id: int, limit: int, offset: int) -> tuple[list[StaffUser], int]:
    where = StaffUser.office_id == office_id
    total = session.exec(select(func.count()).select_from(StaffUser).where(where)).one()
    rows = session.exec(select(StaffUser).where(where).order_by(StaffUser.id).limit(limit).offset(offset)).all()
    return list(rows), total
