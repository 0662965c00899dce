"""Placements created in bulk (``create_placements``, as the CSV import writes them) get exactly the
follow-ups the one-at-a-time path and the ORM ``materialize`` give; they are audited once per
placement with who and when; a bad item is named and nothing is written; an import that fails
while writing rolls back whole and names the row."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import date

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from service.accounts.models import Office
from service.audit.capture import Actor, acting_as
from service.audit.models import ActorType, AuditEvent
from service.contacts import service as contacts
from service.contacts.imports import ImportFailed
from service.contacts.models import Client, FollowUp, Placement, Separation
from service.db import session_scope
from tests.contacts.test_import import csv_bytes, do_import

PLACEMENT_KEYS = [c.key for c in Placement.__table__.c if c.key not in ("id", "created_at", "updated_at")]
SKIP = ("id", "placement_id", "created_at", "updated_at")
FOLLOW_UP_KEYS = [c.key for c in FollowUp.__table__.c if c.key not in SKIP]
STARTS = [date(2026, 1, 31), date(2026, 12, 28), date(2026, 4, 18), date(2025, 11, 3), date(2026, 2, 27)]


def _cases(session: Session, world, clock) -> list[contacts.NewPlacement]:
    """Every consent combination, with and without contact details and family, in two offices
    (Tokyo with New Year closing, New York), every plan, month ends and holidays, history or not."""
    items = []
    plan_names = itertools.cycle(["standard-3m", "short-1m", "extended-6m"])
    n = 0
    for key, office_id in (("a", world.office_a), ("b", world.office_b)):
        employer = contacts.create_employer(session, office_id=office_id, name=f"Employer {key}")
        for auto, fam, emp, reachable, relative in itertools.product([False, True], repeat=5):
            client = contacts.create_client(
                session,
                office_id=office_id,
                created_by=None,
                name=f"Client {n}",
                category="needy_person",
                phone="+819012345678" if reachable else None,
                email="c@example.jp" if reachable else None,
                consent_automated=auto,
                consent_family=fam,
                consent_employer=emp,
            )
            if relative:
                contacts.add_family_contact(
                    session, office_id=office_id, client_id=client.id, clock=clock, name="Kin", relationship="parent"
                )
            items.append(
                contacts.NewPlacement(
                    office_id=office_id,
                    client_id=client.id,
                    employer_id=employer.id,
                    job_title="清掃",
                    employment_type="general",
                    start_date=STARTS[n % len(STARTS)],
                    worker_id=world.users[f"{key}.worker" if n % 2 else f"{key}.worker2"],
                    plan=next(plan_names) if n % 4 else None,
                    weekly_hours=20.0 if n % 3 else None,
                    history_before=date(2026, 4, 20) if n % 2 else None,
                )
            )
            n += 1
    return items


def _placement_rows(session: Session, ids: list[int]) -> list[tuple]:
    t = Placement.__table__
    by_id = {r[0]: r[1:] for r in session.execute(sa.select(t.c.id, *(t.c[k] for k in PLACEMENT_KEYS)))}
    return [by_id[i] for i in ids]


def _follow_up_rows(session: Session, ids: list[int]) -> list[list[tuple]]:
    t = FollowUp.__table__
    rows = session.execute(
        sa.select(t.c.placement_id, *(t.c[k] for k in FOLLOW_UP_KEYS)).where(t.c.placement_id.in_(ids))
    ).all()
    by_placement: dict[int, list[tuple]] = {i: [] for i in ids}
    for r in rows:
        by_placement[r[0]].append(tuple(r[1:]))
    return [sorted(by_placement[i], key=lambda r: (r[FOLLOW_UP_KEYS.index("step_index")], r)) for i in ids]


def test_bulk_single_and_orm_paths_write_the_same_rows(factory, world, plans, clock):
    with session_scope(factory) as s:
        items = _cases(s, world, clock)
        bulk = contacts.create_placements(s, items, created_by=world.users["a.admin"], plans=plans, batch=7)
        single = [
            contacts.create_placement(s, created_by=world.users["a.admin"], plans=plans, **dataclasses.asdict(it)).id
            for it in items
        ]
        # The reference: the ORM objects through the flush, follow-ups by ``materialize``.
        orm = []
        for it in items:
            office = s.get(Office, it.office_id)
            fields = dataclasses.asdict(it)
            history_before = fields.pop("history_before")
            fields["plan"] = fields["plan"] or office.default_plan
            p = Placement(created_by=world.users["a.admin"], **fields)
            s.add(p)
            s.flush()
            contacts.materialize(
                s,
                placement=p,
                template=plans[p.plan],
                client=s.get(Client, it.client_id),
                office=office,
                history_before=history_before,
            )
            orm.append(p.id)
    with factory() as s:
        assert len(set(bulk + single + orm)) == 3 * len(items) == 192
        assert _placement_rows(s, bulk) == _placement_rows(s, single) == _placement_rows(s, orm)
        got_bulk, got_single, got_orm = (_follow_up_rows(s, ids) for ids in (bulk, single, orm))
        assert got_bulk == got_single == got_orm
        assert all(got_bulk)  # every placement has its plan
        statuses = {r[FOLLOW_UP_KEYS.index("status")] for rows in got_bulk for r in rows}
        assert {"pending", "skipped"} <= {str(x) for x in statuses}


def test_bulk_creation_is_audited_once_per_placement_with_who_and_when(factory, world, plans, clock):
    admin = world.users["a.admin"]
    with session_scope(factory) as s:
        items = [it for it in _cases(s, world, clock) if it.office_id == world.office_a][:5]
        before = s.execute(sa.select(sa.func.max(AuditEvent.id))).scalar() or 0
    with session_scope(factory) as s, acting_as(Actor(ActorType.user, admin)):
        ids = contacts.create_placements(s, items, created_by=admin, plans=plans)
        # An ORM placement, audited by the flush hook: the bulk path's events must look the same.
        fields = dataclasses.asdict(items[0]) | {"plan": "standard-3m"}
        fields.pop("history_before")
        hooked = Placement(created_by=admin, **fields)
        s.add(hooked)
        s.flush()
        hooked_id = hooked.id
    with factory() as s:
        events = s.execute(sa.select(AuditEvent).where(AuditEvent.id > before).order_by(AuditEvent.id)).scalars().all()
        placement_events = {e.record_id: e for e in events if e.record_type == "placement" and e.action == "create"}
        summaries = [e for e in events if e.record_type == "follow_up"]
        counts = dict(
            s.execute(
                sa.select(FollowUp.placement_id, sa.func.count())
                .where(FollowUp.placement_id.in_(ids))
                .group_by(FollowUp.placement_id)
            ).all()
        )
    assert set(placement_events) == {*ids, hooked_id}
    for e in events:
        assert (e.actor_type, e.actor_id, e.office_id) == (ActorType.user, admin, world.office_a) and e.at
    strip = {"created_at", "updated_at"}
    hooked_changes = {k: v for k, v in placement_events[hooked_id].changes.items() if k not in strip}
    assert {k: v for k, v in placement_events[ids[0]].changes.items() if k not in strip} == hooked_changes
    assert placement_events[ids[0]].changes.keys() == placement_events[hooked_id].changes.keys()
    # One event per placement for its follow-ups, not one per row, naming the placement and the count.
    assert len(summaries) == len(ids)
    assert {e.changes["placement_id"]["new"]: e.changes["follow_ups"]["new"] for e in summaries} == counts
    for e in summaries:
        assert e.action == "create" and e.record_id is None
        assert e.changes["pending"]["new"] + e.changes["skipped"]["new"] == e.changes["follow_ups"]["new"]


def test_a_bad_item_is_named_and_nothing_is_written(factory, world, plans, clock):
    with session_scope(factory) as s:
        items = _cases(s, world, clock)[:4]
        other_office_worker = world.users["b.worker"]
    bad = [
        items[0],
        dataclasses.replace(items[1], worker_id=other_office_worker),
        items[2],
        dataclasses.replace(items[3], plan="no-such-plan", start_date=date(1999, 12, 31)),
    ]
    with factory() as s:
        n_placements = s.execute(sa.select(sa.func.count()).select_from(Placement)).scalar()
        with pytest.raises(contacts.PlacementsInvalid) as exc:
            contacts.create_placements(s, bad, created_by=None, plans=plans)
        assert {i: [e.field for e in errs] for i, errs in exc.value.failures.items()} == {
            1: ["worker_id"],
            3: ["plan", "start_date"],
        }
        assert s.execute(sa.select(sa.func.count()).select_from(Placement)).scalar() == n_placements


def _table_counts(factory) -> dict[str, int]:
    with factory() as s:
        return {
            m.__tablename__: s.execute(sa.select(sa.func.count()).select_from(m)).scalar()
            for m in (Client, Placement, FollowUp, Separation, AuditEvent)
        }


def test_an_import_failing_while_writing_a_later_batch_rolls_back_whole(factory, world, plans, clock, monkeypatch):
    """Rows are checked before writing, so a write failure is rare (a record changed meanwhile);
    here the worker of line 6 is made invalid after the check, when two batches are written."""
    monkeypatch.setattr(contacts, "PLACEMENT_BATCH", 2)
    rows = [{"client_ref": f"C{i}", "client_name": f"Name {i}", "start_date": "2026-04-01"} for i in range(6)]
    rows[1] |= {"separation_date": "2026-04-10", "separation_reason": "voluntary"}
    before = _table_counts(factory)
    real = contacts.create_placements
    calls = []

    def racing(session, items, **kw):
        calls.append(len(items))
        if len(calls) == 3:  # the third batch: lines 6 and 7; line 6 loses its worker
            items = [dataclasses.replace(items[0], worker_id=world.users["b.worker"]), *items[1:]]
        return real(session, items, **kw)

    monkeypatch.setattr(contacts, "create_placements", racing)
    with pytest.raises(ImportFailed) as exc:
        do_import(factory, plans, clock, csv_bytes(rows))
    assert calls == [2, 2, 2]  # the first two batches were written before the failure
    assert [(e.line, e.field) for e in exc.value.errors] == [(6, "worker_email")]
    assert "no such active staff member" in exc.value.errors[0].message
    assert _table_counts(factory) == before

    monkeypatch.setattr(contacts, "create_placements", real)
    report = do_import(factory, plans, clock, csv_bytes(rows))
    assert (report.placements_created, report.separations) == (6, 1)
    after = _table_counts(factory)
    assert after["placement"] - before["placement"] == 6 and after["separation"] - before["separation"] == 1
