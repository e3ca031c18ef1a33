"""indexes for the admin's subscribers list at a million subscribers

Revision ID: 0005
Revises: 0004

Btree indexes for the list's sort orders and its filters (every database). On PostgreSQL
also extended statistics on (status, next_position).

The "contains" search (``ILIKE '%text%'`` on email and name) runs on ``subscriber_search``,
a copy of each subscriber's email and name kept by triggers on ``subscriber`` (on insert,
on an update of email or name, and on SQLite on delete; PostgreSQL cascades). On
PostgreSQL it has trigram GIN indexes (``pg_trgm`` ships with PostgreSQL and is a trusted
extension, so the database owner may create it). They are not on ``subscriber`` itself
because sending updates each subscriber twice per lesson, and every such update would add
entries to them (see ``course.models.SubscriberSearch``). On SQLite the two search indexes
are plain ones (no trigram index there), so schema and models match on both databases.

On PostgreSQL every index is built ``CONCURRENTLY``, outside a transaction, so upgrading a
live database does not block signups or sending while the indexes are built; the trigger
is in place before the copy is filled, so nothing written meanwhile is missed.
"""
import sqlalchemy as sa
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
SEARCH = {"ix_subscriber_search_email_trgm": "email", "ix_subscriber_search_name_trgm": "name"}

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION subscriber_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscriber_search (subscriber_id, email, name)
    VALUES (NEW.id, NEW.email, NEW.name)
    ON CONFLICT (subscriber_id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name;
    RETURN NULL;
END $$
"""
PG_TRIGGER = """
CREATE TRIGGER subscriber_search_sync AFTER INSERT OR UPDATE OF email, name ON subscriber
FOR EACH ROW EXECUTE FUNCTION subscriber_search_sync()
"""
SQLITE_TRIGGERS = (
    """CREATE TRIGGER subscriber_search_insert AFTER INSERT ON subscriber BEGIN
        INSERT OR REPLACE INTO subscriber_search (subscriber_id, email, name)
        VALUES (NEW.id, NEW.email, NEW.name);
    END""",
    """CREATE TRIGGER subscriber_search_update AFTER UPDATE OF email, name ON subscriber
    BEGIN
        INSERT OR REPLACE INTO subscriber_search (subscriber_id, email, name)
        VALUES (NEW.id, NEW.email, NEW.name);
    END""",
    """CREATE TRIGGER subscriber_search_delete AFTER DELETE ON subscriber BEGIN
        DELETE FROM subscriber_search WHERE subscriber_id = OLD.id;
    END""",
)
BACKFILL = ("INSERT INTO subscriber_search (subscriber_id, email, name) "
            "SELECT id, email, name FROM subscriber")


def create_search_table():
    op.create_table(
        "subscriber_search",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE",
                                name=op.f("fk_subscriber_search_subscriber_id_subscriber")),
        sa.PrimaryKeyConstraint("subscriber_id", name=op.f("pk_subscriber_search")),
    )


def upgrade():
    create_search_table()
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
        op.execute(BACKFILL + " ON CONFLICT (subscriber_id) DO NOTHING")
        # Which (status, next lesson) pairs exist and how often, so the planner sees that,
        # say, "finished" and "lesson 3" never meet instead of multiplying their shares.
        op.execute("CREATE STATISTICS IF NOT EXISTS st_subscriber_status_next_position "
                   "(mcv, dependencies) ON status, next_position FROM subscriber")
        with op.get_context().autocommit_block():
            for name, columns in BTREE.items():
                op.create_index(name, "subscriber", columns, postgresql_concurrently=True)
            for name, column in SEARCH.items():
                op.create_index(name, "subscriber_search", [column], postgresql_using="gin",
                                postgresql_ops={column: "gin_trgm_ops"},
                                postgresql_concurrently=True)
        op.execute("ANALYZE subscriber")  # fills the new statistics (a sample: a second or two)
        op.execute("ANALYZE subscriber_search")
        return
    for trigger in SQLITE_TRIGGERS:
        op.execute(trigger)
    op.execute(BACKFILL)
    for name, columns in BTREE.items():
        op.create_index(name, "subscriber", columns)
    for name, column in SEARCH.items():
        op.create_index(name, "subscriber_search", [column])


def downgrade():
    # The pg_trgm extension stays: other objects may have come to depend on it.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_subscriber_status_next_position")
        op.execute("DROP TRIGGER IF EXISTS subscriber_search_sync ON subscriber")
        op.execute("DROP FUNCTION IF EXISTS subscriber_search_sync()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS subscriber_search_{name}")
    for name in SEARCH:
        op.drop_index(name, table_name="subscriber_search")
    op.drop_table("subscriber_search")
    for name in BTREE:
        op.drop_index(name, table_name="subscriber")
