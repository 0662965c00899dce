"""The ``teichaku`` command."""

from __future__ import annotations

import getpass
import json
import logging
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.settings import get_settings

app = typer.Typer(
    help="Teichaku (定着): post-employment retention follow-up.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plans_app = typer.Typer(help="Plan templates.", no_args_is_help=True)
jobs_app = typer.Typer(help="Scheduler jobs.", no_args_is_help=True)
offices_app = typer.Typer(help="Offices.", no_args_is_help=True)
users_app = typer.Typer(help="Staff accounts.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")
app.add_typer(jobs_app, name="jobs")
app.add_typer(offices_app, name="offices")
app.add_typer(users_app, name="users")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _factory():
    from service.db import make_engine, make_session_factory

    return make_session_factory(make_engine(get_settings().database_url))


def _load_plans():
    from service.schedules.plans import PlanError, load_plans

    try:
        return load_plans(get_settings().plans_dir)
    except PlanError as exc:
        _fail("Plan templates are invalid:\n" + "\n".join(f"  {p}" for p in exc.problems))


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="address to listen on")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to listen on")] = None,
    scheduler: Annotated[bool, typer.Option(help="run the scheduler in this process")] = True,
) -> None:
    """Serve the API (and the scheduler)."""
    import uvicorn

    from service.app import create_app

    settings = get_settings()
    if not scheduler:
        settings = settings.model_copy(update={"scheduler_enabled": False})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=port or settings.port, proxy_headers=True
    )


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from service.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    typer.echo("database is up to date")


@app.command()
def demo(
    if_empty: Annotated[bool, typer.Option("--if-empty", help="do nothing if data exists")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 2026,
) -> None:
    """Load a believable demo caseload (2 offices, 7 staff, about 300 placements)."""
    from service.demo import DEMO_PASSWORD, demo_logins, load_demo

    factory = _factory()
    with factory() as session:
        logins = demo_logins(session)
    if logins and if_empty:
        typer.echo("Demo data already loaded.")
    else:
        if logins:
            _fail("The database is not empty; run demo on an empty database (or use --if-empty).")
        from service.clock import SystemClock

        summary = load_demo(factory, plans=_load_plans(), clock=SystemClock(), seed=seed, echo=typer.echo)
        typer.echo(summary)
        with factory() as session:
            logins = demo_logins(session)
    typer.echo(f"\nDemo logins (password for all: {DEMO_PASSWORD}):")
    for email, role, office in logins:
        typer.echo(f"  {role:<8} {email:<32} {office}")


@app.command("import")
def import_csv(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check only, write nothing")] = False,
) -> None:
    """Import clients and placements from a CSV (UTF-8 with or without BOM, or Shift_JIS).

    All or nothing: one bad row and nothing is written; every bad row is reported.
    """
    from service.clock import SystemClock
    from service.contacts.imports import ImportFailed, import_placements
    from service.db import session_scope

    data = file.read_bytes()
    plans = _load_plans()
    try:
        with session_scope(_factory()) as session:
            with typer.progressbar(length=1, label="Importing", file=sys.stderr) as bar:
                report = import_placements(
                    session, data, plans=plans, clock=SystemClock(), progress=_progress(bar)
                )
            if dry_run:
                session.rollback()
    except ImportFailed as exc:
        typer.secho(f"Nothing was imported: {len(exc.errors)} problem(s) in {file}:", fg="red", err=True)
        for e in exc.errors:
            typer.echo(f"  line {e.line}, column {e.field}: {e.message}", err=True)
        raise typer.Exit(1) from None
    verb = "Checked (dry run, nothing written)" if dry_run else "Imported"
    typer.echo(
        f"{verb}: {report.rows} rows, {report.clients_created} new clients, "
        f"{report.employers_created} new employers, {report.placements_created} placements, "
        f"{report.separations} separations."
    )


def _progress(bar):
    def update(done: int, total: int) -> None:
        bar.length = total
        bar.update(done - bar.pos)

    return update


@app.command()
def queue(
    worker: Annotated[str, typer.Option(help="the worker's e-mail")],
    on: Annotated[Optional[datetime], typer.Option("--date", formats=["%Y-%m-%d"], help="YYYY-MM-DD")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print a worker's daily queue."""
    from service.accounts import service as accounts
    from service.accounts.models import Office
    from service.clock import SystemClock, local_today
    from service.errors import NotFound
    from service.outcomes.queue import daily_queue

    with _factory()() as session:
        try:
            user = accounts.find_user_by_email(session, worker)
        except NotFound as exc:
            _fail(str(exc))
        office = session.get(Office, user.office_id)
        day = on.date() if on else local_today(SystemClock(), office.timezone)
        q = daily_queue(session, worker=user, on=day)
    if as_json:
        typer.echo(q.model_dump_json(indent=2))
        return
    typer.echo(f"{q.worker_name} — {q.date.isoformat()} ({office.name})")
    typer.echo(f"overdue {q.counts['overdue']}, due today {q.counts['today']}\n")
    if not q.items:
        typer.echo("Nothing due. ")
    for i in q.items:
        when = f"{i.days_overdue}d overdue" if i.days_overdue else "today"
        reach = i.contact.phone or i.contact.email or "-"
        typer.echo(f"[{i.group:<7}] #{i.follow_up_id:<6} {when:<12} {i.client.name}  {i.action}  {reach}")


@plans_app.command("check")
def plans_check() -> None:
    """Validate every plan template in config/plans."""
    plans = _load_plans()
    for name, plan in sorted(plans.items()):
        typer.echo(f"ok  {name:<14} {len(plan.steps):>2} steps  {plan.title_ja} / {plan.title_en}")


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="job name")],
    at: Annotated[Optional[str], typer.Option(help="run as if at this ISO instant (testing)")] = None,
) -> None:
    """Run one scheduler job now."""
    from service.clock import FixedClock, SystemClock
    from service.schedules.jobs import JOBS, run_job

    if name not in JOBS:
        _fail(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    clock = SystemClock()
    if at:
        instant = datetime.fromisoformat(at)
        clock = FixedClock(instant if instant.tzinfo else instant.replace(tzinfo=UTC))
    count = run_job(name, _factory(), clock)
    typer.echo(f"{name}: {count} row(s)")


@offices_app.command("create")
def offices_create(
    name: Annotated[str, typer.Option(help="office name")],
    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "Asia/Tokyo",
    default_plan: Annotated[str, typer.Option(help="default plan template")] = "standard-3m",
    phone: Annotated[Optional[str], typer.Option(help="office phone shown to clients")] = None,
) -> None:
    """Create an office."""
    from service.accounts import service as accounts
    from service.db import session_scope
    from service.errors import DomainError
    from service.validation import parse_phone

    try:
        with session_scope(_factory()) as session:
            office = accounts.create_office(
                session,
                name=name,
                timezone=timezone,
                default_plan=default_plan,
                phone=parse_phone(phone) if phone else None,
                known_plans=set(_load_plans()),
            )
            typer.echo(json.dumps({"id": office.id, "name": office.name, "timezone": office.timezone}))
    except (DomainError, ValueError) as exc:
        _fail(str(exc))


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="sign-in e-mail")],
    name: Annotated[str, typer.Option(help="full name")],
    role: Annotated[str, typer.Option(help="worker, manager or admin")],
    office: Annotated[str, typer.Option(help="office name or id")],
    language: Annotated[str, typer.Option(help="ja or en")] = "ja",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Create a staff account (asks for the password)."""
    from service.accounts import service as accounts
    from service.accounts.models import Language, Role
    from service.db import session_scope
    from service.errors import DomainError

    if role not in Role.__members__:
        _fail("role must be worker, manager or admin")
    if language not in Language.__members__:
        _fail("language must be ja or en")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            _fail("the passwords differ")
    try:
        with session_scope(_factory()) as session:
            office_row = accounts.find_office(session, office)
            user = accounts.create_user(
                session,
                email=email,
                name=name,
                role=Role(role),
                office_id=office_row.id,
                password=password,
                language=Language(language),
            )
            typer.echo(json.dumps({"id": user.id, "email": user.email, "role": user.role.value}))
    except DomainError as exc:
        _fail(exc.message)


def _today() -> date:
    return datetime.now(UTC).date()


if __name__ == "__main__":
    app()
