"""An emergency reaches the worker and the office's managers at once, by e-mail, at any hour."""

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import select

from service.contacts.messaging.models import MessageStatus, OutboxMessage, Purpose
from service.db import session_scope
from service.jobs import run_job
from service.outcomes import crisis
from tests.contacts.smtp_sink import smtp_messaging, smtp_sink

TOKYO = ZoneInfo("Asia/Tokyo")


def test_emergency_alert_arrives_at_a_real_smtp_server_at_night(api, factory, settings, clock):
    p = api.placement(start="2026-04-13", client=api.client(name="緊急 テスト"))
    clock.set(datetime(2026, 4, 21, 2, 30, tzinfo=TOKYO))  # the middle of the night
    with session_scope(factory) as s:
        crisis.raise_signal(
            s, placement_id=p["id"], kind="reply_emergency", source_party="client",
            source="reply:test", detail="talk of dying or self-harm", clock=clock,
        )  # fmt: skip
    with smtp_sink() as (sink, port):
        messaging = smtp_messaging(settings, port)
        assert run_job("deliver_alerts", factory, clock, messaging) == 2  # the worker and the manager
        assert run_job("deliver_alerts", factory, clock, messaging) == 0  # once per alert
        assert run_job("dispatch", factory, clock, messaging) == 2
    got = {tuple(r.rcpt_tos): r.message for r in sink.received}
    assert set(got) == {("worker@a.example.jp",), ("manager@a.example.jp",)}
    mail = got[("worker@a.example.jp",)]
    body = mail.get_content()
    assert "緊急 テスト" in mail["Subject"] and "+819012345678" in body
    assert "対応すること" in body and "talk of dying or self-harm" in body
    with factory() as s:
        rows = s.exec(select(OutboxMessage).where(OutboxMessage.purpose == Purpose.alert)).all()
    assert {r.status for r in rows} == {MessageStatus.sent}
    assert all(r.send_tz is None for r in rows)  # no quiet hours for staff alerts
    # The flag records that its alerts went out, for the response-time measures.
    flag = api.ok(api.get("a.manager", f"/api/v1/crisis-flags?placement_id={p['id']}"))["items"][0]
    detail = api.ok(api.get("a.manager", f"/api/v1/crisis-flags/{flag['id']}"))
    assert detail["severity"] == "emergency"
    assert all(a["delivered_at"] for a in detail["alerts"]) and len(detail["alerts"]) == 2


def test_no_alert_without_an_emergency(api, factory, settings, clock):
    p = api.placement(start="2026-04-13")
    with session_scope(factory) as s:
        crisis.raise_signal(
            s, placement_id=p["id"], kind="reply_urgent", source_party="client", source="reply:test",
            detail="asks to be called", clock=clock,
        )  # fmt: skip
    with smtp_sink() as (sink, port):
        assert run_job("deliver_alerts", factory, clock, smtp_messaging(settings, port)) == 0
    assert sink.received == []
