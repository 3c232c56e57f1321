"""An item's figures: one value type from the script's reply to the JSON body."""

from __future__ import annotations

import pytest

from allocation.domain import events
from allocation.domain.model import InventoryItem
from allocation.domain.outcome import Figures


def test_available_is_what_is_neither_sold_nor_held() -> None:
    assert Figures(10, 3).available == 7
    assert Figures(10, 3, held=2).available == 5
    assert Figures(10, 10, held=0).available == 0


def test_figures_are_a_value() -> None:
    one = Figures(10, 3, 1, limit=2, seq=4, gen="g")
    assert one == Figures(10, 3, 1, 2, 4, "g") and hash(one) == hash(Figures(10, 3, 1, 2, 4, "g"))
    assert one != one._replace(gen="h")
    with pytest.raises(AttributeError):
        one.total = 11  # type: ignore[misc]
    assert not hasattr(one, "__dict__")


def test_events_and_the_aggregate_count_available_as_figures_do() -> None:
    assert events.Decremented("ns", "s", 10, 3, 1, "k", held=2).available == Figures(
        10, 3, 2).available
    item = InventoryItem("ns", "s", total=10, consumed=3)
    item.held = 2
    assert item.available == Figures(10, 3, 2).available
