"""Per-request plumbing, as one pure ASGI middleware: a request id (X-Request-ID, echoed), the
audit context (address, request id; webhooks and reply links as their own actors), security
headers, one log line per request (the route template, never the raw path: reply-link paths
carry tokens and query strings carry names), and a last-resort 500 that logs no data."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.audit.capture import Actor, RequestInfo, acting_as, in_request
from service.audit.models import ActorType
from service.logging import request_id_var

log = logging.getLogger("service.request")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI (vendored, service/web/docs.py) sets inline styles; its scripts are files under /static.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "worker-src 'self' blob:; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs",)


def _new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` gives, without a system call per request (issue 7:
    reading the kernel's random source cost a quarter of a millisecond under load). A request
    id ties log lines together; it guards nothing, so it needs no cryptographic randomness."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from the system's randomness once per process
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def _actor_for_path(path: str) -> Actor | None:
    if path.startswith("/webhooks/"):
        return Actor(ActorType.webhook, label=path.removeprefix("/webhooks/").split("/{")[0][:100])
    if path.startswith("/r/"):
        return Actor(ActorType.client_link, label="reply link")
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else _new_request_id()
        client = scope.get("client")
        ip = client[0] if client else None
        path: str = scope.get("path", "")
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "started": False, "ended": None}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                h = MutableHeaders(scope=message)
                h["X-Request-ID"] = request_id
                self._security_headers(h, path)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                status["ended"] = time.perf_counter()  # work after the response is not its duration

        rid_token = request_id_var.set(request_id)
        actor = _actor_for_path(path)
        try:
            with in_request(RequestInfo(ip=ip, request_id=request_id)):
                if actor is not None:
                    with acting_as(actor):
                        await self.app(scope, receive, send_with_headers)
                else:
                    await self.app(scope, receive, send_with_headers)
        except Exception:
            # The type and frames, never the message (it may quote a value), and a plain 500.
            log.exception("unhandled error", extra={"method": scope.get("method"), "route": _route_template(scope)})
            if not status["started"]:
                await self._internal_error(send_with_headers, request_id)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "route": _route_template(scope),
                    "status": status["code"],
                    "duration_ms": round(((status["ended"] or time.perf_counter()) - started) * 1000, 1),
                },
            )
            request_id_var.reset(rid_token)

    def _security_headers(self, h: MutableHeaders, path: str) -> None:
        docs = path.startswith(DOCS_PATHS)
        h.setdefault("Content-Security-Policy", DOCS_CSP if docs else CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        h.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if path.startswith("/r/"):
            # Reply links carry their token in the path: it must never be sent on as a Referer.
            h["Referrer-Policy"] = "no-referrer"
            h["Cache-Control"] = "no-store"
        else:
            h.setdefault("Referrer-Policy", "no-referrer")
        if path.startswith("/api/"):
            h.setdefault("Cache-Control", "no-store")
        if self.hsts:
            h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")

    @staticmethod
    async def _internal_error(send: Any, request_id: str) -> None:
        body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
