"""`allocation` commands as a user runs them: a process each, with its own environment,
arguments, output and exit code, but forked from a server process that has imported the command
already (multiprocessing's forkserver) rather than started afresh. A fresh interpreter spends
about half a second importing it, most of a command's time in the CLI tests."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import tempfile
import traceback
from pathlib import Path

__all__ = ["run_cli"]

_FORKS = multiprocessing.get_context("forkserver")
# Imported once, by the server; "__main__" (pytest's script): else each command imports it again.
_FORKS.set_forkserver_preload(["__main__", "allocation.entrypoints.cli"])


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """``allocation *args`` under ``env``, as ``subprocess.run(..., capture_output=True,
    text=True)`` answers it."""
    with tempfile.TemporaryDirectory(prefix="allocation-cli-") as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        out.touch()
        err.touch()
        command = _FORKS.Process(target=_command, args=(args, env, str(out), str(err)),
                                 name="allocation")
        command.start()
        command.join(timeout)
        if command.exitcode is None:
            command.kill()
            command.join()
            raise subprocess.TimeoutExpired(["allocation", *args], timeout,
                                            out.read_bytes(), err.read_bytes())
        done = subprocess.CompletedProcess(["allocation", *args], command.exitcode,
                                           out.read_text(), err.read_text())
    if check:
        done.check_returncode()
    return done


def _command(args: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: what `python -m allocation.entrypoints.cli *args` does, and
    exits as it would (click's SystemExit; an uncaught error's traceback and 1; the exit
    handlers run)."""
    from allocation.entrypoints.cli import main

    os.environ.clear()
    os.environ.update(env)
    for path, fd in ((out, 1), (err, 2)):
        opened = os.open(path, os.O_WRONLY)
        os.dup2(opened, fd)
        os.close(opened)
    try:
        main(args=args, prog_name="allocation")
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the interpreter's own last word, then 1
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        atexit._run_exitfuncs()
