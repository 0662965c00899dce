"""drop ix_outbox_message_office_id: no query looks outbox rows up by office

On PostgreSQL every UPDATE of an outbox row is a new tuple version in every index (never HOT:
``status`` is in the partial indexes' predicates), so the dispatch tick's two UPDATEs per message
each inserted an entry into this index too. Nothing reads it: the outbox is read by id, by its
queue and in-flight partial indexes, by idempotency key, follow-up, placement and client; and an
office is never deleted (the only thing its foreign key would want the index for). SQLite never
maintained it in the tick (``office_id`` does not change), so there it only goes.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_outbox_message_office_id", table_name="outbox_message")


def downgrade() -> None:
    op.create_index("ix_outbox_message_office_id", "outbox_message", ["office_id"])
