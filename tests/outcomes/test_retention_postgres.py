"""Retention's aggregates on PostgreSQL: run without JIT compilation, the office's placements
counted by parallel workers (issue 7, benchmark 6). The numbers themselves are checked in
test_retention.py on both databases."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from service.db import session_scope
from service.outcomes.retention import Grouping, _several_clients, _tally, _tally_statement, retention
from tests.outcomes import report_data
from tests.outcomes.test_retention import _office

pytestmark = pytest.mark.postgres

AS_OF = date(2026, 4, 20)


def _jit(session) -> str:
    return session.execute(sa.text("SHOW jit")).scalar_one()


def test_a_report_turns_jit_off_for_its_transaction_only(factory, world):
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=200, seed=7)
    with factory() as session:
        session.execute(sa.text("SET jit = on"))  # as the server's default is here (session-wide)
        session.commit()
        report = retention(session, office_id=world.office_a, as_of=AS_OF, by=Grouping.worker)
        assert report.groups
        assert _jit(session) == "off"
        session.rollback()  # SET LOCAL: the pooled connection goes back as it came
        assert _jit(session) == "on"
        session.execute(sa.text("RESET jit"))
        session.commit()


def test_the_placements_are_counted_with_parallel_workers(factory, world):
    """The job-retention aggregate over all the office's placements can be a partial aggregate
    in parallel workers (no OFFSET 0 fence on PostgreSQL); the costs are lowered so that the
    planner chooses it on a test's few hundred rows."""
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=300, seed=8)
    with factory() as session:
        session.execute(sa.text("ANALYZE placement, separation"))  # the row counts, as autovacuum keeps them
        for setting in (
            "parallel_setup_cost = 0",
            "parallel_tuple_cost = 0",
            "min_parallel_table_scan_size = 0",
            "min_parallel_index_scan_size = 0",
            "max_parallel_workers_per_gather = 2",
            "enable_hashagg = off",  # a sorted partial aggregate, whatever the hash estimates
        ):
            session.execute(sa.text(f"SET LOCAL {setting}"))
        statement = _tally_statement("placements", world.office_a, AS_OF, Grouping.worker, (False,), "postgresql")
        sql = str(statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = "\n".join(session.connection().exec_driver_sql("EXPLAIN " + sql).scalars())
        assert "Partial" in plan and "Gather" in plan, plan


def test_the_spell_walk_runs_in_one_process_and_the_placements_in_parallel(factory, world):
    """Parallel workers would each build the set of clients with several placements again:
    the walk and the "several" tally run without them, the placements with the server's own
    setting again after them, in the same transaction."""
    with session_scope(factory) as session:
        report_data.generate(session, _office(world), placements=200, seed=9)
    with factory() as session:
        default = session.execute(sa.text("SHOW max_parallel_workers_per_gather")).scalar_one()
        assert default != "0"
        seen = []
        clients = _several_clients(session, office_id=world.office_a, as_of=AS_OF)
        assert clients  # the walk has clients to walk
        for kind in ("placements", "several", "walked", "placements"):
            _tally(session, kind, office_id=world.office_a, as_of=AS_OF, by=Grouping.worker, clients=clients)
            seen.append(session.execute(sa.text("SHOW max_parallel_workers_per_gather")).scalar_one())
        assert seen == [default, "0", "0", default]
        session.rollback()
