"""Offices and staff accounts."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from service.accounts.models import DEFAULT_CLOSED_DAYS, Language, Office, Role, StaffUser
from service.errors import Conflict, NotFound, ValidationFailed
from service.security import check_password_strength, hash_password, verify_password
from service.validation import parse_email, parse_timezone


def create_office(
    session: Session,
    *,
    name: str,
    timezone: str = "Asia/Tokyo",
    closed_days: list[str] | None = None,
    default_plan: str = "standard-3m",
    phone: str | None = None,
    known_plans: set[str] | None = None,
) -> Office:
    try:
        parse_timezone(timezone)
    except ValueError as exc:
        raise ValidationFailed.one("timezone", str(exc)) from exc
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


def authenticate(session: Session, *, email: str, password: str) -> StaffUser | None:
    """The user, or None; the same work is done whether or not the account exists."""
    user = session.exec(select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower())).first()
    if user is None or not user.is_active:
        verify_password(password, None)
        return None
    return user if verify_password(password, user.password_hash) else None


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
