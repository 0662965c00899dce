"""The API fuzzed against its own OpenAPI schema: no server errors, only documented status codes,
and every answer matching its documented schema. Signed in as a worker of office A, with records
in both offices. Bounded (a few examples per operation) so it runs in a minute or two; set
SCHEMATHESIS_EXAMPLES for a longer run.

Every operation is run in one test and all failures are reported together (schemathesis's own
pytest loader does not yet work with this pytest; the strategies and checks are its own).
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# Signing out would end the worker's token for every example after it (it is tested in tests/accounts).
SKIP = {("POST", "/api/v1/auth/logout")}


def test_api_conforms_to_its_schema(api, http):
    for who in ("a.worker", "b.worker"):
        p = api.placement(who, start="2026-04-13")
        api.client(who, name="Second client", kana="セカンド")
        api.follow_ups(who, p["id"])
    headers = api.headers("a.worker")
    schema = schemathesis.openapi.from_asgi("/openapi.json", http.app)
    failures: list[str] = []
    statuses: list[int] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        ran += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case):
            response = case.call(headers=headers)
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every failing operation is reported
            failures.append(f"{operation.method.upper()} {operation.path}:\n{str(exc)[:1500]}")
    assert ran > 30, f"only {ran} operations in the schema?"
    assert not failures, "\n\n".join(failures)
    # It really called the API, signed in: some answers succeeded and some refused bad input.
    assert sum(200 <= s < 300 for s in statuses) > 20 and 422 in statuses and 404 in statuses, statuses
