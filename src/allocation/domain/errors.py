"""Domain refusals. Each class's ``code`` is the error code clients see (API.md)."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused the operation; nothing changed."""

    code = "domain_error"
    replayed = False  # the refusal a request under this key was first answered
    # Seconds after which the same request may succeed without anyone doing anything (an HTTP
    # answer's Retry-After); None: a retry alone changes nothing.
    retry_after: int | None = None

    def __init__(self, message: str, **details: int | str) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    code = "not_found"


class AlreadyExists(DomainError):
    code = "already_exists"


class InsufficientStock(DomainError):
    code = "insufficient_stock"


class BelowConsumed(DomainError):
    code = "below_consumed"


class TotalExceedsMaximum(DomainError):
    """An adjustment would take the total past ``rules.MAX_TOTAL`` (``maximum`` says it)."""

    code = "total_exceeds_maximum"


class RefundExceedsConsumed(DomainError):
    code = "refund_exceeds_consumed"


class InvalidQuantity(DomainError):
    code = "invalid_quantity"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"


class LimitExceeded(DomainError):
    """The buyer would take more of the item than its ``limit_per_buyer``; ``remaining`` says
    how many units they may still take."""

    code = "limit_exceeded"


class BuyerRequired(DomainError):
    """The item has a limit per buyer, and the request names no buyer (a 400: bad input)."""

    code = "buyer_required"


class TooManyOpenReservations(DomainError):
    """The buyer, or the token, holds as many open reservations as allowed; ``limit`` says
    how many (a 429: one ends, by confirm, release or expiry, before another is held). The
    request was not processed: it is never remembered as its key's answer."""

    code = "too_many_open_reservations"
    retry_after: int | None = 1  # where the earliest expiry of the open ones is not known


class ReservationExpired(DomainError):
    code = "reservation_expired"


class ReservationReleased(DomainError):
    code = "reservation_released"


class ReservationConfirmed(DomainError):
    code = "reservation_confirmed"


class ReservationLifetimeExceeded(DomainError):
    """An extension past the reservation's lifetime (``rules.RESERVATION_LIFETIME_SECONDS``
    from its creation)."""

    code = "reservation_lifetime_exceeded"


class SaleClosed(DomainError):
    code = "sale_closed"


class SkuGated(DomainError):
    """The sku is gated by another open sale (``sku`` names it)."""

    code = "sku_gated"


class PassRequired(DomainError):
    code = "pass_required"


class PassInvalid(DomainError):
    """Forged, of another sale or buyer, expired or already used."""

    code = "pass_invalid"


class InvalidInput(DomainError, ValueError):
    """A value outside the contract (API.md, Identity): a float, bool or string for a number, a
    number out of range, a bad name or key. ``field`` names it; nothing was done. A ValueError
    too, as pydantic's validation errors are: code that catches bad input as ValueError catches
    it."""

    code = "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Unavailable(Exception):
    """A dependency (Redis, the database) cannot serve now; the caller may retry."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


REFUSALS: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (NotFound, AlreadyExists, InsufficientStock, BelowConsumed, TotalExceedsMaximum,
                RefundExceedsConsumed, InvalidQuantity, IdempotencyKeyReused, LimitExceeded,
                BuyerRequired, ReservationExpired, ReservationReleased, ReservationConfirmed,
                ReservationLifetimeExceeded, SaleClosed, SkuGated, PassRequired, PassInvalid)
}
