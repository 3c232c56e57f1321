"""``allocation sale create|show|close`` against real PostgreSQL and Redis, as a user runs it."""

from __future__ import annotations

import json
import subprocess

from allocation.config import Config
from tests.helpers.cli_runs import run_cli
from tests.helpers.processes import service_env


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), service_env(config))


def test_create_show_close_and_exit_codes(service_config: Config, namespace: str) -> None:
    assert cli(service_config, "init", namespace, "tee", "5").returncode == 0
    made = cli(service_config, "sale", "create", namespace, "drop", "--sku", "tee",
               "--opens-at", "2030-01-01T00:00:00+00:00", "--max-admitted", "3")
    assert made.returncode == 0, made.stderr
    sale = json.loads(made.stdout)
    assert (sale["state"], sale["skus"], sale["max_admitted"], sale["available"]) == (
        "scheduled", ["tee"], 3, 5)
    shown = json.loads(cli(service_config, "sale", "show", namespace, "drop").stdout)
    assert shown["opens_at"] == "2030-01-01T00:00:00+00:00"
    closed = cli(service_config, "sale", "close", namespace, "drop")
    assert json.loads(closed.stdout)["state"] == "closed"
    unknown = cli(service_config, "sale", "create", namespace, "other", "--sku", "nope")
    assert unknown.returncode == 1 and "not_found" in unknown.stderr
    assert cli(service_config, "sale", "show", namespace, "bad name").returncode == 2
    for opens_at in ("tomorrow", "2030-01-01T00:00:00", "9999-12-31T23:59:59-23:59"):
        refused = cli(service_config, "sale", "create", namespace, "x", "--sku", "tee",
                      "--opens-at", opens_at)
        # The HTTP API's check (400 naming opens_at), as a usage error: no traceback.
        assert (refused.returncode, "Traceback" in refused.stderr) == (2, False), refused.stderr
        assert "opens_at" in refused.stderr, refused.stderr
    assert cli(service_config, "sale", "create", namespace, "x", "--sku", "tee",
               "--admit-factor", "20").returncode == 2
    assert cli(service_config, "sale", "show", namespace, "nope").returncode == 1
