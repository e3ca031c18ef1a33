"""send requests, the request a delivery went out in, and ``unknown`` renamed ``unconfirmed``

Revision ID: 0006
Revises: 0005

``send_request`` holds one row per request handed to the mail provider, committed before
the request is written, naming its deliveries: after a crash, a kill or a job timeout it
tells a delivery whose request was written (``unconfirmed``: it may have been accepted)
from one that never left (queued again). ``delivery.request_id`` names the request a
delivery was sent or left unconfirmed in; request ids only grow, so they order requests
for the event-stream watermark (``course.unconfirmed``).
"""
import sqlalchemy as sa
from alembic import op

import course.timeutil

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "send_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", course.timeutil.UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("delivery_ids", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_request")),
    )
    op.create_index(op.f("ix_send_request_started_at"), "send_request", ["started_at"])
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("request_id", sa.Integer(), nullable=True))
    op.execute("UPDATE delivery SET status = 'unconfirmed' WHERE status = 'unknown'")


def downgrade():
    op.execute("UPDATE delivery SET status = 'unknown' WHERE status = 'unconfirmed'")
    with op.batch_alter_table("delivery") as batch:
        batch.drop_column("request_id")
    op.drop_index(op.f("ix_send_request_started_at"), table_name="send_request")
    op.drop_table("send_request")
