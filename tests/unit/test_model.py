import pytest

from allocation.domain import errors, events
from allocation.domain.model import InventoryItem


def item(total: int = 10, consumed: int = 0) -> InventoryItem:
    fresh = InventoryItem.initialise("shop", "sku-1", total)
    if consumed:
        fresh.decrement(consumed, "setup")
    fresh.events.clear()
    return fresh


class TestDecrement:
    def test_takes_from_available(self) -> None:
        it = item(10)
        it.decrement(3, "k")
        assert (it.total, it.consumed, it.available) == (10, 3, 7)

    def test_refuses_more_than_available_and_changes_nothing(self) -> None:
        it = item(10, consumed=8)
        with pytest.raises(errors.InsufficientStock) as refused:
            it.decrement(3, "k")
        assert refused.value.details == {"available": 2}
        assert (it.consumed, it.last_seq) == (8, 2)

    def test_refuses_non_positive_quantities(self) -> None:
        it = item(10)
        for qty in (0, -1):
            with pytest.raises(errors.InvalidQuantity):
                it.decrement(qty, "k")
        assert it.consumed == 0

    def test_raises_sold_out_when_available_reaches_zero(self) -> None:
        it = item(2)
        it.decrement(2, "k")
        assert [type(e) for e in it.events] == [events.Decremented, events.SoldOut]
        assert it.events[-1] == events.SoldOut("shop", "sku-1", 2, 2)


class TestRefund:
    def test_returns_consumed_stock(self) -> None:
        it = item(10, consumed=4)
        it.refund(3, "r")
        assert (it.consumed, it.available) == (1, 9)
        assert it.events == [events.Refunded("shop", "sku-1", 10, 1, 3, "r")]

    def test_refuses_more_than_consumed(self) -> None:
        it = item(10, consumed=2)
        with pytest.raises(errors.RefundExceedsConsumed):
            it.refund(3, "r")
        assert it.consumed == 2


class TestAdjust:
    def test_moves_total_both_ways(self) -> None:
        it = item(10, consumed=4)
        it.adjust(5)
        it.adjust(-9)
        assert (it.total, it.consumed, it.available) == (6, 4, 2)

    def test_never_below_consumed(self) -> None:
        it = item(10, consumed=4)
        with pytest.raises(errors.BelowConsumed):
            it.adjust(-7)
        assert it.total == 10


class TestLedger:
    def test_every_movement_gets_the_next_seq(self) -> None:
        it = InventoryItem.initialise("shop", "sku-1", 5)
        it.decrement(2, "a")
        it.refund(1, "b")
        it.adjust(3)
        assert [(e.seq, e.kind, e.qty, e.total_after, e.available_after)
                for e in it.new_entries] == [
            (1, "init", 5, 5, 5), (2, "decrement", 2, 5, 3), (3, "refund", 1, 5, 4),
            (4, "adjust", 3, 8, 7)]

    def test_a_refused_movement_takes_no_seq(self) -> None:
        it = item(1)
        with pytest.raises(errors.InsufficientStock):
            it.decrement(2, "k")
        it.decrement(1, "k2")
        assert [e.seq for e in it.new_entries] == [1, 2]


def test_error_codes_are_the_api_codes() -> None:
    assert {cls.code for cls in errors.REFUSALS.values()} >= {
        "not_found", "already_exists", "insufficient_stock", "below_consumed",
        "refund_exceeds_consumed", "idempotency_key_reused"}
