"""The client's page behind a check-in link (/r/{token}) in headless Chromium at 320 px: the office
and its phone number, four large answers, one use only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import select

from service.contacts.messaging.models import OutboxMessage, Purpose
from service.jobs import run_job
from tests.web.conftest import axe_violations, screenshot

TOKYO = ZoneInfo("Asia/Tokyo")


def _check_in_link(api, app, factory, clock) -> tuple[str, int]:
    """A real check-in: a placement whose automated SMS is due, planned and dispatched by the jobs."""
    client = api.client("a.worker", name="返信 一郎", phone="+819011112222", consent_automated=True)
    api.placement("a.worker", start="2026-04-17", client=client)  # the SMS check-in: 4 days on, 4/21
    clock.set(datetime(2026, 4, 21, 10, 0, tzinfo=TOKYO))
    messaging = app.state.messaging
    # In a thread of its own: the jobs run their own event loop, and Playwright's is running here.
    with ThreadPoolExecutor(1) as pool:
        for job in ("plan_check_ins", "dispatch"):
            pool.submit(run_job, job, factory, clock, messaging).result()
    with factory() as s:
        row = s.exec(
            select(OutboxMessage).where(OutboxMessage.purpose == Purpose.check_in).order_by(OutboxMessage.id)
        ).first()
    assert row is not None, "no check-in was sent"
    return messaging.links.token(row.id), row.id


def test_client_answers_once_on_a_320px_phone(live_server, browser, api, app, factory, clock):
    token, outbox_id = _check_in_link(api, app, factory, clock)
    context = browser.new_context(locale="ja-JP", viewport={"width": 320, "height": 640})
    page = context.new_page()
    try:
        response = page.goto(f"{live_server}/r/{token}")
        assert response.status == 200
        body = page.inner_text("body")
        assert "Office A" in body  # the office's name
        assert page.locator("a[href='tel:+81126221001']").count() == 1  # its phone, always visible
        answers = page.locator("form button[name='answer']")
        assert answers.count() == 4
        # Readable at 320 px: nothing wider than the screen.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 320
        assert axe_violations(page) == []
        screenshot(page, "client-reply-ask")

        page.get_by_label("ひとこと").fill("元気にやっています")
        page.get_by_role("button", name="順調です").click()
        assert "ありがとうございました" in page.inner_text("body")
        assert page.locator("a[href='tel:+81126221001']").count() == 1
        screenshot(page, "client-reply-thanks")

        again = page.goto(f"{live_server}/r/{token}")
        assert again.status == 410
        assert "もう使われています" in page.inner_text("body")
        assert page.locator("a[href='tel:+81126221001']").count() == 1
        assert axe_violations(page) == []
        screenshot(page, "client-reply-used")
    finally:
        context.close()
    with factory() as s:
        assert s.get(OutboxMessage, outbox_id).answered_at is not None
