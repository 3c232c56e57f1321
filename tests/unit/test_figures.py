"""An item's figures: one value type from the script's reply to the JSON body."""

from __future__ import annotations

import pytest

from allocation import facade
from allocation.domain import events
from allocation.domain.model import InventoryItem
from allocation.domain.outcome import Figures, Outcome
from allocation.entrypoints import command_messages, replies, schemas


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


FIGURES = Figures(10, 3, held=2, limit=4, seq=7, gen="g")


def test_the_item_body_is_what_the_openapi_document_says_an_item_is() -> None:
    body = replies.item_body("ns", "sku", FIGURES)
    assert list(body) == list(schemas.Item.model_fields)  # the same fields, in one order
    assert schemas.Item.model_validate(body).model_dump() == body == {
        "namespace": "ns", "sku": "sku", "total": 10, "consumed": 3, "held": 2,
        "available": 5, "limit_per_buyer": 4}
    assert replies.item_body("ns", "sku", Figures(1, 0))["limit_per_buyer"] is None


def test_a_refused_command_and_the_library_take_their_figures_from_the_body() -> None:
    body = replies.figures_body(FIGURES)
    assert set(command_messages.REFUSAL_FIGURES) <= set(body)
    assert set(facade.LIBRARY_FIGURES) <= set(body)
    refused = command_messages.rejection(
        {"command": "Decrement", "namespace": "ns", "sku": "sku"}, "insufficient_stock",
        "only 5 available", Outcome("insufficient_stock", FIGURES))
    assert {name: refused[name] for name in command_messages.REFUSAL_FIGURES} == {
        "total": 10, "consumed": 3, "available": 5}
    assert facade._figures(FIGURES) == {"total": 10, "consumed": 3, "held": 2, "available": 5}
