"""Reading the trail (there is deliberately no way to change it)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import Session, col, select

from service.audit.capture import RECORD_IDS
from service.audit.models import ActorType, AuditEvent


def _names(record_id: int, dialect: str) -> sa.ColumnElement[bool]:
    """A summary event (``record_id`` NULL) whose ``RECORD_IDS`` list holds ``record_id``."""
    if dialect == "postgresql":
        test = f"(audit_event.changes -> '{RECORD_IDS}')::jsonb @> jsonb_build_array(:named_id)"
    else:
        test = f"EXISTS (SELECT 1 FROM json_each(audit_event.changes, '$.{RECORD_IDS}') WHERE value = :named_id)"
    return sa.and_(col(AuditEvent.record_id).is_(None), sa.text(test).bindparams(named_id=record_id))


def _filtered(
    stmt,
    *,
    office_id: int,
    record_type: str | None,
    record_id: int | None,
    actor_type: ActorType | None,
    actor_id: int | None,
    since: datetime | None,
    until: datetime | None,
    dialect: str,
):
    if record_id is None:
        stmt = stmt.where(AuditEvent.office_id == office_id)
        if record_type is not None:
            stmt = stmt.where(AuditEvent.record_type == record_type)
    else:  # its own events, and the summaries of batches it was part of
        # Two lookups by their own indexes, the events then by id (an OR of the two, or the office
        # filter outside, would read the office's whole trail): the record's own events
        # (ix_audit_event_record), and the office's summary events only (ix_audit_event_summary,
        # partial: record_id IS NULL) searched for the id. The office (and type) are checked in both.
        own = select(AuditEvent.id).where(AuditEvent.record_id == record_id, AuditEvent.office_id == office_id)
        named = select(AuditEvent.id).where(AuditEvent.office_id == office_id, _names(record_id, dialect))
        if record_type is not None:
            own = own.where(AuditEvent.record_type == record_type)
            named = named.where(AuditEvent.record_type == record_type)
        stmt = stmt.where(col(AuditEvent.id).in_(sa.union_all(own, named)))
    if actor_type is not None:
        stmt = stmt.where(AuditEvent.actor_type == actor_type)
    if actor_id is not None:
        stmt = stmt.where(AuditEvent.actor_id == actor_id)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at < until)
    return stmt


def list_events(
    session: Session,
    *,
    office_id: int,
    limit: int,
    offset: int,
    record_type: str | None = None,
    record_id: int | None = None,
    actor_type: ActorType | None = None,
    actor_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEvent], int]:
    where = {
        "office_id": office_id,
        "record_type": record_type,
        "record_id": record_id,
        "actor_type": actor_type,
        "actor_id": actor_id,
        "since": since,
        "until": until,
        "dialect": session.get_bind().dialect.name,
    }
    total = session.exec(_filtered(select(func.count()).select_from(AuditEvent), **where)).one()
    rows = session.exec(
        _filtered(select(AuditEvent), **where).order_by(col(AuditEvent.id).desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


CSV_COLUMNS = [
    "id", "at", "office_id", "actor_type", "actor_id", "actor_label", "action",
    "record_type", "record_id", "changes", "ip", "request_id",
]  # fmt: skip


def export_csv(session: Session, *, office_id: int, batch: int = 1000, **filters) -> Iterator[str]:
    """The office's trail as CSV, oldest first, streamed in batches."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    last_id = 0
    while True:
        stmt = _filtered(select(AuditEvent), office_id=office_id, dialect=session.get_bind().dialect.name, **filters)
        rows = session.exec(stmt.where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)).all()
        if not rows:
            return
        buf.seek(0)
        buf.truncate()
        for e in rows:
            writer.writerow(
                [
                    e.id,
                    e.at.isoformat(),
                    e.office_id,
                    e.actor_type.value,
                    e.actor_id,
                    e.actor_label,
                    e.action,
                    e.record_type,
                    e.record_id,
                    json.dumps(e.changes, ensure_ascii=False) if e.changes else "",
                    e.ip,
                    e.request_id,
                ]  # fmt: skip
            )
        yield buf.getvalue()
        last_id = rows[-1].id
