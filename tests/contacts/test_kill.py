"""The kill test: a sending process killed (SIGKILL) at random moments, again and again.

A real dispatcher (``run_job("dispatch")`` with the real SmtpAdapter) runs in a child process
against the test database and an aiosmtpd server in this process, with small batches so there
are many commit points. It is killed after a random 20-400 ms, many times, and restarted each
time. Afterwards the stuck rows are reconciled (11 minutes later) and the rest is dispatched.

Then: no message is lost (every row is sent or unknown), no message arrived twice, every row
recorded as sent arrived exactly once, and whatever arrived is recorded as sent or unknown
("unknown": the sender died after the server took it, so it is never re-sent blindly).
"""

from __future__ import annotations

import os
import random
import select as io_select
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from service.clock import FixedClock
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import enqueue
from service.db import session_scope
from service.jobs import run_job
from tests.conftest import TEST_SECRET
from tests.contacts.smtp_sink import smtp_messaging, smtp_sink

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 100
KILLS = 15
BATCH = 3
RATE = 25.0  # e-mails a second: 100 take about 4 s of sending, spread over the kills
BUDGET = 45.0  # seconds for the kill phase, whatever happens

DISPATCHER = r"""
import sys
from datetime import datetime

from service.clock import FixedClock
from service.contacts.messaging.outbox import Messaging
from service.db import make_engine, make_session_factory
from service.jobs import run_job
from service.settings import Settings

url, port, config_dir, at, secret, batch, rate = sys.argv[1:8]
settings = Settings(
    environment="test", database_url=url, secret_key=secret, scheduler_enabled=False,
    config_dir=config_dir, smtp_host="127.0.0.1", smtp_port=int(port), smtp_from="office@example.jp",
    dispatch_batch=int(batch), send_rate_per_second=float(rate),
)
messaging = Messaging.from_settings(settings)
factory = make_session_factory(make_engine(settings.database_url))
clock = FixedClock(datetime.fromisoformat(at))
print("ready", flush=True)
while run_job("dispatch", factory, clock, messaging):
    pass
print("done", flush=True)
"""


def _start(db_url: str, port: int, at: str, log: Path) -> subprocess.Popen:
    args = [str(ROOT / "config"), at, TEST_SECRET, str(BATCH), str(RATE)]
    return subprocess.Popen(
        [sys.executable, "-c", DISPATCHER, db_url, str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


def _wait_ready(proc: subprocess.Popen, log: Path) -> None:
    ready, _, _ = io_select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise AssertionError(f"the dispatcher did not start: {line!r}\n{log.read_text()[-3000:]}")


def _due_left(factory) -> int:
    with factory() as s:
        return len(s.exec(select(OutboxMessage.id).where(OutboxMessage.status == MessageStatus.queued)).all())


def test_a_dispatcher_killed_at_random_loses_nothing_and_sends_nothing_twice(
    settings, factory, world, clock, db_url, tmp_path
):
    now = clock.now()
    with session_scope(factory) as s:
        for i in range(MESSAGES):
            enqueue(s, OutboxMessage(
                idempotency_key=f"kill:{i}", office_id=world.office_a, purpose=Purpose.check_in,
                channel=MessageChannel.email, to_address=f"c{i}@example.jp", subject="お仕事はいかがですか",
                body=f"こんにちは。{i} 番目のお便りです。", next_attempt_at=now - timedelta(minutes=1),
            ))  # fmt: skip
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    log = tmp_path / "dispatcher.log"
    kills, clean_exits, started = 0, 0, time.monotonic()

    with smtp_sink() as (handler, port):
        while kills < KILLS and time.monotonic() - started < BUDGET and _due_left(factory):
            proc = _start(db_url, port, now.isoformat(), log)
            _wait_ready(proc, log)
            try:
                proc.wait(timeout=rng.uniform(0.02, 0.4))
                assert proc.returncode == 0, log.read_text()[-3000:]
                clean_exits += 1
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            finally:
                proc.stdout.close()
        elapsed = time.monotonic() - started
        received_while_killing = len(handler.received)

        # Another dispatcher comes along later: stuck rows are settled, the rest is sent.
        later = FixedClock(now + timedelta(minutes=11))
        m = smtp_messaging(settings, port, dispatch_batch=BATCH)
        run_job("reconcile_outbox", factory, later, m)
        while run_job("dispatch", factory, later, m):
            pass
        assert run_job("reconcile_outbox", factory, FixedClock(now + timedelta(hours=1)), m) == 0
        arrived = Counter(handler.outbox_ids())

    with factory() as s:
        rows = {r.id: r for r in s.exec(select(OutboxMessage)).all()}
    status = Counter(r.status.value for r in rows.values())
    unknown_arrived = sum(1 for i in arrived if rows[i].status == MessageStatus.unknown)
    summary = (
        f"seed {seed}: {kills} kills, {clean_exits} clean exits in {elapsed:.1f} s; "
        f"{received_while_killing} arrived while killing; statuses {dict(status)}, "
        f"{unknown_arrived} of the unknown ones had arrived"
    )
    print(summary)
    assert len(rows) == MESSAGES
    assert kills >= 5, f"the kills did not land while sending ({summary})"
    # Nothing lost: every message was sent, or may have been (unknown); none waits or hangs.
    assert set(status) <= {"sent", "unknown"}, summary
    # Nothing twice.
    assert [i for i, n in arrived.items() if n > 1] == [], summary
    # What is recorded as sent arrived, once.
    sent = {i for i, r in rows.items() if r.status == MessageStatus.sent}
    assert {i for i in sent if arrived[i] != 1} == set(), summary
    # Whatever arrived is a message we know as sent or unknown (never queued for another go).
    assert set(arrived) <= set(rows), summary
    assert all(rows[i].status in (MessageStatus.sent, MessageStatus.unknown) for i in arrived), summary
    # Every sent row names the Message-ID the server got.
    ids = {m.outbox_id: m.message["Message-ID"] for m in handler.received}
    assert all(rows[i].provider_id == ids[i] for i in sent), summary
    # The kills did real damage (rows left unknown), but each one cost at most the batch it
    # had claimed: a claim never takes more than its batch.
    assert 1 <= status["unknown"] <= kills * BATCH, summary
