"""Each worker's private iCalendar feed (RFC 5545, written with the ``icalendar`` package).

``/calendar/{token}.ics`` needs no session: the token is the secret (only its SHA-256 is stored;
regenerating replaces it, revoking deletes it). The feed lists the worker's open visits and
meetings as all-day events on their due date (a local date of the office), with as little
personal data as a phone calendar needs: the kind of contact, the employer and the client's
office reference number, never the client's name, phone or address.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from icalendar import Calendar, Event
from sqlalchemy import delete
from sqlmodel import Session, col, select

from service.accounts.models import Office, StaffUser
from service.contacts import service as contacts
from service.contacts.models import Channel, Client, Employer, FollowUp, FollowUpStatus, Placement
from service.db import utcnow
from service.deps import ClockDep, SessionDep
from service.i18n import action_text
from service.web.auth import CSRF, PageUser
from service.web.models import CalendarFeed
from service.web.render import render

router = APIRouter(include_in_schema=False)
FEED_CHANNELS = (Channel.visit, Channel.meeting)
HORIZON_DAYS = 400


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def regenerate(session: Session, user: StaffUser) -> str:
    """A new secret for the user's feed (the old URL stops working); returns the token."""
    token = secrets.token_urlsafe(32)
    session.exec(delete(CalendarFeed).where(CalendarFeed.user_id == user.id))
    session.add(CalendarFeed(user_id=user.id, token_hash=_hash(token)))
    session.flush()
    return token


def revoke(session: Session, user: StaffUser) -> None:
    session.exec(delete(CalendarFeed).where(CalendarFeed.user_id == user.id))
    session.flush()


def feed_user(session: Session, token: str) -> StaffUser | None:
    if not token or len(token) > 100:
        return None
    row = session.exec(select(CalendarFeed).where(CalendarFeed.token_hash == _hash(token))).first()
    user = session.get(StaffUser, row.user_id) if row else None
    return user if user is not None and user.is_active else None


def build_feed(session: Session, user: StaffUser, clock) -> bytes:
    office = session.get(Office, user.office_id)
    today = contacts.office_today(office, clock)
    cal = Calendar()
    cal.add("prodid", "-//Teichaku//calendar feed//JA")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", f"Teichaku: {user.name}")
    cal.add("x-wr-timezone", office.timezone)
    rows = session.exec(
        select(FollowUp, Placement, Client, Employer)
        .join(Placement, col(Placement.id) == FollowUp.placement_id)
        .join(Client, col(Client.id) == Placement.client_id)
        .join(Employer, col(Employer.id) == Placement.employer_id)
        .where(
            FollowUp.assignee_id == user.id,
            FollowUp.office_id == user.office_id,
            FollowUp.status.in_([FollowUpStatus.pending, FollowUpStatus.missed]),  # type: ignore[attr-defined]
            col(FollowUp.channel).in_(FEED_CHANNELS),
            FollowUp.due_date >= today - timedelta(days=30),
            FollowUp.due_date <= today + timedelta(days=HORIZON_DAYS),
        )
        .order_by(FollowUp.due_date, FollowUp.id)
    ).all()
    stamp = utcnow().replace(microsecond=0)
    lang = user.language.value
    for fu, _placement, client, employer in rows:
        ev = Event()
        ev.add("uid", f"follow-up-{fu.id}@teichaku")
        ev.add("dtstamp", stamp)
        ev.add("dtstart", fu.due_date)  # a DATE value: an all-day event on the office's local day
        ev.add("dtend", fu.due_date + timedelta(days=1))
        who = client.ref or f"#{client.id}"
        ev.add("summary", f"{action_text(kind=fu.kind, channel=fu.channel, party=fu.party, language=lang)} {who}")
        ev.add("location", employer.name)
        ev.add("description", f"{employer.name} / {who}")
        cal.add_component(ev)
    return cal.to_ical()


@router.get("/calendar/{token}.ics")
def feed(token: str, session: SessionDep, clock: ClockDep) -> Response:
    user = feed_user(session, token)
    if user is None:
        raise HTTPException(404, detail="not found")
    return Response(
        build_feed(session, user, clock),
        media_type="text/calendar; charset=utf-8",
        headers={"Cache-Control": "private, no-store"},
    )


def _feed_url(request: Request, token: str) -> str:
    base = request.app.state.settings.public_url.rstrip("/")
    return f"{base}/calendar/{token}.ics"


@router.get("/calendar", response_class=HTMLResponse)
def calendar_page(request: Request, session: SessionDep, user: PageUser):
    exists = session.exec(select(CalendarFeed).where(CalendarFeed.user_id == user.id)).first() is not None
    return render(request, "calendar.html", {"exists": exists, "url": None}, user=user, session=session)


@router.post("/calendar/token", response_class=HTMLResponse, dependencies=[CSRF])
def calendar_token(request: Request, session: SessionDep, user: PageUser):
    token = regenerate(session, user)
    ctx = {"exists": True, "url": _feed_url(request, token)}
    return render(request, "calendar.html", ctx, user=user, session=session)


@router.post("/calendar/revoke", response_class=HTMLResponse, dependencies=[CSRF])
def calendar_revoke(request: Request, session: SessionDep, user: PageUser):
    revoke(session, user)
    return render(request, "calendar.html", {"exists": False, "url": None, "revoked": True}, user=user, session=session)
