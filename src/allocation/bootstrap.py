"""The composition root: builds the adapters from configuration, gives handlers one typed
``Services``, and hands entry points one typed ``Application``."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from allocation.adapters import embedded_redis, orm
from allocation.adapters.counter import Counter
from allocation.adapters.event_publisher import RedisEventPublisher
from allocation.adapters.health import HealthChecks
from allocation.adapters.ledger_progress import LedgerProgress
from allocation.adapters.locks import InProcessItemLocks, ItemLocks
from allocation.adapters.outbox import Outbox
from allocation.adapters.postgres_locks import PostgresItemLocks
from allocation.adapters.redis_client import RedisClient, connect
from allocation.adapters.redis_counter import RedisCounter
from allocation.adapters.redis_keys import KeySpace
from allocation.adapters.redis_ledger_progress import RedisLedgerProgress
from allocation.adapters.redis_outbox import RedisOutbox
from allocation.adapters.redis_sale import RedisSaleQueue
from allocation.adapters.sale_signing import SaleSigning
from allocation.adapters.sql_unit_of_work import SqlAlchemyUnitOfWork
from allocation.adapters.token_store import TokenStore
from allocation.config import Config
from allocation.domain import events
from allocation.service_layer import handlers, sales
from allocation.service_layer.durability import Durability
from allocation.service_layer.messagebus import MessageBus
from allocation.service_layer.sale_room import SaleRoom
from allocation.service_layer.services import PublishMovements, Services
from allocation.service_layer.shared_rebuilds import SharedRebuilds
from allocation.service_layer.unit_of_work import AbstractUnitOfWork

Publish = Callable[[events.Event], None]


@dataclass(frozen=True)
class Application:
    """Everything an entry point may use, built once per process."""

    config: Config
    bus: MessageBus
    uow_factory: Callable[[], AbstractUnitOfWork]
    counter: Counter
    outbox: Outbox
    ledger_progress: LedgerProgress
    durability: Durability
    publish: Publish
    item_locks: ItemLocks
    health: HealthChecks
    engine: Engine | None  # None where a test brings its own unit of work
    redis: RedisClient  # the embedded mode's own Redis where there is no REDIS_URL
    tokens: TokenStore | None  # None without an engine


# Every PostgreSQL connection is bounded (docs/adr/0025-the-records-outage.md): connecting
# gives up after CONNECT_TIMEOUT; an unanswered write (tcp_user_timeout) or a silent peer
# (keepalives: idle, interval, count) ends the connection within about 5 s, which also bounds
# pool_pre_ping on a connection a partition left open; the server cancels a statement past
# STATEMENT_TIMEOUT_MS (a lock wait behind a stuck session included).
CONNECT_TIMEOUT = 2
STATEMENT_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 2,
    "keepalives_interval": 1, "keepalives_count": 3, "tcp_user_timeout": 5_000,
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}


def build_engine(config: Config) -> Engine:
    if config.database_url.startswith("sqlite"):
        return create_engine(config.database_url)
    # pool_timeout: a request that finds every connection lent waits 2 s at most, not 30.
    return create_engine(config.database_url, pool_size=config.db_pool_size, max_overflow=20,
                         pool_pre_ping=True, pool_timeout=2,
                         connect_args=POSTGRES_CONNECT_ARGS)


def bootstrap(
    config: Config | None = None,
    *,
    uow_factory: Callable[[], AbstractUnitOfWork] | None = None,
    counter: RedisCounter | None = None,
    publish: Publish | None = None,
    redis_client: RedisClient | None = None,
) -> Application:
    config = config or Config.from_env()
    engine: Engine | None = None
    if uow_factory is None:
        orm.start_mappers()
        engine = build_engine(config)
        session_factory = sessionmaker(engine, expire_on_commit=False)
        # SQLite has no row locks: one writer at a time, in this process.
        write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        uow_factory = functools.partial(SqlAlchemyUnitOfWork, session_factory, write_lock)
    if redis_client is None and counter is not None:
        redis_client = counter.client
    elif redis_client is None and config.redis_url is not None:
        redis_client = connect(config.redis_url)
    elif redis_client is None:
        redis_client = embedded_redis.start()  # the embedded mode runs the production scripts
    keys = KeySpace(config.redis_key_prefix, config.partitions)
    if counter is None:
        counter = RedisCounter(redis_client, keys, config.idempotency_ttl_seconds,
                               events_channel=None if publish else config.events_channel,
                               refusal_ttl=config.refusal_ttl_seconds)
    if publish is None:
        publish = RedisEventPublisher(redis_client, config.events_channel)
    outbox: Outbox = RedisOutbox(counter.client, counter.keys)
    progress: LedgerProgress = RedisLedgerProgress(counter.client, counter.keys)
    item_locks: ItemLocks = (PostgresItemLocks(engine) if engine is not None
                             and engine.dialect.name == "postgresql" else InProcessItemLocks())
    durability = Durability("sync" if config.durability == "sync" else "async", progress,
                            config.sync_wait_seconds)
    health = HealthChecks(engine, counter, outbox, redis_client, keys)
    sale_queue = RedisSaleQueue(counter.client, counter.keys, counter.events_channel)
    services = Services(
        uow_factory=uow_factory, counter=counter, outbox=outbox, publish=publish,
        movement_events=None if counter.publishes_events else PublishMovements(publish),
        item_locks=item_locks, durability=durability, rebuilds=SharedRebuilds(),
        ledger_wait_seconds=config.ledger_wait_seconds,
        open_reservations_per_buyer=config.max_open_reservations_per_buyer,
        sale_queue=sale_queue, sales=SaleRoom(uow_factory, sale_queue),
        signing=SaleSigning.from_secret(config.sale_secret, required=config.auth == "required"),
        record_drift=health.record_drift)
    # The sales' loop rebuilds items of an open sale that Redis lost (a sale admits again).
    services.sales.restore = functools.partial(sales.restore_items, services)
    bus = MessageBus(services, handlers.COMMAND_HANDLERS)
    return Application(
        config=config, bus=bus, uow_factory=uow_factory, counter=counter, outbox=outbox,
        ledger_progress=progress, durability=durability, publish=publish,
        item_locks=item_locks, health=health,
        engine=engine, redis=redis_client,
        tokens=None if engine is None else TokenStore(engine))
