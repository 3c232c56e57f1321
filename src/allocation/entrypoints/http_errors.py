"""Every failure as ``{"error", "message"[, "field"]}`` with the status API.md gives it."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from allocation.domain import errors

logger = logging.getLogger(__name__)

STATUS_OF_CODE = {
    "not_found": 404,
    "already_exists": 409,
    "insufficient_stock": 409,
    "below_consumed": 409,
    "refund_exceeds_consumed": 409,
    "invalid_quantity": 400,
    "idempotency_key_reused": 422,
}

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type"}


class BadRequest(Exception):
    """Invalid input: 400 (or ``status``), naming the field when there is one."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field, status

    @classmethod
    def from_validation(cls, exc: ValidationError, fields: dict[str, str] | None = None
                        ) -> BadRequest:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        if field and fields:
            field = fields.get(field, field)
        message = first["msg"]
        if first["type"] == "missing":
            message = "is required"
        return cls("invalid_field", f"{field}: {message}" if field else message, field)


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    body = {"error": code, "message": message, **{k: v for k, v in extra.items()
                                                  if v is not None}}
    response = jsonify(body)
    response.status_code = status
    return response


def domain_error_response(exc: errors.DomainError) -> Response:
    return error_response(STATUS_OF_CODE.get(exc.code, 409), exc.code, exc.message,
                          **exc.details)


def unavailable_response(message: str, retry_after: int = 1) -> Response:
    response = error_response(503, "unavailable", message)
    response.headers["Retry-After"] = str(retry_after)
    return response


def register(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest) -> Response:
        return error_response(exc.status, exc.code, exc.message, field=exc.field)

    @app.errorhandler(errors.DomainError)
    def _domain(exc: errors.DomainError) -> Response:
        return domain_error_response(exc)

    @app.errorhandler(errors.Unavailable)
    def _unavailable(exc: errors.Unavailable) -> Response:
        logger.warning("unavailable: %s", exc.message)
        return unavailable_response(exc.message, exc.retry_after)

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _dependency_down(exc: Exception) -> Response:
        logger.warning("dependency unavailable: %s", exc)
        return unavailable_response(f"a dependency is unavailable: {type(exc).__name__}")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(status, HTTP_CODES.get(status, "http_error"),
                                  exc.description or exc.name)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unexpected error")
        return error_response(500, "internal_error", "unexpected error; it has been logged")
