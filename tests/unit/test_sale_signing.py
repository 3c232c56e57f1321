"""Tickets and passes signed with SALE_SECRET (adapters/sale_signing.py)."""

from __future__ import annotations

import pytest

from allocation.adapters.sale_queue import PassClaim, TicketClaim
from allocation.adapters.sale_signing import MAX_LENGTH, SaleSigning
from allocation.config import Config
from allocation.domain import errors
from allocation.domain.errors import PassInvalid

BUYER = "b" * 128
NOW = 1_800_000_000_000


@pytest.fixture
def signing() -> SaleSigning:
    return SaleSigning(["the-key"])


class TestTickets:
    def test_a_ticket_reads_back_url_safe_and_short(self, signing: SaleSigning) -> None:
        claim = TicketClaim(BUYER, 1_999_999, NOW)
        ticket = signing.ticket("n" * 64, "s" * 64, claim)
        assert len(ticket) <= MAX_LENGTH
        assert set(ticket) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789-_.")
        assert signing.read_ticket("n" * 64, "s" * 64, ticket) == claim

    def test_the_queues_incarnation_reads_back_and_none_is_a_ticket_from_before(
            self, signing: SaleSigning) -> None:
        claim = TicketClaim("ann", 3, NOW, "0123456789abcdef")
        assert signing.read_ticket("ns", "drop", signing.ticket("ns", "drop", claim)) == claim
        before = signing._serializer("ticket", "ns", "drop").dumps(["ann", 3, NOW])
        assert signing.read_ticket("ns", "drop", before) == TicketClaim("ann", 3, NOW, "")
        for odd in (["ann", 3, NOW, 7], ["ann", 3, NOW, "x", "y"]):
            odd_ticket = signing._serializer("ticket", "ns", "drop").dumps(odd)
            assert signing.read_ticket("ns", "drop", odd_ticket) is None
        sale_pass = signing.pass_("ns", "drop", PassClaim("ann", 3, NOW + 1, "fedcba"))
        assert signing.read_pass("ns", "drop", "ann", sale_pass, NOW).incarnation == "fedcba"

    def test_another_sale_or_namespace_does_not_read_it(self, signing: SaleSigning) -> None:
        ticket = signing.ticket("ns", "drop", TicketClaim("ann", 3, NOW))
        assert signing.read_ticket("ns", "other", ticket) is None
        assert signing.read_ticket("other", "drop", ticket) is None

    @pytest.mark.parametrize("forged", ["", "x", "a.b", "." * 600])
    def test_forged_is_none(self, signing: SaleSigning, forged: str) -> None:
        assert signing.read_ticket("ns", "drop", forged) is None

    def test_another_key_is_a_forgery(self, signing: SaleSigning) -> None:
        ticket = SaleSigning(["another"]).ticket("ns", "drop", TicketClaim("ann", 3, NOW))
        assert signing.read_ticket("ns", "drop", ticket) is None

    def test_a_pass_is_not_a_ticket(self, signing: SaleSigning) -> None:
        sale_pass = signing.pass_("ns", "drop", PassClaim("ann", 3, NOW))
        assert signing.read_ticket("ns", "drop", sale_pass) is None


class TestPasses:
    def test_a_pass_reads_back_for_its_buyer(self, signing: SaleSigning) -> None:
        sale_pass = signing.pass_("ns", "drop", PassClaim("ann", 3, NOW + 1))
        assert signing.read_pass("ns", "drop", "ann", sale_pass, NOW).number == 3

    @pytest.mark.parametrize(("sale", "buyer", "now"), [
        ("other", "ann", NOW), ("drop", "bob", NOW), ("drop", "ann", NOW + 1)])
    def test_other_sale_buyer_or_expired_is_invalid(self, signing: SaleSigning, sale: str,
                                                     buyer: str, now: int) -> None:
        sale_pass = signing.pass_("ns", "drop", PassClaim("ann", 3, NOW + 1))
        with pytest.raises(PassInvalid):
            signing.read_pass("ns", sale, buyer, sale_pass, now)

    def test_a_ticket_is_not_a_pass(self, signing: SaleSigning) -> None:
        ticket = signing.ticket("ns", "drop", TicketClaim("ann", 3, NOW + 1))
        with pytest.raises(PassInvalid):
            signing.read_pass("ns", "drop", "ann", ticket, NOW)


class TestKeys:
    def test_rotation_newest_last_accepts_the_old(self) -> None:
        old = SaleSigning.from_secret("k1", required=True)
        rotated = SaleSigning.from_secret("k1 k2", required=True)
        ticket = old.ticket("ns", "drop", TicketClaim("ann", 1, NOW))
        assert rotated.read_ticket("ns", "drop", ticket) is not None
        fresh = rotated.ticket("ns", "drop", TicketClaim("ann", 1, NOW))
        assert SaleSigning.from_secret("k2", required=True).read_ticket(
            "ns", "drop", fresh) is not None
        assert old.read_ticket("ns", "drop", fresh) is None  # signed with the newest

    def test_required_without_a_secret_refuses_to_sign(self) -> None:
        with pytest.raises(errors.Unavailable):
            SaleSigning.from_secret(None, required=True).ticket(
                "ns", "drop", TicketClaim("ann", 1, NOW))

    def test_off_without_a_secret_draws_a_key_of_its_own(self) -> None:
        one, two = (SaleSigning.from_secret(None, required=False) for _ in range(2))
        ticket = one.ticket("ns", "drop", TicketClaim("ann", 1, NOW))
        assert one.read_ticket("ns", "drop", ticket) is not None
        assert two.read_ticket("ns", "drop", ticket) is None

    def test_the_config_reads_it_and_never_shows_it(self) -> None:
        config = Config.from_env({"SALE_SECRET": "s3cret"})
        assert config.sale_secret == "s3cret"
        assert "s3cret" not in repr(config)


@pytest.mark.parametrize("keys", [["the-key"], ["an-old-key", "the-key"]])
def test_signed_as_itsdangerous_signs_by_default(keys: list[str]) -> None:
    """The cached key derivation and the C HMAC sign what itsdangerous' defaults sign, byte
    for byte (a server on either reads the other's tickets and passes while they roll out)."""
    from itsdangerous import URLSafeSerializer

    ours = SaleSigning(keys)
    theirs = URLSafeSerializer(keys, salt="ticket:ns/drop")
    claim = TicketClaim("ann", 7, NOW)
    ticket = ours.ticket("ns", "drop", claim)
    assert ticket == theirs.dumps(["ann", 7, NOW])
    assert ours.read_ticket("ns", "drop", URLSafeSerializer(keys[:1], salt="ticket:ns/drop")
                            .dumps(["bob", 8, NOW])) == TicketClaim("bob", 8, NOW)
    sale_pass = ours.pass_("ns", "drop", PassClaim("ann", 7, NOW + 1))
    assert sale_pass == URLSafeSerializer(keys, salt="pass:ns/drop").dumps(["ann", 7, NOW + 1])
    assert ours.read_ticket("ns", "drop", ticket[:-1] + ("A" if ticket[-1] != "A" else "B")
                            ) is None
