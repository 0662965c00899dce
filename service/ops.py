"""Operations: Prometheus metrics, and backup and restore of the SQLite default.

Metrics. Two kinds, on one ``/metrics`` page:
- process metrics, observed as things happen: each scheduler job's tick duration and webhook latency
  (histograms in prometheus-client's default registry, with the process's own CPU and memory);
- database gauges, computed on each scrape by SQL aggregates (``DatabaseCollector``): queue sizes,
  follow-ups due and overdue, messages by outbox state, open crisis flags by severity.
Labels are offices, states, channels, severities and job names only: never a person, so nothing on
the page identifies a client or a member of staff. Keep it that way (no worker or client labels).

Backup. ``backup`` and ``restore`` use sqlite3's online backup API, so a backup can be taken while the
service runs. PostgreSQL has its own tools (pg_dump / pg_restore); these refuse it with a pointer.
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.clock import Clock
from service.contacts.messaging.models import MessageChannel, MessageStatus
from service.outcomes.models import CrisisSeverity, CrisisStatus
from service.settings import Settings

log = logging.getLogger(__name__)

# -- process metrics ------------------------------------------------------------------------

JOB_DURATION = Histogram(
    "teichaku_job_duration_seconds",
    "How long one run (tick) of a scheduler job took, by job and result.",
    ["job", "result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WEBHOOK_LATENCY = Histogram(
    "teichaku_webhook_duration_seconds",
    "Time to answer an inbound webhook or reply link, by route template (no ids) and status class.",
    ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Inbound traffic: Twilio's webhooks and the clients' reply links.
WEBHOOK_PREFIXES = ("/webhooks/", "/r/")


def observe_job(name: str, seconds: float, *, ok: bool) -> None:
    JOB_DURATION.labels(job=name, result="ok" if ok else "error").observe(seconds)


# -- database gauges, on scrape -------------------------------------------------------------

_PENDING = "pending"


class DatabaseCollector(Collector):
    """Gauges computed by a handful of SQL aggregates on each scrape (never a loop over rows).

    "Today" is each office's own date: one query per distinct office time zone (a handful).
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # computed on scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("teichaku_database_up", "1 if the database answered this scrape's queries.")
        started = time.perf_counter()
        try:
            families = list(self._families())
        except Exception as exc:
            log.warning("metrics: database query failed (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily("teichaku_metrics_query_seconds", "Time the database gauges took on this scrape.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _families(self) -> Iterator[Metric]:
        now = self.clock.now()
        with self.engine.connect() as conn:
            offices = conn.execute(text("SELECT id, timezone FROM office")).all()
            zones = sorted({tz for _, tz in offices})
            office_ids = [str(i) for i, _ in offices]

            due = GaugeMetricFamily(
                "teichaku_follow_ups_due_today", "Pending follow-ups due today (office date).", labels=["office"]
            )
            overdue = GaugeMetricFamily(
                "teichaku_follow_ups_overdue",
                "Pending follow-ups whose window has closed (office date).",
                labels=["office"],
            )
            queue_items = GaugeMetricFamily(
                "teichaku_queue_items", "Items in workers' daily queues (due today or earlier).", labels=["office"]
            )
            queue_max = GaugeMetricFamily(
                "teichaku_queue_items_max", "The largest single worker's daily queue.", labels=["office"]
            )
            queue_workers = GaugeMetricFamily(
                "teichaku_queue_workers", "Workers with something in their daily queue.", labels=["office"]
            )
            seen: set[str] = set()
            for tz in zones:
                today = now.astimezone(ZoneInfo(tz)).date()
                params = {"tz": tz, "today": today, "pending": _PENDING}
                in_zone = "office_id IN (SELECT id FROM office WHERE timezone = :tz)"
                for office, n_due, n_overdue in conn.execute(
                    text(
                        "SELECT office_id,"
                        " SUM(CASE WHEN due_date = :today THEN 1 ELSE 0 END),"
                        " SUM(CASE WHEN window_end < :today THEN 1 ELSE 0 END)"
                        f" FROM follow_up WHERE status = :pending AND {in_zone} GROUP BY office_id"
                    ),
                    params,
                ):
                    due.add_metric([str(office)], n_due or 0)
                    overdue.add_metric([str(office)], n_overdue or 0)
                    seen.add(str(office))
                # The queue (service/outcomes/queue.py): a worker's own, not automated, due by today.
                for office, items, biggest, workers in conn.execute(
                    text(
                        "SELECT office_id, SUM(n), MAX(n), COUNT(*) FROM ("
                        " SELECT office_id, assignee_id, COUNT(*) AS n FROM follow_up"
                        f" WHERE status = :pending AND automated = :false AND due_date <= :today AND {in_zone}"
                        " AND assignee_id IS NOT NULL GROUP BY office_id, assignee_id) AS per_worker"
                        " GROUP BY office_id"
                    ),
                    params | {"false": False},
                ):
                    queue_items.add_metric([str(office)], items or 0)
                    queue_max.add_metric([str(office)], biggest or 0)
                    queue_workers.add_metric([str(office)], workers or 0)
                    seen.add(str(office) + ":q")
            for office in office_ids:  # every office appears, with 0 when it has nothing
                if office not in seen:
                    due.add_metric([office], 0)
                    overdue.add_metric([office], 0)
                if office + ":q" not in seen:
                    for family in (queue_items, queue_max, queue_workers):
                        family.add_metric([office], 0)
            yield from (due, overdue, queue_items, queue_max, queue_workers)

            counts = {
                (MessageStatus(s), MessageChannel(c)): n
                for s, c, n in conn.execute(
                    text("SELECT status, channel, COUNT(*) FROM outbox_message GROUP BY status, channel")
                )
            }
            messages = GaugeMetricFamily(
                "teichaku_outbox_messages", "Outbound messages by state and channel.", labels=["state", "channel"]
            )
            for status in MessageStatus:
                for channel in MessageChannel:
                    messages.add_metric([status.value, channel.value], counts.get((status, channel), 0))
            yield messages

            oldest = conn.execute(
                text(
                    "SELECT MIN(next_attempt_at) FROM outbox_message WHERE status = :queued AND next_attempt_at <= :now"
                ),
                {"queued": MessageStatus.queued.value, "now": _db_instant(self.engine, now)},
            ).scalar()
            lag = GaugeMetricFamily(
                "teichaku_outbox_due_lag_seconds",
                "How long the oldest due, still queued message has waited (0 when none): the dispatcher's lag.",
            )
            lag.add_metric([], max(0.0, (now - _aware(oldest)).total_seconds()) if oldest is not None else 0)
            yield lag

            waiting = dict(
                conn.execute(
                    text(
                        "SELECT next_attempt_at IS NOT NULL, COUNT(*) FROM inbound_message"
                        " WHERE processed_at IS NULL GROUP BY next_attempt_at IS NOT NULL"
                    )
                ).all()
            )
            inbound = GaugeMetricFamily(
                "teichaku_inbound_sms_waiting",
                "Inbound SMS kept, not acted on yet: new, or put off after failed tries (a fault to look into).",
                labels=["state"],
            )
            inbound.add_metric(["new"], waiting.get(False, 0))  # SQLite's 0 and 1 are equal keys to these
            inbound.add_metric(["put_off"], waiting.get(True, 0))
            yield inbound

            flags = GaugeMetricFamily(
                "teichaku_crisis_flags",
                "Crisis flags not yet resolved, by severity and status (open, acknowledged).",
                labels=["office", "severity", "status"],
            )
            rows = {
                (str(o), sev, st): n
                for o, sev, st, n in conn.execute(
                    text(
                        "SELECT office_id, severity, status, COUNT(*) FROM crisis_flag"
                        " WHERE status != :resolved GROUP BY office_id, severity, status"
                    ),
                    {"resolved": CrisisStatus.resolved.value},
                )
            }
            for office in office_ids:
                for sev in CrisisSeverity:
                    for st in (CrisisStatus.open, CrisisStatus.acknowledged):
                        flags.add_metric([office, sev.value, st.value], rows.get((office, sev.value, st.value), 0))
            yield flags

            undelivered = conn.execute(text("SELECT COUNT(*) FROM crisis_alert WHERE delivered_at IS NULL")).scalar()
            alerts = GaugeMetricFamily(
                "teichaku_crisis_alerts_undelivered", "Emergency alerts to staff not yet handed to a channel."
            )
            alerts.add_metric([], undelivered or 0)
            yield alerts


def _db_instant(engine: Engine, at: datetime) -> datetime:
    # As service.db.UTCDateTime stores it: naive UTC on SQLite, aware elsewhere.
    at = at.astimezone(UTC)
    return at.replace(tzinfo=None) if engine.dialect.name == "sqlite" else at


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite hands back text from a bare aggregate
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class _Forward(Collector):
    """Hands on what another registry holds (the process-wide histograms)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def metrics_registry(engine: Engine, clock: Clock) -> CollectorRegistry:
    """One registry per app: its own database gauges, and the process-wide metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, clock))
    registry.register(_Forward(REGISTRY))
    return registry


class WebhookTimer:
    """Times inbound webhooks and reply links (plain ASGI: nothing added to other requests)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(WEBHOOK_PREFIXES):
            await self.app(scope, receive, send)
            return
        started, status, ended = time.perf_counter(), 500, None

        async def send_and_note(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = time.perf_counter()  # what the provider waited for: not work done after it

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            template = getattr(route, "path", None) or "unmatched"  # the template, never the raw path (ids)
            took = (ended or time.perf_counter()) - started
            WEBHOOK_LATENCY.labels(route=template, status=f"{status // 100}xx").observe(took)


def install(app: FastAPI) -> None:
    """``GET /metrics`` and webhook timing. The lifespan sets ``app.state.engine`` and ``app.state.clock``."""

    app.add_middleware(WebhookTimer)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics(request: Request) -> Response:
        state = request.app.state
        token = state.settings.metrics_token
        if token:  # compared in constant time; nothing is said about which part was wrong
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return Response(
                    "metrics need the bearer token (TEICHAKU_METRICS_TOKEN)\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        if getattr(state, "metrics_registry", None) is None:
            state.metrics_registry = metrics_registry(state.engine, state.clock)
        return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


# -- a clock set from outside, for tests that run the service in subprocesses -------------------


class FileClock:
    """Reads the instant from a file on every call, so a test moves time for several processes at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        return _parse_instant(self.path.read_text(encoding="utf-8").strip())


def _parse_instant(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"TEICHAKU_FAKE_NOW needs an offset or Z: {value!r}")
    return at.astimezone(UTC)


def clock_from_settings(settings: Settings) -> Clock | None:
    """``settings.fake_now`` (test only, refused elsewhere by Settings) as a clock, else None."""
    if not settings.fake_now:
        return None
    from service.clock import FixedClock

    if settings.fake_now.startswith("@"):
        clock = FileClock(Path(settings.fake_now[1:]))
        clock.now()  # fail at start-up, not in a job, if the file is missing or wrong
        return clock
    return FixedClock(_parse_instant(settings.fake_now))


# -- backup and restore (SQLite) ------------------------------------------------------------


class BackupError(Exception):
    """A backup or restore that cannot be done, in words for the operator."""


PG_HINT = (
    "teichaku backup and restore handle the SQLite database only. For PostgreSQL use its own tools:\n"
    '  pg_dump --format=custom --file=teichaku.dump "$DATABASE_URL"\n'
    '  pg_restore --clean --if-exists --dbname="$DATABASE_URL" teichaku.dump\n'
    "(see docs/deploy.md, Backups)."
)


@dataclass(frozen=True)
class BackupReport:
    path: Path
    tables: int
    rows: int
    revision: str | None


def sqlite_path(database_url: str) -> Path:
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        raise BackupError(PG_HINT)
    if backend != "sqlite":
        raise BackupError(f"not a SQLite database: {url.drivername}")
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory database cannot be backed up or restored")
    return Path(url.database)


def _inspect(conn: sqlite3.Connection) -> tuple[int, int, str | None]:
    """(tables, rows, alembic revision) of an SQLite database; raises BackupError if it is not sound."""
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not a usable SQLite database ({exc})") from None
    if not check or check[0] != "ok":
        raise BackupError(f"the database failed its integrity check: {check[0] if check else '?'}")
    if "alembic_version" not in names:
        raise BackupError("this is not a Teichaku database (no alembic_version table)")
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    rows = sum(conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names if not n.startswith("sqlite_"))
    return len(names), rows, revision[0] if revision else None


def backup(database_url: str, output: Path, *, overwrite: bool = False) -> BackupReport:
    """Copy the live database to ``output`` with the online backup API (consistent while in use).

    Written next to the target and renamed at the end, so a failed backup never leaves half a file.
    """
    source = sqlite_path(database_url)
    if not source.is_file():
        raise BackupError(f"there is no database at {source}")
    output = output.expanduser()
    if output.resolve() == source.resolve():
        raise BackupError("the backup file cannot be the database itself")
    if output.exists() and not overwrite:
        raise BackupError(f"{output} exists; choose another name or pass --force")
    if not output.parent.is_dir():
        raise BackupError(f"the folder {output.parent} does not exist")
    partial = output.with_name(output.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=1024)  # in steps, so writers are not held up for long
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            tables, rows, revision = _inspect(dst)
        finally:
            dst.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    partial.replace(output)
    return BackupReport(output, tables, rows, revision)


def describe_backup(path: Path) -> BackupReport:
    """What a backup file holds, after checking that it is a sound Teichaku database."""
    if not path.is_file():
        raise BackupError(f"there is no file at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables, rows, revision = _inspect(conn)
    finally:
        conn.close()
    return BackupReport(path, tables, rows, revision)


def restore(database_url: str, backup_file: Path) -> BackupReport:
    """Replace the database's whole content with the backup's (online backup API, in one step).

    The backup must come from this version of Teichaku or an earlier one (run ``teichaku migrate``
    afterwards to bring an older one up to date); a backup from a newer version is refused.
    """
    target = sqlite_path(database_url)
    report = describe_backup(backup_file)
    known = _known_revisions()
    if report.revision is not None and report.revision not in known:
        raise BackupError(
            f"the backup is at schema revision {report.revision}, which this version of Teichaku does not know "
            "(a backup from a newer version?)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)  # all pages at once: readers see the old or the new database, never a mix
        finally:
            dst.close()
    finally:
        src.close()
    return report


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from service.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {rev.revision for rev in script.walk_revisions()}
