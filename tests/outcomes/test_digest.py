"""The morning digest (service/outcomes/jobs.py): at 08:00 office time on business days, one
e-mail per worker with a caseload, exactly once per day, caught up once after an outage.

The clock fixture starts on Monday 20 April 2026, 09:00 in Tokyo, when the placements are made:

- a.worker, placement P1 (山田 太郎, public assistance) started Monday 13 April: the first call
  (due 14 April) was made, with a note; the employer call is due today, 20 April; a crisis call
  (a "wants to quit" signal) is due today too.
- a.worker, placement P2 (佐藤 花子) started Monday 6 April: the first call (7 April), the
  employer call (13 April) and the visit (16 April) are overdue; the three-party meeting is today.
- a.worker2, a placement starting 27 April: a caseload, nothing due yet.
- a.manager and a.admin: no caseload.
"""

from __future__ import annotations

import email
import socket
import threading
from collections import Counter
from datetime import date, datetime
from email import policy
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlmodel import select

from service.accounts.models import Language, Office, StaffUser
from service.app import create_app
from service.clock import FixedClock
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.messaging.outbox import Messaging
from service.db import make_engine, make_session_factory, session_scope
from service.jobs import run_job
from service.outcomes import crisis

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")


def at(day: str, hour: int, minute: int = 0, tz: ZoneInfo = TOKYO) -> datetime:
    d = date.fromisoformat(day)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=tz)


@pytest.fixture
def messaging(settings) -> Messaging:
    return Messaging.from_settings(settings)


def digest(factory, clock, messaging, when: datetime) -> int:
    clock.set(when)
    return run_job("morning_digest", factory, clock, messaging)


def digests(factory) -> list[OutboxMessage]:
    with factory() as s:
        query = select(OutboxMessage).where(OutboxMessage.purpose == Purpose.digest).order_by(OutboxMessage.id)
        return list(s.exec(query).all())


def by_staff(factory) -> dict[int, list[OutboxMessage]]:
    out: dict[int, list[OutboxMessage]] = {}
    for row in digests(factory):
        out.setdefault(row.staff_id, []).append(row)
    return out


@pytest.fixture
def caseload(api, factory, clock):
    """The caseloads described above (made at 09:00 on 20 April)."""
    yamada = api.client(name="山田 太郎", category="public_assistance")
    p1 = api.placement(start="2026-04-13", client=yamada)
    first = next(f for f in api.follow_ups("a.worker", p1["id"]) if f["due_date"] == "2026-04-14")
    api.ok(
        api.post(
            "a.worker",
            f"/api/v1/follow-ups/{first['id']}/outcome",
            {"reached": True, "note": "家賃の滞納あり（秘密のメモ）"},
        ),  # fmt: skip
        201,
    )
    with session_scope(factory) as s:
        crisis.raise_signal(
            s, placement_id=p1["id"], kind="wants_to_quit", source_party="client", source="test:1",
            detail="辞めたいと話していた", clock=clock,
        )  # fmt: skip
    sato = api.client(name="佐藤 花子", kana="サトウ ハナコ", category="needy_person", phone="090-2222-3333")
    p2 = api.placement(start="2026-04-06", client=sato)
    future = api.placement("a.worker2", start="2026-04-27", client=api.client("a.worker2", name="鈴木 一郎"))
    return {"p1": p1, "p2": p2, "future": future}


def test_digest_at_eight_once_per_worker_with_a_caseload(api, factory, clock, messaging, caseload):
    users = api.world.users
    assert digest(factory, clock, messaging, at("2026-04-20", 7, 59)) == 0
    assert digests(factory) == []

    assert digest(factory, clock, messaging, at("2026-04-20", 8, 0)) == 2
    rows = by_staff(factory)
    assert set(rows) == {users["a.worker"], users["a.worker2"]}  # not the manager, not the admin
    [mine] = rows[users["a.worker"]]
    assert mine.idempotency_key == f"digest:{users['a.worker']}:2026-04-20"
    assert (mine.purpose, mine.channel, mine.status) == (Purpose.digest, MessageChannel.email, MessageStatus.queued)
    assert mine.to_address == "worker@a.example.jp" and mine.send_tz is None and mine.language == "ja"
    assert mine.next_attempt_at == at("2026-04-20", 8) and mine.client_id is None and mine.follow_up_id is None
    assert mine.subject == "【定着支援】4月20日（月）の予定：危機 1件・期限超過 3件・本日 2件"
    body = mine.body
    assert "Worker A さん" in body
    crisis_part, overdue_part, today_part = (
        body[body.index("■ 危機対応") : body.index("■ 期限超過")],
        body[body.index("■ 期限超過") : body.index("■ 本日")],
        body[body.index("■ 本日") :],
    )
    assert "危機対応（1件）" in crisis_part and "山田 太郎" in crisis_part and "危機対応の電話" in crisis_part
    assert "期限超過（3件）" in overdue_part
    assert overdue_part.count("佐藤 花子") == 3
    assert "・佐藤 花子　定着確認：本人（電話）　期限 4月7日（火）（13日超過）" in overdue_part
    assert "期限 4月13日（月）（7日超過）" in overdue_part and "期限 4月16日（木）（4日超過）" in overdue_part
    assert "本日（2件）" in today_part
    assert "・山田 太郎　定着確認：事業所（電話）　期限 4月20日（月）" in today_part
    assert "三者面談" in today_part and "佐藤 花子" in today_part
    # Minimal: names, actions and dates; never the category, notes, contact details or the crisis detail.
    for secret in ("家賃", "秘密", "public_assistance", "被保護者", "生活保護", "needy", "辞めたい", "090", "taro@"):
        assert secret not in body and secret not in mine.subject, secret

    [nothing] = rows[users["a.worker2"]]
    assert nothing.subject == "【定着支援】4月20日（月）：本日の予定はありません"
    assert "鈴木" not in nothing.body

    # Exactly once: again at 08:00, at 08:05, at noon.
    for when in (at("2026-04-20", 8), at("2026-04-20", 8, 5), at("2026-04-20", 12)):
        assert digest(factory, clock, messaging, when) == 0
    assert len(digests(factory)) == 2
    # The next business day brings the next one.
    assert digest(factory, clock, messaging, at("2026-04-21", 8)) == 2
    assert {r.idempotency_key for r in digests(factory)} >= {f"digest:{users['a.worker']}:2026-04-21"}


def test_no_digest_on_weekends_holidays_and_closed_days(api, factory, clock, messaging, caseload):
    with session_scope(factory) as s:
        office = s.get(Office, api.world.office_a)
        office.closed_days = [*office.closed_days, "2026-05-01"]  # the office's own closed day
        s.add(office)
    for when in (
        at("2026-04-25", 8, 30),  # Saturday
        at("2026-04-26", 9),  # Sunday
        at("2026-04-29", 8, 30),  # Shōwa Day
        at("2026-05-01", 8, 30),  # closed
        at("2026-05-04", 10),  # Greenery Day (Golden Week)
    ):
        assert digest(factory, clock, messaging, when) == 0, when
    assert digests(factory) == []
    assert digest(factory, clock, messaging, at("2026-04-30", 8, 30)) == 2
    assert {r.idempotency_key.rsplit(":", 1)[1] for r in digests(factory)} == {"2026-04-30"}


def test_down_at_eight_caught_up_once_but_not_after_six(api, factory, clock, messaging, caseload):
    # Down all morning: the first run, at 10:30, sends it.
    assert digest(factory, clock, messaging, at("2026-04-20", 10, 30)) == 2
    assert digest(factory, clock, messaging, at("2026-04-20", 10, 35)) == 0
    # Down all day on the 21st: by 18:00 a morning digest is stale, so none for that day.
    assert digest(factory, clock, messaging, at("2026-04-21", 18)) == 0
    assert digest(factory, clock, messaging, at("2026-04-21", 23, 55)) == 0
    assert digest(factory, clock, messaging, at("2026-04-22", 7, 55)) == 0
    # Back at 17:59 on the 22nd: still sent.
    assert digest(factory, clock, messaging, at("2026-04-22", 17, 59)) == 2
    days = Counter(r.idempotency_key.rsplit(":", 1)[1] for r in digests(factory))
    assert days == {"2026-04-20": 2, "2026-04-22": 2}


def test_the_scheduler_catches_the_digest_up_at_start(api, settings, engine, factory, caseload):
    late = FixedClock(at("2026-04-23", 10, 30))  # the service comes back at 10:30 on a Thursday
    app = create_app(settings.model_copy(update={"scheduler_enabled": True}), engine=engine, clock=late)
    with TestClient(app):
        rows = by_staff(factory)
        assert set(rows) == {api.world.users["a.worker"], api.world.users["a.worker2"]}
        assert all(len(v) == 1 and v[0].idempotency_key.endswith(":2026-04-23") for v in rows.values())


def test_the_new_york_office_gets_its_digest_at_eight_new_york_time(api, factory, clock, messaging):
    api.placement("a.worker", start="2026-04-13")
    api.placement("b.worker", start="2026-04-13")
    b = api.world.users["b.worker"]
    # 08:00 in Tokyo on Monday is 19:00 on Sunday in New York: Tokyo only.
    assert digest(factory, clock, messaging, at("2026-04-20", 8)) == 1
    assert set(by_staff(factory)) == {api.world.users["a.worker"]}
    # 07:59 in New York on Monday (20:59 in Tokyo): nothing yet.
    assert digest(factory, clock, messaging, at("2026-04-20", 7, 59, NEW_YORK)) == 0
    assert digest(factory, clock, messaging, at("2026-04-20", 8, 0, NEW_YORK)) == 1
    [row] = by_staff(factory)[b]
    assert row.idempotency_key == f"digest:{b}:2026-04-20" and row.office_id == api.world.office_b
    assert row.to_address == "worker@b.example.jp" and row.next_attempt_at == at("2026-04-20", 8, 0, NEW_YORK)
    assert "4月20日" in row.subject and "期限超過" in row.subject
    assert digest(factory, clock, messaging, at("2026-04-20", 12, 0, NEW_YORK)) == 0
    # New York keeps the Japanese public holidays too (the office calendar is Japan's): 29 April.
    assert digest(factory, clock, messaging, at("2026-04-29", 9, 0, NEW_YORK)) == 0


def test_managers_with_a_caseload_get_one_in_their_language(api, factory, clock, messaging):
    users = api.world.users
    api.placement("a.manager", start="2026-04-13", worker_id=users["a.manager"])
    api.placement("a.worker", start="2026-04-27")  # a caseload, nothing due yet
    api.placement("a.worker2", start="2026-04-13")
    with session_scope(factory) as s:
        s.get(StaffUser, users["a.worker"]).language = Language.en
        s.get(StaffUser, users["a.worker2"]).is_active = False  # left the office
    assert digest(factory, clock, messaging, at("2026-04-20", 8)) == 2
    rows = by_staff(factory)
    assert set(rows) == {users["a.manager"], users["a.worker"]}  # not the inactive worker, not the admin
    assert rows[users["a.manager"]][0].subject.endswith("危機 0件・期限超過 1件・本日 1件")
    [en] = rows[users["a.worker"]]
    assert en.language == "en" and en.subject == "Teichaku Mon 20 Apr: nothing due today"
    assert "Good morning, Worker A." in en.body


def test_many_items_are_counted_not_all_listed(api, factory, clock, messaging):
    from service.outcomes import jobs as follow_up_jobs

    for _ in range(12):  # 3 overdue each: 36 overdue items
        api.placement(start="2026-04-06", client=api.client(phone=None, email=None))
    assert digest(factory, clock, messaging, at("2026-04-20", 8)) == 1
    [row] = digests(factory)
    assert "期限超過 36件" in row.subject
    assert row.body.count("超過）") == follow_up_jobs.MAX_LINES
    assert f"・ほか {36 - follow_up_jobs.MAX_LINES}件" in row.body


# ---------------------------------------------------------------- two scheduler processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802  (aiosmtpd's name)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"


def test_two_scheduler_processes_send_one_digest_per_worker(api, db_url, settings, factory, clock, messaging, caseload):
    """Each "process" has its own engine and session factory; they run the job at the same
    moments, many times. The unique idempotency key leaves one digest per worker per day; the
    e-mails then go through a real SMTP server on loopback."""
    users = api.world.users
    api.placement("b.worker", start="2026-04-13")
    # Monday 08:00 in New York is 21:00 in Tokyo: only B's digest is due; so the Tokyo ones are
    # written at 08:00 Tokyo time first, then both offices' jobs race again at 08:00 New York.
    instants = [at("2026-04-20", 8), at("2026-04-20", 8, 0, NEW_YORK)]
    errors: list[BaseException] = []
    counts: list[int] = []
    lock = threading.Lock()

    def process(instant: datetime, barrier: threading.Barrier) -> None:
        engine = make_engine(db_url)
        own = make_session_factory(engine)
        own_clock = FixedClock(instant)
        try:
            barrier.wait(timeout=30)
            for _ in range(25):
                n = run_job("morning_digest", own, own_clock, messaging)
                with lock:
                    counts.append(n)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            engine.dispose()

    for instant in instants:
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=process, args=(instant, barrier)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    rows = by_staff(factory)
    assert {k: len(v) for k, v in rows.items()} == {users["a.worker"]: 1, users["a.worker2"]: 1, users["b.worker"]: 1}
    assert sum(counts) == 3

    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = Messaging.from_settings(
            settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port, "send_rate_per_second": 50})
        )
        clock.set(at("2026-04-20", 8, 1, NEW_YORK))
        assert run_job("dispatch", factory, clock, smtp) == 3
        assert run_job("dispatch", factory, clock, smtp) == 0
    finally:
        controller.stop()
    received = Counter(to for tos, _ in inbox.messages for to in tos)
    assert received == {"worker@a.example.jp": 1, "worker2@a.example.jp": 1, "worker@b.example.jp": 1}
    subjects = {msg["To"]: msg["Subject"] for _, msg in inbox.messages}
    assert subjects["worker@a.example.jp"] == "【定着支援】4月20日（月）の予定：危機 1件・期限超過 3件・本日 2件"
    assert subjects["worker2@a.example.jp"] == "【定着支援】4月20日（月）：本日の予定はありません"
    body = next(m for _, m in inbox.messages if m["To"] == "worker@a.example.jp").get_content()
    assert "佐藤 花子" in body and "家賃" not in body
    assert len({msg["Message-ID"] for _, msg in inbox.messages}) == 3
    assert all(r.status == MessageStatus.sent for r in digests(factory))
