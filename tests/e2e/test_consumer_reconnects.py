"""The consumer survives its Redis restarting: it resubscribes and carries on."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from allocation.config import Config
from tests.e2e.conftest import Process, allocation_command, free_port, service_env, wait_until


class PrivateRedis:
    """A redis-server of this test's own, on a free port, so it can be stopped and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed; the reconnect test starts its own")
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no",
                                      "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, 15, "the private redis-server to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


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
