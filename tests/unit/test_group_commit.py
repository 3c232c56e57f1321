"""Group commit: every caller of a shared round trip wakes with its own reply or the error."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest
import redis

from allocation.adapters.redis_scripts import ScriptBatcher, _Call
from allocation.domain import errors


class HeldBatcher(ScriptBatcher):
    """Round trips that wait for ``gate``: the first call is held so the rest queue behind it."""

    def __init__(self, fail: bool) -> None:
        super().__init__(cast(Any, None), "return 1")
        self.gate = threading.Event()
        self.fail = fail
        self.sizes: list[int] = []

    def _execute(self, batch: list[_Call]) -> list[Any]:
        assert self.gate.wait(10)
        self.sizes.append(len(batch))
        if self.fail:
            raise ConnectionError("redis went away")
        return [call.args[0] * 2 for call in batch]


def until(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def queued_behind_one(batcher: HeldBatcher, caller: Any, queued: int) -> None:
    """Call once and hold that round trip, queue ``queued`` more calls behind it, then let the
    round trip go; every caller must wake."""
    first = threading.Thread(target=caller, args=(0,), daemon=True)
    first.start()
    until(lambda: batcher._in_flight)
    rest = [threading.Thread(target=caller, args=(n,), daemon=True)
            for n in range(1, queued + 1)]
    for thread in rest:
        thread.start()
    until(lambda: len(batcher._queue) == queued)
    batcher.gate.set()
    for thread in [first, *rest]:
        thread.join(10)
        assert not thread.is_alive(), "a caller was never woken"


@pytest.mark.parametrize("fail", [False, True])
def test_each_caller_of_a_batch_wakes_with_its_own_answer(fail: bool) -> None:
    batcher = HeldBatcher(fail)
    answers: dict[int, Any] = {}

    def caller(n: int) -> None:
        try:
            answers[n] = batcher(["k"], [n])
        except ConnectionError as exc:
            answers[n] = exc

    queued_behind_one(batcher, caller, 31)
    assert batcher.sizes == [1, 31]
    if fail:
        assert all(isinstance(a, ConnectionError) for a in answers.values())
    else:
        assert answers == {n: 2 * n for n in range(32)}


class PausingLock:
    """The batcher's lock, which holds ``target`` just after the first time it lets go of it."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.target: threading.Thread | None = None
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __enter__(self) -> None:
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()
        if threading.current_thread() is self.target and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(10)


def test_a_caller_handed_the_lead_before_it_waits_still_leads_its_batch() -> None:
    """A caller queues behind a batch in flight; that batch ends and hands it the lead before
    the caller got to wait. It must still lead its batch once, and wake the caller after it."""
    batcher = HeldBatcher(fail=False)
    lock = PausingLock()
    batcher._lock = cast(Any, lock)
    answers: dict[int, Any] = {}

    def caller(n: int) -> None:
        try:
            answers[n] = batcher(["k"], [n])
        except Exception as exc:  # noqa: BLE001 - the answer under test
            answers[n] = exc

    first = threading.Thread(target=caller, args=(0,), daemon=True)
    first.start()
    until(lambda: batcher._in_flight)
    handed = threading.Thread(target=caller, args=(1,), daemon=True)
    lock.target = handed
    handed.start()
    assert lock.paused.wait(10)  # queued, not yet waiting
    after = threading.Thread(target=caller, args=(2,), daemon=True)
    after.start()
    until(lambda: len(batcher._queue) == 2)
    batcher.gate.set()
    first.join(10)  # its batch ended and handed the lead on
    assert answers == {0: 0}
    lock.resume.set()
    for thread in (handed, after):
        thread.join(10)
        assert not thread.is_alive(), "a caller was never woken"
    assert answers == {0: 0, 1: 2, 2: 4}
    assert batcher.sizes == [1, 2]


def test_calls_queued_behind_a_round_trip_redis_did_not_answer_hear_it_at_once() -> None:
    """A partition: the batch in flight waits out the socket timeout; the calls queued behind
    it fail with it, never sent, instead of waiting out a timeout of their own: each caller
    hears ``Unavailable``, from the timeout."""
    class TimedOut(HeldBatcher):
        def _execute(self, batch: list[_Call]) -> list[Any]:
            assert self.gate.wait(10)
            self.sizes.append(len(batch))
            raise redis.TimeoutError("Timeout reading from socket")

    batcher = TimedOut(fail=True)
    answers: dict[int, Any] = {}

    def caller(n: int) -> None:
        try:
            answers[n] = batcher(["k"], [n])
        except errors.Unavailable as exc:
            answers[n] = exc.__cause__

    queued_behind_one(batcher, caller, 7)
    assert batcher.sizes == [1]  # one round trip: the queued calls were never sent
    assert len(answers) == 8 and all(isinstance(a, redis.TimeoutError) for a in answers.values())
    assert not batcher._in_flight and not batcher._queue
    with pytest.raises(errors.Unavailable):  # the next call leads a round trip of its own
        batcher(["k"], [1])
    assert batcher.sizes == [1, 1]
