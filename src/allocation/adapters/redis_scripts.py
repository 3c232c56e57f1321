"""The Lua scripts every Redis adapter runs, read from the package, and what they answer."""

from __future__ import annotations

from importlib import resources
from typing import Any

from allocation.domain.outcome import Figures

# The scripts that change items or read the clock: they start with the functions of lib.lua.
_WITH_LIB = frozenset({"move", "reserve", "part", "sweep", "claim", "restore"})
# A sale's scripts: lib.lua's clock, then sale_lib.lua.
_SALE = frozenset({"sale_put", "sale_join", "sale_advance", "sale_claim", "sale_pass",
                   "sale_now", "sale_resolve", "sale_settle"})


def lua(name: str) -> str:
    """A script's text."""
    def text(of: str) -> str:
        return resources.files("allocation.adapters").joinpath(f"lua/{of}.lua").read_text()
    if name in _SALE:
        return text("lib") + text("sale_lib") + text(name)
    return text("lib") + text(name) if name in _WITH_LIB else text(name)


def reply_text(value: Any) -> str:
    """A script's reply as text (Redis answers bytes, or numbers)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def figures(total: Any, consumed: Any, held: Any, limit: Any, seq: Any, gen: Any) -> Figures:
    """An item's figures from a script's reply or its hash's fields (numbers or bytes; no
    limit is empty or absent, and an absent seq, generation or held their zero)."""
    return Figures(int(total), int(consumed), int(held or 0), int(limit) if limit else None,
                   int(seq or 0), reply_text(gen or b""))
