"""A movement of a gated sku, under the buyer's pass: the pass is checked (signed, this sale's,
this buyer's, not expired) and claimed in the sale's slot before the movement runs in the
item's; it is spent if the movement sold, kept by the reservation if it held (spent by its
confirm, given back by its release or expiry: ``settled``), and given back if it was refused
(docs/adr/0033, 0034). The pass remembers the idempotency key that spent it: a retry under that key
goes on to the movement with no pass (``Claim.replay``), which the counter can only answer as
it first did; any other request with the spent pass is refused.
A movement whose end is unknown (Redis went away) leaves the claim to lapse, counted as used:
a pass is never used twice."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from allocation.adapters.sale_queue import ClaimStatus, HoldLink
from allocation.domain import errors
from allocation.domain.errors import PassInvalid, PassRequired
from allocation.domain.outcome import Figures
from allocation.domain.sale import Sale, place
from allocation.service_layer.services import Services

REFUSED = {"used": "the Sale-Pass has been used", "expired": "the Sale-Pass has expired",
           "busy": "the Sale-Pass is in use by another request",
           "held": "the Sale-Pass is kept by the buyer's reservation until it ends",
           "unknown": "the Sale-Pass is not one this sale gave",
           "closed": "the sale is closed", "missing": "the sale is not running",
           "other": "the Sale-Pass is of the sale's queue before it was restored: join again"}


@dataclass
class Claim:
    sale: str = ""  # the sale whose pass is claimed
    used: bool = False  # set by the caller once the movement sold
    hold: HoldLink | None = None  # set by the caller once a reservation held: it keeps the pass
    replay: bool = False  # a retry of the movement that spent the pass: run it passless
    # Passless because the pass is of a queue Redis lost (docs/adr/0046), not known spent: a
    # movement the counter does not remember is refused as that, not as "used".
    other: bool = False

    @property
    def sale_of(self) -> str:
        """The sale whose pass the movement may say it holds: none for a replay, so that the
        counter answers a remembered movement and refuses a new one."""
        return "" if self.replay else self.sale


@contextmanager
def claimed(services: Services, sale: Sale, buyer: str | None, sale_pass: str | None,
            qty: int, key: str | None) -> Iterator[Claim]:
    if not sale_pass:
        raise PassRequired(f"{sale.sale} gates this sku: send the buyer's Sale-Pass")
    if not buyer:
        raise PassInvalid("a Sale-Pass needs the buyer it was given to")
    claim = services.signing.read_pass(sale.namespace, sale.sale, buyer, sale_pass,
                                       int(time.time() * 1000))
    incarnation = claim.incarnation
    status: ClaimStatus
    try:
        figures = services.sales.figures_of(sale, incarnation)
    except errors.NotFound:  # Redis lost the queue that gave the pass (docs/adr/0046)
        status, where = "other", None
    else:
        where = None if figures is None else place(claim.number, figures)
        if where is None:
            raise PassInvalid(REFUSED["unknown"])
        status = services.sale_queue.claim(sale.namespace, sale.sale, where, qty, key,
                                           incarnation=incarnation)
    if status == "replay" or (status == "other" and key):
        # "other": its places are not this queue's. A retry of the movement the pass spent is
        # answered as it first was (the counter keeps its key); any other is refused passless.
        yield Claim(replay=True, other=status == "other")
        return
    if status != "ok" or where is None:
        raise PassInvalid(REFUSED[status])
    held = Claim(sale.sale)
    try:
        yield held
    except errors.DomainError:  # refused: nothing was taken
        services.sale_queue.resolve(sale.namespace, sale.sale, where, False,
                                    incarnation=incarnation)
        raise
    services.sale_queue.resolve(sale.namespace, sale.sale, where, held.used, held.hold,
                                incarnation=incarnation)


@contextmanager
def naming(sku: str) -> Iterator[None]:
    """A refusal of the pass (``PassRequired``, ``PassInvalid``) names ``sku``, the gated line
    of a reservation, as the reservation's other refusals name theirs (a decrement's path names
    its sku); one that names a sku already keeps it."""
    try:
        yield
    except (PassRequired, PassInvalid) as refused:
        refused.details.setdefault("sku", sku)
        raise


def settled(services: Services, namespace: str, rid: str, skus: Iterable[str],
            state: str, figures: Iterable[Figures]) -> None:
    """A reservation of a gated sku was confirmed (its pass is used) or released (its pass is
    back). The sale's step on finds the same from the reservation itself once its hold is
    past its end (a confirm whose process died before saying so): this makes it prompt."""
    if state not in ("confirmed", "released", "expired"):
        return
    sales = {s for sku in skus if (s := services.sales.gated.get((namespace, sku))) is not None}
    for sale in sales:  # one, but for a reservation held before its skus were gated
        services.sale_queue.settle(namespace, sale.sale, rid,
                                   "used" if state == "confirmed" else "back")
        sold(services, sale, figures)


def sold(services: Services, sale: Sale, figures: Iterable[Figures]) -> None:
    """A movement left an item of the sale with nothing available and nothing held: the sale
    may have sold out, and its waiting tickets should hear it now, not at the next refresh.
    Step its queue on at once (the last unit's movement only: rare)."""
    if any(f.available <= 0 and f.held <= 0 for f in figures):
        services.sales.figures(sale, fresh=True)


def spent(claim: Claim | None = None) -> PassInvalid:
    """A replay the counter did not remember (it answered ``pass_required``)."""
    return PassInvalid(REFUSED["other" if claim is not None and claim.other else "used"])


def gating(services: Services, namespace: str, skus: Iterable[str]) -> Sale | None:
    """The one sale gating any of ``skus`` (as this process knows); lines of two sales' skus
    would need two passes: refused."""
    found: dict[tuple[str, str], Sale] = {}
    for sku in skus:
        sale = services.sales.gated.get((namespace, sku))
        if sale is None:
            continue
        found.setdefault((sale.namespace, sale.sale), sale)
        if len(found) > 1:  # this line is the first of a second sale: it is named
            raise PassInvalid("these lines are gated by more than one sale: one pass covers "
                              "one", sku=sku)
    return next(iter(found.values()), None)
