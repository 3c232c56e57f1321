"""The ledger's progress on Redis: each item's mark is a field of its hash (one slot, so it
works on a cluster), and every batch's marks are also published on one channel. Each process
subscribes once and wakes its waiters from the messages; a waiter that hears nothing for a while
reads the mark itself, so a lost message (pub/sub is at-most-once) costs latency, not a wrong
answer."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping

from allocation.adapters.ledger_progress import (
    AWAY,
    AWAY_TTL_SECONDS,
    REPLACED,
    TIMEOUT,
    WRITTEN,
    ItemKey,
    LedgerProgress,
    Mark,
    Marks,
    Waited,
)
from allocation.adapters.redis_client import (
    RedisClient,
    follow_channel,
    unavailable_on_connection_error,
)
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import evalsha_many, lua
from allocation.runtime.process import start_thread


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

logger = logging.getLogger(__name__)
# How long a waiter trusts the channel before it reads the mark itself; and how long a process
# trusts what it last read of the writers' report that the record is away.
RECHECK_SECONDS = 0.1
AWAY_RECHECK_SECONDS = 0.1


class RedisLedgerProgress(LedgerProgress):
    def __init__(self, client: RedisClient, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self.channel = keys.ledger_written()
        self.marks = Marks()
        self._script = lua("mark")
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # A key of its own beside the channel: read with a GET, one per process a tenth of a
        # second at most, whatever the number of waiters.
        self.away_key = f"{self.channel}:away"
        self._away = (False, 0.0)  # (reported away, when read)

    def report(self, away: bool) -> None:
        with unavailable_on_connection_error():
            if away:
                self.client.set(self.away_key, b"1", px=int(AWAY_TTL_SECONDS * 1000))
            else:
                self.client.delete(self.away_key)
        self._away = (away, time.monotonic())

    def away(self) -> bool:
        reported, read_at = self._away
        now = time.monotonic()
        if now - read_at < AWAY_RECHECK_SECONDS:
            return reported
        try:
            reported = bool(self.client.exists(self.away_key))
        except Exception:  # noqa: BLE001 - Redis away too: the wait itself decides
            reported = False
        self._away = (reported, now)
        return reported

    def mark(self, written: Mapping[ItemKey, Mark]) -> None:
        if not written:
            return
        with unavailable_on_connection_error():
            # The marks and their announcement in one round trip.
            replies = evalsha_many(self.client, self._script, self._sha, [
                ([self.keys.item(ns, sku)], [gen, seq])
                for (ns, sku), (gen, seq) in written.items()], then=("PUBLISH", self.channel,
                json.dumps([[ns, sku, seq, gen] for (ns, sku), (gen, seq) in written.items()])))
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        self.marks.raise_to(written)

    def wait(self, namespace: str, sku: str, gen: str, seq: int, timeout: float) -> Waited:
        item = (namespace, sku)
        self._listen()
        deadline = time.monotonic() + timeout
        while True:
            until = min(deadline, time.monotonic() + RECHECK_SECONDS)
            if self.marks.wait(item, gen, seq, until):
                return WRITTEN
            stored = self.read(namespace, sku)
            if stored is not None:
                if stored[0] != gen:
                    return REPLACED  # reloaded under another generation since
                if stored[1] >= seq:
                    self.marks.raise_to({item: stored})
                    return WRITTEN
            if self.away():
                return AWAY
            if time.monotonic() >= deadline:
                return TIMEOUT

    def written_here(self, namespace: str, sku: str, gen: str, seq: int) -> bool:
        self._listen()  # a deferred waiter's marks come from the channel too
        return super().written_here(namespace, sku, gen, seq)

    def read(self, namespace: str, sku: str) -> Mark | None:
        """The item's mark as Redis holds it; None where Redis holds no such item."""
        with unavailable_on_connection_error():
            written, gen = self.client.hmget(self.keys.item(namespace, sku), ["written", "gen"])
        if written is None and gen is None:
            return None
        return _text(gen or b""), int(written or 0)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        with self._start_lock:
            if self._listener is None:
                self._listener = start_thread("ledger-progress", self._follow)

    def _follow(self) -> None:
        """Apply the channel's marks for as long as the process lives (waiters read marks
        themselves while it resubscribes)."""
        follow_channel(self.client, self.channel, self._heard, "ledger progress")

    def _heard(self, data: bytes | str) -> None:
        self.marks.raise_to({(ns, sku): (gen, int(seq)) for ns, sku, seq, gen
                             in json.loads(data)})
