"""The cap on a token's open reservations (``MAX_OPEN_RESERVATIONS_PER_TOKEN``), counted per
process: a token's reservations made through this process, until they end here (confirm,
release) or expire. Best effort across processes (n processes let a token hold up to n times
the cap); the per-buyer cap is the exact one, checked in the counter's step with the hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A claim not yet known as a reservation (its create is under way) ends by this at the latest.
_CLAIM_MS = 86_400_000


class TokenHolds:
    def __init__(self, cap: int, clock_ms: Callable[[], int] | None = None) -> None:
        self.cap = cap
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.Lock()
        # token id -> {reservation id or claim: expires_ms}; reservation id -> token id.
        self._open: dict[str, dict[object, int]] = {}
        self._owner: dict[str, str] = {}

    def claim(self, token: str) -> object | None:
        """A place for one more reservation of ``token``, or None where it holds the cap."""
        now = self._clock_ms()
        with self._lock:
            held = self._open.setdefault(token, {})
            for rid in [rid for rid, until in held.items() if until <= now]:
                del held[rid]
                if isinstance(rid, str):
                    self._owner.pop(rid, None)
            if len(held) >= self.cap:
                return None
            place = object()
            held[place] = now + _CLAIM_MS
            return place

    def settle(self, token: str, place: object, reservation_id: str | None,
               expires_ms: int = 0) -> None:
        """The claim's create ended: as the reservation it made, or (None) as nothing new."""
        with self._lock:
            held = self._open.setdefault(token, {})
            held.pop(place, None)
            if reservation_id is not None:
                held[reservation_id] = expires_ms
                self._owner[reservation_id] = token

    def end(self, reservation_id: str) -> None:
        with self._lock:
            token = self._owner.pop(reservation_id, None)
            if token is not None:
                self._open.get(token, {}).pop(reservation_id, None)
