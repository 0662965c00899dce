"""Security headers on every answer, request ids, and settings that refuse unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import DEV_SECRET, Settings


def test_security_headers_on_api_answers(api):
    r = api.get("a.worker", "/api/v1/me")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_reply_link_pages_never_send_a_referrer(api):
    r = api.http.get("/r/not-a-real-token")
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_errors_carry_the_headers_too(api):
    r = api.http.get("/api/v1/clients")  # 401
    assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_request_id_is_echoed_or_made(api):
    given = api.http.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = api.http.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    # Something that is not a plain id (a header injection, a name) is replaced, not echoed.
    odd = api.http.get("/healthz", headers={"X-Request-ID": "taro yamada <script>"})
    assert len(odd.headers["x-request-id"]) == 32


SAFE = "x" * 40


@pytest.mark.parametrize("secret", ["", DEV_SECRET, "short-secret"])
def test_production_refuses_a_default_empty_or_short_secret(secret):
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production", secret_key=secret, public_url="https://teichaku.example.jp")


def test_production_refuses_an_http_public_url():
    with pytest.raises(ValidationError, match="https"):
        Settings(environment="production", secret_key=SAFE, public_url="http://teichaku.example.jp")


def test_production_accepts_safe_values_and_development_the_defaults():
    assert Settings(environment="production", secret_key=SAFE, public_url="https://t.example.jp").secret_key == SAFE
    assert Settings(environment="development").secret_key == DEV_SECRET
