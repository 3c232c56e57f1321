"""The app `allocation serve` runs, with every route left to Flask (no fast lane): the bench
serves it beside the real thing to show what the lane is worth."""

from flask import Flask

from allocation.entrypoints.flask_app import create_app as _create_app


def create_app() -> Flask:
    return _create_app(fast=False)
