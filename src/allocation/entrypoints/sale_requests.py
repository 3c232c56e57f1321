"""A waiting room's two busiest requests, from their parts to their answer with no web framework
in sight (as ``movement_requests`` for a movement): a join, which Flask's route and the fast
lane both answer with ``answer_join``, and a ticket's poll where it needs no I/O, which the RSGI
bridge answers on its event loop (``poll_at_once``) and leaves to Flask's route otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from allocation.domain import commands
from allocation.entrypoints import replies, schemas
from allocation.entrypoints.movement_requests import json_object, validate
from allocation.entrypoints.sale_replies import ticket_body
from allocation.entrypoints.sale_schemas import JoinBody, SalePath
from allocation.service_layer import sales

if TYPE_CHECKING:
    from allocation.bootstrap import Application
    from allocation.service_layer.sales import TicketAnswer


def answer_join(app: Application, namespace: str, sale: str, content_type: str,
                content_length: int | None, body: Callable[[], bytes]) -> replies.Reply:
    """``body`` is read once the path's names are found good (a bad name is 400 whatever the
    body: Flask's 413 for an oversized one comes from reading it)."""
    try:
        path = validate(SalePath, {"namespace": namespace, "sale": sale})
        buyer = validate(JoinBody, json_object(content_type, content_length, body())).buyer
        answer: TicketAnswer = app.bus.handle(commands.JoinQueue(path.namespace, path.sale,
                                                                 buyer))
    except Exception as exc:  # noqa: BLE001 - every failure has its answer (replies)
        return replies.for_exception(exc)
    return replies.Reply(201 if answer.joined else 200, ticket_body(answer))


def poll_at_once(app: Application, namespace: str, sale: str,
                 ticket: str) -> replies.Reply | None:
    """A ticket's poll answered from what this process holds (``sales.poll_at_once``), or
    None: Flask's route answers it (a name it refuses, an admitted ticket, anything needing
    I/O or a refusal). Never raises: it runs on the event loop."""
    if schemas.NAME.fullmatch(namespace) is None or schemas.NAME.fullmatch(sale) is None:
        return None
    try:
        answer = sales.poll_at_once(app.bus.services, namespace, sale, ticket)
    except Exception:  # noqa: BLE001 - the route answers it, as it would any failure
        return None
    return None if answer is None else replies.Reply(200, ticket_body(answer))
