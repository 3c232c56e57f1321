"""The ``allocation`` command against real PostgreSQL and Redis, as a user runs it."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.domain.outcome import Figures
from tests.helpers.cli_runs import run_cli
from tests.helpers.ledger import drain, ledger_threads
from tests.helpers.processes import PrivateRedis, allocation_command, service_env, wait_until


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    # Synchronous durability unless the test says otherwise: each command's ledger row is
    # written before it returns.
    env = service_env(config if args[0] == "drift" else
                      dataclasses.replace(config, durability="sync"))
    return run_cli(list(args), env)


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
    app.counter.load(namespace, "b", Figures(10, 7, seq=1))  # Redis says 7 were sold
    found = cli(async_config, "drift", namespace)
    assert found.returncode == 1
    assert "b" in found.stdout and "(10, 0, 0)" in found.stdout and "(10, 7, 0)" in found.stdout
    assert " a " not in found.stdout and "\na " not in found.stdout
    drain(app)
    repaired = cli(async_config, "drift", namespace, "--repair")
    assert repaired.returncode == 0 and "repaired 1 items" in repaired.stdout
    assert cli(async_config, "drift", namespace).returncode == 0
    live = app.counter.read(namespace, "b")
    assert live is not None and live.consumed == 0


def test_drift_reports_items_missing_from_redis_and_repair_restores_them(
        service_config: Config, namespace: str) -> None:
    """After a failover or a restore Redis may lack items: what drift is run for."""
    async_config = dataclasses.replace(service_config, durability="async")
    app = bootstrap(async_config)
    for sku in ("a", "b", "c"):
        app.bus.handle(commands.InitInventory(namespace, sku, 10))
    made = app.bus.handle(commands.Reserve(namespace, (("b", 3),), "r", 600, "ann"))
    drain(app)
    keys = app.health.keys
    assert app.redis is not None
    app.redis.delete(keys.item(namespace, "b"), keys.holds(namespace, "b"),
                     keys.expiries(namespace, "b"), keys.buyers(namespace, "b"))  # lost

    found = cli(async_config, "drift", namespace)
    assert found.returncode == 1, found.stdout
    assert [line.split()[0] for line in found.stdout.splitlines()[1:]] == ["b"]
    assert "(10, 0, 3)" in found.stdout and "missing" in found.stdout
    repaired = cli(async_config, "drift", namespace, "--repair")
    assert repaired.returncode == 0 and "repaired 1 items" in repaired.stdout
    live = app.counter.read(namespace, "b")
    assert live is not None and (live.total, live.consumed, live.held) == (10, 0, 3)
    assert app.bus.handle(commands.ConfirmReservation(namespace, made.id)).state == "confirmed"
    assert cli(async_config, "drift", namespace).returncode == 0


def test_drift_is_not_a_due_hold_that_no_sweeper_ended(own_config: Config,
                                                       namespace: str) -> None:
    """A hold past its expiry that nothing has ended yet: the check's own read ends it (as
    every step touching the item does), and that end is not drift, on the first check either.
    (A key space of its own: the sweeper's due index may list the item a while after, and a
    sweep test counts what it visits.)"""
    async_config = dataclasses.replace(own_config, durability="async")
    app = bootstrap(async_config)
    app.bus.handle(commands.InitInventory(namespace, "a", 10))
    app.bus.handle(commands.Reserve(namespace, (("a", 2),), "r", 1, None))
    drain(app)  # the record holds 2
    time.sleep(1.1)  # due; no sweeper runs
    found = cli(async_config, "drift", namespace)
    assert found.returncode == 0, found.stdout
    live = app.counter.read(namespace, "a")
    assert live is not None and (live.total, live.consumed, live.held) == (10, 0, 0)
    assert cli(async_config, "drift", namespace).returncode == 0


def shown(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert isinstance(found, dict)
    return found


def figures(config: Config, namespace: str, sku: str) -> tuple[int, int, int]:
    item = shown(cli(config, "get", namespace, sku))
    return item["consumed"], item["held"], item["available"]


@pytest.mark.usefixtures("ledger_worker")
def test_reservations_from_the_command_line(service_config: Config, namespace: str) -> None:
    config = service_config
    shown(cli(config, "init", namespace, "a", "5"))
    shown(cli(config, "init", namespace, "b", "1"))
    made = shown(cli(config, "reserve", namespace, "a:1", "b:1", "a:1", "--ttl", "60",
                     "--buyer", "ann", "--key", "cart-1"))
    assert (made["namespace"], made["state"], made["lines"], made["buyer"]) == (
        namespace, "held", [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], "ann")
    assert made["created_at"].endswith("+00:00") and made["expires_at"] > made["created_at"]
    again = cli(config, "reserve", namespace, "a:1", "b:1", "a:1", "--ttl", "60", "--buyer",
                "ann", "--key", "cart-1")
    assert shown(again) == made  # the same key and request: the same reservation
    assert (figures(config, namespace, "a"), figures(config, namespace, "b")) == (
        (0, 2, 3), (0, 1, 0))

    short = cli(config, "reserve", namespace, "a:1", "b:1")
    assert short.returncode == 1 and short.stderr.startswith("refused: insufficient_stock: b")
    unknown = cli(config, "reserve", namespace, "nope:1")
    assert unknown.returncode == 1 and "refused: not_found:" in unknown.stderr
    reused = cli(config, "reserve", namespace, "a:1", "--key", "cart-1")
    assert reused.returncode == 1 and "refused: idempotency_key_reused:" in reused.stderr

    rid = made["id"]
    confirmed = shown(cli(config, "confirm", namespace, rid))
    assert (confirmed["id"], confirmed["state"]) == (rid, "confirmed")
    assert shown(cli(config, "confirm", namespace, rid)) == confirmed  # repeats safely
    late = cli(config, "release", namespace, rid)
    assert late.returncode == 1 and "refused: reservation_confirmed:" in late.stderr

    other = shown(cli(config, "reserve", namespace, "a:3"))
    released = shown(cli(config, "release", namespace, other["id"]))
    assert (released["id"], released["state"]) == (other["id"], "released")
    refused = cli(config, "confirm", namespace, other["id"])
    assert refused.returncode == 1 and "refused: reservation_released:" in refused.stderr
    assert (figures(config, namespace, "a"), figures(config, namespace, "b")) == (
        (2, 0, 3), (1, 0, 0))
    assert cli(config, "confirm", namespace, "0.nope").returncode == 1
    ledger = cli(config, "ledger", namespace, "a").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in ledger] == [
        "init", "hold", "confirm", "hold", "release"]


@pytest.mark.usefixtures("ledger_worker")
def test_sweep_once_ends_a_due_hold_nobody_touches(service_config: Config,
                                                   namespace: str) -> None:
    shown(cli(service_config, "init", namespace, "s", "3"))
    made = shown(cli(service_config, "reserve", namespace, "s:2", "--ttl", "1"))
    assert (made["state"], made["lines"]) == ("held", [{"sku": "s", "qty": 2}])
    passes: list[str] = []

    def swept() -> bool:
        result = cli(service_config, "sweep", "--once")
        assert result.returncode == 0, result.stderr
        passes.append(result.stdout.strip())
        return int(passes[-1].split()[1]) >= 1  # the item, once its hold was due

    # Nothing reads the item meanwhile: a read would end the due hold itself.
    wait_until(swept, 30, "a sweep to end the due hold")
    assert all(p.startswith("visited ") and p.endswith(" items") for p in passes)
    assert figures(service_config, namespace, "s") == (0, 0, 3)
    late = cli(service_config, "confirm", namespace, made["id"])
    assert late.returncode == 1 and "refused: reservation_expired:" in late.stderr

    wait_until(lambda: ledger_kinds(service_config, namespace, "s") == [
        "init", "hold", "expire"], 30, "the expiry in the ledger")


def ledger_kinds(config: Config, namespace: str, sku: str) -> list[str]:
    """From the database alone: the command does not read the item's live figures (a read
    would end a due hold itself)."""
    lines = cli(config, "ledger", namespace, sku).stdout.splitlines()
    return [json.loads(line)["kind"] for line in lines]


def sweeper(config: Config, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(allocation_command("sweep", "--interval", "0.1"),
                                env=service_env(config), stdout=subprocess.DEVNULL,
                                stderr=out)


@pytest.mark.usefixtures("ledger_worker")
@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_the_sweeper_ends_due_holds_until_told_to_stop(
        service_config: Config, namespace: str, tmp_path: Path, stop_with: signal.Signals
) -> None:
    process = sweeper(service_config, tmp_path / "sweeper.log")
    try:
        shown(cli(service_config, "init", namespace, "s", "3"))
        shown(cli(service_config, "reserve", namespace, "s:1", "--ttl", "1"))
        wait_until(lambda: ledger_kinds(service_config, namespace, "s") == [
            "init", "hold", "expire"], 30, "the sweeper to end the due hold")
        assert figures(service_config, namespace, "s") == (0, 0, 3)
        process.send_signal(stop_with)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "sweeper.log").read_text()
    assert "sweeper stopped" in log and "Traceback" not in log


def test_the_sweeper_rides_out_a_redis_outage(service_config: Config, namespace: str,
                                              tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    config = dataclasses.replace(service_config, redis_url=server.url)
    log = tmp_path / "sweeper.log"
    process = sweeper(config, log)
    try:
        wait_until(lambda: "sweeping due holds" in log.read_text(), 30, "the sweeper to start")
        server.stop()
        wait_until(lambda: "sweeper waiting for redis" in log.read_text(), 30,
                   "the sweeper to notice the outage")
        assert process.poll() is None
        server.start()  # empty: the item is made after it
        app = bootstrap(config)
        app.bus.handle(commands.InitInventory(namespace, "s", 3))
        app.bus.handle(commands.Reserve(namespace, (("s", 2),), "k", ttl_seconds=1))

        def ended() -> bool:
            item = app.counter.read(namespace, "s")
            return item is not None and item.held == 0

        wait_until(ended, 30, "the sweeper, back, to end the due hold")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.stop()
