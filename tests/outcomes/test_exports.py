"""CSV exports: placements with retention status, follow-ups with outcomes, crisis flags.

Read back with the ``csv`` module after checking the raw bytes (the UTF-8 BOM Excel needs);
retention statuses are counted and compared with ``GET /api/v1/retention`` (the one definition);
office B's rows never appear in office A's files; formula-like text is neutralised; the keyset
pagination neither loses nor repeats a row; the CLI writes the API's bytes.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from typer.testing import CliRunner

from service.contacts.models import Placement, PlacementStatus, Separation, SeparationReason
from service.db import session_scope
from service.outcomes.exports import ExportKind, export_csv
from service.outcomes.retention import MONTHS
from tests.outcomes import report_data
from tests.outcomes.report_data import Office

BOM = b"\xef\xbb\xbf"
KINDS = ("placements", "follow-ups", "crisis-flags")


def _office(world, key: str = "a") -> Office:
    return Office(getattr(world, f"office_{key}"), [world.users[f"{key}.worker"], world.users[f"{key}.worker2"]])


def download(api, who: str, kind: str, **params) -> bytes:
    r = api.get(who, f"/api/v1/exports/{kind}.csv", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert f'filename="{kind}-office' in r.headers["content-disposition"]
    return r.content


def parse(raw: bytes) -> list[dict]:
    assert raw.startswith(BOM), raw[:20]
    assert raw.count(BOM) == 1
    text = raw.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def retention_api(api, as_of: str) -> dict:
    report = api.ok(api.get("a.manager", "/api/v1/retention", params={"as_of": as_of}))
    [group] = report["groups"]
    return group


# ---------------------------------------------------------------- placements and retention


@pytest.mark.parametrize("as_of", ["2026-04-20", "2025-02-28", "2024-03-31"])
def test_placement_statuses_add_up_to_the_retention_report(as_of, api, factory, world):
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=400, seed=11)
        report_data.generate(session, _office(world, "b"), placements=50, seed=12)
    rows = parse(download(api, "a.manager", "placements", as_of=as_of))
    with factory() as s:
        ids_a = {r["id"] for r in report_data.exported_rows(s, world.office_a)}
    assert {int(r["就労ID"]) for r in rows} == ids_a and len(rows) == len(ids_a)
    group = retention_api(api, as_of)
    assert sum(1 for r in rows if r["就労開始日"] <= as_of) == group["started"]
    for n in MONTHS:
        column = [r[f"{n}か月定着"] for r in rows]
        assert set(column) <= {"定着", "離職", "未到達"}
        cell = group["months"][str(n)]
        assert column.count("定着") == cell["retained"], n
        assert column.count("定着") + column.count("離職") == cell["eligible"], n
    assert {r["基準日"] for r in rows} == {as_of}


def test_a_placement_by_hand_retained_lost_and_immature(api, factory, world):
    office = _office(world)
    from datetime import date

    with session_scope(factory) as session:
        # Started 31 January 2024: its 1-month date is 29 February (leap year).
        on_the_day = report_data.placement(session, office, start=date(2024, 1, 31), separated=date(2024, 2, 29))
        day_after = report_data.placement(session, office, start=date(2024, 1, 31), separated=date(2024, 3, 1))
        running = report_data.placement(session, office, start=date(2024, 1, 31))
    rows = {
        int(r["placement id"]): r for r in parse(download(api, "a.worker", "placements", as_of="2024-05-01", lang="en"))
    }
    statuses = {pid: [rows[pid][f"retention at {n} months"] for n in MONTHS] for pid in rows}
    assert statuses[on_the_day] == ["not retained", "not retained", "not yet mature", "not yet mature"]
    assert statuses[day_after] == ["retained", "not retained", "not yet mature", "not yet mature"]
    assert statuses[running] == ["retained", "retained", "not yet mature", "not yet mature"]
    assert rows[on_the_day]["separation date"] == "2024-02-29" and rows[running]["separation date"] == ""


def test_from_and_to_select_placements_by_start_date(api, factory, world):
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=120, seed=5)
    rows = parse(download(api, "a.worker", "placements", **{"from": "2024-01-01", "to": "2024-12-31"}))
    assert rows and all("2024-01-01" <= r["就労開始日"] <= "2024-12-31" for r in rows)
    with factory() as s:
        expected = {
            r["id"] for r in report_data.exported_rows(s, world.office_a) if r["start_date"].year == 2024
        }  # fmt: skip
    assert {int(r["就労ID"]) for r in rows} == expected


def test_small_batches_lose_and_repeat_nothing(api, factory, world, clock):
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=137, seed=9)
    from datetime import date

    whole = "".join(export_csv(factory, ExportKind.placements, office_id=world.office_a, as_of=date(2026, 4, 20)))
    seen: list[int] = []
    paged = "".join(
        export_csv(
            factory, ExportKind.placements, office_id=world.office_a, as_of=date(2026, 4, 20), batch=7,
            progress=seen.append,
        )
    )  # fmt: skip
    assert paged == whole
    with factory() as s:
        total = len(report_data.exported_rows(s, world.office_a))
    assert seen == [min(7 * i, total) for i in range(1, -(-total // 7) + 1)]
    assert len(paged.splitlines()) == total + 1
    assert download(api, "a.worker", "placements", as_of="2026-04-20").decode("utf-8") == whole


def test_the_file_is_one_snapshot_whatever_is_written_while_it_streams(api, factory, world):
    """Changes committed after the first batch was read (a separation of a placement still to come,
    a new placement) are in none of the following batches: the file shows the database as it was."""
    from datetime import date

    office = _office(world)
    with session_scope(factory) as session:
        ids = [report_data.placement(session, office, start=date(2025, 1, 6)) for _ in range(12)]
    as_of = date(2026, 4, 20)
    before = "".join(export_csv(factory, ExportKind.placements, office_id=world.office_a, as_of=as_of))
    chunks = export_csv(factory, ExportKind.placements, office_id=world.office_a, as_of=as_of, batch=4)
    streamed = [next(chunks), next(chunks)]  # the header, then the first four placements
    with session_scope(factory) as session:  # meanwhile, elsewhere: the last one leaves, one more starts
        last = session.get(Placement, ids[-1])
        last.status, last.separated_on = PlacementStatus.separated, date(2025, 2, 1)
        session.add(
            Separation(
                office_id=world.office_a, placement_id=last.id, date=date(2025, 2, 1),
                reason=SeparationReason.voluntary,
            )
        )  # fmt: skip
        report_data.placement(session, office, start=date(2025, 1, 6))
    streamed.extend(chunks)
    assert "".join(streamed) == before
    after = "".join(export_csv(factory, ExportKind.placements, office_id=world.office_a, as_of=as_of))
    assert len(after.splitlines()) == len(before.splitlines()) + 1  # the change is real: a new export has it
    assert after != before


# ---------------------------------------------------------------- the office's own rows only


def test_office_b_never_appears_in_office_a_exports(api, factory, world):
    a_client = api.client("a.worker", name="Aの利用者", phone="090-1111-0001")
    b_client = api.client("b.worker", name="B秘密の利用者", kana="ビーヒミツ", phone="090-2222-0002")
    a_employer = api.employer("a.worker", name="A工業")
    b_employer = api.employer("b.worker", name="B秘密商事")
    pa = api.placement("a.worker", start="2026-04-13", client=a_client, employer=a_employer)
    pb = api.placement("b.worker", start="2026-04-13", client=b_client, employer=b_employer)
    for who, p in (("a.worker", pa), ("b.worker", pb)):
        fu = next(f for f in api.follow_ups(who, p["id"]) if not f["automated"] and f["status"] == "pending")
        body = {"reached": True, "risk_signals": ["wants_to_quit"], "note": f"{who} のメモ"}
        api.ok(api.post(who, f"/api/v1/follow-ups/{fu['id']}/outcome", body), 201)

    for kind in KINDS:
        for who in ("a.worker", "a.manager", "a.admin"):
            raw = download(api, who, kind)
            text = raw.decode("utf-8-sig")
            assert "B秘密" not in text and "b.worker" not in text and "Worker B" not in text, (kind, who)
            rows = parse(raw)
            assert rows, (kind, who)
            assert {r["就労ID"] for r in rows} == {str(pa["id"])}, (kind, who)
        b_text = download(api, "b.worker", kind).decode("utf-8-sig")
        assert "Aの利用者" not in b_text and "B秘密の利用者" in b_text


def test_who_may_export(api, http):
    for kind in KINDS:
        assert http.get(f"/api/v1/exports/{kind}.csv").status_code == 401
        for who in ("a.worker", "a.manager", "a.admin"):
            assert api.get(who, f"/api/v1/exports/{kind}.csv").status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"lang": "fr"}, {"from": "2026-05-01", "to": "2026-04-01"}, {"as_of": "2026-02-30"}, {"from": "yesterday"}],
)
def test_bad_parameters_are_a_422_before_any_byte(params, api):
    kind = "placements" if "as_of" in params else "follow-ups"
    r = api.get("a.worker", f"/api/v1/exports/{kind}.csv", params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------- formula injection


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x","y")', "+81 90", "-1+1", "@SUM(A1)", "-山田", "=1+1"])
def test_a_formula_like_name_is_neutralised(name, api, factory, world):
    client = api.client("a.worker", name=name, phone="090-4444-0004")
    p = api.placement("a.worker", start="2026-04-13", client=client)
    fu = next(f for f in api.follow_ups("a.worker", p["id"]) if not f["automated"] and f["status"] == "pending")
    body = {"reached": True, "risk_signals": ["wants_to_quit"], "note": "=cmd|' /C calc'!A0"}
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", body), 201)
    for kind in KINDS:
        rows = parse(download(api, "a.worker", kind))
        names = {r["氏名"] for r in rows}
        assert names == {"'" + name}, (kind, names)
    notes = {r["メモ"] for r in parse(download(api, "a.worker", "follow-ups")) if r["メモ"]}
    assert notes == {"'=cmd|' /C calc'!A0"}


# ---------------------------------------------------------------- follow-ups and crisis flags


def test_follow_ups_carry_their_outcomes(api, factory, world):
    p = api.placement("a.worker", start="2026-04-13")
    fus = api.follow_ups("a.worker", p["id"])
    fu = next(f for f in fus if not f["automated"] and f["status"] == "pending")
    body = {"reached": True, "still_employed": "yes", "wellbeing": 2, "risk_signals": ["money"], "note": "家賃が心配"}
    outcome = api.ok(api.post("a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", body), 201)["outcome"]
    rows = parse(download(api, "a.worker", "follow-ups", lang="en"))
    assert len(rows) == len(api.follow_ups("a.worker", p["id"]))
    [row] = [r for r in rows if r["follow-up id"] == str(fu["id"])]
    assert row["outcome id"] == str(outcome["id"]) and row["reached"] == "yes" and row["still employed"] == "yes"
    assert (row["wellbeing (1-5)"], row["risk signals"], row["note"], row["status"]) == (
        "2",
        "money trouble",
        "家賃が心配",
        "done",
    )
    assert re.fullmatch(r"2026-04-20 09:00", row["recorded at"])  # office time, not UTC
    others = [r for r in rows if r["follow-up id"] != str(fu["id"])]
    assert all(r["outcome id"] == "" for r in others)
    # from / to select by due date
    some = parse(download(api, "a.worker", "follow-ups", **{"from": fu["due_date"], "to": fu["due_date"]}))
    assert {r["予定日"] for r in some} == {fu["due_date"]}


def test_crisis_flags_with_their_signals_summarised(api, factory, world):
    p = api.placement("a.worker", start="2026-04-13", client=api.client(name="危機 花子"))
    client_fu = next(f for f in api.follow_ups("a.worker", p["id"]) if f["party"] == "client" and not f["automated"])
    body = {"reached": True, "risk_signals": ["wants_to_quit", "money"], "note": "辞めたいと話す"}
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{client_fu['id']}/outcome", body), 201)
    [flag] = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": p["id"]}))["items"]

    [row] = parse(download(api, "a.manager", "crisis-flags"))
    assert (row["フラグID"], row["氏名"], row["重さ"], row["状態"]) == (str(flag["id"]), "危機 花子", "緊急", "未確認")
    assert row["シグナル数"] == "2" and row["担当者"] == "Worker A"
    assert sorted(row["シグナルの内訳"].split(", ")) == ["お金の問題 ×1", "退職の意向 ×1"]
    assert "辞めたいと話す" in row["シグナル（日時・種類・相手・内容）"]
    assert row["発生日時"] == "2026-04-20 09:00"
    [en] = parse(download(api, "a.manager", "crisis-flags", lang="en"))
    assert (en["severity"], en["status"]) == ("urgent", "open")
    # opened on 20 April (office time): outside a window that ends the day before
    assert parse(download(api, "a.manager", "crisis-flags", to="2026-04-19")) == []
    assert len(parse(download(api, "a.manager", "crisis-flags", **{"from": "2026-04-20"}))) == 1


# ---------------------------------------------------------------- the command line


def test_the_cli_writes_the_apis_file(api, factory, world, db_url, monkeypatch, tmp_path):
    from service.cli import app
    from service.settings import get_settings

    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=60, seed=21)
        report_data.generate(session, _office(world, "b"), placements=10, seed=22)
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        for kind in KINDS:
            out = tmp_path / f"{kind}.csv"
            args = ["export", kind, "--office", "Office A", "--output", str(out), "--as-of", "2025-12-31"]
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
            assert "rows" in result.stderr and str(out) in result.stdout
            params = {"as_of": "2025-12-31"} if kind == "placements" else {}
            assert out.read_bytes() == download(api, "a.manager", kind, **params)
        bad = runner.invoke(app, ["export", "planets", "--office", "Office A", "--output", str(tmp_path / "x.csv")])
        assert bad.exit_code != 0 and not (tmp_path / "x.csv").exists()
        nowhere = runner.invoke(
            app, ["export", "placements", "--office", "No Such", "--output", str(tmp_path / "y.csv")]
        )
        assert nowhere.exit_code != 0 and not (tmp_path / "y.csv").exists()
    finally:
        get_settings.cache_clear()
