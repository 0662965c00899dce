"""A success is sent only for what is stored: the request's transaction commits before the response
leaves, so a commit the database refuses becomes the answer (503, nothing kept) instead of a 201
already on its way. (FastAPI ends ``yield`` dependencies after the response by default; the session
dependency asks for the end of the route instead. The fleet test missed the last placement of 24,
read the moment its 201 arrived, when the commit still came after the response.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.helpers import Api


@pytest.fixture
def api(app, world) -> Iterator[Api]:
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Api(http, world)


@pytest.fixture
def refuse_commits(engine):
    """The database refuses the next commits (a restart, a dropped connection), as the driver reports it."""
    refusals = {"left": 0}

    def on_commit(conn) -> None:
        if refusals["left"]:
            refusals["left"] -= 1
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    sa.event.listen(engine, "commit", on_commit)
    yield refusals
    sa.event.remove(engine, "commit", on_commit)


def clients(api: Api) -> list[str]:
    return [c["name"] for c in api.ok(api.get("a.worker", "/api/v1/clients"))["items"]]


def test_a_refused_commit_is_the_answer_and_nothing_is_kept(api, refuse_commits):
    api.client(name="前の人")
    refuse_commits["left"] = 1
    r = api.post("a.worker", "/api/v1/clients", {"name": "山田 太郎", "category": "needy_person"})
    assert r.status_code == 503, r.text
    assert "nothing was saved" in r.json()["detail"]
    assert r.headers["Retry-After"] == "5"
    assert clients(api) == ["前の人"]

    again = api.post("a.worker", "/api/v1/clients", {"name": "山田 太郎", "category": "needy_person"})
    assert again.status_code == 201, again.text
    assert sorted(clients(api)) == sorted(["前の人", "山田 太郎"])


def test_a_refused_commit_of_a_placement_keeps_neither_it_nor_its_plan(api, refuse_commits):
    client, employer = api.client(), api.employer()
    body = {"client_id": client["id"], "employer_id": employer["id"], "job_title": "清掃",
            "employment_type": "general", "start_date": "2026-04-01"}  # fmt: skip
    refuse_commits["left"] = 1
    assert api.post("a.worker", "/api/v1/placements", body).status_code == 503
    listed = api.ok(api.get("a.worker", f"/api/v1/placements?client_id={client['id']}"))
    assert listed["total"] == 0
    assert api.ok(api.get("a.worker", "/api/v1/queue?date=2026-04-30"))["items"] == []

    assert api.post("a.worker", "/api/v1/placements", body).status_code == 201
    assert api.ok(api.get("a.worker", f"/api/v1/placements?client_id={client['id']}"))["total"] == 1
    assert api.ok(api.get("a.worker", "/api/v1/queue?date=2026-04-30"))["items"] != []
