"""The access matrix, generated from the application's own route list: a route that is added
without an entry in ``service/policy.py`` fails here, by name.

Every route is called as every role of office A (worker, manager, admin) against records of
office B, and the answer is compared with the policy table: a role the table does not list gets
403; a record outside the caller's office is 404 (never 200, never a 403 that would confirm it
exists); a list never carries office B's rows. Writes that try to set fields the caller may not
(office, ids, role, opt-out, someone else's consent) are refused or ignored, and no response
schema carries a password hash or a token.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from service import policy
from tests import helpers

ROLES = ("a.worker", "a.manager", "a.admin")
# Text that only office B's records contain; no answer to office A may carry it.
B_MARKERS = ("ZZB-MARKER", "@b.example.jp", "Worker B", "Manager B")
SAMPLE_CLIENT = {"name": "Matrix Client", "kana": "マトリクス", "phone": "090-1111-2222", "category": "needy_person",
                 "consent_automated": True, "consent_family": False, "consent_employer": True}  # fmt: skip


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path template) for every route the application serves, HEAD folded into GET."""
    out = set()
    for rc in iter_route_contexts(app.routes):
        path = getattr(rc, "path_format", None) or getattr(rc, "path", None)
        for method in getattr(rc, "methods", None) or ():
            if method != "HEAD" and path:
                out.add((method, path))
    return sorted(out, key=lambda mp: (mp[1], mp[0]))


@pytest.fixture
def b(api, factory) -> dict[str, Any]:
    """Records of office B, one of each kind a path can name, with marker text in them."""
    client = api.client("b.worker", name="ZZB-MARKER 乙野", kana="オツノ", email="zzb@b.example.jp")
    employer = api.employer("b.worker", name="ZZB-MARKER 工業")
    placement = api.placement("b.worker", start="2026-04-13", client=client, employer=employer)
    fus = api.follow_ups("b.worker", placement["id"])
    phone_fu = next(f for f in fus if f["party"] == "client" and f["channel"] == "phone")
    api.ok(api.post("b.worker", f"/api/v1/follow-ups/{phone_fu['id']}/outcome",
                    {"reached": True, "still_employed": "no", "wellbeing": 1,
                     "risk_signals": ["health", "money", "wants_to_quit", "isolation"]}), 201)  # fmt: skip
    flags = (
        api.ok(api.get("b.worker", "/api/v1/crisis-flags", params={"status": "open"}))["items"]
        or api.ok(api.get("b.worker", "/api/v1/crisis-flags"))["items"]
    )
    assert flags, "could not make a crisis flag in office B for the matrix"
    pending = next(f for f in fus if f["status"] == "pending" and f["id"] != phone_fu["id"])
    session_id, invitation_id = _program_records(factory, api.world.office_b, client["id"], placement["id"])
    return {
        "client_id": client["id"],
        "employer_id": employer["id"],
        "placement_id": placement["id"],
        "follow_up_id": pending["id"],
        "flag_id": flags[0]["id"],
        "session_id": session_id,
        "invitation_id": invitation_id,
        "user_id": api.world.users["b.worker"],
        "office_id": api.world.office_b,
        # Public routes: a made-up reply-link token, an outbox message id (webhooks are signed).
        "token": "not-a-real-token",
        "outbox_id": 1,
        # Not a record: the name of a dashboard table (the office is the caller's own).
        "table": "retention-office",
    }


def _program_records(factory, office_id: int, client_id: int, placement_id: int) -> tuple[int, int]:
    """A post-employment program session of office B with one invitation (as the job writes them)."""
    from datetime import UTC, datetime

    from service.db import session_scope
    from service.outcomes.program import Delivery, ProgramInvitation, ProgramSession

    with session_scope(factory) as s:
        prog = ProgramSession(office_id=office_id, cycle="2026-05", group_no=1, place="room", capacity=3,
                              starts_at=datetime(2026, 5, 15, 14, tzinfo=UTC), duration_minutes=90)  # fmt: skip
        s.add(prog)
        s.flush()
        inv = ProgramInvitation(office_id=office_id, session_id=prog.id, client_id=client_id,
                                placement_id=placement_id, delivery=Delivery.not_sent)  # fmt: skip
        s.add(inv)
        s.flush()
        return prog.id, inv.id


_serial = itertools.count(1)


def sample_body(method: str, path: str, b: dict[str, Any], api) -> Any:
    """A body that is valid apart from whose records it names, so what is tested is the office
    check and not validation. Routes without one are allowed 422 as well as the expected answer."""
    n = next(_serial)
    bodies = {
        ("POST", "/api/v1/offices"): {"name": f"Matrix Office {n}"},
        ("POST", "/api/v1/users"): {"email": f"matrix{n}@a.example.jp", "name": "M", "role": "worker",
                                    "office_id": api.world.office_a, "password": "long enough password"},
        ("POST", "/api/v1/users/{user_id}/reset-password"): {"new_password": "temporary pass 123"},
        ("POST", "/api/v1/clients"): SAMPLE_CLIENT,
        ("PATCH", "/api/v1/clients/{client_id}"): {"consent_family": True},
        ("POST", "/api/v1/clients/{client_id}/family-contacts"): {"name": "家族", "relationship": "母"},
        ("POST", "/api/v1/employers"): {"name": "Matrix Employer"},
        ("POST", "/api/v1/placements"): {"client_id": b["client_id"], "employer_id": b["employer_id"],
                                         "job_title": "x", "employment_type": "general",
                                         "start_date": "2026-04-13", "plan": "standard-3m"},
        ("PATCH", "/api/v1/placements/{placement_id}"): {"start_date": "2026-04-14"},
        ("POST", "/api/v1/placements/{placement_id}/separation"): {"date": "2026-04-20", "reason": "other"},
        ("POST", "/api/v1/follow-ups/{follow_up_id}/outcome"): {"reached": True},
        ("POST", "/api/v1/follow-ups/{follow_up_id}/reschedule"): {"due_date": "2026-05-07", "reason": "matrix"},
        ("POST", "/api/v1/crisis-flags/{flag_id}/resolve"): {"note": "resolved"},
        ("POST", "/api/v1/program/invitations/{invitation_id}/attendance"): {"attendance": "excused"},
    }  # fmt: skip
    return bodies.get((method, path))


# Writes that name office B's records in their body (not their path): refused like a path would be.
BODY_NAMES_B = {("POST", "/api/v1/placements")}


NOT_RECORDS = {"table", "token", "outbox_id"}


def names_record(path: str) -> bool:
    """Whether the path names a record (of office B, in this test) rather than, say, a table."""
    return any(p.split(":")[0] not in NOT_RECORDS for p in re.findall(r"{([^}]+)}", path))


def fill(path: str, b: dict[str, Any]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1).split(":")[0]
        if name not in b:
            pytest.fail(f"{path}: no office-B record for path parameter {{{name}}}; add one to the `b` fixture")
        return str(b[name])

    return re.sub(r"{([^}]+)}", one, path)


def test_every_route_has_a_policy_entry(app):
    missing = [f"{m} {p}" for m, p in app_routes(app) if (m, p) not in policy.POLICY]
    assert not missing, "routes with no entry in service/policy.py POLICY:\n  " + "\n  ".join(missing)
    stale = [f"{m} {p}" for m, p in policy.POLICY if (m, p) not in set(app_routes(app))]
    assert not stale, "entries in service/policy.py for routes that do not exist:\n  " + "\n  ".join(stale)


def shown(codes: set[int]) -> str:
    plain = sorted(c for c in codes if not 200 <= c < 300)
    return " or ".join((["2xx"] if any(200 <= c < 300 for c in codes) else []) + [str(c) for c in plain])


def call(api, who: str | None, method: str, url: str, body: Any):
    headers = api.headers(who) if who else {}
    kw = {"json": body} if body is not None else {}
    return api.http.request(method, url, headers=headers, **kw)


def page_route(api, pages: dict, method: str, path: str, url: str, rule: policy.Rule) -> list[str]:
    """A page (service/web/): signed in through the pages' own sign-in, with a cookie. The pages
    provide ``tests.helpers.sign_in_page(http, email, password)`` for this."""
    sign_in_page = getattr(helpers, "sign_in_page", None)
    if sign_in_page is None:
        return [f"{method} {path}: a page route, but tests/helpers.py has no sign_in_page(http, email, password)"]
    from fastapi.testclient import TestClient

    out = []
    anonymous = TestClient(api.http.app, follow_redirects=False).request(method, url)
    if anonymous.status_code < 300:
        out.append(f"{method} {path} without signing in: {anonymous.status_code}")
    for who in ROLES:
        if who not in pages:
            pages[who] = TestClient(api.http.app, follow_redirects=False)
            role, office = who.split(".")[1], who.split(".")[0]
            sign_in_page(pages[who], f"{role}@{office}.example.jp", helpers.PASSWORD)
        r = pages[who].request(method, url)
        allowed = who.split(".")[1] in {str(x) for x in rule.roles}
        if not allowed:
            expected = {403}
        elif names_record(path) and rule.office_scoped and not (rule.admin_any_office and who == "a.admin"):
            expected = {404} if method == "GET" else {403, 404, 422}  # a form without its CSRF token: 403
        else:
            expected = set(range(200, 300)) if method == "GET" else set(range(200, 400)) | {403, 422}
        if r.status_code not in expected:
            out.append(f"{method} {path} as {who} (page): {r.status_code}, expected {shown(expected)}")
        elif r.status_code < 300 and not (rule.admin_any_office and who == "a.admin"):
            leaked = [m for m in B_MARKERS if m in r.text]
            if leaked:
                out.append(f"{method} {path} as {who} (page): carries office B's {leaked}")
    return out


def test_every_role_of_office_a_against_office_b(api, app, b):
    failures: list[str] = []
    pages: dict = {}
    # Sign-out and password changes last: they end every session the user holds, pages' too.
    for method, path in sorted(app_routes(app), key=lambda mp: mp[1].startswith("/api/v1/auth/")):
        rule = policy.POLICY.get((method, path))
        if rule is None:
            failures.append(f"{method} {path}: not in the policy table")
            continue
        url = fill(path, b)
        body = sample_body(method, path, b, api)
        if rule.public:
            r = call(api, None, method, url, body)
            if r.status_code >= 500 or (("{" in path or path.startswith("/webhooks/")) and r.status_code < 400):
                failures.append(f"{method} {path} (public, nothing valid sent): {r.status_code}")
            continue
        if not path.startswith("/api/"):
            failures += page_route(api, pages, method, path, url, rule)
            continue
        r = call(api, None, method, url, body)
        if r.status_code != 401:
            failures.append(f"{method} {path} without signing in: {r.status_code}, expected 401")
        for who in ROLES:
            role = who.split(".")[1]
            r = call(api, who, method, url, body)
            if path.startswith("/api/v1/auth/"):
                api._tokens.pop(who, None)  # signing out or a password change ends the token
            allowed = role in {str(x) for x in rule.roles}
            names_b = "{" in path or (method, path) in BODY_NAMES_B
            if not allowed:
                expected = {403}
            elif rule.admin_any_office and role == "admin":
                expected = set(range(200, 300)) | ({422} if body is None and method != "GET" else set())
            elif names_b and rule.office_scoped:
                expected = {404} | ({422} if body is None and method != "GET" else set())
                if (method, path) in BODY_NAMES_B:
                    expected |= {422}
            else:
                expected = set(range(200, 300)) | ({422} if body is None and method != "GET" else set())
            if r.status_code not in expected:
                failures.append(
                    f"{method} {path} as {who}: {r.status_code}, expected {shown(expected)}: {r.text[:200]}"
                )
                continue
            if r.status_code < 300 and not (rule.admin_any_office and role == "admin"):
                leaked = [m for m in B_MARKERS if m in r.text]
                if leaked:
                    failures.append(f"{method} {path} as {who}: the answer carries office B's {leaked}")
    assert not failures, "\n".join(failures)


FORBIDDEN_FIELDS = {
    "id": 987654,
    "office_id": None,  # office B's id, filled in below
    "role": "admin",
    "created_by": None,  # a user of office B
    "opted_out_at": "2026-04-01T00:00:00+09:00",
    "opted_out_via": "sms",
    "password_hash": "$argon2id$forged",
    "token_version": 99,
    "must_change_password": False,
    "recorded_by": None,
}


def test_fields_a_caller_may_not_set_are_refused_or_ignored(api, app, b):
    a = {"client_id": api.client()["id"], "employer_id": api.employer()["id"]}
    a["placement_id"] = api.placement(start="2026-04-13", client={"id": a["client_id"]},
                                      employer={"id": a["employer_id"]})["id"]  # fmt: skip
    a["follow_up_id"] = api.follow_ups("a.worker", a["placement_id"])[0]["id"]
    a["user_id"] = api.world.users["a.worker2"]
    problems = []
    for method, path in app_routes(app):
        if method not in ("POST", "PATCH", "PUT") or not path.startswith("/api/v1/"):
            continue
        body = sample_body(method, path, a | {"office_id": api.world.office_a}, api)
        if not isinstance(body, dict) or any(p not in a for p in re.findall(r"{([^}:]+)", path)):
            continue
        for field, value in FORBIDDEN_FIELDS.items():
            if value is None:
                value = api.world.office_b if field == "office_id" else api.world.users["b.worker"]
            if field in body:
                continue  # the route's own field (an admin creating a user names its office and role)
            r = api.http.request(method, fill(path, a), headers=api.headers("a.admin"), json=body | {field: value})
            if path.startswith("/api/v1/auth/"):
                api._tokens.pop("a.admin", None)
            if r.status_code < 300:
                got = r.json()
                if isinstance(got, dict) and field in got and got[field] == value:
                    problems.append(f"{method} {path}: {field}={value!r} was accepted")
                if isinstance(got, dict) and got.get("office_id") not in (None, api.world.office_a):
                    problems.append(f"{method} {path}: wrote into office {got.get('office_id')}")
            elif r.status_code != 422:
                problems.append(f"{method} {path} with {field}: {r.status_code} {r.text[:150]}")
    assert not problems, "\n".join(problems)


SECRETS = re.compile(r"password|hash|token|secret|signature", re.I)


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            out.add(ref.rsplit("/", 1)[-1])
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)


def test_no_response_schema_carries_a_password_hash_or_a_token(app):
    spec = app.openapi()
    schemas = spec.get("components", {}).get("schemas", {})
    seen: set[str] = set()
    todo: set[str] = set()
    for ops in spec["paths"].values():
        for op in ops.values():
            _refs(op.get("responses", {}), todo)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        _refs(schemas.get(name, {}), todo)
    fields = {
        (name, prop) for name in seen for prop in schemas.get(name, {}).get("properties", {}) if SECRETS.search(prop)
    }
    # The sign-in answer is the one place a token is handed out, on purpose.
    assert fields <= {("Token", "access_token"), ("Token", "token_type")}, fields
