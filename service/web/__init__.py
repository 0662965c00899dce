"""The pages (issue 5): sign-in, the worker's day, client pages, new placements, calendar feeds.

How to add pages (e.g. the manager dashboard):

* Write an ``APIRouter`` named ``router`` in a module of this package and add the module's
  name to ``PAGE_MODULES`` below; :func:`include_web` mounts every listed module that has a
  ``router``. ``service.web.dashboard`` is already listed: define ``router`` there, with its
  page at ``/manager`` (base.html shows the "Manager" nav link to managers and admins).
* Every route needs an entry in ``service/policy.py`` (see the "pages" block there).
* Sign-in: ``user: PageUser`` (any staff) or ``user: ManagerPageUser`` from ``service.web.auth``.
* Render: ``service.web.render.render(request, "x.html", {...}, user=user)``.
See README.md in this directory.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGE_MODULES = ("service.web.pages", "service.web.calendar_feed", "service.web.dashboard")


def routers() -> list:
    out = []
    for name in PAGE_MODULES:
        router = getattr(importlib.import_module(name), "router", None)
        if router is not None:
            out.append(router)
    return out


def include_web(app: FastAPI) -> None:
    """Mount the pages, /static and the sign-in redirect; compile the catalogs if needed."""
    from service.web.auth import SignInRequired, sign_in_redirect_url
    from service.web.i18n import compile_catalogs

    compile_catalogs()
    for router in routers():
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(SignInRequired)
    async def _sign_in(_: Request, exc: SignInRequired) -> RedirectResponse:
        return RedirectResponse(sign_in_redirect_url(exc.next_url), status_code=303)
