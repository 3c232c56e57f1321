"""The Lua scripts every Redis adapter runs, read from the package."""

from __future__ import annotations

from importlib import resources


def lua(name: str) -> str:
    """A script's text; those that change items start with the functions of lib.lua."""
    def text(of: str) -> str:
        return resources.files("allocation.adapters").joinpath(f"lua/{of}.lua").read_text()
    return text("lib") + text(name) if name in ("move", "reserve", "part", "sweep") else text(name)
