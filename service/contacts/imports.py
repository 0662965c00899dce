"""CSV import of clients and placements, all or nothing.

Reads UTF-8 (with or without BOM) or Shift_JIS as Japanese Excel saves it. Every row is checked
before anything is written; one bad row and nothing is imported, and every bad row is reported
with its line number, column and reason. The same ``client_ref`` on several rows is one client
with several placements.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from service.accounts.models import Language, Office, StaffUser
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.models import (
    Client,
    ClientCategory,
    Employer,
    EmploymentType,
    Placement,
    SeparationReason,
)
from service.errors import DomainError, FieldError
from service.schedules.plans import PlanTemplate
from service.validation import parse_email, parse_phone

COLUMNS = [
    "client_ref", "client_name", "client_kana", "phone", "email", "language", "category",
    "office", "worker_email", "employer_name", "supervisor_name", "supervisor_phone",
    "job_title", "employment_type", "start_date", "plan", "separation_date", "separation_reason",
]  # fmt: skip
OPTIONAL_COLUMNS = ["consent_automated", "consent_family", "consent_employer"]
REQUIRED = {
    "client_ref", "client_name", "category", "office", "worker_email", "employer_name",
    "job_title", "employment_type", "start_date",
}  # fmt: skip
MAX_BYTES = 50 * 1024 * 1024
# A separation older than this is history: no separation call is put in the queue for it.
RECENT_SEPARATION = timedelta(days=14)
# Dates further ahead than this are typing mistakes (and the API refuses such separations).
AHEAD = timedelta(days=366)
# Fields the write step may report, named as the file's columns.
_WRITE_FIELDS = {"date": "separation_date", "ref": "client_ref", "worker_id": "worker_email"}

# Japanese labels are accepted beside the codes, as offices type them in Excel.
_ALIASES: dict[str, dict[str, str]] = {
    "category": {"生活困窮者": "needy_person", "困窮者": "needy_person", "被保護者": "public_assistance",
                 "生活保護": "public_assistance", "生活保護受給者": "public_assistance"},
    "employment_type": {"一般就労": "general", "一般": "general", "認定就労訓練": "certified_training",
                        "認定就労訓練（雇用型）": "certified_training", "その他": "other"},
    "separation_reason": {"自己都合": "voluntary", "解雇": "dismissed", "契約満了": "contract_ended",
                          "健康上の理由": "health", "病気": "health", "その他": "other"},
    "language": {"日本語": "ja", "英語": "en", "japanese": "ja", "english": "en"},
}  # fmt: skip
_YES = {"yes", "y", "true", "1", "はい", "有", "あり", "同意"}
_NO = {"", "no", "n", "false", "0", "いいえ", "無", "なし"}
_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")


class ImportFailed(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} problem(s)")
        self.errors = errors


@dataclass
class ImportReport:
    rows: int = 0
    clients_created: int = 0
    employers_created: int = 0
    placements_created: int = 0
    separations: int = 0


@dataclass
class _Row:
    line: int
    v: dict[str, Any] = field(default_factory=dict)


_NOT_TEXT = "the file is neither UTF-8 nor Shift_JIS text (save the sheet as CSV)"


def decode(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise ImportFailed([FieldError("(file)", f"larger than {MAX_BYTES // 2**20} MB", line=1)])
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            text = data[3:].decode("utf-8")
        except UnicodeDecodeError:
            raise ImportFailed([FieldError("(file)", _NOT_TEXT, line=1)]) from None
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = data.decode("cp932")  # Shift_JIS as Windows and Excel write it
            except UnicodeDecodeError:
                raise ImportFailed([FieldError("(file)", _NOT_TEXT, line=1)]) from None
    # NUL never occurs in a CSV; it does in binary files (xlsx, images, UTF-16), and the
    # database refuses it. Without this check such a file decodes as Shift_JIS garbage.
    if "\x00" in text:
        raise ImportFailed([FieldError("(file)", _NOT_TEXT, line=1)])
    if not text.strip():
        raise ImportFailed([FieldError("(file)", "the file is empty", line=1)])
    return text


def _choice(column: str, raw: str, enum_cls: type) -> str:
    key = unicodedata.normalize("NFKC", raw).strip()
    value = _ALIASES.get(column, {}).get(key, key.lower())
    if value not in enum_cls.__members__:
        allowed = ", ".join(enum_cls.__members__)
        raise ValueError(f"{raw!r} is not one of: {allowed}")
    return value


def _date(raw: str) -> date:
    m = _DATE.match(unicodedata.normalize("NFKC", raw).strip())
    if not m:
        raise ValueError(f"{raw!r} is not a date (YYYY-MM-DD)")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise ValueError(f"{raw!r} is not a real date") from None


def _flag(raw: str) -> bool:
    key = unicodedata.normalize("NFKC", raw).strip().lower()
    if key in _YES:
        return True
    if key in _NO:
        return False
    raise ValueError(f"{raw!r} is not yes or no")


class _Lookups:
    """Offices, workers and employers by name, read once per import."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.offices = {o.name: o for o in session.exec(select(Office)).all()}
        self.workers: dict[str, StaffUser | None] = {}

    def worker(self, email: str) -> StaffUser | None:
        key = email.strip().lower()
        if key not in self.workers:
            self.workers[key] = self.session.exec(select(StaffUser).where(func.lower(StaffUser.email) == key)).first()
        return self.workers[key]


def _parse_row(
    raw: dict[str, str], line: int, look: _Lookups, plans: dict[str, PlanTemplate], clock: Clock
) -> tuple[_Row, list[FieldError]]:
    row, errors = _Row(line), []

    def bad(col: str, msg: str) -> None:
        errors.append(FieldError(col, msg, line=line))

    cell = {k: (raw.get(k) or "").strip() for k in COLUMNS + OPTIONAL_COLUMNS}
    for col in sorted(REQUIRED):
        if not cell[col]:
            bad(col, "is required")
    v = row.v
    v["client_ref"], v["client_name"] = cell["client_ref"], cell["client_name"]
    v["client_kana"] = cell["client_kana"] or None
    v["job_title"], v["employer_name"] = cell["job_title"], cell["employer_name"]
    v["supervisor_name"] = cell["supervisor_name"] or None
    for col, limit in (("client_ref", 64), ("client_name", 200), ("client_kana", 200),
                       ("employer_name", 200), ("supervisor_name", 200), ("job_title", 200)):  # fmt: skip
        if len(cell[col]) > limit:
            bad(col, f"is longer than {limit} characters")

    parsers: list[tuple[str, str, Callable[[str], Any]]] = [
        ("phone", "phone", parse_phone),
        ("email", "email", parse_email),
        ("supervisor_phone", "supervisor_phone", parse_phone),
        ("start_date", "start_date", _date),
        ("separation_date", "separation_date", _date),
        ("category", "category", lambda x: _choice("category", x, ClientCategory)),
        ("employment_type", "employment_type", lambda x: _choice("employment_type", x, EmploymentType)),
        ("separation_reason", "separation_reason", lambda x: _choice("separation_reason", x, SeparationReason)),
        ("language", "language", lambda x: _choice("language", x, Language)),
    ]
    for col in OPTIONAL_COLUMNS:
        parsers.append((col, col, _flag))
    for col, key, parse in parsers:
        v[key] = None
        if cell[col]:
            try:
                v[key] = parse(cell[col])
            except ValueError as exc:
                bad(col, str(exc))
    v["language"] = v["language"] or "ja"
    for col in OPTIONAL_COLUMNS:
        v[col] = bool(v[col])

    office = look.offices.get(cell["office"]) if cell["office"] else None
    if cell["office"] and office is None:
        bad("office", f"no office named {cell['office']!r}")
    v["office"] = office
    worker = look.worker(cell["worker_email"]) if cell["worker_email"] else None
    if cell["worker_email"] and (worker is None or not worker.is_active or (office and worker.office_id != office.id)):
        bad("worker_email", f"no active staff member {cell['worker_email']!r} in that office")
    v["worker"] = worker
    plan = cell["plan"] or (office.default_plan if office else None)
    if plan and plan not in plans:
        bad("plan", f"no plan named {plan!r}; known: {', '.join(sorted(plans))}")
    v["plan"] = plan
    if v["start_date"] and v["start_date"] < contacts.EARLIEST_START:
        bad("start_date", f"must be on or after {contacts.EARLIEST_START}")
    if office is not None:
        latest = contacts.office_today(office, clock) + AHEAD
        for col in ("start_date", "separation_date"):
            if v[col] and v[col] > latest:
                bad(col, "is more than a year ahead")
    if v["separation_date"] and v["start_date"] and v["separation_date"] < v["start_date"]:
        bad("separation_date", "is before start_date")
    if v["separation_date"] and not v["separation_reason"] and not cell["separation_reason"]:
        bad("separation_reason", "is required when separation_date is given")
    if cell["separation_reason"] and not cell["separation_date"]:
        bad("separation_date", "is required when separation_reason is given")
    return row, errors


_CLIENT_FIELDS = ("client_name", "client_kana", "phone", "email", "language", "category")


def import_placements(
    session: Session,
    data: bytes,
    *,
    plans: dict[str, PlanTemplate],
    clock: Clock,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Check every row, then write them all in the caller's transaction; raises ImportFailed."""
    text = decode(data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise ImportFailed([FieldError("(file)", f"not readable as CSV: {exc}", line=1)]) from None
    reader.fieldnames = header
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if missing or unknown or twice:
        errors = [FieldError(c, "column is missing", line=1) for c in missing]
        errors += [FieldError(c or "(empty)", "unknown column", line=1) for c in unknown]
        errors += [FieldError(c, "column appears more than once", line=1) for c in twice]
        raise ImportFailed(errors)

    look = _Lookups(session)
    rows, errors = [], []
    first_seen: dict[tuple[int, str], _Row] = {}
    placements_seen: dict[tuple[int, str, str, date], int] = {}
    try:
        for raw in reader:
            line = reader.line_num
            if None in raw:
                errors.append(FieldError("(row)", "has more cells than the header", line=line))
                continue
            if not any((value or "").strip() for value in raw.values()):
                continue  # Excel leaves empty lines at the end
            row, row_errors = _parse_row(raw, line, look, plans, clock)
            v = row.v
            if v["office"] and v["client_ref"]:
                key = (v["office"].id, v["client_ref"])
                if (first := first_seen.get(key)) is not None:
                    for col in _CLIENT_FIELDS:
                        if first.v[col] != v[col]:
                            row_errors.append(
                                FieldError(col, f"differs from line {first.line} for the same client_ref", line=line)
                            )
                else:
                    first_seen[key] = row
                if v["start_date"] and v["employer_name"]:
                    pkey = (v["office"].id, v["client_ref"], v["employer_name"], v["start_date"])
                    if pkey in placements_seen:
                        row_errors.append(
                            FieldError(
                                "start_date", f"the same placement is on line {placements_seen[pkey]}", line=line
                            )
                        )
                    placements_seen.setdefault(pkey, line)
            errors.extend(row_errors)
            rows.append(row)
    except csv.Error as exc:
        errors.append(FieldError("(file)", f"not readable as CSV: {exc}", line=reader.line_num))
    if not rows and not errors:
        errors.append(FieldError("(file)", "no data rows", line=2))
    errors.extend(_check_existing(session, rows))
    if errors:
        raise ImportFailed(
            sorted(errors, key=lambda e: (e.line or 0, COLUMNS.index(e.field) if e.field in COLUMNS else 99))
        )
    return _write(session, rows, plans=plans, clock=clock, progress=progress)


def _check_existing(session: Session, rows: list[_Row]) -> list[FieldError]:
    """Clients already on record keep their data; a name that differs means a mixed-up ref."""
    errors = []
    for row in rows:
        v = row.v
        if not v["office"] or not v["client_ref"]:
            continue
        client = session.exec(
            select(Client).where(Client.office_id == v["office"].id, Client.ref == v["client_ref"])
        ).first()
        v["existing_client"] = client
        if client is None:
            continue
        if client.name != v["client_name"]:
            errors.append(
                FieldError(
                    "client_name",
                    f"client_ref {v['client_ref']!r} is already on record under another name",
                    line=row.line,
                )
            )
        elif v["start_date"] and session.exec(
            select(Placement.id)
            .join(Employer, Employer.id == Placement.employer_id)
            .where(Placement.client_id == client.id, Placement.start_date == v["start_date"],
                   Employer.name == v["employer_name"])
        ).first():  # fmt: skip
            errors.append(FieldError("start_date", "this placement is already on record", line=row.line))
    return errors


def _failed(line: int, errors: list[FieldError]) -> ImportFailed:
    return ImportFailed([FieldError(_WRITE_FIELDS.get(e.field, e.field), e.message, line=line) for e in errors])


def _write(
    session: Session,
    rows: list[_Row],
    *,
    plans: dict[str, PlanTemplate],
    clock: Clock,
    progress: Callable[[int, int], None] | None,
) -> ImportReport:
    """Clients and employers first, then the placements and their plans in batches
    (``create_placements``: a few statements per batch, not per row), then the separations."""
    report = ImportReport(rows=len(rows))
    clients: dict[tuple[int, str], Client] = {}
    employers: dict[tuple[int, str], Employer] = {}
    todays: dict[int, date] = {}
    for start in range(0, len(rows), contacts.PLACEMENT_BATCH):
        chunk = rows[start : start + contacts.PLACEMENT_BATCH]
        items = []
        for row in chunk:
            try:
                client, employer = _client_and_employer(session, row, report, clients, employers)
            except DomainError as exc:
                raise _failed(row.line, getattr(exc, "errors", None) or [FieldError("(row)", exc.message)]) from exc
            v = row.v
            office: Office = v["office"]
            if office.id not in todays:
                todays[office.id] = contacts.office_today(office, clock)
            items.append(
                contacts.NewPlacement(
                    office_id=office.id,
                    client_id=client.id,
                    employer_id=employer.id,
                    job_title=v["job_title"],
                    employment_type=v["employment_type"],
                    start_date=v["start_date"],
                    worker_id=v["worker"].id,
                    plan=v["plan"],
                    history_before=todays[office.id],
                )
            )
        try:
            ids = contacts.create_placements(session, items, created_by=None, plans=plans)
        except contacts.PlacementsInvalid as exc:
            errors = [e for i, errs in sorted(exc.failures.items()) for e in _failed(chunk[i].line, errs).errors]
            raise ImportFailed(errors) from exc
        report.placements_created += len(ids)
        for row, placement_id in zip(chunk, ids, strict=True):
            try:
                _separate(session, row, placement_id, todays[row.v["office"].id], report, clock=clock)
            except DomainError as exc:
                raise _failed(row.line, getattr(exc, "errors", None) or [FieldError("(row)", exc.message)]) from exc
        if progress:
            progress(start + len(chunk), len(rows))
    session.flush()
    return report


def _client_and_employer(
    session: Session,
    row: _Row,
    report: ImportReport,
    clients: dict[tuple[int, str], Client],
    employers: dict[tuple[int, str], Employer],
) -> tuple[Client, Employer]:
    v = row.v
    office: Office = v["office"]
    ckey = (office.id, v["client_ref"])
    client = clients.get(ckey) or v.get("existing_client")
    if client is None:
        client = contacts.create_client(
            session,
            office_id=office.id,
            created_by=None,
            ref=v["client_ref"],
            name=v["client_name"],
            kana=v["client_kana"],
            phone=v["phone"],
            email=v["email"],
            language=v["language"],
            category=v["category"],
            consent_automated=v["consent_automated"],
            consent_family=v["consent_family"],
            consent_employer=v["consent_employer"],
        )
        report.clients_created += 1
    clients[ckey] = client
    ekey = (office.id, v["employer_name"])
    employer = (
        employers.get(ekey)
        or session.exec(
            select(Employer).where(Employer.office_id == office.id, Employer.name == v["employer_name"])
        ).first()
    )
    if employer is None:
        employer = contacts.create_employer(
            session,
            office_id=office.id,
            name=v["employer_name"],
            supervisor_name=v["supervisor_name"],
            phone=v["supervisor_phone"],
        )
        report.employers_created += 1
    employers[ekey] = employer
    return client, employer


def _separate(
    session: Session, row: _Row, placement_id: int, today: date, report: ImportReport, *, clock: Clock
) -> None:
    v = row.v
    if not v["separation_date"]:
        return
    contacts.record_separation(
        session,
        office_id=v["office"].id,
        placement_id=placement_id,
        separation_date=v["separation_date"],
        reason=SeparationReason(v["separation_reason"]),
        note=None,
        recorded_by=None,
        clock=clock,
        separation_call=today - v["separation_date"] <= RECENT_SEPARATION,
    )
    report.separations += 1
