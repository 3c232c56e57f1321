"""When a movement is answered: the one thing the two durability modes differ in.

``async`` answers once the counter has applied and recorded it (the ledger is written behind);
``sync`` also waits until the ledger writers have committed its seq. A sync movement that is
not committed in time is answered "unavailable": it may yet be written, so the outcome is
unknown and the client asks again with the same idempotency key. Where the counter was reloaded
from the database meanwhile (Redis lost its data), the seq may belong to another movement now:
only the ledger itself, asked by the movement's key, can then tell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from allocation.adapters.ledger_progress import REPLACED, WRITTEN, LedgerProgress
from allocation.domain import errors
from allocation.domain.outcome import Outcome

Mode = Literal["async", "sync"]


@dataclass(frozen=True)
class Durability:
    mode: Mode
    progress: LedgerProgress
    wait_seconds: float = 5.0

    def settle(self, namespace: str, sku: str, outcome: Outcome,
               in_ledger: Callable[[], bool]) -> None:
        """Return once the movement may be acknowledged, or raise ``Unavailable``.
        ``in_ledger`` asks the ledger whether it holds the movement (by its key)."""
        if self.mode == "async" or not outcome.ok or outcome.seq <= 0:
            return  # refusals write nothing; seq 0 is a record kept from before seqs were kept
        waited = self.progress.wait(namespace, sku, outcome.gen, outcome.seq, self.wait_seconds)
        if waited != WRITTEN and not (waited == REPLACED and in_ledger()):
            raise errors.Unavailable(
                f"{namespace}/{sku}: the movement is not in the ledger yet; its outcome is "
                "unknown, repeat it with the same Idempotency-Key", retry_after=1)
