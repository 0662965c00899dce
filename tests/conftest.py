"""Fixtures: every test that uses a database runs on SQLite and on PostgreSQL.

SQLite: a database migrated once per run and copied for each test. PostgreSQL: a fresh
database migrated once per run (``TEST_DATABASE_URL``, or ``teichaku_test_<pid>`` on the local
server; under ``pytest -n`` each worker's name gets ``_gw0``, ``_gw1``...), emptied after each test.
Set ``REQUIRE_POSTGRES=1`` (CI does) to fail, not skip, when it is down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.app import create_app
from service.clock import FixedClock
from service.db import make_engine, make_session_factory, session_scope
from service.migrate import upgrade
from service.models import metadata
from service.schedules.plans import load_plans
from service.settings import Settings
from tests.helpers import Api, World, build_world

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-key-with-more-than-32-characters"
# One database per test run, so runs side by side do not trample each other.
LOCAL_PG = f"postgresql+psycopg://postgres@127.0.0.1:5432/teichaku_test_{os.getpid()}"


def _require_postgres() -> bool:
    return os.environ.get("REQUIRE_POSTGRES", "") not in ("", "0", "false")


def _own_database() -> bool:
    """True when this process made its database (and drops it at the end): always but when
    TEST_DATABASE_URL names one and the tests run in one process."""
    return not os.environ.get("TEST_DATABASE_URL") or bool(os.environ.get("PYTEST_XDIST_WORKER"))


def _prepare_postgres() -> str:
    url = os.environ.get("TEST_DATABASE_URL") or LOCAL_PG
    url = Settings(database_url=url).database_url
    target = make_url(url)
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # pytest -n: each worker its own database
    if worker:
        target = target.set(database=f"{target.database}_{worker}")
        url = target.render_as_string(hide_password=False)
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    upgrade(url)
    return url


def _drop_postgres(url: str) -> None:
    target = make_url(url)
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        url = _prepare_postgres()
    except Exception as exc:
        reason = f"PostgreSQL is not available ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        if _require_postgres():
            pytest.fail(f"{reason}, and REQUIRE_POSTGRES is set")
        pytest.skip(f"{reason}; set TEST_DATABASE_URL or start the local server to run these")
    yield url
    if _own_database():
        _drop_postgres(url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "teichaku.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    engine = make_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine):
    return make_session_factory(engine)


@pytest.fixture
def clock() -> FixedClock:
    # A Monday morning in Tokyo.
    return FixedClock(datetime(2026, 4, 20, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")))


@pytest.fixture(scope="session")
def plans():
    return load_plans(ROOT / "config" / "plans")


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        environment="test",
        database_url=db_url,
        secret_key=TEST_SECRET,
        scheduler_enabled=False,
        config_dir=ROOT / "config",
    )


@pytest.fixture
def app(settings: Settings, engine, clock: FixedClock):
    return create_app(settings, engine=engine, clock=clock)


@pytest.fixture
def http(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def world(factory) -> World:
    """Two offices (Tokyo and New York), each with a worker, a second worker, a manager and an admin."""
    with session_scope(factory) as session:
        return build_world(session)


@pytest.fixture
def api(http: TestClient, world: World) -> Api:
    return Api(http, world)


# -- say plainly whether the PostgreSQL half ran, and fail CI when it did not ---------------

_pg = {"passed": 0, "skipped": 0, "failed": 0, "reason": ""}


def _is_postgres(item_id: str) -> bool:
    return "[postgres" in item_id or "-postgres" in item_id


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `postgres` runs only in its PostgreSQL variant (its SQLite variant is deselected)."""
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("postgres") and "[sqlite" in item.nodeid else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


_skipped: list[str] = []  # every skipped test, whatever the reason: CI (REQUIRE_POSTGRES) allows none


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)
    if not _is_postgres(report.nodeid):
        return
    if report.skipped:
        _pg["skipped"] += 1
        if not _pg["reason"] and isinstance(report.longrepr, tuple):
            _pg["reason"] = report.longrepr[2]
    elif report.when == "call":
        _pg["passed" if report.passed else "failed"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    ran = _pg["passed"] + _pg["failed"]
    if _pg["skipped"]:
        terminalreporter.write_line(
            f"PostgreSQL tests SKIPPED: {_pg['skipped']} ({_pg['reason']})", yellow=True, bold=True
        )
    if ran or _pg["skipped"]:
        terminalreporter.write_line(f"PostgreSQL tests run: {ran}")
    if _skipped and _require_postgres():
        terminalreporter.write_line(
            f"{len(_skipped)} test(s) skipped, which REQUIRE_POSTGRES (CI) counts as a failure: {_skipped[:5]}",
            red=True,
            bold=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI everything the suite needs is there (PostgreSQL, SMTP, Prism, Chromium): a skip is a failure.
    if _require_postgres() and _skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
