"""An item's figures, and what a movement came to: applied (``ok``) or refused by a named rule,
with the figures then.

``Figures`` lives here rather than in a module of its own: a decrement's answer reads them,
and a module more on its path is a file more it crosses (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from allocation.domain import errors, rules

OK = "ok"
NOT_FOUND = "not_found"
FENCED = "fenced"  # the item is being rebuilt; retry shortly
REFUSED_RESERVATIONS = ("reservation_expired", "reservation_released", "reservation_confirmed")


def available(total: int, consumed: int, held: int) -> int:
    """What may still be sold: the one place this rule is written in Python (the scripts'
    ``lib.lua`` writes it for the fast path)."""
    return total - consumed - held


class Figures(NamedTuple):
    """An item's figures, from the script's reply to the JSON body. A named tuple: immutable and
    without a ``__dict__`` as a frozen, slotted dataclass is, and built in about half its
    time (every movement's answer builds one, and a namespace refresh hundreds of
    thousands)."""

    total: int
    consumed: int
    held: int = 0  # units held by reservations (neither available nor sold)
    limit: int | None = None  # the item's limit per buyer (None: none)
    seq: int = 0  # the item's ledger seq (0 where it does not apply)
    # The counter's generation: a new one each time the counter is loaded from the record, so
    # that seqs a lost history handed out are never taken for the record's own.
    gen: str = ""

    @property
    def available(self) -> int:
        return available(self.total, self.consumed, self.held)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A movement's result, and the item's figures after it (``seq``: the movement's)."""

    status: str
    figures: Figures
    replayed: bool = False
    created: bool = False
    # A refusal by the limit per buyer: what they may still take; a refund refused as more
    # than the buyer named has: their units.
    remaining: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def error(self) -> errors.DomainError:
        cls = errors.REFUSALS.get(self.status, errors.DomainError)
        if self.status in REFUSED_RESERVATIONS:
            return cls(f"the reservation is {self.status.removeprefix('reservation_')}")
        if self.status == "insufficient_stock":
            left = self.figures.available
            return cls(f"only {left} available", available=left)
        consumed = self.figures.consumed
        if self.status == "refund_exceeds_consumed":
            if self.remaining is not None:  # more than the buyer named has
                return cls(f"refund exceeds the {self.remaining} units this buyer has",
                           consumed=consumed)
            return cls(f"refund exceeds the {consumed} consumed", consumed=consumed)
        if self.status == "below_consumed":
            return cls(f"total would drop below the {consumed} consumed", consumed=consumed)
        if self.status == "total_exceeds_maximum":
            return cls(f"total would exceed the maximum of {rules.MAX_TOTAL}",
                       maximum=rules.MAX_TOTAL)
        if self.status == "limit_exceeded":
            remaining = self.remaining or 0
            return cls(f"over the limit per buyer; {remaining} more may be taken",
                       remaining=remaining)
        if self.status == "pass_required":
            return cls("a sale gates this sku: send the buyer's Sale-Pass")
        if self.status == "buyer_required":
            return cls("this item has a limit per buyer: name the buyer")
        if self.status == "reservation_lifetime_exceeded":
            return cls(f"a reservation lives at most {rules.RESERVATION_LIFETIME_SECONDS} s "
                       "from its creation")
        if self.status == "idempotency_key_reused":
            return cls("this idempotency key was used with a different request")
        return cls(self.status)

    def raise_for_status(self) -> Outcome:
        if not self.ok:
            raise self.error()
        return self
