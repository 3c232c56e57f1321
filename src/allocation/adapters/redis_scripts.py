"""The Lua scripts every Redis adapter runs: their text, read from the package; what they are
given and answer; and group commit, by which concurrent callers in one process share one round
trip.

Each call waits in a queue; whoever finds no batch in flight leads: it sends everything queued,
sets each caller's reply, and passes the lead to the first caller that queued meanwhile. The
callers of a batch then wake one another in turn rather than all at once: woken together, dozens
of threads fight over the GIL, which cost a hot item in one process a noticeable share of its
sales (`make bench`'s in-process sale). Only a caller interrupted while it waits (the
main thread, by a signal) could hold up those after it, as an interrupted successor would hold
up the next batch.
The calls of a batch that share a hash slot go as one EVALSHA of the
script wrapped to run them in turn: under load one command carries dozens of movements, which
saves client and Redis CPU per movement; alone, a call goes out at once. Each call's effects
are atomic as before (the whole group's are, in fact), and calls run in queue order.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from importlib import resources
from typing import Any

import redis
from redis.crc import key_slot

from allocation.adapters.redis_client import RedisClient
from allocation.domain import errors
from allocation.domain.outcome import Figures
from allocation.domain.rules import Kind

# The scripts that change items or read the clock: they start with the functions of lib.lua.
_WITH_LIB = frozenset({"move", "reserve", "part", "sweep", "claim", "restore"})
# A sale's scripts: lib.lua's clock, then sale_lib.lua.
_SALE = frozenset({"sale_put", "sale_join", "sale_advance", "sale_claim", "sale_pass",
                   "sale_now", "sale_resolve", "sale_settle"})


def lua(name: str) -> str:
    """A script's text."""
    def text(of: str) -> str:
        return resources.files("allocation.adapters").joinpath(f"lua/{of}.lua").read_text()
    if name in _SALE:
        return text("lib") + text("sale_lib") + text(name)
    return text("lib") + text(name) if name in _WITH_LIB else text(name)


def reply_text(value: Any) -> str:
    """A script's reply as text (Redis answers bytes, or numbers)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fingerprint(kind: Kind, qty: int, buyer: str | None = None) -> str:
    """What makes two requests under one idempotency key "the same request": move.lua compares
    it with the one its idempotency record keeps."""
    return f"{kind}:{qty}:{buyer}" if buyer else f"{kind}:{qty}"


class _Call:
    """One queued call. ``done`` is a lock taken at birth and released to wake its caller: a
    bare lock rather than an Event, whose Python-level Condition cost the leader more than the
    round trip when it wakes dozens of callers per batch."""

    __slots__ = ("args", "done", "error", "keys", "lead", "next", "reply")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys, self.args = keys, args
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False
        self.next: _Call | None = None  # the caller of the batch this one wakes in turn
        self.reply: Any = None
        self.error: BaseException | None = None


class ScriptBatcher:
    """Calls of one script, sent in batches; a lost connection raises ``Unavailable``."""

    def __init__(self, client: RedisClient, script: str, max_batch: int = 256) -> None:
        self.client = client
        self.script = _run_many(script)
        self.sha = hashlib.sha1(self.script.encode()).hexdigest()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._in_flight = False

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        call = _Call(keys, args)
        with self._lock:
            self._queue.append(call)
            first = not self._in_flight
            if first:
                self._in_flight = call.lead = True
        # Decided under the lock, not by reading ``call.lead`` again: a batch that ends now may
        # hand this call the lead and release ``done``, which must then be taken before leading.
        if not first:
            call.done.acquire()  # released once: with its reply, or to hand it the lead
        if call.lead:  # first in, or handed the lead by the batch before
            self._send_one_batch()  # the batch holds this call: it releases ``done`` again
            call.done.acquire()
        if call.next is not None:
            call.next.done.release()
        if call.error is not None:
            if isinstance(call.error, redis.ConnectionError | redis.TimeoutError):
                raise errors.Unavailable("redis unavailable") from call.error
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
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                # Redis is away: the calls queued meanwhile (never sent) hear it now, rather
                # than each batch after this one waiting out the socket timeout again.
                with self._lock:
                    batch, self._queue = batch + self._queue, []
            for call in batch:
                call.error = exc
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                successor: _Call | None = self._queue[0]
            else:
                self._in_flight = False
                successor = None
        for earlier, later in itertools.pairwise(batch):
            earlier.next = later
        if successor is not None:
            successor.done.release()
        batch[0].done.release()

    def _execute(self, batch: list[_Call]) -> list[Any]:
        groups: dict[int, list[int]] = {}  # hash slot -> positions of its calls in the batch
        for at, call in enumerate(batch):
            groups.setdefault(key_slot(call.keys[0].encode()), []).append(at)
        commands = []
        for positions in groups.values():
            keys: list[str] = []
            shapes: list[int] = []
            args: list[Any] = []
            for at in positions:
                keys += batch[at].keys
                shapes += (len(batch[at].keys), len(batch[at].args))
                args += batch[at].args
            commands.append((keys, [len(positions), *shapes, *args]))
        replies: list[Any] = [None] * len(batch)
        for positions, reply in zip(groups.values(),
                                    evalsha_many(self.client, self.script, self.sha, commands),
                                    strict=True):
            for i, at in enumerate(positions):
                replies[at] = reply if isinstance(reply, Exception) else reply[i]
        return replies


def _run_many(script: str) -> str:
    """``script`` as a function run once per call. ARGV: the number of calls, then each call's
    key and argument counts, then all their arguments; KEYS: all their keys, in call order."""
    return f"""local function one(KEYS, ARGV)
{script}
end
local calls = tonumber(ARGV[1])
local key_at, arg_at, replies = 0, 1 + 2 * calls, {{}}
for i = 1, calls do
  local key_count, arg_count = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local keys, args = {{}}, {{}}
  for j = 1, key_count do keys[j] = KEYS[key_at + j] end
  for j = 1, arg_count do args[j] = ARGV[arg_at + j] end
  key_at, arg_at = key_at + key_count, arg_at + arg_count
  replies[i] = one(keys, args)
end
return replies
"""


def evalsha_many(client: RedisClient, script: str, sha: str,
                 calls: list[tuple[list[str], list[Any]]],
                 then: tuple[Any, ...] | None = None) -> list[Any]:
    """Run a script once per call in one pipeline; load it where a node lacks it (a restart,
    a failover) and try again. Replies are in call order; an error is returned, not raised.
    ``then``: one more command for the same pipeline, sent after the calls (its reply is not
    returned)."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            # The raw command: redis-py blocks its evalsha method on cluster pipelines (for
            # the NOSCRIPT handling done here); the command still routes by its keys.
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        if then is not None:
            pipe.execute_command(*then)  # type: ignore[no-untyped-call]
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if then is not None:
            replies = replies[:-1]
        if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError)
                                or "NOSCRIPT" in str(r) for r in replies
                                if isinstance(r, Exception)):
            client.script_load(script)  # type: ignore[no-untyped-call]
            continue
        return replies
    return replies


def figures(total: Any, consumed: Any, held: Any, limit: Any, seq: Any, gen: Any) -> Figures:
    """An item's figures from a script's reply or its hash's fields (numbers or bytes; no
    limit is empty or absent, and an absent seq, generation or held their zero)."""
    return Figures(int(total), int(consumed), int(held or 0), int(limit) if limit else None,
                   int(seq or 0), reply_text(gen or b""))
