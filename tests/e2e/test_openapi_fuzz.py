"""A bounded fuzz run driven by the OpenAPI document, against the real server (issue 17).

Schemathesis reads /openapi.json from a server of this module's own (a Redis key prefix of its
own, a ledger worker of its own), makes requests for every operation, valid ones and invalid
ones, sends each with this run's admin token, and checks every answer against the document:

- not_a_server_error: any 5xx fails, the documented 503 included. The services here are
  healthy and nothing else touches this server, so "unavailable" or "being rebuilt" would be
  a fault (a dead ledger worker, an item stuck behind), not an answer to expect;
- status_code_conformance: the status is one the operation documents (an undocumented method's
  405 aside);
- content_type_conformance: the Content-Type is one the response documents;
- response_schema_conformance: the body conforms to the response's schema.

Path names are drawn from a few seeded items most of the time, so that reads, sales, refunds
and refreshes get past the 404 to the answers that carry an item.

Bounded and repeatable: the coverage phase (boundary values, missing and malformed parts, wrong
media types) plus a fixed number of generated examples per operation, derandomized from a fixed
seed, without shrinking or an example database: each run sends the same requests in the same
order, in about ten seconds.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import Case
from schemathesis.checks import (
    CheckFunction,
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from allocation.config import Config
from tests.helpers.processes import Process, ledger_worker, serve

NAMESPACE = "fuzz"
SKUS = ("sku-1", "sku-2", "sku-3")
SEED = 17
EXAMPLES = 25  # generated per operation, after the coverage phase's own cases
# Above the server's 10 s wait for the ledger in a refresh: a stuck refresh shows as its 503.
REQUEST_TIMEOUT = 20

CHECKS: list[CheckFunction] = [not_a_server_error, status_code_conformance,
                               content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_config(service_config: Config) -> Config:
    return dataclasses.replace(service_config, redis_key_prefix=(
        f"{service_config.redis_key_prefix}:fuzz{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def fuzz_worker(fuzz_config: Config) -> Iterator[Process]:
    worker = ledger_worker(fuzz_config)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def fuzz_server(fuzz_config: Config, fuzz_worker: Process) -> Iterator[str]:
    yield from serve(fuzz_config)


@pytest.fixture(scope="module")
def auth_headers(admin_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture(scope="module")
def seeded(fuzz_server: str, auth_headers: dict[str, str]) -> None:
    """A few items with some stock sold, so that sales and refunds of them can succeed."""
    with requests.Session() as http:
        for n, sku in enumerate(SKUS, start=1):
            url = f"{fuzz_server}/v1/{NAMESPACE}/items/{sku}"
            made = http.put(url, json={"total": 1000 * n}, headers=auth_headers, timeout=10)
            assert made.status_code == 201, made.text
            sold = http.post(f"{url}/decrements", json={"qty": 10},
                             headers={**auth_headers, "Idempotency-Key": f"seed-{sku}"},
                             timeout=10)
            assert sold.status_code == 200, sold.text


@pytest.fixture(scope="module")
def api_schema(fuzz_server: str, seeded: None) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        # Generation is what may be slow on a busy machine, never the server: no health check
        # may fail the run for it.
        "suppress-health-check": ["all"],
        "dictionaries": {"namespaces": {"values": [NAMESPACE]}, "skus": {"values": list(SKUS)}},
        "parameters": {"path.namespace": {"dictionary": "namespaces", "probability": 0.7},
                       "path.sku": {"dictionary": "skus", "probability": 0.7}},
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "no-shrink": True,
                       "database": "none",
                       # The token is sent as it is below, never generated.
                       "with-security-parameters": False},
        "request-timeout": REQUEST_TIMEOUT,
    })
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json", config=config,
                                         timeout=10)


schema = schemathesis.pytest.from_fixture("api_schema")


# The stock stream never ends by itself: tests/e2e/test_stock_stream.py reads it instead.
@schema.exclude(path_regex=r"/stream$").parametrize()
def test_every_answer_conforms_to_the_document(case: Case[Any], auth_headers: dict[str, str]
                                               ) -> None:
    case.call_and_validate(headers=auth_headers, checks=CHECKS)


def test_the_ledger_kept_up_with_the_fuzz(fuzz_server: str, fuzz_worker: Process,
                                          auth_headers: dict[str, str]) -> None:
    """No movement made the ledger worker fail: it is alive, and a refresh of the seeded
    namespace (which waits for the ledger to hold every movement of its items) succeeds."""
    assert fuzz_worker.alive(), fuzz_worker.stderr_tail()
    refreshed = requests.post(f"{fuzz_server}/v1/{NAMESPACE}/refresh", headers=auth_headers,
                              timeout=REQUEST_TIMEOUT)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["items"] >= len(SKUS)  # and any the fuzz made in it
