"""Operations: stage timing totals, worker heartbeats, result expiry.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from heartvec.jobs.models import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stage_stats",
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("total_s", sa.Float, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
        sa.Column("current_job", sa.String(32)),
    )
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("results_expired_at", UtcDateTime))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("results_expired_at")
    op.drop_table("workers")
    op.drop_table("stage_stats")
