"""The dispatch tick's statements find their rows by the outbox's partial indexes (migration
0011): the claim reads its batch off ``ix_outbox_message_due`` (the queued rows, in the claim's
order, so no sort of every due row per batch), ``reconcile_stuck`` finds the rows left sending by
``ix_outbox_message_sending``, and a sent row is in neither. Plans, not timings: each statement is
captured as the code sends it (values written into the SQL, as PostgreSQL's generic plans need)
and explained on the same database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from service.contacts.messaging.outbox import STUCK_AFTER, _mark_sent, claim, reconcile_stuck
from tests.contacts.test_outbox import add_due_rows


def _captured(engine: sa.Engine, run, match: tuple[str, ...]) -> list[tuple[str, object]]:
    """The statements ``run`` sends that start with one of ``match``, with their parameters."""
    seen: list[tuple[str, object]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(match):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    assert seen, f"no {match} statement"
    return seen


def _plan(engine: sa.Engine, statement: str, parameters) -> str:
    """The plan of ``statement`` (rolled back). PostgreSQL is told to avoid scans of the table and
    sorts wherever it can, so that on a test's few rows it shows what it would do on many: a sort
    it cannot avoid (no index in the claim's order) still shows."""
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        else:
            plan = "\n".join(row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters))
        conn.rollback()
    return plan


def test_the_claim_reads_its_batch_off_the_queued_rows_index_without_sorting(engine, factory, world, clock):
    now = clock.now()
    add_due_rows(factory, world.office_a, 30, now - timedelta(minutes=1))

    def take() -> None:
        with factory() as s:
            assert len(claim(s, now=now, limit=10)) == 10

    # Every statement of the claim that reads the outbox (one, or a locking SELECT and the UPDATE).
    plans = [_plan(engine, *found) for found in _captured(engine, take, ("SELECT OUTBOX_MESSAGE", "UPDATE OUTBOX"))]
    assert any("ix_outbox_message_due" in plan for plan in plans), plans
    assert not any("Sort" in plan or "TEMP B-TREE" in plan for plan in plans), plans


def test_rows_left_sending_are_found_by_their_own_index(engine, factory, world, clock):
    now = clock.now()
    add_due_rows(factory, world.office_a, 5, now - timedelta(minutes=1))
    with factory() as s:
        claim(s, now=now, limit=5)

    def reconcile() -> None:
        with factory() as s:
            assert reconcile_stuck(s, type(clock)(now + STUCK_AFTER + timedelta(minutes=1))) == 5
            s.commit()

    (found,) = _captured(engine, reconcile, ("UPDATE OUTBOX_MESSAGE",))
    plan = _plan(engine, *found)
    assert "ix_outbox_message_sending" in plan, plan


def test_a_sent_row_is_in_neither_status_index(engine, factory, world, clock):
    """What makes recording a send cheap: the row leaves the index of rows in flight and enters none."""
    now = clock.now()
    ids = add_due_rows(factory, world.office_a, 4, now - timedelta(minutes=1))
    with factory() as s:
        rows = claim(s, now=now, limit=3)
    with factory() as s:
        _mark_sent(s, [(r.id, r.claim_token, f"p-{r.id}") for r in rows[:2]], now)
        s.commit()
    by_index = {}
    for name, status in (("ix_outbox_message_due", "queued"), ("ix_outbox_message_sending", "sending")):
        # SQLite reads the partial index itself (INDEXED BY fails if it cannot); PostgreSQL's plan names it.
        hint = f" INDEXED BY {name}" if engine.dialect.name == "sqlite" else ""
        query = f"SELECT id FROM outbox_message{hint} WHERE status = '{status}'"
        with engine.connect() as conn:
            by_index[name] = sorted(conn.execute(sa.text(query)).scalars())
        if engine.dialect.name == "postgresql":
            assert name in _plan(engine, query, None)
    assert by_index == {"ix_outbox_message_due": [ids[3]], "ix_outbox_message_sending": [rows[2].id]}


def test_the_outbox_keeps_only_indexes_a_query_reads(engine):
    """Every UPDATE of the tick maintains the outbox's indexes (on PostgreSQL, all of them: its
    outbox updates are never HOT), so it has none that nothing reads: not by provider id (a status
    callback finds its row by id; migration 0014) nor by office (migration 0015)."""
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("outbox_message")}
    names.discard("uq_outbox_message_idempotency_key")  # PostgreSQL lists the unique constraint's index
    assert names == {
        "ix_outbox_message_due",  # the claim
        "ix_outbox_message_sending",  # reconcile_stuck
        "ix_outbox_message_follow_up_id",  # planning: a follow-up with no message yet
        "ix_outbox_message_client_id",  # STOP: the client's queued check-ins
        "ix_outbox_message_placement_id",  # the client page: a placement's messages
    }
