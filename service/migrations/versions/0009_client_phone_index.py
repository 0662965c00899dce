"""an index on client.phone (issue 7, benchmark 4)

Every inbound SMS finds its sender by phone number (``latest_sms_check_in``, ``clients_by_phone``
in service/outcomes/answers.py): without an index that is a scan of every client per message.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_client_phone", "client", ["phone"])


def downgrade() -> None:
    op.drop_index("ix_client_phone", table_name="client")
