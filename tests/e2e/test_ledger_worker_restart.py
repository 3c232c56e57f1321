"""`allocation ledger-worker --name`: a worker restarted under the name it had writes at once the
entries it had read before it died (delivered, never acknowledged), where a worker of another
name would wait LEDGER_CLAIM_IDLE_MS to claim them."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from tests.helpers.ledger import stored
from tests.helpers.processes import Process, allocation_command, service_env, wait_until


def test_a_worker_restarted_under_its_name_writes_what_it_had_read(
        service_config: Config, engine: Engine, namespace: str) -> None:
    # Streams of this test's own (the session's worker keeps out), and claims far off: only
    # the name can bring the entries back within the test's deadline.
    config = dataclasses.replace(service_config, ledger_claim_idle_ms=600_000,
                                 redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                                  f"r{uuid.uuid4().hex[:8]}")
    app = bootstrap(config)
    app.bus.handle(commands.InitInventory(namespace, "tee", 10))
    for n in range(4):
        assert app.bus.handle(commands.Decrement(namespace, "tee", 1, f"k{n}")).ok
    # The worker that died: it read every entry (one writer thread: consumer "<name>-0") and
    # wrote none.
    name = f"ledger-{uuid.uuid4().hex[:6]}"
    partitions = list(range(app.outbox.partitions))
    read = app.outbox.read_new(partitions, f"{name}-0", 1000)
    assert sum(len(entries) for entries in read) == 4  # the four sales
    assert stored(engine, namespace, "tee")[1] == 0

    worker = Process(allocation_command("ledger-worker", "--threads", "1", "--name", name),
                     service_env(config))
    worker.start()
    try:
        wait_until(lambda: stored(engine, namespace, "tee")[1] == 4, 20,
                   "the restarted worker to write the sales it had read")
    finally:
        worker.stop()
    assert app.outbox.backlog()[0] == 0  # written and acknowledged
