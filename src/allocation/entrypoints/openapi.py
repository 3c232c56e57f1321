"""The OpenAPI 3 document, built from the pydantic models the routes validate with."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import swagger_ui_bundle
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from allocation.entrypoints import route_table, sale_schemas, schemas

REF = "#/components/schemas/{model}"
_MODELS: list[type[BaseModel]] = [
    schemas.InitBody, schemas.LimitBody, schemas.AdjustBody, schemas.QtyBody, schemas.Item,
    schemas.ItemPage,
    schemas.LedgerPage, schemas.RefreshedCount, schemas.Stats, schemas.Error,
    schemas.ReserveBody, schemas.ExtendBody, schemas.ReservationOut, sale_schemas.SaleBody,
    sale_schemas.SaleOut, sale_schemas.JoinBody, sale_schemas.TicketOut]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _name(name: str, where: str = "path") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path",
            "schema": {"type": "string", "pattern": schemas.NAME_PATTERN}}


def _reservation_id() -> dict[str, Any]:
    return {"name": "reservation_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": schemas.RESERVATION_ID_PATTERN}}


def _int_query(name: str, minimum: int, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _ticket() -> dict[str, Any]:
    return {"name": "ticket", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": sale_schemas.TICKET_PATTERN}}


def _sale_pass() -> dict[str, Any]:
    return {"name": "Sale-Pass", "in": "header", "required": False,
            "description": "the buyer's pass, where a sale gates the sku (403 `pass_required` "
                           "without it, `pass_invalid` with a bad one)",
            "schema": {"type": "string", "maxLength": 512}}


def _key(required: bool) -> dict[str, Any]:
    return {"name": "Idempotency-Key", "in": "header", "required": required,
            "schema": {"type": "string", "pattern": schemas.KEY_PATTERN,
                       "minLength": 1, "maxLength": 128}}


ERRORS = {
    "400": _json(schemas.Error, "invalid input; `field` names it"),
    "401": _json(schemas.Error, "no token, or an unknown or revoked one (`WWW-Authenticate: "
                                "Bearer`)"),
    "403": _json(schemas.Error, "the token's namespace or role does not allow this; for a "
                                "decrement or a hold of a sku a sale gates, `pass_required` "
                                "or `pass_invalid` (the `Sale-Pass` header)"),
    "503": _json(schemas.Error, "Redis or the database is unavailable, or the item is being "
                                "rebuilt; see Retry-After. For a mutation: outcome unknown, "
                                "repeat it with the same Idempotency-Key"),
}


def _op(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]] | None = None,
        body: type[BaseModel] | None = None) -> dict[str, Any]:
    # An operation's own description of a shared status (a 400 it names) stands.
    operation: dict[str, Any] = {"summary": summary, "parameters": parameters or [],
                                 "responses": {**responses, **{
                                     k: v for k, v in ERRORS.items() if k not in responses}},
                                 "security": [{"bearer": []}]}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(body)}}}
        operation["responses"]["413"] = _json(schemas.Error, "body over 64 KiB")
        operation["responses"]["415"] = _json(schemas.Error, "body is not JSON")
        operation["responses"]["408"] = _json(schemas.Error, "the body did not arrive in time")
    return operation


def _movement(summary: str, body: type[BaseModel], key_required: bool,
              refusal: str) -> dict[str, Any]:
    return _op(summary, {
        "200": _json(schemas.Item, "the item after the movement (or the replayed first "
                                   "response, with `Idempotent-Replayed: true`)"),
        "404": _json(schemas.Error, "unknown item"),
        "409": _json(schemas.Error, refusal),
        "422": _json(schemas.Error, "idempotency key reused with another body"),
    }, [_name("namespace"), _name("sku"), _key(key_required), _sale_pass()], body)


def _reservation_step(summary: str, refusals: str,
                      body: type[BaseModel] | None = None) -> dict[str, Any]:
    return _op(summary, {
        "200": _json(schemas.ReservationOut, "the reservation after the step"),
        "404": _json(schemas.Error, "unknown reservation"),
        "409": _json(schemas.Error, refusals)},
        [_name("namespace"), _reservation_id()], body)


def _paths(operations: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The document's paths, in the route table's order: each route that has an operation here
    (named as in the table), with the query parameters the table gives it; a public route's
    asks for no token."""
    paths: dict[str, dict[str, Any]] = {}
    for route in route_table.ROUTES:
        operation = operations.pop(route.name, None)
        if operation is not None:
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            if query != list(route.query):
                raise ValueError(f"{route.name}: the table's query is {list(route.query)}, "
                                 f"the document's {query}")
            if route.access == "public":
                operation.pop("security", None)
            paths.setdefault(route_table.openapi_path(route.path), {})[
                route.method.lower()] = operation
    if operations:
        raise ValueError(f"operations of no route: {sorted(operations)}")
    return paths


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    _, definitions = models_json_schema([(m, "validation") for m in _MODELS],
                                        ref_template=REF)
    item = [_name("namespace"), _name("sku")]
    sale = [_name("namespace"), _name("sale")]
    return {
        "openapi": "3.0.3",
        "info": {"title": "allocation: flash-sale inventory", "version": "1"},
        "paths": _paths({
            "init_item": _op("Initialise an item's stock", {
                "201": _json(schemas.Item, "created"),
                "200": _json(schemas.Item, "exists with the same total and limit"),
                "409": _json(schemas.Error, "already_exists with another total or limit")},
                item, schemas.InitBody),
            "set_limit": _op("Set or lift (null) the limit per buyer", {
                "200": _json(schemas.Item, "the item with its new limit"),
                "404": _json(schemas.Error, "unknown item")}, item, schemas.LimitBody),
            "get_item": _op("Read an item's stock", {
                "200": _json(schemas.Item, "the item"),
                "404": _json(schemas.Error, "unknown item")}, item),
            "list_items": _op("List a namespace's items in SKU order", {
                "200": _json(schemas.ItemPage, "a page; `next` continues it")},
                [_name("namespace"), _name("after", "query"),
                 _int_query("limit", 1, 1000)]),
            "adjust": _movement("Adjust the total", schemas.AdjustBody, False,
                                "below_consumed; total_exceeds_maximum (past 1000000000), "
                                "with `maximum`"),
            "decrement": _movement("Sell (decrement available); 400 `buyer_required` where the "
                                   "item has a limit per buyer and no `buyer` is named",
                                   schemas.QtyBody, True,
                                   "insufficient_stock, with `available`; limit_exceeded, with "
                                   "`remaining`"),
            "refund": _movement("Refund (return consumed stock; naming the buyer gives their "
                                "allowance back)", schemas.QtyBody, True,
                                "refund_exceeds_consumed"),
            "reserve": _op("Hold stock for a buyer while they pay: every line or none "
                           "(lines of one sku are added together)", {
                "201": _json(schemas.ReservationOut, "held (or the first answer replayed, "
                                                     "with `Idempotent-Replayed: true`)"),
                "400": _json(schemas.Error, "invalid input, `field` naming it (`lines` "
                                            "where one sku's lines add up past 1000000); or "
                                            "`buyer_required`, with the `sku` of a line "
                                            "whose item has a limit per buyer"),
                "404": _json(schemas.Error, "unknown item; `sku` names it"),
                "409": _json(schemas.Error, "insufficient_stock, with `available`; "
                                            "limit_exceeded, with `remaining`; each with "
                                            "the `sku` of a line that failed"),
                "422": _json(schemas.Error, "idempotency key reused with another body "
                                            "(any other: the key names one reservation)"),
                "429": _json(schemas.Error, "too_many_open_reservations, with `limit`: the "
                                            "buyer or the token holds as many as allowed "
                                            "(not remembered under the key; `Retry-After`)"),
            }, [_name("namespace"), _key(True), _sale_pass()], schemas.ReserveBody),
            "get_reservation": _op("Read a reservation (a held one past its expiry reads "
                                   "`expired`)", {
                "200": _json(schemas.ReservationOut, "the reservation"),
                "404": _json(schemas.Error, "unknown reservation")},
                [_name("namespace"), _reservation_id()]),
            "confirm": _reservation_step("Sell a reservation's held units (again: the same "
                                         "answer)",
                                         "reservation_expired, reservation_released"),
            "release": _reservation_step("Put a reservation's held units back on sale "
                                         "(again: the same answer; state `expired` if it "
                                         "had)", "reservation_confirmed"),
            "extend": _reservation_step("Move a held reservation's expiry to `ttl_seconds` "
                                        "from now (at most 86400 s from its creation); "
                                        "each line's item gets an `extend` ledger entry",
                                        "reservation_expired, reservation_released, "
                                        "reservation_confirmed, "
                                        "reservation_lifetime_exceeded", schemas.ExtendBody),
            "stream": _op("A live stream of the item's figures (server-sent events: the first "
                          "at once, then each change at most once a second, selling out or "
                          "back at once; `Last-Event-ID` resumes; a comment every 15 s)", {
                              "200": {"description": "`text/event-stream` of `event: stock`, "
                                                     "`id:` the item's seq, `data:` the item",
                                      "content": {"text/event-stream": {}}},
                              "404": _json(schemas.Error, "unknown item")}, item),
            "ledger": _op("An item's ledger in seq order", {
                "200": _json(schemas.LedgerPage, "entries after `after_seq`"),
                "404": _json(schemas.Error, "unknown item")},
                [*item, _int_query("after_seq", 0, 2**63 - 1),
                 _int_query("limit", 1, 1000)]),
            "refresh_item": _op("Rebuild an item's counter from the database", {
                "200": _json(schemas.Item, "the rebuilt item"),
                "404": _json(schemas.Error, "unknown item")}, item),
            "refresh_namespace": _op("Rebuild every counter of a namespace", {
                "200": _json(schemas.RefreshedCount, "how many items were rebuilt")},
                [_name("namespace")]),
            "stats": _op("The namespace's sale figures: units sold, refunded, held, released "
                         "and expired, holds ended by how, refusals by reason, stream "
                         "clients (the metrics /metrics has, of this namespace alone)", {
                             "200": _json(schemas.Stats, "the figures")},
                         [_name("namespace")]),
            "put_sale": _op("Define a sale gating skus of the namespace", {
                "201": _json(sale_schemas.SaleOut, "created"),
                "200": _json(sale_schemas.SaleOut, "exists with the same terms"),
                "404": _json(schemas.Error, "unknown item; `sku` names it"),
                "409": _json(schemas.Error, "already_exists with other terms; sku_gated, "
                                            "`sku` in another open sale")},
                sale, sale_schemas.SaleBody),
            "get_sale": _op("Read a sale and its live figures", {
                "200": _json(sale_schemas.SaleOut, "the sale"),
                "404": _json(schemas.Error, "unknown sale")}, sale),
            "close_sale": _op("Close a sale: its skus are no longer gated", {
                "200": _json(sale_schemas.SaleOut, "the sale, state `closed`"),
                "404": _json(schemas.Error, "unknown sale")}, sale),
            "join_queue": _op("Join a sale's queue for a buyer (one ticket per buyer)", {
                "201": _json(sale_schemas.TicketOut, "joined"),
                "200": _json(sale_schemas.TicketOut, "the buyer's ticket, joined before"),
                "404": _json(schemas.Error, "unknown sale"),
                "409": _json(schemas.Error, "sale_closed")}, sale, sale_schemas.JoinBody),
            "poll_ticket": _op("A ticket's state; `pass` once admitted (no token: the ticket "
                               "is the credential)", {
                "200": _json(sale_schemas.TicketOut, "the ticket"),
                "404": _json(schemas.Error, "unknown sale, or not a ticket of it")},
                [*sale, _ticket()]),
            "ticket_stream": _op("A ticket's state as server-sent events (`event: ticket`)",
                                 {"200": {"description": "`text/event-stream` of the ticket",
                                          "content": {"text/event-stream": {}}},
                                  "404": _json(schemas.Error, "unknown sale, or not a "
                                                              "ticket of it")},
                                 [*sale, _ticket()]),
            "healthz": {"summary": "The process is up", "responses": {
                "200": {"description": "`{\"status\": \"ok\"}`"}}},
            "readyz": {"summary": "The database and Redis answer, and every worker of "
                                  "the server has started", "responses": {
                "200": {"description": "`{\"database\": \"ok\", \"redis\": \"ok\"}`"},
                "503": {"description": "the failing part is named"}}},
            "metrics": {"summary": "Prometheus text format; with AUTH=required, a "
                                   "token of namespace `*` (any role)",
                        "security": [{"bearer": []}], "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {}}},
                "401": _json(schemas.Error, "no token, or an unknown or revoked one"),
                "403": _json(schemas.Error, "a token of one namespace")}},
            "openapi_json": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3"}}},
            "docs": {"summary": "This document in a viewer (Swagger UI, served from "
                                "the package: no CDN)", "responses": {
                "200": {"description": "HTML", "content": {"text/html": {}}}}},
        }),
        "components": {"schemas": definitions.get("$defs", {}),
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer",
                           "description": "`allocation token create NAMESPACE --role "
                                          "read|sell|admin` makes one"}}},
    }


# Swagger UI's files come from the swagger-ui-bundle package, served by /docs/<file>: the
# page works offline and runs no third party's latest code.
DOCS_ASSETS = {"swagger-ui.css": "text/css",
               "swagger-ui-bundle.js": "application/javascript",
               "favicon-32x32.png": "image/png"}
# The page's own script is a file too, so that the policy below can forbid inline scripts.
DOCS_INIT, DOCS_INIT_JS = "docs-init.js", b"""\
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
                             persistAuthorization: false});
"""
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>allocation API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/docs-init.js"></script>
</body></html>
"""
# The viewer takes a bearer token to try requests: it runs only its own files, talks only to
# its origin, and no other site may frame it (clickjacking). Swagger UI sets inline styles and
# draws its icons from data: URLs.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def docs_asset(name: str) -> tuple[bytes, str] | None:
    """A file of the viewer, and its media type; None for any other name."""
    if name == DOCS_INIT:
        return DOCS_INIT_JS, "application/javascript"
    media_type = DOCS_ASSETS.get(name)
    if media_type is None:
        return None
    return (swagger_ui_bundle.swagger_ui_path / name).read_bytes(), media_type
