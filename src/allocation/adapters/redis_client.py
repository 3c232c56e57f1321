"""One Redis client for either deployment: a single Redis (``redis://``, ``rediss://``) or a
Redis Cluster (``redis+cluster://host:port[,host:port...]``, any nodes of it)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster

from allocation.domain import errors
from allocation.runtime.supervised import Backoff, LoopHealth, supervise

# The commands this service uses, as redis.Redis declares them. RedisCluster serves the same
# ones (scripts route by their keys), but the type stubs do not describe all of them.
RedisClient: TypeAlias = "redis.Redis[bytes]"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
logger = logging.getLogger(__name__)
# Set as a process that started its own Redis exits, before that Redis stops
# (``embedded_redis``): its listeners then end quietly rather than report Redis gone.
EXITING = threading.Event()


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str) -> RedisClient:
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, health_check_interval=30, socket_timeout=5,
                                    socket_connect_timeout=2)
    parts = urlsplit(url)
    nodes = [ClusterNode(host, int(port or 6379)) for host, _, port in
             (node.rpartition(":") for node in parts.netloc.rsplit("@", 1)[-1].split(","))]
    cluster: RedisCluster[bytes] = RedisCluster(startup_nodes=nodes, password=parts.password,
                           ssl=parts.scheme.startswith("rediss"), socket_timeout=5,
                           socket_connect_timeout=2)
    return cast("redis.Redis[bytes]", cluster)


def read_group(client: RedisClient, group: str, consumer: str, stream: str, start: str,
               count: int, block: int | None = None, via: Any = None) -> Any:
    """XREADGROUP of one stream, sent by ``via`` (one of ``client``'s pipelines) or by the
    client itself, with redis-py's reply. On a cluster it goes straight to the stream's node:
    redis-py cannot tell this command's keys itself and asks its default node for them (COMMAND
    GETKEYS), so once that node died every read failed until the process restarted."""
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block is not None:
        args += ["BLOCK", block]
    args += ["STREAMS", stream, start]
    sender = client if via is None else via
    if isinstance(client, RedisCluster):
        return sender.execute_command(*args, target_nodes=client.get_node_from_key(stream))
    return sender.execute_command(*args)


def follow_channel(client: RedisClient, channel: str, heard: Callable[[bytes | str], None],
                   what: str, stopping: threading.Event | None = None) -> None:
    """Hand each message of ``channel`` to ``heard`` until ``stopping`` (by default ``EXITING``,
    which only the exit hook sets: for as long as the process lives; run it on a thread of its
    own), resubscribing with a backoff after any failure: pub/sub is at-most-once, so the
    callers read the truth elsewhere when a message is lost. Even redis-py's parser failing
    with AttributeError, on a connection a failover closed under it, must not end the
    thread."""
    stopping = stopping or EXITING
    health = LoopHealth(what)

    def session() -> float:
        with contextlib.closing(client.pubsub(ignore_subscribe_messages=True)) as pubsub:
            pubsub.subscribe(channel)
            health.up()
            while not stopping.is_set():
                # A bounded read: an idle channel must not run into the client's socket
                # timeout and drop the subscription.
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    heard(message["data"])
        return 0.0

    def failed(exc: BaseException, delay: float, _: int) -> None:
        if not stopping.is_set():  # at exit an embedded Redis stops first: not news
            logger.warning("%s channel: %s; resubscribing", what, exc)

    supervise(session, stopping, Backoff(0.05, 2.0), failed=failed, health=health)


class _Unavailable:
    """Raises ``Unavailable`` for a lost connection (a class: the generator a
    ``contextlib.contextmanager`` builds per use costs a movement a few microseconds)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise errors.Unavailable("redis unavailable") from exc


_UNAVAILABLE = _Unavailable()


def unavailable_on_connection_error() -> _Unavailable:
    return _UNAVAILABLE
