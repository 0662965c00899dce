"""Central capture of changes: a SQLAlchemy flush hook reads each record's attribute history, and a
hook on ORM UPDATE statements reads the rows a bulk update is about to change. Nobody has to
remember to call anything from a service function.

Who did it comes from the session (``bind_actor``: the request's signed-in user) or, failing
that, from a context variable (``acting_as``: set by the request middleware for webhooks and reply
links, and by ``service.jobs`` for each job). Where from (address, request id) comes from the
request context.

Values: secrets (password hashes, tokens, keys) are never stored, not even masked in length.
Personal values (names, phone numbers, e-mail, addresses, free text, the public-assistance
category) are recorded as changed but not stored: the trail can be exported to CSV, and it must
not keep a copy of what the retention rules delete from the records themselves.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from service.audit.models import ActorType, AuditEvent
from service.db import utcnow

log = logging.getLogger(__name__)

SECRET = "[secret]"
PERSONAL = "[personal]"
# Words in a column name that make its value a secret, or personal.
SECRET_WORDS = frozenset({"password", "hash", "token", "secret", "key", "salt", "otp"})
PERSONAL_WORDS = frozenset(
    {
        "name", "kana", "phone", "email", "address", "note", "notes", "text", "body", "comment",
        "comments", "detail", "details", "relationship", "to", "from", "sender", "recipient",
        "answer", "birth", "category", "message", "summary", "subject", "memo", "reason",
        "sex",  # client.sex: optional and sensitive (women-only program sessions, issue 4)
    }
)  # fmt: skip
# Columns whose names match the words above but hold neither (kept as they are).
PLAIN_COLUMNS = frozenset({"idempotency_key", "reply_reason", "matched_reason", "error_reason", "status_reason"})
# Tables never audited: the trail itself and sign-in bookkeeping.
SKIP_TABLES = {"audit_event", "sign_in_failure"}
ACTOR_KEY = "audit_actor"


@dataclass(frozen=True)
class Actor:
    type: ActorType
    id: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class RequestInfo:
    ip: str | None
    request_id: str | None


SYSTEM = Actor(ActorType.system)
_actor: ContextVar[Actor | None] = ContextVar("audit_actor", default=None)
_request: ContextVar[RequestInfo | None] = ContextVar("audit_request", default=None)


@contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    """Everything written inside is attributed to ``actor`` (unless a session says otherwise)."""
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


@contextmanager
def in_request(info: RequestInfo) -> Iterator[None]:
    token = _request.set(info)
    try:
        yield
    finally:
        _request.reset(token)


def current_request() -> RequestInfo | None:
    return _request.get()


def bind_actor(session: Session, actor: Actor) -> None:
    """Attribute this session's writes to ``actor``. Used for the signed-in user: FastAPI runs
    sync dependencies and routes in different threads, so a context variable set in one is not
    seen by the other, but the session is shared by both."""
    session.info[ACTOR_KEY] = actor


def actor_for(session: Session | None) -> Actor:
    bound = session.info.get(ACTOR_KEY) if session is not None else None
    return bound or _actor.get() or SYSTEM


@lru_cache(maxsize=4096)  # a pure function of the column name, called for every value audited
def classify(column: str) -> str:
    """'secret', 'personal' or 'plain'."""
    if column in PLAIN_COLUMNS:
        return "plain"
    words = set(column.lower().split("_"))
    if words & SECRET_WORDS:
        return "secret"
    if words & PERSONAL_WORDS:
        return "personal"
    return "plain"


def _json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return str(value)


def shown(column: str, value: Any) -> Any:
    kind = classify(column)
    if kind == "secret":
        return SECRET
    if kind == "personal":
        return None if value is None else PERSONAL
    return _json(value)


def _shown_plainly(column: str, value: Any) -> Any:
    """``shown``, with a shortcut for the common case (a plain column's string or number), as a
    summary event calls it once per record."""
    if type(value) in (str, int) and classify(column) == "plain":
        return value
    return shown(column, value)


def event_row(
    session: Session | None,
    *,
    action: str,
    record_type: str,
    record_id: int | None,
    office_id: int | None,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    actor = actor_for(session)
    req = _request.get()
    return {
        "at": utcnow(),
        "office_id": office_id,
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_label": actor.label,
        "action": action,
        "record_type": record_type,
        "record_id": record_id,
        "changes": changes or None,
        "ip": req.ip if req else None,
        "request_id": req.request_id if req else None,
    }


def record(
    session: Session,
    *,
    action: str,
    record_type: str,
    record_id: int | None,
    office_id: int | None,
    changes: dict[str, Any] | None = None,
) -> None:
    """An event that is not a column change (a view, a sign-out), written with the session's work."""
    row = event_row(
        session, action=action, record_type=record_type, record_id=record_id, office_id=office_id, changes=changes
    )
    session.add(AuditEvent(**row))


def record_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Several ``event_row``s in one statement, on the session's connection and transaction."""
    if rows:
        session.connection().execute(sa.insert(AuditEvent.__table__), rows)


# In a summary event (many records changed the same way at once), the key of the records' ids.
RECORD_IDS = "record_ids"


def summary_rows(
    session: Session | None,
    *,
    action: str,
    record_type: str,
    records: list[tuple[int, int | None]],
    changes: dict[str, tuple[Any, Any]],
    per_record: dict[str, tuple[Any, dict[int, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Events for many records changed the same way by one statement (a batch): one per office,
    with ``record_id`` None, the ids of the records under ``RECORD_IDS`` and the change, shown as
    the hooks show it: ``changes`` as ``{column: (old, new)}``; ``per_record`` for a column whose
    new value differs by record, as ``{column: (old, {record id: new})}`` (recorded as ``{"old": ...,
    "new": {"<id>": ...}}``). ``records`` are ``(id, office_id)`` pairs. Each record stays findable:
    ``list_events`` with a ``record_id`` also matches the summaries naming it."""
    by_office: defaultdict[int | None, list[int]] = defaultdict(list)
    for record_id, office_id in records:
        by_office[office_id].append(record_id)
    common = {name: {"old": shown(name, old), "new": shown(name, new)} for name, (old, new) in changes.items()}
    rows = []
    for office_id, ids in by_office.items():
        ids.sort()
        varying = {
            name: {"old": shown(name, old), "new": {str(i): _shown_plainly(name, new[i]) for i in ids}}
            for name, (old, new) in (per_record or {}).items()
        }
        rows.append(
            event_row(
                session,
                action=action,
                record_type=record_type,
                record_id=None,
                office_id=office_id,
                changes={**common, **varying, RECORD_IDS: ids},
            )
        )
    return rows


def created_changes(values: dict[str, Any]) -> dict[str, Any]:
    """What the flush hook records for a new row, from the column values it was written with."""
    return {k: {"old": None, "new": shown(k, v)} for k, v in values.items() if k != "id" and v is not None and v != []}


def updated_changes(current: Any, new: dict[str, Any]) -> dict[str, Any]:
    """What the flush hook records for an updated row: each column of ``new`` whose value differs
    from ``current``'s attribute of that name (a row read before the update), old and new."""
    return {
        name: {"old": shown(name, getattr(current, name)), "new": shown(name, value)}
        for name, value in new.items()
        if getattr(current, name) != value
    }


def record_inserted(session: Session, *, table: sa.Table, rows: list[dict[str, Any]], ids: list[int]) -> None:
    """A Core insert does not pass through the flush hook: its rows' "create" events, one per row,
    the same as the hook would write (every column given in ``rows``, ``ids`` in the same order)."""
    if table.name in SKIP_TABLES:
        return
    record_events(
        session,
        [
            event_row(
                session,
                action="create",
                record_type=table.name,
                record_id=record_id,
                office_id=record_id if table.name == "office" else values.get("office_id"),
                changes=created_changes(values),
            )
            for values, record_id in zip(rows, ids, strict=True)
        ],
    )


# -- the hooks ------------------------------------------------------------------------------


def _office_of(obj: Any, table: str) -> int | None:
    if table == "office":
        return getattr(obj, "id", None)
    value = getattr(obj, "office_id", None)
    return value if isinstance(value, int) else None


def _record_id(state: Any) -> int | None:
    # New rows have their key by now, but no identity yet: read it from the instance.
    key = state.mapper.primary_key_from_instance(state.obj())
    if len(key) == 1 and isinstance(key[0], int):
        return key[0]
    return None


def _changes(state: Any, *, created: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in state.mapper.column_attrs:
        key = attr.key
        if key == "id":
            continue
        hist = state.attrs[key].history
        if created:
            value = getattr(state.obj(), key, None)
            if value is not None and value != []:
                out[key] = {"old": None, "new": shown(key, value)}
        elif hist.has_changes():
            old = hist.deleted[0] if hist.deleted else None
            new = hist.added[0] if hist.added else None
            if old != new:
                out[key] = {"old": shown(key, old), "new": shown(key, new)}
    return out


def _after_flush(session: Session, _ctx: Any) -> None:
    rows: list[dict[str, Any]] = []
    for action, objs in (("create", session.new), ("update", session.dirty), ("delete", session.deleted)):
        for obj in objs:
            state = sa.inspect(obj, raiseerr=False)
            if state is None or not hasattr(state, "mapper"):
                continue
            table = state.mapper.local_table.name
            if table in SKIP_TABLES:
                continue
            changes = {} if action == "delete" else _changes(state, created=action == "create")
            if action == "update" and not changes:
                continue
            rows.append(
                event_row(
                    session,
                    action=action,
                    record_type=table,
                    record_id=_record_id(state),
                    office_id=_office_of(obj, table),
                    changes=changes,
                )
            )
    if rows:
        session.connection().execute(sa.insert(AuditEvent.__table__), rows)


def _bulk_values(stmt: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for col, val in getattr(stmt, "_values", {}).items():
        name = getattr(col, "key", None) or getattr(col, "name", None) or str(col)
        values[name] = val.value if isinstance(val, sa.BindParameter) else "[expression]"
    return values


def _on_orm_execute(state: ORMExecuteState) -> Any:
    """An ORM ``update(Model).where(...).values(...)``: read the rows it will change, run it, and
    write one event per row with the old and new values."""
    if not state.is_update or state.execution_options.get("audit_skip"):
        return None
    stmt = state.statement
    table = getattr(stmt, "table", None)
    if table is None or table.name in SKIP_TABLES or "id" not in table.c:
        return None
    values = _bulk_values(stmt)
    if not values:
        # An UPDATE by primary key with a list of rows (executemany): the rows are not known here.
        log.debug("bulk update of %s by primary key: not audited row by row", table.name)
        return None
    cols = [table.c[name] for name in values if name in table.c]
    office = table.c.office_id if "office_id" in table.c else sa.null()
    before = sa.select(table.c.id, office, *cols)
    if stmt.whereclause is not None:
        before = before.where(stmt.whereclause)
    conn = state.session.connection()
    old_rows = conn.execute(before).all()
    result = state.invoke_statement()
    if old_rows:
        events = []
        for row in old_rows:
            changes = {}
            for i, col in enumerate(cols):
                old, new = row[2 + i], values[col.key]
                if old != new:
                    changes[col.key] = {"old": shown(col.key, old), "new": shown(col.key, new)}
            if changes:
                events.append(
                    event_row(
                        state.session,
                        action="update",
                        record_type=table.name,
                        record_id=row[0],
                        office_id=row[1] if table.name != "office" else row[0],
                        changes=changes,
                    )
                )
        if events:
            conn.execute(sa.insert(AuditEvent.__table__), events)
    return result


def install() -> None:
    """Listen on every ORM session (idempotent)."""
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
    if not event.contains(Session, "do_orm_execute", _on_orm_execute):
        event.listen(Session, "do_orm_execute", _on_orm_execute)


install()
