"""Where answers arrive: the one-tap reply page behind a signed link, and Twilio's webhooks.

Twilio requests are checked against ``X-Twilio-Signature`` with twilio's own RequestValidator,
on the configured public URL (a proxy in front changes the scheme and host we see).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlmodel import Session
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Gather, VoiceResponse

from service.accounts.models import Office
from service.contacts.messaging.models import (
    STATUS_RANK,
    MessageChannel,
    MessageStatus,
    OutboxMessage,
    Purpose,
)
from service.contacts.messaging.outbox import Messaging, display_phone
from service.contacts.models import Client
from service.deps import ClockDep, SessionDep
from service.outcomes import answers

router = APIRouter(tags=["replies"], include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)

TEXT = {
    "ja": {
        "title": "お返事",
        "question": "お仕事の様子はいかがですか？",
        "text_label": "ひとこと（書かなくてもかまいません）",
        "phone": "話したいときは、いつでもお電話ください",
        "thanks": "お返事ありがとうございました。担当者が確認します。",
        "used": "このリンクはもう使われています。お返事はすでに届いています。",
        "expired": "このリンクは期限が切れています。お手数ですが、お電話ください。",
        "invalid": "このリンクは使えません。お手数ですが、お電話ください。",
        "answers": {"doing_well": "順調です", "some_worries": "少し心配なことがある", "struggling": "つらい",
                    "call_me": "電話がほしい"},
        "employer_answers": {"attending_well": "問題なく勤務している", "some_concerns": "少し気になることがある",
                             "absences": "欠勤・遅刻がある", "call_me": "電話がほしい"},
    },
    "en": {
        "title": "Your answer",
        "question": "How is work going?",
        "text_label": "A few words (optional)",
        "phone": "If you want to talk, call us any time",
        "thanks": "Thank you for your answer. Your support worker will see it.",
        "used": "This link has already been used. Your answer has reached us.",
        "expired": "This link has expired. Please give us a call.",
        "invalid": "This link cannot be used. Please give us a call.",
        "answers": {"doing_well": "Doing well", "some_worries": "Some worries", "struggling": "Struggling",
                    "call_me": "Please call me"},
        "employer_answers": {"attending_well": "Attending well", "some_concerns": "Some concerns",
                             "absences": "Absences or lateness", "call_me": "Please call me"},
    },
}  # fmt: skip


def get_messaging(request: Request) -> Messaging:
    return request.app.state.messaging


MessagingDep = Annotated[Messaging, Depends(get_messaging)]


def _page(state: str, *, lang: str, office: Office | None, purpose: Purpose | None = None,
          message: str = "", status: int = 200) -> HTMLResponse:  # fmt: skip
    t = TEXT.get(lang, TEXT["ja"])
    table = t["employer_answers"] if purpose == Purpose.employer_check_in else t["answers"]
    html = _templates.get_template("reply.html").render(
        lang=lang,
        t=t,
        state=state,
        message=message,
        answers=list(table.items()),
        office_name=office.name if office else "",
        office_phone=display_phone(office.phone) if office else "",
        office_phone_e164=office.phone if office else "",
    )
    return HTMLResponse(
        html, status_code=status, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
    )


def _link(session: Session, messaging: Messaging, token: str):
    outbox_id, problem = messaging.links.read(token)
    row = session.get(OutboxMessage, outbox_id) if outbox_id is not None else None
    if row is None:
        return None, None, "invalid" if problem != "expired" else "expired"
    office = session.get(Office, row.office_id)
    return row, office, problem


@router.get("/r/{token}", response_class=HTMLResponse)
def reply_page(token: str, session: SessionDep, messaging: MessagingDep):
    row, office, problem = _link(session, messaging, token)
    lang = row.language if row else "ja"
    if problem:
        return _page(
            "done", lang=lang, office=office, message=TEXT[lang][problem], status=410 if problem == "expired" else 404
        )
    if row.answered_at is not None:
        return _page("done", lang=lang, office=office, message=TEXT[lang]["used"], status=410)
    return _page("ask", lang=lang, office=office, purpose=row.purpose)


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
    lang = row.language if row else "ja"
    if problem:
        return _page(
            "done", lang=lang, office=office, message=TEXT[lang][problem], status=410 if problem == "expired" else 404
        )
    table = answers.EMPLOYER_ANSWERS if row.purpose == Purpose.employer_check_in else answers.ANSWERS
    if answer not in table:
        return _page("ask", lang=lang, office=office, purpose=row.purpose, status=422)
    if not answers.use_reply_link(session, outbox_id=row.id, now=clock.now()):
        return _page("done", lang=lang, office=office, message=TEXT[lang]["used"], status=410)
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
    return _page("done", lang=lang, office=office, message=TEXT[lang]["thanks"])


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
    if not token or not signature or not RequestValidator(token).validate(url, params, signature):
        raise HTTPException(403, "invalid signature")
    return params


TwilioForm = Annotated[dict[str, str], Depends(twilio_form)]
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _xml(body: str) -> Response:
    return Response(body, media_type="application/xml")


@router.post("/webhooks/twilio/sms")
def inbound_sms(form: TwilioForm, session: SessionDep, messaging: MessagingDep, clock: ClockDep):
    sid, sender, body = form.get("MessageSid"), form.get("From"), form.get("Body", "")
    if not sid or not sender or len(sid) > 200 or len(body) > 2000:
        raise HTTPException(422, "MessageSid, From and Body are required")
    answers.handle_sms(session, messaging=messaging, message_sid=sid, from_phone=sender, body=body, clock=clock)
    return _xml(EMPTY_TWIML)


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
    if new == MessageStatus.sent and row.sent_at is None:
        row.sent_at = now
    if new == MessageStatus.failed:
        row.error_code = form.get("ErrorCode") or raw
        row.error_reason = row.error_reason or f"the provider reports: {raw}"
    session.add(row)
    return _xml(EMPTY_TWIML)
