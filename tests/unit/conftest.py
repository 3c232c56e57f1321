from __future__ import annotations

import pytest

from tests.helpers.apps import FakeApp


@pytest.fixture
def fake_app() -> FakeApp:
    return FakeApp()
