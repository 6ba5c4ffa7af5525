"""The jobs table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from heartvec.jobs.models import JsonType, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32)),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("options", JsonType, nullable=False),
        sa.Column("input", JsonType, nullable=False),
        sa.Column("metrics", JsonType),
        sa.Column("results", JsonType),
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("enqueued_at", UtcDateTime),
        sa.Column("started_at", UtcDateTime),
        sa.Column("heartbeat_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
    )
    op.create_index("ix_jobs_created_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created_id", "jobs", ["status", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("jobs")
