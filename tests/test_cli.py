"""The ``teichaku`` command: help, offices, users, queue, jobs, migrate and demo."""

from __future__ import annotations

import calendar
import json
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import select
from typer.main import get_command
from typer.testing import CliRunner

from service.accounts.models import Office, StaffUser
from service.cli import app
from service.contacts.models import Placement, Separation
from service.db import make_engine, make_session_factory
from service.migrate import pending_migrations
from service.outcomes.models import CrisisFlag, CrisisStatus
from service.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def teichaku(monkeypatch, tmp_path):
    """``teichaku(*args, db=URL, input=...)`` runs the command line against that database."""
    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    runner = CliRunner()

    def run(*args: str, db: str | None = None, input: str | None = None):
        monkeypatch.setenv("DATABASE_URL", db or f"sqlite:///{tmp_path / 'unused.db'}")
        get_settings.cache_clear()
        try:
            return runner.invoke(app, list(args), input=input)
        finally:
            get_settings.cache_clear()

    return run


def failed_cleanly(result) -> bool:
    """Exit code not 0, through SystemExit (typer.Exit), no traceback."""
    return result.exit_code != 0 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output


# ------------------------------------------------------------------------------ help

COMMANDS = [
    [], ["serve"], ["migrate"], ["demo"], ["import"], ["queue"], ["plans"], ["plans", "check"],
    ["jobs"], ["jobs", "run"], ["offices"], ["offices", "create"], ["users"], ["users", "create"],
]  # fmt: skip


def _all_command_paths(cmd, prefix=()) -> set[tuple[str, ...]]:
    paths = {prefix}
    for name, sub in getattr(cmd, "commands", {}).items():
        paths |= _all_command_paths(sub, (*prefix, name))
    return paths


def test_the_documented_commands_exist():
    assert {tuple(c) for c in COMMANDS} <= _all_command_paths(get_command(app))


# Every command the app has, including any added after this test was written.
@pytest.mark.parametrize(
    "command", sorted(_all_command_paths(get_command(app))), ids=lambda c: " ".join(c) or "teichaku"
)
def test_help_works_for_every_command(teichaku, command):
    result = teichaku(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert "--help" in result.stdout


def test_top_level_help_lists_the_commands(teichaku):
    out = teichaku("--help").stdout
    for name in ("serve", "migrate", "demo", "import", "queue", "plans", "jobs", "offices", "users"):
        assert name in out


def test_plans_check_lists_the_plans(teichaku):
    result = teichaku("plans", "check")
    assert result.exit_code == 0, result.output
    for name in ("standard-3m", "short-1m", "extended-6m"):
        assert f"ok  {name}" in result.stdout


# ------------------------------------------------------------------------------ offices


def test_offices_create(teichaku, db_url, world, factory):
    result = teichaku(
        "offices", "create", "--name", "Office C", "--timezone", "Europe/Paris", "--phone", "０１１－２１１－２００２",
        "--holiday-country", "FR", db=db_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["name"], out["timezone"]) == ("Office C", "Europe/Paris")
    with factory() as s:
        office = s.get(Office, out["id"])
    assert (office.name, office.timezone, office.phone) == ("Office C", "Europe/Paris", "+81112112002")
    assert (office.holiday_country, office.holiday_subdivision) == ("FR", None)


def test_offices_create_with_a_duplicate_name_fails_cleanly(teichaku, db_url, world, factory):
    result = teichaku("offices", "create", "--name", "Office A", db=db_url)
    assert failed_cleanly(result), result.output
    assert "already exists" in result.stderr
    with factory() as s:
        assert s.exec(select(func.count()).select_from(Office)).one() == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timezone", "Mars/Olympus"], "unknown time zone"),
        (["--timezone", "America"], "unknown time zone"),  # a folder of the zone database
        (["--default-plan", "no-such-plan"], "no plan named"),
        (["--phone", "123"], "phone number"),
        (["--holiday-country", "XX"], "no public holidays known"),
        (["--holiday-country", "US", "--holiday-subdivision", "ZZ"], "no subdivision"),
    ],
    ids=["timezone", "timezone-folder", "plan", "phone", "holiday-country", "holiday-subdivision"],
)
def test_offices_create_with_bad_values_fails_cleanly(teichaku, db_url, world, factory, args, words):
    result = teichaku("offices", "create", "--name", "Office Q", *args, db=db_url)
    assert failed_cleanly(result), result.output
    assert words in result.stderr
    with factory() as s:
        assert s.exec(select(Office).where(Office.name == "Office Q")).first() is None


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_offices_create_refuses_an_empty_or_overlong_name(teichaku, db_url, world, factory, name):
    result = teichaku("offices", "create", "--name", name, db=db_url)
    assert failed_cleanly(result), result.output
    with factory() as s:
        assert s.exec(select(func.count()).select_from(Office)).one() == 2


# ------------------------------------------------------------------------------ users


def test_users_create_then_sign_in_through_the_api(teichaku, db_url, api):
    result = teichaku(
        "users", "create", "--email", "New.Worker@a.example.jp", "--name", "新人 職員", "--role", "worker",
        "--office", "Office A", "--language", "en", "--password-stdin",
        db=db_url, input="a long enough passphrase\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["role"] == "worker"

    r = api.http.post(
        "/api/v1/auth/token", data={"username": "new.worker@a.example.jp", "password": "a long enough passphrase"}
    )
    assert r.status_code == 200, r.text
    me = api.http.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).json()
    assert (me["id"], me["name"], me["office_id"], me["language"]) == (out["id"], "新人 職員", api.world.office_a, "en")
    wrong = api.http.post("/api/v1/auth/token", data={"username": "new.worker@a.example.jp", "password": "wrong one!!"})
    assert wrong.status_code == 401


def test_users_create_finds_the_office_by_id(teichaku, db_url, world, factory):
    result = teichaku(
        "users", "create", "--email", "boss@b.example.jp", "--name", "Boss B", "--role", "manager",
        "--office", str(world.office_b), "--password-stdin", db=db_url, input="another long password\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with factory() as s:
        user = s.exec(select(StaffUser).where(StaffUser.email == "boss@b.example.jp")).one()
    assert (user.office_id, user.role.value) == (world.office_b, "manager")


@pytest.mark.parametrize(
    ("args", "password", "words"),
    [
        (["--office", "Office A"], "short", "at least 10"),
        (["--office", "Office Nowhere"], "a long enough passphrase", "not found"),
        (["--office", "Office A", "--role", "boss"], "a long enough passphrase", "role must be"),
        (["--office", "Office A", "--email", "worker@a.example.jp"], "a long enough passphrase", "already exists"),
        (["--office", "Office A", "--email", "not-an-address"], "a long enough passphrase", "e-mail"),
        (["--office", "Office A", "--name", " "], "a long enough passphrase", "--name"),
    ],
    ids=["short-password", "unknown-office", "bad-role", "duplicate", "bad-email", "empty-name"],
)
def test_users_create_with_bad_values_fails_cleanly(teichaku, db_url, world, factory, args, password, words):
    base = {"--email": "new@a.example.jp", "--name": "New", "--role": "worker"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv]
    result = teichaku("users", "create", *argv, "--password-stdin", db=db_url, input=password + "\n")
    assert failed_cleanly(result), result.output
    assert words in result.stderr
    with factory() as s:
        assert s.exec(select(func.count()).select_from(StaffUser)).one() == 8


# ------------------------------------------------------------------------------ queue and jobs


def _overdue_placement(api) -> tuple[dict, list[dict]]:
    """A placement that started on 1 April: by 20 April its first worker tasks are overdue."""
    p = api.placement(start="2026-04-01")
    return p, api.follow_ups("a.worker", p["id"])


def test_queue_prints_the_workers_overdue_work(teichaku, db_url, api):
    p, rows = _overdue_placement(api)
    expected = [
        r["id"] for r in rows
        if r["status"] == "pending" and not r["automated"] and r["due_date"] < "2026-04-20"
    ]  # fmt: skip
    assert expected, "the set-up should leave overdue work"

    result = teichaku("queue", "--worker", "worker@a.example.jp", "--date", "2026-04-20", db=db_url)

    assert result.exit_code == 0, result.output
    assert "Worker A — 2026-04-20 (Office A)" in result.stdout
    assert f"overdue {len(expected)}, due today 0" in result.stdout
    for fid in expected:
        assert f"#{fid} " in result.stdout
    assert "山田 太郎" in result.stdout

    data = json.loads(
        teichaku("queue", "--worker", "WORKER@a.example.jp", "--date", "2026-04-20", "--json", db=db_url).stdout
    )
    assert data["date"] == "2026-04-20"
    assert data["worker_id"] == api.world.users["a.worker"]
    assert data["counts"]["overdue"] == len(expected)
    assert sorted(i["follow_up_id"] for i in data["items"]) == sorted(expected)
    assert all(i["placement_id"] == p["id"] and i["days_overdue"] > 0 for i in data["items"])


def test_queue_for_a_worker_with_nothing_due(teichaku, db_url, api):
    _overdue_placement(api)  # work for a.worker, none for worker2
    result = teichaku("queue", "--worker", "worker2@a.example.jp", "--date", "2026-04-20", db=db_url)
    assert result.exit_code == 0, result.output
    assert "overdue 0, due today 0" in result.stdout
    assert "Nothing due" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["--worker", "nobody@a.example.jp"], ["--worker", "worker@a.example.jp", "--date", "2026-02-30"]],
    ids=["unknown-worker", "bad-date"],
)
def test_queue_with_bad_values_fails_cleanly(teichaku, db_url, world, args):
    result = teichaku("queue", *args, db=db_url)
    assert failed_cleanly(result), result.output


def test_jobs_run_mark_missed_at_an_instant(teichaku, db_url, api):
    p, rows = _overdue_placement(api)
    passed = {r["id"] for r in rows if r["status"] == "pending" and r["window_end"] < "2026-04-20"}
    still_open = {r["id"] for r in rows if r["status"] == "pending" and r["window_end"] >= "2026-04-20"}
    assert passed and still_open

    result = teichaku("jobs", "run", "mark_missed", "--at", "2026-04-20T09:00:00+09:00", db=db_url)

    assert result.exit_code == 0, result.output
    assert f"mark_missed: {len(passed)} row(s)" in result.stdout
    after = {r["id"]: r for r in api.follow_ups("a.worker", p["id"])}
    assert {i for i, r in after.items() if r["status"] == "missed"} == passed
    assert all(after[i]["status_reason"] == "window passed" for i in passed)
    assert all(after[i]["status"] == "pending" for i in still_open)
    # run again at the same instant: nothing more to do
    assert (
        "mark_missed: 0 row(s)"
        in teichaku("jobs", "run", "mark_missed", "--at", "2026-04-20T09:00:00+09:00", db=db_url).stdout
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [(["no_such_job"], "unknown job"), (["mark_missed", "--at", "yesterday"], "ISO")],
    ids=["unknown-job", "bad-instant"],
)
def test_jobs_run_with_bad_values_fails_cleanly(teichaku, db_url, world, args, words):
    result = teichaku("jobs", "run", *args, db=db_url)
    assert failed_cleanly(result), result.output
    assert words in result.stderr


# ------------------------------------------------------------------------------ migrate


def test_migrate_creates_a_fresh_sqlite_database(teichaku, tmp_path):
    path = tmp_path / "new-folder" / "fresh.db"
    url = f"sqlite:///{path}"

    result = teichaku("migrate", db=url)

    assert result.exit_code == 0, result.output
    assert "database is up to date" in result.stdout
    assert path.exists()
    engine = make_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert {"office", "staff_user", "client", "employer", "placement", "follow_up", "outcome"} <= tables
        assert pending_migrations(engine) == []
    finally:
        engine.dispose()
    assert teichaku("migrate", db=url).exit_code == 0  # running it again is harmless


# ------------------------------------------------------------------------------ demo


def _months_back(day: date, months: int) -> date:
    """Calendar months back (negative: ahead), clamped to the month's end."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def test_demo_loads_a_believable_caseload_once(teichaku, db_url):
    result = teichaku("demo", db=db_url)

    assert result.exit_code == 0, result.output
    assert "Loaded 300 placements in 2 offices" in result.stdout
    assert "password for all: teichaku-demo-2026" in result.stdout
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            offices = s.exec(select(Office)).all()
            staff = s.exec(select(StaffUser)).all()
            placements = s.exec(select(Placement)).all()
            separations = {x.placement_id: x.date for x in s.exec(select(Separation))}
            flags = s.exec(select(CrisisFlag)).all()
    finally:
        engine.dispose()
    assert len(offices) == 2
    assert len(staff) == 8
    assert len(placements) == 300
    for user in staff:  # every login is printed
        assert user.email in result.stdout

    # Retention at 3 months: of those who started at least 3 calendar months ago, the share
    # who did not leave within their first 3 months. The field sees about half to two thirds.
    assert {o.timezone for o in offices} == {"Asia/Tokyo"}
    cutoff = _months_back(datetime.now(ZoneInfo("Asia/Tokyo")).date(), 3)
    eligible = [p for p in placements if p.start_date <= cutoff]
    assert len(eligible) >= 100
    stayed = [
        p for p in eligible
        if p.id not in separations or separations[p.id] >= _months_back(p.start_date, -3)
    ]  # fmt: skip
    rate = len(stayed) / len(eligible)
    assert 0.45 <= rate <= 0.70, rate
    # The crisis rules ran on the demo's answers: a manager sees flags still open and flags closed.
    assert {f.status for f in flags} >= {CrisisStatus.open, CrisisStatus.resolved}
    assert all(f.placement_id in separations for f in flags if f.status == CrisisStatus.resolved)

    again = teichaku("demo", "--if-empty", db=db_url)
    assert again.exit_code == 0, again.output
    assert "Demo data already loaded." in again.stdout
    assert "manager@minato.example.jp" in again.stdout
    refused = teichaku("demo", db=db_url)
    assert failed_cleanly(refused), refused.output
    assert "not empty" in refused.stderr
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            assert s.exec(select(func.count()).select_from(Placement)).one() == 300
    finally:
        engine.dispose()


def test_demo_if_empty_on_a_loaded_database_does_nothing_and_prints_logins(teichaku, db_url, world, factory):
    result = teichaku("demo", "--if-empty", db=db_url)
    assert result.exit_code == 0, result.output
    assert "Demo data already loaded." in result.stdout
    assert "worker@a.example.jp" in result.stdout and "admin@b.example.jp" in result.stdout
    with factory() as s:
        assert s.exec(select(func.count()).select_from(Placement)).one() == 0
        assert s.exec(select(func.count()).select_from(Office)).one() == 2


def test_demo_on_a_database_with_data_refuses(teichaku, db_url, world, factory):
    result = teichaku("demo", db=db_url)
    assert failed_cleanly(result), result.output
    assert "not empty" in result.stderr
    with factory() as s:
        assert s.exec(select(func.count()).select_from(Placement)).one() == 0


@pytest.mark.parametrize(
    ("args", "scheduler", "acts_on_sms"),
    [(["serve"], True, True), (["serve", "--no-scheduler"], False, False), (["scheduler"], True, True)],
)
def test_each_role_runs_what_it_says(teichaku, monkeypatch, args, scheduler, acts_on_sms):
    """``serve``: one process in all. ``serve --no-scheduler``: an API process beside scheduler
    processes, which keeps inbound SMS and leaves the acting to them. ``scheduler``: the jobs only."""
    import uvicorn

    import service.app
    import service.logging

    built: list = []
    monkeypatch.setattr(service.logging, "configure_logging", lambda: None)  # the suite's logging stays
    monkeypatch.setattr(service.app, "create_app", lambda settings, **kw: built.append((settings, kw)) or object())
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    result = teichaku(*args)
    assert result.exit_code == 0, result.output
    ((settings, kw),) = built
    assert settings.scheduler_enabled is scheduler and settings.act_on_sms_in_api is acts_on_sms
    assert kw.get("public", True) is (args[0] == "serve")
