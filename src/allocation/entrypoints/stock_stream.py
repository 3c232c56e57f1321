"""The stock stream (API.md, "Stock stream"): server-sent events of an item's figures.

The WSGI route authorizes the request and answers the first event (``first_event``); served
through RSGI, the bridge then keeps the connection on the event loop, where a client costs a
slot for its next event and no request thread. One subscriber to the events channel per server
process (``Hub``) tells it which watched items changed; the hub reads the figures of such items
at most once a second each (at once when one sells out or comes back), many items in one round
trip on a thread of its own, and hands each event to every client of its item.

A stream holds a connection, so one file descriptor, for as long as it lasts: the hub admits at
most ``per_token`` streams of one token and ``per_process`` in all (``process_cap``), so that
streams never take the descriptors that sales' connections and the pools need. Once a second it
ends the streams of tokens revoked since they opened.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import resource
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from allocation import views
from allocation.adapters.counter import Counter
from allocation.adapters.redis_client import RedisClient, follow_channel
from allocation.domain.outcome import Figures
from allocation.entrypoints import metrics, replies
from allocation.runtime.process import start_thread

if TYPE_CHECKING:
    from allocation.bootstrap import Application

logger = logging.getLogger(__name__)
MIN_INTERVAL = 1.0  # seconds between two events of one item, but for selling out or back
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_SECONDS = 15.0
EVENT_ID = re.compile(rb"^id: ?(.*)$", re.MULTILINE)
TICK_SECONDS = 1.0  # revoked tokens' streams end, and idle ones get their comment, this often
READ_BATCH = 500  # items read in one round trip
# Descriptors kept from streams: sales' client connections, the Redis and PostgreSQL pools, the
# listening socket, logs and files. An eighth of a large limit, and never under this.
FD_RESERVE = 256
RETRY_AFTER_SECONDS = 5
Key = tuple[str, str]


def event(namespace: str, sku: str, figures: Figures) -> bytes:
    data = json.dumps(replies.item_body(namespace, sku, figures), separators=(",", ":"))
    return f"event: stock\nid: {figures.seq}\ndata: {data}\n\n".encode()


def first_event(app: Application, namespace: str, sku: str, last_event_id: str | None) -> bytes:
    """The item's figures now, unless the client has them already (``Last-Event-ID``)."""
    figures = views.item(app, namespace, sku)
    return b"" if last_event_id == str(figures.seq) else event(namespace, sku, figures)


def event_id(data: bytes) -> str | None:
    """The id field of a server-sent event (None where it has none)."""
    found = EVENT_ID.search(data)
    return found.group(1).decode() if found else None


def process_cap(open_files: int | None = None) -> int:
    """The streams one process may hold, given its open-file (soft) limit."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        open_files = 1 << 20
    return max(0, open_files - max(FD_RESERVE, open_files // 8))


@dataclass(eq=False)
class Stream:
    """One client's stream: its item, the token (grant id) it was opened with, and the newest
    event not yet sent (a slow client gets the newest figures, not a backlog). A future per
    wait, resolved by whoever puts, costs a twentieth of a queue and asyncio.wait an event."""

    key: Key
    grant: str | None
    pending: bytes | None = None
    last_id: str | None = None  # the event id the client has: its Last-Event-ID, then ours
    ended: bool = False
    sent_at: float = 0.0  # loop time of the last write, for the keep-alive comment
    _wake: asyncio.Future[None] | None = None

    def put(self, data: bytes) -> None:
        self.pending = data
        self._ring()

    def end(self) -> None:
        self.ended = True
        self._ring()

    def _ring(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def next(self, loop: asyncio.AbstractEventLoop) -> bytes | None:
        """What to send next, once there is something; None once the stream has ended."""
        while self.pending is None and not self.ended:
            self._wake = loop.create_future()
            await self._wake
        if self.ended:
            return None
        data, self.pending = self.pending, None
        return data


@dataclass
class _Watched:
    clients: set[Stream] = field(default_factory=set)
    sent_at: float = float("-inf")
    sold_out: bool | None = None  # as of the last event sent
    seq: int = -1
    timer: asyncio.TimerHandle | None = None


class Hub:
    """A server process's stream clients by item, fed from the events channel."""

    def __init__(self, client: RedisClient, counter: Counter, channel: str,
                 loop: asyncio.AbstractEventLoop, *, per_token: int, per_process: int,
                 revoked: Callable[[str], bool] | None = None) -> None:
        self.client, self.counter, self.channel = client, counter, channel
        self.loop = loop
        self.per_token, self.per_process = per_token, per_process
        self.revoked = revoked
        self.watched: dict[Key, _Watched] = {}
        self.streams: set[Stream] = set()
        self.by_grant: dict[str, set[Stream]] = {}
        # Items to read, in the order they came due; read on a thread of the hub's own, so that
        # however many items are watched, reading them takes no request thread.
        self._due: dict[Key, None] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stock-stream-read")
        # Items heard changed by the listener thread, and the latest availability heard of each.
        self._changes: dict[Key, int | None] = {}
        self._changes_lock = threading.Lock()

    def start(self) -> None:
        """Listen to the events channel, and tend the streams every second."""
        start_thread("stock-stream", self._listen)
        self.loop.call_later(TICK_SECONDS, self._tick)
        logger.info("stock streams: at most %d in this process, %d per token",
                    self.per_process, self.per_token)

    def open(self, key: Key, grant: str | None) -> Stream | replies.Reply:
        """Count a new stream in, or the 429 that refuses it (over a cap)."""
        if len(self.streams) >= self.per_process:
            return too_many("this server holds all the streams it can; try another or later")
        mine = self.by_grant.get(grant) if grant is not None else None
        if mine is not None and len(mine) >= self.per_token:
            return too_many(f"this token holds {self.per_token} streams already")
        stream = Stream(key, grant)
        self.streams.add(stream)
        if grant is not None:
            self.by_grant.setdefault(grant, set()).add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        """Count a stream out, and stop sending it events (once it was watching)."""
        if stream not in self.streams:
            return
        self.streams.discard(stream)
        if stream.grant is not None:
            mine = self.by_grant.get(stream.grant)
            if mine is not None:
                mine.discard(stream)
                if not mine:
                    del self.by_grant[stream.grant]
        item = self.watched.get(stream.key)
        if item is not None and stream in item.clients:
            metrics.stream_clients(stream.key[0], -1)
            item.clients.discard(stream)
            if not item.clients:
                if item.timer is not None:
                    item.timer.cancel()
                del self.watched[stream.key]
                self._due.pop(stream.key, None)

    def watch(self, stream: Stream) -> None:
        item = self.watched.setdefault(stream.key, _Watched())
        item.clients.add(stream)
        metrics.stream_clients(stream.key[0], 1)

    def _tick(self) -> None:
        try:
            self.end_revoked()
            self._keep_alive()
        finally:
            self.loop.call_later(TICK_SECONDS, self._tick)

    def end_revoked(self) -> None:
        """End the streams of every token revoked since they opened (one look-up per token,
        not per stream)."""
        if self.revoked is None:
            return
        for grant in [g for g in self.by_grant if self.revoked(g)]:
            for stream in self.by_grant.get(grant, ()):
                stream.end()

    def _keep_alive(self) -> None:
        """A comment to every stream that has sent nothing for ``KEEPALIVE_SECONDS``."""
        idle = self.loop.time() - KEEPALIVE_SECONDS
        for stream in self.streams:
            if stream.sent_at <= idle and stream.pending is None:
                stream.put(KEEPALIVE)

    def changed(self, key: Key, available: int | None) -> None:
        """An event about the item went out (on the loop). Send its figures now, or once a
        second has passed since the last."""
        item = self.watched.get(key)
        if item is None:
            return
        flips = available is not None and item.sold_out is not None and (
            (available == 0) != item.sold_out)
        due = item.sent_at + MIN_INTERVAL
        if flips or self.loop.time() >= due:
            self._send_soon(key)
        elif item.timer is None:
            item.timer = self.loop.call_at(due, self._send_soon, key)

    def _send_soon(self, key: Key) -> None:
        item = self.watched.get(key)
        if item is None:
            return
        item.timer = None
        self._due[key] = None  # if it is being read now, read once more after
        if self._reader is None:
            self._reader = self.loop.create_task(self._read_due())

    async def _read_due(self) -> None:
        try:
            while self._due:
                batch = list(itertools.islice(self._due, READ_BATCH))
                for key in batch:
                    del self._due[key]
                try:
                    read = await self.loop.run_in_executor(self._reads, self._read, batch)
                except Exception:
                    logger.warning("stock stream: could not read %d items", len(batch),
                                   exc_info=True)
                    continue
                for key, figures in read.items():
                    if figures is not None:
                        self._send(key, figures)
        finally:
            self._reader = None

    def _read(self, keys: list[Key]) -> dict[Key, Figures | None]:
        skus: dict[str, list[str]] = {}
        for namespace, sku in keys:
            skus.setdefault(namespace, []).append(sku)
        return {(namespace, sku): figures for namespace, some in skus.items()
                for sku, figures in zip(some, self.counter.read_many(namespace, some),
                                        strict=True)}

    def _send(self, key: Key, figures: Figures) -> None:
        item = self.watched.get(key)
        if item is None or figures.seq == item.seq:
            return
        data = event(*key, figures)
        item.seq, item.sold_out, item.sent_at = (figures.seq, figures.available == 0,
                                                 self.loop.time())
        for stream in item.clients:
            stream.put(data)

    def _listen(self) -> None:
        follow_channel(self.client, self.channel, self._heard, "stock stream")

    def _heard(self, data: bytes | str) -> None:
        try:
            message: dict[str, Any] = json.loads(data)
            key = (message["namespace"], message["sku"])
        except (ValueError, KeyError, TypeError):
            return
        if message.get("event") == "CommandRejected" or key not in self.watched:
            return
        available = message.get("available")
        with self._changes_lock:
            wake = not self._changes
            self._changes[key] = (available if isinstance(available, int)
                                  else self._changes.get(key))
        if wake:  # one wake-up of the loop for all heard meanwhile, not one a sale
            self.loop.call_soon_threadsafe(self._take_changes)

    def _take_changes(self) -> None:
        with self._changes_lock:
            changes, self._changes = self._changes, {}
        for key, available in changes.items():
            self.changed(key, available)


def too_many(message: str) -> replies.Reply:
    reply = replies.error(429, "too_many_streams", message)
    return replies.Reply(reply.status, reply.body,
                         (("Retry-After", str(RETRY_AFTER_SECONDS)), ("Connection", "close")))


async def serve(hub: Hub, stream: Stream, data: bytes, send: Callable[[bytes], Any],
                disconnected: asyncio.Future[Any]) -> None:
    """Stream to one client until it goes or the server ends its stream: the first event, then
    its item's, and a comment every ``KEEPALIVE_SECONDS`` so that idle connections stay open."""
    hub.watch(stream)
    disconnected.add_done_callback(lambda _: stream.end())
    try:
        if data:
            await send(data)
            stream.last_id = event_id(data) or stream.last_id
        stream.sent_at = hub.loop.time()
        while (out := await stream.next(hub.loop)) is not None:
            await send(out)
            stream.last_id = event_id(out) or stream.last_id
            stream.sent_at = hub.loop.time()
    except (OSError, RuntimeError, ConnectionError):
        pass  # the client went while we wrote
    finally:
        hub.close(stream)
