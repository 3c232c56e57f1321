"""A rebuilt item keeps its sale gate: after Redis lost a gated item, every rebuild path (one
item, one from the outbox's figures, a namespace refresh, drift's repair) loads the open sale's
gate from the record with it, so the counter's own script still refuses a decrement without that
sale's pass (whatever a process's in-memory gate set knows)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.domain.outcome import Figures


@pytest.fixture
def app(service_config: Config) -> Iterator[Application]:
    # Async mode, no ledger worker: a movement stays in the outbox (the "outbox" path below).
    app = bootstrap(dataclasses.replace(service_config, durability="async"))
    yield app
    assert app.engine is not None
    app.engine.dispose()


SKUS = ("gated", "free", "other")


def _one(app: Application, namespace: str) -> None:
    for sku in SKUS:
        app.bus.handle(commands.Refresh(namespace, sku))


def _from_outbox(app: Application, namespace: str) -> None:
    # A movement Redis recorded that the ledger does not hold yet (no ledger worker here):
    # the rebuild takes the outbox's figures, and the gate must come with them too.
    for sku in SKUS:
        app.counter.load(namespace, sku, Figures(10, 0, seq=1))
        assert app.counter.apply(namespace, sku, "adjust", 1, None, record=True).ok
        app.counter.forget(namespace, sku)
        app.bus.handle(commands.Refresh(namespace, sku))
    figures = app.counter.read(namespace, "gated")
    assert figures is not None and figures.total == 11  # from the outbox, not the ledger


def _namespace(app: Application, namespace: str) -> None:
    assert app.bus.handle(commands.RefreshAll(namespace, batch_size=2)).refreshed == 3


def _drift(app: Application, namespace: str) -> None:
    assert app.bus.handle(commands.CheckDrift(namespace, repair=True)).repaired == 3


@pytest.mark.parametrize("rebuild", [_one, _from_outbox, _namespace, _drift],
                         ids=["one", "outbox", "namespace", "drift"])
def test_a_rebuilt_item_keeps_its_open_sales_gate(
        app: Application, namespace: str, rebuild: Callable[[Application, str], None]) -> None:
    for sku in SKUS:
        app.bus.handle(commands.InitInventory(namespace, sku, 10))
    app.bus.handle(commands.PutSale(namespace, "drop", ("gated", "other")))
    app.bus.handle(commands.CloseSale(namespace, "drop"))
    app.bus.handle(commands.PutSale(namespace, "live", ("gated",)))
    refused = app.counter.apply(namespace, "gated", "decrement", 1, None)
    assert refused.status == "pass_required"  # the gate as the sale wrote it

    for sku in SKUS:  # Redis lost the items (a FLUSHDB, a failover)
        app.counter.forget(namespace, sku)
    rebuild(app, namespace)

    again = app.counter.apply(namespace, "gated", "decrement", 1, "k1")
    assert again.status == "pass_required"  # straight through the script, no pass: refused
    assert app.counter.apply(namespace, "gated", "decrement", 1, "k2", sale="live").ok
    # Neither an ungated item nor one whose sale closed gained a gate.
    assert app.counter.apply(namespace, "free", "decrement", 1, "k3").ok
    assert app.counter.apply(namespace, "other", "decrement", 1, "k4").ok


@pytest.mark.parametrize("rebuild", [_one, _namespace], ids=["one", "namespace"])
def test_a_sale_closed_or_opened_while_the_rebuild_loads_has_the_last_word(
        app: Application, namespace: str, rebuild: Callable[[Application, str], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild read the record (gated by "live", "free" ungated), then, before its load,
    "live" closed and "next" opened on "free": each dropped or set its gate already, so the
    load must not bring back the closed one's nor drop the new one's."""
    for sku in SKUS:
        app.bus.handle(commands.InitInventory(namespace, sku, 10))
    app.bus.handle(commands.PutSale(namespace, "live", ("gated",)))
    for sku in SKUS:
        app.counter.forget(namespace, sku)
    load = app.counter.restore_many

    def meanwhile(ns: str, items: list[object]) -> None:
        if app.counter.read(namespace, "free") is None and not changed:
            changed.append(True)
            app.bus.handle(commands.CloseSale(namespace, "live"))
            app.bus.handle(commands.PutSale(namespace, "next", ("free",)))
        load(ns, items)  # type: ignore[arg-type]

    changed: list[bool] = []
    monkeypatch.setattr(app.counter, "restore_many", meanwhile)
    rebuild(app, namespace)
    assert changed

    assert app.counter.apply(namespace, "gated", "decrement", 1, "k1").ok  # "live" closed
    assert app.counter.apply(namespace, "free", "decrement", 1, "k2").status == "pass_required"
    assert app.counter.apply(namespace, "free", "decrement", 1, "k3", sale="next").ok
