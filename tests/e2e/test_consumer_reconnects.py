"""The consumer survives its Redis restarting: it resubscribes and carries on."""

from __future__ import annotations

import dataclasses
import json

import redis

from allocation.config import Config
from tests.helpers.processes import (
    PrivateRedis,
    Process,
    allocation_command,
    service_env,
    wait_until,
)


def test_the_consumer_resubscribes_after_redis_restarts(
        service_config: Config, private_redis: PrivateRedis, namespace: str) -> None:
    config = dataclasses.replace(service_config, redis_url=private_redis.url)
    consumer = Process(allocation_command("consume"), service_env(config))
    consumer.start()
    client = redis.Redis.from_url(private_redis.url)

    def listeners() -> int:
        try:
            [(_, count)] = client.pubsub_numsub(config.commands_channel)
            return int(count)
        except redis.ConnectionError:
            return 0

    try:
        wait_until(lambda: listeners() > 0, 15, "the consumer to subscribe")
        private_redis.stop()
        private_redis.start()
        wait_until(lambda: listeners() > 0, 30, "the consumer to resubscribe after the restart")
        events = client.pubsub(ignore_subscribe_messages=True)
        events.subscribe(config.events_channel)
        client.publish(config.commands_channel, json.dumps(
            {"command": "InitInventory", "namespace": namespace, "sku": "s", "total": 3}))
        got: list[dict[str, object]] = []

        def answered() -> bool:
            message = events.get_message(timeout=0.1)
            if message is not None:
                got.append(json.loads(message["data"]))
            return any(e.get("event") == "InventoryInitialized" for e in got)

        wait_until(answered, 15, "the resubscribed consumer to apply a command")
        assert consumer.alive()
    finally:
        consumer.stop()
