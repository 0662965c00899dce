def test_health(http):
    assert http.get("/healthz").json() == {"status": "ok"}


def test_ready_when_migrated(http):
    r = http.get("/readyz")
    assert r.status_code == 200, r.text


def test_placement_materializes(api):
    p = api.placement(start="2026-04-20")
    rows = api.follow_ups("a.worker", p["id"])
    assert len(rows) == 14
