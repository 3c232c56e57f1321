"""Sales in PostgreSQL (migration 0007, sql_sale_repository.py) under the real application."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.errors import SkuGated


@pytest.fixture
def app(service_config: Config) -> Iterator[Application]:
    app = bootstrap(service_config)
    yield app
    assert app.engine is not None
    app.engine.dispose()


def test_a_sale_is_kept_and_read_back(app: Application, namespace: str) -> None:
    for sku in ("a", "b"):
        app.bus.handle(commands.InitInventory(namespace, sku, 5))
    made = app.bus.handle(commands.PutSale(namespace, "drop", ("b", "a"), 1_900_000_000_000,
                                           1.5, 60, 40))
    assert made.created
    with app.uow_factory() as uow:
        kept = uow.sales.get(namespace, "drop")
    assert kept == made.sale
    assert kept is not None and kept.skus == ("b", "a")
    app.bus.handle(commands.CloseSale(namespace, "drop"))
    with app.uow_factory() as uow:
        closed = uow.sales.get(namespace, "drop")
        assert closed is not None and closed.closed
        assert uow.sales.gating(namespace, ["a", "b"]) == {}
        assert all(s.namespace != namespace for s in uow.sales.open_sales())


def test_two_sales_racing_for_a_sku_one_wins(app: Application, namespace: str) -> None:
    for sku in ("a", "b", "c"):
        app.bus.handle(commands.InitInventory(namespace, sku, 5))
    start = threading.Barrier(2)
    answers: list[object] = []

    def put(name: str, skus: tuple[str, ...]) -> None:
        start.wait()
        try:
            answers.append(app.bus.handle(commands.PutSale(namespace, name, skus)))
        except (SkuGated, errors.AlreadyExists) as refused:
            answers.append(refused)

    threads = [threading.Thread(target=put, args=args)
               for args in (("one", ("a", "b")), ("two", ("b", "c")))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(type(a).__name__ for a in answers) == ["SaleAnswer", "SkuGated"]
    with app.uow_factory() as uow:
        assert len(uow.sales.gating(namespace, ["a", "b", "c"])) == 2


def test_identical_puts_at_once_make_it_once_and_find_it_the_same(
        app: Application, service_config: Config, namespace: str) -> None:
    """API.md: a PUT of the same sale is 200. Racing ones were 409 (already_exists, or
    sku_gated naming the sale being made): whichever loses answers the winner's sale."""
    other = bootstrap(service_config)  # two processes' worth of record calls (4 each)
    try:
        for sku in ("a", "b"):
            app.bus.handle(commands.InitInventory(namespace, sku, 5))
        for round_ in range(5):
            name = f"drop{round_}"
            start = threading.Barrier(8)
            answers: list[object] = []

            def put(one: Application, skus: tuple[str, ...], name: str = name,
                    start: threading.Barrier = start, answers: list[object] = answers) -> None:
                start.wait()
                try:
                    answers.append(one.bus.handle(commands.PutSale(
                        namespace, name, skus, 1_900_000_000_000)))
                except Exception as refused:  # noqa: BLE001 - the assertion names it
                    answers.append(refused)

            threads = [threading.Thread(target=put, args=(
                (app, other)[n % 2], ("a", "b") if n % 3 else ("b", "a"))) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert all(type(a).__name__ == "SaleAnswer" for a in answers), answers
            assert sum(a.created for a in answers) == 1  # type: ignore[attr-defined]
            app.bus.handle(commands.CloseSale(namespace, name))
    finally:
        assert other.engine is not None
        other.engine.dispose()
