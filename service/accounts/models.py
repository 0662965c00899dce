"""Offices and the staff who work in them."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.db import StrEnumType, UTCDateTime, utcnow

# Municipal offices close for the New Year (12/29 to 1/3) on top of public holidays.
DEFAULT_CLOSED_DAYS = ["12-29", "12-30", "12-31", "01-01", "01-02", "01-03"]


class Role(enum.StrEnum):
    worker = "worker"
    manager = "manager"
    admin = "admin"


class Language(enum.StrEnum):
    ja = "ja"
    en = "en"


class Office(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    timezone: str = Field(default="Asia/Tokyo", max_length=64)
    # Recurring "MM-DD" or one-off "YYYY-MM-DD" days the office is closed beyond public holidays.
    closed_days: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CLOSED_DAYS), sa_column=sa.Column(sa.JSON, nullable=False)
    )
    # Whose public holidays and weekend the office keeps: ISO 3166-1 country, optional subdivision
    # (a US state, a German Land) as the ``holidays`` package names them.
    holiday_country: str = Field(default="JP", max_length=2, sa_column_kwargs={"server_default": "JP"})
    holiday_subdivision: str | None = Field(default=None, max_length=8)
    default_plan: str = Field(default="standard-3m", max_length=64)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=320)  # shown to clients with the phone
    # Automated messages only between these local times ("HH:MM"); None: the deployment default.
    send_window_start: str | None = Field(default=None, max_length=5)
    send_window_end: str | None = Field(default=None, max_length=5)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StaffUser(SQLModel, table=True):
    __tablename__ = "staff_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True})
    name: str = Field(max_length=200)
    role: Role = Field(sa_type=StrEnumType(Role))
    language: Language = Field(default=Language.ja, sa_type=StrEnumType(Language))
    office_id: int = Field(foreign_key="office.id", index=True)
    password_hash: str = Field(max_length=255)
    is_active: bool = True
    # Raised on sign-out, password change and reset: every token issued before stops working.
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Set by an admin's reset: until the user picks a new password, only that route works.
    must_change_password: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    password_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SignInFailure(SQLModel, table=True):
    """One failed sign-in, kept 15 minutes or so for throttling (in the database, so every
    process sees it). The account is stored as a keyed hash, never as the e-mail typed."""

    __tablename__ = "sign_in_failure"
    __table_args__ = (
        sa.Index("ix_sign_in_failure_account_at", "account_key", "at"),
        sa.Index("ix_sign_in_failure_address_at", "address", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_key: str = Field(max_length=64)
    address: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
