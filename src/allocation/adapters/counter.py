"""The fast-path counter port: per-item figures and idempotent movements, atomic per item.

``Counter`` is what an adapter implements; the service layer asks each function for the narrow
part it uses (``MovingStock``, ``Reserving``, ``Rebuilding``, ``Reading``), which ``Counter``
meets structurally."""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

from allocation.domain.outcome import Figures, Outcome
from allocation.domain.rules import Kind

# An item's limit per buyer (None: none) and each buyer's units bought and held.
Allowances = tuple[int | None, Mapping[str, int]]
Line = tuple[str, int]  # (sku, qty) of a reservation
# An open hold of an item: (reservation id, qty, buyer or "", expires_ms).
Hold = tuple[str, int, str, int]
Step = Literal["hold", "confirm", "release", "extend", "get"]


# Rows of a ``Restored`` part, a sequence per column. Buyers' units: (sku, buyer, units).
BuyerUnits = tuple[Sequence[str], Sequence[str], Sequence[int]]
# Open holds: (sku, reservation id, qty, buyer or "", expires ms).
OpenHolds = tuple[Sequence[str], Sequence[str], Sequence[int], Sequence[str], Sequence[int]]
# Movements with keys: (sku, key, kind, qty, buyer or None, total, available and held after,
# created in microseconds since the epoch).
KeyedMovements = tuple[Sequence[str], Sequence[str], Sequence[str], Sequence[int],
                       Sequence[str | None], Sequence[int], Sequence[int], Sequence[int],
                       Sequence[int]]


class Restored(NamedTuple):
    """Items the counter lost, as the record has them, a sequence per field (a refresh's batch
    goes from the record's arrays to the load script's arguments with no object per item),
    all under the generation ``gen``: each item's figures, its limit per buyer (None: none)
    and the open sale that gates it ("": none; a sale's gate is in the record, and a movement
    without its pass must stay refused). Then rows of the items' parts, each naming its item's
    sku, in sku order: buyers' units, open holds, and the movements whose keys are still in
    their window (latest first)."""

    skus: Sequence[str]
    totals: Sequence[int]
    consumed: Sequence[int]
    held: Sequence[int]
    seqs: Sequence[int]
    gen: str
    limits: Sequence[int | None]
    gates: Sequence[str]
    units: BuyerUnits = ((), (), ())
    holds: OpenHolds = ((), (), (), (), ())
    keyed: KeyedMovements = ((), (), (), (), (), (), (), (), ())


@dataclasses.dataclass(frozen=True)
class Reserved:
    """What a reservation step came to. ``status``: ``ok``, a refusal's code (the line's
    ``sku`` with it, and ``detail``: what is available or what the buyer may still take),
    ``not_found``, ``fenced``, ``idempotency_key_reused``, or ``lost`` (a hold again of a
    reservation the counter lost while its items kept, or got back, its holds). ``figures``:
    each line's item after the step, where the step read them."""

    status: str
    state: str = ""
    created_ms: int = 0
    expires_ms: int = 0
    sku: str | None = None
    detail: int | None = None
    replayed: bool = False
    figures: tuple[Figures, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def new_generation() -> str:
    """A generation for a counter loaded from the record (see ``Figures.gen``)."""
    return secrets.token_hex(6)




class Reading(Protocol):
    """An item's figures as the counter holds them."""

    def read(self, namespace: str, sku: str) -> Figures | None: ...

    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Figures | None]: ...


class MovingStock(Reading, Protocol):
    """Movements (adjust, decrement, refund), each under its idempotency key."""

    @property
    def idempotency_ttl(self) -> float: ...

    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, record: bool = False,
              buyer: str | None = None, sale: str = "") -> Outcome: ...


class Reserving(Protocol):
    """A reservation's steps, and putting back one the counter lost."""

    def reservation_id(self, namespace: str, seed: str) -> str: ...

    def reservation_step(self, step: Step, namespace: str, reservation_id: str,
                         lines: Sequence[Line], *, ttl_ms: int = 0, buyer: str | None = None,
                         fingerprint: str = "", idempotency_key: str | None = None,
                         open_cap: int = 0, sale: str = "") -> Reserved: ...

    def reservation_lines(self, namespace: str, reservation_id: str
                          ) -> tuple[tuple[Line, ...], str | None] | None: ...

    def restore_reservation(self, namespace: str, reservation_id: str, lines: Sequence[Line],
                            buyer: str | None, state: str, created_ms: int, expires_ms: int,
                            fingerprint: str = "") -> None: ...


class Rebuilding(Reading, Protocol):
    """Loading items from the record (initialisation, limits, rebuilds under a fence)."""

    @property
    def idempotency_ttl(self) -> float: ...

    def load(self, namespace: str, sku: str, figures: Figures) -> None: ...

    def load_many(self, namespace: str, figures: Iterable[tuple[str, Figures]]) -> None: ...

    def load_allowances(self, namespace: str, allowances: Mapping[str, Allowances]) -> None: ...

    def set_limit(self, namespace: str, sku: str, limit: int | None) -> None: ...

    def forget(self, namespace: str, sku: str, keys: Sequence[str] = ()) -> None: ...

    def seqs_many(self, namespace: str, skus: Sequence[str]
                  ) -> list[tuple[str, int] | None]: ...

    def fence_many(self, namespace: str, skus: Sequence[str]) -> list[int | None]: ...

    def unfence(self, namespace: str, sku: str) -> None: ...

    def restore_many(self, namespace: str, items: Restored) -> None: ...


class Counter(abc.ABC):
    # True when recording a movement also publishes its events (in the same atomic step):
    # bootstrap reads it once, to choose how the service layer publishes them.
    publishes_events: bool = False
    idempotency_ttl: float = 48 * 3600  # how long a success is remembered under its key

    @abc.abstractmethod
    def apply(self, namespace: str, sku: str, kind: Kind, qty: int,
              idempotency_key: str | None, *, record: bool = False,
              buyer: str | None = None, sale: str = "") -> Outcome:
        """Apply a movement atomically, or refuse it by the domain rules.

        A decrement naming a ``buyer`` counts against their limit on the item (checked in the
        same step: ``limit_exceeded``, with ``remaining``; ``buyer_required`` where the item
        has a limit and no buyer is named); a refund naming them gives their allowance back,
        and where the item has a limit returns no more than their units (bought and held):
        ``refund_exceeds_consumed`` with ``remaining`` their units.
        A decrement of an item a sale gates is ``pass_required`` (not remembered under the key)
        unless ``sale`` names that sale: the caller holds the buyer's pass of it.

        A key seen before returns its stored outcome (``replayed``, with the movement's
        ``seq``), or ``idempotency_key_reused`` when the request differs. Refusals are
        remembered under the key too, for a shorter while.
        An applied movement takes the item's next ``seq``; with ``record`` it is appended to the
        outbox in the same atomic step (the ledger is written from there).
        An unknown item answers ``not_found``, a fenced one ``fenced``; neither is remembered.
        """

    def load(self, namespace: str, sku: str, figures: Figures) -> None:
        """Set an item's figures and lift any fence (initialisation, rebuild)."""
        self.load_many(namespace, [(sku, figures)])

    @abc.abstractmethod
    def load_many(self, namespace: str, figures: Iterable[tuple[str, Figures]]) -> None:
        """Set items' figures (sku, figures) and lift any fence. Each item's total, consumed,
        held and seq; its generation where the figures name one (else it keeps its own). The
        limit is not loaded from here: ``load_allowances`` sets it with the buyers' units."""

    @abc.abstractmethod
    def reservation_step(self, step: Step, namespace: str, reservation_id: str,
                         lines: Sequence[Line], *, ttl_ms: int = 0, buyer: str | None = None,
                         fingerprint: str = "", idempotency_key: str | None = None,
                         open_cap: int = 0, sale: str = "") -> Reserved:
        """One step of a reservation, atomic over it and all its lines' items.

        ``hold`` takes every line (lines of one sku added together by the caller) or none, as
        a reservation that expires ``ttl_ms`` later by the counter's clock; again with the same
        ``fingerprint`` it answers the same (``replayed``), with another
        ``idempotency_key_reused``. A replay answers as the hold first did (state ``held``, its
        first expiry), whatever happened to the reservation since. With ``open_cap`` (a hold
        naming a ``buyer``), the buyer's open reservations in the namespace may not exceed it
        (``too_many_open_reservations``, ``detail`` the cap), checked in the same step; the
        steps after the hold take the reservation's ``buyer`` (``reservation_lines``), so that
        one that ends it counts no more. A hold of an item a sale gates is ``pass_required``
        (not remembered) unless ``sale`` names that sale: the caller holds its pass.
        ``confirm`` sells the held units, ``release`` puts them back
        on sale, ``extend`` moves the expiry to ``ttl_ms`` from now; each checks and changes
        the reservation's state in the same step, so when they race with each other and with
        expiry exactly one ends it. ``get`` reads it. Every ended line is one movement of its
        item (``hold``, ``confirm``, ``release``, ``expire``), recorded in the outbox. A
        counter that publishes events itself gives a hold's ``idempotency_key`` to its
        ``Reserved`` events.
        """

    def reservation_id(self, namespace: str, seed: str) -> str:
        """The id of the reservation an idempotency key (``seed``) makes: the same for the same
        key whatever the request's body, opaque and URL-safe. An adapter may put where the
        reservation lives into it, from the key alone."""
        digest = hashlib.blake2b(f"{namespace}\n{seed}".encode(), digest_size=15).digest()
        return base64.urlsafe_b64encode(digest).decode()

    @abc.abstractmethod
    def restore_reservation(self, namespace: str, reservation_id: str, lines: Sequence[Line],
                            buyer: str | None, state: str, created_ms: int, expires_ms: int,
                            fingerprint: str = "") -> None:
        """Put back a reservation the counter lost (from the ledger), unless it holds one by
        that id again. Its lines' holds come back with their items' rebuild."""

    @abc.abstractmethod
    def reservation_lines(self, namespace: str, reservation_id: str
                          ) -> tuple[tuple[Line, ...], str | None] | None:
        """A reservation's lines and buyer, None where the counter holds no such reservation."""

    @abc.abstractmethod
    def load_holds(self, namespace: str, holds: Mapping[str, Sequence[Hold]]) -> None:
        """Set items' open holds (sku -> holds), replacing what the counter held: a rebuild
        does so, with allowances, before it loads the figures."""

    @abc.abstractmethod
    def sweep(self, most: int = 1000) -> int:
        """End holds that are due on items nobody touches (at most ``most`` items); returns
        how many items it visited. Correctness never waits on it: every step that touches an
        item ends that item's due holds first."""

    @abc.abstractmethod
    def load_allowances(self, namespace: str, allowances: Mapping[str, Allowances]) -> None:
        """Set items' limits and buyers' units (sku -> allowances), replacing what the counter
        held: a rebuild does so before it loads the figures, so no sale sees one without the
        other."""

    @abc.abstractmethod
    def set_limit(self, namespace: str, sku: str, limit: int | None) -> None:
        """Set (None: lift) the limit per buyer of an item the counter holds; nothing where it
        does not (a rebuild loads it from the record)."""

    @abc.abstractmethod
    def fence_many(self, namespace: str, skus: Sequence[str]) -> list[int | None]:
        """Fence items for a rebuild; each item's seq then, or None where it is not held."""

    @abc.abstractmethod
    def unfence(self, namespace: str, sku: str) -> None:
        """Lift a fence without changing the figures (a rebuild that gave up)."""

    @abc.abstractmethod
    def forget(self, namespace: str, sku: str, keys: Sequence[str] = ()) -> None:
        """Drop an item's figures (an initialisation that did not commit), and the records of
        its idempotency ``keys`` (movements of a history the ledger does not hold)."""

    @abc.abstractmethod
    def read_many(self, namespace: str, skus: Sequence[str]) -> list[Figures | None]:
        """Current figures of each item, ``None`` where the counter does not hold it."""

    def seqs_many(self, namespace: str, skus: Sequence[str]) -> list[tuple[str, int] | None]:
        """Each item's (generation, seq), ``None`` where the counter does not hold it: what a
        rebuild asks of many items at once."""
        return [None if f is None else (f.gen, f.seq) for f in self.read_many(namespace, skus)]

    @abc.abstractmethod
    def restore_many(self, namespace: str, items: Restored) -> None:
        """Load items the counter lost as the record has them: their keys (as successes, for
        what is left of their idempotency window; a record the counter has stays), limits,
        buyers' units and open holds replaced, then the figures (which unfence them), so that
        no sale sees one without the others."""

    def read(self, namespace: str, sku: str) -> Figures | None:
        return self.read_many(namespace, [sku])[0]

    @abc.abstractmethod
    def hold_tally(self) -> dict[tuple[str, str], int]:
        """Holds started and ended since the counter began counting, by (namespace, what):
        ``units:<kind>`` and ``holds:<kind>``, kind one of hold, confirm, release, expire (a
        reservation holds one hold per line). Counted in the step that starts or ends the hold,
        whoever runs it, so expiries that a sale or the sweeper ran into are counted too."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` when the counter cannot serve."""
