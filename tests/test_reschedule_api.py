"""POST /api/v1/follow-ups/{id}/reschedule: the client page's reschedule, for API callers.

The clock is Monday 2026-04-20, 09:00 in Tokyo (tests/conftest.py). The new day is kept as the
caller gives it, a closed day too, exactly as the client page keeps it (a worker may agree a visit
on a holiday); it is the plan's own dates that are moved off closed days when they are written.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from service.audit.models import AuditEvent
from service.db import session_scope
from tests.helpers import csrf_of, sign_in_page


def _url(fu_id: int) -> str:
    return f"/api/v1/follow-ups/{fu_id}/reschedule"


@pytest.fixture
def placed(api) -> dict:
    placement = api.placement(start="2026-04-13")
    return {"placement": placement, "follow_ups": api.follow_ups("a.worker", placement["id"])}


def _visit(placed: dict) -> dict:
    return next(f for f in placed["follow_ups"] if f["channel"] == "visit" and f["status"] == "pending")


def _fields(response) -> dict[str, str]:
    """{field: message} from a 422's detail (the last element of each ``loc``)."""
    assert response.status_code == 422, response.text
    return {str(e["loc"][-1]): e["msg"] for e in response.json()["detail"]}


def test_moves_the_day_to_month_end_with_its_window_and_reason(api, placed, factory):
    visit = _visit(placed)
    body = {"due_date": "2026-04-30", "reason": " 本人の都合で月末に "}
    moved = api.ok(api.post("a.worker", _url(visit["id"]), body))
    assert moved["id"] == visit["id"] and moved["due_date"] == "2026-04-30"
    assert moved["window_end"] == (date(2026, 4, 30) + timedelta(days=visit["window_days"])).isoformat()
    assert moved["status"] == "pending"
    assert moved["status_reason"] == f"rescheduled from {visit['due_date']}: 本人の都合で月末に"
    again = api.ok(api.get("a.worker", f"/api/v1/follow-ups/{visit['id']}"))
    assert (again["due_date"], again["status_reason"]) == ("2026-04-30", moved["status_reason"])
    # In the audit trail as the page's change is (the flush hook), attributed to the caller.
    with session_scope(factory) as s:
        events = s.exec(
            select(AuditEvent)
            .where(AuditEvent.record_type == "follow_up", AuditEvent.record_id == visit["id"])
            .order_by(AuditEvent.id)
        ).all()
        update = [e for e in events if e.action == "update" and "due_date" in (e.changes or {})]
        assert len(update) == 1, [(e.action, e.changes) for e in events]
        assert update[0].actor_id == api.world.users["a.worker"]
        assert update[0].office_id == api.world.office_a
        assert update[0].changes["due_date"] == {"old": visit["due_date"], "new": "2026-04-30"}


def test_a_holiday_is_kept_as_given_as_the_page_keeps_it(http, api, placed):
    visits = [f for f in placed["follow_ups"] if f["status"] == "pending" and not f["automated"]][:2]
    # 元日 through the API, 天皇誕生日 (2027-02-23, a Tuesday) through the client page.
    by_api = api.ok(api.post("a.worker", _url(visits[0]["id"]), {"due_date": "2027-01-01", "reason": "本人の希望"}))
    assert by_api["due_date"] == "2027-01-01"
    pages = TestClient(http.app, follow_redirects=False)
    assert sign_in_page(pages, "worker@a.example.jp").status_code == 303
    page = pages.get(f"/clients/{placed['placement']['client_id']}")
    r = pages.post(
        f"/follow-ups/{visits[1]['id']}/reschedule",
        data={"csrf_token": csrf_of(page.text), "due_date": "2027-02-23", "reason": "本人の希望"},
    )
    assert r.status_code == 303
    by_page = api.ok(api.get("a.worker", f"/api/v1/follow-ups/{visits[1]['id']}"))
    assert by_page["due_date"] == "2027-02-23"
    assert by_api["status_reason"].endswith(": 本人の希望") and by_page["status_reason"].endswith(": 本人の希望")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"due_date": "2026-05-07"}, {"reason"}),  # missing
        ({"due_date": "2026-05-07", "reason": "   "}, {"reason"}),  # blank
        ({"due_date": "2026-05-07", "reason": "x" * 301}, {"reason"}),
        ({"reason": "本人の都合"}, {"due_date"}),
        ({"due_date": "2026-02-30", "reason": "本人の都合"}, {"due_date"}),  # no such day
        ({"due_date": "tomorrow", "reason": "本人の都合"}, {"due_date"}),
        ({"due_date": "2026-04-19", "reason": "本人の都合"}, {"due_date"}),  # yesterday in Tokyo
        ({"due_date": "2027-04-22", "reason": "本人の都合"}, {"due_date"}),  # more than a year ahead
        ({"due_date": "2026-04-19", "reason": ""}, {"due_date", "reason"}),  # every problem at once
        ({"due_date": "2026-05-07", "reason": "x", "office_id": 2}, {"office_id"}),  # not a field
    ],
)
def test_bad_input_is_422_naming_the_field_and_changes_nothing(api, placed, body, fields):
    visit = _visit(placed)
    r = api.post("a.worker", _url(visit["id"]), body)
    assert set(_fields(r)) == fields
    assert all(_fields(r).values())
    after = api.ok(api.get("a.worker", f"/api/v1/follow-ups/{visit['id']}"))
    assert (after["due_date"], after["status_reason"]) == (visit["due_date"], visit["status_reason"])


def test_today_is_allowed(api, placed):
    visit = _visit(placed)
    assert (
        api.ok(api.post("a.worker", _url(visit["id"]), {"due_date": "2026-04-20", "reason": "前倒し"}))["due_date"]
        == "2026-04-20"
    )


def test_another_offices_follow_up_is_404_and_unchanged(api):
    b_placement = api.placement("b.worker", start="2026-04-13")
    b_fu = api.follow_ups("b.worker", b_placement["id"])[0]
    for who in ("a.worker", "a.manager", "a.admin"):
        r = api.post(who, _url(b_fu["id"]), {"due_date": "2026-05-07", "reason": "x"})
        assert r.status_code == 404, (who, r.text)
    assert api.post("a.worker", _url(987654), {"due_date": "2026-05-07", "reason": "x"}).status_code == 404
    after = api.ok(api.get("b.worker", f"/api/v1/follow-ups/{b_fu['id']}"))
    assert after["due_date"] == b_fu["due_date"]


def test_signed_out_is_401(http, api, placed):
    r = http.post(_url(_visit(placed)["id"]), json={"due_date": "2026-05-07", "reason": "x"})
    assert r.status_code == 401


def test_a_done_follow_up_cannot_be_moved(api, placed):
    phone = next(f for f in placed["follow_ups"] if f["party"] == "client" and f["channel"] == "phone")
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{phone['id']}/outcome", {"reached": True}), 201)
    r = api.post("a.worker", _url(phone["id"]), {"due_date": "2026-05-07", "reason": "x"})
    assert r.status_code == 409 and "already done" in r.json()["detail"]
