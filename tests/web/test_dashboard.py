"""The manager dashboard (service/web/dashboard.py): the numbers it shows are the API's.

* In headless Chromium: a manager opens the dashboard; the retention chart's data (read from the
  Chart.js objects the page drew) and the table cells both equal ``GET /api/v1/retention`` for the
  same filters, and the curve chart equals ``GET /api/v1/retention/curve``; axe-core finds no
  serious or critical violation; a screenshot goes to tests/artifacts/.
* Through HTTP: roles (a worker gets 403), offices (a manager never sees another office's numbers,
  an admin may pick any office), filters in the URL, CSV downloads (BOM, the same numbers) and
  bad filters (4xx naming the field, never 500).
"""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest
from fastapi.testclient import TestClient

from service.db import session_scope
from tests.helpers import PASSWORD, sign_in_page
from tests.outcomes import report_data
from tests.outcomes.report_data import Office
from tests.web.conftest import axe_violations, screenshot, sign_in

AS_OF = "2026-03-31"
MONTHS = (1, 3, 6, 12)


def _office(world, key: str) -> Office:
    return Office(getattr(world, f"office_{key}"), [world.users[f"{key}.worker"], world.users[f"{key}.worker2"]])


@pytest.fixture
def placements(factory, world):
    """Office A: 80 generated placements (month ends, leap days, spells) over both workers and
    both categories; office B: 30 others. Different seeds, so the offices' numbers differ."""
    with session_scope(factory) as session:
        a, b = _office(world, "a"), _office(world, "b")
        report_data.generate(session, a, placements=80, seed=11)
        report_data.generate(session, b, placements=30, seed=29)
        # generate() gives every placement the first worker: give the second worker some too.
        for start, sep in ((date(2025, 1, 31), None), (date(2025, 5, 15), date(2025, 9, 1)), (date(2025, 8, 1), None)):
            report_data.placement(session, a, start=start, separated=sep, worker_id=world.users["a.worker2"])
    return world


def _api_retention(api, who: str, **params) -> dict:
    return api.ok(api.get(who, "/api/v1/retention", params=params))


def _group(report: dict, key: str, measure: str = "groups") -> dict | None:
    return next((g for g in report[measure] if g["key"] == key), None)


def _csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith(b"\xef\xbb\xbf"), "no UTF-8 BOM"
    return list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))


def _expected_retention_rows(job: dict | None, employment: dict | None) -> list[list]:
    """The rows of the headline retention table as the API's numbers give them."""
    rows = []
    for n in MONTHS:
        j = job["months"][str(n)] if job else {"eligible": 0, "retained": 0, "rate": None}
        e = employment["months"][str(n)] if employment else {"eligible": 0, "retained": 0, "rate": None}
        rows.append([j["eligible"], j["retained"], j["rate"], e["eligible"], e["retained"], e["rate"]])
    return rows


def _numbers(row: list[str]) -> list:
    """CSV cells 1..6 of a headline row back to numbers (rates exact, as written)."""
    out = []
    for i, cell in enumerate(row[1:7]):
        if i in (2, 5):
            out.append(None if cell == "" else float(cell))
        else:
            out.append(int(cell))
    return out


def pages(http: TestClient, email: str) -> TestClient:
    c = TestClient(http.app, follow_redirects=False)
    r = sign_in_page(c, email, PASSWORD)
    assert r.status_code == 303, r.text
    return c


def _headline(client: TestClient, url: str = "/manager/retention.csv", **params) -> list[list]:
    rows = _csv(client.get(url, params=params))
    assert len(rows) == 1 + len(MONTHS)
    return [_numbers(r) for r in rows[1:]]


# -- browser ------------------------------------------------------------------------------------


def _cell_number(text: str):
    text = text.strip()
    if text == "—":
        return None
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return int(text)


def test_manager_sees_the_api_numbers_in_chart_and_table(live_server, page, api, placements):
    world = placements
    category = "public_assistance"
    expected = _api_retention(api, "a.manager", as_of=AS_OF, by="category")
    job, employment = _group(expected, category), _group(expected, category, "employment")
    assert job["months"]["1"]["eligible"] > 0, "the generated data should give this group a denominator"
    curve = api.ok(api.get("a.manager", "/api/v1/retention/curve", params={"as_of": AS_OF, "by": "category"}))
    curve_points = _group(curve, category)["points"]

    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, "manager@a.example.jp")
    page.wait_for_url(f"{live_server}/today")
    page.goto(f"{live_server}/manager?as_of={AS_OF}&category={category}")
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-rates') && Chart.getChart('chart-curve')")

    # The chart: the numbers Chart.js holds, as drawn.
    rates = page.evaluate(
        "() => Chart.getChart('chart-rates').data.datasets.map(d => ({label: d.label, data: d.data}))"
    )
    assert [d["data"] for d in rates[:2]] == [
        [job["months"][str(n)]["rate"] for n in MONTHS],
        [employment["months"][str(n)]["rate"] for n in MONTHS],
    ]
    assert rates[2]["data"] == [expected["reference_rate"]] * len(MONTHS)
    drawn = page.evaluate("() => Chart.getChart('chart-curve').data.datasets.map(d => d.data)")
    upper, lower, survival, reference = drawn
    assert [(p["x"], p["y"]) for p in survival] == [(p["time"], p["survival"]) for p in curve_points]
    assert [p["y"] for p in lower] == [p["lower"] for p in curve_points]
    assert [p["y"] for p in upper] == [p["upper"] for p in curve_points]
    assert {p["y"] for p in reference} == {0.5}

    # The table view beside it: what a person (or a screen reader) reads.
    cells = page.eval_on_selector_all(
        "#table-retention tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
    )
    assert len(cells) == len(MONTHS)
    for row, n in zip(cells, MONTHS, strict=True):
        j, e = job["months"][str(n)], employment["months"][str(n)]
        shown = [_cell_number(c) for c in row[1:7]]
        assert shown[0:2] == [j["eligible"], j["retained"]] and shown[3:5] == [e["eligible"], e["retained"]]
        for got, want in ((shown[2], j["rate"]), (shown[5], e["rate"])):
            assert (got is None) == (want is None) and (want is None or round(want * 100, 1) == round(got * 100, 1))
    # The category breakdown table marks the chosen group.
    marked = page.locator("#table-retention-category tr.selected th").inner_text()
    assert marked == job["label"]
    # The filter form shows the filters of the URL.
    assert page.locator("#f-category").input_value() == category
    assert page.locator("#f-as-of").input_value() == AS_OF

    assert axe_violations(page) == []
    screenshot(page, "manager-dashboard")
    assert world.users  # (the fixture built the world)


def test_without_javascript_the_tables_show_every_number(live_server, browser, placements):
    context = browser.new_context(locale="ja-JP", java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, live_server, "manager@a.example.jp")
        page.wait_for_url(f"{live_server}/today")
        page.goto(f"{live_server}/manager?as_of={AS_OF}")
        assert page.locator(".chart").first.is_hidden()
        assert page.locator("#table-retention tbody tr").count() == len(MONTHS)
        assert page.locator("#table-retention-worker tbody tr").count() >= 2
        # (axe itself needs JavaScript; it runs on this page with JavaScript in the test above)
    finally:
        context.close()


# -- through HTTP -------------------------------------------------------------------------------


def test_workers_may_not_open_the_dashboard_and_strangers_sign_in(http, placements):
    worker = pages(http, "worker@a.example.jp")
    assert worker.get("/manager").status_code == 403
    assert worker.get("/manager/retention.csv").status_code == 403
    anonymous = TestClient(http.app, follow_redirects=False)
    r = anonymous.get("/manager")
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")


def test_the_page_and_csv_show_the_api_numbers_for_the_filters(api, http, placements):
    world = placements
    manager = pages(http, "manager@a.example.jp")
    # no filter: the office as a whole, today (2026-04-20 in Tokyo)
    whole = _api_retention(api, "a.manager")
    assert _headline(manager) == _expected_retention_rows(_group(whole, "all"), _group(whole, "all", "employment"))
    # as_of and one worker, as in a shared link
    worker2 = world.users["a.worker2"]
    by_worker = _api_retention(api, "a.manager", as_of=AS_OF, by="worker")
    got = _headline(manager, as_of=AS_OF, worker=worker2)
    assert got == _expected_retention_rows(
        _group(by_worker, str(worker2)), _group(by_worker, str(worker2), "employment")
    )
    assert got != _headline(manager, as_of=AS_OF, worker=world.users["a.worker"])
    # employment type, at another as_of: immature placements drop out of the denominators
    earlier = _api_retention(api, "a.manager", as_of="2025-02-28", by="employment_type")
    assert _headline(manager, as_of="2025-02-28", employment_type="general") == _expected_retention_rows(
        _group(earlier, "general"), _group(earlier, "general", "employment")
    )
    # the page itself carries the filters into its CSV links and its form
    html = manager.get("/manager", params={"as_of": AS_OF, "worker": worker2}).text
    assert f'href="/manager/retention.csv?as_of={AS_OF}&amp;worker={worker2}"' in html
    assert f'<option value="{worker2}" selected>' in html


def test_breakdown_csv_has_every_group_with_its_denominator(api, http, placements):
    manager = pages(http, "manager@a.example.jp")
    for by in ("worker", "employer", "employment_type", "category", "office"):
        report = _api_retention(api, "a.manager", as_of=AS_OF, by=by)
        rows = _csv(manager.get(f"/manager/retention-{by.replace('_', '-')}.csv", params={"as_of": AS_OF}))
        assert [r[0] for r in rows[1:]] == [g["label"] for g in report["groups"]]
        for row, group in zip(rows[1:], report["groups"], strict=True):
            assert int(row[1]) == group["started"]
            for i, n in enumerate(MONTHS):
                cell = group["months"][str(n)]
                eligible, retained, rate = row[2 + 3 * i : 5 + 3 * i]
                assert (int(eligible), int(retained)) == (cell["eligible"], cell["retained"])
                assert (rate == "" and cell["rate"] is None) or float(rate) == cell["rate"]


def test_a_manager_never_sees_another_offices_numbers(api, http, placements):
    world = placements
    a_manager = pages(http, "manager@a.example.jp")
    b_numbers = _api_retention(api, "b.manager", as_of=AS_OF)
    a_numbers = _api_retention(api, "a.manager", as_of=AS_OF)
    assert _group(a_numbers, "all")["started"] != _group(b_numbers, "all")["started"]
    # another office, by the filter: 404, on the page and on every CSV
    assert a_manager.get("/manager", params={"office": world.office_b}).status_code == 404
    assert a_manager.get("/manager/retention.csv", params={"office": world.office_b}).status_code == 404
    # a worker of another office as the filter: 404 too
    assert a_manager.get("/manager", params={"worker": world.users["b.worker"]}).status_code == 404
    # office A's page: office A only
    offices = _csv(a_manager.get("/manager/retention-office.csv", params={"as_of": AS_OF}))
    assert [r[0] for r in offices[1:]] == ["Office A"]
    assert int(offices[1][1]) == _group(a_numbers, "all")["started"]
    workers = _csv(a_manager.get("/manager/workers.csv"))
    assert {r[0] for r in workers[1:]} <= {"Worker A", "Worker2 A", "Manager A", "Admin A"}
    html = a_manager.get("/manager").text
    assert "Office B" not in html and "Worker B" not in html
    # an admin may pick another office, and then sees that office's numbers
    admin = pages(http, "admin@a.example.jp")
    picked = _headline(admin, as_of=AS_OF, office=world.office_b)
    assert picked == _expected_retention_rows(_group(b_numbers, "all"), _group(b_numbers, "all", "employment"))
    assert "Office B" in admin.get("/manager", params={"office": world.office_b}).text


def test_csv_downloads_have_a_bom_and_the_tables_numbers(http, placements):
    manager = pages(http, "manager@a.example.jp")
    html = manager.get("/manager", params={"as_of": AS_OF}).text
    for name in (
        "retention",
        "curve",
        "retention-worker",
        "crisis",
        "crisis-age",
        "crisis-times",
        "adherence",
        "workers",
    ):
        r = manager.get(f"/manager/{name}.csv", params={"as_of": AS_OF})
        rows = _csv(r)
        assert f'filename="teichaku-{name}-office' in r.headers["content-disposition"]
        assert len(rows) >= 2, name
        # every count in the CSV appears in the page's table of the same name
        table = html.split(f'id="table-{name}"', 1)[1].split("</table>", 1)[0]
        for row in rows[1:]:
            for cell in row[1:]:
                if cell.isdigit():
                    assert f'data-value="{cell}"' in table, (name, cell)
    assert manager.get("/manager/no-such-table.csv").status_code == 404


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"as_of": "2026-02-30"}, ["as_of"]),
        ({"as_of": "20260101"}, ["as_of"]),
        ({"from": "yesterday", "to": "2026-01-01"}, ["from"]),
        ({"from": "2026-03-01", "to": "2026-02-01"}, ["from"]),
        ({"from": "2010-01-01", "to": "2026-02-01"}, ["from"]),
        ({"worker": "abc"}, ["worker"]),
        ({"worker": "99999999999"}, ["worker"]),
        ({"office": "-1"}, ["office"]),
        ({"employment_type": "full_time"}, ["employment_type"]),
        ({"category": "<script>"}, ["category"]),
        ({"category": "needy_person", "employment_type": "general"}, ["category"]),
    ],
)
def test_bad_filters_get_a_4xx_page_naming_the_field(http, world, params, fields):
    manager = pages(http, "manager@a.example.jp")
    for url in ("/manager", "/manager/retention.csv"):
        r = manager.get(url, params=params)
        assert r.status_code == 422, (url, params, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        for f in fields:
            assert f"<strong>{f}</strong>" in r.text
        assert "<script>" not in r.text.split("</header>", 1)[1]


def test_a_worker_that_does_not_exist_is_404(http, world):
    manager = pages(http, "manager@a.example.jp")
    assert manager.get("/manager", params={"worker": "999999"}).status_code == 404
