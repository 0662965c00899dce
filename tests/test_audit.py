"""The audit trail: every write is attributable (user, job, webhook, reply link), with old and
new values where they are neither secret nor personal; client views are recorded; a manager
reads only the office's own trail; nothing changes it; no secret ever lands in it."""

from __future__ import annotations

import csv
import io
import json

import pytest
import sqlalchemy as sa
from sqlmodel import select

from service.audit.models import AuditEvent
from service.jobs import run_job
from tests.helpers import PASSWORD
from tests.outcomes.test_webhooks import SMS, TOKEN, post_signed, sent_check_in, sms


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"twilio_auth_token": TOKEN, "twilio_two_way_sms": True})


def events(factory, **where) -> list[AuditEvent]:
    with factory() as s:
        stmt = select(AuditEvent).order_by(AuditEvent.id)
        for k, v in where.items():
            stmt = stmt.where(getattr(AuditEvent, k) == v)
        return list(s.exec(stmt).all())


def test_creating_a_placement_is_attributed_to_the_worker_with_values(api, factory):
    p = api.placement("a.worker", start="2026-04-13")
    (created,) = events(factory, record_type="placement", record_id=p["id"], action="create")
    assert (created.actor_type, created.actor_id) == ("user", api.world.users["a.worker"])
    assert created.office_id == api.world.office_a and created.request_id and created.ip
    assert created.changes["start_date"] == {"old": None, "new": "2026-04-13"}
    assert created.changes["plan"]["new"] == "standard-3m"
    # The follow-ups materialized from the plan are attributed to the same request.
    made = events(factory, record_type="follow_up", action="create")
    assert made and {e.request_id for e in made} == {created.request_id}

    api.ok(api.patch("a.worker", f"/api/v1/placements/{p['id']}", {"start_date": "2026-04-14"}))
    (changed,) = [e for e in events(factory, record_type="placement", action="update") if "start_date" in e.changes]
    assert changed.changes["start_date"] == {"old": "2026-04-13", "new": "2026-04-14"}


def test_an_outcome_and_the_follow_up_it_closes(api, factory):
    p = api.placement("a.worker", start="2026-04-13")
    fu = api.follow_ups("a.worker", p["id"])[0]
    r = api.post("a.worker2", f"/api/v1/follow-ups/{fu['id']}/outcome", {"reached": True, "wellbeing": 4})
    assert r.status_code == 201, r.text
    (outcome,) = events(factory, record_type="outcome", action="create")
    assert (outcome.actor_type, outcome.actor_id) == ("user", api.world.users["a.worker2"])
    assert outcome.changes["wellbeing"] == {"old": None, "new": 4}
    done = [e for e in events(factory, record_type="follow_up", record_id=fu["id"], action="update")]
    assert any(e.changes.get("status") == {"old": "pending", "new": "done"} for e in done), done


def test_personal_values_are_marked_changed_but_not_stored(api, factory):
    c = api.client(name="監査 花子", phone="090-9876-1357", email="hanako@example.jp")
    api.ok(api.patch("a.worker", f"/api/v1/clients/{c['id']}", {"phone": "090-9876-2468", "language": "en"}))
    (upd,) = [e for e in events(factory, record_type="client", action="update") if "phone" in e.changes]
    assert upd.changes["phone"] == {"old": "[personal]", "new": "[personal]"}
    assert upd.changes["language"] == {"old": "ja", "new": "en"}
    text = json.dumps([e.changes for e in events(factory)], ensure_ascii=False)
    for value in ("監査", "98761357", "98762468", "hanako", "public_assistance", "生活保護"):
        assert value not in text


def test_an_sms_answer_is_attributed_to_the_webhook(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)
    assert post_signed(http, SMS, sms(ci, "1")).status_code == 200
    (outcome,) = events(factory, record_type="outcome", action="create")
    assert (outcome.actor_type, outcome.actor_label) == ("webhook", "twilio/sms")
    assert outcome.office_id == api.world.office_a and outcome.changes["source"]["new"] == "sms"
    fu = events(factory, record_type="follow_up", record_id=ci.follow_up_id, action="update")
    assert any(e.actor_type == "webhook" and e.changes.get("status", {}).get("new") == "done" for e in fu)
    assert [e.changes["status"]["old"] for e in fu if e.actor_type == "webhook"] == ["pending"]
    # The inbound row is kept before Twilio hears 200 ("create"), then acted on ("update": the
    # outcome it made, the check-in it answered), both by the webhook.
    inbound = events(factory, record_type="inbound_message")
    assert [(e.action, e.actor_label) for e in inbound] == [("create", "twilio/sms"), ("update", "twilio/sms")]
    assert inbound[0].changes["from_address"] == {"old": None, "new": "[personal]"}  # the phone is not kept
    assert inbound[1].changes["outcome_id"] == {"old": None, "new": outcome.record_id}
    assert inbound[1].changes["outbox_id"] == {"old": None, "new": ci.outbox_id}
    assert inbound[0].request_id == inbound[1].request_id == outcome.request_id  # one request


def test_a_job_is_attributed_to_the_job_with_old_and_new_values(api, http, factory, clock):
    ci = sent_check_in(api, http, factory, clock)  # runs plan_check_ins and dispatch
    planned = events(factory, record_type="outbox_message", action="create")
    assert planned and {(e.actor_type, e.actor_label) for e in planned} == {("job", "plan_check_ins")}
    # The dispatch tick records its claim and its sends as one event per batch and office, naming
    # the rows: the audit API finds them by the message's id.
    params = {"record_type": "outbox_message", "record_id": ci.outbox_id}
    trail = api.ok(api.get("a.manager", "/api/v1/audit", params=params))["items"]
    sent = [e for e in trail if e["action"] == "update" and e["actor_label"] == "dispatch"]
    assert [e["changes"]["status"] for e in sent] == [
        {"old": "sending", "new": "sent"},
        {"old": "queued", "new": "sending"},
    ]
    assert all(e["actor_type"] == "job" and e["at"] and ci.outbox_id in e["changes"]["record_ids"] for e in sent)
    assert sent[0]["changes"]["provider_id"]["new"][str(ci.outbox_id)]
    # A bulk UPDATE (mark_missed) is captured row by row, with the old value.
    clock.set(clock.now().replace(year=2026, month=12))
    assert run_job("mark_missed", factory, clock) > 0
    missed = [e for e in events(factory, record_type="follow_up", action="update") if e.actor_label == "mark_missed"]
    assert missed and all(e.changes["status"] == {"old": "pending", "new": "missed"} for e in missed)
    assert all(e.office_id == api.world.office_a and e.record_id for e in missed)


def test_viewing_a_client_is_recorded_and_a_404_is_not(api, factory):
    c = api.client()
    api.ok(api.get("a.worker2", f"/api/v1/clients/{c['id']}"))
    (view,) = events(factory, action="view")
    assert (view.record_type, view.record_id, view.actor_id) == ("client", c["id"], api.world.users["a.worker2"])
    assert api.get("b.worker", f"/api/v1/clients/{c['id']}").status_code == 404
    assert len(events(factory, action="view")) == 1


def test_managers_read_and_export_their_own_offices_trail_only(api, factory):
    a = api.client("a.worker")
    b = api.client("b.worker", name="B client")
    page = api.ok(api.get("a.manager", "/api/v1/audit", params={"record_type": "client"}))
    assert page["total"] >= 1 and {e["office_id"] for e in page["items"]} == {api.world.office_a}
    assert b["id"] not in {e["record_id"] for e in page["items"]} or a["id"] == b["id"]
    b_page = api.ok(api.get("b.manager", "/api/v1/audit", params={"record_type": "client", "record_id": a["id"]}))
    assert all(e["office_id"] == api.world.office_b for e in b_page["items"])
    assert api.ok(api.get("b.manager", "/api/v1/audit"))["items"] and all(
        e["office_id"] == api.world.office_b for e in api.ok(api.get("b.manager", "/api/v1/audit"))["items"]
    )
    by_actor = api.ok(api.get("a.manager", "/api/v1/audit", params={"actor_id": api.world.users["a.worker"]}))
    assert by_actor["items"] and {e["actor_id"] for e in by_actor["items"]} == {api.world.users["a.worker"]}
    assert api.get("a.worker", "/api/v1/audit").status_code == 403
    assert api.get("a.manager", "/api/v1/audit", params={"since": "2026-01-01T00:00:00"}).status_code == 422
    future = api.ok(api.get("a.manager", "/api/v1/audit", params={"since": "2099-01-01T00:00:00+09:00"}))
    assert future["total"] == 0

    r = api.get("a.manager", "/api/v1/audit.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and {row["office_id"] for row in rows} == {str(api.world.office_a)}
    assert api.get("a.worker", "/api/v1/audit.csv").status_code == 403


def test_no_route_changes_the_trail(api, app):
    methods = {m for r in app.openapi()["paths"].get("/api/v1/audit", {}) for m in [r.upper()]} | {
        m.upper() for m in app.openapi()["paths"].get("/api/v1/audit.csv", {})
    }
    assert methods == {"GET"}
    assert api.http.delete("/api/v1/audit", headers=api.headers("a.admin")).status_code == 405


def test_no_password_hash_or_token_in_any_event(api, factory):
    api.ok(api.post("a.admin", f"/api/v1/users/{api.world.users['a.worker']}/reset-password",
                    {"new_password": "temporary pass 123"}))  # fmt: skip
    tok = api.http.post(
        "/api/v1/auth/token", data={"username": "worker@a.example.jp", "password": "temporary pass 123"}
    )
    token = tok.json()["access_token"]
    change = {"old_password": "temporary pass 123", "new_password": "a brand new passphrase"}
    r = api.http.post("/api/v1/auth/password", headers={"Authorization": f"Bearer {token}"}, json=change)
    assert r.status_code == 200, r.text
    api.placement("a.worker2", start="2026-04-13")
    with factory() as s:
        hashes = [row[0] for row in s.execute(sa.text("SELECT password_hash FROM staff_user")).all()]
    text = json.dumps([[e.changes, e.actor_label] for e in events(factory)], ensure_ascii=False)
    for secret in [*hashes, token, r.json()["access_token"], "temporary pass 123", "a brand new passphrase", PASSWORD]:
        assert secret not in text
    assert "$argon2" not in text
    changed = [e for e in events(factory, record_type="staff_user", action="update") if "password_hash" in e.changes]
    assert len(changed) == 2 and all(
        e.changes["password_hash"] == {"old": "[secret]", "new": "[secret]"} for e in changed
    )


def test_the_database_refuses_update_and_delete_of_the_trail(api, engine):
    api.client()
    for statement in ("UPDATE audit_event SET action = 'x'", "DELETE FROM audit_event"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))


def test_signing_in_and_out_is_recorded_for_the_user(api, factory):
    headers = api.headers("a.manager")
    assert api.http.post("/api/v1/auth/logout", headers=headers).status_code == 204
    uid = api.world.users["a.manager"]
    actions = [(e.action, e.actor_id) for e in events(factory, record_type="staff_user", record_id=uid)]
    assert ("sign_in", uid) in actions and ("sign_out", uid) in actions
