"""What every handler is given besides its command: one typed ``Services``, built once by
``bootstrap``. A handler that needs a unit of work makes one from ``uow_factory``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from allocation.adapters.counter import Counter
from allocation.adapters.locks import ItemLocks
from allocation.adapters.outbox import Outbox
from allocation.adapters.sale_queue import SaleQueue, Signing
from allocation.domain import events
from allocation.domain.outcome import Figures, Outcome
from allocation.service_layer.durability import Durability
from allocation.service_layer.sale_room import SaleRoom
from allocation.service_layer.shared_rebuilds import SharedRebuilds
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)
Publish = Callable[[events.Event], None]


def announce(publish: Publish, raised: Iterable[events.Event]) -> None:
    """Publish events of a change already made: a failure to publish undoes nothing."""
    for event in raised:
        try:
            publish(event)
        except Exception:
            logger.exception("could not publish %r", event)


class MovementEvents(Protocol):
    """The events of the counter's movements and of its reservations' lines, once applied."""

    def moved(self, kind: str, namespace: str, sku: str, qty: int, key: str | None,
              outcome: Outcome, buyer: str | None) -> None: ...

    def held(self, kind: str, namespace: str, sku: str, qty: int, reservation_id: str,
             key: str | None, figures: Figures) -> None: ...


class PublishMovements:
    """Builds the events and publishes them, for a counter that does not."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish

    def moved(self, kind: str, namespace: str, sku: str, qty: int, key: str | None,
              outcome: Outcome, buyer: str | None) -> None:
        after = outcome.figures
        announce(self.publish, events.of_movement(kind, namespace, sku, qty, key, after.total,
                                                  after.consumed, buyer))

    def held(self, kind: str, namespace: str, sku: str, qty: int, reservation_id: str,
             key: str | None, figures: Figures) -> None:
        if kind not in events.HOLD_EVENTS:
            return
        moved = events.HOLD_EVENTS[kind](namespace, sku, figures.total, figures.consumed,
                                         reservation_id, qty, held=figures.held)
        if isinstance(moved, events.Reserved):
            moved = dataclasses.replace(moved, idempotency_key=key)
        announce(self.publish, [moved])


@dataclasses.dataclass(frozen=True)
class Services:
    uow_factory: Callable[[], AbstractUnitOfWork]
    counter: Counter
    outbox: Outbox
    publish: Publish  # events the service layer raises itself (an item initialised)
    # None: the counter publishes them itself, in the atomic step that records them.
    movement_events: MovementEvents | None
    item_locks: ItemLocks
    durability: Durability  # with the ledger writers' progress marks
    rebuilds: SharedRebuilds  # refreshes of one item share a rebuild
    ledger_wait_seconds: float  # how long a rebuild waits for the ledger to catch up
    open_reservations_per_buyer: int  # 0: no cap
    record_drift: Callable[[str, int], None]  # a drift check's count, kept for /metrics
    sale_queue: SaleQueue  # the sales' queues and passes
    sales: SaleRoom  # the open sales, their gates and queue figures, as this process knows
    signing: Signing  # a sale's tickets and passes
