"""The engine's pool on PostgreSQL: a connection in steady use is not pinged before each checkout
(a round trip per request at hundreds of webhooks a second, issue 7), and one that sat idle is,
so a connection the server dropped meanwhile is replaced rather than handed to a request."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service import db as service_db
from service.db import make_engine


@pytest.fixture
def pg_engine(postgres_url, monkeypatch):
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    pings: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_conn):
        pings.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    engine.pings = pings
    yield engine
    engine.dispose()


def _backend(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_in_steady_use_is_not_pinged(pg_engine):
    first = _backend(pg_engine)
    for _ in range(5):
        assert _backend(pg_engine) == first  # the one pooled connection, again and again
    assert pg_engine.pings == []


def test_an_idle_connection_the_server_dropped_is_replaced(pg_engine, postgres_url, monkeypatch):
    first = _backend(pg_engine)
    admin = make_engine(postgres_url)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    admin.dispose()
    monkeypatch.setattr(service_db, "IDLE_PING_SECONDS", 0.0)  # as if it had sat in the pool a while
    second = _backend(pg_engine)  # no error: the ping failed and the pool opened another connection
    assert second != first
    assert pg_engine.pings == [1]
