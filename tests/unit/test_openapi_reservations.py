"""The OpenAPI document describes the reservation routes as they answer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from allocation.entrypoints import openapi, schemas
from tests.helpers.apps import FakeApp, body

RESERVATIONS = "/v1/{namespace}/reservations"
ONE = f"{RESERVATIONS}/{{reservation_id}}"


def operation(path: str, method: str) -> dict[str, Any]:
    found: dict[str, Any] = openapi.document()["paths"][path][method]
    return found


def schema_of(response: dict[str, Any]) -> str:
    ref: str = response["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_every_route_of_the_api_is_documented(fake_app: FakeApp) -> None:
    paths = openapi.document()["paths"]
    for rule in fake_app.app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            assert method.lower() in paths.get(path, {}), (method, path)


def test_the_reservation_operations_and_their_models() -> None:
    components = openapi.document()["components"]["schemas"]
    assert {"ReserveBody", "ExtendBody", "ReservationOut", "Line"} <= set(components)
    assert components["ReserveBody"]["properties"]["lines"]["maxItems"] == 100

    create = operation(RESERVATIONS, "post")
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ReserveBody")
    [key] = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert (key["name"], key["required"]) == ("Idempotency-Key", True)
    responses = create["responses"]
    assert schema_of(responses["201"]) == "ReservationOut"
    assert {schema_of(responses[s]) for s in ("400", "404", "409", "422", "503")} == {"Error"}
    assert "sku" in responses["409"]["description"] and "sku" in responses["404"]["description"]
    assert "buyer_required" in responses["400"]["description"]  # its own, not the shared 400

    for path, method in ((ONE, "get"), (f"{ONE}/confirm", "post"), (f"{ONE}/release", "post"),
                         (f"{ONE}/extend", "post")):
        op = operation(path, method)
        assert schema_of(op["responses"]["200"]) == "ReservationOut"
        assert schema_of(op["responses"]["404"]) == "Error"
        [rid] = [p for p in op["parameters"] if p["name"] == "reservation_id"]
        assert rid["schema"]["pattern"] == schemas.RESERVATION_ID_PATTERN
    assert "requestBody" not in operation(f"{ONE}/confirm", "post")
    assert operation(f"{ONE}/extend", "post")["requestBody"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/ExtendBody")
    assert "reservation_confirmed" in operation(f"{ONE}/release", "post")["responses"]["409"][
        "description"]


@pytest.fixture
def shop(fake_app: FakeApp) -> FakeApp:
    for sku, total, limit in (("a", 10, None), ("b", 1, None), ("capped", 5, 1)):
        made = fake_app.client.put(f"/v1/ns/items/{sku}",
                                   json={"total": total, "limit_per_buyer": limit})
        assert made.status_code == 201
    return fake_app


def conforms(path: str, method: str, response: Any) -> None:
    """The status is one the operation documents, and the body its schema."""
    documented = operation(path, method)["responses"]
    assert str(response.status_code) in documented, (path, method, response.status_code)
    model = getattr(schemas, schema_of(documented[str(response.status_code)]))
    model.model_validate(body(response))


def test_the_reservation_routes_answer_as_documented(shop: FakeApp) -> None:
    client = shop.client

    def reserve(key: str | None, payload: Any) -> Any:
        headers = {} if key is None else {"Idempotency-Key": key}
        answer = client.post("/v1/ns/reservations", json=payload, headers=headers)
        conforms(RESERVATIONS, "post", answer)
        return answer

    made = reserve("k1", {"lines": [{"sku": "a", "qty": 2}], "buyer": "ann"})
    assert made.status_code == 201
    rid = body(made)["id"]
    assert reserve("k1", {"lines": [{"sku": "a", "qty": 2}], "buyer": "ann"}).status_code == 201
    assert reserve("k1", {"lines": [{"sku": "a", "qty": 3}]}).status_code == 422
    assert reserve(None, {"lines": [{"sku": "a", "qty": 1}]}).status_code == 400
    assert reserve("k2", {"lines": []}).status_code == 400
    refusals = [reserve("k3", {"lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}),
                reserve("k4", {"lines": [{"sku": "nope", "qty": 1}]}),
                reserve("k5", {"lines": [{"sku": "capped", "qty": 1}]}),
                reserve("k6", {"lines": [{"sku": "capped", "qty": 2}], "buyer": "bo"})]
    assert [(r.status_code, body(r)["error"], body(r)["sku"]) for r in refusals] == [
        (409, "insufficient_stock", "b"), (404, "not_found", "nope"),
        (400, "buyer_required", "capped"), (409, "limit_exceeded", "capped")]

    steps = [("get", ONE, None), ("post", f"{ONE}/extend", {"ttl_seconds": 60}),
             ("post", f"{ONE}/extend", {"ttl_seconds": 0}), ("post", f"{ONE}/confirm", None),
             ("post", f"{ONE}/release", None), ("post", f"{ONE}/extend", {"ttl_seconds": 5})]
    for method, path, payload in steps:
        url = path.format(namespace="ns", reservation_id=rid)
        answer = getattr(client, method)(url, json=payload)
        conforms(path, method, answer)
    for path in (ONE, f"{ONE}/confirm"):
        method = "get" if path == ONE else "post"
        unknown = getattr(client, method)(path.format(namespace="ns", reservation_id="0.x"))
        assert unknown.status_code == 404
        conforms(path, method, unknown)
