"""drop ix_outbox_message_provider_id: no query looks outbox rows up by the provider's id

The dispatch tick records every send's provider id, and each of those UPDATEs kept this index up to
date (on PostgreSQL, whose outbox updates are never HOT since ``status`` is in the partial indexes'
predicates, both UPDATEs of the tick inserted an entry into it per message). Nothing reads it:
Twilio's status callbacks find their row by ``outbox_id`` (the primary key, in the callback URL we
give Twilio) and only compare the provider id; replies are matched through ``inbound_message``,
which has its own unique ``provider_id``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_outbox_message_provider_id", table_name="outbox_message")


def downgrade() -> None:
    op.create_index("ix_outbox_message_provider_id", "outbox_message", ["provider_id"])
