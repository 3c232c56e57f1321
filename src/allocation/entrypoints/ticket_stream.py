"""A ticket's stream (API.md, "Waiting room"): the stock streams' machinery (``stock_stream``:
one hub per server process, its caps, served on the event loop) with ticket streams beside the
items'. A ticket's answer changes with its sale's figures, which this process keeps fresh
(``service_layer.sale_room``), not with the events channel: every second the hub reads the
watched tickets' answers on its own thread (a waiting one costs no round trip) and sends each
one that changed. A ticket is the credential of its streams as a token is of the items': a junk
one is answered 404 before it takes a slot (its signature read on the loop, no I/O), and one
ticket holds at most ``per_token`` streams. A ticket that is no longer its sale's (Redis lost the
queue that numbered it: docs/adr/0046) ends its streams: the client's reconnect is 404, and it
joins again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from allocation.adapters.counter import Counter
from allocation.adapters.redis_client import RedisClient
from allocation.domain import errors
from allocation.entrypoints import replies
from allocation.entrypoints.stock_stream import Hub, Key, Stream, event_id, too_many

logger = logging.getLogger(__name__)
# Its event; None: not to be read now. ``errors.NotFound``: not a ticket of the sale (any more).
TicketReader = Callable[[str, str, str], bytes | None]
TicketCheck = Callable[[str, str, str], bool]  # signed by this deployment for this sale


_GONE = b"\0gone"  # read as no ticket of its sale: its streams end (never an event's bytes)


def ticket_key(namespace: str, sale: str, ticket: str) -> Key:
    """A ticket's place among the hub's keys: no sku holds the NUL, so no item's key is it."""
    return namespace, f"\0{sale}/{ticket}"


def _ticket_of(key: Key) -> tuple[str, str, str] | None:
    namespace, rest = key
    if not rest.startswith("\0"):
        return None
    sale, _, ticket = rest[1:].partition("/")
    return namespace, sale, ticket


class StreamHub(Hub):
    """The stock streams' hub, serving tickets' streams too."""

    def __init__(self, client: RedisClient, counter: Counter, channel: str,
                 loop: asyncio.AbstractEventLoop, *, per_token: int, per_process: int,
                 revoked: Callable[[str], bool] | None = None, tickets: TicketReader,
                 genuine: TicketCheck | None = None) -> None:
        super().__init__(client, counter, channel, loop, per_token=per_token,
                         per_process=per_process, revoked=revoked)
        self.tickets = tickets
        self.genuine = genuine
        self._per_ticket: dict[Key, int] = {}
        self._sent: dict[Key, bytes] = {}
        self._reading: asyncio.Task[None] | None = None

    def open(self, key: Key, grant: str | None) -> Stream | replies.Reply:
        where = _ticket_of(key)
        if where is None:
            return super().open(key, grant)
        if self.genuine is not None and not self.genuine(*where):
            return replies.error(404, "not_found", f"no such ticket of the sale {where[1]}")
        if self._per_ticket.get(key, 0) >= self.per_token:
            return too_many(f"this ticket holds {self.per_token} streams already")
        stream = super().open(key, grant)
        if isinstance(stream, Stream):
            self._per_ticket[key] = self._per_ticket.get(key, 0) + 1
        return stream

    def _tick(self) -> None:
        watched = [k for k in self.watched if _ticket_of(k) is not None]
        if watched and self._reading is None:
            self._reading = self.loop.create_task(self._read_tickets(watched))
        super()._tick()

    async def _read_tickets(self, keys: list[Key]) -> None:
        try:
            read = await self.loop.run_in_executor(self._reads, self._read_all, keys)
        except Exception:
            logger.warning("ticket streams: could not read %d tickets", len(keys),
                           exc_info=True)
            return
        finally:
            self._reading = None
        for key, data in read.items():
            item = self.watched.get(key)
            if item is not None and data is _GONE:
                for stream in item.clients:
                    stream.end()
                continue
            if item is None or data is None or self._sent.get(key) == data:
                continue
            self._sent[key] = data
            fresh = event_id(data)
            for stream in item.clients:
                if fresh == stream.last_id:  # it has this one (its first, or Last-Event-ID)
                    stream.pending = None
                else:
                    stream.put(data)

    def _read_all(self, keys: list[Key]) -> dict[Key, bytes | None]:
        found: dict[Key, bytes | None] = {}
        for key in keys:
            where = _ticket_of(key)
            assert where is not None
            try:
                found[key] = self.tickets(*where)
            except errors.NotFound:  # its sale's queue is another now, or the sale is gone
                found[key] = _GONE
            except Exception:  # noqa: BLE001 - a ticket that cannot be read now is tried again
                found[key] = None
        return found

    def close(self, stream: Stream) -> None:
        if stream in self.streams and stream.key in self._per_ticket:
            left = self._per_ticket.pop(stream.key) - 1
            if left:
                self._per_ticket[stream.key] = left
        super().close(stream)
        if stream.key not in self.watched:
            self._sent.pop(stream.key, None)
