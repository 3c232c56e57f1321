"""Prometheus metrics. Labels are bounded: routes are URL rules, never SKUs or figures."""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from allocation.domain import commands, errors
from allocation.domain.outcome import Outcome
from allocation.service_layer.results import Reservation

REQUESTS = Counter("allocation_http_requests_total", "HTTP requests by route and status",
                   ["method", "route", "status"])
LATENCY = Histogram("allocation_http_request_duration_seconds", "HTTP request latency by route",
                    ["route"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
MOVEMENTS = Counter("allocation_movements_total", "Movements by kind and outcome",
                    ["kind", "outcome"])
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The sale as each process answered it, by namespace (never by sku or buyer: unbounded): the API
# and the consumer each count their own answers, and a query sums them. Counted once per answer
# that did something; a replayed answer counts nothing. Holds are counted where they
# start and end, in the counter (see ``hold_families``): an expiry needs no answer.
SOLD = Counter("allocation_sale_units_sold_total",
               "Units sold: decrements and confirmed holds", ["namespace"])
REFUNDED = Counter("allocation_sale_units_refunded_total", "Units refunded", ["namespace"])
REFUSALS = Counter("allocation_sale_refusals_total", "Sale requests refused, by reason",
                   ["namespace", "reason"])
# livesum: the clients of the processes alive now, added up across workers.
STREAM_CLIENTS = Gauge("allocation_stream_clients", "Stock stream clients connected",
                       ["namespace"], multiprocess_mode="livesum")


def count_request(method: str, route: str, status: int, seconds: float) -> None:
    # Any other method is "other": a client must not be able to add label values at will.
    _requests(method if method in METHODS else "other", route, status).inc()
    _latency(route).observe(seconds)


def count_movement(kind: str, outcome: str) -> None:
    _movements(kind, outcome).inc()


def count_answer(command: commands.Command, answer: object) -> None:
    """The sale figures of a command's answer, whichever entry point gave it (HTTP, pub/sub,
    the command stream): ``answer`` is what the bus returned, or the refusal it raised. A
    decrement sells its qty, a confirm its reservation's units, a refusal counts its reason; a
    replay did nothing new and counts nothing (a reused key is no replay)."""
    namespace = getattr(command, "namespace", "")
    if isinstance(answer, errors.DomainError):
        if not answer.replayed:
            _sale(REFUSALS, namespace, answer.code).inc()
    elif isinstance(answer, Outcome):
        if answer.replayed and answer.status != "idempotency_key_reused":
            return
        if not answer.ok:
            _sale(REFUSALS, namespace, answer.status).inc()
        elif isinstance(command, commands.Decrement):
            _sale(SOLD, namespace).inc(command.qty)
        elif isinstance(command, commands.Refund):
            _sale(REFUNDED, namespace).inc(command.qty)
    elif (isinstance(answer, Reservation) and isinstance(command, commands.ConfirmReservation)
          and answer.state == "confirmed" and not answer.replayed):
        _sale(SOLD, namespace).inc(sum(qty for _, qty in answer.lines))


def stream_clients(namespace: str, change: int) -> None:
    _sale(STREAM_CLIENTS, namespace).inc(change)


# A labelled child looked up once: ``labels()`` costs a lock and a dict build per call, a
# noticeable share of a decrement's CPU at thousands per second.
@functools.lru_cache(maxsize=1024)
def _requests(method: str, route: str, status: int) -> Counter:
    return REQUESTS.labels(method, route, status)


@functools.lru_cache(maxsize=256)
def _latency(route: str) -> Histogram:
    return LATENCY.labels(route)


@functools.lru_cache(maxsize=256)
def _movements(kind: str, outcome: str) -> Counter:
    return MOVEMENTS.labels(kind, outcome)


@functools.lru_cache(maxsize=4096)
def _sale(metric: Counter | Gauge, *labels: str) -> Any:
    """A sale metric's child for these labels, looked up once (``labels`` costs a lock and a
    dict look-up on every sale otherwise)."""
    return metric.labels(*labels)


# What a hold's tally (Counter.hold_tally) shows as: units by kind, and holds ended by how.
HOLD_UNITS = {"hold": ("allocation_sale_units_held", "Units put on hold by reservations"),
              "release": ("allocation_sale_units_released", "Held units released"),
              "expire": ("allocation_sale_units_expired",
                         "Held units that expired (whoever ran into the expiry)")}
HOLD_ENDS = {"confirm": "confirmed", "release": "released", "expire": "expired"}


def hold_families(tally: dict[tuple[str, str], int]) -> list[Metric]:
    """The hold metrics from the counter's tally: read at scrape time, so every process's holds
    are in it once however many workers serve /metrics. Every API server shows the same
    figures: a query takes their max across instances, not their sum."""
    units = {kind: CounterMetricFamily(name, doc, labels=["namespace"])
             for kind, (name, doc) in HOLD_UNITS.items()}
    ended = CounterMetricFamily("allocation_sale_holds_ended",
                                "Holds of an item ended, by how (a reservation holds each of "
                                "its lines)", labels=["namespace", "end"])
    for (namespace, what), count in sorted(tally.items()):
        measure, _, kind = what.partition(":")
        if measure == "units" and kind in units:
            units[kind].add_metric([namespace], count)
        elif measure == "holds" and kind in HOLD_ENDS:
            ended.add_metric([namespace, HOLD_ENDS[kind]], count)
    return [*units.values(), ended]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


# The samples a namespace's figures (``GET /v1/{ns}/stats``) are read from, by what they count.
_UNITS = {"allocation_sale_units_sold_total": "sold",
          "allocation_sale_units_refunded_total": "refunded",
          **{f"{name}_total": kind for kind, (name, _) in HOLD_UNITS.items()}}
_UNITS_SHOWN = {"hold": "held", "release": "released", "expire": "expired"}


def namespace_figures(namespace: str, hold_tally: dict[tuple[str, str], int] | None,
                      drift: dict[str, int] | None = None) -> dict[str, Any]:
    """One namespace's sale figures, read from the very metrics ``exposition`` shows (every
    worker's, in multiprocess mode), none of another namespace's."""
    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    families = [*registry.collect(), *hold_families(hold_tally or {})]
    units = dict.fromkeys(("sold", "refunded", "held", "released", "expired"), 0)
    refusals: dict[str, int] = {}
    ended = dict.fromkeys(HOLD_ENDS.values(), 0)
    streams = 0
    for family in families:
        for sample in family.samples:
            if sample.labels.get("namespace") != namespace:
                continue
            value = int(sample.value)
            if sample.name in _UNITS:
                kind = _UNITS[sample.name]
                units[_UNITS_SHOWN.get(kind, kind)] += value
            elif sample.name == "allocation_sale_refusals_total":
                reason = sample.labels["reason"]
                refusals[reason] = refusals.get(reason, 0) + value
            elif sample.name == "allocation_sale_holds_ended_total":
                ended[sample.labels["end"]] = ended.get(sample.labels["end"], 0) + value
            elif sample.name == "allocation_stream_clients":
                streams += value
    return {"namespace": namespace, "units": units, "holds_ended": ended,
            "refusals": dict(sorted(refusals.items())), "stream_clients": streams,
            "drift_items": None if drift is None else drift.get(namespace, 0)}


# A sale's queue, read at scrape time from the server's figures (at most a second old).
SALE_GAUGES = (("waiting", "Tickets waiting in the sale's queue"),
               ("admitted", "Passes outstanding (given, neither used nor expired)"),
               ("passes_used", "Passes used by a sale or a hold"),
               ("passes_expired", "Passes that expired unused"),
               ("available", "Units the sale's skus have available"))
SaleFigures = dict[tuple[str, str], dict[str, int]]  # (namespace, sale) -> gauge -> value


def sale_lines(figures: SaleFigures) -> list[str]:
    lines: list[str] = []
    for gauge, about in SALE_GAUGES:
        lines += [f"# HELP allocation_sale_{gauge} {about}",
                  f"# TYPE allocation_sale_{gauge} gauge"]
        lines += [f'allocation_sale_{gauge}{{namespace="{ns}",sale="{sale}"}} {values[gauge]}'
                  for (ns, sale), values in sorted(figures.items()) if gauge in values]
    return lines


def exposition(backlog: tuple[int, float] | None = None,
               drift: dict[str, int] | None = None,
               redis_memory: dict[str, int] | None = None,
               hold_tally: dict[tuple[str, str], int] | None = None,
               sales: SaleFigures | None = None) -> tuple[bytes, str]:
    """The metrics text; across all worker processes when there are several (multiprocess mode).
    The ledger backlog, drift counts and holds are read at scrape time, from the outbox, from
    what the last ``allocation drift`` run stored, and from the counter's tally."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest()
    if hold_tally is not None:
        holds = CollectorRegistry(auto_describe=False)
        holds.register(_Families(hold_families(hold_tally)))
        text += generate_latest(holds)
    lines: list[str] = []
    if backlog is not None:
        lines += ["# HELP allocation_ledger_lag_entries Movements acknowledged, not yet in the "
                  "ledger", "# TYPE allocation_ledger_lag_entries gauge",
                  f"allocation_ledger_lag_entries {backlog[0]}",
                  "# HELP allocation_ledger_lag_seconds Age of the oldest unwritten movement",
                  "# TYPE allocation_ledger_lag_seconds gauge",
                  f"allocation_ledger_lag_seconds {backlog[1]:.3f}"]
    if drift:
        lines += ["# HELP allocation_drift_items Items whose Redis figures differ, at the last "
                  "drift check", "# TYPE allocation_drift_items gauge"]
        lines += [f'allocation_drift_items{{namespace="{ns}"}} {count}'
                  for ns, count in sorted(drift.items())]
    if redis_memory is not None:
        lines += ["# HELP allocation_redis_memory_used_bytes Memory Redis uses (INFO memory)",
                  "# TYPE allocation_redis_memory_used_bytes gauge",
                  f"allocation_redis_memory_used_bytes {redis_memory['used']}",
                  "# HELP allocation_redis_memory_max_bytes Redis's maxmemory (0: no limit)",
                  "# TYPE allocation_redis_memory_max_bytes gauge",
                  f"allocation_redis_memory_max_bytes {redis_memory['max']}"]
    if sales:
        lines += sale_lines(sales)
    return text + "".join(f"{line}\n" for line in lines).encode(), CONTENT_TYPE_LATEST
