"""Alembic environment: run by `heartvec.jobs.database.migrate` with a live connection."""

from alembic import context

from heartvec.jobs.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
