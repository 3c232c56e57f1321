"""Temporary files of a whole run (tests or bench) in one directory of the run's own.

`allocation serve` makes directories for its workers and cannot remove them (it becomes
granian); pointing TMPDIR elsewhere, for this process and every process it starts, keeps them
out of /tmp.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpdir_at(directory: Path) -> Iterator[None]:
    """TMPDIR is ``directory`` for this process and its children until the block ends."""
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = str(directory), None
    try:
        yield
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before
        tempfile.tempdir = None
