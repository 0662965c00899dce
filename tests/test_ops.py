"""Operations: /metrics, /readyz, the scheduler role, the test clock, and backup and restore."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service import ops
from service.app import create_app
from service.cli import app as cli
from service.clock import FixedClock
from service.contacts.messaging.models import MessageStatus, OutboxMessage
from service.contacts.models import FollowUp, FollowUpStatus
from service.db import make_engine, make_session_factory
from service.demo import load_demo
from service.jobs import JobContext, arun_job, run_job
from service.settings import Settings, get_settings
from tests.conftest import ROOT, TEST_SECRET

# -- /metrics ---------------------------------------------------------------------------------


def scrape(http: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_match_the_queue_the_outbox_and_the_crisis_flags(api, http, world, factory, clock, plans):
    # Two placements in Office A that started weeks ago: some follow-ups are overdue, some due later.
    p1 = api.placement("a.worker", start="2026-03-02")
    api.placement("a.worker", start="2026-04-13")
    api.placement("a.worker2", start="2026-03-16")
    api.placement("a.worker2", start="2026-04-16")  # its automated SMS check-in is due today
    first = api.follow_ups("a.worker", p1["id"])[0]
    api.ok(
        api.post(
            "a.worker",
            f"/api/v1/follow-ups/{first['id']}/outcome",
            {"reached": True, "risk_signals": ["wants_to_quit"]},
        ),
        201,
    )
    run_job("plan_check_ins", factory, clock, http.app.state.messaging)

    m = scrape(http)
    a, b = str(world.office_a), str(world.office_b)
    assert sample(m, "teichaku_database_up") == 1

    queues = [api.ok(api.get(who, "/api/v1/queue")) for who in ("a.worker", "a.worker2")]
    sizes = [len(q["items"]) for q in queues]
    assert sum(sizes) > 0
    assert sample(m, "teichaku_queue_items", office=a) == sum(sizes)
    assert sample(m, "teichaku_queue_items_max", office=a) == max(sizes)
    assert sample(m, "teichaku_queue_workers", office=a) == sum(1 for s in sizes if s)
    assert sample(m, "teichaku_queue_items", office=b) == 0  # an office with nothing still appears

    with factory() as session:
        follow_ups = session.exec(
            sa.select(FollowUp.due_date, FollowUp.window_end).where(
                FollowUp.status == FollowUpStatus.pending, FollowUp.office_id == world.office_a
            )
        ).all()
        outbox = session.exec(sa.select(OutboxMessage.status, OutboxMessage.channel)).all()
    today = clock.now().astimezone(ZoneInfo("Asia/Tokyo")).date()
    assert sample(m, "teichaku_follow_ups_overdue", office=a) == sum(1 for _, end in follow_ups if end < today) > 0
    assert sample(m, "teichaku_follow_ups_due_today", office=a) == sum(1 for due, _ in follow_ups if due == today)

    assert outbox, "plan_check_ins wrote no message; the outbox gauges would prove nothing"
    for status in MessageStatus:
        for channel in ("sms", "email", "voice"):
            expected = sum(1 for s, c in outbox if s == status and c.value == channel)
            assert sample(m, "teichaku_outbox_messages", state=status.value, channel=channel) == expected

    flags = api.ok(api.get("a.manager", "/api/v1/crisis-flags"))["items"]
    assert [f["severity"] for f in flags] == ["urgent"]
    assert sample(m, "teichaku_crisis_flags", office=a, severity="urgent", status="open") == 1
    assert sample(m, "teichaku_crisis_flags", office=a, severity="emergency", status="open") == 0
    assert sample(m, "teichaku_crisis_flags", office=b, severity="urgent", status="open") == 0

    # Acknowledging moves the flag from one series to the other.
    api.ok(api.post("a.worker", f"/api/v1/crisis-flags/{flags[0]['id']}/acknowledge"))
    m = scrape(http)
    assert sample(m, "teichaku_crisis_flags", office=a, severity="urgent", status="open") == 0
    assert sample(m, "teichaku_crisis_flags", office=a, severity="urgent", status="acknowledged") == 1


ALLOWED_LABELS = {"office", "state", "channel", "severity", "status", "job", "result", "route", "le", "quantile"}


def test_metrics_name_no_person(api, http, world):
    client = api.client("a.worker", name="秘密 花子", email="hanako.secret@example.jp", phone="090-8765-4321")
    api.placement("a.worker", start="2026-03-02", client=client)
    r = http.get("/metrics")
    text = r.text
    # Whole numbers: a short digit run can turn up inside a timestamp (1.795887656e+09).
    phones = ("090-8765-4321", "09087654321", "+819087654321")
    for personal in ("秘密", "hanako", *phones, "example.jp", "Worker A", "worker@a"):
        assert personal not in text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("teichaku_"):
                assert set(s.labels) <= ALLOWED_LABELS, s
                assert "@" not in "".join(s.labels.values())


def test_tick_durations_and_webhook_latency_are_observed(http, factory, clock):
    before = scrape(http)
    key = ("teichaku_job_duration_seconds_count", (("job", "mark_missed"), ("result", "ok")))
    asyncio.run(arun_job("mark_missed", JobContext(factory, clock, http.app.state.messaging)))
    asyncio.run(arun_job("mark_missed", JobContext(factory, clock, http.app.state.messaging)))
    # An unsigned Twilio callback (refused) is timed under its route template.
    assert http.post("/webhooks/twilio/status?outbox_id=12345", data={"MessageStatus": "sent"}).status_code == 403
    after = scrape(http)
    assert after[key] - before.get(key, 0) == 2
    hook = ("teichaku_webhook_duration_seconds_count", (("route", "/webhooks/twilio/status"), ("status", "4xx")))
    assert after[hook] - before.get(hook, 0) == 1
    assert not any("12345" in dict(labels).get("route", "") for _, labels in after)


def test_metrics_say_when_the_database_is_down(settings, clock):
    down = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    with TestClient(create_app(down, clock=clock)) as http:
        m = scrape(http)
        assert sample(m, "teichaku_database_up") == 0
        r = http.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "database unreachable"


def test_metrics_want_the_bearer_token_when_one_is_set(settings, engine, clock):
    token = "metrics-token-0123456789"
    guarded = settings.model_copy(update={"metrics_token": token})
    for public in (True, False):  # the API and the scheduler role alike
        with TestClient(create_app(guarded, engine=engine, clock=clock, public=public)) as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
                r = http.get("/metrics", headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
                assert "teichaku_" not in r.text
            r = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and "teichaku_database_up" in r.text
            assert http.get("/healthz").status_code == 200  # health stays open for the load balancer


# -- /readyz and the scheduler role -----------------------------------------------------------


def test_readyz_is_ready_on_a_migrated_database(http):
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    assert http.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_pending_migrations(sqlite_template, tmp_path, clock):
    path = tmp_path / "old.db"
    shutil.copy(sqlite_template, path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0003'")
    settings = Settings(environment="test", database_url=f"sqlite:///{path}", secret_key=TEST_SECRET,
                        scheduler_enabled=False, config_dir=ROOT / "config")  # fmt: skip
    with TestClient(create_app(settings, clock=clock)) as http:
        r = http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "migrations pending" and r.json()["pending"]


def test_the_scheduler_role_serves_operations_only(settings, engine, clock, world):
    role = create_app(settings, engine=engine, clock=clock, public=False)
    with TestClient(role) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/metrics").status_code == 200
        assert http.get("/api/v1/queue").status_code == 404
        assert http.post("/api/v1/auth/token", data={"username": "x", "password": "y"}).status_code == 404
        assert http.post("/webhooks/twilio/sms", data={}).status_code == 404


# -- the test clock for subprocesses ------------------------------------------------------------


def test_fake_now_is_refused_outside_tests():
    for env in ("development", "production"):
        with pytest.raises(ValidationError, match="TEICHAKU_FAKE_NOW"):
            Settings(
                environment=env, secret_key=TEST_SECRET, public_url="https://x.example", fake_now="2026-04-20T09:00:00Z"
            )
    assert ops.clock_from_settings(Settings(environment="test")) is None


def test_fake_now_from_a_file_moves_with_the_file(tmp_path):
    f = tmp_path / "now"
    f.write_text("2026-04-20T08:30:00+09:00")
    clock = ops.clock_from_settings(Settings(environment="test", fake_now=f"@{f}"))
    assert clock.now() == datetime(2026, 4, 20, 8, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    f.write_text("2026-04-20T11:00:00+09:00")
    assert clock.now() == datetime(2026, 4, 20, 11, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    fixed = ops.clock_from_settings(Settings(environment="test", fake_now="2026-04-20T00:00:00Z"))
    assert fixed.now().isoformat() == "2026-04-20T00:00:00+00:00"
    with pytest.raises(ValueError):
        ops.clock_from_settings(Settings(environment="test", fake_now="2026-04-20T09:00:00"))  # no zone


# -- backup and restore -------------------------------------------------------------------------


@pytest.fixture
def teichaku(monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    runner = CliRunner()

    def run(*args: str, db: str, input: str | None = None):
        monkeypatch.setenv("DATABASE_URL", db)
        get_settings.cache_clear()
        try:
            return runner.invoke(cli, list(args), input=input)
        finally:
            get_settings.cache_clear()

    return run


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}


@pytest.fixture
def demo_db(sqlite_template, tmp_path, plans) -> Path:
    path = tmp_path / "live.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    clock = FixedClock(datetime(2026, 4, 20, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")))
    load_demo(make_session_factory(engine), plans=plans, clock=clock, seed=7, echo=lambda *_: None)
    engine.dispose()
    return path


def test_a_restore_gives_back_every_row(teichaku, demo_db, tmp_path):
    db = f"sqlite:///{demo_db}"
    before = snapshot(demo_db)
    filled = [t for t, rows in before.items() if rows]
    assert len(filled) >= 8 and sum(len(r) for r in before.values()) > 1000  # a real caseload, many tables

    out = tmp_path / "backups" / "teichaku-2026-04-20.db"
    out.parent.mkdir()
    r = teichaku("backup", "--output", str(out), db=db)
    assert r.exit_code == 0, r.output
    assert f"{sum(len(rows) for rows in before.values())} rows" in r.output
    assert snapshot(out) == before
    assert not list(out.parent.glob("*.partial"))

    # Life goes on after the backup: rows deleted, changed and added.
    with sqlite3.connect(demo_db) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM outcome")
        conn.execute("DELETE FROM follow_up WHERE id % 3 = 0")
        conn.execute("UPDATE client SET name = 'changed'")
        conn.execute(
            "INSERT INTO office (name, timezone, closed_days, default_plan, created_at)"
            " VALUES ('new', 'Asia/Tokyo', '[]', 'standard-3m', '2026-04-21')"
        )
    changed = snapshot(demo_db)
    assert changed != before

    # Asked, and answered no: nothing changes.
    r = teichaku("restore", str(out), db=db, input="n\n")
    assert r.exit_code != 0 and "Nothing was changed" in r.output
    assert snapshot(demo_db) == changed

    # Answered yes: every table holds exactly what it held at the backup.
    r = teichaku("restore", str(out), db=db, input="y\n")
    assert r.exit_code == 0, r.output
    after = snapshot(demo_db)
    assert after.keys() == before.keys()
    for table in before:
        assert len(after[table]) == len(before[table]), table
        assert after[table] == before[table], table

    # --yes does not ask; the service's own engine reads the restored data.
    r = teichaku("restore", str(out), "--yes", db=db)
    assert r.exit_code == 0 and "?" not in r.output.splitlines()[-1]
    engine = make_engine(db)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM outcome")).scalar() == len(before["outcome"]) > 0
    engine.dispose()


def test_backup_refuses_to_overwrite_and_restore_refuses_what_is_not_a_backup(teichaku, sqlite_template, tmp_path):
    path = tmp_path / "live.db"
    shutil.copy(sqlite_template, path)
    db = f"sqlite:///{path}"
    out = tmp_path / "b.db"
    assert teichaku("backup", "-o", str(out), db=db).exit_code == 0
    r = teichaku("backup", "-o", str(out), db=db)
    assert r.exit_code == 1 and "exists" in r.output
    assert teichaku("backup", "-o", str(out), "--force", db=db).exit_code == 0
    r = teichaku("backup", "-o", str(tmp_path / "nowhere" / "b.db"), db=db)
    assert r.exit_code == 1 and "does not exist" in r.output

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    before = snapshot(path)
    r = teichaku("restore", str(junk), "--yes", db=db)
    assert r.exit_code == 1 and "not a usable SQLite database" in r.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    r = teichaku("restore", str(other), "--yes", db=db)
    assert r.exit_code == 1 and "not a Teichaku database" in r.output
    r = teichaku("restore", str(tmp_path / "missing.db"), "--yes", db=db)
    assert r.exit_code == 1 and "no file" in r.output

    # A backup from a newer version (a schema revision this code does not know) is refused.
    newer = tmp_path / "newer.db"
    shutil.copy(out, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    r = teichaku("restore", str(newer), "--yes", db=db)
    assert r.exit_code == 1 and "9999_future" in r.output
    assert snapshot(path) == before


@pytest.mark.postgres
def test_backup_on_postgresql_points_to_pg_dump(teichaku, db_url, tmp_path):
    for args in (("backup", "-o", str(tmp_path / "b.db")), ("restore", str(tmp_path / "b.db"), "--yes")):
        r = teichaku(*args, db=db_url)
        assert r.exit_code == 1, r.output
        assert "pg_dump" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b.db").exists()


# -- deployment files ---------------------------------------------------------------------------


def test_compose_file_describes_the_production_set_up():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"db", "api", "scheduler"} <= set(services)
    for name in ("db", "api", "scheduler"):
        assert "healthcheck" in services[name], name
    assert services["api"]["image"] == services["scheduler"]["image"]  # one image, two roles
    assert "--no-scheduler" in " ".join(services["api"]["command"])
    assert "scheduler" in services["scheduler"]["command"]
    for name in ("api", "scheduler"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql")
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"


# -- the start-up heap, out of the garbage collector's sight -------------------------------------

_STARTS_TWICE = """
import gc, sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

def collected(obj):  # in the collector's generations, where a full collection walks it
    return any(o is obj for o in gc.get_objects())

settings = Settings(environment="test", database_url=sys.argv[1], scheduler_enabled=False, config_dir=sys.argv[2])
first = create_app(settings)
print(gc.get_freeze_count(), collected(first), end=" ")
with TestClient(first) as http:
    assert http.get("/healthz").status_code == 200
    print(gc.get_freeze_count(), collected(first), end=" ")
second = create_app(settings)
with TestClient(second):
    print(collected(second))
"""


def test_a_started_service_keeps_its_startup_heap_out_of_full_collections(tmp_path: Path) -> None:
    """The modules, the app and its engine (alive as long as the process) are frozen once the
    lifespan has started, so a full collection no longer walks them; a second start in the same
    process (as tests do) freezes nothing more. In a process of its own: freezing is per process."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'heap.db'}"
    out = subprocess.run(
        [sys.executable, "-c", _STARTS_TWICE, url, str(ROOT / "config")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out[:2] == ["0", "True"]  # nothing frozen before a start
    assert int(out[2]) > 50_000  # the service's modules and objects: some 150,000 here
    assert out[3] == "False"  # the started app among them
    assert out[4] == "True"  # the app started second is not: frozen once per process
