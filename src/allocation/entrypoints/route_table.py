"""Every HTTP route, declared once (API.md), and the access decision made from it: Flask's
rules, the fast lane's pattern, the access a request needs, the bridge's streams and the OpenAPI
document's paths are all read from ``ROUTES``.

A path template is Flask's: ``<name>`` is one segment. The patterns are compiled here, once, at
import; a request costs one match against them.

Access to ``/v1/`` and ``/metrics`` (API.md, "Access: tokens and roles") is a WSGI middleware in
front of both front ends that decides from the path, the method and the bearer token alone
(the token's grant from ``tokens.TokenCache``), before the body is read, and answers 401, 403
or 404 itself. The path is decided as the router will match it: both front ends hand over the
path decoded once, and a spelling the router would read differently from how it is written
(doubled or trailing slashes, which Werkzeug strips, ``.`` and ``..`` segments) is 404 for
everyone, so no other spelling of a guarded path can reach a route unguarded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote_to_bytes

from allocation.adapters.token_store import ANY_NAMESPACE
from allocation.domain import errors
from allocation.entrypoints import metrics, replies
from allocation.entrypoints.replies import Reply

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from allocation.entrypoints.tokens import TokenCache

# "public": no token, under /v1/ too; "operator": a token of namespace "*", of any role.
Need = Literal["public", "read", "sell", "admin", "operator"]


@dataclass(frozen=True)
class Route:
    name: str  # unique: the OpenAPI operation's key
    method: str
    path: str
    handler: str  # a method of ``routes.Routes``, or one of flask_app's other views
    access: Need = "public"
    fast: bool = False  # the fast lane answers it, not Flask
    stream: bool = False  # after its first event the RSGI bridge serves the rest itself
    # The RSGI bridge answers it on its event loop where the answer needs no I/O (else the app)
    loop: bool = False
    # The query parameters it defines (their values are the handler's to check): any other is
    # 400 before the handler runs.
    query: tuple[str, ...] = ()


ITEM = "/v1/<namespace>/items/<sku>"
RESERVATION = "/v1/<namespace>/reservations/<reservation_id>"
SALE = "/v1/<namespace>/sales/<sale>"
TICKET = f"{SALE}/queue/<ticket>"

ROUTES: tuple[Route, ...] = (
    Route("init_item", "PUT", ITEM, "init_item", "admin"),
    Route("set_limit", "PATCH", ITEM, "set_limit", "admin"),
    Route("get_item", "GET", ITEM, "get_item", "read", fast=True),
    Route("list_items", "GET", "/v1/<namespace>/items", "list_items", "read",
          query=("after", "limit")),
    Route("adjust", "POST", f"{ITEM}/adjustments", "move", "admin"),
    Route("decrement", "POST", f"{ITEM}/decrements", "move", "sell", fast=True),
    Route("refund", "POST", f"{ITEM}/refunds", "move", "sell", fast=True),
    Route("reserve", "POST", "/v1/<namespace>/reservations", "reserve", "sell"),
    Route("get_reservation", "GET", RESERVATION, "get_reservation", "read"),
    Route("confirm", "POST", f"{RESERVATION}/confirm", "end_reservation", "sell"),
    Route("release", "POST", f"{RESERVATION}/release", "end_reservation", "sell"),
    Route("extend", "POST", f"{RESERVATION}/extend", "end_reservation", "sell"),
    Route("stream", "GET", f"{ITEM}/stream", "stream", "read", stream=True),
    Route("ledger", "GET", f"{ITEM}/ledger", "ledger", "read", query=("after_seq", "limit")),
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

    def access(self, method: str, path: str) -> Need:
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

    def query_refusal(self, method: str, path: str, query: str) -> Reply | None:
        """400 naming the first parameter of ``query`` (a non-empty QUERY_STRING) that the
        route of this request does not define, or whose name or value is not UTF-8 text; None
        if there is none, or no route (the router answers 404 or 405)."""
        route = self.find(method, path)
        return None if route is None else query_refusal(route.query, query)

    def _access(self, method: str, path: str) -> Need:
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


def _otherwise(at: dict[str, Route]) -> Need | None:
    """What a method no route of a path has needs (to be told 405), when the path's routes
    agree outside /v1/'s rule; None: as for a path no route has."""
    kinds = {route.access for route in at.values()}
    return kinds.pop() if len(kinds) == 1 and kinds <= {"public", "operator"} else None


def query_refusal(defined: tuple[str, ...], query: str) -> Reply | None:
    """``RouteTable.query_refusal`` for a route that defines ``defined``. ``query`` is as WSGI
    has it, its bytes as latin-1 (PEP 3333), split and decoded as Werkzeug's ``request.args``
    reads it, but strictly: a byte that is not UTF-8, raw or percent-encoded, is refused here
    rather than fail (or be kept encoded) in the handler."""
    for pair in query.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = _query_text(raw_name)
        if name is None:
            shown = _query_text(raw_name, "replace")
            return _bad_query(shown or raw_name, f"{shown}: a query parameter's name must be "
                                                 "UTF-8 text")
        if not name:
            return _bad_query("query", "query: a parameter has no name")
        if name not in defined:
            return _bad_query(name, f"{name}: is not a query parameter of this request")
        if _query_text(raw_value) is None:
            return _bad_query(name, f"{name}: must be UTF-8 text")
    return None


def _query_text(part: str, errors: str = "strict") -> str | None:
    try:
        return unquote_to_bytes(part.replace("+", " ").encode("latin-1", errors)).decode(
            "utf-8", errors)
    except UnicodeError:  # not bytes as latin-1 (a server's bug), or not UTF-8
        return None


def _bad_query(field: str, message: str) -> Reply:
    return replies.error(400, "invalid_field", message, field=field)


TABLE = RouteTable(ROUTES)


# Set in a request's environ by a server that has already let it through (rsgi_bridge).
CHECKED = "allocation.access_checked"
# The Grant a request was let through on (set by the guard): streams count and end by its id.
GRANT = "allocation.grant"
# Set by a server that was sent an Authorization header it cannot hand over (rsgi_bridge: granian
# leaves out a value that is not visible ASCII): no token can be read from it, 401.
UNREADABLE_TOKEN = "allocation.unreadable_token"
RANK = {"read": 0, "sell": 1, "admin": 2}


def canonical(path: str) -> bool:
    """Whether the router matches ``path`` (decoded once) as it is spelled: no empty segment
    (Werkzeug strips leading slashes), no trailing slash, no ``.`` or ``..`` segment."""
    if path == "/":
        return True
    return path.startswith("/") and all(
        segment not in ("", ".", "..") for segment in path[1:].split("/"))


class Access:
    """The decision alone, with tokens or (``AUTH=off``) without: a path not spelled as the
    router matches it is 404 either way. A server that is not a WSGI app (the consumer's
    health port) asks ``refusal`` itself."""

    def __init__(self, tokens: TokenCache | None) -> None:
        self._tokens = tokens

    async def refusal_soon(self, environ: WSGIEnvironment) -> Reply | None:
        """``refusal``, a token's look-up awaited on the event loop: no thread waits on it."""
        token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        if token is not None and self._tokens is not None:
            await self._tokens.settle(token)
        return self.refusal(environ, wait=0.0)

    def refusal(self, environ: WSGIEnvironment, wait: float | None = None) -> Reply | None:
        path = environ.get("PATH_INFO", "")
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        refusal: Reply | None = None
        if not canonical(path):
            refusal = replies.error(404, "not_found", "no such path")
        elif self._tokens is not None and (need := TABLE.access(method, path)) != "public":
            refusal = self._refusal(path, need, environ, self._tokens, wait)
        if refusal is None:
            query = environ.get("QUERY_STRING")
            if not query:  # as nearly every request has it: nothing more to decide
                return None
            refusal = TABLE.query_refusal(method, path, query)
            if refusal is None:
                return None
        metrics.count_request(method, "access", refusal.status, time.perf_counter() - started)
        return refusal

    def _refusal(self, path: str, need: str, environ: WSGIEnvironment, tokens: TokenCache,
                 wait: float | None) -> Reply | None:
        authorization = environ.get("HTTP_AUTHORIZATION")
        if environ.get(UNREADABLE_TOKEN) or (authorization and not authorization.isascii()):
            return _unauthorized("the Authorization header must be printable ASCII")
        token = _bearer(authorization)
        if token is None:
            return _unauthorized("this request needs an Authorization: Bearer token")
        try:
            grant = tokens.grant(token, wait)
        except errors.Unavailable as exc:
            return replies.unavailable(exc.message, exc.retry_after)
        if grant is None:
            return _unauthorized("the token is unknown or revoked")
        if need == "operator":  # every tenant's figures: a "*" token of any role
            allowed = grant.namespace == ANY_NAMESPACE
        else:
            namespace = path.split("/", 3)[2]
            allowed = grant.namespace in (namespace, ANY_NAMESPACE) and (
                RANK[grant.role] >= RANK[need])
        if not allowed:
            return replies.error(403, "forbidden", "the token may not make this request")
        environ[GRANT] = grant
        return None


class AccessGuard(Access):
    """``Access`` in front of a WSGI app. A server that reads bodies itself (the RSGI bridge)
    asks ``refusal_soon`` before it reads one, and marks the request ``CHECKED``."""

    def __init__(self, wsgi_app: WSGIApplication, tokens: TokenCache | None) -> None:
        super().__init__(tokens)
        self._app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        refusal = None if environ.get(CHECKED) else self.refusal(environ)
        if refusal is None:
            return self._app(environ, start_response)
        return replies.send_wsgi(refusal, start_response)


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str) -> Reply:
    reply = replies.error(401, "unauthorized", message)
    return Reply(reply.status, reply.body, (("WWW-Authenticate", 'Bearer realm="allocation"'),))
