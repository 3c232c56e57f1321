"""The ``allocation`` command against real PostgreSQL and Redis, as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocation.config import Config
from tests.helpers.ledger import drain, ledger_threads
from tests.helpers.processes import service_env


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    # Synchronous durability unless the test says otherwise: each command's ledger row is
    # written before it returns.
    env = service_env(config if args[0] == "drift" else
                      dataclasses.replace(config, durability="sync"))
    return subprocess.run([sys.executable, "-m", "allocation.entrypoints.cli", *args],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def ledger_worker(service_config: Config) -> Iterator[None]:
    """A ledger writer beside the commands: a sync movement answers once it is written."""
    with ledger_threads(dataclasses.replace(service_config, durability="sync"), 1):
        yield


@pytest.mark.usefixtures("ledger_worker")
def test_operations_and_exit_codes(service_config: Config, namespace: str) -> None:
    assert cli(service_config, "init", namespace, "tee", "5").returncode == 0
    sold = cli(service_config, "decrement", namespace, "tee", "2", "--key", "o1")
    assert (sold.returncode, json.loads(sold.stdout)["available"]) == (0, 3)
    refused = cli(service_config, "decrement", namespace, "tee", "9")
    assert refused.returncode == 1 and "insufficient_stock" in refused.stderr
    assert cli(service_config, "decrement", namespace, "tee", "0").returncode == 2
    assert cli(service_config, "get", namespace, "bad sku").returncode == 2
    assert cli(service_config, "get", namespace, "nope").returncode == 1
    ledger = cli(service_config, "ledger", namespace, "tee").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in ledger] == ["init", "decrement"]
    everything = cli(service_config, "refresh", namespace, "--all")
    assert everything.returncode == 0 and "refreshed 1 items" in everything.stdout


@pytest.mark.usefixtures("ledger_worker")
def test_a_limit_per_buyer_from_the_command_line(service_config: Config, namespace: str) -> None:
    made = cli(service_config, "init", namespace, "cap", "9", "--limit-per-buyer", "2")
    assert (made.returncode, json.loads(made.stdout)["limit_per_buyer"]) == (0, 2)
    unnamed = cli(service_config, "decrement", namespace, "cap", "1")
    assert unnamed.returncode == 1 and "buyer_required" in unnamed.stderr
    assert cli(service_config, "decrement", namespace, "cap", "2", "--buyer", "ann").returncode == 0
    over = cli(service_config, "decrement", namespace, "cap", "1", "--buyer", "ann")
    assert over.returncode == 1 and "limit_exceeded" in over.stderr
    assert cli(service_config, "decrement", namespace, "cap", "1", "--buyer", "a b").returncode == 2
    assert cli(service_config, "limit", namespace, "cap", "0").returncode == 2
    raised = cli(service_config, "limit", namespace, "cap", "3")
    assert (raised.returncode, json.loads(raised.stdout)["limit_per_buyer"]) == (0, 3)
    assert cli(service_config, "decrement", namespace, "cap", "1", "--buyer", "ann").returncode == 0
    lifted = cli(service_config, "limit", namespace, "cap", "none")
    assert json.loads(lifted.stdout) == {
        "namespace": namespace, "sku": "cap", "total": 9, "consumed": 3, "held": 0,
        "available": 6, "limit_per_buyer": None}
    assert cli(service_config, "decrement", namespace, "cap", "1").returncode == 0


def test_import_is_all_or_nothing_and_reports_bad_rows(service_config: Config, namespace: str,
                                                        tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,total\na,1\nb c,2\nd,-1\ne\na,3\n")
    result = cli(service_config, "import", namespace, str(bad))
    assert result.returncode == 2
    for line in ("line 3: invalid sku", "line 4: total must be", "line 5: expected 2 fields",
                 "line 6: sku 'a' appears twice"):
        assert line in result.stderr
    assert cli(service_config, "get", namespace, "a").returncode == 1  # nothing imported

    good = tmp_path / "good.csv"
    good.write_text("".join(f"s{n},{n}\n" for n in range(300)))
    result = cli(service_config, "import", namespace, str(good))
    assert result.returncode == 0 and "imported 300 items" in result.stdout
    assert json.loads(cli(service_config, "get", namespace, "s299").stdout)["total"] == 299

    clash = tmp_path / "clash.csv"
    clash.write_text("new,1\ns1,7\n")
    result = cli(service_config, "import", namespace, str(clash))
    assert result.returncode == 1 and "s1" in result.stderr
    assert cli(service_config, "get", namespace, "new").returncode == 1


def test_drift_reports_and_repairs(service_config: Config, namespace: str) -> None:
    from allocation.bootstrap import bootstrap
    from allocation.domain import commands

    async_config = dataclasses.replace(service_config, durability="async")
    app = bootstrap(async_config)
    for sku in ("a", "b", "c"):
        app.bus.handle(commands.InitInventory(namespace, sku, 10))
    app.bus.handle(commands.Decrement(namespace, "a", 2, "k"))  # unwritten: not drift
    assert cli(async_config, "drift", namespace).returncode == 0
    app.counter.load(namespace, "b", 10, 7, 1)  # Redis says 7 were sold
    found = cli(async_config, "drift", namespace)
    assert found.returncode == 1
    assert "b" in found.stdout and "(10, 0)" in found.stdout and "(10, 7)" in found.stdout
    assert " a " not in found.stdout and "\na " not in found.stdout
    drain(app)
    repaired = cli(async_config, "drift", namespace, "--repair")
    assert repaired.returncode == 0 and "repaired 1 items" in repaired.stdout
    assert cli(async_config, "drift", namespace).returncode == 0
    live = app.counter.read(namespace, "b")
    assert live is not None and live.consumed == 0
