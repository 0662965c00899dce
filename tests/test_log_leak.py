"""No personal data in logs, at any level: marker names, phone numbers, e-mail addresses and the
words 生活保護 are planted in records and requests (API, import, webhooks, jobs, a 422, a 500,
a failing job), the logs are captured at DEBUG with the production logging set-up, and no line
may contain any of them. Our own loggers are held to more: not even the raw message (before the
last-resort scrubbing) may carry them."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest

from service import jobs
from service.contacts.imports import ImportFailed
from service.jobs import run_job
from service.logging import configure_logging
from tests.contacts.test_import import csv_bytes, do_import
from tests.outcomes.test_webhooks import SMS, TOKEN, post_signed, sent_check_in, sms

NAME = "Zebulon Markerfield"
KANA = "マーカーフィールド"
PHONE = "090-8642-9753"
PHONE_DIGITS = ("8642-9753", "86429753")
EMAIL = "marker.leak@example.jp"
WELFARE = "生活保護"
MARKERS = (NAME, "Markerfield", KANA, *PHONE_DIGITS, EMAIL, "marker.leak", WELFARE)


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"twilio_auth_token": TOKEN, "twilio_two_way_sms": True})


@pytest.fixture
def logs(caplog):
    """The production handler at DEBUG, writing into a buffer; caplog sees the raw records."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    saved_levels = {name: logging.getLogger(name).level for name in ("sqlalchemy", "twilio", "httpx", "uvicorn")}
    buf = io.StringIO()
    configure_logging(logging.DEBUG, stream=buf)
    caplog.set_level(logging.DEBUG)
    yield buf, caplog
    root.setLevel(saved[0])
    for h in list(root.handlers):
        if h not in saved[1]:
            root.removeHandler(h)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def check(buf: io.StringIO, caplog) -> list[dict]:
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    assert lines, "nothing was logged at all: the capture is not working"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for line in lines:
        for marker in MARKERS:
            assert marker not in line, f"{marker!r} in log line: {line}"
    for record in caplog.records:
        if record.name.startswith("service"):
            # The message and every field (not the exception: the formatter writes its type only).
            fields = {k: v for k, v in vars(record).items() if k not in ("exc_info", "exc_text", "msg", "args")}
            raw = record.getMessage() + " " + json.dumps(fields, default=str, ensure_ascii=False)
            for marker in MARKERS:
                assert marker not in raw, f"{marker!r} in a {record.name} record: {record.getMessage()}"
    return entries


def planted_client(api, **extra):
    return api.client(name=NAME, kana=KANA, phone=PHONE, email=EMAIL, address=f"{WELFARE} 受給中 岩見沢市",
                      category="public_assistance", **extra)  # fmt: skip


def test_api_requests_and_errors_leave_no_personal_data_in_logs(api, logs):
    buf, caplog = logs
    c = planted_client(api)
    api.ok(api.get("a.worker", f"/api/v1/clients/{c['id']}"))
    api.ok(api.get("a.worker", "/api/v1/clients", params={"q": NAME}))
    api.ok(api.patch("a.worker", f"/api/v1/clients/{c['id']}", {"address": f"{WELFARE} {NAME}"}))
    bad = api.post("a.worker", "/api/v1/clients", {"name": NAME, "phone": f"{PHONE} {WELFARE}", "email": EMAIL + "@"})
    assert bad.status_code == 422
    assert api.http.post("/api/v1/auth/token", data={"username": EMAIL, "password": NAME}).status_code == 401
    assert api.get("b.worker", f"/api/v1/clients/{c['id']}").status_code == 404
    entries = check(buf, caplog)
    requests = [e for e in entries if e["msg"] == "request"]
    assert len(requests) >= 6 and all(e.get("request_id") and e.get("route") for e in requests)
    assert {"/api/v1/clients/{client_id}", "/api/v1/clients"} <= {e["route"] for e in requests}


def test_an_unhandled_error_is_a_plain_500_and_logs_no_data(api, app, logs):
    buf, caplog = logs

    def boom():
        raise RuntimeError(f"could not reach {NAME} at {PHONE} / {EMAIL} ({WELFARE})")

    app.add_api_route("/boom", boom)
    r = api.http.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error", "request_id": "boom-1"}
    entries = check(buf, caplog)
    (err,) = [e for e in entries if e["msg"] == "unhandled error"]
    assert err["request_id"] == "boom-1" and err["error"].startswith("RuntimeError at ")


def test_import_webhooks_and_jobs_leave_no_personal_data_in_logs(api, http, factory, plans, clock, logs, monkeypatch):
    buf, caplog = logs
    rows = [{"client_ref": "LEAK1", "client_name": NAME, "client_kana": KANA, "phone": PHONE, "email": EMAIL}]
    do_import(factory, plans, clock, csv_bytes(rows))
    with pytest.raises(ImportFailed):  # a bad row: the error names the line and field, the log nothing
        do_import(factory, plans, clock, csv_bytes([{"client_ref": "LEAK2", "client_name": NAME,
                                                     "phone": f"{WELFARE}{PHONE}", "email": "x@"}]))  # fmt: skip
    ci = sent_check_in(api, http, factory, clock, phone=PHONE)  # plan_check_ins and dispatch
    assert post_signed(http, SMS, sms(ci, f"{WELFARE}をやめたい {NAME} {EMAIL}")).status_code == 200
    assert post_signed(http, SMS, sms(ci, "STOP", sid="SM" + "2" * 32)).status_code == 200
    unsigned = http.post(SMS, data={"From": PHONE, "Body": WELFARE})
    assert unsigned.status_code in (401, 403)
    clock.set(clock.now() + timedelta(days=3))
    for job in ("escalate_unanswered", "morning_digest", "deliver_alerts", "mark_missed"):
        run_job(job, factory, clock, http.app.state.messaging)

    def failing(session, ctx):
        raise ValueError(f"bad row for {NAME} {PHONE} {EMAIL} {WELFARE}")

    monkeypatch.setitem(jobs.JOBS, "leaky", failing)
    with pytest.raises(ValueError):
        import asyncio

        asyncio.run(jobs.arun_job("leaky", jobs.JobContext(factory, clock, None)))
    entries = check(buf, caplog)
    assert any(e["msg"] == "job leaky failed" and e["error"].startswith("ValueError") for e in entries)
