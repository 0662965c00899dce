"""Page timings on the demo data: "each page answers in under 200 ms" (issue 5).

The real app (``teichaku serve``: uvicorn, no scheduler) runs in a subprocess on a free loopback
port over a fresh database holding the demo caseload (``service/demo.py``, as ``make run`` loads
it; 300 placements). httpx signs in through the sign-in form as the demo's worker and manager and
times each page, wall clock at the client, over N rounds after a warm-up; rounds go through the
pages in turn so noise from other jobs on the machine falls on all of them alike. Every answer
must be 200 with the expected content type; a page that is not is reported, not timed.

    python -m bench.run --db sqlite --only pages
    python -m bench.pages --db sqlite --rounds 20      # this case alone, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlmodel import Session, col, select

from bench.servers import Proc, free_port
from service.accounts.models import Office, Role, StaffUser
from service.clock import FixedClock, SystemClock
from service.contacts.messaging.models import OutboxMessage, Purpose
from service.contacts.messaging.replies import ReplyLinks
from service.contacts.models import FollowUp, FollowUpStatus, Placement
from service.demo import DEMO_PASSWORD, load_demo
from service.settings import DEV_SECRET

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.200
ROUNDS = {"quick": 5, "S": 30, "M": 60}
WARM_UP = 3
WORKER = "worker1@minato.example.jp"
MANAGER = "manager@minato.example.jp"


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if not m:
        raise RuntimeError("no CSRF token in the page")
    return m.group(1)


class Server:
    """``teichaku serve`` over ``url`` in a subprocess (bench/servers.py); its log goes to
    bench/data/pages-server-*.log."""

    def __init__(self, url: str, tag: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = os.environ | {
            "DATABASE_URL": url,
            "TEICHAKU_ENVIRONMENT": "development",
            "TEICHAKU_SECRET_KEY": DEV_SECRET,
            "TEICHAKU_SCHEDULER_ENABLED": "false",
            "TEICHAKU_CONFIG_DIR": str(ROOT / "config"),
            "TEICHAKU_PUBLIC_URL": self.base,
        }
        env.pop("TEICHAKU_DATABASE_URL", None)
        cmd = [sys.executable, "-c", "from service.cli import app; app()", "serve", "--no-scheduler",
               "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        self.proc = Proc(f"pages-server-{tag}", cmd, env, self.port)
        self.log_path = self.proc.log_path
        try:
            self.proc.wait_ready(timeout=60)
        except RuntimeError:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()


def sign_in(base: str, email: str) -> httpx.Client:
    c = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = c.get("/sign-in")
    r = c.post("/sign-in", data={"csrf_token": _csrf(form.text), "email": email, "password": DEMO_PASSWORD,
                                 "next": "/today"})  # fmt: skip
    if r.status_code != 303:
        raise RuntimeError(f"signing in as {email}: {r.status_code}")
    return c


def _prepare(db, links: ReplyLinks) -> dict:
    """Load the demo caseload, plan today's check-ins (so the outbox has reply links), and pick the
    records the pages will show: the worker's first open follow-up, its client, a reply link."""
    from bench.run import plans

    t = time.perf_counter()
    summary = load_demo(db.factory, plans=plans(), clock=SystemClock())
    loaded_s = time.perf_counter() - t
    from service.contacts.messaging.outbox import Messaging
    from service.jobs import run_job
    from service.settings import Settings

    settings = Settings(environment="development", database_url=db.url, secret_key=DEV_SECRET,
                        scheduler_enabled=False, config_dir=ROOT / "config", public_url=links.public_url)  # fmt: skip
    with Session(db.engine) as s:
        office = s.exec(select(Office).order_by(Office.id)).first()
        tz = ZoneInfo(office.timezone)
    # In the office's send window today, so the check-ins due are written (not put off).
    today = datetime.now(tz).date()
    at = datetime.combine(today, datetime.min.time().replace(hour=10), tz).astimezone(UTC)
    planned = run_job("plan_check_ins", db.factory, FixedClock(at), Messaging.from_settings(settings))
    with Session(db.engine) as s:
        worker = s.exec(select(StaffUser).where(StaffUser.email == WORKER)).one()
        manager = s.exec(select(StaffUser).where(StaffUser.email == MANAGER)).one()
        assert manager.role == Role.manager and manager.office_id == worker.office_id
        fu = (
            s.exec(
                select(FollowUp)
                .where(
                    FollowUp.assignee_id == worker.id,
                    FollowUp.status == FollowUpStatus.pending,
                    col(FollowUp.automated).is_(False),
                    FollowUp.due_date <= today,
                )
                .order_by(FollowUp.due_date, FollowUp.id)
            ).first()
            or s.exec(
                select(FollowUp)
                .where(FollowUp.assignee_id == worker.id, FollowUp.status == FollowUpStatus.pending)
                .order_by(FollowUp.due_date, FollowUp.id)
            ).first()
        )
        client_id = s.get(Placement, fu.placement_id).client_id
        row = s.exec(
            select(OutboxMessage)
            .where(
                OutboxMessage.purpose == Purpose.check_in,
                col(OutboxMessage.answered_at).is_(None),
                OutboxMessage.office_id == worker.office_id,
            )  # fmt: skip
            .order_by(OutboxMessage.id)
        ).first()
        follow_ups = len(s.exec(select(FollowUp.id)).all())
    if row is None:
        raise RuntimeError("plan_check_ins wrote no check-in to the outbox: no reply link to time")
    return {
        "summary": summary,
        "load_seconds": loaded_s,
        "check_ins_planned": planned,
        "follow_ups": follow_ups,
        "today": today,
        "worker_id": worker.id,
        "follow_up_id": fu.id,
        "client_id": client_id,
        "reply_token": links.token(row.id),
    }


def _requests(base: str, data: dict) -> tuple[list[tuple[str, httpx.Client, str, str, dict | None, str]], list]:
    """(name, client, method, url, form, expected content type) for every page, and the clients."""
    worker, manager, anonymous = sign_in(base, WORKER), sign_in(base, MANAGER), httpx.Client(base_url=base)
    today = data["today"]
    new_form = worker.get("/placements/new")
    preview = {
        "csrf_token": _csrf(new_form.text), "name": "新規 太郎", "kana": "シンキ タロウ", "phone": "090-1111-2222",
        "category": "public_assistance", "language": "ja", "consent_automated": "on", "consent_employer": "on",
        "employer_name": "札幌テック", "job_title": "倉庫作業", "employment_type": "general",
        "start_date": (today - timedelta(days=1)).isoformat(), "plan": "standard-3m",
    }  # fmt: skip
    cal = worker.post("/calendar/token", data={"csrf_token": _csrf(worker.get("/calendar").text)})
    m = re.search(r"/calendar/([A-Za-z0-9_\-]+)\.ics", cal.text)
    if cal.status_code != 200 or not m:
        raise RuntimeError(f"no calendar feed URL ({cal.status_code})")
    dashboard = manager.get("/manager")
    tables = sorted(set(re.findall(r"/manager/([a-z0-9\-]+)\.csv", dashboard.text)))
    if dashboard.status_code != 200 or not tables:
        raise RuntimeError(f"the dashboard ({dashboard.status_code}) links no CSV downloads")
    filters = (f"?as_of={(today - timedelta(days=14)).isoformat()}&from={(today - timedelta(days=89)).isoformat()}"
               f"&to={(today - timedelta(days=14)).isoformat()}&worker={data['worker_id']}")  # fmt: skip
    html, csv, ics = "text/html", "text/csv", "text/calendar"
    fu, client = data["follow_up_id"], data["client_id"]
    reqs = [
        ("GET /sign-in", anonymous, "GET", "/sign-in", None, html),
        ("GET /today", worker, "GET", "/today", None, html),
        ("GET /follow-ups/{id}/outcome", worker, "GET", f"/follow-ups/{fu}/outcome", None, html),
        ("GET /clients/{id}", worker, "GET", f"/clients/{client}", None, html),
        ("GET /placements/new", worker, "GET", "/placements/new", None, html),
        ("POST /placements/preview", worker, "POST", "/placements/preview", preview, html),
        ("GET /calendar", worker, "GET", "/calendar", None, html),
        ("GET /calendar/{token}.ics", anonymous, "GET", f"/calendar/{m.group(1)}.ics", None, ics),
        ("GET /manager", manager, "GET", "/manager", None, html),
        ("GET /manager?as_of&from&to&worker", manager, "GET", "/manager" + filters, None, html),
    ]
    reqs += [(f"GET /manager/{t}.csv", manager, "GET", f"/manager/{t}.csv", None, csv) for t in tables]
    reqs.append(("GET /r/{token}", anonymous, "GET", f"/r/{data['reply_token']}", None, html))
    return reqs, [worker, manager, anonymous]


def _one(client: httpx.Client, method: str, url: str, form: dict | None) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = client.request(method, url, data=form)
    r.read()
    return time.perf_counter() - t, r


def bench_pages(db, size_name: str, rounds: int | None = None) -> dict:
    """Time every page on ``db`` (a fresh, migrated ``bench.run.Db``) holding the demo caseload."""
    from bench.run import log, stats

    rounds = rounds or ROUNDS.get(size_name, ROUNDS["S"])
    links = ReplyLinks(DEV_SECRET, "http://127.0.0.1")  # the token depends on the server's secret key only
    data = _prepare(db, links)
    log(f"{db.kind}: pages: demo loaded in {data['load_seconds']:.0f} s ({data['follow_ups']} follow-ups)")
    server = Server(db.url, f"{db.kind}-{db.name}")
    clients: list[httpx.Client] = []
    try:
        reqs, clients = _requests(server.base, data)
        times: dict[str, list[float]] = {name: [] for name, *_ in reqs}
        problems: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for i in range(WARM_UP + rounds):
            for name, client, method, url, form, kind in reqs:
                if name in problems:
                    continue
                took, r = _one(client, method, url, form)
                if r.status_code != 200 or not r.headers.get("content-type", "").startswith(kind):
                    problems[name] = f"{r.status_code} {r.headers.get('content-type')}"
                    continue
                sizes[name] = len(r.content)
                if i >= WARM_UP:
                    times[name].append(took)
    finally:
        for c in clients:
            c.close()
        server.stop()
    s = {name: stats(v) for name, v in times.items() if v}
    for name, why in problems.items():
        log(f"{db.kind}: pages: {name} answered {why} (see {server.log_path.relative_to(ROOT)})")
    under = {name: st["median"] < TARGET_S for name, st in s.items()}
    return {
        "unit": "seconds per request (milliseconds in summary.md), wall clock at an httpx client on loopback",
        "data": f"demo caseload: {data['summary']} {data['follow_ups']} follow-ups; "
        f"{data['check_ins_planned']} check-ins planned today",
        "rounds": rounds,
        "warm_up_rounds": WARM_UP,
        "stats": s,
        "bytes": sizes,
        "not_200": problems,
        "ratios": {f"{name} median / 200 ms": st["median"] / TARGET_S for name, st in s.items()},
        "targets": {
            **{f"{name} under 200 ms (median)": ok for name, ok in under.items()},
            "every page answered 200": not problems,
        },
        "note": "one signed-in client per role, keep-alive, requests in turn; the server runs without its scheduler",
    }


def main() -> None:
    from bench.run import Db, machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite", help="sqlite, postgres or both (comma-separated)")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    out = {"machine": machine(), "results": {}}
    run_id = datetime.now().strftime("%H%M%S")
    for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
        db = Db(kind, f"pages_{run_id}")
        try:
            out["results"][kind] = bench_pages(db, "S", args.rounds)
        finally:
            db.drop()
    print(json.dumps(out, indent=2, default=str, ensure_ascii=False))


if __name__ == "__main__":
    main()
