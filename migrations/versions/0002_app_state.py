"""app state (sending paused)

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

import course.timeutil

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "app_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_app_state")),
    )


def downgrade():
    op.drop_table("app_state")
