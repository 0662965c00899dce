"""The support worker's daily queue: what is due today and what is overdue, most urgent first."""

from __future__ import annotations

from datetime import date

from sqlmodel import Session, col, select

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
from service.i18n import action_text
from service.outcomes.models import CrisisFlag, CrisisStatus
from service.outcomes.schemas import OutcomePublic, Queue, QueueClient, QueueContact, QueueItem
from service.outcomes.service import last_outcomes

# Within the same due date, some kinds of work come first.
_KIND_ORDER = {FollowUpKind.separation_call: 0, FollowUpKind.retry: 1}


def daily_queue(session: Session, *, worker: StaffUser, on: date) -> Queue:
    # Crisis calls (service/outcomes/crisis.py): a crisis call, or a retry of it, whose day has
    # passed stays in the queue (missed) as long as its crisis flag is open.
    open_calls = select(CrisisFlag.crisis_follow_up_id).where(
        CrisisFlag.status != CrisisStatus.resolved, col(CrisisFlag.crisis_follow_up_id).is_not(None)
    )
    still_to_call = (FollowUp.status == FollowUpStatus.missed) & (
        col(FollowUp.id).in_(open_calls) | col(FollowUp.retry_of).in_(open_calls)
    )
    rows = session.exec(
        select(FollowUp, Placement, Client, Employer)
        .join(Placement, col(Placement.id) == FollowUp.placement_id)
        .join(Client, col(Client.id) == Placement.client_id)
        .join(Employer, col(Employer.id) == Placement.employer_id)
        .where(
            FollowUp.assignee_id == worker.id,
            FollowUp.office_id == worker.office_id,
            (FollowUp.status == FollowUpStatus.pending) | still_to_call,
            FollowUp.automated == False,  # noqa: E712  (sent by the scheduler, not the worker)
            FollowUp.due_date <= on,
        )
        .order_by(FollowUp.due_date, FollowUp.id)
    ).all()
    client_ids = sorted({c.id for _, _, c, _ in rows})
    family: dict[int, FamilyContact] = {}
    if client_ids:
        for fc in session.exec(
            select(FamilyContact).where(col(FamilyContact.client_id).in_(client_ids)).order_by(FamilyContact.id)
        ).all():
            family.setdefault(fc.client_id, fc)
    outcomes = last_outcomes(session, sorted({p.id for _, p, _, _ in rows}))
    lang = worker.language.value
    retried = sorted({fu.retry_of for fu, _, _, _ in rows if fu.retry_of is not None})
    crisis_roots = (
        set(
            session.exec(
                select(FollowUp.id).where(col(FollowUp.id).in_(retried), FollowUp.kind == FollowUpKind.crisis_call)
            ).all()
        )
        if retried
        else set()
    )

    items = []
    for fu, placement, client, employer in rows:
        days_overdue = (on - fu.due_date).days
        if fu.party == Party.employer:
            contact = QueueContact(
                name=employer.supervisor_name,
                phone=employer.phone,
                email=employer.email,
                address=employer.address,
            )
        elif fu.party == Party.family and (fc := family.get(client.id)):
            contact = QueueContact(
                name=fc.name, relationship=fc.relationship, phone=fc.phone, email=fc.email, address=client.address
            )
        else:
            contact = QueueContact(name=client.name, phone=client.phone, email=client.email, address=client.address)
        last = outcomes.get(placement.id)
        is_crisis = fu.kind == FollowUpKind.crisis_call or fu.retry_of in crisis_roots
        items.append(
            QueueItem(
                follow_up_id=fu.id,
                placement_id=placement.id,
                group="crisis" if is_crisis else "overdue" if days_overdue > 0 else "today",
                due_date=fu.due_date,
                days_overdue=days_overdue,
                party=fu.party,
                channel=fu.channel,
                kind=fu.kind,
                attempt=fu.attempt,
                reason=fu.status_reason,
                action=action_text(kind=fu.kind, channel=fu.channel, party=fu.party, language=lang),
                client=QueueClient(
                    id=client.id,
                    name=client.name,
                    kana=client.kana,
                    opted_out_at=client.opted_out_at,
                    opted_out_via=client.opted_out_via,
                ),
                contact=contact,
                employer_name=employer.name,
                last_outcome=OutcomePublic.model_validate(last) if last else None,
            )
        )
    group_rank = {"crisis": 0, "overdue": 1, "today": 2}
    items.sort(key=lambda i: (group_rank[i.group], -i.days_overdue, _KIND_ORDER.get(i.kind, 9), i.follow_up_id))
    counts = {g: sum(1 for i in items if i.group == g) for g in group_rank}
    return Queue(date=on, worker_id=worker.id, worker_name=worker.name, counts=counts, items=items)
