"""The service keeps SQLite's planner statistics itself (service/maintenance.py, issue 7)."""

import sqlalchemy as sa

from service.jobs import run_job


def _stats(engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        if not conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first():
            return []
        return [tuple(r) for r in conn.execute(sa.text("SELECT tbl, idx FROM sqlite_stat1 WHERE idx IS NOT NULL"))]


def test_optimize_database_writes_sqlite_statistics(api, factory, clock, engine):
    api.placement(start="2026-04-13")
    if engine.dialect.name == "sqlite":
        assert _stats(engine) == []  # nothing else runs ANALYZE: the planner would guess
    count = run_job("optimize_database", factory, clock)
    if engine.dialect.name == "sqlite":
        stats = _stats(engine)
        assert ("follow_up", "ix_follow_up_queue") in stats and count == len(stats)
        assert run_job("optimize_database", factory, clock) == count  # daily: the same again
    else:
        assert count == 0  # PostgreSQL: autovacuum keeps its statistics
