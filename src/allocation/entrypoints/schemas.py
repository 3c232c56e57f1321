"""Request and message shapes (API.md), validated by pydantic; the OpenAPI document is built from
these same models."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from allocation.domain import errors

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BUYER_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
# Printable ASCII but the comma: a server joins two headers of one name with a comma.
KEY_PATTERN = r"^[\x20-\x2b\x2d-\x7e]{1,128}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Buyer = Annotated[str, StringConstraints(pattern=BUYER_PATTERN)]
NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$"))
KEY = re.compile(KEY_PATTERN.removeprefix("^").removesuffix("$"))

# strict: booleans, floats and numeric strings are not integers here.
Total = Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)]
Delta = Annotated[int, Field(strict=True, ge=-1_000_000_000, le=1_000_000_000)]
Qty = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
LimitPerBuyer = Annotated[int, Field(strict=True, ge=1, le=1_000_000_000)]


# The same rules as plain checks, for entry points that get values rather than JSON bodies (the
# Python facade, the command line). Each returns the value or raises ``errors.InvalidInput``
# naming the field: never pydantic's ValidationError.
_T = TypeVar("_T")
_QTY: TypeAdapter[int] = TypeAdapter(Qty)
_TOTAL: TypeAdapter[int] = TypeAdapter(Total)
_DELTA: TypeAdapter[int] = TypeAdapter(Delta)
_NAME: TypeAdapter[str] = TypeAdapter(Name)
_KEY: TypeAdapter[str] = TypeAdapter(IdempotencyKey)
_BUYER: TypeAdapter[str] = TypeAdapter(Buyer)
_LIMIT: TypeAdapter[int] = TypeAdapter(LimitPerBuyer)


def check_qty(value: object, field: str = "qty") -> int:
    """An integer 1..1_000_000 (not a bool, float or string)."""
    return _check(_QTY, value, field)


def check_total(value: object, field: str = "total") -> int:
    """An integer 0..1_000_000_000 (not a bool, float or string)."""
    return _check(_TOTAL, value, field)


def check_delta(value: object, field: str = "delta") -> int:
    """An integer with |delta| <= 1_000_000_000 (not a bool, float or string)."""
    return _check(_DELTA, value, field)


def check_name(value: object, field: str) -> str:
    """A namespace or sku: a string matching ``NAME_PATTERN``."""
    return _check(_NAME, value, field, "1 to 64 letters, digits, '.', '_' or '-', the first a "
                  "letter or digit")


def check_idempotency_key(value: object, field: str = "idempotency_key") -> str:
    """A string matching ``KEY_PATTERN``."""
    return _check(_KEY, value, field, "1 to 128 printable ASCII characters other than the comma")


def check_buyer(value: object, field: str = "buyer") -> str:
    """A string matching ``BUYER_PATTERN``."""
    return _check(_BUYER, value, field, "1 to 128 letters, digits, '.', '_', ':', '@' or '-'")


def check_limit(value: object, field: str = "limit_per_buyer") -> int:
    """An integer 1..1_000_000_000 (not a bool, float or string)."""
    return _check(_LIMIT, value, field)


def _check(rule: TypeAdapter[_T], value: object, field: str, pattern: str = "") -> _T:
    try:
        return rule.validate_python(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = (f"must be {pattern}" if pattern and first["type"] == "string_pattern_mismatch"
                   else first["msg"])
        shown = repr(value)
        shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
        raise errors.InvalidInput(field, f"{field}: {message}, got {shown}") from None


class RepeatedKey(ValueError):
    """JSON naming one key twice in an object."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class NotUtf8(ValueError):
    """JSON whose bytes are not UTF-8."""

    def __init__(self) -> None:
        super().__init__("not UTF-8 (JSON is sent as UTF-8)")


def strict_json(raw: bytes | str) -> Any:
    """JSON as every entry point reads it (HTTP bodies, command messages): ``json.loads``, but
    an object naming a key twice raises ``RepeatedKey``, and bytes are UTF-8 or ``NotUtf8``
    (``json.loads`` would guess UTF-16 or UTF-32 from the first bytes and apply what another
    reader takes for junk). A reader taking the first of two equal keys (a proxy, an audit log)
    would disagree with one taking the last. A UTF-8 byte order mark is passed over, as
    ``json.loads`` did (RFC 8259 lets a reader ignore it)."""
    return json.loads(json_text(raw), object_pairs_hook=_unique_keys)


def json_text(raw: bytes | str) -> str:
    """JSON's bytes as text: UTF-8 (strictly: a byte that is not is ``NotUtf8``), a leading
    byte order mark passed over."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise NotUtf8() from None
    if text.startswith("\ufeff"):  # json.loads would name Python's codec for it
        raise ValueError("a byte order mark inside the JSON")
    return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return found


class Model(BaseModel):
    """A request's body, path or query, or a command message: a field it does not define is
    refused, never ignored (a misspelt ``ttl_second`` would otherwise quietly get the default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Answer(BaseModel):
    """What the service sends: documented, not validated, and open to fields added later."""

    model_config = ConfigDict(frozen=True)


def _decimal(value: object) -> object:
    """A query's integer as plain decimal digits: no sign, point, underscore or spaces."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError("must be plain decimal digits")
        if len(value) > 20:  # past any bound here; no need to read it whole
            raise ValueError("is too large")
    return value


# A query string's integer (``limit=+5``, ``5.0`` and ``1_0`` are refused, not read as 5 or 10).
QueryInt = Annotated[int, BeforeValidator(_decimal)]


class NoBody(Model):
    """The body of an operation that takes none (confirm, release, close, refresh): ``{}`` at
    most, so a field sent to it is refused by name rather than ignored."""


class ItemPath(Model):
    namespace: Name
    sku: Name


class InitBody(Model):
    total: Total
    limit_per_buyer: LimitPerBuyer | None = None


class LimitBody(Model):
    limit_per_buyer: LimitPerBuyer | None  # required; null lifts the limit


class AdjustBody(Model):
    delta: Delta


def _given(value: object) -> object:
    """An optional field is left out, not sent as null (a null would read as "no buyer")."""
    if value is None:
        raise ValueError("must not be null: leave it out instead")
    return value


# A buyer, or none when the field is left out.
OptionalBuyer = Annotated[Buyer | None, BeforeValidator(_given)]


class QtyBody(Model):
    qty: Qty
    buyer: OptionalBuyer = None


class Line(Model):
    sku: Name
    qty: Qty


MAX_MERGED_QTY = 1_000_000  # a reservation's lines of one sku, added together (API.md)


def _merged_within_cap(lines: list[Line]) -> list[Line]:
    total: dict[str, int] = {}
    for line in lines:
        total[line.sku] = total.get(line.sku, 0) + line.qty
        if total[line.sku] > MAX_MERGED_QTY:
            raise ValueError(f"the lines of sku {line.sku} add up to more than {MAX_MERGED_QTY}")
    return lines


# 1..100 lines; lines of one sku are held as one, so their sum is capped as one qty is.
Lines = Annotated[list[Line], Field(min_length=1, max_length=100),
                  AfterValidator(_merged_within_cap)]


class ReserveBody(Model):
    lines: Lines
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=86_400)] = 600
    buyer: OptionalBuyer = None


class ExtendBody(Model):
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=86_400)]


RESERVATION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class ReservationPath(Model):
    namespace: Name
    reservation_id: Annotated[str, StringConstraints(pattern=RESERVATION_ID_PATTERN)]


class ReservationOut(Answer):
    id: str
    namespace: str
    state: Literal["held", "confirmed", "released", "expired"]
    lines: list[Line]
    buyer: str | None
    created_at: str
    expires_at: str


class ListQuery(Model):
    after: Name | None = None
    limit: Annotated[QueryInt, Field(ge=1, le=1000)] = 100


class LedgerQuery(Model):
    after_seq: Annotated[QueryInt, Field(ge=0, le=2**63 - 1)] = 0  # a seq is a BIGINT
    limit: Annotated[QueryInt, Field(ge=1, le=1000)] = 100


class Item(Answer):
    namespace: str
    sku: str
    total: int
    consumed: int
    held: int
    available: int
    limit_per_buyer: int | None


class ItemPage(Answer):
    items: list[Item]
    next: str | None


class LedgerEntryOut(Answer):
    seq: int
    kind: Literal["init", "adjust", "decrement", "refund", "hold", "confirm", "release",
                  "expire", "extend"]
    qty: int
    total_after: int
    available_after: int
    idempotency_key: str | None
    created_at: str
    reservation_id: str | None
    held_after: int
    # On an ``extend`` entry only: the reservation's new expiry.
    expires_at: str | None = None


class LedgerPage(Answer):
    entries: list[LedgerEntryOut]


class RefreshedCount(Answer):
    items: int


class StatsUnits(Answer):
    sold: int
    refunded: int
    held: int
    released: int
    expired: int


class Stats(Answer):
    """A namespace's sale figures (GET /v1/{ns}/stats), from the metrics /metrics shows."""

    namespace: str
    units: StatsUnits
    holds_ended: dict[str, int]
    refusals: dict[str, int]
    stream_clients: int
    drift_items: int | None


class Error(Answer):
    error: str
    message: str
    field: str | None = None
    available: int | None = None
    remaining: int | None = None
    sku: str | None = None


# Pub/sub command messages: one model per command, told apart by "command".
class InitMessage(Model):
    command: Literal["InitInventory"]
    namespace: Name
    sku: Name
    total: Total
    idempotency_key: IdempotencyKey | None = None


class AdjustMessage(Model):
    command: Literal["AdjustTotal"]
    namespace: Name
    sku: Name
    delta: Delta
    idempotency_key: IdempotencyKey | None = None


class DecrementMessage(Model):
    command: Literal["Decrement"]
    namespace: Name
    sku: Name
    qty: Qty
    idempotency_key: IdempotencyKey
    buyer: OptionalBuyer = None


class RefundMessage(Model):
    command: Literal["Refund"]
    namespace: Name
    sku: Name
    qty: Qty
    idempotency_key: IdempotencyKey
    buyer: OptionalBuyer = None


# Reservation messages: the same rules as the HTTP bodies and paths (ReserveBody,
# ReservationPath).
ReservationId = Annotated[str, StringConstraints(pattern=RESERVATION_ID_PATTERN)]


class ReserveMessage(Model):
    command: Literal["Reserve"]
    namespace: Name
    lines: Lines
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=86_400)] = 600
    buyer: OptionalBuyer = None
    idempotency_key: IdempotencyKey


class ConfirmReservationMessage(Model):
    command: Literal["ConfirmReservation"]
    namespace: Name
    reservation_id: ReservationId


class ReleaseReservationMessage(Model):
    command: Literal["ReleaseReservation"]
    namespace: Name
    reservation_id: ReservationId


# Every command message but the waiting room's (sale_schemas.JoinQueueMessage);
# command_messages tells them all apart by "command".
CommandMessage = (InitMessage | AdjustMessage | DecrementMessage | RefundMessage | ReserveMessage
                  | ConfirmReservationMessage | ReleaseReservationMessage)
