"""A sale's waiting room: the handlers of its commands and the answers to its two reads (a sale
and a ticket). The rules are the domain's (domain/sale.py) and the scripts' (lua/sale_*.lua);
here they are put together with the record, the queue and the signing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from allocation.adapters.sale_queue import Advanced, PassClaim, TicketClaim
from allocation.domain import commands, errors
from allocation.domain.sale import (
    QueueFigures,
    Sale,
    SaleState,
    TicketState,
    place,
    sale_state,
    ticket_state,
)
from allocation.service_layer import rebuild
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import Conflict


@dataclass(frozen=True)
class SaleAnswer:
    sale: Sale
    state: SaleState
    advanced: Advanced
    created: bool = False


@dataclass(frozen=True)
class TicketAnswer:
    ticket: str
    state: TicketState
    position: int | None
    sale_pass: str | None = None
    pass_expires_ms: int | None = None
    joined: bool = False  # a join that made the ticket (not a repeat)


def put_sale(cmd: commands.PutSale, services: Services) -> SaleAnswer:
    return services.sales.recorded(lambda: _put_sale(cmd, services))


def _put_sale(cmd: commands.PutSale, services: Services) -> SaleAnswer:
    opens_at = (cmd.opens_at_ms if cmd.opens_at_ms is not None
                else services.sale_queue.now_ms(cmd.namespace, cmd.sale))
    sale = Sale(cmd.namespace, cmd.sale, cmd.skus, opens_at, cmd.admit_factor,
                cmd.pass_ttl_seconds, cmd.max_admitted)
    with services.uow_factory() as uow:
        kept = uow.sales.get(cmd.namespace, cmd.sale)
        if kept is not None:
            return _repeated(services, cmd, sale, kept)
        found = uow.items.many(cmd.namespace, cmd.skus)
        for sku in cmd.skus:
            if sku not in found:
                raise errors.NotFound(f"no item {sku} in {cmd.namespace}", sku=sku)
        gating = uow.sales.gating(cmd.namespace, cmd.skus)
        # A sku gated by this very sale: a request alike made it since the read above.
        created = cmd.sale not in gating.values()
        if created:
            _not_gated(gating)
            try:
                uow.sales.add(sale)
                uow.commit()
            except Conflict:  # another request won the race for the name or a sku
                created = False
    if not created:
        # Answer as if the winner came first: the same sale again is 200, as a repeat is.
        with services.uow_factory() as again:
            kept = again.sales.get(cmd.namespace, cmd.sale)
            if kept is None:
                _not_gated(again.sales.gating(cmd.namespace, cmd.skus))
                raise errors.Unavailable(f"sale {cmd.sale} was contended; retry",
                                         retry_after=1)
        return _repeated(services, cmd, sale, kept)
    services.sale_queue.gate(sale, True)  # first: a sale in Redis always has its gates
    services.sale_queue.put(sale)
    services.sales.known(sale)
    return _answer(services, sale, created=True)


def _repeated(services: Services, cmd: commands.PutSale, sale: Sale, kept: Sale) -> SaleAnswer:
    """A PUT of a sale the record has: 200 with it where the terms are the same (a PUT with no
    ``opens_at`` takes the kept one), else ``AlreadyExists``."""
    same = sale if cmd.opens_at_ms is not None else replace(sale, opens_at_ms=kept.opens_at_ms)
    if not kept.same_terms(same):
        raise errors.AlreadyExists(f"sale {cmd.sale} exists with other terms")
    return _answer(services, kept)


def restore_items(services: Services, namespace: str, skus: Sequence[str]) -> None:
    """Items of an open sale that Redis lost, rebuilt from the record as a read of each would
    (``rebuild.refresh``): the sale's loop calls it, so that the sale admits again without
    anyone reading a gated item. An item the record no longer has is left out."""
    for sku in skus:
        with contextlib.suppress(errors.NotFound):
            rebuild.refresh(commands.Refresh(namespace, sku), services)


def _not_gated(gating: dict[str, str]) -> None:
    for sku, other in gating.items():
        raise errors.SkuGated(f"{sku} is gated by the open sale {other}", sku=sku)


def close_sale(cmd: commands.CloseSale, services: Services) -> SaleAnswer:
    return services.sales.recorded(lambda: _close_sale(cmd, services))


def _close_sale(cmd: commands.CloseSale, services: Services) -> SaleAnswer:
    with services.uow_factory() as uow:
        sale = uow.sales.get(cmd.namespace, cmd.sale)
        if sale is None:
            raise errors.NotFound(f"no sale {cmd.sale} in {cmd.namespace}")
        if not sale.closed:
            uow.sales.close(cmd.namespace, cmd.sale)
            uow.commit()
    closed = replace(sale, closed=True)
    services.sale_queue.put(closed)
    services.sale_queue.gate(closed, False)
    services.sales.known(closed)
    return _answer(services, closed)


def join_queue(cmd: commands.JoinQueue, services: Services) -> TicketAnswer:
    sale = _sale(services, cmd.namespace, cmd.sale)
    if sale.closed:
        raise errors.SaleClosed(f"the sale {cmd.sale} is closed")
    joined = services.sale_queue.join(cmd.namespace, cmd.sale, cmd.buyer)
    if joined.status == "missing":  # Redis lost it: its terms come back from the record
        services.sale_queue.gate(sale, True)
        services.sale_queue.put(sale)
        joined = services.sale_queue.join(cmd.namespace, cmd.sale, cmd.buyer)
    if joined.status == "closed":
        raise errors.SaleClosed(f"the sale {cmd.sale} is closed")
    claim = TicketClaim(cmd.buyer, joined.number, joined.joined_at_ms, joined.incarnation)
    ticket = services.signing.ticket(cmd.namespace, cmd.sale, claim)
    # The ticket's state from the claim it was just signed for: no need to read it back.
    try:
        return _poll(services, sale, claim, ticket, joined=joined.status == "joined")
    except errors.NotFound:  # Redis lost the queue since the join numbered it
        raise errors.Unavailable("the sale's queue was restored meanwhile; join again",
                                 retry_after=1) from None


def sale(services: Services, namespace: str, name: str) -> SaleAnswer:
    return _answer(services, _sale(services, namespace, name))


def poll_ticket(services: Services, namespace: str, name: str, ticket: str) -> TicketAnswer:
    """A ticket's state. A waiting one's answer comes from its signed number and the sale's
    figures this process holds: no round trip of its own."""
    claim = services.signing.read_ticket(namespace, name, ticket)
    if claim is None:
        raise errors.NotFound(f"no such ticket of the sale {name}")
    return _poll(services, _sale(services, namespace, name), claim, ticket)


def _poll(services: Services, sale: Sale, claim: TicketClaim, ticket: str,
          joined: bool = False) -> TicketAnswer:
    namespace, name = sale.namespace, sale.sale
    # Not of the queue's incarnation now (Redis lost the one that numbered it): 404.
    figures = None if sale.closed else services.sales.figures_of(sale, claim.incarnation)
    unadmitted = _unadmitted(ticket, claim.number, sale, figures, joined)
    if unadmitted is not None:
        return unadmitted
    if figures is None:
        raise errors.Unavailable("the sale's queue is being restored; retry")
    where = place(claim.number, figures)
    assert where is not None  # admitted: the pre-queue was drawn
    pass_state, expires = services.sale_queue.pass_at(namespace, name, where,
                                                      incarnation=claim.incarnation)
    view = ticket_state(claim.number, figures, pass_state)
    if view.state != "admitted" or pass_state is None:
        return TicketAnswer(ticket, view.state, view.position, joined=joined)
    sale_pass = services.signing.pass_(namespace, name, PassClaim(
        claim.buyer, claim.number, expires, claim.incarnation))
    return TicketAnswer(ticket, "admitted", 0, sale_pass, expires, joined)


def poll_at_once(services: Services, namespace: str, name: str,
                 ticket: str) -> TicketAnswer | None:
    """``poll_ticket``'s answer where it needs no I/O (a sale known here, its figures at most a
    window old, a ticket not admitted); None where it may need some, or is a refusal: ask
    ``poll_ticket``. Cheap enough for an event loop: a signature check and two look-ups."""
    sale = services.sales.sale(namespace, name)
    if sale is None:
        return None
    try:
        claim = services.signing.read_ticket(namespace, name, ticket)
    except errors.Unavailable:  # no SALE_SECRET: poll_ticket says so
        return None
    if claim is None:
        return None
    advanced = None if sale.closed else services.sales.last_figures(sale)
    figures = None if advanced is None else advanced.figures
    if figures is not None and figures.incarnation != claim.incarnation:
        return None  # another incarnation's ticket, or figures older than it: poll_ticket
    return _unadmitted(ticket, claim.number, sale, figures)


def _unadmitted(ticket: str, number: int, sale: Sale, figures: QueueFigures | None,
                joined: bool = False) -> TicketAnswer | None:
    """A ticket's answer from the figures alone (closed, scheduled, waiting, sold out); None
    where it needs more: its pass's state (admitted), or figures there are none of."""
    if sale.closed:  # nobody waits in a closed sale: nobody is ahead (domain.sale.TicketView)
        return TicketAnswer(ticket, "closed", 0, joined=joined)
    if figures is None:
        return None
    view = ticket_state(number, figures)
    return None if view.state == "admitted" else TicketAnswer(ticket, view.state,
                                                               view.position, joined=joined)


def _sale(services: Services, namespace: str, name: str) -> Sale:
    """A sale from what the process knows, else from the record (then known here)."""
    known = services.sales.sale(namespace, name)
    if known is not None:
        return known
    def read() -> Sale | None:
        with services.uow_factory() as uow:
            return uow.sales.get(namespace, name)

    kept = services.sales.read_sale(namespace, name, read)
    if kept is None:
        raise errors.NotFound(f"no sale {name} in {namespace}")
    return kept


def _answer(services: Services, sale: Sale, created: bool = False) -> SaleAnswer:
    advanced = services.sales.figures(sale, fresh=True)
    figures = advanced.figures
    sold_out = figures is not None and figures.sold_out
    now = advanced.now_ms or int(time.time() * 1000)
    return SaleAnswer(sale, sale_state(sale, now, sold_out), advanced, created)
