"""gunicorn settings for ``allocation serve``: JSON-ish access log, metrics across workers."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import multiprocess

accesslog = os.environ.get("ACCESS_LOG") or None  # "-" for stdout; off by default: a write per request
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
graceful_timeout = 10


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
