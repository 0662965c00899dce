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

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from bench import generate as gen
from service.accounts.models import StaffUser
from service.contacts import service as contacts
from service.contacts.models import FollowUp, Placement, Separation
from service.db import make_engine, make_session_factory
from service.migrate import upgrade
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
        "apscheduler": 300,
        "email": 100,
        "queue_calls": 15,
    },
    "S": {
        "materialize": 2_000,
        "naive": 200,
        "rounds": 3,
        "queue": [10_000, 20_000, 50_000],
        "retention": 20_000,
        "dispatch": 10_000,
        "apscheduler": 1_000,
        "email": 500,
        "queue_calls": 30,
    },
    "M": {
        "materialize": 20_000,
        "naive": 500,
        "rounds": 3,
        "queue": [10_000, 50_000, 200_000],
        "retention": 200_000,
        "dispatch": 50_000,
        "apscheduler": 2_000,
        "email": 2_000,
        "queue_calls": 40,
    },
}


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

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        if kind == "sqlite":
            DATA.mkdir(parents=True, exist_ok=True)
            path = DATA / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self.url = f"sqlite:///{path}"
        else:
            self.url = make_url(PG_ADMIN).set(database=f"teichaku_bench_{name}").render_as_string(False)
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
        with Session(db.engine) as session:  # as the CSV import does: one unit of work
            for i, cid in enumerate(ids):
                contacts.create_placement(
                    session,
                    office_id=office_id,
                    created_by=None,
                    plans={gen.PLAN: template},
                    client_id=cid,
                    employer_id=employer,
                    job_title="J",
                    employment_type="general",
                    start_date=starts[i % len(starts)],
                    worker_id=workers[i % len(workers)],
                    plan=gen.PLAN,
                )
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

RAW_QUEUE = """
SELECT f.id, f.due_date, f.kind, f.channel, p.id, p.job_title, c.id, c.name, c.phone, c.email, e.id, e.name
FROM follow_up f
JOIN placement p ON p.id = f.placement_id
JOIN client c ON c.id = p.client_id
JOIN employer e ON e.id = p.employer_id
WHERE f.assignee_id = :worker AND f.office_id = :office AND f.status = 'pending'
  AND f.automated = :false AND f.due_date <= :on
ORDER BY f.due_date, f.id
"""


def bench_queue_at(db: Db, caseload: gen.Caseload, calls: int) -> dict:
    from service.outcomes.queue import daily_queue

    workers = caseload.worker_ids[:: max(1, len(caseload.worker_ids) // 5)][:5]
    ours, raw = [], []
    with Session(db.engine) as session:
        users = [session.get(StaffUser, w) for w in workers]
        for i in range(calls):
            user = users[i % len(users)]
            t, q = timed(lambda u=user: daily_queue(session, worker=u, on=gen.TODAY))
            ours.append(t)
            t, rows = timed(
                lambda u=user: session.execute(
                    sa.text(RAW_QUEUE), {"worker": u.id, "office": u.office_id, "false": False, "on": gen.TODAY}
                ).all()
            )
            raw.append(t)
            assert [item.follow_up_id for item in q.items] == [r[0] for r in rows]
            session.expunge_all()
    return {"items_per_queue": len(q.items), "ours_s": stats(ours), "raw_s": stats(raw)}


def _duck_job_retention(rows: list[tuple], as_of: date) -> tuple[float, float, dict]:
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect()
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["id", "worker_id", "start_date", "sep_date"])
    frame["start_date"] = pd.to_datetime(frame["start_date"])
    frame["sep_date"] = pd.to_datetime(frame["sep_date"])
    con.register("frame", frame)
    con.execute(
        "CREATE TABLE placements AS SELECT id, worker_id, CAST(start_date AS DATE) AS start_date, "
        "CAST(sep_date AS DATE) AS sep_date FROM frame"
    )
    load = time.perf_counter() - t0
    mark = """least(
        last_day(CAST(date_trunc('month', start_date) + to_months(n) AS DATE)),
        CAST(date_trunc('month', start_date) + to_months(n) + to_days(day(start_date) - 1) AS DATE))"""
    sql = f"""
        WITH known AS (
            SELECT *, CAST(worker_id AS VARCHAR) AS grp, CASE WHEN sep_date <= $as_of THEN sep_date END AS known_end
            FROM placements WHERE start_date <= $as_of
        ), marks AS (SELECT known.*, n, {mark} AS mark FROM known CROSS JOIN (VALUES (1), (3), (6), (12)) AS t(n))
        SELECT grp, n, count(*), count(*) FILTER (WHERE mark <= $as_of),
               count(*) FILTER (WHERE mark <= $as_of AND (known_end IS NULL OR known_end > mark))
        FROM marks GROUP BY grp, n"""
    times, out = [], {}
    for _ in range(5):
        t, result = timed(lambda: con.execute(sql, {"as_of": as_of}).fetchall())
        times.append(t)
    for grp, n, started, eligible, retained in result:
        out.setdefault(grp, (started, {}))[1][n] = (eligible, retained)
    return load, times, out


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


def bench_retention(db: Db, caseload: gen.Caseload) -> dict:
    from service.outcomes.retention import Grouping, _placements, _retention_counts, retention

    as_of, office = gen.TODAY, caseload.office_id
    with Session(db.engine) as session:
        ours_job, ours_full = [], []
        for _ in range(5):
            t, counts = timed(
                lambda: _retention_counts(
                    session, _placements(office_id=office, as_of=as_of, by=Grouping.worker), as_of=as_of, spells=False
                )
            )
            ours_job.append(t)
            t, report = timed(lambda: retention(session, office_id=office, as_of=as_of, by=Grouping.worker))
            ours_full.append(t)
        rows = session.execute(
            sa.select(Placement.id, Placement.worker_id, Placement.start_date, Separation.date)
            .outerjoin(Separation, Separation.placement_id == Placement.id)
            .where(Placement.office_id == office)
        ).all()
    ours = {g.key: (g.started, {int(n): (c.eligible, c.retained) for n, c in g.months.items()}) for g in report.groups}
    load, duck_times, duck = _duck_job_retention([tuple(r) for r in rows], as_of)
    naive_times = []
    for _ in range(3):
        t, naive = timed(lambda: _naive_job_retention(db, office, as_of))
        naive_times.append(t)
    assert ours == duck == naive, "retention differs between our SQL, DuckDB and the naive loop"
    assert counts  # the job-only path ran
    s = {
        "ours_job_sql": stats(ours_job),
        "ours_full_report": stats(ours_full),
        "duckdb": stats(duck_times),
        "naive_loop": stats(naive_times),
    }
    m = {k: v["median"] for k, v in s.items()}
    return {
        "unit": "seconds per full recomputation (by worker; lower is better)",
        "placements": caseload.placements,
        "groups": len(ours),
        "duckdb_load_s": load,
        "numbers_equal": True,
        "stats": s,
        "ratios": {
            "ours_job/duckdb": m["ours_job_sql"] / m["duckdb"],
            "naive/ours_job": m["naive_loop"] / m["ours_job_sql"],
            "ours_full/duckdb": m["ours_full_report"] / m["duckdb"],
        },
        "targets": {
            "within 2x of DuckDB": m["ours_job_sql"] <= 2 * m["duckdb"],
            "at least 20x the naive loop": m["naive_loop"] >= 20 * m["ours_job_sql"],
        },
        "note": "ours_job_sql is the same job-retention aggregate DuckDB computes; ours_full_report adds "
        "employment spells (window functions) and labels, as the API returns it",
    }


def bench_sizes(kind: str, size: dict, run_id: str) -> tuple[dict, dict | None, Db | None, gen.Caseload | None]:
    """Queue at each size; retention at the size S (or M) figure; keeps that database for dispatch."""
    per_size, retention_result, kept, kept_caseload = {}, None, None, None
    for n in size["queue"] + ([size["retention"]] if size["retention"] not in size["queue"] else []):
        db = Db(kind, f"{run_id}_{n}")
        caseload = gen.generate(db.engine, plans()[gen.PLAN], placements=n)
        log(f"  {kind}: {n} placements, {caseload.follow_ups} follow-ups generated in {caseload.seconds:.1f} s")
        if n in size["queue"]:
            per_size[n] = bench_queue_at(db, caseload, size["queue_calls"]) | {"follow_ups": caseload.follow_ups}
        if n == size["retention"]:
            retention_result = bench_retention(db, caseload)
            kept, kept_caseload = db, caseload
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


def _dispatch_worker(url: str, out: mp.Queue, batch: int) -> None:
    from service.clock import FixedClock
    from service.contacts.messaging.outbox import Messaging, dispatch_once
    from service.settings import Settings

    engine = make_engine(url)
    factory = make_session_factory(engine)
    settings = Settings(environment="test", database_url=url, dispatch_batch=batch, config_dir=ROOT / "config")
    messaging = Messaging.from_settings(settings)  # the development adapter: records, sends nothing
    clock = FixedClock(datetime(2026, 4, 20, 2, 0, tzinfo=UTC))  # 11:00 in Tokyo
    t = time.perf_counter()
    while asyncio.run(dispatch_once(factory, messaging, clock)):
        pass
    took = time.perf_counter() - t
    out.put(
        {
            "seconds": took,
            "ids": [m.outbox_id for m in messaging.email.sent],
            "maxrss_mb": _peak_rss_mb(),
        }
    )
    engine.dispose()


def _dispatch_with(db: Db, n: int, processes: int, tag: str) -> dict:
    _fill_outbox(db, n, tag)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_dispatch_worker, args=(db.url, out, 1000)) for _ in range(processes)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
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
    return {
        "messages": n,
        "processes": processes,
        "seconds_dispatching": dispatch_s,
        "seconds_wall_with_start": wall,
        "per_second": n / dispatch_s,
        "duplicates": len(ids) - len(set(ids)),
        "all_sent_once": len(set(ids)) == n == sent,
        "peak_rss_mb": max(r["maxrss_mb"] for r in results),
    }


_fired: list[int] = []
_fired_lock = threading.Lock()


def _aps_job(i: int) -> None:
    with _fired_lock:
        _fired.append(i)


def _apscheduler_worker(url: str, n: int, out: mp.Queue) -> None:
    """What many tutorials do: one APScheduler job per follow-up, in its SQLAlchemy job store."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=url, tablename="apscheduler_jobs")
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone="UTC")
    scheduler.start(paused=True)
    run_at = datetime.now(UTC) + timedelta(seconds=1)
    t = time.perf_counter()
    for i in range(n):
        scheduler.add_job(_aps_job, "date", run_date=run_at, args=(i,), id=f"fu:{i}", misfire_grace_time=None)
    load = time.perf_counter() - t
    t = time.perf_counter()
    scheduler.resume()
    deadline = time.perf_counter() + 240
    while len(_fired) < n and time.perf_counter() < deadline:
        time.sleep(0.02)
    fire = time.perf_counter() - t
    scheduler.shutdown(wait=True)
    store.engine.dispose()
    out.put(
        {
            "jobs": n,
            "seconds_to_load": load,
            "seconds_to_fire_all": fire,
            "fired": len(_fired),
            "duplicates": len(_fired) - len(set(_fired)),
            "per_second": len(_fired) / fire if fire else None,
            "peak_rss_mb": _peak_rss_mb(),
        }
    )


def _apscheduler(db: Db, n: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_apscheduler_worker, args=(db.url, n, out))
    p.start()
    result = out.get(timeout=600)
    p.join()
    return result


def bench_dispatch(db: Db, size: dict) -> dict:
    n = size["dispatch"]
    one = _dispatch_with(db, n, 1, "p1")
    four = _dispatch_with(db, n, 4, "p4")
    small = _dispatch_with(db, max(1, n // 5), 1, "small")
    aps = _apscheduler(db, size["apscheduler"])
    ratio = max(one["per_second"], four["per_second"]) / aps["per_second"] if aps["per_second"] else None
    return {
        "unit": "messages claimed and handed to the (development) adapter per second; higher is better",
        "ours_1_process": one,
        "ours_4_processes": four,
        "ours_1_process_fifth_size": small,
        "apscheduler_sqlalchemy_jobstore": aps,
        "ratios": {
            "ours/apscheduler (throughput)": ratio,
            "our peak RSS at n / at n/5": one["peak_rss_mb"] / small["peak_rss_mb"],
            "APScheduler load seconds per 1,000 jobs": 1000 * aps["seconds_to_load"] / aps["jobs"],
        },
        "targets": {
            "at least 100x APScheduler's throughput": bool(ratio and ratio >= 100),
            "zero duplicates": one["duplicates"] == four["duplicates"] == 0
            and one["all_sent_once"]
            and four["all_sent_once"],
            "memory flat (peak RSS at n <= 1.5 x at n/5)": one["peak_rss_mb"] <= 1.5 * small["peak_rss_mb"],
        },
    }


# -- (5) e-mail: one connection for the batch against one per message ---------------------------


def bench_email(size: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from service.contacts.messaging.ports import Email, Sent
    from service.contacts.messaging.smtp import SmtpAdapter
    from tests.contacts.smtp_sink import smtp_sink

    n = size["email"]
    emails = [Email(i, f"c{i}@bench.example", "お仕事の様子", "お仕事の様子はいかがですか？\n" * 5) for i in range(n)]
    reuse, single = [], []
    with smtp_sink() as (sink, port):
        for _ in range(size["rounds"]):
            adapter = SmtpAdapter(host="127.0.0.1", port=port, sender="office@bench.example", rate_per_second=1e6)
            t, res = timed(lambda a=adapter: asyncio.run(a.send_batch(emails)))
            assert all(isinstance(r, Sent) for r in res) and adapter.connections == 1
            reuse.append(n / t)
            adapter = SmtpAdapter(host="127.0.0.1", port=port, sender="office@bench.example", rate_per_second=1e6)

            async def one_by_one(a=adapter):
                return [(await a.send_batch([e]))[0] for e in emails]

            t, res = timed(lambda: asyncio.run(one_by_one()))
            assert all(isinstance(r, Sent) for r in res) and adapter.connections == n
            single.append(n / t)
        received = len(sink.received)
    assert received == 2 * n * size["rounds"]
    s = {"reuse": stats(reuse), "one_connection_per_message": stats(single)}
    ratio = s["reuse"]["median"] / s["one_connection_per_message"]["median"]
    return {
        "unit": "e-mails per second to a local aiosmtpd sink (rate limit lifted; higher is better)",
        "messages_per_round": n,
        "stats": s,
        "ratios": {"reuse/one-per-message": ratio},
        "targets": {"at least 20x": ratio >= 20},
        "note": "on loopback a new connection costs little; over TLS to a real server the gap is wider",
    }


# -- the run --------------------------------------------------------------------------------------


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "shared": "2 cores shared with other jobs: figures are indicative",
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


CASES = ("materialize", "queue", "retention", "dispatch", "email")


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
        if only & {"queue", "retention", "dispatch"}:
            queue, retention_result, kept, caseload = bench_sizes(kind, size, run_id)
            out["results"][kind]["queue"] = queue
            out["results"][kind]["retention"] = retention_result
            log(f"{kind}: queue and retention done")
        if "dispatch" in only and kept is not None:
            out["results"][kind]["dispatch"] = bench_dispatch(kept, size)
            log(f"{kind}: dispatch done")
        if kept is not None:
            kept.drop()
    if "email" in only:
        out["results"]["smtp"] = {"email": bench_email(size)}
        log("email done")
    out["finished"] = datetime.now(UTC).isoformat()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both (comma-separated)")
    ap.add_argument("--only", default=",".join(CASES), help=f"cases: {', '.join(CASES)}")
    args = ap.parse_args()
    size_name = "quick" if args.quick else os.environ.get("BENCH_SIZE", "S").upper()
    if size_name not in SIZES:
        sys.exit(f"BENCH_SIZE must be S or M, not {size_name!r}")
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
