"""Redis key names. An item's keys share the hash tag ``{partition}``, where the partition is a
stable hash of (namespace, sku): each script touches one cluster slot, a namespace spreads over
all partitions, and the outbox streams are a fixed set the ledger workers know without searching.
Namespaces stay apart in every key name."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    prefix: str = "inv"
    partitions: int = 16

    def partition(self, namespace: str, sku: str) -> int:
        return zlib.crc32(f"{namespace}/{sku}".encode()) % self.partitions

    def partitions_of(self, namespace: str, skus: Sequence[str]) -> list[int]:
        """``partition`` of many items of a namespace (a rebuild asks of thousands)."""
        crc32, partitions = zlib.crc32, self.partitions
        return [crc32(f"{namespace}/{sku}".encode()) % partitions for sku in skus]

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}"

    def item(self, namespace: str, sku: str) -> str:
        return f"{self._tag(self.partition(namespace, sku))}:item:{namespace}:{sku}"

    def buyers(self, namespace: str, sku: str) -> str:
        """The item's buyers: buyer -> units bought and held (for its limit per buyer)."""
        return f"{self._tag(self.partition(namespace, sku))}:buyers:{namespace}:{sku}"

    def holds(self, namespace: str, sku: str) -> str:
        """The item's open holds: reservation id -> "qty|expires_ms|buyer"."""
        return f"{self._tag(self.partition(namespace, sku))}:holds:{namespace}:{sku}"

    def expiries(self, namespace: str, sku: str) -> str:
        """The item's open holds by expiry (a sorted set)."""
        return f"{self._tag(self.partition(namespace, sku))}:expiries:{namespace}:{sku}"

    def items_in(self, partition: int, namespace: str, skus: Sequence[str]) -> list[str]:
        """The item hashes of many items of one partition (a rebuild names thousands)."""
        tag = self._tag(partition)
        return [f"{tag}:item:{namespace}:{sku}" for sku in skus]

    def parts_in(self, partition: int, namespace: str, skus: Sequence[str]) -> list[str]:
        """The buyers, holds and expiries keys of many items of one partition: all the items'
        buyers keys, then their holds keys, then their expiries keys."""
        tag = self._tag(partition)
        return [f"{tag}:{kind}:{namespace}:{sku}" for kind in ("buyers", "holds", "expiries")
                for sku in skus]

    def idempotency_in(self, partition: int, namespace: str, sku: str, key: str) -> str:
        """``idempotency`` of an item whose partition the caller knows."""
        return f"{self._tag(partition)}:idem:{namespace}:{sku}:{key}"

    def tally(self, partition: int) -> str:
        """A partition's count of holds started and ended: "namespace\\nunits:kind" and
        "namespace\\nholds:kind" -> how many (kind: hold, confirm, release, expire)."""
        return f"{self._tag(partition)}:tally"

    def tally_of(self, namespace: str, sku: str) -> str:
        return self.tally(self.partition(namespace, sku))

    def reservation(self, namespace: str, partition: int, reservation_id: str) -> str:
        """A reservation, kept in the partition its idempotency key names."""
        return f"{self._tag(partition)}:res:{namespace}:{reservation_id}"

    def open_reservations(self, namespace: str, buyer: str) -> str:
        """A buyer's open reservations in the namespace: ids by expiry (a sorted set)."""
        return f"{self._tag(self.partition(namespace, chr(0) + buyer))}:open:{namespace}:{buyer}"

    def due(self, partition: int) -> str:
        """A partition's items with open holds, by their next expiry (the sweeper's list)."""
        return f"{self._tag(partition)}:due"

    def idempotency(self, namespace: str, sku: str, key: str) -> str:
        return f"{self._tag(self.partition(namespace, sku))}:idem:{namespace}:{sku}:{key}"

    def of_item(self, namespace: str, sku: str) -> tuple[tuple[str, ...], str]:
        """The item's keys as its scripts' steps take them (item, outbox, buyers, holds,
        expiries, tally), and what its idempotency keys start with: ``idempotency`` is that
        and the key."""
        return ((self.item(namespace, sku), self.outbox_of(namespace, sku),
                 self.buyers(namespace, sku), self.holds(namespace, sku),
                 self.expiries(namespace, sku), self.tally_of(namespace, sku)),
                self.idempotency(namespace, sku, ""))

    def outbox(self, partition: int) -> str:
        return f"{self._tag(partition)}:outbox"

    def outbox_of(self, namespace: str, sku: str) -> str:
        return self.outbox(self.partition(namespace, sku))

    def clock(self, partition: int) -> str:
        """Where a test stops the scripts' clock in a partition (lib.lua's now_ms): a moment in
        ms it then moves. Never written outside the tests."""
        return f"{self._tag(partition)}:clock"

    def sale(self, namespace: str, sale: str) -> tuple[str, str, str, str, str, str, str]:
        """A sale's queue, all in one slot (adapters/lua/sale_lib.lua says what each holds):
        its sale hash, buyers, outstanding passes, claims, ended passes, resolved uses and
        the holds that keep passes."""
        tag = self._tag(self.partition(namespace, "\x01sale:" + sale))
        name = f"{namespace}:{sale}"
        return (f"{tag}:sale:{name}", f"{tag}:sale-buyers:{name}",
                f"{tag}:sale-outstanding:{name}", f"{tag}:sale-claims:{name}",
                f"{tag}:sale-passes:{name}", f"{tag}:sale-resolved:{name}",
                f"{tag}:sale-holds:{name}")

    def dead_letters(self, partition: int) -> str:
        return f"{self._tag(partition)}:outbox:dead"

    def ledger_written(self) -> str:
        """The channel on which ledger writers announce how far they have written."""
        return f"{self.prefix}:ledger-written"

    def drift(self) -> str:
        return f"{self.prefix}:drift"

    def pattern(self) -> str:
        """Matches every key of this key space (for test clean-up and tooling)."""
        return f"{self.prefix}:*"
