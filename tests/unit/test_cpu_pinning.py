"""`allocation serve --pin-workers`: each worker process claims a slot and holds every thread it
has, and every thread it starts later, to that slot's CPU. Pinning happens in child processes
here: the test runner keeps its own CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from allocation.entrypoints import cli, cpu_pinning

# Starts a thread, pins, starts another; prints the CPU and every thread's CPUs.
PIN_AND_REPORT = """
import json, os, sys, threading
from pathlib import Path
from allocation.entrypoints import cpu_pinning
ready, stop = threading.Event(), threading.Event()
before = threading.Thread(target=lambda: (ready.set(), stop.wait()))
before.start(); ready.wait()
cpu = cpu_pinning.pin(Path(sys.argv[1]))
after = threading.Thread(target=stop.wait)
after.start()
masks = {t.name: sorted(os.sched_getaffinity(int(t.name)))
         for t in Path("/proc/self/task").iterdir()}
stop.set(); before.join(); after.join()
print(json.dumps({"cpu": cpu, "masks": masks}))
"""


def pin_in_child(directory: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PIN_AND_REPORT, str(directory)],
                         capture_output=True, text=True, timeout=30, check=True)
    report: dict[str, object] = json.loads(out.stdout)
    return report


def test_holders_get_distinct_slots_and_a_freed_slot_is_taken_again(tmp_path: Path) -> None:
    first, first_lock = cpu_pinning.claim_slot(tmp_path)
    second, second_lock = cpu_pinning.claim_slot(tmp_path)
    third, third_lock = cpu_pinning.claim_slot(tmp_path)
    assert (first, second, third) == (0, 1, 2)
    os.close(second_lock)  # as when a worker dies: the kernel drops its lock
    again, again_lock = cpu_pinning.claim_slot(tmp_path)
    assert again == 1
    for lock in (first_lock, third_lock, again_lock):
        os.close(lock)


def test_every_thread_is_held_to_the_slots_cpu(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    report = pin_in_child(tmp_path)
    assert report["cpu"] == cpus[0]
    masks = report["masks"]
    assert isinstance(masks, dict)
    assert len(masks) == 3  # main, one started before pinning, one after
    assert all(mask == [cpus[0]] for mask in masks.values()), masks


def test_slots_wrap_around_the_cpus(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    held = [cpu_pinning.claim_slot(tmp_path)[1] for _ in cpus]  # every CPU's slot taken
    try:
        assert pin_in_child(tmp_path)["cpu"] == cpus[0]
    finally:
        for lock in held:
            os.close(lock)
    if len(cpus) > 1:  # the first slot held, the child takes the second CPU's
        lock = cpu_pinning.claim_slot(tmp_path)[1]
        try:
            assert pin_in_child(tmp_path)["cpu"] == cpus[1]
        finally:
            os.close(lock)


def test_no_pinning_unless_the_server_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_pinning.ENV, raising=False)
    assert cpu_pinning.pin_from_env() is None


def test_pin_workers_is_refused_where_the_platform_lacks_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused before anything is set up or served.
    monkeypatch.setattr(cpu_pinning, "supported", lambda: False)
    result = CliRunner().invoke(cli.main, ["serve", "--pin-workers"])
    assert result.exit_code == 2
    assert "--pin-workers needs Linux" in result.output
