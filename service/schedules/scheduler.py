"""APScheduler 3.x wiring: a handful of periodic jobs with fixed ids, never one per follow-up.

All state lives in the database, so a restart loses nothing, and two scheduler processes on
PostgreSQL do not do the same work twice (rows are claimed; messages have idempotency keys).
"""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from service.jobs import JobContext, arun_job
from service.settings import Settings

# What runs once at start-up to catch up on what was missed while the service was down
# (the morning digest: sent at once if the service was down at 08:00, until 18:00), and SQLite's
# planner statistics, so that a database upgraded today has them before the first night.
CATCH_UP = (
    "reconcile_outbox",
    "mark_missed",
    "deliver_alerts",
    "morning_digest",
    "process_replies",
    "optimize_database",
)


def build_scheduler(settings: Settings, ctx: JobContext) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    every = {
        "mark_missed": IntervalTrigger(minutes=settings.mark_missed_interval_minutes, timezone="UTC"),
        "plan_check_ins": IntervalTrigger(seconds=settings.dispatch_interval_seconds, timezone="UTC"),
        "dispatch": IntervalTrigger(seconds=settings.dispatch_interval_seconds, timezone="UTC"),
        "reconcile_outbox": IntervalTrigger(minutes=5, timezone="UTC"),
        "escalate_unanswered": IntervalTrigger(minutes=15, timezone="UTC"),
        # Acts from 08:00 office time (each office its own zone), once per worker per day.
        "morning_digest": IntervalTrigger(minutes=5, timezone="UTC"),
        # Emergencies go out whatever the hour: written every 20 s, sent by the next dispatch.
        "deliver_alerts": IntervalTrigger(seconds=20, timezone="UTC"),
        # SMS replies kept but not acted on: by API processes that only keep them (--no-scheduler),
        # or by one that stopped right after answering Twilio.
        "process_replies": IntervalTrigger(seconds=settings.reply_interval_seconds, timezone="UTC"),
        # SQLite's planner statistics (service/maintenance.py); also at start-up (CATCH_UP).
        "optimize_database": IntervalTrigger(hours=24, timezone="UTC"),
        # Post-employment program sessions and invitations, written plan_ahead_days ahead.
        "plan_program_sessions": IntervalTrigger(hours=1, timezone="UTC"),
    }
    for name, trigger in every.items():
        scheduler.add_job(
            arun_job,
            trigger,
            args=(name, ctx),
            id=name,
            name=name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
    return scheduler


async def catch_up(ctx: JobContext) -> None:
    for name in CATCH_UP:
        await arun_job(name, ctx)
