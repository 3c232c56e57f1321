"""``allocation sale create|show|close``: a sale's waiting room from the command line (the
same bus and answers as ``PUT/GET /v1/{ns}/sales/{sale}`` and ``.../close``)."""

from __future__ import annotations

import json

import click

from allocation.domain import commands, errors
from allocation.entrypoints import schemas
from allocation.entrypoints.cli_params import application, domain_exit
from allocation.entrypoints.movement_requests import validate
from allocation.entrypoints.replies import BadRequest
from allocation.entrypoints.sale_replies import sale_body
from allocation.entrypoints.sale_schemas import SaleBody
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
    try:  # the terms checked as the HTTP API checks them
        terms = validate(SaleBody, {
            "skus": list(skus), "opens_at": opens_at, "admit_factor": admit_factor,
            "pass_ttl_seconds": pass_ttl, "max_admitted": max_admitted})
    except BadRequest as exc:
        raise click.UsageError(f"invalid {exc.message}") from None
    _print(application().bus.handle(terms.command(namespace, name)))


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
