"""Request and message shapes (API.md), validated by pydantic; the OpenAPI document is built from
these same models."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KEY_PATTERN = r"^[\x20-\x7e]{1,128}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
IdempotencyKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$"))
KEY = re.compile(KEY_PATTERN.removeprefix("^").removesuffix("$"))


def is_idempotency_key(value: str) -> bool:
    return KEY.fullmatch(value) is not None
# strict: booleans, floats and numeric strings are not integers here.
Total = Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)]
Delta = Annotated[int, Field(strict=True, ge=-1_000_000_000, le=1_000_000_000)]
Qty = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ItemPath(Model):
    namespace: Name
    sku: Name


class InitBody(Model):
    total: Total


class AdjustBody(Model):
    delta: Delta


class QtyBody(Model):
    qty: Qty


class ListQuery(Model):
    after: Name | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class LedgerQuery(Model):
    after_seq: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class Item(Model):
    namespace: str
    sku: str
    total: int
    consumed: int
    available: int


class ItemPage(Model):
    items: list[Item]
    next: str | None


class LedgerEntryOut(Model):
    seq: int
    kind: Literal["init", "adjust", "decrement", "refund"]
    qty: int
    total_after: int
    available_after: int
    idempotency_key: str | None
    created_at: str


class LedgerPage(Model):
    entries: list[LedgerEntryOut]


class RefreshedCount(Model):
    items: int


class Error(Model):
    error: str
    message: str
    field: str | None = None
    available: int | None = None


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


class RefundMessage(Model):
    command: Literal["Refund"]
    namespace: Name
    sku: Name
    qty: Qty
    idempotency_key: IdempotencyKey


CommandMessage = Annotated[InitMessage | AdjustMessage | DecrementMessage | RefundMessage,
                           Field(discriminator="command")]


class CommandEnvelope(RootModel[CommandMessage]):
    """Any one command message, told apart by its ``command`` field."""
