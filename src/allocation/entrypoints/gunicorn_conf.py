"""gunicorn settings for ``allocation serve``: metrics across workers, an optional access log."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import multiprocess

# ACCESS_LOG=- logs each request to stdout. Off by default: a write per request costs a third
# of the throughput on a busy two-core machine (measured with `make bench`).
accesslog = os.environ.get("ACCESS_LOG") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
graceful_timeout = 10


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
