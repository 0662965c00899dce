"""Rendering pages: one Jinja2 environment per language with the gettext catalog installed
(``_()`` / ``gettext`` / ``ngettext`` / ``{% trans %}`` in templates), and the common context."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlmodel import Session

from service.accounts.models import Office, Role, StaffUser
from service.web import i18n, labels
from service.web.auth import PRE_COOKIE, csrf_token, set_cookie

TEMPLATES = Path(__file__).parent / "templates"


@cache
def environment(language: str, templates: Path = TEMPLATES) -> Environment:
    """The pages' environment in ``language``; ``templates`` may name another directory (the client's
    reply page lives in service/outcomes/templates) with the same catalog, filters and settings."""
    env = Environment(
        loader=FileSystemLoader(templates),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(i18n.translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.globals["language"] = language
    env.filters["date"] = lambda d, era=False: i18n.show_date(d, language, with_era=era)
    env.filters["label"] = lambda value, kind: labels.label(i18n.translations(language), value, kind)
    return env


def language_for(request: Request, user: StaffUser | None = None) -> str:
    return i18n.negotiate(request, user.language.value if user else None)


def gettext_for(language: str):
    return i18n.translations(language).gettext


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    user: StaffUser | None = None,
    session: Session | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` in the user's language with ``user``, ``office`` (when ``session`` is
    given), ``csrf_token``, ``is_manager``, ``languages`` and ``request`` in the context."""
    user = user or getattr(request.state, "user", None)
    language = language_for(request, user)
    env = environment(language)
    office = None
    if user is not None and session is not None:
        office = session.get(Office, user.office_id)
    ctx = {
        "request": request,
        "user": user,
        "office": office,
        "is_manager": user is not None and user.role in (Role.manager, Role.admin),
        "csrf_token": csrf_token(request),
        "languages": i18n.LANGUAGES,
        "show_time": lambda t, tz=None: i18n.show_time(t, language, tz or (office.timezone if office else "UTC")),
        **(context or {}),
    }
    response = HTMLResponse(env.get_template(template).render(ctx), status_code=status_code)
    pre = getattr(request.state, "pre_cookie", None)
    if pre and not request.cookies.get(PRE_COOKIE):
        set_cookie(request, response, PRE_COOKIE, pre)
    response.headers["Cache-Control"] = "no-store"
    return response
