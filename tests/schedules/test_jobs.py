"""Scheduler jobs, run at chosen instants; and the scheduler's wiring in the lifespan."""

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlmodel import select

from service.app import create_app
from service.clock import FixedClock
from service.contacts.models import Channel, FollowUp, FollowUpKind, FollowUpStatus, Party
from service.db import session_scope
from service.jobs import run_job

UTC = ZoneInfo("UTC")


def _follow_up(session, placement_id, office_id, window_end: date) -> int:
    fu = FollowUp(
        office_id=office_id,
        placement_id=placement_id,
        party=Party.client,
        channel=Channel.phone,
        kind=FollowUpKind.check_in,
        due_date=window_end - timedelta(days=1),
        window_days=1,
        window_end=window_end,
    )
    session.add(fu)
    session.flush()
    return fu.id


def test_mark_missed_uses_each_office_time_zone(api, factory):
    a = api.placement("a.worker", start="2026-04-13")
    b = api.placement("b.worker", start="2026-04-13")
    with session_scope(factory) as s:
        tokyo_due = _follow_up(s, a["id"], api.world.office_a, date(2026, 4, 22))
        ny_past = _follow_up(s, b["id"], api.world.office_b, date(2026, 4, 21))
        ny_today = _follow_up(s, b["id"], api.world.office_b, date(2026, 4, 22))
    # 00:30 on 23 April in Tokyo is still 11:30 on 22 April in New York.
    clock = FixedClock(datetime(2026, 4, 22, 15, 30, tzinfo=UTC))
    run_job("mark_missed", factory, clock)
    with factory() as s:
        status = {fu.id: fu.status for fu in s.exec(select(FollowUp)).all()}
    assert status[tokyo_due] == FollowUpStatus.missed
    assert status[ny_past] == FollowUpStatus.missed
    assert status[ny_today] == FollowUpStatus.pending
    # Running again changes nothing more.
    assert run_job("mark_missed", factory, clock) == 0


def test_mark_missed_leaves_done_and_future_work(api, factory, clock):
    p = api.placement(start="2026-04-13")
    first = api.follow_ups("a.worker", p["id"])[0]
    api.ok(api.post("a.worker", f"/api/v1/follow-ups/{first['id']}/outcome", {"reached": True}), 201)
    clock.set(datetime(2026, 4, 27, 9, tzinfo=ZoneInfo("Asia/Tokyo")))
    run_job("mark_missed", factory, clock)
    rows = api.follow_ups("a.worker", p["id"])
    by_id = {r["id"]: r for r in rows}
    assert by_id[first["id"]]["status"] == "done"
    for r in rows:
        if r["window_end"] < "2026-04-27" and r["id"] != first["id"]:
            assert r["status"] in ("missed", "skipped"), r
        if r["window_end"] >= "2026-04-27":
            assert r["status"] in ("pending", "skipped"), r


def test_scheduler_starts_with_fixed_jobs_and_catches_up(settings, engine, api, factory):
    p = api.placement(start="2026-04-13")
    late = FixedClock(datetime(2026, 6, 1, 9, tzinfo=ZoneInfo("Asia/Tokyo")))
    app = create_app(settings.model_copy(update={"scheduler_enabled": True}), engine=engine, clock=late)
    with TestClient(app):
        scheduler = app.state.scheduler
        jobs = {job.id: job for job in scheduler.get_jobs()}
        # A handful of periodic ticks with fixed ids; never one job per follow-up.
        assert set(jobs) == {
            "mark_missed",
            "plan_check_ins",
            "dispatch",
            "reconcile_outbox",
            "escalate_unanswered",
            "morning_digest",
            "deliver_alerts",
            "plan_program_sessions",
            "process_replies",
            "optimize_database",
        }
        assert all(job.coalesce is True and job.max_instances == 1 for job in jobs.values())
        assert str(scheduler.timezone) == "UTC"
        # The catch-up at start already marked the stale follow-ups.
        with factory() as s:
            stale = s.exec(
                select(FollowUp).where(FollowUp.placement_id == p["id"], FollowUp.window_end < date(2026, 6, 1))
            ).all()
        assert stale and all(fu.status in (FollowUpStatus.missed, FollowUpStatus.skipped) for fu in stale)
    assert not app.state.scheduler.running
