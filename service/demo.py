"""A believable demo caseload: 2 offices, 6 workers, a manager and an admin, about 300
placements started over the last 8 months, with outcomes and separations that give a
retention curve like the field's (about half to two thirds still employed at 3 months)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from faker import Faker
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from service.accounts import service as accounts
from service.accounts.models import Office, Role, StaffUser
from service.clock import Clock, FixedClock
from service.contacts import service as contacts
from service.contacts.models import (
    ClientCategory,
    EmploymentType,
    FollowUp,
    FollowUpStatus,
    Party,
    SeparationReason,
)
from service.db import session_scope
from service.outcomes import crisis
from service.outcomes.models import CrisisFlag, CrisisStatus, Outcome, RiskSignal, StillEmployed
from service.schedules.plans import PlanTemplate

DEMO_PASSWORD = "teichaku-demo-2026"

OFFICES = [
    ("みなと市 自立相談支援センター", "minato", "0126-22-1001"),
    ("さくら市 くらし・しごと相談窓口", "sakura", "011-211-2002"),
]
JOBS = ["介護補助", "清掃スタッフ", "倉庫内軽作業", "調理補助", "スーパー品出し", "農作業補助",
        "事務補助", "配送助手", "製造ライン", "ホテル客室清掃"]  # fmt: skip
WORKPLACES = ["介護センター", "食品工業", "物流センター", "ホテル", "農園", "クリーンサービス",
              "スーパー", "製作所", "給食サービス", "リサイクル"]  # fmt: skip
RELATIONSHIPS = ["母", "父", "兄", "姉", "配偶者", "叔母"]
NOTES_GOOD = ["仕事に慣れてきたとのこと。", "職場の人間関係も良好。", "生活リズムが安定している。"]
NOTES_RISK = ["朝起きられない日がある。", "上司に注意されて落ち込んでいる。", "給料日まで生活費が厳しい。"]


def demo_logins(session: Session) -> list[tuple[str, str, str]]:
    rows = session.exec(
        select(StaffUser, Office).join(Office, col(Office.id) == StaffUser.office_id).order_by(StaffUser.id)
    ).all()
    return [(u.email, u.role.value, o.name) for u, o in rows]


def _person(fake: Faker) -> tuple[str, str]:
    """A name and its reading that belong together (山田 太郎 / ヤマダ タロウ)."""
    last, first = fake.last_name_pair(), fake.first_name_pair()
    return f"{last[0]} {first[0]}", f"{last[1]} {first[1]}"


def _mobile(rng: random.Random) -> str:
    return f"+8190{rng.randint(1000, 9999)}{rng.randint(1000, 9999)}"


def load_demo(
    factory: sessionmaker[Session],
    *,
    plans: dict[str, PlanTemplate],
    clock: Clock,
    seed: int = 2026,
    placements: int = 300,
    echo: Callable[[str], None] = lambda _: None,
) -> str:
    rng = random.Random(seed)
    fake = Faker("ja_JP")
    fake.seed_instance(seed)
    with session_scope(factory) as session:
        offices, workers = [], {}
        for i, (name, slug, phone) in enumerate(OFFICES):
            office = accounts.create_office(session, name=name, phone=f"+81{phone.replace('-', '')[1:]}")
            offices.append(office)
            if i == 0:
                accounts.create_user(session, email=f"manager@{slug}.example.jp", name=fake.name(),
                                     role=Role.manager, office_id=office.id, password=DEMO_PASSWORD)  # fmt: skip
                accounts.create_user(session, email=f"admin@{slug}.example.jp", name=fake.name(),
                                     role=Role.admin, office_id=office.id, password=DEMO_PASSWORD)  # fmt: skip
            workers[office.id] = [
                accounts.create_user(
                    session,
                    email=f"worker{n}@{slug}.example.jp",
                    name=fake.name(),
                    role=Role.worker,
                    office_id=office.id,
                    password=DEMO_PASSWORD,
                )  # fmt: skip
                for n in range(1, 4)
            ]
        employers = {
            o.id: [
                contacts.create_employer(
                    session,
                    office_id=o.id,
                    name=f"{fake.last_name()}{rng.choice(WORKPLACES)}",
                    address=fake.address(),
                    supervisor_name=fake.name(),
                    phone=f"+81{rng.choice(['11', '126', '3', '6'])}{rng.randint(2000000, 9999999)}"[:13],
                    email=f"genba{k}@{o.id}.employer.example.jp",
                )
                for k in range(12)
            ]
            for o in offices
        }
        session.flush()
        now = clock.now()
        made = 0
        for n in range(placements):
            office = offices[n % 2]
            tz = ZoneInfo(office.timezone)
            today = now.astimezone(tz).date()
            start = today - timedelta(days=rng.randint(1, 240))
            name, kana = _person(fake)
            client = contacts.create_client(
                session,
                office_id=office.id,
                created_by=None,
                ref=f"D{n + 1:04d}",
                name=name,
                kana=kana,
                phone=_mobile(rng),
                email=f"client{n + 1}@example.jp" if rng.random() < 0.6 else None,
                address=fake.address(),
                category=rng.choice([ClientCategory.needy_person, ClientCategory.public_assistance]),
                consent_automated=rng.random() < 0.8,
                consent_family=rng.random() < 0.5,
                consent_employer=rng.random() < 0.85,
            )
            if client.consent_family:
                contacts.add_family_contact(
                    session, office_id=office.id, client_id=client.id, clock=FixedClock(_at(start, tz)),
                    name=fake.name(), relationship=rng.choice(RELATIONSHIPS), phone=_mobile(rng),
                )  # fmt: skip
            worker = rng.choice(workers[office.id])
            placement = contacts.create_placement(
                session,
                office_id=office.id,
                created_by=worker.id,
                plans=plans,
                client_id=client.id,
                employer_id=rng.choice(employers[office.id]).id,
                job_title=rng.choice(JOBS),
                employment_type=rng.choices(list(EmploymentType), weights=[80, 15, 5])[0],
                start_date=start,
                weekly_hours=rng.choice([20, 25, 30, 40]),
                worker_id=worker.id,
                plan=rng.choices(["standard-3m", "short-1m", "extended-6m"], weights=[70, 15, 15])[0],
            )
            # About 40% leave within 3 months, more early than late, as in the field.
            leaves_after = int(rng.expovariate(1 / 75)) if rng.random() < 0.6 else None
            sep_date = start + timedelta(days=leaves_after) if leaves_after is not None else None
            if sep_date is not None and sep_date >= today:
                sep_date = None
            # A few people still at work have had a hard week: their recent answers raise crisis flags.
            trouble = today - timedelta(days=rng.randint(2, 9)) if sep_date is None and rng.random() < 0.08 else None
            _history(session, rng, placement.id, min(today, sep_date or today), today, sep_date, tz, worker.id, trouble)
            if sep_date is not None:
                contacts.record_separation(
                    session,
                    office_id=office.id,
                    placement_id=placement.id,
                    separation_date=sep_date,
                    reason=rng.choices(list(SeparationReason), weights=[45, 10, 20, 15, 10])[0],
                    note=None,
                    recorded_by=worker.id,
                    clock=FixedClock(_at(sep_date + timedelta(days=1), tz)),
                )
                _history(session, rng, placement.id, today, today, sep_date, tz, worker.id, None)
                _settle_flag(
                    session, placement.id, worker.id, _at(sep_date, tz, 15), "離職を確認。離職後の連絡を予定。"
                )
            elif trouble is not None and rng.random() < 0.5:
                _settle_flag(session, placement.id, worker.id, None, None, acknowledged_at=_at(trouble, tz, 14))
            made += 1
            if made % 50 == 0:
                echo(f"  {made}/{placements} placements")
        session.flush()
        separated = sum(1 for _ in session.exec(select(Outcome.id).where(Outcome.still_employed == StillEmployed.no)))
    return f"Loaded {made} placements in {len(OFFICES)} offices ({separated} separation outcomes)."


def _at(day: date, tz: ZoneInfo, hour: int = 10) -> datetime:
    return datetime.combine(day, time(hour), tz).astimezone(UTC)


def _history(
    session: Session,
    rng: random.Random,
    placement_id: int,
    end: date,
    today: date,
    separation: date | None,
    tz: ZoneInfo,
    worker_id: int,
    trouble_from: date | None,
) -> None:
    """Resolve the follow-ups due before ``end`` as a real caseload would have them. Answers near a
    separation, or since ``trouble_from``, carry risk signals; they go through the crisis rules as
    a worker's recorded outcome would."""
    rows = session.exec(
        select(FollowUp).where(
            FollowUp.placement_id == placement_id,
            FollowUp.status == FollowUpStatus.pending,
            FollowUp.due_date < end,
        )
    ).all()
    for fu in rows:
        recent = (today - fu.due_date).days <= 3
        if recent and trouble_from is None and rng.random() < 0.6:
            continue  # left for the worker: shows as overdue in today's queue
        nearing_exit = (separation is not None and 0 <= (separation - fu.due_date).days < 21) or (
            trouble_from is not None and fu.due_date >= trouble_from
        )
        if trouble_from is not None and fu.due_date >= trouble_from:
            reached = True  # the hard week is known because the person was reached
        else:
            reached = rng.random() < (0.6 if fu.automated else 0.88)
        fu.status = FollowUpStatus.done if reached else FollowUpStatus.missed
        fu.status_reason = None if reached else "window passed"
        fu.completed_at = _at(fu.due_date, tz, 11) if reached else None
        session.add(fu)
        if not reached:
            continue
        if separation is not None and fu.due_date >= separation:
            employed = StillEmployed.no
        else:
            employed = StillEmployed.yes if fu.party != Party.family else StillEmployed.unknown
        signals = []
        if nearing_exit:
            signals = rng.sample(
                [RiskSignal.wants_to_quit, RiskSignal.conflict, RiskSignal.absence, RiskSignal.health,
                 RiskSignal.money, RiskSignal.isolation], k=rng.randint(1, 2))  # fmt: skip
        outcome = Outcome(
                office_id=fu.office_id,
                follow_up_id=fu.id,
                placement_id=placement_id,
                party=fu.party,
                channel=fu.channel,
                recorded_by=None if fu.automated else worker_id,
                recorded_at=_at(fu.due_date, tz, 11),
                reached=True,
                still_employed=employed,
                wellbeing=rng.randint(1, 3) if nearing_exit else rng.randint(3, 5),
                risk_signals=[s.value for s in signals],
                note=rng.choice(NOTES_RISK if nearing_exit else NOTES_GOOD) if not fu.automated else None,
            )  # fmt: skip
        session.add(outcome)
        if signals:
            session.flush()
            crisis.on_outcome(session, outcome=outcome, clock=FixedClock(outcome.recorded_at))
    session.flush()


def _settle_flag(
    session: Session,
    placement_id: int,
    worker_id: int,
    resolved_at: datetime | None,
    note: str | None,
    *,
    acknowledged_at: datetime | None = None,
) -> None:
    """The demo's worker takes on (and, when the person has left, closes) the placement's open flag."""
    flag = session.exec(
        select(CrisisFlag).where(CrisisFlag.placement_id == placement_id, CrisisFlag.status != CrisisStatus.resolved)
    ).first()
    if flag is None:
        return
    if resolved_at is not None and note is not None:
        when = max(resolved_at, flag.opened_at)
        crisis.resolve_flag(
            session, office_id=flag.office_id, flag_id=flag.id, user_id=worker_id, note=note, clock=FixedClock(when)
        )
    elif acknowledged_at is not None:
        crisis.acknowledge_flag(
            session,
            office_id=flag.office_id,
            flag_id=flag.id,
            user_id=worker_id,
            clock=FixedClock(max(acknowledged_at, flag.opened_at)),
        )
