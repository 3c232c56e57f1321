"""The Lua scripts every Redis adapter runs, read from the package."""

from __future__ import annotations

from importlib import resources

# The scripts that change items or read the clock: they start with the functions of lib.lua.
_WITH_LIB = frozenset({"move", "reserve", "part", "sweep", "claim", "restore"})


def lua(name: str) -> str:
    """A script's text."""
    def text(of: str) -> str:
        return resources.files("allocation.adapters").joinpath(f"lua/{of}.lua").read_text()
    return text("lib") + text(name) if name in _WITH_LIB else text(name)
