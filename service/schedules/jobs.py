"""Scheduler jobs of the schedules domain. Each reads due rows from the database; none holds state."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, select

from service.accounts.models import Office
from service.clock import Clock, local_today
from service.contacts.models import FollowUp, FollowUpStatus


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
