"""Plan templates (``config/plans/*.toml``): the steps of a follow-up plan, validated at start-up.

A step is an offset from the start date (calendar months, then days), a party, a channel, a
kind, a window in days, whether it is automated and whether it needs the client's consent.
``schedule_steps`` turns a template and a start date into due dates, moving worker tasks to
business days. It touches no database, so the new-placement page can preview the dates.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from service.contacts.models import AUTOMATED_CHANNELS, Channel, FollowUpKind, Party
from service.schedules.calendar import BusinessCalendar, add_months


class PlanError(Exception):
    """Every problem found in the plan templates, each naming file, step and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _incoherent(field: str, message: str) -> NoReturn:
    """A rule across fields is broken; ``field`` is the one to change (named by ``_describe``)."""
    raise PydanticCustomError("incoherent_step", "{message}", {"message": message, "field": field})


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_months: int = Field(default=0, ge=0, le=60)
    offset_days: int = Field(default=0, ge=0, le=1830)
    party: Party
    channel: Channel
    kind: FollowUpKind
    window_days: int = Field(default=3, ge=0, le=60)
    automated: bool = False
    needs_consent: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> Step:
        if self.automated and self.channel not in AUTOMATED_CHANNELS:
            _incoherent(
                "automated",
                f"channel {self.channel.value!r} cannot be automated (sms, email, voice can)",
            )
        if not self.automated and self.channel in (Channel.sms, Channel.voice):
            _incoherent(
                "automated",
                f"channel {self.channel.value!r} is only sent automatically: set automated = true",
            )
        if self.party in (Party.family, Party.employer) and not self.needs_consent:
            _incoherent(
                "needs_consent",
                f"a step to the {self.party.value} needs the client's consent: set needs_consent = true",
            )
        if self.automated and self.party == Party.client and not self.needs_consent:
            _incoherent(
                "needs_consent",
                "automated messages need the client's consent: set needs_consent = true",
            )
        if self.kind == FollowUpKind.three_party_meeting and self.channel != Channel.meeting:
            _incoherent("channel", "a three-party meeting uses channel 'meeting'")
        if self.kind in (FollowUpKind.retry, FollowUpKind.separation_call, FollowUpKind.crisis_call):
            _incoherent("kind", f"kind {self.kind.value!r} is made by the system, not planned")
        return self


class PlanTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    title_ja: str
    title_en: str
    description: str = ""
    steps: tuple[Step, ...] = Field(min_length=1)

    def title(self, language: str) -> str:
        return self.title_ja if language == "ja" else self.title_en


@dataclass(frozen=True)
class ScheduledStep:
    step_index: int
    step: Step
    due_date: date
    window_end: date


def schedule_steps(template: PlanTemplate, start: date, cal: BusinessCalendar) -> list[ScheduledStep]:
    out = []
    for index, step in enumerate(template.steps):
        due = add_months(start, step.offset_months) + timedelta(days=step.offset_days)
        if not step.automated:
            due = cal.on_or_after(due)
        out.append(ScheduledStep(index, step, due, due + timedelta(days=step.window_days)))
    return out


def _describe(path: Path, err: dict) -> str:
    loc = list(err["loc"])
    where = []
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        where.append(f"step {loc[1] + 1}")
        loc = loc[2:]
    if not loc and (field := (err.get("ctx") or {}).get("field")):
        loc = [field]
    if loc:
        where.append(f"field {'.'.join(str(p) for p in loc)!r}")
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {', '.join(where) or 'template'}: {msg}"


def load_plan(path: Path) -> PlanTemplate:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([f"{path}: cannot be read as UTF-8 text: {exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        # tomllib recurses on nested arrays and tables: a few hundred levels exhaust the stack.
        raise PlanError([f"{path}: not valid TOML: {exc or 'nested too deeply'}"]) from exc
    try:
        plan = PlanTemplate.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(len(e["loc"]) >= 2 and e["loc"][0] == "steps" for e in errors):
            # pydantic also counts the invalid steps out and says "at least 1 item": noise.
            noise = (("steps",), "too_short")
            errors = [e for e in errors if (tuple(e["loc"]), e["type"]) != noise]
        raise PlanError([_describe(path, e) for e in errors]) from exc
    if plan.name != path.stem:
        raise PlanError([f"{path}: field 'name': {plan.name!r} must match the file name {path.stem!r}"])
    return plan


def load_plans(directory: Path) -> dict[str, PlanTemplate]:
    """Every template in the directory, or a PlanError listing every problem in every file."""
    if not directory.is_dir():
        raise PlanError([f"{directory}: plan directory not found"])
    plans, problems = {}, []
    for path in sorted(directory.glob("*.toml")):
        try:
            plan = load_plan(path)
        except PlanError as exc:
            problems.extend(exc.problems)
            continue
        plans[plan.name] = plan
    if not plans and not problems:
        problems.append(f"{directory}: no plan templates (*.toml)")
    if problems:
        raise PlanError(problems)
    return plans
