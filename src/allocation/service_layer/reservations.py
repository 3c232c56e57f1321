"""Reservations: stock held while a buyer pays, then sold (confirm) or put back on sale (release,
expiry). Each step is one atomic step of the counter over the reservation and all its lines;
every line it ends is a movement of its item, recorded in the outbox like any other and
answered, as any movement, when the durability mode says (``durability.Durability``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from allocation.adapters.counter import Line, Reserved, Reserving, Step
from allocation.adapters.sale_queue import HoldLink
from allocation.domain import commands, errors
from allocation.domain.outcome import Figures, Outcome
from allocation.service_layer import rebuild, sale_passes
from allocation.service_layer.results import Reservation
from allocation.service_layer.services import Services
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

# The kind of movement each step writes for its lines, and the kinds a replay of it may find
# in the ledger (a reservation released after its expiry, or a line ended by its item's expiry,
# has "expire" rows).
KIND_OF_STEP = {"hold": "hold", "confirm": "confirm", "release": "release", "extend": "extend"}
WRITTEN_BY = {"hold": ("hold",), "confirm": ("confirm",), "release": ("release", "expire"),
              "extend": ("extend",)}
STATE_OF_END = {"confirm": "confirmed", "release": "released", "expire": "expired"}


def merged(lines: Sequence[Line]) -> tuple[Line, ...]:
    """Lines of one sku added together, in the order each sku first came."""
    total: dict[str, int] = {}
    for sku, qty in lines:
        total[sku] = total.get(sku, 0) + qty
    return tuple(total.items())


def reserve(cmd: commands.Reserve, services: Services) -> Reservation:
    counter: Reserving = services.counter
    lines = merged(cmd.lines)
    # The key alone names the reservation (and where it lives): whatever the body, one key is
    # one reservation, so another body under it meets this one and is refused.
    rid = counter.reservation_id(cmd.namespace, cmd.idempotency_key)
    # What the key stands for, the body as sent: any other (the same lines in another order
    # included) is another request.
    request = json.dumps([[list(line) for line in cmd.lines], cmd.ttl_seconds, cmd.buyer])
    if (services.durability.mode == "sync"
            and counter.reservation_lines(cmd.namespace, rid) is None):
        # Sync mode promises that what was acknowledged survives Redis: a retry, after Redis
        # lost it, of a reservation the ledger has (even one since ended) is its replay, not
        # a second hold; another request under its key is refused.
        with contextlib.suppress(errors.NotFound):
            _restore(services.uow_factory(), counter, cmd.namespace, rid, request,
                     (lines, cmd.buyer))
    def hold(sale: str = "") -> Reservation:
        result = _step(services, "hold", cmd.namespace, rid, lines,
                       ttl_ms=cmd.ttl_seconds * 1000, buyer=cmd.buyer, fingerprint=request,
                       key=cmd.idempotency_key,
                       open_cap=services.open_reservations_per_buyer if cmd.buyer else 0,
                       sale=sale)
        return _view(rid, cmd.namespace, lines, cmd.buyer, result)

    sale = sale_passes.gating(services, cmd.namespace, (sku for sku, _ in lines))
    if sale is None:  # the common path: one look-up a line
        try:
            return hold()
        except errors.PassRequired as refused:
            # The script knows of a sale this process has not read yet: read it, then below.
            sale = services.sales.gating(cmd.namespace, str(refused.details.get("sku", "")))
            if sale is None:
                raise
    # The hold keeps the pass; its confirm spends it (docs/adr/0034). A refusal of the pass
    # names the first gated line's sku.
    gated = sum(qty for sku, qty in lines if sku in sale.skus)
    first = next((sku for sku, _ in lines if sku in sale.skus), lines[0][0])
    with sale_passes.naming(first), sale_passes.claimed(
            services, sale, cmd.buyer, cmd.sale_pass, gated, cmd.idempotency_key) as claim:
        try:
            made = hold(claim.sale_of)
        except errors.PassRequired:
            if claim.replay:  # a replay of a reservation the counter no longer has
                raise sale_passes.spent(claim) from None
            raise
        if not made.replayed:
            claim.hold = HoldLink(made.id, made.expires_ms)
    return made


def confirm(cmd: commands.ConfirmReservation, services: Services) -> Reservation:
    return _end(services, "confirm", cmd.namespace, cmd.reservation_id)


def release(cmd: commands.ReleaseReservation, services: Services) -> Reservation:
    return _end(services, "release", cmd.namespace, cmd.reservation_id)


def extend(cmd: commands.ExtendReservation, services: Services) -> Reservation:
    return _end(services, "extend", cmd.namespace, cmd.reservation_id, cmd.ttl_seconds * 1000)


def reservation(counter: Reserving, uow: AbstractUnitOfWork, namespace: str,
                reservation_id: str) -> Reservation:
    """The reservation as it stands (a held one past its expiry reads ``expired``)."""
    lines, buyer = _known(lambda: uow, counter, namespace, reservation_id)
    result = counter.reservation_step("get", namespace, reservation_id, lines)
    if result.status == "not_found" and result.sku is None:
        # Redis lost it (this process knew its lines): the ledger has it.
        with contextlib.suppress(errors.NotFound):
            _restore(uow, counter, namespace, reservation_id, "")
            result = counter.reservation_step("get", namespace, reservation_id, lines)
    if result.status != "ok":
        raise errors.NotFound(f"no reservation {reservation_id}")
    return _view(reservation_id, namespace, lines, buyer, result)


def _end(services: Services, step: Step, namespace: str, reservation_id: str,
         ttl_ms: int = 0) -> Reservation:
    lines, buyer = _known(services.uow_factory, services.counter, namespace, reservation_id)
    result = _step(services, step, namespace, reservation_id, lines, ttl_ms=ttl_ms, buyer=buyer)
    view = _view(reservation_id, namespace, lines, buyer, result)
    if step != "extend":
        sale_passes.settled(services, namespace, reservation_id, (sku for sku, _ in lines),
                            view.state, result.figures)
    return view


def _known(units: Callable[[], AbstractUnitOfWork], counter: Reserving, namespace: str,
           rid: str) -> tuple[tuple[Line, ...], str | None]:
    """A reservation's lines and buyer, from the counter or, where Redis lost it, the ledger."""
    found = counter.reservation_lines(namespace, rid)
    if found is None:
        found = _restore(units(), counter, namespace, rid, "")
    return found


def _restore(uow: AbstractUnitOfWork, counter: Reserving, namespace: str, rid: str,
             fingerprint: str, asked: tuple[tuple[Line, ...], str | None] | None = None
             ) -> tuple[tuple[Line, ...], str | None]:
    """Put a reservation the counter lost back from its ledger entries: its lines are its
    holds, its state the end its lines met (held while any has none). ``asked``: the lines and
    buyer of a create under its key, which keeps ``fingerprint`` only where the ledger's
    reservation has them (the ledger keeps no line order: the held lines are its test)."""
    with uow:
        entries = [dataclasses.replace(e) for e in uow.items.reservation_entries(namespace, rid)]
    holds = [e for e in entries if e.kind == "hold"]
    if not holds:
        # Never held, or (async mode) not written yet: nothing to put back.
        raise errors.NotFound(f"no reservation {rid}")
    ended = {e.sku: e.kind for e in entries if e.kind in STATE_OF_END}
    state = (STATE_OF_END[next(iter(ended.values()))]
             if len(ended) == len({h.sku for h in holds}) else "held")
    lines = merged([(h.sku, h.qty) for h in holds])
    first = min(holds, key=lambda h: h.created_at)
    if asked is not None and (sorted(asked[0]), asked[1]) != (sorted(lines), first.buyer):
        fingerprint = "\n"  # no request's: another body under the key is refused
    expires = min((h.expires_at for h in holds if h.expires_at), default=first.created_at)
    # Extended: each extension moved every line's expiry; the latest holds.
    expires = max((e.expires_at for e in entries if e.kind == "extend" and e.expires_at),
                  default=expires)
    counter.restore_reservation(namespace, rid, lines, first.buyer, state,
                                _epoch_ms(first.created_at), _epoch_ms(expires), fingerprint)
    return lines, first.buyer


def _epoch_ms(moment: datetime) -> int:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite: naive UTC
    return int(aware.timestamp() * 1000)


def _step(services: Services, step: Step, namespace: str, rid: str, lines: tuple[Line, ...],
          ttl_ms: int = 0, buyer: str | None = None, fingerprint: str = "",
          key: str | None = None, open_cap: int = 0, sale: str = "") -> Reserved:
    counter: Reserving = services.counter
    result = counter.reservation_step(step, namespace, rid, lines, ttl_ms=ttl_ms, buyer=buyer,
                                      fingerprint=fingerprint, idempotency_key=key,
                                      open_cap=open_cap, sale=sale)
    if result.status == "not_found" and result.sku is None and step != "hold":
        # Redis lost the reservation (this process knew its lines): the ledger has it.
        _restore(services.uow_factory(), counter, namespace, rid, fingerprint)
        result = counter.reservation_step(step, namespace, rid, lines, ttl_ms=ttl_ms,
                                          buyer=buyer, fingerprint=fingerprint,
                                          idempotency_key=key, open_cap=open_cap, sale=sale)
    rebuilt: set[str] = set()
    while result.status == "not_found" and result.sku is not None and result.sku not in rebuilt:
        # Redis lost the item (or never had it): rebuild it from the database, under its
        # lock (NotFound where the database has no such item either), and try again; a cart
        # may meet several such items, one at a time.
        try:
            rebuild.rebuild_item(services, namespace, result.sku)
        except errors.NotFound:
            raise errors.NotFound(f"no item {namespace}/{result.sku}", sku=result.sku) from None
        rebuilt.add(result.sku)
        result = counter.reservation_step(step, namespace, rid, lines, ttl_ms=ttl_ms,
                                          buyer=buyer, fingerprint=fingerprint,
                                          idempotency_key=key, open_cap=open_cap, sale=sale)
    if result.status == "lost":
        # Redis lost the reservation and its items came back with their holds (a rebuild from
        # the ledger): put it back as the ledger has it, and this request is a replay.
        _restore(services.uow_factory(), counter, namespace, rid, fingerprint,
                 (lines, buyer) if step == "hold" else None)
        result = counter.reservation_step(step, namespace, rid, lines, ttl_ms=ttl_ms,
                                          buyer=buyer, fingerprint=fingerprint,
                                          idempotency_key=key, open_cap=open_cap, sale=sale)
    if result.status == "fenced":
        raise errors.Unavailable(f"an item of reservation {rid} is being rebuilt; retry",
                                 retry_after=1)
    if result.status in ("reservation_pending", "reservation_confirming"):
        # A cart across cluster slots another request is taking through its steps.
        raise errors.Unavailable(f"reservation {rid} is being worked on; retry", retry_after=1)
    if result.status != "ok":
        refusal = _refusal(result, rid)
        refusal.replayed = result.replayed and result.status != "idempotency_key_reused"
        raise refusal
    if step in KIND_OF_STEP:
        if not result.replayed:
            _settle(services, namespace, rid, lines, result, KIND_OF_STEP[step], key)
        elif services.durability.mode == "sync" and not all(
                _in_ledger(services.uow_factory, namespace, sku, rid, WRITTEN_BY[step])
                for sku, _ in lines):
            # The first answer may have been "unknown": a replay is acknowledged once written.
            raise errors.Unavailable(f"reservation {rid} is not in the ledger yet; repeat the "
                                     "request", retry_after=1)
    return result


def _settle(services: Services, namespace: str, rid: str, lines: tuple[Line, ...],
            result: Reserved, kind: str, key: str | None) -> None:
    """Answer when the durability mode says, and publish the lines' events."""
    units = services.uow_factory
    for (sku, qty), figures in zip(lines, result.figures, strict=True):
        in_ledger = (functools.partial(_extended, units, namespace, sku, rid, result.expires_ms)
                     if kind == "extend"
                     else functools.partial(_in_ledger, units, namespace, sku, rid, (kind,)))
        services.durability.settle(namespace, sku, figures, in_ledger)
        if services.movement_events is not None:
            services.movement_events.held(kind, namespace, sku, qty, rid, key, figures)


def _in_ledger(units: Callable[[], AbstractUnitOfWork], namespace: str, sku: str, rid: str,
               kinds: tuple[str, ...]) -> bool:
    with units() as uow:
        return any(uow.items.reservation_entry(namespace, sku, rid, kind) is not None
                   for kind in kinds)


def _extended(units: Callable[[], AbstractUnitOfWork], namespace: str, sku: str, rid: str,
              expires_ms: int) -> bool:
    """Whether the ledger has this extension (a reservation may be extended many times)."""
    with units() as uow:
        return any(e.sku == sku and e.kind == "extend" and e.expires_at is not None
                   and _epoch_ms(e.expires_at) == expires_ms
                   for e in uow.items.reservation_entries(namespace, rid))


def _refusal(result: Reserved, rid: str) -> errors.DomainError:
    sku = {"sku": result.sku} if result.sku else {}
    if result.status == "not_found":
        return errors.NotFound(f"no item {result.sku}" if result.sku else
                               f"no reservation {rid}", **sku)
    if result.status == "insufficient_stock":
        return errors.InsufficientStock(f"{result.sku}: only {result.detail} available",
                                        available=result.detail or 0, **sku)
    if result.status == "limit_exceeded":
        return errors.LimitExceeded(f"{result.sku}: over the limit per buyer; "
                                    f"{result.detail} more may be taken",
                                    remaining=result.detail or 0, **sku)
    if result.status == "pass_required":
        return errors.PassRequired(f"{result.sku}: a sale gates it: send the buyer's Sale-Pass",
                                   **sku)
    if result.status == "too_many_open_reservations":
        refusal = errors.TooManyOpenReservations(
            f"the buyer holds {result.detail} open reservations, as many as allowed: confirm or "
            "release one first", limit=result.detail or 0)
        if result.expires_ms > result.created_ms > 0:  # the earliest of them ends then
            refusal.retry_after = -(-(result.expires_ms - result.created_ms) // 1000)
        return refusal
    if result.status == "buyer_required":
        return errors.BuyerRequired(f"{result.sku} has a limit per buyer: name the buyer",
                                    **sku)
    return Outcome(result.status, Figures(0, 0)).error()


# A cart across cluster slots between its steps reads as held: it is not ended.
STATE_SHOWN = {"pending": "held", "confirming": "held"}


def _view(rid: str, namespace: str, lines: tuple[Line, ...], buyer: str | None,
          result: Reserved) -> Reservation:
    return Reservation(rid, namespace, STATE_SHOWN.get(result.state, result.state), lines,
                       buyer, result.created_ms, result.expires_ms, result.replayed)
