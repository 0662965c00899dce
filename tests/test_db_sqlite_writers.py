"""SQLite writers of one process take turns on a lock of their own (service/db.py), taken at a
transaction's first write and given back however it ends; readers never wait for it. A writer kept
waiting longer than ``WRITE_WAIT_SECONDS`` gets SQLite's own "database is locked" (a 503 at the API),
not a hang. (Why: SQLite's busy handler polls with sleeps of up to 100 ms and lets a newcomer in
between two tries, so under steady writes a waiter could go unserved for a second; bench webhooks.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from service import db as service_db
from service.db import make_engine

pytestmark = pytest.mark.timeout(20)  # without the lock's own wait, a writer would sit out busy_timeout (30 s)


@pytest.fixture
def engines(tmp_path: Path, monkeypatch) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Two engines on one file, as the API's and the scheduler's in one process."""
    monkeypatch.setattr(service_db, "WRITE_WAIT_SECONDS", 0.3)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first, second = make_engine(url), make_engine(url)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    yield first, second
    first.dispose()
    second.dispose()


def rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT id, v FROM t ORDER BY id")]


@pytest.mark.parametrize("lead", ["", "  /* a note */ ", "-- a note\n"], ids=["plain", "block-comment", "line-comment"])
def test_a_writer_kept_waiting_gets_database_is_locked_then_writes_once_the_turn_is_free(engines, lead):
    first, second = engines
    with first.connect() as holding:
        holding.exec_driver_sql(lead + "INSERT INTO t VALUES (1, 'first')")  # the turn taken however it starts
        with second.connect() as waiting:
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                waiting.exec_driver_sql("INSERT INTO t VALUES (2, 'second')")
            waiting.rollback()
            # Readers do not queue: the committed state (nothing yet) is there at once.
            assert waiting.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0
        holding.commit()
    with second.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2, 'second')")
    assert rows(first) == [(1, "first"), (2, "second")]


def _commit(conn: sa.Connection) -> None:
    conn.commit()


def _rollback(conn: sa.Connection) -> None:
    conn.rollback()


def _failed_statement(conn: sa.Connection) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'the same id')")
    conn.rollback()


def _closed(conn: sa.Connection) -> None:
    conn.close()  # back to the pool, which rolls back


def _invalidated(conn: sa.Connection) -> None:
    conn.invalidate()  # the DBAPI connection closed and thrown away (as after a disconnect)


@pytest.mark.parametrize("end", [_commit, _rollback, _failed_statement, _closed, _invalidated])
def test_the_turn_is_given_back_however_the_transaction_ends(engines, end: Callable[[sa.Connection], None]):
    first, second = engines
    conn = first.connect()
    conn.exec_driver_sql("INSERT INTO t VALUES (1, 'first')")
    end(conn)
    conn.close()
    with second.begin() as other:  # would wait out WRITE_WAIT_SECONDS and fail, had the turn stayed taken
        other.exec_driver_sql("INSERT INTO t VALUES (2, 'second')")
    kept = [r for r in rows(second) if r[0] == 1]
    assert kept == ([(1, "first")] if end is _commit else [])


def test_writers_on_many_threads_each_land_once(engines):
    first, second = engines
    errors: list[BaseException] = []

    def write(engine: sa.Engine, base: int) -> None:
        try:
            for i in range(40):
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO t VALUES (?, 'x')", (base + i,))
                    conn.exec_driver_sql("UPDATE t SET v = 'y' WHERE id = ?", (base + i,))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(e, 1000 * n)) for n, e in enumerate([first, second] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r[0] for r in rows(first)) == sorted(1000 * n + i for n in range(6) for i in range(40))
    assert {r[1] for r in rows(first)} == {"y"}
