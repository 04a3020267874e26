"""webhook_deliveries: when the last attempt was made and the start of the receiver's
answer (a bounded, printable excerpt), so the delivery log says what happened to an event
at the endpoint; earlier tables unchanged.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place (Alembic copies it there;
    # on PostgreSQL these are plain ALTER TABLE ... ADD COLUMN).
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_response", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("last_response")
        batch.drop_column("last_attempt_at")
