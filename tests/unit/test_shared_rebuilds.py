"""Refreshes of one item share rebuilds: concurrent ones wait for one, and a recent one stands
for the next for a moment (a looping client cannot fence a hot item again and again)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from allocation.service_layer.shared_rebuilds import SharedRebuilds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_refresh_just_after_a_rebuild_shares_it_until_the_window_passes() -> None:
    clock = Clock()
    shared = SharedRebuilds(window=1.0, clock=clock)
    runs: list[str] = []

    def rebuild(name: str) -> Callable[[], str]:
        def run() -> str:
            runs.append(name)
            return name
        return run

    assert shared.run(("ns", "a"), rebuild("first"), 5) == "first"
    clock.now += 0.5
    assert shared.run(("ns", "a"), rebuild("again"), 5) is None
    assert shared.run(("ns", "b"), rebuild("other item"), 5) == "other item"
    clock.now += 0.6
    assert shared.run(("ns", "a"), rebuild("later"), 5) == "later"
    assert runs == ["first", "other item", "later"]


def test_concurrent_refreshes_wait_for_one_rebuild() -> None:
    shared = SharedRebuilds(window=0.0, clock=Clock())
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def slow() -> str:
        runs.append("leader")
        started.set()
        assert release.wait(10)
        return "rebuilt"

    results: list[str | None] = []
    leader = threading.Thread(target=lambda: results.append(shared.run(("ns", "a"), slow, 10)))
    leader.start()
    assert started.wait(10)
    def own() -> str:
        runs.append("follower")
        return "own"

    followers = [threading.Thread(target=lambda: results.append(shared.run(("ns", "a"), own, 10)))
                 for _ in range(5)]
    for f in followers:
        f.start()
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert runs == ["leader"]
    assert sorted(results, key=str) == [None] * 5 + ["rebuilt"]


def test_when_the_shared_rebuild_fails_a_waiting_refresh_tries_itself() -> None:
    shared = SharedRebuilds(window=1.0, clock=Clock())
    started, release = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        assert release.wait(10)
        raise RuntimeError("the database went away")

    errors: list[BaseException] = []

    def lead() -> None:
        try:
            shared.run(("ns", "a"), failing, 10)
        except RuntimeError as exc:
            errors.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(10)
    out: list[str | None] = []
    follower = threading.Thread(target=lambda: out.append(
        shared.run(("ns", "a"), lambda: "own", 10)))
    follower.start()
    release.set()
    leader.join(10)
    follower.join(10)
    assert len(errors) == 1 and out == ["own"]
    # A failed rebuild is not remembered as done: the next refresh rebuilds.
    assert shared.run(("ns", "a"), lambda: "next", 10) == "next"


@pytest.mark.parametrize("window", [0.0, 1.0])
def test_a_rebuild_s_own_failure_reaches_its_caller(window: float) -> None:
    shared = SharedRebuilds(window=window, clock=Clock())
    with pytest.raises(RuntimeError):
        shared.run(("ns", "a"), lambda: (_ for _ in ()).throw(RuntimeError("x")), 1)
