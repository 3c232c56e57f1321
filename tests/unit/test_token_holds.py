from __future__ import annotations

from allocation.entrypoints.token_holds import TokenHolds


def test_a_token_holds_at_most_its_cap_until_one_ends_or_expires() -> None:
    now = [1_000_000]
    holds = TokenHolds(2, clock_ms=lambda: now[0])
    first, second = holds.claim("t"), holds.claim("t")
    assert first is not None and second is not None
    assert holds.claim("t") is None  # two creates under way fill the cap
    assert holds.claim("other") is not None  # each token its own
    holds.settle("t", first, "r1", now[0] + 500)
    holds.settle("t", second, None)  # refused, or a replay: nothing new is held
    third = holds.claim("t")
    assert third is not None
    holds.settle("t", third, "r2", now[0] + 60_000)
    assert holds.claim("t") is None
    holds.end("r2")  # confirmed or released here
    fourth = holds.claim("t")
    assert fourth is not None
    holds.settle("t", fourth, "r3", now[0] + 60_000)
    assert holds.claim("t") is None
    now[0] += 500  # r1's expiry
    assert holds.claim("t") is not None
