"""The ``allocation`` command. Exit codes: 0 success, 1 domain refusal, 2 usage or input error,
3 a dependency is unavailable."""

from __future__ import annotations

import dataclasses
import sys

import click

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.entrypoints import (
    cli_operator,
    cli_processes,
    cli_stock,
    ledger_worker,
    sale_cli,
    token_cli,
)
from allocation.entrypoints.cli_params import domain_exit
from allocation.entrypoints.cli_processes import serve

__all__ = ["domain_exit", "main", "serve"]


def _app() -> Application:
    config = Config.from_env()
    if config.embedded:
        # A short-lived process with an in-process outbox: each command returns once its own
        # writer has committed it, so nothing is left unwritten at exit.
        config = dataclasses.replace(config, durability="sync")
    app = bootstrap(config)
    if config.embedded:
        ledger_worker.for_app(app).start_thread()
    return app


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Flash-sale inventory: a Redis fast path over a PostgreSQL ledger."""
    try:
        Config.from_env()  # a bad setting is the user's to fix: a line naming it, exit 2
    except ValueError as exc:
        click.echo(f"invalid setting: {exc}", err=True)
        sys.exit(2)
    ctx.obj = _app  # how a command builds the application (cli_params.application)


# Every command and group of `allocation`, registered here and only here, a line each.
for command in (*cli_processes.COMMANDS, *cli_stock.COMMANDS, *cli_operator.COMMANDS):
    main.add_command(command)
main.add_command(token_cli.token)
main.add_command(sale_cli.sale)

if __name__ == "__main__":
    main()
