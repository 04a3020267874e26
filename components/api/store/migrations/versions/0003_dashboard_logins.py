"""dashboard_logins (issue 28): the dashboard's logins in the store, not one process's
memory; earlier tables unchanged.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "dashboard_logins",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_dashboard_logins_key_id", "dashboard_logins", ["key_id"])
    op.create_index("ix_dashboard_logins_expires_at", "dashboard_logins", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_logins_expires_at", "dashboard_logins")
    op.drop_index("ix_dashboard_logins_key_id", "dashboard_logins")
    op.drop_table("dashboard_logins")
