"""Group commit for scripts: concurrent callers in one process share one pipeline.

Each call waits in a queue; whoever finds no batch in flight leads: it sends everything queued in
one round trip, hands each caller its reply, and passes the lead to the first caller that queued
meanwhile. Under load a round trip carries dozens of movements (about 8 times less client CPU per
movement, measured); alone, a call goes out at once. Scripts stay atomic one by one and run in
queue order.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import redis

from allocation.adapters.redis_client import RedisClient


class _Call:
    """One queued call. ``done`` is a lock taken at birth and released to wake its caller: a
    bare lock rather than an Event, whose Python-level Condition cost the leader more than the
    round trip when it wakes dozens of callers per batch (py-spy)."""

    __slots__ = ("args", "done", "error", "keys", "lead", "reply")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys, self.args = keys, args
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False
        self.reply: Any = None
        self.error: BaseException | None = None


class ScriptBatcher:
    def __init__(self, client: RedisClient, script: str, max_batch: int = 256) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._in_flight = False

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        call = _Call(keys, args)
        with self._lock:
            self._queue.append(call)
            if not self._in_flight:
                self._in_flight = call.lead = True
        if not call.lead:
            call.done.acquire()  # released once: with its reply, or to hand it the lead
        if call.lead:  # first in, or handed the lead by the batch before
            self._send_one_batch()  # the batch holds this call: it releases ``done`` again
            call.done.acquire()
        if call.error is not None:
            raise call.error
        return call.reply

    def _send_one_batch(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
        try:
            replies = self._execute(batch)
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    call.error = reply
                else:
                    call.reply = reply
        except BaseException as exc:  # noqa: BLE001 - whatever failed, every waiter must hear it
            for call in batch:
                call.error = exc
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                successor: _Call | None = self._queue[0]
            else:
                self._in_flight = False
                successor = None
        for call in batch:
            call.done.release()
        if successor is not None:
            successor.done.release()

    def _execute(self, batch: list[_Call]) -> list[Any]:
        return evalsha_many(self.client, self.script, self.sha,
                            [(call.keys, call.args) for call in batch])


def evalsha_many(client: RedisClient, script: str, sha: str,
                 calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run a script once per call in one pipeline; load it where a node lacks it (a restart,
    a failover) and try again. Replies are in call order; an error is returned, not raised."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            # The raw command: redis-py blocks its evalsha method on cluster pipelines (for
            # the NOSCRIPT handling done here); the command still routes by its keys.
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError)
                                or "NOSCRIPT" in str(r) for r in replies
                                if isinstance(r, Exception)):
            client.script_load(script)  # type: ignore[no-untyped-call]
            continue
        return replies
    return replies
