"""Commands over Redis pub/sub, answered on the events channel, with a real consumer process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from allocation.adapters.redis_keys import KeySpace
from allocation.config import Config
from tests.helpers.processes import Process, allocation_command, service_env, wait_until


class Channels:
    def __init__(self, config: Config) -> None:
        assert config.redis_url is not None
        self.client = redis.Redis.from_url(config.redis_url)
        self.config = config
        self.events = self.client.pubsub(ignore_subscribe_messages=True)
        self.events.subscribe(config.events_channel)
        self.received: list[dict[str, Any]] = []

    def send(self, **message: Any) -> None:
        self.client.publish(self.config.commands_channel, json.dumps(message))

    def send_raw(self, raw: str) -> None:
        self.client.publish(self.config.commands_channel, raw)

    def listeners(self) -> int:
        [(_, count)] = self.client.pubsub_numsub(self.config.commands_channel)
        return int(count)

    def wait_for(self, seconds: float = 10, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            message = self.events.get_message(timeout=0.1)
            if message is not None:
                self.received.append(json.loads(message["data"]))
            found.extend(e for e in self.received
                         if all(e.get(k) == v for k, v in match.items()))
            return bool(found)

        wait_until(arrived, seconds, f"an event matching {match}")
        return found[0]


@pytest.fixture
def channels(service_config: Config) -> Iterator[Channels]:
    ch = Channels(service_config)
    yield ch
    ch.events.close()
    ch.client.close()


def test_commands_become_events(consumer: Process, channels: Channels, namespace: str) -> None:
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send(command="InitInventory", namespace=namespace, sku="s", total=2)
    init = channels.wait_for(event="InventoryInitialized", namespace=namespace)
    assert (init["sku"], init["total"], init["available"]) == ("s", 2, 2)

    channels.send(command="Decrement", namespace=namespace, sku="s", qty=2,
                  idempotency_key="k1")
    sold = channels.wait_for(event="Decremented", namespace=namespace)
    assert (sold["qty"], sold["available"], sold["idempotency_key"]) == (2, 0, "k1")
    assert channels.wait_for(event="SoldOut", namespace=namespace)["consumed"] == 2

    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="k2")
    refused = channels.wait_for(event="CommandRejected", idempotency_key="k2")
    assert (refused["reason"], refused["command"], refused["available"]) == (
        "insufficient_stock", "Decrement", 0)

    channels.send(command="Refund", namespace=namespace, sku="s", qty=1, idempotency_key="r1")
    assert channels.wait_for(event="Refunded", namespace=namespace)["available"] == 1
    channels.send(command="AdjustTotal", namespace=namespace, sku="s", delta=3)
    assert channels.wait_for(event="TotalAdjusted", namespace=namespace)["total"] == 5
    channels.send(command="AdjustTotal", namespace=namespace, sku="s", delta=999_999_996,
                  idempotency_key="a-over")
    over = channels.wait_for(event="CommandRejected", idempotency_key="a-over")
    assert (over["reason"], over["command"], over["total"]) == (
        "total_exceeds_maximum", "AdjustTotal", 5)


def test_a_reservation_over_pubsub_is_held_then_confirmed(consumer: Process, channels: Channels,
                                                          namespace: str) -> None:
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    for sku, total in (("a", 5), ("b", 1)):
        channels.send(command="InitInventory", namespace=namespace, sku=sku, total=total)
        channels.wait_for(event="InventoryInitialized", namespace=namespace, sku=sku)

    channels.send(command="Reserve", namespace=namespace, idempotency_key="cart-1",
                  lines=[{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], ttl_seconds=60,
                  buyer="ann")
    held = [channels.wait_for(event="Reserved", namespace=namespace, sku=sku)
            for sku in ("a", "b")]  # one per line
    rid = held[0]["reservation_id"]
    assert rid and held[1]["reservation_id"] == rid
    assert [e["idempotency_key"] for e in held] == ["cart-1", "cart-1"]  # the sender's answer
    assert [(e["qty"], e["held"], e["available"]) for e in held] == [(2, 2, 3), (1, 1, 0)]

    channels.send(command="Reserve", namespace=namespace, idempotency_key="cart-2",
                  lines=[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 1}])
    refused = channels.wait_for(event="CommandRejected", idempotency_key="cart-2")
    assert (refused["reason"], refused["command"], refused["namespace"], refused["sku"],
            refused["available"]) == ("insufficient_stock", "Reserve", namespace, "b", 0)

    channels.send(command="ConfirmReservation", namespace=namespace, reservation_id=rid)
    confirmed = [channels.wait_for(event="ReservationConfirmed", namespace=namespace, sku=sku)
                 for sku in ("a", "b")]
    assert [(e["reservation_id"], e["qty"], e["consumed"], e["held"], e["available"])
            for e in confirmed] == [(rid, 2, 2, 0, 3), (rid, 1, 1, 0, 0)]

    channels.send(command="ReleaseReservation", namespace=namespace, reservation_id=rid)
    late = channels.wait_for(event="CommandRejected", command="ReleaseReservation",
                             reservation_id=rid)
    assert (late["reason"], late["namespace"]) == ("reservation_confirmed", namespace)
    assert [e["event"] for e in channels.received if e.get("reservation_id") == rid] == [
        "Reserved", "Reserved", "ReservationConfirmed", "ReservationConfirmed",
        "CommandRejected"]  # the rejected release changed nothing
    assert consumer.alive()


def test_a_command_repeated_with_its_key_publishes_its_first_answer_again(
        consumer: Process, channels: Channels, namespace: str) -> None:
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send(command="InitInventory", namespace=namespace, sku="s", total=4)
    channels.wait_for(event="InventoryInitialized", namespace=namespace)

    def first_then_again(event: str, **message: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        channels.send(**message)
        first = channels.wait_for(event=event, idempotency_key=message["idempotency_key"])
        channels.send(**message)  # no answer seen, say: the publisher sends it again
        again = channels.wait_for(event=event, idempotency_key=message["idempotency_key"],
                                  replayed=True)
        return first, again

    sold, sold_again = first_then_again("Decremented", command="Decrement",
                                        namespace=namespace, sku="s", qty=2,
                                        idempotency_key="d1", buyer="ann")
    refunded, refunded_again = first_then_again("Refunded", command="Refund",
                                                namespace=namespace, sku="s", qty=1,
                                                idempotency_key="r1")
    refused, refused_again = first_then_again("CommandRejected", command="Decrement",
                                              namespace=namespace, sku="s", qty=9,
                                              idempotency_key="big")
    held, held_again = first_then_again("Reserved", command="Reserve", namespace=namespace,
                                        lines=[{"sku": "s", "qty": 1}], ttl_seconds=60,
                                        idempotency_key="cart")
    # Movements: the first answer byte for byte, figures of its moment included (the item has
    # moved on since: 4 - 2 + 1 - 1 held).
    assert "replayed" not in sold and sold_again == {**sold, "replayed": True}
    assert (sold["available"], sold["buyer"]) == (2, "ann")
    assert refunded_again == {**refunded, "replayed": True}
    assert refused["reason"] == "insufficient_stock"
    assert refused_again == {**refused, "replayed": True}
    # A reservation: the same reservation and line, where it stands now.
    assert (held_again["reservation_id"], held_again["sku"], held_again["qty"],
            held_again["state"]) == (held["reservation_id"], "s", 1, "held")
    # Each applied once: one first answer each, and the figures say so.
    for event, key in (("Decremented", "d1"), ("Refunded", "r1"), ("Reserved", "cart")):
        assert len([e for e in channels.received if e["event"] == event
                    and e.get("idempotency_key") == key and not e.get("replayed")]) == 1
    channels.send(command="AdjustTotal", namespace=namespace, sku="s", delta=0)
    after = channels.wait_for(event="TotalAdjusted", namespace=namespace)
    assert (after["total"], after["consumed"], after["held"]) == (4, 1, 1)


def test_a_confirm_or_release_repeated_publishes_its_first_answer_again(
        consumer: Process, channels: Channels, namespace: str) -> None:
    """The publisher that saw no answer publishes again: the repeat answers as the first did
    (each line's event, marked ``replayed``), as over HTTP a repeat answers 200, and changes
    nothing; a confirm of a released one is still refused."""
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    for sku in ("a", "b"):
        channels.send(command="InitInventory", namespace=namespace, sku=sku, total=3)
        channels.wait_for(event="InventoryInitialized", namespace=namespace, sku=sku)

    def reserve(key: str, lines: list[tuple[str, int]]) -> str:
        channels.send(command="Reserve", namespace=namespace, idempotency_key=key,
                      lines=[{"sku": sku, "qty": qty} for sku, qty in lines], ttl_seconds=60)
        return str(channels.wait_for(event="Reserved", idempotency_key=key)["reservation_id"])

    def twice(command: str, rid: str, event: str, skus: tuple[str, ...]
              ) -> list[dict[str, Any]]:
        channels.send(command=command, namespace=namespace, reservation_id=rid)
        for sku in skus:
            first = channels.wait_for(event=event, reservation_id=rid, sku=sku)
            assert "replayed" not in first
        channels.send(command=command, namespace=namespace, reservation_id=rid)
        return [channels.wait_for(event=event, reservation_id=rid, sku=sku, replayed=True)
                for sku in skus]

    bought = reserve("cart-1", [("a", 2), ("b", 1)])
    again = twice("ConfirmReservation", bought, "ReservationConfirmed", ("a", "b"))
    assert [(e["namespace"], e["qty"], e["state"]) for e in again] == [
        (namespace, 2, "confirmed"), (namespace, 1, "confirmed")]
    dropped = reserve("cart-2", [("b", 1)])
    [released] = twice("ReleaseReservation", dropped, "ReservationReleased", ("b",))
    assert (released["qty"], released["state"]) == (1, "released")
    channels.send(command="ConfirmReservation", namespace=namespace, reservation_id=dropped)
    late = channels.wait_for(event="CommandRejected", reservation_id=dropped)
    assert late["reason"] == "reservation_released"
    # Each applied once: one first answer a line, and the figures say so.
    for rid, event, lines in ((bought, "ReservationConfirmed", 2),
                              (dropped, "ReservationReleased", 1)):
        assert len([e for e in channels.received if e.get("reservation_id") == rid
                    and e["event"] == event and not e.get("replayed")]) == lines
    for sku, consumed in (("a", 2), ("b", 1)):
        channels.send(command="AdjustTotal", namespace=namespace, sku=sku, delta=0)
        after = channels.wait_for(event="TotalAdjusted", namespace=namespace, sku=sku)
        assert (after["total"], after["consumed"], after["held"]) == (3, consumed, 0)


def test_malformed_messages_are_answered_and_the_consumer_keeps_running(
        consumer: Process, channels: Channels, namespace: str) -> None:
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send_raw("{not json")
    assert channels.wait_for(event="CommandRejected")["reason"] == "invalid_message"
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=True,
                  idempotency_key="bad-qty")
    bad = channels.wait_for(event="CommandRejected", idempotency_key="bad-qty")
    assert bad["reason"] == "invalid_message" and "qty" in bad["message"]
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1)
    assert "idempotency_key" in channels.wait_for(
        event="CommandRejected", command="Decrement", idempotency_key=None)["message"]
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="misspelt", buyr="ann")  # a field Decrement does not define
    misspelt = channels.wait_for(event="CommandRejected", idempotency_key="misspelt")
    assert misspelt["reason"] == "invalid_message" and "buyr" in misspelt["message"]
    channels.send(command="Explode", namespace=namespace, sku="s")
    assert channels.wait_for(event="CommandRejected", command="Explode")["reason"] == (
        "invalid_message")
    channels.send(command="Decrement", namespace=namespace, sku="nope", qty=1,
                  idempotency_key="unknown")
    assert channels.wait_for(event="CommandRejected", idempotency_key="unknown")["reason"] == (
        "not_found")
    channels.send(command="InitInventory", namespace=namespace, sku="after", total=1)
    assert channels.wait_for(event="InventoryInitialized", sku="after")["total"] == 1
    assert consumer.alive()


def test_a_message_not_in_utf8_is_invalid_and_sells_nothing(consumer: Process,
                                                            channels: Channels,
                                                            namespace: str) -> None:
    """JSON is UTF-8 (API.md): a message in UTF-16 or UTF-32 (which ``json.loads`` on bytes
    would guess and read) is refused, its answer naming no codec of Python's."""
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send(command="InitInventory", namespace=namespace, sku="s", total=5)
    channels.wait_for(event="InventoryInitialized", namespace=namespace)
    message = json.dumps({"command": "Decrement", "namespace": namespace, "sku": "s", "qty": 1,
                          "idempotency_key": "wide"})
    for encoding in ("utf-16", "utf-32"):
        channels.client.publish(channels.config.commands_channel, message.encode(encoding))
        refused = channels.wait_for(event="CommandRejected", reason="invalid_message",
                                    command=None)
        assert "UTF-8" in refused["message"] and "codec" not in refused["message"]
        channels.received.remove(refused)
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="narrow")
    assert channels.wait_for(event="Decremented", idempotency_key="narrow")["available"] == 4
    assert not [e for e in channels.received if e.get("idempotency_key") == "wide"]
    assert consumer.alive()


def test_a_killed_consumer_restarts_and_resumes(consumer: Process, channels: Channels,
                                                namespace: str) -> None:
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send(command="InitInventory", namespace=namespace, sku="s", total=5)
    channels.wait_for(event="InventoryInitialized", namespace=namespace)
    consumer.stop(kill=True)
    wait_until(lambda: channels.listeners() == 0, 15, "the killed consumer to unsubscribe")
    consumer.start()
    wait_until(lambda: channels.listeners() > 0, 15, "the new consumer to subscribe")
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="after-restart")
    assert channels.wait_for(event="Decremented", idempotency_key="after-restart")[
        "available"] == 4
    # A retried command (same key) is applied once.
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="after-restart")
    channels.send(command="Refund", namespace=namespace, sku="s", qty=1, idempotency_key="r")
    assert channels.wait_for(event="Refunded", namespace=namespace)["available"] == 5


def test_the_command_stream_keeps_commands_while_no_consumer_runs(
        service_config: Config, channels: Channels, namespace: str) -> None:
    client = channels.client
    stream = service_config.commands_stream

    def add(**message: Any) -> None:
        client.xadd(stream, {"message": json.dumps(message)})

    add(command="InitInventory", namespace=namespace, sku="s", total=5)
    add(command="Decrement", namespace=namespace, sku="s", qty=2, idempotency_key="o1")
    add(command="Decrement", namespace=namespace, sku="s", qty=2, idempotency_key="o1")  # resent
    add(command="Decrement", namespace=namespace, sku="s", qty=1)  # no key: rejected
    consumer = Process(allocation_command("consume", "--name", "stream-test"),
                       service_env(service_config))
    consumer.start()  # only now: the commands waited in the stream
    try:
        sold = channels.wait_for(event="Decremented", namespace=namespace)
        assert (sold["qty"], sold["available"]) == (2, 3)
        channels.wait_for(event="CommandRejected", namespace=namespace, reason="invalid_message")
        add(command="Refund", namespace=namespace, sku="s", qty=1, idempotency_key="r1")
        assert channels.wait_for(event="Refunded", namespace=namespace)["available"] == 4
        # The resend had no effect: its answer is the first one again, marked so.
        assert [e.get("replayed", False) for e in channels.received
                if e.get("namespace") == namespace and e["event"] == "Decremented"] == [
            False, True]
        def all_acknowledged() -> bool:
            summary: dict[str, int] = client.xpending(stream, "allocation")  # type: ignore[no-untyped-call]
            return summary["pending"] == 0

        wait_until(all_acknowledged, 15, "every stream entry to be acknowledged")
    finally:
        consumer.stop()


def test_two_deployments_on_one_redis_never_hear_each_others_commands(
        service_config: Config, namespace: str) -> None:
    """Two deployments (key prefixes) on one Redis server, each with its consumer, on the
    default names: a command for one is applied by it alone and answered to its publisher
    alone, over pub/sub and over the command stream."""
    deployments: dict[str, Config] = {}
    consumers: list[Process] = []
    clients: list[redis.Redis[bytes]] = []
    try:
        for name in ("a", "b"):
            env = service_env(service_config)
            for own_name in ("COMMANDS_CHANNEL", "EVENTS_CHANNEL", "COMMANDS_STREAM"):
                del env[own_name]  # the deployment's defaults
            env["REDIS_KEY_PREFIX"] = f"{service_config.redis_key_prefix}:{name}{namespace}"
            deployments[name] = Config.from_env(env)
            consumer = Process(allocation_command("consume", "--name", name), env)
            consumer.start()
            consumers.append(consumer)
        a, b = deployments["a"], deployments["b"]
        assert a.redis_url is not None
        client = redis.Redis.from_url(a.redis_url)
        clients.append(client)
        heard: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        listeners = {}
        for name, config in deployments.items():
            listeners[name] = client.pubsub(ignore_subscribe_messages=True)
            listeners[name].subscribe(config.events_channel)

        def collect() -> None:
            for name, listener in listeners.items():
                while (message := listener.get_message(timeout=0.01)) is not None:
                    heard[name].append(json.loads(message["data"]))

        def answered(name: str, **match: Any) -> bool:
            collect()
            return any(all(e.get(k) == v for k, v in match.items()) for e in heard[name])

        def subscribed() -> bool:
            counts = [int(n) for _, n in client.pubsub_numsub(a.commands_channel,
                                                               b.commands_channel)]
            return all(n > 0 for n in counts)

        wait_until(subscribed, 30, "both consumers to subscribe")
        client.publish(a.commands_channel, json.dumps(
            {"command": "InitInventory", "namespace": namespace, "sku": "s", "total": 3}))
        wait_until(lambda: answered("a", event="InventoryInitialized"), 30,
                   "deployment a to apply its command")
        client.publish(a.commands_channel, json.dumps(
            {"command": "Decrement", "namespace": namespace, "sku": "s", "qty": 1,
             "idempotency_key": "over-pubsub"}))
        wait_until(lambda: answered("a", event="Decremented", idempotency_key="over-pubsub"),
                   30, "deployment a to apply its command")
        client.xadd(a.commands_stream, {"message": json.dumps(
            {"command": "Decrement", "namespace": namespace, "sku": "s", "qty": 1,
             "idempotency_key": "over-the-stream"})})
        wait_until(lambda: answered("a", event="Decremented", idempotency_key="over-the-stream"),
                   30, "deployment a to apply the stream's command")
        # b answers a command of its own: by then it would have applied a's, had it heard them.
        client.publish(b.commands_channel, json.dumps(
            {"command": "InitInventory", "namespace": namespace, "sku": "mine", "total": 1}))
        wait_until(lambda: answered("b", event="InventoryInitialized", sku="mine"), 30,
                   "deployment b to answer its own command")
        assert [e["event"] for e in heard["b"]] == ["InventoryInitialized"]
        assert [(e["event"], e.get("available")) for e in heard["a"]] == [
            ("InventoryInitialized", 3), ("Decremented", 2), ("Decremented", 1)]
        b_keys = KeySpace(b.redis_key_prefix, b.partitions)
        assert client.exists(b_keys.item(namespace, "s")) == 0  # b's counter never had it
        assert client.xlen(b.commands_stream) == 0
        for listener in listeners.values():
            listener.close()
    finally:
        for consumer in consumers:
            consumer.stop()
        for c in clients:
            c.close()


def test_a_repeated_key_or_message_field_is_invalid_and_changes_nothing(
        consumer: Process, channels: Channels, namespace: str) -> None:
    """As HTTP refuses a body naming a key twice: a reader taking the first of the two would
    disagree with one taking the last. Likewise a stream entry naming ``message`` twice."""
    wait_until(lambda: channels.listeners() > 0, 15, "the consumer to subscribe")
    channels.send(command="InitInventory", namespace=namespace, sku="s", total=5)
    channels.wait_for(event="InventoryInitialized", namespace=namespace)
    channels.send_raw(f'{{"command": "Decrement", "namespace": "{namespace}", "sku": "s", '
                      '"qty": 1, "qty": 2, "idempotency_key": "twice"}')
    refused = channels.wait_for(event="CommandRejected", idempotency_key="twice")
    assert refused["reason"] == "invalid_message" and "'qty'" in refused["message"]
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1, buyer=None,
                  idempotency_key="null-buyer")
    refused = channels.wait_for(event="CommandRejected", idempotency_key="null-buyer")
    assert refused["reason"] == "invalid_message" and "buyer" in refused["message"]
    channels.send(command="Explode", namespace=namespace)
    unknown = channels.wait_for(event="CommandRejected", command="Explode")
    assert "JoinQueue" in unknown["message"] and "tag" not in unknown["message"]
    client = channels.client
    stream = channels.config.commands_stream
    client.execute_command(
        "XADD", stream, "*",
        "message", json.dumps({"command": "Decrement", "namespace": namespace, "sku": "s",
                               "qty": 1, "idempotency_key": "two-fields"}),
        "message", json.dumps({"command": "Decrement", "namespace": namespace, "sku": "s",
                               "qty": 3, "idempotency_key": "two-fields"}))
    two = channels.wait_for(event="CommandRejected", idempotency_key="two-fields")
    assert two["reason"] == "invalid_message" and "message field" in two["message"]
    # Nothing was sold: the next decrement answers with every unit still there.
    channels.send(command="Decrement", namespace=namespace, sku="s", qty=1,
                  idempotency_key="after")
    assert channels.wait_for(event="Decremented", idempotency_key="after")["available"] == 4
    assert consumer.alive()
