"""Plan templates: the shipped ones, broken ones, schedule_steps and ``teichaku plans check``."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from service.accounts.models import DEFAULT_CLOSED_DAYS
from service.cli import app
from service.schedules.calendar import BusinessCalendar
from service.schedules.plans import PlanError, PlanTemplate, load_plan, load_plans, schedule_steps
from service.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
PLANS_DIR = ROOT / "config" / "plans"
JP = holidays.country_holidays("JP", years=range(2025, 2030))

VALID_STEP = """
[[steps]]
offset_days = 1
party = "client"
channel = "phone"
kind = "check_in"
window_days = 2
"""


def plan_text(name: str, *steps: str) -> str:
    body = "".join(steps) if steps else VALID_STEP
    return f'name = "{name}"\ntitle_ja = "テスト"\ntitle_en = "Test"\n{body}'


def step(**fields) -> str:
    lines = ["", "[[steps]]"]
    for key, value in fields.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert info.value.problems, "a PlanError lists its problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# ------------------------------------------------------------------ the shipped templates


@pytest.fixture(scope="module")
def shipped() -> dict[str, PlanTemplate]:
    return load_plans(PLANS_DIR)


def test_shipped_templates_load(shipped):
    assert set(shipped) == {"standard-3m", "short-1m", "extended-6m"}
    for name, plan in shipped.items():
        assert plan.name == name
        assert plan.title_ja and plan.title_en
        assert plan.title("ja") == plan.title_ja
        assert plan.title("en") == plan.title_en
        assert len(plan.steps) >= 3


def test_standard_plan_covers_all_six_surveyed_channels(shipped):
    """The seed's six methods: {client, family, employer} x {phone or e-mail, visit}."""
    seen = set()
    for s in shipped["standard-3m"].steps:
        mode = {"phone": "remote", "email": "remote", "sms": "remote", "visit": "visit"}.get(s.channel.value)
        if mode:
            seen.add((s.party.value, mode))
    assert seen >= {(p, m) for p in ("client", "family", "employer") for m in ("remote", "visit")}
    # and worker-made (not automated) phone contact with each party
    phoned = {s.party.value for s in shipped["standard-3m"].steps if s.channel.value == "phone"}
    assert phoned == {"client", "family", "employer"}


def test_standard_plan_meeting_and_final_review(shipped):
    steps = shipped["standard-3m"].steps
    meetings = [s for s in steps if s.kind.value == "three_party_meeting"]
    assert len(meetings) == 1
    meeting = meetings[0]
    assert meeting.channel.value == "meeting"
    assert meeting.party.value == "employer" and meeting.needs_consent
    assert meeting.offset_months == 0 and meeting.offset_days <= 28
    finals = [s for s in steps if s.kind.value == "final_review"]
    assert len(finals) == 1
    assert steps[-1] is finals[0]
    assert finals[0].offset_months * 30 + finals[0].offset_days in range(85, 100)
    assert not finals[0].automated


def test_shipped_templates_follow_the_rules(shipped):
    for plan in shipped.values():
        for s in plan.steps:
            if s.party.value in ("family", "employer"):
                assert s.needs_consent
            if s.automated:
                assert s.channel.value in ("sms", "email", "voice") and s.needs_consent
            else:
                assert s.channel.value not in ("sms", "voice")
        kinds = [s.kind.value for s in plan.steps]
        assert kinds.count("final_review") == 1
        assert "retry" not in kinds and "separation_call" not in kinds


def test_short_and_extended_lengths(shipped):
    def last(plan):
        final = plan.steps[-1]
        return final.kind.value, final.offset_months, final.offset_days

    assert last(shipped["short-1m"]) == ("final_review", 1, 0)
    assert last(shipped["extended-6m"]) == ("final_review", 6, 0)


# ------------------------------------------------------------------ schedule_steps


def test_schedule_steps_before_golden_week(shipped):
    cal = BusinessCalendar(DEFAULT_CLOSED_DAYS)
    start = date(2026, 4, 28)
    got = schedule_steps(shipped["standard-3m"], start, cal)
    assert [s.step_index for s in got] == list(range(len(shipped["standard-3m"].steps)))
    due = {s.step_index: s.due_date for s in got}
    assert due[0] == date(2026, 4, 30)  # day 1 is 4/29, Showa Day: moved to Thursday
    assert due[1] == date(2026, 5, 2)  # automated SMS: a Saturday is fine, it waits for quiet hours
    assert due[2] == date(2026, 5, 7)  # 5/5 Children's Day -> Thursday 5/7
    assert due[4] == date(2026, 5, 12)  # 14 days: a Tuesday
    assert due[6] == date(2026, 5, 28)  # 1 month, automated: the calendar date
    assert due[7] == date(2026, 6, 1)  # 1 month + 3 days = Sun 5/31 -> Mon 6/1
    assert due[13] == date(2026, 7, 28)  # 3 months: final review on a Tuesday
    for s in got:
        raw = _raw_due(s.step, start)
        assert s.window_end == s.due_date + timedelta(days=s.step.window_days)
        if s.step.automated:
            assert s.due_date == raw
        else:
            assert s.due_date >= raw
            assert s.due_date.weekday() < 5 and s.due_date not in JP
            assert (s.due_date.month, s.due_date.day) not in {
                (12, 29),
                (12, 30),
                (12, 31),
                (1, 1),
                (1, 2),
                (1, 3),
            }


def _raw_due(s, start: date) -> date:
    month_index = start.month - 1 + s.offset_months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = start.day
    while True:
        try:
            base = date(year, month, day)
            break
        except ValueError:
            day -= 1
    return base + timedelta(days=s.offset_days)


def test_schedule_steps_every_plan_every_start_in_2026(shipped):
    """Independent check over a whole year of start dates."""
    cal = BusinessCalendar(DEFAULT_CLOSED_DAYS)
    closed = {(12, 29), (12, 30), (12, 31), (1, 1), (1, 2), (1, 3)}
    for plan in shipped.values():
        for offset in range(0, 365, 3):
            start = date(2026, 1, 1) + timedelta(days=offset)
            for s in schedule_steps(plan, start, cal):
                raw = _raw_due(s.step, start)
                if s.step.automated:
                    assert s.due_date == raw
                    continue
                assert s.due_date.weekday() < 5, (plan.name, start, s)
                assert s.due_date not in JP
                assert (s.due_date.month, s.due_date.day) not in closed
                day = raw
                while day < s.due_date:  # nothing workable was skipped over
                    assert day.weekday() >= 5 or day in JP or (day.month, day.day) in closed
                    day += timedelta(days=1)


# ------------------------------------------------------------------ broken templates


def test_bad_channel_value(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text("p", VALID_STEP, step(party="client", channel="fax", kind="check_in")),
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: ")
    assert "step 2" in problem and "field 'channel'" in problem
    assert "'phone'" in problem  # says what is allowed


def test_automated_visit(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            VALID_STEP,
            VALID_STEP,
            step(party="client", channel="visit", kind="check_in", automated=True, needs_consent=True),
        ),
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: step 3, field 'automated': ")
    assert "'visit' cannot be automated" in problem


def test_sms_by_hand(tmp_path):
    path = write(tmp_path, "p", plan_text("p", step(party="client", channel="sms", kind="check_in")))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: step 1, field 'automated': ")


def test_family_step_without_consent(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            VALID_STEP,
            step(offset_days=21, party="family", channel="phone", kind="family_contact"),
        ),
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: step 2, field 'needs_consent': ")
    assert "family" in problem


def test_employer_step_without_consent_and_automated_without_consent(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            step(party="employer", channel="visit", kind="employer_visit"),
            step(party="client", channel="email", kind="check_in", automated=True),
        ),
    )
    problems = problems_of(path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: step 1, field 'needs_consent': ")
    assert "employer" in problems[0]
    assert problems[1].startswith(f"{path}: step 2, field 'needs_consent': ")
    assert "automated" in problems[1]


def test_meeting_and_system_kinds(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            step(party="employer", channel="phone", kind="three_party_meeting", needs_consent=True),
            step(party="client", channel="phone", kind="separation_call"),
            step(party="client", channel="phone", kind="retry"),
        ),
    )
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}: step 1, field 'channel': ")
    assert problems[1].startswith(f"{path}: step 2, field 'kind': ")
    assert problems[2].startswith(f"{path}: step 3, field 'kind': ")


def test_unknown_field(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            VALID_STEP,
            VALID_STEP.replace("window_days = 2", 'window_days = 2\ncolour = "red"'),
        ),
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: step 2, field 'colour': ")


def test_unknown_top_level_field_and_missing_title(tmp_path):
    path = write(tmp_path, "p", 'name = "p"\ntitle_ja = "x"\nowner = "me"\n' + VALID_STEP)
    problems = problems_of(path)
    assert any("field 'title_en'" in p for p in problems)
    assert any("field 'owner'" in p for p in problems)
    assert all(p.startswith(f"{path}: ") and "step" not in p for p in problems)


def test_out_of_range_values(tmp_path):
    path = write(
        tmp_path,
        "p",
        plan_text(
            "p",
            step(offset_days=-1, party="client", channel="phone", kind="check_in", window_days=61),
        ),
    )
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: step 1, field 'offset_days': ") for p in problems)
    assert any(p.startswith(f"{path}: step 1, field 'window_days': ") for p in problems)


def test_no_steps(tmp_path):
    path = write(tmp_path, "p", 'name = "p"\ntitle_ja = "x"\ntitle_en = "y"\nsteps = []\n')
    [problem] = problems_of(path)
    assert "field 'steps'" in problem


def test_name_not_matching_file(tmp_path):
    path = write(tmp_path, "standard-3m", plan_text("standard-4m"))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: field 'name': ")
    assert "'standard-4m'" in problem and "'standard-3m'" in problem


def test_bad_name_pattern(tmp_path):
    path = write(tmp_path, "Big_Plan", plan_text("Big_Plan"))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: field 'name': ")


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "p", plan_text("p") + "\n[[steps]\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: not valid TOML")
    assert "line" in problem


def test_not_utf8(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(plan_text("p").replace("テスト", "定着").encode("shift_jis"))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: ")


def test_deeply_nested_toml_is_a_plan_error(tmp_path):
    """tomllib recurses: a few hundred nested arrays exhaust the stack."""
    path = write(tmp_path, "p", plan_text("p") + "junk = " + "[" * 3000 + "]" * 3000 + "\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: not valid TOML")


def test_load_plans_reports_every_file(tmp_path):
    good = write(tmp_path, "good", plan_text("good"))
    bad1 = write(tmp_path, "bad1", plan_text("bad1", step(party="client", channel="fax", kind="check_in")))
    bad2 = write(tmp_path, "bad2", plan_text("other"))
    (tmp_path / "notes.txt").write_text("not a plan")
    with pytest.raises(PlanError) as info:
        load_plans(tmp_path)
    problems = info.value.problems
    assert len(problems) == 2
    assert any(p.startswith(str(bad1)) for p in problems)
    assert any(p.startswith(str(bad2)) for p in problems)
    assert not any(str(good) in p for p in problems)
    bad1.unlink()
    bad2.unlink()
    assert set(load_plans(tmp_path)) == {"good"}


def test_load_plans_empty_and_missing_directory(tmp_path):
    with pytest.raises(PlanError, match="no plan templates"):
        load_plans(tmp_path)
    with pytest.raises(PlanError, match="plan directory not found"):
        load_plans(tmp_path / "nope")


# ------------------------------------------------------------------ teichaku plans check

runner = CliRunner()


@pytest.fixture
def config_dir(monkeypatch, tmp_path):
    """Point TEICHAKU_CONFIG_DIR at a fresh directory; settings are cached, so clear them."""
    (tmp_path / "plans").mkdir()
    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_plans_check_shipped(monkeypatch):
    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["plans", "check"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["extended-6m", "short-1m", "standard-3m"]
    assert all(line.startswith("ok") for line in lines)
    assert re.search(r"standard-3m\s+14 steps\s+標準（3か月） / Standard \(3 months\)", result.stdout)
    assert re.search(r"short-1m\s+5 steps", result.stdout)
    assert re.search(r"extended-6m\s+16 steps", result.stdout)


def test_cli_plans_check_own_directory(config_dir):
    write(config_dir / "plans", "mine", plan_text("mine"))
    result = runner.invoke(app, ["plans", "check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:4] == ["ok", "mine", "1", "steps"]


def test_cli_plans_check_bad_plan(config_dir):
    write(config_dir / "plans", "good", plan_text("good"))
    bad = write(
        config_dir / "plans",
        "bad",
        plan_text("bad", VALID_STEP, step(party="family", channel="phone", kind="family_contact")),
    )
    result = runner.invoke(app, ["plans", "check"])
    assert result.exit_code != 0
    assert "Plan templates are invalid" in result.stderr
    assert f"{bad}: step 2, field 'needs_consent'" in result.stderr
    assert "ok" not in result.stdout  # nothing is reported as fine when the set is broken


def test_cli_plans_check_invalid_toml(config_dir):
    bad = write(config_dir / "plans", "bad", "name = \n")
    result = runner.invoke(app, ["plans", "check"])
    assert result.exit_code == 1
    assert f"{bad}: not valid TOML" in result.stderr


def test_cli_plans_check_no_plans(config_dir):
    result = runner.invoke(app, ["plans", "check"])
    assert result.exit_code == 1
    assert "no plan templates" in result.stderr


# ------------------------------------------------------------------ fuzzing load_plan

ENUMS = {
    "party": ["client", "family", "employer", "boss"],
    "channel": ["phone", "sms", "email", "voice", "visit", "meeting", "fax"],
    "kind": [
        "check_in",
        "three_party_meeting",
        "employer_visit",
        "family_contact",
        "final_review",
        "separation_call",
        "retry",
        "party",
    ],
}

scalars = st.one_of(
    st.integers(-5, 2000),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.dates(),
)
step_values = {
    "offset_months": st.one_of(st.integers(-1, 70), scalars),
    "offset_days": st.one_of(st.integers(-1, 2000), scalars),
    "party": st.one_of(st.sampled_from(ENUMS["party"]), scalars),
    "channel": st.one_of(st.sampled_from(ENUMS["channel"]), scalars),
    "kind": st.one_of(st.sampled_from(ENUMS["kind"]), scalars),
    "window_days": st.one_of(st.integers(-1, 70), scalars),
    "automated": st.one_of(st.booleans(), scalars),
    "needs_consent": st.one_of(st.booleans(), scalars),
    "zzz": scalars,
}
steps_strategy = st.lists(
    st.fixed_dictionaries(
        {},
        optional={k: v for k, v in step_values.items()},
    ),
    max_size=5,
)
plan_dicts = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("fuzz"), st.just("Fuzz"), scalars),
        "title_ja": st.one_of(st.just("試験"), scalars),
        "title_en": st.one_of(st.just("Fuzz"), scalars),
        "description": scalars,
        "steps": st.one_of(steps_strategy, scalars, st.lists(scalars, max_size=3)),
        "other": scalars,
    },
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _toml(data: dict) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in data.items())


def _check_load(path: Path):
    try:
        plan = load_plan(path)
    except PlanError as exc:
        assert exc.problems
        assert all(p.startswith(f"{path}: ") for p in exc.problems)
        return None
    assert isinstance(plan, PlanTemplate)
    assert plan.name == path.stem
    for s in plan.steps:  # whatever loads obeys the rules
        assert 0 <= s.offset_months <= 60 and 0 <= s.offset_days <= 1830
        assert 0 <= s.window_days <= 60
        if s.automated:
            assert s.channel.value in ("sms", "email", "voice")
        if s.party.value != "client" or s.automated:
            assert s.needs_consent
    return plan


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def fuzz_path(tmp_path) -> Path:
    return tmp_path / "fuzz.toml"


@FUZZ
@given(data=plan_dicts)
def test_fuzz_dicts_only_raise_plan_error(fuzz_path, data):
    text = _toml(data)
    fuzz_path.write_text(text, encoding="utf-8")
    _check_load(fuzz_path)


@FUZZ
@given(
    text=st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=200),
        st.lists(
            st.sampled_from(
                [
                    'name = "fuzz"',
                    'title_ja = "x"',
                    'title_en = "y"',
                    "[[steps]]",
                    "[steps]",
                    'party = "client"',
                    'channel = "phone"',
                    "kind = 'check_in'",
                    "automated = true",
                    "needs_consent = tru",
                    "offset_days = 1_0",
                    "window_days = 0x10",
                    "steps = [",
                    "]",
                    "[",
                    "{",
                    "=",
                    '"',
                    "\\u00",
                    "x = 1979-05-27T07:32:00Z",
                    "[[steps.x]]",
                ]
            ),
            max_size=20,
        ).map("\n".join),
    )
)
def test_fuzz_text_only_raises_plan_error(fuzz_path, text):
    fuzz_path.write_text(text, encoding="utf-8")
    _check_load(fuzz_path)


def test_fuzz_helpers_produce_a_loadable_plan(tmp_path):
    """The fuzzers' TOML writer is itself right: a valid dict round-trips into a plan."""
    data = {
        "name": "fuzz",
        "title_ja": "試験",
        "title_en": "Fuzz\u007f",
        "steps": [
            {
                "offset_days": 3,
                "party": "family",
                "channel": "phone",
                "kind": "family_contact",
                "needs_consent": True,
            }
        ],
    }
    path = tmp_path / "fuzz.toml"
    path.write_text(_toml(data), encoding="utf-8")
    plan = _check_load(path)
    assert plan is not None and plan.steps[0].offset_days == 3 and plan.title_en == "Fuzz\u007f"
