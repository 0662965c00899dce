"""The retention rule's date pieces (service/outcomes/retention.py) against plain Python.

``month_cutoff`` replaces "start + N months <= as_of" by "start <= a date computed once", and
``sql_after_months`` compares an end with start + N months without per-row date functions on
SQLite. Both are checked against ``add_months`` (the calendar arithmetic of the plans) on every
day of a leap year and its neighbours, on month ends and on random pairs, on both databases.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from service.outcomes.retention import (
    MONTHS,
    SPELL_GAP_MONTHS,
    month_cutoff,
    retained_at,
    sql_after_months,
    sql_month_key,
)
from service.schedules.calendar import add_months

NS = sorted({*MONTHS, SPELL_GAP_MONTHS, 2, 24})


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _brute_cutoff(as_of: date, n: int) -> date:
    day = as_of
    while add_months(day, n) > as_of:
        day -= timedelta(days=1)
    return day


def test_cutoff_is_the_last_start_whose_n_month_date_has_come():
    for as_of in _days(date(2027, 12, 1), date(2029, 3, 31)):
        for n in NS:
            cutoff = month_cutoff(as_of, n)
            assert add_months(cutoff, n) <= as_of < add_months(cutoff + timedelta(days=1), n)
            assert cutoff == _brute_cutoff(as_of, n)


def test_cutoff_fixed_cases():
    # 28 Feb 2027 is the 1-month date of 28, 29, 30 and 31 January.
    assert month_cutoff(date(2027, 2, 28), 1) == date(2027, 1, 31)
    assert month_cutoff(date(2027, 2, 27), 1) == date(2027, 1, 27)
    # 29 Feb 2028 (leap day): 12 months later is 28 Feb 2029, and 29 Feb 2028 is the last start
    # whose 12-month date has come on 28 Feb 2029.
    assert month_cutoff(date(2029, 2, 28), 12) == date(2028, 2, 29)
    assert month_cutoff(date(2028, 2, 29), 1) == date(2028, 1, 31)
    assert month_cutoff(date(2028, 2, 28), 1) == date(2028, 1, 28)
    assert month_cutoff(date(2028, 3, 31), 1) == date(2028, 2, 29)


@given(st.dates(date(1990, 1, 1), date(2100, 12, 31)), st.sampled_from(NS))
def test_cutoff_property(as_of, n):
    cutoff = month_cutoff(as_of, n)
    assert add_months(cutoff, n) <= as_of < add_months(cutoff + timedelta(days=1), n)


def _pairs() -> list[tuple[date, date, int]]:
    """(later, earlier, n): every start around a leap February and month ends, with ends on and
    around its N-month date; and random pairs, ends before starts included."""
    out = []
    starts = _days(date(2027, 12, 25), date(2028, 3, 5)) + [date(2027, 1, 31), date(2027, 8, 31), date(2028, 10, 31)]
    for start in starts:
        for n in NS:
            mark = add_months(start, n)
            out += [(mark + timedelta(days=k), start, n) for k in (-2, -1, 0, 1, 2)]
    rng = random.Random(7)
    for _ in range(1500):
        start = date(2020, 1, 1) + timedelta(days=rng.randrange(3000))
        out.append((start + timedelta(days=rng.randrange(-40, 800)), start, rng.choice(NS)))
    return out


def _evaluate(engine, conditions: list) -> list[bool]:
    values = []
    with engine.connect() as conn:
        for i in range(0, len(conditions), 400):
            chunk = conditions[i : i + 400]
            row = conn.execute(sa.select(*[sa.case((c, 1), else_=0) for c in chunk])).one()
            values += [bool(v) for v in row]
    return values


def test_after_months_equals_add_months_on_the_database(engine):
    pairs = _pairs()
    conditions = [
        sql_after_months(sa.literal(later, sa.Date), sa.literal(earlier, sa.Date), n) for later, earlier, n in pairs
    ]
    expected = [later > add_months(earlier, n) for later, earlier, n in pairs]
    assert _evaluate(engine, conditions) == expected
    assert 0 < sum(expected) < len(expected)


def test_after_months_is_unknown_without_an_end(engine):
    condition = sql_after_months(sa.null(), sa.literal(date(2028, 1, 31), sa.Date), 1)
    with engine.connect() as conn:
        assert conn.execute(sa.select(condition)).scalar() is None


def test_after_months_on_month_keys_from_a_subquery_equals_it_on_dates(engine):
    # The counts select each row's month keys once in a subquery (sql_month_key) and compare
    # those columns: the same answers as on the dates themselves.
    pairs = _pairs()
    got = []
    with engine.connect() as conn:
        for i in range(0, len(pairs), 200):
            chunk = pairs[i : i + 200]
            keys = sa.select(
                *(
                    sql_month_key(sa.literal(day, sa.Date)).label(f"{side}{j}")
                    for j, (later, earlier, _) in enumerate(chunk)
                    for side, day in (("later", later), ("earlier", earlier))
                )
            ).subquery()
            conditions = [
                sql_after_months(keys.c[f"later{j}"], keys.c[f"earlier{j}"], n) for j, (*_, n) in enumerate(chunk)
            ]
            got += [bool(v) for v in conn.execute(sa.select(*[sa.case((c, 1), else_=0) for c in conditions])).one()]
    assert got == [later > add_months(earlier, n) for later, earlier, n in pairs]


def _python_rule(start: date, end: date | None, n: int, as_of: date, spell: bool) -> tuple[bool, bool]:
    """The docstring's definition, word for word."""
    mark = add_months(start, n)
    eligible = mark <= as_of
    kept = end is None or end > mark
    if spell:
        eligible = eligible and (kept or add_months(end, SPELL_GAP_MONTHS) <= as_of)
    return eligible, eligible and kept


def test_retained_at_equals_the_definition_at_month_ends_and_leap_days(engine):
    cases = []
    for as_of in (date(2028, 2, 29), date(2028, 3, 31), date(2029, 2, 28), date(2028, 2, 28), date(2027, 3, 1)):
        for start in (date(2027, 1, 31), date(2028, 1, 31), date(2028, 2, 29), date(2027, 2, 28), date(2028, 1, 29)):
            for n in MONTHS:
                mark = add_months(start, n)
                ends = [None, *(mark + timedelta(days=k) for k in (-1, 0, 1)), start + timedelta(days=3)]
                for end in ends:
                    known = end if end is not None and end <= as_of else None
                    for spell in (False, True):
                        cases.append((start, known, n, as_of, spell))
    conditions = []
    for start, end, n, as_of, spell in cases:
        end_sql = sa.literal(end, sa.Date) if end is not None else sa.null()
        eligible, retained = retained_at(sa.literal(start, sa.Date), end_sql, months=n, as_of=as_of, spell=spell)
        conditions += [eligible, retained]
    values = _evaluate(engine, conditions)
    got = [tuple(values[i : i + 2]) for i in range(0, len(values), 2)]
    expected = [_python_rule(*case) for case in cases]
    assert got == expected
    # The fixed cases named in the issue, on the database: a 31 January start is lost at 1 month
    # when it ends on 28 February and kept when it ends on 1 March; a 29 February 2028 start's
    # 12-month date is 28 February 2029.
    fixed = {
        (date(2027, 1, 31), date(2027, 2, 28), 1, date(2027, 3, 31), False): (True, False),
        (date(2027, 1, 31), date(2027, 3, 1), 1, date(2027, 3, 31), False): (True, True),
        (date(2027, 1, 31), None, 1, date(2027, 2, 27), False): (False, False),
        (date(2028, 2, 29), None, 12, date(2029, 2, 28), False): (True, True),
        (date(2028, 2, 29), None, 12, date(2029, 2, 27), False): (False, False),
        (date(2028, 2, 29), date(2029, 2, 28), 12, date(2029, 3, 31), False): (True, False),
        (date(2028, 2, 29), date(2028, 3, 29), 1, date(2028, 4, 28), True): (False, False),  # undecided
        (date(2028, 2, 29), date(2028, 3, 29), 1, date(2028, 4, 29), True): (True, False),
    }
    conditions = []
    for start, end, n, as_of, spell in fixed:
        end_sql = sa.literal(end, sa.Date) if end is not None else sa.null()
        conditions += list(retained_at(sa.literal(start, sa.Date), end_sql, months=n, as_of=as_of, spell=spell))
    values = _evaluate(engine, conditions)
    assert [tuple(values[i : i + 2]) for i in range(0, len(values), 2)] == list(fixed.values())
