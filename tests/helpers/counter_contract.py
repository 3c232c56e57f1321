"""The counter port's contract, run against every adapter (in-process in the unit tests, Redis
and Redis Cluster in the integration tests).

Subclasses provide ``make_counter``, ``make_counter_with_ttls`` and ``assert_remembered_for``.
The Hypothesis machine checks any adapter against the domain rules on random sequences of
movements.
"""

from __future__ import annotations

import abc
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from allocation.adapters.counter import Counter, Reserved, Restored, Step
from allocation.adapters.outbox import Outbox, OutboxEntry
from allocation.adapters.redis_counter import RedisCounter
from allocation.domain import errors, rules
from allocation.domain.outcome import Figures, Outcome
from allocation.domain.rules import Kind
from tests.helpers.processes import wait_until


class CounterContract(abc.ABC):
    @abc.abstractmethod
    def make_counter(self) -> Counter: ...

    @abc.abstractmethod
    def make_counter_with_ttls(self, ttl: int, refusal_ttl: int) -> Counter:
        """A counter that keeps a success's idempotency record ``ttl`` seconds and a
        refusal's ``refusal_ttl``."""

    @abc.abstractmethod
    def assert_remembered_for(self, counter: Counter, namespace: str, sku: str, key: str,
                              move: tuple[Kind, int], seconds: int) -> None:
        """Check that the record of ``key`` (a movement ``move`` made just now, under the
        counter of ``make_counter_with_ttls``) lasts ``seconds``, not much less nor more.
        Called with increasing ``seconds`` within a test (an adapter may move a clock)."""

    def setup_method(self) -> None:
        self.counter = self.make_counter()
        self.ns = "ns-" + uuid.uuid4().hex[:8]
        self.counter.load(self.ns, "sku", Figures(10, 0, seq=1))

    def test_unknown_item_is_not_found_and_nothing_is_remembered(self) -> None:
        assert self.counter.apply(self.ns, "nope", "decrement", 1, "k").status == "not_found"
        self.counter.load(self.ns, "nope", Figures(5, 0, seq=1))
        assert self.counter.apply(self.ns, "nope", "decrement", 1, "k").ok

    def test_decrement_applies_and_reports_the_figures_after(self) -> None:
        assert self.counter.apply(self.ns, "sku", "decrement", 3, "k") == Outcome(
            "ok", Figures(10, 3, seq=2))
        assert self.counter.read(self.ns, "sku") == Figures(10, 3, seq=2)

    def test_decrement_beyond_available_is_refused_with_the_figures(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 8, "k1")
        refused = self.counter.apply(self.ns, "sku", "decrement", 3, "k2")
        assert (refused.status, refused.figures.available) == ("insufficient_stock", 2)
        assert self.counter.read(self.ns, "sku") == Figures(10, 8, seq=2)

    def test_refund_and_adjust_follow_the_rules(self) -> None:
        c = self.counter
        assert c.apply(self.ns, "sku", "refund", 1, "r1").status == "refund_exceeds_consumed"
        c.apply(self.ns, "sku", "decrement", 4, "k1")
        assert c.apply(self.ns, "sku", "refund", 3, "r2") == Outcome("ok", Figures(10, 1, seq=3))
        assert c.apply(self.ns, "sku", "adjust", -10, "a1").status == "below_consumed"
        assert c.apply(self.ns, "sku", "adjust", -9, "a2") == Outcome("ok", Figures(1, 1, seq=4))
        assert c.apply(self.ns, "sku", "adjust", 5, None) == Outcome("ok", Figures(6, 1, seq=5))

    def test_an_adjustment_past_the_maximum_total_is_refused_and_changes_nothing(self) -> None:
        c = self.counter
        assert c.apply(self.ns, "sku", "adjust", rules.MAX_TOTAL - 10, "a1").figures.total == (
            rules.MAX_TOTAL)
        refused = c.apply(self.ns, "sku", "adjust", 1, "a2")
        assert refused == Outcome("total_exceeds_maximum", Figures(rules.MAX_TOTAL, 0, seq=2))
        assert refused.error().details == {"maximum": rules.MAX_TOTAL}
        assert c.apply(self.ns, "sku", "adjust", 1, "a2").replayed  # remembered, as refusals are
        assert c.read(self.ns, "sku") == Figures(rules.MAX_TOTAL, 0, seq=2)
        # An item above it (made before the rule) may come down, in steps.
        c.load(self.ns, "over", Figures(2 * rules.MAX_TOTAL + 14, 0, seq=1))
        assert c.apply(self.ns, "over", "adjust", -1, None).ok
        assert c.apply(self.ns, "over", "adjust", 1, None).status == "total_exceeds_maximum"

    def test_non_positive_quantities_are_refused(self) -> None:
        for qty in (0, -2):
            assert self.counter.apply(self.ns, "sku", "decrement", qty, None).status == (
                "invalid_quantity")
        assert self.counter.read(self.ns, "sku") == Figures(10, 0, seq=1)

    def test_a_repeated_key_replays_the_stored_outcome(self) -> None:
        first = self.counter.apply(self.ns, "sku", "decrement", 3, "k")
        self.counter.apply(self.ns, "sku", "decrement", 2, "other")
        again = self.counter.apply(self.ns, "sku", "decrement", 3, "k")
        # With the seq the movement took: the ledger entry it names.
        assert again == Outcome("ok", first.figures, replayed=True)
        assert first.figures.seq == 2
        assert self.counter.read(self.ns, "sku") == Figures(10, 5, seq=3)

    def test_a_refusal_is_remembered_too(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 11, "k")
        self.counter.apply(self.ns, "sku", "adjust", 5, None)
        again = self.counter.apply(self.ns, "sku", "decrement", 11, "k")
        assert (again.status, again.replayed, again.figures.available) == (
            "insufficient_stock", True, 10)

    def test_the_same_key_with_another_request_is_reused(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 3, "k")
        assert self.counter.apply(self.ns, "sku", "decrement", 4, "k").status == (
            "idempotency_key_reused")
        assert self.counter.apply(self.ns, "sku", "refund", 3, "k").status == (
            "idempotency_key_reused")
        assert self.counter.read(self.ns, "sku") == Figures(10, 3, seq=2)

    def test_keys_are_scoped_to_the_item(self) -> None:
        self.counter.load(self.ns, "other", Figures(10, 0, seq=1))
        self.counter.apply(self.ns, "sku", "decrement", 3, "k")
        assert self.counter.apply(self.ns, "other", "decrement", 3, "k") == Outcome(
            "ok", Figures(10, 3, seq=2))

    def test_a_refusal_is_forgotten_sooner_than_a_success(self) -> None:
        counter = self.make_counter_with_ttls(ttl=1000, refusal_ttl=10)
        counter.load(self.ns, "sku", Figures(10, 0, seq=1))
        assert counter.apply(self.ns, "sku", "decrement", 30, "no").status == (
            "insufficient_stock")
        assert counter.apply(self.ns, "sku", "decrement", 3, "yes").ok
        self.assert_remembered_for(counter, self.ns, "sku", "no", ("decrement", 30), 10)
        self.assert_remembered_for(counter, self.ns, "sku", "yes", ("decrement", 3), 1000)

    def test_the_refusal_ttl_is_at_most_the_ttl(self) -> None:
        counter = self.make_counter_with_ttls(ttl=20, refusal_ttl=100)
        counter.load(self.ns, "sku", Figures(10, 0, seq=1))
        counter.apply(self.ns, "sku", "decrement", 30, "no")
        self.assert_remembered_for(counter, self.ns, "sku", "no", ("decrement", 30), 20)

    def test_a_load_sets_the_generation_and_a_load_without_one_keeps_it(self) -> None:
        self.counter.load(self.ns, "g", Figures(10, 0, seq=1, gen="gen-a"))
        applied = self.counter.apply(self.ns, "g", "decrement", 1, "k", record=True)
        assert (applied.figures.gen, applied.figures.seq) == ("gen-a", 2)
        replay = self.counter.apply(self.ns, "g", "decrement", 1, "k", record=True)
        assert (replay.replayed, replay.figures.gen, replay.figures.seq) == (True, "gen-a", 2)
        self.counter.load(self.ns, "g", Figures(10, 1, seq=2))  # figures only: the history goes on
        assert self.counter.read(self.ns, "g") == Figures(10, 1, seq=2, gen="gen-a")
        self.counter.load(self.ns, "g", Figures(10, 1, seq=2, gen="gen-b"))  # from the record
        assert self.counter.apply(self.ns, "g", "decrement", 1, "k2").figures.gen == "gen-b"
        # A key seen under the old generation still replays, naming the old one.
        assert self.counter.apply(self.ns, "g", "decrement", 1, "k").figures.gen == "gen-a"

    def test_a_restore_gives_back_the_keys_the_ledger_holds(self) -> None:
        now = int(datetime.now(UTC).timestamp() * 1_000_000)

        def restore(keys: list[str], kinds: list[str], qtys: list[int],
                    made: list[int]) -> None:
            n = len(keys)
            self.counter.restore_many(self.ns, Restored(
                ["sku"], [10], [0], [0], [1], "", [None], [""],
                keyed=(["sku"] * n, keys, kinds, qtys, [None] * n, [10] * n,
                       [10 - q for q in qtys], [0] * n, made)))

        restore(["from-ledger", "old", "held"], ["decrement", "refund", "hold"], [3, 1, 2],
                [now, now - 9 * 86_400_000_000, now])
        replay = self.counter.apply(self.ns, "sku", "decrement", 3, "from-ledger")
        assert (replay.status, replay.replayed, replay.figures.seq) == ("ok", True, 0)
        assert (replay.figures.total, replay.figures.consumed) == (10, 3)
        assert self.counter.read(self.ns, "sku") == Figures(10, 0, seq=1)  # untouched
        # Past its window a key is not brought back: the movement applies as new.
        assert self.counter.apply(self.ns, "sku", "refund", 1, "old").status == \
            "refund_exceeds_consumed"
        # Only a movement's key is (a hold's is its reservation's).
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "held").replayed is False
        # A record the counter holds is kept.
        self.counter.apply(self.ns, "sku", "decrement", 2, "live")
        restore(["live"], ["decrement"], [5], [now])
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "live").figures.consumed == 4

    def test_load_many_read_many_and_forget(self) -> None:
        self.counter.load_many(self.ns, [("a", Figures(1, 0, seq=1)), ("b", Figures(2, 1, seq=2))])
        assert self.counter.read_many(self.ns, ["a", "b", "c"]) == [
            Figures(1, 0, seq=1), Figures(2, 1, seq=2), None]

    def test_a_fenced_item_answers_fenced_until_loaded(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 2, "k1")
        assert self.counter.fence_many(self.ns, ["sku", "absent"]) == [2, None]
        fenced = self.counter.apply(self.ns, "sku", "decrement", 1, "k2")
        assert fenced.status == "fenced"
        assert self.counter.read(self.ns, "sku") == Figures(10, 2, seq=2)
        self.counter.load(self.ns, "sku", Figures(10, 2, seq=2))
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "k2") == Outcome(
            "ok", Figures(10, 3, seq=3))
        self.counter.fence_many(self.ns, ["sku"])
        self.counter.unfence(self.ns, "sku")
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "k3").ok
        self.counter.forget(self.ns, "a")
        assert self.counter.read(self.ns, "a") is None


class LimitContract(abc.ABC):
    """Limits per buyer, checked in the counter's atomic step (run with ``CounterContract``)."""

    counter: Counter
    ns: str

    def test_a_limit_caps_each_buyer_and_a_refusal_changes_nothing(self) -> None:
        self.counter.load_allowances(self.ns, {"sku": (2, {})})
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a1", buyer="ann").ok
        refused = self.counter.apply(self.ns, "sku", "decrement", 2, "a2", buyer="ann")
        assert (refused.status, refused.remaining, refused.figures.consumed) == (
            "limit_exceeded", 1, 1)
        again = self.counter.apply(self.ns, "sku", "decrement", 2, "a2", buyer="ann")
        assert (again.status, again.remaining, again.replayed) == ("limit_exceeded", 1, True)
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "b1", buyer="bob").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "n1").status == (
            "buyer_required")
        assert self.counter.read(self.ns, "sku") == Figures(10, 3, seq=3, limit=2)

    def test_a_refund_naming_the_buyer_gives_the_allowance_back(self) -> None:
        self.counter.load_allowances(self.ns, {"sku": (2, {})})
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a1", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "refund", 1, "r1", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a2", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a3",
                                  buyer="ann").remaining == 0
        # a refund naming ann returns no more than ann's units: never cy's
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "c1", buyer="cy").ok
        over = self.counter.apply(self.ns, "sku", "refund", 3, "r2", buyer="ann")
        assert (over.status, over.remaining, over.figures.consumed) == (
            "refund_exceeds_consumed", 2, 4)
        assert self.counter.apply(self.ns, "sku", "refund", 3, "r2", buyer="ann").replayed
        assert self.counter.apply(self.ns, "sku", "refund", 1, "n1", buyer="nobody").status == (
            "refund_exceeds_consumed")
        assert self.counter.apply(self.ns, "sku", "refund", 2, "r3", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "refund", 2, "c2", buyer="cy").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a4", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a5",
                                  buyer="ann").status == "limit_exceeded"

    def test_a_refund_naming_the_buyer_returns_only_what_they_bought(self) -> None:
        # Units a buyer only holds are not theirs to refund: ann, holding 3, refunding bob's 3,
        # then confirming her hold, would otherwise buy 3 more past a limit of 3.
        self.counter.load_allowances(self.ns, {"sku": (3, {})})
        assert self.counter.apply(self.ns, "sku", "decrement", 3, "b1", buyer="bob").ok
        rid = self.counter.reservation_id(self.ns, "h")
        assert self.counter.reservation_step("hold", self.ns, rid, [("sku", 3)], ttl_ms=60_000,
                                             buyer="ann", fingerprint="f").ok
        refused = self.counter.apply(self.ns, "sku", "refund", 3, "r1", buyer="ann")
        assert (refused.status, refused.remaining, refused.figures.consumed) == (
            "refund_exceeds_consumed", 0, 3)
        assert self.counter.reservation_step("confirm", self.ns, rid, [("sku", 3)]).ok
        assert self.counter.apply(self.ns, "sku", "refund", 3, "r2", buyer="ann").ok  # sold now
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a1",
                                  buyer="ann").ok  # her allowance back, within the limit

    def test_without_a_limit_a_refund_naming_a_buyer_gives_back_what_they_took(
            self) -> None:
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a1", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "c1").ok
        assert self.counter.apply(self.ns, "sku", "refund", 3, "r1", buyer="ann").ok
        self.counter.set_limit(self.ns, "sku", 2)
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a2", buyer="ann").ok

    def test_the_buyer_is_part_of_the_request_a_key_stands_for(self) -> None:
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "k", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "k",
                                  buyer="bob").status == "idempotency_key_reused"
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "k", buyer="ann").replayed

    def test_units_bought_without_a_limit_count_once_one_is_set(self) -> None:
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a1", buyer="ann").ok
        self.counter.set_limit(self.ns, "sku", 3)
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "a2",
                                  buyer="ann").remaining == 1
        self.counter.set_limit(self.ns, "sku", None)
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "n1").ok  # no buyer needed

    def test_a_limit_is_not_set_on_an_item_the_counter_lacks(self) -> None:
        self.counter.set_limit(self.ns, "absent", 1)
        assert self.counter.read(self.ns, "absent") is None
        assert self.counter.fence_many(self.ns, ["absent"]) == [None]

    def test_loaded_allowances_replace_what_the_counter_held(self) -> None:
        assert self.counter.apply(self.ns, "sku", "decrement", 1, "a1", buyer="ann").ok
        self.counter.load_allowances(self.ns, {"sku": (4, {"bob": 3})})
        assert self.counter.apply(self.ns, "sku", "decrement", 4, "a2", buyer="ann").ok
        assert self.counter.apply(self.ns, "sku", "decrement", 2, "b1",
                                  buyer="bob").remaining == 1


class ReservationContract(abc.ABC):
    """Reservations: holds taken all or none, ended exactly once, expiring by the counter's
    clock (run with ``CounterContract``). ``pass_time`` moves that clock on, at once."""

    counter: Counter
    ns: str

    @abc.abstractmethod
    def pass_time(self, ms: int) -> None: ...

    def teardown_method(self) -> None:
        restart_clock(self.counter)  # the next test on the key space starts on Redis's

    def skus(self, n: int) -> list[str]:
        """``n`` SKUs a cart may hold together (an adapter may need them in one slot)."""
        return [f"c{i}" for i in range(n)]

    def hold(self, rid: str, lines: list[tuple[str, int]], ttl_ms: int = 60_000,
             buyer: str | None = None) -> Reserved:
        return self.counter.reservation_step("hold", self.ns, rid, lines, ttl_ms=ttl_ms,
                                             buyer=buyer, fingerprint=repr((lines, buyer)))

    def step(self, step: Step, rid: str, ttl_ms: int = 0) -> Reserved:
        lines, buyer = self.counter.reservation_lines(self.ns, rid) or ((), None)
        return self.counter.reservation_step(step, self.ns, rid, lines, ttl_ms=ttl_ms,
                                             buyer=buyer)

    def available(self, sku: str) -> tuple[int, int, int]:
        figures = self.counter.read(self.ns, sku)
        assert figures is not None
        return figures.consumed, figures.held, figures.available

    def rid(self, seed: str) -> str:
        return self.counter.reservation_id(self.ns, seed)

    def test_a_cart_is_held_whole_or_not_at_all(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load(self.ns, b, Figures(1, 0, seq=1))
        refused = self.hold(self.rid("r1"), [(a, 2), (b, 2)])
        assert (refused.status, refused.sku, refused.detail) == ("insufficient_stock", b, 1)
        assert (self.available(a), self.available(b)) == ((0, 0, 10), (0, 0, 1))
        held = self.hold(self.rid("r2"), [(a, 2), (b, 1)])
        assert (held.status, held.state) == ("ok", "held")
        assert held.expires_ms - held.created_ms == 60_000
        assert [(f.held, f.available) for f in held.figures] == [(2, 8), (1, 0)]
        assert (self.available(a), self.available(b)) == ((0, 2, 8), (0, 1, 0))
        assert self.counter.apply(self.ns, b, "decrement", 1, "k").status == "insufficient_stock"

    def test_a_hold_again_is_a_replay_and_another_request_is_refused(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        first = self.hold(self.rid("r"), [(a, 2)])
        again = self.hold(self.rid("r"), [(a, 2)])
        assert (again.status, again.replayed, again.created_ms, again.expires_ms) == (
            "ok", True, first.created_ms, first.expires_ms)
        assert self.hold(self.rid("r"), [(a, 3)]).status == "idempotency_key_reused"
        assert self.available(a) == (0, 2, 8)

    def test_one_key_is_one_reservation_whatever_the_lines(self) -> None:
        a, b, c = self.skus(3)
        for sku in (a, b, c):
            self.counter.load(self.ns, sku, Figures(10, 0, seq=1))
        rid = self.rid("k")
        assert self.hold(rid, [(a, 1), (b, 2)]).ok
        for lines in ([(b, 2), (a, 1)], [(c, 1), (a, 1), (b, 2)], [(a, 1), (b, 3)], [(c, 1)],
                      [(a, 1)]):
            assert self.hold(rid, lines).status == "idempotency_key_reused", lines
        assert [self.available(sku) for sku in (a, b, c)] == [(0, 1, 9), (0, 2, 8), (0, 0, 10)]

    def test_a_replay_answers_as_the_hold_first_did_whatever_came_since(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load(self.ns, b, Figures(10, 0, seq=1))
        rid = self.rid("r")
        first = self.hold(rid, [(a, 1), (b, 1)])
        assert self.step("extend", rid, 600_000).expires_ms > first.expires_ms
        assert self.step("confirm", rid).state == "confirmed"
        again = self.hold(rid, [(a, 1), (b, 1)])
        assert (again.status, again.state, again.created_ms, again.expires_ms,
                again.replayed) == ("ok", "held", first.created_ms, first.expires_ms, True)
        assert [self.available(sku) for sku in (a, b)] == [(1, 0, 9), (1, 0, 9)]

    def test_a_buyers_open_reservations_are_capped(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(100, 0, seq=1))
        self.counter.load(self.ns, b, Figures(100, 0, seq=1))

        def hold(seed: str, ttl_ms: int = 60_000, buyer: str = "bo") -> Reserved:
            return self.counter.reservation_step(
                "hold", self.ns, self.rid(seed), [(a, 1), (b, 1)], ttl_ms=ttl_ms, buyer=buyer,
                fingerprint=seed, open_cap=2)

        assert hold("r1").ok
        earliest = hold("r2", ttl_ms=500)
        assert earliest.ok
        refused = hold("r3")
        assert (refused.status, refused.detail) == ("too_many_open_reservations", 2)
        # When room comes back without anyone doing anything: r2's expiry, the earliest
        # (unknown, 0, where a cluster counts the buyer's reservations in another slot).
        assert refused.created_ms == 0 or refused.expires_ms == earliest.expires_ms
        assert not hold("r3").replayed  # never processed: not the key's answer
        assert hold("x1", buyer="other").ok  # another buyer's cap
        assert [self.available(sku) for sku in (a, b)] == [(0, 3, 97), (0, 3, 97)]
        assert self.step("release", self.rid("r1")).ok  # ended: it no longer counts
        assert hold("r3").ok  # the same request as refused, now served
        assert self.step("release", self.rid("r3")).ok
        assert hold("r4").ok
        assert hold("r5").status == "too_many_open_reservations"
        self.pass_time(1000)  # r2 expired: it counts no more
        assert hold("r6").ok
        assert self.step("confirm", self.rid("r4")).ok
        assert hold("r7").ok
        assert [self.available(sku) for sku in (a, b)] == [(1, 3, 96), (1, 3, 96)]

    def test_confirm_sells_and_ends_it_once(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load(self.ns, b, Figures(5, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 2), (b, 1)])
        confirmed = self.step("confirm", rid)
        assert (confirmed.status, confirmed.state, confirmed.replayed) == ("ok", "confirmed",
                                                                          False)
        assert (self.available(a), self.available(b)) == ((2, 0, 8), (1, 0, 4))
        assert self.step("confirm", rid).replayed
        assert self.step("release", rid).status == "reservation_confirmed"
        assert self.step("extend", rid, 1000).status == "reservation_confirmed"
        assert (self.available(a), self.available(b)) == ((2, 0, 8), (1, 0, 4))

    def test_release_puts_the_units_back_and_ends_it_once(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(3, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 3)])
        assert self.step("release", rid).state == "released"
        assert self.step("release", rid).replayed
        assert self.step("confirm", rid).status == "reservation_released"
        assert self.available(a) == (0, 0, 3)

    def test_at_its_expiry_its_units_go_back_on_sale_without_help(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(2, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 2)], ttl_ms=300)
        assert self.counter.apply(self.ns, a, "decrement", 1, "k1", record=True).status == (
            "insufficient_stock")
        self.pass_time(300)
        # the sale itself ends the due hold first
        assert self.counter.apply(self.ns, a, "decrement", 2, "k2", record=True).ok
        assert self.step("get", rid).state == "expired"
        assert self.step("confirm", rid).status == "reservation_expired"
        released = self.step("release", rid)
        assert (released.status, released.state) == ("ok", "expired")
        assert self.available(a) == (2, 0, 0)

    def test_a_read_ends_a_hold_past_its_expiry(self) -> None:
        """API.md: at expires_at its units are on sale again, whether or not a sweeper ran."""
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(5, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 2)], ttl_ms=300)
        assert self.available(a) == (0, 2, 3)
        self.pass_time(300)
        assert self.available(a) == (0, 0, 5)  # no sale, no sweeper: the read ended it
        assert self.step("get", rid).state == "expired"

    def test_an_extended_hold_outlives_its_first_expiry(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(2, 0, seq=1))
        rid = self.rid("r")
        first = self.hold(rid, [(a, 1)], ttl_ms=300)
        extended = self.step("extend", rid, 60_000)
        assert extended.expires_ms >= first.expires_ms + 59_000
        self.pass_time(300)
        assert self.counter.apply(self.ns, a, "decrement", 2, "k", record=True).status == (
            "insufficient_stock")
        assert self.step("confirm", rid).state == "confirmed"

    def test_an_extension_past_a_day_from_its_creation_is_refused_and_changes_nothing(
            self) -> None:
        """API.md: a reservation lives at most 86400 s from its creation."""
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(2, 0, seq=1))
        rid = self.rid("r")
        first = self.hold(rid, [(a, 1)], ttl_ms=86_400_000)
        self.pass_time(5)
        refused = self.step("extend", rid, 86_400_000)
        assert refused.status == "reservation_lifetime_exceeded"
        assert self.step("get", rid).expires_ms == first.expires_ms
        shorter = self.step("extend", rid, 60_000)
        assert (shorter.status, shorter.expires_ms - shorter.created_ms < 86_400_000) == (
            "ok", True)

    def test_a_rebuild_puts_back_many_lost_items_with_their_limits_buyers_and_holds(
            self) -> None:
        skus = [f"lost{i}" for i in range(40)]  # over every partition
        assert self.counter.seqs_many(self.ns, skus) == [None] * 40
        far = 4_000_000_000_000
        now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
        odd = skus[1::2]
        self.counter.restore_many(self.ns, Restored(
            skus, [10] * 40, [1] * 40, [2] * 40, [3] * 40, "g1",
            [5 if i % 2 else None for i in range(40)], [""] * 40,
            units=(odd, ["ann"] * 20, [3] * 20),
            holds=(skus, [f"r{i}" for i in range(40)], [2] * 40,
                   ["ann" if i % 2 else "" for i in range(40)], [far] * 40),
            # the key "bought" of lost2: a decrement of 1 leaving 7 available, 2 held
            keyed=(["lost2"], ["bought"], ["decrement"], [1], [None], [10], [7], [2],
                   [now_us])))
        assert self.counter.seqs_many(self.ns, skus) == [("g1", 3)] * 40
        # The key the ledger holds is given back: its retry is the first answer, not a sale.
        again = self.counter.apply(self.ns, "lost2", "decrement", 1, "bought")
        assert (again.status, again.replayed, again.figures.consumed) == ("ok", True, 1)
        assert self.counter.apply(self.ns, "lost2", "decrement", 2, "bought").status == (
            "idempotency_key_reused")
        for sku, limit in (("lost0", None), ("lost1", 5)):
            figures = self.counter.read(self.ns, sku)
            assert figures is not None
            assert (figures.total, figures.consumed, figures.held, figures.limit) == (
                10, 1, 2, limit)
        over = self.counter.apply(self.ns, "lost1", "decrement", 3, "k", buyer="ann")
        assert (over.status, over.remaining) == ("limit_exceeded", 2)  # 1 bought, 2 held
        assert self.counter.apply(self.ns, "lost0", "decrement", 7, "k").ok
        assert self.counter.apply(self.ns, "lost0", "decrement", 1, "k2").status == (
            "insufficient_stock")  # the hold still holds its 2

    def test_a_hold_counts_against_the_buyers_limit_until_it_ends(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load_allowances(self.ns, {a: (2, {})})
        assert self.hold(self.rid("n"), [(a, 1)]).status == "buyer_required"
        rid = self.rid("r")
        assert self.hold(rid, [(a, 2)], buyer="ann").ok
        over = self.counter.apply(self.ns, a, "decrement", 1, "k", buyer="ann")
        assert (over.status, over.remaining) == ("limit_exceeded", 0)
        refused = self.hold(self.rid("r2"), [(a, 1)], buyer="ann")
        assert (refused.status, refused.detail) == ("limit_exceeded", 0)
        self.step("release", rid)
        assert self.counter.apply(self.ns, a, "decrement", 2, "k2", buyer="ann").ok

    def test_unknown_reservations_and_items(self) -> None:
        a, = self.skus(1)
        assert self.hold(self.rid("r"), [(a, 1)]).status == "not_found"
        assert self.step("confirm", self.rid("nope")).status == "not_found"
        assert self.counter.reservation_lines(self.ns, "no-such-id") is None

    def test_a_confirm_whose_hold_is_gone_expires_and_sells_nothing(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(5, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 2)])
        self.counter.load_holds(self.ns, {a: []})  # as a rebuild from a stale ledger could
        refused = self.step("confirm", rid)
        assert (refused.status, refused.state) == ("reservation_expired", "expired")
        assert self.available(a)[0] == 0  # nothing sold

    def test_many_due_holds_all_end_before_a_sale_is_judged(self) -> None:
        a, = self.skus(1)
        self.counter.load(self.ns, a, Figures(20, 0, seq=1))
        for n in range(20):
            assert self.hold(self.rid(f"r{n}"), [(a, 1)], ttl_ms=300).ok
        self.pass_time(300)
        assert self.counter.apply(self.ns, a, "decrement", 20, "k", record=True).ok

    def test_the_tally_counts_each_hold_once_where_it_starts_and_ends(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load(self.ns, b, Figures(10, 0, seq=1))
        confirmed, released, expired = self.rid("c"), self.rid("r"), self.rid("e")
        self.hold(confirmed, [(a, 2), (b, 1)])
        self.hold(confirmed, [(a, 2), (b, 1)])  # a replay counts nothing
        self.step("confirm", confirmed)
        self.step("confirm", confirmed)
        self.hold(released, [(a, 3)])
        self.step("release", released)
        self.hold(expired, [(a, 4)], ttl_ms=300)
        self.pass_time(300)
        assert self.counter.apply(self.ns, a, "decrement", 1, "k", record=True).ok  # ends it
        assert self.step("release", expired).state == "expired"  # ended before: counts nothing
        swept = self.rid("s")
        self.hold(swept, [(a, 1)], ttl_ms=300)
        self.pass_time(300)
        assert self.counter.sweep() >= 1
        tally = {what: n for (ns, what), n in self.counter.hold_tally().items() if ns == self.ns}
        assert tally == {"units:hold": 11, "holds:hold": 5, "units:confirm": 3,
                         "holds:confirm": 2, "units:release": 3, "holds:release": 1,
                         "units:expire": 5, "holds:expire": 2}

    def test_every_transition_is_one_recorded_movement_per_line(self) -> None:
        a, b = self.skus(2)
        self.counter.load(self.ns, a, Figures(10, 0, seq=1))
        self.counter.load(self.ns, b, Figures(10, 0, seq=1))
        rid = self.rid("r")
        self.hold(rid, [(a, 2), (b, 3)], buyer="ann")
        self.step("confirm", rid)
        assert self.counter.read(self.ns, a) == Figures(10, 2, seq=3, held=0)
        assert self.counter.read(self.ns, b) == Figures(10, 3, seq=3, held=0)


def counter_machine(make_counter: type[Counter] | object) -> type[RuleBasedStateMachine]:
    """A state machine comparing the counter made by ``make_counter()`` with the domain rules."""

    class CounterMatchesTheDomain(RuleBasedStateMachine):
        # Totals near the maximum too (and past it: made before the rule), adjustments then
        # meet it.
        @initialize(total=st.integers(0, 20) | st.integers(rules.MAX_TOTAL - 10,
                                                           rules.MAX_TOTAL + 10),
                    limit=st.none() | st.integers(1, 6))
        def start(self, total: int, limit: int | None) -> None:
            self.counter: Counter = make_counter()  # type: ignore[operator]
            self.ns = "m-" + uuid.uuid4().hex[:8]
            self.model = (total, 0, 0)
            self.limit, self.used = limit, dict[str, int]()
            self.seen: dict[str, tuple[str, Outcome]] = {}
            self.counter.load_allowances(self.ns, {"sku": (limit, {})})
            self.counter.load(self.ns, "sku", Figures(total, 0, seq=1))
            self.seq = 1
            # rid -> [qty, buyer, the reservation's state, expires_ms, its hold still open]
            self.holds: dict[str, list[Any]] = {}
            # The counter's clock stands still but where the machine moves it: holds expire
            # as it runs.
            self.now = 1_000_000
            set_clock(self.counter, self.now)

        @rule(kind=st.sampled_from(["decrement", "refund", "adjust"]),
              qty=st.integers(-5, 8), key=st.sampled_from(["a", "b", "c", "d", "e", None]),
              buyer=st.sampled_from([None, "x", "y"]))
        def move(self, kind: rules.Kind, qty: int, key: str | None, buyer: str | None) -> None:
            got = self.counter.apply(self.ns, "sku", kind, qty, key, buyer=buyer)
            request = f"{kind}:{qty}:{buyer}" if buyer else f"{kind}:{qty}"
            if key is not None and key in self.seen:
                seen_request, seen = self.seen[key]
                expected_status = seen.status if seen_request == request else (
                    "idempotency_key_reused")
                # A success's seq comes back with it; a refusal took none.
                now, then = got.figures, seen.figures
                assert (got.status, now.total, now.consumed, got.replayed, now.seq) == (
                    expected_status, then.total, then.consumed, True, then.seq if seen.ok else 0)
                return
            used = self.used.get(buyer, 0) if buyer else 0
            try:
                if kind == "decrement":
                    rules.quantity_must_be_positive(qty)
                    rules.buyer_within_limit(self.limit, buyer, used, qty)
                after = self.after(kind, qty)
                if kind == "refund":
                    held_by = sum(q for q, who, _, _, open_ in self.holds.values()
                                  if open_ and who == buyer)
                    rules.refund_must_not_exceed_the_buyers(self.limit, buyer, used - held_by,
                                                            qty)
                self.model = after
                self.seq += 1
                if buyer:
                    self.used[buyer] = max(0, used + (qty if kind == "decrement" else
                                                      -qty if kind == "refund" else 0))
                expected = Outcome("ok", self.figures())
            except errors.DomainError as refusal:
                remaining = refusal.details.get("remaining")
                expected = Outcome(refusal.code, self.figures(),
                                   remaining=remaining if isinstance(remaining, int) else None)
            assert got == expected
            if key is not None:
                self.seen[key] = (request, got)

        @rule(ms=st.integers(0, 1500))
        def tick(self, ms: int) -> None:
            self.now += ms
            set_clock(self.counter, self.now)

        def end_hold(self, rid: str, kind: rules.Kind) -> None:
            qty, buyer, _, _, _ = self.holds[rid]
            self.model = self.after(kind, qty)
            self.seq += 1
            if buyer and kind != "confirm":  # given back, never below nothing
                self.used[buyer] = max(0, self.used[buyer] - qty)
            self.holds[rid][4] = False

        def end_due(self) -> None:
            for due, (_, _, _, expires, open_) in list(self.holds.items()):
                if open_ and expires <= self.now:
                    self.end_hold(due, "expire")

        @rule(qty=st.integers(1, 6), buyer=st.sampled_from([None, "x", "y"]))
        def hold(self, qty: int, buyer: str | None) -> None:
            self.tries = getattr(self, "tries", 0) + 1  # a fresh key (and id) each time
            rid = self.counter.reservation_id(self.ns, f"h{self.tries}")
            ttl = 1000
            got = self.counter.reservation_step("hold", self.ns, rid, [("sku", qty)],
                                                ttl_ms=ttl, buyer=buyer, fingerprint=str(qty))
            self.end_due()  # a hold on the item ends its due ones
            used = self.used.get(buyer, 0) if buyer else 0
            try:
                rules.buyer_within_limit(self.limit, buyer, used, qty)
                self.model = self.after("hold", qty)
            except errors.DomainError as refusal:
                assert got.status == refusal.code
                return
            assert (got.status, got.state) == ("ok", "held")
            self.seq += 1
            if buyer:
                self.used[buyer] = used + qty
            self.holds[rid] = [qty, buyer, "held", self.now + ttl, True]

        @precondition(lambda self: bool(getattr(self, "holds", None)))
        @rule(pick=st.integers(0, 1000), step=st.sampled_from(["confirm", "release"]))
        def end(self, pick: int, step: Step) -> None:
            rid = list(self.holds)[pick % len(self.holds)]  # in the order they were made
            qty, _, state, expires, open_ = self.holds[rid]
            got = self.counter.reservation_step(step, self.ns, rid, [("sku", qty)])
            expired_now = state == "held" and self.now >= expires
            if expired_now:  # its time is up: it expires as it is touched
                if open_:
                    self.end_hold(rid, "expire")
                state = self.holds[rid][2] = "expired"
            ended = {"confirm": "confirmed", "release": "released"}[step]
            if state == "held":
                assert (got.status, got.state, got.replayed) == ("ok", ended, False)
                self.end_hold(rid, "confirm" if step == "confirm" else "release")
                self.holds[rid][2] = ended
            elif state == ended or (step, state) == ("release", "expired"):
                assert (got.status, got.state, got.replayed) == ("ok", state, not expired_now)
            else:
                assert got.status == f"reservation_{state}"

        def after(self, kind: rules.Kind, qty: int) -> tuple[int, int, int]:
            total, consumed, held = self.model
            return rules.apply(kind, total, consumed, qty, held)

        def figures(self) -> Figures:
            total, consumed, held = self.model
            return Figures(total, consumed, held, self.limit, self.seq)

        def teardown(self) -> None:
            if hasattr(self, "counter"):
                restart_clock(self.counter)

        @invariant()
        def figures_agree(self) -> None:
            if hasattr(self, "counter"):
                self.end_due()  # a read, as any step on the item, ends its holds past expiry
                assert self.counter.read(self.ns, "sku") == self.figures()

    CounterMatchesTheDomain.TestCase.settings = settings(max_examples=60, deadline=None,
                                                          stateful_step_count=25)
    return CounterMatchesTheDomain


class OutboxContract(abc.ABC):
    """A counter that records movements, and the outbox that hands them to the ledger."""

    @abc.abstractmethod
    def make_pair(self) -> tuple[Counter, Outbox]: ...

    def setup_method(self) -> None:
        self.counter, self.outbox = self.make_pair()
        self.ns = "o-" + uuid.uuid4().hex[:8]
        self.counter.load(self.ns, "sku", Figures(10, 0, seq=1))

    def _mine(self, consumer: str = "w1") -> list[OutboxEntry]:
        return [e for p in range(self.outbox.partitions)
                for e in self.outbox.read(p, consumer, 1000) if e.namespace == self.ns]

    def test_recorded_movements_reach_the_outbox_in_order(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 3, "k1", record=True)
        self.counter.apply(self.ns, "sku", "decrement", 30, "k2", record=True)  # refused
        self.counter.apply(self.ns, "sku", "refund", 1, "r1", record=True)
        self.counter.apply(self.ns, "sku", "adjust", 5, None, record=True)
        self.counter.apply(self.ns, "sku", "decrement", 1, "k3")  # not recorded
        entries = self._mine()
        assert [(e.seq, e.kind, e.qty, e.idempotency_key, e.total, e.consumed)
                for e in entries] == [(2, "decrement", 3, "k1", 10, 3),
                                      (3, "refund", 1, "r1", 10, 2),
                                      (4, "adjust", 5, None, 15, 2)]
        assert {e.gen for e in entries} == {None}  # loaded without a generation
        self.counter.load(self.ns, "g", Figures(10, 0, seq=1, gen="gen-x"))
        self.counter.apply(self.ns, "g", "decrement", 1, "k", record=True)
        assert [e.gen for e in self._mine("w2") if e.sku == "g"] == ["gen-x"]
        assert self.outbox.pending(self.ns)["sku"].seq == 4

    def test_entries_keep_names_and_keys_whatever_they_hold(self) -> None:
        sku = "2 3|4é"  # digits, a space, the separator and non-ASCII: read back as written
        self.counter.load(self.ns, sku, Figures(10, 0, seq=1))
        self.counter.apply(self.ns, sku, "decrement", 3, "| 7 é|", record=True)
        self.counter.apply(self.ns, sku, "adjust", -4, None, record=True)
        self.counter.apply(self.ns, sku, "decrement", 1, "k 2", record=True, buyer="b:1@x.y-z")
        assert [(e.namespace, e.sku, e.seq, e.kind, e.qty, e.idempotency_key, e.total,
                 e.consumed, e.buyer) for e in self._mine()] == [
            (self.ns, sku, 2, "decrement", 3, "| 7 é|", 10, 3, None),
            (self.ns, sku, 3, "adjust", -4, None, 6, 3, None),
            (self.ns, sku, 4, "decrement", 1, "k 2", 6, 4, "b:1@x.y-z")]

    def test_an_extension_is_an_extend_movement_of_each_line_with_its_new_expiry(
            self) -> None:
        self.counter.load(self.ns, "b", Figures(5, 0, seq=1))
        rid = self.counter.reservation_id(self.ns, "r")
        lines = [("sku", 2), ("b", 1)]
        self.counter.reservation_step("hold", self.ns, rid, lines, ttl_ms=60_000, buyer="ann",
                                      fingerprint="f")
        extended = self.counter.reservation_step("extend", self.ns, rid, lines, ttl_ms=600_000)
        assert extended.status == "ok"
        assert sorted((e.sku, e.seq, e.kind, e.qty, e.buyer, e.reservation_id, e.held,
                       e.expires_ms) for e in self._mine()) == [
            ("b", 2, "hold", 1, "ann", rid, 1, extended.created_ms + 60_000),
            ("b", 3, "extend", 1, "ann", rid, 1, extended.expires_ms),
            ("sku", 2, "hold", 2, "ann", rid, 2, extended.created_ms + 60_000),
            ("sku", 3, "extend", 2, "ann", rid, 2, extended.expires_ms)]
        assert [f.seq for f in extended.figures] == [3, 3]

    def test_acknowledged_entries_leave_the_outbox(self) -> None:
        self.counter.apply(self.ns, "sku", "decrement", 1, "k1", record=True)
        self.counter.apply(self.ns, "sku", "decrement", 1, "k2", record=True)
        first = self._mine()
        assert len(first) == 2
        self.outbox.ack(first[0].partition, [first[0].id])
        assert [e.seq for e in self._mine()] == [3]  # unacknowledged ones come back
        self.outbox.ack(first[1].partition, [first[1].id])
        assert self._mine() == [] and "sku" not in self.outbox.pending(self.ns)


class RedisRecordTtls:
    """``assert_remembered_for`` for the Redis counters: the record's TTL, as Redis keeps it."""

    def assert_remembered_for(self, counter: Counter, namespace: str, sku: str, key: str,
                              move: tuple[Kind, int], seconds: int) -> None:
        assert isinstance(counter, RedisCounter)
        left = counter.client.pttl(counter.keys.idempotency(namespace, sku, key))
        assert (seconds - 5) * 1000 < left <= seconds * 1000, (key, left)


def redis_time_ms(counter: RedisCounter) -> int:
    seconds, micros = counter.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def pass_redis_time(counter: Counter, ms: int) -> None:
    """Wait until Redis's clock (the one scripts read) is ``ms`` past now, polling it: for a
    counter in another process, whose clock a test cannot stop (else ``move_clock``)."""
    assert isinstance(counter, RedisCounter)
    until = redis_time_ms(counter) + ms
    wait_until(lambda: redis_time_ms(counter) >= until, 10, f"Redis's clock to pass {ms} ms")


def set_clock(counter: Counter, ms: int) -> None:
    """Stop the clock that ``counter``'s holds expire by at the moment ``ms``: for a Redis
    counter, the scripts' clock in every partition of its key space (lib.lua's now_ms) and the
    counter's own reading of it."""
    if isinstance(counter, RedisCounter):
        pipe = counter.client.pipeline(transaction=False)
        for partition in range(counter.keys.partitions):
            pipe.set(counter.keys.clock(partition), ms, ex=3600)
        pipe.execute()
    setattr(counter, "clock_ms", lambda: ms)  # noqa: B010 - the twin's clock is duck-typed


def restart_clock(counter: Counter) -> None:
    """Let a Redis counter's scripts read Redis's clock again."""
    if isinstance(counter, RedisCounter):
        pipe = counter.client.pipeline(transaction=False)
        for partition in range(counter.keys.partitions):
            pipe.delete(counter.keys.clock(partition))
        pipe.execute()
        counter.clock_ms = lambda: int(time.time() * 1000)


def move_clock(counter: Counter, ms: int) -> None:
    """Move a Redis counter's clock ``ms`` on at once. The first move stops it at Redis's time
    then; it stands still between moves."""
    assert isinstance(counter, RedisCounter)
    stopped = counter.client.get(counter.keys.clock(0))
    set_clock(counter, (redis_time_ms(counter) if stopped is None else int(stopped)) + ms)


def heard(listener: Any, count: int, what: str) -> list[dict[str, Any]]:
    """The first ``count`` JSON messages a pub/sub listener receives (``what``: for the
    failure message)."""
    import json

    got: list[dict[str, Any]] = []

    def arrived() -> bool:
        message = listener.get_message(timeout=0.1)
        if message is not None:
            got.append(json.loads(message["data"]))
        return len(got) >= count

    wait_until(arrived, 10, what)
    return got


def check_reserved_events(counter: RedisCounter, namespace: str, skus: list[str]) -> None:
    """A hold of a line per sku publishes, per line, the Reserved event the domain would, with
    the request's idempotency key (``counter`` publishes on its events channel)."""
    from allocation.adapters.event_publisher import event_message
    from allocation.domain import events

    listener = counter.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(counter.events_channel)
    try:
        lines = [(sku, n + 1) for n, sku in enumerate(skus)]
        for sku, _ in lines:
            counter.load(namespace, sku, Figures(10, 0, seq=1))
        rid = counter.reservation_id(namespace, "cart-key")
        held = counter.reservation_step("hold", namespace, rid, lines, ttl_ms=60_000,
                                        fingerprint="f", idempotency_key="cart-key")
        assert held.ok, held
        expected = [event_message(events.Reserved(namespace, sku, 10, 0, rid, qty, "cart-key",
                                                  held=qty)) for sku, qty in lines]
        got = heard(listener, len(expected), "the Reserved events")
        assert sorted(got, key=lambda e: e["sku"]) == sorted(expected, key=lambda e: e["sku"])
    finally:
        listener.close()
