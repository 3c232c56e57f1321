"""Readiness's schema check (``migrate.is_current``) on a real SQLite file: a database never
migrated, or migrated only as far as an older release, is not current; one a newer release
migrated ahead of a rolling deploy is (the older servers go on serving it)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from allocation.adapters import migrate


def test_behind_is_not_current_and_ahead_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        assert not migrate.is_current(conn)  # never migrated
    migrate.upgrade(url, "0006")
    with engine.connect() as conn:
        assert not migrate.is_current(conn)  # an older release's schema
    migrate.upgrade(url)
    with engine.connect() as conn:
        assert migrate.is_current(conn)
    with engine.begin() as conn:  # as a newer release's migration leaves it
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dnewer'"))
    with engine.connect() as conn:
        assert migrate.is_current(conn)
    engine.dispose()
