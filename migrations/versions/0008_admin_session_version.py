"""a session version per admin: logout, a new password and disabling end every session

Revision ID: 0008
Revises: 0007

Every admin session carries the version it was signed in under and loads only while the
admin's row still holds it (``course/admin/auth.py``), so bumping it ends every copy of
every cookie of that admin at once. It replaces the "session epoch" rows that disabling an
admin used to leave in ``app_state``, which are deleted here. Sessions signed in before
the upgrade carry the old fingerprint and end: each admin signs in once more.
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("admin_user") as batch_op:
        batch_op.add_column(sa.Column("session_version", sa.Integer(), nullable=False,
                                      server_default="1"))
    op.execute("DELETE FROM app_state WHERE key LIKE 'admin_session_epoch:%'")


def downgrade():
    with op.batch_alter_table("admin_user") as batch_op:
        batch_op.drop_column("session_version")
