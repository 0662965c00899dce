"""The follow-up work itself: plan adherence, reach, and each worker's load.

Definitions:

* **Due**: the office's follow-ups (from the plan, and the separation and crisis calls; not
  retries) whose due date is in the period, except those cancelled (the placement ended) or
  skipped (no consent): those were not owed.
  A retry is part of the follow-up it retries; when a retry reaches the party the planned
  follow-up is marked done, and when the retries run out it is marked missed.
* **Done** on time when completed on or before the last day of its window, that day taken in
  the office's time zone; **late** when completed after; **missed** when the window passed
  without reaching the party; **open** when still pending or attempted (a retry under way).
  due = done + missed + open and done = on time + late.
* **Reach**: every outcome recorded on a follow-up due in the period (retries by their own due
  date) is an attempt; only a reached outcome, a two-way exchange, is a contact. An unanswered
  message or a voicemail is an attempt, not a contact.
* **Per worker**: caseload is the active placements they hold; overdue is their pending worker
  follow-ups (the ones in their queue, not automated messages) due before today in the
  office's time zone, with the oldest due date.

Rates are null when the denominator is 0. Counts are SQL aggregates. "Completed on or before
the window's last local day" needs a time zone conversion that SQLite cannot do, so the
distinct window end days are turned into UTC cutoffs (local midnight after the day) in Python
and joined as a small ``VALUES`` table: a handful of rows per period, not one per follow-up.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session

from service.accounts.models import Office, Role, StaffUser
from service.contacts.models import FollowUp, FollowUpStatus, Placement, PlacementStatus
from service.db import UTCDateTime
from service.errors import ValidationFailed
from service.i18n import label
from service.outcomes.models import Outcome
from service.outcomes.schemas import (
    AdherenceBreakdown,
    AdherenceCounts,
    AdherenceReport,
    WorkerLoad,
)

MAX_PERIOD_DAYS = 5 * 366

_f = FollowUp.__table__
_o = Outcome.__table__
_p = Placement.__table__
_u = StaffUser.__table__

_NOT_OWED = (FollowUpStatus.cancelled, FollowUpStatus.skipped)
_OPEN = (FollowUpStatus.pending, FollowUpStatus.attempted)
_COUNT_FIELDS = ("due", "done", "on_time", "late", "missed", "open", "attempts", "contacts")


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _counts(raw: dict[str, int]) -> dict:
    c = {k: int(raw.get(k, 0)) for k in _COUNT_FIELDS}
    return c | {
        "done_rate": _rate(c["done"], c["due"]),
        "on_time_rate": _rate(c["on_time"], c["due"]),
        "reach_rate": _rate(c["contacts"], c["attempts"]),
    }


def _local_midnight_after(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)


def _due_counts(session: Session, *, office: Office, date_from: date, date_to: date) -> dict:
    """{(channel, party): {due, done, on_time, late, missed, open}}."""
    due = sa.and_(
        _f.c.office_id == office.id,
        _f.c.retry_of.is_(None),
        _f.c.due_date.between(date_from, date_to),
        _f.c.status.not_in(_NOT_OWED),
    )
    window_ends = (
        session.execute(sa.select(_f.c.window_end).where(due, _f.c.status == FollowUpStatus.done).distinct())
        .scalars()
        .all()
    )
    zone = ZoneInfo(office.timezone)
    done = _f.c.status == FollowUpStatus.done
    if window_ends:
        cutoffs = (
            sa.values(sa.column("day", sa.Date), sa.column("cutoff", UTCDateTime()), name="cutoffs")
            .data([(d, _local_midnight_after(d, zone)) for d in window_ends])
            .cte("cutoffs")
        )
        source = _f.outerjoin(cutoffs, cutoffs.c.day == _f.c.window_end)
        on_time = sa.and_(done, _f.c.completed_at < cutoffs.c.cutoff)
    else:
        source, on_time = _f, sa.false()

    def total(cond):
        return sa.func.sum(sa.case((cond, 1), else_=0))

    rows = (
        session.execute(
            sa.select(
                _f.c.channel,
                _f.c.party,
                sa.func.count().label("due"),
                total(done).label("done"),
                total(on_time).label("on_time"),
                total(_f.c.status == FollowUpStatus.missed).label("missed"),
                total(_f.c.status.in_(_OPEN)).label("open"),
            )
            .select_from(source)
            .where(due)
            .group_by(_f.c.channel, _f.c.party)
        )
        .mappings()
        .all()
    )
    out = {}
    for r in rows:
        d = {k: int(r[k] or 0) for k in ("due", "done", "on_time", "missed", "open")}
        out[(r["channel"], r["party"])] = d | {"late": d["done"] - d["on_time"]}
    return out


def _reach_counts(session: Session, *, office_id: int, date_from: date, date_to: date) -> dict:
    """{(channel, party): {attempts, contacts}} over outcomes of follow-ups due in the period."""
    rows = (
        session.execute(
            sa.select(
                _f.c.channel,
                _f.c.party,
                sa.func.count(_o.c.id).label("attempts"),
                sa.func.sum(sa.case((_o.c.reached, 1), else_=0)).label("contacts"),
            )
            .select_from(_o.join(_f, _f.c.id == _o.c.follow_up_id))
            .where(_f.c.office_id == office_id, _f.c.due_date.between(date_from, date_to))
            .group_by(_f.c.channel, _f.c.party)
        )
        .mappings()
        .all()
    )
    return {
        (r["channel"], r["party"]): {
            "attempts": int(r["attempts"]),
            "contacts": int(r["contacts"] or 0),
        }
        for r in rows
    }


def _roll_up(cells: dict, position: int | None) -> dict:
    """Sum the (channel, party) cells by one of the two (or all of them, position None)."""
    out: dict = {}
    for key, values in cells.items():
        k = "all" if position is None else key[position].value
        bucket = out.setdefault(k, {})
        for name, n in values.items():
            bucket[name] = bucket.get(name, 0) + n
    return out


def worker_loads(session: Session, *, office_id: int, today: date) -> list[WorkerLoad]:
    """Caseload, overdue count and oldest overdue date of each worker of the office (and of
    anyone else, a manager or a departed worker, who still holds cases or work)."""
    caseload = dict(
        session.execute(
            sa.select(_p.c.worker_id, sa.func.count())
            .where(_p.c.office_id == office_id, _p.c.status == PlacementStatus.active)
            .group_by(_p.c.worker_id)
        ).all()
    )
    overdue = {
        assignee: (int(n), oldest)
        for assignee, n, oldest in session.execute(
            sa.select(_f.c.assignee_id, sa.func.count(), sa.func.min(_f.c.due_date))
            .where(
                _f.c.office_id == office_id,
                _f.c.status == FollowUpStatus.pending,
                _f.c.automated.is_(False),
                _f.c.due_date < today,
                _f.c.assignee_id.is_not(None),
            )
            .group_by(_f.c.assignee_id)
        ).all()
    }
    busy = set(caseload) | set(overdue)
    staff = session.execute(
        sa.select(_u.c.id, _u.c.name)
        .where(
            _u.c.office_id == office_id,
            sa.or_(sa.and_(_u.c.role == Role.worker, _u.c.is_active.is_(True)), _u.c.id.in_(busy)),
        )
        .order_by(_u.c.name, _u.c.id)
    ).all()
    loads = []
    for user_id, name in staff:
        n, oldest = overdue.get(user_id, (0, None))
        loads.append(
            WorkerLoad(
                worker_id=user_id, name=name, caseload=int(caseload.get(user_id, 0)),
                overdue=n, oldest_overdue=oldest,
            )
        )  # fmt: skip
    return loads


def adherence(
    session: Session,
    *,
    office_id: int,
    date_from: date,
    date_to: date,
    today: date,
    language: str = "ja",
) -> AdherenceReport:
    """Plan adherence and reach for follow-ups due from ``date_from`` to ``date_to`` (both
    included), and each worker's load as of ``today``."""
    if date_from > date_to:
        raise ValidationFailed.one("from", "must be on or before 'to'")
    if (date_to - date_from).days > MAX_PERIOD_DAYS:
        raise ValidationFailed.one("from", f"the period may be at most {MAX_PERIOD_DAYS} days")
    office = session.get(Office, office_id)
    cells: dict = {}
    for part in (
        _due_counts(session, office=office, date_from=date_from, date_to=date_to),
        _reach_counts(session, office_id=office_id, date_from=date_from, date_to=date_to),
    ):
        for key, values in part.items():
            cells.setdefault(key, {}).update(values)

    def breakdown(position: int, prefix: str) -> list[AdherenceBreakdown]:
        rolled = _roll_up(cells, position)
        return [
            AdherenceBreakdown(key=k, label=label(k, prefix, language), **_counts(rolled[k])) for k in sorted(rolled)
        ]

    return AdherenceReport(
        period_from=date_from,
        period_to=date_to,
        today=today,
        total=AdherenceCounts(**_counts(_roll_up(cells, None).get("all", {}))),
        by_channel=breakdown(0, "channel"),
        by_party=breakdown(1, "party"),
        workers=worker_loads(session, office_id=office_id, today=today),
    )
