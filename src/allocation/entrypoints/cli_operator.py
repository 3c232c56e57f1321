"""The operator's commands on the stores themselves: ``migrate`` the schema, find and repair
``drift``, ``refresh`` counters from the database."""

from __future__ import annotations

import sys

import click

from allocation.config import Config
from allocation.domain import commands
from allocation.domain.outcome import Figures
from allocation.entrypoints.cli_params import application, checked, domain_exit, show


@click.command()
@domain_exit
def migrate() -> None:
    """Bring the database schema to the latest revision (Alembic)."""
    # Imported here, as serve's app is: Alembic and Flask would double every other command's
    # start-up, which operators and scripts wait for.
    from allocation.adapters import migrate as migrations

    config = Config.from_env()
    migrations.upgrade(config.database_url)
    click.echo(f"migrated {config.database_url.split('@')[-1]}")


@click.command()
@click.argument("namespace")
@click.option("--repair", is_flag=True,
              help="rebuild the items that differ or that Redis lacks")
@domain_exit
def drift(namespace: str, repair: bool) -> None:
    """Compare Redis with the database plus the unwritten outbox; exit 1 if any item differs
    or is missing from Redis."""
    checked(namespace)
    report = application().bus.handle(commands.CheckDrift(namespace, repair))
    if not report.found:
        click.echo(f"{namespace}: no drift")
        return
    click.echo(f"{'sku':<30} {'expected (total, consumed, held)':<34} "
               "redis (total, consumed, held)")
    for d in report.found:
        click.echo(f"{d.sku:<30} {_counted(d.expected):<34} "
                   f"{'missing' if d.missing else _counted(d.redis)}")
    if repair:
        click.echo(f"repaired {report.repaired} items")
        return
    sys.exit(1)


def _counted(figures: Figures | None) -> str:
    return str(None if figures is None else (figures.total, figures.consumed, figures.held))


@click.command()
@click.argument("namespace")
@click.argument("sku", required=False)
@click.option("--all", "everything", is_flag=True, help="every item of NAMESPACE")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=10_000,
              help="items a progress step; a step's batches (1,000 items each) run 4 at a time")
@domain_exit
def refresh(namespace: str, sku: str | None, everything: bool, batch_size: int) -> None:
    """Rebuild counters from the database: one item, or --all of a namespace."""
    checked(namespace, sku)
    bus = application().bus
    if sku and not everything:
        show(bus.handle(commands.Refresh(namespace, sku)), namespace, sku)
        return
    if not everything:
        raise click.UsageError("name a SKU, or pass --all")
    done, after = 0, None
    with click.progressbar(length=0, label=f"refreshing {namespace}",
                           show_pos=True) as bar:
        while True:
            step = bus.handle(commands.RefreshAll(namespace, after, batch_size, batches=1))
            done += step.refreshed
            bar.length = done
            bar.update(step.refreshed)
            if step.after is None:
                break
            after = step.after
    click.echo(f"refreshed {done} items")


COMMANDS = (migrate, drift, refresh)
