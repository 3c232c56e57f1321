"""Group commit: every caller of a shared round trip wakes with its own reply or the error."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from allocation.adapters.redis_batch import ScriptBatcher, _Call


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


@pytest.mark.parametrize("fail", [False, True])
def test_each_caller_of_a_batch_wakes_with_its_own_answer(fail: bool) -> None:
    batcher = HeldBatcher(fail)
    answers: dict[int, Any] = {}

    def caller(n: int) -> None:
        try:
            answers[n] = batcher(["k"], [n])
        except ConnectionError as exc:
            answers[n] = exc

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    until(lambda: batcher._in_flight)
    rest = [threading.Thread(target=caller, args=(n,)) for n in range(1, 32)]
    for thread in rest:
        thread.start()
    until(lambda: len(batcher._queue) == 31)
    batcher.gate.set()
    for thread in [first, *rest]:
        thread.join(10)
        assert not thread.is_alive(), "a caller was never woken"
    assert batcher.sizes == [1, 31]
    if fail:
        assert all(isinstance(a, ConnectionError) for a in answers.values())
    else:
        assert answers == {n: 2 * n for n in range(32)}
