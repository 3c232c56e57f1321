from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.routing import Rule

from tests.helpers.apps import FakeApp


@pytest.fixture(scope="session", autouse=True)
def url_builders_on_demand() -> Iterator[None]:
    """Werkzeug compiles two URL builders per route whenever an app is made (about 70% of
    making one: hundreds of apps here), though the app builds no URL. Compile each on its first
    use instead; matching does not use them."""
    compile_builder = Rule._compile_builder

    def on_demand(rule: Rule, append_unknown: bool = True) -> Callable[..., Any]:
        compiled: list[Callable[..., Any]] = []

        def build(self: Rule, *args: Any, **kwargs: Any) -> Any:
            if not compiled:
                compiled.append(compile_builder(self, append_unknown))
            return compiled[0](self, *args, **kwargs)
        return build

    Rule._compile_builder = on_demand  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Rule._compile_builder = compile_builder  # type: ignore[method-assign]


@pytest.fixture
def fake_app() -> FakeApp:
    return FakeApp()
