"""What every ``allocation`` command shares: its arguments checked by the rules every entry point
shares (``schemas.check_*``), refusals turned into exit codes, the application it works on and
how an item or a reservation is printed."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import exc as sa_exc

from allocation.adapters.outages import database_down
from allocation.bootstrap import Application
from allocation.domain import errors
from allocation.domain.outcome import Figures
from allocation.entrypoints import replies, schemas
from allocation.service_layer.results import Reservation

F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")


def application() -> Application:
    """The application, built by the factory the ``allocation`` group puts on the context: built
    only by a command that gets this far, so bad arguments connect to nothing."""
    build: Callable[[], Application] = click.get_current_context().find_root().obj
    return build()


def show(figures: Figures, namespace: str, sku: str) -> None:
    click.echo(json.dumps(replies.item_body(namespace, sku, figures)))


def show_reservation(made: Reservation) -> None:
    click.echo(json.dumps(replies.reservation_body(made)))


def checked(namespace: str, sku: str | None = None) -> None:
    """Names by the rules every entry point shares; a bad one is a usage error (exit 2)."""
    try:
        schemas.check_name(namespace, "namespace")
        if sku is not None:
            schemas.check_name(sku, "sku")
    except errors.InvalidInput as exc:
        raise click.UsageError(f"invalid {exc.message}") from None


# A decimal integer as typed: ASCII digits with an optional sign (no "1.5", "1_000", "0x10",
# " 5" or "²"); then the shared rule's range.
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


def integer(text: str) -> int | None:
    return int(text) if _INTEGER.fullmatch(text) else None


class _Checked(click.ParamType[V]):
    """An argument checked by one of the shared rules (``schemas.check_*``)."""

    def __init__(self, field: str, check: Callable[[object, str], V], integer: bool) -> None:
        self.name = field
        self.field, self.check, self.integer = field, check, integer

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> V:
        parsed = integer(value) if self.integer and isinstance(value, str) else value
        if parsed is None:
            self.fail(f"{self.field}: must be a whole number, got {value!r}", param, ctx)
        try:
            return self.check(parsed, self.field)
        except errors.InvalidInput as exc:
            self.fail(exc.message, param, ctx)


def _check_ttl(value: object, field: str = "ttl_seconds") -> int:
    """1..86400 seconds, by the HTTP body's own rule (``ExtendBody``)."""
    try:
        return schemas.ExtendBody.model_validate({"ttl_seconds": value}).ttl_seconds
    except ValidationError as exc:
        raise errors.InvalidInput(field, f"{field}: {exc.errors()[0]['msg']}, got {value!r}"
                                  ) from None


_RESERVATION_ID: TypeAdapter[str] = TypeAdapter(schemas.ReservationId)


def _check_reservation_id(value: object, field: str = "reservation_id") -> str:
    try:
        return _RESERVATION_ID.validate_python(value, strict=True)
    except ValidationError:
        raise errors.InvalidInput(field, f"{field}: must be 1 to 64 letters, digits, '.', '_' "
                                  f"or '-', got {value!r}") from None


class _LineParam(click.ParamType[tuple[str, int]]):
    """A reservation line as typed, ``SKU:QTY``, checked by the shared rules."""

    name = "SKU:QTY"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        sku, colon, qty = str(value).rpartition(":")
        parsed = integer(qty)
        if not colon or parsed is None:
            self.fail(f"a line is SKU:QTY with a whole number QTY, got {value!r}", param, ctx)
        try:
            return schemas.check_name(sku, "sku"), schemas.check_qty(parsed)
        except errors.InvalidInput as exc:
            self.fail(f"{value!r}: {exc.message}", param, ctx)


TOTAL = _Checked("total", schemas.check_total, integer=True)
DELTA = _Checked("delta", schemas.check_delta, integer=True)
QTY = _Checked("qty", schemas.check_qty, integer=True)
KEY = _Checked("idempotency_key", schemas.check_idempotency_key, integer=False)
BUYER = _Checked("buyer", schemas.check_buyer, integer=False)
LIMIT = _Checked("limit_per_buyer", schemas.check_limit, integer=True)
TTL = _Checked("ttl_seconds", _check_ttl, integer=True)
RESERVATION_ID = _Checked("reservation_id", _check_reservation_id, integer=False)
LINE = _LineParam()
MAX_LINES = 100  # as ReserveBody allows


def domain_exit(fn: F) -> F:
    """Turn refusals and outages into messages and exit codes instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.InvalidInput as exc:  # input, not a refusal: a usage error's exit code
            click.echo(f"invalid {exc.message}", err=True)
            sys.exit(2)
        except errors.DomainError as exc:
            click.echo(f"refused: {exc.code}: {exc.message}", err=True)
            sys.exit(1)
        except errors.Unavailable as exc:
            click.echo(f"unavailable: {exc.message}", err=True)
            sys.exit(3)
        except sa_exc.SQLAlchemyError as exc:  # a command on the database itself (token, migrate)
            if database_down(exc):
                click.echo("unavailable: database unavailable", err=True)
                sys.exit(3)
            if schema_missing(exc):
                click.echo("unavailable: database unmigrated: its tables are missing; run "
                           "`allocation migrate`", err=True)
                sys.exit(3)
            raise
    return wrapper  # type: ignore[return-value]


def schema_missing(exc: BaseException) -> bool:
    """Is this a statement on a table the schema lacks (a database never migrated)?"""
    orig = getattr(exc, "orig", None)
    return (getattr(orig, "pgcode", None) == "42P01"  # PostgreSQL's undefined_table
            or (isinstance(exc, sa_exc.OperationalError) and "no such table" in str(orig)))


def log_to_stderr() -> None:
    """A long-running command's log: time, level and message, a line each."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
