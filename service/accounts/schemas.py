from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.accounts.models import Language, Role
from service.schedules.calendar import parse_closed_day
from service.validation import MAX_ID, Email, OptionalPhone, TimeZoneName, no_control_chars


class OfficeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check_text = field_validator("name", "default_plan")(no_control_chars)

    # The name is trimmed (a time zone or plan with spaces around it is refused, not guessed).
    name: Annotated[str, StringConstraints(strip_whitespace=True)] = Field(min_length=1, max_length=200)
    timezone: TimeZoneName = "Asia/Tokyo"
    closed_days: list[str] | None = Field(default=None, max_length=400)
    holiday_country: str = Field(
        default="JP", pattern=r"^[A-Z]{2}$", description="whose public holidays and weekend (ISO 3166-1, e.g. JP, US)"
    )
    holiday_subdivision: str | None = Field(
        default=None, pattern=r"^[A-Z0-9]{1,8}$", description="a region with its own holidays (e.g. NY for a US office)"
    )
    default_plan: str = Field(default="standard-3m", max_length=64)
    phone: OptionalPhone = None

    @field_validator("closed_days")
    @classmethod
    def _days(cls, days: list[str] | None) -> list[str] | None:
        if days is not None:
            for d in days:
                parse_closed_day(d)
        return days


class OfficePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    timezone: str
    closed_days: list[str]
    holiday_country: str
    holiday_subdivision: str | None
    default_plan: str
    phone: str | None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check_text = field_validator("name", "password")(no_control_chars)

    email: Email
    name: str = Field(min_length=1, max_length=200)
    role: Role
    office_id: int = Field(ge=1, le=MAX_ID)
    language: Language = Language.ja
    password: str = Field(min_length=10, max_length=200)


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    role: Role
    language: Language
    office_id: int
    is_active: bool
    created_at: datetime


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old_password: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=10, max_length=200)


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check_text = field_validator("new_password")(no_control_chars)

    new_password: str = Field(min_length=10, max_length=200, description="temporary; changed at next sign-in")
