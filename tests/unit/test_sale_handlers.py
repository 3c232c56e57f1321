"""The waiting room's commands on the bus (service_layer/sales.py, sale_passes.py): the record
is a fake, the queue the production scripts on the embedded Redis, on a clock the test moves."""

from __future__ import annotations

import dataclasses
from typing import NoReturn

import pytest

from allocation.adapters.sale_queue import Advanced
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.errors import PassInvalid, PassRequired, SaleClosed, SkuGated
from allocation.domain.sale import Sale
from allocation.service_layer import sales
from tests.helpers.apps import FakeApp
from tests.helpers.fakes import FakeUnitOfWork

T0 = 1_900_000_000_000
NS = "shop"


@pytest.fixture
def shop() -> FakeApp:
    shop = FakeApp()
    shop.now = T0
    for sku, total in (("a", 2), ("b", 1), ("c", 5)):
        shop.bus.handle(commands.InitInventory(NS, sku, total))
    return shop


def put(shop: FakeApp, name: str = "drop", skus: tuple[str, ...] = ("a", "b"),
        **terms: object) -> sales.SaleAnswer:
    answer: sales.SaleAnswer = shop.bus.handle(commands.PutSale(
        NS, name, skus, **{"opens_at_ms": T0, **terms}))  # type: ignore[arg-type]
    return answer


def join(shop: FakeApp, buyer: str, sale: str = "drop") -> sales.TicketAnswer:
    answer: sales.TicketAnswer = shop.bus.handle(commands.JoinQueue(NS, sale, buyer))
    return answer


def poll(shop: FakeApp, ticket: str) -> sales.TicketAnswer:
    shop.application.bus.services.sales._figures.clear()  # the next second, at once
    return sales.poll_ticket(shop.bus.services, NS, "drop", ticket)


def lost(shop: FakeApp) -> None:
    """Redis loses every key of the app (a restart without persistence), its clock kept."""
    client = shop.counter.client
    for key in client.scan_iter(match=f"{shop.counter.keys.prefix}:*", count=10_000):
        client.delete(key)
    shop.now = shop.now


def decrement(shop: FakeApp, buyer: str | None, sale_pass: str | None, key: str,
              sku: str = "a") -> object:
    return shop.bus.handle(commands.Decrement(NS, sku, 1, key, buyer, sale_pass))


class TestPutSale:
    def test_created_then_the_same_again(self, shop: FakeApp) -> None:
        first = put(shop)
        assert first.created and first.state == "open"
        assert first.advanced.available == 3
        again = put(shop)
        assert not again.created and again.sale == first.sale

    def test_the_same_skus_in_another_order_are_the_same_sale(self, shop: FakeApp) -> None:
        first = put(shop)
        again = put(shop, skus=("b", "a"))
        assert not again.created and again.sale == first.sale  # the kept order stands

    def test_other_terms_under_the_name_are_refused(self, shop: FakeApp) -> None:
        put(shop)
        with pytest.raises(errors.AlreadyExists):
            put(shop, admit_factor=3)

    def test_an_unknown_sku_is_named(self, shop: FakeApp) -> None:
        with pytest.raises(errors.NotFound) as refused:
            put(shop, skus=("a", "nope"))
        assert refused.value.details == {"sku": "nope"}
        assert shop.store.sales == {}

    def test_a_sku_in_another_open_sale_is_refused_until_it_closes(self,
                                                                   shop: FakeApp) -> None:
        put(shop)
        with pytest.raises(SkuGated) as refused:
            put(shop, "other", ("c", "b"))
        assert refused.value.details == {"sku": "b"}
        closed: sales.SaleAnswer = shop.bus.handle(commands.CloseSale(NS, "drop"))
        assert closed.state == "closed"
        assert put(shop, "other", ("c", "b")).created

    def test_before_opens_at_it_is_scheduled(self, shop: FakeApp) -> None:
        assert put(shop, opens_at_ms=T0 + 60_000).state == "scheduled"


class TestQueue:
    def test_one_ticket_per_buyer(self, shop: FakeApp) -> None:
        put(shop, opens_at_ms=T0 + 60_000)
        first = join(shop, "ann")
        again = join(shop, "ann")
        assert first.joined and not again.joined
        assert first.ticket == again.ticket and first.state == "scheduled"

    def test_admitted_by_the_stock_with_a_pass(self, shop: FakeApp) -> None:
        put(shop, admit_factor=1)  # 3 units: 3 admitted
        tickets = [join(shop, f"b{n}").ticket for n in range(5)]
        states = [poll(shop, t) for t in tickets]
        assert [s.state for s in states] == ["admitted"] * 3 + ["waiting"] * 2
        assert [s.position for s in states[3:]] == [0, 1]
        assert all(s.sale_pass for s in states[:3])

    def test_after_redis_lost_its_data_the_loop_rebuilds_the_items_and_admits(
            self, shop: FakeApp) -> None:
        """Probe 7: the sale admitted nobody until someone read a gated item."""
        put(shop, admit_factor=1)  # 3 units: 3 admitted
        shop.drain()
        lost(shop)
        room = shop.bus.services.sales
        room.refresh()  # the sale's loop, once
        advanced = room.figures(room.open_sales()[0])
        assert (advanced.available, advanced.missing) == (3, ())
        assert shop.counter.read(NS, "a") is not None  # nobody read it
        assert poll(shop, join(shop, "ann").ticket).state == "admitted"

    def test_a_forged_ticket_or_another_sales_is_not_found(self, shop: FakeApp) -> None:
        put(shop)
        put(shop, "other", ("c",))
        ticket = join(shop, "ann", "other").ticket
        for bad in (ticket, ticket[:-2] + "xx"):
            with pytest.raises(errors.NotFound):
                sales.poll_ticket(shop.bus.services, NS, "drop", bad)

    def test_a_closed_sale_takes_no_one_and_its_tickets_read_closed(self,
                                                                     shop: FakeApp) -> None:
        put(shop)
        ticket = join(shop, "ann").ticket
        shop.bus.handle(commands.CloseSale(NS, "drop"))
        with pytest.raises(SaleClosed):
            join(shop, "bob")
        assert poll(shop, ticket).state == "closed"

    def test_an_unknown_sale(self, shop: FakeApp) -> None:
        with pytest.raises(errors.NotFound):
            join(shop, "ann", "nope")


class TestRedisLostTheQueue:
    """Probe 6: the queue Redis lost and the one made again numbered from 0 alike, so old
    tickets and passes were taken for new ones (two buyers admitted on one number, a pass
    "used" by another buyer). Each incarnation of a queue has its id, and tickets and passes
    carry it (docs/adr/0046)."""

    def test_old_tickets_and_passes_are_not_the_new_queues(self, shop: FakeApp) -> None:
        put(shop, max_admitted=1)
        old = {b: join(shop, b).ticket for b in ("ann", "bob", "cat")}
        old_pass = poll(shop, old["ann"]).sale_pass
        assert old_pass is not None
        shop.drain()
        lost(shop)
        dan = join(shop, "dan")  # number 0 again, of the new queue
        shop.bus.services.sales.refresh()
        dan_pass = poll(shop, dan.ticket).sale_pass
        assert dan_pass is not None
        for ticket in old.values():
            with pytest.raises(errors.NotFound):
                poll(shop, ticket)
        with pytest.raises(PassInvalid) as refused:
            decrement(shop, "ann", old_pass, "k1")
        assert "join again" in refused.value.message
        assert decrement(shop, "dan", dan_pass, "k2").ok  # type: ignore[attr-defined]
        again = join(shop, "ann")  # one valid ticket: the new one
        assert again.joined and again.ticket != old["ann"] and again.state == "waiting"
        with pytest.raises(errors.NotFound):
            poll(shop, old["ann"])

    def test_a_retry_of_a_sale_under_an_old_pass_is_answered_as_it_was(
            self, shop: FakeApp) -> None:
        put(shop)
        sale_pass = poll(shop, join(shop, "ann").ticket).sale_pass
        first = decrement(shop, "ann", sale_pass, "k1")
        shop.drain()
        lost(shop)
        shop.bus.services.sales.refresh()
        replay = decrement(shop, "ann", sale_pass, "k1")
        assert replay.replayed and replay.figures[:2] == first.figures[:2]  # type: ignore[attr-defined]
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k2")
        assert shop.counter.read(NS, "a").consumed == 1  # type: ignore[union-attr]

    def test_a_poll_of_an_old_ticket_steps_the_queue_on_once(self, shop: FakeApp) -> None:
        put(shop)
        old = join(shop, "ann").ticket
        lost(shop)
        join(shop, "bob")
        room = shop.bus.services.sales
        steps: list[Sale] = []
        advance = room.queue.advance

        def counted(sale: Sale, most: int = 1000) -> Advanced:
            steps.append(sale)
            return advance(sale, most)

        room.queue.advance = counted  # type: ignore[method-assign]
        for _ in range(5):
            with pytest.raises(errors.NotFound):
                sales.poll_ticket(shop.bus.services, NS, "drop", old)
        assert len(steps) <= 2  # the window's step and the one that found the ticket old


class TestGate:
    def admitted(self, shop: FakeApp, buyer: str) -> str:
        answer = poll(shop, join(shop, buyer).ticket)
        assert answer.sale_pass is not None
        return answer.sale_pass

    def test_no_pass_sells_nothing(self, shop: FakeApp) -> None:
        put(shop)
        with pytest.raises(PassRequired):
            decrement(shop, "ann", None, "k1")
        assert shop.counter.read(NS, "a").consumed == 0  # type: ignore[union-attr]

    def test_a_pass_sells_once_to_its_buyer(self, shop: FakeApp) -> None:
        put(shop)
        sale_pass = self.admitted(shop, "ann")
        with pytest.raises(PassInvalid):
            decrement(shop, "bob", sale_pass, "k0")
        outcome = decrement(shop, "ann", sale_pass, "k1")
        assert outcome.ok  # type: ignore[attr-defined]
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k2")
        assert shop.counter.read(NS, "a").consumed == 1  # type: ignore[union-attr]
        assert poll(shop, join(shop, "ann").ticket).state == "used"

    def test_a_retry_of_the_decrement_that_spent_the_pass_is_its_replay(
            self, shop: FakeApp) -> None:
        put(shop)
        sale_pass = self.admitted(shop, "ann")
        first = decrement(shop, "ann", sale_pass, "k1")
        again = decrement(shop, "ann", sale_pass, "k1")
        assert first.ok and again.ok and again.replayed  # type: ignore[attr-defined]
        now, then = again.figures, first.figures  # type: ignore[attr-defined]
        assert (now.total, now.consumed, now.seq) == (then.total, then.consumed, then.seq)
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k2")
        assert shop.counter.read(NS, "a").consumed == 1  # type: ignore[union-attr]

    def test_a_retry_of_the_hold_that_spent_the_pass_is_its_replay(
            self, shop: FakeApp) -> None:
        put(shop)
        sale_pass = self.admitted(shop, "ann")

        def hold(key: str) -> object:
            return shop.bus.handle(commands.Reserve(NS, (("a", 1),), key, 60, "ann",
                                                    sale_pass))
        first, again = hold("r1"), hold("r1")
        assert again.id == first.id and again.replayed  # type: ignore[attr-defined]
        with pytest.raises(PassInvalid):
            hold("r2")
        assert shop.counter.read(NS, "a").held == 1  # type: ignore[union-attr]

    def test_a_reservations_pass_refusals_name_the_gated_line(self, shop: FakeApp) -> None:
        """As the reservation's other refusals do (probe finding 13): the first gated line's
        sku, whatever refused the pass; lines of a second sale name that sale's first line."""
        put(shop)
        sale_pass = self.admitted(shop, "ann")

        def hold(key: str, buyer: str | None, with_pass: str | None,
                 lines: tuple[tuple[str, int], ...] = (("c", 1), ("b", 1), ("a", 1))
                 ) -> errors.DomainError:
            with pytest.raises((PassRequired, PassInvalid)) as refused:
                shop.bus.handle(commands.Reserve(NS, lines, key, 60, buyer, with_pass))
            return refused.value

        assert decrement(shop, "ann", sale_pass, "k1").ok  # type: ignore[attr-defined]
        refusals = [hold("r1", "ann", None), hold("r2", None, sale_pass),
                    hold("r3", "ann", sale_pass[:-3] + "abc"), hold("r4", "bob", sale_pass),
                    hold("r5", "ann", sale_pass)]  # spent by the decrement
        assert [(r.code, r.details) for r in refusals] == [
            ("pass_required", {"sku": "b"})] + [("pass_invalid", {"sku": "b"})] * 4
        put(shop, "other", ("c",))
        both = hold("r6", "ann", sale_pass, (("a", 1), ("b", 1), ("c", 1)))
        assert (both.code, both.details) == ("pass_invalid", {"sku": "c"})
        with pytest.raises(PassRequired) as bare:  # a decrement's path names its sku
            decrement(shop, "ann", None, "k2")
        assert bare.value.details == {}
        assert [shop.counter.read(NS, sku).held for sku in "abc"] == [0, 0, 0]  # type: ignore[union-attr]

    def test_a_refused_movement_gives_the_pass_back(self, shop: FakeApp) -> None:
        put(shop, skus=("b",))
        first, second = self.admitted(shop, "ann"), self.admitted(shop, "bob")
        assert decrement(shop, "ann", first, "k1", "b").ok  # type: ignore[attr-defined]
        refused = decrement(shop, "bob", second, "k2", "b")
        assert refused.status == "insufficient_stock"  # type: ignore[attr-defined]
        shop.bus.handle(commands.AdjustTotal(NS, "b", 1, "more"))
        assert decrement(shop, "bob", second, "k3", "b").ok  # type: ignore[attr-defined]

    def test_an_expired_pass_is_refused(self, shop: FakeApp) -> None:
        put(shop, pass_ttl_seconds=30)
        sale_pass = self.admitted(shop, "ann")
        shop.now = T0 + 30_000
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k1")

    def test_an_ungated_sku_sells_as_before(self, shop: FakeApp) -> None:
        put(shop)
        assert decrement(shop, None, None, "k1", "c").ok  # type: ignore[attr-defined]

    def test_a_process_that_has_not_heard_of_the_sale_sells_nothing(self,
                                                                    shop: FakeApp) -> None:
        put(shop)
        # Another process on the same Redis, whose record shows no sale yet.
        other: Application = bootstrap(
            dataclasses.replace(Config(), redis_key_prefix=shop.counter.keys.prefix),
            uow_factory=lambda: FakeUnitOfWork(type(shop.store)()),
            redis_client=shop.counter.client, publish=lambda _: None)
        outcome = other.bus.handle(commands.Decrement(NS, "a", 1, "k1", "ann"))
        assert outcome.status == "pass_required"
        with pytest.raises(PassRequired):
            other.bus.handle(commands.Reserve(NS, (("c", 1), ("a", 1)), "r1", 60, "ann"))
        assert shop.counter.read(NS, "c").held == 0  # type: ignore[union-attr]
        assert shop.counter.read(NS, "a").consumed == 0  # type: ignore[union-attr]
        assert other.bus.handle(commands.Decrement(NS, "c", 1, "k2")).ok


def test_a_waiting_tickets_poll_asks_nothing_of_redis_or_the_record(shop: FakeApp) -> None:
    put(shop, admit_factor=1)  # 3 units: 3 admitted, the rest wait
    tickets = [join(shop, f"b{n}").ticket for n in range(6)]
    services = shop.bus.services
    sales.poll_ticket(services, NS, "drop", tickets[5])  # the figures, fresh

    def away(*_: object, **__: object) -> NoReturn:
        raise AssertionError("a round trip")

    shop.counter.client.execute_command = away  # type: ignore[method-assign]
    services = dataclasses.replace(services, uow_factory=away)
    services.sales.uow_factory = away
    try:
        assert [sales.poll_ticket(services, NS, "drop", t).state for t in tickets[3:]] == [
            "waiting"] * 3
    finally:
        del shop.counter.client.execute_command


def test_sold_out_is_read_by_waiting_tickets_only(shop: FakeApp) -> None:
    put(shop, skus=("c",), admit_factor=1, pass_ttl_seconds=30)  # 5 units: 5 admitted
    tickets = [join(shop, f"b{n}").ticket for n in range(7)]
    passes = [poll(shop, t).sale_pass for t in tickets[:5]]
    for n in range(3):  # b0..b2 buy; b3 lets the pass expire; b4 keeps it
        assert decrement(shop, f"b{n}", passes[n], f"k{n}", "c").ok  # type: ignore[attr-defined]
    shop.now = T0 + 30_000
    poll(shop, tickets[5])  # the step on ends b3's and b4's passes and admits b5 and b6
    passes[:2] = [poll(shop, t).sale_pass for t in tickets[5:]]
    for n in (0, 1):
        assert decrement(shop, f"b{5 + n}", passes[n], f"m{n}", "c").ok  # type: ignore[attr-defined]
    assert [poll(shop, t).state for t in tickets] == ["used"] * 3 + ["expired"] * 2 + ["used"] * 2
    late = join(shop, "late").ticket
    assert poll(shop, late).state == "sold_out"
    assert [poll(shop, t).state for t in tickets] == ["used"] * 3 + ["expired"] * 2 + ["used"] * 2


def test_an_outstanding_pass_reads_admitted_when_the_stock_is_gone(shop: FakeApp) -> None:
    put(shop, skus=("b",), admit_factor=1)  # 1 unit: ann admitted, bob waits
    ann, bob = join(shop, "ann").ticket, join(shop, "bob").ticket
    assert poll(shop, ann).state == "admitted"
    shop.bus.handle(commands.AdjustTotal(NS, "b", -1, "gone"))
    assert [poll(shop, t).state for t in (ann, bob)] == ["admitted", "sold_out"]


class TestHoldKeepsThePass:
    """A hold keeps its buyer's pass: its confirm spends it, a release or its expiry gives it
    back until the pass's own expiry (API.md: a pass is used by a confirmed reservation)."""

    def hold(self, shop: FakeApp, key: str, sale_pass: str | None, ttl: int = 60) -> object:
        return shop.bus.handle(commands.Reserve(NS, (("a", 1),), key, ttl, "ann", sale_pass))

    def admitted(self, shop: FakeApp) -> tuple[str, str]:
        put(shop, pass_ttl_seconds=300)
        ticket = join(shop, "ann").ticket
        sale_pass = poll(shop, ticket).sale_pass
        assert sale_pass is not None
        return ticket, sale_pass

    def test_a_hold_that_expires_gives_the_pass_back(self, shop: FakeApp) -> None:
        ticket, sale_pass = self.admitted(shop)
        self.hold(shop, "r1", sale_pass)
        assert poll(shop, ticket).state == "admitted"  # kept, not used
        with pytest.raises(PassInvalid):  # nor usable elsewhere meanwhile
            decrement(shop, "ann", sale_pass, "k1")
        shop.now = T0 + 61_000
        poll(shop, ticket)  # the step on finds the hold ended
        again = self.hold(shop, "r2", sale_pass)
        assert again.state == "held"  # type: ignore[attr-defined]
        shop.bus.handle(commands.ConfirmReservation(NS, again.id))  # type: ignore[attr-defined]
        assert poll(shop, ticket).state == "used"
        with pytest.raises(PassInvalid):
            self.hold(shop, "r3", sale_pass)
        assert shop.counter.read(NS, "a").consumed == 1  # type: ignore[union-attr]

    def test_a_release_gives_it_back_at_once(self, shop: FakeApp) -> None:
        ticket, sale_pass = self.admitted(shop)
        held = self.hold(shop, "r1", sale_pass)
        shop.bus.handle(commands.ReleaseReservation(NS, held.id))  # type: ignore[attr-defined]
        assert decrement(shop, "ann", sale_pass, "k1").ok  # type: ignore[attr-defined]
        assert poll(shop, ticket).state == "used"

    def test_a_confirm_nobody_reported_still_spends_it(self, shop: FakeApp) -> None:
        ticket, sale_pass = self.admitted(shop)
        held = self.hold(shop, "r1", sale_pass)
        # The confirm's process died before it told the sale: only the reservation knows.
        rid = held.id  # type: ignore[attr-defined]
        shop.counter.reservation_step("confirm", NS, rid, (("a", 1),))
        shop.now = T0 + 61_000
        assert poll(shop, ticket).state == "used"
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k1")

    def test_an_extended_hold_keeps_it_past_its_first_end(self, shop: FakeApp) -> None:
        ticket, sale_pass = self.admitted(shop)
        held = self.hold(shop, "r1", sale_pass)
        shop.bus.handle(commands.ExtendReservation(NS, held.id, 600))  # type: ignore[attr-defined]
        shop.now = T0 + 61_000
        poll(shop, ticket)
        with pytest.raises(PassInvalid):
            decrement(shop, "ann", sale_pass, "k1")
        shop.bus.handle(commands.ConfirmReservation(NS, held.id))  # type: ignore[attr-defined]
        assert poll(shop, ticket).state == "used"

    def test_the_pass_does_not_expire_while_kept(self, shop: FakeApp) -> None:
        ticket, sale_pass = self.admitted(shop)
        held = self.hold(shop, "r1", sale_pass, ttl=3000)
        shop.now = T0 + 301_000  # the pass's own expiry: kept, it waits for the hold
        assert poll(shop, ticket).state == "admitted"
        shop.bus.handle(commands.ConfirmReservation(NS, held.id))  # type: ignore[attr-defined]
        assert poll(shop, ticket).state == "used"


def test_the_movement_that_takes_the_last_unit_sells_the_sale_out_at_once(
        shop: FakeApp) -> None:
    put(shop, skus=("b",), admit_factor=1)  # 1 unit: ann admitted, bob waits
    ann, bob = join(shop, "ann").ticket, join(shop, "bob").ticket
    sale_pass = poll(shop, ann).sale_pass
    services = shop.bus.services
    assert sales.poll_ticket(services, NS, "drop", bob).state == "waiting"  # figures kept
    assert decrement(shop, "ann", sale_pass, "k1", "b").ok  # type: ignore[attr-defined]
    # No second has passed for this process's figures: the sale itself said sold out.
    assert sales.poll_ticket(services, NS, "drop", bob).state == "sold_out"


def test_the_confirm_of_the_last_unit_sells_the_sale_out_at_once(shop: FakeApp) -> None:
    put(shop, skus=("b",), admit_factor=1)
    ann, bob = join(shop, "ann").ticket, join(shop, "bob").ticket
    sale_pass = poll(shop, ann).sale_pass
    held = shop.bus.handle(commands.Reserve(NS, (("b", 1),), "r1", 60, "ann", sale_pass))
    services = shop.bus.services
    assert sales.poll_ticket(services, NS, "drop", bob).state == "waiting"
    shop.bus.handle(commands.ConfirmReservation(NS, held.id))
    assert sales.poll_ticket(services, NS, "drop", bob).state == "sold_out"
