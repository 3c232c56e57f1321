"""Schema management through Alembic; production paths never call ``create_all``."""

from __future__ import annotations

import functools

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection


def alembic_config(database_url: str, connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "allocation:migrations")
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def upgrade_on(connection: Connection, revision: str = "head") -> None:
    """Upgrade through a connection the caller holds (and commits)."""
    command.upgrade(alembic_config(connection.engine.url.render_as_string(hide_password=False),
                                   connection), revision)


@functools.cache
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """Every revision the code knows, and its heads (read from the migration scripts once)."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(r.revision for r in scripts.walk_revisions()), frozenset(scripts.get_heads())


def is_current(connection: Connection) -> bool:
    """Has the database the schema this code needs? False for one never migrated, or migrated
    only as far as an older release; a revision this code does not know is a newer release's
    (migrated ahead of a rolling deploy, which the older servers must go on serving)."""
    current = frozenset(MigrationContext.configure(connection).get_current_heads())
    known, heads = _revisions()
    return bool(current) and not (current & known) - heads
