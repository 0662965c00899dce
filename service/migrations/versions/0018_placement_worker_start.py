"""ix_placement_worker_start: an office's placements by worker and start date (issue 7, benchmark 6)

Retention by worker on SQLite counts each worker's placements between the start cut-offs from
ranges of this index, one range per worker and interval, instead of sorting every placement of
the office by worker (SQLite groups by sorting): at 500,000 placements about a fifth of the time.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_placement_worker_start", "placement", ["office_id", "worker_id", "start_date"])


def downgrade() -> None:
    op.drop_index("ix_placement_worker_start", table_name="placement")
