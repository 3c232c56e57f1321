"""A user's mistakes on the ``allocation`` command: a line saying what is wrong and the exit code
README gives (2 usage or input, 3 a dependency away), never a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from allocation.config import Config
from tests.helpers.cli_runs import run_cli
from tests.helpers.processes import service_env

# Nothing listens on port 1: the database is away.
DOWN = "postgresql://postgres@127.0.0.1:1/allocation"


def refused(done: subprocess.CompletedProcess[str], code: int, *said: str) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    for words in said:
        assert words in done.stderr


def plain_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "AUTH", "DURABILITY")}
    return {**env, **settings}


@pytest.mark.parametrize(("setting", "value"), [
    ("REDIS_URL", "notaurl"), ("DURABILITY", "bogus"), ("AUTH", "maybe"),
    ("STREAMS_PER_TOKEN", "-1"), ("REDIS_PARTITIONS", "many"), ("SYNC_WAIT_SECONDS", "soon"),
    # Numbers that parse but cannot work: a TTL of 0 failed every movement, 0 partitions
    # divided by zero on every request, a negative timeout timed every body out.
    ("IDEMPOTENCY_TTL_SECONDS", "0"), ("REDIS_PARTITIONS", "0"), ("BODY_TIMEOUT_SECONDS", "-1"),
    ("SYNC_WAIT_SECONDS", "nan"), ("MAX_OPEN_RESERVATIONS_PER_BUYER", "-1")])
@pytest.mark.parametrize("command", [["get", "shop", "a"], ["token", "list"], ["migrate"],
                                     ["serve"]])
def test_a_bad_setting_is_a_usage_error_naming_it(setting: str, value: str,
                                                  command: list[str]) -> None:
    done = run_cli(command, plain_env(**{setting: value}))
    refused(done, 2, setting, repr(value))
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["token", "list"], ["token", "revoke", "abc"],
                                     ["token", "create", "shop", "--role", "read"],
                                     ["migrate"]])
def test_database_commands_with_the_database_away_exit_3(command: list[str]) -> None:
    done = run_cli(command, plain_env(DATABASE_URL=DOWN))
    refused(done, 3, "unavailable: database unavailable")


def test_token_commands_on_an_unmigrated_database_say_to_migrate(tmp_path: Path) -> None:
    done = run_cli(["token", "list"], plain_env(DATABASE_URL=f"sqlite:///{tmp_path}/new.db"))
    refused(done, 3, "unmigrated", "allocation migrate")


@pytest.mark.parametrize("name", ["two\nlines", "a\ttab", "bell\x07", "sep\u2028arator"])
def test_a_token_name_with_a_control_character_is_refused(name: str) -> None:
    done = run_cli(["token", "create", "shop", "--role", "read", "--name", name],
                   plain_env(DATABASE_URL=DOWN))
    refused(done, 2, "--name")


def test_import_refuses_bytes_that_are_not_utf8_naming_the_line(
        service_config: Config, namespace: str, tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"sku,total\nok,1\ncaf\xe9,2\n")
    done = run_cli(["import", namespace, str(latin)], service_env(service_config))
    refused(done, 2, "latin.csv: line 3", "UTF-8")


def test_import_reads_a_byte_order_mark_as_no_part_of_the_first_sku(
        service_config: Config, namespace: str, tmp_path: Path) -> None:
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfbom1,4\r\nbom2,5\r\n")
    env = service_env(dataclasses.replace(service_config, durability="sync"))
    done = run_cli(["import", namespace, str(excel)], env)
    assert done.returncode == 0, done.stderr
    got = run_cli(["get", namespace, "bom1"], env)
    assert (got.returncode, json.loads(got.stdout)["total"]) == (0, 4), got.stderr


@pytest.mark.parametrize(("options", "named"), [
    (["--port", "99999"], "--port"), (["--port", "0"], "--port"),
    (["--host", "999.1.1.1"], "--host"), (["--host", "localhost"], "--host"),
    (["--host", "192.0.2.1"], "--host"),  # an address of no interface here
    (["--threads", "0"], "--threads"), (["--workers", "0"], "--workers")])
def test_serve_refuses_bad_options_before_starting(options: list[str], named: str) -> None:
    refused(run_cli(["serve", *options], plain_env()), 2, named)


def test_serve_and_consume_refuse_a_port_another_process_listens_on() -> None:
    with socket.socket() as other:
        # As granian's workers bind: a second server with SO_REUSEPORT would share it.
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        refused(run_cli(["serve", "--port", port], plain_env()), 2,
                f"127.0.0.1:{port}", "another process listens there")
        refused(run_cli(["consume", "--health-port", port],
                        plain_env(REDIS_URL="redis://127.0.0.1:1/0")), 2,
                "--health-port", "another process listens there")
