"""inbound_message.attempts, next_attempt_at: a kept SMS that fails to be acted on waits before the next try

``process_replies`` acts on the oldest kept SMS first, 500 at a time. One whose acting failed (a
fault of ours, not the message) was taken again at every run, every 2 s, forever, and 500 such rows
would have held up every newer one. Now each failure counts and puts the next try off (1 min, 5 min,
30 min, then every 2 h); it is never dropped: a client's words wait for the fault to be fixed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_message") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_message") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("attempts")
