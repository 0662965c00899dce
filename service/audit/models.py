"""The append-only audit trail table."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.db import StrEnumType, UTCDateTime, partial_index, utcnow


class ActorType(enum.StrEnum):
    user = "user"  # a signed-in staff member
    job = "job"  # a scheduled job (``actor_label`` names it)
    client_link = "client_link"  # a client answering through a signed reply link
    webhook = "webhook"  # Twilio calling back (``actor_label``: the webhook)
    system = "system"  # the CLI, the demo, anything without a request or a job


class AuditEvent(SQLModel, table=True):
    """One change (or one view) of one record, or (``record_id`` None) one change of many records
    by one statement, e.g. a dispatch batch: their ids under ``changes["record_ids"]``
    (``capture.summary_rows``). Never updated or deleted by the service; on PostgreSQL a trigger
    refuses UPDATE and DELETE outright."""

    __tablename__ = "audit_event"
    __table_args__ = (
        sa.Index("ix_audit_event_office_at", "office_id", "at"),
        sa.Index("ix_audit_event_record", "record_type", "record_id"),
        # Summary events (many records changed at once, their ids in the changes): a record's
        # history searches only these (service/audit/service.py).
        partial_index("ix_audit_event_summary", "office_id", "record_type", where="record_id IS NULL"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # No foreign keys: the trail outlives whatever it describes.
    office_id: int | None = None
    actor_type: ActorType = Field(sa_type=StrEnumType(ActorType))
    actor_id: int | None = None  # the staff user, or the client for a reply link
    actor_label: str | None = Field(default=None, max_length=100)  # job or webhook name
    action: str = Field(max_length=32)  # create, update, delete, view, sign_out, password_change...
    record_type: str = Field(max_length=64)
    record_id: int | None = None
    # {"field": {"old": ..., "new": ...}}; secrets and personal values are masked (see capture.py).
    changes: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    ip: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=64)
