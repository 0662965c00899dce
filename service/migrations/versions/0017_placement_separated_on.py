"""placement.separated_on: the separation's date on the placement itself (issue 7, benchmark 6)

Retention compares every placement's start with its end. The end lived only in ``separation``,
so each report joined the two tables: on SQLite a probe of the separation's index per placement
(or, from the separations' side, a read of the placement's table row per separation), most of a
report's time at 500,000 placements. The placement now carries the date as well, written in the
same transaction as the separation (``record_separation``, the one writer; a separation is never
changed or removed), and the placements separated are indexed by that date with every group key
(a partial index: only the separated ones), so a report reads indexes alone. ``separation``
keeps the record (date, reason, note, who recorded it); ix_separation_retention, which only
retention read, goes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEPARATED = sa.text("separated_on IS NOT NULL")
COLUMNS = ["office_id", "separated_on", "start_date", "worker_id", "employer_id", "employment_type", "client_id"]


def upgrade() -> None:
    op.add_column("placement", sa.Column("separated_on", sa.Date(), nullable=True))
    op.execute(
        "UPDATE placement SET separated_on ="
        " (SELECT separation.date FROM separation WHERE separation.placement_id = placement.id)"
        " WHERE id IN (SELECT placement_id FROM separation)"
    )
    op.create_index("ix_placement_separated", "placement", COLUMNS, sqlite_where=SEPARATED, postgresql_where=SEPARATED)
    op.drop_index("ix_separation_retention", table_name="separation")


def downgrade() -> None:
    op.create_index("ix_separation_retention", "separation", ["office_id", "date", "placement_id"])
    op.drop_index("ix_placement_separated", table_name="placement")
    # ALTER TABLE ... DROP COLUMN, SQLite's too (3.35 and later): a batch copy of the table would
    # drop the table others' foreign keys point at.
    op.drop_column("placement", "separated_on")
