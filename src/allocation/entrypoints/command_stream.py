"""The command stream's consumer, the reliable channel: commands added to the stream wait there
while no consumer runs, and one that died holding some is relieved of them by another (after
``claim_idle_ms``). An entry is acknowledged and deleted once its answer is final; one that met a
passing failure stays pending and is read again after a backoff, and after ``max_deliveries``
deliveries it is moved to ``<stream>:dead``. Idempotency keys make a redelivered command take
effect once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from prometheus_client import Counter

from allocation.adapters.redis_client import RedisClient
from allocation.adapters.redis_consumer_group import ConsumerGroup, Entry, entry_id, lost_group
from allocation.entrypoints.command_messages import (
    CONSUMER_COMMANDS,
    DEAD_LETTERED,
    POISON_DELIVERIES,
    STREAM,
    Bus,
    Publisher,
    invalid,
    judge,
    rejection,
    stream_action,
)
from allocation.entrypoints.health_server import LoopState, run_reconnecting

logger = logging.getLogger(__name__)

RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.25, 5.0  # re-reading entries that met a passing failure
PENDING_INTERVAL_SECONDS = 1.0  # how often pending entries (own and stale others') are looked at
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_CLAIM_IDLE_MS = 30_000
STREAM_GROUP = "allocation"
BATCH = 100

# Which entries name the field ``message`` more than once, read as Redis keeps them: redis-py
# folds an entry's fields into a dict, keeping the last of two of one name, so the consumer would
# apply one of two commands (a repeated key in one message is refused as well: ``parse``).
REPEATED_MESSAGE = """
local repeated = {}
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if found[1] then
    local named, fields = 0, found[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'message' then named = named + 1 end
    end
    if named > 1 then repeated[#repeated + 1] = id end
  end
end
return repeated
"""

CONSUMER_DEAD_LETTERS = Counter("allocation_consumer_dead_letters_total",
                                "Stream entries moved to the dead-letter stream")


class StreamConsumer:
    def __init__(self, bus: Bus, client: RedisClient, stream: str,
                 publisher: Publisher, name: str, claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.bus, self.client, self.stream, self.publisher = bus, client, stream, publisher
        self.name, self.claim_idle_ms, self.max_deliveries = name, claim_idle_ms, max_deliveries
        self.group = ConsumerGroup(client, stream, STREAM_GROUP)
        self.dead_letters = self.group.dead_letters
        # Entry id -> its deliveries that met an outage: those count towards no limit, so an
        # entry waits out an outage of any length (kept in Redis: a restart keeps the count).
        self.outages = f"{stream}:outages"
        self.stopping = threading.Event()
        self.state = LoopState(STREAM)
        self._pending_due = 0.0  # monotonic time to look at pending entries again; 0: at once
        self._retry_delay = RETRY_MIN_SECONDS
        self._repeated_message = client.register_script(REPEATED_MESSAGE)

    def run(self) -> None:
        run_reconnecting(self.stopping, self._consume, self.state)

    def stop(self) -> None:
        self.stopping.set()

    def _consume(self) -> None:
        self._ensure_group()
        self._pending_due = 0.0  # what this consumer holds first
        self.state.up()
        logger.info("reading stream %s as %s", self.stream, self.name)
        while not self.stopping.is_set():
            self.poll()

    def _ensure_group(self) -> None:
        self.group.lost()  # asked for: made unless Redis has it
        self.group.ensure()

    def poll(self, block_ms: int = 1000) -> None:
        """One round: the pending entries when they are due (this consumer's own, then others'
        idle past ``claim_idle_ms``), then new ones, waiting for them up to ``block_ms``."""
        try:
            if time.monotonic() >= self._pending_due:
                self._schedule_pending(retry=self._read_pending())
            wait = min(block_ms, int((self._pending_due - time.monotonic()) * 1000))
            if self._read_new(wait if wait > 0 else None):  # BLOCK 0 would wait for ever
                self._schedule_pending(retry=True, sooner_only=True)
        except redis.ResponseError as exc:
            if not lost_group(exc):
                raise
            logger.warning("the command stream's group is gone (Redis lost it); making it")
            self._ensure_group()

    def _schedule_pending(self, retry: bool, sooner_only: bool = False) -> None:
        now = time.monotonic()
        if not retry:
            self._retry_delay = RETRY_MIN_SECONDS
            self._pending_due = now + PENDING_INTERVAL_SECONDS
        elif sooner_only:
            self._pending_due = min(self._pending_due, now + self._retry_delay)
        else:
            self._pending_due = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    def _read_new(self, block_ms: int | None) -> bool:
        """Handle new entries; whether any met a passing failure."""
        entries = self.group.read(self.name, ">", BATCH, block_ms)
        return self._handle_batch(entries, {entry_id(i): 1 for i, _ in entries})

    def _read_pending(self) -> bool:
        """Handle this consumer's pending entries (at most 10 000 a round; the rest in the
        next), then claim and handle others' stale ones; whether any met a passing failure
        again."""
        retry = False
        for entries in self.group.read_held(self.name, BATCH, most=100):
            retry |= self._handle_batch(entries, self._deliveries(entries))
        entries = self.group.claim_idle(self.name, self.claim_idle_ms, BATCH)
        if entries:
            logger.info("claimed %d stale entries of the command stream", len(entries))
            retry |= self._handle_batch(entries, self._deliveries(entries))
        return retry

    def _deliveries(self, entries: list[Entry]) -> dict[str, int]:
        """How many times each entry has been delivered (this delivery included), but for the
        deliveries that met an outage."""
        return self.group.deliveries(entries, discount=self.outages)

    def _handle_batch(self, entries: Iterable[Entry], deliveries: Mapping[str, int]) -> bool:
        """Handle entries in order, acknowledging (and deleting) the finished ones together;
        whether any is left to retry."""
        done: list[Any] = []
        retry = False
        entries = list(entries)
        repeated = self._repeated(entries)
        try:
            for raw_id, fields in entries:
                if not fields:  # deleted while pending: nothing to do
                    done.append(raw_id)
                    continue
                action = self._handle_entry(raw_id, fields, deliveries.get(entry_id(raw_id), 1),
                                            entry_id(raw_id) in repeated)
                if action == "retry":
                    retry = True
                else:
                    done.append(raw_id)
        finally:
            self.group.ack(done, forget=self.outages)
        return retry

    def _repeated(self, entries: list[Entry]) -> set[str]:
        """The ids of those ``entries`` that name ``message`` more than once."""
        ids = [entry_id(raw_id) for raw_id, fields in entries if fields]
        if not ids:
            return set()
        return {entry_id(i) for i in self._repeated_message(keys=[self.stream], args=ids)}

    def _handle_entry(self, raw_id: Any, fields: Mapping[bytes, bytes], deliveries: int,
                      repeated: bool = False) -> str:
        raw = fields.get(b"message", b"")
        if deliveries > POISON_DELIVERIES * self.max_deliveries:
            # Delivered that often and never answered: its handling kills the consumer, say.
            # (Deliveries that met an outage are not counted: ``_deliveries``.)
            self._dead_letter(raw_id, raw, f"delivered {deliveries} times without an answer",
                              deliveries)
            return "dead_letter"
        verdict = (invalid(raw, "the entry has more than one message field") if repeated
                   else judge(raw, self.bus))
        action = stream_action(verdict, deliveries, self.max_deliveries)
        if action == "ack":
            CONSUMER_COMMANDS.labels(STREAM, verdict.outcome).inc()
            for message in verdict.answers:
                self.publisher.publish_message(message)
        elif action == "retry":
            CONSUMER_COMMANDS.labels(STREAM, verdict.outcome).inc()
            if verdict.outage:
                self.client.hincrby(self.outages, entry_id(raw_id), 1)
            logger.warning("command stream entry %s left pending (delivery %d of %d): %s",
                           entry_id(raw_id), deliveries, self.max_deliveries, verdict.reason)
        else:
            self._dead_letter(raw_id, raw, verdict.reason, deliveries)
        return action

    def _dead_letter(self, raw_id: Any, raw: bytes, reason: str, deliveries: int) -> None:
        logger.error("command stream entry %s moved to %s after %d deliveries: %s",
                     entry_id(raw_id), self.dead_letters, deliveries, reason)
        self.group.dead_letter({"entry": entry_id(raw_id), "message": raw, "reason": reason,
                                "deliveries": deliveries})
        # What failed stays with the operator (the log, the dead letter): a client is told
        # where the command is kept, not the internals that refused it.
        self.publisher.publish_message(rejection(
            raw, DEAD_LETTERED,
            f"not applied after {deliveries} deliveries; kept in {self.dead_letters}"))
        CONSUMER_COMMANDS.labels(STREAM, DEAD_LETTERED).inc()
        CONSUMER_DEAD_LETTERS.inc()
