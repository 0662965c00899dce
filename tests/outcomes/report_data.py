"""Rows for the report tests, written straight to the database (in bulk, not through the API)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

import sqlalchemy as sa
from dateutil.relativedelta import relativedelta
from sqlmodel import Session

from service.contacts.models import (
    Client,
    ClientCategory,
    Employer,
    EmploymentType,
    Placement,
    PlacementStatus,
    Separation,
    SeparationReason,
)

# Month ends, a leap day and the days around them: where calendar-month arithmetic goes wrong.
AWKWARD_STARTS = [
    date(2023, 8, 31), date(2023, 12, 31), date(2024, 1, 29), date(2024, 1, 30), date(2024, 1, 31),
    date(2024, 2, 29), date(2024, 3, 31), date(2024, 5, 31), date(2024, 8, 31), date(2024, 10, 31),
    date(2025, 1, 31), date(2025, 3, 31), date(2025, 8, 31), date(2025, 12, 31), date(2026, 1, 31),
    date(2026, 3, 31),
]  # fmt: skip
FIRST_START, LAST_START = date(2023, 6, 1), date(2026, 4, 20)


@dataclass
class Office:
    """What a test needs to add placements to an office."""

    office_id: int
    worker_ids: list[int]
    employer_ids: list[int] = field(default_factory=list)


def employers(session: Session, office: Office, n: int = 4) -> None:
    rows = [Employer(office_id=office.office_id, name=f"事業所 {i}") for i in range(n)]
    session.add_all(rows)
    session.flush()
    office.employer_ids = [e.id for e in rows]


def client(session: Session, office_id: int, category: str = "needy_person", name: str = "対象者") -> int:
    c = Client(office_id=office_id, name=name, category=ClientCategory(category))
    session.add(c)
    session.flush()
    return c.id


def placement(
    session: Session,
    office: Office,
    *,
    start: date,
    separated: date | None = None,
    client_id: int | None = None,
    category: str = "needy_person",
    worker_id: int | None = None,
    employment_type: str = "general",
) -> int:
    if not office.employer_ids:
        employers(session, office, 1)
    p = Placement(
        office_id=office.office_id,
        client_id=client_id or client(session, office.office_id, category),
        employer_id=office.employer_ids[0],
        job_title="清掃",
        employment_type=EmploymentType(employment_type),
        start_date=start,
        worker_id=worker_id or office.worker_ids[0],
        plan="standard-3m",
        status=PlacementStatus.separated if separated else PlacementStatus.active,
        separated_on=separated,
    )
    session.add(p)
    session.flush()
    if separated:
        session.add(
            Separation(
                office_id=office.office_id,
                placement_id=p.id,
                date=separated,
                reason=SeparationReason.voluntary,
            )
        )
        session.flush()
    return p.id


def _random_start(rng: random.Random) -> date:
    if rng.random() < 0.3:
        return rng.choice(AWKWARD_STARTS)
    return FIRST_START + timedelta(days=rng.randrange((LAST_START - FIRST_START).days + 1))


def _random_tenure(rng: random.Random, start: date) -> date | None:
    """A separation date, or None. Many fall on or next to an N-month date; some lie far ahead
    (recorded ahead of time, so unknown at earlier as-of dates)."""
    roll = rng.random()
    if roll < 0.4:
        return None
    if roll < 0.7:
        months = rng.choice((1, 3, 6, 12))
        return start + relativedelta(months=months) + timedelta(days=rng.choice((-1, 0, 0, 1)))
    return start + timedelta(days=rng.randrange(0, 500))


def generate(session: Session, office: Office, *, placements: int, seed: int) -> None:
    """Clients with one to three placements each. A later placement of a client starts after the
    previous separation: the same day, within a month, exactly a month after, a day too late,
    or long after; or, while the previous job still runs, alongside it. Three bulk inserts."""
    rng = random.Random(seed)
    if not office.employer_ids:
        employers(session, office)
    plans: list[tuple[Client, list[tuple[date, date | None]]]] = []
    made = 0
    while made < placements:
        client_row = Client(
            office_id=office.office_id, name=f"対象者 {made}", category=rng.choice(list(ClientCategory))
        )
        start, rows = _random_start(rng), []
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            sep = _random_tenure(rng, start)
            rows.append((start, sep))
            made += 1
            if sep is None:
                start = start + timedelta(days=rng.randrange(1, 200))  # a second job alongside
            else:
                start = sep + rng.choice(
                    (timedelta(0), timedelta(days=rng.randrange(1, 31)), relativedelta(months=1),
                     relativedelta(months=1, days=1), timedelta(days=rng.randrange(31, 120)))
                )  # fmt: skip
        plans.append((client_row, rows))
    session.add_all(c for c, _ in plans)
    session.flush()
    made_placements = [
        (
            Placement(
                office_id=office.office_id,
                client_id=client_row.id,
                employer_id=rng.choice(office.employer_ids),
                job_title="軽作業",
                employment_type=rng.choice(list(EmploymentType)),
                start_date=start,
                worker_id=rng.choice(office.worker_ids),
                plan="standard-3m",
                status=PlacementStatus.separated if sep else PlacementStatus.active,
                separated_on=sep,
            ),
            sep,
        )
        for client_row, rows in plans
        for start, sep in rows
    ]
    session.add_all(p for p, _ in made_placements)
    session.flush()
    session.add_all(
        Separation(office_id=office.office_id, placement_id=p.id, date=sep, reason=SeparationReason.other)
        for p, sep in made_placements
        if sep is not None
    )
    session.flush()


def exported_rows(session: Session, office_id: int) -> list[dict]:
    """The office's placements as plain rows, for the independent recomputations."""
    p, s, c = Placement.__table__, Separation.__table__, Client.__table__
    rows = session.execute(
        sa.select(
            p.c.id,
            p.c.client_id,
            p.c.worker_id,
            p.c.employer_id,
            p.c.office_id,
            p.c.employment_type,
            c.c.category,
            p.c.start_date,
            s.c.date.label("sep_date"),
        )  # fmt: skip
        .select_from(p.outerjoin(s, s.c.placement_id == p.c.id).join(c, c.c.id == p.c.client_id))
        .where(p.c.office_id == office_id)
    ).mappings()
    return [dict(r) | {"employment_type": r["employment_type"].value, "category": r["category"].value} for r in rows]
