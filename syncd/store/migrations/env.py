"""Alembic's entry point: run the migrations on the connection ``syncd.store.db`` hands over.

syncd never reads an ``alembic.ini``: ``syncd.store.db.upgrade`` builds the configuration in
code and passes its open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from syncd.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata(),
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
