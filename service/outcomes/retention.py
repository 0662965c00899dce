"""Retention, defined once: job retention, employment retention and the retention curve.

Definitions (every number the API, the CLI and the pages show comes from here):

* **Job retention at N months** (N = 1, 3, 6, 12). A placement's *N-month date* is its start
  date plus N calendar months, clamped to the month's end (31 January + 1 month = 28 or 29
  February; the same arithmetic as ``service.schedules.calendar.add_months``). The placement is
  *eligible* at N once its N-month date is on or before ``as_of``; immature placements are never
  counted, neither as retained nor as lost. It is *retained* at N if, as of ``as_of``, it has no
  separation or its separation date is after the N-month date (separated on the N-month date
  itself is not retained). A separation dated after ``as_of`` is not known yet as of ``as_of``:
  the placement counts as not separated.
* **Employment retention at N months** counts *employment spells* of a client instead of
  placements. A client's placements that started on or before ``as_of`` are ordered by start
  date (then id). A placement continues the current spell when it starts on or before the
  *reach* of some earlier placement of the client, where reach is the day one calendar month
  after that placement's separation (or "for ever" while it is not separated); otherwise it
  starts a new spell. So a new job starting within one month after a separation (or while
  another job still runs) continues the spell, the definition the Ministry uses for
  就労定着者. A spell starts on its first placement's start date and ends on the latest
  separation of its placements, or not at all while any of them is not separated. Spell
  retention at N is job retention applied to (spell start, spell end), with one more rule: a
  spell that ended on or before its N-month date is undecided until the day one month after its
  end is on or before ``as_of`` (until then a new job may still continue it), and undecided
  spells stay out of the denominator like immature ones. A spell belongs to the group (worker,
  employer, employment type, cohort...) of the placement that started it.
* **Retention curve**: the Kaplan-Meier estimate of days employed from the start, one
  observation per placement: a separation on or before ``as_of`` is an event at (separation date
  - start date) days; a placement still employed is censored at (``as_of`` - start date). With
  each point: the number at risk, events, censored, and the 95% confidence band by the
  exponential ("log-log") Greenwood formula, as ``lifelines.KaplanMeierFitter`` computes it.

How it is computed. Every count is an SQL aggregate (``COUNT(*) FILTER (WHERE ...)`` per N,
grouped by key, in :func:`_tally`); Python only adds and subtracts these grouped counts, turns
them into rates and walks the distinct durations of the curve. Calendar months never need
per-row arithmetic for maturity: "N-month date on or before ``as_of``" is "start on or before
:func:`month_cutoff`", a date computed once per report with
``service.schedules.calendar.add_months``. The one per-row comparison left, "end after the
N-month date", is :class:`sql_after_months`, compiled per dialect: PostgreSQL's ``date +
interval 'N months'`` (which clamps to the month's end), and on SQLite integer arithmetic on the
ISO text (see its docstring for why that is exact), on keys computed once per row
(:class:`sql_month_key`).

A placement's end is its ``separated_on``, the separation's date kept on the placement (migration
0017), so no report joins the separations. Job retention is one pass over the placements on
PostgreSQL. On SQLite, where every per-row expression costs, it is two cheaper ones
(:func:`_all_placements`): every placement counted as if still employed (then it is eligible and
retained exactly when mature) from ranges of start dates of an index, no per-row comparison at
all; then, from the placements separated by ``as_of`` only (a fraction, read from an index of
the separated ones by end date), what that overstates:
per N, those mature but not eligible or not retained by the definition. Employment retention
starts from the same counts under the spell rule, every placement a spell of its own, then takes
away the placements of clients with more than one and adds their spells instead, built with
window functions (a running ``MAX`` of the ends for the gaps-and-islands walk, a running ``SUM``
to number the spells) over those placements only. The tests check all of this against DuckDB, a
Python walk with ``dateutil`` and ``add_months`` on month ends and leap days, on SQLite and
PostgreSQL.

Scope: an office sees only its own placements. The API allows managers and admins (workers get
403): the numbers are about every worker's caseload, and managers decide staffing from them.
"""

from __future__ import annotations

import enum
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from statistics import NormalDist

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session

from service.accounts.models import Office, StaffUser
from service.contacts.models import Client, Employer, Placement
from service.db import sqlite_indexed_by
from service.outcomes.schemas import (
    CurveGroup,
    CurvePoint,
    RetentionCell,
    RetentionCurve,
    RetentionGroup,
    RetentionReport,
)
from service.schedules.calendar import add_months

MONTHS = (1, 3, 6, 12)
REFERENCE_RATE = 0.5  # the national survey: most municipalities retain more than about half
CONFIDENCE = 0.95
SPELL_GAP_MONTHS = 1
OPEN_END = date(9999, 12, 31)  # "not separated" when a date is needed for comparisons


class Grouping(enum.StrEnum):
    office = "office"
    worker = "worker"
    employer = "employer"
    employment_type = "employment_type"
    category = "category"
    cohort = "cohort"  # start month, YYYY-MM
    none = "none"


_LABELS = {
    "employment_type": {
        "general": {"ja": "一般就労", "en": "general employment"},
        "certified_training": {
            "ja": "認定就労訓練（雇用型）",
            "en": "certified training employment",
        },
        "other": {"ja": "その他", "en": "other"},
    },
    "category": {
        "needy_person": {"ja": "生活困窮者", "en": "needy person"},
        "public_assistance": {"ja": "被保護者", "en": "public-assistance recipient"},
    },
    "none": {"all": {"ja": "全体", "en": "all"}},
}


# -- dialect-specific date pieces ----------------------------------------------------------


@lru_cache(maxsize=256)
def month_cutoff(as_of: date, months: int) -> date:
    """The last day ``d`` whose N-month date ``add_months(d, N)`` is on or before ``as_of``.

    ``add_months`` never decreases as ``d`` grows, so "N-month date on or before ``as_of``" is
    exactly "``d`` on or before this day": SQL compares plain dates against a handful of these
    instead of doing month arithmetic on every row. ``as_of`` N months back is such a day; when
    ``as_of`` is a month's last day, the days after it in that month (29-31 January for 28
    February) are too, hence the few steps forward.
    """
    day = add_months(as_of, -months)
    while day < date.max and add_months(day + timedelta(days=1), months) <= as_of:
        day += timedelta(days=1)
    return day


class sql_after_months(FunctionElement):  # noqa: N801  (reads like the SQL condition it is)
    """The condition ``later > earlier + N calendar months`` (clamped to the month's end), NULL
    when either date is NULL, on SQLite and PostgreSQL.

    PostgreSQL's ``date + interval 'N months'`` clamps to the month's end itself. SQLite has no
    such arithmetic, and its ``date()`` functions are slow; there the condition is written on
    the integer ``K(d) = 100 * (12 * year + month) + day`` of each date:
    ``later > add_months(earlier, N)`` exactly when ``K(later) - K(earlier) > 100 * N``. Proof:
    let the N-month date be in month M (``12 * year + month`` of ``earlier`` plus N) with day
    ``min(e, L)``, ``e`` the day of ``earlier`` and L the length of month M. ``later`` is after it
    when its month is after M, or when it is in M with a day ``l > min(e, L)``; as ``l <= L``,
    that is ``l > e``. So the comparison is lexicographic on (month number - N, day), which is
    the comparison of ``K - 100 * N`` because days are below 100. No clamping is left.
    """

    type = sa.Boolean()
    name = "after_months"
    inherit_cache = True

    def __init__(self, later, earlier, months: int) -> None:
        # The months are a program constant, rendered literally (part of the cache key).
        super().__init__(later, earlier, sa.literal_column(str(int(months)), sa.Integer))


@compiles(sql_after_months, "postgresql")
def _after_months_pg(element, compiler, **kw):
    later_c, earlier_c, months_c = element.clauses
    later, earlier, n = compiler.process(later_c, **kw), compiler.process(earlier_c, **kw), int(months_c.name)
    return f"(({later}) > CAST(({earlier}) + INTERVAL '{n} months' AS DATE))"


def _month_key_sqlite(day: str) -> str:
    # Dates are stored as ISO text (YYYY-MM-DD) on SQLite.
    return (
        f"(CAST(substr({day}, 1, 4) AS INTEGER) * 1200 + CAST(substr({day}, 6, 2) AS INTEGER) * 100"
        f" + CAST(substr({day}, 9, 2) AS INTEGER))"
    )


@compiles(sql_after_months, "sqlite")
def _after_months_sqlite(element, compiler, **kw):
    later_c, earlier_c, months_c = element.clauses

    def key(clause) -> str:
        sql = compiler.process(clause, **kw)
        return sql if isinstance(clause.type, MonthKey) else _month_key_sqlite(sql)

    return f"(({key(later_c)} - {key(earlier_c)}) > {100 * int(months_c.name)})"


class MonthKey(sa.TypeDecorator[date]):
    """The type of :class:`sql_month_key` (only ever compared in SQL, never read or written)."""

    impl = sa.Date
    cache_ok = True


class sql_month_key(FunctionElement):  # noqa: N801
    """A date as :class:`sql_after_months` compares it: ``K(d)`` on SQLite, the date itself on
    PostgreSQL. Selected once per row in a subquery and given to ``sql_after_months`` (directly
    or through :func:`retained_at`'s ``keys``), it spares SQLite computing ``K`` (six calls of
    its text functions) again in every count that compares an end."""

    type = MonthKey()
    name = "month_key"
    inherit_cache = True


@compiles(sql_month_key, "postgresql")
def _month_key_pg(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(sql_month_key, "sqlite")
def _month_key(element, compiler, **kw):
    return _month_key_sqlite(compiler.process(element.clauses, **kw))


class sql_days_between(FunctionElement):  # noqa: N801
    """``later - earlier`` in whole days."""

    type = sa.Integer()
    name = "days_between"
    inherit_cache = True


@compiles(sql_days_between, "postgresql")
def _days_pg(element, compiler, **kw):
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"(({later}) - ({earlier}))"


@compiles(sql_days_between, "sqlite")
def _days_sqlite(element, compiler, **kw):
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)"


class sql_year_month(FunctionElement):  # noqa: N801
    """A date's month as ``YYYY-MM``."""

    type = sa.String()
    name = "year_month"
    inherit_cache = True


@compiles(sql_year_month, "postgresql")
def _ym_pg(element, compiler, **kw):
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM')"


@compiles(sql_year_month, "sqlite")
def _ym_sqlite(element, compiler, **kw):
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


# -- the rows everything is computed from ---------------------------------------------------

_p = Placement.__table__
_c = Client.__table__


# The placements read through ``ix_placement_retention`` (migration 0008): by office and
# start date, with every group key, so a range of start dates is counted from the index alone.
# SQLite's planner would rather walk the group key's own index (to skip sorting) and read every
# row from the table, more than half again as slow; ``INDEXED BY`` also makes the statement
# fail, rather than slow down, should the index go.
_p_by_start = sqlite_indexed_by(_p, "ix_placement_retention", "placement_by_start")
# The placements separated, by end date with every group key (migration 0017: a partial index of
# the separated ones only), read from the index alone.
_p_by_end = sqlite_indexed_by(_p, "ix_placement_separated", "placement_by_end")


def _group_key(by: Grouping, p=_p):
    return {
        Grouping.office: p.c.office_id,
        Grouping.worker: p.c.worker_id,
        Grouping.employer: p.c.employer_id,
        Grouping.employment_type: p.c.employment_type,
        Grouping.category: _c.c.category,
        Grouping.cohort: sql_year_month(p.c.start_date),
        Grouping.none: sa.literal("all", sa.String),
    }[by]


def _placements(*, office_id: int, as_of: date, by: Grouping, where=None, ends: str = "known", after=None):
    """One row per placement of the office started on or before ``as_of`` (and after ``after``,
    if given): its group key, start, and (``ends``) its end as known on ``as_of``:

    * ``"known"``: the separation date (``separated_on``) if on or before ``as_of``, else NULL;
    * ``"none"``: no end, read from ``ix_placement_retention`` alone (:func:`_everyone`);
    * ``"ended"``: only the placements separated on or before ``as_of``, with that date, read
      from ``ix_placement_separated`` alone (a fraction of the placements)."""
    p = {"none": _p_by_start, "ended": _p_by_end}.get(ends, _p)
    rows, end, known = p, None, []
    if ends == "ended":
        end, known = p.c.separated_on, [p.c.separated_on <= as_of]
    elif ends == "known":
        end = sa.case((p.c.separated_on <= as_of, p.c.separated_on), else_=sa.null())
    if by == Grouping.category:  # the only key that needs the client (a placement always has one)
        rows = rows.join(_c, _c.c.id == p.c.client_id)
    columns = [
        p.c.id,
        p.c.client_id,
        _group_key(by, p).label("key"),  # grouped as stored; made a string in Python (_key)
        p.c.start_date.label("start"),
    ]
    conditions = [p.c.office_id == office_id, p.c.start_date <= as_of, *known]
    conditions += [] if after is None else [p.c.start_date > after]
    conditions += [] if where is None else [where]
    return sa.select(*columns, *([] if end is None else [end.label("end")])).select_from(rows).where(*conditions)


# The office's placements in client order (ix_placement_office_client, migration 0008): who has
# several is one walk of the index, no sort (SQLite's planner would rather sort a range of
# ix_placement_retention: more than twice as long).
_p_by_client = sqlite_indexed_by(_p, "ix_placement_office_client", "placement_by_client")


def _several_clients(session: Session, *, office_id: int, as_of: date) -> list[int]:
    """The clients of the office with more than one placement started by ``as_of``: found once
    per report and given to both statements that need them (:func:`_among_them`)."""
    p = _p_by_client
    return list(
        session.execute(
            sa.select(p.c.client_id)
            .where(p.c.office_id == office_id, p.c.start_date <= as_of)
            .group_by(p.c.client_id)
            .having(sa.func.count() > 1)
        ).scalars()
    )


def _among_them(dialect: str):
    """The condition "the placement's client is one of ``:clients``" (:func:`_several_clients`):
    a JSON array read by ``json_each`` on SQLite (a list of bound values would meet SQLite's
    limit of 32,766 of them), an array on PostgreSQL."""
    if dialect == "sqlite":
        ids = sa.func.json_each(sa.bindparam("clients", type_=sa.String)).table_valued("value")
        return _p.c.client_id.in_(sa.select(ids.c.value))
    return _p.c.client_id == sa.any_(sa.bindparam("clients", type_=postgresql.ARRAY(sa.Integer)))


def _clients_param(clients: list[int], dialect: str):
    return json.dumps(clients) if dialect == "sqlite" else clients


def _walked_spells(*, office_id: int, as_of: date, by: Grouping, dialect: str):
    """One row per employment spell of the clients with more than one placement: the key of the
    placement that started it, its start and its end (NULL while any of its placements is not
    separated). (A client's only placement is a spell by itself: see :func:`_employment_counts`.)

    A placement continues a spell when it starts on or before the reach (end + 1 month, for
    ever while open) of an earlier placement of the client. Reach grows with the end, so that is
    "on or before the reach of the latest end so far": one running ``MAX`` of the ends (open as
    ``OPEN_END``), and the month arithmetic done once per placement after the window."""
    base = _placements(office_id=office_id, as_of=as_of, by=by, where=_among_them(dialect)).subquery("placements")
    walk = {"partition_by": base.c.client_id, "order_by": (base.c.start, base.c.id)}
    latest_end_before = sa.func.max(sa.func.coalesce(base.c.end, sa.literal(OPEN_END, sa.Date))).over(
        **walk, rows=(None, -1)
    )
    ordered = sa.select(
        base.c.id, base.c.client_id, base.c.key, base.c.start, base.c.end, latest_end_before.label("latest_end")
    ).subquery("ordered")
    new_spell = sa.case(
        (ordered.c.latest_end.is_(None), 1),  # the client's first placement
        (sql_after_months(ordered.c.start, ordered.c.latest_end, SPELL_GAP_MONTHS), 1),
        else_=0,
    )
    marked = sa.select(ordered, new_spell.label("new_spell")).subquery("marked")
    numbered = sa.select(
        marked,
        sa.func.sum(marked.c.new_spell)
        .over(partition_by=marked.c.client_id, order_by=(marked.c.start, marked.c.id), rows=(None, 0))
        .label("spell_no"),
    ).subquery("numbered")
    open_ = sa.func.max(sa.case((numbered.c.end.is_(None), 1), else_=0)) == 1
    walked = sa.select(
        sa.func.max(sa.case((numbered.c.new_spell == 1, numbered.c.key))).label("key"),
        sa.func.min(numbered.c.start).label("start"),
        sa.case((open_, sa.null()), else_=sa.func.max(numbered.c.end)).label("end"),
    ).group_by(numbered.c.client_id, numbered.c.spell_no)
    return walked


# -- retention rates ------------------------------------------------------------------------


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mature(start, *, months: int, as_of: date):
    """The N-month date of ``start`` is on or before ``as_of`` (see :func:`month_cutoff`)."""
    return start <= sa.literal(month_cutoff(as_of, months), sa.Date)


def retained_at(start, end, *, months: int, as_of: date, spell: bool = False, keys=None, ended: bool = False):
    """The definition, as two SQL conditions on a (start, end-as-known-on-as_of) row: is it
    eligible at N months (mature, and for a spell decided), and is it retained. Used by the
    rates below and by the per-placement exports (service/outcomes/exports.py).

    Mature ("N-month date on or before ``as_of``") is ``start <= month_cutoff(as_of, N)``, a
    plain date comparison; kept ("no end, or an end after the N-month date") is
    :class:`sql_after_months`, the only per-row month arithmetic, needed for ended rows only.
    ``keys``: the row's (start, end) as :class:`sql_month_key`, when a subquery has them;
    ``ended``: the rows all have an end (no NULL to test for).

    Retained is the same condition under both rules: a kept spell is decided, so a spell's
    "eligible and kept" is "mature and kept", a job's."""
    start_key, end_key = keys if keys is not None else (start, end)
    eligible = _mature(start, months=months, as_of=as_of)
    after = sql_after_months(end_key, start_key, months)
    kept = after if ended else sa.or_(end.is_(None), after)
    if spell:
        # A spell that ended by its N-month date may still be continued by a new job
        # starting within a month of its end: undecided until that month has passed.
        decided = sa.or_(kept, end <= sa.literal(month_cutoff(as_of, SPELL_GAP_MONTHS), sa.Date))
        eligible = sa.and_(eligible, decided)
    retained = sa.and_(eligible, kept)
    return eligible, retained


def _key(value) -> str:
    return value.value if isinstance(value, enum.Enum) else str(value)


COUNTED = ("mature", "eligible", "retained")
_COUNTS = ("started", *(f"{kind}_{n}" for n in MONTHS for kind in COUNTED))

# Per key: "started" and, per N, the "mature_N", "eligible_N" and "retained_N" counts.
Tally = dict[str, dict[str, int]]


def _rows(kind: str, *, office_id: int, as_of: date, by: Grouping, dialect: str, fence: bool = True):
    """The rows counted: the office's placements ("placements", ends as known), those separated
    by ``as_of`` ("separated"), those of clients with several ("several", ends as known) and
    these clients' walked spells ("walked"; both with the clients bound as ``:clients``,
    :func:`_among_them`); each row with its month keys, computed once (OFFSET
    0, ``fence``, keeps the subquery apart, where SQLite would otherwise inline it and compute
    the keys again in each count that compares an end). On PostgreSQL a month key is the date
    itself, nothing to compute, and the fence would keep it from counting the placements with
    parallel workers (a subquery with OFFSET is run by one process): see :func:`_fenced`."""
    if kind == "placements":
        rows = _placements(office_id=office_id, as_of=as_of, by=by)
    elif kind == "separated":
        rows = _placements(office_id=office_id, as_of=as_of, by=by, ends="ended")
    elif kind == "several":
        rows = _placements(office_id=office_id, as_of=as_of, by=by, where=_among_them(dialect))
    else:
        rows = _walked_spells(office_id=office_id, as_of=as_of, by=by, dialect=dialect)
    t = rows.subquery("periods")
    keys = sql_month_key(t.c.start).label("start_key"), sql_month_key(t.c.end).label("end_key")
    keyed = sa.select(t.c.key, t.c.start, t.c.end, *keys)
    return (keyed.offset(0) if fence else keyed).subquery("keyed")


def _fenced(kind: str, dialect: str) -> bool:
    """Whether :func:`_rows` keeps its subquery apart (OFFSET 0): always on SQLite (month keys
    computed once per row), and on PostgreSQL for the clients with several placements, where
    parallel workers would each build the whole set of these clients again (its hash), slower
    than one process; the office's placements are counted in parallel there (two workers and
    the leader, each a share of the rows, the counts added up)."""
    return dialect == "sqlite" or kind != "placements"


def _analytic(session: Session, kind: str) -> str:
    """Readies the transaction for a report's aggregate over ``kind`` (:func:`_rows`) and
    returns the dialect's name. On PostgreSQL, for the rest of the transaction (``SET LOCAL``,
    so a pooled connection goes back as it came):

    * no JIT compilation: these statements' costs pass ``jit_above_cost`` at a few hundred
      thousand placements, and compiling their dozens of ``FILTER`` expressions took longer
      (80-300 ms per statement at 500,000 placements) than it saved; the service's other
      statements are short and never reach that cost;
    * parallel workers (as many as the server allows) for the office's placements only; none
      for the clients with several placements, where each worker would build the whole set of
      these clients again (two and a half times slower than one process at 500,000)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(sa.text("SET LOCAL jit = off"))
        parallel = "TO DEFAULT" if kind == "placements" else "= 0"
        session.execute(sa.text(f"SET LOCAL max_parallel_workers_per_gather {parallel}"))
    return dialect


# The statements are built once per office, day and grouping (and kept: building one costs about
# as much as SQLite running it on a few thousand placements); the numbers are read anew each time.
@lru_cache(maxsize=256)
def _tally_statement(kind: str, office_id: int, as_of: date, by: Grouping, rules: tuple[bool, ...], dialect: str):
    t = _rows(kind, office_id=office_id, as_of=as_of, by=by, fence=_fenced(kind, dialect), dialect=dialect)
    columns, keys = [t.c.key, sa.func.count().label("started")], (t.c.start_key, t.c.end_key)
    for n in MONTHS:
        columns.append(sa.func.count().filter(_mature(t.c.start, months=n, as_of=as_of)).label(f"mature_{n}"))
        # Retained is one condition under both rules (retained_at), counted once; a job is
        # eligible exactly when mature: the spells' eligibility is the one more count.
        _, retained = retained_at(t.c.start, t.c.end, months=n, as_of=as_of, keys=keys)
        columns.append(sa.func.count().filter(retained).label(f"retained_{n}"))
        if any(rules):
            eligible, _ = retained_at(t.c.start, t.c.end, months=n, as_of=as_of, spell=True, keys=keys)
            columns.append(sa.func.count().filter(eligible).label(f"eligible_{n}"))
    return sa.select(*columns).group_by(t.c.key)


def _tally(
    session: Session,
    kind: str,
    *,
    office_id: int,
    as_of: date,
    by: Grouping,
    rules: tuple[bool, ...] = (True,),
    clients: list[int] | None = None,
) -> list[Tally]:
    """Per key of the rows (:func:`_rows`): how many, and per N how many are mature, eligible and
    retained (:func:`retained_at`), in one pass; one tally per rule (``False``: job retention,
    ``True``: spells). ``clients``: the clients with several placements, for "several" and
    "walked" (:func:`_several_clients`)."""
    tallies: list[Tally] = [{} for _ in rules]
    dialect = _analytic(session, kind)
    params = {} if clients is None else {"clients": _clients_param(clients, dialect)}
    for r in session.execute(_tally_statement(kind, office_id, as_of, by, rules, dialect), params).mappings():
        for i, spell in enumerate(rules):
            counts = {"started": r["started"]}
            for n in MONTHS:
                counts[f"mature_{n}"] = r[f"mature_{n}"]
                counts[f"eligible_{n}"] = r[f"eligible_{n}" if spell else f"mature_{n}"]
                counts[f"retained_{n}"] = r[f"retained_{n}"]
            tallies[i][_key(r["key"])] = counts
    return tallies


@lru_cache(maxsize=256)
def _shortfall_statement(office_id: int, as_of: date, by: Grouping, rules: tuple[bool, ...]):
    t = _rows("separated", office_id=office_id, as_of=as_of, by=by, dialect="sqlite")  # SQLite's way only
    columns, keys = [t.c.key], (t.c.start_key, t.c.end_key)
    for n in MONTHS:
        mature = _mature(t.c.start, months=n, as_of=as_of)
        # As in _tally_statement: one count of the mature not retained serves both rules, and a
        # job is eligible exactly when mature, so never short of eligible.
        _, retained = retained_at(t.c.start, t.c.end, months=n, as_of=as_of, keys=keys, ended=True)
        columns.append(sa.func.count().filter(sa.and_(mature, sa.not_(retained))).label(f"retained_{n}"))
        if any(rules):
            eligible, _ = retained_at(t.c.start, t.c.end, months=n, as_of=as_of, spell=True, keys=keys, ended=True)
            columns.append(sa.func.count().filter(sa.and_(mature, sa.not_(eligible))).label(f"eligible_{n}"))
    return sa.select(*columns).group_by(t.c.key)


def _shortfall(session: Session, *, office_id: int, as_of: date, by: Grouping, rules: tuple[bool, ...]) -> list[Tally]:
    """Per key, of the placements separated by ``as_of`` (their end known, never NULL): per N, how
    many are mature but not eligible, and mature but not retained (:func:`retained_at`), which
    is what counting them as still employed overstates; one tally per rule, as :func:`_tally`."""
    tallies: list[Tally] = [{} for _ in rules]
    for r in session.execute(_shortfall_statement(office_id, as_of, by, rules)).mappings():
        for i, spell in enumerate(rules):
            names = ("eligible", "retained") if spell else ("retained",)
            tallies[i][_key(r["key"])] = {f"{name}_{n}": r[f"{name}_{n}"] for n in MONTHS for name in names}
    return tallies


def _combine(*parts: tuple[int, Tally]) -> Tally:
    """Tallies added (+1) and taken away (-1) per key; keys left with nothing started go."""
    total: Tally = {}
    for sign, part in parts:
        for key, counts in part.items():
            into = total.get(key) or total.setdefault(key, dict.fromkeys(_COUNTS, 0))
            for name, value in counts.items():
                into[name] += sign * value
    return {key: counts for key, counts in total.items() if counts["started"]}


# Groupings with an index by office, key and start date (migration 0018): counted key by key, a
# range of that index per key and interval, where grouping the office's placements by key would
# sort them all (SQLite has no hash aggregate): a fifth of the time at 500,000 placements. By
# worker is the breakdown managers compare caseloads with.
_KEY_AND_START = {Grouping.worker: ("ix_placement_worker_start", "worker_id")}


def _keys_of(office_id: int, index: str, column: str):
    """The distinct keys of the office's placements, read from ``index`` (office, key, ...) by a
    loose index scan: the least key, then the least key after it, a seek each (SQLite's DISTINCT
    reads every entry of the office: five times as long at 500,000 placements and 2,500 keys).
    A key whose placements all start after as_of is among them, counts none, and goes
    (:func:`_combine`)."""

    def first_key(after=None):
        p = sqlite_indexed_by(_p, index, "placement_by_key")
        conditions = [p.c.office_id == office_id] + ([] if after is None else [p.c[column] > after])
        return sa.select(sa.func.min(p.c[column])).where(*conditions).scalar_subquery().label("key")

    keys = sa.select(first_key()).cte("keys", recursive=True)
    keys = keys.union_all(sa.select(first_key(keys.c.key)).where(keys.c.key.is_not(None)))
    return sa.select(keys.c.key).where(keys.c.key.is_not(None)).subquery("each_key")


@lru_cache(maxsize=256)
def _everyone_statement(office_id: int, as_of: date, by: Grouping):
    """The statement of :func:`_everyone`: per key, one count per interval (columns, or rows
    numbered by ``part``), and per interval the counts it adds to."""
    cutoffs = {n: month_cutoff(as_of, n) for n in MONTHS}
    uppers = sorted({*cutoffs.values(), as_of})
    intervals = [(uppers[i - 1] if i else None, upper) for i, upper in enumerate(uppers)]
    adds_to = tuple(
        ("started", *(f"{kind}_{n}" for n, cutoff in cutoffs.items() if upper <= cutoff for kind in COUNTED))
        for _after, upper in intervals
    )
    if by in _KEY_AND_START:
        index, column = _KEY_AND_START[by]
        keys = _keys_of(office_id, index, column)
        counts = []
        for i, (after, upper) in enumerate(intervals):
            q = sqlite_indexed_by(_p, index, f"part_{i}")
            conditions = [q.c.office_id == office_id, q.c[column] == keys.c.key, q.c.start_date <= upper]
            conditions += [] if after is None else [q.c.start_date > after]
            counts.append(sa.select(sa.func.count()).where(*conditions).scalar_subquery())
        return sa.select(keys.c.key, *counts), adds_to
    parts = []
    for i, (after, upper) in enumerate(intervals):
        rows = _placements(office_id=office_id, as_of=upper, by=by, after=after, ends="none").subquery(f"part_{i}")
        parts.append(sa.select(sa.literal(i).label("part"), rows.c.key, sa.func.count()).group_by(rows.c.key))
    return sa.union_all(*parts), adds_to


def _everyone(session: Session, *, office_id: int, as_of: date, by: Grouping) -> Tally:
    """Every placement counted as still employed (eligible and retained exactly when mature):
    per key, how many started in each interval between the cut-offs, a range of an index each
    (``ix_placement_retention``, or the key's own: ``_KEY_AND_START``), read with no per-row
    comparison. Mature at N is the sum of the intervals up to N's cut-off."""
    statement, adds_to = _everyone_statement(office_id, as_of, by)
    per_key = by in _KEY_AND_START
    rows = (
        ((i, key, count) for key, *counts in session.execute(statement) for i, count in enumerate(counts))
        if per_key
        else session.execute(statement)
    )
    out: Tally = {}
    for part, key, count in rows:
        k = _key(key)
        counts = out.get(k) or out.setdefault(k, dict.fromkeys(_COUNTS, 0))
        for name in adds_to[part]:
            counts[name] += count
    return out


def _all_placements(session: Session, *, office_id: int, as_of: date, by: Grouping, rules: tuple[bool, ...]):
    """Tallies of all the office's placements (each a spell of its own under the spell rule),
    one per rule. PostgreSQL counts them in one pass over the placements.
    SQLite, where each per-row expression costs, counts every placement as still employed from
    ranges of an index (:func:`_everyone`), then takes away what that overstates for the
    separated ones (:func:`_shortfall`, a fraction of the placements)."""
    if session.get_bind().dialect.name != "sqlite":
        return _tally(session, "placements", office_id=office_id, as_of=as_of, by=by, rules=rules)
    everyone = _everyone(session, office_id=office_id, as_of=as_of, by=by)
    shortfalls = _shortfall(session, office_id=office_id, as_of=as_of, by=by, rules=rules)
    return [_combine((1, everyone), (-1, shortfall)) for shortfall in shortfalls]


def _job_counts(session: Session, *, office_id: int, as_of: date, by: Grouping) -> Tally:
    """Job retention per key."""
    (jobs,) = _all_placements(session, office_id=office_id, as_of=as_of, by=by, rules=(False,))
    return jobs


def _employment_counts(session: Session, *, office_id: int, as_of: date, by: Grouping, alone=None) -> Tally:
    """Employment retention per key: every placement as a spell of its own (``alone``, from
    :func:`_all_placements` by the spell rule), then the placements of clients with several taken
    away and their walked spells (:func:`_walked_spells`) added instead."""
    if alone is None:
        (alone,) = _all_placements(session, office_id=office_id, as_of=as_of, by=by, rules=(True,))
    clients = _several_clients(session, office_id=office_id, as_of=as_of)
    if not clients:  # every client's placement is a spell of its own
        return _combine((1, alone))
    (several,) = _tally(session, "several", office_id=office_id, as_of=as_of, by=by, clients=clients)
    (walked,) = _tally(session, "walked", office_id=office_id, as_of=as_of, by=by, clients=clients)
    return _combine((1, alone), (-1, several), (1, walked))


def _groups(counts: Tally, labels: dict[str, str]) -> list[RetentionGroup]:
    groups = []
    for key in sorted(counts, key=_sort_key):
        r = counts[key]
        months = {}
        for n in MONTHS:
            eligible, retained = r[f"eligible_{n}"], r[f"retained_{n}"]
            months[str(n)] = RetentionCell(eligible=eligible, retained=retained, rate=_rate(retained, eligible))
        groups.append(RetentionGroup(key=key, label=labels.get(key, key), started=r["started"], months=months))
    return groups


def _sort_key(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _labels(session: Session, *, office_id: int, by: Grouping, keys, language: str) -> dict[str, str]:
    ids = [int(k) for k in keys if k.isdigit()]
    if by == Grouping.office:
        office = session.get(Office, office_id)
        return {str(office_id): office.name}
    if by in (Grouping.worker, Grouping.employer):
        model = StaffUser if by == Grouping.worker else Employer
        table = model.__table__
        rows = session.execute(
            sa.select(table.c.id, table.c.name).where(table.c.id.in_(ids), table.c.office_id == office_id)
        ).all()
        return {str(i): name for i, name in rows}
    names = _LABELS.get(by.value, {})
    return {k: (names[k].get(language) or names[k]["en"]) for k in keys if k in names}


def retention(
    session: Session,
    *,
    office_id: int,
    as_of: date,
    by: Grouping = Grouping.none,
    language: str = "ja",
) -> RetentionReport:
    """Job and employment retention at 1, 3, 6 and 12 months, per group, as of ``as_of``."""
    jobs, alone = _all_placements(session, office_id=office_id, as_of=as_of, by=by, rules=(False, True))
    employment = _employment_counts(session, office_id=office_id, as_of=as_of, by=by, alone=alone)
    labels = _labels(session, office_id=office_id, by=by, keys=set(jobs) | set(employment), language=language)
    return RetentionReport(
        as_of=as_of,
        by=by.value,
        reference_rate=REFERENCE_RATE,
        months=list(MONTHS),
        groups=_groups(jobs, labels),
        employment=_groups(employment, labels),
    )


# -- the retention curve --------------------------------------------------------------------


@dataclass(frozen=True)
class _Tally:
    events: int = 0
    censored: int = 0


def kaplan_meier(tallies: dict[int, _Tally] | dict[int, tuple[int, int]]) -> list[CurvePoint]:
    """Kaplan-Meier points from counts per duration: ``{days: (events, censored)}``.

    Like lifelines, the curve has a point at 0 and at every distinct duration (event or
    censoring). The band is the exponential Greenwood one: on log(-log S), with variance
    sum d / (n (n - d)); 1 before any event, 0 once the estimate reaches 0.
    """
    table = {t: (v if isinstance(v, _Tally) else _Tally(*v)) for t, v in tallies.items()}
    table.setdefault(0, _Tally())
    z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2)
    at_risk = sum(v.events + v.censored for v in table.values())
    log_s, greenwood = 0.0, 0.0
    points = []
    for t in sorted(table):
        tally = table[t]
        n, d = at_risk, tally.events
        if d:
            log_s += (math.log(n - d) if n > d else -math.inf) - math.log(n)
            if n > d:
                greenwood += d / (n * (n - d))
        survival = math.exp(log_s)
        if log_s == 0.0:
            lower = upper = 1.0
        elif survival == 0.0:
            lower = upper = 0.0
        else:
            spread = z * math.sqrt(greenwood) / log_s
            lower = math.exp(-math.exp(math.log(-log_s) - spread))
            upper = math.exp(-math.exp(math.log(-log_s) + spread))
        points.append(
            CurvePoint(
                time=t, at_risk=n, events=d, censored=tally.censored,
                survival=survival, lower=lower, upper=upper,
            )
        )  # fmt: skip
        at_risk -= d + tally.censored
    return points


def retention_curve(
    session: Session,
    *,
    office_id: int,
    as_of: date,
    by: Grouping = Grouping.none,
    language: str = "ja",
) -> RetentionCurve:
    """The Kaplan-Meier curve of days employed, per group, as of ``as_of``."""
    t = _placements(office_id=office_id, as_of=as_of, by=by).subquery("placements")
    duration = sql_days_between(sa.func.coalesce(t.c.end, sa.literal(as_of, sa.Date)), t.c.start)
    event = sa.case((t.c.end.is_(None), 0), else_=1)
    rows = session.execute(
        sa.select(
            t.c.key,
            duration.label("days"),
            sa.func.sum(event).label("events"),
            sa.func.count().label("total"),
        ).group_by(t.c.key, duration)
    ).all()
    per_group: dict[str, dict[int, _Tally]] = defaultdict(dict)
    for key, days, events, total in rows:
        per_group[_key(key)][int(days)] = _Tally(int(events), int(total) - int(events))
    labels = _labels(session, office_id=office_id, by=by, keys=set(per_group), language=language)
    groups = []
    for key in sorted(per_group, key=_sort_key):
        tallies = per_group[key]
        groups.append(
            CurveGroup(
                key=key,
                label=labels.get(key, key),
                started=sum(v.events + v.censored for v in tallies.values()),
                events=sum(v.events for v in tallies.values()),
                points=kaplan_meier(tallies),
            )
        )
    return RetentionCurve(
        as_of=as_of,
        by=by.value,
        confidence=CONFIDENCE,
        reference_rate=REFERENCE_RATE,
        groups=groups,
    )
