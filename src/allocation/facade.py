"""``InventoryManager``: the seed library's methods, with the same meaning, on this service's bus.

What it keeps: the method names and what they do. What it fixes: an unknown item reads as
``None``, never as 0 stock; a refund cannot exceed what was sold; a refused decrement leaves the
counter untouched; concurrent inits cannot double the stock; refresh locks and commits; and it
works in its own sessions, so a database error never poisons the caller's session.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from allocation import views
from allocation.adapters import migrate, orm
from allocation.adapters.memory_counter import InProcessCounter
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Outcome
from allocation.entrypoints import schemas
from allocation.service_layer.unit_of_work import SqlAlchemyUnitOfWork

Figures = dict[str, int]


class InventoryManager:
    """``InventoryManager(prefix, db_session, Base, redis_client)`` as in the seed library;
    ``prefix`` is the namespace. ``Base`` is accepted and ignored: the schema is this package's.
    Pass ``database_url`` instead of a session if you have no SQLAlchemy session."""

    def __init__(self, prefix: str, db_session: Session | scoped_session[Session] | None = None,
                 Base: Any = None, redis_client: Any = None, *,
                 database_url: str | None = None, key_prefix: str = "inv",
                 durability: str = "sync") -> None:
        self.prefix = prefix
        self.engine = self._engine(db_session, database_url)
        orm.start_mappers()
        session_factory = sessionmaker(self.engine, expire_on_commit=False)
        counter = (RedisCounter(redis_client, KeySpace(key_prefix)) if redis_client is not None
                   else InProcessCounter())
        self.bus = bootstrap(
            # sync by default: like the seed library, a call returns once the ledger has it, and
            # no ledger worker needs to run beside the caller.
            Config(database_url=self.engine.url.render_as_string(hide_password=False),
                   durability=durability),
            uow_factory=lambda: SqlAlchemyUnitOfWork(session_factory), counter=counter,
            publish=lambda event: None)
        self.counter = counter

    @staticmethod
    def _engine(db_session: Any, database_url: str | None) -> Engine:
        if database_url is not None:
            return create_engine(database_url, pool_pre_ping=True)
        if db_session is None:
            raise ValueError("pass db_session (a SQLAlchemy session) or database_url")
        bind = db_session.get_bind()
        return bind if isinstance(bind, Engine) else bind.engine

    def ping(self) -> bool:
        """True when the database and the counter answer; raises ``Unavailable`` otherwise."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise errors.Unavailable(f"database unavailable: {exc}") from exc
        self.counter.ping()
        return True

    def create_table(self) -> None:
        """Create or upgrade the tables (Alembic migrations)."""
        with self.engine.begin() as conn:
            migrate.upgrade_on(conn)

    def table_initialized(self) -> bool:
        tables = set(inspect(self.engine).get_table_names())
        return {orm.items.name, orm.ledger.name} <= tables

    def _checked(self, item_id: str) -> str:
        schemas.ItemPath(namespace=self.prefix, sku=item_id)  # ValueError naming the field
        return item_id

    def inventory_init(self, item_id: str, num: int) -> Figures:
        """Set an item's stock. Again with the same number is a no-op; with another it raises
        ``AlreadyExists`` (use ``modification_adjust`` to change stock)."""
        command = commands.InitInventory(self.prefix, self._checked(item_id), num)
        return _figures(self.bus.handle(command))

    def modification_adjust(self, item_id: str, delta: int,
                            idempotency_key: str | None = None) -> Figures:
        """Change the total by ``delta``; raises ``BelowConsumed`` or ``NotFound``."""
        outcome = self.bus.handle(commands.AdjustTotal(self.prefix, self._checked(item_id), delta,
                                                       idempotency_key))
        return _figures(outcome.raise_for_status())

    def get(self, item_id: str) -> Figures | None:
        """``{"total", "consumed", "available"}``, or ``None`` for an unknown item."""
        try:
            return _figures(views.item(self.bus, self.prefix, self._checked(item_id)))
        except errors.NotFound:
            return None

    def usage_decr(self, item_id: str, num: int = 1, idempotency_key: str | None = None) -> bool:
        """Sell ``num``: True if sold, False if not enough stock. Raises ``NotFound``."""
        outcome = self.bus.handle(commands.Decrement(
            self.prefix, self._checked(item_id), num, idempotency_key or uuid.uuid4().hex))
        if outcome.status == "insufficient_stock":
            return False
        outcome.raise_for_status()
        return True

    def usage_incr(self, item_id: str, num: int = 1, idempotency_key: str | None = None) -> bool:
        """Give back ``num`` sold units: True if returned, False if more than was sold."""
        outcome = self.bus.handle(commands.Refund(
            self.prefix, self._checked(item_id), num, idempotency_key or uuid.uuid4().hex))
        if outcome.status == "refund_exceeds_consumed":
            return False
        outcome.raise_for_status()
        return True

    def refresh(self, item_id: str) -> Figures:
        """Rebuild the item's counter from the database, under its lock."""
        return _figures(self.bus.handle(commands.Refresh(self.prefix, self._checked(item_id))))

    def refresh_all(self) -> int:
        """Rebuild every counter of this prefix; returns how many items."""
        progress = self.bus.handle(commands.RefreshAll(self.prefix))
        return int(progress.refreshed)


def _figures(outcome: Outcome) -> Figures:
    return {"total": outcome.total, "consumed": outcome.consumed, "available": outcome.available}
