"""Where answers arrive: the one-tap reply page behind a signed link, and Twilio's webhooks.

Twilio requests are checked against ``X-Twilio-Signature`` with twilio's own RequestValidator,
on the configured public URL (a proxy in front changes the scheme and host we see).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask
from starlette.datastructures import State
from twilio.request_validator import RequestValidator, compare
from twilio.twiml.voice_response import Gather, VoiceResponse

from service.accounts.models import Office
from service.contacts.messaging.models import (
    STATUS_RANK,
    MessageChannel,
    MessageStatus,
    OutboxMessage,
    Purpose,
)
from service.contacts.messaging.outbox import Messaging, display_phone, hand_to_worker, stop_automated
from service.contacts.messaging.twilio_adapter import PERMANENT
from service.contacts.models import Client
from service.db import session_scope
from service.deps import ClockDep, SessionDep
from service.outcomes import answers
from service.web import i18n
from service.web.render import environment

log = logging.getLogger(__name__)
router = APIRouter(tags=["replies"], include_in_schema=False)
TEMPLATES = Path(__file__).parent / "templates"  # reply.html: its words are in the pages' gettext catalog


def get_messaging(request: Request) -> Messaging:
    return request.app.state.messaging


MessagingDep = Annotated[Messaging, Depends(get_messaging)]


def _page(state: str, *, lang: str, office: Office | None, row: OutboxMessage | None = None,
          token: str = "", message: str = "", status: int = 200) -> HTMLResponse:  # fmt: skip
    """The reply page. ``row`` (the message the link belongs to) decides the answers shown and
    whether "stop" is offered; without an office (a link we cannot read) no phone is shown.
    ``message`` is a code (thanks, used, expired, invalid, stopped, already_stopped): its words are
    in the template, in the catalog of ``lang``."""
    purpose = row.purpose if row else None
    phone = office.phone if office else None
    template = environment(lang, TEMPLATES).get_template("reply.html")
    html = template.render(
        state=state,
        message=message,
        answers=list(answers.EMPLOYER_ANSWERS if purpose == Purpose.employer_check_in else answers.ANSWERS),
        office_name=office.name if office else "",
        office_phone=display_phone(phone) if phone else "",
        office_phone_e164=phone or "",
        stop_url=f"/r/{token}/stop" if token and state != "stopped" and _stoppable(row) else "",
        answer_url=f"/r/{token}" if token else "",
    )
    return HTMLResponse(
        html, status_code=status, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
    )


def _stoppable(row: OutboxMessage | None) -> bool:
    """A client's own automated message (not an employer's check-in) can be stopped from its page."""
    return row is not None and row.client_id is not None and row.purpose in (Purpose.check_in, Purpose.escalation)


def _link(session: Session, messaging: Messaging, token: str):
    outbox_id, problem = messaging.links.read(token)
    row = session.get(OutboxMessage, outbox_id) if outbox_id is not None else None
    if row is None:
        return None, None, "invalid" if problem != "expired" else "expired"
    office = session.get(Office, row.office_id)
    return row, office, problem


def _lang(row: OutboxMessage | None) -> str:
    """The client's (or employer contact's) language, as the message was written in; Japanese otherwise."""
    return row.language if row is not None and row.language in i18n.LANGUAGES else i18n.DEFAULT_LANGUAGE


@router.get("/r/{token}", response_class=HTMLResponse)
def reply_page(token: str, session: SessionDep, messaging: MessagingDep):
    row, office, problem = _link(session, messaging, token)
    lang = _lang(row)
    if problem:
        return _page(
            "done", lang=lang, office=office, row=row, token=token if row else "", message=problem,
            status=410 if problem == "expired" else 404,
        )  # fmt: skip
    if row.answered_at is not None:
        return _page("done", lang=lang, office=office, row=row, token=token, message="used", status=410)
    return _page("ask", lang=lang, office=office, row=row, token=token)


@router.post("/r/{token}", response_class=HTMLResponse)
def reply_submit(
    token: str,
    session: SessionDep,
    messaging: MessagingDep,
    clock: ClockDep,
    answer: Annotated[str, Form(max_length=32)],
    text: Annotated[str, Form(max_length=1000)] = "",
):
    row, office, problem = _link(session, messaging, token)
    lang = _lang(row)
    if problem:
        return _page(
            "done", lang=lang, office=office, row=row, token=token if row else "", message=problem,
            status=410 if problem == "expired" else 404,
        )  # fmt: skip
    table = answers.EMPLOYER_ANSWERS if row.purpose == Purpose.employer_check_in else answers.ANSWERS
    if answer not in table:
        return _page("ask", lang=lang, office=office, row=row, token=token, status=422)
    if not answers.use_reply_link(session, outbox_id=row.id, now=clock.now()):
        return _page("done", lang=lang, office=office, row=row, token=token, message="used", status=410)
    answers.record_answer(
        session,
        messaging=messaging,
        outbox=row,
        provider_id=f"link:{row.id}",
        channel=row.channel,
        answer=answer,
        text=text.strip() or None,
        from_address=None,
        source="link",
        clock=clock,
    )
    return _page("done", lang=lang, office=office, row=row, token=token, message="thanks")


@router.post("/r/{token}/stop", response_class=HTMLResponse)
def reply_stop(
    token: str,
    session: SessionDep,
    messaging: MessagingDep,
    clock: ClockDep,
    confirm: Annotated[str, Form(max_length=8)] = "",
):
    """配信停止 from the page the e-mail points to. Two steps, both POST: the first asks "are you
    sure?" and changes nothing; the second (confirm=yes) stops automated messages exactly as the
    SMS STOP word does. It works on a used or expired link too: stopping is always allowed."""
    row, office, problem = _link(session, messaging, token)
    lang = _lang(row)
    if row is None or not _stoppable(row):
        return _page("done", lang=lang, office=office, message="invalid", status=404)
    client = session.get(Client, row.client_id)
    if client is None or client.office_id != row.office_id:
        return _page("done", lang=lang, office=office, message="invalid", status=404)
    if client.opted_out_at is not None:
        return _page("stopped", lang=lang, office=office, row=row, token=token, message="already_stopped")
    if confirm != "yes":
        return _page("confirm_stop", lang=lang, office=office, row=row, token=token)
    stop_automated(session, client, via="link", now=clock.now())
    return _page("stopped", lang=lang, office=office, row=row, token=token, message="stopped")


# ---------------------------------------------------------------- Twilio


async def twilio_form(request: Request) -> dict[str, str]:
    """The posted form, after checking Twilio's signature; 403 and nothing done otherwise."""
    settings = request.app.state.settings
    signature = request.headers.get("X-Twilio-Signature", "")
    try:
        form = await request.form()
    except Exception:
        raise HTTPException(403, "invalid request") from None
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    url = settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    token = settings.twilio_auth_token
    if not token or not signature or not _signed(RequestValidator(token), url, params, signature):
        raise HTTPException(403, "invalid signature")
    return params


def _signed(validator: RequestValidator, url: str, params: dict[str, str], signature: str) -> bool:
    """``validator.validate``, one HMAC instead of two when Twilio signed the URL as we have it.
    ``validate`` accepts a signature of the URL without its port or with it (Twilio's own are
    not consistent) and computes both every time; ``url`` is always one of the two, so a
    signature of ``url`` itself is accepted at once, and anything else gets the full check."""
    if compare(validator.compute_signature(url, params), signature):
        return True
    return validator.validate(url, params, signature)


TwilioForm = Annotated[dict[str, str], Depends(twilio_form)]
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _xml(body: str) -> Response:
    return Response(body, media_type="application/xml")


@router.post("/webhooks/twilio/sms")
async def inbound_sms(request: Request, form: TwilioForm) -> Response:
    """The signature is checked and the form read on the event loop. The SMS is kept (its row
    committed) before Twilio hears 200, so a 200 means kept; it is acted on (the answer's outcome,
    a STOP, the crisis rules) right after the response, in this process, and by the scheduler's
    ``process_replies`` job if this process stops first. An API process beside scheduler processes
    (``act_on_sms_in_api`` off: ``serve --no-scheduler``) only keeps it: their job acts within
    seconds. A re-delivery is answered 200 at once."""
    sid, sender, body = form.get("MessageSid"), form.get("From"), form.get("Body", "")
    if not sid or not sender or len(sid) > 200 or len(body) > 2000:
        raise HTTPException(422, "MessageSid, From and Body are required")
    state = request.app.state
    global _keeping  # only ever changed on the event loop's thread
    _keeping += 1
    try:
        inbound_id = await _in_thread(_DB_THREADS, _keep_sms, state, sid, sender, body)
    finally:
        _keeping -= 1
    if inbound_id is None or not state.settings.act_on_sms_in_api:
        return _xml(EMPTY_TWIML)
    return Response(
        EMPTY_TWIML, media_type="application/xml", background=BackgroundTask(_act_on_sms, state, inbound_id, sender)
    )


# The SMS webhook's database work runs in threads of its own: a plain executor costs a fraction of
# anyio's worker-thread hop (run_in_threadpool), per request, at hundreds a second (issue 7).
# Keeping an SMS (what Twilio waits for) and acting on it have separate threads, so a backlog of
# the second never holds up the first; together they stay within the engine's pool (5 + 10).
_DB_THREADS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="sms-keep")
# Two acting lanes of one thread each (acting is mostly waiting for the database, a few statements
# in a row); a sender's SMS always take the same lane, so they are acted on in the order kept (a STOP
# then a START ends started), as the process_replies job keeps them in order.
_ACT_LANES = tuple(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sms-act-{n}") for n in range(2))
# Twilio waits for the keeping, nobody for the acting: an acting thread lets SMS being kept go
# first (they share the interpreter lock), for a moment at most, so acting never stops for long.
_keeping = 0
ACT_YIELD_SECONDS = 0.02


async def _in_thread(pool: ThreadPoolExecutor, fn, *args):
    """``fn(*args)`` in one of ``pool``'s threads, with the request's context (the audit trail's
    actor and request id)."""
    return await asyncio.get_running_loop().run_in_executor(pool, contextvars.copy_context().run, fn, *args)


def _keep_sms(state: State, sid: str, sender: str, body: str) -> int | None:
    with session_scope(state.session_factory) as session:
        return answers.receive_sms(session, message_sid=sid, from_phone=sender, body=body, clock=state.clock)


async def _act_on_sms(state: State, inbound_id: int, sender: str) -> None:
    try:
        await _in_thread(_ACT_LANES[hash(sender) % len(_ACT_LANES)], _process_sms, state, inbound_id)
    except Exception:
        # Its type and frames only (service/logging.py); the row waits for process_replies.
        log.exception("acting on a kept SMS failed; the process_replies job tries again")


def _process_sms(state: State, inbound_id: int) -> None:
    deadline = time.monotonic() + ACT_YIELD_SECONDS
    while _keeping and time.monotonic() < deadline:
        time.sleep(0.002)
    with session_scope(state.session_factory) as session:
        answers.process_sms(session, messaging=state.messaging, inbound_id=inbound_id, clock=state.clock)


def _voice_row(session: Session, outbox_id: int) -> tuple[OutboxMessage, Office, Client]:
    row = session.get(OutboxMessage, outbox_id)
    if row is None or row.channel != MessageChannel.voice or row.client_id is None:
        raise HTTPException(404, "no such call")
    return row, session.get(Office, row.office_id), session.get(Client, row.client_id)


@router.post("/webhooks/twilio/voice/{outbox_id}")
def voice_call(outbox_id: int, form: TwilioForm, session: SessionDep, messaging: MessagingDep, request: Request):
    row, office, client = _voice_row(session, outbox_id)
    lang = client.language.value
    voice_lang = "ja-JP" if lang == "ja" else "en-US"
    base = request.app.state.settings.public_url.rstrip("/")
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=f"{base}/webhooks/twilio/voice/{outbox_id}/answer", method="POST", timeout=10)
    gather.say(messaging.texts.render("voice_prompt", lang, office=office.name, phone="", link=""), language=voice_lang)
    response.append(gather)
    response.say(
        messaging.texts.render("voice_no_input", lang, office=office.name, phone="", link=""), language=voice_lang
    )
    return _xml(str(response))


@router.post("/webhooks/twilio/voice/{outbox_id}/answer")
def voice_answer(outbox_id: int, form: TwilioForm, session: SessionDep, messaging: MessagingDep, clock: ClockDep):
    row, office, client = _voice_row(session, outbox_id)
    lang = client.language.value
    digit = (form.get("Digits") or "")[:1]
    call_sid = form.get("CallSid")
    answer = {"1": "doing_well", "2": "some_worries", "3": "struggling", "9": "call_me"}.get(digit)
    response = VoiceResponse()
    voice_lang = "ja-JP" if lang == "ja" else "en-US"
    if answer and call_sid:
        answers.record_answer(
            session, messaging=messaging, outbox=row, provider_id=call_sid, channel=MessageChannel.voice,
            answer=answer, text=None, from_address=form.get("To"), source="voice", clock=clock,
        )  # fmt: skip
        response.say(
            messaging.texts.render("voice_thanks", lang, office=office.name, phone="", link=""), language=voice_lang
        )
    else:
        response.say(
            messaging.texts.render("voice_no_input", lang, office=office.name, phone="", link=""), language=voice_lang
        )
    return _xml(str(response))


_TWILIO_STATUS = {
    "queued": None, "accepted": None, "sending": None, "ringing": None, "in-progress": None, "initiated": None,
    "sent": MessageStatus.sent, "delivered": MessageStatus.delivered, "completed": MessageStatus.delivered,
    "read": MessageStatus.delivered, "undelivered": MessageStatus.failed, "failed": MessageStatus.failed,
    "busy": MessageStatus.failed, "no-answer": MessageStatus.failed, "canceled": MessageStatus.failed,
}  # fmt: skip


@router.post("/webhooks/twilio/status")
def status_callback(form: TwilioForm, session: SessionDep, clock: ClockDep, outbox_id: int | None = None):
    """Moves a message forward only: a late "sent" never overwrites "delivered"."""
    raw = (form.get("MessageStatus") or form.get("CallStatus") or "").lower()
    new = _TWILIO_STATUS.get(raw)
    sid = form.get("MessageSid") or form.get("CallSid")
    row = session.get(OutboxMessage, outbox_id) if outbox_id is not None else None
    if row is None or new is None:
        return _xml(EMPTY_TWIML)
    if not sid or (row.provider_id and row.provider_id != sid):
        return _xml(EMPTY_TWIML)  # names no message, or another message
    if STATUS_RANK[new] <= STATUS_RANK[row.status] and row.status != MessageStatus.unknown:
        return _xml(EMPTY_TWIML)
    now = clock.now()
    row.status, row.updated_at = new, now
    row.provider_id = row.provider_id or sid
    if new == MessageStatus.delivered:
        row.delivered_at = now
        row.sent_at = row.sent_at or now  # delivered without a "sent" callback first: it went out by now
    if new == MessageStatus.sent and row.sent_at is None:
        row.sent_at = now
    if new == MessageStatus.failed:
        code = form.get("ErrorCode") or ""
        row.error_code = (code or raw)[:32]
        row.error_reason = row.error_reason or _failure_reason(raw, code)
    session.add(row)
    if raw in ("undelivered", "failed"):
        # As a permanent error at send time: the worker phones instead (once; see hand_to_worker).
        # An unanswered or busy call is not this: escalation re-tries it by the other channel.
        hand_to_worker(session, row, now)
    return _xml(EMPTY_TWIML)


_FAILURE_WORDS = {
    "undelivered": "the message did not reach the phone",
    "failed": "the message could not be sent",
    "busy": "the line was busy",
    "no-answer": "nobody answered the call",
    "canceled": "the call was cancelled",
}


def _failure_reason(raw: str, code: str) -> str:
    """The provider's failure in plain words for the worker (Twilio's error code when it is known)."""
    known = PERMANENT.get(int(code)) if code.isdigit() and len(code) < 8 else None
    words = known or _FAILURE_WORDS.get(raw, "the provider could not deliver it")
    return f"{words} (Twilio: {raw}{f', error {code[:16]}' if code else ''})"
