"""Teichaku's benchmarks: our code paths against their limits and against what peers do.

    make bench                        # BENCH_SIZE=S (default) on SQLite and PostgreSQL
    BENCH_SIZE=M make bench           # bigger (minutes; PostgreSQL is the point there)
    python -m bench.run --quick       # a smoke run: tiny sizes, a few seconds per case
    python -m bench.run --db sqlite --only retention,queue

Each case is measured in the same run on each database: medians and p95 over rounds, ratios
against the comparison, and whether the issue's target is met. Results go to
bench/results/<timestamp>.json and bench/results/summary.md. Speed is measured here, never
asserted by tests; but every case checks that the compared paths give the same answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import sqlite3
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from bench import generate as gen
from service.accounts.models import StaffUser
from service.contacts import service as contacts
from service.contacts.models import FollowUp, Placement, Separation
from service.db import make_engine, make_session_factory
from service.migrate import upgrade
from service.outcomes.queue import OUTCOME_FIELDS, daily_queue
from service.schedules.calendar import add_months
from service.schedules.plans import load_plans

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

SIZES = {
    "quick": {
        "materialize": 300,
        "naive": 50,
        "rounds": 3,
        "queue": [2_000, 5_000],
        "retention": 5_000,
        "dispatch": 2_000,
        "dispatch_backlog": 5_000,
        "apscheduler": [300, 1_000],
        "email": 100,
        "sms": 10,  # (5b) bench/sms.py: N from one sender, then N over three senders, at 1/s each
        "queue_calls": 60,
        # bench/load.py: (4) webhooks at a constant rate, (7) wrk on the queue endpoint
        "webhook_rate": 50,
        "webhook_seconds": 10,
        "http_placements": 2_000,
        "http_workers": [1, 2],
        "http_threads": 2,
        "http_connections": 16,
        "http_seconds": 3,
    },
    "S": {
        "materialize": 20_000,
        "naive": 200,
        "rounds": 3,
        "queue": [10_000, 20_000, 50_000],
        "retention": 20_000,
        "dispatch": 50_000,
        "dispatch_backlog": 150_000,
        "apscheduler": [5_000, 20_000],
        "email": 500,
        "sms": 60,
        "queue_calls": 200,
        "webhook_rate": 200,
        "webhook_seconds": 60,
        "http_placements": 10_000,
        "http_workers": [1, 2],
        "http_threads": 2,
        "http_connections": 32,
        "http_seconds": 15,
    },
    "M": {
        "materialize": 100_000,
        "naive": 500,
        "rounds": 3,
        "queue": [10_000, 100_000, 500_000],  # the M: 500,000 placements, ~6-7 M follow-ups
        "retention": 500_000,
        "dispatch": 50_000,
        "dispatch_backlog": 150_000,
        "apscheduler": [5_000, 20_000, 50_000],
        "email": 2_000,
        "sms": 60,
        "queue_calls": 200,
        "webhook_rate": 200,
        "webhook_seconds": 60,
        "http_placements": 50_000,
        "http_workers": [1, 2],
        "http_threads": 2,
        "http_connections": 32,
        "http_seconds": 15,
    },
}
# L: a whole country's history (Japan places about 100,000 people a year through these programs: 20
# years of it), for the queue and retention; the other cases as at M. On PostgreSQL (the L).
SIZES["L"] = SIZES["M"] | {"queue": [10_000, 500_000, 2_000_000], "retention": 2_000_000}


# -- measuring --------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    xs = sorted(values)
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * (len(xs) - 1))))]
    return {"median": statistics.median(xs), "p95": p95, "n": len(xs)}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: per address space, so a fresh process starts at 0)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


# -- databases --------------------------------------------------------------------------------


class Db:
    """A fresh, migrated database per use: an SQLite file, or a PostgreSQL database."""

    def __init__(self, kind: str, name: str, *, reuse: bool = False) -> None:
        """``reuse``: keep an existing database of that name (migrated to head, as a deployment
        would be) rather than start afresh; see ``KEEP_DATA``."""
        self.kind, self.name = kind, name
        if kind == "sqlite":
            DATA.mkdir(parents=True, exist_ok=True)
            path = DATA / f"{name}.db"
            if not reuse:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
            self.url = f"sqlite:///{path}"
        else:
            self.url = make_url(PG_ADMIN).set(database=f"teichaku_bench_{name}").render_as_string(False)
            exists = False
            if reuse:
                admin = make_engine(PG_ADMIN)
                with admin.connect() as conn:
                    exists = bool(
                        conn.execute(
                            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": f"teichaku_bench_{name}"}
                        ).first()
                    )
                admin.dispose()
            if not exists:
                self._admin(f'DROP DATABASE IF EXISTS "teichaku_bench_{name}" WITH (FORCE)')
                self._admin(f'CREATE DATABASE "teichaku_bench_{name}"')
        upgrade(self.url)
        self.engine = make_engine(self.url)
        self.factory = make_session_factory(self.engine)

    def _admin(self, sql: str) -> None:
        admin = make_engine(PG_ADMIN)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(sql))
        admin.dispose()

    def drop(self) -> None:
        self.engine.dispose()
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.url.split("///", 1)[1] + suffix).unlink(missing_ok=True)
        else:
            self._admin(f'DROP DATABASE IF EXISTS "teichaku_bench_{self.name}" WITH (FORCE)')


def plans():
    return load_plans(ROOT / "config" / "plans")


# BENCH_KEEP_DATA=1: the generated caseloads of the queue and retention cases are kept between runs
# (bench/data/keep_<kind>_<placements>.db, or PostgreSQL databases teichaku_bench_keep_<placements>)
# and reused when their record (bench/data/keep_<kind>_<placements>.json, written once generation has
# finished) is there. Reuse migrates them to head first, as an upgrade would. The cases leave them as
# found (the queue's enrichment is taken away after; retention only reads). Delete the .json (and the .db)
# or drop the database to generate afresh, e.g. after a change to bench/generate.py.
KEEP_DATA = os.environ.get("BENCH_KEEP_DATA", "").strip().lower() in ("1", "true", "yes")


def caseload_db(kind: str, n: int, run_id: str) -> tuple[Db, gen.Caseload, bool]:
    """A database holding ``n`` generated placements: fresh, or kept from an earlier run
    (``KEEP_DATA``). Returns it, its caseload and whether it is kept (then it must not be dropped)."""
    if not KEEP_DATA:
        db = Db(kind, f"{run_id}_{n}")
        caseload = gen.generate(db.engine, plans()[gen.PLAN], placements=n)
        log(f"  {kind}: {n} placements, {caseload.follow_ups} follow-ups generated in {caseload.seconds:.1f} s")
        return db, caseload, False
    record = DATA / f"keep_{kind}_{n}.json"
    if record.exists():
        db = Db(kind, f"keep_{n}" if kind != "sqlite" else f"keep_{kind}_{n}", reuse=True)
        caseload = gen.Caseload(**json.loads(record.read_text(encoding="utf-8")))
        log(f"  {kind}: {n} placements, {caseload.follow_ups} follow-ups kept from an earlier run ({record.name})")
        with db.engine.begin() as conn:  # what a run stopped midway may have left of the queue's enrichment
            first = {"outcome": 1, "family_contact": 1, "crisis_flag": 1, "follow_up": caseload.follow_ups + 1}
            _unenrich_for_queue(conn, first)
        return db, caseload, True
    db = Db(kind, f"keep_{n}" if kind != "sqlite" else f"keep_{kind}_{n}")
    caseload = gen.generate(db.engine, plans()[gen.PLAN], placements=n)
    log(f"  {kind}: {n} placements, {caseload.follow_ups} follow-ups generated in {caseload.seconds:.1f} s (kept)")
    record.write_text(json.dumps(caseload.__dict__), encoding="utf-8")
    return db, caseload, True


# -- (1) materializing plans --------------------------------------------------------------------


def _clients_and_employers(db: Db, office_id: int, n: int) -> tuple[list[int], int]:
    with db.engine.begin() as conn:
        c0, e0 = gen.next_id(conn, "client"), gen.next_id(conn, "employer")
        gen.bulk_insert(conn, "employer", gen.EMPLOYER_COLS, [(e0, office_id, "E", gen.NOW)])
        gen.bulk_insert(
            conn,
            "client",
            gen.CLIENT_COLS,
            (
                (c0 + i, office_id, f"C{i}", None, "ja", "needy_person", True, False, True, gen.NOW, gen.NOW)
                for i in range(n)
            ),
        )
        gen.reset_sequences(conn, ("client", "employer"))
    return list(range(c0, c0 + n)), e0


def bench_materialize(db: Db, size: dict) -> dict:
    template = plans()[gen.PLAN]
    office_id, workers = gen.make_office(db.engine, workers=10)
    rng = random.Random(1)
    starts = [gen.TODAY - timedelta(days=rng.randrange(0, 120)) for _ in range(size["materialize"])]

    def ours(n: int) -> float:
        ids, employer = _clients_and_employers(db, office_id, n)
        t = time.perf_counter()
        with Session(db.engine) as session:  # as the CSV import does: one unit of work, one call
            items = [
                contacts.NewPlacement(
                    office_id=office_id,
                    client_id=cid,
                    employer_id=employer,
                    job_title="J",
                    employment_type="general",
                    start_date=starts[i % len(starts)],
                    worker_id=workers[i % len(workers)],
                    plan=gen.PLAN,
                )
                for i, cid in enumerate(ids)
            ]
            contacts.create_placements(session, items, created_by=None, plans={gen.PLAN: template})
            session.commit()
        return n / (time.perf_counter() - t)

    def naive(n: int) -> float:
        ids, employer = _clients_and_employers(db, office_id, n)
        t = time.perf_counter()
        with Session(db.engine) as session:  # a tutorial's loop: one commit per placement
            for i, cid in enumerate(ids):
                p = Placement(
                    office_id=office_id,
                    client_id=cid,
                    employer_id=employer,
                    job_title="J",
                    employment_type="general",
                    start_date=starts[i % len(starts)],
                    worker_id=workers[i % len(workers)],
                    plan=gen.PLAN,
                )
                session.add(p)
                session.commit()
                for row in gen.follow_up_rows(
                    template, p.id, office_id, p.worker_id, p.start_date, None, rng, live=False
                ):
                    session.add(FollowUp(**dict(zip(gen.FOLLOW_UP_COLS, row, strict=True))))
                session.commit()
        return n / (time.perf_counter() - t)

    def raw(n: int) -> float:
        ids, employer = _clients_and_employers(db, office_id, n)
        t = time.perf_counter()
        with db.engine.begin() as conn:  # the limit: rows straight to the driver
            p0 = gen.next_id(conn, "placement")
            prows, frows = [], []
            for i, cid in enumerate(ids):
                start, worker = starts[i % len(starts)], workers[i % len(workers)]
                prows.append(
                    (
                        p0 + i,
                        office_id,
                        cid,
                        employer,
                        "J",
                        "general",
                        start,
                        worker,
                        gen.PLAN,
                        "active",
                        None,
                        gen.NOW,
                        gen.NOW,
                    )
                )
                frows.extend(gen.follow_up_rows(template, p0 + i, office_id, worker, start, None, rng, live=False))
            gen.bulk_insert(conn, "placement", gen.PLACEMENT_COLS, prows)
            gen.bulk_insert(conn, "follow_up", gen.FOLLOW_UP_COLS, frows)
            gen.reset_sequences(conn, ("placement", "follow_up"))
        return n / (time.perf_counter() - t)

    rates = {"ours": [], "naive": [], "raw": []}
    for _ in range(size["rounds"]):
        rates["ours"].append(ours(size["materialize"]))
        rates["naive"].append(naive(size["naive"]))
        rates["raw"].append(raw(size["materialize"]))
    # Same answer: every placement has the plan's follow-ups, whichever way it was written.
    with db.engine.connect() as conn:
        per = conn.execute(sa.text("SELECT COUNT(*) FROM follow_up GROUP BY placement_id")).scalars().all()
    assert set(per) == {len(template.steps)}, set(per)
    s = {k: stats(v) for k, v in rates.items()}
    ours_m = s["ours"]["median"]
    return {
        "unit": "placements per second (median over rounds; higher is better)",
        "placements_per_round": {"ours": size["materialize"], "naive": size["naive"], "raw": size["materialize"]},
        "follow_ups_per_placement": len(template.steps),
        "stats": s,
        "ratios": {"ours/raw": ours_m / s["raw"]["median"], "ours/naive": ours_m / s["naive"]["median"]},
        "targets": {
            "ours >= 0.5 x raw": ours_m >= 0.5 * s["raw"]["median"],
            "ours >= 10 x naive": ours_m >= 10 * s["naive"]["median"],
        },
    }


# -- (2) a worker's queue as the total grows, and (6) retention ---------------------------------

# The same queue as `daily_queue` returns (same items, order and fields; `action` is a label of
# kind, channel and party, compared outside the timing), hand-written against the same indexes:
# ix_follow_up_queue for the worker's work, the primary keys, ix_family_contact_client_id and
# ix_outcome_placement_id for the correlated first family contact and latest outcome.
RAW_QUEUE = """
SELECT id, placement_id, grp, due_date, days_overdue, party, channel, kind, attempt, status_reason,
  client_id, client_name, kana, opted_out_at, opted_out_via,
  CASE WHEN party = 'employer' THEN supervisor_name WHEN fc_name IS NOT NULL THEN fc_name ELSE client_name END,
  fc_relationship,
  CASE WHEN party = 'employer' THEN employer_phone WHEN fc_name IS NOT NULL THEN fc_phone ELSE client_phone END,
  CASE WHEN party = 'employer' THEN employer_email WHEN fc_name IS NOT NULL THEN fc_email ELSE client_email END,
  CASE WHEN party = 'employer' THEN employer_address ELSE client_address END,
  employer_name,
  o_id, o_follow_up_id, o_placement_id, o_party, o_channel, o_recorded_by, o_recorded_at, o_reached,
  o_still_employed, o_wellbeing, o_risk_signals, o_unreachable, o_note, o_late
FROM (
  SELECT f.id, f.placement_id, f.due_date, f.party, f.channel, f.kind, f.attempt, f.status_reason,
    CASE WHEN f.kind = 'crisis_call' OR r.kind = 'crisis_call' THEN 'crisis'
         WHEN f.due_date < :on THEN 'overdue' ELSE 'today' END AS grp,
    {days_overdue} AS days_overdue,
    CASE f.kind WHEN 'separation_call' THEN 0 WHEN 'retry' THEN 1 ELSE 9 END AS kind_rank,
    c.id AS client_id, c.name AS client_name, c.kana, c.phone AS client_phone, c.email AS client_email,
    c.address AS client_address, c.opted_out_at, c.opted_out_via,
    e.name AS employer_name, e.supervisor_name, e.phone AS employer_phone, e.email AS employer_email,
    e.address AS employer_address,
    CASE WHEN f.party = 'family' THEN
      (SELECT name FROM family_contact WHERE client_id = c.id ORDER BY id LIMIT 1) END AS fc_name,
    CASE WHEN f.party = 'family' THEN
      (SELECT relationship FROM family_contact WHERE client_id = c.id ORDER BY id LIMIT 1) END AS fc_relationship,
    CASE WHEN f.party = 'family' THEN
      (SELECT phone FROM family_contact WHERE client_id = c.id ORDER BY id LIMIT 1) END AS fc_phone,
    CASE WHEN f.party = 'family' THEN
      (SELECT email FROM family_contact WHERE client_id = c.id ORDER BY id LIMIT 1) END AS fc_email,
    o.id AS o_id, o.follow_up_id AS o_follow_up_id, o.placement_id AS o_placement_id, o.party AS o_party,
    o.channel AS o_channel, o.recorded_by AS o_recorded_by, o.recorded_at AS o_recorded_at, o.reached AS o_reached,
    o.still_employed AS o_still_employed, o.wellbeing AS o_wellbeing, o.risk_signals AS o_risk_signals,
    o.unreachable AS o_unreachable, o.note AS o_note, o.late AS o_late
  FROM follow_up f
  JOIN placement p ON p.id = f.placement_id
  JOIN client c ON c.id = p.client_id
  JOIN employer e ON e.id = p.employer_id
  LEFT JOIN outcome o ON o.id = (SELECT max(id) FROM outcome WHERE placement_id = f.placement_id)
  LEFT JOIN follow_up r ON r.id = f.retry_of
  WHERE f.assignee_id = :worker AND f.office_id = :office AND f.automated = :false AND f.due_date <= :on
    AND (f.status = 'pending' OR (f.status = 'missed' AND (
         f.id IN (SELECT crisis_follow_up_id FROM crisis_flag
                  WHERE status <> 'resolved' AND crisis_follow_up_id IS NOT NULL)
      OR f.retry_of IN (SELECT crisis_follow_up_id FROM crisis_flag
                        WHERE status <> 'resolved' AND crisis_follow_up_id IS NOT NULL))))
) q
ORDER BY CASE grp WHEN 'crisis' THEN 0 WHEN 'overdue' THEN 1 ELSE 2 END, due_date, kind_rank, id
"""
_DAYS_OVERDUE = {
    "postgresql": "(CAST(:on AS date) - f.due_date)",
    "sqlite": "CAST(julianday(:on) - julianday(f.due_date) AS INTEGER)",
}


def _raw_queue_sql(dialect: str) -> str:
    return RAW_QUEUE.format(days_overdue=_DAYS_OVERDUE[dialect])


def _enrich_for_queue(conn: sa.Connection, worker_ids: list[int], office_id: int) -> dict:
    """What a running service has and the generator leaves out, so that every branch of the queue
    is exercised: an outcome for every done follow-up (the latest one per placement is shown),
    family contacts (two for some clients: the first is shown), opted-out clients, supervisors,
    reasons, and per measured worker an open crisis call missed yesterday with a pending retry, and
    a missed crisis call whose flag is resolved (not shown). Committed, as a running service's
    data is when a worker opens the queue, and taken away after by :func:`_unenrich_for_queue`,
    so that retention and dispatch see the generator's data. (It used to stay uncommitted in the
    measuring transaction; at 500,000 placements that is 5 M rows SQLite spills into its WAL, and
    every page the queue then read was looked up there: a cost no deployment has.)"""
    from service.outcomes.models import CrisisFlag

    t0 = time.perf_counter()
    before = {t: gen.next_id(conn, t) for t in ("outcome", "family_contact", "follow_up", "crisis_flag")}
    risks = "CASE WHEN id % 3 = 0 THEN '[\"health\", \"money\"]' ELSE '[]' END"
    if conn.dialect.name == "postgresql":
        risks = f"CAST({risks} AS json)"
    outcomes = conn.execute(
        sa.text(
            "INSERT INTO outcome (office_id, follow_up_id, placement_id, party, channel, recorded_by, recorded_at,"
            " reached, still_employed, wellbeing, risk_signals, unreachable, note, late, source)"
            " SELECT office_id, id, placement_id, party, channel, assignee_id, created_at, id % 5 <> 0,"
            " CASE WHEN id % 7 = 0 THEN 'no' ELSE 'yes' END, 1 + id % 5,"
            f" {risks}, id % 5 = 0,"
            " CASE WHEN id % 4 = 0 THEN 'note ' || id END, id % 6 = 0, 'worker'"
            " FROM follow_up WHERE status = 'done'"
        )
    ).rowcount
    for extra in (0, 1):  # a second contact for every sixth client: the first one is shown
        conn.execute(
            sa.text(
                "INSERT INTO family_contact (office_id, client_id, name, relationship, phone, email, created_at)"
                f" SELECT office_id, id, '{'Second' if extra else 'Family'} ' || id, 'mother',"
                " '+8190' || (10000000 + id), NULL, created_at FROM client WHERE id % :m = 0"
            ),
            {"m": 6 if extra else 3},
        )
    conn.execute(
        sa.text("UPDATE client SET opted_out_at = created_at, opted_out_via = 'sms', kana = 'カナ' WHERE id % 10 = 0")
    )
    conn.execute(sa.text("UPDATE employer SET supervisor_name = 'Supervisor ' || id, phone = '+81126223333'"))
    conn.execute(
        sa.text("UPDATE follow_up SET status_reason = 'not delivered' WHERE status = 'pending' AND id % 13 = 0")
    )
    fu, flag = FollowUp.__table__, CrisisFlag.__table__
    yesterday = gen.TODAY - timedelta(days=1)
    for w in worker_ids:
        pids = conn.execute(
            sa.select(Placement.id, Placement.client_id).where(Placement.worker_id == w).order_by(Placement.id).limit(2)
        ).all()
        for (pid, cid), resolved in zip(pids, (False, True), strict=False):
            common = {
                "office_id": office_id,
                "placement_id": pid,
                "party": "client",
                "channel": "phone",
                "window_days": 0,
                "automated": False,
                "assignee_id": w,
                "created_at": gen.NOW,
                "updated_at": gen.NOW,
            }
            call = conn.execute(
                sa.insert(fu)
                .values(
                    **common, kind="crisis_call", due_date=yesterday, window_end=yesterday, status="missed", attempt=0
                )
                .returning(fu.c.id)
            ).scalar_one()
            conn.execute(
                sa.insert(fu).values(
                    **common,
                    kind="retry",
                    due_date=gen.TODAY,
                    window_end=gen.TODAY,
                    status="missed" if resolved else "pending",
                    retry_of=call,
                    attempt=1,
                )
            )
            conn.execute(
                sa.insert(flag).values(
                    office_id=office_id,
                    placement_id=pid,
                    client_id=cid,
                    severity="urgent",
                    status="resolved" if resolved else "open",
                    owner_id=w,
                    opened_at=gen.NOW,
                    escalated_at=gen.NOW,
                    crisis_follow_up_id=call,
                )
            )
    return {"outcomes": outcomes, "enrich_s": time.perf_counter() - t0, "first_ids": before}


def _settle(engine: sa.Engine) -> None:
    """What a deployment's database has done by the time the enriched rows are read: on
    PostgreSQL autovacuum (statistics, visibility map) on the tables written, on SQLite the WAL
    checkpointed into the file (automatic after a commit, here made complete)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE outcome, family_contact, crisis_flag, follow_up, client, employer"))
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _unenrich_for_queue(conn: sa.Connection, first_ids: dict[str, int]) -> None:
    """Takes away what :func:`_enrich_for_queue` added (rows from the ids it noted on) and sets
    back what it changed (the generator leaves those columns empty)."""
    for table in ("crisis_flag", "outcome", "family_contact"):
        conn.execute(sa.text(f"DELETE FROM {table} WHERE id >= :first"), {"first": first_ids[table]})
    conn.execute(
        sa.text("DELETE FROM follow_up WHERE id >= :first AND retry_of IS NOT NULL"), {"first": first_ids["follow_up"]}
    )
    conn.execute(sa.text("DELETE FROM follow_up WHERE id >= :first"), {"first": first_ids["follow_up"]})
    conn.execute(
        sa.text(
            "UPDATE client SET opted_out_at = NULL, opted_out_via = NULL, kana = NULL WHERE opted_out_at IS NOT NULL"
        )
    )
    conn.execute(sa.text("UPDATE employer SET supervisor_name = NULL, phone = NULL WHERE supervisor_name IS NOT NULL"))
    conn.execute(sa.text("UPDATE follow_up SET status_reason = NULL WHERE status_reason = 'not delivered'"))


def _norm_raw(row: sa.Row) -> tuple:
    """A raw row in Python values (SQLite hands back text for dates, times and JSON; 0/1 for booleans)."""
    v = list(row)
    for i in (3,):
        v[i] = date.fromisoformat(v[i]) if isinstance(v[i], str) else v[i]
    for i in (13, 27):
        if isinstance(v[i], str):
            v[i] = datetime.fromisoformat(v[i])
        if isinstance(v[i], datetime):
            v[i] = v[i].replace(tzinfo=UTC) if v[i].tzinfo is None else v[i].astimezone(UTC)
    if isinstance(v[31], str):
        v[31] = json.loads(v[31])
    for i in (28, 32, 34):
        v[i] = None if v[i] is None else bool(v[i])
    return tuple(v)


def _flat_item(i: dict) -> tuple:
    """One item of our queue in RAW_QUEUE's column order."""
    c, k, o = i["client"], i["contact"], i["last_outcome"] or dict.fromkeys(RAW_OUTCOME_FIELDS)
    return (
        i["follow_up_id"],
        i["placement_id"],
        i["group"],
        i["due_date"],
        i["days_overdue"],
        i["party"],
        i["channel"],
        i["kind"],
        i["attempt"],
        i["reason"],
        c["id"],
        c["name"],
        c["kana"],
        c["opted_out_at"],
        c["opted_out_via"],
        k["name"],
        k["relationship"],
        k["phone"],
        k["email"],
        k["address"],
        i["employer_name"],
        *(o[f] for f in RAW_OUTCOME_FIELDS),
    )


RAW_OUTCOME_FIELDS = OUTCOME_FIELDS  # the same fields, compared one by one


class _QueueAt:
    """One size of the queue case: its database enriched (:func:`_enrich_for_queue`, committed
    and settled), a session, five workers spread over the office, and its timings."""

    def __init__(self, db: Db, caseload: gen.Caseload) -> None:
        self.db, self.caseload = db, caseload
        workers = caseload.worker_ids[:: max(1, len(caseload.worker_ids) // 5)][:5]
        with db.engine.begin() as conn:
            self.extra = _enrich_for_queue(conn, workers, caseload.office_id)
        _settle(db.engine)
        self.session = Session(db.engine)
        self.sql = sa.text(_raw_queue_sql(db.engine.dialect.name))
        self.users = [self.session.get(StaffUser, w) for w in workers]
        self.times: dict[str, list[float]] = {"ours_s": [], "raw_s": [], "ours_cpu_s": [], "raw_cpu_s": []}
        self.checked, self.items = 0, 0

    def raw(self, u: StaffUser) -> list:
        return self.session.execute(
            self.sql, {"worker": u.id, "office": u.office_id, "false": False, "on": gen.TODAY}
        ).all()

    def ours(self, u: StaffUser):
        return daily_queue(self.session, worker=u, on=gen.TODAY)

    def check(self) -> None:
        """Warm-up (statement caches, pages), and the check that both give the same queue."""
        from service.i18n import action_text

        for u in self.users:
            q = self.ours(u)
            got = [_flat_item(i) for i in q.model_dump()["items"]]
            want = [_norm_raw(r) for r in self.raw(u)]
            assert got == want, f"queue differs from raw SQL for worker {u.id}"
            lang = u.language.value
            assert [i.action for i in q.items] == [
                action_text(kind=i.kind, channel=i.channel, party=i.party, language=lang) for i in q.items
            ]
            assert {g: sum(1 for r in want if r[2] == g) for g in ("crisis", "overdue", "today")} == q.counts
            assert q.counts["crisis"] == 2 and any(r[21] is not None for r in want)
            self.checked += len(want)

    def call(self, i: int) -> None:
        """One call of ours, then one of the raw query, for the ``i``-th worker in turn."""
        user = self.users[i % len(self.users)]
        q = self._timed("ours", self.ours, user)
        rows = self._timed("raw", self.raw, user)
        self.items = len(q.items)
        assert [item.follow_up_id for item in q.items] == [r[0] for r in rows]

    def _timed(self, name: str, fn: Callable[[StaffUser], Any], user: StaffUser) -> Any:
        # Beside the wall clock, the CPU time of this process per call (user + system; the page
        # reads are system time): what the call costs, apart from waiting for a core.
        c0 = time.process_time()
        wall, out = timed(lambda: fn(user))
        self.times[f"{name}_cpu_s"].append(time.process_time() - c0)
        self.times[f"{name}_s"].append(wall)
        return out

    def close(self) -> dict:
        """Takes the enrichment away; returns the figures."""
        self.session.rollback()
        self.session.close()
        t0 = time.perf_counter()
        with self.db.engine.begin() as conn:
            _unenrich_for_queue(conn, self.extra.pop("first_ids"))
        self.extra["unenrich_s"] = time.perf_counter() - t0
        figures = {name: stats(values) for name, values in self.times.items() if values}  # none if a check failed
        return {"items_per_queue": self.items, "items_checked": self.checked} | figures | self.extra


def bench_queue(at: dict[int, tuple[Db, gen.Caseload]], calls: int) -> dict[int, dict]:
    """Ours against RAW_QUEUE at every size, interleaved: each round makes one call of ours and
    one of the raw query at each size in turn (the order of the sizes rotating round by round),
    so that every size and both paths meet the machine in the same state; a machine whose speed
    changes during a run (a shared one does) moves all the figures together, not one size's.
    After the warm-up, the garbage collector is collected and frozen for the timed calls, so
    that a collection of the enrichment's garbage is not billed to one call."""
    import gc

    cases = {n: _QueueAt(db, caseload) for n, (db, caseload) in sorted(at.items())}
    try:
        for case in cases.values():
            case.check()
        order = list(cases.values())
        gc.collect()
        gc.freeze()
        try:
            for i in range(calls):
                k = i % len(order)
                for case in order[k:] + order[:k]:
                    case.call(i)
        finally:
            gc.unfreeze()
    finally:
        figures = {n: case.close() for n, case in cases.items()}
    return figures


_DUCK_MACROS = """
CREATE MACRO mark(d, n) AS least(
    last_day(CAST(date_trunc('month', d) + to_months(n) AS DATE)),
    CAST(date_trunc('month', d) + to_months(n) + to_days(day(d) - 1) AS DATE));
"""
# Job retention, written anew for DuckDB: N-month date by its own calendar functions, counted per
# (group, N) over a cross join with the four Ns.
_DUCK_JOBS = """
WITH known AS (
    SELECT CAST(worker_id AS VARCHAR) AS grp, start_date,
           CASE WHEN sep_date <= $as_of THEN sep_date END AS known_end
    FROM placements WHERE start_date <= $as_of
), marks AS (SELECT known.*, n, mark(start_date, n) AS m FROM known CROSS JOIN (VALUES (1), (3), (6), (12)) AS t(n))
SELECT grp, n, count(*), count(*) FILTER (WHERE m <= $as_of),
       count(*) FILTER (WHERE m <= $as_of AND (known_end IS NULL OR known_end > m))
FROM marks GROUP BY grp, n"""
# Employment spells as the report defines them (reach = separation + 1 month; a spell ended by
# its N-month date is undecided until a month after its end), with DuckDB's window functions.
_DUCK_SPELLS = """
WITH known AS (
    SELECT id, client_id, CAST(worker_id AS VARCHAR) AS grp, start_date,
           CASE WHEN sep_date <= $as_of THEN sep_date END AS known_end
    FROM placements WHERE start_date <= $as_of
), walk AS (
    SELECT *, max(CASE WHEN known_end IS NULL THEN DATE '9999-12-31' ELSE mark(known_end, 1) END) OVER (
        PARTITION BY client_id ORDER BY start_date, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM known
), numbered AS (
    SELECT *, sum(CASE WHEN start_date <= reach THEN 0 ELSE 1 END) OVER (
        PARTITION BY client_id ORDER BY start_date, id ROWS UNBOUNDED PRECEDING) AS spell_no,
        reach IS NULL OR start_date > reach AS first
    FROM walk
), spells AS (
    SELECT max(grp) FILTER (WHERE first) AS grp, min(start_date) AS s,
           CASE WHEN bool_or(known_end IS NULL) THEN NULL ELSE max(known_end) END AS e
    FROM numbered GROUP BY client_id, spell_no
), marks AS (
    SELECT spells.*, n, mark(s, n) AS m, m <= $as_of AND (e IS NULL OR e > m OR mark(e, 1) <= $as_of) AS eligible
    FROM spells CROSS JOIN (VALUES (1), (3), (6), (12)) AS t(n)
)
SELECT grp, n, count(*), count(*) FILTER (WHERE eligible),
       count(*) FILTER (WHERE eligible AND (e IS NULL OR e > m))
FROM marks GROUP BY grp, n"""


def _duck_counts(result) -> dict:
    out: dict = {}
    for grp, n, started, eligible, retained in result:
        out.setdefault(grp, (started, {}))[1][n] = (eligible, retained)
    return out


def _duck_job_retention(rows: list[tuple], as_of: date, rounds: int = 5) -> tuple[float, dict, dict]:
    """DuckDB on the same rows: load once, then per round the job aggregate alone and the full
    report (job aggregate and employment spells, as ``retention()`` computes them)."""
    import duckdb
    import pandas as pd

    t0 = time.perf_counter()
    con = duckdb.connect()
    frame = pd.DataFrame(rows, columns=["id", "client_id", "worker_id", "start_date", "sep_date"])
    frame["start_date"] = pd.to_datetime(frame["start_date"])
    frame["sep_date"] = pd.to_datetime(frame["sep_date"])
    con.register("frame", frame)
    con.execute(
        "CREATE TABLE placements AS SELECT id, client_id, worker_id, CAST(start_date AS DATE) AS start_date, "
        "CAST(sep_date AS DATE) AS sep_date FROM frame"
    )
    con.execute(_DUCK_MACROS)
    load = time.perf_counter() - t0
    times: dict = {"job": [], "full": []}
    params = {"as_of": as_of}
    for _ in range(rounds):
        t, jobs = timed(lambda: con.execute(_DUCK_JOBS, params).fetchall())
        times["job"].append(t)
        t, both = timed(
            lambda: (con.execute(_DUCK_JOBS, params).fetchall(), con.execute(_DUCK_SPELLS, params).fetchall())
        )
        times["full"].append(t)
    return load, times, {"jobs": _duck_counts(jobs), "employment": _duck_counts(both[1])}


def _naive_job_retention(db: Db, office_id: int, as_of: date) -> dict:
    """A tutorial's report: load every placement and separation, loop in Python."""
    with Session(db.engine) as session:
        placements = session.exec(select(Placement).where(Placement.office_id == office_id)).all()
        seps = {s.placement_id: s.date for s in session.exec(select(Separation)).all()}
        out: dict = {}
        for p in placements:
            if p.start_date > as_of:
                continue
            end = seps.get(p.id)
            end = end if end is not None and end <= as_of else None
            entry = out.setdefault(str(p.worker_id), [0, {n: [0, 0] for n in (1, 3, 6, 12)}])
            entry[0] += 1
            for n in (1, 3, 6, 12):
                mark = add_months(p.start_date, n)
                if mark <= as_of:
                    entry[1][n][0] += 1
                    if end is None or end > mark:
                        entry[1][n][1] += 1
    return {k: (v[0], {n: tuple(c) for n, c in v[1].items()}) for k, v in out.items()}


def bench_retention(db: Db, caseload: gen.Caseload, naive_rounds: int = 3) -> dict:
    """(6) Our job aggregate and our full report (jobs, employment spells, labels: what the API
    returns) against DuckDB computing the same on the same rows, and the job aggregate against a
    load-and-loop. All three give the same numbers (asserted); the rounds alternate the paths."""
    from service.outcomes.retention import Grouping, _job_counts, retention

    as_of, office = gen.TODAY, caseload.office_id
    with Session(db.engine) as session:
        rows = session.execute(
            sa.select(Placement.id, Placement.client_id, Placement.worker_id, Placement.start_date, Separation.date)
            .outerjoin(Separation, Separation.placement_id == Placement.id)
            .where(Placement.office_id == office)
        ).all()
    load, duck_times, duck = _duck_job_retention([tuple(r) for r in rows], as_of)
    with Session(db.engine) as session:
        ours_job, ours_full = [], []
        for _ in range(5):
            t, counts = timed(lambda: _job_counts(session, office_id=office, as_of=as_of, by=Grouping.worker))
            ours_job.append(t)
            t, report = timed(lambda: retention(session, office_id=office, as_of=as_of, by=Grouping.worker))
            ours_full.append(t)

    def cells(groups) -> dict:
        return {g.key: (g.started, {int(n): (c.eligible, c.retained) for n, c in g.months.items()}) for g in groups}

    ours = cells(report.groups)
    naive_times = []
    for _ in range(naive_rounds):
        t, naive = timed(lambda: _naive_job_retention(db, office, as_of))
        naive_times.append(t)
    ours_counts = {k: (r["started"], {n: (r[f"eligible_{n}"], r[f"retained_{n}"]) for n in (1, 3, 6, 12)})
                   for k, r in counts.items()}  # fmt: skip
    assert ours == ours_counts == duck["jobs"] == naive, "job retention differs between ours, DuckDB and the loop"
    assert cells(report.employment) == duck["employment"], "employment retention differs between ours and DuckDB"
    s = {
        "ours_job_sql": stats(ours_job),
        "ours_full_report": stats(ours_full),
        "duckdb_job": stats(duck_times["job"]),
        "duckdb_full": stats(duck_times["full"]),
        "naive_loop": stats(naive_times),
    }
    m = {k: v["median"] for k, v in s.items()}
    return {
        "unit": "seconds per full recomputation (by worker; lower is better)",
        "placements": caseload.placements,
        "groups": len(ours),
        "spells": sum(g.started for g in report.employment),
        "duckdb_load_s": load,
        "numbers_equal": True,
        "stats": s,
        "ratios": {
            "ours_job/duckdb_job": m["ours_job_sql"] / m["duckdb_job"],
            "ours_full/duckdb_full": m["ours_full_report"] / m["duckdb_full"],
            "naive/ours_job": m["naive_loop"] / m["ours_job_sql"],
        },
        "targets": {
            "within 2x of DuckDB (job aggregate)": m["ours_job_sql"] <= 2 * m["duckdb_job"],
            "within 2x of DuckDB (full report)": m["ours_full_report"] <= 2 * m["duckdb_full"],
            "at least 20x the naive loop": m["naive_loop"] >= 20 * m["ours_job_sql"],
        },
        "note": "ours_job_sql / duckdb_job: the job-retention aggregate by worker; ours_full_report / duckdb_full: "
        "job retention and employment spells (window functions), as the API returns them (ours also reads the "
        "workers' names); DuckDB's load time (duckdb_load_s) is not in its figures; numbers asserted equal",
    }


def bench_sizes(kind: str, size: dict, run_id: str) -> tuple[dict, dict | None, Db | None, gen.Caseload | None]:
    """Queue at every size (interleaved, :func:`bench_queue`), then retention at the size S (or M)
    figure; keeps that database for dispatch."""
    retention_result, kept, kept_caseload = None, None, None
    sizes = sorted({*size["queue"], size["retention"]})
    at = {n: caseload_db(kind, n, run_id) for n in sizes}  # (db, caseload, kept from an earlier run)
    try:
        per_size = bench_queue({n: at[n][:2] for n in size["queue"]}, size["queue_calls"])
        for n in size["queue"]:
            per_size[n]["follow_ups"] = at[n][1].follow_ups
        db, caseload, keep = at[size["retention"]]
        # The load-and-loop takes minutes at 500,000 placements: one round of it there.
        retention_result = bench_retention(db, caseload, naive_rounds=1 if size["retention"] >= 200_000 else 3)
        if not keep:  # dispatch writes to it: a kept caseload is not handed on
            kept, kept_caseload = db, caseload
    finally:
        for db, _caseload, keep in at.values():
            if db is kept:
                continue
            if keep:
                db.engine.dispose()
            else:
                db.drop()
    small, large = per_size[min(per_size)], per_size[max(per_size)]
    queue = {
        "unit": "seconds per call of a worker's daily queue (200 clients; lower is better)",
        "by_total_placements": per_size,
        "ratios": {
            "ours/raw at largest (median)": large["ours_s"]["median"] / large["raw_s"]["median"],
            "p95 largest/smallest (ours)": large["ours_s"]["p95"] / small["ours_s"]["p95"],
        },
    }
    queue["targets"] = {
        "within 2x of raw SQL": queue["ratios"]["ours/raw at largest (median)"] <= 2,
        "flat (p95 largest <= 1.5 x smallest)": queue["ratios"]["p95 largest/smallest (ours)"] <= 1.5,
    }
    return queue, retention_result, kept, kept_caseload


# -- (3) the dispatch tick against APScheduler with one job per follow-up -----------------------


OUTBOX_COLS = (
    "idempotency_key",
    "office_id",
    "purpose",
    "channel",
    "follow_up_id",
    "placement_id",
    "client_id",
    "to_address",
    "language",
    "body",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


def _fill_outbox(db: Db, n: int, tag: str) -> None:
    """``n`` due e-mail check-ins for ``n`` distinct follow-ups (pending or done) of the caseload."""
    due = datetime(2026, 4, 20, 1, 0, tzinfo=UTC)
    with db.engine.begin() as conn:
        fus = conn.execute(
            sa.text(
                "SELECT f.id, f.placement_id, p.client_id FROM follow_up f "
                "JOIN placement p ON p.id = f.placement_id "
                "WHERE f.status IN ('pending', 'done') ORDER BY f.id LIMIT :n"
            ),
            {"n": n},
        ).all()
        assert len(fus) == n, (len(fus), n)
        gen.bulk_insert(
            conn,
            "outbox_message",
            OUTBOX_COLS,
            (
                (
                    f"bench:{tag}:{fid}",
                    1,
                    "check_in",
                    "email",
                    fid,
                    pid,
                    cid,
                    f"c{cid}@bench.example",
                    "ja",
                    "お仕事の様子はいかがですか？",
                    "queued",
                    0,
                    due,
                    due,
                    due,
                )
                for fid, pid, cid in fus
            ),
        )
    if db.kind != "sqlite":  # as autovacuum would, before the tick's first query plans
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE outbox_message"))


DISPATCH_BATCH = 1000  # rows per claim (the setting's default is 200; 1,000 keeps the transactions short still)


def _dispatch_worker(url: str, out: mp.Queue, batch: int) -> None:
    from array import array

    from service.clock import FixedClock
    from service.contacts.messaging.outbox import Messaging, dispatch_once
    from service.settings import Settings

    engine = make_engine(url)
    factory = make_session_factory(engine)
    settings = Settings(environment="test", database_url=url, dispatch_batch=batch, config_dir=ROOT / "config")
    messaging = Messaging.from_settings(settings)  # the development adapter: records, sends nothing
    clock = FixedClock(datetime(2026, 4, 20, 2, 0, tzinfo=UTC))  # 11:00 in Tokyo
    ids = array("q")  # what reached the adapter; its own list is emptied each tick (it would grow with n)
    first = None
    t = time.perf_counter()
    while asyncio.run(dispatch_once(factory, messaging, clock)):
        ids.extend(m.outbox_id for m in messaging.email.sent)
        messaging.email.sent.clear()
        first = first or time.perf_counter() - t
    ids.extend(m.outbox_id for m in messaging.email.sent)
    took = time.perf_counter() - t
    out.put({"seconds": took, "seconds_first_batch": first, "ids": ids.tolist(), "maxrss_mb": _peak_rss_mb()})
    engine.dispose()


def _dispatch_with(db: Db, n: int, processes: int, tag: str) -> dict:
    """``n`` due check-ins in the outbox, then ``processes`` fresh dispatcher processes tick until none is left."""
    _fill_outbox(db, n, tag)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_dispatch_worker, args=(db.url, out, DISPATCH_BATCH)) for _ in range(processes)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t
    ids = [i for r in results for i in r["ids"]]
    with db.engine.begin() as conn:
        sent = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM outbox_message WHERE status = 'sent' AND attempts = 1 AND idempotency_key LIKE :k"
            ),
            {"k": f"bench:{tag}:%"},
        ).scalar()
        conn.execute(sa.text("DELETE FROM outbox_message"))
    dispatch_s = max(r["seconds"] for r in results)
    log(f"  dispatch {tag}: {n} rows, {processes} process(es): {dispatch_s:.1f} s ({n / dispatch_s:,.0f}/s)")
    return {
        "messages": n,
        "processes": processes,
        "batch": DISPATCH_BATCH,
        "seconds_to_load": 0.0,  # nothing to load: each tick claims its batch straight from the table
        "seconds_first_batch": min(r["seconds_first_batch"] or r["seconds"] for r in results),
        "seconds_dispatching": dispatch_s,
        "seconds_wall_with_start": wall,
        "per_second": n / dispatch_s,
        "end_to_end_per_second": n / dispatch_s,
        "duplicates": len(ids) - len(set(ids)),
        "all_sent_once": len(set(ids)) == len(ids) == n == sent,
        "peak_rss_mb": max(r["maxrss_mb"] for r in results),
    }


_fired: list[int] = []
_fired_lock = threading.Lock()


def _aps_job(i: int) -> None:
    with _fired_lock:
        _fired.append(i)


def _apscheduler_worker(url: str, n: int, out: mp.Queue) -> None:
    """What many tutorials do: one APScheduler job per follow-up, in its SQLAlchemy job store.
    Loading: ``add_job`` per follow-up into the (persistent) store, as they are created; then the
    scheduler starts with all of them due, as after an outage, and fires them (a no-op job that
    records its argument: less work than our tick does per message)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=url, tablename="apscheduler_jobs")
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone="UTC")
    scheduler.start(paused=True)
    base_rss = _peak_rss_mb()
    run_at = datetime.now(UTC) + timedelta(seconds=1)
    t = time.perf_counter()
    for i in range(n):
        scheduler.add_job(_aps_job, "date", run_date=run_at, args=(i,), id=f"fu:{i}", misfire_grace_time=None)
    load = time.perf_counter() - t
    rss_loaded = _peak_rss_mb()
    time.sleep(max(0.0, (run_at - datetime.now(UTC)).total_seconds()))  # all due
    t = time.perf_counter()
    scheduler.resume()
    deadline = time.perf_counter() + 900
    while len(_fired) < n and time.perf_counter() < deadline:
        time.sleep(0.02)
    fire = time.perf_counter() - t
    scheduler.shutdown(wait=True)
    with store.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT COUNT(*) FROM apscheduler_jobs")).scalar()
        conn.execute(sa.text("DROP TABLE apscheduler_jobs"))
        conn.commit()
    store.engine.dispose()
    out.put(
        {
            "jobs": n,
            "seconds_to_load": load,
            "seconds_to_fire_all": fire,
            "fired": len(_fired),
            "jobs_left_in_store": left,
            "duplicates": len(_fired) - len(set(_fired)),
            "per_second": len(_fired) / fire if fire else None,
            "end_to_end_per_second": len(_fired) / (load + fire),
            "rss_started_mb": base_rss,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": _peak_rss_mb(),
        }
    )


def _apscheduler(db: Db, n: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_apscheduler_worker, args=(db.url, n, out))
    p.start()
    result = out.get(timeout=1800)
    p.join()
    log(
        f"  apscheduler: {n} jobs: load {result['seconds_to_load']:.1f} s, fire {result['seconds_to_fire_all']:.1f} s, "
        f"peak {result['peak_rss_mb']:.0f} MB"
    )
    return result


def _apscheduler_sizes(size: dict) -> list[int]:
    sizes = size["apscheduler"]
    return sorted(sizes) if isinstance(sizes, list) else [sizes]


def _dispatch_caseload_placements(size: dict) -> int:
    """Placements enough for the largest outbox (about 14 follow-ups each, some cancelled by separations)."""
    return max(size["retention"], -(-size.get("dispatch_backlog", size["dispatch"]) // 8))


def dispatch_db(kind: str, size: dict, run_id: str) -> Db:
    """A database with just the caseload the dispatch case needs (for ``--only dispatch``)."""
    db = Db(kind, f"{run_id}_dispatch")
    placements = _dispatch_caseload_placements(size)
    caseload = gen.generate(db.engine, plans()[gen.PLAN], placements=placements)
    log(f"  {kind}: {placements} placements, {caseload.follow_ups} follow-ups generated in {caseload.seconds:.1f} s")
    return db


def bench_dispatch(db: Db, size: dict) -> dict:
    n = size["dispatch"]
    backlog = size.get("dispatch_backlog", n)
    one = _dispatch_with(db, n, 1, "p1")
    four = _dispatch_with(db, n, 4, "p4")
    small = _dispatch_with(db, max(1, n // 5), 1, "small")
    big = _dispatch_with(db, backlog, 4, "backlog")
    aps_runs = {str(k): _apscheduler(db, k) for k in _apscheduler_sizes(size)}
    aps_small, aps = aps_runs[min(aps_runs, key=int)], aps_runs[max(aps_runs, key=int)]
    best = max(one, four, key=lambda r: r["per_second"])
    ratio_e2e = best["end_to_end_per_second"] / aps["end_to_end_per_second"]
    ratio_fire = best["per_second"] / aps["per_second"] if aps["per_second"] else None
    ours = (one, four, small, big)
    return {
        "unit": "due check-ins handed to the adapter per second, end to end (higher is better)",
        "basis": (
            "end to end, from 'N due items are in the database' to 'all handed to the adapter / fired': ours = "
            "claim (SKIP LOCKED on PostgreSQL), consent and opt-out check, hand-over to the development adapter, "
            "results and audit trail recorded, per batch of "
            f"{DISPATCH_BATCH}; APScheduler = add_job per follow-up into its SQLAlchemyJobStore (its only way to "
            "hold due items in the database) + firing a no-op job for each. Our rows were bulk-inserted by the "
            "benchmark (not timed): the 'firing only' ratio leaves APScheduler's loading out too. Ours is compared "
            "at its size (the better of 1 and 4 processes), APScheduler at its largest size"
        ),
        "ours_1_process": one,
        "ours_4_processes": four,
        "ours_1_process_fifth_size": small,
        "ours_backlog_4_processes": big,
        "apscheduler_sqlalchemy_jobstore": aps,
        "apscheduler_by_jobs": aps_runs,
        "ratios": {
            "ours/apscheduler (end to end, incl. its loading)": ratio_e2e,
            "ours/apscheduler (firing only)": ratio_fire,
            "our peak RSS at n / at n/5": one["peak_rss_mb"] / small["peak_rss_mb"],
            "our peak RSS at backlog / at n (4 processes)": big["peak_rss_mb"] / four["peak_rss_mb"],
            "APScheduler peak RSS largest / smallest": aps["peak_rss_mb"] / aps_small["peak_rss_mb"],
            "APScheduler load seconds per 1,000 jobs": 1000 * aps["seconds_to_load"] / aps["jobs"],
        },
        "targets": {
            "at least 100x APScheduler's throughput (end to end)": ratio_e2e >= 100,
            "at least 100x APScheduler's throughput (firing only)": bool(ratio_fire and ratio_fire >= 100),
            "zero duplicates": all(r["duplicates"] == 0 and r["all_sent_once"] for r in ours),
            "memory flat (peak RSS at n and at the backlog <= 1.5 x at n/5)": max(
                one["peak_rss_mb"], big["peak_rss_mb"]
            )
            <= 1.5 * small["peak_rss_mb"],
        },
    }


# -- the run --------------------------------------------------------------------------------------


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        # How busy the machine was (1, 5 and 15 minute load averages), at the start and at the end
        # of the run: read, not assumed; the summary states them.
        "load_at_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        eng = make_engine(PG_ADMIN)
        with eng.connect() as conn:
            info["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar()
        eng.dispose()
    except Exception as exc:  # noqa: BLE001
        info["postgresql"] = f"unavailable ({type(exc).__name__})"
    return info


CASES = ("materialize", "queue", "retention", "dispatch", "email", "pages", "webhooks", "http", "sms")


def run(kinds: list[str], size_name: str, only: set[str]) -> dict:
    size = SIZES[size_name]
    run_id = datetime.now().strftime("%H%M%S")
    out: dict = {
        "size": size_name,
        "sizes": size,
        "started": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "results": defaultdict(dict),
    }
    for kind in kinds:
        log(f"{kind}: start")
        if "materialize" in only:
            db = Db(kind, f"{run_id}_mat")
            out["results"][kind]["materialize"] = bench_materialize(db, size)
            db.drop()
            log(f"{kind}: materialize done")
        kept = None
        if only & {"queue", "retention"}:
            queue, retention_result, kept, caseload = bench_sizes(kind, size, run_id)
            out["results"][kind]["queue"] = queue
            out["results"][kind]["retention"] = retention_result
            log(f"{kind}: queue and retention done")
        if "dispatch" in only and kept is None:  # --only dispatch, or a kept caseload: just the one it needs
            kept = dispatch_db(kind, size, run_id)
        if "dispatch" in only and kept is not None:
            out["results"][kind]["dispatch"] = bench_dispatch(kept, size)
            log(f"{kind}: dispatch done")
        if kept is not None:
            kept.drop()
        if "pages" in only:
            from bench.pages import bench_pages  # the real app over the demo data (bench/pages.py)

            db = Db(kind, f"pages_{run_id}")
            try:
                out["results"][kind]["pages"] = bench_pages(db, size_name)
            finally:
                db.drop()
            log(f"{kind}: pages done")
        if "webhooks" in only:
            from bench.load import bench_webhooks  # (4) signed webhooks at a constant rate (bench/load.py)

            out["results"][kind]["webhooks"] = bench_webhooks(kind, size, run_id)
            log(f"{kind}: webhooks done")
        if "http" in only:
            from bench.load import bench_http  # (7) wrk on the queue endpoint against /healthz

            out["results"][kind]["http"] = bench_http(kind, size, run_id)
            log(f"{kind}: http done")
    if "email" in only:
        from bench.mail import bench_email  # (5a) pooled sessions against one per message, STARTTLS + AUTH

        out["results"]["smtp"] = {"email": bench_email(size)}
        log("email done")
    if "sms" in only:
        from bench.sms import bench_sms  # (5b) SMS pacing against a local endpoint enforcing 1/s per sender

        out["results"]["twilio"] = {"sms": bench_sms(size)}
        log("sms done")
    out["finished"] = datetime.now(UTC).isoformat()
    out["machine"]["load_at_end"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both (comma-separated)")
    ap.add_argument("--only", default=",".join(CASES), help=f"cases: {', '.join(CASES)}")
    args = ap.parse_args()
    size_name = "quick" if args.quick else os.environ.get("BENCH_SIZE", "S").upper()
    if size_name not in SIZES:
        sys.exit(f"BENCH_SIZE must be S, M or L, not {size_name!r}")
    result = run([k.strip() for k in args.db.split(",") if k.strip()], size_name, set(args.only.split(",")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    from bench.summary import write_summary

    write_summary(result, RESULTS / "summary.md", path.name)
    log(f"wrote {path.relative_to(ROOT)} and bench/results/summary.md")


if __name__ == "__main__":
    main()
