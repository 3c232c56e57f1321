"""The sale's scripts (adapters/lua/sale_*.lua) on the embedded Redis, against the waiting
room's rules (domain/sale.py) and on a clock the tests move."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_sale import CLAIM_LEASE_MS, RedisSaleQueue
from allocation.adapters.sale_queue import HoldLink
from allocation.domain import errors
from allocation.domain.outcome import Figures
from allocation.domain.sale import Sale, admission_room, is_sold_out, ticket_state
from tests.helpers.counter_contract import set_clock
from tests.helpers.embedded import embedded_counter

T0 = 1_900_000_000_000
NS = "shop"


@dataclass
class Room:
    counter: RedisCounter
    queue: RedisSaleQueue

    def at(self, ms: int) -> None:
        set_clock(self.counter, ms)

    def stock(self, sku: str, total: int, consumed: int = 0, held: int = 0) -> None:
        self.counter.load(NS, sku, Figures(total, consumed, held))

    def sale(self, **terms: object) -> Sale:
        sale = Sale(NS, "drop", ("a", "b"), T0, **terms)  # type: ignore[arg-type]
        self.queue.put(sale)
        return sale

    def incarnation(self, name: str = "drop") -> str:
        inc = self.counter.client.hget(self.queue.keys.sale(NS, name)[0], "inc")
        return (inc or b"").decode()

    # The queue's calls on its incarnation now, as a ticket of it would make them.
    def claim(self, ns: str, name: str, place: int, qty: int, key: str | None = None) -> str:
        return self.queue.claim(ns, name, place, qty, key, incarnation=self.incarnation(name))

    def resolve(self, ns: str, name: str, place: int, used: bool,
                hold: HoldLink | None = None) -> None:
        self.queue.resolve(ns, name, place, used, hold, incarnation=self.incarnation(name))

    def pass_at(self, ns: str, name: str, place: int) -> tuple[str | None, int]:
        return self.queue.pass_at(ns, name, place, incarnation=self.incarnation(name))


@pytest.fixture
def room() -> Room:
    counter = embedded_counter()
    room = Room(counter, RedisSaleQueue(counter.client, counter.keys))
    room.at(T0 - 1000)
    room.stock("a", 3)
    room.stock("b", 2)
    return room


class TestIncarnation:
    """docs/adr/0046: a queue's state made again (Redis lost it) is another incarnation."""

    def lose(self, room: Room, *which: int) -> None:
        keys = room.queue.keys.sale(NS, "drop")
        room.counter.client.delete(*(keys[i] for i in which))

    def test_a_put_draws_one_and_a_put_again_keeps_it(self, room: Room) -> None:
        sale = room.sale()
        first = room.incarnation()
        assert first and room.queue.join(NS, "drop", "ann").incarnation == first
        room.queue.put(sale)
        assert room.incarnation() == first
        assert room.queue.join(NS, "drop", "ann").number == 0

    def test_a_queue_made_again_is_another_and_keeps_nothing_of_the_last(
            self, room: Room) -> None:
        sale = room.sale(admit_factor=1)
        for n in range(3):
            room.queue.join(NS, "drop", f"b{n}")
        room.at(T0)
        assert room.queue.advance(sale).figures.serving == 3  # type: ignore[union-attr]
        old = room.incarnation()
        assert room.claim(NS, "drop", 0, 1) == "ok"
        self.lose(room, 0)  # the sale's hash only: its buyers, passes, claims left over
        room.queue.put(sale)
        new = room.incarnation()
        assert new and new != old
        joined = room.queue.join(NS, "drop", "b2")
        assert (joined.status, joined.number, joined.incarnation) == ("joined", 0, new)
        room.queue.resolve(NS, "drop", 0, used=True, incarnation=old)  # nothing: not of it
        figures = room.queue.advance(sale).figures
        assert figures is not None and figures.incarnation == new
        assert (figures.joined, figures.used, figures.serving) == (1, 0, 1)
        assert room.queue.claim(NS, "drop", 0, 1, incarnation=old) == "other"
        with pytest.raises(errors.NotFound):
            room.queue.pass_at(NS, "drop", 0, incarnation=old)
        assert room.claim(NS, "drop", 0, 1) == "ok"


class TestJoin:
    def test_numbers_in_order_and_one_per_buyer(self, room: Room) -> None:
        room.sale()
        assert [room.queue.join(NS, "drop", b).number for b in ("ann", "bob", "cat")] == [0, 1, 2]
        again = room.queue.join(NS, "drop", "bob")
        assert (again.status, again.number, again.joined_at_ms) == ("again", 1, T0 - 1000)

    def test_an_unknown_sale_is_missing(self, room: Room) -> None:
        assert room.queue.join(NS, "nope", "ann").status == "missing"

    def test_a_closed_sale_takes_nobody_new_but_answers_its_own(self, room: Room) -> None:
        sale = room.sale()
        room.queue.join(NS, "drop", "ann")
        room.queue.put(Sale(**{**sale.__dict__, "closed": True}))
        assert room.queue.join(NS, "drop", "bob").status == "closed"
        assert room.queue.join(NS, "drop", "ann").status == "again"


class TestAdvance:
    def test_nobody_is_admitted_before_the_opening(self, room: Room) -> None:
        sale = room.sale()
        room.queue.join(NS, "drop", "ann")
        advanced = room.queue.advance(sale)
        assert advanced.figures is not None
        assert (advanced.figures.serving, advanced.figures.prequeue) == (0, None)

    def test_the_opening_fixes_the_prequeue_and_admits_by_the_rule(self, room: Room) -> None:
        sale = room.sale(admit_factor=2)
        for n in range(30):
            room.queue.join(NS, "drop", f"b{n}")
        room.at(T0)
        room.queue.join(NS, "drop", "late")
        advanced = room.queue.advance(sale)
        figures = advanced.figures
        assert figures is not None and advanced.available == 5
        assert (figures.prequeue, figures.joined) == (30, 31)
        assert figures.serving == figures.outstanding == 10  # 2 x 5 units
        assert room.queue.advance(sale).figures.serving == 10  # type: ignore[union-attr]

    def test_max_admitted_caps_it(self, room: Room) -> None:
        sale = room.sale(max_admitted=4)
        for n in range(30):
            room.queue.join(NS, "drop", f"b{n}")
        room.at(T0)
        assert room.queue.advance(sale).figures.outstanding == 4  # type: ignore[union-attr]

    def test_an_expired_pass_gives_its_room_back(self, room: Room) -> None:
        sale = room.sale(admit_factor=1, pass_ttl_seconds=30)
        for n in range(8):
            room.queue.join(NS, "drop", f"b{n}")
        room.at(T0)
        assert room.queue.advance(sale).figures.serving == 5  # type: ignore[union-attr]
        room.at(T0 + 30_000)
        figures = room.queue.advance(sale).figures
        assert figures is not None
        assert (figures.expired, figures.serving, figures.outstanding) == (5, 8, 3)
        assert room.pass_at(NS, "drop", 0) == ("expired", 0)

    def test_sold_out_with_nothing_available_nor_held_and_back_again(self, room: Room) -> None:
        sale = room.sale()
        room.queue.join(NS, "drop", "ann")
        room.at(T0)
        room.stock("a", 3, consumed=3)
        room.stock("b", 2, consumed=1, held=1)
        assert not room.queue.advance(sale).figures.sold_out  # type: ignore[union-attr]
        room.stock("b", 2, consumed=2)
        assert room.queue.advance(sale).figures.sold_out  # type: ignore[union-attr]
        room.stock("b", 3, consumed=2)  # an adjustment brings one back
        assert not room.queue.advance(sale).figures.sold_out  # type: ignore[union-attr]


class TestPasses:
    def opened(self, room: Room, buyers: int = 3) -> Sale:
        sale = room.sale(admit_factor=1)
        room.at(T0)
        for n in range(buyers):
            room.queue.join(NS, "drop", f"b{n}")
        room.queue.advance(sale)
        return sale

    def test_a_claim_used_spends_the_pass_once(self, room: Room) -> None:
        self.opened(room)
        assert room.claim(NS, "drop", 1, 1) == "ok"
        assert room.claim(NS, "drop", 1, 1) == "busy"
        room.resolve(NS, "drop", 1, used=True)
        assert room.claim(NS, "drop", 1, 1) == "used"
        assert room.pass_at(NS, "drop", 1)[0] == "used"

    def test_the_key_that_spent_a_pass_comes_through_again_and_no_other(self,
                                                                      room: Room) -> None:
        sale = self.opened(room)
        assert room.claim(NS, "drop", 1, 1, "k1") == "ok"
        assert room.claim(NS, "drop", 1, 1, "k1") == "busy"  # still in flight
        room.resolve(NS, "drop", 1, used=True)
        assert [room.claim(NS, "drop", 1, 1, k) for k in ("k1", "k2", None)] == [
            "replay", "used", "used"]
        assert room.claim(NS, "drop", 2, 1, "k3") == "ok"  # and one that lapses
        room.at(T0 + CLAIM_LEASE_MS)
        room.queue.advance(sale)
        assert [room.claim(NS, "drop", 2, 1, k) for k in ("k3", "k1")] == [
            "replay", "used"]

    def test_a_hold_keeps_the_pass_until_it_is_settled(self, room: Room) -> None:
        sale = self.opened(room)
        assert room.claim(NS, "drop", 1, 1, "r1") == "ok"
        room.resolve(NS, "drop", 1, used=False, hold=HoldLink("0.r1", T0 + 60_000))
        assert [room.claim(NS, "drop", 1, 1, k) for k in ("r1", "r2")] == [
            "replay", "held"]
        assert room.pass_at(NS, "drop", 1)[0] == "outstanding"
        figures = room.queue.advance(sale).figures
        assert figures is not None and (figures.outstanding, figures.used) == (3, 0)  # kept
        room.queue.settle(NS, "drop", "0.r1", "back")
        assert room.claim(NS, "drop", 1, 1, "k2") == "ok"
        room.resolve(NS, "drop", 1, used=False, hold=HoldLink("0.r2", T0 + 60_000))
        room.queue.settle(NS, "drop", "0.r2", "used")
        room.queue.settle(NS, "drop", "0.r2", "back")  # settled once: no more
        assert room.claim(NS, "drop", 1, 1, "k3") == "used"
        figures = room.queue.advance(sale).figures
        assert figures is not None and (figures.outstanding, figures.used) == (2, 1)

    def test_a_refused_movement_gives_the_pass_back(self, room: Room) -> None:
        self.opened(room)
        assert room.claim(NS, "drop", 0, 1) == "ok"
        room.resolve(NS, "drop", 0, used=False)
        assert room.claim(NS, "drop", 0, 1) == "ok"

    def test_no_pass_where_nobody_was_admitted(self, room: Room) -> None:
        self.opened(room)
        assert room.claim(NS, "drop", 7, 1) == "unknown"
        assert room.pass_at(NS, "drop", 7) == (None, 0)

    def test_an_expired_pass_is_refused(self, room: Room) -> None:
        self.opened(room)
        room.at(T0 + 300_000)
        assert room.claim(NS, "drop", 0, 1) == "expired"

    def test_a_claim_that_never_answers_counts_as_used(self, room: Room) -> None:
        sale = self.opened(room)
        assert room.claim(NS, "drop", 2, 1) == "ok"
        room.at(T0 + CLAIM_LEASE_MS)
        figures = room.queue.advance(sale).figures
        assert figures is not None and figures.used == 1
        assert room.claim(NS, "drop", 2, 1) == "used"

    def test_units_used_while_the_figures_are_read_count_as_gone(self, room: Room) -> None:
        sale = self.opened(room, buyers=10)  # 5 units, factor 1: 5 admitted
        read_units = room.queue._units

        def a_use_lands_meanwhile(of: Sale) -> tuple[int, int, tuple[str, ...]]:
            units = read_units(of)  # 5 available: the sale below has not reached the items
            assert room.claim(NS, "drop", 0, 2) == "ok"
            room.resolve(NS, "drop", 0, used=True)
            return units

        setattr(room.queue, "_units", a_use_lands_meanwhile)  # noqa: B010 - the race, staged
        figures = room.queue.advance(sale).figures
        # The used pass's two units count as gone: 4 outstanding, within 1 x (5 - 2)... and
        # nobody new admitted (4 > 3).
        assert figures is not None and (figures.outstanding, figures.serving) == (4, 5)

    def test_units_of_a_claim_in_flight_count_as_gone(self, room: Room) -> None:
        sale = self.opened(room, buyers=10)
        assert room.claim(NS, "drop", 0, 1) == "ok"
        room.resolve(NS, "drop", 1, used=False)  # no claim there: changes nothing
        room.claim(NS, "drop", 1, 1)
        room.resolve(NS, "drop", 1, used=True)
        # Available still 5 (nothing sold in the items): one claim in flight (1 unit) leaves
        # room for 1 x (5 - 1) = 4 outstanding; 4 are (one used), so nobody new.
        figures = room.queue.advance(sale).figures
        assert figures is not None and (figures.outstanding, figures.serving) == (4, 5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["join", "advance", "use", "stock", "time",
                                           "empty"]),
                          st.integers(0, 20)), max_size=40),
       st.sampled_from([1.0, 1.5, 2.0, 3.0]), st.one_of(st.none(), st.integers(1, 12)))
def test_the_scripts_follow_the_rules(ops: list[tuple[str, int]], factor: float,
                                      most: int | None) -> None:
    """Joins, steps on, passes used, stock changed or sold out and time moved, in any order:
    the serving figure, the passes outstanding, sold out and the tickets' positions are what
    the domain's rules make of the same figures."""
    counter = embedded_counter()
    room = Room(counter, RedisSaleQueue(counter.client, counter.keys))
    now = T0
    room.at(now)
    room.stock("a", 3)
    room.stock("b", 2)
    sale = room.sale(admit_factor=factor, max_admitted=most, pass_ttl_seconds=60)
    figures = room.queue.advance(sale).figures
    assert figures is not None
    for op, n in ops:
        if op == "join":
            room.queue.join(NS, "drop", f"b{n}")
        elif op == "stock":
            room.stock("a", n)
        elif op == "empty":  # every unit gone: sold out, until "stock" brings some back
            room.stock("a", 0)
            room.stock("b", 0)
        elif op == "time":
            now += n * 5_000
            room.at(now)
        elif op == "use" and figures.serving:
            place = n % figures.serving
            if room.claim(NS, "drop", place, 1) == "ok":
                room.resolve(NS, "drop", place, used=True)
        before = room.queue.advance(sale, most=0).figures  # expiries only, nothing admitted
        after = room.queue.advance(sale)
        assert before is not None and after.figures is not None
        pending = 0  # every use was resolved before the figures were read
        room_now = admission_room(after.available, pending, before.outstanding, factor, most)
        admitted = min(room_now, before.joined - before.serving)
        assert after.figures.serving == before.serving + admitted
        assert after.figures.outstanding == before.outstanding + admitted
        if admitted:
            assert after.figures.outstanding <= factor * after.available
        figures = after.figures
        assert figures.sold_out == is_sold_out(after.available, after.held)
        views = [ticket_state(number, figures) for number in range(figures.joined)]
        assert {view.state for view in views} <= {"admitted", "waiting", "sold_out"}
        # Every ticket not admitted has a place of its own, sold out or not: 0, 1, 2, ...
        # ahead of it, as many as the scripts count waiting (joined - serving).
        ahead = sorted(v.position for v in views if v.state != "admitted"
                       and v.position is not None)
        assert ahead == list(range(figures.joined - figures.serving))
        assert all(v.position == 0 for v in views if v.state == "admitted")


def test_the_scripts_announce_opening_selling_out_and_closing(room: Room) -> None:
    channel = f"{room.counter.keys.prefix}:events"
    queue = RedisSaleQueue(room.counter.client, room.counter.keys, channel)
    listener = room.counter.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    sale = Sale(NS, "drop", ("a", "b"), T0)
    queue.put(sale)
    queue.join(NS, "drop", "ann")
    room.at(T0)
    queue.advance(sale)
    room.stock("a", 3, consumed=3)
    room.stock("b", 2, consumed=2)
    queue.advance(sale)
    queue.advance(sale)  # still sold out: said once
    queue.put(Sale(NS, "drop", ("a", "b"), T0, closed=True))
    heard = []
    for _ in range(50):
        message = listener.get_message(timeout=0.1)
        if message is not None:
            heard.append(json.loads(message["data"]))
        if len(heard) == 3:
            break
    listener.close()
    assert [(e["event"], e["namespace"], e["sale"]) for e in heard] == [
        ("SaleOpened", NS, "drop"), ("SaleSoldOut", NS, "drop"), ("SaleClosed", NS, "drop")]
    assert heard[0]["prequeue"] == 1
