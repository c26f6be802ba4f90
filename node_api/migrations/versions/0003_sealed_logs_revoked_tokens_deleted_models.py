"""Sealed task logs, revoked API tokens, deleted transient models.

- ``tasks.sealed_logs``: a task's log can hold whatever its function printed
  about the data, so it is stored encrypted under the node's master key (the
  envelope format of :mod:`airfed.node_api._crypto`). The migration cannot
  read the master key: plaintext logs already in ``tasks.logs`` are sealed
  and cleared when the node starts (``TaskService.start``).
- ``api_tokens.revoked_at``: a revoked token stays listed but is refused.
- ``models.deleted_at``, ``models.consumers`` and ``output_releases``: a
  transient model loses its encrypted file once every task that consumes it
  (``consumers``) has finished (a row in ``output_releases`` each); its
  metadata and checksum stay.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("sealed_logs", sa.LargeBinary(), nullable=True))
    op.add_column(
        "api_tokens",
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "models", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Existing rows get an empty list: their transient models wait for the
    # plan's end.
    op.add_column(
        "models",
        sa.Column("consumers", sa.JSON(), nullable=False, server_default="[]"),
    )
    op.create_table(
        "output_releases",
        sa.Column("task_key", sa.String(length=64), nullable=False),
        sa.Column("consumer_key", sa.String(length=64), nullable=False),
        sa.Column("organization", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_key", "consumer_key"),
    )


def downgrade() -> None:
    op.drop_table("output_releases")
    op.drop_column("models", "consumers")
    op.drop_column("models", "deleted_at")
    op.drop_column("api_tokens", "revoked_at")
    op.drop_column("tasks", "sealed_logs")
