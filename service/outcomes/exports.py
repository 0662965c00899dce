"""CSV exports for an office: placements with their retention status, follow-ups with their
outcomes, and crisis flags with their signals.

- **One office only.** Every query is bound to the office, and so is every join that brings in a
  name (client, employer, staff): a row of another office can never lend a field.
- **Excel-ready.** UTF-8 with a BOM (Japanese Excel otherwise reads Shift_JIS), CRLF line ends,
  headers in the caller's language (``ja`` by default, or ``en``); values that are codes are
  written as labels in that language. Times are local to the office ("YYYY-MM-DD HH:MM").
- **No formula injection.** A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return is prefixed with ``'`` so a spreadsheet shows it as text (OWASP's advice).
- **Streamed, one snapshot.** Rows are read in keyset-paginated batches (``id > last``), so a large
  office is never loaded at once; :func:`export_csv` yields text chunks to a ``StreamingResponse`` or a
  file. All batches read one snapshot of the database, taken when the export begins.
- **Retention, defined once.** A placement's status at 1/3/6/12 months comes from
  :func:`service.outcomes.retention.retained_at`, the same SQL the rates are counted with, so the
  export's counts equal ``GET /api/v1/retention``'s (group ``none``) for the same ``as_of``.
"""

from __future__ import annotations

import csv
import enum
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from service.accounts.models import Office, StaffUser
from service.contacts.models import Client, Employer, FollowUp, Placement, Separation
from service.errors import NotFound, ValidationFailed
from service.i18n import label
from service.outcomes.models import CrisisFlag, CrisisSignal, Outcome
from service.outcomes.retention import MONTHS, retained_at

BOM = "\ufeff"
BATCH = 500
LANGUAGES = ("ja", "en")


class ExportKind(enum.StrEnum):
    placements = "placements"
    follow_ups = "follow-ups"
    crisis_flags = "crisis-flags"


# -- labels ------------------------------------------------------------------------------------

_WORDS: dict[str, dict[str, str]] = {
    "retention.retained": {"ja": "定着", "en": "retained"},
    "retention.not_retained": {"ja": "離職", "en": "not retained"},
    "retention.immature": {"ja": "未到達", "en": "not yet mature"},
    "yes": {"ja": "はい", "en": "yes"},
    "no": {"ja": "いいえ", "en": "no"},
    "category.needy_person": {"ja": "生活困窮者", "en": "needy person"},
    "category.public_assistance": {"ja": "被保護者", "en": "public-assistance recipient"},
    "employment_type.general": {"ja": "一般就労", "en": "general employment"},
    "employment_type.certified_training": {"ja": "認定就労訓練（雇用型）", "en": "certified training employment"},
    "employment_type.other": {"ja": "その他", "en": "other"},
    "placement_status.active": {"ja": "就労中", "en": "active"},
    "placement_status.separated": {"ja": "離職", "en": "separated"},
    "placement_status.completed": {"ja": "支援終了", "en": "completed"},
    "follow_up_status.pending": {"ja": "予定", "en": "pending"},
    "follow_up_status.done": {"ja": "実施済み", "en": "done"},
    "follow_up_status.attempted": {"ja": "不通（再連絡へ）", "en": "attempted"},
    "follow_up_status.missed": {"ja": "未実施", "en": "missed"},
    "follow_up_status.skipped": {"ja": "省略", "en": "skipped"},
    "follow_up_status.cancelled": {"ja": "取消", "en": "cancelled"},
    "still_employed.yes": {"ja": "就労中", "en": "yes"},
    "still_employed.no": {"ja": "離職", "en": "no"},
    "still_employed.unknown": {"ja": "不明", "en": "unknown"},
    "reply_class.none": {"ja": "なし", "en": "none"},
    "reply_class.watch": {"ja": "見守り", "en": "watch"},
    "reply_class.urgent": {"ja": "緊急", "en": "urgent"},
    "reply_class.emergency": {"ja": "非常", "en": "emergency"},
}


def _word(key: str, language: str) -> str:
    entry = _WORDS.get(key)
    if entry is None:
        return key.split(".", 1)[-1]
    return entry[language]


def _enum(value, prefix: str, language: str) -> str:
    if value is None:
        return ""
    raw = value.value if isinstance(value, enum.Enum) else str(value)
    if f"{prefix}.{raw}" in _WORDS:
        return _word(f"{prefix}.{raw}", language)
    return label(raw, prefix, language)


def _yes_no(value: bool | None, language: str) -> str:
    return "" if value is None else _word("yes" if value else "no", language)


# Columns: (code, ja, en). The code is stable; the header shows the label of the language.
PLACEMENT_COLUMNS = [
    ("placement_id", "就労ID", "placement id"),
    ("client_ref", "本人番号", "client ref"),
    ("client_name", "氏名", "client name"),
    ("category", "区分", "category"),
    ("employer", "就労先", "employer"),
    ("job_title", "職種", "job title"),
    ("employment_type", "就労形態", "employment type"),
    ("worker", "担当者", "worker"),
    ("start_date", "就労開始日", "start date"),
    ("status", "状態", "status"),
    ("separation_date", "離職日", "separation date"),
    ("separation_reason", "離職理由", "separation reason"),
    *[(f"retention_{n}m", f"{n}か月定着", f"retention at {n} months") for n in MONTHS],
    ("as_of", "基準日", "as of"),
]
FOLLOW_UP_COLUMNS = [
    ("follow_up_id", "フォローアップID", "follow-up id"),
    ("placement_id", "就労ID", "placement id"),
    ("client_ref", "本人番号", "client ref"),
    ("client_name", "氏名", "client name"),
    ("party", "相手", "party"),
    ("channel", "方法", "channel"),
    ("kind", "種類", "kind"),
    ("attempt", "再連絡回数", "attempt"),
    ("automated", "自動", "automated"),
    ("due_date", "予定日", "due date"),
    ("window_end", "期限", "window end"),
    ("status", "状態", "status"),
    ("status_reason", "状態の理由", "status reason"),
    ("assignee", "担当者", "assignee"),
    ("completed_at", "完了日時", "completed at"),
    ("outcome_id", "結果ID", "outcome id"),
    ("recorded_at", "記録日時", "recorded at"),
    ("source", "記録元", "source"),
    ("reached", "連絡がついた", "reached"),
    ("still_employed", "就労継続", "still employed"),
    ("wellbeing", "調子（1-5）", "wellbeing (1-5)"),
    ("risk_signals", "リスク", "risk signals"),
    ("late", "遅れ", "late"),
    ("reply_class", "返信の分類", "reply class"),
    ("reply_reason", "分類の理由", "reply reason"),
    ("note", "メモ", "note"),
]
CRISIS_COLUMNS = [
    ("flag_id", "フラグID", "flag id"),
    ("placement_id", "就労ID", "placement id"),
    ("client_ref", "本人番号", "client ref"),
    ("client_name", "氏名", "client name"),
    ("severity", "重さ", "severity"),
    ("status", "状態", "status"),
    ("owner", "担当者", "owner"),
    ("opened_at", "発生日時", "opened at"),
    ("acknowledged_at", "確認日時", "acknowledged at"),
    ("acknowledged_by", "確認者", "acknowledged by"),
    ("resolved_at", "解決日時", "resolved at"),
    ("resolved_by", "解決者", "resolved by"),
    ("resolution_note", "解決メモ", "resolution note"),
    ("signal_count", "シグナル数", "signals"),
    ("signal_summary", "シグナルの内訳", "signal summary"),
    ("signals", "シグナル（日時・種類・相手・内容）", "signals (when, what, from whom, detail)"),
]
COLUMNS = {
    ExportKind.placements: PLACEMENT_COLUMNS,
    ExportKind.follow_ups: FOLLOW_UP_COLUMNS,
    ExportKind.crisis_flags: CRISIS_COLUMNS,
}


def header(kind: ExportKind, language: str) -> list[str]:
    i = 1 if language == "ja" else 2
    return [c[i] for c in COLUMNS[kind]]


# -- cells ---------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value) -> object:
    """A cell as written: text that a spreadsheet would run as a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class _Ctx:
    office: Office
    language: str
    tz: ZoneInfo

    def at(self, instant: datetime | None) -> str:
        if instant is None:
            return ""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        return instant.astimezone(self.tz).strftime("%Y-%m-%d %H:%M")


# -- the queries, one batch at a time -----------------------------------------------------------


def _placement_batches(session: Session, ctx: _Ctx, *, as_of: date, date_from, date_to, batch: int):
    office_id = ctx.office.id
    # The end as the reports read it (the placement's own, migration 0017); the separation row
    # is joined for its reason.
    known_end = sa.case((col(Placement.separated_on) <= as_of, col(Placement.separated_on)), else_=sa.null())
    marks = []
    for n in MONTHS:
        eligible, retained = retained_at(col(Placement.start_date), known_end, months=n, as_of=as_of)
        marks += [sa.case((eligible, 1), else_=0), sa.case((retained, 1), else_=0)]
    query = (
        select(Placement, Client, Employer, StaffUser, Separation, *marks)
        .join(Client, sa.and_(Client.id == Placement.client_id, Client.office_id == office_id))
        .outerjoin(Employer, sa.and_(Employer.id == Placement.employer_id, Employer.office_id == office_id))
        .outerjoin(StaffUser, sa.and_(StaffUser.id == Placement.worker_id, StaffUser.office_id == office_id))
        .outerjoin(
            Separation, sa.and_(Separation.placement_id == Placement.id, Separation.office_id == office_id)
        )  # fmt: skip
        .where(Placement.office_id == office_id)
    )
    if date_from is not None:
        query = query.where(Placement.start_date >= date_from)
    if date_to is not None:
        query = query.where(Placement.start_date <= date_to)
    last = 0
    while True:
        rows = session.exec(query.where(Placement.id > last).order_by(Placement.id).limit(batch)).all()
        if not rows:
            return
        last = rows[-1][0].id
        yield [_placement_row(ctx, as_of, r) for r in rows]


def _placement_row(ctx: _Ctx, as_of: date, r) -> list:
    p, c, e, w, s, *flags = r
    lang = ctx.language
    statuses = []
    for i in range(len(MONTHS)):
        eligible, retained = flags[2 * i], flags[2 * i + 1]
        key = "immature" if not eligible else ("retained" if retained else "not_retained")
        statuses.append(_word(f"retention.{key}", lang))
    return [
        p.id, c.ref, c.name, _enum(c.category, "category", lang), e.name if e else "", p.job_title,
        _enum(p.employment_type, "employment_type", lang), w.name if w else "", p.start_date.isoformat(),
        _enum(p.status, "placement_status", lang), s.date.isoformat() if s else "",
        s.reason.value if s else "", *statuses, as_of.isoformat(),
    ]  # fmt: skip


def _follow_up_batches(session: Session, ctx: _Ctx, *, date_from, date_to, batch: int, **_):
    office_id = ctx.office.id
    ids = select(FollowUp.id).where(FollowUp.office_id == office_id)
    if date_from is not None:
        ids = ids.where(FollowUp.due_date >= date_from)
    if date_to is not None:
        ids = ids.where(FollowUp.due_date <= date_to)
    last = 0
    while True:
        page = list(session.exec(ids.where(FollowUp.id > last).order_by(FollowUp.id).limit(batch)).all())
        if not page:
            return
        last = page[-1]
        rows = session.exec(
            select(FollowUp, Placement, Client, StaffUser, Outcome)
            .join(Placement, sa.and_(Placement.id == FollowUp.placement_id, Placement.office_id == office_id))
            .join(Client, sa.and_(Client.id == Placement.client_id, Client.office_id == office_id))
            .outerjoin(StaffUser, sa.and_(StaffUser.id == FollowUp.assignee_id, StaffUser.office_id == office_id))
            .outerjoin(Outcome, sa.and_(Outcome.follow_up_id == FollowUp.id, Outcome.office_id == office_id))
            .where(col(FollowUp.id).in_(page), FollowUp.office_id == office_id)
            .order_by(FollowUp.id, Outcome.id)
        ).all()
        yield [_follow_up_row(ctx, r) for r in rows]


def _follow_up_row(ctx: _Ctx, r) -> list:
    f, p, c, w, o = r
    lang = ctx.language
    outcome = [""] * 11
    if o is not None:
        outcome = [
            o.id, ctx.at(o.recorded_at), o.source, _yes_no(o.reached, lang),
            _enum(o.still_employed, "still_employed", lang), o.wellbeing if o.wellbeing is not None else "",
            " / ".join(label(s, "crisis_signal", lang) for s in o.risk_signals), _yes_no(o.late, lang),
            _enum(o.reply_class, "reply_class", lang) if o.reply_class else "", o.reply_reason, o.note,
        ]  # fmt: skip
    return [
        f.id, p.id, c.ref, c.name, _enum(f.party, "party", lang), _enum(f.channel, "channel", lang),
        _enum(f.kind, "kind", lang), f.attempt, _yes_no(f.automated, lang), f.due_date.isoformat(),
        f.window_end.isoformat(), _enum(f.status, "follow_up_status", lang), f.status_reason,
        w.name if w else "", ctx.at(f.completed_at), *outcome,
    ]  # fmt: skip


def _local_day_start(ctx: _Ctx, day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ctx.tz).astimezone(UTC)


def _crisis_batches(session: Session, ctx: _Ctx, *, date_from, date_to, batch: int, **_):
    office_id = ctx.office.id
    staff = {
        u.id: u.name
        for u in session.exec(select(StaffUser).where(StaffUser.office_id == office_id).order_by(StaffUser.id)).all()
    }
    query = (
        select(CrisisFlag, Client)
        .join(Client, sa.and_(Client.id == CrisisFlag.client_id, Client.office_id == office_id))
        .where(CrisisFlag.office_id == office_id)
    )
    if date_from is not None:
        query = query.where(CrisisFlag.opened_at >= _local_day_start(ctx, date_from))
    if date_to is not None:
        query = query.where(CrisisFlag.opened_at < _local_day_start(ctx, date_to + timedelta(days=1)))
    last = 0
    while True:
        rows = session.exec(query.where(CrisisFlag.id > last).order_by(CrisisFlag.id).limit(batch)).all()
        if not rows:
            return
        last = rows[-1][0].id
        signals: dict[int, list[CrisisSignal]] = {}
        for s in session.exec(
            select(CrisisSignal)
            .where(col(CrisisSignal.flag_id).in_([f.id for f, _ in rows]), CrisisSignal.office_id == office_id)
            .order_by(CrisisSignal.occurred_at, CrisisSignal.id)
        ).all():
            signals.setdefault(s.flag_id, []).append(s)
        yield [_crisis_row(ctx, staff, f, c, signals.get(f.id, [])) for f, c in rows]


def _crisis_row(ctx: _Ctx, staff: dict[int, str], f: CrisisFlag, c: Client, signals: list[CrisisSignal]) -> list:
    lang = ctx.language
    counts: dict[str, int] = {}
    for s in signals:
        name = label(s.kind, "crisis_signal", lang)
        counts[name] = counts.get(name, 0) + 1
    summary = ", ".join(f"{name} ×{n}" for name, n in counts.items())
    details = " | ".join(
        f"{ctx.at(s.occurred_at)} {label(s.kind, 'crisis_signal', lang)} ({label(s.source_party, 'party', lang)})"
        + (f": {s.detail}" if s.detail else "")
        for s in signals
    )
    return [
        f.id, f.placement_id, c.ref, c.name, label(f.severity, "crisis_severity", lang),
        label(f.status, "crisis_status", lang), staff.get(f.owner_id, ""), ctx.at(f.opened_at),
        ctx.at(f.acknowledged_at), staff.get(f.acknowledged_by, ""), ctx.at(f.resolved_at),
        staff.get(f.resolved_by, ""), f.resolution_note, len(signals), summary, details,
    ]  # fmt: skip


_BATCHES = {
    ExportKind.placements: _placement_batches,
    ExportKind.follow_ups: _follow_up_batches,
    ExportKind.crisis_flags: _crisis_batches,
}


# -- the export ------------------------------------------------------------------------------


def check_request(*, language: str, date_from: date | None, date_to: date | None) -> None:
    """Refuse a bad request before the first byte is streamed (a 422, not a broken file)."""
    if language not in LANGUAGES:
        raise ValidationFailed.one("lang", "must be ja or en")
    if date_from is not None and date_to is not None and date_from > date_to:
        raise ValidationFailed.one("from", "must be on or before 'to'")


def _one_snapshot(session: Session) -> None:
    """Every batch reads the database as it was when the export began, so the file is one consistent
    picture (a separation recorded meanwhile cannot show in one row and be missing from another).
    PostgreSQL: a read-only REPEATABLE READ transaction. SQLite (WAL): an explicit deferred BEGIN
    (the driver starts none for reads), whose first read fixes the snapshot until the session closes."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
    else:
        session.connection().exec_driver_sql("BEGIN")


def export_csv(
    factory: sessionmaker[Session],
    kind: ExportKind,
    *,
    office_id: int,
    as_of: date,
    language: str = "ja",
    date_from: date | None = None,
    date_to: date | None = None,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """The export as text chunks: the BOM and header first, then one chunk per batch of rows.

    Opens its own session (a streamed response outlives the request's session). Batches follow
    the id order (keyset), so a row added meanwhile is either in the file once or not at all,
    never twice. ``progress`` is told the number of rows written so far after each batch."""
    check_request(language=language, date_from=date_from, date_to=date_to)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    with factory() as session:
        _one_snapshot(session)
        office = session.get(Office, office_id)
        if office is None:
            raise NotFound("office")
        ctx = _Ctx(office=office, language=language, tz=ZoneInfo(office.timezone))
        writer.writerow(header(kind, language))
        yield BOM + buf.getvalue()
        written = 0
        for rows in _BATCHES[kind](
            session, ctx, as_of=as_of, date_from=date_from, date_to=date_to, batch=batch
        ):  # fmt: skip
            buf.seek(0)
            buf.truncate()
            writer.writerows([safe_cell(v) for v in row] for row in rows)
            written += len(rows)
            if progress is not None:
                progress(written)
            yield buf.getvalue()


def filename(kind: ExportKind, office: Office, as_of: date) -> str:
    return f"{kind.value}-office{office.id}-{as_of.isoformat()}.csv"
