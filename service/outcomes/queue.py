"""The support worker's daily queue: what is due today and what is overdue, most urgent first.

One query: the worker's open follow-ups joined to the placement, client and employer, the client's
first family contact, the placement's latest outcome and, for a retry, the kind of the contact it
retries. The latest outcome and the family contact are correlated lookups on their indexes
(``ix_outcome_placement_id``, ``ix_family_contact_client_id``), so the cost grows with the
worker's queue, not with the size of the tables. Rows come back as Core rows (no ORM objects) and
the response is validated once, as a whole.
"""

from __future__ import annotations

import enum
from datetime import date

import sqlalchemy as sa
from sqlmodel import Session

from service.accounts.models import StaffUser
from service.contacts.models import (
    Client,
    Employer,
    FamilyContact,
    FollowUp,
    FollowUpKind,
    FollowUpStatus,
    Party,
    Placement,
)
from service.db import sqlite_indexed_by
from service.i18n import action_text
from service.outcomes.models import CrisisFlag, CrisisStatus, Outcome
from service.outcomes.schemas import Queue

# Within the same due date, some kinds of work come first.
_KIND_ORDER = {FollowUpKind.separation_call.value: 0, FollowUpKind.retry.value: 1}
_GROUP_RANK = {"crisis": 0, "overdue": 1, "today": 2}

OUTCOME_FIELDS = (  # the last outcome's fields in a queue item (bench/run.py compares them too)
    "id",
    "follow_up_id",
    "placement_id",
    "party",
    "channel",
    "recorded_by",
    "recorded_at",
    "reached",
    "still_employed",
    "wellbeing",
    "risk_signals",
    "unreachable",
    "note",
    "late",
)
_OUTCOME_ENUMS = {"party", "channel", "still_employed"}


def _text(column: sa.ColumnElement, name: str) -> sa.ColumnElement:
    """An enum (or SQLite date) column as the stored text: the response model parses it (in Rust),
    which is cheaper than a Python enum per column per row here."""
    return sa.type_coerce(column, sa.String).label(name)


def _const(value: enum.StrEnum) -> sa.ColumnElement:
    """A fixed value written into the SQL, as a hand-written query would have it: PostgreSQL plans
    (and, once psycopg prepares the statement, keeps planning) with the value in view."""
    return sa.literal_column(f"'{value.value}'", sa.String)


_ONE = sa.literal_column("1", sa.Integer)  # LIMIT 1, written into the SQL as well


# The follow-ups read through ``ix_follow_up_queue`` (assignee, status, due date): on SQLite
# ``INDEXED BY``. Without statistics (``sqlite_stat1``: nothing in the service runs ``ANALYZE``)
# SQLite's planner took ``ix_follow_up_office_id`` from 100,000 placements on and read every
# follow-up of the office for each queue, over a second at 1.4 M follow-ups against about a
# millisecond through this index (issue 7); with statistics it chooses this index itself.
# ``INDEXED BY`` also makes the statement fail, rather than slow down, should the index go.
# PostgreSQL keeps statistics itself (autovacuum) and gets the plain table (``sqlite_indexed_by``).


def _statement() -> sa.Select:
    """The queue's one query, built once; the worker, office and date are bound per call."""
    pl, cl, em = (sa.inspect(m).local_table for m in (Placement, Client, Employer))
    follow_up = sa.inspect(FollowUp).local_table
    fu = sqlite_indexed_by(follow_up, "ix_follow_up_queue", "f")
    fam, out, flag = (sa.inspect(m).local_table for m in (FamilyContact, Outcome, CrisisFlag))
    root, out_any = follow_up.alias("retried"), out.alias("o_any")

    def first_contact(column: sa.Column, name: str) -> sa.ColumnElement:
        """The client's first family contact, for family work only: a lookup per row on
        ix_family_contact_client_id (as a join, PostgreSQL may hash the whole table instead)."""
        first = sa.select(column).where(fam.c.client_id == cl.c.id).order_by(fam.c.id).limit(_ONE).scalar_subquery()
        return sa.case((fu.c.party == _const(Party.family), first)).label(name)

    last_outcome = (
        sa.select(sa.func.max(out_any.c.id)).where(out_any.c.placement_id == fu.c.placement_id).scalar_subquery()
    )
    # Crisis calls (service/outcomes/crisis.py): a crisis call, or a retry of it, whose day has
    # passed stays in the queue (missed) as long as its crisis flag is open.
    open_calls = sa.select(flag.c.crisis_follow_up_id).where(
        flag.c.status != _const(CrisisStatus.resolved), flag.c.crisis_follow_up_id.is_not(None)
    )
    still_to_call = (fu.c.status == _const(FollowUpStatus.missed)) & (
        fu.c.id.in_(open_calls) | fu.c.retry_of.in_(open_calls)
    )
    return (
        sa.select(
            # the order daily_queue unpacks
            fu.c.id,
            fu.c.placement_id,
            _text(fu.c.due_date, "due_date"),
            _text(fu.c.party, "party"),
            _text(fu.c.channel, "channel"),
            _text(fu.c.kind, "kind"),
            fu.c.attempt,
            fu.c.status_reason,
            _text(root.c.kind, "retried_kind"),
            cl.c.id.label("client_id"),
            cl.c.name.label("client_name"),
            cl.c.kana,
            cl.c.phone.label("client_phone"),
            cl.c.email.label("client_email"),
            cl.c.address.label("client_address"),
            cl.c.opted_out_at,
            cl.c.opted_out_via,
            em.c.name.label("employer_name"),
            em.c.supervisor_name,
            em.c.phone.label("employer_phone"),
            em.c.email.label("employer_email"),
            em.c.address.label("employer_address"),
            first_contact(fam.c.name, "family_name"),
            first_contact(fam.c.relationship, "relationship"),
            first_contact(fam.c.phone, "family_phone"),
            first_contact(fam.c.email, "family_email"),
            *(_text(out.c[f], f"o_{f}") if f in _OUTCOME_ENUMS else out.c[f].label(f"o_{f}") for f in OUTCOME_FIELDS),
        )
        .select_from(fu)
        .join(pl, pl.c.id == fu.c.placement_id)
        .join(cl, cl.c.id == pl.c.client_id)
        .join(em, em.c.id == pl.c.employer_id)
        .outerjoin(out, out.c.id == last_outcome)
        .outerjoin(root, root.c.id == fu.c.retry_of)
        .where(
            fu.c.assignee_id == sa.bindparam("worker_id"),
            fu.c.office_id == sa.bindparam("office_id"),
            (fu.c.status == _const(FollowUpStatus.pending)) | still_to_call,
            fu.c.automated == sa.false(),  # sent by the scheduler, not the worker
            fu.c.due_date <= sa.bindparam("on", type_=sa.Date),
        )
    )


_QUEUE = _statement()


def daily_queue(session: Session, *, worker: StaffUser, on: date) -> Queue:
    params = {"worker_id": worker.id, "office_id": worker.office_id, "on": on}
    rows = session.connection().execute(_QUEUE, params).all()
    lang = worker.language.value
    actions: dict[tuple[str, str, str], str] = {}
    items = []
    for row in rows:
        (fu_id, placement_id, due, party, channel, kind, attempt, reason, retried_kind,
         client_id, client_name, kana, client_phone, client_email, client_address, opted_out_at, opted_out_via,
         employer_name, supervisor, employer_phone, employer_email, employer_address,
         family_name, relationship, family_phone, family_email) = row[:26]  # fmt: skip
        if isinstance(due, str):  # SQLite stores dates as ISO text
            due = date.fromisoformat(due)
        days_overdue = (on - due).days
        if party == Party.employer:
            contact = {
                "name": supervisor,
                "phone": employer_phone,
                "email": employer_email,
                "address": employer_address,
            }
        elif family_name is not None:  # family work, and the client has a family contact
            contact = {"name": family_name, "relationship": relationship, "phone": family_phone,
                       "email": family_email, "address": client_address}  # fmt: skip
        else:
            contact = {"name": client_name, "phone": client_phone, "email": client_email, "address": client_address}
        if (action := actions.get((kind, channel, party))) is None:
            action = actions[kind, channel, party] = action_text(kind=kind, channel=channel, party=party, language=lang)
        crisis = kind == FollowUpKind.crisis_call or retried_kind == FollowUpKind.crisis_call
        items.append(
            {
                "follow_up_id": fu_id,
                "placement_id": placement_id,
                "group": "crisis" if crisis else "overdue" if days_overdue > 0 else "today",
                "due_date": due,
                "days_overdue": days_overdue,
                "party": party,
                "channel": channel,
                "kind": kind,
                "attempt": attempt,
                "reason": reason,
                "action": action,
                "client": {
                    "id": client_id,
                    "name": client_name,
                    "kana": kana,
                    "opted_out_at": opted_out_at,
                    "opted_out_via": opted_out_via,
                },
                "contact": contact,
                "employer_name": employer_name,
                "last_outcome": None if row[26] is None else dict(zip(OUTCOME_FIELDS, row[26:], strict=True)),
            }
        )
    items.sort(
        key=lambda i: (_GROUP_RANK[i["group"]], -i["days_overdue"], _KIND_ORDER.get(i["kind"], 9), i["follow_up_id"])
    )
    counts = dict.fromkeys(_GROUP_RANK, 0)
    for i in items:
        counts[i["group"]] += 1
    return Queue.model_validate(
        {"date": on, "worker_id": worker.id, "worker_name": worker.name, "counts": counts, "items": items}
    )
