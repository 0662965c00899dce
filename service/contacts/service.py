"""Operations on clients, employers, placements, separations and follow-ups.

Plain functions, session first. Every lookup is scoped to an office: a record of another office
is reported as not found, exactly like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import Session, col, select

from service.accounts.models import Office, Role, StaffUser
from service.audit import capture as audit
from service.clock import Clock, local_today
from service.contacts.models import (
    Channel,
    Client,
    Employer,
    EmploymentType,
    FamilyContact,
    FollowUp,
    FollowUpKind,
    FollowUpStatus,
    Party,
    Placement,
    PlacementStatus,
    Separation,
    SeparationReason,
)
from service.db import utcnow
from service.errors import Conflict, FieldError, NotFound, ValidationFailed
from service.schedules.calendar import BusinessCalendar
from service.schedules.plans import PlanTemplate, ScheduledStep, schedule_steps

EARLIEST_START = date(2000, 1, 1)


def office_calendar(office: Office) -> BusinessCalendar:
    return BusinessCalendar(office.closed_days, office.holiday_country, office.holiday_subdivision)


def office_today(office: Office, clock: Clock) -> date:
    return local_today(clock, office.timezone)


def office_today_at(office: Office, instant: datetime) -> date:
    return instant.astimezone(ZoneInfo(office.timezone)).date()


def _in_office(session: Session, model: type, record_id: int, office_id: int, what: str) -> Any:
    row = session.get(model, record_id)
    if row is None or row.office_id != office_id:
        raise NotFound(what)
    return row


def _paged(session: Session, query, limit: int, offset: int, order) -> tuple[list, int]:
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(*order).limit(limit).offset(offset)).all()
    return list(rows), total


# ---------------------------------------------------------------- clients


def create_client(session: Session, *, office_id: int, created_by: int | None, **fields: Any) -> Client:
    ref = fields.get("ref")
    if ref and session.exec(select(Client).where(Client.office_id == office_id, Client.ref == ref)).first():
        raise ValidationFailed.one("ref", f"a client with reference {ref!r} already exists")
    client = Client(office_id=office_id, created_by=created_by, **fields)
    session.add(client)
    session.flush()
    return client


def get_client(session: Session, *, office_id: int, client_id: int) -> Client:
    return _in_office(session, Client, client_id, office_id, "client")


def list_clients(
    session: Session, *, office_id: int, limit: int, offset: int, q: str | None = None
) -> tuple[list[Client], int]:
    query = select(Client).where(Client.office_id == office_id)
    if q:
        like = f"%{q}%"
        query = query.where(col(Client.name).like(like) | col(Client.kana).like(like) | col(Client.ref).like(like))
    return _paged(session, query, limit, offset, (Client.kana, Client.id))


def update_client(session: Session, *, office_id: int, client_id: int, clock: Clock, **changes: Any) -> Client:
    client = get_client(session, office_id=office_id, client_id=client_id)
    for key, value in changes.items():
        setattr(client, key, value)
    client.updated_at = utcnow()
    session.add(client)
    session.flush()
    refresh_consent_skips(session, client=client, clock=clock)
    return client


def add_family_contact(
    session: Session, *, office_id: int, client_id: int, clock: Clock, **fields: Any
) -> FamilyContact:
    client = get_client(session, office_id=office_id, client_id=client_id)
    contact = FamilyContact(office_id=office_id, client_id=client.id, **fields)
    session.add(contact)
    session.flush()
    refresh_consent_skips(session, client=client, clock=clock)
    return contact


def list_family_contacts(session: Session, *, office_id: int, client_id: int) -> list[FamilyContact]:
    client = get_client(session, office_id=office_id, client_id=client_id)
    return list(
        session.exec(select(FamilyContact).where(FamilyContact.client_id == client.id).order_by(FamilyContact.id)).all()
    )


# ---------------------------------------------------------------- employers


def create_employer(session: Session, *, office_id: int, **fields: Any) -> Employer:
    employer = Employer(office_id=office_id, **fields)
    session.add(employer)
    session.flush()
    return employer


def get_employer(session: Session, *, office_id: int, employer_id: int) -> Employer:
    return _in_office(session, Employer, employer_id, office_id, "employer")


def list_employers(session: Session, *, office_id: int, limit: int, offset: int) -> tuple[list[Employer], int]:
    query = select(Employer).where(Employer.office_id == office_id)
    return _paged(session, query, limit, offset, (Employer.name, Employer.id))


# ---------------------------------------------------------------- consent


def consent_block(*, party: Party, channel: Channel, automated: bool, client: Client, has_family: bool) -> str | None:
    """Why this contact may not be made now, or None. The person decides (自己決定)."""
    if party == Party.family:
        if not client.consent_family:
            return "no consent to contact family"
        if not has_family:
            return "no family contact on record"
    elif party == Party.employer:
        if not client.consent_employer:
            return "no consent to contact the employer"
    elif automated:
        if not client.consent_automated:
            return "no consent to automated messages"
        if channel in (Channel.sms, Channel.voice) and not client.phone:
            return "no phone number on record"
        if channel == Channel.email and not client.email:
            return "no e-mail address on record"
    return None


def _has_family(session: Session, client_id: int) -> bool:
    return session.exec(select(FamilyContact.id).where(FamilyContact.client_id == client_id)).first() is not None


def _pending_or_skipped_ahead(today: date):
    """Pending follow-ups (overdue ones too) and skipped ones not yet past: work still open."""
    skipped_ahead = (col(FollowUp.status) == FollowUpStatus.skipped) & (col(FollowUp.due_date) >= today)
    return (col(FollowUp.status) == FollowUpStatus.pending) | skipped_ahead


def refresh_consent_skips(session: Session, *, client: Client, clock: Clock) -> int:
    """Re-apply consent: granted consent brings back skipped steps still ahead, withdrawn consent
    skips every pending one (an overdue one still in the queue too). Done, missed and past
    skipped follow-ups keep their history. Returns changes."""
    office = session.get(Office, client.office_id)
    today = office_today(office, clock)
    has_family = _has_family(session, client.id)
    rows = session.exec(
        select(FollowUp)
        .join(Placement, col(Placement.id) == FollowUp.placement_id)
        .where(
            Placement.client_id == client.id,
            Placement.status == PlacementStatus.active,
            FollowUp.needs_consent == True,  # noqa: E712
            _pending_or_skipped_ahead(today),
        )
    ).all()
    changed = 0
    for fu in rows:
        block = consent_block(
            party=fu.party, channel=fu.channel, automated=fu.automated, client=client, has_family=has_family
        )
        if block and (fu.status == FollowUpStatus.pending or fu.status_reason != block):
            # (a skipped one keeps an up-to-date reason: consent given, family contact missing)
            fu.status, fu.status_reason = FollowUpStatus.skipped, block
        elif not block and fu.status == FollowUpStatus.skipped:
            fu.status, fu.status_reason = FollowUpStatus.pending, None
        else:
            continue
        fu.updated_at = utcnow()
        session.add(fu)
        changed += 1
    session.flush()
    return changed


# ---------------------------------------------------------------- placements


def _plan(plans: dict[str, PlanTemplate], name: str, field: str = "plan") -> PlanTemplate:
    if name not in plans:
        raise ValidationFailed.one(field, f"no plan named {name!r}; known: {', '.join(sorted(plans))}")
    return plans[name]


def _check_worker(session: Session, worker_id: int, office_id: int, field: str = "worker_id") -> StaffUser:
    worker = session.get(StaffUser, worker_id)
    if worker is None or worker.office_id != office_id or not worker.is_active:
        raise ValidationFailed.one(field, "no such active staff member in your office")
    return worker


def _plan_rows(
    steps: Sequence[ScheduledStep],
    *,
    office_id: int,
    placement_id: int,
    worker_id: int,
    client: Any,
    has_family: bool,
    now: datetime,
    from_date: date | None = None,
    history_before: date | None = None,
) -> list[dict[str, Any]]:
    """The follow-up rows of one placement's plan, every column given (the same for the ORM and the
    bulk path). Steps needing a consent the client has not given are written as skipped with the
    reason, never silently dropped.

    ``from_date``: steps due before it are not written (a plan changed mid-way).
    ``history_before``: steps due before it are written as skipped (an import of past placements
    should not flood the queue with work nobody can do any more)."""
    rows = []
    for s in steps:
        if from_date is not None and s.due_date < from_date:
            continue
        step = s.step
        block = (
            consent_block(
                party=step.party, channel=step.channel, automated=step.automated, client=client, has_family=has_family
            )
            if step.needs_consent
            else None
        )
        if history_before is not None and s.due_date < history_before:
            block = f"before the import on {history_before.isoformat()}"
        rows.append(
            {
                "office_id": office_id,
                "placement_id": placement_id,
                "party": step.party,
                "channel": step.channel,
                "kind": step.kind,
                "due_date": s.due_date,
                "window_days": step.window_days,
                "window_end": s.window_end,
                "automated": step.automated,
                "status": FollowUpStatus.skipped if block else FollowUpStatus.pending,
                "status_reason": block,
                "assignee_id": worker_id,
                "step_index": s.step_index,
                "needs_consent": step.needs_consent,
                "retry_of": None,
                "attempt": 0,
                "completed_at": None,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def materialize(
    session: Session,
    *,
    placement: Placement,
    template: PlanTemplate,
    client: Client,
    office: Office,
    from_date: date | None = None,
    history_before: date | None = None,
) -> list[FollowUp]:
    """Write the plan's follow-ups for one existing placement as ORM rows (a plan changed mid-way;
    new placements go through ``create_placements``). See ``_plan_rows`` for the dates."""
    rows = _plan_rows(
        schedule_steps(template, placement.start_date, office_calendar(office)),
        office_id=office.id,
        placement_id=placement.id,
        worker_id=placement.worker_id,
        client=client,
        has_family=_has_family(session, client.id),
        now=utcnow(),
        from_date=from_date,
        history_before=history_before,
    )
    objs = [FollowUp(**row) for row in rows]
    session.add_all(objs)
    session.flush()
    return objs


@dataclass(frozen=True)
class NewPlacement:
    """One placement to create (``create_placements``)."""

    office_id: int
    client_id: int
    employer_id: int
    job_title: str
    employment_type: EmploymentType | str
    start_date: date
    worker_id: int
    plan: str | None = None  # the office's default plan when not given
    weekly_hours: float | None = None
    history_before: date | None = None  # steps due before it are written as skipped (imports)


class PlacementsInvalid(ValidationFailed):
    """Some placements of a batch are wrong; ``failures`` maps each bad one's index to its problems."""

    def __init__(self, failures: dict[int, list[FieldError]]) -> None:
        super().__init__([e for errors in failures.values() for e in errors])
        self.failures = failures


# Placements written per statement round (and ids per lookup query: below SQLite's variable limit).
PLACEMENT_BATCH = 1000
_IN_CHUNK = 900


def _by_id(conn: Any, columns: Sequence[Any], ids: Iterable[int]) -> dict[int, Any]:
    """Rows (named tuples) keyed by their first column, read in chunks."""
    wanted, out = sorted(set(ids)), {}
    for i in range(0, len(wanted), _IN_CHUNK):
        for row in conn.execute(sa.select(*columns).where(columns[0].in_(wanted[i : i + _IN_CHUNK]))):
            out[row[0]] = row
    return out


def _copies(dialect: sa.Dialect) -> bool:
    """Whether :func:`_insert_rows` sends rows by COPY (PostgreSQL through psycopg)."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def _insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Rows straight to the driver in the connection's transaction: COPY on PostgreSQL, one
    executemany elsewhere. Each value is converted by its column type's own bind processor (the
    same conversion a Core insert makes), once per distinct value: a batch of plans repeats the
    same few dates, enums and timestamps. No ORM and no flush hook: the caller audits."""
    if not rows:
        return
    dialect = conn.dialect
    keys = [c.key for c in table.c if c.key in rows[0]]
    procs = [table.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in keys]
    caches: list[dict[Any, Any]] = [{} for _ in keys]

    def convert(row: dict[str, Any]) -> tuple:
        out = []
        for key, proc, cache in zip(keys, procs, caches, strict=True):
            value = row[key]
            if proc is None:
                out.append(value)
                continue
            try:
                out.append(cache[value])
            except KeyError:
                out.append(cache.setdefault(value, proc(value)))
            except TypeError:  # not hashable
                out.append(proc(value))
        return tuple(out)

    data = [convert(row) for row in rows]
    if _copies(dialect):
        quote = dialect.identifier_preparer.quote
        sql = f"COPY {quote(table.name)} ({', '.join(quote(k) for k in keys)}) FROM STDIN"
        with conn.connection.dbapi_connection.cursor() as cur, cur.copy(sql) as copy:
            for values in data:
                copy.write_row(values)
        return
    compiled = sa.insert(table).compile(dialect=dialect, column_keys=keys)
    if compiled.positiontup == keys:
        conn.exec_driver_sql(str(compiled), data)
    else:  # a driver with named parameters
        conn.exec_driver_sql(str(compiled), [dict(zip(keys, values, strict=True)) for values in data])


def _insert_returning_ids(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` and return their new ids in the order given. On PostgreSQL (psycopg) the ids
    are drawn from the table's sequence first, in one query, and the rows go in by COPY: a
    multi-row ``INSERT ... RETURNING`` of a thousand placements has 13,000 parameters, and psycopg
    parses a statement that long anew each time (its cache stops at 4,096 characters), which took
    15% of materializing 10,000 placements. Elsewhere one ``INSERT ... RETURNING``."""
    if _copies(conn.dialect):
        ids = (
            conn.execute(
                sa.text(
                    "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n) AS i ORDER BY i"
                ),
                {"table": table.name, "n": len(rows)},
            )
            .scalars()
            .all()
        )
        _insert_rows(conn, table, [row | {"id": i} for row, i in zip(rows, ids, strict=True)])
        return ids
    return conn.execute(sa.insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).scalars().all()


def create_placements(
    session: Session,
    items: Sequence[NewPlacement],
    *,
    created_by: int | None,
    plans: dict[str, PlanTemplate],
    batch: int = PLACEMENT_BATCH,
) -> list[int]:
    """Create placements and materialize their plans, in the caller's transaction; returns the new
    ids in the order given. Every item is checked first (clients, employers, workers and family
    contacts are read once, 900 ids a query, not per placement); if any is wrong nothing is written and
    ``PlacementsInvalid`` says which and why. Rows go in with one multi-row insert per table and
    batch. The audit trail gets the placement's creation, as the flush hook would write it, and one
    event per placement for its plan's follow-ups ("N follow-ups created"), not one per row."""
    if not items:
        return []
    session.flush()  # rows created just before (an import's clients) must be visible to the reads
    conn = session.connection()
    clients = _by_id(
        conn,
        [
            Client.__table__.c[k]
            for k in ("id", "office_id", "consent_automated", "consent_family", "consent_employer", "phone", "email")
        ],
        (it.client_id for it in items),
    )
    emp, staff = Employer.__table__.c, StaffUser.__table__.c
    employers = _by_id(conn, [emp.id, emp.office_id], (it.employer_id for it in items))
    workers = _by_id(conn, [staff.id, staff.office_id, staff.is_active], (it.worker_id for it in items))
    offices = {oid: session.get(Office, oid) for oid in {it.office_id for it in items}}

    failures: dict[int, list[FieldError]] = {}
    templates: list[PlanTemplate] = []
    for i, it in enumerate(items):
        errors = []
        office = offices[it.office_id]
        client, employer, worker = clients.get(it.client_id), employers.get(it.employer_id), workers.get(it.worker_id)
        if client is None or client.office_id != it.office_id:
            errors.append(FieldError("client_id", "no such client in your office"))
        if employer is None or employer.office_id != it.office_id:
            errors.append(FieldError("employer_id", "no such employer in your office"))
        if worker is None or worker.office_id != it.office_id or not worker.is_active:
            errors.append(FieldError("worker_id", "no such active staff member in your office"))
        template = None
        if office is None:
            errors.append(FieldError("office_id", "no such office"))
        else:
            try:
                template = _plan(plans, it.plan or office.default_plan)
            except ValidationFailed as exc:
                errors.extend(exc.errors)
        if it.start_date < EARLIEST_START:
            errors.append(FieldError("start_date", f"must be on or after {EARLIEST_START}"))
        if errors:
            failures[i] = errors
        templates.append(template)
    if failures:
        raise PlacementsInvalid(failures)

    family: set[int] = set()
    fc = FamilyContact.__table__.c
    client_ids = sorted(clients)
    for i in range(0, len(client_ids), _IN_CHUNK):
        chunk = client_ids[i : i + _IN_CHUNK]
        family.update(conn.execute(sa.select(fc.client_id).where(fc.client_id.in_(chunk)).distinct()).scalars())
    calendars = {oid: office_calendar(o) for oid, o in offices.items()}
    steps_cache: dict[tuple[str, date, int], list[ScheduledStep]] = {}
    p_table, f_table = Placement.__table__, FollowUp.__table__
    ids: list[int] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        now = utcnow()
        p_rows = [
            {
                "office_id": it.office_id,
                "client_id": it.client_id,
                "employer_id": it.employer_id,
                "job_title": it.job_title,
                "employment_type": it.employment_type,
                "start_date": it.start_date,
                "weekly_hours": it.weekly_hours,
                "worker_id": it.worker_id,
                "plan": templates[start + j].name,
                "status": PlacementStatus.active,
                "created_by": created_by,
                "created_at": now,
                "updated_at": now,
            }
            for j, it in enumerate(chunk)
        ]
        new_ids = _insert_returning_ids(conn, p_table, p_rows)
        f_rows: list[dict[str, Any]] = []
        summaries: list[tuple[int, int, str, int, int]] = []
        for j, (it, pid) in enumerate(zip(chunk, new_ids, strict=True)):
            template = templates[start + j]
            key = (template.name, it.start_date, it.office_id)
            steps = steps_cache.get(key)
            if steps is None:
                steps = steps_cache[key] = schedule_steps(template, it.start_date, calendars[it.office_id])
            rows = _plan_rows(
                steps,
                office_id=it.office_id,
                placement_id=pid,
                worker_id=it.worker_id,
                client=clients[it.client_id],
                has_family=it.client_id in family,
                now=now,
                history_before=it.history_before,
            )
            skipped = sum(1 for r in rows if r["status"] is FollowUpStatus.skipped)
            summaries.append((pid, it.office_id, template.name, len(rows), skipped))
            f_rows.extend(rows)
        _insert_rows(conn, f_table, f_rows)
        audit.record_inserted(session, table=p_table, rows=p_rows, ids=new_ids)
        audit.record_events(
            session,
            [
                audit.event_row(
                    session,
                    action="create",
                    record_type=f_table.name,
                    record_id=None,  # several rows: the placement and the plan say which
                    office_id=office_id,
                    changes={
                        "placement_id": {"old": None, "new": pid},
                        "plan": {"old": None, "new": plan},
                        "follow_ups": {"old": None, "new": n},
                        "pending": {"old": None, "new": n - skipped},
                        "skipped": {"old": None, "new": skipped},
                    },
                )
                for pid, office_id, plan, n, skipped in summaries
            ],
        )
        ids.extend(new_ids)
    return ids


def create_placement(
    session: Session,
    *,
    office_id: int,
    created_by: int | None,
    plans: dict[str, PlanTemplate],
    client_id: int,
    employer_id: int,
    job_title: str,
    employment_type: str,
    start_date: date,
    worker_id: int,
    plan: str | None = None,
    weekly_hours: float | None = None,
    history_before: date | None = None,
) -> Placement:
    """One placement and its plan's follow-ups (``create_placements`` with one item)."""
    item = NewPlacement(
        office_id=office_id,
        client_id=client_id,
        employer_id=employer_id,
        job_title=job_title,
        employment_type=employment_type,
        start_date=start_date,
        worker_id=worker_id,
        plan=plan,
        weekly_hours=weekly_hours,
        history_before=history_before,
    )
    (placement_id,) = create_placements(session, [item], created_by=created_by, plans=plans)
    return session.get(Placement, placement_id)


def get_placement(session: Session, *, office_id: int, placement_id: int) -> Placement:
    return _in_office(session, Placement, placement_id, office_id, "placement")


def list_placements(
    session: Session,
    *,
    office_id: int,
    limit: int,
    offset: int,
    client_id: int | None = None,
    worker_id: int | None = None,
    status: PlacementStatus | None = None,
) -> tuple[list[Placement], int]:
    query = select(Placement).where(Placement.office_id == office_id)
    if client_id is not None:
        query = query.where(Placement.client_id == client_id)
    if worker_id is not None:
        query = query.where(Placement.worker_id == worker_id)
    if status is not None:
        query = query.where(Placement.status == status)
    return _paged(session, query, limit, offset, (col(Placement.start_date).desc(), Placement.id))


def _open_plan_rows(session: Session, placement_id: int) -> Sequence[FollowUp]:
    return session.exec(
        select(FollowUp).where(
            FollowUp.placement_id == placement_id,
            col(FollowUp.step_index).is_not(None),
            col(FollowUp.status).in_([FollowUpStatus.pending, FollowUpStatus.skipped]),
        )
    ).all()


def update_placement(
    session: Session,
    *,
    office_id: int,
    placement_id: int,
    plans: dict[str, PlanTemplate],
    clock: Clock,
    start_date: date | None = None,
    worker_id: int | None = None,
    plan: str | None = None,
    job_title: str | None = None,
    weekly_hours: float | None = None,
) -> Placement:
    placement = get_placement(session, office_id=office_id, placement_id=placement_id)
    office = session.get(Office, office_id)
    if placement.status != PlacementStatus.active and (start_date or plan):
        raise Conflict(f"the placement is {placement.status.value}; its plan can no longer change")
    if job_title is not None:
        placement.job_title = job_title
    if weekly_hours is not None:
        placement.weekly_hours = weekly_hours
    if worker_id is not None and worker_id != placement.worker_id:
        _check_worker(session, worker_id, office_id)
        placement.worker_id = worker_id
        today = office_today(office, clock)
        for fu in session.exec(
            select(FollowUp).where(
                FollowUp.placement_id == placement.id,
                # skipped ones still ahead come back as pending when consent is given
                _pending_or_skipped_ahead(today),
            )
        ).all():
            fu.assignee_id, fu.updated_at = worker_id, utcnow()
            session.add(fu)
    if start_date is not None and start_date != placement.start_date:
        if start_date < EARLIEST_START:
            raise ValidationFailed.one("start_date", f"must be on or after {EARLIEST_START}")
        if placement.separated_on is not None and placement.separated_on < start_date:
            raise ValidationFailed.one("start_date", "must not be after the separation date")
        placement.start_date = start_date
        _redate(session, placement, _plan(plans, placement.plan), office)
        session.flush()
        # a step moved from the past to ahead gets the client's current consent
        refresh_consent_skips(session, client=session.get(Client, placement.client_id), clock=clock)
    if plan is not None and plan != placement.plan:
        template = _plan(plans, plan)
        today = office_today(office, clock)
        for fu in _open_plan_rows(session, placement.id):
            fu.status, fu.status_reason, fu.updated_at = (
                FollowUpStatus.cancelled,
                f"plan changed to {plan}",
                utcnow(),
            )
            session.add(fu)
        placement.plan = plan
        client = session.get(Client, placement.client_id)
        materialize(session, placement=placement, template=template, client=client, office=office, from_date=today)
    placement.updated_at = utcnow()
    session.add(placement)
    session.flush()
    return placement


def _redate(session: Session, placement: Placement, template: PlanTemplate, office: Office) -> None:
    """A corrected start date moves every follow-up still ahead; done work keeps its date."""
    scheduled = {s.step_index: s for s in schedule_steps(template, placement.start_date, office_calendar(office))}
    for fu in _open_plan_rows(session, placement.id):
        s = scheduled.get(fu.step_index)
        if s is None:
            continue
        fu.due_date, fu.window_end, fu.updated_at = s.due_date, s.window_end, utcnow()
        session.add(fu)


def record_separation(
    session: Session,
    *,
    office_id: int,
    placement_id: int,
    separation_date: date,
    reason: SeparationReason,
    note: str | None,
    recorded_by: int | None,
    clock: Clock,
    separation_call: bool = True,
) -> Separation:
    """Store the separation, cancel what was still planned (kept, as cancelled) and put a
    separation call in the worker's queue within 2 business days."""
    placement = get_placement(session, office_id=office_id, placement_id=placement_id)
    office = session.get(Office, office_id)
    if placement.status == PlacementStatus.separated:
        raise Conflict("a separation is already recorded for this placement")
    if separation_date < placement.start_date:
        raise ValidationFailed.one("date", "must not be before the placement's start date")
    today = office_today(office, clock)
    if separation_date > today + timedelta(days=366):
        raise ValidationFailed.one("date", "must not be more than a year ahead")
    sep = Separation(
        office_id=office_id,
        placement_id=placement.id,
        date=separation_date,
        reason=reason,
        note=note,
        recorded_by=recorded_by,
    )
    session.add(sep)
    for fu in session.exec(
        select(FollowUp).where(FollowUp.placement_id == placement.id, FollowUp.status == FollowUpStatus.pending)
    ).all():
        fu.status = FollowUpStatus.cancelled
        fu.status_reason = f"separated on {separation_date.isoformat()}"
        fu.updated_at = utcnow()
        session.add(fu)
    placement.status, placement.updated_at = PlacementStatus.separated, utcnow()
    placement.separated_on = separation_date  # what retention reads (migration 0017)
    session.add(placement)
    if not separation_call:
        session.flush()
        return sep
    cal = office_calendar(office)
    ref = max(separation_date, today)
    due = cal.add_business_days(ref, 1)
    window_end = cal.add_business_days(ref, 2)
    session.add(
        FollowUp(
            office_id=office_id,
            placement_id=placement.id,
            party=Party.client,
            channel=Channel.phone,
            kind=FollowUpKind.separation_call,
            due_date=due,
            window_days=(window_end - due).days,
            window_end=window_end,
            assignee_id=placement.worker_id,
        )
    )
    session.flush()
    return sep


def get_separation(session: Session, *, placement_id: int) -> Separation | None:
    return session.exec(select(Separation).where(Separation.placement_id == placement_id)).first()


# ---------------------------------------------------------------- follow-ups


def get_follow_up(session: Session, *, office_id: int, follow_up_id: int) -> FollowUp:
    return _in_office(session, FollowUp, follow_up_id, office_id, "follow-up")


def list_follow_ups(session: Session, *, office_id: int, placement_id: int) -> list[FollowUp]:
    placement = get_placement(session, office_id=office_id, placement_id=placement_id)
    return list(
        session.exec(
            select(FollowUp).where(FollowUp.placement_id == placement.id).order_by(FollowUp.due_date, FollowUp.id)
        ).all()
    )


MAX_RESCHEDULE_REASON = 300


def reschedule_follow_up(
    session: Session, *, office_id: int, follow_up_id: int, new_date: date, reason: str, clock: Clock
) -> FollowUp:
    """Move an open follow-up to another day (its window moves with it), keeping the reason.
    The day may not be in the past nor more than a year ahead; a reason is required."""
    fu = get_follow_up(session, office_id=office_id, follow_up_id=follow_up_id)
    if fu.status not in (FollowUpStatus.pending, FollowUpStatus.missed):
        raise Conflict(f"this follow-up is already {fu.status.value}")
    today = office_today(session.get(Office, office_id), clock)
    errors = []
    reason = (reason or "").strip()
    if not reason:
        errors.append(FieldError("reason", "give a reason for the new date"))
    elif len(reason) > MAX_RESCHEDULE_REASON:
        errors.append(FieldError("reason", f"at most {MAX_RESCHEDULE_REASON} characters"))
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


def schedule_retry(session: Session, *, follow_up: FollowUp, office: Office, today: date) -> FollowUp:
    """The next business day, by the same party and channel (worker tasks only)."""
    cal = office_calendar(office)
    due = cal.add_business_days(max(today, follow_up.due_date), 1)
    root = follow_up.retry_of or follow_up.id
    retry = FollowUp(
        office_id=follow_up.office_id,
        placement_id=follow_up.placement_id,
        party=follow_up.party,
        channel=follow_up.channel,
        kind=FollowUpKind.retry,
        due_date=due,
        window_days=1,
        window_end=due + timedelta(days=1),
        automated=follow_up.automated,
        assignee_id=follow_up.assignee_id,
        needs_consent=follow_up.needs_consent,
        retry_of=root,
        attempt=follow_up.attempt + 1,
    )
    session.add(retry)
    session.flush()
    return retry


def phone_call_next_business_day(
    session: Session,
    *,
    office: Office,
    placement: Placement,
    clock: Clock,
    kind: FollowUpKind,
    reason: str,
    retry_of: int | None = None,
    attempt: int = 1,
) -> FollowUp:
    """A phone call to the client for the placement's worker, due the office's next business day:
    the hand-over when automation could not reach the person (unanswered, undelivered, missed session)."""
    due = office_calendar(office).add_business_days(office_today(office, clock), 1)
    call = FollowUp(
        office_id=placement.office_id,
        placement_id=placement.id,
        party=Party.client,
        channel=Channel.phone,
        kind=kind,
        due_date=due,
        window_days=1,
        window_end=due + timedelta(days=1),
        automated=False,
        status_reason=reason[:500],
        assignee_id=placement.worker_id,
        retry_of=retry_of,
        attempt=attempt,
    )
    session.add(call)
    session.flush()
    return call


def staff_in_office(session: Session, *, office_id: int, roles: Iterable[Role]) -> list[StaffUser]:
    return list(
        session.exec(
            select(StaffUser).where(
                StaffUser.office_id == office_id,
                col(StaffUser.role).in_(list(roles)),
                StaffUser.is_active == True,  # noqa: E712
            )
        ).all()
    )
