"""Where a dispatch tick's time goes: ``n`` due e-mail check-ins (the benchmark's rows), one
process ticking ``dispatch_once`` until none is left, under cProfile; prints the split by phase.

    python -m bench.profile_dispatch --db sqlite [--n 50000] [--batch 1000] [--keep]

The caseload is generated once into bench/data (SQLite) or ``teichaku_bench_profile_dispatch``
(PostgreSQL) and kept with ``--keep`` for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from datetime import UTC, datetime

import sqlalchemy as sa

from bench import run as brun
from service.db import make_engine, make_session_factory

# The phases, as (label, function name in outbox.py); their cumulative times.
PHASES = (
    ("claim (UPDATE ... RETURNING + summary event + commit)", "claim"),
    ("drop unwanted (consent checks)", "_drop_unwanted"),
    ("hand to the adapter (building messages + adapter)", "_send"),
    ("record results (total)", "_record_results"),
    ("  mark sent (UPDATE ... FROM json)", "_mark_sent"),
    ("  summary audit rows (Python)", "summary_rows"),
    ("  audit insert", "record_events"),
)


class _Reopened(brun.Db):
    def __init__(self, kind: str, name: str) -> None:  # an existing database, as it is
        self.kind, self.name = kind, name
        if kind == "sqlite":
            self.url = f"sqlite:///{brun.DATA / f'{name}.db'}"
        else:
            self.url = brun.make_url(brun.PG_ADMIN).set(database=f"teichaku_bench_{name}").render_as_string(False)
        brun.upgrade(self.url)
        self.engine = make_engine(self.url)
        self.factory = make_session_factory(self.engine)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=brun.DISPATCH_BATCH)
    ap.add_argument("--keep", action="store_true", help="reuse the caseload of an earlier --keep run")
    ap.add_argument("--top", type=int, default=0, help="also print the top N functions by own time")
    args = ap.parse_args()
    name = "profile_dispatch"
    try:
        db = _Reopened(args.db, name) if args.keep else None
        if db is not None:
            with db.engine.connect() as conn:
                if not conn.execute(sa.text("SELECT COUNT(*) FROM follow_up")).scalar():
                    raise LookupError
    except Exception:  # noqa: BLE001
        db = None
    if db is None:
        db = brun.dispatch_db(args.db, brun.SIZES["S"], "profile")  # named "profile_dispatch"
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox_message"))
    brun._fill_outbox(db, args.n, "prof")

    from service.clock import FixedClock
    from service.contacts.messaging.outbox import Messaging, dispatch_once
    from service.settings import Settings

    engine = make_engine(db.url)
    factory = make_session_factory(engine)
    settings = Settings(
        environment="test", database_url=db.url, dispatch_batch=args.batch, config_dir=brun.ROOT / "config"
    )
    messaging = Messaging.from_settings(settings)
    clock = FixedClock(datetime(2026, 4, 20, 2, 0, tzinfo=UTC))

    def ticks() -> int:
        sent = 0
        while n := asyncio.run(dispatch_once(factory, messaging, clock)):
            sent += n
            messaging.email.sent.clear()
        return sent

    t0, c0 = time.perf_counter(), time.process_time()
    sent = ticks()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{args.db}: {sent} sent in {wall:.2f} s wall, {cpu:.2f} s CPU: {sent / wall:,.0f}/s (no profiler)")
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox_message"))
    brun._fill_outbox(db, args.n, "prof2")
    from service.contacts.messaging import outbox

    async def inline(func, /, *args, **kwargs):  # cProfile sees one thread: run the tick's DB work in it
        return func(*args, **kwargs)

    real, outbox.asyncio.to_thread = outbox.asyncio.to_thread, inline
    prof = cProfile.Profile()
    prof.enable()
    try:
        sent = ticks()
    finally:
        prof.disable()
        outbox.asyncio.to_thread = real
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # own times: the profile's total
    print(f"profiled: {sent} sent, {total:.2f} s total")
    by_name: dict[str, float] = {}
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if "outbox.py" in path or "capture.py" in path:
            by_name[func] = max(by_name.get(func, 0.0), ct)
    for label, func in PHASES:
        ct = by_name.get(func, 0.0)
        print(f"  {label:<58} {ct:7.2f} s  {100 * ct / total:5.1f}%")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    engine.dispose()
    if not args.keep:
        db.drop()


if __name__ == "__main__":
    main()
