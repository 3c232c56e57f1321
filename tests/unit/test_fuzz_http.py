"""Random requests against the API: never a 500, and a rejected request changes nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.apps import FakeApp, body
from tests.helpers.http_requests import requests, send


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(requests, min_size=1, max_size=6))
def test_no_500_and_refusals_change_nothing(drawn: list[tuple[Any, ...]]) -> None:
    app = FakeApp()
    app.client.put("/v1/a/items/b", json={"total": 5})
    for request in drawn:
        before = app.snapshot()
        sent, response = send(app.client, request)
        assert response.status_code < 500, (sent, response.json)
        assert response.is_json
        if response.status_code >= 400 and response.headers.get("Idempotent-Replayed") is None:
            assert app.snapshot() == before, (sent, response.json)
        if response.status_code >= 400:
            assert {"error", "message"} <= set(body(response))
