"""indexes for the admin's subscribers list at a million subscribers

Revision ID: 0005
Revises: 0004

Btree indexes for the list's sort orders and its filters (every database). On PostgreSQL
also extended statistics on (status, next_position), and trigram GIN indexes so "contains"
searches on email and name (``ILIKE '%text%'``) do not read the whole table. ``pg_trgm``
ships with PostgreSQL and is a trusted extension, so the database owner may create it
without being a superuser.

On SQLite the two search indexes are plain btree indexes on the same columns (SQLite has no
trigram index; a "contains" search reads the table there, which is fine at its scale). The
models declare them once, with PostgreSQL options, so the schema and the models match on
both databases.

On PostgreSQL every index is built ``CONCURRENTLY``, outside a transaction, so upgrading a
live database does not block signups or sending while the indexes are built.
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BTREE = {
    "ix_subscriber_created_at_id": ["created_at", "id"],
    "ix_subscriber_next_position_id": ["next_position", "id"],
    # A status filter with a sort order: statuses and positions go together (everyone
    # pending is at lesson 1, everyone finished past the last), so without these an index
    # in sort order could read most of the table to find one page of a status.
    "ix_subscriber_status_created_at_id": ["status", "created_at", "id"],
    "ix_subscriber_status_next_position_id": ["status", "next_position", "id"],
}
SEARCH = {"ix_subscriber_email_trgm": "email", "ix_subscriber_name_trgm": "name"}


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # Which (status, next lesson) pairs exist and how often, so the planner sees that,
        # say, "finished" and "lesson 3" never meet instead of multiplying their shares.
        op.execute("CREATE STATISTICS IF NOT EXISTS st_subscriber_status_next_position "
                   "(mcv, dependencies) ON status, next_position FROM subscriber")
        with op.get_context().autocommit_block():
            for name, columns in BTREE.items():
                op.create_index(name, "subscriber", columns, postgresql_concurrently=True)
            for name, column in SEARCH.items():
                op.create_index(name, "subscriber", [column], postgresql_using="gin",
                                postgresql_ops={column: "gin_trgm_ops"},
                                postgresql_concurrently=True)
        op.execute("ANALYZE subscriber")  # fills the new statistics (a sample: a second or two)
        return
    for name, columns in BTREE.items():
        op.create_index(name, "subscriber", columns)
    for name, column in SEARCH.items():
        op.create_index(name, "subscriber", [column])


def downgrade():
    # The pg_trgm extension stays: other objects may have come to depend on it.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_subscriber_status_next_position")
    for name in [*SEARCH, *BTREE]:
        op.drop_index(name, table_name="subscriber")
