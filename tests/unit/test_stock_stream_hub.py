"""The stock stream hub's decisions, on a real event loop over the production counter on the
embedded Redis: the caps per token and per process, ending a revoked token's streams, and reading
many watched items in few round trips off the request threads."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Sequence

import fakeredis
import pytest

from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.config import Config
from allocation.domain.outcome import Figures
from allocation.entrypoints import replies, stock_stream
from allocation.entrypoints.stock_stream import Hub, Stream
from tests.helpers.embedded import embedded_client, embedded_counter, fresh_prefix


class CountingCounter(RedisCounter):
    """Records each read: how many round trips, on which threads."""

    def __init__(self) -> None:
        super().__init__(embedded_client(), KeySpace(fresh_prefix()))
        self.reads: list[tuple[int, str]] = []

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Figures | None]:
        self.reads.append((len(skus), threading.current_thread().name))
        return super().read_many(namespace, skus)


def on_loop(test: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    async def run() -> None:
        await test(asyncio.get_running_loop())

    asyncio.run(run())


async def until(check: Callable[[], bool], seconds: float = 5) -> None:
    """Yield to the loop until ``check`` holds, failing at the deadline."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), seconds)


def hub(loop: asyncio.AbstractEventLoop, counter: RedisCounter | None = None,
        revoked: Callable[[str], bool] | None = None, per_token: int = 2,
        per_process: int = 3) -> Hub:
    return Hub(fakeredis.FakeRedis(), counter or embedded_counter(), "events", loop,
               per_token=per_token, per_process=per_process, revoked=revoked)


def refused(answer: Stream | replies.Reply) -> bool:
    if isinstance(answer, Stream):
        return False
    assert (answer.status, answer.body["error"]) == (429, "too_many_streams")
    assert dict(answer.headers)["Retry-After"].isdecimal()
    return True


def test_a_token_holds_at_most_its_cap_and_the_process_at_most_its_own() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        streams = hub(loop, per_token=2, per_process=3)
        key = ("ns", "tee")
        first, second = streams.open(key, "a"), streams.open(key, "a")
        assert not refused(first) and not refused(second)
        assert refused(streams.open(key, "a"))  # the token's cap
        other = streams.open(key, "b")
        assert not refused(other)
        assert refused(streams.open(key, "c")) and refused(streams.open(key, None))  # full
        assert isinstance(first, Stream) and isinstance(other, Stream)
        streams.close(first)
        assert not refused(streams.open(key, "a"))  # a closed stream leaves room
        streams.close(other)
        assert not refused(streams.open(key, None))  # no grant (AUTH=off): the process cap

    on_loop(test)


def test_the_streams_of_a_revoked_token_end_and_the_others_go_on() -> None:
    gone: set[str] = set()

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        streams = hub(loop, revoked=gone.__contains__, per_token=5, per_process=10)
        mine = [streams.open(("ns", sku), "a") for sku in ("x", "y")]
        theirs = streams.open(("ns", "x"), "b")
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            sent.append(data)

        never: asyncio.Future[None] = loop.create_future()
        serving = [asyncio.ensure_future(stock_stream.serve(streams, s, b"first", send, never))
                   for s in (*mine, theirs) if isinstance(s, Stream)]
        await until(lambda: len(streams.watched) == 2)  # every serve() is watching
        streams.end_revoked()
        assert not any(task.done() for task in serving)
        gone.add("a")
        streams.end_revoked()
        await asyncio.wait_for(asyncio.gather(*serving[:2]), 1)
        assert not serving[2].done()
        assert set(streams.by_grant) == {"b"} and len(streams.streams) == 1
        serving[2].cancel()

    on_loop(test)


def test_many_watched_items_are_read_in_few_round_trips_off_the_request_threads() -> None:
    counter = CountingCounter()
    skus = [f"s{n}" for n in range(1200)]
    counter.load_many("ns", ((sku, Figures(10, 0, seq=1)) for sku in skus))

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        streams = hub(loop, counter, per_token=5000, per_process=5000)
        opened = [streams.open(("ns", sku), "a") for sku in skus]
        for stream in opened:
            assert isinstance(stream, Stream)
            streams.watch(stream)
        for sku in skus:
            streams.changed(("ns", sku), 10)
        for sku in skus:  # heard again before they were read: read once
            streams.changed(("ns", sku), 10)

        await until(lambda: all(isinstance(s, Stream) and s.pending is not None for s in opened))
        assert sum(n for n, _ in counter.reads) == len(skus)
        assert len(counter.reads) <= len(skus) // stock_stream.READ_BATCH + 1
        assert {thread for _, thread in counter.reads} == {"stock-stream-read_0"}

    on_loop(test)


def test_the_process_cap_leaves_descriptors_for_sales() -> None:
    assert stock_stream.process_cap(1024) == 1024 - stock_stream.FD_RESERVE
    assert stock_stream.process_cap(80_000) == 70_000
    assert stock_stream.process_cap(100) == 0


def test_what_the_listener_hears_between_two_turns_of_the_loop_is_taken_at_once() -> None:
    counter = CountingCounter()
    counter.load_many("ns", [("a", Figures(10, 0, seq=1)), ("b", Figures(10, 0, seq=1))])

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        streams = hub(loop, counter, per_token=5, per_process=5)
        opened = [streams.open(("ns", sku), None) for sku in ("a", "b")]
        for stream in opened:
            assert isinstance(stream, Stream)
            streams.watch(stream)

        def listen() -> None:  # the listener thread, while the loop is busy
            for n in range(100):
                streams._heard(json.dumps({"event": "Decremented", "namespace": "ns",
                                           "sku": "ab"[n % 2], "available": 5}))
            streams._heard(json.dumps({"event": "SoldOut", "namespace": "ns", "sku": "a",
                                       "available": 0}))

        listener = threading.Thread(target=listen)
        listener.start()
        listener.join()
        assert streams._changes == {("ns", "a"): 0, ("ns", "b"): 5}  # one wake-up for both

        await until(lambda: all(isinstance(s, Stream) and s.pending is not None for s in opened))
        assert sum(n for n, _ in counter.reads) == 2

    on_loop(test)


def test_streams_per_token_is_read_from_the_environment() -> None:
    assert Config.from_env({}).streams_per_token == 1000
    assert Config.from_env({"STREAMS_PER_TOKEN": "50"}).streams_per_token == 50
    for bad in ("0", "-3", "many", "1.5"):
        with pytest.raises(ValueError, match="STREAMS_PER_TOKEN must be a positive integer"):
            Config.from_env({"STREAMS_PER_TOKEN": bad})


def test_a_stream_idle_for_15_s_gets_a_comment_and_a_busy_one_does_not() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        streams = hub(loop, per_token=5, per_process=5)
        idle, busy = streams.open(("ns", "a"), None), streams.open(("ns", "b"), None)
        assert isinstance(idle, Stream) and isinstance(busy, Stream)
        now = loop.time()
        idle.sent_at, busy.sent_at = now - stock_stream.KEEPALIVE_SECONDS - 0.1, now - 1
        streams._keep_alive()
        assert (idle.pending, busy.pending) == (stock_stream.KEEPALIVE, None)
        assert await idle.next(loop) == stock_stream.KEEPALIVE
        idle.end()
        assert await idle.next(loop) is None

    on_loop(test)
