"""Reservations whose lines live in several Redis Cluster slots. No script can span slots, so a
coordinator steps through them: the reservation's home slot (reserve.lua, the slot its key
names) decides, the slots of its lines (part.lua) follow, visited in one order (the home's own
lines among them, in their place), each all or none and idempotent by reservation id.

- hold: the reservation as "pending" at home, then each slot's lines; a refusal releases what
  the earlier slots took and settles the reservation refused; else it settles held. A slot
  refused for units other carts hold (whose steps may be unfinished, or undone a moment later)
  is tried again for up to WAIT_SECONDS before its refusal stands: since every cart takes its
  slots in the same order, a cart waits only on carts that wait on none of its slots, so no
  two wait on each other. Never an oversell.
- confirm: the home marks it "confirming" while in time, then every other slot's holds are
  pinned (held past the expiry until the confirm is done) if still in time; then the home and
  the slots confirm. A slot whose hold had expired (clocks, or a confirm at the last moment)
  makes it expired: every line ends as expired.
- release, extend: the home, then the slots.
A coordinator that dies part-way leaves the reservation resumable: the same request again
carries on from where it stopped (every step is idempotent), and holds nobody resumes end at
their expiry (the pins' 30 s after it at most).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from allocation.adapters.counter import Line, Reserved, Step
from allocation.adapters.redis_keys import KeySpace
from allocation.domain.outcome import Figures

PIN_MS = 30_000  # how long past its expiry a confirm in progress holds a slot's lines
# How long a slot's hold is tried again while the units it lacks are held by other carts: their
# steps take milliseconds; a hold that outlasts this is a buyer's, and the refusal stands.
WAIT_SECONDS = 0.25


class SlotSteps(Protocol):
    """What the coordinator needs of the counter (``RedisCounter``): one script step in a
    reservation's home slot, one in another slot, and which slot an item is in."""

    @property
    def keys(self) -> KeySpace: ...

    def home_step(self, op: str, namespace: str, reservation_id: str, lines: Sequence[Line],
                  *, ttl_ms: int = 0, buyer: str | None = None, fingerprint: str = "",
                  whole: bool = True, every_line: Sequence[Line] = (),
                  refusal: tuple[str, str, int] = ("", "", -1), key: str = "",
                  open_cap: int = 0, at: int | None = None) -> Reserved: ...

    def part_step(self, op: str, namespace: str, reservation_id: str, lines: Sequence[Line],
                  expires_ms: int, buyer: str | None = None, key: str = "") -> Reserved: ...


def step(counter: SlotSteps, step: Step, namespace: str, rid: str, lines: Sequence[Line],
         *, ttl_ms: int, buyer: str | None, fingerprint: str, key: str = "",
         open_cap: int = 0) -> Reserved:
    home, others = _groups(counter, namespace, rid, lines)
    if step == "hold":
        return _hold(counter, namespace, rid, lines, home, others, ttl_ms, buyer, fingerprint,
                     key, open_cap)
    if step == "confirm":
        return _confirm(counter, namespace, rid, lines, home, others, buyer)
    done = counter.home_step(step, namespace, rid, home, ttl_ms=ttl_ms, buyer=buyer)
    if done.status != "ok" or step == "get":
        return done
    follow = {"release": "release", "extend": "extend"}[step]
    if done.state == "expired":
        follow = "expire"  # released after its expiry: the slots' holds expire
    parts = [counter.part_step(follow, namespace, rid, group, done.expires_ms)
             for group in others]
    return _unless_failed(parts) or _joined(done, lines, home, others, parts)


def _hold(counter: SlotSteps, namespace: str, rid: str, lines: Sequence[Line],
          home: list[Line], others: list[list[Line]], ttl_ms: int, buyer: str | None,
          fingerprint: str, key: str, open_cap: int) -> Reserved:
    first = counter.home_step("hold", namespace, rid, home, ttl_ms=ttl_ms, buyer=buyer,
                              fingerprint=fingerprint, whole=False, every_line=lines, key=key,
                              open_cap=open_cap)
    if first.status != "ok" or (first.replayed and first.state != "pending"):
        return first
    parts: list[Reserved] = []
    for group in others:
        part = _part_hold(counter, namespace, rid, group, first.expires_ms, buyer, key)
        if part.status in ("not_found", "fenced"):
            return part  # the reservation stays pending: the same request again resumes it
        if part.status != "ok":
            for taken in others[:len(parts)]:
                counter.part_step("release", namespace, rid, taken, first.expires_ms)
            counter.home_step("settle", namespace, rid, home, buyer=buyer,
                              refusal=(part.status, part.sku or "", part.detail or -1))
            return part
        parts.append(part)
    settled = counter.home_step("settle", namespace, rid, home)
    held = Reserved("ok", "held", first.created_ms, first.expires_ms, replayed=first.replayed,
                    figures=first.figures)
    return _joined(held, lines, home, others, parts) if settled.status == "ok" else settled


def _part_hold(counter: SlotSteps, namespace: str, rid: str, group: list[Line],
               expires_ms: int, buyer: str | None, key: str) -> Reserved:
    """One slot's hold, tried again (bounded) while what it lacks is held by other carts."""
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.001
    while True:
        part = counter.part_step("hold", namespace, rid, group, expires_ms, buyer, key)
        if (part.status != "insufficient_stock" or not _held_elsewhere(part, group)
                or time.monotonic() + pause > deadline):
            return part
        time.sleep(pause)  # a backoff on another cart's step, not a wait for a clock
        pause = min(pause * 2, 0.02)


def _held_elsewhere(part: Reserved, group: list[Line]) -> bool:
    """Whether the line ``part`` was refused on lacks only units that are held, not sold."""
    at = [sku for sku, _ in group].index(part.sku) if part.sku in dict(group) else -1
    if at < 0 or at >= len(part.figures) or part.detail is None:
        return False
    return group[at][1] <= part.detail + part.figures[at].held


def _confirm(counter: SlotSteps, namespace: str, rid: str, lines: Sequence[Line],
             home: list[Line], others: list[list[Line]], buyer: str | None) -> Reserved:
    begun = counter.home_step("confirm_begin", namespace, rid, home, ttl_ms=PIN_MS)
    if begun.status != "ok":
        return begun
    if begun.state == "confirmed":  # confirmed before: finish what a coordinator left undone
        for group in others:
            counter.part_step("confirm", namespace, rid, group, begun.expires_ms)
        return begun
    for group in others:
        pinned = counter.part_step("pin", namespace, rid, group, begun.expires_ms + PIN_MS)
        if pinned.status in ("fenced", "not_found"):
            return pinned  # still "confirming": the same request again carries on
        if pinned.status != "ok":
            # A line had expired, so has the reservation: every line ends as expired.
            aborted = counter.home_step("confirm_abort", namespace, rid, home, buyer=buyer)
            for group_left in others:
                counter.part_step("expire", namespace, rid, group_left, begun.expires_ms)
            return Reserved("reservation_expired", aborted.state, aborted.created_ms,
                            aborted.expires_ms)
    done = counter.home_step("confirm_end", namespace, rid, home, buyer=buyer)
    if done.status != "ok":
        return done
    parts = [counter.part_step("confirm", namespace, rid, group, begun.expires_ms)
             for group in others]
    return _unless_failed(parts) or _joined(done, lines, home, others, parts)


def _unless_failed(parts: list[Reserved]) -> Reserved | None:
    """The first slot that could not take its step (an item being rebuilt, or lost): the
    request is answered so, and the same request again finishes the step (each is
    idempotent)."""
    return next((part for part in parts if part.status != "ok"), None)


def _groups(counter: SlotSteps, namespace: str, rid: str,
            lines: Sequence[Line]) -> tuple[list[Line], list[list[Line]]]:
    """The lines the reservation's own steps take (none: its slot's lines are taken in their
    place among the others), and every slot's lines, in one fixed order (the slots')."""
    by_partition: dict[int, list[Line]] = {}
    for sku, qty in lines:
        by_partition.setdefault(counter.keys.partition(namespace, sku), []).append((sku, qty))
    return [], [by_partition[p] for p in sorted(by_partition)]


def _joined(result: Reserved, lines: Sequence[Line], home: list[Line],
            others: list[list[Line]], parts: list[Reserved]) -> Reserved:
    """``result`` with every line's figures, in the order of ``lines``."""
    figures: dict[str, Figures] = {}
    for group, answered in [(home, result), *zip(others, parts, strict=True)]:
        figures.update(zip((sku for sku, _ in group), answered.figures, strict=False))
    if any(sku not in figures for sku, _ in lines):
        return result
    return Reserved(result.status, result.state, result.created_ms, result.expires_ms,
                    result.sku, result.detail, result.replayed,
                    tuple(figures[sku] for sku, _ in lines))
