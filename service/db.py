"""Database: engine, sessions and the column types every domain shares."""

from __future__ import annotations

import enum
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.selectable import Alias
from sqlmodel import Session, SQLModel

# Explicit constraint names, so Alembic migrations are stable on SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores UTC, hands back aware UTC datetimes on every backend (SQLite forgets zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StrEnumType(sa.TypeDecorator[enum.Enum]):
    """An enum stored as its value in a plain string column (no database enum types to migrate)."""

    impl = sa.String(32)
    cache_ok = True

    def __init__(self, enum_cls: type[enum.Enum], length: int = 32) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return self.enum_cls(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> enum.Enum | None:
        return None if value is None else self.enum_cls(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if path and path != ":memory:":
            _writers_take_turns(engine, _file_lock(str(Path(path).resolve())))
        return engine
    engine = sa.create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


# A pooled connection is pinged on checkout only when it has sat idle in the pool this long (the
# server restarted, a proxy or firewall dropped it meanwhile). One in steady use is not: at
# hundreds of webhooks a second ``pool_pre_ping`` made every request a round trip longer
# (issue 7). A connection that dies while in use fails that request (a 500: Twilio delivers again)
# and SQLAlchemy, seeing a disconnect, invalidates the pool's older connections too, so the next
# requests reconnect.
IDLE_PING_SECONDS = 5.0
_CHECKED_IN = "teichaku_checked_in"


def _ping_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # new, or back in the pool a moment ago
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise sa.exc.DisconnectionError("a pooled connection did not answer a ping") from exc


# SQLite lets one connection write at a time. One kept waiting (busy_timeout) polls for the lock,
# sleeping up to 100 ms between tries, and a newcomer can take the lock between two tries: under a
# steady stream of short writes (webhooks at 200/s beside the scheduler's tick, issue 7) a waiter
# could go unserved for a second. So the writers of this process queue on a lock of their own,
# taken where SQLite's would be (the driver begins a transaction at the first INSERT, UPDATE,
# DELETE or REPLACE) and given back at commit or rollback: a waiter is woken the moment the
# writer before it is done. Other processes (the CLI beside a server) still meet busy_timeout.
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)  # what the driver skips (3.12: comments too)
WRITE_WAIT_SECONDS = 30.0  # as busy_timeout: then "database is locked", a 503 at the API
_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _file_lock(path: str) -> threading.Lock:
    with _file_locks_guard:
        return _file_locks.setdefault(path, threading.Lock())


def _writers_take_turns(engine: Engine, lock: threading.Lock) -> None:
    dialect = engine.dialect
    holder: list[Any] = [None]  # the DBAPI connection whose transaction holds the lock

    @event.listens_for(engine, "before_cursor_execute")
    def _take(conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        dbapi_conn = conn.connection.dbapi_connection
        if holder[0] is dbapi_conn or not _LEADING.sub("", statement, count=1)[:7].upper().startswith(_DML):
            return
        if not lock.acquire(timeout=WRITE_WAIT_SECONDS):
            raise sqlite3.OperationalError("database is locked")
        holder[0] = dbapi_conn

    def _give_back(conn: Any) -> None:  # a pooled connection's proxy, or the DBAPI connection itself
        if holder[0] is getattr(conn, "dbapi_connection", conn):
            holder[0] = None
            lock.release()

    def _ending(original):  # type: ignore[no-untyped-def]
        def end(dbapi_conn: Any) -> None:
            try:
                original(dbapi_conn)
            finally:
                _give_back(dbapi_conn)

        return end

    dialect.do_commit = _ending(dialect.do_commit)  # type: ignore[method-assign]
    dialect.do_rollback = _ending(dialect.do_rollback)  # type: ignore[method-assign]
    dialect.do_close = _ending(dialect.do_close)  # type: ignore[method-assign]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Reports read whole offices (retention: every placement and separation): read the file
    # through a memory map (shared by the connections, no copy into each one's cache) and keep
    # a larger page cache (the default is 2 MB) for the rest.
    cur.execute("PRAGMA mmap_size=268435456")
    cur.execute("PRAGMA cache_size=-16384")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, class_=Session, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@cache
def _indexed_by_alias(index: str) -> type[Alias]:
    """An alias class read through ``index`` on SQLite (``INDEXED BY``), the plain table elsewhere.
    One class per index: the class is part of the statement cache key, so two indexes never share
    a compiled statement."""
    cls = type(f"IndexedBy_{index}", (Alias,), {"inherit_cache": True})

    @compiles(cls)
    def _plain(element, compiler, **kw):  # type: ignore[no-untyped-def]
        return compiler.visit_alias(element, **kw)

    @compiles(cls, "sqlite")
    def _sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
        sql = compiler.visit_alias(element, **kw)
        return f"{sql} INDEXED BY {index}" if kw.get("asfrom") else sql

    return cls


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> sa.Index:
    """An index of only the rows matching ``where`` (SQL), on SQLite and PostgreSQL alike."""
    condition = sa.text(where)
    return sa.Index(name, *columns, unique=unique, sqlite_where=condition, postgresql_where=condition)


def sqlite_indexed_by(table: sa.Table, index: str, name: str) -> Alias:
    """``table`` aliased as ``name``, read through ``index`` on SQLite (``INDEXED BY``: SQLite's
    planner may pick a worse index, and the statement then fails rather than slows down should the
    index go); PostgreSQL, which keeps its own statistics, gets the plain table."""
    return _indexed_by_alias(index)._construct(table, name=name)
