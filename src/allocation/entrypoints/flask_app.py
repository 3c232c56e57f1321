"""The HTTP API's WSGI app (API.md): Flask's routes, with the fast lane in front of them."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from flask import Flask, Response, g, request

from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.entrypoints import (
    cpu_pinning,
    dashboard,
    fast_lane,
    http_errors,
    ledger_worker,
    metrics,
    route_table,
    tokens,
    worker_start,
)
from allocation.entrypoints.movement_requests import MAX_BODY
from allocation.entrypoints.routes import Routes
from allocation.entrypoints.rsgi_bridge import RsgiBridge
from allocation.entrypoints.sale_routes import SaleRoutes
from allocation.runtime.process import start_thread

logger = logging.getLogger(__name__)

THREADS_ENV = "ALLOCATION_REQUEST_THREADS"
TOKENS = "allocation.tokens"  # the app's TokenCache, in flask.extensions (streams end by it)


def create_server_app() -> RsgiBridge:
    """The factory `allocation serve` hands granian (RSGI): called once in each worker process,
    before the threads that serve requests start (they inherit the worker's core)."""
    cpu_pinning.pin_from_env()
    app = bootstrap()
    flask = create_app(application=app)
    _follow_sales(app)
    app.health.warm_up()
    worker_start.announce()
    guard = flask.wsgi_app if isinstance(flask.wsgi_app, route_table.AccessGuard) else None
    return RsgiBridge(flask, threads=int(os.environ.get(THREADS_ENV) or 8),
                      body_timeout=app.config.body_timeout_seconds, max_body=MAX_BODY,
                      application=app, guard=guard, tokens=flask.extensions.get(TOKENS))


def create_wsgi_server_app() -> Flask:
    """The same for granian's WSGI interface (`allocation serve --behind-buffering-proxy`)."""
    cpu_pinning.pin_from_env()
    app = bootstrap()
    flask = create_app(application=app)
    _follow_sales(app)
    app.health.warm_up()
    worker_start.announce()
    return flask


def _follow_sales(app: Application) -> None:
    """The open sales, their gates and queue figures, kept fresh for this server process's
    requests (a gate and a waiting ticket's poll then cost no round trip)."""
    start_thread("sales", lambda: app.bus.services.sales.run(threading.Event()))


def create_app(config: Config | None = None, application: Application | None = None,
               fast: bool = True) -> Flask:
    """The API; ``fast=False`` leaves every route to Flask (to compare the two: tests, bench)."""
    app = application or bootstrap(config)
    if app.config.embedded and app.engine is not None:
        ledger_worker.for_app(app).start_thread()  # the embedded mode's ledger writer lives here
    flask = Flask(__name__)
    flask.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    flask.url_map.merge_slashes = False  # an empty SKU is a 404, not a redirect
    flask.json.sort_keys = False  # type: ignore[attr-defined]
    http_errors.register(flask)
    _observe(flask)
    r = Routes(app)
    sale_routes = SaleRoutes(app)
    others: dict[str, Callable[..., Response]] = {"dashboard_page": dashboard.page,
                                                  "dashboard_asset": dashboard.asset}
    for route in route_table.ROUTES:
        view: Callable[..., Response] = others.get(route.handler) or getattr(
            sale_routes, route.handler, None) or getattr(r, route.handler)
        flask.add_url_rule(route.path, endpoint=f"{route.method} {route.path}", view_func=view,
                           methods=[route.method])
    if fast:
        fast_lane.install(flask, app)
    _guard(flask, app)
    return flask


def _guard(flask: Flask, app: Application) -> None:
    """Put access control in front of everything (outermost: it decides before any body is
    read). With AUTH=off it still refuses a path the router would read another way."""
    cache = tokens.token_cache(app)
    if cache is None:
        logger.warning("AUTH=off: anyone who can reach this server may change any stock; "
                       "fit only for the embedded mode on one machine")
    else:
        flask.extensions[TOKENS] = cache
    flask.wsgi_app = route_table.AccessGuard(flask.wsgi_app, cache)  # type: ignore[method-assign]


def _observe(flask: Flask) -> None:
    @flask.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @flask.after_request
    def _record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.count_request(request.method, route, response.status_code,
                              time.perf_counter() - g.get("started", 0.0))
        return response
