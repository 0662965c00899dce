"""Several processes, one PostgreSQL: two API processes and two scheduler processes through a morning.

Real uvicorn subprocesses (``teichaku serve --no-scheduler`` and ``teichaku scheduler``), a real SMTP
server (aiosmtpd) receiving every e-mail, and one clock for all four: ``TEICHAKU_FAKE_NOW=@file``,
which the test moves. Every automated check-in and every morning digest must arrive exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from service.contacts.messaging.models import OutboxMessage, Purpose
from service.contacts.models import Channel, FollowUp
from service.db import make_engine, make_session_factory, session_scope
from tests.conftest import ROOT, TEST_SECRET
from tests.contacts.smtp_sink import free_port, smtp_sink
from tests.helpers import PASSWORD, build_world

pytestmark = pytest.mark.postgres

# One automated e-mail check-in the day after the start: a placement starting on Sunday 19 April
# is due on Monday 20 April 2026, the morning the test runs through.
PLAN = """
name = "mp-email"
title_ja = "テスト（メール）"
title_en = "Test (e-mail)"
description = "An automated e-mail check-in the day after the start."

[[steps]]
offset_days = 1
party = "client"
channel = "email"
kind = "check_in"
window_days = 2
automated = true
needs_consent = true
"""
PLACEMENTS = 24
STARTUP_TIMEOUT = 40.0


class Fleet:
    def __init__(self, tmp: Path, db_url: str, smtp_port: int) -> None:
        self.tmp = tmp
        self.now_file = tmp / "now"
        self.config = tmp / "config"
        shutil.copytree(ROOT / "config", self.config)
        (self.config / "plans" / "mp-email.toml").write_text(PLAN, encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TEICHAKU_") and k != "DATABASE_URL"}
        self.env |= {
            "DATABASE_URL": db_url,
            "TEICHAKU_ENVIRONMENT": "test",
            "TEICHAKU_SECRET_KEY": TEST_SECRET,
            "TEICHAKU_CONFIG_DIR": str(self.config),
            "TEICHAKU_FAKE_NOW": f"@{self.now_file}",
            "TEICHAKU_SMTP_HOST": "127.0.0.1",
            "TEICHAKU_SMTP_PORT": str(smtp_port),
            "TEICHAKU_SMTP_FROM": "office@example.jp",
            "TEICHAKU_SEND_RATE_PER_SECOND": "100",
            "TEICHAKU_DISPATCH_INTERVAL_SECONDS": "5",
            "TEICHAKU_HOST": "127.0.0.1",
        }
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def at(self, iso: str) -> None:
        tmp = self.now_file.with_suffix(".tmp")
        tmp.write_text(iso, encoding="utf-8")
        tmp.replace(self.now_file)  # never half a timestamp for a process reading it

    def start(self, name: str, *args: str) -> str:
        port = free_port()
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args, "--port", str(port)],
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append((name, proc, log))
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, urls: list[str]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = set(urls)
        while pending and time.monotonic() < deadline:
            for name, proc, _ in self.procs:
                assert proc.poll() is None, f"{name} exited early:\n{self.logs()}"
            for url in list(pending):
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        pending.discard(url)
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        assert not pending, f"not ready after {STARTUP_TIMEOUT} s: {pending}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{log.read_text(errors='replace')[-3000:]}" for name, _, log in self.procs)

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(tmp_path, db_url) -> Iterator[tuple[Fleet, object]]:
    with smtp_sink() as (sink, port):
        f = Fleet(tmp_path, db_url, port)
        try:
            yield f, sink
        finally:
            f.stop()


def sign_in(url: str, email: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/auth/token", data={"username": email, "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_for(condition, timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.logs()}")


def test_two_apis_and_two_schedulers_send_everything_exactly_once(fleet, db_url):
    f, sink = fleet
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        world = build_world(session)

    f.at("2026-04-20T07:30:00+09:00")  # Monday, before the digests (08:00) and the sending window (09:00)
    apis = [f.start(f"api{i}", "serve", "--no-scheduler") for i in (1, 2)]
    f.wait_ready(apis)

    # The caseload, written through both API processes in turn, by two workers.
    headers = {who: sign_in(apis[0], f"{who}@a.example.jp") for who in ("worker", "worker2")}
    for n in range(PLACEMENTS):
        url, who = apis[n % 2], ("worker", "worker2")[n % 2]
        client = {"name": f"Client {n}", "email": f"client{n}@example.jp", "category": "needy_person",
                  "consent_automated": True}  # fmt: skip
        c = httpx.post(f"{url}/api/v1/clients", json=client, headers=headers[who], timeout=10)
        assert c.status_code == 201, c.text
        e = httpx.post(f"{url}/api/v1/employers", json={"name": f"Employer {n}"}, headers=headers[who], timeout=10)
        assert e.status_code == 201, e.text
        body = {"client_id": c.json()["id"], "employer_id": e.json()["id"], "job_title": "清掃",
                "employment_type": "general", "start_date": "2026-04-19", "plan": "mp-email"}  # fmt: skip
        p = httpx.post(f"{url}/api/v1/placements", json=body, headers=headers[who], timeout=10)
        assert p.status_code == 201, p.text

    with factory() as session:
        check_ins = set(
            session.exec(
                select(FollowUp.id).where(
                    FollowUp.automated == True,  # noqa: E712
                    FollowUp.channel == Channel.email,
                    FollowUp.office_id == world.office_a,
                    FollowUp.due_date == date(2026, 4, 20),
                )
            ).all()
        )
    assert len(check_ins) == PLACEMENTS

    # 08:30: both schedulers start at once; each catches up on the morning digest at start.
    f.at("2026-04-20T08:30:00+09:00")
    schedulers = [f.start(f"scheduler{i}", "scheduler") for i in (1, 2)]
    f.wait_ready(schedulers)
    for url in schedulers:  # the scheduler role serves no public route
        assert httpx.get(f"{url}/api/v1/queue", timeout=5).status_code == 404

    with factory() as session:
        digests = {
            row.id: row.staff_id
            for row in session.exec(select(OutboxMessage).where(OutboxMessage.purpose == Purpose.digest)).all()
        }
    assert set(digests.values()) >= {world.users["a.worker"], world.users["a.worker2"]}
    wait_for(lambda: set(digests) <= set(sink.outbox_ids()), 30, "the digests", f)

    def written() -> dict[int, int]:
        with factory() as session:
            query = select(OutboxMessage.id, OutboxMessage.follow_up_id).where(
                OutboxMessage.purpose == Purpose.check_in
            )
            return dict(session.exec(query).all())

    # The check-ins are written from 08:30, to wait in the outbox for the sending window.
    wait_for(lambda: len(written()) >= PLACEMENTS, 20, "the check-ins to be written", f)
    time.sleep(6)  # another tick of both schedulers: still one row per check-in
    assert not set(sink.outbox_ids()) & set(written())  # nothing sent before 09:00

    # 09:05: the sending window opens; the check-ins go out.
    f.at("2026-04-20T09:05:00+09:00")
    by_outbox = written()
    assert set(by_outbox.values()) == check_ins  # written once per check-in (the idempotency key)
    wait_for(lambda: set(by_outbox) <= set(sink.outbox_ids()), 40, "the check-ins", f)

    # Later in the morning: the ticks go on in all four processes, and nothing goes out again.
    for instant in ("2026-04-20T10:30:00+09:00", "2026-04-20T11:59:00+09:00"):
        f.at(instant)
        time.sleep(6)  # more than one dispatch interval for each scheduler

    received = Counter(sink.outbox_ids())
    assert [i for i, n in received.items() if n > 1] == []  # no message twice
    assert set(received) == set(by_outbox) | set(digests)  # and nothing unexpected
    # Pipelined, as in production (the service's default; the schedulers run on uvicorn's uvloop):
    # MAIL FROM, RCPT TO and DATA in one read.
    assert any(data.startswith(b"MAIL FROM:") and data.endswith(b"DATA\r\n") for _, data in sink.reads)
    recipients = Counter(r.rcpt_tos[0] for r in sink.received)
    assert all(recipients[f"client{n}@example.jp"] == 1 for n in range(PLACEMENTS))
    assert recipients["worker@a.example.jp"] == 1 and recipients["worker2@a.example.jp"] == 1

    # Both API processes and both schedulers are still healthy, and the schedulers both worked.
    for url in apis + schedulers:
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    dispatch_runs = 0
    for url in schedulers:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        runs = [
            ln for ln in metrics.splitlines() if ln.startswith('teichaku_job_duration_seconds_count{job="dispatch"')
        ]
        assert runs, metrics[:2000]
        dispatch_runs += sum(float(ln.rsplit(" ", 1)[1]) for ln in runs)
    assert dispatch_runs >= 4
    engine.dispose()
