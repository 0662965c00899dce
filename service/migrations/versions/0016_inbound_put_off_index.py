"""ix_inbound_message_put_off: the SMS put off after a failed try, by sender

Acting on a kept SMS first checks that no earlier SMS of its sender is put off (migration 0013):
a lookup by sender among the rows still waiting with a next try set, which are nearly always none.
A partial index holds just those rows, so the check costs one probe of an (almost) empty index,
not a scan of every SMS ever kept.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PUT_OFF = sa.text("processed_at IS NULL AND next_attempt_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_inbound_message_put_off",
        "inbound_message",
        ["from_address"],
        sqlite_where=PUT_OFF,
        postgresql_where=PUT_OFF,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_message_put_off", table_name="inbound_message")
