"""PostgreSQL reads the array literal a rebuild passes its SKUs in as the same strings."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from allocation.adapters.sql_arrays import text_array


def test_postgresql_reads_back_every_value(engine: Engine) -> None:
    values = ["a", "NULL", "null", "b-1.x_2", 'say "hi"', "back\\slash", "c,d", "{e}", " f "]
    with engine.connect() as conn:
        found = conn.execute(text("SELECT CAST(:a AS text[])"), {"a": text_array(values)})
        assert found.scalar() == values
