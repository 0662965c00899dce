"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from datetime import date

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.contacts.models import Placement
from service.db import session_scope
from service.migrate import alembic_config, pending_migrations, upgrade
from service.models import metadata
from tests.outcomes import report_data


def test_migrated_schema_matches_models(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == []
    assert pending_migrations(engine) == []


def test_0017_puts_each_separation_date_on_its_placement(db_url, engine, factory, world):
    office = report_data.Office(world.office_a, [world.users["a.worker"]])
    with session_scope(factory) as session:
        left = report_data.placement(session, office, start=date(2024, 2, 29), separated=date(2025, 2, 28))
        stays = report_data.placement(session, office, start=date(2024, 3, 1))
    p = Placement.__table__
    try:
        command.downgrade(alembic_config(db_url), "0016")  # before the column: the date lived in separation alone
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("placement")}
        assert "separated_on" not in columns
    finally:
        upgrade(db_url)
    with engine.connect() as conn:
        ends = dict(conn.execute(sa.select(p.c.id, p.c.separated_on).where(p.c.id.in_([left, stays]))).all())
    assert ends == {left: date(2025, 2, 28), stays: None}
