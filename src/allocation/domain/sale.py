"""A sale's waiting room as plain rules: the executable specification of the sale's scripts
(``adapters/lua/sale_*.lua``), which are the rule book.

A sale numbers its joiners 0, 1, 2, ... as they come. Its *places* are the order it serves them
in: the joiners before the opening (the pre-queue, its size fixed at the opening) take places
0..size-1 in a keyed random order (``prequeue.place``), every later joiner keeps its number as
its place. The *serving figure* is how many places have been admitted: a place below it was
given a pass (outstanding, used or expired), a place at or above it is waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from allocation.domain import errors, prequeue

SaleState = Literal["scheduled", "open", "sold_out", "closed"]
TicketState = Literal["scheduled", "waiting", "admitted", "used", "expired", "sold_out",
                      "closed"]
PassState = Literal["outstanding", "used", "expired"]

ADMIT_FACTOR_DEFAULT = 2.0
PASS_TTL_DEFAULT = 300
MAX_SKUS = 100


@dataclass(frozen=True)
class Sale:
    """A sale's definition: what the record keeps and a Redis rebuild restores."""

    namespace: str
    sale: str
    skus: tuple[str, ...]
    opens_at_ms: int
    admit_factor: float = ADMIT_FACTOR_DEFAULT
    pass_ttl_seconds: int = PASS_TTL_DEFAULT
    max_admitted: int | None = None
    closed: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.skus) <= MAX_SKUS or len(set(self.skus)) != len(self.skus):
            raise errors.InvalidInput("skus", f"1..{MAX_SKUS} distinct skus")
        if not 1 <= self.admit_factor <= 10 or not math.isfinite(self.admit_factor):
            raise errors.InvalidInput("admit_factor", "admit_factor is 1..10")
        if not 30 <= self.pass_ttl_seconds <= 3600:
            raise errors.InvalidInput("pass_ttl_seconds", "pass_ttl_seconds is 30..3600")
        if self.max_admitted is not None and not 1 <= self.max_admitted <= 1_000_000:
            raise errors.InvalidInput("max_admitted", "max_admitted is 1..1000000 or null")

    def same_terms(self, other: Sale) -> bool:
        """A repeated PUT: the same sale when every term but ``closed`` agrees. The skus are a
        set: the same ones in another order are the same sale (the kept order stands)."""
        return (frozenset(self.skus), self.opens_at_ms, self.admit_factor,
                self.pass_ttl_seconds, self.max_admitted) == (
                    frozenset(other.skus), other.opens_at_ms, other.admit_factor,
                    other.pass_ttl_seconds, other.max_admitted)


@dataclass(frozen=True)
class QueueFigures:
    """A sale's queue as the sale's scripts keep it (one hash tag in Redis)."""

    joined: int  # joiners so far (the next number)
    serving: int  # places admitted so far
    prequeue: int | None  # the pre-queue's size, fixed at the opening (None: not open yet)
    order_key: bytes  # the pre-queue's permutation key, drawn at the opening
    outstanding: int  # passes given and neither used nor expired
    used: int
    expired: int
    sold_out: bool
    closed: bool
    # The queue's incarnation: drawn where its state is made, again where Redis lost it
    # (docs/adr/0046). Numbers and places are of one incarnation: a ticket or pass of another
    # is not of this queue.
    incarnation: str = ""


def admission_room(available: int, pending_units: int, outstanding: int, admit_factor: float,
                   max_admitted: int | None) -> int:
    """How many more passes may be given now: passes outstanding stay within ``admit_factor``
    times the units available (and ``max_admitted``). ``pending_units`` are units that passes
    may have taken since ``available`` was read (claims in flight, uses resolved since):
    counted as gone, so a stale figure never admits more than the rule allows."""
    bound = math.floor(admit_factor * max(available - pending_units, 0))
    if max_admitted is not None:
        bound = min(bound, max_admitted)
    return max(bound - outstanding, 0)


def admit(figures: QueueFigures, room: int) -> int:
    """The new serving figure: the room's worth of the waiting, in place order."""
    if figures.prequeue is None or figures.closed:
        return figures.serving
    return figures.serving + min(room, figures.joined - figures.serving)


def is_sold_out(available: int, held: int) -> bool:
    """Nothing to sell and nothing that may come back by a hold ending."""
    return available <= 0 and held <= 0


def sale_state(sale: Sale, now_ms: int, sold_out: bool) -> SaleState:
    if sale.closed:
        return "closed"
    if now_ms < sale.opens_at_ms:
        return "scheduled"
    return "sold_out" if sold_out else "open"


def place(number: int, figures: QueueFigures) -> int | None:
    """A joiner's place in the serving order (None before the opening draws the pre-queue)."""
    if figures.prequeue is None:
        return None
    if number < figures.prequeue:
        return prequeue.place(figures.order_key, figures.prequeue, number)
    return number


@dataclass(frozen=True)
class TicketView:
    state: TicketState
    # Tickets ahead still waiting: None while scheduled (no place drawn yet), an integer in
    # every other state. A sold-out ticket keeps its place (it waits again in that order when
    # stock comes back); one given a pass, or of a closed sale, has nobody ahead: 0.
    position: int | None


def ticket_state(number: int, figures: QueueFigures,
                 pass_state: PassState | None = None) -> TicketView:
    """A ticket's state from its number and the sale's figures. ``pass_state`` is needed only
    for an admitted place (below the serving figure; "admitted" without it means: read the
    pass): the common poll, of a waiting ticket, needs nothing but the figures."""
    if figures.closed:
        return TicketView("closed", 0)
    where = place(number, figures)
    if where is None:
        return TicketView("scheduled", None)
    if where >= figures.serving:
        ahead = where - figures.serving
        return TicketView("sold_out" if figures.sold_out else "waiting", ahead)
    # Given a pass, a place keeps its pass's state: sold out is news for the waiting only (a
    # pass still outstanding may buy what a refund brings back).
    if pass_state == "used":
        return TicketView("used", 0)
    if pass_state == "expired":
        return TicketView("expired", 0)
    return TicketView("admitted", 0)
