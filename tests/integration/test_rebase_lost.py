"""The one statement a rebuild reads a lost batch with (PostgreSQL) answers what the
repository's composition of its single-purpose reads answers, on a ledger with every kind of
movement a rebuild gives back or leaves out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from allocation.adapters import orm
from allocation.adapters.ledger_rows import append
from allocation.adapters.repository import AbstractRepository
from allocation.adapters.sql_repository import SqlAlchemyRepository
from allocation.domain.model import LedgerEntry


def _ledger(namespace: str, now: datetime) -> list[LedgerEntry]:
    hour = timedelta(hours=1)
    rows = [  # sku, seq, kind, qty, key, buyer, reservation, expires, made
        ("a", 1, "init", 10, None, None, None, None, now - 50 * hour),
        ("a", 2, "decrement", 1, "old", "ann", None, None, now - 49 * hour),  # past the window
        ("a", 3, "decrement", 2, "k2", "ann", None, None, now - hour),
        ("a", 4, "refund", 1, "k3", "ann", None, None, now - hour),
        ("a", 5, "hold", 2, None, "bob", "r1", now + hour, now),
        ("a", 6, "extend", 2, None, "bob", "r1", now + 2 * hour, now),
        ("a", 7, "extend", 2, None, "bob", "r1", now + 3 * hour, now),
        ("a", 8, "hold", 1, None, "cat", "r2", now + hour, now),
        ("a", 9, "release", 1, None, "cat", "r2", None, now),
        ("a", 10, "hold", 1, None, "dan", "r3", now + hour, now),
        ("a", 11, "confirm", 1, None, "dan", "r3", None, now),
        ("a", 12, "decrement", 1, "k2", None, None, None, now),  # the key reused: latest first
        ("b", 1, "init", 5, None, None, None, None, now),
        ("c", 1, "init", 5, None, None, None, None, now),
        ("c", 2, "hold", 5, None, None, "r4", None, now),  # no expiry: until its creation
        ("c", 3, "decrement", 2, "k1", "eve", None, None, now),
        ("c", 4, "refund", 2, "k4", "eve", None, None, now),  # eve has none left
    ]
    return [LedgerEntry(namespace, sku, seq, kind, qty, 10, 10 - seq, key, made, buyer, rid,
                        seq % 3, expires)
            for sku, seq, kind, qty, key, buyer, rid, expires, made in rows]


def test_the_one_statement_answers_what_the_single_reads_answer(
        engine: Engine, namespace: str) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    with engine.begin() as conn:
        conn.execute(insert(orm.items), [
            {"namespace": namespace, "sku": sku, "total": 10, "consumed": 1, "held": 2,
             "last_seq": seq, "version": 1, "limit_per_buyer": limit}
            for sku, seq, limit in (("a", 12, 4), ("b", 1, None), ("c", 4, 3))])
        append(conn, _ledger(namespace, now))
    since = now - timedelta(hours=48)
    skus = ["a", "b", "c", "missing"]
    with Session(engine) as session:
        repository = SqlAlchemyRepository(session)
        one = repository.rebase_lost(namespace, skus, "g2", since)
        composed = AbstractRepository.rebase_lost(repository, namespace, skus, "g2", since)
        session.rollback()
    assert one == composed
    assert list(one.skus) == ["a", "b", "c"]
    assert (one.seqs, one.limits, one.gen) == ([12, 1, 4], [4, None, 3], "g2")
    # a confirmed hold is bought; eve has none left
    assert list(zip(*one.units, strict=True)) == [("a", "ann", 2), ("a", "bob", 2),
                                                  ("a", "dan", 1)]
    hour = timedelta(hours=1)
    assert list(zip(*one.holds, strict=True)) == [
        ("a", "r1", 2, "bob", int((now + 3 * hour).timestamp() * 1000)),
        ("c", "r4", 5, "", int(now.timestamp() * 1000))]  # no expiry: until its creation
    made = int((now - hour).timestamp() * 1_000_000)
    assert list(zip(*one.keyed, strict=True)) == [  # latest first
        ("a", "k2", "decrement", 1, None, 10, -2, 0, int(now.timestamp() * 1_000_000)),
        ("a", "k3", "refund", 1, "ann", 10, 6, 1, made),
        ("a", "k2", "decrement", 2, "ann", 10, 7, 0, made),
        ("c", "k4", "refund", 2, "eve", 10, 6, 1, int(now.timestamp() * 1_000_000)),
        ("c", "k1", "decrement", 2, "eve", 10, 7, 0, int(now.timestamp() * 1_000_000))]
