"""``allocation sale create|show|close``: a sale's waiting room from the command line (the
same bus and answers as ``PUT/GET /v1/{ns}/sales/{sale}`` and ``.../close``)."""

from __future__ import annotations

import json
from datetime import datetime

import click

from allocation.domain import commands, errors
from allocation.entrypoints import schemas
from allocation.entrypoints.cli_params import application, domain_exit
from allocation.entrypoints.sale_replies import sale_body
from allocation.service_layer import sales
from allocation.service_layer.sales import SaleAnswer


def _print(answer: SaleAnswer) -> None:
    click.echo(json.dumps(sale_body(answer)))


def _names(namespace: str, sale: str) -> tuple[str, str]:
    try:
        return schemas.check_name(namespace, "namespace"), schemas.check_name(sale, "sale")
    except errors.InvalidInput as exc:
        raise click.UsageError(f"invalid {exc.message}") from None


@click.group()
def sale() -> None:
    """Make, read and close a sale's waiting room."""


@sale.command()
@click.argument("namespace")
@click.argument("name")
@click.option("--sku", "skus", multiple=True, required=True, help="a sku it gates (repeat)")
@click.option("--opens-at", default=None, help="ISO 8601 with an offset (default: now)")
@click.option("--admit-factor", type=float, default=2.0, show_default=True)
@click.option("--pass-ttl", type=int, default=300, show_default=True, help="seconds")
@click.option("--max-admitted", type=int, default=None)
@domain_exit
def create(namespace: str, name: str, skus: tuple[str, ...], opens_at: str | None,
           admit_factor: float, pass_ttl: int, max_admitted: int | None) -> None:
    """Make the sale NAME gating each --sku of NAMESPACE; print it."""
    namespace, name = _names(namespace, name)
    for sku in skus:
        _names(namespace, sku)
    opens_ms = None
    if opens_at is not None:
        try:
            moment = datetime.fromisoformat(opens_at)
        except ValueError:
            raise click.UsageError(f"--opens-at: not an ISO 8601 time: {opens_at!r}") from None
        if moment.tzinfo is None:
            raise click.UsageError("--opens-at needs an offset (e.g. +00:00)")
        opens_ms = int(moment.timestamp() * 1000)
    _print(application().bus.handle(commands.PutSale(
        namespace, name, skus, opens_ms, admit_factor, pass_ttl, max_admitted)))


@sale.command()
@click.argument("namespace")
@click.argument("name")
@domain_exit
def show(namespace: str, name: str) -> None:
    """Print the sale NAME of NAMESPACE with its live figures."""
    namespace, name = _names(namespace, name)
    _print(sales.sale(application().bus.services, namespace, name))


@sale.command()
@click.argument("namespace")
@click.argument("name")
@domain_exit
def close(namespace: str, name: str) -> None:
    """Close the sale: its skus are no longer gated."""
    namespace, name = _names(namespace, name)
    _print(application().bus.handle(commands.CloseSale(namespace, name)))
