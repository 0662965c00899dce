"""covering indexes for retention (issue 7, benchmark 6)

Retention counts an office's placements per group between start cut-offs from ranges of
ix_placement_retention alone (no table reads), finds the clients with several placements in
the order of ix_placement_office_client, and reads the separations known by a day from
ix_separation_retention.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_placement_retention",
        "placement",
        ["office_id", "start_date", "worker_id", "employer_id", "employment_type", "client_id"],
    )
    op.create_index("ix_placement_office_client", "placement", ["office_id", "client_id", "start_date"])
    op.create_index("ix_separation_retention", "separation", ["office_id", "date", "placement_id"])


def downgrade() -> None:
    op.drop_index("ix_separation_retention", table_name="separation")
    op.drop_index("ix_placement_office_client", table_name="placement")
    op.drop_index("ix_placement_retention", table_name="placement")
