"""``InventoryManager``: the seed library's methods, with the same meaning, on this service's bus.

What it keeps: every public method of the seed (``ping``, ``ping_redis``, ``ping_db``,
``create_table``, ``table_initialized``, ``inventory_init``, ``modification_adjust``, ``get``,
``usage_decr``, ``usage_incr``, ``refresh``, ``refresh_all``) and what it does; an item id may be
an ``int``, used as its decimal string, as the seed's keys did. What it fixes: every argument is
checked by the rules every entry point shares (``schemas.check_*``, API.md) before anything
reaches the counter, and a bad one raises ``errors.InvalidInput`` naming the field (the seed let
``usage_decr("x", 1.5)`` into Redis); an unknown item reads as ``None``, never as 0 stock; a
refund cannot exceed what was sold; a refused decrement leaves the counter untouched; concurrent
inits cannot double the stock; refresh locks and commits; and it works in its own sessions, so a
database error never poisons the caller's session.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import redis
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from allocation import views
from allocation.adapters import migrate, orm
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.sql_unit_of_work import SqlAlchemyUnitOfWork
from allocation.bootstrap import POSTGRES_CONNECT_ARGS, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Figures as ItemFigures
from allocation.entrypoints import ledger_worker, replies, sale_replies, schemas

Figures = dict[str, int]
# The seed library's figures (its callers' contract), of those an item's body has.
LIBRARY_FIGURES = ("total", "consumed", "held", "available")
ItemId = str | int  # the seed formatted either into its keys


class InventoryManager:
    """``InventoryManager(prefix, db_session, db_Base, redis_client)`` as in the seed library;
    ``prefix`` is the namespace. ``db_Base`` is accepted and ignored: the schema is this
    package's.
    Pass ``database_url`` instead of a session if you have no SQLAlchemy session."""

    def __init__(self, prefix: str, db_session: Session | scoped_session[Session] | None = None,
                 db_Base: Any = None, redis_client: Any = None, *,
                 database_url: str | None = None, key_prefix: str = "inv",
                 durability: str = "sync") -> None:
        self.prefix = schemas.check_name(prefix, "namespace")
        self.engine = self._engine(db_session, database_url)
        orm.start_mappers()
        session_factory = sessionmaker(self.engine, expire_on_commit=False)
        # Without a Redis of the caller's, the embedded mode's own (ADR 0028).
        counter = (RedisCounter(redis_client, KeySpace(key_prefix)) if redis_client is not None
                   else None)
        self.app = bootstrap(
            # sync by default: like the seed library, a call returns once the ledger has it.
            Config(database_url=self.engine.url.render_as_string(hide_password=False),
                   durability=durability, sale_secret=os.environ.get("SALE_SECRET")),
            uow_factory=lambda: SqlAlchemyUnitOfWork(session_factory), counter=counter,
            publish=lambda event: None)
        self.bus = self.app.bus
        self.counter = self.app.counter
        # A ledger writer of the caller's own (it may share the outbox with other writers), so
        # that a sync call returns without a worker process having to run beside it.
        self._ledger = ledger_worker.for_app(self.app)
        self._ledger_thread = self._ledger.start_thread()
        self._own_engine = database_url is not None

    @staticmethod
    def _engine(db_session: Any, database_url: str | None) -> Engine:
        if database_url is not None:
            bounded = ({"connect_args": POSTGRES_CONNECT_ARGS}
                       if database_url.startswith("postgresql") else {})  # ADR 0025
            return create_engine(database_url, pool_pre_ping=True, **bounded)
        if db_session is None:
            raise ValueError("pass db_session (a SQLAlchemy session) or database_url")
        bind = db_session.get_bind()
        return bind if isinstance(bind, Engine) else bind.engine

    def close(self) -> None:
        """Stop this manager's ledger writer and release the connections it made (not the
        caller's engine). Not in the seed, which ran no thread of its own."""
        self._ledger.stop()
        self._ledger_thread.join(timeout=10)
        if self._own_engine:
            self.engine.dispose()

    def ping(self) -> bool:
        """True when Redis (the counter) and the database answer; raises ``Unavailable``
        otherwise (the seed raised its ``InventoryManagerPingError``)."""
        return self.ping_redis() and self.ping_db()

    def ping_redis(self) -> bool:
        """True when the counter answers; raises ``Unavailable`` otherwise."""
        try:
            self.counter.ping()
        except redis.RedisError as exc:
            raise errors.Unavailable("redis unavailable") from exc
        return True

    def ping_db(self) -> bool:
        """True when the database answers ``SELECT 1``; raises ``Unavailable`` otherwise."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise errors.Unavailable("database unavailable") from exc
        return True

    def create_table(self) -> None:
        """Create or upgrade the tables (Alembic migrations)."""
        with self.engine.begin() as conn:
            migrate.upgrade_on(conn)

    def table_initialized(self) -> bool:
        tables = set(inspect(self.engine).get_table_names())
        return {orm.items.name, orm.ledger.name} <= tables

    def inventory_init(self, item_id: ItemId, num: int) -> Figures:
        """Set an item's stock (``num``: the total, 0..1_000_000_000). Again with the same number
        is a no-op; with another it raises ``AlreadyExists`` (use ``modification_adjust`` to
        change stock)."""
        command = commands.InitInventory(self.prefix, _sku(item_id), schemas.check_total(num))
        return _figures(self.bus.handle(command).figures)

    def modification_adjust(self, item_id: ItemId, delta: int,
                            idempotency_key: str | None = None) -> Figures:
        """Change the total by ``delta`` (|delta| <= 1_000_000_000); raises ``BelowConsumed``,
        ``TotalExceedsMaximum`` (past 1_000_000_000) or ``NotFound``."""
        outcome = self.bus.handle(commands.AdjustTotal(
            self.prefix, _sku(item_id), schemas.check_delta(delta), _key(idempotency_key)))
        return _figures(outcome.raise_for_status().figures)

    def get(self, item_id: ItemId) -> Figures | None:
        """``{"total", "consumed", "held", "available"}``, or ``None`` for an unknown item."""
        try:
            return _figures(views.item(self.app, self.prefix, _sku(item_id)))
        except errors.NotFound:
            return None

    def usage_decr(self, item_id: ItemId, num: int = 1,
                   idempotency_key: str | None = None) -> bool:
        """Sell ``num`` (1..1_000_000): True if sold, False if not enough stock. Raises
        ``NotFound``; ``InvalidInput`` for a ``num`` that is not such a number, except one over
        1_000_000 and over what is available, which is False as in the seed."""
        return self._move(commands.Decrement, item_id, num, idempotency_key, "available",
                          "insufficient_stock")

    def usage_incr(self, item_id: ItemId, num: int = 1,
                   idempotency_key: str | None = None) -> bool:
        """Give back ``num`` (1..1_000_000) sold units: True if returned, False if more than was
        sold (also for a ``num`` over 1_000_000). Raises ``NotFound`` or ``InvalidInput``."""
        return self._move(commands.Refund, item_id, num, idempotency_key, "consumed",
                          "refund_exceeds_consumed")

    def _move(self, command: type[commands.Decrement | commands.Refund], item_id: ItemId,
              num: object, idempotency_key: str | None, bound: str, refused: str) -> bool:
        """True once moved; False where the seed said so: over ``bound``, refused ``refused``."""
        sku, key = _sku(item_id), _key(idempotency_key)
        qty = self._qty(sku, num, bound)
        if qty is None:
            return False
        outcome = self.bus.handle(command(self.prefix, sku, qty, key or uuid.uuid4().hex))
        if outcome.status == refused:
            return False
        outcome.raise_for_status()
        return True

    def _qty(self, sku: str, num: object, bound: str) -> int | None:
        """``num`` by the shared rule, or None for a whole number over its maximum that is also
        over the item's ``bound`` figure: the seed answered that with False (its demo sells
        999999999 of 110), and so does this, touching nothing. Over the maximum and within the
        figure, the rule's error stands: one movement moves at most 1_000_000."""
        try:
            return schemas.check_qty(num)
        except errors.InvalidInput:
            if not (isinstance(num, int) and not isinstance(num, bool) and num > 0):
                raise
            if num > _figures(views.item(self.app, self.prefix, sku))[bound]:  # or NotFound
                return None
            raise

    def refresh(self, item_id: ItemId) -> Figures:
        """Rebuild the item's counter from the database, under its lock."""
        return _figures(self.bus.handle(commands.Refresh(self.prefix, _sku(item_id))))

    def refresh_all(self) -> int:
        """Rebuild every counter of this prefix; returns how many items."""
        progress = self.bus.handle(commands.RefreshAll(self.prefix))
        return int(progress.refreshed)


    # The waiting room (not in the seed): a sale of this namespace, as the HTTP API has it.
    def sale_create(self, sale: str, skus: list[ItemId], *, opens_at_ms: int | None = None,
                    admit_factor: float = 2.0, pass_ttl_seconds: int = 300,
                    max_admitted: int | None = None) -> dict[str, Any]:
        """Make a sale gating ``skus`` (the same terms again: the same sale); its body."""
        name = schemas.check_name(sale, "sale")
        return sale_replies.sale_body(self.bus.handle(commands.PutSale(
            self.prefix, name, tuple(_sku(sku) for sku in skus), opens_at_ms, admit_factor,
            pass_ttl_seconds, max_admitted)))

    def sale_close(self, sale: str) -> dict[str, Any]:
        name = schemas.check_name(sale, "sale")
        return sale_replies.sale_body(self.bus.handle(commands.CloseSale(self.prefix, name)))

    def sale_join(self, sale: str, buyer: str) -> dict[str, Any]:
        """The buyer's ticket in the sale's queue (the same one again for a repeat)."""
        name, who = schemas.check_name(sale, "sale"), schemas.check_buyer(buyer)
        return sale_replies.ticket_body(self.bus.handle(commands.JoinQueue(self.prefix, name,
                                                                           who)))


def _sku(item_id: object) -> str:
    """The seed's item id as a sku: a string, or an int as its decimal string (not a bool)."""
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    return schemas.check_name(item_id, "sku")


def _key(idempotency_key: object) -> str | None:
    return None if idempotency_key is None else schemas.check_idempotency_key(idempotency_key)


def _figures(figures: ItemFigures) -> Figures:
    body = replies.figures_body(figures)
    return {name: body[name] for name in LIBRARY_FIGURES}
