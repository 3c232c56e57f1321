"""`allocation ledger-worker --idle-priority`: every thread of the process runs at SCHED_IDLE,
and the worker still writes the ledger when the machine has time to spare."""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

from sqlalchemy.engine import Engine

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints.ledger_worker import DEFAULT_THREADS
from tests.helpers.ledger import stored
from tests.helpers.processes import Process, allocation_command, service_env, wait_until


def test_an_idle_priority_worker_runs_every_thread_idle_and_writes(
        service_config: Config, engine: Engine) -> None:
    # Streams of this test's own: the session's ledger worker keeps out of them.
    config = dataclasses.replace(service_config, durability="async",
                                 redis_key_prefix=f"{service_config.redis_key_prefix}:"
                                                  f"p{uuid.uuid4().hex[:8]}")
    worker = Process(allocation_command("ledger-worker", "--idle-priority"),
                     service_env(config))
    worker.start()
    try:
        assert worker.proc is not None
        tasks = Path(f"/proc/{worker.proc.pid}/task")
        # the main thread and its writers
        wait_until(lambda: len(list(tasks.iterdir())) >= 1 + DEFAULT_THREADS, 30,
                   "the worker's writer threads to start")
        policies = {int(t.name): os.sched_getscheduler(int(t.name)) for t in tasks.iterdir()}
        assert set(policies.values()) == {os.SCHED_IDLE}, policies

        app = bootstrap(config)
        app.bus.handle(commands.InitInventory("prio", "a", 10))
        for n in range(7):
            app.bus.handle(commands.Decrement("prio", "a", 1, f"k{n}"))
        wait_until(lambda: stored(engine, "prio", "a") == (10, 7, 8), 30,
                   "the idle-priority worker to write the 7 sales")
        assert app.engine is not None
        app.engine.dispose()
    finally:
        worker.stop()

