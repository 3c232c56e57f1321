"""The Lua scripts every Redis adapter runs, read from the package, and what they answer."""

from __future__ import annotations

from importlib import resources
from typing import Any

# The scripts that change items or read the clock: they start with the functions of lib.lua.
_WITH_LIB = frozenset({"move", "reserve", "part", "sweep", "claim", "restore"})


def lua(name: str) -> str:
    """A script's text."""
    def text(of: str) -> str:
        return resources.files("allocation.adapters").joinpath(f"lua/{of}.lua").read_text()
    return text("lib") + text(name) if name in _WITH_LIB else text(name)


def reply_text(value: Any) -> str:
    """A script's reply as text (Redis answers bytes, or numbers)."""
    return value.decode() if isinstance(value, bytes) else str(value)
