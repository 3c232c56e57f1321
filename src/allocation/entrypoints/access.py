"""Access to ``/v1/`` (API.md, "Access: tokens and roles"): a WSGI middleware in front of both
front ends that decides from the path, the method and the bearer token alone, before the body is
read, and answers 401 or 403 itself.

Tokens are checked against an in-process copy of every active token, reloaded every couple of
seconds (a revoked token is refused everywhere within ``RELOAD_SECONDS`` plus a reload), so a
check costs a hash and a dict look-up. A token this copy does not know yet (made since the last
reload) is looked up once; unknown tokens are remembered as unknown until the next reload, so
guessing costs the database nothing. While the database is away the last copy keeps serving:
a sale goes on, and a token cannot be revoked meanwhile either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from allocation.adapters.token_store import ANY_NAMESPACE, Grant, TokenStore, digest
from allocation.domain import errors
from allocation.entrypoints import metrics, replies
from allocation.entrypoints.replies import Reply

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)
RELOAD_SECONDS = 2.0
RANK = {"read": 0, "sell": 1, "admin": 2}
# Set in a request's environ by a server that has already let it through (rsgi_bridge).
CHECKED = "allocation.access_checked"
# The Grant a request was let through on (set by the guard): streams count and end by its id.
GRANT = "allocation.grant"
_UNKNOWN_LIMIT = 10_000  # unknown tokens remembered between reloads, at most


def role_needed(method: str, path: str) -> str:
    """The least role that may make this request (path under ``/v1/``)."""
    if method in ("GET", "HEAD"):
        return "read"
    parts = path.split("/")  # "", "v1", namespace, ...
    if method == "POST" and (parts[-1] in ("decrements", "refunds")
                             or (len(parts) > 3 and parts[3] == "reservations")):
        return "sell"
    return "admin"


class TokenCache:
    def __init__(self, store: TokenStore, reload_seconds: float = RELOAD_SECONDS) -> None:
        self.store = store
        self.reload_seconds = reload_seconds
        self._grants: dict[str, Grant] | None = None
        self._unknown: set[str] = set()
        self._active_ids: frozenset[str] = frozenset()
        self._used: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def holds(self, token: str) -> bool:
        """Whether ``grant`` can answer from memory, without a database round trip."""
        if self._grants is None:
            return False
        token_hash = digest(token)
        return token_hash in self._grants or token_hash in self._unknown

    def grant(self, token: str) -> Grant | None:
        """The token's grant, None if it is unknown or revoked; ``Unavailable`` if that cannot
        be told (the database has never answered this process)."""
        if self._grants is None:
            self._reload()
        token_hash = digest(token)
        assert self._grants is not None
        found = self._grants.get(token_hash)
        if found is None and token_hash not in self._unknown:
            found = self._look_up(token_hash)
        if found is not None:
            self._used.add(found.id)
        return found

    def revoked(self, grant_id: str) -> bool:
        """Whether the token with this id is no longer active (as of the last reload)."""
        return self._grants is not None and grant_id not in self._active_ids

    def _look_up(self, token_hash: str) -> Grant | None:
        try:
            found = self.store.find(token_hash)
        except Exception as exc:
            raise errors.Unavailable("cannot check the token now") from exc
        with self._lock:
            if found is not None and self._grants is not None:
                self._grants = {**self._grants, token_hash: found}
                self._active_ids = self._active_ids | {found.id}
            elif len(self._unknown) < _UNKNOWN_LIMIT:
                self._unknown.add(token_hash)
        return found

    def _reload(self) -> None:
        try:
            grants = self.store.active()
        except Exception as exc:
            if self._grants is None:
                raise errors.Unavailable("cannot check tokens now") from exc
            logger.warning("tokens not reloaded (the database is away): %s",
                           type(exc).__name__)
            return
        with self._lock:
            self._grants, self._unknown = grants, set()
            self._active_ids = frozenset(g.id for g in grants.values())
        used, self._used = self._used, set()
        self._touch(used)

    def _touch(self, used: Iterable[str]) -> None:
        try:
            self.store.touch(used)
        except Exception as exc:  # noqa: BLE001 - "last used" is a hint; never fail for it
            logger.warning("could not record tokens' last use: %s", type(exc).__name__)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="token-reload")
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(self.reload_seconds):
            self._reload()


class AccessGuard:
    """In front of the app. A server that reads bodies itself (the RSGI bridge) asks
    ``refusal`` before it reads one, and marks the request ``CHECKED``."""

    def __init__(self, wsgi_app: WSGIApplication, tokens: TokenCache) -> None:
        self._app = wsgi_app
        self._tokens = tokens

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        refusal = None if environ.get(CHECKED) else self.refusal(environ)
        if refusal is None:
            return self._app(environ, start_response)
        return replies.send_wsgi(refusal, start_response)

    def decides_at_once(self, environ: WSGIEnvironment) -> bool:
        """Whether ``refusal`` needs no database round trip: no token, or one held in memory
        (every active token is, and the unknown ones seen since the last reload)."""
        token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        return token is None or self._tokens.holds(token)

    def refusal(self, environ: WSGIEnvironment) -> Reply | None:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v1/"):
            return None
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        refusal = self._refusal(method, path, environ)
        if refusal is not None:
            metrics.count_request(method, "access", refusal.status,
                                  time.perf_counter() - started)
        return refusal

    def _refusal(self, method: str, path: str, environ: WSGIEnvironment) -> Reply | None:
        token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        if token is None:
            return _unauthorized("this request needs an Authorization: Bearer token")
        try:
            grant = self._tokens.grant(token)
        except errors.Unavailable as exc:
            return replies.unavailable(exc.message, exc.retry_after)
        if grant is None:
            return _unauthorized("the token is unknown or revoked")
        namespace = path.split("/", 3)[2]
        if grant.namespace not in (namespace, ANY_NAMESPACE) or (
                RANK[grant.role] < RANK[role_needed(method, path)]):
            return replies.error(403, "forbidden", "the token may not make this request")
        environ[GRANT] = grant
        return None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str) -> Reply:
    reply = replies.error(401, "unauthorized", message)
    return Reply(reply.status, reply.body, (("WWW-Authenticate", 'Bearer realm="allocation"'),))
