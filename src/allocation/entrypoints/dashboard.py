"""The operator's dashboard: a static page and its assets, shipped in the package (no CDN, no
build step). The page asks for a token and reads the API from the browser, so serving it needs
no token (the route table's access guards ``/v1/`` and ``/metrics``): it reads the namespace's
own figures from ``/v1/{ns}/stats`` with the token it is given."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from flask import Response, abort

ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}
PAGE = "index.html"
# The page handles a bearer token: let it run only its own files and talk only to its origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # small files; an upgrade shows at once
}


@lru_cache(maxsize=len(ASSETS) + 1)
def _read(name: str) -> bytes:
    return resources.files("allocation.entrypoints").joinpath("dashboard", name).read_bytes()


def _send(name: str, media_type: str) -> Response:
    return Response(_read(name), content_type=media_type, headers=HEADERS)


def page() -> Response:
    return _send(PAGE, "text/html; charset=utf-8")


def asset(name: str) -> Response:
    media_type = ASSETS.get(name)  # the allow-list: no path from the request reaches the disk
    if media_type is None:
        abort(404)
    return _send(name, media_type)
