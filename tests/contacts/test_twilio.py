"""SMS and calls through the real ``twilio`` client, against real HTTP peers on loopback.

* Prism serves Twilio's own OpenAPI description and validates every request (``tests/twilio_mock.py``):
  a check-in it accepts (201, a "SM..." or "CA..." SID) is one whose request conforms.
* A small recording server of ours stands in front of Prism when a test must see what was sent
  and when (the send rate), or answer instead of it the way Twilio answers when things go wrong
  (its error JSON, a slow answer, a dropped connection).

Nothing in the adapter is faked: the outbox jobs run, the adapter builds the real client, the
client speaks HTTP.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from sqlmodel import select
from twilio.base.exceptions import TwilioRestException

from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage
from service.contacts.messaging.outbox import Messaging
from service.contacts.messaging.twilio_adapter import TwilioAdapter
from service.contacts.models import Channel, FollowUp, FollowUpKind, FollowUpStatus
from service.db import session_scope
from service.jobs import run_job
from tests.twilio_mock import free_port, prism  # noqa: F401  (the session's Prism server)

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2
FROM = "+15005550006"
START = "2026-04-16"  # the standard plan's automated SMS (day 4) is due on the fixture clock's day


# ---------------------------------------------------------------- a recording Twilio peer


@dataclass
class Seen:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    form: dict[str, str]


@dataclass
class Peer:
    """A real HTTP server on 127.0.0.1. ``answer`` decides what it does with each request:
    ``("forward",)`` to Prism, ``("json", status, body)``, ``("raw", status, text)``,
    ``("sleep", seconds)`` then forward, or ``("drop",)`` (read it all, close without a word)."""

    upstream: str
    answer: tuple = ("forward",)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


def _handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            arrived = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            form = dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
            peer.seen.append(Seen(arrived, "POST", self.path, form))
            kind, *args = peer.answer
            if kind == "drop":
                self.close_connection = True
                return
            if kind == "json":
                status, body = args
                return self._reply(status, json.dumps(body).encode(), "application/json")
            if kind == "raw":
                status, text = args
                return self._reply(status, text.encode(), "text/html")
            if kind == "sleep":
                time.sleep(args[0])
            passed_on = ("authorization", "content-type", "accept")
            headers = {k: v for k, v in self.headers.items() if k.lower() in passed_on}
            upstream = requests.post(peer.upstream + self.path, data=raw, headers=headers, timeout=10)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                self._reply(upstream.status_code, upstream.content, upstream.headers.get("Content-Type", ""))

    return Handler


@pytest.fixture
def peer(prism) -> Iterator[Peer]:  # noqa: F811
    p = Peer(upstream=prism.url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(p))
    server.daemon_threads = True
    p.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield p
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- helpers


def twilio_messaging(settings, base_url: str, **extra) -> Messaging:
    return Messaging.from_settings(
        settings.model_copy(
            update={
                "twilio_api_base_url": base_url,
                "twilio_account_sid": ACCOUNT_SID,
                "twilio_auth_token": "test-auth-token-0123456789",
                "twilio_from": FROM,
                "public_url": "https://teichaku.example.jp",
                "send_rate_per_second": 50,  # the rate test sets its own
                **extra,
            }
        )
    )


def due_check_in(api, factory, *, phone: str = "090-1234-5678", language: str = "ja", channel=Channel.sms) -> int:
    """A placement whose automated client check-in is due today; returns that follow-up's id."""
    client = api.client(phone=phone, language=language, consent_automated=True)
    placement = api.placement(start=START, client=client)
    (fu,) = [
        f for f in api.follow_ups("a.worker", placement["id"])
        if f["automated"] and f["channel"] == "sms" and f["due_date"] == "2026-04-20"
    ]  # fmt: skip
    if channel != Channel.sms:
        with session_scope(factory) as s:
            row = s.get(FollowUp, fu["id"])
            row.channel = channel
            s.add(row)
    return fu["id"]


def outbox_of(factory, follow_up_id: int) -> OutboxMessage:
    with factory() as s:
        (row,) = s.exec(select(OutboxMessage).where(OutboxMessage.follow_up_id == follow_up_id)).all()
        return row


def plan_and_dispatch(factory, clock, messaging) -> tuple[int, int]:
    planned = run_job("plan_check_ins", factory, clock, messaging)
    sent = run_job("dispatch", factory, clock, messaging)
    return planned, sent


def last_request(messaging: Messaging) -> dict:
    """What the real twilio client last sent (its own record of the request)."""
    return dict(messaging.phone.client.http_client._test_only_last_request.data)


# ---------------------------------------------------------------- through Prism


def test_sms_check_in_is_accepted_by_twilios_api(prism, api, factory, clock, settings):  # noqa: F811
    fu_id = due_check_in(api, factory, phone="090-1234-5678")
    m = twilio_messaging(settings, prism.url)
    assert isinstance(m.phone, TwilioAdapter)
    assert plan_and_dispatch(factory, clock, m) == (1, 1)
    row = outbox_of(factory, fu_id)
    assert row.status == MessageStatus.sent, (row.error_code, row.error_reason)
    assert row.provider_id.startswith("SM") and len(row.provider_id) == 34
    sent = last_request(m)
    assert sent["To"] == "+819012345678"
    assert sent["From"] == FROM and "MessagingServiceSid" not in sent
    assert sent["Body"] == row.body and "https://teichaku.example.jp/r/" in row.body
    assert sent["StatusCallback"] == f"https://teichaku.example.jp/webhooks/twilio/status?outbox_id={row.id}"
    # Sent once: another tick sends nothing.
    assert plan_and_dispatch(factory, clock, m) == (0, 0)


def test_voice_check_in_starts_a_call_that_fetches_our_twiml(prism, api, factory, clock, settings):  # noqa: F811
    fu_id = due_check_in(api, factory, phone="080-2222-3333", language="en", channel=Channel.voice)
    m = twilio_messaging(settings, prism.url, twilio_from="+81501234567")
    assert plan_and_dispatch(factory, clock, m) == (1, 1)
    row = outbox_of(factory, fu_id)
    assert row.channel == MessageChannel.voice
    assert row.status == MessageStatus.sent, (row.error_code, row.error_reason)
    assert row.provider_id.startswith("CA") and len(row.provider_id) == 34
    sent = last_request(m)
    assert sent["To"] == "+818022223333" and sent["From"] == "+81501234567"
    assert sent["Url"] == f"https://teichaku.example.jp/webhooks/twilio/voice/{row.id}"
    assert sent["StatusCallback"] == f"https://teichaku.example.jp/webhooks/twilio/status?outbox_id={row.id}"


def test_a_messaging_service_sender_sends_sms_by_its_sid_and_cannot_call(prism, api, factory, clock, settings):  # noqa: F811
    sms_fu = due_check_in(api, factory, phone="090-1234-5678")
    voice_fu = due_check_in(api, factory, phone="080-2222-3333", channel=Channel.voice)
    m = twilio_messaging(settings, prism.url, twilio_from=SERVICE_SID)
    assert plan_and_dispatch(factory, clock, m) == (2, 1)
    sms = outbox_of(factory, sms_fu)
    assert sms.status == MessageStatus.sent and sms.provider_id.startswith("SM")
    sent = last_request(m)
    assert sent["MessagingServiceSid"] == SERVICE_SID and "From" not in sent
    # A call needs a number to call from: refused before any request, in plain words.
    call = outbox_of(factory, voice_fu)
    assert call.status == MessageStatus.failed
    assert "calls need a phone number" in call.error_reason


def test_prism_refuses_a_request_that_does_not_conform(prism):  # noqa: F811
    """So a 201 from it means something: a malformed messaging service SID is a 422."""
    adapter = TwilioAdapter(
        account_sid=ACCOUNT_SID, auth_token="t", sender=FROM, public_url="https://x.example", base_url=prism.url
    )
    with pytest.raises(TwilioRestException) as refused:
        adapter.client.messages.create(to="+819012345678", messaging_service_sid="MG-not-a-sid", body="x")
    assert refused.value.status == 422
    with pytest.raises(TwilioRestException) as refused:
        adapter.client.calls.create(to="+819012345678", from_=FROM, url="not a url")
    assert refused.value.status == 422
    assert adapter.client.messages.create(to="+819012345678", from_=FROM, body="x").sid.startswith("SM")


# ---------------------------------------------------------------- when Twilio says no


def _twilio_error(code: int, status: int, message: str) -> dict:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return {"code": code, "message": message, "more_info": more_info, "status": status}


PERMANENT_CASES = {
    "21610 unsubscribed": (("json", 400, _twilio_error(21610, 400, "Attempt to send to unsubscribed recipient")),
                           "21610", "blocked messages from us (unsubscribed)"),
    "21614 not a mobile": (("json", 400, _twilio_error(21614, 400, "'To' number is not a valid mobile number")),
                           "21614", "not a mobile phone"),
    "21211 invalid number": (("json", 400, _twilio_error(21211, 400, "Invalid 'To' Phone Number")),
                             "21211", "the phone number is not valid"),
    # The same refusal in the RFC 9457 shape, which the twilio client raises as another exception class.
    "21610 as a problem document": (
        ("json", 400, {"type": "https://www.twilio.com/docs/errors/21610", "title": "Unsubscribed recipient",
                       "status": 400, "code": 21610, "detail": "Attempt to send to unsubscribed recipient"}),
        "21610", "blocked messages from us (unsubscribed)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PERMANENT_CASES))
def test_a_permanent_twilio_error_is_never_retried_and_goes_to_the_worker(case, peer, api, factory, clock, settings):
    answer, code, words = PERMANENT_CASES[case]
    peer.answer = answer
    fu_id = due_check_in(api, factory)
    m = twilio_messaging(settings, peer.url)
    assert plan_and_dispatch(factory, clock, m) == (1, 0)
    row = outbox_of(factory, fu_id)
    assert (row.status, row.error_code) == (MessageStatus.failed, code)
    assert words in row.error_reason
    with factory() as s:
        fu = s.get(FollowUp, fu_id)
        assert fu.status == FollowUpStatus.attempted and words in fu.status_reason
        (call,) = s.exec(select(FollowUp).where(FollowUp.retry_of == fu_id)).all()
        assert (call.kind, call.channel, call.automated) == (FollowUpKind.retry, Channel.phone, False)
        assert words in call.status_reason
    # Never again, however long we wait.
    _advance(clock, timedelta(hours=3))
    assert run_job("dispatch", factory, clock, m) == 0
    assert len(peer.seen) == 1


TRANSIENT_CASES = {
    "429 too many requests": (("json", 429, _twilio_error(20429, 429, "Too Many Requests")), "20429"),
    "500 with an HTML page": (("raw", 500, "<html>Internal Server Error</html>"), "500"),
    "503 service unavailable": (("json", 503, _twilio_error(20503, 503, "Service unavailable")), "20503"),
}


@pytest.mark.parametrize("case", list(TRANSIENT_CASES))
def test_a_transient_twilio_error_is_retried_later(case, peer, api, factory, clock, settings):
    answer, code = TRANSIENT_CASES[case]
    peer.answer = answer
    fu_id = due_check_in(api, factory)
    m = twilio_messaging(settings, peer.url)
    assert plan_and_dispatch(factory, clock, m) == (1, 0)
    row = outbox_of(factory, fu_id)
    assert (row.status, row.error_code, row.attempts) == (MessageStatus.queued, code, 1)
    assert row.next_attempt_at > clock.now()
    assert run_job("dispatch", factory, clock, m) == 0  # not before the backoff
    peer.answer = ("forward",)
    _advance(clock, row.next_attempt_at - clock.now())
    assert run_job("dispatch", factory, clock, m) == 1
    row = outbox_of(factory, fu_id)
    assert row.status == MessageStatus.sent and row.provider_id.startswith("SM")
    assert len(peer.seen) == 2


def test_nothing_listening_is_transient_the_message_never_left(api, factory, clock, settings):
    fu_id = due_check_in(api, factory)
    m = twilio_messaging(settings, f"http://127.0.0.1:{free_port()}")
    assert plan_and_dispatch(factory, clock, m) == (1, 0)
    row = outbox_of(factory, fu_id)
    assert (row.status, row.error_code) == (MessageStatus.queued, "network")


def _advance(clock, delta: timedelta) -> None:
    clock.set(clock.now() + delta)


# ---------------------------------------------------------------- maybe sent: never re-sent


@pytest.mark.parametrize("answer", [("sleep", 1.5), ("drop",)], ids=["read timeout", "connection dropped"])
def test_an_unanswered_request_leaves_the_message_unknown_and_it_is_never_resent(
    answer, peer, api, factory, clock, settings
):
    """The request reached the peer, which may have sent the SMS: never send it again blindly."""
    peer.answer = answer
    fu_id = due_check_in(api, factory)
    m = twilio_messaging(settings, peer.url, twilio_timeout_seconds=0.5)
    assert plan_and_dispatch(factory, clock, m) == (1, 0)
    row = outbox_of(factory, fu_id)
    assert row.status == MessageStatus.unknown, (row.error_code, row.error_reason)
    assert row.error_reason
    peer.answer = ("forward",)
    for _ in range(3):
        _advance(clock, timedelta(hours=1))
        run_job("plan_check_ins", factory, clock, m)
        run_job("reconcile_outbox", factory, clock, m)
        assert run_job("dispatch", factory, clock, m) == 0
    assert len(peer.seen) == 1
    assert outbox_of(factory, fu_id).status == MessageStatus.unknown


# ---------------------------------------------------------------- the send rate


def test_the_send_rate_of_a_sender_is_never_exceeded(peer, api, factory, clock, settings):
    for n in range(5):
        due_check_in(api, factory, phone=f"090-1234-56{n:02d}")
    m = twilio_messaging(settings, peer.url, send_rate_per_second=2)
    assert plan_and_dispatch(factory, clock, m) == (5, 5)
    times = [s.at for s in peer.seen]
    assert len(times) == 5
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 2 per second: at least 0.5 s apart as the server saw them arrive (not only as they left us).
    assert min(gaps) >= 0.5, gaps
    assert times[-1] - times[0] >= 2.0
