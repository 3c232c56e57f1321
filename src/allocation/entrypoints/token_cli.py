"""``allocation token create|list|revoke`` (API.md, "Access: tokens and roles")."""

from __future__ import annotations

import click

from allocation.adapters.token_store import ANY_NAMESPACE, ROLES, TokenStore
from allocation.bootstrap import build_engine
from allocation.config import Config
from allocation.entrypoints import schemas


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
def create(namespace: str, role: str, name: str) -> None:
    """Make a token for NAMESPACE ('*' for every namespace); print it (it is shown once)."""
    if len(name) > 200:
        raise click.UsageError("--name: at most 200 characters")
    _, secret = _store().create(_namespace(namespace), role, name)
    click.echo(secret)


@token.command("list")
@click.argument("namespace", required=False)
def list_tokens(namespace: str | None) -> None:
    """A token a line: id, namespace, role, name, made, last used (never the token)."""
    for row in _store().rows(None if namespace is None else _namespace(namespace)):
        state = "" if row.revoked_at is None else f"\trevoked {row.revoked_at.isoformat()}"
        used = "-" if row.last_used_at is None else row.last_used_at.isoformat()
        click.echo(f"{row.id}\t{row.namespace}\t{row.role}\t{row.name or '-'}\t"
                   f"{row.created_at.isoformat()}\t{used}{state}")


@token.command()
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke a token by its id: every server refuses it within seconds."""
    if not _store().revoke(token_id):
        raise click.ClickException(f"no active token {token_id!r}")
    click.echo(f"revoked {token_id}")
