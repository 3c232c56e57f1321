"""The stock stream (API.md, "Stock stream"): server-sent events of an item's figures.

The WSGI route authorizes the request and answers the first event (``first_event``); served
through RSGI, the bridge then keeps the connection on the event loop, where a client costs a
queue and no request thread. One subscriber to the events channel per server process (``Hub``)
tells it which watched items changed; the hub reads each such item's figures at most once a
second (at once when it sells out or comes back) and hands the event to every client of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from allocation import views
from allocation.adapters.counter import Counter
from allocation.adapters.redis_client import RedisClient, follow_channel
from allocation.domain.outcome import Outcome
from allocation.entrypoints import metrics, replies

if TYPE_CHECKING:
    from allocation.bootstrap import Application

logger = logging.getLogger(__name__)
MIN_INTERVAL = 1.0  # seconds between two events of one item, but for selling out or back
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_SECONDS = 15.0
Key = tuple[str, str]


def event(namespace: str, sku: str, figures: Outcome) -> bytes:
    data = json.dumps(replies.item_body(namespace, sku, figures), separators=(",", ":"))
    return f"event: stock\nid: {figures.seq}\ndata: {data}\n\n".encode()


def first_event(app: Application, namespace: str, sku: str, last_event_id: str | None) -> bytes:
    """The item's figures now, unless the client has them already (``Last-Event-ID``)."""
    figures = views.item(app, namespace, sku)
    return b"" if last_event_id == str(figures.seq) else event(namespace, sku, figures)


@dataclass
class _Watched:
    clients: set[asyncio.Queue[bytes]] = field(default_factory=set)
    sent_at: float = float("-inf")
    sold_out: bool | None = None  # as of the last event sent
    seq: int = -1
    timer: asyncio.TimerHandle | None = None
    reading: bool = False
    again: bool = False


class Hub:
    """A server process's stream clients by item, fed from the events channel."""

    def __init__(self, client: RedisClient, counter: Counter, channel: str,
                 loop: asyncio.AbstractEventLoop, pool: Executor) -> None:
        self.client, self.counter, self.channel = client, counter, channel
        self.loop, self.pool = loop, pool
        self.watched: dict[Key, _Watched] = {}
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name="stock-stream")
        self._listener.start()

    def watch(self, key: Key, first: Outcome | None) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        item = self.watched.setdefault(key, _Watched())
        item.clients.add(queue)
        metrics.stream_clients(key[0], 1)
        if first is not None and item.seq < first.seq:
            item.seq, item.sold_out = first.seq, first.available == 0
            item.sent_at = self.loop.time()
        return queue

    def unwatch(self, key: Key, queue: asyncio.Queue[bytes]) -> None:
        metrics.stream_clients(key[0], -1)  # serve() unwatches each queue it watched, once
        item = self.watched.get(key)
        if item is not None:
            item.clients.discard(queue)
            if not item.clients:
                if item.timer is not None:
                    item.timer.cancel()
                del self.watched[key]

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
        if item.reading:
            item.again = True  # read once more when this read is done
            return
        item.reading = True
        self.loop.create_task(self._send(key, item))

    async def _send(self, key: Key, item: _Watched) -> None:
        try:
            figures = await self.loop.run_in_executor(self.pool, self.counter.read, *key)
        except Exception:
            logger.warning("stock stream: could not read %s/%s", *key, exc_info=True)
            figures = None
        item.reading = False
        if figures is not None and figures.seq != item.seq:
            data = event(*key, figures)
            item.seq, item.sold_out, item.sent_at = (figures.seq, figures.available == 0,
                                                     self.loop.time())
            for queue in item.clients:
                if queue.full():
                    queue.get_nowait()  # a slow client gets the newest figures, not a backlog
                queue.put_nowait(data)
        if item.again:
            item.again = False
            self.changed(key, None)

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
        self.loop.call_soon_threadsafe(self.changed, key,
                                       available if isinstance(available, int) else None)


async def serve(hub: Hub, key: Key, first: Outcome | None, data: bytes,
                send: Callable[[bytes], Any], disconnected: asyncio.Future[Any]) -> None:
    """Stream to one client until it goes: the first event, then its item's, and a comment
    every ``KEEPALIVE_SECONDS`` so that idle connections stay open."""
    queue = hub.watch(key, first)
    try:
        if data:
            await send(data)
        while not disconnected.done():
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getting, disconnected}, timeout=KEEPALIVE_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting in done:
                await send(getting.result())
            else:
                getting.cancel()
                if not disconnected.done():
                    await send(KEEPALIVE)
    except (OSError, RuntimeError, ConnectionError):
        pass  # the client went while we wrote
    finally:
        hub.unwatch(key, queue)
