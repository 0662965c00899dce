"""Sign-in hardening: throttling kept in the database, tokens that really end, password change,
and an admin reset that forces a change."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import PASSWORD

TOKEN_URL = "/api/v1/auth/token"


def sign_in(http, username, password):
    return http.post(TOKEN_URL, data={"username": username, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_ten_failures_per_account_throttle_it_with_retry_after(api, clock):
    for _ in range(10):
        assert sign_in(api.http, "worker@a.example.jp", "wrong password").status_code == 401
    r = sign_in(api.http, "worker@a.example.jp", PASSWORD)  # even the right password waits
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= 15 * 60
    # The window moves on: free again.
    clock.set(clock.now() + timedelta(minutes=15, seconds=1))
    assert sign_in(api.http, "worker@a.example.jp", PASSWORD).status_code == 200


def test_unknown_and_known_accounts_are_throttled_alike(api, settings, engine, clock):
    # Two "addresses": separate clients so the per-address limit is not what trips.
    known, unknown = [], []
    for i in range(11):
        known.append(sign_in(api.http, "manager@a.example.jp", f"wrong {i}"))
    other = TestClient(create_app(settings, engine=engine, clock=clock), client=("10.0.0.9", 5000))
    with other:
        for i in range(11):
            unknown.append(sign_in(other, "nobody@a.example.jp", f"wrong {i}"))
    assert [r.status_code for r in known] == [401] * 10 + [429]
    assert [r.status_code for r in unknown] == [401] * 10 + [429]
    assert known[0].json() == unknown[0].json() and known[-1].json() == unknown[-1].json()


def test_ten_failures_from_one_address_throttle_every_account_from_it(api, settings, engine, clock):
    for i in range(10):
        assert sign_in(api.http, f"nobody{i}@a.example.jp", "wrong password").status_code == 401
    assert sign_in(api.http, "worker2@a.example.jp", PASSWORD).status_code == 429
    # From elsewhere the same account signs in: the account itself has no failures.
    with TestClient(create_app(settings, engine=engine, clock=clock), client=("10.0.0.7", 5000)) as other:
        assert sign_in(other, "worker2@a.example.jp", PASSWORD).status_code == 200


def test_the_throttle_holds_across_processes(api, settings, engine, clock):
    """Failures are rows in the database: a second app (another process's view) sees them."""
    for _ in range(10):
        sign_in(api.http, "admin@a.example.jp", "wrong password")
    with TestClient(create_app(settings, engine=engine, clock=clock)) as second:
        assert sign_in(second, "admin@a.example.jp", PASSWORD).status_code == 429


def test_a_success_clears_the_accounts_failures(api):
    for _ in range(9):
        sign_in(api.http, "worker@a.example.jp", "wrong password")
    assert sign_in(api.http, "worker@a.example.jp", PASSWORD).status_code == 200
    sign_in(api.http, "worker@a.example.jp", "wrong password")  # 1 since the success, not 10
    assert sign_in(api.http, "worker@a.example.jp", PASSWORD).status_code == 200


def test_sign_out_ends_the_token(api):
    headers = api.headers("a.worker")
    assert api.http.get("/api/v1/me", headers=headers).status_code == 200
    assert api.http.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert api.http.get("/api/v1/me", headers=headers).status_code == 401
    assert api.http.post("/api/v1/auth/logout", headers=headers).status_code == 401
    fresh = sign_in(api.http, "worker@a.example.jp", PASSWORD).json()["access_token"]
    assert api.http.get("/api/v1/me", headers=bearer(fresh)).status_code == 200


def test_expired_tokens_are_refused(settings, engine, clock, world):
    short = settings.model_copy(update={"token_ttl_minutes": 5})
    with TestClient(create_app(short, engine=engine, clock=clock)) as http:
        body = sign_in(http, "worker@a.example.jp", PASSWORD).json()
        assert body["expires_in"] == 300
        signer = http.app.state.signer
        assert signer.read_claims(body["access_token"]) is not None
        expired = type(signer)(signer.secret_key, -1)
        assert expired.read_claims(body["access_token"]) is None


def test_password_change(api):
    headers = api.headers("a.worker")
    url = "/api/v1/auth/password"
    wrong_old = api.http.post(url, headers=headers, json={"old_password": "nope", "new_password": "another passphrase"})
    assert wrong_old.status_code == 422 and wrong_old.json()["detail"][0]["loc"] == ["body", "old_password"]
    short = api.http.post(url, headers=headers, json={"old_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422
    mine = api.http.post(url, headers=headers, json={"old_password": PASSWORD, "new_password": "worker@a.example.jp!"})
    assert mine.status_code == 422 and "e-mail" in mine.text
    ok = api.http.post(url, headers=headers, json={"old_password": PASSWORD, "new_password": "another passphrase"})
    assert ok.status_code == 200, ok.text
    assert api.http.get("/api/v1/me", headers=headers).status_code == 401  # the old token ended
    assert api.http.get("/api/v1/me", headers=bearer(ok.json()["access_token"])).status_code == 200
    assert sign_in(api.http, "worker@a.example.jp", PASSWORD).status_code == 401
    assert sign_in(api.http, "worker@a.example.jp", "another passphrase").status_code == 200


def test_admin_reset_forces_a_change_at_next_sign_in(api):
    target = api.world.users["a.worker"]
    old_headers = api.headers("a.worker")
    url = f"/api/v1/users/{target}/reset-password"
    assert api.post("a.manager", url, {"new_password": "temporary pass 123"}).status_code == 403
    assert api.post("b.admin", url, {"new_password": "temporary pass 123"}).status_code == 404
    assert api.post("a.admin", url, {"new_password": "short"}).status_code == 422
    assert api.ok(api.post("a.admin", url, {"new_password": "temporary pass 123"}))["id"] == target
    assert api.http.get("/api/v1/me", headers=old_headers).status_code == 401  # the reset ends tokens
    temp = sign_in(api.http, "worker@a.example.jp", "temporary pass 123").json()["access_token"]
    blocked = api.http.get("/api/v1/clients", headers=bearer(temp))
    assert blocked.status_code == 403 and "change your password" in blocked.text
    assert api.http.post("/api/v1/clients", headers=bearer(temp), json={"name": "x"}).status_code == 403
    r = api.http.post(
        "/api/v1/auth/password", headers=bearer(temp),
        json={"old_password": "temporary pass 123", "new_password": "my own passphrase"},
    )  # fmt: skip
    assert r.status_code == 200
    assert api.http.get("/api/v1/clients", headers=bearer(r.json()["access_token"])).status_code == 200
