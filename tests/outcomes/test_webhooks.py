"""Twilio's webhooks: inbound SMS, voice check-ins (TwiML and the keypad answer), status callbacks.

Every request is signed the way Twilio signs it, with twilio's own ``RequestValidator``, over the
configured public URL (``TEICHAKU_PUBLIC_URL``) plus the path and query. Check-ins are planned
and dispatched by the real jobs with the app's own messaging (the development adapter, since no
Twilio account is configured: only the auth token, which signatures need).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import select
from twilio.request_validator import RequestValidator

from service.app import create_app
from service.contacts.messaging.models import (
    InboundMessage,
    MessageChannel,
    MessageStatus,
    OutboxMessage,
    Purpose,
)
from service.contacts.models import Channel, Client, FollowUp, FollowUpStatus
from service.db import session_scope
from service.jobs import run_job
from service.models import metadata
from service.outcomes.models import Outcome

TOKEN = "webhook-test-auth-token-0123456789abcdef"
PUBLIC = "http://127.0.0.1:8000"  # the settings' default public URL
START = "2026-04-16"  # the standard plan's automated SMS (day 4) is due on the fixture clock's day
SMS = "/webhooks/twilio/sms"
OFFICE_PHONE = "0126-22-1001"  # Office A's number (tests/helpers.py), as a client reads it


@pytest.fixture
def settings(settings):
    """The suite's settings with a Twilio auth token (to check signatures) and two-way SMS on."""
    return settings.model_copy(update={"twilio_auth_token": TOKEN, "twilio_two_way_sms": True})


# ---------------------------------------------------------------- helpers


def signature(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def post_signed(http: TestClient, path: str, params: dict[str, str], *, public: str = PUBLIC):
    return http.post(path, data=params, headers={"X-Twilio-Signature": signature(public + path, params)})


@dataclass
class CheckIn:
    client_id: int
    follow_up_id: int
    phone: str  # E.164, as Twilio sends From
    outbox_id: int | None = None
    provider_id: str | None = None


def check_in(api, factory, *, phone="090-1234-5678", language="ja", channel=Channel.sms) -> CheckIn:
    """A client whose automated check-in is due today (not planned yet)."""
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
    return CheckIn(client["id"], fu["id"], client["phone"])


def messaging(http: TestClient):
    return http.app.state.messaging


def plan(http, factory, clock) -> int:
    return run_job("plan_check_ins", factory, clock, messaging(http))


def dispatch(http, factory, clock) -> int:
    return run_job("dispatch", factory, clock, messaging(http))


def sent_check_in(api, http, factory, clock, **kw) -> CheckIn:
    """A check-in planned and sent (through the development adapter)."""
    ci = check_in(api, factory, **kw)
    plan(http, factory, clock)
    dispatch(http, factory, clock)
    with factory() as s:
        (row,) = s.exec(select(OutboxMessage).where(OutboxMessage.follow_up_id == ci.follow_up_id)).all()
    assert row.status == MessageStatus.sent
    ci.outbox_id, ci.provider_id = row.id, row.provider_id
    return ci


def sms(ci: CheckIn, body: str, sid: str = "SM" + "1" * 32) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32, "From": ci.phone,
            "To": "+815012345678", "Body": body, "NumMedia": "0"}  # fmt: skip


def rows(factory, model, *where):
    with factory() as s:
        return list(s.exec(select(model).where(*where)).all())


def outcomes_of(factory, ci: CheckIn) -> list[Outcome]:
    return rows(factory, Outcome, Outcome.follow_up_id == ci.follow_up_id)


def replies_to(factory, ci: CheckIn) -> list[OutboxMessage]:
    return rows(factory, OutboxMessage, OutboxMessage.client_id == ci.client_id, OutboxMessage.purpose == Purpose.reply)


def snapshot(factory) -> dict[str, list]:
    """Every row of every table: a webhook refused must change none of them."""
    with factory() as s:
        return {t.name: [tuple(r) for r in s.execute(sa.select(t).order_by(*t.primary_key.columns)).all()]
                for t in metadata.sorted_tables}  # fmt: skip


# ---------------------------------------------------------------- signatures


def test_unsigned_or_wrongly_signed_is_refused_and_nothing_changes(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    status_path = f"/webhooks/twilio/status?outbox_id={ci.outbox_id}"
    cases = [
        (SMS, sms(ci, "STOP")),
        (SMS, sms(ci, "1")),
        (f"/webhooks/twilio/voice/{ci.outbox_id}", {"CallSid": "CA" + "2" * 32}),
        (f"/webhooks/twilio/voice/{ci.outbox_id}/answer", {"CallSid": "CA" + "2" * 32, "Digits": "9"}),
        (status_path, {"MessageSid": ci.provider_id, "MessageStatus": "delivered"}),
    ]
    before = snapshot(factory)
    for path, params in cases:
        right = signature(PUBLIC + path, params)
        tampered = dict(params, Extra="x")
        for headers, data in [
            ({}, params),
            ({"X-Twilio-Signature": ""}, params),
            ({"X-Twilio-Signature": signature(PUBLIC + path, params, token="another-token")}, params),
            ({"X-Twilio-Signature": signature("https://127.0.0.1:8000" + path, params)}, params),
            ({"X-Twilio-Signature": signature(PUBLIC + SMS if path != SMS else PUBLIC + status_path, params)}, params),
            ({"X-Twilio-Signature": right.lower()}, params),
            ({"X-Twilio-Signature": right}, tampered),
        ]:
            r = http.post(path, data=data, headers=headers)
            assert r.status_code == 403, (path, headers, r.status_code, r.text)
    assert snapshot(factory) == before


def _multipart(params: dict[str, str], boundary: str) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in params.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def _fuzz_request(rng: random.Random, sms_ci: CheckIn, voice_ci: CheckIn) -> tuple[str, bytes, dict, bool]:
    """One malformed or unsigned post: (path with query, body, headers, whether it is unsigned)."""

    def junk(n: int) -> str:
        """Printable ASCII, kana and any code point at all (lone surrogates become "?")."""
        chars = (rng.choice([rng.randrange(32, 127), rng.randrange(0x3000, 0x30FF), rng.randrange(0, 0x10FFFF)])
                 for _ in range(n))  # fmt: skip
        return "".join(map(chr, chars)).encode("utf-8", "replace").decode("utf-8")

    kind = rng.choice(["sms", "voice", "answer", "status", "odd"])
    sid = "SM" + "".join(rng.choice("0123456789abcdef") for _ in range(32))
    call = "CA" + "".join(rng.choice("0123456789abcdef") for _ in range(32))
    if kind == "sms":
        path = SMS
        params = {
            "MessageSid": sid,
            "From": sms_ci.phone,
            "Body": rng.choice(["STOP", "1", "２", "死にたい", "HELP", "再開", "I want to quit", junk(20)]),
        }
    elif kind == "voice":
        path = f"/webhooks/twilio/voice/{voice_ci.outbox_id}"
        params = {"CallSid": call, "To": voice_ci.phone, "CallStatus": "in-progress"}
    elif kind == "answer":
        path = f"/webhooks/twilio/voice/{voice_ci.outbox_id}/answer"
        params = {"CallSid": call, "Digits": rng.choice("12399"), "To": voice_ci.phone}
    elif kind == "status":
        path = f"/webhooks/twilio/status?outbox_id={sms_ci.outbox_id}"
        status = rng.choice(["delivered", "failed", "undelivered"])
        params = {"MessageSid": sms_ci.provider_id, "MessageStatus": status, "ErrorCode": "30003"}
    else:
        path = rng.choice([
            "/webhooks/twilio/voice/abc", "/webhooks/twilio/voice/-1/answer",
            "/webhooks/twilio/voice/99999999999999999999", "/webhooks/twilio/status?outbox_id=x",
            "/webhooks/twilio/status?outbox_id=99999999999999999999", "/webhooks/twilio/status",
            f"/webhooks/twilio/status?outbox_id={sms_ci.outbox_id}&outbox_id={voice_ci.outbox_id}",
            f"/webhooks/twilio/voice/{sms_ci.outbox_id}", SMS + "?x=%ff%fe", "/webhooks/twilio/sms/",
            "/webhooks/twilio/",
        ])  # fmt: skip
        params = {"MessageSid": sid, "CallSid": call, "From": sms_ci.phone, "Body": "STOP", "Digits": "9",
                  "MessageStatus": "delivered"}  # fmt: skip
    # Mangle the fields: drop some, add some, make some huge or strange.
    for key in list(params):
        if rng.random() < 0.15:
            del params[key]
    for _ in range(rng.choice([0, 0, 1, 3])):
        params[junk(rng.randrange(1, 12))] = junk(rng.randrange(0, 40))
    if rng.random() < 0.05:
        params[rng.choice(["Body", "MessageSid", "From", "Digits"])] = "あ" * rng.choice([2001, 70_000])
    unsigned = True
    mode = rng.choice(["none", "empty", "garbage", "latin1", "wrong token", "other url", "tampered", "huge",
                       "signed but malformed"])  # fmt: skip
    headers: dict[str, str | bytes] = {}
    if mode == "empty":
        headers["X-Twilio-Signature"] = ""
    elif mode == "garbage":
        headers["X-Twilio-Signature"] = base64.b64encode(rng.randbytes(rng.choice([20, 32, 3]))).decode()
    elif mode == "latin1":
        headers["X-Twilio-Signature"] = bytes(rng.randrange(128, 256) for _ in range(28))
    elif mode == "huge":
        headers["X-Twilio-Signature"] = "A" * 60_000
    elif mode == "wrong token":
        headers["X-Twilio-Signature"] = signature(PUBLIC + path, params, token=junk(10) or "x")
    elif mode == "other url":
        others = [
            "https://127.0.0.1:8000" + path,
            "http://testserver" + path,
            PUBLIC + path + "/",
            PUBLIC + path.split("?")[0],
            PUBLIC + SMS + "?outbox_id=1",
            "http://evil.example" + path,
        ]
        other = rng.choice([u for u in others if u != PUBLIC + path])
        headers["X-Twilio-Signature"] = signature(other, params)
    elif mode == "tampered":
        headers["X-Twilio-Signature"] = signature(PUBLIC + path, params)
        params = dict(params, Body=params.get("Body", "") + "!") if rng.random() < 0.5 else dict(params, Injected="1")
    elif mode == "signed but malformed":
        # A right signature over a request that must still change nothing.
        unsigned = False
        if path == SMS:
            spoil = rng.choice(["MessageSid", "From", "long body", "long sid"])
            if spoil == "long body":
                params["Body"] = "x" * 2001
            elif spoil == "long sid":
                params["MessageSid"] = "SM" + "0" * 300
            else:
                params.pop(spoil, None)
        elif "/answer" in path:
            params["Digits"] = rng.choice(["", "5", "#", "*", "0"])
        elif path.startswith("/webhooks/twilio/status"):
            spoil = rng.choice(["no sid", "another sid", "odd status"])
            if spoil == "no sid":
                params.pop("MessageSid", None)
            elif spoil == "another sid":
                params["MessageSid"] = sid
            else:
                params["MessageStatus"] = rng.choice(["bogus", "queued", "", "SENT?"])
        elif path.startswith("/webhooks/twilio/voice/") and path.count("/") == 4:
            pass  # the TwiML of a call changes nothing, signed or not
        headers["X-Twilio-Signature"] = signature(PUBLIC + path, params)
    # The body, in one of many shapes.
    shape = rng.choice(["form", "form", "form", "multipart", "no boundary", "json", "text", "none", "bytes", "sjis"])
    if shape == "form":
        body, ctype = urllib.parse.urlencode(params).encode(), "application/x-www-form-urlencoded"
    elif shape == "multipart":
        boundary = "b" + str(rng.randrange(10**9))
        body, ctype = _multipart(params, boundary), f"multipart/form-data; boundary={boundary}"
    elif shape == "no boundary":
        body, ctype = _multipart(params, "zzz"), "multipart/form-data"
    elif shape == "json":
        body, ctype = json.dumps(params).encode(), "application/json"
    elif shape == "text":
        body, ctype = "\n".join(f"{k}={v}" for k, v in params.items()).encode(), "text/plain"
    elif shape == "none":
        body, ctype = urllib.parse.urlencode(params).encode(), None
    elif shape == "bytes":
        body, ctype = rng.randbytes(rng.randrange(0, 3000)), "application/x-www-form-urlencoded"
    else:
        body = urllib.parse.urlencode(params, encoding="shift_jis", errors="replace").encode()
        ctype = "application/x-www-form-urlencoded; charset=shift_jis"
    if ctype:
        headers["Content-Type"] = ctype
    for _ in range(rng.choice([0, 0, 1, 2])):
        name = rng.choice(["X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP", "Accept", "User-Agent",
                           "I-Twilio-Idempotency-Token", "X-Twilio-Webhooks-Signature-Settings"])  # fmt: skip
        headers[name] = rng.choice(["https", "evil.example", "TwilioProxy/1.1", "key=x,algorithm=HMAC_SHA256", "*/*",
                                    "ü".encode("latin-1")])  # fmt: skip
    return path, body, headers, unsigned


def test_a_thousand_malformed_or_unsigned_posts_never_fail_and_change_nothing(api, http, factory, clock):
    sms_ci = sent_check_in(api, http, factory, clock)
    voice_ci = sent_check_in(api, http, factory, clock, phone="080-2222-3333", channel=Channel.voice)
    rng = random.Random(20260420)
    voice = f"/webhooks/twilio/voice/{voice_ci.outbox_id}"
    routes = (SMS, voice, voice + "/answer", "/webhooks/twilio/status")
    before = snapshot(factory)
    statuses: dict[int, int] = {}
    for i in range(1000):
        path, body, headers, unsigned = _fuzz_request(rng, sms_ci, voice_ci)
        r = http.post(path, content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (i, path, headers, body[:200], r.status_code, r.text[:300])
        if unsigned and path.split("?")[0] in routes:
            assert r.status_code == 403, (i, path, headers, r.status_code, r.text[:300])
    assert snapshot(factory) == before
    assert statuses.get(403, 0) > 600, statuses  # most were refused at the door


# ---------------------------------------------------------------- inbound SMS: answers


def test_a_signed_sms_reply_records_an_outcome_and_the_follow_up_is_done(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    r = post_signed(http, SMS, sms(ci, "少し不安です"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    ET.fromstring(r.text)  # TwiML, no reply from us
    (outcome,) = outcomes_of(factory, ci)
    assert outcome.reached is True and outcome.source == "sms" and outcome.channel == Channel.sms
    assert outcome.note == "少し不安です"
    assert (outcome.reply_class, outcome.reply_reason) == ("watch", "tired, worried or lonely")
    assert outcome.recorded_by is None
    (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)
    assert fu.status == FollowUpStatus.done and fu.completed_at is not None
    (inbound,) = rows(factory, InboundMessage)
    assert (inbound.provider_id, inbound.outbox_id, inbound.client_id) == ("SM" + "1" * 32, ci.outbox_id, ci.client_id)
    assert inbound.outcome_id == outcome.id and inbound.reply_class == "watch"


@pytest.mark.parametrize("other_tried", ["earlier", "later"])
def test_a_reply_answers_the_check_in_tried_last_even_when_a_send_ended_unknown(other_tried, api, http, factory, clock):
    """A check-in whose send ended "unknown" has no sent_at (PostgreSQL sorts NULLs first): the
    reply goes to whichever SMS was tried last, by its sending time or, without one, its claim."""
    ci = sent_check_in(api, http, factory, clock)
    with session_scope(factory) as s:
        sent = s.get(OutboxMessage, ci.outbox_id)
        (other,) = s.exec(
            select(FollowUp)
            .where(FollowUp.placement_id == sent.placement_id, FollowUp.id != ci.follow_up_id)
            .order_by(FollowUp.id)
            .limit(1)
        ).all()
        shift = timedelta(hours=-3 if other_tried == "earlier" else 3)
        s.add(
            OutboxMessage(
                idempotency_key=f"maybe:{other.id}", office_id=sent.office_id, purpose=Purpose.check_in,
                channel=MessageChannel.sms, follow_up_id=other.id, placement_id=sent.placement_id,
                client_id=sent.client_id, to_address=sent.to_address, language="ja", body="-",
                status=MessageStatus.unknown, next_attempt_at=sent.sent_at + shift,
                claimed_at=sent.sent_at + shift, attempts=1,
            )
        )  # fmt: skip
        other_id = other.id
    assert post_signed(http, SMS, sms(ci, "1")).status_code == 200
    answered = [o.follow_up_id for o in rows(factory, Outcome)]
    assert answered == [ci.follow_up_id if other_tried == "earlier" else other_id]


@pytest.mark.parametrize(
    "body, answer, wellbeing, reply_class",
    [("1", "doing well", 4, "none"), ("２", "some worries", 3, "watch"), (" 3 ", "struggling", 2, "urgent"),
     ("９", "call me", None, "urgent")],
    ids=["1", "full-width 2", "3 with spaces", "full-width 9"],
)  # fmt: skip
def test_a_digit_reply_is_an_answer(body, answer, wellbeing, reply_class, api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, body)).status_code == 200
    (outcome,) = outcomes_of(factory, ci)
    assert outcome.note == answer
    assert (outcome.wellbeing, outcome.reply_class) == (wellbeing, reply_class)


@pytest.mark.parametrize(
    "body, reply_class, reason",
    [
        ("もう辞めたい", "urgent", "wants to quit"),
        ("死にたい", "emergency", "talk of dying or self-harm"),
        ("ｼﾆﾀｲ", "emergency", "talk of dying or self-harm"),
        ("I want to quit", "urgent", "wants to quit"),
        ("quite good", "none", None),
    ],
    ids=["yametai", "shinitai", "half-width shinitai", "quit", "quite good"],
)
def test_sms_replies_are_classified(body, reply_class, reason, api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, body)).status_code == 200
    (outcome,) = outcomes_of(factory, ci)
    assert (outcome.reply_class, outcome.reply_reason, outcome.note) == (reply_class, reason, body)
    (inbound,) = rows(factory, InboundMessage)
    assert (inbound.reply_class, inbound.matched_reason) == (reply_class, reason)


# ---------------------------------------------------------------- STOP, START, HELP


@pytest.mark.parametrize("word", ["STOP", "ＳＴＯＰ", "stop", "unsubscribe", "停止", "配信停止"])
def test_an_opt_out_word_stops_automated_messages_with_one_confirmation(word, api, http, factory, clock):
    ci = check_in(api, factory, language="en" if word.isascii() else "ja")
    params = sms(ci, word)
    for _ in range(2):  # Twilio may deliver the same message twice
        assert post_signed(http, SMS, params).status_code == 200
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is not None and client.opted_out_via == "sms"
    (reply,) = replies_to(factory, ci)
    assert (reply.channel, reply.to_address, reply.status) == (MessageChannel.sms, ci.phone, MessageStatus.queued)
    assert ("stopped" in reply.body) if word.isascii() else ("停止しました" in reply.body)
    # The planner now leaves the client alone, and says why.
    assert plan(http, factory, clock) == 0
    (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)
    assert fu.status == FollowUpStatus.skipped
    assert fu.status_reason == "not sent: the client stopped automated messages"
    # Only the confirmation goes out.
    dev = messaging(http).phone
    assert dispatch(http, factory, clock) == 1
    assert [m.body for m in dev.sent] == [reply.body]
    (inbound,) = rows(factory, InboundMessage)
    assert inbound.command == "stop"


def test_stop_cancels_a_check_in_already_waiting_to_be_sent(api, http, factory, clock):
    ci = check_in(api, factory)
    assert plan(http, factory, clock) == 1
    assert post_signed(http, SMS, sms(ci, "停止")).status_code == 200
    (check,) = rows(factory, OutboxMessage, OutboxMessage.follow_up_id == ci.follow_up_id)
    assert check.status == MessageStatus.cancelled and "stopped" in check.error_reason
    (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)  # not left pending, to turn "missed" later
    assert (fu.status, fu.status_reason) == (FollowUpStatus.skipped, "not sent: the client stopped automated messages")
    assert dispatch(http, factory, clock) == 1  # the confirmation only
    (reply,) = replies_to(factory, ci)
    assert reply.status == MessageStatus.sent
    assert [m.outbox_id for m in messaging(http).phone.sent] == [reply.id]


@pytest.mark.parametrize("word", ["START", "再開"])
def test_start_resumes_automated_messages(word, api, http, factory, clock):
    ci = check_in(api, factory)
    assert post_signed(http, SMS, sms(ci, "STOP", sid="SM" + "a" * 32)).status_code == 200
    assert post_signed(http, SMS, sms(ci, word, sid="SM" + "b" * 32)).status_code == 200
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is None
    stop_reply, start_reply = sorted(replies_to(factory, ci), key=lambda r: r.id)
    assert "再開しました" in start_reply.body
    assert plan(http, factory, clock) == 1  # check-ins again


@pytest.mark.parametrize("word", ["HELP", "ヘルプ"])
def test_help_answers_with_the_offices_contact_details(word, api, http, factory, clock):
    ci = check_in(api, factory, language="en" if word.isascii() else "ja")
    assert post_signed(http, SMS, sms(ci, word)).status_code == 200
    (reply,) = replies_to(factory, ci)
    assert OFFICE_PHONE in reply.body and "Office A" in reply.body
    (client,) = rows(factory, Client, Client.id == ci.client_id)
    assert client.opted_out_at is None
    assert outcomes_of(factory, ci) == []


# ---------------------------------------------------------------- the same message, concurrently


@pytest.mark.parametrize("body", ["1", "STOP"])
def test_the_same_message_sid_posted_20_times_concurrently_is_recorded_once(body, api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    params = sms(ci, body)
    headers = {"X-Twilio-Signature": signature(PUBLIC + SMS, params)}

    async def burst() -> list[httpx.Response]:
        # The app's routes are sync and run in its thread pool: 20 requests really overlap.
        transport = httpx.ASGITransport(app=http.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await asyncio.gather(*(c.post(SMS, data=params, headers=headers) for _ in range(20)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert len(rows(factory, InboundMessage)) == 1
    if body == "1":
        assert len(outcomes_of(factory, ci)) == 1
    else:
        assert len(replies_to(factory, ci)) == 1


# ---------------------------------------------------------------- voice


def _twiml(text: str) -> ET.Element:
    return ET.fromstring(text)


@pytest.mark.parametrize("language, voice", [("ja", "ja-JP"), ("en", "en-US")])
def test_a_voice_check_in_asks_for_one_key_in_the_clients_language(language, voice, api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock, language=language, channel=Channel.voice)
    path = f"/webhooks/twilio/voice/{ci.outbox_id}"
    r = post_signed(http, path, {"CallSid": "CA" + "3" * 32, "To": ci.phone, "CallStatus": "in-progress"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = _twiml(r.text)
    gather = root.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1"
    assert gather.get("action") == f"{PUBLIC}{path}/answer"
    say = gather.find("Say")
    assert say is not None and say.get("language") == voice
    assert ("9" in say.text) and (("押してください" in say.text) if language == "ja" else ("Press 1" in say.text))


def test_a_keypad_answer_is_recorded_once(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock, channel=Channel.voice)
    path = f"/webhooks/twilio/voice/{ci.outbox_id}/answer"
    params = {"CallSid": "CA" + "4" * 32, "Digits": "9", "To": ci.phone, "From": "+815012345678"}
    for _ in range(3):  # Twilio retries
        r = post_signed(http, path, params)
        assert r.status_code == 200
        assert _twiml(r.text).find("Say").get("language") == "ja-JP"
    (outcome,) = outcomes_of(factory, ci)
    assert (outcome.reply_class, outcome.reply_reason) == ("urgent", "asks to be called")
    assert outcome.source == "voice" and outcome.channel == Channel.voice and outcome.reached
    (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)
    assert fu.status == FollowUpStatus.done
    (inbound,) = rows(factory, InboundMessage)
    assert (inbound.provider_id, inbound.channel) == ("CA" + "4" * 32, MessageChannel.voice)


# ---------------------------------------------------------------- status callbacks


def _status(http, ci: CheckIn, status: str, sid: str | None = None, **extra):
    params = {"MessageSid": sid or ci.provider_id, "MessageStatus": status, **extra}
    return post_signed(http, f"/webhooks/twilio/status?outbox_id={ci.outbox_id}", params)


def _outbox(factory, ci: CheckIn) -> OutboxMessage:
    (row,) = rows(factory, OutboxMessage, OutboxMessage.id == ci.outbox_id)
    return row


def test_status_callbacks_move_forward_only(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert _status(http, ci, "delivered").status_code == 200
    row = _outbox(factory, ci)
    assert row.status == MessageStatus.delivered and row.delivered_at is not None
    for late in ("sent", "queued", "sending", "failed"):
        assert _status(http, ci, late).status_code == 200
        assert _outbox(factory, ci).status == MessageStatus.delivered
    # A callback about another message, or about none, changes nothing either.
    other = sent_check_in(api, http, factory, clock, phone="080-5555-6666")
    assert _status(http, other, "failed", sid="SM" + "9" * 32).status_code == 200
    no_sid = post_signed(http, f"/webhooks/twilio/status?outbox_id={other.outbox_id}", {"MessageStatus": "failed"})
    assert no_sid.status_code == 200
    assert _outbox(factory, other).status == MessageStatus.sent


def test_a_failed_callback_records_twilios_error_code(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert _status(http, ci, "undelivered", ErrorCode="30003").status_code == 200
    row = _outbox(factory, ci)
    assert (row.status, row.error_code) == (MessageStatus.failed, "30003")
    assert "undelivered" in row.error_reason


def test_a_callback_settles_a_message_left_unknown(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    with session_scope(factory) as s:  # as a timeout leaves it: Twilio may have it, we have no SID
        row = s.get(OutboxMessage, ci.outbox_id)
        row.status, row.provider_id, row.error_code = MessageStatus.unknown, None, "timeout"
        s.add(row)
    twilio_sid = "SM" + "5" * 32
    assert _status(http, ci, "delivered", sid=twilio_sid).status_code == 200
    row = _outbox(factory, ci)
    assert (row.status, row.provider_id) == (MessageStatus.delivered, twilio_sid)


# ---------------------------------------------------------------- behind a proxy


def test_the_signature_is_checked_on_the_public_url_not_the_one_we_see(api, http, factory, clock, settings, engine):
    """A proxy changes the scheme and the host: Twilio signed https://teichaku.example.jp/..., we
    are asked for http://testserver/..."""
    ci = sent_check_in(api, http, factory, clock)
    public = "https://teichaku.example.jp"
    proxied = create_app(settings.model_copy(update={"public_url": public}), engine=engine, clock=clock)
    with TestClient(proxied) as behind:
        params = sms(ci, "1")
        seen = {"X-Twilio-Signature": signature("http://testserver" + SMS, params)}
        assert behind.post(SMS, data=params, headers=seen).status_code == 403
        assert outcomes_of(factory, ci) == []
        assert post_signed(behind, SMS, params, public=public).status_code == 200
        (outcome,) = outcomes_of(factory, ci)
        assert outcome.reply_class == "none"


# ---------------------------------------------------------------- answers become crisis flags


def test_an_sms_wanting_to_quit_is_an_urgent_flag_with_a_crisis_call_at_the_top_of_the_queue(api, http, factory, clock):
    behind = api.placement(start="2026-04-06", client=api.client(name="遅れ 一郎", phone="080-1111-2222"))
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, "仕事を辞めたい")).status_code == 200
    [outcome] = outcomes_of(factory, ci)
    assert (outcome.reply_class, outcome.reply_reason) == ("urgent", "wants to quit")

    (placement_id,) = {o.placement_id for o in outcomes_of(factory, ci)}
    listed = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": placement_id}))["items"]
    assert len(listed) == 1
    flag = api.ok(api.get("a.worker", f"/api/v1/crisis-flags/{listed[0]['id']}"))
    assert (flag["severity"], flag["status"]) == ("urgent", "open")
    (inbound,) = rows(factory, InboundMessage, InboundMessage.provider_id == "SM" + "1" * 32)
    assert [(s["kind"], s["source_party"], s["source"], s["detail"]) for s in flag["signals"]] == [
        ("reply_urgent", "client", f"reply:{inbound.id}", "wants to quit")
    ]
    call = flag["crisis_call"]
    assert call["due_date"] == "2026-04-20"

    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    top = q["items"][0]
    assert (top["follow_up_id"], top["group"], top["kind"]) == (call["id"], "crisis", "crisis_call")
    assert any(i["placement_id"] == behind["id"] for i in q["items"][1:])  # the overdue work comes after
    # The same SMS delivered again changes nothing: still one flag, one signal.
    assert post_signed(http, SMS, sms(ci, "仕事を辞めたい")).status_code == 200
    again = api.ok(api.get("a.worker", f"/api/v1/crisis-flags/{flag['id']}"))
    assert len(again["signals"]) == 1


def test_an_sms_of_self_harm_is_an_emergency_flag(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, "もうしにたい")).status_code == 200
    (placement_id,) = {o.placement_id for o in outcomes_of(factory, ci)}
    [listed] = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": placement_id}))["items"]
    assert listed["severity"] == "emergency"


def test_a_keypad_call_me_is_urgent(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock, channel=Channel.voice)
    params = {"CallSid": "CA" + "7" * 32, "Digits": "9", "To": ci.phone}
    assert post_signed(http, f"/webhooks/twilio/voice/{ci.outbox_id}/answer", params).status_code == 200
    (placement_id,) = {o.placement_id for o in outcomes_of(factory, ci)}
    [listed] = api.ok(api.get("a.worker", "/api/v1/crisis-flags", params={"placement_id": placement_id}))["items"]
    assert listed["severity"] == "urgent"


# ---------------------------------------------------------------- undelivered: the worker phones


@pytest.mark.parametrize("status", ["undelivered", "failed"])
def test_an_undelivered_message_becomes_a_phone_call_in_the_workers_queue_once(status, api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert _status(http, ci, status, ErrorCode="30006").status_code == 200
    # Twilio repeats itself, and a later callback says the same: still one phone call.
    assert _status(http, ci, status, ErrorCode="30006").status_code == 200
    assert _status(http, ci, "undelivered").status_code == 200

    calls = rows(factory, FollowUp, FollowUp.retry_of == ci.follow_up_id)
    assert len(calls) == 1
    call = calls[0]
    assert (call.channel, call.automated, call.status) == (Channel.phone, False, FollowUpStatus.pending)
    (fu,) = rows(factory, FollowUp, FollowUp.id == ci.follow_up_id)
    assert fu.status == FollowUpStatus.attempted

    q = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": call.due_date.isoformat()}))
    [item] = [i for i in q["items"] if i["follow_up_id"] == call.id]
    assert item["channel"] == "phone"
    assert "not delivered" in item["reason"] and "30006" in item["reason"]


def test_a_permanent_twilio_error_in_a_callback_is_said_in_plain_words(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert _status(http, ci, "failed", ErrorCode="21610").status_code == 200
    row = _outbox(factory, ci)
    assert "blocked messages from us" in row.error_reason and "21610" in row.error_reason
    [call] = rows(factory, FollowUp, FollowUp.retry_of == ci.follow_up_id)
    assert "blocked messages from us" in call.status_reason


def test_an_unanswered_call_is_not_handed_over_by_the_callback(api, http, factory, clock):
    """A ``no-answer`` or ``busy`` call is not a delivery failure: escalation tries SMS first."""
    ci = sent_check_in(api, http, factory, clock, channel=Channel.voice)
    params = {"CallSid": ci.provider_id, "CallStatus": "no-answer"}
    assert post_signed(http, f"/webhooks/twilio/status?outbox_id={ci.outbox_id}", params).status_code == 200
    assert _outbox(factory, ci).status == MessageStatus.failed
    assert rows(factory, FollowUp, FollowUp.retry_of == ci.follow_up_id) == []


def test_a_late_failure_after_an_answer_hands_nothing_over(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, "1")).status_code == 200
    assert _status(http, ci, "undelivered").status_code == 200
    assert rows(factory, FollowUp, FollowUp.retry_of == ci.follow_up_id) == []


# ---------------------------------------------------------------- the worker sees the opt-out


def test_the_worker_sees_the_opt_out_and_a_payload_cannot_set_it(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    before = api.ok(api.get("a.worker", f"/api/v1/clients/{ci.client_id}"))
    assert before["opted_out_at"] is None and before["opted_out_via"] is None
    assert post_signed(http, SMS, sms(ci, "配信停止")).status_code == 200
    after = api.ok(api.get("a.worker", f"/api/v1/clients/{ci.client_id}"))
    assert after["opted_out_at"] is not None and after["opted_out_via"] == "sms"
    listed = api.ok(api.get("a.worker", "/api/v1/clients"))["items"]
    assert [c["opted_out_via"] for c in listed if c["id"] == ci.client_id] == ["sms"]

    # Only the client stops or restarts messages: a payload that tries is refused, nothing changes.
    for field, value in (("opted_out_at", None), ("opted_out_via", None), ("opted_out_at", "2026-01-01T00:00:00Z")):
        r = api.patch("a.worker", f"/api/v1/clients/{ci.client_id}", {field: value})
        assert r.status_code == 422 and field in r.text
        r = api.post("a.worker", "/api/v1/clients", {"name": "新規", "category": "needy_person", field: value})
        assert r.status_code == 422 and field in r.text
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{ci.client_id}"))["opted_out_at"] == after["opted_out_at"]


def test_queue_items_carry_the_clients_opt_out(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, "STOP")).status_code == 200
    # The client's next worker task (the visit of the standard plan) shows the opt-out.
    q = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-07-31"}))
    mine = [i for i in q["items"] if i["client"]["id"] == ci.client_id]
    assert mine and all(i["client"]["opted_out_via"] == "sms" and i["client"]["opted_out_at"] for i in mine)


# ---------------------------------------------------------------- inputs around it


def test_an_outcome_note_with_control_characters_is_refused(api, http, factory, clock):
    p = api.placement(start=START, client=api.client(name="メモ", phone="080-3333-4444"))
    fu = next(f for f in api.follow_ups("a.worker", p["id"]) if not f["automated"] and f["status"] == "pending")
    for bad in ("bell\x07", "nul\x00", "esc\x1b[31m"):
        r = api.post("a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", {"reached": True, "note": bad})
        assert r.status_code == 422 and "note" in r.text
    ok = api.post(
        "a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", {"reached": True, "note": "一行目\n二行目\tタブ"}
    )
    assert ok.status_code == 201


def test_an_office_name_is_stripped_and_a_huge_office_id_is_not_a_server_error(api):
    created = api.ok(api.post("a.admin", "/api/v1/offices", {"name": "  岩見沢市 自立相談  "}), 201)
    assert created["name"] == "岩見沢市 自立相談"
    assert api.post("a.admin", "/api/v1/offices", {"name": "   "}).status_code == 422
    for who in ("a.worker", "a.admin"):
        for office_id in ("99999999999999999999", str(2**31), "0", "-1"):
            r = api.get(who, f"/api/v1/offices/{office_id}")
            assert r.status_code in (404, 422), (who, office_id, r.status_code)
