"""The port of a sale's queue: what the service layer asks of the store that numbers joiners,
keeps the serving figure and the passes (``redis_sale.RedisSaleQueue`` implements it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from allocation.domain.sale import PassState, QueueFigures, Sale

JoinStatus = Literal["joined", "again", "closed", "missing"]
ClaimStatus = Literal["ok", "replay", "used", "held", "expired", "busy", "unknown", "closed",
                      "missing", "other"]

HoldEnd = Literal["used", "back", "held"]  # confirmed; released or expired; still held


@dataclass(frozen=True)
class HoldLink:
    """The reservation that keeps a pass, held until ``expires_ms``."""

    reservation_id: str
    expires_ms: int


@dataclass(frozen=True)
class TicketClaim:
    buyer: str
    number: int
    joined_at_ms: int
    # The incarnation of the sale's queue that numbered it (docs/adr/0046; "": a ticket of a
    # sale put before incarnations were, whose queue has none either).
    incarnation: str = ""


@dataclass(frozen=True)
class PassClaim:
    buyer: str
    number: int
    expires_at_ms: int
    incarnation: str = ""  # as the ticket's it was given for


class Signing(Protocol):
    """Signs and reads a sale's tickets and passes (``sale_signing.SaleSigning``)."""

    def ticket(self, namespace: str, sale: str, claim: TicketClaim) -> str: ...

    def read_ticket(self, namespace: str, sale: str, ticket: str) -> TicketClaim | None: ...

    def pass_(self, namespace: str, sale: str, claim: PassClaim) -> str: ...

    def read_pass(self, namespace: str, sale: str, buyer: str, sale_pass: str,
                  now_ms: int) -> PassClaim: ...


@dataclass(frozen=True)
class Joined:
    status: JoinStatus
    number: int
    joined_at_ms: int
    incarnation: str = ""  # of the queue that numbered it


@dataclass(frozen=True)
class Advanced:
    """A sale's queue after a step on: its figures, and the skus' units then."""

    figures: QueueFigures | None  # None: the sale is not in the store (restore it)
    available: int
    held: int
    now_ms: int
    # Skus the store lost (their items are missing: counted as nothing available and
    # something held, so the sale admits nobody on them until they are rebuilt).
    missing: tuple[str, ...] = ()


class SaleQueue(Protocol):
    def put(self, sale: Sale) -> None:
        """Define the sale, or restore its terms, keeping its queue. Where the store has no
        terms of it (new, or lost), its queue starts again under a new incarnation."""

    def now_ms(self, namespace: str, sale: str) -> int:
        """The clock the sale's scripts read (a sale made with no ``opens_at`` opens now)."""

    def gate(self, sale: Sale, gated: bool) -> None:
        """Mark the sale's skus as gated by it (or no longer) where their sales run, so that
        a process that has not heard of the sale yet still sells none without its pass."""

    def join(self, namespace: str, sale: str, buyer: str) -> Joined: ...

    def advance(self, sale: Sale, most: int = 1000) -> Advanced:
        """Open the sale when due, end expired passes, admit what the rule allows from the
        skus' units now, and answer the figures."""

    def claim(self, namespace: str, sale: str, place: int, qty: int,
              key: str | None = None, *, incarnation: str) -> ClaimStatus:
        """Take the pass at ``place`` of the queue's ``incarnation`` for a movement of up to
        ``qty`` units under the idempotency ``key``; "replay" where the movement under that key
        spent it already, "other" where the queue is another incarnation now."""

    def resolve(self, namespace: str, sale: str, place: int, used: bool,
                hold: HoldLink | None = None, *, incarnation: str) -> None:
        """How the claiming movement ended: sold (the pass is used), held (``hold``: the
        reservation keeps the pass until it is settled) or neither (it is back). Nothing
        where the queue is no longer of the claim's ``incarnation``."""

    def settle(self, namespace: str, sale: str, rid: str, end: HoldEnd,
               expires_ms: int = 0) -> None:
        """How the reservation ``rid`` that keeps a pass stands: confirmed (the pass is
        used), ended otherwise (it is back) or held until ``expires_ms``."""

    def pass_at(self, namespace: str, sale: str, place: int, *,
                incarnation: str) -> tuple[PassState | None, int]:
        """The pass at an admitted place of the queue's ``incarnation`` and its expiry (ms);
        None where there is none. ``errors.NotFound`` where the queue is another incarnation
        now (the ticket is not of it)."""
