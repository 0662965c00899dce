"""Plan adherence, reach and worker load on a case built and counted by hand."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from typer.testing import CliRunner

from service.contacts.models import Channel, FollowUp, FollowUpKind, FollowUpStatus, Party
from service.db import session_scope
from service.outcomes.models import Outcome
from tests.outcomes import report_data
from tests.outcomes.report_data import Office

PERIOD = {"from": "2026-04-01", "to": "2026-04-30"}


def _follow_up(session, placement_id: int, office_id: int, **fields) -> FollowUp:
    values = {
        "party": Party.client,
        "channel": Channel.phone,
        "kind": FollowUpKind.check_in,
        "status": FollowUpStatus.pending,
    } | fields
    values.setdefault("window_end", values["due_date"])
    fu = FollowUp(office_id=office_id, placement_id=placement_id, **values)
    session.add(fu)
    session.flush()
    return fu


def _outcome(session, fu: FollowUp, *, reached: bool) -> None:
    session.add(
        Outcome(
            office_id=fu.office_id,
            follow_up_id=fu.id,
            placement_id=fu.placement_id,
            party=fu.party,
            channel=fu.channel,
            reached=reached,
        )
    )


def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _build(factory, world) -> dict:
    """Office A (Tokyo), clock 20 April 2026. Follow-ups due in April and around it."""
    worker, worker2 = world.users["a.worker"], world.users["a.worker2"]
    office = Office(world.office_a, [worker, worker2])
    with session_scope(factory) as session:
        p = report_data.placement(session, office, start=date(2026, 3, 30))
        report_data.placement(session, office, start=date(2026, 3, 2))  # a.worker's 2nd case
        report_data.placement(session, office, start=date(2026, 1, 5), separated=date(2026, 2, 1))
        p2 = report_data.placement(session, office, start=date(2026, 3, 2), worker_id=worker2)
        a = world.office_a

        def fu(**kw):
            return _follow_up(session, p, a, assignee_id=worker, **kw)

        # Done on the last day of the window in Tokyo (14:59 UTC = 23:59 JST): on time.
        f1 = fu(due_date=date(2026, 4, 6), window_end=date(2026, 4, 8), status=FollowUpStatus.done,
                completed_at=_utc(2026, 4, 8, 14, 59))  # fmt: skip
        # Still 8 April in UTC but already 9 April in Tokyo: late.
        f2 = fu(due_date=date(2026, 4, 6), window_end=date(2026, 4, 8), status=FollowUpStatus.done,
                completed_at=_utc(2026, 4, 8, 15, 30))  # fmt: skip
        # An automated SMS answered by the client: on time, a contact.
        f3 = fu(due_date=date(2026, 4, 10), channel=Channel.sms, automated=True,
                status=FollowUpStatus.done, completed_at=_utc(2026, 4, 10, 1, 0))  # fmt: skip
        # An employer visit where nobody was reached, then the window passed: missed.
        f4 = fu(due_date=date(2026, 4, 13), window_end=date(2026, 4, 17), party=Party.employer,
                channel=Channel.visit, kind=FollowUpKind.employer_visit,
                status=FollowUpStatus.missed)  # fmt: skip
        # A family call that went to voicemail, with its retry pending: open; the retry is not
        # a second due follow-up, but its date makes it overdue work for the worker.
        f5 = fu(due_date=date(2026, 4, 14), window_end=date(2026, 4, 16), party=Party.family,
                status=FollowUpStatus.attempted)  # fmt: skip
        fu(due_date=date(2026, 4, 17), window_end=date(2026, 4, 17), party=Party.family,
           kind=FollowUpKind.retry, retry_of=f5.id, attempt=1)  # fmt: skip
        fu(due_date=date(2026, 4, 21), window_end=date(2026, 4, 23))  # open, not yet due
        fu(due_date=date(2026, 4, 16), window_end=date(2026, 4, 20))  # open and overdue
        fu(due_date=date(2026, 4, 15), status=FollowUpStatus.cancelled)  # not owed
        skipped = FollowUpStatus.skipped  # no consent: not owed
        fu(due_date=date(2026, 4, 2), channel=Channel.email, automated=True, status=skipped)
        outside = fu(due_date=date(2026, 3, 31), status=FollowUpStatus.done,
                     completed_at=_utc(2026, 3, 31, 3, 0))  # fmt: skip
        # An automated message pending from March: not the worker's overdue work.
        fu(due_date=date(2026, 3, 25), channel=Channel.sms, automated=True)
        # a.worker2's overdue work, outside the period.
        _follow_up(session, p2, a, assignee_id=worker2, due_date=date(2026, 3, 2))
        for f, reached in ((f1, True), (f2, True), (f3, True), (f4, False), (f5, False), (outside, True)):
            _outcome(session, f, reached=reached)
        # Another office's follow-up in the same period never counts.
        b = Office(world.office_b, [world.users["b.worker"]])
        pb = report_data.placement(session, b, start=date(2026, 3, 30))
        fb = _follow_up(session, pb, world.office_b, assignee_id=world.users["b.worker"],
                        due_date=date(2026, 4, 6), status=FollowUpStatus.done,
                        completed_at=_utc(2026, 4, 6, 12, 0))  # fmt: skip
        _outcome(session, fb, reached=True)
    return {"worker": worker, "worker2": worker2}


def _counts(row: dict) -> tuple:
    keys = ("due", "done", "on_time", "late", "missed", "open", "attempts", "contacts")
    return tuple(row[k] for k in keys)


def test_adherence_by_hand(api, factory, world):
    ids = _build(factory, world)
    body = api.ok(api.get("a.manager", "/api/v1/adherence", params=PERIOD))
    assert (body["from"], body["to"], body["today"]) == ("2026-04-01", "2026-04-30", "2026-04-20")
    total = body["total"]
    # due: f1, f2, f3, f4, f5 and the two open calls. done 3 = on time 2 + late 1.
    assert _counts(total) == (7, 3, 2, 1, 1, 3, 5, 3)
    assert total["done_rate"] == 3 / 7 and total["on_time_rate"] == 2 / 7
    assert total["reach_rate"] == 3 / 5  # the voicemail and the empty visit are attempts only
    by_channel = {r["key"]: r for r in body["by_channel"]}
    assert set(by_channel) == {"phone", "sms", "visit"}
    assert _counts(by_channel["phone"]) == (5, 2, 1, 1, 0, 3, 3, 2)
    assert _counts(by_channel["sms"]) == (1, 1, 1, 0, 0, 0, 1, 1)
    assert _counts(by_channel["visit"]) == (1, 0, 0, 0, 1, 0, 1, 0)
    assert by_channel["visit"]["reach_rate"] == 0.0 and by_channel["phone"]["label"] == "電話"
    by_party = {r["key"]: r for r in body["by_party"]}
    assert _counts(by_party["client"]) == (5, 3, 2, 1, 0, 2, 3, 3)
    assert _counts(by_party["employer"]) == (1, 0, 0, 0, 1, 0, 1, 0)
    assert _counts(by_party["family"]) == (1, 0, 0, 0, 0, 1, 1, 0)
    workers = {w["worker_id"]: w for w in body["workers"]}
    assert set(workers) == {ids["worker"], ids["worker2"]}  # the manager and admin hold nothing
    assert workers[ids["worker"]] | {"name": None} == {
        "worker_id": ids["worker"],
        "name": None,
        "caseload": 2,  # the separated placement is not a case any more
        "overdue": 2,  # the open call due 16 April and the retry due 17 April
        "oldest_overdue": "2026-04-16",
    }
    assert (workers[ids["worker2"]]["caseload"], workers[ids["worker2"]]["overdue"]) == (1, 1)
    assert workers[ids["worker2"]]["oldest_overdue"] == "2026-03-02"


def test_empty_period_has_null_rates(api, factory, world):
    _build(factory, world)
    body = api.ok(api.get("a.manager", "/api/v1/adherence", params={"from": "2025-01-01", "to": "2025-01-31"}))
    assert _counts(body["total"]) == (0,) * 8
    assert (body["total"]["done_rate"], body["total"]["reach_rate"]) == (None, None)
    assert body["by_channel"] == [] and body["by_party"] == []


def test_defaults_roles_and_bad_periods(api, factory, world):
    _build(factory, world)
    body = api.ok(api.get("a.manager", "/api/v1/adherence"))
    assert (body["from"], body["to"]) == ("2026-03-22", "2026-04-20")  # the last 30 days
    b = api.ok(api.get("b.manager", "/api/v1/adherence", params=PERIOD))
    assert _counts(b["total"]) == (1, 1, 1, 0, 0, 0, 1, 1)  # only office B's own follow-up
    assert api.get("a.worker", "/api/v1/adherence").status_code == 403
    bad = api.get("a.manager", "/api/v1/adherence", params={"from": "2026-05-01", "to": "2026-04-01"})
    assert bad.status_code == 422


def test_cli_adherence_matches_the_api(api, factory, world, db_url, monkeypatch):
    from service.cli import app
    from service.settings import get_settings

    _build(factory, world)
    from_api = api.ok(api.get("a.manager", "/api/v1/adherence", params=PERIOD))
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        base = ["report", "adherence", "--from", "2026-04-01", "--to", "2026-04-30", "--office", "Office A"]
        result = runner.invoke(app, [*base, "--format", "json"])
        assert result.exit_code == 0, result.output
        from_cli = json.loads(result.output)
        # "today" (and so the overdue work) is the real today on the command line.
        for key in ("total", "by_channel", "by_party", "from", "to"):
            assert from_cli[key] == from_api[key]
        table = runner.invoke(app, [*base, "--format", "table"])
        assert table.exit_code == 0 and "3/5 60.0%" in table.output
        as_csv = runner.invoke(app, [*base, "--format", "csv"])
        assert as_csv.exit_code == 0
        assert as_csv.output.splitlines()[1].startswith("total,2026-04-01,2026-04-30,all,all,7,3,2,1,1,3,")
    finally:
        get_settings.cache_clear()
