"""The worker's pages: sign-in, sessions, CSRF, today's queue, outcomes, the client page, new
placements with their previewed dates, rescheduling and the calendar feed.

The browser test drives headless Chromium against a live server; the others use TestClient.
The fixed clock is Monday 2026-04-20 09:00 in Tokyo (tests/conftest.py).
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from icalendar import Calendar

from service.web.models import WebSession
from tests.helpers import PASSWORD, csrf_of, sign_in_page
from tests.web.conftest import axe_violations, screenshot, sign_in


@pytest.fixture
def placed(api):
    """A placement of office A's worker that started Friday 2026-04-17: the first call (due
    Saturday) moved to today, Monday 2026-04-20."""
    client = api.client("a.worker", name="定着 花子", kana="テイチャク ハナコ", phone="+819012345678",
                        address="札幌市中央区北1条西2丁目")  # fmt: skip
    employer = api.employer("a.worker", name="北海道物産")
    placement = api.placement("a.worker", start="2026-04-17", client=client, employer=employer)
    fus = api.follow_ups("a.worker", placement["id"])
    first = next(f for f in fus if f["channel"] == "phone" and f["party"] == "client")
    assert first["due_date"] == "2026-04-20"
    return {"client": client, "employer": employer, "placement": placement, "follow_ups": fus, "first": first}


def pages(http: TestClient, who: str = "worker@a.example.jp") -> TestClient:
    c = TestClient(http.app, follow_redirects=False)
    r = sign_in_page(c, who, PASSWORD)
    assert r.status_code == 303, r.text
    return c


# -- browser ------------------------------------------------------------------------------------


def test_worker_records_an_outcome_in_three_taps_and_the_item_leaves_the_queue(live_server, page, placed):
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, live_server, "worker@a.example.jp")
    page.wait_for_url(f"{live_server}/today")
    item = page.locator(f"#item-{placed['first']['id']}")
    assert item.count() == 1
    assert "定着 花子" in item.inner_text()
    assert item.locator("a[href^='tel:+819012345678']").count() == 1
    assert item.locator("a[href^='https://www.google.com/maps/search/']").count() == 1
    assert page.locator("#h-today").inner_text().startswith("今日の予定")
    assert axe_violations(page) == []
    screenshot(page, "worker-today")

    taps = 0
    item.locator("a.open").click()  # tap 1: the item opens its outcome form
    taps += 1
    page.wait_for_url(re.compile(r"/follow-ups/\d+/outcome$"))
    assert axe_violations(page) == []
    screenshot(page, "worker-outcome-form")
    page.get_by_role("button", name="話せた・元気・在職中").click()  # tap 2: the common case, recorded
    taps += 1
    page.wait_for_url(re.compile(r"/today\?done=\d+$"))
    assert taps <= 3
    assert page.locator(f"#item-{placed['first']['id']}").count() == 0
    assert "記録しました" in page.inner_text("main")
    screenshot(page, "worker-today-after")


def test_client_page_and_new_placement_pass_axe(live_server, page, placed):
    sign_in(page, live_server, "worker@a.example.jp")
    page.wait_for_url(f"{live_server}/today")
    page.goto(f"{live_server}/clients/{placed['client']['id']}")
    assert "北海道物産" in page.inner_text("main")
    assert axe_violations(page) == []
    screenshot(page, "worker-client")
    page.goto(f"{live_server}/placements/new")
    assert axe_violations(page) == []
    screenshot(page, "worker-new-placement")
    page.goto(f"{live_server}/calendar")
    assert axe_violations(page) == []


# -- sign-in, sessions, CSRF --------------------------------------------------------------------


def test_pages_need_a_session_and_sign_out_ends_it(http, world, engine):
    anon = TestClient(http.app, follow_redirects=False)
    r = anon.get("/today")
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")

    c = pages(http)
    cookie = c.cookies.get("teichaku_session")
    assert cookie
    set_cookie = sign_in_page(TestClient(http.app, follow_redirects=False), "worker@a.example.jp").headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie and "Secure" not in set_cookie
    assert c.get("/today").status_code == 200

    r = c.post("/sign-out", data={"csrf_token": csrf_of(c.get("/today").text)})
    assert r.status_code == 303
    # The old cookie no longer works, even sent again by hand.
    again = TestClient(http.app, follow_redirects=False)
    again.cookies.set("teichaku_session", cookie)
    assert again.get("/today").status_code == 303
    with engine.connect() as conn:
        hashes = conn.execute(sa.select(WebSession.token_hash)).scalars().all()
    import hashlib

    assert hashlib.sha256(cookie.encode()).hexdigest() not in hashes


def test_wrong_password_is_refused_with_the_form_again(http, world):
    c = TestClient(http.app, follow_redirects=False)
    r = sign_in_page(c, "worker@a.example.jp", "not the password")
    assert r.status_code == 401
    assert "teichaku_session" not in c.cookies


def test_forms_without_a_csrf_token_are_refused(http, placed):
    c = pages(http)
    url = f"/follow-ups/{placed['first']['id']}/outcome"
    assert c.post(url, data={"reached": "yes", "still_employed": "yes"}).status_code == 403
    assert c.post(url, data={"reached": "yes", "csrf_token": "forged"}).status_code == 403
    assert c.post("/sign-out").status_code == 403
    # A token from another session does not work either.
    other = pages(http, "worker2@a.example.jp")
    token = csrf_of(other.get("/today").text)
    assert c.post(url, data={"reached": "yes", "csrf_token": token}).status_code == 403
    # Nothing was recorded; the item is still in the queue.
    assert f"item-{placed['first']['id']}" in c.get("/today").text
    # The sign-in form itself needs its token.
    anon = TestClient(http.app, follow_redirects=False)
    assert anon.post("/sign-in", data={"email": "worker@a.example.jp", "password": PASSWORD}).status_code == 403


def test_language_follows_the_users_preference_then_accept_language(http, world):
    anon = TestClient(http.app, follow_redirects=False)
    assert "サインイン" in anon.get("/sign-in").text
    assert ">Sign in<" in anon.get("/sign-in", headers={"Accept-Language": "en-US,en;q=0.9"}).text
    c = pages(http)
    page = c.get("/today")
    assert "今日の予定" in page.text
    r = c.post("/language", data={"csrf_token": csrf_of(page.text), "language": "en", "next": "/today"})
    assert r.status_code == 303
    c.cookies.delete("teichaku_lang")  # the preference is the user's own, not only the cookie's
    assert "Due today" in c.get("/today", headers={"Accept-Language": "ja"}).text


# -- the outcome form -------------------------------------------------------------------------------


def test_outcome_with_details_and_bad_input(http, placed, api):
    c = pages(http)
    fu = placed["first"]["id"]
    token = csrf_of(c.get(f"/follow-ups/{fu}/outcome").text)
    bad = c.post(f"/follow-ups/{fu}/outcome", data={"csrf_token": token, "reached": "maybe", "wellbeing": "9"})
    assert bad.status_code == 422
    assert 'id="err-reached"' in bad.text and 'id="err-wellbeing"' in bad.text
    ok = c.post(
        f"/follow-ups/{fu}/outcome",
        data={"csrf_token": token, "reached": "yes", "still_employed": "yes", "wellbeing": "2",
              "risk_signals": ["health", "money"], "note": "少し疲れている"},
    )  # fmt: skip
    assert ok.status_code == 303
    fus = {f["id"]: f for f in api.follow_ups("a.worker", placed["placement"]["id"])}
    assert fus[fu]["status"] == "done"


# -- the client page: office isolation, reschedule, separation ------------------------------------


def test_another_offices_client_is_404(http, placed, api):
    other = api.client("b.worker", name="ZZB-MARKER 乙野")
    c = pages(http)
    assert c.get(f"/clients/{placed['client']['id']}").status_code == 200
    r = c.get(f"/clients/{other['id']}")
    assert r.status_code == 404 and "ZZB-MARKER" not in r.text
    b_fu = api.follow_ups("b.worker", api.placement("b.worker", start="2026-04-13", client=other)["id"])[0]
    token = csrf_of(c.get("/today").text)
    assert c.get(f"/follow-ups/{b_fu['id']}/outcome").status_code == 404
    r = c.post(f"/follow-ups/{b_fu['id']}/reschedule", data={"csrf_token": token, "due_date": "2026-05-01",
                                                              "reason": "x"})  # fmt: skip
    assert r.status_code == 404


def test_reschedule_with_a_reason(http, placed, api):
    c = pages(http)
    visit = next(f for f in placed["follow_ups"] if f["channel"] == "visit")
    page = c.get(f"/clients/{placed['client']['id']}")
    assert f'action="/follow-ups/{visit["id"]}/reschedule"' in page.text
    token = csrf_of(page.text)
    url = f"/follow-ups/{visit['id']}/reschedule"
    no_reason = c.post(url, data={"csrf_token": token, "due_date": "2026-05-07", "reason": ""})
    assert no_reason.status_code == 422 and f'id="err-{visit["id"]}-reason"' in no_reason.text
    past = c.post(url, data={"csrf_token": token, "due_date": "2026-04-01", "reason": "本人の都合"})
    assert past.status_code == 422 and f'id="err-{visit["id"]}-due_date"' in past.text
    ok = c.post(url, data={"csrf_token": token, "due_date": "2026-05-07", "reason": "本人の都合"})
    assert ok.status_code == 303
    moved = {f["id"]: f for f in api.follow_ups("a.worker", placed["placement"]["id"])}[visit["id"]]
    assert moved["due_date"] == "2026-05-07" and "本人の都合" in moved["status_reason"]


def test_record_a_separation_from_the_client_page(http, placed, api):
    c = pages(http)
    token = csrf_of(c.get(f"/clients/{placed['client']['id']}").text)
    url = f"/placements/{placed['placement']['id']}/separation"
    bad = c.post(url, data={"csrf_token": token, "date": "2026-13-01", "reason": "nope"})
    assert bad.status_code == 422
    ok = c.post(url, data={"csrf_token": token, "date": "2026-04-19", "reason": "other", "note": ""})
    assert ok.status_code == 303
    page = c.get(f"/clients/{placed['client']['id']}").text
    assert "離職" in page
    statuses = {f["status"] for f in api.follow_ups("a.worker", placed["placement"]["id"])}
    assert "cancelled" in statuses


# -- new placement: preview, then save -----------------------------------------------------------


def _placement_form(token: str, **extra) -> dict:
    return {
        "csrf_token": token, "name": "新規 太郎", "kana": "シンキ タロウ", "phone": "090-1111-2222",
        "category": "public_assistance", "language": "ja", "consent_automated": "on",
        "employer_name": "札幌テック", "job_title": "倉庫作業", "employment_type": "general",
        "start_date": "2026-04-19", "plan": "standard-3m",
    } | extra  # fmt: skip


def test_preview_shows_moved_dates_and_saves_nothing_until_confirmed(http, world, api):
    c = pages(http)
    token = csrf_of(c.get("/placements/new").text)
    before = api.ok(api.get("a.worker", "/api/v1/placements"))["total"]
    r = c.post("/placements/preview", data=_placement_form(token))
    assert r.status_code == 200, r.text
    # Start Sunday 4/19: the visit 10 days on falls on Showa Day (4/29, a holiday) and moves to 4/30;
    # the first call (Monday 4/20) stays.
    assert "2026年4月30日" in r.text and "昭和の日" in r.text
    assert "2026年4月20日" in r.text
    assert api.ok(api.get("a.worker", "/api/v1/placements"))["total"] == before
    saved = c.post("/placements/new", data=_placement_form(token))
    assert saved.status_code == 303
    placements = api.ok(api.get("a.worker", "/api/v1/placements"))
    assert placements["total"] == before + 1
    new = max(placements["items"], key=lambda p: p["id"])
    visit = next(f for f in api.follow_ups("a.worker", new["id"]) if f["channel"] == "visit")
    assert visit["due_date"] == "2026-04-30"


def test_new_placement_bad_input_names_the_fields(http, world):
    c = pages(http)
    token = csrf_of(c.get("/placements/new").text)
    r = c.post("/placements/preview", data=_placement_form(token, name="", start_date="someday", phone="12"))
    assert r.status_code == 422
    for field in ("client-name", "placement-start_date", "client-phone"):
        assert f'id="err-{field}"' in r.text


# -- calendar feed ------------------------------------------------------------------------------------


def test_calendar_feed_is_private_revocable_and_parses(http, placed):
    c = pages(http)
    page = c.get("/calendar")
    r = c.post("/calendar/token", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 200
    url = re.search(r'value="(http[^"]+\.ics)"', r.text).group(1)
    path = url.split("://", 1)[1].split("/", 1)[1]
    anon = TestClient(http.app)
    feed = anon.get("/" + path)
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("text/calendar")
    cal = Calendar.from_ical(feed.content)
    events = [e for e in cal.walk("VEVENT")]
    visits = [f for f in placed["follow_ups"] if f["channel"] in ("visit", "meeting") and f["status"] == "pending"]
    assert len(events) == len(visits) > 0
    assert sorted(str(e.decoded("dtstart")) for e in events) == sorted(f["due_date"] for f in visits)
    assert all("定着 花子" not in e.to_ical().decode() for e in events)  # no client name in phone calendars
    # Regenerating replaces the address; revoking ends it.
    r2 = c.post("/calendar/token", data={"csrf_token": csrf_of(r.text)})
    assert anon.get("/" + path).status_code == 404
    path2 = re.search(r'value="(http[^"]+\.ics)"', r2.text).group(1).split("://", 1)[1].split("/", 1)[1]
    assert anon.get("/" + path2).status_code == 200
    c.post("/calendar/revoke", data={"csrf_token": csrf_of(r2.text)})
    assert anon.get("/" + path2).status_code == 404
