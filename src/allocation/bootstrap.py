"""The composition root: builds the adapters from configuration and injects them into handlers."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from allocation.adapters import orm
from allocation.adapters.counter import Counter
from allocation.adapters.event_publisher import RedisEventPublisher, log_event
from allocation.adapters.locks import InProcessItemLocks, ItemLocks, PostgresItemLocks
from allocation.adapters.memory_counter import InProcessCounter, InProcessOutbox
from allocation.adapters.outbox import Outbox
from allocation.adapters.redis_client import RedisClient, connect
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.config import Config
from allocation.domain import events
from allocation.service_layer import handlers
from allocation.service_layer.messagebus import MessageBus
from allocation.service_layer.unit_of_work import AbstractUnitOfWork, SqlAlchemyUnitOfWork


def build_engine(config: Config) -> Engine:
    if config.database_url.startswith("sqlite"):
        return create_engine(config.database_url)
    return create_engine(config.database_url, pool_size=config.db_pool_size, max_overflow=20,
                         pool_pre_ping=True, pool_timeout=5)


def bootstrap(
    config: Config | None = None,
    *,
    uow_factory: Callable[[], AbstractUnitOfWork] | None = None,
    counter: Counter | None = None,
    publish: Callable[[events.Event], None] | None = None,
    redis_client: RedisClient | None = None,
) -> MessageBus:
    config = config or Config.from_env()
    engine: Engine | None = None
    if uow_factory is None:
        orm.start_mappers()
        engine = build_engine(config)
        session_factory = sessionmaker(engine, expire_on_commit=False)
        # SQLite has no row locks: one writer at a time, in this process.
        write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        uow_factory = functools.partial(SqlAlchemyUnitOfWork, session_factory, write_lock)
    if redis_client is None and config.redis_url is not None:
        redis_client = connect(config.redis_url)
    if counter is None:
        counter = (InProcessCounter(config.idempotency_ttl_seconds) if redis_client is None
                   else RedisCounter(redis_client,
                                     KeySpace(config.redis_key_prefix, config.partitions),
                                     config.idempotency_ttl_seconds,
                                     events_channel=None if publish else config.events_channel))
    if publish is None:
        publish = (log_event if redis_client is None
                   else RedisEventPublisher(redis_client, config.events_channel))

    outbox: Outbox = (InProcessOutbox(counter) if isinstance(counter, InProcessCounter)
                      else RedisOutbox(counter.client, counter.keys)
                      if isinstance(counter, RedisCounter) else InProcessOutbox(InProcessCounter()))
    item_locks: ItemLocks = (PostgresItemLocks(engine) if engine is not None
                             and engine.dialect.name == "postgresql" else InProcessItemLocks())
    dependencies: dict[str, Any] = {"counter": counter, "publish": publish, "outbox": outbox,
                                    "item_locks": item_locks,
                                    "ledger_wait_seconds": config.ledger_wait_seconds}
    durability: handlers.Durability = "sync" if config.durability == "sync" else "async"
    return MessageBus(
        uow_factory=uow_factory,
        command_handlers={kind: inject(handler, dependencies)
                          for kind, handler in handlers.command_handlers(durability).items()},
        event_handlers={kind: [inject(h, dependencies) for h in hs]
                        for kind, hs in handlers.EVENT_HANDLERS.items()},
        dependencies={**dependencies, "config": config, "engine": engine,
                      "redis": redis_client},
    )


def inject(handler: Callable[..., Any], dependencies: dict[str, Any]) -> Callable[..., Any]:
    """Bind the dependencies a handler's signature asks for."""
    wanted = inspect.signature(handler).parameters
    return functools.partial(handler, **{k: v for k, v in dependencies.items() if k in wanted})
