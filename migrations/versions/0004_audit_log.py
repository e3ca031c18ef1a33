"""audit log of admin actions

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

import course.timeutil

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("admin_id", sa.Integer(), nullable=True),
        sa.Column("admin_email", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="SET NULL",
                                name=op.f("fk_audit_entry_subscriber_id_subscriber")),
        sa.ForeignKeyConstraint(["admin_id"], ["admin_user.id"], ondelete="SET NULL",
                                name=op.f("fk_audit_entry_admin_id_admin_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entry")),
    )
    op.create_index("ix_audit_entry_subscriber_created", "audit_entry",
                    ["subscriber_id", "created_at"])


def downgrade():
    op.drop_index("ix_audit_entry_subscriber_created", table_name="audit_entry")
    op.drop_table("audit_entry")
