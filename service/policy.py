"""The access policy: one table saying, for every route (method and path template), who may call
it and whether the records it touches must belong to the caller's office.

Enforced in ``service.deps.get_current_user`` (``enforce``), which every signed-in route goes
through: a route missing from the table is refused (403) rather than left open, and a role the
table does not list is refused even if the route forgot its own check. Routes that need no
sign-in are listed as ``public`` with the reason they are safe (a Twilio signature, a signed
link). ``tests/test_access_matrix.py`` walks the application's own route list, fails naming any
route that is not here, and calls every route as every role of one office against another
office's records.

Pages (``service/web/``) get their entries here too, in the same form; a page's sign-in
dependency calls ``enforce`` just as the API's does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from service.accounts.models import Role, StaffUser

log = logging.getLogger(__name__)

STAFF = frozenset({Role.worker, Role.manager, Role.admin})
MANAGERS = frozenset({Role.manager, Role.admin})
ADMINS = frozenset({Role.admin})


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role] | None  # None: public (no sign-in; ``why`` says what protects it)
    office_scoped: bool = True  # every record it reads or writes is in the caller's office
    why: str = ""
    # Admins manage offices and users across offices: these routes are not office-bound for them.
    admin_any_office: bool = False
    # Reading this route is recorded in the audit trail as a view of (record type, path parameter).
    audit_view: tuple[str, str] | None = None
    # Works while the user must still change a password set by an admin.
    allowed_before_password_change: bool = False

    @property
    def public(self) -> bool:
        return self.roles is None


def public(why: str) -> Rule:
    return Rule(roles=None, office_scoped=False, why=why)


SIGNED_IN_ONLY = dict(allowed_before_password_change=True, office_scoped=False)

POLICY: dict[tuple[str, str], Rule] = {
    # -- framework and operations
    ("GET", "/openapi.json"): public("the schema: no data"),
    ("GET", "/docs"): public("API documentation page: no data"),
    ("GET", "/docs/oauth2-redirect"): public("API documentation page: no data"),
    ("GET", "/healthz"): public("liveness: no data"),
    ("GET", "/readyz"): public("readiness: no data beyond pending migration names"),
    ("GET", "/metrics"): public("Prometheus counts, no personal data (TEICHAKU_METRICS_TOKEN: a bearer token)"),
    # -- accounts and sign-in
    ("POST", "/api/v1/auth/token"): public("password sign-in, throttled per account and per address"),
    ("POST", "/api/v1/auth/logout"): Rule(STAFF, **SIGNED_IN_ONLY),
    ("POST", "/api/v1/auth/password"): Rule(STAFF, **SIGNED_IN_ONLY),
    ("GET", "/api/v1/me"): Rule(STAFF, **SIGNED_IN_ONLY),
    ("POST", "/api/v1/offices"): Rule(ADMINS, admin_any_office=True),
    ("GET", "/api/v1/offices"): Rule(STAFF, admin_any_office=True),
    ("GET", "/api/v1/offices/{office_id}"): Rule(STAFF, admin_any_office=True),
    ("POST", "/api/v1/users"): Rule(ADMINS, admin_any_office=True),
    ("GET", "/api/v1/users"): Rule(MANAGERS),
    ("GET", "/api/v1/users/{user_id}"): Rule(STAFF),
    ("POST", "/api/v1/users/{user_id}/reset-password"): Rule(ADMINS),
    # -- people and placements
    ("POST", "/api/v1/clients"): Rule(STAFF),
    ("GET", "/api/v1/clients"): Rule(STAFF),
    ("GET", "/api/v1/clients/{client_id}"): Rule(STAFF, audit_view=("client", "client_id")),
    ("PATCH", "/api/v1/clients/{client_id}"): Rule(STAFF),
    ("POST", "/api/v1/clients/{client_id}/family-contacts"): Rule(STAFF),
    ("GET", "/api/v1/clients/{client_id}/family-contacts"): Rule(STAFF, audit_view=("client", "client_id")),
    ("POST", "/api/v1/employers"): Rule(STAFF),
    ("GET", "/api/v1/employers"): Rule(STAFF),
    ("GET", "/api/v1/employers/{employer_id}"): Rule(STAFF),
    ("POST", "/api/v1/placements"): Rule(STAFF),
    ("GET", "/api/v1/placements"): Rule(STAFF),
    ("GET", "/api/v1/placements/{placement_id}"): Rule(STAFF),
    ("PATCH", "/api/v1/placements/{placement_id}"): Rule(STAFF),
    ("POST", "/api/v1/placements/{placement_id}/separation"): Rule(STAFF),
    ("GET", "/api/v1/placements/{placement_id}/follow-ups"): Rule(STAFF),
    ("GET", "/api/v1/follow-ups/{follow_up_id}"): Rule(STAFF),
    ("POST", "/api/v1/follow-ups/{follow_up_id}/reschedule"): Rule(STAFF),
    ("GET", "/api/v1/queue"): Rule(STAFF),
    ("POST", "/api/v1/follow-ups/{follow_up_id}/outcome"): Rule(STAFF),
    # -- crisis flags and reports
    ("GET", "/api/v1/crisis-flags"): Rule(STAFF),
    ("GET", "/api/v1/crisis-flags/measures"): Rule(MANAGERS),
    ("GET", "/api/v1/crisis-flags/{flag_id}"): Rule(STAFF),
    ("POST", "/api/v1/crisis-flags/{flag_id}/acknowledge"): Rule(STAFF),
    ("POST", "/api/v1/crisis-flags/{flag_id}/resolve"): Rule(STAFF),
    ("GET", "/api/v1/retention"): Rule(MANAGERS),
    ("GET", "/api/v1/retention/curve"): Rule(MANAGERS),
    ("GET", "/api/v1/adherence"): Rule(MANAGERS),
    ("GET", "/api/v1/exports/placements.csv"): Rule(STAFF),
    ("GET", "/api/v1/exports/follow-ups.csv"): Rule(STAFF),
    ("GET", "/api/v1/exports/crisis-flags.csv"): Rule(STAFF),
    # -- the post-employment program (service/outcomes/program_routes.py)
    ("GET", "/api/v1/program/attendance"): Rule(STAFF),
    ("GET", "/api/v1/program/sessions/{session_id}"): Rule(STAFF),
    ("POST", "/api/v1/program/invitations/{invitation_id}/attendance"): Rule(STAFF),
    ("GET", "/api/v1/program/clients/{client_id}/attendance"): Rule(STAFF, audit_view=("client", "client_id")),
    # -- the audit trail (read only; there is no route that changes it)
    ("GET", "/api/v1/audit"): Rule(MANAGERS),
    ("GET", "/api/v1/audit.csv"): Rule(MANAGERS),
    # -- clients' answers and Twilio
    ("GET", "/r/{token}"): public("signed, expiring, single-use reply link"),
    ("POST", "/r/{token}"): public("signed, expiring, single-use reply link"),
    ("POST", "/r/{token}/stop"): public("signed reply link; stopping automated messages is always allowed"),
    ("POST", "/webhooks/twilio/sms"): public("X-Twilio-Signature checked"),
    ("POST", "/webhooks/twilio/voice/{outbox_id}"): public("X-Twilio-Signature checked"),
    ("POST", "/webhooks/twilio/voice/{outbox_id}/answer"): public("X-Twilio-Signature checked"),
    ("POST", "/webhooks/twilio/status"): public("X-Twilio-Signature checked"),
    # -- pages (service/web/): signed in with a page session (cookie); every POST checks a CSRF token
    ("GET", "/"): public("redirects to /today or to the sign-in page: no data"),
    ("GET", "/sign-in"): public("the sign-in form: no data"),
    ("POST", "/sign-in"): public("CSRF token; the API's own sign-in check and throttle"),
    ("POST", "/language"): public("CSRF token; sets the language cookie or the signed-in user's own preference"),
    ("POST", "/sign-out"): Rule(STAFF, **SIGNED_IN_ONLY),
    ("GET", "/today"): Rule(STAFF),
    ("GET", "/follow-ups/{follow_up_id}/outcome"): Rule(STAFF),
    ("POST", "/follow-ups/{follow_up_id}/outcome"): Rule(STAFF),
    ("POST", "/follow-ups/{follow_up_id}/reschedule"): Rule(STAFF),
    ("GET", "/clients/{client_id}"): Rule(STAFF, audit_view=("client", "client_id")),
    ("POST", "/placements/{placement_id}/separation"): Rule(STAFF),
    ("GET", "/placements/new"): Rule(STAFF),
    ("POST", "/placements/preview"): Rule(STAFF),
    ("POST", "/placements/new"): Rule(STAFF),
    ("GET", "/calendar"): Rule(STAFF),
    ("POST", "/calendar/token"): Rule(STAFF),
    ("POST", "/calendar/revoke"): Rule(STAFF),
    ("GET", "/calendar/{token}.ics"): public("secret, revocable feed token (only its hash is stored)"),
    # the manager dashboard (service/web/dashboard.py): admins may pick any office (?office=)
    ("GET", "/manager"): Rule(MANAGERS, admin_any_office=True),
    ("GET", "/manager/{table}.csv"): Rule(MANAGERS, admin_any_office=True),
}


def route_template(request: Request) -> str | None:
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


def rule_for(method: str, path: str) -> Rule | None:
    method = "GET" if method == "HEAD" else method
    return POLICY.get((method, path))


def enforce(request: Request, user: StaffUser) -> Rule:
    """Refuse the call unless the table lets this user's role make it. Returns the rule."""
    path = route_template(request)
    rule = rule_for(request.method, path) if path else None
    if rule is None:
        log.error("route %s %s has no entry in service/policy.py: refused", request.method, path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this route has no access policy")
    if rule.roles is not None and user.role not in rule.roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="your role may not do this")
    if user.must_change_password and not rule.allowed_before_password_change:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="change your password first (POST /api/v1/auth/password)")
    return rule


_WRITE = {"post", "put", "patch", "delete"}


def document_responses(app) -> None:
    """Add the answers the policy itself gives (401, 403, 404 outside the office; 409 and 422 on
    writes) to every signed-in operation of the OpenAPI schema, so clients and schemathesis see
    every status a route can return without each decorator repeating them."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                rule = rule_for(method.upper(), path)
                if not isinstance(op, dict) or rule is None or rule.public:
                    continue
                responses = op.setdefault("responses", {})
                responses.setdefault("401", {"description": "not signed in, or the session has ended"})
                responses.setdefault("403", {"description": "your role may not do this, or a password change is due"})
                names_a_record = any(str(p.get("name", "")).endswith("_id") for p in op.get("parameters", []))
                if "{" in path or names_a_record:
                    responses.setdefault("404", {"description": "no such record in your office"})
                if method in _WRITE:
                    responses.setdefault("409", {"description": "conflicts with an existing record"})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
