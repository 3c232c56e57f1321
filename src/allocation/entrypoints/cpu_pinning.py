"""One core per API worker process (``allocation serve --pin-workers``, Linux).

A worker's request threads take turns on one GIL: a batch's callers wake one another, a batch
leader comes back from Redis. Held to a core of its own, a worker's threads hand the GIL over
on the core they already run on, rather than by a wake-up on another: a small gain
(docs/benchmarks.md).

Worker processes are told apart by the first free slot they can lock in a directory the server
made for them; the kernel drops a dead worker's lock, so its replacement takes the same slot,
and so the same core. Slot ``n`` is the ``n``-th allowed CPU, wrapping around when there are
more workers than CPUs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

ENV = "ALLOCATION_PIN_DIR"  # set by `allocation serve --pin-workers` for its workers
_held: list[int] = []  # the slot's lock, open for the life of the process


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and Path("/proc/self/task").is_dir()


def pin_from_env() -> int | None:
    """Pin this process to its slot's CPU if the server asked for it; the CPU, or None."""
    directory = os.environ.get(ENV)
    return pin(Path(directory)) if directory else None


def pin(directory: Path) -> int:
    slot, lock = claim_slot(directory)
    _held.append(lock)
    cpu = cpu_of(slot)
    hold(os.getpid(), cpu)
    return cpu


def cpu_of(slot: int) -> int:
    """The slot's CPU: the ``slot``-th this process may run on, wrapping around."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[slot % len(cpus)]


def hold(pid: int, cpu: int) -> None:
    """Hold every thread process ``pid`` has to ``cpu``; threads it starts later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def claim_slot(directory: Path) -> tuple[int, int]:
    """The lowest slot no living process holds, and its locked file descriptor."""
    slot = 0
    while True:
        lock = os.open(directory / f"slot-{slot}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            slot += 1
            continue
        return slot, lock
