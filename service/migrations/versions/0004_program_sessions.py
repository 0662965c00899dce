"""post-employment program sessions, invitations and attendance (issue 4)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Optional and sensitive: only used to offer women-only program sessions.
    with op.batch_alter_table("client") as batch:
        batch.add_column(sa.Column("sex", sa.String(length=32), nullable=True))

    op.create_table(
        "program_session",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("office_id", sa.Integer(), sa.ForeignKey("office.id"), nullable=False),
        sa.Column("cycle", sa.String(length=7), nullable=False),
        sa.Column("group_no", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("place", sa.String(length=200), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("women_only", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("office_id", "cycle", "group_no", name="uq_program_session_group"),
    )
    op.create_index("ix_program_session_office_id", "program_session", ["office_id"])

    op.create_table(
        "program_invitation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("office_id", sa.Integer(), sa.ForeignKey("office.id"), nullable=False),
        sa.Column("session_id", sa.Integer(), sa.ForeignKey("program_session.id"), nullable=False),
        sa.Column("client_id", sa.Integer(), sa.ForeignKey("client.id"), nullable=False),
        sa.Column("placement_id", sa.Integer(), sa.ForeignKey("placement.id"), nullable=False),
        sa.Column("delivery", sa.String(length=32), nullable=False),
        sa.Column("delivery_note", sa.String(length=200), nullable=True),
        sa.Column("outbox_id", sa.Integer(), sa.ForeignKey("outbox_message.id"), nullable=True),
        sa.Column("attendance", sa.String(length=32), nullable=True),
        sa.Column("attendance_recorded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attendance_recorded_by", sa.Integer(), sa.ForeignKey("staff_user.id"), nullable=True),
        sa.Column("follow_up_id", sa.Integer(), sa.ForeignKey("follow_up.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("session_id", "client_id", name="uq_program_invitation_client"),
    )
    op.create_index("ix_program_invitation_office_id", "program_invitation", ["office_id"])
    op.create_index("ix_program_invitation_session_id", "program_invitation", ["session_id"])
    op.create_index("ix_program_invitation_client_id", "program_invitation", ["client_id"])


def downgrade() -> None:
    op.drop_table("program_invitation")
    op.drop_table("program_session")
    with op.batch_alter_table("client") as batch:
        batch.drop_column("sex")
