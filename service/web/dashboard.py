"""The manager dashboard: retention, crisis measures and plan adherence of one office.

Everything shown is assembled here from the outcome modules, never recomputed:
``service/outcomes/retention.py`` (rates at 1/3/6/12 months per breakdown, the Kaplan-Meier
curve with its 95% band), ``service/outcomes/crisis.py`` (``flag_measures``) and
``service/outcomes/adherence.py`` (``adherence``: plan adherence and each worker's load).

Filters come from the URL query string, so a view can be shared:

* ``as_of`` (YYYY-MM-DD): retention as of this day; default today in the office's time zone.
* ``from`` / ``to`` (YYYY-MM-DD): the period of the follow-ups due (adherence) and of the crisis
  flags opened; default the 30 days up to ``as_of``.
* ``office`` (id): admins only pick any office; anyone else may name only their own (another
  office is 404, as everywhere).
* ``worker`` (id), ``employment_type``, ``category``: the group the headline retention (rates and
  curve) is about. The retention module computes per group, so the headline is that group's row
  of the matching breakdown, the very numbers ``GET /api/v1/retention?by=...`` gives; one of the
  three at a time. The breakdown tables always show every group of the office (the chosen one
  marked); the worker filter also narrows the per-worker adherence table.

Every table is built once by :func:`tables` and rendered both as HTML and as CSV, so the page
and the download cannot disagree; the charts draw from :func:`chart_data`, the same objects.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from service.accounts.models import Office, Role, StaffUser
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.models import ClientCategory, EmploymentType
from service.deps import ClockDep, SessionDep
from service.errors import FieldError, NotFound, ValidationFailed
from service.i18n import label
from service.outcomes import adherence as adherence_ops
from service.outcomes import crisis as crisis_ops
from service.outcomes import retention as retention_ops
from service.outcomes.exports import safe_cell
from service.outcomes.retention import MONTHS, REFERENCE_RATE, Grouping
from service.outcomes.schemas import AdherenceReport, CurveGroup, RetentionGroup, RetentionReport
from service.web.auth import ManagerPageUser
from service.web.render import gettext_for, language_for, render

BREAKDOWNS = (Grouping.office, Grouping.worker, Grouping.employer, Grouping.employment_type, Grouping.category)
DEFAULT_PERIOD_DAYS = 30
MAX_PERIOD_DAYS = adherence_ops.MAX_PERIOD_DAYS
FILTER_FIELDS = ("as_of", "from", "to", "office", "worker", "employment_type", "category")
_ID_MAX = 2**31 - 1


def N_(message: str) -> str:  # noqa: N802  (the gettext marker pybabel extracts by default)
    return message


Gettext = Callable[[str], str]


# -- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    office_id: int
    as_of: date
    date_from: date
    date_to: date
    worker: int | None = None
    employment_type: str | None = None
    category: str | None = None
    explicit: dict[str, str] = field(default_factory=dict)  # what the URL said, to rebuild links

    @property
    def selection(self) -> tuple[Grouping, str]:
        """The breakdown and group the headline is about (the whole office when no filter)."""
        if self.worker is not None:
            return Grouping.worker, str(self.worker)
        if self.employment_type is not None:
            return Grouping.employment_type, self.employment_type
        if self.category is not None:
            return Grouping.category, self.category
        return Grouping.none, "all"


def _date(raw: str, name: str, errors: list[FieldError]) -> date | None:
    try:
        if len(raw) != 10:  # fromisoformat also takes 20260101 and week dates: ask for one form
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        errors.append(FieldError(name, "must be a date as YYYY-MM-DD"))
        return None


def _id(raw: str, name: str, errors: list[FieldError]) -> int | None:
    if raw.isdecimal() and len(raw) <= 10 and 0 < int(raw) <= _ID_MAX:
        return int(raw)
    errors.append(FieldError(name, "must be a positive whole number"))
    return None


def parse_filters(session: Session, params: Mapping[str, str], *, user: StaffUser, clock: Clock) -> Filters:
    """Read and check the query string. Unknown or malformed values: 422 naming each field;
    an office or worker the user may not see: 404."""
    errors: list[FieldError] = []
    given = {k: params[k].strip() for k in FILTER_FIELDS if params.get(k, "").strip()}

    office_id = user.office_id
    if "office" in given and (wanted := _id(given["office"], "office", errors)) is not None:
        if wanted != user.office_id and user.role != Role.admin:
            raise NotFound("office")
        if session.get(Office, wanted) is None:
            raise NotFound("office")
        office_id = wanted
    office = session.get(Office, office_id)

    as_of = _date(given["as_of"], "as_of", errors) if "as_of" in given else None
    date_from = _date(given["from"], "from", errors) if "from" in given else None
    date_to = _date(given["to"], "to", errors) if "to" in given else None

    worker = _id(given["worker"], "worker", errors) if "worker" in given else None
    employment_type = given.get("employment_type")
    if employment_type is not None and employment_type not in {e.value for e in EmploymentType}:
        errors.append(FieldError("employment_type", "must be one of " + ", ".join(e.value for e in EmploymentType)))
    category = given.get("category")
    if category is not None and category not in {c.value for c in ClientCategory}:
        errors.append(FieldError("category", "must be one of " + ", ".join(c.value for c in ClientCategory)))
    chosen = [k for k in ("worker", "employment_type", "category") if k in given]
    for extra in chosen[1:]:
        errors.append(
            FieldError(extra, f"choose one of worker, employment_type, category at a time ({chosen[0]} given)")
        )

    today = contacts.office_today(office, clock)
    as_of = as_of or today
    date_to = date_to or as_of
    date_from = date_from or date_to - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    if "from" in given and "to" in given and not any(e.field in ("from", "to") for e in errors):
        if date_from > date_to:
            errors.append(FieldError("from", "must be on or before 'to'"))
        elif (date_to - date_from).days > MAX_PERIOD_DAYS:
            errors.append(FieldError("from", f"the period may be at most {MAX_PERIOD_DAYS} days"))
    elif date_from > date_to:
        errors.append(FieldError("from" if "from" in given else "to", "must be on or before 'to'"))
    if errors:
        raise ValidationFailed(errors)

    if worker is not None:
        staff = session.get(StaffUser, worker)
        if staff is None or staff.office_id != office_id:
            raise NotFound("worker")
    return Filters(
        office_id=office_id,
        as_of=as_of,
        date_from=date_from,
        date_to=date_to,
        worker=worker,
        employment_type=employment_type,
        category=category,
        explicit=given,
    )


# -- the assembled dashboard -----------------------------------------------------------------


@dataclass
class Dashboard:
    filters: Filters
    office: Office
    today: date
    language: str
    offices: list[tuple[int, str]]  # what the office filter offers (admins: all; others: their own)
    workers: list[tuple[int, str]]  # what the worker filter offers
    breakdowns: dict[str, RetentionReport]  # job and employment retention per breakdown
    selected: RetentionReport | None  # the breakdown the headline comes from
    headline: RetentionGroup | None  # job retention of the selected group (None: no placements)
    headline_employment: RetentionGroup | None
    curve: CurveGroup | None
    crisis: crisis_ops.FlagMeasures | None  # None (and selected, adherence): not built (``build(only=...)``)
    adherence: AdherenceReport | None
    reference_rate: float = REFERENCE_RATE


def _pick(groups, key: str):
    return next((g for g in groups if g.key == key), None)


def _needs(table: str | None) -> set[str]:
    """The reports one table is made from (``None``: every table, as the page shows them; a name
    that is no table: none)."""
    breakdowns = {f"retention-{b.value.replace('_', '-')}": f"retention-{b.value}" for b in BREAKDOWNS}
    if table is None:
        return {"selected", "curve", "crisis", "adherence", *breakdowns.values()}
    if table in breakdowns:
        return {breakdowns[table]}
    parts = {"retention": "selected", "curve": "curve", "crisis": "crisis", "crisis-age": "crisis",
             "crisis-times": "crisis", "adherence": "adherence", "workers": "adherence"}  # fmt: skip
    return {parts[table]} if table in parts else set()


def build(
    session: Session,
    *,
    user: StaffUser,
    clock: Clock,
    params: Mapping[str, str],
    language: str | None = None,
    only: str | None = None,
) -> Dashboard:
    """Everything the dashboard shows for the filters in ``params`` (the URL's query string); with
    ``only`` (a table's CSV name), just the reports that table is made from (a CSV download)."""
    f = parse_filters(session, params, user=user, clock=clock)
    office = session.get(Office, f.office_id)
    language = language or user.language.value
    today = contacts.office_today(office, clock)
    needs = _needs(only)

    breakdowns = {
        by.value: retention_ops.retention(session, office_id=office.id, as_of=f.as_of, by=by, language=language)
        for by in BREAKDOWNS
        if f"retention-{by.value}" in needs
    }
    by, key = f.selection
    selected = None
    if "selected" in needs:
        selected = breakdowns.get(by.value) or retention_ops.retention(
            session, office_id=office.id, as_of=f.as_of, by=by, language=language
        )
    curves = None
    if "curve" in needs:
        curves = retention_ops.retention_curve(session, office_id=office.id, as_of=f.as_of, by=by, language=language)
    measures = None
    if "crisis" in needs:
        measures = crisis_ops.flag_measures(
            session, office_id=office.id, clock=clock, opened_from=f.date_from, opened_to=f.date_to
        )
    adherence = None
    if "adherence" in needs:
        adherence = adherence_ops.adherence(
            session, office_id=office.id, date_from=f.date_from, date_to=f.date_to, today=today, language=language
        )
        if f.worker is not None:
            adherence.workers = [w for w in adherence.workers if w.worker_id == f.worker]

    if user.role == Role.admin:
        offices = [tuple(r) for r in session.execute(sa.select(Office.id, Office.name).order_by(Office.id)).all()]
    else:
        offices = [(office.id, office.name)]
    workers = [
        tuple(r)
        for r in session.execute(
            sa.select(StaffUser.id, StaffUser.name)
            .where(StaffUser.office_id == office.id, StaffUser.role == Role.worker)
            .order_by(StaffUser.name, StaffUser.id)
        ).all()
    ]
    return Dashboard(
        filters=f,
        office=office,
        today=today,
        language=language,
        offices=offices,
        workers=workers,
        breakdowns=breakdowns,
        selected=selected,
        headline=_pick(selected.groups, key) if selected else None,
        headline_employment=_pick(selected.employment, key) if selected else None,
        curve=_pick(curves.groups, key) if curves else None,
        crisis=measures,
        adherence=adherence,
    )


# -- tables: one definition for the HTML table and the CSV download ----------------------------


@dataclass
class Table:
    name: str  # the URL name of its CSV: /dashboard/<name>.csv
    title: str
    header: list[str]
    rows: list[list]  # cells: str, int, float (a rate 0..1 is shown as a percentage) or None
    rate_columns: frozenset[int] = frozenset()
    highlight: str | None = None  # the first cell of the row the filter selected
    caption: str = ""


def percent(rate: float | None) -> str:
    """A rate as shown in tables and CSV: one decimal, or an em dash when nothing was eligible."""
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _retention_rows(groups: list[RetentionGroup]) -> list[list]:
    rows = []
    for g in groups:
        row = [g.label, g.started]
        for n in MONTHS:
            cell = g.months[str(n)]
            row += [cell.eligible, cell.retained, cell.rate]
        rows.append(row)
    return rows


def _retention_header(_: Gettext, first: str) -> list[str]:
    header = [first, _("Started")]
    for n in MONTHS:
        header += [
            _("%(n)d-month: eligible") % {"n": n},
            _("%(n)d-month: retained") % {"n": n},
            _("%(n)d-month: rate") % {"n": n},
        ]
    return header


def _rate_columns() -> frozenset[int]:
    return frozenset(2 + 3 * i + 2 for i in range(len(MONTHS)))


_BREAKDOWN_TITLES = {
    "office": N_("Job retention by office"),
    "worker": N_("Job retention by worker"),
    "employer": N_("Job retention by employer"),
    "employment_type": N_("Job retention by employment type"),
    "category": N_("Job retention by client category"),
}
_BREAKDOWN_FIRST = {
    "office": N_("Office"),
    "worker": N_("Worker"),
    "employer": N_("Employer"),
    "employment_type": N_("Employment type"),
    "category": N_("Client category"),
}


def tables(d: Dashboard, _: Gettext, only: str | None = None) -> dict[str, Table]:
    """Every table of the dashboard, in page order, keyed by its CSV name; with ``only``, the tables
    made from the same reports as that one (``d`` built with the same ``only``)."""
    out: dict[str, Table] = {}
    by, key = d.filters.selection
    needs = _needs(only)

    if "selected" in needs:
        rates_rows = []
        for n in MONTHS:
            job = d.headline.months[str(n)] if d.headline else None
            emp = d.headline_employment.months[str(n)] if d.headline_employment else None
            rates_rows.append(
                [
                    _("At %(n)d months") % {"n": n},
                    job.eligible if job else 0,
                    job.retained if job else 0,
                    job.rate if job else None,
                    emp.eligible if emp else 0,
                    emp.retained if emp else 0,
                    emp.rate if emp else None,
                    REFERENCE_RATE,
                ]
            )
        out["retention"] = Table(
            name="retention",
            title=_("Retention at 1, 3, 6 and 12 months"),
            header=[
                _("Months"),
                _("Placements eligible"),
                _("Placements retained"),
                _("Job retention"),
                _("Spells eligible"),
                _("Spells retained"),
                _("Employment retention"),
                _("National reference"),
            ],
            rows=rates_rows,
            rate_columns=frozenset({3, 6, 7}),
            caption=_("Only placements whose N-month date has passed count (the denominator)."),
        )

    if "curve" in needs:
        points = d.curve.points if d.curve else []
        out["curve"] = Table(
            name="curve",
            title=_("Retention curve (Kaplan-Meier) with 95% band"),
            header=[
                _("Days since start"),
                _("At risk"),
                _("Separations"),
                _("Censored"),
                _("Still employed"),
                _("95% band: lower"),
                _("95% band: upper"),
            ],
            rows=[[p.time, p.at_risk, p.events, p.censored, p.survival, p.lower, p.upper] for p in points],
            rate_columns=frozenset({4, 5, 6}),
        )

    for name in (b.value for b in BREAKDOWNS):
        if f"retention-{name}" not in needs:
            continue
        report = d.breakdowns[name]
        highlight = None
        if by.value == name:
            picked = _pick(report.groups, key)
            highlight = picked.label if picked else None
        out[f"retention-{name.replace('_', '-')}"] = Table(
            name=f"retention-{name.replace('_', '-')}",
            title=_(_BREAKDOWN_TITLES[name]),
            header=_retention_header(_, _(_BREAKDOWN_FIRST[name])),
            rows=_retention_rows(report.groups),
            rate_columns=_rate_columns(),
            highlight=highlight,
        )

    if "crisis" in needs:
        c = d.crisis
        statuses = list(next(iter(c.by_severity_and_status.values())).keys()) if c.by_severity_and_status else []
        out["crisis"] = Table(
            name="crisis",
            title=_("Crisis flags by severity"),
            header=[_("Severity"), *[label(s, "crisis_status", d.language) for s in statuses], _("Total")],
            rows=[
                [label(sev, "crisis_severity", d.language), *[grid[s] for s in statuses], sum(grid.values())]
                for sev, grid in c.by_severity_and_status.items()
            ],
        )
        out["crisis-age"] = Table(
            name="crisis-age",
            title=_("Open crisis flags by age"),
            header=[_("Age"), _("Open flags")],
            rows=[[age, n] for age, n in c.open_by_age.items()],
        )
        times = []
        for sev in c.time_to_acknowledge_by_severity:
            ack, res = c.time_to_acknowledge_by_severity[sev], c.time_to_resolve_by_severity[sev]
            times.append(
                [
                    label(sev, "crisis_severity", d.language),
                    ack.count,
                    ack.median_minutes,
                    ack.p90_minutes,
                    res.count,
                    res.median_minutes,
                    res.p90_minutes,
                ]
            )
        ack, res = c.time_to_acknowledge, c.time_to_resolve
        times.append(
            [_("All"), ack.count, ack.median_minutes, ack.p90_minutes, res.count, res.median_minutes, res.p90_minutes]
        )
        out["crisis-times"] = Table(
            name="crisis-times",
            title=_("Time to acknowledge and to resolve (minutes)"),
            header=[
                _("Severity"),
                _("Acknowledged"),
                _("Acknowledge: median"),
                _("Acknowledge: 90th percentile"),
                _("Resolved"),
                _("Resolve: median"),
                _("Resolve: 90th percentile"),
            ],
            rows=times,
        )

    if "adherence" in needs:
        a = d.adherence
        adherence_header = [
            _("Channel"),
            _("Due"),
            _("Done"),
            _("On time"),
            _("Late"),
            _("Missed"),
            _("Open"),
            _("Done rate"),
            _("On-time rate"),
            _("Attempts"),
            _("Contacts"),
            _("Reach rate"),
        ]

        def adherence_row(first, x) -> list:
            return [
                first, x.due, x.done, x.on_time, x.late, x.missed, x.open,
                x.done_rate, x.on_time_rate, x.attempts, x.contacts, x.reach_rate,
            ]  # fmt: skip

        out["adherence"] = Table(
            name="adherence",
            title=_("Plan adherence by channel"),
            header=adherence_header,
            rows=[adherence_row(b.label, b) for b in a.by_channel] + [adherence_row(_("All"), a.total)],
            rate_columns=frozenset({7, 8, 11}),
        )
        out["workers"] = Table(
            name="workers",
            title=_("Caseload and overdue work per worker"),
            header=[_("Worker"), _("Caseload"), _("Overdue"), _("Oldest overdue")],
            rows=[
                [w.name, w.caseload, w.overdue, w.oldest_overdue.isoformat() if w.oldest_overdue else None]
                for w in a.workers
            ],
        )
    return out


def display(table: Table, index: int, value) -> str:
    """A cell as the HTML table shows it."""
    if index in table.rate_columns:
        return percent(value)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def to_csv(table: Table) -> str:
    """The table as CSV text with a UTF-8 BOM (Japanese Excel): rates as exact fractions 0..1."""
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([safe_cell(h) for h in table.header])
    for row in table.rows:
        writer.writerow([safe_cell(v) for v in row])
    return buffer.getvalue()


def chart_data(d: Dashboard, _: Gettext) -> dict:
    """What static/dashboard.js draws: the same objects the tables are built from."""
    c = d.crisis
    return {
        "reference_rate": d.reference_rate,
        "months": list(MONTHS),
        "rates": {
            "job": [(d.headline.months[str(n)].rate if d.headline else None) for n in MONTHS],
            "employment": [
                (d.headline_employment.months[str(n)].rate if d.headline_employment else None) for n in MONTHS
            ],
        },
        "curve": [
            {"time": p.time, "survival": p.survival, "lower": p.lower, "upper": p.upper, "at_risk": p.at_risk}
            for p in (d.curve.points if d.curve else [])
        ],
        "crisis": {
            "severities": [label(s, "crisis_severity", d.language) for s in c.by_severity_and_status],
            "statuses": [label(s, "crisis_status", d.language) for s in next(iter(c.by_severity_and_status.values()))],
            "counts": [list(grid.values()) for grid in c.by_severity_and_status.values()],
        },
        "text": {
            "months": [_("At %(n)d months") % {"n": n} for n in MONTHS],
            "job": _("Job retention"),
            "employment": _("Employment retention"),
            "reference": _("National reference (50%)"),
            "survival": _("Still employed"),
            "lower": _("95% band: lower"),
            "upper": _("95% band: upper"),
            "days": _("Days since start"),
            "flags": _("Flags"),
        },
    }


# -- the page and its CSV downloads ------------------------------------------------------------

router = APIRouter(include_in_schema=False)

PAGE_PATH = "/manager"
BREAKDOWN_TABLES = tuple(f"retention-{b.value.replace('_', '-')}" for b in BREAKDOWNS)


def _query(d: Dashboard, **changes: str) -> str:
    return urlencode({**d.filters.explicit, **changes})


def _error_page(request: Request, user: StaffUser, session: Session, exc: ValidationFailed | NotFound):
    _ = gettext_for(language_for(request, user))
    errors = exc.errors if isinstance(exc, ValidationFailed) else [FieldError("", exc.message)]
    return render(
        request,
        "dashboard_error.html",
        {"errors": errors, "dashboard_url": PAGE_PATH, "status": exc.status_code},
        user=user,
        session=session,
        status_code=exc.status_code,
    )


def _choices(kind: str, language: str) -> list[tuple[str, str]]:
    names = retention_ops._LABELS[kind]  # noqa: SLF001  (the one place these words are defined)
    return [(value, names[value].get(language) or names[value]["en"]) for value in names]


@router.get(PAGE_PATH, response_class=HTMLResponse)
def dashboard_page(request: Request, session: SessionDep, user: ManagerPageUser, clock: ClockDep):
    """The manager dashboard. Filters in the query string (see the module's docstring)."""
    language = language_for(request, user)
    _ = gettext_for(language)
    try:
        d = build(session, user=user, clock=clock, params=request.query_params, language=language)
    except (ValidationFailed, NotFound) as exc:
        return _error_page(request, user, session, exc)
    all_tables = tables(d, _)
    query = _query(d)
    by, key = d.filters.selection
    selection_label = None
    if by != Grouping.none:
        picked = d.headline or _pick(d.selected.employment, key)
        selection_label = picked.label if picked else key
    return render(
        request,
        "dashboard.html",
        {
            "d": d,
            "tables": all_tables,
            "breakdown_tables": BREAKDOWN_TABLES,
            "csv_urls": {name: f"{PAGE_PATH}/{name}.csv" + (f"?{query}" if query else "") for name in all_tables},
            "chart": chart_data(d, _),
            "display": display,
            "dashboard_url": PAGE_PATH,
            "selection_label": selection_label,
            "employment_types": _choices("employment_type", language),
            "categories": _choices("category", language),
        },
        user=user,
        session=session,
    )


@router.get(PAGE_PATH + "/{table}.csv")
def dashboard_csv(request: Request, table: str, session: SessionDep, user: ManagerPageUser, clock: ClockDep):
    """One dashboard table as CSV (UTF-8 with a BOM), for the same filters as the page."""
    language = language_for(request, user)
    _ = gettext_for(language)
    try:
        # Only the reports this table is made from: the same numbers as the page's, for less work.
        d = build(session, user=user, clock=clock, params=request.query_params, language=language, only=table)
    except (ValidationFailed, NotFound) as exc:
        return _error_page(request, user, session, exc)
    found = tables(d, _, only=table).get(table)
    if found is None:
        return _error_page(request, user, session, NotFound("table"))
    name = f"teichaku-{table}-office{d.office.id}-{d.filters.as_of.isoformat()}.csv"
    return Response(
        to_csv(found).encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )
