"""The app `allocation serve` runs, with every route left to Flask (no fast lane): the bench
serves it beside the real thing to show what the lane is worth. Served as `allocation serve`
serves the API (bench/serving.py)."""

from typing import Any

from allocation.bootstrap import bootstrap
from allocation.entrypoints.flask_app import create_app as _create_app
from bench.serving import as_served


def create_app() -> Any:
    return as_served(lambda: _create_app(application=bootstrap(), fast=False))
