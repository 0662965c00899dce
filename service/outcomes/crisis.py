"""Crisis flags: early intervention (孤立防止・危機介入).

Signals, rules, flags:

- A **signal** is one thing noticed about a placement: a risk signal a worker recorded on an
  outcome, an unreachable client, a wellbeing drop, an employer's report of trouble, a reply
  classed urgent or emergency, a missed program session, a discordance between the employer's
  and the client's accounts. Every signal is stored (``crisis_signal``) with what it is, from
  whom, when and where it came from (``source``: ``"outcome:123"``).
- The **rules** (``config/crisis_rules.toml``, validated at start-up by ``load_crisis_rules``) say
  which signals, how many within what window, give which severity: watch, urgent, emergency.
- A **flag** gathers the signals of one placement while it is open. There is at most one open
  (open or acknowledged) flag per placement: a new signal joins it and may raise its severity,
  never lower it, never open a second one. A signal no rule fires on, with no open flag, stays
  on its own (``flag_id`` None) and still counts towards a rule's ``min_count`` later.
  Once a flag is resolved its signals count no more: the next signal starts afresh.
- Raising the severity of an acknowledged flag opens it again: someone must take on the new
  severity (``escalated_at`` says when it reached it).
- **urgent**: a crisis call (phone the client, assigned to the placement's worker) due the same
  business day in the office's calendar, at the top of the worker's queue; one open crisis call
  per flag. Reaching the client on it does not resolve the flag: a person decides that.
- **emergency**: one ``crisis_alert`` row per person to tell at once (the placement's worker and
  the office's managers), for every signal that fires an emergency rule, unless the flag's
  previous alert is still undelivered (a burst of messages alerts once). Delivering them
  (e-mail, SMS where configured) is the messaging side's work: it reads ``pending_alerts``,
  builds the text with ``alert_message`` (which says what to do) and calls
  ``mark_alert_delivered``.
- Unreachable family or employer contacts are not a crisis of the client: only an unreachable
  client gives an ``unreachable`` signal.
- Time to acknowledge is measured from ``escalated_at`` (the response to the severity that
  needed answering); time to resolve from ``opened_at``.

Entry points: ``on_outcome`` (called by ``record_outcome``), ``raise_signal`` (messaging, the
post-employment program), ``acknowledge_flag``, ``resolve_flag``, ``list_flags``, ``get_flag``,
``flag_measures``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import bindparam, case, extract, func, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col, select

from service.accounts.models import Office, Role
from service.clock import Clock
from service.contacts import service as contacts
from service.contacts.models import (
    Channel,
    Client,
    FollowUp,
    FollowUpKind,
    FollowUpStatus,
    Party,
    Placement,
)
from service.db import UTCDateTime, utcnow
from service.errors import Conflict, NotFound, ValidationFailed
from service.i18n import label
from service.outcomes.models import (
    CrisisAlert,
    CrisisFlag,
    CrisisSeverity,
    CrisisSignal,
    CrisisSignalKind,
    CrisisSignalParty,
    CrisisStatus,
    Outcome,
    RiskSignal,
)

Kind = CrisisSignalKind
OPEN_STATUSES = (CrisisStatus.open, CrisisStatus.acknowledged)
# An employer's report of these is an employer_* signal, and the ground for a discordance.
_EMPLOYER_KINDS = {
    RiskSignal.absence.value: Kind.employer_absence,
    RiskSignal.lateness.value: Kind.employer_lateness,
    RiskSignal.conflict.value: Kind.employer_conflict,
}
EMPLOYER_TROUBLE = frozenset(_EMPLOYER_KINDS.values())
DETAIL_MAX = 500
WELLBEING_TOP = 5  # the scale of Outcome.wellbeing: 1 (very bad) to 5 (very good)


# ================================================================ rules


class CrisisRuleError(Exception):
    """Every problem found in the crisis rules, each naming the file, the rule and the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class CrisisRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    description: str = ""
    signals: tuple[str, ...] = Field(min_length=1)
    min_count: int = Field(default=1, ge=1, le=100)
    window_days: int | None = Field(default=None, ge=1, le=366)
    severity: CrisisSeverity

    @field_validator("signals")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        known = {k.value for k in Kind}
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise ValueError(
                f"unknown signal kind {', '.join(map(repr, unknown))}; known: {', '.join(k.value for k in Kind)}"
            )
        return tuple(dict.fromkeys(kinds))

    @model_validator(mode="after")
    def _window_for_counts(self) -> CrisisRule:
        if self.min_count > 1 and self.window_days is None:
            raise ValueError("window_days: a rule with min_count above 1 needs a window_days")
        return self


class Guidance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ja: str = Field(min_length=1)
    en: str = Field(min_length=1)


class CrisisRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    discordance_days: int = Field(default=14, ge=1, le=90)
    wellbeing_drop_points: int = Field(default=2, ge=1, le=4)
    what_to_do: dict[CrisisSeverity, Guidance]
    rules: tuple[CrisisRule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> CrisisRules:
        names = [r.name for r in self.rules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rules: rule names must be unique: {', '.join(dupes)}")
        needed = {r.severity for r in self.rules} | {CrisisSeverity.emergency}
        if missing := [s.value for s in CrisisSeverity if s in needed and s not in self.what_to_do]:
            raise ValueError(f"what_to_do: say what to do for {', '.join(missing)}")
        return self

    def guidance(self, severity: CrisisSeverity, language: str) -> str | None:
        g = self.what_to_do.get(severity)
        return None if g is None else (g.ja if language == "ja" else g.en)


def _describe(path: Path, data: Any, err: dict) -> str:
    loc = list(err["loc"])
    where = []
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        i = loc[1]
        raw = data.get("rules") if isinstance(data, dict) else None
        name = raw[i].get("name") if isinstance(raw, list) and i < len(raw) and isinstance(raw[i], dict) else None
        where.append(f"rule {i + 1}" + (f" ({name!r})" if isinstance(name, str) else ""))
        loc = loc[2:]
    msg = err["msg"].removeprefix("Value error, ")
    field_name, sep, rest = msg.partition(": ")
    if not loc and sep and " " not in field_name:  # a model validator named its field
        loc, msg = [field_name], rest
    if loc:
        where.append(f"field {'.'.join(str(p) for p in loc)!r}")
    return f"{path}: {', '.join(where) or 'rules'}: {msg}"


def load_crisis_rules(path: Path) -> CrisisRules:
    """The rules in ``path``, or a ``CrisisRuleError`` naming file, rule and field of every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CrisisRuleError([f"{path}: cannot be read as UTF-8 text: {exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise CrisisRuleError([f"{path}: not valid TOML: {exc or 'nested too deeply'}"]) from exc
    try:
        return CrisisRules.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(len(e["loc"]) >= 2 and e["loc"][0] == "rules" for e in errors):
            # pydantic also counts the invalid rules out and says "at least 1 item": noise.
            errors = [e for e in errors if (tuple(e["loc"]), e["type"]) != (("rules",), "too_short")]
        raise CrisisRuleError([_describe(path, data, e) for e in errors]) from exc


_RULES_KEY = "crisis_rules"


def use_rules(factory: sessionmaker[Session], rules: CrisisRules) -> None:
    """Every session the factory makes carries these rules (the app's lifespan calls this), so
    operations reached from routes, jobs and the CLI alike evaluate the deployment's rules."""
    info = dict(factory.kw.get("info") or {})
    info[_RULES_KEY] = rules
    factory.configure(info=info)


@lru_cache(maxsize=4)
def _rules_at(path: Path) -> CrisisRules:
    return load_crisis_rules(path)


def rules_for(session: Session) -> CrisisRules:
    """The session's rules, else the deployment's ``config/crisis_rules.toml`` (for sessions
    made outside the app, e.g. by a CLI command)."""
    rules = session.info.get(_RULES_KEY)
    if rules is None:
        from service.settings import get_settings

        rules = _rules_at(get_settings().config_dir / "crisis_rules.toml")
    return rules


# ================================================================ signals


@dataclass
class NewSignal:
    kind: Kind
    party: CrisisSignalParty
    detail: str | None = None


def _clip(text: str | None) -> str | None:
    if not text:
        return None
    text = text.strip()
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def _client_says_fine(o: Outcome) -> bool:
    return o.reached and not o.risk_signals and (o.wellbeing is None or o.wellbeing >= 4)


def on_outcome(session: Session, *, outcome: Outcome, clock: Clock) -> CrisisFlag | None:
    """Turn a recorded outcome into signals and apply the rules. Called by ``record_outcome``
    once the outcome is flushed; returns the placement's open flag, if any.

    - risk signals: as recorded; from the employer, absence/lateness/conflict become
      employer_absence/employer_lateness/employer_conflict;
    - not reached after the retries: ``unreachable`` when the party is the client (the
      ``isolation`` the system adds to such an outcome is not counted twice);
    - a client's wellbeing ``wellbeing_drop_points`` or more below their previous answer;
    - a discordance between the employer's and the client's accounts (``_discordance_*``).
    """
    rules = rules_for(session)
    party = CrisisSignalParty(outcome.party.value)
    note = _clip(outcome.note)
    new: list[NewSignal] = []
    if outcome.unreachable and outcome.party == Party.client:
        new.append(NewSignal(Kind.unreachable, party, f"not reached by {outcome.channel.value} after the retries"))
    for s in outcome.risk_signals:
        if outcome.unreachable and s == RiskSignal.isolation.value:
            continue
        if outcome.party == Party.employer and s in _EMPLOYER_KINDS:
            new.append(NewSignal(_EMPLOYER_KINDS[s], party, note))
        else:
            new.append(NewSignal(Kind(s), party, note))
    # A drop needs a previous answer ``wellbeing_drop_points`` above this one, on a scale up to
    # WELLBEING_TOP: from near the top no drop is possible, and nothing needs reading.
    if (
        outcome.party == Party.client
        and outcome.reached
        and outcome.wellbeing is not None
        and outcome.wellbeing + rules.wellbeing_drop_points <= WELLBEING_TOP
    ):
        prev = session.exec(
            _PREVIOUS_WELLBEING,
            params={"placement_id": outcome.placement_id, "outcome_id": outcome.id, "at": outcome.recorded_at},
        ).first()
        if prev is not None and prev.wellbeing - outcome.wellbeing >= rules.wellbeing_drop_points:
            new.append(NewSignal(Kind.wellbeing_drop, party, f"wellbeing {prev.wellbeing} → {outcome.wellbeing}"))
    if any(n.kind in EMPLOYER_TROUBLE for n in new):
        discordance = _discordance_after_employer(session, outcome.placement_id, outcome.recorded_at, rules, outcome.id)
    elif outcome.party == Party.client and _client_says_fine(outcome):
        discordance = _discordance_after_client(session, outcome, rules)
    else:
        discordance = None
    if discordance:
        new.append(NewSignal(Kind.discordance, CrisisSignalParty.system, discordance))
    if not new:
        return None
    return _apply(
        session,
        placement=session.get(Placement, outcome.placement_id),
        signals=new,
        source=f"outcome:{outcome.id}",
        recorded_by=outcome.recorded_by,
        at=outcome.recorded_at,
        clock=clock,
        rules=rules,
    )


def raise_signal(
    session: Session,
    *,
    placement_id: int,
    kind: CrisisSignalKind | str,
    source_party: CrisisSignalParty | str,
    source: str,
    detail: str | None,
    clock: Clock,
    recorded_by: int | None = None,
    rules: CrisisRules | None = None,
) -> CrisisFlag | None:
    """A signal from elsewhere in the system: a reply classed ``reply_urgent`` or
    ``reply_emergency`` (messaging), a ``missed_session`` (the program), an employer's report.
    ``source`` names where it came from ("reply:45"). Returns the placement's open flag, if any.
    An employer_* signal is also checked for a discordance with the client's latest answer."""
    if kind not in {k.value for k in Kind}:
        raise ValidationFailed.one("kind", f"unknown signal kind {kind!r}")
    if source_party not in {p.value for p in CrisisSignalParty}:
        raise ValidationFailed.one("source_party", f"unknown party {source_party!r}")
    kind, party = Kind(kind), CrisisSignalParty(source_party)
    placement = session.get(Placement, placement_id)
    if placement is None:
        raise NotFound("placement")
    rules = rules or rules_for(session)
    at = clock.now()
    new = [NewSignal(kind, party, _clip(detail))]
    if kind in EMPLOYER_TROUBLE and (d := _discordance_after_employer(session, placement_id, at, rules, None)):
        new.append(NewSignal(Kind.discordance, CrisisSignalParty.system, d))
    return _apply(
        session,
        placement=placement,
        signals=new,
        source=source[:64],
        recorded_by=recorded_by,
        at=at,
        clock=clock,
        rules=rules,
    )


# Built once (bind parameters): every answer a client sends goes through one of these.
_AT = bindparam("at", type_=UTCDateTime())
_WINDOW_START = bindparam("window_start", type_=UTCDateTime())
_PREVIOUS_WELLBEING = (
    select(Outcome)
    .where(
        Outcome.placement_id == bindparam("placement_id"),
        Outcome.party == Party.client,
        Outcome.reached == True,  # noqa: E712
        col(Outcome.wellbeing).is_not(None),
        Outcome.id != bindparam("outcome_id"),
        Outcome.recorded_at <= _AT,
    )
    .order_by(col(Outcome.recorded_at).desc(), col(Outcome.id).desc())
    .limit(1)
)
_CLIENT_PREVIOUS_ANSWER = (
    select(func.max(Outcome.recorded_at))
    .where(
        Outcome.placement_id == bindparam("placement_id"),
        Outcome.party == Party.client,
        Outcome.reached == True,  # noqa: E712
        Outcome.id != bindparam("outcome_id"),
        Outcome.recorded_at <= _AT,
    )
    .scalar_subquery()
)
# The employer's latest report of trouble since the later of the window's start and the client's
# previous answer, in one query.
_TROUBLE_SINCE_CLIENT = (
    select(CrisisSignal)
    .where(
        CrisisSignal.placement_id == bindparam("placement_id"),
        col(CrisisSignal.kind).in_(sorted(EMPLOYER_TROUBLE)),
        CrisisSignal.occurred_at >= _WINDOW_START,
        CrisisSignal.occurred_at >= func.coalesce(_CLIENT_PREVIOUS_ANSWER, _WINDOW_START),
        CrisisSignal.occurred_at <= _AT,
    )
    .order_by(col(CrisisSignal.occurred_at).desc(), col(CrisisSignal.id).desc())
    .limit(1)
)


# ---------------------------------------------------------------- discordance
# The employer reports trouble while the client's own account says all is well (reached, no risk
# signals, wellbeing 4 or more or not asked). Checked whichever account comes second.


def _discordance_after_employer(
    session: Session, placement_id: int, at: datetime, rules: CrisisRules, outcome_id: int | None
) -> str | None:
    """The employer has just reported trouble: does the client's latest answer say all is well?"""
    query = select(Outcome).where(
        Outcome.placement_id == placement_id,
        Outcome.party == Party.client,
        Outcome.reached == True,  # noqa: E712
        Outcome.recorded_at >= at - timedelta(days=rules.discordance_days),
        Outcome.recorded_at <= at,
    )
    if outcome_id is not None:
        query = query.where(Outcome.id != outcome_id)
    latest = session.exec(query.order_by(col(Outcome.recorded_at).desc(), col(Outcome.id).desc())).first()
    if latest is None or not _client_says_fine(latest):
        return None
    return (
        f"the employer reports trouble; the client said all is well on "
        f"{latest.recorded_at:%Y-%m-%d %H:%M} UTC (outcome:{latest.id}, wellbeing {latest.wellbeing or '-'})"
    )


def _discordance_after_client(session: Session, outcome: Outcome, rules: CrisisRules) -> str | None:
    """The client has just said all is well: did the employer report trouble since the client's
    previous answer (within the window), not since taken back by a trouble-free employer report?"""
    at = outcome.recorded_at
    trouble = session.exec(
        _TROUBLE_SINCE_CLIENT,
        params={
            "placement_id": outcome.placement_id,
            "outcome_id": outcome.id,
            "at": at,
            "window_start": at - timedelta(days=rules.discordance_days),
        },
    ).first()
    if trouble is None:
        return None
    employer_outcomes = session.exec(
        select(Outcome).where(
            Outcome.placement_id == outcome.placement_id,
            Outcome.party == Party.employer,
            Outcome.reached == True,  # noqa: E712
            Outcome.recorded_at > trouble.occurred_at,
            Outcome.recorded_at <= at,
        )
    ).all()
    if any(not (set(o.risk_signals) & set(_EMPLOYER_KINDS)) for o in employer_outcomes):
        return None  # the employer has since said all is well again
    return (
        f"the client says all is well; the employer reported {trouble.kind.value.removeprefix('employer_')} "
        f"on {trouble.occurred_at:%Y-%m-%d %H:%M} UTC ({trouble.source})"
    )


# ---------------------------------------------------------------- applying the rules


def _open_flag(session: Session, placement_id: int) -> CrisisFlag | None:
    return session.exec(
        select(CrisisFlag)
        .where(CrisisFlag.placement_id == placement_id, col(CrisisFlag.status).in_(list(OPEN_STATUSES)))
        .with_for_update()  # PostgreSQL: two signals at once raise the severity one after the other
    ).first()


def _fired(
    rules: CrisisRules, new: list[CrisisSignal], candidates: list[CrisisSignal], at: datetime
) -> tuple[CrisisSeverity | None, list[CrisisSignal]]:
    """The highest severity the new signals fire, and the signals that made those rules fire."""
    severity, evidence = None, []
    for rule in rules.rules:
        if not any(s.kind.value in rule.signals for s in new):
            continue
        if rule.min_count == 1:
            hits = [s for s in new if s.kind.value in rule.signals]
        else:
            since = at - timedelta(days=rule.window_days)
            hits = [s for s in candidates if s.kind.value in rule.signals and s.occurred_at >= since]
            if len({s.source for s in hits}) < rule.min_count:
                continue
        evidence.extend(hits)
        if severity is None or rule.severity.rank > severity.rank:
            severity = rule.severity
    return severity, evidence


def _apply(
    session: Session,
    *,
    placement: Placement,
    signals: list[NewSignal],
    source: str,
    recorded_by: int | None,
    at: datetime,
    clock: Clock,
    rules: CrisisRules,
) -> CrisisFlag | None:
    flag = _open_flag(session, placement.id)
    rows = [
        CrisisSignal(
            flag_id=flag.id if flag else None,
            office_id=placement.office_id,
            placement_id=placement.id,
            kind=s.kind,
            source_party=s.party,
            source=source,
            detail=s.detail,
            occurred_at=at,
            recorded_by=recorded_by,
        )
        for s in signals
    ]
    session.add_all(rows)
    session.flush()
    longest = max((r.window_days or 0 for r in rules.rules), default=0)
    candidates = list(
        session.exec(
            select(CrisisSignal).where(
                CrisisSignal.placement_id == placement.id,
                CrisisSignal.occurred_at >= at - timedelta(days=longest),
                (col(CrisisSignal.flag_id).is_(None)) | (CrisisSignal.flag_id == (flag.id if flag else -1)),
            )
        ).all()
    )
    severity, evidence = _fired(rules, rows, candidates, at)
    if flag is None and severity is None:
        return None  # noted; it may count towards a rule later
    if flag is None:
        flag = _open(session, placement=placement, severity=severity, at=at)
    elif severity is not None:
        _raise_severity(flag, severity, at)
    for s in {id(s): s for s in [*rows, *evidence]}.values():
        if s.flag_id is None:
            s.flag_id = flag.id
            session.add(s)
    session.add(flag)
    session.flush()
    if severity is not None and severity.rank >= CrisisSeverity.urgent.rank:
        _ensure_crisis_call(session, flag=flag, placement=placement, clock=clock)
    if severity == CrisisSeverity.emergency and not _alert_pending(session, flag.id):
        _alert(session, flag=flag, placement=placement, at=at)
    return flag


def _alert_pending(session: Session, flag_id: int) -> bool:
    """An alert of the flag not delivered yet: a burst of emergency signals alerts once."""
    return (
        session.exec(
            select(CrisisAlert.id).where(CrisisAlert.flag_id == flag_id, col(CrisisAlert.delivered_at).is_(None))
        ).first()
        is not None
    )


def _raise_severity(flag: CrisisFlag, severity: CrisisSeverity, at: datetime) -> None:
    """Raise, never lower. An acknowledged flag opens again: the new severity needs taking on."""
    if severity.rank <= flag.severity.rank:
        return
    flag.severity, flag.escalated_at = severity, at
    if flag.status == CrisisStatus.acknowledged:
        flag.status, flag.acknowledged_at, flag.acknowledged_by = CrisisStatus.open, None, None


def _open(session: Session, *, placement: Placement, severity: CrisisSeverity, at: datetime) -> CrisisFlag:
    """A new flag; if another transaction opened one for the placement meanwhile (the partial
    unique index says so), join that one instead."""
    flag = CrisisFlag(
        office_id=placement.office_id,
        placement_id=placement.id,
        client_id=placement.client_id,
        severity=severity,
        owner_id=placement.worker_id,
        opened_at=at,
        escalated_at=at,
    )
    try:
        with session.begin_nested():
            session.add(flag)
            session.flush()
        return flag
    except IntegrityError:
        other = _open_flag(session, placement.id)
        if other is None:
            raise
        _raise_severity(other, severity, at)
        return other


def _crisis_call_open(session: Session, follow_up_id: int) -> bool:
    """The crisis call, or a retry of it, is still to be made."""
    return (
        session.exec(
            select(FollowUp.id).where(
                (FollowUp.id == follow_up_id) | (FollowUp.retry_of == follow_up_id),
                FollowUp.status == FollowUpStatus.pending,
            )
        ).first()
        is not None
    )


def _ensure_crisis_call(session: Session, *, flag: CrisisFlag, placement: Placement, clock: Clock) -> FollowUp | None:
    """Phone the client the same business day (today if the office is open, else the next)."""
    if flag.crisis_follow_up_id is not None and _crisis_call_open(session, flag.crisis_follow_up_id):
        return None
    office = session.get(Office, placement.office_id)
    due = contacts.office_calendar(office).on_or_after(contacts.office_today(office, clock))
    call = FollowUp(
        office_id=placement.office_id,
        placement_id=placement.id,
        party=Party.client,
        channel=Channel.phone,
        kind=FollowUpKind.crisis_call,
        due_date=due,
        window_days=0,
        window_end=due,
        assignee_id=placement.worker_id,
    )
    session.add(call)
    session.flush()
    flag.crisis_follow_up_id = call.id
    session.add(flag)
    session.flush()
    return call


def _alert(session: Session, *, flag: CrisisFlag, placement: Placement, at: datetime) -> list[CrisisAlert]:
    managers = contacts.staff_in_office(session, office_id=placement.office_id, roles=[Role.manager])
    recipients = dict.fromkeys([placement.worker_id, *(m.id for m in managers)])
    alerts = [
        CrisisAlert(office_id=flag.office_id, flag_id=flag.id, recipient_id=r, severity=flag.severity, created_at=at)
        for r in recipients
    ]
    session.add_all(alerts)
    session.flush()
    return alerts


# ================================================================ alerts (delivered by messaging)


@dataclass(frozen=True)
class AlertMessage:
    subject: str
    body: str


def pending_alerts(session: Session, *, limit: int = 100) -> list[CrisisAlert]:
    """Alerts not delivered yet, oldest first."""
    return list(
        session.exec(
            select(CrisisAlert)
            .where(col(CrisisAlert.delivered_at).is_(None))
            .order_by(CrisisAlert.created_at, CrisisAlert.id)
            .limit(limit)
        ).all()
    )


def mark_alert_delivered(session: Session, *, alert_id: int, at: datetime) -> bool:
    """Claim-and-mark in one conditional UPDATE: False if it was already delivered."""
    result = session.exec(
        update(CrisisAlert)
        .where(CrisisAlert.id == alert_id, col(CrisisAlert.delivered_at).is_(None))
        .values(delivered_at=at)
    )
    return (result.rowcount or 0) == 1


def alert_message(session: Session, *, alert: CrisisAlert, language: str = "ja") -> AlertMessage:
    """What the alert says: who, why (the flag's signals), how to reach the client, what to do."""
    flag = session.get(CrisisFlag, alert.flag_id)
    client = session.get(Client, flag.client_id)
    office = session.get(Office, flag.office_id)
    zone = ZoneInfo(office.timezone)
    signals = session.exec(
        select(CrisisSignal).where(CrisisSignal.flag_id == flag.id).order_by(CrisisSignal.occurred_at, CrisisSignal.id)
    ).all()
    sev = label(flag.severity, "crisis_severity", language)
    what = rules_for(session).guidance(flag.severity, language) or ""
    lines = [
        f"- {s.occurred_at.astimezone(zone):%Y-%m-%d %H:%M} {label(s.kind, 'crisis_signal', language)}"
        f" ({label(s.source_party, 'party', language)})" + (f": {s.detail}" if s.detail else "")
        for s in signals
    ]
    if language == "ja":
        subject = f"【{sev}】{client.name}さん：危機対応フラグ #{flag.id}"
        body = [
            f"{client.name}さんに{sev}の危機対応フラグが立ちました（フラグ #{flag.id}）。",
            f"電話: {client.phone or '登録なし'}",
            "",
            "対応すること:",
            what,
            "",
            "理由（シグナル）:",
            *lines,
        ]
    else:
        subject = f"[{sev}] {client.name}: crisis flag #{flag.id}"
        body = [
            f"A crisis flag of severity {sev} is open for {client.name} (flag #{flag.id}).",
            f"Phone: {client.phone or 'none on record'}",
            "",
            "What to do:",
            what,
            "",
            "Why (signals):",
            *lines,
        ]
    return AlertMessage(subject, "\n".join(body))


# ================================================================ the flag's life


def get_flag(session: Session, *, office_id: int, flag_id: int) -> CrisisFlag:
    flag = session.get(CrisisFlag, flag_id)
    if flag is None or flag.office_id != office_id:
        raise NotFound("crisis flag")
    return flag


def flag_signals(session: Session, *, flag_id: int) -> list[CrisisSignal]:
    return list(
        session.exec(
            select(CrisisSignal)
            .where(CrisisSignal.flag_id == flag_id)
            .order_by(CrisisSignal.occurred_at, CrisisSignal.id)
        ).all()
    )


def flag_alerts(session: Session, *, flag_id: int) -> list[CrisisAlert]:
    return list(session.exec(select(CrisisAlert).where(CrisisAlert.flag_id == flag_id).order_by(CrisisAlert.id)).all())


def acknowledge_flag(session: Session, *, office_id: int, flag_id: int, user_id: int, clock: Clock) -> CrisisFlag:
    """Someone has taken the flag on. The flag stays until resolved."""
    flag = get_flag(session, office_id=office_id, flag_id=flag_id)
    if flag.status != CrisisStatus.open:
        raise Conflict(f"this crisis flag is already {flag.status.value}")
    flag.status, flag.acknowledged_at, flag.acknowledged_by = CrisisStatus.acknowledged, clock.now(), user_id
    session.add(flag)
    session.flush()
    return flag


def resolve_flag(
    session: Session, *, office_id: int, flag_id: int, user_id: int, note: str, clock: Clock
) -> CrisisFlag:
    """A person decides the crisis is over, and says how. Resolving an unacknowledged flag also
    acknowledges it; a crisis call still to be made is cancelled."""
    flag = get_flag(session, office_id=office_id, flag_id=flag_id)
    if flag.status == CrisisStatus.resolved:
        raise Conflict("this crisis flag is already resolved")
    if not note or not note.strip():
        raise ValidationFailed.one("note", "say how the crisis was resolved")
    now = clock.now()
    if flag.acknowledged_at is None:
        flag.acknowledged_at, flag.acknowledged_by = now, user_id
    flag.status, flag.resolved_at, flag.resolved_by, flag.resolution_note = (
        CrisisStatus.resolved,
        now,
        user_id,
        note.strip(),
    )
    if flag.crisis_follow_up_id is not None:
        for fu in session.exec(
            select(FollowUp).where(
                (FollowUp.id == flag.crisis_follow_up_id) | (FollowUp.retry_of == flag.crisis_follow_up_id),
                FollowUp.status == FollowUpStatus.pending,
            )
        ).all():
            fu.status, fu.status_reason, fu.updated_at = FollowUpStatus.cancelled, "crisis flag resolved", utcnow()
            session.add(fu)
    session.add(flag)
    session.flush()
    return flag


# ================================================================ lists and measures

_STATUS_ORDER = case(
    (CrisisFlag.status == CrisisStatus.open.value, 0),
    (CrisisFlag.status == CrisisStatus.acknowledged.value, 1),
    else_=2,
)
_SEVERITY_ORDER = case(
    (CrisisFlag.severity == CrisisSeverity.emergency.value, 0),
    (CrisisFlag.severity == CrisisSeverity.urgent.value, 1),
    else_=2,
)


@dataclass
class FlagRow:
    flag: CrisisFlag
    client: Client
    signal_count: int
    last_signal_at: datetime | None
    signal_kinds: list[str] = field(default_factory=list)


def list_flags(
    session: Session,
    *,
    office_id: int,
    limit: int,
    offset: int,
    statuses: Iterable[CrisisStatus] = (),
    severities: Iterable[CrisisSeverity] = (),
    owner_id: int | None = None,
    placement_id: int | None = None,
    flag_id: int | None = None,
) -> tuple[list[FlagRow], int]:
    """Open flags first, the most severe first, the longest waiting first."""
    where = [CrisisFlag.office_id == office_id]
    if statuses := list(statuses):
        where.append(col(CrisisFlag.status).in_(statuses))
    if severities := list(severities):
        where.append(col(CrisisFlag.severity).in_(severities))
    if owner_id is not None:
        where.append(CrisisFlag.owner_id == owner_id)
    if placement_id is not None:
        where.append(CrisisFlag.placement_id == placement_id)
    if flag_id is not None:
        where.append(CrisisFlag.id == flag_id)
    total = session.exec(select(func.count()).select_from(CrisisFlag).where(*where)).one()
    rows = session.exec(
        select(CrisisFlag, Client)
        .join(Client, col(Client.id) == CrisisFlag.client_id)
        .where(*where)
        .order_by(_STATUS_ORDER, _SEVERITY_ORDER, CrisisFlag.opened_at, CrisisFlag.id)
        .limit(limit)
        .offset(offset)
    ).all()
    ids = [f.id for f, _ in rows]
    stats: dict[int, tuple[int, datetime | None]] = {}
    kinds: dict[int, list[str]] = {}
    if ids:
        for flag_id, n, last in session.exec(
            select(CrisisSignal.flag_id, func.count(), func.max(CrisisSignal.occurred_at))
            .where(col(CrisisSignal.flag_id).in_(ids))
            .group_by(CrisisSignal.flag_id)
        ).all():
            stats[flag_id] = (n, last)
        for flag_id, kind in session.exec(
            select(CrisisSignal.flag_id, CrisisSignal.kind)
            .where(col(CrisisSignal.flag_id).in_(ids))
            .distinct()
            .order_by(CrisisSignal.flag_id, CrisisSignal.kind)
        ).all():
            kinds.setdefault(flag_id, []).append(Kind(kind).value)
    out = []
    for f, c in rows:
        n, last = stats.get(f.id, (0, None))
        out.append(FlagRow(f, c, n, last, kinds.get(f.id, [])))
    return out, total


@dataclass
class Durations:
    count: int
    median_minutes: float | None
    p90_minutes: float | None


@dataclass
class FlagMeasures:
    as_of: datetime
    opened_from: date | None
    opened_to: date | None
    total: int
    by_severity: dict[str, int]
    by_status: dict[str, int]
    by_severity_and_status: dict[str, dict[str, int]]
    time_to_acknowledge: Durations
    time_to_acknowledge_by_severity: dict[str, Durations]
    time_to_resolve: Durations
    time_to_resolve_by_severity: dict[str, Durations]
    open_by_age: dict[str, int]


AGE_BUCKETS = ("<1d", "1-3d", "3-7d", ">7d")


def _minutes(session: Session, later, earlier):
    """Minutes between two timestamp columns, in SQL: SQLite keeps UTC text, PostgreSQL timestamptz."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 1440.0
    return extract("epoch", later - earlier) / 60.0


def _percentile(sorted_values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (as PostgreSQL's percentile_cont, numpy's default)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    value = sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
    return round(value, 1)


def _durations(values: list[float]) -> Durations:
    values = sorted(max(0.0, float(v)) for v in values)
    return Durations(len(values), _percentile(values, 0.5), _percentile(values, 0.9))


def flag_measures(
    session: Session, *, office_id: int, clock: Clock, opened_from: date | None = None, opened_to: date | None = None
) -> FlagMeasures:
    """Counts by severity and status, open flags by age (as of now), and the time to acknowledge
    (from the flag reaching its present severity) and to resolve (from opening): median and
    90th percentile in minutes. Counts, ages and durations are computed in SQL; only the
    percentiles are picked from the sorted durations. ``opened_from``/``opened_to``: local dates
    of the office, both included, on the flags' opening."""
    office = session.get(Office, office_id)
    zone = ZoneInfo(office.timezone)
    now = clock.now()
    where = [CrisisFlag.office_id == office_id]
    if opened_from is not None:
        where.append(CrisisFlag.opened_at >= datetime.combine(opened_from, time.min, zone))
    if opened_to is not None:
        where.append(CrisisFlag.opened_at < datetime.combine(opened_to + timedelta(days=1), time.min, zone))

    grid = {s.value: {t.value: 0 for t in CrisisStatus} for s in CrisisSeverity}
    for sev, status, n in session.exec(
        select(CrisisFlag.severity, CrisisFlag.status, func.count())
        .where(*where)
        .group_by(CrisisFlag.severity, CrisisFlag.status)
    ).all():
        grid[CrisisSeverity(sev).value][CrisisStatus(status).value] = n

    age = case(
        (CrisisFlag.opened_at > now - timedelta(days=1), AGE_BUCKETS[0]),
        (CrisisFlag.opened_at > now - timedelta(days=3), AGE_BUCKETS[1]),
        (CrisisFlag.opened_at > now - timedelta(days=7), AGE_BUCKETS[2]),
        else_=AGE_BUCKETS[3],
    )
    open_by_age = dict.fromkeys(AGE_BUCKETS, 0)
    for bucket, n in session.exec(
        select(age, func.count()).where(*where, col(CrisisFlag.status).in_(list(OPEN_STATUSES))).group_by(age)
    ).all():
        open_by_age[bucket] = n

    def durations(later, earlier) -> tuple[Durations, dict[str, Durations]]:
        minutes = _minutes(session, later, earlier)
        rows = session.exec(
            select(CrisisFlag.severity, minutes).where(*where, col(later).is_not(None)).order_by(minutes)
        ).all()
        per = {s.value: [] for s in CrisisSeverity}
        for sev, m in rows:
            per[CrisisSeverity(sev).value].append(m)
        return _durations([m for _, m in rows]), {k: _durations(v) for k, v in per.items()}

    ack, ack_by = durations(CrisisFlag.acknowledged_at, CrisisFlag.escalated_at)
    res, res_by = durations(CrisisFlag.resolved_at, CrisisFlag.opened_at)
    return FlagMeasures(
        as_of=now,
        opened_from=opened_from,
        opened_to=opened_to,
        total=sum(sum(v.values()) for v in grid.values()),
        by_severity={s: sum(v.values()) for s, v in grid.items()},
        by_status={t.value: sum(grid[s][t.value] for s in grid) for t in CrisisStatus},
        by_severity_and_status=grid,
        time_to_acknowledge=ack,
        time_to_acknowledge_by_severity=ack_by,
        time_to_resolve=res,
        time_to_resolve_by_severity=res_by,
        open_by_age=open_by_age,
    )
