from typing import NamedTuple

import pytest

from allocation.domain import errors, events, rules
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
    def test_taking_the_last_units_away_is_sold_out(self) -> None:
        it = item(10, consumed=4)
        it.adjust(-6)
        assert [type(e) for e in it.events] == [events.TotalAdjusted, events.SoldOut]
        assert it.events[-1] == events.SoldOut("shop", "sku-1", 4, 4)
        assert events.of_movement("adjust", "shop", "sku-1", -6, None, 4, 4)[1:] == [
            events.SoldOut("shop", "sku-1", 4, 4)]
        assert events.of_movement("adjust", "shop", "sku-1", 2, None, 6, 6)[1:] == []

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

    def test_never_past_the_maximum_total(self) -> None:
        it = item(rules.MAX_TOTAL - 5)
        it.adjust(5)
        with pytest.raises(errors.TotalExceedsMaximum) as refused:
            it.adjust(1)
        assert refused.value.details == {"maximum": 1_000_000_000}
        assert (it.total, it.last_seq) == (1_000_000_000, 2)

    def test_an_item_above_the_maximum_may_come_down_in_steps(self) -> None:
        it = InventoryItem("shop", "sku-1", total=2_000_000_014, consumed=0)
        it.adjust(-1)
        assert it.total == 2_000_000_013
        with pytest.raises(errors.TotalExceedsMaximum):
            it.adjust(1)


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


class Decided(NamedTuple):
    kind: str
    qty: int
    idempotency_key: str | None
    total: int
    consumed: int
    buyer: str | None = None
    held: int = 0
    reservation_id: str | None = None
    expires_ms: int = 0


class TestRecordMany:
    """Movements the fast path decided, written down by the ledger worker."""

    def test_appends_gapless_entries_with_the_fast_paths_figures(self) -> None:
        it = item(10, consumed=2)
        drifted = it.record_many([Decided("decrement", 3, "a", 10, 5),
                                  Decided("refund", 1, "b", 10, 4),
                                  Decided("adjust", 5, None, 15, 4)])
        assert drifted == []
        assert (it.total, it.consumed, it.last_seq) == (15, 4, 5)
        written = it.new_entries[-3:]
        assert [(e.seq, e.kind, e.qty, e.total_after, e.available_after, e.idempotency_key)
                for e in written] == [(3, "decrement", 3, 10, 5, "a"),
                                      (4, "refund", 1, 10, 6, "b"),
                                      (5, "adjust", 5, 15, 11, None)]
        assert len({e.created_at for e in written}) == 1

    def test_keeps_what_was_acknowledged_and_names_the_seqs_that_drifted(self) -> None:
        it = item(10, consumed=9)
        # The fast path held a total of 20 (it had drifted) and sold 3 where the record had 1.
        drifted = it.record_many([Decided("decrement", 3, "a", 20, 12),
                                  Decided("refund", 2, "b", 20, 10),
                                  Decided("adjust", -15, None, 5, 10)])
        assert drifted == [3, 5]  # the refund agrees with the figures before it
        assert (it.total, it.consumed, it.last_seq) == (5, 10, 5)

    def test_nothing_to_record_changes_nothing(self) -> None:
        it = item(10, consumed=2)
        assert it.record_many([]) == []
        assert (it.total, it.consumed, it.last_seq, len(it.new_entries)) == (10, 2, 2, 2)
