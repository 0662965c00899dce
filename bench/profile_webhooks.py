"""CPU of one inbound SMS webhook, in process (issue 7, case (4)): the real app (create_app, its
lifespan and middleware) driven by a bare ASGI caller (no HTTP client or server in the way), on
data built as bench/load.py builds it. Reports the API's CPU per request and, on PostgreSQL, the
CPU of the server backends that served it (from /proc), then a cProfile of a second pass.

    .venv/bin/python -m bench.profile_webhooks --db postgres -n 1000 [--profile out.prof]

``--direct``: the route's database work only, called in this thread (keeping the SMS, then acting
on it, measured apart); ``--trace``: the statements run, per request, by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time

import sqlalchemy as sa

from bench import load
from bench.servers import cpu_seconds


def _backend_cpu(engine: sa.Engine, dbname: str) -> float:
    """utime + stime (seconds) of the PostgreSQL backends connected to ``dbname``."""
    with engine.connect() as conn:
        pids = conn.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": dbname}
        ).scalars()
        total = 0.0
        for pid in pids:
            try:
                total += cpu_seconds(pid)
            except OSError:  # gone meanwhile
                continue
        return total


async def _call(app, send_: load.Send, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in send_.headers.items()]
        + [(b"content-length", str(len(send_.body)).encode()), (b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": send_.body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _lifespan(app):
    queue: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()
    done = asyncio.Event()

    async def receive():
        return await queue.get()

    async def send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set()
        if message["type"] == "lifespan.shutdown.complete":
            done.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    await queue.put({"type": "lifespan.startup"})
    await started.wait()

    async def stop():
        await queue.put({"type": "lifespan.shutdown"})
        await done.wait()
        await task

    return stop


async def _run(app, sends, path, engine, dbname, prof: cProfile.Profile | None, concurrency: int):
    statuses: dict[int, int] = {}
    half = len(sends) // 2
    passes = [sends[:half], sends[half:]]
    out = []
    for i, batch in enumerate(passes):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        pg0 = _backend_cpu(engine, dbname) if dbname else 0.0
        if prof is not None and i == 1:
            prof.enable()
        sem = asyncio.Semaphore(concurrency)

        async def one(s, sem=sem):
            async with sem:
                st = await _call(app, s, path)
                statuses[st] = statuses.get(st, 0) + 1

        await asyncio.gather(*(one(s) for s in batch))
        if prof is not None and i == 1:
            prof.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        pg = (_backend_cpu(engine, dbname) - pg0) if dbname else 0.0
        out.append((len(batch), cpu, wall, pg))
    return out, statuses


def _direct(app, sends, engine, dbname, prof):
    """The route's database work only (``_record_sms``), one after another in this thread."""
    from urllib.parse import parse_qsl

    from service.outcomes import answer_routes as routes

    forms = [dict(parse_qsl(s.body.decode())) for s in sends]
    ids: list[int] = []

    def keep():
        for f in forms:
            i = routes._keep_sms(app.state, f["MessageSid"], f["From"], f.get("Body", ""))
            if i is not None:
                ids.append(i)

    def act():
        for i in ids:
            routes._process_sms(app.state, i)

    def combined():
        for f in forms:
            routes._record_sms(app.state, f["MessageSid"], f["From"], f.get("Body", ""))

    steps = [("keep", keep), ("act", act)] if hasattr(routes, "_keep_sms") else [("keep+act", combined)]
    out = []
    for name, step in steps:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        pg0 = _backend_cpu(engine, dbname) if dbname else 0.0
        if prof is not None:
            prof.enable()
        step()
        if prof is not None:
            prof.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        pg = (_backend_cpu(engine, dbname) - pg0) if dbname else 0.0
        print(name, end=": ")
        out.append((len(forms), cpu, wall, pg))
    return out, {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgres", choices=("postgres", "sqlite"))
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--profile", help="write the second pass's cProfile here")
    ap.add_argument("--trace", action="store_true", help="count the statements the requests run, by kind")
    ap.add_argument(
        "--direct", action="store_true", help="call the route's database work in this thread (cProfile sees it)"
    )
    args = ap.parse_args()

    from bench.run import Db

    db = Db(args.db, f"prof_hooks_{os.getpid()}")
    try:
        phones = load._prepare_replies(db, args.n + 100, backlog=0)
        os.environ.update(load._env(db.url, 80, TEICHAKU_SCHEDULER_ENABLED="false"))
        from service.app import create_app
        from service.settings import get_settings

        getattr(get_settings, "cache_clear", lambda: None)()
        app = create_app()
        url = "http://127.0.0.1:80/webhooks/twilio/sms"
        sends = load._timetable(phones, url, 200, args.n / 200, 0.05)
        dbname = db.engine.url.database if args.db == "postgres" else None
        prof = (cProfile.Profile(time.thread_time) if args.direct else cProfile.Profile()) if args.profile else None

        counts: dict[str, int] = {}
        if args.trace:
            import re

            from sqlalchemy import event

            def note(conn, cursor, statement, parameters, context, executemany):
                key = re.sub(r"\s+", " ", statement)[:110]
                counts[key] = counts.get(key, 0) + 1

            def hook(app_state_engine):
                event.listen(app_state_engine, "before_cursor_execute", note)
                event.listen(
                    app_state_engine, "commit", lambda c: counts.__setitem__("COMMIT", counts.get("COMMIT", 0) + 1)
                )

        async def go():
            stop = await _lifespan(app)
            if args.trace:
                hook(app.state.engine)
            try:
                if args.direct:
                    return _direct(app, sends, db.engine, dbname, prof)
                return await _run(app, sends, "/webhooks/twilio/sms", db.engine, dbname, prof, args.concurrency)
            finally:
                await stop()

        passes, statuses = asyncio.run(go())
        print("statuses", statuses)
        for n, cpu, wall, pg in passes:
            print(
                f"{n} requests: API CPU {1000 * cpu / n:.2f} ms/request,"
                f" PostgreSQL backends {1000 * pg / n:.2f} ms/request, wall {1000 * wall / n:.2f} ms/request"
            )
        for key, c in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"{c / len(sends):7.3f}  {key}")
        if prof is not None:
            prof.dump_stats(args.profile)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    finally:
        db.drop()


if __name__ == "__main__":
    main()
