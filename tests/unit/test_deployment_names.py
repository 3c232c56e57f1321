"""Two deployments on one Redis server never share a channel or a stream: the default names
carry the key prefix and the database number, and set names are taken as given."""

from __future__ import annotations

import itertools

import pytest

from allocation.config import Config, deployment_names, redis_db


def names(**env: str) -> tuple[str, str, str]:
    config = Config.from_env(env)
    return config.commands_channel, config.events_channel, config.commands_stream


def test_the_default_deployment_keeps_its_names() -> None:
    assert names(REDIS_URL="redis://localhost:6379/0") == (
        "inventory:commands", "inventory:events", "inventory:commands:stream")
    assert names() == names(REDIS_URL="redis://localhost:6379")


def test_another_prefix_or_database_has_names_of_its_own() -> None:
    assert names(REDIS_URL="redis://h:6379/0", REDIS_KEY_PREFIX="shop") == (
        "inventory:shop@0:commands", "inventory:shop@0:events", "shop:commands:stream")
    assert names(REDIS_URL="redis://h:6379/3")[:2] == (
        "inventory:inv@3:commands", "inventory:inv@3:events")


@pytest.mark.parametrize("url, db", [
    ("redis://h:6379/2", 2), ("redis://h:6379", 0), ("rediss://h/5", 5),
    ("redis://h:6379/1?db=4", 4), ("unix:///tmp/redis.sock?db=7", 7),
    ("unix:///tmp/6", 0), ("redis+cluster://h:7000,h:7001", 0), (None, 0),
])
def test_the_database_number_is_read_as_redis_py_reads_it(url: str | None, db: int) -> None:
    assert redis_db(url) == db


def test_no_two_deployments_share_a_name() -> None:
    deployments = list(itertools.product(["inv", "shop", "shop:1", "shop@1", "a:b"],
                                         ["redis://h/0", "redis://h/1", "redis://h/10"]))
    channels = [deployment_names(prefix, url)[:2] for prefix, url in deployments]
    assert len({c for pair in channels for c in pair}) == 2 * len(deployments)
    streams = {(redis_db(url), deployment_names(prefix, url)[2]) for prefix, url in deployments}
    assert len(streams) == len(deployments)


def test_names_set_in_the_environment_are_taken_as_given() -> None:
    assert names(REDIS_URL="redis://h/2", REDIS_KEY_PREFIX="shop",
                 COMMANDS_CHANNEL="orders", EVENTS_CHANNEL="answers",
                 COMMANDS_STREAM="orders:stream") == ("orders", "answers", "orders:stream")
