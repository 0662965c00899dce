"""A seeded synthetic caseload, written fast: executemany on SQLite, COPY on PostgreSQL.

One office (a large city, or a whole country's history at size M), one worker per 200 clients,
every placement with its plan materialized by the real ``schedule_steps`` (the business calendar
included), about 30% separated, follow-ups before the last fortnight done or missed and the rest
pending, as a running service would leave them. Run alone:

    python -m bench.generate --placements 20000 --db sqlite:///bench/data/s.db
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.accounts.models import Office, Role, StaffUser
from service.contacts.models import FollowUpStatus
from service.db import make_engine, make_session_factory, session_scope
from service.schedules.calendar import BusinessCalendar
from service.schedules.plans import PlanTemplate, schedule_steps

TODAY = date(2026, 4, 20)  # a Monday; every benchmark runs "as of" this day
CLIENTS_PER_WORKER = 200
PLAN = "standard-3m"
NOW = datetime(2026, 4, 20, 0, 0, tzinfo=UTC)

PLACEMENT_COLS = (
    "id",
    "office_id",
    "client_id",
    "employer_id",
    "job_title",
    "employment_type",
    "start_date",
    "worker_id",
    "plan",
    "status",
    "separated_on",
    "created_at",
    "updated_at",
)
FOLLOW_UP_COLS = (
    "office_id",
    "placement_id",
    "party",
    "channel",
    "kind",
    "due_date",
    "window_days",
    "window_end",
    "automated",
    "status",
    "assignee_id",
    "step_index",
    "needs_consent",
    "attempt",
    "created_at",
    "updated_at",
)
CLIENT_COLS = (
    "id",
    "office_id",
    "name",
    "email",
    "language",
    "category",
    "consent_automated",
    "consent_family",
    "consent_employer",
    "created_at",
    "updated_at",
)
EMPLOYER_COLS = ("id", "office_id", "name", "created_at")
SEPARATION_COLS = ("office_id", "placement_id", "date", "reason", "recorded_at")


@dataclass
class Caseload:
    office_id: int
    worker_ids: list[int]
    placements: int
    follow_ups: int
    seconds: float


# -- writing rows fast ------------------------------------------------------------------------


def _sqlite_value(v):
    if isinstance(v, datetime):
        return v.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, bool):
        return int(v)
    return v


def bulk_insert(conn: sa.Connection, table: str, cols: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Rows straight to the driver: COPY on PostgreSQL, executemany on SQLite. Returns the count."""
    raw = conn.connection.dbapi_connection
    n = 0
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
        return n
    cur = raw.cursor()
    batch: list = []
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    for row in rows:
        batch.append(tuple(_sqlite_value(v) for v in row))
        if len(batch) >= 10_000:
            cur.executemany(sql, batch)
            n += len(batch)
            batch.clear()
    if batch:
        cur.executemany(sql, batch)
        n += len(batch)
    cur.close()
    return n


def reset_sequences(conn: sa.Connection, tables: Iterable[str]) -> None:
    if conn.dialect.name != "postgresql":
        return
    for t in tables:
        conn.execute(
            sa.text(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE((SELECT MAX(id) FROM {t}), 1))")
        )


def next_id(conn: sa.Connection, table: str) -> int:
    return (conn.execute(sa.text(f"SELECT MAX(id) FROM {table}")).scalar() or 0) + 1


@lru_cache(maxsize=4096)
def _steps(template: PlanTemplate, start: date):
    return schedule_steps(template, start, BusinessCalendar(()))


def follow_up_rows(
    template: PlanTemplate,
    placement_id: int,
    office_id: int,
    worker_id: int,
    start: date,
    separated_on: date | None,
    rng: random.Random,
    *,
    live: bool = True,
):
    """The plan's follow-ups for one placement, in FOLLOW_UP_COLS order."""
    for s in _steps(template, start):
        if live:
            if separated_on is not None and s.due_date > separated_on:
                status = FollowUpStatus.cancelled
            elif s.due_date < TODAY - timedelta(days=14):
                status = FollowUpStatus.done if rng.random() < 0.85 else FollowUpStatus.missed
            else:
                status = FollowUpStatus.pending
        else:
            status = FollowUpStatus.pending
        yield (
            office_id,
            placement_id,
            s.step.party.value,
            s.step.channel.value,
            s.step.kind.value,
            s.due_date,
            s.step.window_days,
            s.window_end,
            s.step.automated,
            status.value,
            worker_id,
            s.step_index,
            s.step.needs_consent,
            0,
            NOW,
            NOW,
        )


# -- the caseload -----------------------------------------------------------------------------


def make_office(engine: Engine, *, workers: int, name: str = "Bench City") -> tuple[int, list[int]]:
    """An office and its workers, through the ORM (a handful of rows)."""
    with session_scope(make_session_factory(engine)) as session:
        office = Office(name=name, timezone="Asia/Tokyo")
        session.add(office)
        session.flush()
        staff = [
            StaffUser(
                email=f"w{office.id}-{i}@bench.example",
                name=f"Worker {i}",
                role=Role.worker,
                office_id=office.id,
                password_hash="x",
            )
            for i in range(workers)
        ]
        session.add_all(staff)
        session.flush()
        return office.id, [u.id for u in staff]


CHUNK = 100_000  # placements written at a time


def generate(engine: Engine, template: PlanTemplate, *, placements: int, seed: int = 2026) -> Caseload:
    """Write ``placements`` placements (one per client) with their follow-ups into one new office."""
    started = time.perf_counter()
    rng = random.Random(seed)
    workers = max(1, placements // CLIENTS_PER_WORKER)
    office_id, worker_ids = make_office(engine, workers=workers)
    first_day = TODAY - timedelta(days=730)
    with engine.begin() as conn:
        c0, e0, p0 = next_id(conn, "client"), next_id(conn, "employer"), next_id(conn, "placement")
        employers = max(1, placements // 20)
        bulk_insert(
            conn, "employer", EMPLOYER_COLS, ((e0 + i, office_id, f"Employer {i}", NOW) for i in range(employers))
        )
        bulk_insert(
            conn,
            "client",
            CLIENT_COLS,
            (
                (
                    c0 + i,
                    office_id,
                    f"Client {i}",
                    f"c{c0 + i}@bench.example",
                    "ja",
                    "public_assistance" if i % 3 else "needy_person",
                    True,
                    False,
                    True,
                    NOW,
                    NOW,
                )
                for i in range(placements)
            ),
        )
        # In chunks, each chunk's placements before their follow-ups (the same random draws in the
        # same order as all at once, so the same data): at size L the follow-ups alone are tens of
        # millions of tuples, more than the memory of the machine.
        plan_rows, sep_rows, fu_rows, n_fu = [], [], [], 0
        for i in range(placements):
            pid = p0 + i
            start = first_day + timedelta(days=rng.randrange(0, 730 + 30))
            worker = worker_ids[i % workers]
            sep = None
            if rng.random() < 0.3:
                sep = start + timedelta(days=rng.randrange(1, 500))
                if sep > TODAY:
                    sep = None
            status = "separated" if sep else "active"
            plan_rows.append(
                (
                    pid,
                    office_id,
                    c0 + i,
                    e0 + rng.randrange(employers),
                    "清掃スタッフ",
                    ("general", "certified_training", "other")[i % 3],
                    start,
                    worker,
                    template.name,
                    status,
                    sep,  # separated_on: the separation's date, as record_separation writes it
                    NOW,
                    NOW,
                )
            )
            if sep:
                sep_rows.append((office_id, pid, sep, "voluntary", NOW))
            fu_rows.extend(follow_up_rows(template, pid, office_id, worker, start, sep, rng))
            if len(plan_rows) == CHUNK or i == placements - 1:
                bulk_insert(conn, "placement", PLACEMENT_COLS, plan_rows)
                bulk_insert(conn, "separation", SEPARATION_COLS, sep_rows)
                n_fu += bulk_insert(conn, "follow_up", FOLLOW_UP_COLS, fu_rows)
                plan_rows, sep_rows, fu_rows = [], [], []
        reset_sequences(conn, ("client", "employer", "placement", "separation", "follow_up"))
    if engine.dialect.name == "postgresql":
        # What autovacuum does after a bulk load in production (an insert threshold triggers it):
        # statistics, hint bits and the visibility map, so that index-only scans can skip the
        # heap. This server runs without autovacuum, so the generator does it.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return Caseload(office_id, worker_ids, placements, n_fu, time.perf_counter() - started)


def main() -> None:
    from pathlib import Path

    from service.migrate import upgrade
    from service.schedules.plans import load_plans

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placements", type=int, default=20_000)
    ap.add_argument("--db", required=True, help="a database URL (migrated first)")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    upgrade(args.db)
    plans = load_plans(Path(__file__).resolve().parent.parent / "config" / "plans")
    engine = make_engine(args.db)
    c = generate(engine, plans[PLAN], placements=args.placements, seed=args.seed)
    print(f"{c.placements} placements, {c.follow_ups} follow-ups, {len(c.worker_ids)} workers in {c.seconds:.1f} s")


if __name__ == "__main__":
    main()
