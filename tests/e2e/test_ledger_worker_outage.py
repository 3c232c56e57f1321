"""A ledger worker rides out losing its database anywhere in a write: the connection is cut by a
proxy at the moment the worker sends its lock, its COPY, or its COMMIT (which carries the rows of
a small batch; cut before the server has it, or after it committed and before the worker heard
so). The worker process stays up, waits, and once the database is back writes every acknowledged
sale exactly once."""

from __future__ import annotations

import dataclasses
import threading
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands
from tests.helpers.processes import Process, allocation_command, service_env, wait_until
from tests.helpers.tcp_proxy import proxy_to


def ledger_keys(engine: Engine, namespace: str, sku: str) -> list[tuple[int, str | None]]:
    with engine.connect() as conn:
        return [(r.seq, r.idempotency_key) for r in conn.execute(text(
            "SELECT seq, idempotency_key FROM inventory_ledger WHERE namespace = :ns "
            "AND sku = :sku ORDER BY seq"), {"ns": namespace, "sku": sku})]


def sell(app: Application, namespace: str, keys: list[str]) -> None:
    for key in keys:
        assert app.bus.handle(commands.Decrement(namespace, "hot", 1, key)).ok


@pytest.mark.parametrize(("trigger", "after_forwarding"), [
    (b"FOR UPDATE", False),
    (b"COPY inventory_ledger", False),
    (b"COMMIT", False),
    (b"COMMIT", True),
], ids=["during-lock", "during-copy", "commit-lost", "commit-unanswered"])
def test_the_worker_waits_out_a_cut_and_writes_everything_once(
        service_config: Config, engine: Engine, namespace: str, trigger: bytes,
        after_forwarding: bool) -> None:
    own = dataclasses.replace(service_config, durability="async", ledger_claim_idle_ms=300,
                              redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                               f"o{uuid.uuid4().hex[:8]}")
    app = bootstrap(own)
    app.bus.handle(commands.InitInventory(namespace, "hot", 10_000))
    direct = make_url(own.database_url)
    with proxy_to(direct.port or 5432) as proxy:
        via_proxy = dataclasses.replace(own, database_url=direct.set(
            host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
        worker = Process(allocation_command("ledger-worker"), service_env(via_proxy))
        worker.start()
        keys = [f"k{n}" for n in range(3000)]
        try:
            # Written while the worker runs: batches of many entries, so that it uses COPY.
            sell(app, namespace, keys[:500])
            wait_until(lambda: len(ledger_keys(engine, namespace, "hot")) > 1, 60,
                       "the worker to write through the proxy")
            proxy.cut_on(trigger, after_forwarding=after_forwarding)
            rest = keys[500:]
            if trigger.startswith(b"COPY"):
                # A backlog, so that the next batch is one of many rows: those go by COPY.
                with worker.paused():
                    sell(app, namespace, rest[:500])
                rest = rest[500:]
            # Eight sellers at once: the worker writes batches of many.
            sellers = [threading.Thread(target=sell, args=(app, namespace, rest[n::8]))
                       for n in range(8) if rest[n::8]]
            for seller in sellers[:4]:  # the first half, cut mid-write
                seller.start()
            wait_until(proxy.triggered.is_set, 60, f"the worker to send {trigger!r}")
            for seller in sellers[4:]:  # the rest while the database is away
                seller.start()
            wait_until(lambda: proxy.refused >= 2, 60,
                       "the worker to try the database again while it is away")
            for seller in sellers:
                seller.join(timeout=120)
            assert worker.alive(), worker.stderr_tail()
            proxy.restore()
            wanted = set(keys)
            wait_until(lambda: len(ledger_keys(engine, namespace, "hot")) == len(wanted) + 1,
                       60, "the worker to write every acknowledged sale once back")
            rows = ledger_keys(engine, namespace, "hot")
            assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))  # gap-less
            written = [key or "" for _, key in rows[1:]]
            assert sorted(written) == sorted(wanted)  # each sale once, none missing
            assert worker.alive(), worker.stderr_tail()
            assert proxy.cuts == 1
        finally:
            worker.stop()
            if app.engine is not None:
                app.engine.dispose()
