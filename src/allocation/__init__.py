"""allocation: flash-sale inventory with a Redis fast path over a PostgreSQL ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from allocation.facade import InventoryManager

__all__ = ["InventoryManager"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the domain does not import SQLAlchemy, Redis and Flask.
    if name == "InventoryManager":
        from allocation.facade import InventoryManager

        return InventoryManager
    raise AttributeError(name)
