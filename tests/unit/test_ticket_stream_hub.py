"""A ticket stream's events (entrypoints/ticket_stream.py) on a real event loop: the hub sends
a client only what it has not got (its first event, or its Last-Event-ID, says what it has)."""

from __future__ import annotations

import asyncio

import fakeredis

from allocation.domain import errors
from allocation.entrypoints import replies
from allocation.entrypoints.stock_stream import Stream, serve
from allocation.entrypoints.ticket_stream import StreamHub, ticket_key
from tests.helpers.embedded import embedded_counter
from tests.unit.test_stock_stream_hub import on_loop, until

WAITING = b'event: ticket\ndata: {"state": "waiting"}\nid: w1\nretry: 1000\n\n'
SOLD_OUT = b'event: ticket\ndata: {"state": "sold_out"}\nid: s1\nretry: 1000\n\n'


def test_the_first_event_and_the_last_event_id_are_not_sent_again() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        now = {"event": WAITING}
        hub = StreamHub(fakeredis.FakeRedis(), embedded_counter(), "events", loop,
                        per_token=5, per_process=5, tickets=lambda *_: now["event"])
        key = ticket_key("ns", "drop", "t1")
        first, back = hub.open(key, None), hub.open(key, None)
        assert isinstance(first, Stream) and isinstance(back, Stream)
        back.last_id = "w1"  # reconnected with Last-Event-ID: w1, its first event omitted
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            sent.append(data)

        gone = loop.create_future()
        served = [loop.create_task(serve(hub, first, WAITING, send, gone)),
                  loop.create_task(serve(hub, back, b"retry: 1000\n\n", send, gone))]
        await until(lambda: key in hub.watched and len(hub.watched[key].clients) == 2)
        await hub._read_tickets([key])
        assert (first.pending, back.pending) == (None, None)
        now["event"] = SOLD_OUT
        await hub._read_tickets([key])
        await until(lambda: sent.count(SOLD_OUT) == 2)
        assert sent.count(WAITING) == 1
        gone.set_result(None)
        await asyncio.gather(*served)

    on_loop(test)


def test_a_junk_ticket_takes_no_slot_and_one_ticket_holds_at_most_the_cap() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        hub = StreamHub(fakeredis.FakeRedis(), embedded_counter(), "events", loop,
                        per_token=2, per_process=3, tickets=lambda *_: WAITING,
                        genuine=lambda _ns, _sale, ticket: ticket.startswith("t"))
        junk = [hub.open(ticket_key("ns", "drop", f"x{n}"), None) for n in range(50)]
        assert {r.status for r in junk if isinstance(r, replies.Reply)} == {404}
        assert len(junk) == 50 and not hub.streams  # none took a slot
        mine = [hub.open(ticket_key("ns", "drop", "t1"), None) for _ in range(3)]
        assert [isinstance(s, Stream) for s in mine] == [True, True, False]
        refused = mine[2]
        assert isinstance(refused, replies.Reply) and refused.status == 429
        other = hub.open(ticket_key("ns", "drop", "t2"), None)  # another buyer's still opens
        assert isinstance(other, Stream)
        first = mine[0]
        assert isinstance(first, Stream)
        hub.close(first)
        hub.close(first)  # twice: counted out once
        again = hub.open(ticket_key("ns", "drop", "t1"), None)
        assert isinstance(again, Stream)
        assert isinstance(hub.open(ticket_key("ns", "drop", "t1"), None), replies.Reply)

    on_loop(test)


def test_a_ticket_no_longer_of_its_sale_ends_its_streams() -> None:
    """Redis lost the queue that numbered it (docs/adr/0046): its reconnect is 404."""
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        now: dict[str, bytes | None] = {"event": WAITING}

        def read(*_: str) -> bytes | None:
            if now["event"] is None:
                raise errors.NotFound("no such ticket of the sale drop")
            return now["event"]

        hub = StreamHub(fakeredis.FakeRedis(), embedded_counter(), "events", loop,
                        per_token=5, per_process=5, tickets=read)
        key = ticket_key("ns", "drop", "t1")
        stream = hub.open(key, None)
        assert isinstance(stream, Stream)
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            sent.append(data)

        served = loop.create_task(serve(hub, stream, WAITING, send, loop.create_future()))
        await until(lambda: key in hub.watched)
        await hub._read_tickets([key])
        assert not stream.ended
        now["event"] = None
        await hub._read_tickets([key])
        await asyncio.wait_for(served, 5)  # ended by the server
        assert stream.ended and sent == [WAITING]

    on_loop(test)
