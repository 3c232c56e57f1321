"""Prometheus metrics. Labels are bounded: routes are URL rules, never SKUs or figures."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("allocation_http_requests_total", "HTTP requests by route and status",
                   ["method", "route", "status"])
LATENCY = Histogram("allocation_http_request_duration_seconds", "HTTP request latency by route",
                    ["route"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
MOVEMENTS = Counter("allocation_movements_total", "Movements by kind and outcome",
                    ["kind", "outcome"])


def exposition() -> tuple[bytes, str]:
    """The metrics text; across all workers when gunicorn runs several (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
