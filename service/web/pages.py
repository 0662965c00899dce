"""The worker's pages: sign-in, today's queue, the outcome form, the client page, new placements.

Routes are thin: they read the form, call the service functions the API uses, and render.
Every POST depends on ``CSRF``; no GET changes anything.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from service.accounts import service as accounts
from service.accounts.models import Language, Office, Role, StaffUser
from service.contacts import service as contacts
from service.contacts.messaging.models import InboundMessage, OutboxMessage
from service.contacts.models import (
    ClientCategory,
    Employer,
    EmploymentType,
    FollowUp,
    FollowUpStatus,
    Placement,
    SeparationReason,
)
from service.contacts.schemas import ClientCreate, EmployerCreate, PlacementCreate
from service.deps import ClockDep, PlansDep, SessionDep
from service.errors import Conflict, ValidationFailed
from service.i18n import action_text, label
from service.outcomes.models import CrisisFlag, Outcome, RiskSignal, StillEmployed
from service.outcomes.queue import daily_queue
from service.outcomes.service import record_outcome
from service.schedules.calendar import add_months, holiday_name
from service.schedules.plans import schedule_steps
from service.validation import MAX_ID
from service.web import i18n
from service.web.auth import CSRF, PageUser, end_session, session_user, set_cookie, start_session
from service.web.render import language_for, render

router = APIRouter(include_in_schema=False)

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
GROUPS = ("crisis", "overdue", "today")


def _form_errors(exc: ValidationFailed | ValidationError) -> dict[str, str]:
    if isinstance(exc, ValidationError):
        return {str(e["loc"][-1]) if e["loc"] else "form": e["msg"] for e in exc.errors()}
    return {e.field: e.message for e in exc.errors}


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/today"


def _one(form, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


# -- sign-in, sign-out, language ------------------------------------------------------------------


@router.get("/")
def home(request: Request, session: SessionDep) -> RedirectResponse:
    return RedirectResponse("/today" if session_user(request, session) else "/sign-in", status_code=303)


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, next: str = "/today") -> HTMLResponse:  # noqa: A002
    return render(request, "sign_in.html", {"next": _safe_next(next)})


@router.post("/sign-in", response_class=HTMLResponse, dependencies=[CSRF])
async def sign_in(request: Request, session: SessionDep) -> Response:
    form = await request.form()
    email, password, next_url = _one(form, "email"), form.get("password"), _safe_next(_one(form, "next"))
    address = request.client.host if request.client else None
    try:
        user = accounts.authenticate(
            session, email=email, password=password if isinstance(password, str) else "", address=address
        )
    except accounts.Throttled:
        user, error = None, "throttled"
    else:
        error = None if user else "wrong"
    if user is None:
        return render(request, "sign_in.html", {"next": next_url, "error": error, "email": email}, status_code=401)
    response = RedirectResponse(next_url, status_code=303)
    start_session(request, response, session, user)
    return response


@router.post("/sign-out", dependencies=[CSRF])
def sign_out(request: Request, session: SessionDep, user: PageUser) -> RedirectResponse:
    response = RedirectResponse("/sign-in", status_code=303)
    end_session(request, response, session, user)
    return response


@router.post("/language", dependencies=[CSRF])
async def choose_language(request: Request, session: SessionDep) -> RedirectResponse:
    form = await request.form()
    wanted = _one(form, "language")
    if wanted not in i18n.LANGUAGES:
        wanted = i18n.DEFAULT_LANGUAGE
    response = RedirectResponse(_safe_next(_one(form, "next")), status_code=303)
    user = session_user(request, session)
    if user is not None:
        user.language = Language(wanted)  # the staff user's own preference
        session.add(user)
    set_cookie(request, response, i18n.LANG_COOKIE, wanted, 365 * 24 * 3600)
    return response


# -- today -------------------------------------------------------------------------------------------


def _office(session: Session, user: StaffUser) -> Office:
    return session.get(Office, user.office_id)


def _map_url(address: str | None) -> str | None:
    return "https://www.google.com/maps/search/?api=1&query=" + quote(address) if address else None


@router.get("/today", response_class=HTMLResponse)
def today(request: Request, session: SessionDep, user: PageUser, clock: ClockDep, done: int | None = None):
    office = _office(session, user)
    on = contacts.office_today(office, clock)
    queue = daily_queue(session, worker=user, on=on)
    language = language_for(request, user)
    groups = {g: [i for i in queue.items if i.group == g] for g in GROUPS}
    return render(
        request,
        "today.html",
        {
            "on": on,
            "groups": groups,
            "done": done,
            "map_url": _map_url,
            "action": lambda i: action_text(kind=i.kind, channel=i.channel, party=i.party, language=language),
        },
        user=user,
        session=session,
    )


# -- the outcome form ----------------------------------------------------------------------------


def _outcome_context(session: Session, user: StaffUser, fu: FollowUp, language: str) -> dict:
    placement = session.get(Placement, fu.placement_id)
    client = contacts.get_client(session, office_id=user.office_id, client_id=placement.client_id)
    return {
        "fu": fu,
        "client": client,
        "placement": placement,
        "employer": session.get(Employer, placement.employer_id),
        "action": action_text(kind=fu.kind, channel=fu.channel, party=fu.party, language=language),
        "signals": [(s.value, label(s, "crisis_signal", language)) for s in RiskSignal],
        "values": {},
        "errors": {},
    }


@router.get("/follow-ups/{follow_up_id}/outcome", response_class=HTMLResponse)
def outcome_form(request: Request, follow_up_id: IdPath, session: SessionDep, user: PageUser):
    fu = contacts.get_follow_up(session, office_id=user.office_id, follow_up_id=follow_up_id)
    ctx = _outcome_context(session, user, fu, language_for(request, user))
    return render(request, "outcome.html", ctx, user=user, session=session)


@router.post("/follow-ups/{follow_up_id}/outcome", dependencies=[CSRF])
async def outcome_submit(
    request: Request, follow_up_id: IdPath, session: SessionDep, user: PageUser, clock: ClockDep
) -> Response:
    fu = contacts.get_follow_up(session, office_id=user.office_id, follow_up_id=follow_up_id)
    form = await request.form()
    errors: dict[str, str] = {}
    reached = _one(form, "reached")
    if reached not in ("yes", "no"):
        errors["reached"] = "choose whether you reached them"
    still = _one(form, "still_employed") or "unknown"
    if still not in {s.value for s in StillEmployed}:
        errors["still_employed"] = "choose yes, no or not known"
    raw_wellbeing = _one(form, "wellbeing")
    wellbeing = None
    if raw_wellbeing:
        if raw_wellbeing in {"1", "2", "3", "4", "5"}:
            wellbeing = int(raw_wellbeing)
        else:
            errors["wellbeing"] = "choose 1 to 5"
    signals = [s for s in form.getlist("risk_signals") if isinstance(s, str)]
    if any(s not in {r.value for r in RiskSignal} for s in signals):
        errors["risk_signals"] = "unknown risk signal"
    note = _one(form, "note") or None
    if note and len(note) > 2000:
        errors["note"] = "at most 2000 characters"
    if not errors:
        try:
            recorded = record_outcome(
                session,
                office_id=user.office_id,
                follow_up_id=fu.id,
                recorded_by=user.id,
                clock=clock,
                reached=reached == "yes",
                still_employed=StillEmployed(still),
                wellbeing=wellbeing,
                risk_signals=[RiskSignal(s) for s in signals],
                note=note,
            )
        except Conflict as exc:
            errors["form"] = exc.message
        else:
            if recorded.separation_required:
                return RedirectResponse(f"/clients/{_client_id(session, fu)}?separation=1#separation", 303)
            return RedirectResponse(f"/today?done={fu.id}", status_code=303)
    ctx = _outcome_context(session, user, fu, language_for(request, user))
    ctx |= {"errors": errors, "values": {"reached": reached, "still_employed": still, "wellbeing": raw_wellbeing,
                                          "risk_signals": signals, "note": note or ""}}  # fmt: skip
    return render(request, "outcome.html", ctx, user=user, session=session, status_code=422)


def _client_id(session: Session, fu: FollowUp) -> int:
    return session.get(Placement, fu.placement_id).client_id


# -- the client page --------------------------------------------------------------------------------


def _client_page(request: Request, session: Session, user: StaffUser, client_id: int, **extra) -> dict:
    client = contacts.get_client(session, office_id=user.office_id, client_id=client_id)
    language = language_for(request, user)
    placements = session.exec(
        select(Placement)
        .where(Placement.client_id == client.id, Placement.office_id == user.office_id)
        .order_by(col(Placement.start_date).desc(), col(Placement.id).desc())
    ).all()
    timeline = []
    for p in placements:
        fus = contacts.list_follow_ups(session, office_id=user.office_id, placement_id=p.id)
        outcomes: dict[int, list[Outcome]] = {}
        for o in session.exec(select(Outcome).where(Outcome.placement_id == p.id).order_by(Outcome.id)).all():
            outcomes.setdefault(o.follow_up_id, []).append(o)
        messages: dict[int | None, list[OutboxMessage]] = {}
        for m in session.exec(
            select(OutboxMessage).where(OutboxMessage.placement_id == p.id).order_by(OutboxMessage.id)
        ).all():
            messages.setdefault(m.follow_up_id, []).append(m)
        timeline.append(
            {
                "placement": p,
                "employer": session.get(Employer, p.employer_id),
                "follow_ups": fus,
                "outcomes": outcomes,
                "messages": messages,
                "flags": session.exec(
                    select(CrisisFlag).where(CrisisFlag.placement_id == p.id).order_by(CrisisFlag.id)
                ).all(),
                "separation": contacts.get_separation(session, placement_id=p.id),
            }
        )
    answers = session.exec(
        select(InboundMessage)
        .where(InboundMessage.client_id == client.id, InboundMessage.office_id == user.office_id)
        .order_by(col(InboundMessage.received_at).desc())
        .limit(50)
    ).all()
    return {
        "client": client,
        "timeline": timeline,
        "answers": answers,
        "reasons": [r.value for r in SeparationReason],
        "action": lambda f: action_text(kind=f.kind, channel=f.channel, party=f.party, language=language),
        "open_statuses": (FollowUpStatus.pending, FollowUpStatus.missed),
        "errors": {},
        "values": {},
        **extra,
    }


@router.get("/clients/{client_id}", response_class=HTMLResponse)
def client_page(request: Request, client_id: IdPath, session: SessionDep, user: PageUser):
    ctx = _client_page(request, session, user, client_id)
    return render(request, "client.html", ctx, user=user, session=session)


def _parse_date(raw: str, field: str, errors: dict[str, str]) -> date | None:
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        errors[field] = "a date as YYYY-MM-DD"
        return None


@router.post("/follow-ups/{follow_up_id}/reschedule", dependencies=[CSRF])
async def reschedule(
    request: Request, follow_up_id: IdPath, session: SessionDep, user: PageUser, clock: ClockDep
) -> Response:
    fu = contacts.get_follow_up(session, office_id=user.office_id, follow_up_id=follow_up_id)
    client_id = _client_id(session, fu)
    form = await request.form()
    errors: dict[str, str] = {}
    new_date = _parse_date(_one(form, "due_date"), "due_date", errors)
    if new_date is not None:
        try:
            contacts.reschedule_follow_up(
                session,
                office_id=user.office_id,
                follow_up_id=fu.id,
                new_date=new_date,
                reason=_one(form, "reason"),
                clock=clock,
            )
            return RedirectResponse(f"/clients/{client_id}#fu-{fu.id}", status_code=303)
        except (ValidationFailed, Conflict) as exc:
            errors = _form_errors(exc) if isinstance(exc, ValidationFailed) else {"form": exc.message}
    ctx = _client_page(request, session, user, client_id, errors={f"{fu.id}.{k}": v for k, v in errors.items()})
    return render(request, "client.html", ctx, user=user, session=session, status_code=422)


@router.post("/placements/{placement_id}/separation", dependencies=[CSRF])
async def separation(
    request: Request, placement_id: IdPath, session: SessionDep, user: PageUser, clock: ClockDep
) -> Response:
    placement = contacts.get_placement(session, office_id=user.office_id, placement_id=placement_id)
    form = await request.form()
    errors: dict[str, str] = {}
    when = _parse_date(_one(form, "date"), "date", errors)
    reason = _one(form, "reason")
    if reason not in {r.value for r in SeparationReason}:
        errors["reason"] = "choose a reason"
    note = _one(form, "note") or None
    if note and len(note) > 2000:
        errors["note"] = "at most 2000 characters"
    if not errors:
        try:
            contacts.record_separation(
                session,
                office_id=user.office_id,
                placement_id=placement.id,
                separation_date=when,
                reason=SeparationReason(reason),
                note=note,
                recorded_by=user.id,
                clock=clock,
            )
            return RedirectResponse(f"/clients/{placement.client_id}#placement-{placement.id}", status_code=303)
        except ValidationFailed as exc:
            errors = _form_errors(exc)
        except Conflict as exc:
            errors = {"form": exc.message}
    ctx = _client_page(
        request, session, user, placement.client_id, separation_errors=errors, separation_for=placement.id
    )
    return render(request, "client.html", ctx, user=user, session=session, status_code=422)


# -- new placement: form -> preview (server-side dry run of the plan) -> save -----------------------

CLIENT_FIELDS = ("name", "kana", "phone", "email", "address", "category", "language")
CONSENTS = ("consent_automated", "consent_family", "consent_employer")


def _new_placement_context(session: Session, user: StaffUser, plans, values: dict, errors: dict) -> dict:
    office = _office(session, user)
    employers = session.exec(select(Employer).where(Employer.office_id == office.id).order_by(Employer.name)).all()
    workers = contacts.staff_in_office(session, office_id=office.id, roles=[Role.worker, Role.manager])
    return {
        "values": values,
        "errors": errors,
        "employers": employers,
        "workers": workers,
        "plans": sorted(plans.values(), key=lambda p: p.name),
        "default_plan": office.default_plan,
        "categories": [c.value for c in ClientCategory],
        "employment_types": [e.value for e in EmploymentType],
        "consents": CONSENTS,
    }


def _read_placement_form(form, user: StaffUser, plans, session: Session) -> tuple[dict, dict, dict]:
    """(values as typed, checked objects, field errors)."""
    values = {k: _one(form, k) for k in (*CLIENT_FIELDS, "employer_id", "employer_name", "employer_address",
                                          "employer_phone", "job_title", "employment_type", "start_date",
                                          "weekly_hours", "worker_id", "plan")}  # fmt: skip
    values |= {c: form.get(c) == "on" for c in CONSENTS}
    errors: dict[str, str] = {}
    checked: dict = {}
    try:
        checked["client"] = ClientCreate(
            **{k: (values[k] or None) for k in CLIENT_FIELDS if k not in ("category", "language")},
            category=values["category"] or None,
            language=values["language"] or "ja",
            **{c: values[c] for c in CONSENTS},
        )
    except ValidationError as exc:
        errors |= {f"client.{k}": v for k, v in _form_errors(exc).items()}
    if values["employer_id"]:
        employer = session.get(Employer, int(values["employer_id"])) if values["employer_id"].isdecimal() else None
        if employer is None or employer.office_id != user.office_id:
            errors["employer_id"] = "no such employer in your office"
        checked["employer_id"] = employer.id if employer and not errors.get("employer_id") else None
    else:
        try:
            checked["employer"] = EmployerCreate(
                name=values["employer_name"] or None,
                address=values["employer_address"] or None,
                phone=values["employer_phone"] or None,
            )
        except ValidationError as exc:
            errors |= {f"employer.{k}": v for k, v in _form_errors(exc).items()}
    try:
        checked["placement"] = PlacementCreate(
            client_id=1,
            employer_id=1,
            job_title=values["job_title"] or None,
            employment_type=values["employment_type"] or None,
            start_date=values["start_date"] or None,
            weekly_hours=values["weekly_hours"] or None,
            worker_id=values["worker_id"] or user.id,
            plan=values["plan"] or None,
        )
    except ValidationError as exc:
        errors |= {f"placement.{k}": v for k, v in _form_errors(exc).items()}
    plan_name = values["plan"] or _office(session, user).default_plan
    if plan_name not in plans:
        errors["placement.plan"] = "no such plan"
    worker_id = checked["placement"].worker_id if "placement" in checked else None
    if worker_id is not None:
        worker = session.get(StaffUser, worker_id)
        if worker is None or worker.office_id != user.office_id:
            errors["placement.worker_id"] = "no such worker in your office"
    return values, checked, errors


def _preview_steps(session: Session, user: StaffUser, plans, placement: PlacementCreate, client: ClientCreate, lang):
    """The plan's dates as they would be saved, by the materializer's own scheduling (a dry run)."""
    office = _office(session, user)
    template = plans[placement.plan or office.default_plan]
    cal = contacts.office_calendar(office)
    rows = []
    for s in schedule_steps(template, placement.start_date, cal):
        planned = add_months(placement.start_date, s.step.offset_months) + timedelta(days=s.step.offset_days)
        block = (
            contacts.consent_block(
                party=s.step.party, channel=s.step.channel, automated=s.step.automated,
                client=client, has_family=False,
            ) if s.step.needs_consent else None
        )  # fmt: skip
        moved = holiday_name(planned, lang, cal.country, cal.subdivision) if planned != s.due_date else None
        rows.append(
            {
                "due": s.due_date,
                "planned": planned,
                "moved_because": moved,
                "action": action_text(kind=s.step.kind, channel=s.step.channel, party=s.step.party, language=lang),
                "automated": s.step.automated,
                "skipped": block,
            }
        )
    return template, rows


@router.get("/placements/new", response_class=HTMLResponse)
def new_placement(request: Request, session: SessionDep, user: PageUser, plans: PlansDep):
    ctx = _new_placement_context(session, user, plans, {"worker_id": str(user.id)}, {})
    return render(request, "placement_new.html", ctx, user=user, session=session)


@router.post("/placements/preview", response_class=HTMLResponse, dependencies=[CSRF])
async def preview_placement(request: Request, session: SessionDep, user: PageUser, plans: PlansDep):
    form = await request.form()
    values, checked, errors = _read_placement_form(form, user, plans, session)
    ctx = _new_placement_context(session, user, plans, values, errors)
    if errors:
        return render(request, "placement_new.html", ctx, user=user, session=session, status_code=422)
    template, rows = _preview_steps(
        session, user, plans, checked["placement"], checked["client"], language_for(request, user)
    )
    ctx |= {"template": template, "rows": rows, "hidden": _hidden(values)}
    return render(request, "placement_preview.html", ctx, user=user, session=session)


def _hidden(values: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in values.items():
        if isinstance(v, bool):
            if v:
                out.append((k, "on"))
        elif v:
            out.append((k, v))
    return out


@router.post("/placements/new", response_class=HTMLResponse, dependencies=[CSRF])
async def save_placement(request: Request, session: SessionDep, user: PageUser, plans: PlansDep) -> Response:
    form = await request.form()
    values, checked, errors = _read_placement_form(form, user, plans, session)
    if not errors:
        client = contacts.create_client(
            session, office_id=user.office_id, created_by=user.id, **checked["client"].model_dump()
        )
        employer_id = checked.get("employer_id")
        if employer_id is None:
            employer_id = contacts.create_employer(
                session, office_id=user.office_id, **checked["employer"].model_dump()
            ).id
        p = checked["placement"]
        try:
            contacts.create_placement(
                session,
                office_id=user.office_id,
                created_by=user.id,
                plans=plans,
                client_id=client.id,
                employer_id=employer_id,
                job_title=p.job_title,
                employment_type=p.employment_type,
                start_date=p.start_date,
                worker_id=p.worker_id or user.id,
                plan=p.plan,
                weekly_hours=p.weekly_hours,
            )
            return RedirectResponse(f"/clients/{client.id}", status_code=303)
        except ValidationFailed as exc:
            session.rollback()
            errors = {f"placement.{k}": v for k, v in _form_errors(exc).items()}
    ctx = _new_placement_context(session, user, plans, values, errors)
    return render(request, "placement_new.html", ctx, user=user, session=session, status_code=422)
