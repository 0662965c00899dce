"""The daily queue: due today and overdue, most urgent first, with how to reach each party."""

from datetime import datetime
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")


def test_queue_order_and_content(api, clock):
    # clock: Monday 20 April 2026, 09:00 in Tokyo.
    older = api.placement(start="2026-04-13", client=api.client(name="古川 一郎", phone="090-1111-2222"))
    newer = api.placement(start="2026-04-19", client=api.client(name="新井 花子", phone="080-3333-4444"))
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert q["date"] == "2026-04-20"
    got = [(i["placement_id"], i["due_date"], i["group"], i["days_overdue"], i["party"]) for i in q["items"]]
    assert got == [
        (older["id"], "2026-04-14", "overdue", 6, "client"),  # day 1 call, most overdue first
        (older["id"], "2026-04-20", "today", 0, "employer"),  # day 7 call to the employer
        (newer["id"], "2026-04-20", "today", 0, "client"),  # day 1 call (19 April was a Sunday)
    ]
    assert q["counts"] == {"crisis": 0, "overdue": 1, "today": 2}
    first, employer_item = q["items"][0], q["items"][1]
    assert first["client"]["name"] == "古川 一郎"
    assert first["contact"]["phone"] == "+819011112222"
    assert first["channel"] == "phone" and first["kind"] == "check_in"
    assert first["action"] == "定着確認：本人（電話）"
    # For the employer the worker sees the on-site supervisor's name and number.
    assert employer_item["contact"]["name"] == "佐藤 現場"
    assert employer_item["contact"]["phone"] == "+81126223333"
    assert employer_item["employer_name"] == "岩見沢食品工業"
    # Automated check-ins are sent by the scheduler, not put in the worker's queue.
    assert all(i["channel"] not in ("sms", "email", "voice") for i in q["items"])


def test_queue_carries_the_last_outcome_and_drops_done_work(api, clock):
    p = api.placement(start="2026-04-13")
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    overdue = q["items"][0]
    assert overdue["last_outcome"] is None
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{overdue['follow_up_id']}/outcome",
                    {"reached": True, "still_employed": "yes", "wellbeing": 2, "note": "疲れ気味"}), 201)  # fmt: skip
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert [i["follow_up_id"] for i in q["items"]] != [] and overdue["follow_up_id"] not in [
        i["follow_up_id"] for i in q["items"]
    ]
    remaining = [i for i in q["items"] if i["placement_id"] == p["id"]]
    assert remaining and remaining[0]["last_outcome"]["wellbeing"] == 2


def test_queue_for_a_date_and_for_another_worker(api, clock):
    api.placement(start="2026-04-13")
    ahead = api.ok(api.get("a.worker", "/api/v1/queue", params={"date": "2026-04-23"}))
    assert {i["due_date"] for i in ahead["items"]} >= {"2026-04-14", "2026-04-20", "2026-04-23"}
    # A manager may look at a worker of the office.
    worker_id = api.world.users["a.worker"]
    as_manager = api.ok(api.get("a.manager", "/api/v1/queue", params={"worker_id": worker_id}))
    assert as_manager["worker_id"] == worker_id and len(as_manager["items"]) == 2
    # A worker may not look at a colleague's queue, and nobody at another office's.
    assert api.get("a.worker2", "/api/v1/queue", params={"worker_id": worker_id}).status_code == 404
    assert api.get("b.manager", "/api/v1/queue", params={"worker_id": worker_id}).status_code == 404
    # The colleague's own queue is empty: the placement is assigned to a.worker.
    assert api.ok(api.get("a.worker2", "/api/v1/queue"))["items"] == []


def test_queue_today_follows_the_office_time_zone(api, clock):
    api.placement(start="2026-04-19")  # first call due Monday 20 April
    # 23:30 on Sunday in UTC is already Monday morning in Tokyo.
    clock.set(datetime(2026, 4, 19, 23, 30, tzinfo=ZoneInfo("UTC")))
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    assert q["date"] == "2026-04-20" and len(q["items"]) == 1


def test_family_item_shows_the_family_contact(api, clock):
    client = api.client(consent_family=True)
    api.ok(api.post("a.worker", f"/api/v1/clients/{client['id']}/family-contacts",
                    {"name": "山田 母", "relationship": "母", "phone": "0126-22-4444"}), 201)  # fmt: skip
    api.placement(start="2026-03-30", client=client)  # the family call is due 20 April (day 21)
    q = api.ok(api.get("a.worker", "/api/v1/queue"))
    family = [i for i in q["items"] if i["party"] == "family"]
    assert len(family) == 1
    assert family[0]["contact"] == {
        "name": "山田 母",
        "relationship": "母",
        "phone": "+81126224444",
        "email": None,
        "address": None,
    }


def test_the_queue_reads_the_worker_index_whatever_the_statistics_say(api, clock, engine):
    """On SQLite the queue reads the worker's follow-ups through ix_follow_up_queue even when the
    planner's statistics would have it read the whole office (as it did without any statistics
    from about 100,000 placements on: nothing in the service runs ANALYZE); PostgreSQL plans by
    its own statistics (autovacuum)."""
    from datetime import date

    import sqlalchemy as sa

    from service.outcomes.queue import _QUEUE

    api.placement(start="2026-04-13")
    worker = api.world.users["a.worker"]
    statement = _QUEUE.params(worker_id=worker, office_id=api.world.office_a, on=date(2026, 4, 20))
    sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'follow_up'")
            conn.execute(  # the office's index looks selective, the worker's index does not
                sa.text("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('follow_up', :i, :s)"),
                [
                    {"i": "ix_follow_up_office_id", "s": "1000000 2"},
                    {"i": "ix_follow_up_queue", "s": "1000000 500000 500000 500000"},
                ],
            )
            conn.exec_driver_sql("ANALYZE sqlite_schema")  # this connection reads them again
            plan = " / ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "ix_follow_up_queue" in plan and "ix_follow_up_office_id" not in plan, plan
        else:
            assert "INDEXED BY" not in sql
        rows = conn.exec_driver_sql(sql).all()
    items = api.ok(api.get("a.worker", "/api/v1/queue"))["items"]
    assert [r[0] for r in rows] == [i["follow_up_id"] for i in items] and len(items) == 2  # day 1 and day 7
