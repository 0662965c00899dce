"""Signing in: OAuth2 password flow, bearer tokens, roles."""

from service.security import TokenSigner
from tests.helpers import PASSWORD


def token(http, username, password):
    return http.post("/api/v1/auth/token", data={"username": username, "password": password})


def test_sign_in_and_me(api):
    r = token(api.http, "Worker@A.example.jp", PASSWORD)  # e-mail is case-insensitive
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 480 * 60
    me = api.http.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == "worker@a.example.jp"
    assert "password_hash" not in me.json() and "password" not in me.text


def test_wrong_password_and_unknown_account_look_the_same(api):
    wrong = token(api.http, "worker@a.example.jp", "not the password")
    unknown = token(api.http, "nobody@a.example.jp", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_requests_without_a_valid_token_are_401(api):
    assert api.http.get("/api/v1/clients").status_code == 401
    bad = api.http.get("/api/v1/clients", headers={"Authorization": "Bearer forged.token.value"})
    assert bad.status_code == 401


def test_token_from_another_secret_is_refused(api):
    forged = TokenSigner("some-other-secret-of-enough-length-xx", 3600).issue(api.world.users["a.admin"])
    r = api.http.get("/api/v1/clients", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


def test_tokens_expire():
    signer = TokenSigner("secret-secret-secret-secret-secret", ttl_seconds=60)
    tok = signer.issue(7)
    assert signer.read(tok) == 7
    assert TokenSigner("secret-secret-secret-secret-secret", ttl_seconds=-1).read(tok) is None


def test_deactivated_user_is_refused(api, factory):
    from service.accounts.models import StaffUser
    from service.db import session_scope

    headers = api.headers("a.worker")
    with session_scope(factory) as s:
        user = s.get(StaffUser, api.world.users["a.worker"])
        user.is_active = False
    assert api.http.get("/api/v1/clients", headers=headers).status_code == 401
    assert token(api.http, "worker@a.example.jp", PASSWORD).status_code == 401


def test_only_admins_create_offices_and_users(api):
    office = {"name": "Office C", "timezone": "Asia/Tokyo"}
    assert api.post("a.manager", "/api/v1/offices", office).status_code == 403
    assert api.post("a.worker", "/api/v1/offices", office).status_code == 403
    created = api.ok(api.post("a.admin", "/api/v1/offices", office), 201)
    assert created["closed_days"] == ["12-29", "12-30", "12-31", "01-01", "01-02", "01-03"]
    user = {"email": "new@c.example.jp", "name": "New", "role": "worker",
            "office_id": created["id"], "password": "long enough password"}  # fmt: skip
    assert api.post("a.manager", "/api/v1/users", user).status_code == 403
    made = api.ok(api.post("a.admin", "/api/v1/users", user), 201)
    assert made["office_id"] == created["id"] and "password_hash" not in made
    assert api.post("a.admin", "/api/v1/users", user).status_code == 409
    assert token(api.http, "new@c.example.jp", "long enough password").status_code == 200


def test_an_office_names_whose_public_holidays_it_keeps(api):
    ny = {"name": "Office NY", "timezone": "America/New_York", "holiday_country": "US", "holiday_subdivision": "NY"}
    made = api.ok(api.post("a.admin", "/api/v1/offices", ny), 201)
    assert (made["holiday_country"], made["holiday_subdivision"]) == ("US", "NY")
    assert api.ok(api.post("a.admin", "/api/v1/offices", {"name": "Office JP"}), 201)["holiday_country"] == "JP"
    for body, field in [
        ({"holiday_country": "XX"}, "holiday_country"),  # no such country
        ({"holiday_country": "us"}, "holiday_country"),  # ISO codes are upper case
        ({"holiday_country": "US", "holiday_subdivision": "ZZ"}, "holiday_subdivision"),
    ]:
        r = api.post("a.admin", "/api/v1/offices", {"name": "Office X", **body})
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == field for e in r.json()["detail"]), r.json()


def test_offices_visible_to_non_admins_are_their_own(api):
    page = api.ok(api.get("a.worker", "/api/v1/offices"))
    assert [o["id"] for o in page["items"]] == [api.world.office_a]
    assert api.get("a.worker", f"/api/v1/offices/{api.world.office_b}").status_code == 404
    assert api.ok(api.get("a.admin", "/api/v1/offices"))["total"] == 2


def test_workers_may_not_list_staff(api):
    assert api.get("a.worker", "/api/v1/users").status_code == 403
    assert api.ok(api.get("a.manager", "/api/v1/users"))["total"] == 4
