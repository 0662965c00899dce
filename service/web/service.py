"""Page-side operations that the API did not have yet."""

from __future__ import annotations

from datetime import date, timedelta

from sqlmodel import Session

from service.accounts.models import Office
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.models import FollowUp, FollowUpStatus
from service.db import utcnow
from service.errors import Conflict, FieldError, ValidationFailed

MAX_REASON = 300


def reschedule_follow_up(
    session: Session, *, office_id: int, follow_up_id: int, new_date: date, reason: str, clock: Clock
) -> FollowUp:
    """Move an open follow-up to another day (its window moves with it), keeping the reason.
    The day may not be in the past nor more than a year ahead; a reason is required."""
    fu = contacts.get_follow_up(session, office_id=office_id, follow_up_id=follow_up_id)
    if fu.status not in (FollowUpStatus.pending, FollowUpStatus.missed):
        raise Conflict(f"this follow-up is already {fu.status.value}")
    today = contacts.office_today(session.get(Office, office_id), clock)
    errors = []
    reason = (reason or "").strip()
    if not reason:
        errors.append(FieldError("reason", "give a reason for the new date"))
    elif len(reason) > MAX_REASON:
        errors.append(FieldError("reason", f"at most {MAX_REASON} characters"))
    if new_date < today:
        errors.append(FieldError("due_date", "must be today or later"))
    elif new_date > today + timedelta(days=366):
        errors.append(FieldError("due_date", "must not be more than a year ahead"))
    if errors:
        raise ValidationFailed(errors)
    old = fu.due_date
    fu.due_date = new_date
    fu.window_end = new_date + timedelta(days=fu.window_days)
    fu.status = FollowUpStatus.pending
    fu.status_reason = f"rescheduled from {old.isoformat()}: {reason}"[:500]
    fu.updated_at = utcnow()
    session.add(fu)
    session.flush()
    return fu
