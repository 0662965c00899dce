"""Property tests of the parsers that read what people and files send us: phone numbers, e-mail
addresses, CSV imports, SMS reply classification and plan templates. Whatever the input, the
answer is a clean value or a clear validation error, never another exception."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.contacts.imports import COLUMNS, ImportFailed, import_placements
from service.contacts.messaging.replies import Classifier, ReplyClass, command_of
from service.contacts.schemas import ClientCreate
from service.schedules.plans import PlanError, PlanTemplate, load_plan
from service.validation import parse_email, parse_phone

ROOT = Path(__file__).resolve().parent.parent
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DB = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

phone_like = st.text(alphabet="0123456789０１２３４５６７８９+-() 　ー－", max_size=30)
any_text = st.text(max_size=200)


@given(st.one_of(phone_like, any_text))
@example("090-1234-5678")
@example("０９０−１２３４−５６７８")
@example("+" + "9" * 40)
@example("\x00")
@QUICK
def test_phone_numbers_parse_to_e164_or_a_clear_error(raw):
    try:
        e164 = parse_phone(raw)
    except ValueError as exc:
        assert str(exc) and len(str(exc)) < 200
        return
    assert e164.startswith("+") and e164[1:].isdigit() and len(e164) <= 16
    assert parse_phone(e164) == e164  # stable: parsing the stored form gives it back


@given(st.one_of(st.emails(), any_text))
@QUICK
def test_emails_parse_or_fail_clearly(raw):
    try:
        email = parse_email(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert "@" in email and len(email) <= 320


@given(phone=st.one_of(phone_like, any_text), name=any_text, email=any_text)
@QUICK
def test_a_client_body_is_valid_or_a_validation_error(phone, name, email):
    body = {"name": name, "phone": phone, "email": email, "category": "needy_person"}
    try:
        ClientCreate.model_validate(body)
    except ValidationError as exc:
        assert all(e["loc"] for e in exc.errors())


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.from_files(ROOT / "config" / "reply_rules.toml")


@given(text=st.one_of(st.none(), any_text, st.text(alphabet="しにたいつらいSTOPstop死助けて　 ！!", max_size=40)))
@example(text="死にたい")
@QUICK
def test_reply_classification_always_answers(classifier, text):
    reply_class, reason = classifier.classify(text)
    assert isinstance(reply_class, ReplyClass)
    assert (reason is None) == (reply_class == ReplyClass.none)
    command_of(text or "")  # STOP/START/HELP detection never raises either


@given(st.binary(max_size=400))
@example(b"\xff\xfe\x00bad")
@example(b"name = 1\n[[steps]]\n")
@QUICK
def test_a_plan_file_loads_or_fails_with_a_plan_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("plans") / "fuzz.toml"
    path.write_bytes(data)
    try:
        plan = load_plan(path)
    except PlanError as exc:
        assert str(path) in str(exc)  # names the file, and what is wrong in it
        return
    assert isinstance(plan, PlanTemplate)


scalar = st.one_of(
    st.integers(-10**12, 10**12), st.booleans(), st.text(max_size=20),
    st.sampled_from(["client", "employer", "phone", "sms", "email", "voice", "visit", "check_in", "final"]),
)  # fmt: skip
step = st.dictionaries(
    st.sampled_from(["offset_months", "offset_days", "party", "channel", "kind", "window_days", "automated",
                     "needs_consent", "unknown_key"]),
    scalar, max_size=9,
)  # fmt: skip


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, int) else json.dumps(v)


@given(steps=st.lists(step, max_size=6), title=st.text(max_size=30))
@QUICK
def test_a_structured_plan_with_any_values_loads_or_fails_with_a_plan_error(tmp_path_factory, steps, title):
    path = tmp_path_factory.mktemp("plans") / "fuzz.toml"
    lines = ['name = "fuzz"', f"title_ja = {json.dumps(title)}", f"title_en = {json.dumps(title)}"]
    for s in steps:
        lines.append("[[steps]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in s.items()]
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        load_plan(path)
    except PlanError as exc:
        assert "fuzz.toml" in str(exc)


cell = st.one_of(st.text(max_size=25), st.sampled_from(["", "2026-04-01", "090-1234-5678", "needy_person",
                                                         "Office A", "worker@a.example.jp", "general"]))  # fmt: skip


@given(rows=st.lists(st.fixed_dictionaries({c: cell for c in COLUMNS}), min_size=1, max_size=4),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "shift_jis"]))  # fmt: skip
@DB
def test_a_csv_import_succeeds_or_reports_field_errors(factory, world, plans, clock, rows, encoding):
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode(encoding, errors="replace")
    with factory() as session:
        try:
            import_placements(session, data, plans=plans, clock=clock)
        except ImportFailed as exc:
            assert exc.errors and all(e.field and e.message for e in exc.errors)
        finally:
            session.rollback()


@given(st.binary(max_size=300))
@DB
def test_any_bytes_as_a_csv_file_fail_clearly(factory, world, plans, clock, data):
    with factory() as session:
        try:
            import_placements(session, data, plans=plans, clock=clock)
        except ImportFailed as exc:
            assert exc.errors and all(e.message for e in exc.errors)
        finally:
            session.rollback()
