from __future__ import annotations

import json
from typing import Any

import pytest

from allocation.domain import commands
from allocation.entrypoints.redis_consumer import handle_message, parse
from tests.helpers.apps import FakeApp


def test_each_command_message_becomes_its_command() -> None:
    base = {"namespace": "ns", "sku": "s"}
    assert parse(json.dumps({"command": "InitInventory", **base, "total": 3})) == (
        commands.InitInventory("ns", "s", 3))
    assert parse(json.dumps({"command": "AdjustTotal", **base, "delta": -2})) == (
        commands.AdjustTotal("ns", "s", -2, None))
    assert parse(json.dumps({"command": "Decrement", **base, "qty": 1,
                             "idempotency_key": "k"})) == commands.Decrement("ns", "s", 1, "k")
    assert parse(json.dumps({"command": "Refund", **base, "qty": 2,
                             "idempotency_key": "r"})) == commands.Refund("ns", "s", 2, "r")
    assert parse(json.dumps({"command": "Decrement", **base, "qty": 1, "idempotency_key": "k",
                             "buyer": "u:7"})) == commands.Decrement("ns", "s", 1, "k", "u:7")


@pytest.mark.parametrize("raw, complaint", [
    (b"{oops", "not JSON"),
    (json.dumps({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1,
                 "idempotency_key": "k", "buyer": "a b"}), "buyer"),
    (b"[1, 2]", "object|dict|valid"),
    (json.dumps({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1}), "idempotency"),
    (json.dumps({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": True,
                 "idempotency_key": "k"}), "qty"),
    (json.dumps({"command": "InitInventory", "namespace": "n s", "sku": "s", "total": 1}),
     "namespace"),
    (json.dumps({"command": "Sell", "namespace": "ns", "sku": "s"}), "command|tag"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 50_000, "nested too deeply"),
])
def test_malformed_messages_are_refused_with_a_reason(raw: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse(raw)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


def test_a_bad_message_is_answered_and_changes_nothing(fake_app: FakeApp) -> None:
    recorder = Recorder()
    before = fake_app.snapshot()
    handle_message(b'{"command": "Decrement", "sku": 1}', fake_app.bus, recorder)  # type: ignore[arg-type]
    handle_message(b"[" * 50_000, fake_app.bus, recorder)  # type: ignore[arg-type]
    assert [m["event"] for m in recorder.messages] == ["CommandRejected"] * 2
    assert [m["reason"] for m in recorder.messages] == ["invalid_message"] * 2
    assert fake_app.snapshot() == before


def test_a_refusal_is_answered_with_the_figures(fake_app: FakeApp) -> None:
    recorder = Recorder()
    fake_app.client.put("/v1/ns/items/s", json={"total": 1})
    message = {"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 2,
               "idempotency_key": "k"}
    handle_message(json.dumps(message), fake_app.bus, recorder)  # type: ignore[arg-type]
    assert recorder.messages == [{
        "event": "CommandRejected", "reason": "insufficient_stock",
        "message": "only 1 available", "command": "Decrement", "idempotency_key": "k",
        "namespace": "ns", "sku": "s", "total": 1, "consumed": 0, "available": 1}]


def test_a_buyer_over_the_limit_is_answered_with_what_remains(fake_app: FakeApp) -> None:
    recorder = Recorder()
    fake_app.client.put("/v1/ns/items/l", json={"total": 5, "limit_per_buyer": 1})
    for key in ("k1", "k2"):
        handle_message(json.dumps({"command": "Decrement", "namespace": "ns", "sku": "l",
                                   "qty": 1, "idempotency_key": key, "buyer": "ann"}),
                       fake_app.bus, recorder)  # type: ignore[arg-type]
    [refused] = [m for m in recorder.messages if m["event"] == "CommandRejected"]
    assert (refused["reason"], refused["remaining"], refused["available"]) == (
        "limit_exceeded", 0, 4)
