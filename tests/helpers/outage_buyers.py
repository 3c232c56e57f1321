"""The buyers of the records-outage test (tests/e2e/test_record_outage.py), in processes of their
own: 64 threads in the test's own process would time its probes by their share of its GIL, not
by the server. The test's phase and its stop flag are shared through multiprocessing primitives
(``Phases``, handed to each process as it is spawned). Once told to stop, each buyer repeats
every try of its own not answered 200 with its key until it is, all at once as the herd came,
and each process returns its samples and whatever did not resolve."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext

import requests

PHASES = ("before", "refused", "partitioned", "after")
RESOLVE_SECONDS = 60.0  # for each key a 503 left unknown, once the record is back
# A 503 says Retry-After (1 s): the buyers honour it, as clients are told to, up to this. Tens of
# thousands of keys 503'd by buyers that ignored it took 26 s to resolve, all of it the test's.
MOST_RETRY_AFTER = 1.0


@dataclass(frozen=True)
class Sample:
    phase: str  # "a>b": sent in phase a, answered in phase b
    seconds: float
    status: int  # 0: no answer in time
    error: str = ""


class Phases:
    """The test's phase, its stop flag and how many buyers are buying, as every process of the
    test reads them."""

    def __init__(self, ctx: SpawnContext) -> None:
        self._index = ctx.Value("i", 0)
        self.buying = ctx.Value("i", 0)
        self.stopping = ctx.Event()

    @property
    def phase(self) -> str:
        return PHASES[self._index.value]

    def enter(self, phase: str) -> None:
        self._index.value = PHASES.index(phase)

    def timed(self, send: Callable[[], requests.Response]) -> Sample:
        phase, started = self.phase, time.monotonic()
        try:
            status, error = send().status_code, ""
        except requests.RequestException as exc:
            status, error = 0, type(exc).__name__
        if self.phase != phase:  # across a change: of neither phase
            phase = f"{phase}>{self.phase}"
        return Sample(phase, time.monotonic() - started, status, error)


@dataclass(frozen=True)
class Buyers:
    url: str  # the item's
    token: str  # sells in its namespace
    numbers: tuple[int, ...]  # one thread each; its keys are b{n}-0, b{n}-1, ...


_phases: Phases | None = None  # this buyer process's, from ``share``


def share(phases: Phases) -> None:
    """A pool's initializer: the only way synchronised objects reach a spawned process."""
    global _phases
    _phases = phases


@dataclass
class Report:
    tries: list[tuple[str, Sample]] = field(default_factory=list)  # (key, sample), in order
    unresolved: dict[str, str] = field(default_factory=dict)  # key: its last answer


def run_buyers(buyers: Buyers) -> Report:
    """Every try of this process's buyers, and the keys their repeats did not resolve."""
    assert _phases is not None, "run by a pool initialised with share()"
    phases, report = _phases, Report()
    threads = [threading.Thread(target=_buy, args=(phases, buyers, n, report))
               for n in buyers.numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report


def _buy(phases: Phases, buyers: Buyers, n: int, report: Report) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {buyers.token}"}

    retry_after = [0.0]  # the latest 503's, as a client that honours it waits

    def sell(key: str) -> requests.Response:
        answer = session.post(f"{buyers.url}/decrements", json={"qty": 1},
                              headers={**headers, "Idempotency-Key": key}, timeout=15)
        if answer.status_code == 503:
            retry_after[0] = float(answer.headers.get("Retry-After", "1"))
        return answer

    with phases.buying.get_lock():
        phases.buying.value += 1
    unanswered = []
    for attempt in itertools.count():
        if phases.stopping.is_set():
            break
        key = f"b{n}-{attempt}"
        sample = phases.timed(lambda key=key: sell(key))  # type: ignore[misc]
        report.tries.append((key, sample))  # list.append is atomic: no lock
        if sample.status != 200:
            unanswered.append(key)
        if sample.status == 503:  # as the answer asks, within the outage's pace
            phases.stopping.wait(min(retry_after[0], MOST_RETRY_AFTER))
        elif sample.status != 200:
            phases.stopping.wait(0.05)  # a buyer turned away backs off a moment
    with phases.buying.get_lock():
        phases.buying.value -= 1
    for key in unanswered:
        last = _repeated(sell, key)
        if last:
            report.unresolved[key] = last


def _repeated(sell: Callable[[str], requests.Response], key: str,
              seconds: float = RESOLVE_SECONDS) -> str:
    """Repeat a sale with its key until it answers 200 ("") or anything but 503 (that
    answer), for at most ``seconds``."""
    deadline, last = time.monotonic() + seconds, "no answer"
    while time.monotonic() < deadline:
        try:
            answer = sell(key)
        except requests.RequestException as exc:
            last = type(exc).__name__
        else:
            if answer.status_code == 200:
                return ""
            last = f"{answer.status_code} {answer.text[:200]}"
            if answer.status_code != 503:
                return last
        time.sleep(0.05)  # a poll's pace: the record catching up is what it waits for
    return last
