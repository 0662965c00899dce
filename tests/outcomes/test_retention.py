"""Retention rates and curves, checked against independent computations.

* cohort and group rates against DuckDB SQL over the same rows exported from our database,
  with the calendar-month arithmetic written anew there (``last_day``, intervals), not ours;
* employment (spell) retention against a plain Python walk using ``dateutil.relativedelta``;
* the Kaplan-Meier points against ``lifelines.KaplanMeierFitter`` to 1e-9;
* small cases checked by hand, office scoping, roles, and the CLI printing the API's numbers.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from datetime import date, timedelta

import duckdb
import pandas as pd
import pytest
from dateutil.relativedelta import relativedelta
from lifelines import KaplanMeierFitter
from typer.testing import CliRunner

from service.db import session_scope
from service.outcomes.retention import MONTHS, Grouping, kaplan_meier, retention
from tests.outcomes import report_data
from tests.outcomes.report_data import Office

AS_OFS = [
    date(2026, 4, 20),
    date(2025, 8, 31),
    date(2025, 2, 28),
    date(2024, 3, 31),
    date(2024, 2, 29),
]


def _office(world, key: str = "a") -> Office:
    return Office(
        getattr(world, f"office_{key}"),
        [world.users[f"{key}.worker"], world.users[f"{key}.worker2"]],
    )


def _cells(groups: list[dict]) -> dict:
    """{key: (started, {n: (eligible, retained, rate)})} from the API's JSON."""
    return {
        g["key"]: (
            g["started"],
            {int(n): (c["eligible"], c["retained"], c["rate"]) for n, c in g["months"].items()},
        )
        for g in groups
    }


# -- (b) job retention against DuckDB ----------------------------------------------------

_DUCK_KEYS = {
    "office": "CAST(office_id AS VARCHAR)",
    "worker": "CAST(worker_id AS VARCHAR)",
    "employer": "CAST(employer_id AS VARCHAR)",
    "employment_type": "employment_type",
    "category": "category",
    "cohort": "strftime(start_date, '%Y-%m')",
    "none": "'all'",
}

# N calendar months later, clamped to the month's end, written from scratch for DuckDB.
_DUCK_MARK = """least(
    last_day(CAST(date_trunc('month', start_date) + to_months(n) AS DATE)),
    CAST(date_trunc('month', start_date) + to_months(n) + to_days(day(start_date) - 1) AS DATE)
)"""


def _duckdb(rows: list[dict]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    frame = pd.DataFrame(rows)
    frame["start_date"] = pd.to_datetime(frame["start_date"])
    frame["sep_date"] = pd.to_datetime(frame["sep_date"])
    con.register("frame", frame)
    con.execute(
        "CREATE TABLE placements AS SELECT id, client_id, worker_id, employer_id, office_id, "
        "employment_type, category, CAST(start_date AS DATE) AS start_date, "
        "CAST(sep_date AS DATE) AS sep_date FROM frame"
    )
    return con


def _duck_retention(con, *, as_of: date, by: str) -> dict:
    rows = con.execute(
        f"""
        WITH known AS (
            SELECT *, {_DUCK_KEYS[by]} AS grp,
                   CASE WHEN sep_date <= $as_of THEN sep_date END AS known_end
            FROM placements WHERE start_date <= $as_of
        ), marks AS (
            SELECT known.*, n, {_DUCK_MARK} AS mark
            FROM known CROSS JOIN (VALUES (1), (3), (6), (12)) AS t(n)
        )
        SELECT grp, n, count(*) AS started,
               count(*) FILTER (WHERE mark <= $as_of) AS eligible,
               count(*) FILTER (WHERE mark <= $as_of AND (known_end IS NULL OR known_end > mark))
                   AS retained
        FROM marks GROUP BY grp, n
        """,
        {"as_of": as_of},
    ).fetchall()
    out: dict = {}
    for grp, n, started, eligible, retained in rows:
        entry = out.setdefault(grp, (started, {}))
        entry[1][n] = (eligible, retained, retained / eligible if eligible else None)
    return out


def test_duckdb_month_arithmetic_is_the_calendar_one():
    # The oracle's own month arithmetic agrees with dateutil on every day of four years.
    con = duckdb.connect()
    days = [date(2023, 1, 1) + timedelta(days=i) for i in range(4 * 366)]
    got = con.execute(
        f"SELECT start_date, n, {_DUCK_MARK} FROM unnest($days) AS d(start_date) "
        "CROSS JOIN (VALUES (1), (3), (6), (12)) AS t(n)",
        {"days": days},
    ).fetchall()
    assert len(got) == 4 * len(days)
    assert all(mark == start + relativedelta(months=n) for start, n, mark in got)


def test_group_rates_equal_duckdb_on_thousands_of_placements(factory, world):
    with session_scope(factory) as session:
        office = _office(world)
        report_data.generate(session, office, placements=2500, seed=4)
        report_data.generate(session, _office(world, "b"), placements=300, seed=5)  # must not show
        rows = report_data.exported_rows(session, office.office_id)
    assert len(rows) >= 2500
    assert {r["start_date"] for r in rows} >= {
        date(2024, 2, 29),
        date(2024, 1, 31),
        date(2025, 8, 31),
    }
    con = _duckdb(rows)
    with factory() as session:
        for as_of in AS_OFS:
            for by in Grouping:
                report = retention(session, office_id=office.office_id, as_of=as_of, by=by)
                got = _cells(report.model_dump(mode="json")["groups"])
                expected = _duck_retention(con, as_of=as_of, by=by.value)
                assert got == expected, (as_of, by)
    # The data does what it is for: immature placements at every as-of date, and both outcomes.
    cohorts = _duck_retention(con, as_of=date(2025, 1, 15), by="cohort")
    assert cohorts["2024-01"][0] > cohorts["2024-01"][1][12][0] > 0  # partly mature at 12 months
    total = _duck_retention(con, as_of=date(2026, 4, 20), by="none")["all"]
    assert 0 < total[1][12][1] < total[1][12][0]


# -- employment retention against a plain walk --------------------------------------------


def _walk_spells(rows: list[dict], *, as_of: date, key: str) -> dict:
    """Spells by an independent walk over each client's placements, then their retention."""
    by_client = defaultdict(list)
    for r in rows:
        if r["start_date"] <= as_of:
            end = r["sep_date"] if r["sep_date"] is not None and r["sep_date"] <= as_of else None
            by_client[r["client_id"]].append((r["start_date"], r["id"], end, r))
    spells = []  # [group, start, open, end]
    for placements in by_client.values():
        current = None
        for start, _id, end, row in sorted(placements, key=lambda p: (p[0], p[1])):
            if current is not None and (current[2] or start <= current[3] + relativedelta(months=1)):
                current[2] = current[2] or end is None
                current[3] = max(current[3], end) if end is not None else current[3]
                continue
            group = {"none": "all", "cohort": start.strftime("%Y-%m")}.get(key) or str(row[key])
            current = [group, start, end is None, end or date.min]
            spells.append(current)
    out: dict = {}
    for group, start, still_open, end in spells:
        started, cells = out.setdefault(group, [0, {n: [0, 0] for n in MONTHS}])
        out[group][0] += 1
        for n in MONTHS:
            mark = start + relativedelta(months=n)
            decided = still_open or end > mark or end + relativedelta(months=1) <= as_of
            if mark <= as_of and decided:
                cells[n][0] += 1
                cells[n][1] += still_open or end > mark
    return {
        g: (started, {n: (e, r, r / e if e else None) for n, (e, r) in cells.items()})
        for g, (started, cells) in out.items()
    }


def test_employment_retention_equals_an_independent_walk(factory, world):
    with session_scope(factory) as session:
        office = _office(world)
        report_data.generate(session, office, placements=1500, seed=11)
        rows = report_data.exported_rows(session, office.office_id)
    keys = {
        "none": "none",
        "category": "category",
        "worker": "worker_id",
        "employer": "employer_id",
        "employment_type": "employment_type",
        "cohort": "cohort",
    }
    with factory() as session:
        for as_of in AS_OFS:
            for by, column in keys.items():
                report = retention(session, office_id=office.office_id, as_of=as_of, by=Grouping(by))
                got = _cells(report.model_dump(mode="json")["employment"])
                assert got == _walk_spells(rows, as_of=as_of, key=column), (as_of, by)
    # Spells do join placements: fewer spells than placements.
    overall = _walk_spells(rows, as_of=date(2026, 4, 20), key="none")["all"]
    assert overall[0] < sum(1 for r in rows if r["start_date"] <= date(2026, 4, 20))


# -- (a) the curve against lifelines --------------------------------------------------------


def _compare_with_lifelines(points: list[dict], durations: list[int], events: list[int]) -> None:
    kmf = KaplanMeierFitter().fit(durations, event_observed=events)
    sf = kmf.survival_function_.iloc[:, 0]
    ci = kmf.confidence_interval_
    table = kmf.event_table
    assert [p["time"] for p in points] == [int(t) for t in sf.index]
    for p, t in zip(points, sf.index, strict=True):
        assert p["survival"] == pytest.approx(sf.loc[t], abs=1e-9, rel=0)
        assert p["lower"] == pytest.approx(ci.loc[t].iloc[0], abs=1e-9, rel=0)
        assert p["upper"] == pytest.approx(ci.loc[t].iloc[1], abs=1e-9, rel=0)
        counts = table.loc[t, ["at_risk", "observed", "censored"]]
        assert (p["at_risk"], p["events"], p["censored"]) == tuple(int(v) for v in counts)


def test_curve_equals_lifelines(api, factory, world):
    as_of = date(2026, 4, 20)
    rng = random.Random(7)
    office = _office(world)
    observed: dict[str, list[tuple[int, int]]] = defaultdict(list)
    with session_scope(factory) as session:
        for i in range(400):
            category = "needy_person" if i % 3 else "public_assistance"
            start = as_of - timedelta(days=rng.randrange(0, 700))
            if i % 50 == 0:
                start = as_of  # observed for 0 days
            roll = rng.random()
            if roll < 0.5:
                sep = start + timedelta(days=rng.choice((0, 7, 30, 30, 91, rng.randrange(0, 400))))
            elif roll < 0.6:
                sep = as_of + timedelta(days=rng.randrange(1, 90))  # not known yet on as_of
            else:
                sep = None
            report_data.placement(session, office, start=start, separated=sep, category=category)
            if sep is not None and sep <= as_of:
                observed[category].append(((sep - start).days, 1))
            else:
                observed[category].append(((as_of - start).days, 0))
    for by in ("category", "none"):
        body = api.ok(api.get("a.manager", "/api/v1/retention/curve", params={"as_of": "2026-04-20", "by": by}))
        assert body["confidence"] == 0.95 and body["reference_rate"] == 0.5
        for group in body["groups"]:
            data = observed[group["key"]] if by == "category" else [o for obs in observed.values() for o in obs]
            assert group["started"] == len(data) and group["events"] == sum(e for _, e in data)
            _compare_with_lifelines(group["points"], [d for d, _ in data], [e for _, e in data])
        assert len(body["groups"]) == (2 if by == "category" else 1)


@pytest.mark.parametrize(
    "data",
    [
        [(3, 1), (3, 1), (5, 0), (8, 1), (8, 0), (8, 1)],  # ends with everyone separated
        [(0, 1), (0, 0), (2, 1), (4, 0)],  # separated on the first day
        [(10, 0), (20, 0)],  # no separations
        [(1, 1)],
    ],
)
def test_kaplan_meier_edges_equal_lifelines(data):
    tallies: dict[int, tuple[int, int]] = {}
    for d, e in data:
        events, censored = tallies.get(d, (0, 0))
        tallies[d] = (events + e, censored + (1 - e))
    points = [p.model_dump() for p in kaplan_meier(tallies)]
    _compare_with_lifelines(points, [d for d, _ in data], [e for _, e in data])


# -- (c) small cases, checked by hand -------------------------------------------------------


def _get(api, who="a.manager", **params):
    return api.ok(api.get(who, "/api/v1/retention", params=params))


def _month(body, n, key="all", measure="groups"):
    group = next(g for g in body[measure] if g["key"] == key)
    cell = group["months"][str(n)]
    return cell["eligible"], cell["retained"], cell["rate"]


def test_month_end_starts_by_hand(api, factory, world):
    office = _office(world)
    with session_scope(factory) as session:
        # 31 January + 1 month = 28 February 2027.
        report_data.placement(session, office, start=date(2027, 1, 31), separated=date(2027, 2, 28))  # lost
        report_data.placement(session, office, start=date(2027, 1, 31), separated=date(2027, 3, 1))  # kept
        # Separation recorded with a date after as_of: not separated as of as_of.
        report_data.placement(session, office, start=date(2027, 1, 31), separated=date(2027, 5, 15))
        # Leap day: 29 February 2024 + 12 months = 28 February 2025.
        report_data.placement(session, office, start=date(2024, 2, 29), separated=date(2025, 2, 28))
        report_data.placement(session, office, start=date(2024, 2, 29), separated=date(2025, 3, 1))
        # Starts after as_of: not even started.
        report_data.placement(session, office, start=date(2027, 5, 1))
    body = _get(api, as_of="2027-04-29")
    assert body["reference_rate"] == 0.5 and body["by"] == "none" and body["as_of"] == "2027-04-29"
    assert body["groups"][0]["started"] == 5
    # 1 month: of the 2027 starts, separated 28 Feb is lost, 1 Mar and 15 May are kept; the
    # 2024 starts are both kept.
    assert _month(body, 1) == (5, 4, 0.8)
    # 3 months: 30 April 2027 is after as_of: the 2027 placements are immature, not counted.
    assert _month(body, 3) == (2, 2, 1.0)
    assert _month(body, 12) == (2, 1, 0.5)  # 28 Feb 2025 is not after 28 Feb 2025
    body = _get(api, as_of="2027-04-30")
    assert _month(body, 3) == (5, 3, 0.6)  # now mature; 15 May is not known on 30 April


def test_separated_on_the_one_month_date_is_not_retained(api, factory, world):
    office = _office(world)
    with session_scope(factory) as session:
        report_data.placement(session, office, start=date(2027, 1, 31), separated=date(2027, 2, 28))
    assert _month(_get(api, as_of="2027-03-31"), 1) == (1, 0, 0.0)
    assert _month(_get(api, as_of="2027-02-27"), 1) == (0, 0, None)  # immature: rate is null


def test_a_separation_recorded_through_the_api_counts_as_of_its_date(api, factory, world):
    # Reports read the end from the placement (separated_on), written with the separation.
    office = _office(world)
    with session_scope(factory) as session:
        pid = report_data.placement(session, office, start=date(2026, 1, 31))
    assert _month(_get(api, as_of="2026-04-20"), 1) == (1, 1, 1.0)
    api.ok(
        api.post("a.worker", f"/api/v1/placements/{pid}/separation", json={"date": "2026-02-28", "reason": "health"}),
        201,
    )
    assert _month(_get(api, as_of="2026-04-20"), 1) == (1, 0, 0.0)  # left on its one-month date
    assert _month(_get(api, as_of="2026-02-27"), 1) == (0, 0, None)  # not mature, the end not yet known


def test_employment_spells_by_hand(api, factory, world):
    office = _office(world)
    with session_scope(factory) as session:
        # X: a new job exactly one month after the separation continues the spell.
        x = report_data.client(session, office.office_id)
        report_data.placement(session, office, client_id=x, start=date(2026, 1, 10), separated=date(2026, 2, 15))
        report_data.placement(session, office, client_id=x, start=date(2026, 3, 15))
        # Y: a day later is a new spell.
        y = report_data.client(session, office.office_id)
        report_data.placement(session, office, client_id=y, start=date(2026, 1, 10), separated=date(2026, 2, 15))
        report_data.placement(session, office, client_id=y, start=date(2026, 3, 16))
    body = _get(api, as_of="2026-08-01")
    # Job retention: the first placements both left before 3 months.
    assert _month(body, 1) == (4, 4, 1.0)
    assert _month(body, 3) == (4, 2, 0.5)
    # Employment retention: spells X (10 Jan, open), Y1 (10 Jan - 15 Feb), Y2 (16 Mar, open).
    assert body["employment"][0]["started"] == 3
    assert _month(body, 1, measure="employment") == (3, 3, 1.0)
    assert _month(body, 3, measure="employment") == (3, 2, 2 / 3)
    assert _month(body, 6, measure="employment") == (2, 1, 0.5)  # Y2's 6 months end 16 Sep


def test_a_spell_ended_less_than_a_month_ago_is_undecided(api, factory, world):
    office = _office(world)
    with session_scope(factory) as session:
        report_data.placement(session, office, start=date(2026, 6, 1), separated=date(2026, 6, 20))
    # Job retention is decided on 1 July; the spell might still go on until 20 July.
    body = _get(api, as_of="2026-07-10")
    assert _month(body, 1) == (1, 0, 0.0)
    assert _month(body, 1, measure="employment") == (0, 0, None)
    body = _get(api, as_of="2026-07-20")
    assert _month(body, 1, measure="employment") == (1, 0, 0.0)


def test_breakdowns_carry_labels_and_denominators(api, factory, world):
    office = _office(world)
    with session_scope(factory) as session:
        report_data.placement(session, office, start=date(2026, 1, 31), category="public_assistance")
        report_data.placement(
            session,
            office,
            start=date(2026, 2, 1),
            category="needy_person",
            separated=date(2026, 2, 20),
            worker_id=world.users["a.worker2"],
            employment_type="certified_training",
        )
    as_of = {"as_of": "2026-03-01"}
    by_category = _get(api, by="category", **as_of)
    assert [(g["key"], g["label"], g["started"]) for g in by_category["groups"]] == [
        ("needy_person", "生活困窮者", 1),
        ("public_assistance", "被保護者", 1),
    ]
    cohort = _get(api, by="cohort", **as_of)
    assert [(g["key"], _month(cohort, 1, g["key"])) for g in cohort["groups"]] == [
        ("2026-01", (1, 1, 1.0)),  # 31 Jan + 1 month = 28 Feb
        ("2026-02", (1, 0, 0.0)),  # 1 Feb + 1 month = 1 Mar
    ]
    workers = _get(api, by="worker", **as_of)
    assert {g["label"] for g in workers["groups"]} == {"Worker A", "Worker2 A"}
    # A worker whose placements all start after as_of has no group (nor an empty one).
    workers = _get(api, by="worker", as_of="2026-01-31")
    assert [(g["label"], g["started"]) for g in workers["groups"]] == [("Worker A", 1)]
    assert [g["label"] for g in workers["employment"]] == ["Worker A"]
    kinds = _get(api, by="employment_type", **as_of)
    assert {g["key"] for g in kinds["groups"]} == {"general", "certified_training"}
    offices = _get(api, by="office", **as_of)
    assert [(g["key"], g["label"]) for g in offices["groups"]] == [(str(world.office_a), "Office A")]
    assert api.get("a.manager", "/api/v1/retention", params={"by": "planet"}).status_code == 422


# -- (d) scoping and roles -----------------------------------------------------------------


def test_offices_see_only_their_own_placements_and_workers_get_403(api, factory, world):
    with session_scope(factory) as session:
        report_data.placement(session, _office(world, "a"), start=date(2025, 1, 6))
        for _ in range(3):
            report_data.placement(session, _office(world, "b"), start=date(2025, 1, 6), separated=date(2025, 1, 20))
    for who in ("a.manager", "a.admin"):
        body = _get(api, who, as_of="2026-01-31", by="employer")
        assert sum(g["started"] for g in body["groups"]) == 1
        assert _month(_get(api, who, as_of="2026-01-31"), 12) == (1, 1, 1.0)
        curve = api.ok(api.get(who, "/api/v1/retention/curve", params={"as_of": "2026-01-31"}))
        assert curve["groups"][0]["started"] == 1 and curve["groups"][0]["events"] == 0
    b = _get(api, "b.manager", as_of="2026-01-31")
    assert _month(b, 12) == (3, 0, 0.0)
    for who in ("a.worker", "b.worker"):
        for url in ("/api/v1/retention", "/api/v1/retention/curve"):
            assert api.get(who, url).status_code == 403


def test_as_of_defaults_to_today_in_the_office_time_zone(api, clock):
    # clock: 20 April 2026 09:00 in Tokyo, which is still 19 April in New York.
    assert _get(api)["as_of"] == "2026-04-20"
    assert _get(api, "b.manager")["as_of"] == "2026-04-19"
    assert _get(api)["groups"] == []


# -- (e) the command line prints the API's numbers ----------------------------------------


def test_cli_report_prints_the_same_numbers(api, factory, world, db_url, monkeypatch):
    from service.cli import app
    from service.settings import get_settings

    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=200, seed=3)
    params = {"as_of": "2025-12-31", "by": "category"}
    from_api = _get(api, **params)
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        base = [
            "report",
            "retention",
            "--as-of",
            "2025-12-31",
            "--by",
            "category",
            "--office",
            "Office A",
        ]
        as_json = runner.invoke(app, [*base, "--format", "json"])
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.output) == from_api

        as_csv = runner.invoke(app, [*base, "--format", "csv"])
        assert as_csv.exit_code == 0, as_csv.output
        lines = list(csv.DictReader(io.StringIO(as_csv.output)))
        assert len(lines) == len(from_api["groups"]) + len(from_api["employment"]) == 4
        for line in lines:
            measure = "groups" if line["measure"] == "job" else "employment"
            group = next(g for g in from_api[measure] if g["key"] == line["key"])
            assert int(line["started"]) == group["started"] and line["label"] == group["label"]
            for n in MONTHS:
                cell = group["months"][str(n)]
                assert int(line[f"eligible_{n}m"]) == cell["eligible"]
                assert int(line[f"retained_{n}m"]) == cell["retained"]
                assert (float(line[f"rate_{n}m"]) if line[f"rate_{n}m"] else None) == cell["rate"]
            assert float(line["reference_rate"]) == 0.5

        table = runner.invoke(app, [*base, "--format", "table"])
        assert table.exit_code == 0, table.output
        cell = from_api["groups"][0]["months"]["6"]
        assert f"{cell['retained']}/{cell['eligible']} {cell['rate'] * 100:.1f}%" in table.output
        assert "50.0%" in table.output

        bad = runner.invoke(app, ["report", "retention", "--by", "planet", "--office", "Office A"])
        assert bad.exit_code != 0
        several = runner.invoke(app, ["report", "retention"])  # two offices: say which
        assert several.exit_code != 0 and "--office" in several.output
    finally:
        get_settings.cache_clear()
