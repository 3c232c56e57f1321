"""Tickets and passes as signed data (itsdangerous, which Flask already ships), so that a poll
learns a ticket's number with no lookup and servers that share ``SALE_SECRET`` accept each
other's.

Each is signed under a salt naming its kind, namespace and sale: a ticket never reads as a pass,
and neither is accepted by another sale (the signature does not match). Keys rotate as
itsdangerous documents it: ``SALE_SECRET`` holds several keys separated by spaces, newest last;
the newest signs, every one is accepted, so an old key is dropped once the tickets and passes
it signed are no longer needed (a sale's length, or ``pass_ttl_seconds`` for passes only).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from functools import lru_cache

from itsdangerous import BadData, Signer, URLSafeSerializer
from itsdangerous.encoding import want_bytes
from itsdangerous.signer import SigningAlgorithm

from allocation.adapters.sale_queue import PassClaim, TicketClaim
from allocation.domain import errors
from allocation.domain.errors import PassInvalid

logger = logging.getLogger(__name__)
MAX_LENGTH = 512  # API.md: a ticket (and a pass) is at most this long


class _HmacSha1(SigningAlgorithm):
    """itsdangerous' default signature (HMAC-SHA1) by the C one-shot ``hmac.digest``: the same
    bytes as its pure-Python ``hmac.new`` with a digest function, at a fraction of the cost."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha1")


class _Signer(Signer):
    """itsdangerous' ``Signer``, its key derived once per salt and key rather than per call (a
    waiting ticket's poll is mostly its signature check)."""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        return _derived(self.salt, key)


@lru_cache(maxsize=4096)
def _derived(salt: bytes, key: bytes) -> bytes:
    return hashlib.sha1(salt + b"signer" + key).digest()  # itsdangerous' "django-concat"


class _Serializer(URLSafeSerializer):
    """One signer for its one salt, made once: itsdangerous makes one a call (a signer keeps
    no state between calls, so threads share it)."""

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None and salt != self.salt:
            return super().make_signer(salt)
        signer: Signer | None = self.__dict__.get("_signer")
        if signer is None:
            signer = self._signer = super().make_signer()
        return signer


@lru_cache(maxsize=4096)  # salts name a sale: a few are busy, any number may be asked about
def _serializer(keys: tuple[str, ...], salt: str) -> URLSafeSerializer:
    return _Serializer(list(keys), salt=salt, signer=_Signer,
                       signer_kwargs={"algorithm": _HmacSha1()})


def _named(incarnation: str) -> list[str]:
    return [incarnation] if incarnation else []


class SaleSigning:
    """Signs and reads a sale's tickets and passes with the deployment's keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def from_secret(cls, secret: str | None, required: bool) -> SaleSigning:
        """``SALE_SECRET``'s keys. Without one, where access is off (the embedded mode, one
        process), a key drawn for this process: its tickets do not outlive it. Where access
        is required, none: every sale operation is refused until it is set."""
        keys = (secret or "").split()
        if keys:
            return cls(keys)
        if required:
            logger.warning("SALE_SECRET is not set: sales and their queues are refused")
            return cls(())
        return cls((secrets.token_urlsafe(32),))

    def _serializer(self, kind: str, namespace: str, sale: str) -> URLSafeSerializer:
        if not self.keys:
            raise errors.Unavailable("the waiting room needs SALE_SECRET set", retry_after=60)
        return _serializer(self.keys, f"{kind}:{namespace}/{sale}")

    def ticket(self, namespace: str, sale: str, claim: TicketClaim) -> str:
        # The queue's incarnation last, where it has one (docs/adr/0046): without, the three
        # fields servers signed before incarnations were.
        return str(self._serializer("ticket", namespace, sale).dumps(
            [claim.buyer, claim.number, claim.joined_at_ms, *_named(claim.incarnation)]))

    def read_ticket(self, namespace: str, sale: str, ticket: str) -> TicketClaim | None:
        """The ticket's claim, or None where it is not one of this sale's (forged, altered,
        another sale's, or too long to be one)."""
        if len(ticket) > MAX_LENGTH:
            return None
        try:  # three fields: a ticket signed before incarnations were (docs/adr/0046)
            buyer, number, joined_at, *rest = self._serializer("ticket", namespace,
                                                               sale).loads(ticket)
        except (BadData, ValueError, TypeError):
            return None
        incarnation = rest[0] if len(rest) == 1 else "" if not rest else None
        if not (isinstance(buyer, str) and type(number) is int and type(joined_at) is int
                and isinstance(incarnation, str)):
            return None
        return TicketClaim(buyer, number, joined_at, incarnation)

    def pass_(self, namespace: str, sale: str, claim: PassClaim) -> str:
        return str(self._serializer("pass", namespace, sale).dumps(
            [claim.buyer, claim.number, claim.expires_at_ms, *_named(claim.incarnation)]))

    def read_pass(self, namespace: str, sale: str, buyer: str, sale_pass: str,
                  now_ms: int) -> PassClaim:
        """The pass's claim where it is this sale's, this buyer's and not past its expiry;
        else ``PassInvalid``. Whether it is still outstanding is the sale script's to say."""
        refused = PassInvalid("the Sale-Pass is not a valid pass of this sale for this buyer")
        if len(sale_pass) > MAX_LENGTH:
            raise refused
        try:
            who, number, expires, *rest = self._serializer("pass", namespace,
                                                           sale).loads(sale_pass)
        except (BadData, ValueError, TypeError):
            raise refused from None
        incarnation = rest[0] if len(rest) == 1 else "" if not rest else None
        if not (isinstance(who, str) and type(number) is int and type(expires) is int
                and isinstance(incarnation, str)):
            raise refused
        if who != buyer:
            raise refused
        if expires <= now_ms:
            raise PassInvalid("the Sale-Pass has expired")
        return PassClaim(who, number, expires, incarnation)
