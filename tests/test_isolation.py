"""Nobody sees another office's records: every lookup of them is a 404, lists leave them out."""

import pytest


@pytest.fixture
def a_records(api):
    p = api.placement("a.worker", start="2026-04-13")
    fu = api.follow_ups("a.worker", p["id"])[0]
    return {"client": p["client_id"], "employer": p["employer_id"], "placement": p["id"], "follow_up": fu["id"]}


@pytest.mark.parametrize("who", ["b.worker", "b.manager", "b.admin"])
def test_other_office_gets_404(api, a_records, who):
    c, e, p, f = (a_records[k] for k in ("client", "employer", "placement", "follow_up"))
    calls = [
        ("get", f"/api/v1/clients/{c}", None),
        ("patch", f"/api/v1/clients/{c}", {"consent_family": True}),
        ("get", f"/api/v1/clients/{c}/family-contacts", None),
        ("post", f"/api/v1/clients/{c}/family-contacts", {"name": "x", "relationship": "母"}),
        ("get", f"/api/v1/employers/{e}", None),
        ("get", f"/api/v1/placements/{p}", None),
        ("patch", f"/api/v1/placements/{p}", {"start_date": "2026-04-14"}),
        ("get", f"/api/v1/placements/{p}/follow-ups", None),
        ("post", f"/api/v1/placements/{p}/separation", {"date": "2026-04-20", "reason": "other"}),
        ("get", f"/api/v1/follow-ups/{f}", None),
        ("post", f"/api/v1/follow-ups/{f}/outcome", {"reached": True}),
    ]
    for method, url, body in calls:
        kw = {"json": body} if body is not None else {}
        r = getattr(api.http, method)(url, headers=api.headers(who), **kw)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
    # Nothing changed for office A.
    fu = api.ok(api.get("a.worker", f"/api/v1/follow-ups/{f}"))
    assert fu["status"] == "pending"
    assert api.ok(api.get("a.worker", f"/api/v1/placements/{p}"))["status"] == "active"
    assert api.ok(api.get("a.worker", f"/api/v1/clients/{c}"))["consent_family"] is False


@pytest.mark.parametrize("who", ["b.worker", "b.manager"])
def test_other_office_lists_leave_records_out(api, a_records, who):
    for url in ("/api/v1/clients", "/api/v1/employers", "/api/v1/placements"):
        page = api.ok(api.get(who, url))
        assert page["items"] == [] and page["total"] == 0, url
    assert api.ok(api.get(who, "/api/v1/queue"))["items"] == []
    users = api.get(who, "/api/v1/users")
    if who == "b.manager":
        assert {u["office_id"] for u in api.ok(users)["items"]} == {api.world.office_b}


def test_same_office_sees_them(api, a_records):
    page = api.ok(api.get("a.manager", "/api/v1/placements"))
    assert [p["id"] for p in page["items"]] == [a_records["placement"]]
    assert api.get("a.worker2", f"/api/v1/clients/{a_records['client']}").status_code == 200


def test_pagination(api):
    for n in range(5):
        api.client(name=f"Client {n}", kana=f"ア{n}")
    first = api.ok(api.get("a.worker", "/api/v1/clients", params={"limit": 2}))
    second = api.ok(api.get("a.worker", "/api/v1/clients", params={"limit": 2, "offset": 2}))
    last = api.ok(api.get("a.worker", "/api/v1/clients", params={"limit": 2, "offset": 4}))
    assert first["total"] == 5 and (first["limit"], first["offset"]) == (2, 0)
    names = [c["name"] for c in first["items"] + second["items"] + last["items"]]
    assert names == [f"Client {n}" for n in range(5)]
