"""a partial index on the audit trail's summary events (record_id IS NULL)

A record's history (``GET /api/v1/audit?record_id=``) also lists the summary events that name it
(a dispatch batch's claim and sends); this index keeps that search to the office's summaries.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_event_summary",
        "audit_event",
        ["office_id", "record_type"],
        sqlite_where=sa.text("record_id IS NULL"),
        postgresql_where=sa.text("record_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_audit_event_summary", table_name="audit_event")
