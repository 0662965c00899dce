"""the outbox's status indexes over only the rows in flight (issue 7, benchmark 3)

Every message changes status twice (queued -> sending -> sent), and both UPDATEs of the dispatch
tick had to keep a whole-table index on ``(status, next_attempt_at)`` up to date, and the claim
one on ``claim_token``, which nothing looks rows up by (results are recorded by id, under the
token). Now: ``ix_outbox_message_due`` holds only the queued rows, as ``(next_attempt_at, id)``,
the claim's order (so PostgreSQL reads the batch off the index without sorting); and
``ix_outbox_message_sending`` only the rows being sent, by ``claimed_at`` (``reconcile_stuck``).
A sent row is in neither, so recording a send touches no status index.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")
SENDING = sa.text("status = 'sending'")


def upgrade() -> None:
    op.drop_index("ix_outbox_message_claim_token", table_name="outbox_message")
    op.drop_index("ix_outbox_message_due", table_name="outbox_message")
    op.create_index(
        "ix_outbox_message_due",
        "outbox_message",
        ["next_attempt_at", "id"],
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )
    op.create_index(
        "ix_outbox_message_sending",
        "outbox_message",
        ["claimed_at"],
        sqlite_where=SENDING,
        postgresql_where=SENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_message_sending", table_name="outbox_message")
    op.drop_index("ix_outbox_message_due", table_name="outbox_message")
    op.create_index("ix_outbox_message_due", "outbox_message", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_message_claim_token", "outbox_message", ["claim_token"])
