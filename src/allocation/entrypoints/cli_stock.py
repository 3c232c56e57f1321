"""The commands on an item's stock: set it up (``init``, ``limit``, ``import``), move it
(``adjust``, ``decrement``, ``refund``), hold it (``reserve``, ``confirm``, ``release``) and
read it (``get``, ``ledger``)."""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from collections.abc import Callable
from typing import BinaryIO

import click

from allocation import views
from allocation.domain import commands, errors
from allocation.entrypoints import replies, schemas
from allocation.entrypoints.cli_params import (
    BUYER,
    DELTA,
    KEY,
    LIMIT,
    LINE,
    MAX_LINES,
    QTY,
    RESERVATION_ID,
    TOTAL,
    TTL,
    application,
    checked,
    domain_exit,
    integer,
    show,
    show_reservation,
)


@click.command()
@click.argument("namespace")
@click.argument("sku")
@click.argument("total", type=TOTAL)
@click.option("--limit-per-buyer", type=LIMIT, help="units each buyer may take at most")
@domain_exit
def init(namespace: str, sku: str, total: int, limit_per_buyer: int | None) -> None:
    """Set an item's stock."""
    checked(namespace, sku)
    show(application().bus.handle(commands.InitInventory(namespace, sku, total,
                                                         limit_per_buyer)).figures, namespace, sku)


@click.command()
@click.argument("namespace")
@click.argument("sku")
@click.argument("limit")
@domain_exit
def limit(namespace: str, sku: str, limit: str) -> None:
    """Set the units each buyer may take of an item (LIMIT), or lift the limit ("none")."""
    checked(namespace, sku)
    per_buyer = None if limit == "none" else LIMIT.convert(limit, None, None)
    show(application().bus.handle(commands.SetLimit(namespace, sku, per_buyer)), namespace, sku)


def _movement(kind: str) -> Callable[..., None]:
    @click.argument("namespace")
    @click.argument("sku")
    @click.argument("qty", type=DELTA if kind == "adjust" else QTY)
    @click.option("--key", type=KEY, help="idempotency key (a fresh one when omitted)")
    @click.option("--buyer", type=BUYER, hidden=kind == "adjust",
                  help="the buyer (required where the item has a limit per buyer)")
    @domain_exit
    def move(namespace: str, sku: str, qty: int, key: str | None, buyer: str | None) -> None:
        checked(namespace, sku)
        command: commands.Command
        if kind == "adjust":
            if buyer is not None:
                raise click.UsageError("an adjustment names no buyer")
            command = commands.AdjustTotal(namespace, sku, qty, key)
        else:
            cls = commands.Decrement if kind == "decrement" else commands.Refund
            command = cls(namespace, sku, qty, key or uuid.uuid4().hex, buyer)
        show(application().bus.handle(command).raise_for_status().figures, namespace, sku)
    return move


adjust = click.command("adjust", help="Change an item's total by DELTA (QTY).")(
    _movement("adjust"))
decrement = click.command("decrement", help="Sell QTY units.")(_movement("decrement"))
refund = click.command("refund", help="Return QTY sold units.")(_movement("refund"))


@click.command()
@click.argument("namespace")
@click.argument("lines", nargs=-1, required=True, type=LINE)
@click.option("--ttl", type=TTL, default=600, show_default=True,
              help="seconds the units are held (1..86400)")
@click.option("--buyer", type=BUYER,
              help="the buyer (required where an item has a limit per buyer)")
@click.option("--key", type=KEY, help="idempotency key (a fresh one when omitted); the same "
              "key and lines again answer the same reservation")
@domain_exit
def reserve(namespace: str, lines: tuple[tuple[str, int], ...], ttl: int, buyer: str | None,
            key: str | None) -> None:
    """Hold every line (SKU:QTY ...) while a buyer pays, or none; print the reservation."""
    checked(namespace)
    if len(lines) > MAX_LINES:
        raise click.UsageError(f"at most {MAX_LINES} lines, got {len(lines)}")
    show_reservation(application().bus.handle(commands.Reserve(
        namespace, lines, key or uuid.uuid4().hex, ttl, buyer)))


def _ending(command: type[commands.ConfirmReservation | commands.ReleaseReservation]
            ) -> Callable[..., None]:
    @click.argument("namespace")
    @click.argument("reservation_id", metavar="ID", type=RESERVATION_ID)
    @domain_exit
    def end(namespace: str, reservation_id: str) -> None:
        checked(namespace)
        show_reservation(application().bus.handle(command(namespace, reservation_id)))
    return end


confirm = click.command("confirm", help="Sell a reservation's held units (again: the same "
                        "answer).")(_ending(commands.ConfirmReservation))
release = click.command("release", help="Put a reservation's held units back on sale (again: "
                        "the same answer).")(_ending(commands.ReleaseReservation))


@click.command()
@click.argument("namespace")
@click.argument("sku")
@domain_exit
def get(namespace: str, sku: str) -> None:
    """Show an item's stock."""
    checked(namespace, sku)
    show(views.item(application(), namespace, sku), namespace, sku)


@click.command()
@click.argument("namespace")
@click.argument("sku")
@click.option("--after-seq", type=click.IntRange(0), default=0)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100)
@domain_exit
def ledger(namespace: str, sku: str, after_seq: int, limit: int) -> None:
    """Print an item's ledger, one JSON entry a line."""
    checked(namespace, sku)
    for e in views.ledger(application(), namespace, sku, after_seq, limit):
        click.echo(json.dumps(replies.ledger_entry(e)))


@click.command("import")
@click.argument("namespace")
@click.argument("file", type=click.File("rb"))
@domain_exit
def import_items(namespace: str, file: BinaryIO) -> None:
    """Initialise many items from a CSV of `sku,total` rows in UTF-8 (a header row and a
    byte-order mark are allowed). Every row is checked first; one bad row or clash and nothing
    is imported."""
    checked(namespace)
    rows = list(csv.reader(io.StringIO(_text(file), newline="")))
    if rows and rows[0] and rows[0][0].strip().lower() == "sku":
        rows = [["sku", "total"], *rows[1:]]
        start = 2
    else:
        rows = [["sku", "total"], *rows]
        start = 1
    items: dict[str, int] = {}
    problems: list[str] = []
    with click.progressbar(rows[1:], label="checking rows") as bar:
        for line, row in enumerate(bar, start=start):
            problem = _row_problem(row, items)
            if problem:
                problems.append(f"line {line}: {problem}")
            else:
                items[row[0].strip()] = int(row[1].strip())
    if problems:
        click.echo(f"{len(problems)} bad rows, nothing imported:", err=True)
        for problem in problems[:50]:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    created = application().bus.handle(commands.InitMany(namespace, tuple(items.items())))
    click.echo(f"imported {len(items)} items into {namespace} ({created} new)")


def _text(file: BinaryIO) -> str:
    """The file's text: UTF-8, with or without the byte-order mark spreadsheets write first
    (else it is read as part of the first sku); bytes that are not UTF-8 are a usage error."""
    data = file.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise click.UsageError(f"{file.name}: line {line}: not UTF-8 text (byte "
                               f"0x{data[exc.start]:02x}); save it as UTF-8 CSV") from None


def _row_problem(row: list[str], seen: dict[str, int]) -> str | None:
    if len(row) != 2:
        return f"expected 2 fields (sku,total), got {len(row)}"
    sku, total = row[0].strip(), row[1].strip()
    try:
        schemas.check_name(sku, "sku")
    except errors.InvalidInput:
        return f"invalid sku {sku!r}"
    try:
        schemas.check_total(integer(total))
    except errors.InvalidInput:
        return f"total must be an integer from 0 to 1000000000, got {total!r}"
    if sku in seen:
        return f"sku {sku!r} appears twice"
    return None


COMMANDS = (init, limit, import_items, adjust, decrement, refund, reserve, confirm, release, get,
            ledger)
