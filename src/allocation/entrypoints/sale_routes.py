"""The waiting room's routes (API.md, "Waiting room"): decode, hand the command or the query to
the application, answer. A ticket's poll needs no token: the ticket is the credential."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Response, request

from allocation.domain import commands
from allocation.entrypoints import replies
from allocation.entrypoints.http_errors import to_response
from allocation.entrypoints.movement_requests import json_object, validate
from allocation.entrypoints.routes import no_request_body, raw_body
from allocation.entrypoints.sale_replies import sale_body, ticket_body, ticket_event
from allocation.entrypoints.sale_requests import answer_join
from allocation.entrypoints.sale_schemas import SaleBody, SalePath, TicketPath
from allocation.service_layer import sales
from allocation.service_layer.sales import SaleAnswer, TicketAnswer

if TYPE_CHECKING:
    from allocation.bootstrap import Application


class SaleRoutes:
    def __init__(self, app: Application) -> None:
        self.app = app

    def put_sale(self, namespace: str, sale: str) -> Response:
        path = validate(SalePath, {"namespace": namespace, "sale": sale})
        answer: SaleAnswer = self.app.bus.handle(
            validate(SaleBody, _json()).command(path.namespace, path.sale))
        return to_response(replies.Reply(201 if answer.created else 200, sale_body(answer)))

    def get_sale(self, namespace: str, sale: str) -> Response:
        path = validate(SalePath, {"namespace": namespace, "sale": sale})
        answer = sales.sale(self.app.bus.services, path.namespace, path.sale)
        return to_response(replies.Reply(200, sale_body(answer)))

    def close_sale(self, namespace: str, sale: str) -> Response:
        path = validate(SalePath, {"namespace": namespace, "sale": sale})
        no_request_body()
        answer: SaleAnswer = self.app.bus.handle(commands.CloseSale(path.namespace, path.sale))
        return to_response(replies.Reply(200, sale_body(answer)))

    def join_queue(self, namespace: str, sale: str) -> Response:
        return to_response(answer_join(self.app, namespace, sale, request.content_type or "",
                                       request.content_length,
                                       raw_body))

    def poll_ticket(self, namespace: str, sale: str, ticket: str) -> Response:
        return to_response(replies.Reply(200, ticket_body(self._ticket(namespace, sale,
                                                                        ticket))))

    def ticket_stream(self, namespace: str, sale: str, ticket: str) -> Response:
        """The ticket's first event, unless the client has it (``Last-Event-ID``); an
        EventSource comes back for the next."""
        data = ticket_event(self._ticket(namespace, sale, ticket),
                            request.headers.get("Last-Event-ID"))
        return Response(data, content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _ticket(self, namespace: str, sale: str, ticket: str) -> TicketAnswer:
        path = validate(TicketPath, {"namespace": namespace, "sale": sale, "ticket": ticket})
        return sales.poll_ticket(self.app.bus.services, path.namespace, path.sale,
                                 path.ticket)


def _json() -> Any:
    return json_object(request.content_type or "", request.content_length, raw_body())
