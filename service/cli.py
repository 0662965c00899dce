"""The ``teichaku`` command."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

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
report_app = typer.Typer(help="Reports for managers: retention and plan adherence.", no_args_is_help=True)
app.add_typer(report_app, name="report")


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
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    scheduler: Annotated[bool, typer.Option(help="run the scheduler in this process")] = True,
) -> None:
    """Serve the API (and the scheduler)."""
    import uvicorn

    from service.app import create_app
    from service.logging import configure_logging

    settings = get_settings()
    if not scheduler:  # the scheduler processes beside this one act on the SMS it keeps
        settings = settings.model_copy(update={"scheduler_enabled": False, "act_on_sms_in_api": False})
    configure_logging()  # JSON lines with request ids; no personal data (service/logging.py)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        proxy_headers=True,
        log_config=None,  # keep ours: uvicorn's access log would write reply-link tokens and queries
        access_log=False,
    )


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from service.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    typer.echo("database is up to date")


@app.command("scheduler")
def scheduler_role(
    host: Annotated[str | None, typer.Option(help="address for /healthz, /readyz and /metrics")] = None,
    port: Annotated[int, typer.Option(help="port for /healthz, /readyz and /metrics")] = 8001,
) -> None:
    """Run the scheduler only: the periodic jobs, with /healthz, /readyz and /metrics (no public routes).

    Run any number beside `teichaku serve --no-scheduler` on PostgreSQL (rows are claimed, so nothing is
    done twice); on SQLite run one process in all, `teichaku serve`.
    """
    import uvicorn

    from service.app import create_app
    from service.logging import configure_logging

    settings = get_settings().model_copy(update={"scheduler_enabled": True})
    configure_logging()
    uvicorn.run(create_app(settings, public=False), host=host or settings.host, port=port, log_config=None)


@app.command()
def backup(
    output: Annotated[Path, typer.Option("--output", "-o", help="the backup file to write")],
    force: Annotated[bool, typer.Option("--force", help="overwrite the file if it exists")] = False,
) -> None:
    """Back up the SQLite database to one file, safely while the service runs (PostgreSQL: use pg_dump)."""
    from service import ops

    try:
        report = ops.backup(get_settings().database_url, output, overwrite=force)
    except ops.BackupError as exc:
        _fail(str(exc))
    typer.echo(f"backed up {report.tables} tables, {report.rows} rows (schema {report.revision}) to {report.path}")


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="a backup made by `teichaku backup`")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Replace the SQLite database's whole content with a backup (stop the service first)."""
    from service import ops

    url = get_settings().database_url
    try:
        target = ops.sqlite_path(url)
        report = ops.describe_backup(file)
    except ops.BackupError as exc:
        _fail(str(exc))
    typer.echo(f"{file}: {report.tables} tables, {report.rows} rows, schema {report.revision}")
    if not yes and not typer.confirm(f"Replace everything in {target} with this backup?", default=False):
        _fail("Nothing was changed.")
    try:
        ops.restore(url, file)
    except ops.BackupError as exc:
        _fail(str(exc))
    typer.echo(f"restored {target} from {file}; run `teichaku migrate` if the backup came from an older version")


@app.command()
def demo(
    if_empty: Annotated[bool, typer.Option("--if-empty", help="do nothing if data exists")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 2026,
) -> None:
    """Load a believable demo caseload (2 offices, 8 staff, 300 placements)."""
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
                report = import_placements(session, data, plans=plans, clock=SystemClock(), progress=_progress(bar))
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
    on: Annotated[datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="YYYY-MM-DD")] = None,
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


@app.command()
def outbox(
    status: Annotated[
        str | None, typer.Option(help="queued, sending, sent, delivered, failed, unknown, cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="how many, newest first")] = 50,
    show_body: Annotated[bool, typer.Option("--body", help="print the text of each message")] = False,
) -> None:
    """List outbound messages: what was sent, or (with the development adapter) would have been."""
    from sqlmodel import col, select

    from service.contacts.messaging.models import MessageStatus, OutboxMessage

    query = select(OutboxMessage).order_by(col(OutboxMessage.id).desc()).limit(limit)
    if status:
        if status not in MessageStatus.__members__:
            _fail(f"unknown status {status!r}")
        query = query.where(OutboxMessage.status == MessageStatus(status))
    with _factory()() as session:
        rows = session.exec(query).all()
    if not rows:
        typer.echo("The outbox is empty.")
    for r in rows:
        when = (r.sent_at or r.next_attempt_at).isoformat(timespec="minutes")
        typer.echo(f"#{r.id:<6} {r.status.value:<9} {r.channel.value:<5} {r.purpose.value:<17} {when}  {r.to_address}"
                   + (f"  ({r.error_reason})" if r.error_reason else ""))  # fmt: skip
        if show_body:
            typer.echo("        " + r.body.replace("\n", "\n        "))


@plans_app.command("check")
def plans_check() -> None:
    """Validate every plan template in config/plans."""
    plans = _load_plans()
    for name, plan in sorted(plans.items()):
        typer.echo(f"ok  {name:<14} {len(plan.steps):>2} steps  {plan.title_ja} / {plan.title_en}")


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="job name")],
    at: Annotated[str | None, typer.Option(help="run as if at this ISO instant (testing)")] = None,
) -> None:
    """Run one scheduler job now."""
    from service.clock import FixedClock, SystemClock
    from service.contacts.messaging.outbox import Messaging
    from service.jobs import JOBS, run_job

    if name not in JOBS:
        _fail(f"unknown job {name!r}; jobs: {', '.join(sorted(JOBS))}")
    clock = SystemClock()
    if at:
        try:
            instant = datetime.fromisoformat(at)
        except ValueError:
            _fail(f"--at {at!r} is not an ISO date and time, e.g. 2026-04-20T09:00:00+09:00")
        clock = FixedClock(instant if instant.tzinfo else instant.replace(tzinfo=UTC))
    count = run_job(name, _factory(), clock, Messaging.from_settings(get_settings()))
    typer.echo(f"{name}: {count} row(s)")


@offices_app.command("create")
def offices_create(
    name: Annotated[str, typer.Option(help="office name")],
    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "Asia/Tokyo",
    default_plan: Annotated[str, typer.Option(help="default plan template")] = "standard-3m",
    phone: Annotated[str | None, typer.Option(help="office phone shown to clients")] = None,
    holiday_country: Annotated[str, typer.Option(help="whose public holidays: ISO country code")] = "JP",
    holiday_subdivision: Annotated[str | None, typer.Option(help="a region's own holidays, e.g. NY")] = None,
) -> None:
    """Create an office."""
    from service.accounts import service as accounts
    from service.db import session_scope
    from service.errors import DomainError
    from service.validation import parse_phone

    name = _check_name(name)
    try:
        with session_scope(_factory()) as session:
            office = accounts.create_office(
                session,
                name=name,
                timezone=timezone,
                default_plan=default_plan,
                phone=parse_phone(phone) if phone else None,
                holiday_country=holiday_country,
                holiday_subdivision=holiday_subdivision,
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

    name = _check_name(name)
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


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        _fail("--name must be 1 to 200 characters")
    return name


def _report_office(session, office: str | None):
    from sqlmodel import select

    from service.accounts import service as accounts
    from service.accounts.models import Office
    from service.errors import NotFound

    if office is not None:
        try:
            return accounts.find_office(session, office)
        except NotFound as exc:
            _fail(exc.message)
    offices = session.exec(select(Office).limit(2)).all()
    if len(offices) != 1:
        _fail("there are several offices (or none): name one with --office")
    return offices[0]


_FORMATS = ("table", "csv", "json")
_Format = Annotated[str, typer.Option("--format", help="table, csv or json")]
_OfficeName = Annotated[str | None, typer.Option("--office", help="office name or id")]
_Language = Annotated[str, typer.Option(help="labels in ja or en")]


def _day_option(name: str, help: str):
    return Annotated[datetime | None, typer.Option(name, formats=["%Y-%m-%d"], help=help)]


@report_app.command("retention")
def report_retention(
    as_of: _day_option("--as-of", "YYYY-MM-DD; default today (office time zone)") = None,
    by: Annotated[
        str,
        typer.Option(help="office, worker, employer, employment_type, category, cohort or none"),
    ] = "none",
    fmt: _Format = "table",
    office: _OfficeName = None,
    language: _Language = "ja",
) -> None:
    """Job and employment retention at 1, 3, 6 and 12 months (as GET /api/v1/retention)."""
    from service.clock import SystemClock, local_today
    from service.outcomes import report_text
    from service.outcomes.retention import Grouping, retention

    if by not in Grouping.__members__:
        _fail(f"--by must be one of: {', '.join(Grouping.__members__)}")
    if fmt not in _FORMATS:
        _fail("--format must be table, csv or json")
    with _factory()() as session:
        office_row = _report_office(session, office)
        day = as_of.date() if as_of else local_today(SystemClock(), office_row.timezone)
        report = retention(session, office_id=office_row.id, as_of=day, by=Grouping(by), language=language)
    if fmt == "json":
        typer.echo(report.model_dump_json(indent=2))
    elif fmt == "csv":
        typer.echo(report_text.retention_csv(report), nl=False)
    else:
        typer.echo(office_row.name)
        typer.echo(report_text.retention_table(report), nl=False)


@report_app.command("adherence")
def report_adherence(
    date_from: _day_option("--from", "YYYY-MM-DD; default 29 days before --to") = None,
    date_to: _day_option("--to", "YYYY-MM-DD; default today (office time zone)") = None,
    fmt: _Format = "table",
    office: _OfficeName = None,
    language: _Language = "ja",
) -> None:
    """Plan adherence and each worker's load (as GET /api/v1/adherence)."""
    from datetime import timedelta

    from service.clock import SystemClock, local_today
    from service.errors import DomainError
    from service.outcomes import report_text
    from service.outcomes.adherence import adherence

    if fmt not in _FORMATS:
        _fail("--format must be table, csv or json")
    with _factory()() as session:
        office_row = _report_office(session, office)
        today = local_today(SystemClock(), office_row.timezone)
        end = date_to.date() if date_to else today
        start = date_from.date() if date_from else end - timedelta(days=29)
        try:
            report = adherence(
                session, office_id=office_row.id, date_from=start, date_to=end, today=today,
                language=language,
            )  # fmt: skip
        except DomainError as exc:
            _fail(exc.message)
    if fmt == "json":
        typer.echo(report.model_dump_json(indent=2, by_alias=True))
    elif fmt == "csv":
        typer.echo(report_text.adherence_csv(report), nl=False)
    else:
        typer.echo(office_row.name)
        typer.echo(report_text.adherence_table(report), nl=False)


@app.command("export")
def export(
    kind: Annotated[str, typer.Argument(help="placements, follow-ups or crisis-flags")],
    office: Annotated[str, typer.Option("--office", help="office name or id")],
    output: Annotated[Path, typer.Option("--output", dir_okay=False, writable=True, help="the CSV file to write")],
    as_of: _day_option("--as-of", "retention as of YYYY-MM-DD; default today (office time zone)") = None,
    date_from: _day_option("--from", "first day, YYYY-MM-DD") = None,
    date_to: _day_option("--to", "last day, YYYY-MM-DD") = None,
    language: _Language = "ja",
) -> None:
    """Write an office's placements (with retention status), follow-ups (with outcomes) or crisis
    flags (with signals) as CSV, UTF-8 with a BOM (as GET /api/v1/exports/<kind>.csv)."""
    from service.clock import SystemClock, local_today
    from service.errors import DomainError
    from service.outcomes.exports import ExportKind, export_csv

    if kind not in {k.value for k in ExportKind}:
        _fail("the export must be one of: " + ", ".join(k.value for k in ExportKind))
    factory = _factory()
    with factory() as session:
        office_row = _report_office(session, office)
        office_id, tz = office_row.id, office_row.timezone
    day = as_of.date() if as_of else local_today(SystemClock(), tz)

    written = [0]

    def progress(rows: int) -> None:
        written[0] = rows
        typer.echo(f"\r{rows} rows", nl=False, err=True)

    tmp = output.with_name(output.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            for chunk in export_csv(
                factory, ExportKind(kind), office_id=office_id, as_of=day, language=language,
                date_from=date_from.date() if date_from else None, date_to=date_to.date() if date_to else None,
                progress=progress,
            ):  # fmt: skip
                fh.write(chunk)
    except DomainError as exc:
        tmp.unlink(missing_ok=True)
        _fail(exc.message)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _fail(f"cannot write {output}: {exc.strerror}")
    tmp.replace(output)
    typer.echo(f"\r{written[0]} rows written", err=True)
    typer.echo(f"Wrote {output} ({kind}, office {office_id}, as of {day.isoformat()}).")


def _today() -> date:
    return datetime.now(UTC).date()


if __name__ == "__main__":
    app()
