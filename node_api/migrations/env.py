"""Alembic environment: runs on the connection that ``upgrade`` passes in."""

from __future__ import annotations

from alembic import context

from airfed.node_api._db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
