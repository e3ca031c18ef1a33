"""human opens, course completion, outgoing webhooks

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

import course.timeutil

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("subscriber") as batch_op:
        batch_op.add_column(sa.Column("completed_at", course.timeutil.UTCDateTime(), nullable=True))
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.add_column(
            sa.Column("human_opened_at", course.timeutil.UTCDateTime(), nullable=True)
        )
    op.create_table(
        "outgoing_webhook",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.Column("delivered_at", course.timeutil.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_webhook")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outgoing_webhook_event_id")),
    )
    op.create_index("ix_outgoing_webhook_status_created_at", "outgoing_webhook",
                    ["status", "created_at"])


def downgrade():
    op.drop_index("ix_outgoing_webhook_status_created_at", table_name="outgoing_webhook")
    op.drop_table("outgoing_webhook")
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_column("human_opened_at")
    with op.batch_alter_table("subscriber") as batch_op:
        batch_op.drop_column("completed_at")
