"""Access tokens in the database. A token is 256 random bits, shown once when made; the table
keeps its SHA-256, which is enough to check it and useless to anyone who reads the table.

A revocation is also written to Redis (``Revocations``), which every server reads each second:
it reaches servers that cannot reach the database."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.engine import Engine

from allocation.adapters.orm import access_tokens
from allocation.adapters.redis_client import RedisClient

ROLES = ("read", "sell", "admin")
ANY_NAMESPACE = "*"


@dataclass(frozen=True)
class Grant:
    """What a token may do: one namespace (or ``*``) and one role."""

    id: str
    namespace: str
    role: str


@dataclass(frozen=True)
class TokenRow:
    id: str
    namespace: str
    role: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, namespace: str, role: str, name: str = "") -> tuple[str, str]:
        """A new token: (its id, the token itself)."""
        token = "alloc_" + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)
        with self.engine.begin() as conn:
            conn.execute(insert(access_tokens).values(
                id=token_id, token_hash=digest(token), namespace=namespace, role=role,
                name=name, created_at=datetime.now(UTC)))
        return token_id, token

    def revoke(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(access_tokens).where(
                access_tokens.c.id == token_id, access_tokens.c.revoked_at.is_(None)
            ).values(revoked_at=datetime.now(UTC)))
        return done.rowcount > 0

    def rows(self, namespace: str | None = None) -> list[TokenRow]:
        query = select(access_tokens).order_by(access_tokens.c.created_at, access_tokens.c.id)
        if namespace is not None:
            query = query.where(access_tokens.c.namespace == namespace)
        with self.engine.connect() as conn:
            return [TokenRow(r.id, r.namespace, r.role, r.name, r.created_at, r.last_used_at,
                             r.revoked_at) for r in conn.execute(query)]

    def active(self) -> dict[str, Grant]:
        """Every token not revoked, by hash."""
        query = select(access_tokens.c.id, access_tokens.c.token_hash,
                       access_tokens.c.namespace, access_tokens.c.role).where(
            access_tokens.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return {r.token_hash: Grant(r.id, r.namespace, r.role) for r in conn.execute(query)}

    def find(self, token_hash: str) -> Grant | None:
        query = select(access_tokens.c.id, access_tokens.c.namespace, access_tokens.c.role).where(
            access_tokens.c.token_hash == token_hash, access_tokens.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Grant(row.id, row.namespace, row.role)

    def touch(self, token_ids: Iterable[str]) -> None:
        ids = sorted(set(token_ids))
        if ids:
            with self.engine.begin() as conn:
                conn.execute(update(access_tokens).where(access_tokens.c.id.in_(ids))
                             .values(last_used_at=datetime.now(UTC)))


# Every call a server makes to check tokens has a deadline: connecting, the statement on the
# server, and (libpq's tcp_user_timeout and keepalives) a peer that stops answering mid-call.
_DEADLINES: dict[str, Any] = {"connect_timeout": 2, "options": "-c statement_timeout=1000",
                              "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1,
                              "keepalives_count": 2, "tcp_user_timeout": 2000}


def checking_engine(database_url: str, lookups: int) -> Engine:
    """An engine of its own for a server's token checks: ``lookups`` connections and one for
    the reload, none taken from the ones sales use, each call under a deadline."""
    if not database_url.startswith("postgresql"):
        return create_engine(database_url)
    return create_engine(database_url, pool_size=lookups + 1, max_overflow=0, pool_timeout=1,
                         connect_args=_DEADLINES)


class Revocations:
    """Revoked token ids as a Redis set under the deployment's key prefix: a set, not a
    channel, so a server that was away when a token was revoked still hears of it."""

    def __init__(self, client: RedisClient, key_prefix: str) -> None:
        self.client = client
        self.key = f"{key_prefix}:revoked-tokens"

    def add(self, token_id: str) -> None:
        self.client.sadd(self.key, token_id)

    def ids(self) -> set[str]:
        return {member.decode() for member in self.client.smembers(self.key)}
