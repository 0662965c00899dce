"""APScheduler 3.x wiring: a handful of periodic jobs with fixed ids, never one per follow-up."""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from service.clock import Clock
from service.schedules.jobs import run_job
from service.settings import Settings


def build_scheduler(settings: Settings, factory: sessionmaker[Session], clock: Clock) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(
        run_job,
        IntervalTrigger(minutes=settings.mark_missed_interval_minutes, timezone="UTC"),
        args=("mark_missed", factory, clock),
        id="mark_missed",
        name="mark missed follow-ups",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
    )
    return scheduler


def catch_up(factory: sessionmaker[Session], clock: Clock) -> None:
    """Run once at start what may have been missed while the service was down."""
    run_job("mark_missed", factory, clock)
