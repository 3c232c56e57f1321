"""Times leave in UTC whatever the database session's zone (API.md: ISO 8601 in UTC)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import commands
from allocation.entrypoints import flask_app, replies


def test_ledger_times_are_utc_when_the_session_is_not(service_config: Config, namespace: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")  # libpq sets each new session's zone from it
    app = bootstrap(dataclasses.replace(service_config, auth="off"))
    try:
        app.bus.handle(commands.InitInventory(namespace, "a", 1))
        client = flask_app.create_app(application=app).test_client()
        shown = client.get(f"/v1/{namespace}/items/a/ledger").get_json()["entries"]
        assert [e["kind"] for e in shown] == ["init"]
        assert shown[0]["created_at"].endswith("+00:00")
        with app.uow_factory() as uow:  # what the database handed back: Tokyo's offset
            entry, = uow.items.ledger(namespace, "a", 0, 10)
            offset = entry.created_at.utcoffset()
            assert offset is not None and offset.total_seconds() == 9 * 3600
            assert json.loads(json.dumps(replies.ledger_entry(entry)))["created_at"] == (
                shown[0]["created_at"])
    finally:
        if app.engine is not None:
            app.engine.dispose()
