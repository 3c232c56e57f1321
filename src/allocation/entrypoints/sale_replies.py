"""A sale's and a ticket's answers as JSON and as a server-sent event (no web framework: the
routes, the bridge's ticket streams and the command line share them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from allocation.entrypoints import replies
from allocation.service_layer.sales import SaleAnswer, TicketAnswer

if TYPE_CHECKING:
    from allocation.bootstrap import Application


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def sale_body(answer: SaleAnswer) -> dict[str, Any]:
    sale, advanced = answer.sale, answer.advanced
    figures = advanced.figures
    joined, serving = (figures.joined, figures.serving) if figures else (0, 0)
    return {"namespace": sale.namespace, "sale": sale.sale, "skus": list(sale.skus),
            "state": answer.state, "opens_at": _time(sale.opens_at_ms),
            "admit_factor": sale.admit_factor, "pass_ttl_seconds": sale.pass_ttl_seconds,
            "max_admitted": sale.max_admitted, "waiting": max(joined - serving, 0),
            "admitted": figures.outstanding if figures else 0,
            "used": figures.used if figures else 0,
            "expired": figures.expired if figures else 0, "available": advanced.available}


def ticket_body(answer: TicketAnswer) -> dict[str, Any]:
    body: dict[str, Any] = {"ticket": answer.ticket, "state": answer.state,
                            "position": answer.position}
    if answer.sale_pass is not None and answer.pass_expires_ms is not None:
        body["pass"] = answer.sale_pass
        body["pass_expires_at"] = _time(answer.pass_expires_ms)
    return body


def ticket_event(answer: TicketAnswer) -> bytes:
    """A ticket as one server-sent event."""
    reply = replies.Reply(200, ticket_body(answer))
    return b"event: ticket\ndata: " + replies.encode(reply).rstrip(b"\n") + b"\n\n"


def sale_gauges(app: Application,
                namespace: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """The open sales' figures (of ``namespace``, or all) for /metrics and a namespace's
    stats, as this server holds them; ``served``: places admitted so far."""
    gauges: dict[tuple[str, str], dict[str, int]] = {}
    room = app.bus.services.sales
    for sale in room.open_sales():
        if namespace is not None and sale.namespace != namespace:
            continue
        advanced = room.figures(sale)
        figures = advanced.figures
        if figures is None:
            continue
        gauges[(sale.namespace, sale.sale)] = {
            "waiting": max(figures.joined - figures.serving, 0),
            "admitted": figures.outstanding, "passes_used": figures.used,
            "passes_expired": figures.expired, "available": advanced.available,
            "served": figures.serving, "sold_out": int(figures.sold_out)}
    return gauges


def sale_stats(app: Application, namespace: str) -> list[dict[str, Any]]:
    """The namespace's open sales, for its stats (the dashboard's queue panel)."""
    return [{"sale": sale, **figures} for (_, sale), figures in
            sorted(sale_gauges(app, namespace).items())]
