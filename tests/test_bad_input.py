"""Bad input on the API: always a 4xx that names the field, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.security import TokenSigner
from tests.helpers import Api

TOO_BIG = [2**31, 2**63, 10**30]


@pytest.fixture
def api(app, world) -> Iterator[Api]:
    """Like the shared ``api`` fixture, but a server error comes back as a 500 response
    instead of being raised in the test, so "never a 500" is checked on the status code."""
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Api(http, world)


def field_error(r, field: str, status: int = 422, case: object = "") -> dict:
    """The response is ``status`` and one entry of ``detail`` is about ``field``."""
    where = f"{r.request.method} {r.request.url} {case!r}"
    assert r.status_code != 500, f"{where}: {r.text}"
    assert r.status_code == status, f"{where}: {r.status_code}: {r.text}"
    detail = r.json()["detail"]
    assert isinstance(detail, list), f"{where}: {detail}"
    hits = [d for d in detail if d["loc"] and d["loc"][-1] == field]
    assert hits, f"{where}: no error on {field!r}: {detail}"
    assert all(h["msg"] for h in hits), where
    return hits[0]


def client_body(**fields) -> dict:
    return {"name": "山田 太郎", "phone": "090-1234-5678", "category": "public_assistance"} | fields


def placement_body(api: Api, **fields) -> dict:
    client = api.client()
    employer = api.employer()
    return {
        "client_id": client["id"],
        "employer_id": employer["id"],
        "job_title": "清掃スタッフ",
        "employment_type": "general",
        "start_date": "2026-04-01",
    } | fields


def client_count(api: Api, who: str = "a.worker") -> int:
    return api.ok(api.get(who, "/api/v1/clients"))["total"]


# ------------------------------------------------------------------------------ clients


CLIENT_CASES = [
    ("phone", "123"),
    ("phone", "abc"),
    ("phone", "090-1234-5678-" + "9" * 30),
    ("phone", "+1 555"),
    ("email", "not-an-email"),
    ("email", "taro@"),
    ("email", "@example.jp"),
    ("category", "unknown"),
    ("category", None),
    ("language", "fr"),
    ("name", ""),
    ("name", "   "),
    ("name", "x" * 201),
    ("name", None),
    ("name", "山田\x00太郎"),  # PostgreSQL cannot store NUL
    ("kana", "ヤマダ\x07"),
    ("consent_family", "perhaps"),
]


def test_client_create_refuses_bad_fields(api):
    for field, value in CLIENT_CASES:
        r = api.post("a.worker", "/api/v1/clients", client_body(**{field: value}))
        field_error(r, field, case=value)
    assert client_count(api) == 0


def test_client_create_refuses_a_missing_field(api):
    body = client_body()
    del body["category"]
    field_error(api.post("a.worker", "/api/v1/clients", body), "category")


def test_client_create_refuses_unknown_fields(api):
    # Mass assignment: a worker of office A must not file a client under office B.
    for extra in ("office_id", "id", "created_by", "created_at"):
        value = api.world.office_b if extra != "created_at" else "2020-01-01T00:00:00Z"
        r = api.post("a.worker", "/api/v1/clients", client_body(**{extra: value}))
        field_error(r, extra)
    assert client_count(api, "a.worker") == 0
    assert client_count(api, "b.worker") == 0


def test_client_update_refuses_bad_fields_and_changes_nothing(api):
    c = api.client()
    url = f"/api/v1/clients/{c['id']}"
    field_error(api.patch("a.worker", url, {"office_id": api.world.office_b}), "office_id")
    field_error(api.patch("a.worker", url, {"name": None}), "name")
    field_error(api.patch("a.worker", url, {"phone": "123"}), "phone")
    field_error(api.patch("a.worker", url, {"category": "nope"}), "category")
    assert api.ok(api.get("a.worker", url)) == c
    assert api.get("b.worker", url).status_code == 404


PHONES = [
    ("０９０－１２３４－５６７８", "+819012345678"),
    ("090-1234-5678", "+819012345678"),
    ("+81 90 1234 5678", "+819012345678"),
    ("(03) 1234-5678", "+81312345678"),
    ("０３（１２３４）５６７８", "+81312345678"),
    ("090ー1234ー5678", "+819012345678"),  # the long-vowel mark typed as a dash
]


def test_phone_numbers_as_people_type_them_are_stored_in_e164(api):
    for typed, stored in PHONES:
        c = api.client(phone=typed)
        assert c["phone"] == stored, typed
        assert api.ok(api.get("a.worker", f"/api/v1/clients/{c['id']}"))["phone"] == stored, typed
        e = api.employer(phone=typed)
        assert e["phone"] == stored, typed
        body = {"name": "山田 花子", "relationship": "母", "phone": typed}
        f = api.ok(api.post("a.worker", f"/api/v1/clients/{c['id']}/family-contacts", body), 201)
        assert f["phone"] == stored, typed


def test_family_contact_and_employer_refuse_bad_fields(api):
    c = api.client()
    url = f"/api/v1/clients/{c['id']}/family-contacts"
    field_error(api.post("a.worker", url, {"name": "母", "relationship": "", "phone": "090-1234-5678"}), "relationship")
    field_error(api.post("a.worker", url, {"name": "母", "relationship": "母", "phone": "12"}), "phone")
    field_error(api.post("a.worker", "/api/v1/employers", {"name": "", "phone": "0126-22-3333"}), "name")
    field_error(api.post("a.worker", "/api/v1/employers", {"name": "X", "email": "nope"}), "email")
    field_error(api.post("a.worker", "/api/v1/employers", {"name": "X", "office_id": 2}), "office_id")


# ------------------------------------------------------------------------------ placements


PLACEMENT_CASES = [
    ("weekly_hours", 0),
    ("weekly_hours", -5),
    ("weekly_hours", 200),
    ("weekly_hours", "many"),
    ("start_date", "2026-02-30"),
    ("start_date", "20260401"),
    ("start_date", "1999-12-31"),
    ("start_date", "9999-12-31"),  # the plan's dates would run past the calendar
    ("employment_type", "full-time"),
    ("job_title", ""),
    ("job_title", "清掃\x00"),
    ("client_id", "abc"),
    ("client_id", 2**31),
    ("client_id", 10**30),
    ("employer_id", -1),
    ("worker_id", 2**63),
    ("status", "separated"),
    ("office_id", 2),
]


def test_placement_create_refuses_bad_fields(api):
    good = placement_body(api)
    for field, value in PLACEMENT_CASES:
        r = api.post("a.worker", "/api/v1/placements", good | {field: value})
        field_error(r, field, case=value)
    assert api.ok(api.get("a.worker", "/api/v1/placements"))["total"] == 0
    api.ok(api.post("a.worker", "/api/v1/placements", good), 201)  # the body itself was fine


def test_placement_create_refuses_an_unknown_plan(api):
    r = api.post("a.worker", "/api/v1/placements", placement_body(api, plan="no-such-plan"))
    err = field_error(r, "plan")
    assert "no-such-plan" in err["msg"]


def test_placement_create_refuses_records_of_another_office_without_leaking_them(api):
    good = placement_body(api)
    b_client = api.client("b.worker", name="Other Person")
    b_employer = api.employer("b.worker", name="Other Employer")
    b_worker = api.world.users["b.worker"]
    cases = [
        ("worker_id", {"worker_id": b_worker}, "a.manager"),
        ("worker_id", {"worker_id": b_worker}, "a.worker"),
        ("client_id", {"client_id": b_client["id"]}, "a.worker"),
        ("employer_id", {"employer_id": b_employer["id"]}, "a.worker"),
    ]
    for field, change, who in cases:
        r = api.post(who, "/api/v1/placements", good | change)
        field_error(r, field, case=who)
        for secret in ("Office B", "Worker B", "b.example.jp", "Other Person", "Other Employer"):
            assert secret not in r.text
    # a record of another office reads the same as one that does not exist
    missing = api.post("a.worker", "/api/v1/placements", good | {"worker_id": 999_999})
    other = api.post("a.worker", "/api/v1/placements", good | {"worker_id": b_worker})
    assert missing.json() == other.json()
    assert api.ok(api.get("a.worker", "/api/v1/placements"))["total"] == 0
    assert api.ok(api.get("b.worker", "/api/v1/placements"))["total"] == 0


def test_placement_update_and_separation_refuse_bad_fields(api):
    p = api.placement(start="2026-04-01")
    url = f"/api/v1/placements/{p['id']}"
    field_error(api.patch("a.worker", url, {"weekly_hours": 0}), "weekly_hours")
    field_error(api.patch("a.worker", url, {"start_date": "2026-04-31"}), "start_date")
    field_error(api.patch("a.worker", url, {"worker_id": api.world.users["b.worker"]}), "worker_id")
    field_error(api.patch("a.worker", url, {"worker_id": 2**40}), "worker_id")
    field_error(api.patch("a.worker", url, {"plan": "no-such-plan"}), "plan")
    field_error(api.patch("a.worker", url, {"status": "completed"}), "status")
    sep = f"{url}/separation"
    field_error(api.post("a.worker", sep, {"date": "2026-04-10", "reason": "bored"}), "reason")
    field_error(api.post("a.worker", sep, {"date": "2026-03-01", "reason": "voluntary"}), "date")
    field_error(api.post("a.worker", sep, {"date": "2026-13-01", "reason": "voluntary"}), "date")
    assert api.ok(api.get("a.worker", url)) == p


# ------------------------------------------------------------------------------ outcomes


def _pending_follow_up(api: Api) -> dict:
    p = api.placement(start="2026-04-01")
    return next(f for f in api.follow_ups("a.worker", p["id"]) if f["status"] == "pending" and not f["automated"])


OUTCOME_CASES = [
    ("wellbeing", {"reached": True, "wellbeing": 0}),
    ("wellbeing", {"reached": True, "wellbeing": 6}),
    ("wellbeing", {"reached": True, "wellbeing": "fine"}),
    ("risk_signals", {"reached": True, "risk_signals": ["not-a-signal"]}),
    ("risk_signals", {"reached": True, "risk_signals": "absence"}),
    ("still_employed", {"reached": True, "still_employed": "maybe"}),
    ("reached", {"wellbeing": 3}),
    ("placement_id", {"reached": True, "placement_id": 1}),
]


def test_outcome_refuses_bad_fields_and_records_nothing(api):
    fu = _pending_follow_up(api)
    for field, body in OUTCOME_CASES:
        r = api.post("a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", body)
        assert r.status_code == 422, f"{body}: {r.status_code} {r.text}"
        locs = [d["loc"] for d in r.json()["detail"]]
        assert any(field in loc for loc in locs), locs  # risk_signals: ["body", "risk_signals", 0]
    after = api.ok(api.get("a.worker", f"/api/v1/follow-ups/{fu['id']}"))
    assert after["status"] == "pending"
    # the same follow-up still takes a good outcome
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{fu['id']}/outcome", {"reached": True, "wellbeing": 5}), 201)


# ------------------------------------------------------------------------------ ids, paging


def test_non_integer_path_ids_are_422(api):
    for url, param in (
        ("/api/v1/clients/abc", "client_id"),
        ("/api/v1/placements/1.5", "placement_id"),
        ("/api/v1/employers/one", "employer_id"),
        ("/api/v1/follow-ups/%20", "follow_up_id"),
        ("/api/v1/users/１", "user_id"),
    ):
        err = field_error(api.get("a.worker", url), param)
        assert err["loc"][0] == "path", url


GET_BY_ID = [
    "/api/v1/clients/{}",
    "/api/v1/clients/{}/family-contacts",
    "/api/v1/employers/{}",
    "/api/v1/placements/{}",
    "/api/v1/placements/{}/follow-ups",
    "/api/v1/follow-ups/{}",
    "/api/v1/users/{}",
    "/api/v1/offices/{}",
]


def test_huge_path_ids_are_not_found_not_a_server_error(api):
    for number in TOO_BIG:
        for template in GET_BY_ID:
            r = api.get("a.admin", template.format(number))
            assert r.status_code in (404, 422), f"{r.request.url}: {r.status_code}: {r.text}"


def test_huge_ids_in_writes_are_not_a_server_error(api):
    for number in TOO_BIG:
        cases = [
            api.post("a.worker", f"/api/v1/follow-ups/{number}/outcome", {"reached": True}),
            api.post(
                "a.worker", f"/api/v1/placements/{number}/separation", {"date": "2026-04-10", "reason": "voluntary"}
            ),
            api.patch("a.worker", f"/api/v1/placements/{number}", {"job_title": "x"}),
            api.patch("a.worker", f"/api/v1/clients/{number}", {"name": "x"}),
            api.post("a.worker", f"/api/v1/clients/{number}/family-contacts", {"name": "x", "relationship": "母"}),
        ]
        for r in cases:
            assert r.status_code in (404, 422), f"{r.request.url}: {r.status_code}: {r.text}"
        body = {
            "email": "n@a.example.jp",
            "name": "N",
            "role": "worker",
            "office_id": number,
            "password": "long enough pw",
        }
        field_error(api.post("a.admin", "/api/v1/users", body), "office_id", case=number)


def test_huge_ids_in_the_query_are_refused_on_that_parameter(api):
    cases = [
        ("a.worker", "/api/v1/placements?client_id={}", "client_id"),
        ("a.worker", "/api/v1/placements?worker_id={}", "worker_id"),
        ("a.manager", "/api/v1/queue?worker_id={}", "worker_id"),
    ]
    for who, url, param in cases:
        for number in TOO_BIG:
            r = api.get(who, url.format(number))
            if number < 2**63 and r.status_code in (200, 404):
                continue  # fits SQLite's integers: simply nothing there (PostgreSQL's are 32-bit)
            field_error(r, param, case=number)


LISTS = [
    ("a.worker", "/api/v1/clients"),
    ("a.worker", "/api/v1/employers"),
    ("a.worker", "/api/v1/placements"),
    ("a.manager", "/api/v1/users"),
    ("a.admin", "/api/v1/offices"),
]


PAGING = [
    ("limit=0", "limit"),
    ("limit=100000", "limit"),
    ("limit=-1", "limit"),
    ("limit=ten", "limit"),
    ("offset=-1", "offset"),
    ("offset=99999999999", "offset"),
]


def test_bad_paging_is_422_on_the_parameter(api):
    for who, url in LISTS:
        assert api.get(who, f"{url}?limit=500&offset=0").status_code == 200, url
        for query, field in PAGING:
            err = field_error(api.get(who, f"{url}?{query}"), field)
            assert err["loc"][0] == "query"


def test_other_bad_query_values_are_422(api):
    field_error(api.get("a.worker", "/api/v1/placements?status=sleeping"), "status")
    field_error(api.get("a.worker", "/api/v1/queue?date=2026-02-30"), "date")
    field_error(api.get("a.worker", "/api/v1/clients?q=" + "x" * 101), "q")


# ------------------------------------------------------------------------------ bodies, tokens


def test_malformed_json_is_422(api):
    for content in (b"{not json", b'{"name": "x",}', b"", b"[1, 2", '{"name": "山田"'.encode(), b"\xff\xfe"):
        r = api.http.post(
            "/api/v1/clients",
            content=content,
            headers=api.headers("a.worker") | {"Content-Type": "application/json"},
        )
        assert r.status_code == 422, f"{content!r}: {r.status_code} {r.text}"
        assert r.json()["detail"][0]["loc"][0] == "body"
    assert client_count(api) == 0


def test_wrong_content_type_is_refused(api):
    for content_type, content in (
        ("text/plain", b'{"name": "x", "category": "needy_person"}'),
        ("application/x-www-form-urlencoded", b"name=x&category=needy_person"),
        ("application/xml", b"<client><name>x</name></client>"),
    ):
        headers = api.headers("a.worker") | {"Content-Type": content_type}
        r = api.http.post("/api/v1/clients", content=content, headers=headers)
        assert r.status_code in (415, 422), f"{content_type}: {r.status_code} {r.text}"
    assert client_count(api) == 0


def test_a_json_body_of_the_wrong_shape_is_422(api):
    for body in ([client_body()], "a string", 42, None):
        r = api.post("a.worker", "/api/v1/clients", body)
        assert r.status_code == 422, r.text


def test_missing_or_garbage_token_is_401(api):
    for headers in (
        {},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "garbage"},
    ):
        for method, url in (("GET", "/api/v1/clients"), ("POST", "/api/v1/clients"), ("GET", "/api/v1/me")):
            r = api.http.request(method, url, headers=headers, json=client_body() if method == "POST" else None)
            assert r.status_code == 401, f"{headers} {method} {url}: {r.status_code} {r.text}"
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert client_count(api) == 0


def test_a_token_signed_with_another_key_is_401(api):
    forged = TokenSigner("another-secret-key-of-more-than-32-chars", 3600).issue(api.world.users["a.admin"])
    r = api.http.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


def test_sign_in_with_bad_form_values(api):
    assert api.http.post("/api/v1/auth/token", data={"username": "worker@a.example.jp"}).status_code == 422
    assert api.http.post("/api/v1/auth/token", json={"username": "x", "password": "y"}).status_code == 422
    r = api.http.post("/api/v1/auth/token", data={"username": "nobody\x00@a.example.jp", "password": "whatever"})
    assert r.status_code in (401, 422), r.text


# ------------------------------------------------------------------------------ offices, users


def test_office_create_refuses_unknown_time_zones(api):
    for tz in ("Mars/Olympus", "America", "Asia/Tokyo ", "../../etc/passwd", "", "x" * 300, 9):
        r = api.post("a.admin", "/api/v1/offices", {"name": "Office M", "timezone": tz})
        field_error(r, "timezone", case=tz)
    assert api.ok(api.get("a.admin", "/api/v1/offices"))["total"] == 2


OFFICE_CASES = [
    ("name", ""),
    ("name", "x" * 201),
    ("name", "Office\x00"),
    ("default_plan", "no-such-plan"),
    ("closed_days", ["13-45"]),
    ("closed_days", "12-31"),
    ("phone", "123"),
    ("id", 99),
]


def test_office_create_refuses_bad_fields(api):
    for field, value in OFFICE_CASES:
        body = {"name": "Office M", "timezone": "Asia/Tokyo"} | {field: value}
        field_error(api.post("a.admin", "/api/v1/offices", body), field, case=value)
    assert api.ok(api.get("a.admin", "/api/v1/offices"))["total"] == 2


def test_office_create_accepts_a_good_time_zone(api):
    r = api.post(
        "a.admin", "/api/v1/offices", {"name": "Office P", "timezone": "Europe/Paris", "phone": "(03) 1234-5678"}
    )
    office = api.ok(r, 201)
    assert (office["timezone"], office["phone"]) == ("Europe/Paris", "+81312345678")


USER_CASES = [
    ("email", "not-an-email"),
    ("password", "short"),
    ("role", "superuser"),
    ("office_id", "A"),
    ("office_id", 999_999),
    ("language", "de"),
    ("is_active", False),
    ("name", "New\x00"),
]


def test_user_create_refuses_bad_fields(api):
    good = {"email": "new@a.example.jp", "name": "New", "role": "worker", "office_id": api.world.office_a,
            "password": "long enough pw"}  # fmt: skip
    for field, value in USER_CASES:
        field_error(api.post("a.admin", "/api/v1/users", good | {field: value}), field, case=value)
    api.ok(api.post("a.admin", "/api/v1/users", good), 201)  # the good body is accepted


def test_the_password_is_not_echoed_in_errors(api):
    body = {"email": "new@a.example.jp", "name": "New", "role": "worker", "office_id": api.world.office_a,
            "password": "s3cr3t"}  # fmt: skip
    r = api.post("a.admin", "/api/v1/users", body)
    field_error(r, "password")
    assert "s3cr3t" not in r.text
