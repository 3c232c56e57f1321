"""Every HTTP route, declared once (API.md): Flask's rules, the fast lane's pattern, the access a
request needs, the bridge's streams and the OpenAPI document's paths are all read from ``ROUTES``.

A path template is Flask's: ``<name>`` is one segment. The patterns are compiled here, once, at
import; a request costs one match against them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

# "public": no token, under /v1/ too; "operator": a token of namespace "*", of any role.
Access = Literal["public", "read", "sell", "admin", "operator"]


@dataclass(frozen=True)
class Route:
    name: str  # unique: the OpenAPI operation's key
    method: str
    path: str
    handler: str  # a method of ``routes.Routes``, or one of flask_app's other views
    access: Access = "public"
    fast: bool = False  # the fast lane answers it, not Flask
    stream: bool = False  # after its first event the RSGI bridge serves the rest itself
    # The RSGI bridge answers it on its event loop where the answer needs no I/O (else the app)
    loop: bool = False


ITEM = "/v1/<namespace>/items/<sku>"
RESERVATION = "/v1/<namespace>/reservations/<reservation_id>"
SALE = "/v1/<namespace>/sales/<sale>"
TICKET = f"{SALE}/queue/<ticket>"

ROUTES: tuple[Route, ...] = (
    Route("init_item", "PUT", ITEM, "init_item", "admin"),
    Route("set_limit", "PATCH", ITEM, "set_limit", "admin"),
    Route("get_item", "GET", ITEM, "get_item", "read", fast=True),
    Route("list_items", "GET", "/v1/<namespace>/items", "list_items", "read"),
    Route("adjust", "POST", f"{ITEM}/adjustments", "move", "admin"),
    Route("decrement", "POST", f"{ITEM}/decrements", "move", "sell", fast=True),
    Route("refund", "POST", f"{ITEM}/refunds", "move", "sell", fast=True),
    Route("reserve", "POST", "/v1/<namespace>/reservations", "reserve", "sell"),
    Route("get_reservation", "GET", RESERVATION, "get_reservation", "read"),
    Route("confirm", "POST", f"{RESERVATION}/confirm", "end_reservation", "sell"),
    Route("release", "POST", f"{RESERVATION}/release", "end_reservation", "sell"),
    Route("extend", "POST", f"{RESERVATION}/extend", "end_reservation", "sell"),
    Route("stream", "GET", f"{ITEM}/stream", "stream", "read", stream=True),
    Route("ledger", "GET", f"{ITEM}/ledger", "ledger", "read"),
    Route("refresh_item", "POST", f"{ITEM}/refresh", "refresh_item", "admin"),
    Route("refresh_namespace", "POST", "/v1/<namespace>/refresh", "refresh_namespace", "admin"),
    Route("stats", "GET", "/v1/<namespace>/stats", "stats", "read"),
    Route("put_sale", "PUT", SALE, "put_sale", "admin"),
    Route("get_sale", "GET", SALE, "get_sale", "read"),
    Route("close_sale", "POST", f"{SALE}/close", "close_sale", "admin"),
    Route("join_queue", "POST", f"{SALE}/queue", "join_queue", "sell", fast=True),
    # The ticket is the credential: no token.
    Route("poll_ticket", "GET", TICKET, "poll_ticket", loop=True),
    Route("ticket_stream", "GET", f"{TICKET}/stream", "ticket_stream", stream=True),
    Route("healthz", "GET", "/healthz", "healthz"),
    Route("readyz", "GET", "/readyz", "readyz"),
    Route("metrics", "GET", "/metrics", "metrics", "operator"),
    Route("openapi_json", "GET", "/openapi.json", "openapi_json"),
    Route("docs", "GET", "/docs", "docs"),
    Route("docs_asset", "GET", "/docs/<name>", "docs_asset"),
    Route("dashboard", "GET", "/dashboard", "dashboard_page"),
    Route("dashboard_asset", "GET", "/dashboard/<name>", "dashboard_asset"),
)
BY_NAME = {route.name: route for route in ROUTES}
# Where a server that has matched a request (``RouteTable.match``) leaves the match in its
# environ, for the app not to match it again.
MATCHED = "allocation.route"
_CACHED_PATH = 200  # characters
_PARAM = re.compile(r"<(\w+)>")


def pattern(path: str, segment: str = "[^/]+") -> str:
    """The regular expression of a path template, a group for each parameter, in order."""
    literals = _PARAM.split(path)[::2]
    return f"({segment})".join(re.escape(literal) for literal in literals)


def openapi_path(path: str) -> str:
    return _PARAM.sub(r"{\1}", path)


class RouteTable:
    """A table's routes, matched: one regular expression of all their paths, compiled once."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        paths = list(dict.fromkeys(route.path for route in routes))
        self._at = [{r.method: r for r in routes if r.path == path} for path in paths]
        self._match = re.compile("|".join(f"(?P<p{i}>{pattern(path)})"
                                          for i, path in enumerate(paths)))
        # Where a path's parameters are among the groups: after its own, as many as it has.
        self._params = [(self._match.groupindex[f"p{i}"] + 1, len(_PARAM.findall(path)))
                        for i, path in enumerate(paths)]
        self._otherwise = [_otherwise(at) for at in self._at]
        # A sale asks about a few paths over and over: each is matched once (a long one, as
        # only a prober sends, every time: the cache stays small).
        self._cached = lru_cache(maxsize=4096)(self._access)

    def access(self, method: str, path: str) -> Access:
        """The least a request needs: its route's; for a method its path has no route for, what
        the path's routes agree on; else under /v1/ read to read (GET, HEAD), admin for the
        rest."""
        if len(path) > _CACHED_PATH:
            return self._access(method, path)
        return self._cached(method, path)

    def _index(self, path: str) -> tuple[int, re.Match[str]] | None:
        match = self._match.fullmatch(path)
        if match is None or match.lastgroup is None:
            return None
        return int(match.lastgroup[1:]), match

    def find(self, method: str, path: str) -> Route | None:
        """The route that serves this request (HEAD as GET), None if none does."""
        found = self._index(path)
        return None if found is None else self._at[found[0]].get(_as_get(method))

    def _access(self, method: str, path: str) -> Access:
        found = self._index(path)
        if found is not None:
            route = self._at[found[0]].get(_as_get(method))
            if route is not None:
                return route.access
            otherwise = self._otherwise[found[0]]
            if otherwise is not None:
                return otherwise
        if not path.startswith("/v1/"):
            return "public"
        return "read" if method in ("GET", "HEAD") else "admin"

    def match(self, method: str, path: str) -> tuple[Route, tuple[str, ...]] | None:
        """The route of exactly this method (HEAD is not GET here) and the path's parameters,
        in order; None if no route has them."""
        found = self._index(path)
        if found is None:
            return None
        index, match = found
        route = self._at[index].get(method)
        if route is None:
            return None
        first, count = self._params[index]
        return route, match.group(*range(first, first + count)) if count > 1 else (
            (match.group(first),) if count else ())


def _as_get(method: str) -> str:
    return "GET" if method == "HEAD" else method


def _otherwise(at: dict[str, Route]) -> Access | None:
    """What a method no route of a path has needs (to be told 405), when the path's routes
    agree outside /v1/'s rule; None: as for a path no route has."""
    kinds = {route.access for route in at.values()}
    return kinds.pop() if len(kinds) == 1 and kinds <= {"public", "operator"} else None


TABLE = RouteTable(ROUTES)
