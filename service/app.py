"""The application factory. The lifespan owns the resources: engine, sessions, clock, plans,
token signer and the scheduler, chosen from settings, never at import."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from service import __version__, ops, policy
from service.accounts.routes import router as accounts_router
from service.audit.routes import router as audit_router
from service.clock import Clock, SystemClock
from service.contacts.messaging import outbox
from service.contacts.messaging.outbox import Messaging
from service.contacts.routes import router as contacts_router
from service.db import make_engine, make_session_factory
from service.errors import DomainError, ValidationFailed
from service.jobs import JobContext
from service.middleware import RequestContextMiddleware
from service.outcomes import crisis
from service.outcomes.answer_routes import router as answer_router
from service.outcomes.answers import WAITING_GRACE
from service.outcomes.crisis_routes import router as crisis_router
from service.outcomes.export_routes import router as exports_router
from service.outcomes.program import config_at as program_config
from service.outcomes.program_routes import router as program_router
from service.outcomes.report_routes import router as reports_router
from service.outcomes.routes import router as outcomes_router
from service.schedules.plans import load_plans
from service.schedules.scheduler import build_scheduler, catch_up
from service.security import TokenSigner
from service.settings import Settings, get_settings
from service.validation import MAX_ID
from service.web import include_web
from service.web.docs import include_docs

log = logging.getLogger(__name__)

_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process, when the service has started: what is alive now (the modules, the
    app, its engine and scheduler, some 150,000 objects) stays alive, so it is moved out of the
    cyclic garbage collector's sight (``gc.freeze``). A full collection walked all of it, some
    100 ms with every thread stopped, every few seconds under a stream of webhooks: the slowest
    answers, and on a slow machine a backlog that grew the next collections (issue 7, benchmark
    4; bench/README.md). Objects made later are collected as before; once per process, so an
    app started again in the same process (tests) freezes nothing more."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()  # the start-up's own garbage first: what is frozen is never collected
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    messaging: Messaging | None = None,
    public: bool = True,
) -> FastAPI:
    """``public=False``: the scheduler role, serving only /healthz, /readyz and /metrics."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        eng = engine or make_engine(settings.database_url)
        app.state.settings = settings
        app.state.engine = eng
        app.state.session_factory = make_session_factory(eng)
        app.state.clock = clock or ops.clock_from_settings(settings) or SystemClock()
        app.state.plans = load_plans(settings.plans_dir)  # refuses to start on a bad template
        # Crisis rules: refuses to start on a bad rule; every session carries them.
        app.state.crisis_rules = crisis.load_crisis_rules(settings.config_dir / "crisis_rules.toml")
        crisis.use_rules(app.state.session_factory, app.state.crisis_rules)
        program_config(settings.config_dir / "program.toml")  # refuses to start on a bad config/program.toml
        app.state.signer = TokenSigner(settings.secret_key, settings.token_ttl_minutes * 60)
        # Channels: real adapters when configured, else the development adapter (records only).
        app.state.messaging = messaging or Messaging.from_settings(settings)
        scheduler = None
        if settings.scheduler_enabled:
            # Kept SMS are left a moment to the API process that kept them only where it acts on
            # them itself; a scheduler process of its own (public=False) takes them at once.
            acts_itself = public and settings.act_on_sms_in_api
            grace = WAITING_GRACE if acts_itself else timedelta(0)
            ctx = JobContext(app.state.session_factory, app.state.clock, app.state.messaging, reply_grace=grace)
            await catch_up(ctx)
            scheduler = build_scheduler(settings, ctx)
            scheduler.start()
        app.state.scheduler = scheduler
        _freeze_startup_heap()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=True)  # cancels a dispatch tick under way ...
                await outbox.settle()  # ... which records what it sent and requeues the rest
            await app.state.messaging.email.aclose()  # QUIT the SMTP sessions kept open between ticks
            if own_engine:
                eng.dispose()

    app = FastAPI(
        title="Teichaku",
        version=__version__,
        description="Post-employment retention follow-up (定着支援) for employment-support offices.",
        lifespan=lifespan,
        docs_url=None,  # served from the vendored Swagger UI below (no CDN)
        redoc_url=None,
    )
    if public:
        # First: routes are matched in order, and Twilio's webhooks are the busiest (issue 7, (4)).
        app.include_router(answer_router)
        app.include_router(accounts_router)
        app.include_router(contacts_router)
        app.include_router(outcomes_router)
        app.include_router(crisis_router)
        app.include_router(program_router)
        app.include_router(reports_router)
        app.include_router(audit_router)
        app.include_router(exports_router)
        include_web(app)  # the pages (service/web/), /static and the sign-in redirect
        include_docs(app)  # /docs from the vendored Swagger UI
    _install_error_handlers(app)
    # Request id, audit context, security headers, request log, a 500 that logs no data (issue 6).
    app.add_middleware(RequestContextMiddleware, hsts=settings.public_url.startswith("https://"))
    policy.document_responses(app)  # 401/403/404 from the access policy, in the OpenAPI schema
    ops.install(app)  # /metrics, webhook timing

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

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A number too large for the database's integer columns (SQLite raises OverflowError,
        # PostgreSQL a DataError), or another value the database cannot store. An id in the path
        # that large names no record: 404. In the query string: 422 on that parameter.
        log.warning("value out of range: %s", type(exc).__name__)

        def too_big(value: str) -> bool:
            digits = value.strip().lstrip("+-").lstrip("0")
            return digits.isdecimal() and (len(digits) > 10 or int(digits) > MAX_ID)

        if any(too_big(str(v)) for v in request.path_params.values()):
            return JSONResponse({"detail": "not found"}, status_code=404)
        detail = [
            {"loc": ["query", name], "msg": "is out of range", "type": "value_error"}
            for name, value in request.query_params.items()
            if too_big(value)
        ]
        # Always a list of field errors, the documented 422 shape (issue 6: schemathesis).
        unstorable = {"loc": ["body"], "msg": "a value is out of range or cannot be stored", "type": "value_error"}
        detail = detail or [unstorable]
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DataError, _out_of_range)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("integrity error: %s", type(exc.orig).__name__)
        return JSONResponse({"detail": "this conflicts with a record that already exists"}, status_code=409)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
        # The database refused or dropped the statement or the commit (restarting, unreachable, locked
        # past the busy timeout). The transaction was rolled back: nothing of the request was kept.
        log.error("database unavailable: %s", type(exc.orig).__name__ if exc.orig else "OperationalError")
        return JSONResponse(
            {"detail": "the database is unavailable; nothing was saved, try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
