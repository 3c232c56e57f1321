"""A sale's requests and answers (API.md, "Waiting room"), validated by pydantic as the rest
(``schemas``); the OpenAPI document is built from them too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from allocation.domain import commands
from allocation.entrypoints.schemas import Answer, Buyer, Model, Name

# URL-safe base64 and the signature's dot (adapters/sale_signing.py), at most 512 characters.
TICKET_PATTERN = r"^[A-Za-z0-9_.-]{1,512}$"


def _text_time(value: object) -> object:
    """A time is ISO 8601 text with an offset: neither a number nor digits as text is read as
    seconds since 1970 (pydantic's own parsing would read "1796684268" so)."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time with an offset, as text")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 time with an offset, as "
                         "2027-01-01T00:00:00+00:00") from None


def _in_utc(value: datetime) -> datetime:
    """The time in UTC, as it is kept: one a datetime cannot hold once there (year 10000, or
    0) is refused here rather than failing where it is stored."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be a time between years 1 and 9999 once in UTC") from None


def _number(value: object) -> object:
    """An integer or a decimal number, never a bool or text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


class SalePath(Model):
    namespace: Name
    sale: Name


class TicketPath(Model):
    namespace: Name
    sale: Name
    ticket: str  # anything not a ticket of the sale is its 404 (sale_signing reads it)


class SaleBody(Model):
    skus: Annotated[list[Name], Field(min_length=1, max_length=100)]
    opens_at: Annotated[AwareDatetime, BeforeValidator(_text_time),
                        AfterValidator(_in_utc)] | None = None
    admit_factor: Annotated[float, BeforeValidator(_number), Field(ge=1, le=10)] = 2.0
    pass_ttl_seconds: Annotated[int, Field(strict=True, ge=30, le=3600)] = 300
    max_admitted: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] | None = None

    def command(self, namespace: str, sale: str) -> commands.PutSale:
        """The sale these terms ask for (HTTP's PUT and ``allocation sale create`` alike)."""
        opens_at = None if self.opens_at is None else int(self.opens_at.timestamp() * 1000)
        return commands.PutSale(namespace, sale, tuple(self.skus), opens_at, self.admit_factor,
                                self.pass_ttl_seconds, self.max_admitted)


class JoinBody(Model):
    buyer: Buyer


class JoinQueueMessage(Model):
    """``JoinQueue`` on the commands channel (API.md, "Waiting room"): answered by
    ``QueueJoined`` with the buyer's ticket."""

    command: Literal["JoinQueue"]
    namespace: Name
    sale: Name
    buyer: Buyer


class SaleOut(Answer):
    namespace: str
    sale: str
    skus: list[str]
    state: Literal["scheduled", "open", "sold_out", "closed"]
    opens_at: datetime
    admit_factor: float
    pass_ttl_seconds: int
    max_admitted: int | None
    waiting: int
    admitted: int
    used: int
    expired: int
    available: int


class TicketOut(Answer):
    ticket: str
    state: Literal["scheduled", "waiting", "admitted", "used", "expired", "sold_out",
                   "closed"]
    position: int | None
    pass_: str | None = Field(default=None, alias="pass")
    pass_expires_at: datetime | None = None
