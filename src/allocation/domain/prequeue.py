"""The pre-queue's random order: a keyed permutation of 0..size-1, so that any process computes
a pre-queue ticket's place from its number, the size and the key drawn at the opening, with no
lookup and no list of the joiners.

A balanced Feistel network over the smallest even number of bits that holds ``size`` is a
permutation of that power of two; walking the cycle (applying it again while the result is
``size`` or more) restricts it to 0..size-1 and keeps it a bijection (Black and Rogaway's
cycle-walking). The domain is at most four times ``size``, so a walk is a few steps on average.
The round function is HMAC-SHA256 under the key: a joiner cannot predict or steer a place.
"""

from __future__ import annotations

import hashlib
import hmac

ROUNDS = 6


def _half_bits(size: int) -> int:
    return max(1, ((size - 1).bit_length() + 1) // 2)


def _round(key: bytes, index: int, value: int, mask: int) -> int:
    digest = hmac.new(key, f"{index}:{value}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & mask


def _encrypt(key: bytes, half: int, value: int) -> int:
    mask = (1 << half) - 1
    left, right = value >> half, value & mask
    for index in range(ROUNDS):
        left, right = right, left ^ _round(key, index, right, mask)
    return (left << half) | right


def place(key: bytes, size: int, number: int) -> int:
    """The place in 0..size-1 of the pre-queue's ``number`` (0..size-1)."""
    if not 0 <= number < size:
        raise ValueError(f"number {number} is outside the pre-queue of {size}")
    half = _half_bits(size)
    value = _encrypt(key, half, number)
    while value >= size:
        value = _encrypt(key, half, value)
    return value
