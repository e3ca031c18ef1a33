"""subscribers marked as tests (the rehearsal's address), left out of every figure

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN (no batch copy of the table on SQLite, which would drop the
    # triggers of migration 0005).
    op.add_column("subscriber", sa.Column("is_test", sa.Boolean(), server_default=sa.false(),
                                          nullable=False))
    # Figures leave test subscribers out by looking them up: the few true rows, by index.
    # A partial index of only those rows: sending updates every subscriber twice per
    # lesson, and a full index would take an entry on each of those updates.
    op.create_index(op.f("ix_subscriber_is_test"), "subscriber", ["is_test"],
                    postgresql_where=sa.text("is_test"), sqlite_where=sa.text("is_test"))
    # Rehearsals made before this migration are tests too.
    op.execute("UPDATE subscriber SET is_test = true WHERE consent_version = 'rehearsal'")


def downgrade():
    op.drop_index(op.f("ix_subscriber_is_test"), table_name="subscriber")
    op.drop_column("subscriber", "is_test")
