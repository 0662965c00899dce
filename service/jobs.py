"""Every periodic job, in one registry: the scheduler, ``teichaku jobs run`` and the tests use it.

A job is either ``(session, ctx) -> int``, run in its own unit of work in a worker thread, or an
async ``(ctx) -> int`` that manages its own sessions (sending must not hold a transaction open).
Each returns how many rows it acted on. Jobs take the clock from the context, so a test can run
any job at any chosen instant.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from service import ops
from service.audit.capture import Actor, acting_as
from service.audit.models import ActorType
from service.clock import Clock
from service.contacts.messaging import outbox
from service.db import session_scope
from service.maintenance import optimize_database
from service.outcomes import answers, program
from service.outcomes import jobs as follow_up_jobs
from service.schedules.jobs import mark_missed

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    factory: sessionmaker[Session]
    clock: Clock
    messaging: Any = None  # service.contacts.messaging.outbox.Messaging
    # How long process_replies leaves a kept SMS to the API process that kept it, which acts on it
    # itself: in a process serving the API too. A `teichaku scheduler` process takes them at once.
    reply_grace: timedelta = answers.WAITING_GRACE


SyncJob = Callable[[Session, JobContext], int]
AsyncJob = Callable[[JobContext], Awaitable[int]]

JOBS: dict[str, SyncJob | AsyncJob] = {
    "mark_missed": lambda s, ctx: mark_missed(s, ctx.clock),
    "plan_check_ins": lambda s, ctx: outbox.plan_check_ins(s, ctx.clock, ctx.messaging),
    "reconcile_outbox": lambda s, ctx: outbox.reconcile_stuck(s, ctx.clock),
    "dispatch": lambda ctx: outbox.dispatch_once(ctx.factory, ctx.messaging, ctx.clock),
    "escalate_unanswered": lambda s, ctx: follow_up_jobs.escalate_unanswered(s, ctx.clock, ctx.messaging),
    "morning_digest": lambda s, ctx: follow_up_jobs.morning_digest(s, ctx.clock, ctx.messaging),
    "deliver_alerts": lambda s, ctx: follow_up_jobs.deliver_alerts(s, ctx.clock, ctx.messaging),
    # SQLite's planner statistics (ANALYZE), daily; nothing on PostgreSQL (autovacuum does it).
    "optimize_database": lambda s, ctx: optimize_database(s, ctx.clock),
    "plan_program_sessions": lambda s, ctx: program.plan_program_sessions(
        s, ctx.clock, ctx.messaging, program.config_at(ctx.messaging.settings.config_dir / "program.toml")
    ),
    # SMS kept (Twilio answered) but not acted on: their process stopped right after (issue 7).
    "process_replies": lambda ctx: asyncio.to_thread(
        answers.process_waiting_sms,
        ctx.factory,
        ctx.messaging,
        ctx.clock,
        grace=ctx.reply_grace,
        threads=ctx.messaging.settings.reply_threads,
    ),
}
ASYNC = {"dispatch", "process_replies"}


async def arun_job(name: str, ctx: JobContext) -> int:
    job = JOBS[name]
    started = time.perf_counter()
    try:
        with acting_as(Actor(ActorType.job, label=name)):  # what the job writes is attributed to it
            if name in ASYNC:
                count = await job(ctx)  # type: ignore[call-arg,misc]
            else:
                count = await asyncio.to_thread(_run_sync, job, ctx)
    except Exception:
        log.exception("job %s failed", name)
        ops.observe_job(name, time.perf_counter() - started, ok=False)
        raise
    ops.observe_job(name, time.perf_counter() - started, ok=True)  # tick durations for /metrics
    # A run with nothing to do (process_replies looks every few seconds) is for debugging only.
    level = logging.INFO if count else logging.DEBUG
    log.log(level, "job %s done: %s row(s) in %d ms", name, count, (time.perf_counter() - started) * 1000)
    return count


def _run_sync(job: SyncJob, ctx: JobContext) -> int:
    with session_scope(ctx.factory) as session:
        return job(session, ctx)


async def _run_in_own_loop(name: str, ctx: JobContext) -> int:
    """One job in an event loop of its own: the connections it opened (SMTP) end with the loop."""
    try:
        return await arun_job(name, ctx)
    finally:
        if ctx.messaging is not None:
            await ctx.messaging.email.aclose()


def run_job(name: str, factory: sessionmaker[Session], clock: Clock, messaging: Any = None) -> int:
    """Run one job now, from synchronous code (the CLI, tests)."""
    ctx = JobContext(factory, clock, messaging)
    if name in ASYNC:
        return asyncio.run(_run_in_own_loop(name, ctx))
    job = JOBS[name]
    assert not inspect.iscoroutinefunction(job)
    with acting_as(Actor(ActorType.job, label=name)):
        return _run_sync(job, ctx)  # type: ignore[arg-type]
