"""A sale's queue in Redis: its scripts (``lua/sale_*.lua``) in the sale's one slot, and the
read of its skus' units in theirs (a cluster keeps them apart: docs/adr/0033)."""

from __future__ import annotations

import secrets
from typing import Any, cast

from allocation.adapters.redis_client import RedisClient, unavailable_on_connection_error
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_scripts import ScriptBatcher, lua
from allocation.adapters.sale_queue import (
    Advanced,
    ClaimStatus,
    HoldEnd,
    HoldLink,
    Joined,
    JoinStatus,
)
from allocation.domain import errors
from allocation.domain.sale import PassState, QueueFigures, Sale

# How long a movement that claimed a pass may take to say how it ended; past it the claim
# counts as used (its process may have died after selling: a pass is never used twice).
CLAIM_LEASE_MS = 30_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _order_key() -> str:
    return secrets.token_hex(16)


def _incarnation() -> str:
    """A queue's incarnation id: drawn each time its state is made, so one Redis lost is told
    from the one made again (64 random bits: two alike are not to be met)."""
    return secrets.token_hex(8)


class RedisSaleQueue:
    def __init__(self, client: RedisClient, keys: KeySpace, events_channel: str = "") -> None:
        self.client = client
        self.keys = keys
        # SaleOpened, SaleSoldOut and SaleClosed go out from the scripts that make them so,
        # as the counter's own movement events do ("": none).
        self.events_channel = events_channel
        self._put = client.register_script(lua("sale_put"))
        self._join = ScriptBatcher(client, lua("sale_join"))  # the herd's joins share trips
        self._advance = client.register_script(lua("sale_advance"))
        self._claim = client.register_script(lua("sale_claim"))
        self._resolve = client.register_script(lua("sale_resolve"))
        self._settle = client.register_script(lua("sale_settle"))
        self._pass = client.register_script(lua("sale_pass"))
        self._now = client.register_script(lua("sale_now"))

    def now_ms(self, namespace: str, sale: str) -> int:
        with unavailable_on_connection_error():
            return int(self._now(keys=[self.keys.sale(namespace, sale)[0]]))

    def put(self, sale: Sale) -> None:
        keys = list(self.keys.sale(sale.namespace, sale.sale))
        with unavailable_on_connection_error():
            self._put(keys=keys, args=[
                sale.opens_at_ms, repr(sale.admit_factor), sale.max_admitted or 0,
                sale.pass_ttl_seconds * 1000, "1" if sale.closed else "0", " ".join(sale.skus),
                sale.namespace, sale.sale, self.events_channel, _incarnation()])

    def gate(self, sale: Sale, gated: bool) -> None:
        with unavailable_on_connection_error():
            pipe = self.client.pipeline(transaction=False)
            for sku in sale.skus:
                item = self.keys.item(sale.namespace, sku)
                if gated:
                    pipe.hset(item, "gate", sale.sale)
                else:
                    pipe.hdel(item, "gate")
            pipe.execute()

    def join(self, namespace: str, sale: str, buyer: str) -> Joined:
        sale_key, buyers, *_ = self.keys.sale(namespace, sale)
        status, number, joined_at, incarnation = self._join(
            keys=[sale_key, buyers], args=[buyer, _order_key(), self.events_channel])
        return Joined(cast(JoinStatus, _text(status)), int(number), int(joined_at),
                      _text(incarnation))

    def advance(self, sale: Sale, most: int = 1000) -> Advanced:
        sale_key, _, outstanding, claims, passes, resolved, holds = self.keys.sale(
            sale.namespace, sale.sale)
        with unavailable_on_connection_error():
            # The epoch first, then the items: a use resolved after this read may not show
            # in the units read, so the script counts its units as gone.
            epoch = int(self.client.hget(sale_key, "epoch") or 0)
            available, held, missing = self._units(sale)
            reply = self._advance(keys=[sale_key, outstanding, claims, passes, resolved, holds],
                                  args=[available, held, epoch, _order_key(), most,
                                        self.events_channel])
        if not reply:
            return Advanced(None, available, held, 0, missing)
        (joined, serving, prequeue, order_key, out, used, expired, sold_out, closed, _,
         now, incarnation, *ended) = reply
        if ended:
            self._holds_ended(sale, [_text(rid) for rid in ended], int(now))
        prequeue_text = _text(prequeue)
        figures = QueueFigures(
            joined=int(joined), serving=int(serving),
            prequeue=int(prequeue_text) if prequeue_text else None,
            order_key=_text(order_key).encode(), outstanding=int(out), used=int(used),
            expired=int(expired), sold_out=bool(int(sold_out)), closed=bool(int(closed)),
            incarnation=_text(incarnation))
        return Advanced(figures, available, held, int(now), missing)

    def _units(self, sale: Sale) -> tuple[int, int, tuple[str, ...]]:
        """The skus' available and held units, each read in its own slot, and the skus
        missing. An item missing from Redis (to be rebuilt) counts as nothing available and
        something held: it admits nobody and does not make the sale sold out."""
        pipe = self.client.pipeline(transaction=False)
        for sku in sale.skus:
            pipe.hmget(self.keys.item(sale.namespace, sku), "total", "consumed", "held")
        available = held = 0
        missing: list[str] = []
        for sku, (total, consumed, holding) in zip(sale.skus, pipe.execute(), strict=True):
            if total is None:
                held += 1
                missing.append(sku)
                continue
            taken = int(consumed or 0) + int(holding or 0)
            available += max(int(total) - taken, 0)
            held += int(holding or 0)
        return available, held, tuple(missing)

    def _holds_ended(self, sale: Sale, rids: list[str], now_ms: int) -> None:
        """Ask each reservation past the end the sale recorded for its hold how it stands
        (read in its own slot) and settle its pass: a confirm the caller did not report (its
        process died) spends it, a release or an expiry gives it back, an extend moves the
        end on. A reservation Redis no longer has spends it: never twice."""
        pipe = self.client.pipeline(transaction=False)
        for rid in rids:  # an id names its partition (RedisCounter.reservation_id)
            partition = rid.partition(".")[0]
            at = int(partition) if partition.isdigit() else -1
            pipe.hmget(self.keys.reservation(sale.namespace, at, rid), "state", "expires")
        with unavailable_on_connection_error():
            stands = pipe.execute()
        for rid, (state, expires) in zip(rids, stands, strict=True):
            text = _text(state) if state is not None else "confirmed"
            if text in ("pending", "confirming"):
                continue  # a cart across slots in its steps: the next step on
            if text == "held" and int(expires or 0) > now_ms:
                self.settle(sale.namespace, sale.sale, rid, "held", int(expires))
            else:
                self.settle(sale.namespace, sale.sale, rid,
                            "used" if text == "confirmed" else "back")

    def settle(self, namespace: str, sale: str, rid: str, end: HoldEnd,
               expires_ms: int = 0) -> None:
        sale_key, _, outstanding, _, passes, _, holds = self.keys.sale(namespace, sale)
        with unavailable_on_connection_error():
            self._settle(keys=[sale_key, outstanding, passes, holds],
                         args=[rid, end, expires_ms])

    def claim(self, namespace: str, sale: str, place: int, qty: int,
              key: str | None = None, *, incarnation: str) -> ClaimStatus:
        sale_key, _, outstanding, claims, passes, *_ = self.keys.sale(namespace, sale)
        with unavailable_on_connection_error():
            status = self._claim(keys=[sale_key, outstanding, claims, passes],
                                 args=[place, qty, CLAIM_LEASE_MS, key or "", incarnation])
        return cast(ClaimStatus, _text(status))

    def resolve(self, namespace: str, sale: str, place: int, used: bool,
                hold: HoldLink | None = None, *, incarnation: str) -> None:
        sale_key, _, outstanding, claims, passes, resolved, holds = self.keys.sale(
            namespace, sale)
        outcome = "used" if used else "held" if hold is not None else "back"
        link = [hold.reservation_id, hold.expires_ms] if hold is not None else []
        with unavailable_on_connection_error():
            self._resolve(keys=[sale_key, outstanding, claims, passes, resolved, holds],
                          args=[place, outcome, incarnation, *link])

    def pass_at(self, namespace: str, sale: str, place: int, *,
                incarnation: str) -> tuple[PassState | None, int]:
        sale_key, _, outstanding, _, passes, *_ = self.keys.sale(namespace, sale)
        with unavailable_on_connection_error():
            state, expires = self._pass(keys=[sale_key, outstanding, passes],
                                        args=[place, incarnation])
        text = _text(state)
        if text == "other":
            raise errors.NotFound(f"no such ticket of the sale {sale}: its queue was restored "
                                  "since; join again")
        return (None if text == "none" else cast(PassState, text)), int(expires)
