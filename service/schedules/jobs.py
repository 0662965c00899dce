"""The scheduler's periodic jobs. Each reads due rows from the database; none holds state.

A job is a plain function ``(session, clock) -> int`` (how many rows it acted on), run in its
own unit of work by ``run_job``, so it can be called at any chosen instant in a test and by
``teichaku jobs run NAME``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, select

from service.accounts.models import Office
from service.clock import Clock, local_today
from service.contacts.models import FollowUp, FollowUpStatus
from service.db import session_scope

log = logging.getLogger(__name__)

Job = Callable[[Session, Clock], int]


def mark_missed(session: Session, clock: Clock) -> int:
    """Pending follow-ups whose window has passed (in the office's own calendar) become missed."""
    total = 0
    for office in session.exec(select(Office)).all():
        today = local_today(clock, office.timezone)
        result = session.exec(
            update(FollowUp)
            .where(
                FollowUp.office_id == office.id,
                FollowUp.status == FollowUpStatus.pending,
                FollowUp.window_end < today,
            )
            .values(status=FollowUpStatus.missed, status_reason="window passed", updated_at=clock.now())
        )
        total += result.rowcount or 0
    return total


JOBS: dict[str, Job] = {
    "mark_missed": mark_missed,
}


def run_job(name: str, factory: sessionmaker[Session], clock: Clock) -> int:
    job = JOBS[name]
    started = time.perf_counter()
    try:
        with session_scope(factory) as session:
            count = job(session, clock)
    except Exception:
        log.exception("job failed", extra={"job": name})
        raise
    log.info(
        "job done", extra={"job": name, "rows": count, "ms": round((time.perf_counter() - started) * 1000)}
    )
    return count
