"""The process's copy of the tokens (API.md, "Access: tokens and roles"), which the route
table's access decision asks for a bearer token's grant.

Tokens are checked against an in-process copy of every active token, reloaded every couple of
seconds, so a check costs a hash and a dict look-up. A string not in the minted format is
refused without a look-up. A well-formed token the copy does not know (made since the last
reload) is looked up on a small executor of its own, a few at a time and within a deadline; a
request that finds no free slot, or outlives the deadline, answers 503 at once, so guessing
cannot take the threads a sale needs. Found and unknown alike are remembered until the next
reload. While the database is away the last copy keeps serving; revocations still arrive
through Redis (``token_store.RevocationFeed``), checked every ``FEED_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from allocation.adapters.token_store import (
    Grant,
    Revocations,
    TokenStore,
    checking_engine,
    digest,
)
from allocation.domain import errors

if TYPE_CHECKING:
    from allocation.bootstrap import Application

logger = logging.getLogger(__name__)
RELOAD_SECONDS = 2.0
FEED_SECONDS = 1.0
LOOKUPS = 3  # well-formed unseen tokens looked up at once, per process
# ... and at most this many a second (a burst of as many): a token made since the last reload
# is the only one a look-up can find, and the next reload brings it anyway.
LOOKUPS_PER_SECOND = 20.0
LOOKUP_SECONDS = 0.5  # a request waits this long for its token's look-up, then answers 503
# As ``TokenStore.create`` mints them: "alloc_" and 32 random bytes in urlsafe base64.
MINTED = re.compile(r"alloc_[A-Za-z0-9_-]{43}")
_UNKNOWN_LIMIT = 10_000  # unknown tokens remembered between reloads, at most


class Store(Protocol):
    def active(self) -> dict[str, Grant]: ...
    def find(self, token_hash: str) -> Grant | None: ...
    def touch(self, token_ids: Iterable[str]) -> None: ...


class TokenCache:
    def __init__(self, store: Store, reload_seconds: float = RELOAD_SECONDS,
                 revocations: Callable[[], set[str]] | None = None,
                 lookups: int = LOOKUPS, lookup_seconds: float = LOOKUP_SECONDS,
                 lookups_per_second: float = LOOKUPS_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.reload_seconds = reload_seconds
        self.lookup_seconds = lookup_seconds
        self._revocations = revocations  # ids revoked, as Redis has them
        self._grants: dict[str, Grant] = {}
        self._loaded = False
        self._unknown: set[str] = set()
        self._active_ids: frozenset[str] = frozenset()
        self._revoked: frozenset[str] = frozenset()  # heard from Redis; never forgotten
        self._used: set[str] = set()
        self._lock = threading.Lock()
        self._lookups = lookups
        self._pending: dict[str, Future[Grant | None]] = {}
        self._rate = lookups_per_second
        self._clock = clock
        self._allowance, self._counted_at = lookups_per_second, clock()
        self._executor = ThreadPoolExecutor(max_workers=lookups,
                                            thread_name_prefix="token-lookup")
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def holds(self, token: str) -> bool:
        """Whether ``grant`` can answer from memory, without a database round trip."""
        if MINTED.fullmatch(token) is None:
            return True
        token_hash = digest(token)
        return token_hash in self._grants or token_hash in self._unknown

    def grant(self, token: str, wait: float | None = None) -> Grant | None:
        """The token's grant, None if it is unknown or revoked; ``Unavailable`` if that cannot
        be told within ``wait`` seconds (``lookup_seconds`` by default)."""
        if MINTED.fullmatch(token) is None:
            return None
        token_hash = digest(token)
        found = self._grants.get(token_hash)
        if found is None and token_hash not in self._unknown:
            found = self._wait(self.look_up(token_hash),
                               self.lookup_seconds if wait is None else wait)
        if found is None or found.id in self._revoked:
            return None
        self._used.add(found.id)
        return found

    async def settle(self, token: str) -> None:
        """Wait on the event loop, not on a thread, for the token's look-up if it needs one,
        at most ``lookup_seconds``; ``grant`` then answers from memory (or 503)."""
        if self.holds(token):
            return
        try:
            future = self.look_up(digest(token))
            async with asyncio.timeout(self.lookup_seconds):
                await asyncio.wrap_future(future)
        except Exception:  # noqa: BLE001 - no slot, the deadline, a failed look-up: grant
            return  # answers 503 for each

    def revoked(self, grant_id: str) -> bool:
        """Whether the token with this id is no longer active (as of the last reload, or as
        Redis told since)."""
        return grant_id in self._revoked or (self._loaded and grant_id not in self._active_ids)

    def look_up(self, token_hash: str) -> Future[Grant | None]:
        """The look-up of one token, shared by every request that waits for it; Unavailable
        when ``lookups`` are in flight already (their slots free as they finish), or this
        second's look-ups are spent."""
        with self._lock:
            future = self._pending.get(token_hash)
            if future is not None:
                return future
            now = self._clock()
            self._allowance = min(self._rate,
                                  self._allowance + (now - self._counted_at) * self._rate)
            self._counted_at = now
            if len(self._pending) >= self._lookups or self._allowance < 1:
                raise errors.Unavailable("too many unknown tokens to check now")
            self._allowance -= 1
            future = self._executor.submit(self.store.find, token_hash)
            self._pending[token_hash] = future
        future.add_done_callback(lambda done: self._looked_up(token_hash, done))
        return future

    def _looked_up(self, token_hash: str, done: Future[Grant | None]) -> None:
        with self._lock:
            self._pending.pop(token_hash, None)
            if done.exception() is not None:
                return  # nothing learnt: asked again next time
            found = done.result()
            if found is not None:
                self._grants = {**self._grants, token_hash: found}
                self._active_ids = self._active_ids | {found.id}
            elif len(self._unknown) < _UNKNOWN_LIMIT:
                self._unknown.add(token_hash)

    @staticmethod
    def _wait(future: Future[Grant | None], seconds: float) -> Grant | None:
        try:
            return future.result(timeout=seconds)
        except Exception as exc:
            raise errors.Unavailable("cannot check the token now") from exc

    def _reload(self) -> None:
        try:
            grants = self.store.active()
        except Exception as exc:  # noqa: BLE001 - the last copy keeps serving
            logger.warning("tokens not reloaded (the database is away): %s",
                           type(exc).__name__)
            return
        with self._lock:
            self._grants, self._unknown, self._loaded = grants, set(), True
            self._active_ids = frozenset(g.id for g in grants.values())
        used, self._used = self._used, set()
        self._touch(used)

    def _hear_revocations(self) -> None:
        if self._revocations is None:
            return
        try:
            heard = self._revocations()
        except Exception as exc:  # noqa: BLE001 - the database reload still revokes
            logger.warning("revocations not read from Redis: %s", type(exc).__name__)
            return
        if not heard <= self._revoked:
            self._revoked = self._revoked | frozenset(heard)

    def _touch(self, used: Iterable[str]) -> None:
        try:
            self.store.touch(used)
        except Exception as exc:  # noqa: BLE001 - "last used" is a hint; never fail for it
            logger.warning("could not record tokens' last use: %s", type(exc).__name__)

    def start(self) -> None:
        """Reload from the database, and hear Redis's revocations, each on a thread of its
        own: a database that hangs does not hold up revocations."""
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._every, args=(self.reload_seconds, self._reload),
                                 daemon=True, name="token-reload"),
                threading.Thread(target=self._every, args=(FEED_SECONDS, self._hear_revocations),
                                 daemon=True, name="token-revocations")]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _every(self, seconds: float, step: Callable[[], None]) -> None:
        step()
        while not self._stopping.wait(seconds):
            step()


def token_cache(app: Application) -> TokenCache | None:
    """The process's copy of the tokens, started; None with ``AUTH=off`` (or no database)."""
    if app.config.auth == "off" or app.tokens is None:
        return None
    store = TokenStore(checking_engine(app.config.database_url, LOOKUPS))
    revocations = (None if app.redis is None
                   else Revocations(app.redis, app.config.redis_key_prefix).ids)
    tokens = TokenCache(store, revocations=revocations)
    tokens.start()
    return tokens
