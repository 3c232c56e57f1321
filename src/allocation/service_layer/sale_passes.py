"""A movement of a gated sku, under the buyer's pass: the pass is checked (signed, this sale's,
this buyer's, not expired) and claimed in the sale's slot before the movement runs in the
item's; it is spent if the movement sold or held, and given back if it was refused
(docs/adr/0033).
A movement whose end is unknown (Redis went away) leaves the claim to lapse, counted as used:
a pass is never used twice."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from allocation.domain import errors
from allocation.domain.errors import PassInvalid, PassRequired
from allocation.domain.sale import Sale, place
from allocation.service_layer.services import Services

REFUSED = {"used": "the Sale-Pass has been used", "expired": "the Sale-Pass has expired",
           "busy": "the Sale-Pass is in use by another request",
           "unknown": "the Sale-Pass is not one this sale gave",
           "closed": "the sale is closed", "missing": "the sale is not running"}


@dataclass
class Claim:
    used: bool = False  # set by the caller once the movement sold


@contextmanager
def claimed(services: Services, sale: Sale, buyer: str | None, sale_pass: str | None,
            qty: int) -> Iterator[Claim]:
    if not sale_pass:
        raise PassRequired(f"{sale.sale} gates this sku: send the buyer's Sale-Pass")
    if not buyer:
        raise PassInvalid("a Sale-Pass needs the buyer it was given to")
    claim = services.signing.read_pass(sale.namespace, sale.sale, buyer, sale_pass,
                                       int(time.time() * 1000))
    figures = services.sales.figures(sale).figures
    where = None if figures is None else place(claim.number, figures)
    if where is None:
        raise PassInvalid(REFUSED["unknown"])
    status = services.sale_queue.claim(sale.namespace, sale.sale, where, qty)
    if status != "ok":
        raise PassInvalid(REFUSED[status])
    held = Claim()
    try:
        yield held
    except errors.DomainError:  # refused: nothing was taken
        services.sale_queue.resolve(sale.namespace, sale.sale, where, False)
        raise
    services.sale_queue.resolve(sale.namespace, sale.sale, where, held.used)


def gating(services: Services, namespace: str, skus: Iterable[str]) -> Sale | None:
    """The one sale gating any of ``skus`` (as this process knows); lines of two sales' skus
    would need two passes: refused."""
    found = {(s.namespace, s.sale): s for sku in skus
             if (s := services.sales.gate(namespace, sku)) is not None}
    if len(found) > 1:
        raise PassInvalid("these lines are gated by more than one sale: one pass covers one")
    return next(iter(found.values()), None)
