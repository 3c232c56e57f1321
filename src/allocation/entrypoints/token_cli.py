"""``allocation token create|list|revoke`` (API.md, "Access: tokens and roles")."""

from __future__ import annotations

import os
import unicodedata

import click

from allocation.adapters.redis_client import connect
from allocation.adapters.token_store import ANY_NAMESPACE, ROLES, Revocations, TokenStore
from allocation.bootstrap import build_engine
from allocation.config import Config
from allocation.entrypoints import schemas
from allocation.entrypoints.cli_params import domain_exit

# Control characters (tab, newline, ...) and the line and paragraph separators.
_LINE_BREAKING = ("Cc", "Zl", "Zp")


def _store() -> TokenStore:
    return TokenStore(build_engine(Config.from_env()))


def _namespace(value: str) -> str:
    if value != ANY_NAMESPACE and schemas.NAME.fullmatch(value) is None:
        raise click.UsageError(f"invalid namespace {value!r}: a name as API.md gives, or '*'")
    return value


@click.group()
def token() -> None:
    """Make, list and revoke access tokens."""


@token.command()
@click.argument("namespace")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", default="", help="who or what the token is for")
@click.option("--embedded", is_flag=True,
              help="write into the embedded SQLite file (no DATABASE_URL): its API runs with "
                   "AUTH=off unless AUTH=required is set")
@domain_exit
def create(namespace: str, role: str, name: str, embedded: bool) -> None:
    """Make a token for NAMESPACE ('*' for every namespace); print it (it is shown once)."""
    if len(name) > 200:
        raise click.UsageError("--name: at most 200 characters")
    if any(unicodedata.category(c) in _LINE_BREAKING for c in name):
        # `token list` prints a token a line, its fields between tabs: scripts split on them.
        raise click.UsageError(f"--name: no control characters or line breaks, got {name!r}")
    if not os.environ.get("DATABASE_URL") and not embedded:
        # Else the token lands in a local SQLite file no deployed server reads, and the
        # operator holds a token that every server answers 401.
        raise click.UsageError("DATABASE_URL is not set: set it to the deployment's database "
                               "(or pass --embedded to write into the embedded SQLite file)")
    _, secret = _store().create(_namespace(namespace), role, name)
    click.echo(secret)


@token.command("list")
@click.argument("namespace", required=False)
@domain_exit
def list_tokens(namespace: str | None) -> None:
    """A token a line: id, namespace, role, name, made, last used (never the token)."""
    for row in _store().rows(None if namespace is None else _namespace(namespace)):
        state = "" if row.revoked_at is None else f"\trevoked {row.revoked_at.isoformat()}"
        used = "-" if row.last_used_at is None else row.last_used_at.isoformat()
        click.echo(f"{row.id}\t{row.namespace}\t{row.role}\t{row.name or '-'}\t"
                   f"{row.created_at.isoformat()}\t{used}{state}")


@token.command()
@click.argument("token_id")
@domain_exit
def revoke(token_id: str) -> None:
    """Revoke a token by its id: every server refuses it within seconds."""
    if not _store().revoke(token_id):
        raise click.ClickException(f"no active token {token_id!r}")
    config = Config.from_env()
    if config.redis_url is not None:
        # Servers that cannot reach the database hear of it here (within a second or so).
        try:
            Revocations(connect(config.redis_url), config.redis_key_prefix).add(token_id)
        except Exception as exc:  # noqa: BLE001 - the database has it: servers reload it
            click.echo(f"warning: not told through Redis ({type(exc).__name__}); servers "
                       "that reach the database refuse it at their next reload", err=True)
    click.echo(f"revoked {token_id}")
