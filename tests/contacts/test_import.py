"""CSV import of clients and placements: encodings, Japanese labels, all-or-nothing, every bad
row reported, history not flooding the queue, and the ``teichaku import`` command."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlmodel import select
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.contacts.imports import COLUMNS, ImportFailed, import_placements
from service.contacts.models import (
    Client,
    Employer,
    FollowUp,
    FollowUpKind,
    FollowUpStatus,
    Placement,
    PlacementStatus,
    Separation,
)
from service.db import session_scope
from service.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 4, 20)  # the `clock` fixture's day in Tokyo

BASE = {
    "client_ref": "C001",
    "client_name": "山田 太郎",
    "client_kana": "ヤマダ タロウ",
    "phone": "090-1234-5678",
    "email": "taro@example.jp",
    "language": "ja",
    "category": "public_assistance",
    "office": "Office A",
    "worker_email": "worker@a.example.jp",
    "employer_name": "岩見沢食品工業",
    "supervisor_name": "佐藤 現場",
    "supervisor_phone": "0126-22-3333",
    "job_title": "清掃スタッフ",
    "employment_type": "general",
    "start_date": "2026-04-01",
    "plan": "",
    "separation_date": "",
    "separation_reason": "",
}


def rows_csv(rows: list[dict], *, columns: list[str] = COLUMNS, base: dict = BASE) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, columns, lineterminator="\r\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(base | r)
    return out.getvalue()


def csv_bytes(rows: list[dict], encoding: str = "utf-8", **kw) -> bytes:
    return rows_csv(rows, **kw).encode(encoding)


def do_import(factory, plans, clock, data: bytes):
    with session_scope(factory) as session:
        return import_placements(session, data, plans=plans, clock=clock)


def import_errors(factory, plans, clock, data: bytes) -> list:
    with pytest.raises(ImportFailed) as exc:
        do_import(factory, plans, clock, data)
    errors = exc.value.errors
    assert errors, "ImportFailed must carry at least one problem"
    for e in errors:
        assert e.line is not None and e.line >= 1 and e.field and e.message
    return errors


def counts(factory) -> dict[str, int]:
    with factory() as s:
        return {
            m.__name__: s.exec(select(func.count()).select_from(m)).one()
            for m in (Client, Placement, Employer, FollowUp, Separation)
        }


def client_by_ref(factory, ref: str, office_id: int | None = None) -> Client | None:
    with factory() as s:
        q = select(Client).where(Client.ref == ref)
        if office_id is not None:
            q = q.where(Client.office_id == office_id)
        return s.exec(q).first()


def placements_of(factory, client_id: int) -> list[Placement]:
    with factory() as s:
        return list(s.exec(select(Placement).where(Placement.client_id == client_id).order_by(Placement.start_date)))


def follow_ups_of(factory, placement_id: int) -> list[FollowUp]:
    with factory() as s:
        return list(s.exec(select(FollowUp).where(FollowUp.placement_id == placement_id).order_by(FollowUp.due_date)))


# ------------------------------------------------------------------------------ good files


@pytest.mark.parametrize("bom", [False, True], ids=["utf8", "utf8-bom"])
def test_utf8_file_imports(factory, world, plans, clock, bom):
    data = csv_bytes(
        [
            {},
            {
                "client_ref": "C002",
                "client_name": "佐藤 花子",
                "client_kana": "サトウ ハナコ",
                "phone": "080-2222-3333",
                "email": "",
                "category": "needy_person",
                "employer_name": "みなと介護センター",
                "supervisor_phone": "",
                "start_date": "2026-03-02",
            },
        ]  # fmt: skip
    )
    if bom:
        data = b"\xef\xbb\xbf" + data

    report = do_import(factory, plans, clock, data)

    assert (report.rows, report.clients_created, report.employers_created, report.placements_created) == (2, 2, 2, 2)
    taro = client_by_ref(factory, "C001")  # with a BOM left in, the first column would be lost
    assert taro is not None
    assert (taro.office_id, taro.name, taro.kana) == (world.office_a, "山田 太郎", "ヤマダ タロウ")
    assert (taro.phone, taro.email, taro.category.value) == ("+819012345678", "taro@example.jp", "public_assistance")
    [p] = placements_of(factory, taro.id)
    assert (p.start_date, p.worker_id, p.plan, p.job_title) == (
        date(2026, 4, 1), world.users["a.worker"], "standard-3m", "清掃スタッフ",
    )  # fmt: skip
    assert p.status == PlacementStatus.active
    with factory() as s:
        employer = s.get(Employer, p.employer_id)
    assert (employer.name, employer.supervisor_name, employer.phone) == ("岩見沢食品工業", "佐藤 現場", "+81126223333")
    hanako = client_by_ref(factory, "C002")
    assert (hanako.name, hanako.email, hanako.category.value) == ("佐藤 花子", None, "needy_person")
    assert follow_ups_of(factory, p.id), "an imported placement gets its plan's follow-ups"


def test_shift_jis_file_imports_with_names_intact(factory, world, plans, clock):
    # 髙 and ～ exist in Windows' Shift_JIS (cp932), which Japanese Excel writes, but not in plain Shift_JIS.
    rows = [
        {"category": "被保護者", "employment_type": "一般就労"},
        {"client_ref": "C002", "client_name": "髙橋 一郎", "client_kana": "タカハシ イチロウ",
         "employer_name": "さくら物流センター", "job_title": "倉庫内軽作業～午前", "start_date": "2026/3/2"},
    ]  # fmt: skip
    data = csv_bytes(rows, encoding="cp932")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the test really feeds Shift_JIS

    report = do_import(factory, plans, clock, data)

    assert report.clients_created == 2
    taro = client_by_ref(factory, "C001")
    assert (taro.name, taro.kana, taro.category.value) == ("山田 太郎", "ヤマダ タロウ", "public_assistance")
    ichiro = client_by_ref(factory, "C002")
    assert (ichiro.name, ichiro.kana) == ("髙橋 一郎", "タカハシ イチロウ")
    [p] = placements_of(factory, ichiro.id)
    assert p.job_title == "倉庫内軽作業～午前"
    with factory() as s:
        assert s.get(Employer, p.employer_id).name == "さくら物流センター"


def test_same_client_ref_on_several_rows_is_one_client_with_several_placements(factory, world, plans, clock):
    data = csv_bytes(
        [
            {
                "start_date": "2025-10-01",
                "employer_name": "岩見沢食品工業",
                "separation_date": "2025-11-15",
                "separation_reason": "contract_ended",
            },
            {
                "start_date": "2026-01-05",
                "employer_name": "みなと介護センター",
                "separation_date": "2026-02-20",
                "separation_reason": "health",
            },
            {"start_date": "2026-04-01", "employer_name": "岩見沢食品工業"},
        ]  # fmt: skip
    )

    report = do_import(factory, plans, clock, data)

    assert (report.clients_created, report.placements_created, report.employers_created) == (1, 3, 2)
    with factory() as s:
        assert s.exec(select(func.count()).select_from(Client)).one() == 1
    taro = client_by_ref(factory, "C001")
    ps = placements_of(factory, taro.id)
    assert [p.start_date for p in ps] == [date(2025, 10, 1), date(2026, 1, 5), date(2026, 4, 1)]
    assert [p.status for p in ps] == [PlacementStatus.separated, PlacementStatus.separated, PlacementStatus.active]
    assert ps[0].employer_id == ps[2].employer_id != ps[1].employer_id  # the employer is reused by name


def test_japanese_labels_and_loose_dates_are_accepted(factory, world, plans, clock):
    data = csv_bytes(
        [
            {
                "client_ref": "J1",
                "category": "被保護者",
                "employment_type": "一般就労",
                "language": "英語",
                "start_date": "2026/4/1",
                "separation_date": "2026/4/10",
                "separation_reason": "自己都合",
            },
            {
                "client_ref": "J2",
                "category": "生活困窮者",
                "employment_type": "認定就労訓練",
                "start_date": "２０２６／３／２",
            },
            {
                "client_ref": "J3",
                "category": "needy_person",
                "employment_type": "その他",
                "start_date": "2026.2.2",
                "separation_date": "2026-03-01",
                "separation_reason": "解雇",
            },
        ]  # fmt: skip
    )

    do_import(factory, plans, clock, data)

    j1, j2, j3 = (client_by_ref(factory, r) for r in ("J1", "J2", "J3"))
    assert (j1.category.value, j1.language.value) == ("public_assistance", "en")
    assert (j2.category.value, j2.language.value) == ("needy_person", "ja")  # empty language: Japanese
    [p1], [p2], [p3] = (placements_of(factory, c.id) for c in (j1, j2, j3))
    assert (p1.employment_type.value, p1.start_date) == ("general", date(2026, 4, 1))
    assert (p2.employment_type.value, p2.start_date) == ("certified_training", date(2026, 3, 2))
    assert (p3.employment_type.value, p3.start_date) == ("other", date(2026, 2, 2))
    with factory() as s:
        seps = {x.placement_id: x for x in s.exec(select(Separation))}
    assert (seps[p1.id].date, seps[p1.id].reason.value) == (date(2026, 4, 10), "voluntary")
    assert seps[p3.id].reason.value == "dismissed"


def test_full_width_phone_digits_are_stored_in_e164(factory, world, plans, clock):
    data = csv_bytes([{"phone": "０９０－１２３４－５６７８", "supervisor_phone": "（０３）１２３４ー５６７８"}])

    do_import(factory, plans, clock, data)

    taro = client_by_ref(factory, "C001")
    assert taro.phone == "+819012345678"
    [p] = placements_of(factory, taro.id)
    with factory() as s:
        assert s.get(Employer, p.employer_id).phone == "+81312345678"


# ------------------------------------------------------------------------------ bad files


def test_a_file_with_bad_rows_is_rolled_back_whole_and_every_bad_row_reported(factory, world, plans, clock):
    do_import(factory, plans, clock, csv_bytes([{"client_ref": "OLD1"}]))  # data already on record
    before = counts(factory)
    assert before["Client"] == 1

    rows = [
        {"client_ref": "G1"},  # line 2: good
        {"client_ref": "X3", "phone": "123"},  # line 3
        {"client_ref": "X4", "office": "Office Z"},  # line 4
        {"client_ref": "X5", "start_date": "2026-13-01"},  # line 5
        {"client_ref": "X6", "separation_date": "2026-03-01", "separation_reason": "自己都合"},  # line 6
        {"client_ref": "X7", "plan": "no-such-plan"},  # line 7
        {"client_ref": "X8", "worker_email": "worker@b.example.jp"},  # line 8: a worker of Office B
        {"client_ref": "G9", "employer_name": "新しい事業所"},  # line 9: good, with a new employer
        {"client_ref": "G1", "client_name": "山田 次郎", "start_date": "2026-02-02"},  # line 10
    ]
    errors = import_errors(factory, plans, clock, csv_bytes(rows))

    found = {(e.line, e.field) for e in errors}
    assert found == {
        (3, "phone"), (4, "office"), (5, "start_date"), (6, "separation_date"), (7, "plan"),
        (8, "worker_email"), (10, "client_name"),
    }  # fmt: skip
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    msg = {(e.line, e.field): e.message for e in errors}
    assert "phone number" in msg[3, "phone"]
    assert "Office Z" in msg[4, "office"]
    assert "2026-13-01" in msg[5, "start_date"]
    assert "before start_date" in msg[6, "separation_date"]
    assert "no-such-plan" in msg[7, "plan"]
    assert "worker@b.example.jp" in msg[8, "worker_email"]
    assert "line 2" in msg[10, "client_name"]

    assert counts(factory) == before
    assert client_by_ref(factory, "G1") is None  # good rows before the bad ones were not written
    assert client_by_ref(factory, "G9") is None
    with factory() as s:
        assert s.exec(select(Employer).where(Employer.name == "新しい事業所")).first() is None


def test_missing_and_unknown_columns_are_reported_on_line_1(factory, world, plans, clock):
    columns = [c for c in COLUMNS if c != "plan"] + ["notes"]
    errors = import_errors(factory, plans, clock, csv_bytes([{}], columns=columns))
    assert {(e.line, e.field, e.message) for e in errors} == {
        (1, "plan", "column is missing"),
        (1, "notes", "unknown column"),
    }
    assert counts(factory)["Client"] == 0


def test_a_column_given_twice_is_reported(factory, world, plans, clock):
    data = (",".join(COLUMNS + ["phone"]) + "\r\n").encode() + csv_bytes([{}]).split(b"\r\n", 1)[1]
    errors = import_errors(factory, plans, clock, data)
    assert [(e.line, e.field) for e in errors] == [(1, "phone")]
    assert "more than once" in errors[0].message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\r\n\r\n  \r\n", "empty"),
        (",".join(COLUMNS).encode() + b"\r\n", "no data rows"),
    ],
    ids=["no-bytes", "blank-lines", "header-only"],
)
def test_an_empty_file_is_a_clear_error(factory, world, plans, clock, data, words):
    [error] = import_errors(factory, plans, clock, data)
    assert error.field == "(file)"
    assert words in error.message


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml" + bytes(range(256)),
        rows_csv([{}]).encode("utf-16"),  # Excel's "Unicode text"
        b"\xef\xbb\xbf" + "山田".encode("cp932") + b"\xff\xfe",  # a BOM, then not UTF-8
    ],
    ids=["png", "xlsx", "utf-16", "bom-then-binary"],
)
def test_a_binary_file_is_a_clear_error_not_an_exception(factory, world, plans, clock, data):
    [error] = import_errors(factory, plans, clock, data)
    assert (error.line, error.field) == (1, "(file)")
    assert "UTF-8" in error.message and "Shift_JIS" in error.message
    assert counts(factory)["Client"] == 0


def test_a_cell_larger_than_csv_allows_is_a_clear_error(factory, world, plans, clock):
    data = b'"' + b"x" * 200_000 + b'"\r\n'
    [error] = import_errors(factory, plans, clock, data)
    assert (error.line, error.field) == (1, "(file)")
    assert "CSV" in error.message


def test_dates_out_of_range_are_reported_per_row(factory, world, plans, clock):
    rows = [
        {"client_ref": "D2", "start_date": "1999-12-31"},
        {"client_ref": "D3", "start_date": "9999-12-31"},  # would overflow the plan's dates
        {"client_ref": "D4", "separation_date": "2028-01-01", "separation_reason": "voluntary"},
        {"client_ref": "D5", "separation_date": "2026-04-10"},
        {"client_ref": "D6", "separation_reason": "voluntary"},
        {"client_ref": "D7", "start_date": "2026-02-30"},
    ]
    errors = import_errors(factory, plans, clock, csv_bytes(rows))
    assert {(e.line, e.field) for e in errors} == {
        (2, "start_date"), (3, "start_date"), (4, "separation_date"), (5, "separation_reason"),
        (6, "separation_date"), (7, "start_date"),
    }  # fmt: skip
    msg = {e.line: e.message for e in errors}
    assert "2000-01-01" in msg[2]
    assert "a year ahead" in msg[3] and "a year ahead" in msg[4]
    assert "not a real date" in msg[7]
    assert counts(factory)["Client"] == 0


def test_the_same_placement_twice_in_a_file_is_reported(factory, world, plans, clock):
    errors = import_errors(factory, plans, clock, csv_bytes([{}, {}]))
    assert [(e.line, e.field) for e in errors] == [(3, "start_date")]
    assert "line 2" in errors[0].message


def test_required_cells_are_reported(factory, world, plans, clock):
    errors = import_errors(factory, plans, clock, csv_bytes([{"client_name": "", "job_title": " "}]))
    assert {(e.line, e.field, e.message) for e in errors} == {
        (2, "client_name", "is required"),
        (2, "job_title", "is required"),
    }


# ------------------------------------------------------------------------------ history


def test_past_placements_have_past_steps_skipped_and_no_flood_of_overdue_work(api, factory, plans, clock):
    data = csv_bytes(
        [{"client_ref": "P1", "start_date": "2026-01-05"}, {"client_ref": "P2", "start_date": "2026-02-16"}]
    )

    do_import(factory, plans, clock, data)

    for ref in ("P1", "P2"):
        [p] = placements_of(factory, client_by_ref(factory, ref).id)
        rows = follow_ups_of(factory, p.id)
        past = [f for f in rows if f.due_date < TODAY]
        assert past, "these placements started months ago"
        for f in past:
            assert f.status == FollowUpStatus.skipped
            assert "before the import" in f.status_reason
        for f in rows:
            if f.due_date >= TODAY:  # what is still ahead stays to be done
                assert f.status != FollowUpStatus.skipped or "before the import" not in (f.status_reason or "")
    [p2] = placements_of(factory, client_by_ref(factory, "P2").id)
    assert any(f.status == FollowUpStatus.pending for f in follow_ups_of(factory, p2.id))

    queue = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert queue["date"] == TODAY.isoformat()
    assert queue["counts"]["overdue"] == 0
    assert all(item["due_date"] >= TODAY.isoformat() for item in queue["items"])


def test_a_separation_in_the_file_makes_the_placement_separated(factory, world, plans, clock):
    data = csv_bytes(
        [
            {
                "client_ref": "S1",
                "start_date": "2026-03-02",
                "separation_date": "2026-04-15",
                "separation_reason": "自己都合",
            },  # recent: the worker should call
            {
                "client_ref": "S2",
                "start_date": "2025-11-04",
                "separation_date": "2026-01-09",
                "separation_reason": "health",
            },  # history: no call any more
        ]  # fmt: skip
    )

    report = do_import(factory, plans, clock, data)

    assert report.separations == 2
    for ref, sep_day, reason, call_expected in (
        ("S1", date(2026, 4, 15), "voluntary", True),
        ("S2", date(2026, 1, 9), "health", False),
    ):
        [p] = placements_of(factory, client_by_ref(factory, ref).id)
        assert p.status == PlacementStatus.separated
        with factory() as s:
            sep = s.exec(select(Separation).where(Separation.placement_id == p.id)).one()
        assert (sep.date, sep.reason.value) == (sep_day, reason)
        rows = follow_ups_of(factory, p.id)
        plan_rows = [f for f in rows if f.kind != FollowUpKind.separation_call]
        assert not [f for f in plan_rows if f.status == FollowUpStatus.pending]
        calls = [f for f in rows if f.kind == FollowUpKind.separation_call]
        if call_expected:
            assert len(calls) == 1 and calls[0].status == FollowUpStatus.pending
            assert calls[0].assignee_id == world.users["a.worker"]
        else:
            assert calls == []


def test_reimporting_the_same_file_is_refused_and_writes_nothing(factory, world, plans, clock):
    data = csv_bytes([{"client_ref": "R1"}, {"client_ref": "R2", "start_date": "2026-03-02"}])
    do_import(factory, plans, clock, data)
    before = counts(factory)

    errors = import_errors(factory, plans, clock, data)

    assert {(e.line, e.field) for e in errors} == {(2, "start_date"), (3, "start_date")}
    assert all("already on record" in e.message for e in errors)
    assert counts(factory) == before


def test_a_known_ref_under_another_name_is_refused(factory, world, plans, clock):
    do_import(factory, plans, clock, csv_bytes([{"client_ref": "K1"}]))
    errors = import_errors(
        factory, plans, clock, csv_bytes([{"client_ref": "K1", "client_name": "別人 花子", "start_date": "2026-03-02"}])
    )
    assert [(e.line, e.field) for e in errors] == [(2, "client_name")]


def test_a_new_placement_for_a_known_client_is_added(factory, world, plans, clock):
    first = {"client_ref": "K1", "start_date": "2025-12-01", "separation_date": "2026-01-15"}
    first["separation_reason"] = "voluntary"
    do_import(factory, plans, clock, csv_bytes([first]))
    report = do_import(factory, plans, clock, csv_bytes([{"client_ref": "K1", "start_date": "2026-04-01"}]))
    assert (report.clients_created, report.placements_created) == (0, 1)
    assert len(placements_of(factory, client_by_ref(factory, "K1").id)) == 2


# ------------------------------------------------------------------------------ robustness

# Per column: spellings that are fine, then values that are not (or only in some combinations).
CELLS: dict[str, tuple[list[str], list[str]]] = {
    "client_ref": (["C1", "C2", "C3"], ["", "x" * 65]),
    "client_name": (["山田 太郎", "髙橋 一郎"], ["", "x" * 201]),
    "office": (["Office A", "Office B"], ["Office Z", ""]),
    "worker_email": (["worker@a.example.jp", "WORKER2@a.example.jp", "worker@b.example.jp"], ["nobody@example.jp", ""]),
    "start_date": (["2026-04-01", "2026/4/1", "２０２６/１/５", "2025-04-21", "2027-04-20"],
                   ["1999-01-01", "9999-12-31", "2026-02-30", "0001-01-01", "2026-04", ""]),
    "separation_date": (["", "", "2026-04-10", "2026-04-19"], ["2025-01-01", "2099-01-01", "9999-12-31"]),
    "separation_reason": (["", "自己都合", "health"], ["bogus"]),
    "phone": (["090-1234-5678", "０９０１２３４５６７８", "+1 212 555 0100", ""], ["123"]),
    "email": (["", "a@example.jp"], ["not an e-mail"]),
    "plan": (["", "short-1m", "extended-6m"], ["nope"]),
    "category": (["被保護者", "needy_person"], ["?"]),
    "employment_type": (["一般就労", "general", "その他"], ["?"]),
    "language": (["", "en", "日本語"], ["klingon"]),
}  # fmt: skip


@st.composite
def csvish(draw) -> bytes:
    """Mostly well-formed files (so some import and reach the writing), with odd cells, odd
    columns, junk in front and the three encodings mixed in."""
    shape = draw(st.integers(0, 9))
    if shape < 7:
        columns = list(COLUMNS)
    elif shape < 9:
        columns = draw(st.permutations(COLUMNS))
    else:
        columns = draw(st.lists(st.sampled_from(COLUMNS + ["x", ""]), max_size=20))
    rows, clients = [], {}
    for _ in range(draw(st.integers(0, 4))):
        odd = set(draw(st.lists(st.sampled_from(columns), max_size=2))) if columns else set()
        row = {}
        for c in columns:
            good, bad = CELLS.get(c, ([BASE.get(c, "")], []))
            if c in odd:
                row[c] = draw(st.one_of(st.sampled_from(bad or good), st.text(max_size=12)))
            else:
                row[c] = draw(st.sampled_from(good))
        # Keep the combinations consistent where no cell was made odd, so that files do import.
        if "worker_email" not in odd and row.get("office") == "Office B":
            row["worker_email"] = "worker@b.example.jp"
        elif "worker_email" not in odd and row.get("office") == "Office A":
            row["worker_email"] = draw(st.sampled_from(["worker@a.example.jp", "WORKER2@a.example.jp"]))
        if "separation_reason" in row and "separation_reason" not in odd:
            row["separation_reason"] = (row["separation_reason"] or "自己都合") if row.get("separation_date") else ""
        same = clients.setdefault((row.get("office"), row.get("client_ref")), row)
        for c in ("client_name", "client_kana", "phone", "email", "language", "category"):
            if c in row and c not in odd:
                row[c] = same.get(c, row[c])
        rows.append(row)
    text = rows_csv(rows, columns=list(dict.fromkeys(columns)), base={})
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.text(max_size=40)) + text[draw(st.integers(0, len(text))) :]
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "cp932"]))
    return text.encode(encoding, errors="replace")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=600), csvish()))
def test_any_input_either_imports_or_raises_import_failed(factory, world, plans, clock, data):
    with factory() as session:
        try:
            import_placements(session, data, plans=plans, clock=clock)
        except ImportFailed as exc:
            assert exc.errors
            assert all(e.field and e.message and e.line for e in exc.errors)
        finally:
            session.rollback()


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def teichaku(db_url, monkeypatch):
    """Runs the ``teichaku`` command against the test database; returns the Result."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TEICHAKU_CONFIG_DIR", str(ROOT / "config"))
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        get_settings.cache_clear()
        try:
            return runner.invoke(cli_app, list(args), input=input)
        finally:
            get_settings.cache_clear()

    return run


def recent(days: int) -> str:
    # The command runs on the real clock.
    return (date.today() - timedelta(days=days)).isoformat()


def test_cli_import_prints_counts(teichaku, factory, world, tmp_path):
    path = tmp_path / "placements.csv"
    path.write_bytes(
        csv_bytes(
            [
                {"client_ref": "CLI1", "start_date": recent(60)},
                {
                    "client_ref": "CLI1",
                    "start_date": recent(200),
                    "employer_name": "別の事業所",
                    "separation_date": recent(150),
                    "separation_reason": "契約満了",
                },
                {"client_ref": "CLI2", "start_date": recent(10)},
            ]  # fmt: skip
        )
    )

    result = teichaku("import", str(path))

    assert result.exit_code == 0, result.output
    assert "Imported: 3 rows, 2 new clients, 2 new employers, 3 placements, 1 separations." in result.stdout
    c = counts(factory)
    assert (c["Client"], c["Placement"], c["Employer"], c["Separation"]) == (2, 3, 2, 1)


def test_cli_import_of_a_bad_file_exits_1_and_lists_every_problem(teichaku, factory, world, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        csv_bytes(
            [
                {"client_ref": "B1", "start_date": recent(30)},
                {"client_ref": "B2", "start_date": recent(30), "phone": "123"},
                {"client_ref": "B3", "start_date": recent(30), "office": "Office Z"},
            ]
        )
    )

    result = teichaku("import", str(path))

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), "a clean exit, not a crash"
    assert "Traceback" not in result.output
    assert "Nothing was imported: 2 problem(s)" in result.stderr
    assert "line 3, column phone: not a valid phone number" in result.stderr
    assert "line 4, column office: no office named 'Office Z'" in result.stderr
    assert "line 2," not in result.stderr
    assert counts(factory)["Client"] == 0


def test_cli_import_dry_run_writes_nothing(teichaku, factory, world, tmp_path):
    path = tmp_path / "placements.csv"
    path.write_bytes(csv_bytes([{"client_ref": "DRY1", "start_date": recent(30)}]))

    result = teichaku("import", "--dry-run", str(path))

    assert result.exit_code == 0, result.output
    assert "Checked (dry run, nothing written): 1 rows, 1 new clients" in result.stdout
    assert counts(factory) == {"Client": 0, "Placement": 0, "Employer": 0, "FollowUp": 0, "Separation": 0}
    # and the same file still imports for real afterwards
    assert teichaku("import", str(path)).exit_code == 0
    assert counts(factory)["Client"] == 1


def test_cli_import_of_a_binary_file_fails_cleanly(teichaku, world, tmp_path):
    path = tmp_path / "placements.xlsx"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256)))
    result = teichaku("import", str(path))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "line 1, column (file): the file is neither UTF-8 nor Shift_JIS text" in result.stderr
