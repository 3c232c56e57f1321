"""A process's sale figures (service_layer/sale_room.py) when Redis or the record does not
answer: no caller waits behind a step that hangs, a poll answers the last figures where it
has them, and a failed refresh keeps the gates it had (a sku never sells passless for it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from allocation.adapters.sale_queue import Advanced
from allocation.domain import errors
from allocation.domain.sale import QueueFigures, Sale
from allocation.service_layer.sale_room import RECORD_CALLS, SaleRoom

SALE = Sale("shop", "drop", ("a", "b"), 0)
FIGURES = Advanced(QueueFigures(joined=5, serving=2, prequeue=0, order_key=b"k", outstanding=2,
                                used=0, expired=0, sold_out=False, closed=False), 3, 0, 1)


class Queue:
    """The sale's queue, answering at once, hanging (a partition: released by the test) or
    refusing (a connection refused)."""

    def __init__(self) -> None:
        self.mode = "up"
        self.release = threading.Event()
        self.entered = threading.Event()

    def advance(self, sale: Sale, most: int = 1000) -> Advanced:
        if self.mode == "hang":
            self.entered.set()
            self.release.wait(30)
            raise errors.Unavailable("Redis did not answer")
        if self.mode == "down":
            raise errors.Unavailable("Redis refused")
        return FIGURES

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected {name}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record_down() -> NoReturn:
    raise errors.Unavailable("the record did not answer")


@pytest.fixture
def queue() -> Iterator[Queue]:
    queue = Queue()
    yield queue
    queue.release.set()


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # noqa: BLE001 - the test reads what it raised
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_poll_does_not_wait_behind_a_step_that_hangs(queue: Queue) -> None:
    room = SaleRoom(record_down, queue, step_wait=0.05)
    queue.mode = "hang"
    stepper, _ = in_thread(lambda: room.figures(SALE, fresh=True))  # the refresh thread
    assert queue.entered.wait(10)
    polls = [in_thread(lambda: room.figures(SALE)) for _ in range(4)]
    for thread, out in polls:
        thread.join(10)
        assert not thread.is_alive()  # answered while the step still hangs
        assert isinstance(out[0], errors.Unavailable)  # no figures to answer from: retry
    assert stepper.is_alive()
    queue.release.set()
    stepper.join(10)


def test_stale_figures_answer_polls_while_redis_is_away(queue: Queue) -> None:
    clock = Clock()
    room = SaleRoom(record_down, queue, window=1.0, clock=clock)
    assert room.figures(SALE) is FIGURES
    clock.now += 5  # stale: the next caller steps the queue on
    queue.mode = "down"
    assert room.figures(SALE) is FIGURES  # the last figures, not a 503
    assert room.figures(SALE) is FIGURES
    with pytest.raises(errors.Unavailable):  # a caller that needs them now is told so
        room.figures(SALE, fresh=True)
    queue.mode = "hang"
    clock.now += 5
    stepper, _ = in_thread(lambda: room.figures(SALE))
    assert queue.entered.wait(10)
    assert room.figures(SALE) is FIGURES  # not behind the hanging step
    queue.release.set()
    stepper.join(10)


def test_a_refresh_the_record_refuses_keeps_the_gates(queue: Queue) -> None:
    room = SaleRoom(record_down, queue)
    room.known(SALE)
    with pytest.raises(errors.Unavailable):
        room.refresh()
    assert room.gated.get(("shop", "a")) == SALE and room.gated.get(("shop", "b")) == SALE
    assert room.open_sales() == [SALE]


def test_a_record_call_that_hangs_is_503_and_a_hung_pool_refuses_at_once(queue: Queue) -> None:
    room = SaleRoom(record_down, queue, record_wait=0.05)
    hung = threading.Event()
    with pytest.raises(errors.Unavailable):
        room.recorded(lambda: hung.wait(30))  # the partition: the call never returns
    for _ in range(RECORD_CALLS - 1):
        with pytest.raises(errors.Unavailable):
            room.recorded(lambda: hung.wait(30))
    refused, out = in_thread(lambda: room.recorded(lambda: "not run"))
    refused.join(10)
    assert isinstance(out[0], errors.Unavailable)  # every slot held: refused, not queued
    hung.set()  # healed: the hung calls end and give their slots back
    assert wait_for(lambda: room.recorded(lambda: "answered"))


def wait_for(call: Any) -> Any:
    """The call's answer once it gives one, within a deadline."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return call()
        except errors.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_herd_asking_for_a_sale_not_known_here_shares_one_record_read(queue: Queue) -> None:
    room = SaleRoom(record_down, queue)
    reads: list[int] = []
    release = threading.Event()

    def read() -> Sale:
        reads.append(1)
        release.wait(10)  # the record answers once the herd has gathered
        return SALE

    herd = [in_thread(lambda: room.read_sale("shop", "drop", read))
            for _ in range(4 * RECORD_CALLS)]

    def gathered() -> bool:  # the rest of the herd waits on the read in flight (its future)
        flight = room._reads.get(("shop", "drop"))
        waiting = 0 if flight is None else len(flight._condition._waiters)  # type: ignore[attr-defined]
        return waiting == len(herd) - 1

    deadline = time.monotonic() + 10
    while not gathered() and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for thread, _ in herd:
        thread.join(10)
    assert [out for _, out in herd] == [[SALE]] * len(herd)  # none refused for want of a slot
    assert reads == [1] and room.sale("shop", "drop") == SALE
    assert room.gated.get(("shop", "a")) == SALE
    assert room.read_sale("shop", "drop", lambda: None) is None  # a new read once it ended


def test_a_herds_shared_read_fails_for_all_of_it(queue: Queue) -> None:
    room = SaleRoom(record_down, queue, record_wait=0.05)
    hung = threading.Event()

    def hang() -> Sale | None:  # the partition: the call never returns in time
        hung.wait(30)
        return None

    herd = [in_thread(lambda: room.read_sale("shop", "drop", hang)) for _ in range(3)]
    for thread, _ in herd:
        thread.join(10)
    hung.set()
    assert all(isinstance(out[0], errors.Unavailable) for _, out in herd)


def test_callers_that_need_figures_now_share_the_step_they_waited_behind(queue: Queue) -> None:
    room = SaleRoom(record_down, queue, step_wait=10)
    queue.mode = "hang"
    stepper, _ = in_thread(lambda: room.figures(SALE, fresh=True))
    assert queue.entered.wait(10)
    queue.mode = "up"
    steps: list[Sale] = []
    advance = queue.advance

    def counted(sale: Sale, most: int = 1000) -> Advanced:
        steps.append(sale)
        return advance(sale, most)

    queue.advance = counted  # type: ignore[method-assign]
    waiters = [in_thread(lambda: room.figures(SALE, fresh=True)) for _ in range(4)]
    queue.release.set()  # the first step fails; one waiter steps, the rest share its figures
    stepper.join(10)
    for thread, out in waiters:
        thread.join(10)
        assert out == [FIGURES]
    assert len(steps) == 1
