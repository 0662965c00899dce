"""Page sessions and calendar feed tokens (issue 5). Only hashes of the secrets are stored."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.db import UTCDateTime, utcnow


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds a random token; the row holds its SHA-256.
    Ended by deleting the row (sign-out) or by the user's token_version moving on."""

    __tablename__ = "web_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    user_id: int = Field(foreign_key="staff_user.id", index=True)
    token_version: int = 0  # the user's token_version when signed in
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class CalendarFeed(SQLModel, table=True):
    """A worker's private iCalendar URL: /calendar/{token}.ics. One per user; regenerating
    replaces the token, revoking deletes the row."""

    __tablename__ = "calendar_feed"
    __table_args__ = (sa.UniqueConstraint("user_id", name="uq_calendar_feed_user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="staff_user.id")
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
