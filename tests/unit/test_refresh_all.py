"""A namespace refresh's batches: a page cut into batches of LOCKED_AT_ONCE, a few in flight,
and none begun once one is known to have failed (each fences its items while it runs)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace, TracebackType
from typing import Any, cast

import pytest

from allocation.domain import commands, errors
from allocation.service_layer import rebuild
from allocation.service_layer.services import Services


class Pool:
    """An executor that runs nothing: each batch's future is done as it is submitted, failed
    where the test says so."""

    def __init__(self, outcome: Callable[[int], BaseException | None]) -> None:
        self.outcome = outcome
        self.batches: list[list[str]] = []

    def __call__(self, *_: Any, **__: Any) -> Pool:
        return self

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def submit(self, _: Any, __: Any, ___: Any, ____: str, skus: list[str]) -> Future[Any]:
        self.batches.append(skus)
        future: Future[Any] = Future()
        failure = self.outcome(len(self.batches))
        if failure is not None:
            future.set_exception(failure)
        else:
            future.set_result({})
        return future


class Items:
    def __init__(self, skus: list[str]) -> None:
        self.skus = skus

    def sku_page(self, namespace: str, after: str | None, limit: int) -> list[str]:
        rest = [sku for sku in self.skus if after is None or sku > after]
        return rest[:limit]


class Unit:
    def __init__(self, items: Items) -> None:
        self.items = items

    def __enter__(self) -> Unit:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def services_of(skus: list[str]) -> Services:
    items = Items(skus)
    return cast(Services, SimpleNamespace(uow_factory=lambda: Unit(items)))


def test_a_page_is_cut_into_batches_and_counted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(lambda n: None)
    monkeypatch.setattr(rebuild, "ThreadPoolExecutor", pool)
    skus = [f"s{n:05}" for n in range(2_500)]
    done = rebuild.refresh_all(commands.RefreshAll("ns", batch_size=2_500, batches=1),
                               services_of(skus))
    assert [len(b) for b in pool.batches] == [1_000, 1_000, 500]
    assert (done.refreshed, done.after) == (2_500, "s02499")


def test_no_batch_begins_once_one_has_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(lambda n: errors.Unavailable("the ledger is behind") if n == 2 else None)
    monkeypatch.setattr(rebuild, "ThreadPoolExecutor", pool)
    with pytest.raises(errors.Unavailable):
        rebuild.refresh_all(commands.RefreshAll("ns", batch_size=10_000),
                            services_of([f"s{n:05}" for n in range(10_000)]))
    assert len(pool.batches) == 2  # the third would fence its items for nothing
