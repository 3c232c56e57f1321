from __future__ import annotations

import json
import re
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


DECREMENT = json.dumps({"command": "Decrement", "namespace": "ns", "sku": "a", "qty": 1,
                        "idempotency_key": "wide", "buyer": "ann"})


@pytest.mark.parametrize("raw", [
    *(DECREMENT.encode(encoding) for encoding in
      ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")),
    DECREMENT.replace("ann", "\xe9").encode("latin-1"),
    b"\xef\xbb\xbf\xef\xbb\xbf" + DECREMENT.encode()],
    ids=["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "latin-1",
         "two byte order marks"])
def test_a_message_not_in_utf8_is_invalid_and_changes_nothing(shop: FakeApp, raw: bytes) -> None:
    """JSON is UTF-8 (API.md): ``json.loads`` on bytes would guess UTF-16 or UTF-32 and apply
    what another reader takes for junk. The answer names no codec of Python's, and echoes no
    field read by such a guess."""
    with pytest.raises(ValueError, match=r"^not JSON") as refused:
        parse(raw)
    assert not re.search(r"codec|decode|position|utf-8-sig|utf-16|utf-32|0x",
                         str(refused.value))
    recorder, before = Recorder(), shop.snapshot()
    handle_message(raw, shop.bus, recorder)  # type: ignore[arg-type]
    [rejected] = recorder.messages
    assert (rejected["event"], rejected["reason"], rejected["command"],
            rejected["idempotency_key"]) == ("CommandRejected", "invalid_message", None, None)
    assert shop.snapshot() == before and figures(shop, "a") == (0, 0, 10)


def test_a_message_in_utf8_is_read_with_or_without_a_byte_order_mark(shop: FakeApp) -> None:
    recorder = Recorder()
    handle_message(b"\xef\xbb\xbf" + DECREMENT.encode(), shop.bus, recorder)  # type: ignore[arg-type]
    assert recorder.messages == [] and figures(shop, "a") == (1, 0, 9)


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


# Reservations over pub/sub (API.md, "Redis pub/sub").
def test_each_reservation_message_becomes_its_command() -> None:
    lines = [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]
    assert parse(json.dumps({"command": "Reserve", "namespace": "ns", "lines": lines,
                             "ttl_seconds": 30, "buyer": "u:7", "idempotency_key": "k"})) == (
        commands.Reserve("ns", (("a", 2), ("b", 1)), "k", 30, "u:7"))
    assert parse(json.dumps({"command": "Reserve", "namespace": "ns", "lines": lines[:1],
                             "idempotency_key": "k"})) == (
        commands.Reserve("ns", (("a", 2),), "k", 600, None))
    assert parse(json.dumps({"command": "ConfirmReservation", "namespace": "ns",
                             "reservation_id": "3.AbC-_x"})) == (
        commands.ConfirmReservation("ns", "3.AbC-_x"))
    assert parse(json.dumps({"command": "ReleaseReservation", "namespace": "ns",
                             "reservation_id": "r1"})) == commands.ReleaseReservation("ns", "r1")


def _reserve(**changes: Any) -> str:
    message = {"command": "Reserve", "namespace": "ns", "lines": [{"sku": "a", "qty": 1}],
               "idempotency_key": "k", **changes}
    return json.dumps({k: v for k, v in message.items() if v is not None})


@pytest.mark.parametrize("raw, field", [
    (_reserve(lines=[]), "lines"),
    (_reserve(lines=[{"sku": "a", "qty": 1}] * 101), "lines"),
    (_reserve(lines={"sku": "a", "qty": 1}), "lines"),
    (_reserve(lines=[{"sku": "a", "qty": 0}]), r"lines\.0\.qty"),
    (_reserve(lines=[{"sku": "a", "qty": 1}, {"sku": "a", "qty": 1_000_001}]),
     r"lines\.1\.qty"),
    (_reserve(lines=[{"sku": "a", "qty": True}]), r"lines\.0\.qty"),
    (_reserve(lines=[{"sku": "a", "qty": 1.0}]), r"lines\.0\.qty"),
    (_reserve(lines=[{"sku": "a b", "qty": 1}]), r"lines\.0\.sku"),
    (_reserve(lines=[{"qty": 1}]), r"lines\.0\.sku"),
    (_reserve(ttl_seconds=0), "ttl_seconds"),
    (_reserve(ttl_seconds=86_401), "ttl_seconds"),
    (_reserve(ttl_seconds="60"), "ttl_seconds"),
    (_reserve(buyer="a b"), "buyer"),
    (_reserve(buyer="x" * 129), "buyer"),
    (_reserve(idempotency_key=None), "idempotency_key"),
    (_reserve(idempotency_key="a,b"), "idempotency_key"),
    (_reserve(namespace="n s"), "namespace"),
    (json.dumps({"command": "ConfirmReservation", "namespace": "ns"}), "reservation_id"),
    (json.dumps({"command": "ConfirmReservation", "namespace": "ns",
                 "reservation_id": "a/b"}), "reservation_id"),
    (json.dumps({"command": "ReleaseReservation", "namespace": "ns",
                 "reservation_id": "x" * 65}), "reservation_id"),
    (json.dumps({"command": "ReleaseReservation", "namespace": "ns",
                 "reservation_id": ""}), "reservation_id"),
    (json.dumps({"command": "ReleaseReservation", "namespace": "ns",
                 "reservation_id": 7}), "reservation_id"),
    (json.dumps({"command": "ConfirmReservation", "reservation_id": "r"}), "namespace"),
    (json.dumps({"command": "ExtendReservation", "namespace": "ns", "reservation_id": "r",
                 "ttl_seconds": 5}), "command|tag"),
])
def test_malformed_reservation_messages_name_the_field(raw: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse(raw)


@pytest.fixture
def shop(fake_app: FakeApp) -> FakeApp:
    for sku, total, limit in (("a", 10, None), ("b", 2, None), ("capped", 5, 1)):
        made = fake_app.client.put(f"/v1/ns/items/{sku}",
                                   json={"total": total, "limit_per_buyer": limit})
        assert made.status_code == 201
    return fake_app


def send(app: FakeApp, recorder: Recorder, **message: Any) -> None:
    handle_message(json.dumps(message), app.bus, recorder)  # type: ignore[arg-type]


def figures(app: FakeApp, sku: str) -> tuple[int, int, int]:
    found = app.counter.read("ns", sku)
    assert found is not None
    return found.consumed, found.held, found.available


def test_a_reservation_is_held_and_confirmed_over_pubsub(shop: FakeApp) -> None:
    recorder = Recorder()
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="cart-1",
         lines=[{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], ttl_seconds=60)
    assert recorder.messages == []  # applied: only the events speak
    held = [e for e in shop.published if type(e).__name__ == "Reserved"]
    assert [(e.sku, e.qty, e.idempotency_key) for e in held] == [  # type: ignore[attr-defined]
        ("a", 2, "cart-1"), ("b", 1, "cart-1")]
    rid = held[0].reservation_id  # type: ignore[attr-defined]
    assert {e.reservation_id for e in held} == {rid}  # type: ignore[attr-defined]
    assert (figures(shop, "a"), figures(shop, "b")) == ((0, 2, 8), (0, 1, 1))

    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    assert recorder.messages == []  # applied: only the events speak
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    # A confirm repeats safely, and its first answer comes again (the publisher may have
    # missed it: it publishes again when no event comes).
    assert recorder.messages == [
        {"event": "ReservationConfirmed", "namespace": "ns", "sku": sku, "reservation_id": rid,
         "qty": qty, "state": "confirmed", "replayed": True} for sku, qty in (("a", 2), ("b", 1))]
    recorder.messages.clear()
    confirmed = [e for e in shop.published if type(e).__name__ == "ReservationConfirmed"]
    assert [(e.sku, e.qty, e.reservation_id) for e in confirmed] == [  # type: ignore[attr-defined]
        ("a", 2, rid), ("b", 1, rid)]
    assert (figures(shop, "a"), figures(shop, "b")) == ((2, 0, 8), (1, 0, 1))

    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    [refused] = recorder.messages
    assert refused == {
        "event": "CommandRejected", "reason": "reservation_confirmed",
        "message": refused["message"], "command": "ReleaseReservation",
        "idempotency_key": None, "namespace": "ns", "sku": None, "reservation_id": rid}


def test_a_released_reservation_puts_the_units_back(shop: FakeApp) -> None:
    recorder = Recorder()
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="cart-2",
         lines=[{"sku": "b", "qty": 2}])
    [rid] = [e.reservation_id for e in shop.published  # type: ignore[attr-defined]
             if type(e).__name__ == "Reserved"]
    assert figures(shop, "b") == (0, 2, 0)
    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    assert recorder.messages == []
    assert [type(e).__name__ for e in shop.published][-1] == "ReservationReleased"
    assert figures(shop, "b") == (0, 0, 2)
    published = len(shop.published)
    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    assert recorder.messages == [{  # its first answer again, and nothing more changes
        "event": "ReservationReleased", "namespace": "ns", "sku": "b", "reservation_id": rid,
        "qty": 2, "state": "released", "replayed": True}]
    assert len(shop.published) == published and figures(shop, "b") == (0, 0, 2)
    recorder.messages.clear()
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    assert [(m["reason"], m["reservation_id"]) for m in recorder.messages] == [
        ("reservation_released", rid)]


def test_a_release_of_an_expired_reservation_repeats_its_answer(shop: FakeApp) -> None:
    recorder = Recorder()
    shop.now = 1_000_000
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="cart-3",
         lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1}], ttl_seconds=5)
    [rid] = {e.reservation_id for e in shop.published  # type: ignore[attr-defined]
             if type(e).__name__ == "Reserved"}
    shop.now += 6_000
    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    assert recorder.messages == []  # the release expired it: the events say so
    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    assert [(m["event"], m["sku"], m["state"], m["replayed"]) for m in recorder.messages] == [
        ("ReservationExpired", "a", "expired", True), ("ReservationExpired", "b", "expired", True)]
    recorder.messages.clear()
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    assert [(m["event"], m["reason"]) for m in recorder.messages] == [
        ("CommandRejected", "reservation_expired")]
    assert (figures(shop, "a"), figures(shop, "b")) == ((0, 0, 10), (0, 0, 2))


def test_reservation_refusals_name_the_line_that_failed(shop: FakeApp) -> None:
    recorder = Recorder()
    before = figures(shop, "a"), figures(shop, "b")
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="short",
         lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}])
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="unknown",
         lines=[{"sku": "a", "qty": 1}, {"sku": "nope", "qty": 1}])
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="anonymous",
         lines=[{"sku": "capped", "qty": 1}])
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="greedy",
         lines=[{"sku": "capped", "qty": 2}], buyer="ann")
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id="0.nope")
    assert [(m["reason"], m["idempotency_key"], m["sku"], m.get("available"),
             m.get("remaining")) for m in recorder.messages] == [
        ("insufficient_stock", "short", "b", 2, None),
        ("not_found", "unknown", "nope", None, None),
        ("buyer_required", "anonymous", "capped", None, None),
        ("limit_exceeded", "greedy", "capped", None, 1),
        ("not_found", None, None, None, None)]
    assert all(m["event"] == "CommandRejected" and m["namespace"] == "ns"
               for m in recorder.messages)
    assert recorder.messages[-1]["reservation_id"] == "0.nope"
    assert (figures(shop, "a"), figures(shop, "b")) == before  # all or nothing
    assert not [e for e in shop.published if hasattr(e, "reservation_id")]


def test_a_reserve_key_used_again_for_another_cart_is_refused(shop: FakeApp) -> None:
    recorder = Recorder()
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="k",
         lines=[{"sku": "a", "qty": 1}])
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="k",
         lines=[{"sku": "a", "qty": 1}])  # resent: the same reservation, its answer again
    assert [(m["event"], m["replayed"], m["qty"]) for m in recorder.messages] == [
        ("Reserved", True, 1)]
    assert figures(shop, "a") == (0, 1, 9)
    recorder.messages.clear()
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="k",
         lines=[{"sku": "a", "qty": 3}])
    assert [(m["reason"], m["idempotency_key"]) for m in recorder.messages] == [
        ("idempotency_key_reused", "k")]
    assert figures(shop, "a") == (0, 1, 9)
    assert len([e for e in shop.published if type(e).__name__ == "Reserved"]) == 1


def test_the_consumers_answers_count_in_the_sale_metrics(shop: FakeApp) -> None:
    from prometheus_client import REGISTRY

    def counted() -> dict[str, float]:
        names = {"sold": ("allocation_sale_units_sold_total", {}),
                 "refunded": ("allocation_sale_units_refunded_total", {}),
                 "sold out": ("allocation_sale_refusals_total",
                              {"reason": "insufficient_stock"}),
                 "too late": ("allocation_sale_refusals_total",
                              {"reason": "reservation_confirmed"})}
        return {what: REGISTRY.get_sample_value(name, {"namespace": "ns", **labels}) or 0.0
                for what, (name, labels) in names.items()}

    before = counted()
    recorder = Recorder()
    send(shop, recorder, command="Decrement", namespace="ns", sku="b", qty=1,
         idempotency_key="m1")
    send(shop, recorder, command="Decrement", namespace="ns", sku="b", qty=1,
         idempotency_key="m1")  # a replay counts nothing
    send(shop, recorder, command="Decrement", namespace="ns", sku="b", qty=5,
         idempotency_key="m2")
    send(shop, recorder, command="Refund", namespace="ns", sku="b", qty=1,
         idempotency_key="m3")
    send(shop, recorder, command="Reserve", namespace="ns", idempotency_key="m4",
         lines=[{"sku": "a", "qty": 3}])
    rid = [e for e in shop.published
           if type(e).__name__ == "Reserved"][-1].reservation_id  # type: ignore[attr-defined]
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    send(shop, recorder, command="ConfirmReservation", namespace="ns", reservation_id=rid)
    send(shop, recorder, command="ReleaseReservation", namespace="ns", reservation_id=rid)
    after = counted()
    assert {k: after[k] - before[k] for k in after} == {
        "sold": 1 + 3, "refunded": 1, "sold out": 1, "too late": 1}


@pytest.mark.parametrize("message, field", [
    ({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1, "idempotency_key": "k",
      "buyr": "ann"}, "buyr"),
    ({"command": "InitInventory", "namespace": "ns", "sku": "s", "total": 3,
      "limit_per_buyer": 1}, "limit_per_buyer"),
    ({"command": "Reserve", "namespace": "ns", "lines": [{"sku": "s", "qty": 1}],
      "idempotency_key": "c", "ttl_second": 5}, "ttl_second"),
    ({"command": "Reserve", "namespace": "ns", "lines": [{"sku": "s", "qty": 1, "note": "x"}],
      "idempotency_key": "c"}, "note"),
    ({"command": "ConfirmReservation", "namespace": "ns", "reservation_id": "r",
      "idempotency_key": "k"}, "idempotency_key"),
])
def test_a_message_with_a_field_its_command_does_not_define_is_rejected(
        fake_app: FakeApp, message: dict[str, Any], field: str) -> None:
    fake_app.client.put("/v1/ns/items/s", json={"total": 5})
    recorder = Recorder()
    before = fake_app.snapshot()
    handle_message(json.dumps(message), fake_app.bus, recorder)  # type: ignore[arg-type]
    [answer] = recorder.messages
    assert (answer["event"], answer["reason"], answer["command"]) == (
        "CommandRejected", "invalid_message", message["command"])
    assert field in answer["message"] and "not a field" in answer["message"]
    assert fake_app.snapshot() == before


@pytest.mark.parametrize("raw, key", [
    (b'{"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1, "qty": 2, '
     b'"idempotency_key": "k"}', "qty"),
    (b'{"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1, '
     b'"idempotency_key": "k", "idempotency_key": "k2"}', "idempotency_key"),
    (b'{"command": "Reserve", "namespace": "ns", "lines": [{"sku": "s", "qty": 1, "qty": 4}], '
     b'"idempotency_key": "c"}', "qty"),
    (b'{"command": "Refund", "command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1, '
     b'"idempotency_key": "k"}', "command"),
])
def test_a_message_naming_a_key_twice_is_rejected_as_http_refuses_it(
        fake_app: FakeApp, raw: bytes, key: str) -> None:
    """A reader taking the first of two equal keys would disagree with one taking the last."""
    fake_app.client.put("/v1/ns/items/s", json={"total": 5})
    with pytest.raises(ValueError, match=f"repeats the key '{key}'"):
        parse(raw)
    recorder = Recorder()
    before = fake_app.snapshot()
    handle_message(raw, fake_app.bus, recorder)  # type: ignore[arg-type]
    [answer] = recorder.messages
    assert (answer["event"], answer["reason"]) == ("CommandRejected", "invalid_message")
    assert fake_app.snapshot() == before


def test_an_unknown_command_is_told_every_command_there_is() -> None:
    with pytest.raises(ValueError) as refused:
        parse(b'{"command": "Nope", "namespace": "ns"}')
    for command in ("InitInventory", "AdjustTotal", "Decrement", "Refund", "Reserve",
                    "ConfirmReservation", "ReleaseReservation", "JoinQueue"):
        assert command in str(refused.value)
    assert str(refused.value).startswith("command: ")
    with pytest.raises(ValueError, match=r"^command: is required"):
        parse(b'{"namespace": "ns"}')


@pytest.mark.parametrize("raw, complaint", [
    (_reserve(lines=["a"]), "lines.0: must be a JSON object"),
    (b'"Decrement"', "the message must be a JSON object"),
    (json.dumps({"command": "Decrement", "namespace": "ns", "sku": "s", "qty": 1,
                 "idempotency_key": "k", "buyer": None}), "buyer: must not be null"),
    (json.dumps({"command": "Refund", "namespace": "ns", "sku": "s", "qty": 1,
                 "idempotency_key": "k", "buyer": None}), "buyer: must not be null"),
    (_reserve().replace('"idempotency_key"', '"buyer": null, "idempotency_key"'),
     "buyer: must not be null"),
    (json.dumps({"command": "JoinQueue", "namespace": "ns", "sale": "s", "buyer": None}),
     "buyer: "),
])
def test_complaints_name_the_field_and_no_class_of_ours(raw: Any, complaint: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse(raw)
    assert str(refused.value).startswith(complaint), refused.value
    assert "Line" not in str(refused.value) and "instance" not in str(refused.value)
