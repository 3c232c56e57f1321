"""The HTTP contract of API.md, over real HTTP against `allocation serve`, PostgreSQL and Redis."""

from __future__ import annotations

import http.client
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import requests
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_dashboard import browser  # noqa: F401 - the headless chromium fixture
from tests.helpers.processes import wait_until


class Client:
    def __init__(self, base: str, namespace: str) -> None:
        self.base, self.ns = base, namespace
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return f"{self.base}/v1/{self.ns}{path}"

    def init(self, sku: str, total: Any) -> requests.Response:
        return self.http.put(self.url(f"/items/{sku}"), json={"total": total}, timeout=10)

    def move(self, sku: str, kind: str, body: Any, key: str | None = None) -> requests.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.http.post(self.url(f"/items/{sku}/{kind}"), json=body, headers=headers,
                              timeout=10)

    def get(self, sku: str) -> requests.Response:
        return self.http.get(self.url(f"/items/{sku}"), timeout=10)

    def ledger(self, sku: str, entries: int, query: str = "") -> list[dict[str, Any]]:
        """The ledger once it holds ``entries`` rows (it is written behind, with a short lag)."""
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = self.http.get(self.url(f"/items/{sku}/ledger{query}"),
                                     timeout=10).json()["entries"]
            return len(found) >= entries

        wait_until(written, 30, f"{entries} ledger entries of {sku}")
        return found


def item(ns: str, sku: str, total: int, consumed: int,
         limit: int | None = None) -> dict[str, Any]:
    return {"namespace": ns, "sku": sku, "total": total, "consumed": consumed, "held": 0,
            "available": total - consumed, "limit_per_buyer": limit}


def test_health_readiness_metrics_and_openapi(api: str) -> None:
    assert requests.get(f"{api}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{api}/readyz", timeout=5).json() == {"database": "ok", "redis": "ok"}
    requests.get(f"{api}/healthz", timeout=5)
    metrics = requests.get(f"{api}/metrics", timeout=5)
    assert metrics.status_code == 200 and "allocation_http_requests_total" in metrics.text
    spec = requests.get(f"{api}/openapi.json", timeout=5).json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/{namespace}/items/{sku}/decrements" in spec["paths"]
    assert "QtyBody" in spec["components"]["schemas"]


def scrape(api: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{api}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_the_sale_across_workers(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("m", 3)
    route = "/v1/<namespace>/items/<sku>/decrements"
    wanted = {
        ("allocation_http_requests_total", (("method", "POST"), ("route", route),
                                            ("status", "200"))): 3,
        ("allocation_http_requests_total", (("method", "POST"), ("route", route),
                                            ("status", "409"))): 1,
        ("allocation_movements_total", (("kind", "decrement"), ("outcome", "ok"))): 3,
        ("allocation_movements_total", (("kind", "decrement"),
                                        ("outcome", "insufficient_stock"))): 1,
    }
    before = scrape(api)
    for n in range(3):  # over new connections: they may land on any worker process
        assert requests.post(c.url("/items/m/decrements"), json={"qty": 1},
                             headers={"Idempotency-Key": f"m{n}"}, timeout=10).ok
    assert c.move("m", "decrements", {"qty": 1}, "m3").status_code == 409
    after = scrape(api)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in wanted} == wanted


def test_metrics_count_a_hold_that_expired_without_an_answer_saying_so(
        api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("h", 2)
    held = requests.post(c.url("/reservations"), json={"lines": [{"sku": "h", "qty": 2}],
                                                       "ttl_seconds": 1},
                         headers={"Idempotency-Key": "h1"}, timeout=10)
    assert held.status_code == 201, held.text
    tries = iter(range(1000))
    # The sale succeeds once its own step ended the due hold: no request asked about the hold.
    wait_until(lambda: c.move("h", "decrements", {"qty": 1}, f"h{next(tries)}").ok, 10,
               "a sale after the hold's expiry")

    def expired() -> dict[str, float]:
        labels = (("namespace", namespace),)
        samples = scrape(api)
        return {"held": samples.get(("allocation_sale_units_held_total", labels), 0),
                "expired": samples.get(("allocation_sale_units_expired_total", labels), 0),
                "holds": samples.get(("allocation_sale_holds_ended_total",
                                      (("end", "expired"), *labels)), 0)}

    assert expired() == {"held": 2, "expired": 2, "holds": 1}


def test_init_get_and_the_item_lifecycle(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    created = c.init("sku", 10)
    assert (created.status_code, created.json()) == (201, item(namespace, "sku", 10, 0))
    assert c.init("sku", 10).status_code == 200
    conflict = c.init("sku", 11)
    assert (conflict.status_code, conflict.json()["error"]) == (409, "already_exists")
    assert c.get("sku").json() == item(namespace, "sku", 10, 0)
    missing = c.get("nope")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")

    sold = c.move("sku", "decrements", {"qty": 4}, "k1")
    assert (sold.status_code, sold.json()) == (200, item(namespace, "sku", 10, 4))
    short = c.move("sku", "decrements", {"qty": 7}, "k2")
    assert short.status_code == 409
    assert (short.json()["error"], short.json()["available"]) == ("insufficient_stock", 6)
    refunded = c.move("sku", "refunds", {"qty": 1}, "r1")
    assert refunded.json() == item(namespace, "sku", 10, 3)
    too_much = c.move("sku", "refunds", {"qty": 4}, "r2")
    assert (too_much.status_code, too_much.json()["error"]) == (409, "refund_exceeds_consumed")
    adjusted = c.move("sku", "adjustments", {"delta": -5})
    assert adjusted.json() == item(namespace, "sku", 5, 3)
    below = c.move("sku", "adjustments", {"delta": -3})
    assert (below.status_code, below.json()["error"]) == (409, "below_consumed")
    assert c.move("nope", "decrements", {"qty": 1}, "k9").status_code == 404

    ledger = c.ledger("sku", 4)
    assert [(e["seq"], e["kind"], e["qty"], e["total_after"], e["available_after"],
             e["idempotency_key"]) for e in ledger] == [
        (1, "init", 10, 10, 10, None), (2, "decrement", 4, 10, 6, "k1"),
        (3, "refund", 1, 10, 7, "r1"), (4, "adjust", -5, 5, 2, None)]
    assert ledger[0]["created_at"].endswith("+00:00")
    page = c.http.get(c.url("/items/sku/ledger?after_seq=2&limit=1"), timeout=10).json()
    assert [e["seq"] for e in page["entries"]] == [3]
    assert c.http.get(c.url("/items/nope/ledger"), timeout=10).status_code == 404


def test_an_adjustment_past_the_maximum_total_is_a_409_and_changes_nothing(
        api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("sku", 14)
    assert c.move("sku", "adjustments", {"delta": 999_999_986}).json()["total"] == 1_000_000_000
    # delta is in its range: what refuses it is the item's total, a domain rule (409, as
    # below_consumed is), not the field (400).
    over = c.move("sku", "adjustments", {"delta": 1}, "a-over")
    assert over.status_code == 409, over.text
    assert (over.json()["error"], over.json()["maximum"]) == ("total_exceeds_maximum",
                                                             1_000_000_000)
    again = c.move("sku", "adjustments", {"delta": 1}, "a-over")
    assert (again.status_code, again.json(), again.headers["Idempotent-Replayed"]) == (
        409, over.json(), "true")
    assert c.move("sku", "adjustments", {"delta": 1_000_000_000}).status_code == 409
    assert c.get("sku").json() == item(namespace, "sku", 1_000_000_000, 0)
    assert [e["kind"] for e in c.ledger("sku", 2)] == ["init", "adjust"]


def test_idempotency_keys(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("sku", 5)
    first = c.move("sku", "decrements", {"qty": 2}, "order-1")
    again = c.move("sku", "decrements", {"qty": 2}, "order-1")
    assert again.status_code == first.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    reused = c.move("sku", "decrements", {"qty": 3}, "order-1")
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    refused = c.move("sku", "decrements", {"qty": 9}, "order-2")
    c.move("sku", "adjustments", {"delta": 100})
    replayed_refusal = c.move("sku", "decrements", {"qty": 9}, "order-2")
    assert (replayed_refusal.status_code, replayed_refusal.json()) == (409, refused.json())
    assert replayed_refusal.headers["Idempotent-Replayed"] == "true"
    missing = c.move("sku", "refunds", {"qty": 1})
    assert (missing.status_code, missing.json()["error"]) == (400, "idempotency_key_required")
    assert c.get("sku").json() == item(namespace, "sku", 105, 2)
    # Keys are scoped to the item.
    c.init("other", 5)
    assert c.move("other", "decrements", {"qty": 3}, "order-1").json()["available"] == 2


def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(api: str,
                                                                 namespace: str) -> None:
    c = Client(api, namespace)
    c.init("sku", 5)
    for body in ({"qty": True}, {"qty": 1.0}, {"qty": "1"}, {"qty": 0}, {"qty": 1_000_001},
                 {}, {"quantity": 1}):
        r = c.move("sku", "decrements", body, "k-" + uuid.uuid4().hex)
        assert r.status_code == 400, body
        assert r.json()["field"] == "qty" and r.json()["error"] == "invalid_field"
    for total in (-1, 1_000_000_001, None, "5", False):
        r = c.init("fresh", total)
        assert (r.status_code, r.json()["field"]) == (400, "total"), total
    bad_delta = c.move("sku", "adjustments", {"delta": 1_000_000_001})
    assert (bad_delta.status_code, bad_delta.json()["field"]) == (400, "delta")
    bad_ns = requests.put(f"{api}/v1/bad!ns/items/sku", json={"total": 1}, timeout=5)
    assert (bad_ns.status_code, bad_ns.json()["field"]) == (400, "namespace")
    bad_sku = c.init("-leading-dash", 1)
    assert (bad_sku.status_code, bad_sku.json()["field"]) == (400, "sku")
    long_key = c.move("sku", "decrements", {"qty": 1}, "k" * 129)
    assert (long_key.status_code, long_key.json()["field"]) == (400, "Idempotency-Key")
    url = c.url("/items/sku/decrements")
    malformed = c.http.post(url, data="{nope", headers={"Content-Type": "application/json",
                                                        "Idempotency-Key": "m"}, timeout=5)
    assert (malformed.status_code, malformed.json()["error"]) == (400, "malformed_json")
    not_json = c.http.post(url, data="qty=1", headers={"Idempotency-Key": "n"}, timeout=5)
    assert (not_json.status_code, not_json.json()["error"]) == (415, "unsupported_media_type")
    huge = c.http.post(url, data="[" + "1," * 40_000 + "1]", headers={
        "Content-Type": "application/json", "Idempotency-Key": "h"}, timeout=5)
    assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"
    wrong_method = c.http.delete(c.url("/items/sku"), timeout=5)
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405,
                                                                        "method_not_allowed")
    bad_limit = c.http.get(c.url("/items?limit=0"), timeout=5)
    assert (bad_limit.status_code, bad_limit.json()["field"]) == (400, "limit")
    assert c.get("sku").json() == item(namespace, "sku", 5, 0)
    assert len(c.ledger("sku", 1)) == 1
    assert c.get("fresh").status_code == 404


def test_an_answer_given_before_the_body_is_read_says_the_connection_closes(
        api: str, namespace: str, admin_token: str) -> None:
    """granian closes a connection whose request body was left unread (a 413 on the
    Content-Length, a refusal decided before the body): the answer says so, or the client sends
    its next request down a connection that is gone (RemoteDisconnected)."""
    where = urlsplit(api)
    path = f"/v1/{namespace}/items/sku/decrements"
    huge = b"[" + b"1," * 40_000 + b"1]"
    for _ in range(10):  # granian says so itself some of the times, not always
        for token, status in (({"Authorization": f"Bearer {admin_token}"}, 413), ({}, 401)):
            connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
            connection.request("POST", path, body=huge, headers={
                "Content-Type": "application/json", "Idempotency-Key": "c", **token})
            answer = connection.getresponse()
            answer.read()
            assert (answer.status, answer.getheader("Connection")) == (status, "close")
            connection.close()
    # A refusal with no body left unread keeps the connection for the next request.
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    connection.request("GET", f"/v1/{namespace}/items/sku")
    refused = connection.getresponse()
    refused.read()
    kept = connection.sock
    assert (refused.status, refused.will_close) == (401, False)
    connection.request("GET", "/healthz")
    assert (connection.getresponse().status, connection.sock) == (200, kept)
    connection.close()


def test_listing_pages_through_a_namespace(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    for n in range(5):
        c.init(f"s{n}", n)
    first = c.http.get(c.url("/items?limit=2"), timeout=5).json()
    assert [i["sku"] for i in first["items"]] == ["s0", "s1"] and first["next"] == "s1"
    rest = c.http.get(c.url(f"/items?after={first['next']}&limit=10"), timeout=5).json()
    assert [i["sku"] for i in rest["items"]] == ["s2", "s3", "s4"] and rest["next"] is None
    assert rest["items"][2] == item(namespace, "s4", 4, 0)


def test_refresh_of_an_item_and_of_a_namespace(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("a", 3)
    c.init("b", 4)
    c.move("a", "decrements", {"qty": 1}, "k")
    # A refresh waits (up to LEDGER_WAIT_SECONDS) for the session's shared ledger worker to
    # catch up; wait for the ledger here instead, so that a busy worker cannot time it out.
    c.ledger("a", 2)
    one = c.http.post(c.url("/items/a/refresh"), timeout=15)
    assert (one.status_code, one.json()) == (200, item(namespace, "a", 3, 1))
    assert c.http.post(c.url("/items/zz/refresh"), timeout=15).status_code == 404
    everything = c.http.post(c.url("/refresh"), timeout=15)
    assert (everything.status_code, everything.json()) == (200, {"items": 2})


def test_eight_concurrent_buyers_sell_out_without_overselling(api: str, namespace: str) -> None:
    c = Client(api, namespace)
    c.init("hot", 200)

    def buyer(n: int) -> int:
        session = Client(api, namespace)
        sold = 0
        for attempt in range(40):
            r = session.move("hot", "decrements", {"qty": 1}, f"b{n}-{attempt}")
            assert r.status_code in (200, 409), r.text
            sold += r.status_code == 200
        return sold

    with ThreadPoolExecutor(8) as pool:
        sold = sum(pool.map(buyer, range(8)))
    assert sold == 200
    assert c.get("hot").json() == item(namespace, "hot", 200, 200)
    ledger = c.ledger("hot", 201, "?limit=1000")
    assert [e["seq"] for e in ledger] == list(range(1, 202))


def test_the_docs_page_renders_under_its_content_security_policy(
        api: str, browser: WebDriver) -> None:  # noqa: F811
    page = requests.get(f"{api}/docs", timeout=10)
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    browser.get(f"{api}/docs")
    # Swagger UI drew the document: its script, the page's own and /openapi.json all ran and
    # loaded under the policy (an inline script would have been blocked, and nothing drawn).
    WebDriverWait(browser, 20, poll_frequency=0.1).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 10,
        "Swagger UI to draw the operations")
    title = browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert title.startswith("allocation: flash-sale inventory")


def test_strict_input_over_the_real_server(api: str, namespace: str) -> None:
    """A misspelt field, a loose query integer, a repeated parameter: 400 naming it, through
    the server's own front ends (the fast lane takes the sale), and nothing changes."""
    c = Client(api, namespace)
    assert c.init("s", 5).status_code == 201
    misspelt = c.http.post(c.url("/reservations"), timeout=10,
                           json={"lines": [{"sku": "s", "qty": 1}], "ttl_second": 5},
                           headers={"Idempotency-Key": "typo"})
    sale = c.move("s", "decrements", {"qty": 1, "buyr": "ann"}, "typo-sale")
    for answer, field in ((misspelt, "ttl_second"), (sale, "buyr")):
        assert (answer.status_code, answer.json()["field"]) == (400, field), answer.text
    for query, field in (("limit=%2B5", "limit"), ("limit=5.0", "limit"),
                         ("limit=1_0", "limit"), ("limit=1&limit=2", "limit")):
        page = c.http.get(c.url(f"/items?{query}"), timeout=10)
        assert (page.status_code, page.json()["field"]) == (400, field), query
    assert c.get("s").json() == item(namespace, "s", 5, 0)
