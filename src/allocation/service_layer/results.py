"""What handlers return beyond an ``Outcome``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefreshProgress:
    refreshed: int
    after: str | None  # resume here; None when the namespace is done
