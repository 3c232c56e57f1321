"""Flask's side of failures: every one answered as ``{"error", "message"[, "field"]}`` with the
status API.md gives it (the answers themselves are built in ``replies``)."""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from allocation.entrypoints import replies

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type"}


def to_response(reply: replies.Reply) -> Response:
    response = jsonify(reply.body)
    response.status_code = reply.status
    for name, value in reply.headers:
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    def _reply(exc: Exception) -> Response:
        return to_response(replies.for_exception(exc))

    for cls in replies.HANDLERS:
        app.register_error_handler(cls, _reply)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = to_response(replies.error(status, HTTP_CODES.get(status, "http_error"),
                                             exc.description or exc.name))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response
