"""inbound_message.processed_at: an SMS is kept first, acted on right after (issue 7, benchmark 4)

Twilio hears 200 as soon as an inbound SMS's row is committed; the answer's outcome, a STOP and
the crisis rules follow in the same process, and the scheduler's ``process_replies`` job acts on
any row a crash left behind. ``processed_at`` says a row has been acted on; rows kept before this
migration have been (their ``received_at``). A partial index holds only the rows still waiting.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("processed_at IS NULL")


def upgrade() -> None:
    op.add_column("inbound_message", sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE inbound_message SET processed_at = received_at")
    op.create_index(
        "ix_inbound_message_waiting",
        "inbound_message",
        ["received_at"],
        sqlite_where=WAITING,
        postgresql_where=WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_message_waiting", table_name="inbound_message")
    with op.batch_alter_table("inbound_message") as batch:
        batch.drop_column("processed_at")
