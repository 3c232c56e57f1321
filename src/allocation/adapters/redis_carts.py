"""Reservations whose lines live in several Redis Cluster slots. No script can span slots, so a
coordinator steps through them: the reservation's home slot (reserve.lua) decides, the other
slots (part.lua) follow, visited in one order, each all or none and idempotent by reservation
id. No script waits on another, so nothing deadlocks.

- hold: the home lines as "pending", then each other slot; a refusal releases what the earlier
  slots took and settles the reservation refused; else it settles held. A client may meanwhile
  see a brief false "insufficient stock" from a cart being undone; never an oversell.
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

from collections.abc import Sequence
from typing import TYPE_CHECKING

from allocation.adapters.counter import Line, Reserved, Step
from allocation.domain.outcome import Outcome

if TYPE_CHECKING:
    from allocation.adapters.redis_counter import RedisCounter

PIN_MS = 30_000  # how long past its expiry a confirm in progress holds a slot's lines


def step(counter: RedisCounter, step: Step, namespace: str, rid: str, lines: Sequence[Line],
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


def _hold(counter: RedisCounter, namespace: str, rid: str, lines: Sequence[Line],
          home: list[Line], others: list[list[Line]], ttl_ms: int, buyer: str | None,
          fingerprint: str, key: str, open_cap: int) -> Reserved:
    first = counter.home_step("hold", namespace, rid, home, ttl_ms=ttl_ms, buyer=buyer,
                              fingerprint=fingerprint, whole=False, every_line=lines, key=key,
                              open_cap=open_cap)
    if first.status != "ok" or (first.replayed and first.state != "pending"):
        return first
    parts: list[Reserved] = []
    for group in others:
        part = counter.part_step("hold", namespace, rid, group, first.expires_ms, buyer, key)
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


def _confirm(counter: RedisCounter, namespace: str, rid: str, lines: Sequence[Line],
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


def _groups(counter: RedisCounter, namespace: str, rid: str,
            lines: Sequence[Line]) -> tuple[list[Line], list[list[Line]]]:
    """The lines in the reservation's slot, and the others by slot, in one fixed order."""
    home = int(rid.partition(".")[0])
    by_partition: dict[int, list[Line]] = {}
    for sku, qty in lines:
        by_partition.setdefault(counter.keys.partition(namespace, sku), []).append((sku, qty))
    return (by_partition.pop(home, []),
            [by_partition[p] for p in sorted(by_partition)])


def _joined(result: Reserved, lines: Sequence[Line], home: list[Line],
            others: list[list[Line]], parts: list[Reserved]) -> Reserved:
    """``result`` with every line's figures, in the order of ``lines``."""
    figures: dict[str, Outcome] = {}
    for group, answered in [(home, result), *zip(others, parts, strict=True)]:
        figures.update(zip((sku for sku, _ in group), answered.figures, strict=False))
    if any(sku not in figures for sku, _ in lines):
        return result
    return Reserved(result.status, result.state, result.created_ms, result.expires_ms,
                    result.sku, result.detail, result.replayed,
                    tuple(figures[sku] for sku, _ in lines))
