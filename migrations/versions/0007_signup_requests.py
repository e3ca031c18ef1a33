"""signup requests: each confirmation link bound to its own signup

Revision ID: 0007
Revises: 0006

Every signup (and every "send me a new link") becomes a ``signup_request`` row holding
that signup's address, name, time zone and consent, the nonce its confirmation link
carries, and whether its confirmation was sent. The web request writes only this row; a
job finds or creates the subscriber. Confirming applies the row whose link was used.

Pending subscribers of before this revision get one row each, with their current data,
an empty nonce (the links already mailed to them carry none) and ``sent_at`` set, so
those links keep working and nobody is mailed a second time.
"""
import sqlalchemy as sa
from alembic import op

import course.timeutil

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "signup_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("consent_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.Column("consent_ip", sa.String(length=45), nullable=False),
        sa.Column("consent_user_agent", sa.String(length=512), nullable=False),
        sa.Column("consent_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.Column("queued_at", course.timeutil.UTCDateTime(), nullable=True),
        sa.Column("sent_at", course.timeutil.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("confirmed_at", course.timeutil.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE",
                                name=op.f("fk_signup_request_subscriber_id_subscriber")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signup_request")),
    )
    op.create_index("ix_signup_request_subscriber_id_created_at", "signup_request",
                    ["subscriber_id", "created_at"])
    op.create_index("ix_signup_request_state_sent_at", "signup_request", ["state", "sent_at"])
    op.execute(
        "INSERT INTO signup_request (email, subscriber_id, nonce, state, name, timezone, consent_at,"
        " consent_ip, consent_user_agent, consent_version, created_at, queued_at, sent_at,"
        " attempts)"
        " SELECT email, id, '', 'owed', name, timezone, COALESCE(consent_at, created_at), consent_ip,"
        " consent_user_agent, consent_version, COALESCE(consent_at, created_at),"
        " COALESCE(consent_at, created_at), COALESCE(consent_at, created_at), 1"
        " FROM subscriber WHERE status = 'pending'"
    )


def downgrade():
    op.drop_index("ix_signup_request_state_sent_at", table_name="signup_request")
    op.drop_index("ix_signup_request_subscriber_id_created_at", table_name="signup_request")
    op.drop_table("signup_request")
