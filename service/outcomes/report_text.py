"""Reports as text for the command line: CSV (same numbers as the JSON API) and a plain table."""

from __future__ import annotations

import csv
import io
import unicodedata

from service.outcomes.schemas import AdherenceReport, RetentionGroup, RetentionReport

_ADHERENCE_FIELDS = (
    "due", "done", "on_time", "late", "missed", "open", "done_rate", "on_time_rate",
    "attempts", "contacts", "reach_rate",
)  # fmt: skip


def _num(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def retention_csv(report: RetentionReport) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    header = ["measure", "as_of", "by", "key", "label", "started"]
    for n in report.months:
        header += [f"eligible_{n}m", f"retained_{n}m", f"rate_{n}m"]
    w.writerow([*header, "reference_rate"])
    for measure, groups in (("job", report.groups), ("employment", report.employment)):
        for g in groups:
            row = [measure, report.as_of.isoformat(), report.by, g.key, g.label, g.started]
            for n in report.months:
                cell = g.months[str(n)]
                row += [cell.eligible, cell.retained, _num(cell.rate)]
            w.writerow([*row, _num(report.reference_rate)])
    return out.getvalue()


def _retention_rows(groups: list[RetentionGroup], months: list[int]) -> list[list[str]]:
    rows = []
    for g in groups:
        row = [g.key, g.label, str(g.started)]
        for n in months:
            c = g.months[str(n)]
            row.append(f"{c.retained}/{c.eligible} {_pct(c.rate)}")
        rows.append(row)
    return rows


def _width(text: str) -> int:
    # Japanese characters take two columns in a terminal.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _table(header: list[str], rows: list[list[str]]) -> str:
    table = [header, *rows]
    widths = [max(_width(str(r[i])) for r in table) for i in range(len(header))]
    lines = ["  ".join(str(v) + " " * (widths[i] - _width(str(v))) for i, v in enumerate(r)).rstrip() for r in table]
    return "\n".join(lines)


def retention_table(report: RetentionReport) -> str:
    header = ["key", "label", "started", *(f"{n}m retained/eligible" for n in report.months)]
    parts = [
        f"Retention as of {report.as_of.isoformat()}, by {report.by} "
        f"(national reference line {_pct(report.reference_rate)})",
        "",
        "Job retention (placements)",
        _table(header, _retention_rows(report.groups, report.months)),
        "",
        "Employment retention (spells; a new job within a month of a separation continues one)",
        _table(header, _retention_rows(report.employment, report.months)),
    ]
    return "\n".join(parts) + "\n"


def adherence_csv(report: AdherenceReport) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["breakdown", "from", "to", "key", "label", *_ADHERENCE_FIELDS])
    period = [report.period_from.isoformat(), report.period_to.isoformat()]
    w.writerow(
        [
            "total",
            *period,
            "all",
            "all",
            *(_num(getattr(report.total, f)) for f in _ADHERENCE_FIELDS),
        ]
    )
    for name, rows in (("channel", report.by_channel), ("party", report.by_party)):
        for r in rows:
            w.writerow([name, *period, r.key, r.label, *(_num(getattr(r, f)) for f in _ADHERENCE_FIELDS)])
    return out.getvalue()


def adherence_table(report: AdherenceReport) -> str:
    header = [
        "",
        "due",
        "done",
        "on time",
        "late",
        "missed",
        "open",
        "done %",
        "on time %",
        "reach",
    ]

    def row(name: str, c) -> list[str]:
        counts = [c.due, c.done, c.on_time, c.late, c.missed, c.open]
        reach = f"{c.contacts}/{c.attempts} {_pct(c.reach_rate)}"
        return [name, *map(str, counts), _pct(c.done_rate), _pct(c.on_time_rate), reach]

    rows = [row("total", report.total)]
    rows += [row(f"channel {r.label}", r) for r in report.by_channel]
    rows += [row(f"party {r.label}", r) for r in report.by_party]
    workers = [
        [
            w.name,
            str(w.caseload),
            str(w.overdue),
            w.oldest_overdue.isoformat() if w.oldest_overdue else "-",
        ]
        for w in report.workers
    ]
    parts = [
        f"Plan adherence: follow-ups due from {report.period_from.isoformat()} to {report.period_to.isoformat()}",
        "",
        _table(header, rows),
        "",
        f"Workers as of {report.today.isoformat()}",
        _table(["worker", "caseload", "overdue", "oldest overdue"], workers),
    ]
    return "\n".join(parts) + "\n"
