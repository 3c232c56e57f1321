"""Domain events as JSON messages on the events channel (API.md, "Redis pub/sub")."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from allocation.adapters.redis_client import RedisClient
from allocation.domain import events


def event_message(event: events.Event) -> dict[str, Any]:
    fields = dataclasses.asdict(event)
    if fields.get("buyer", "") is None:
        del fields["buyer"]  # named only where the request named one (as move.lua does)
    return {"event": type(event).__name__, **fields, "available": event.available}


class RedisEventPublisher:
    def __init__(self, client: RedisClient, channel: str) -> None:
        self.client = client
        self.channel = channel

    def __call__(self, event: events.Event) -> None:
        self.publish_message(event_message(event))

    def publish_message(self, message: dict[str, Any]) -> None:
        self.client.publish(self.channel, json.dumps(message))

