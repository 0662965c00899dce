"""The application factory. The lifespan owns the resources: engine, sessions, clock, plans,
token signer and the scheduler, chosen from settings, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service import __version__
from service.accounts.routes import router as accounts_router
from service.clock import Clock, SystemClock
from service.contacts.routes import router as contacts_router
from service.db import make_engine, make_session_factory
from service.errors import DomainError, ValidationFailed
from service.outcomes.routes import router as outcomes_router
from service.schedules.plans import load_plans
from service.schedules.scheduler import build_scheduler, catch_up
from service.security import TokenSigner
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, clock: Clock | None = None
) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        eng = engine or make_engine(settings.database_url)
        app.state.settings = settings
        app.state.engine = eng
        app.state.session_factory = make_session_factory(eng)
        app.state.clock = clock or SystemClock()
        app.state.plans = load_plans(settings.plans_dir)  # refuses to start on a bad template
        app.state.signer = TokenSigner(settings.secret_key, settings.token_ttl_minutes * 60)
        scheduler = None
        if settings.scheduler_enabled:
            await asyncio.to_thread(catch_up, app.state.session_factory, app.state.clock)
            scheduler = build_scheduler(settings, app.state.session_factory, app.state.clock)
            scheduler.start()
        app.state.scheduler = scheduler
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if own_engine:
                eng.dispose()

    app = FastAPI(
        title="Teichaku",
        version=__version__,
        description="Post-employment retention follow-up (定着支援) for employment-support offices.",
        lifespan=lifespan,
    )
    app.include_router(accounts_router)
    app.include_router(contacts_router)
    app.include_router(outcomes_router)
    _install_error_handlers(app)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz(request: Request) -> JSONResponse:
        from service.migrate import pending_migrations

        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            pending = pending_migrations(request.app.state.engine)
        except Exception:
            log.exception("readiness check failed")
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        if pending:
            return JSONResponse({"status": "migrations pending", "pending": pending}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ValidationFailed)
    async def _validation_failed(_: Request, exc: ValidationFailed) -> JSONResponse:
        return JSONResponse(
            {
                "detail": [
                    {"loc": ["body", e.field], "msg": e.message, "type": "value_error"}
                    | ({"line": e.line} if e.line is not None else {})
                    for e in exc.errors
                ]
            },
            status_code=422,
        )

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The same shape as FastAPI's, without echoing the submitted values back.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("integrity error: %s", type(exc.orig).__name__)
        return JSONResponse({"detail": "this conflicts with a record that already exists"}, status_code=409)
