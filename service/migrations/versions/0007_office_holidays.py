"""offices keep their own country's public holidays (and a subdivision's)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing office keeps Japan's holidays, as before.
    op.add_column("office", sa.Column("holiday_country", sa.String(length=2), nullable=False, server_default="JP"))
    op.add_column("office", sa.Column("holiday_subdivision", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("office") as batch:
        batch.drop_column("holiday_subdivision")
        batch.drop_column("holiday_country")
