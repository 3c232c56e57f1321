"""Redis key names. Every key of one item shares the hash tag ``{namespace:partition}``, so each
script touches one cluster slot, and a namespace spreads over ``partitions`` slots."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    prefix: str = "inv"
    partitions: int = 16

    def partition(self, sku: str) -> int:
        return zlib.crc32(sku.encode()) % self.partitions

    def tag(self, namespace: str, sku: str) -> str:
        return f"{self.prefix}:{{{namespace}:{self.partition(sku)}}}"

    def item(self, namespace: str, sku: str) -> str:
        return f"{self.tag(namespace, sku)}:item:{sku}"

    def idempotency(self, namespace: str, sku: str, key: str) -> str:
        return f"{self.tag(namespace, sku)}:idem:{sku}:{key}"

    def pattern(self) -> str:
        """Matches every key of this key space (for test clean-up and tooling)."""
        return f"{self.prefix}:{{*"
