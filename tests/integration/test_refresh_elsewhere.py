"""A refresh served by a process that never waited on the item (another server worker) after
Redis lost it, while the ledger worker has committed the item's last movements but not yet
acknowledged them (a busy machine: the worker was descheduled between the two). The outbox
still lists those movements; the refresh must see the ledger holds them rather than wait for
marks that process never heard (issue 25, item 11: such a refresh ran past the client's 10 s,
and answered 503 at the ledger wait's end)."""

from __future__ import annotations

import dataclasses

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import ledger_worker
from tests.helpers.processes import wait_until


def test_a_refresh_in_another_process_after_two_movements_and_a_loss(
        own_config: Config, namespace: str) -> None:
    # No takeover of the unacknowledged entries meanwhile: its marks would wake the refresh.
    config = dataclasses.replace(own_config, durability="sync",
                                 ledger_claim_idle_ms=600_000)
    seller, other = bootstrap(config), bootstrap(config)
    worker = ledger_worker.for_app(bootstrap(config))
    acked: list[str] = []
    worker.outbox.ack = lambda partition, ids: acked.extend(ids)  # type: ignore[method-assign]
    thread = worker.start_thread()
    try:
        seller.bus.handle(commands.InitInventory(namespace, "tee", 10))
        made = seller.bus.handle(commands.Reserve(namespace, (("tee", 3),), "r", 60, "ann"))
        seller.bus.handle(commands.ExtendReservation(namespace, made.id, 900))
        keys = list(seller.redis.scan_iter(
            match=f"{seller.health.keys.prefix}:*:{namespace}:*", count=1000))
        seller.redis.delete(*keys)  # Redis lost the namespace; its outbox keeps the entries
        # A process that heard no marks: it must not wait for them (a 503 after 10 s).
        assert other.bus.handle(commands.RefreshAll(namespace)).refreshed == 1
        # It had committed them (the sync movements were answered); their acknowledgement
        # comes after, whenever the worker runs again.
        wait_until(lambda: bool(acked), 30, "the worker to acknowledge what it wrote")
    finally:
        worker.stop()
        thread.join(timeout=30)
    figures = other.counter.read(namespace, "tee")
    assert figures is not None and (figures.held, figures.available) == (3, 7)
    for app in (seller, other):
        assert app.engine is not None
        app.engine.dispose()
