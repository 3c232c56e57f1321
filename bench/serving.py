"""Serving a WSGI app the way `allocation serve` serves the API, for the apps the bench serves
beside it (the ceilings, the API without its fast lane).

The granian command and environment are `allocation serve`'s own, captured rather than copied
(``serve_command``): only the app it names differs. In each worker process ``as_served`` takes
the steps ``allocation.entrypoints.flask_app.create_server_app`` takes around the API: pin the
process to its core, build the app, announce the worker, and hand granian the app as that
factory does (behind the RSGI bridge when the command serves RSGI).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from unittest import mock

from allocation.config import Config
from allocation.entrypoints import cpu_pinning, worker_start

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

# The interface (granian's --interface) of the captured command, for ``as_served``.
INTERFACE_ENV = "BENCH_GRANIAN_INTERFACE"
SERVER_APP = "allocation.entrypoints.flask_app:create_server_app"


class _Exec(Exception):
    pass


def serve_command(environment: dict[str, str], port: int, workers: int, threads: int
                  ) -> tuple[list[str], dict[str, str]]:
    """The granian command `allocation serve --port P --workers W --threads T --pin-workers`
    would run under ``environment``, and the environment it would run it with; nothing is run.
    The command's last argument names the app."""
    from allocation.entrypoints import cli

    captured: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        captured.append(list(argv))
        raise _Exec

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        with mock.patch.object(os, "execv", execv):
            cli.serve.main(["--port", str(port), "--workers", str(workers), "--threads",
                            str(threads), "--pin-workers"], prog_name="allocation serve",
                           standalone_mode=False)
    except _Exec:
        pass
    finally:
        served = dict(os.environ)
        os.environ.clear()
        os.environ.update(saved)
    if len(captured) != 1 or captured[0][-1] != SERVER_APP:
        raise RuntimeError(f"`allocation serve` did not exec granian on {SERVER_APP}: "
                           f"{captured}")
    argv = captured[0]
    interface = argv[argv.index("--interface") + 1] if "--interface" in argv else "rsgi"
    return argv, {**served, INTERFACE_ENV: interface}


def serving(argv: list[str], target: str) -> list[str]:
    """``argv`` (a ``serve_command``) serving ``target`` instead of the API."""
    return [*argv[:-1], target]


def as_served(build: Callable[[], WSGIApplication]) -> Any:
    """In a worker process: the app ``build`` makes, as create_server_app hands granian the
    API's."""
    cpu_pinning.pin_from_env()
    app = build()
    worker_start.announce()
    if os.environ.get(INTERFACE_ENV) == "wsgi":
        return app
    from allocation.entrypoints.flask_app import THREADS_ENV
    from allocation.entrypoints.movement_requests import MAX_BODY
    from allocation.entrypoints.rsgi_bridge import RsgiBridge

    return RsgiBridge(app, threads=int(os.environ.get(THREADS_ENV) or 8),
                      body_timeout=Config.from_env().body_timeout_seconds, max_body=MAX_BODY)

