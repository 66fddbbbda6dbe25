"""Alembic environment: runs against the URL set by ``app.migrate``."""

from __future__ import annotations

from alembic import context

from app.db import create_sync_engine
from app.schema import METADATA

config = context.config


def run_migrations_online() -> None:
    engine = create_sync_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
