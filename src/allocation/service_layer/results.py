"""What handlers return beyond an ``Outcome``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class RefreshProgress:
    refreshed: int
    after: str | None  # resume here; None when the namespace is done


@dataclass(frozen=True)
class Reservation:
    """A reservation as clients see it (API.md, "Reservations")."""

    id: str
    namespace: str
    state: str
    lines: tuple[tuple[str, int], ...]
    buyer: str | None
    created_ms: int
    expires_ms: int
    replayed: bool = False

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires_ms / 1000, UTC)
