"""The inventory rules as small named checks, used by the aggregate: the executable specification
of the Redis Lua scripts, which are the rule book (the counter's state machine compares them).
"""

from __future__ import annotations

from typing import Literal

from allocation.domain import errors

Kind = Literal["init", "adjust", "decrement", "refund", "hold", "confirm", "release", "expire",
               "extend"]
KINDS: tuple[Kind, ...] = ("init", "adjust", "decrement", "refund", "hold", "confirm", "release",
                          "expire", "extend")
# A reservation's movements: ``hold`` takes units from available into held; ``confirm`` sells
# them (held to consumed); ``release`` and ``expire`` put them back on sale; ``extend`` moves a
# hold's expiry and changes no figure.
HOLD_KINDS: tuple[Kind, ...] = ("hold", "confirm", "release", "expire", "extend")
# A reservation lives at most this long from its creation, however often it is extended.
RESERVATION_LIFETIME_SECONDS = 86_400
# The most an item's total may be (API.md: total is 0..1_000_000_000): an adjustment past it
# is refused (lib.lua's MAX_TOTAL).
MAX_TOTAL = 1_000_000_000


def quantity_must_be_positive(qty: int) -> None:
    if qty <= 0:
        raise errors.InvalidQuantity(f"quantity must be positive, got {qty}")


def decrement_needs_available(total: int, consumed: int, qty: int, held: int = 0) -> None:
    available = total - consumed - held
    if qty > available:
        raise errors.InsufficientStock(
            f"asked for {qty}, only {available} available", available=available
        )


def refund_must_not_exceed_consumed(consumed: int, qty: int) -> None:
    if qty > consumed:
        raise errors.RefundExceedsConsumed(
            f"refund of {qty} exceeds the {consumed} consumed", consumed=consumed
        )


def refund_must_not_exceed_the_buyers(limit: int | None, buyer: str | None, bought: int,
                                      qty: int) -> None:
    """Where the item has a limit, every buyer's units are kept, and a refund naming a buyer
    returns no more than they ``bought`` (their units less those they only hold): a buyer who
    holds units could otherwise refund another's sale, then buy past the limit. Without a
    limit, or naming nobody, only what the item consumed bounds it."""
    if limit is not None and buyer is not None and qty > bought:
        raise errors.RefundExceedsConsumed(
            f"refund of {qty} exceeds the {bought} units buyer {buyer} bought",
            remaining=max(bought, 0))


def total_must_not_drop_below_consumed(total: int, consumed: int, delta: int,
                                       held: int = 0) -> None:
    if total + delta < consumed + held:
        raise errors.BelowConsumed(
            f"total {total}{delta:+d} would drop below the {consumed + held} consumed and held",
            consumed=consumed,
        )


def total_must_not_exceed_maximum(total: int, delta: int) -> None:
    """Only a rise is refused: an item above the maximum (made before this rule) may come
    down in steps."""
    if delta > 0 and total + delta > MAX_TOTAL:
        raise errors.TotalExceedsMaximum(
            f"total {total}{delta:+d} would exceed the maximum of {MAX_TOTAL}",
            maximum=MAX_TOTAL)


def buyer_within_limit(limit: int | None, buyer: str | None, used: int, qty: int) -> None:
    """A sale (or hold) on an item with a limit names its buyer, and takes them no further
    than the limit counting what they already hold and bought (``used``)."""
    if limit is None:
        return
    if buyer is None:
        raise errors.BuyerRequired("this item has a limit per buyer: name the buyer")
    if used + qty > limit:
        remaining = max(limit - used, 0)
        raise errors.LimitExceeded(
            f"the limit is {limit} per buyer; this buyer may take {remaining} more",
            remaining=remaining)


def apply(kind: str, total: int, consumed: int, qty: int,
          held: int = 0) -> tuple[int, int, int]:
    """Return (total, consumed, held) after a movement, or raise the rule that refuses it.

    ``qty`` is the signed delta for ``adjust`` and the new total for ``init``; a kind not in
    ``KINDS`` is a bug and raises ValueError.
    """
    if kind == "init":
        if qty < 0:
            raise errors.InvalidQuantity(f"total must not be negative, got {qty}")
        return qty, 0, 0
    if kind == "adjust":
        total_must_not_drop_below_consumed(total, consumed, qty, held)
        total_must_not_exceed_maximum(total, qty)
        return total + qty, consumed, held
    quantity_must_be_positive(qty)
    if kind in ("decrement", "hold"):
        decrement_needs_available(total, consumed, qty, held)
        return (total, consumed + qty, held) if kind == "decrement" else (
            total, consumed, held + qty)
    if kind == "refund":
        refund_must_not_exceed_consumed(consumed, qty)
        return total, consumed - qty, held
    if kind == "extend":
        return total, consumed, held
    if kind in ("confirm", "release", "expire"):
        if qty > held:
            raise ValueError(f"{kind} of {qty} exceeds the {held} held")  # a bug, not a rule
        return total, consumed + qty if kind == "confirm" else consumed, held - qty
    raise ValueError(f"unknown movement kind {kind!r}")
