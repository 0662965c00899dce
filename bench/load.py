"""(4) signed Twilio webhooks at a constant rate while the scheduler ticks, and (7) the queue
endpoint under wrk against the same app's /healthz. Both run the real app with uvicorn in
subprocesses on a free loopback port; bench/run.py calls ``bench_webhooks`` and ``bench_http``.

(4) Open loop: every request has a slot on a fixed timetable (``rate`` per second) and its
latency is measured from that slot, not from when the client got round to sending it, so a slow
server cannot slow the load down and hide its own queueing (coordinated omission). Every request
is signed with twilio's own ``RequestValidator`` and the app's auth token; a share are Twilio's
re-deliveries of an earlier MessageSid (some 5 ms after the first, racing it; some 1-3 s later).
Afterwards the database must hold each MessageSid exactly once and one outcome per answer. The
client is aiohttp (see ``_fire``); httpx checks the app before the run and drives nothing else.

(7) wrk (closed loop, the usual throughput figure) on GET /api/v1/queue with bearer tokens of
five workers in turn, and on /healthz with the same threads, connections and duration.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa

from bench import generate as gen
from bench.servers import DATA, Proc, free_port

ROOT = Path(__file__).resolve().parent.parent
FAKE_NOW = "2026-04-20T11:00:00+09:00"  # gen.TODAY, inside the default sending window
AUTH_TOKEN = "bench-twilio-auth-token-not-a-secret"
SECRET_KEY = "bench-secret-key-not-a-secret-0123456789abcdef"
ACCOUNT_SID = "AC" + "0" * 32
OUR_NUMBER = "+81500000000"
MAX_CONNECTIONS = 1000  # the webhook client's: beyond it requests wait in the client (and count)
SENT_AT = datetime(2026, 4, 20, 0, 30, tzinfo=UTC)  # 09:30 in Tokyo: the check-ins the replies answer


def app_factory():
    """For ``uvicorn --factory``: as ``teichaku serve`` does, JSON logs first (in each worker)."""
    from service.app import create_app
    from service.logging import configure_logging

    configure_logging()
    return create_app()


# -- processes ---------------------------------------------------------------------------------


def _env(url: str, public_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEICHAKU_") and k != "DATABASE_URL"}
    env |= {
        "DATABASE_URL": url,
        "TEICHAKU_ENVIRONMENT": "test",  # for TEICHAKU_FAKE_NOW only
        "TEICHAKU_FAKE_NOW": FAKE_NOW,
        "TEICHAKU_SECRET_KEY": SECRET_KEY,
        "TEICHAKU_TWILIO_AUTH_TOKEN": AUTH_TOKEN,  # no account SID: SMS go to the development adapter
        "TEICHAKU_PUBLIC_URL": f"http://127.0.0.1:{public_port}",
        "TEICHAKU_CONFIG_DIR": str(ROOT / "config"),
        "PYTHONPATH": str(ROOT),
    }
    return env | extra


def api(name: str, url: str, *, workers: int = 1, scheduler: bool = False, **extra: str) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bench.load:app_factory", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    # Without a scheduler of its own, as `teichaku serve --no-scheduler`: it keeps SMS, the scheduler acts.
    role = "true" if scheduler else "false"
    env = _env(url, port, TEICHAKU_SCHEDULER_ENABLED=role, TEICHAKU_ACT_ON_SMS_IN_API=role, **extra)
    return Proc(name, cmd, env, port)


def scheduler_role(name: str, url: str, public_port: int, **extra: str) -> Proc:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "teichaku"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    return Proc(name, cmd, _env(url, public_port, **extra), port)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# -- (4) inbound replies: signed webhooks at a constant rate while the tick runs ---------------

ANSWER_BODIES = ["1", "2", "１", "1", "2"]
TEXT_BODIES = [
    "順調です。ありがとうございます",
    "少し疲れていますが大丈夫です",
    "Work is fine, thanks",
    "職場の人間関係で悩んでいます",
]
URGENT_BODIES = ["3", "9", "もう辞めたいです。つらい"]
WEBHOOK_API_WORKERS = 2  # on PostgreSQL; SQLite has one process for everything


@dataclass
class Send:
    at: float  # seconds after the start of the timetable
    sid: str
    body: bytes
    headers: dict[str, str]
    kind: str  # answer, command, unknown
    duplicate: bool


def _prepare_replies(db, placements: int, backlog: int) -> list[tuple[int, str]]:
    """Phones for every client, one SMS check-in 'sent' this morning per placement (the one a reply
    answers), and a backlog of queued e-mail check-ins for the dispatch tick to work through."""
    from bench.run import OUTBOX_COLS, _fill_outbox

    office_id = gen.generate(db.engine, gen_plan(), placements=placements).office_id
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE client SET phone = '+8190' || (10000000 + id)"))
        rows = conn.execute(
            sa.text(
                "SELECT p.client_id, c.phone, p.id, MIN(f.id) FROM placement p JOIN client c ON c.id = p.client_id"
                " JOIN follow_up f ON f.placement_id = p.id AND f.party = 'client'"
                " GROUP BY p.client_id, c.phone, p.id ORDER BY p.client_id"
            )
        ).all()
        cols = (*OUTBOX_COLS, "sent_at", "provider_id")
        gen.bulk_insert(
            conn,
            "outbox_message",
            cols,
            (
                (
                    f"bench:sms:{fid}",
                    office_id,
                    "check_in",
                    "sms",
                    fid,
                    pid,
                    cid,
                    phone,
                    "ja",
                    "お仕事の様子はいかがですか？",
                )
                + ("sent", 1, SENT_AT, SENT_AT, SENT_AT, SENT_AT, f"SMout{fid:030d}")
                for cid, phone, pid, fid in rows
            ),
        )
    _fill_outbox(db, backlog, "tick")  # queued e-mail: the dispatch tick's work during the run
    return [(cid, phone) for cid, phone, _, _ in rows]


def gen_plan():
    from bench.run import plans

    return plans()[gen.PLAN]


def _timetable(phones: list[tuple[int, str]], url: str, rate: float, seconds: float, dup_share: float) -> list[Send]:
    from twilio.request_validator import RequestValidator

    rng = random.Random(4)
    validator = RequestValidator(AUTH_TOKEN)
    n = int(rate * seconds)
    sends: list[Send] = []
    originals: list[int] = []
    next_client = 0

    def signed(params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": validator.compute_signature(url, params),
            "I-Twilio-Idempotency-Token": params["MessageSid"],
        }
        return urlencode(params).encode(), headers

    for i in range(n):
        at = i / rate
        if originals and rng.random() < dup_share:
            if rng.random() < 0.5:  # racing the first delivery (5 ms at 200/s)
                j = originals[-1]
            else:  # a retry 1-3 s later
                cutoff = at - rng.uniform(1, 3)
                candidates = [k for k in originals[-int(3 * rate) - 1 :] if sends[k].at <= cutoff]
                j = rng.choice(candidates) if candidates else originals[-1]
            o = sends[j]
            sends.append(Send(at, o.sid, o.body, o.headers, o.kind, True))
            continue
        r = rng.random()
        sid = f"SM{rng.getrandbits(128):032x}"
        if r < 0.05:
            kind, sender, body = "unknown", f"+8180{rng.randrange(10**8):08d}", "こんにちは"
        else:
            if next_client >= len(phones):
                raise RuntimeError("more answers than clients: raise the placements")
            sender = phones[next_client][1]
            next_client += 1
            if r < 0.07:
                kind, body = "command", "停止"
            elif r < 0.15:
                kind, body = "answer", rng.choice(URGENT_BODIES)
            elif r < 0.35:
                kind, body = "answer", rng.choice(TEXT_BODIES)
            else:
                kind, body = "answer", rng.choice(ANSWER_BODIES)
        params = {
            "ToCountry": "JP",
            "SmsMessageSid": sid,
            "NumMedia": "0",
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": body,
            "FromCountry": "JP",
            "To": OUR_NUMBER,
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": ACCOUNT_SID,
            "From": sender,
            "ApiVersion": "2010-04-01",
        }
        data, headers = signed(params)
        originals.append(len(sends))
        sends.append(Send(at, sid, data, headers, kind, False))
    return sends


async def _fire(url: str, sends: list[Send]) -> tuple[list[tuple], float]:
    """Each request at its slot; (slot, send lag, latency from the slot, status, sid) for each.

    aiohttp (twilio's own async client, so always installed) rather than httpx: under overload
    httpcore's pool matched every queued request against every connection and stalled, so the
    client, not the server, set the pace (client send lag of tens of seconds at 200/s)."""
    import aiohttp

    out: list[tuple] = []
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        t0 = time.perf_counter() + 0.2

        async def one(s: Send) -> None:
            slot = t0 + s.at
            lag = time.perf_counter() - slot
            try:
                async with client.post(url, data=s.body, headers=s.headers) as response:
                    await response.read()
                    status: int | str = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            out.append((s.at, lag, time.perf_counter() - slot, status, s.sid))

        tasks = []
        for s in sends:
            delay = t0 + s.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(s)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return out, wall


def _run_loop(coro):
    """uvloop when it is there (uvicorn[standard] brings it): a lighter client on a shared machine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _acted_on(db, limit: float) -> float | None:
    """Seconds from the last response until every SMS kept was acted on (its outcome written, a
    STOP applied...: ``processed_at`` set), None if some still waited after ``limit`` seconds; 0
    on a schema without the column (before migration 0012, kept and acted on in one request)."""
    started = time.perf_counter()
    while True:
        with db.engine.connect() as conn:
            try:
                waiting = conn.execute(
                    sa.text("SELECT COUNT(*) FROM inbound_message WHERE processed_at IS NULL")
                ).scalar()
            except sa.exc.DBAPIError:
                return 0.0
        if not waiting:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            return None
        time.sleep(0.25)


def _tick_counts(conn: sa.Connection) -> dict:
    return {
        "backlog_sent": conn.execute(
            sa.text("SELECT COUNT(*) FROM outbox_message WHERE idempotency_key LIKE 'bench:tick:%' AND status = 'sent'")
        ).scalar(),
        "rows_written_by_jobs": conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM outbox_message"
                " WHERE idempotency_key NOT LIKE 'bench:%' AND idempotency_key NOT LIKE 'reply:SM%'"
            )
        ).scalar(),
    }


def _check_db(db, sends: list[Send], acknowledged: set[str]) -> dict:
    """Each MessageSid once; every one answered 200 is there; one outcome per recorded answer, one
    confirmation per recorded STOP. A delivery that only ever failed on the client's side (as Twilio
    would retry) may or may not have been recorded."""
    unique = {s.sid: s for s in sends if not s.duplicate}
    with db.engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text(
                    "SELECT provider_id, COUNT(*) FROM inbound_message"
                    " WHERE provider_id LIKE 'SM%' GROUP BY provider_id"
                )
            ).all()
        )
        outcomes = conn.execute(sa.text("SELECT COUNT(*) FROM outcome WHERE source = 'sms'")).scalar()
        linked = conn.execute(
            sa.text("SELECT COUNT(DISTINCT outcome_id) FROM inbound_message WHERE outcome_id IS NOT NULL")
        ).scalar()
        confirmations = conn.execute(
            sa.text("SELECT COUNT(*) FROM outbox_message WHERE idempotency_key LIKE 'reply:SM%'")
        ).scalar()
        flags = conn.execute(sa.text("SELECT COUNT(*) FROM crisis_flag")).scalar()
    answers = sum(1 for sid, s in unique.items() if s.kind == "answer" and sid in counts)
    commands = sum(1 for sid, s in unique.items() if s.kind == "command" and sid in counts)
    return {
        "message_sids": len(unique),
        "recorded_once": sum(1 for sid in unique if counts.get(sid) == 1),
        "recorded_twice_or_more": sum(1 for c in counts.values() if c > 1),
        "acknowledged": len(acknowledged),
        "acknowledged_but_missing": sum(1 for sid in acknowledged if sid not in counts),
        "not_acknowledged_but_recorded": sum(1 for sid in unique if sid in counts and sid not in acknowledged),
        "outcomes": outcomes,
        "answers_recorded": answers,
        "outcomes_linked_once": linked,
        "stop_confirmations": confirmations,
        "stops_recorded": commands,
        "crisis_flags": flags,
    }


def bench_webhooks(kind: str, size: dict, run_id: str) -> dict:
    from bench.run import Db, log

    rate, seconds, dup_share = size["webhook_rate"], size["webhook_seconds"], 0.05
    n_unique = int(rate * seconds * (1 - dup_share)) + int(rate * seconds * 0.02) + 50
    db = Db(kind, f"{run_id}_hooks")
    procs: list[Proc] = []
    try:
        phones = _prepare_replies(db, n_unique, backlog=int(40 * seconds) + 200)
        tick = {"TEICHAKU_DISPATCH_INTERVAL_SECONDS": "5", "TEICHAKU_DISPATCH_BATCH": "200"}
        if kind == "sqlite":  # docs/deploy.md: on SQLite, one process runs the API and the scheduler
            server = api(f"{run_id}_{kind}_hooks_api", db.url, scheduler=True, **tick)
            procs.append(server)
            layout = "one process: API and scheduler (as docs/deploy.md says for SQLite)"
        else:
            # API processes are stateless (docs/deploy.md): two uvicorn workers, beside one scheduler.
            server = api(f"{run_id}_{kind}_hooks_api", db.url, workers=WEBHOOK_API_WORKERS, scheduler=False)
            procs.append(server)
            procs.append(scheduler_role(f"{run_id}_{kind}_hooks_scheduler", db.url, server.port, **tick))
            layout = f"API (uvicorn, {WEBHOOK_API_WORKERS} workers) + `teichaku scheduler` process"
        for p in procs:
            p.wait_ready()
        url = f"http://127.0.0.1:{server.port}/webhooks/twilio/sms"
        sends = _timetable(phones, url, rate, seconds, dup_share)
        # The signature is checked: a wrong one is refused and records nothing.
        bad = httpx.post(url, content=sends[0].body, headers=sends[0].headers | {"X-Twilio-Signature": "x"})
        assert bad.status_code == 403, bad.status_code
        with db.engine.connect() as conn:
            before = _tick_counts(conn)
        log(f"  {kind}: {len(sends)} webhooks at {rate}/s for {seconds} s")
        # The client is the instrument: the heap the earlier cases left in this process (~280,000
        # objects after the SQLite cases of `make bench`) is kept out of its collector, whose full
        # pass over it stopped the client for ~140 ms, billed to the server's latency.
        gc.collect()
        gc.freeze()
        try:
            results, wall = _run_loop(_fire(url, sends))
        finally:
            gc.unfreeze()
        acted_on_after = _acted_on(db, limit=120.0)
        with db.engine.connect() as conn:
            after = _tick_counts(conn)
        for p in procs:  # first: a request the client gave up on may still be at work in the server
            p.stop()
        check = _check_db(db, sends, {r[4] for r in results if r[3] == 200})
    finally:
        for p in procs:
            p.stop()
        db.drop()
    ok = [r for r in results if r[3] == 200]
    lat = [1000 * r[2] for r in ok]
    lags = [1000 * r[1] for r in results]
    errors: dict[str, int] = {}
    for r in results:
        if r[3] != 200:
            errors[str(r[3])] = errors.get(str(r[3]), 0) + 1
    latency = {
        "p50": pct(lat, 0.5),
        "p95": pct(lat, 0.95),
        "p99": pct(lat, 0.99),
        "max": max(lat),
        "mean": statistics.fmean(lat),
    }
    achieved = len(ok) / wall if wall else 0.0  # answered 200 per second, first slot to last answer
    starts = sorted(r[0] + r[1] for r in results)
    send_rate = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    tick = {k: after[k] - before[k] for k in after}
    exactly_once = (
        check["acknowledged_but_missing"] == 0
        and check["recorded_twice_or_more"] == 0
        and check["outcomes"] == check["answers_recorded"] == check["outcomes_linked_once"]
        and check["stop_confirmations"] == check["stops_recorded"]
    )
    return {
        "unit": "ms from each request's slot on the timetable to its response (open loop; lower is better)",
        "layout": layout,
        "requests": len(results),
        "duplicate_deliveries_sent": sum(1 for s in sends if s.duplicate),
        "target_rate": rate,
        "seconds": seconds,
        "achieved_rate": achieved,
        "client_send_rate": send_rate,
        "errors": errors,
        "latency_ms": latency,
        "client_send_lag_ms": {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": max(lags)},
        "tick_during_run": tick,
        # Twilio hears 200 once an SMS is kept; it is acted on right after (migration 0012).
        "all_acted_on_s_after_last_response": acted_on_after,
        "db_check": check,
        "stats": {"webhook_latency_ms": {"median": latency["p50"], "p95": latency["p95"], "n": len(lat)}},
        "ratios": {"p99 / 100 ms target": latency["p99"] / 100, "achieved / target rate": achieved / rate},
        "targets": {
            "p99 under 100 ms": latency["p99"] < 100,
            "zero duplicates (each MessageSid once, one outcome per answer)": exactly_once,
            "no errors": not errors,
            "rate held (>= 95% of target)": achieved >= 0.95 * rate,
        },
        "note": "latency counts from the scheduled slot, so the client's own lateness (client_send_lag_ms) is "
        "billed to the server: a conservative figure",
    }


# -- (7) the queue endpoint under wrk, against /healthz ----------------------------------------


def ensure_wrk() -> str | None:
    """wrk from Debian, installed when missing (as the Makefile's ``browser`` target does for Chromium)."""
    found = shutil.which("wrk")
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        return None
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(prefix + cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shutil.which("wrk")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    dist = dict(re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.M))
    if len(dist) < 4:
        raise ValueError(f"no latency distribution in wrk's output:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(total.group(1)) if total else None,
        "p50_ms": _ms(dist["50"]),
        "p90_ms": _ms(dist["90"]),
        "p99_ms": _ms(dist["99"]),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }


def _wrk(wrk: str, url: str, size: dict, script: Path | None = None, seconds: int | None = None) -> dict:
    cmd = [wrk, "-t", str(size["http_threads"]), "-c", str(size["http_connections"])]
    cmd += ["-d", f"{seconds or size['http_seconds']}s", "--timeout", "10s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def bench_http(kind: str, size: dict, run_id: str) -> dict:
    from bench.run import Db, _enrich_for_queue, _settle, log
    from service.security import TokenSigner

    wrk = ensure_wrk()
    if wrk is None:
        return {"unit": "requests per second", "skipped": "wrk is not installed and could not be installed"}
    db = Db(kind, f"{run_id}_http")
    caseload = gen.generate(db.engine, gen_plan(), placements=size["http_placements"])
    workers = caseload.worker_ids[:: max(1, len(caseload.worker_ids) // 5)][:5]
    with db.engine.begin() as conn:  # outcomes, family contacts, crisis items: every branch of the queue
        _enrich_for_queue(conn, workers, caseload.office_id)
    _settle(db.engine)  # statistics and visibility map (PostgreSQL), WAL checkpointed (SQLite)
    signer = TokenSigner(SECRET_KEY, 8 * 3600)
    tokens = [signer.issue(w, 0) for w in workers]
    script = DATA / f"{run_id}_queue.lua"
    script.write_text(
        "local tokens = {" + ", ".join(f'"{t}"' for t in tokens) + "}\nlocal i = 0\n"
        "request = function()\n  i = i % #tokens + 1\n"
        '  return wrk.format("GET", "/api/v1/queue", {["Authorization"] = "Bearer " .. tokens[i]})\nend\n',
        encoding="utf-8",
    )
    by_workers: dict[str, dict] = {}
    try:
        for n in size["http_workers"]:
            server = api(f"{run_id}_{kind}_http_api_{n}", db.url, workers=n)
            try:
                server.wait_ready()
                base = f"http://127.0.0.1:{server.port}"
                items = []
                for t in tokens:  # the same answer a worker gets: 200 and a non-empty queue
                    r = httpx.get(f"{base}/api/v1/queue", headers={"Authorization": f"Bearer {t}"}, timeout=30)
                    assert r.status_code == 200, r.text[:200]
                    items.append(len(r.json()["items"]))
                assert min(items) > 0, items
                _wrk(wrk, f"{base}/healthz", size, seconds=1)  # warm-up (every worker process)
                _wrk(wrk, f"{base}/api/v1/queue", size, script, seconds=1)
                log(f"  {kind}: wrk with {n} uvicorn worker(s)")
                health = _wrk(wrk, f"{base}/healthz", size)
                queue = _wrk(wrk, f"{base}/api/v1/queue", size, script)
            finally:
                server.stop()
            by_workers[str(n)] = {"queue": queue, "healthz": health, "items_per_queue": items}
    finally:
        script.unlink(missing_ok=True)
        db.drop()
    ratios, stats_ = {}, {}
    for n, r in by_workers.items():
        ratios[f"queue/healthz req/s ({n} worker{'s' if n != '1' else ''})"] = (
            r["queue"]["requests_per_second"] / r["healthz"]["requests_per_second"]
        )
        for path in ("queue", "healthz"):
            stats_[f"{path} ({n}w) latency ms"] = {"median": r[path]["p50_ms"], "p95": r[path]["p99_ms"], "n": n}
    if len(by_workers) > 1:
        a, b = sorted(by_workers, key=int)[:2]
        ratios[f"queue req/s {b} workers / {a}"] = (
            by_workers[b]["queue"]["requests_per_second"] / by_workers[a]["queue"]["requests_per_second"]
        )
    clean = all(
        r[p]["non_2xx"] == 0 and r[p]["socket_errors"] == 0
        for r in by_workers.values()
        for p in r
        if p != "items_per_queue"
    )
    return {
        "unit": "requests per second under wrk on loopback (closed loop; higher is better), latency in ms",
        "placements": caseload.placements,
        "wrk": {k: size[k] for k in ("http_threads", "http_connections", "http_seconds")},
        "by_workers": by_workers,
        "stats": stats_,
        "ratios": ratios,
        "targets": {"no errors (non-2xx, socket errors)": clean},
        "note": "stats rows: median = wrk p50, p95 column = wrk p99; n = uvicorn workers. The machine's 2 cores "
        "are shared by wrk, uvicorn and PostgreSQL",
    }
