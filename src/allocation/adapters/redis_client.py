"""One Redis client for either deployment: a single Redis (``redis://``, ``rediss://``) or a
Redis Cluster (``redis+cluster://host:port[,host:port...]``, any nodes of it)."""

from __future__ import annotations

from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster

# The commands this service uses, as redis.Redis declares them. RedisCluster serves the same
# ones (scripts route by their keys), but the type stubs do not describe all of them.
RedisClient: TypeAlias = "redis.Redis[bytes]"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


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
