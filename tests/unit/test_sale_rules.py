"""The waiting room's rules (domain/sale.py, domain/prequeue.py): the specification the sale's
scripts are checked against."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocation.domain import errors, prequeue
from allocation.domain.sale import (
    PassState,
    QueueFigures,
    Sale,
    TicketView,
    admission_room,
    admit,
    is_sold_out,
    place,
    sale_state,
    ticket_state,
)

KEY = b"k" * 32


def figures(**changes: object) -> QueueFigures:
    base = QueueFigures(joined=10, serving=0, prequeue=0, order_key=KEY, outstanding=0, used=0,
                        expired=0, sold_out=False, closed=False)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class TestPrequeuePermutation:
    # Thousands of HMACs an example: on a shared machine a timing deadline fails, not the rule.
    @settings(deadline=None)
    @given(st.integers(min_value=1, max_value=3000), st.binary(min_size=16, max_size=32))
    def test_is_a_bijection_of_0_to_n(self, size: int, key: bytes) -> None:
        places = [prequeue.place(key, size, number) for number in range(size)]
        assert sorted(places) == list(range(size))

    @settings(deadline=None)
    @given(st.integers(min_value=16, max_value=3000), st.binary(min_size=16, max_size=32))
    def test_differs_from_identity(self, size: int, key: bytes) -> None:
        assert [prequeue.place(key, size, n) for n in range(size)] != list(range(size))

    def test_another_key_another_order(self) -> None:
        assert ([prequeue.place(b"a" * 32, 100, n) for n in range(100)]
                != [prequeue.place(b"b" * 32, 100, n) for n in range(100)])

    @pytest.mark.parametrize("number", [-1, 5])
    def test_a_number_outside_is_a_bug(self, number: int) -> None:
        with pytest.raises(ValueError):
            prequeue.place(KEY, 5, number)


class TestAdmissionRule:
    def test_room_is_factor_times_available_less_outstanding(self) -> None:
        assert admission_room(10, 0, 5, 2, None) == 15

    def test_max_admitted_caps_the_room(self) -> None:
        assert admission_room(10, 0, 5, 2, 8) == 3

    def test_units_pending_count_as_gone(self) -> None:
        assert admission_room(10, 4, 0, 2, None) == 12

    def test_never_negative(self) -> None:
        assert admission_room(1, 0, 7, 2, None) == 0
        assert admission_room(1, 5, 0, 2, None) == 0

    def test_a_fractional_factor_rounds_down(self) -> None:
        assert admission_room(3, 0, 0, 1.5, None) == 4

    @given(st.integers(0, 10_000), st.integers(0, 100), st.integers(0, 10_000),
           st.floats(1, 10), st.one_of(st.none(), st.integers(1, 1_000_000)))
    def test_outstanding_after_admission_is_within_the_bound(
            self, available: int, pending: int, outstanding: int, factor: float,
            most: int | None) -> None:
        room = admission_room(available, pending, outstanding, factor, most)
        if room:
            assert outstanding + room <= factor * (available - pending)
            assert most is None or outstanding + room <= most

    def test_admits_no_more_than_are_waiting(self) -> None:
        assert admit(figures(joined=10, serving=7), 50) == 10
        assert admit(figures(joined=10, serving=7), 2) == 9

    def test_admits_nobody_before_the_opening_or_after_closing(self) -> None:
        assert admit(figures(prequeue=None), 5) == 0
        assert admit(figures(closed=True), 5) == 0

    def test_sold_out_only_with_nothing_held(self) -> None:
        assert is_sold_out(0, 0)
        assert not is_sold_out(0, 3)
        assert not is_sold_out(1, 0)


class TestSaleTerms:
    def sale(self, **changes: object) -> Sale:
        return Sale("ns", "drop", ("a", "b"), 1000, **changes)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("field", "value"), [
        ("admit_factor", 0.5), ("admit_factor", 11), ("admit_factor", float("nan")),
        ("pass_ttl_seconds", 29), ("pass_ttl_seconds", 3601), ("max_admitted", 0),
        ("max_admitted", 1_000_001)])
    def test_out_of_range_names_the_field(self, field: str, value: object) -> None:
        with pytest.raises(errors.InvalidInput) as refused:
            self.sale(**{field: value})
        assert refused.value.field == field

    def test_skus_distinct_and_at_most_a_hundred(self) -> None:
        with pytest.raises(errors.InvalidInput):
            Sale("ns", "drop", ("a", "a"), 0)
        with pytest.raises(errors.InvalidInput):
            Sale("ns", "drop", tuple(f"s{n}" for n in range(101)), 0)
        with pytest.raises(errors.InvalidInput):
            Sale("ns", "drop", (), 0)

    def test_states(self) -> None:
        assert sale_state(self.sale(), 999, False) == "scheduled"
        assert sale_state(self.sale(), 1000, False) == "open"
        assert sale_state(self.sale(), 1000, True) == "sold_out"
        assert sale_state(self.sale(closed=True), 0, False) == "closed"

    def test_same_terms_ignores_closing(self) -> None:
        assert self.sale().same_terms(self.sale(closed=True))
        assert not self.sale().same_terms(self.sale(admit_factor=3))

    def test_same_terms_takes_the_skus_as_a_set(self) -> None:
        assert self.sale().same_terms(Sale("ns", "drop", ("b", "a"), 1000))
        assert not self.sale().same_terms(Sale("ns", "drop", ("a",), 1000))


class TestTicketState:
    def test_before_the_opening_a_ticket_is_scheduled(self) -> None:
        assert ticket_state(3, figures(prequeue=None)).state == "scheduled"

    def test_waiting_with_the_places_ahead(self) -> None:
        view = ticket_state(7, figures(serving=4))
        assert (view.state, view.position) == ("waiting", 3)

    def test_a_prequeue_number_waits_at_its_drawn_place(self) -> None:
        drawn = figures(prequeue=6, serving=0)
        positions = sorted(ticket_state(n, drawn).position or 0 for n in range(6))
        assert positions == list(range(6))
        assert ticket_state(6, drawn).position == 6  # after every pre-queue ticket

    def test_admitted_below_the_serving_figure(self) -> None:
        assert ticket_state(2, figures(serving=4)).state == "admitted"
        assert ticket_state(2, figures(serving=4), "used").state == "used"
        assert ticket_state(2, figures(serving=4), "expired").state == "expired"

    def test_sold_out_reaches_waiting_tickets_only(self) -> None:
        sold_out = figures(serving=4, sold_out=True)
        assert ticket_state(7, sold_out).state == "sold_out"
        assert ticket_state(2, sold_out).state == "admitted"  # its pass decides: read it
        assert ticket_state(2, sold_out, "outstanding").state == "admitted"
        assert ticket_state(2, sold_out, "used").state == "used"
        assert ticket_state(2, sold_out, "expired").state == "expired"

    def test_closed_wins(self) -> None:
        assert ticket_state(2, figures(closed=True)).state == "closed"

    def test_a_position_is_null_only_while_scheduled(self) -> None:
        """API.md: the tickets ahead still waiting, null while scheduled. A sold-out ticket
        keeps its place (it waits again in that order); the rest have nobody ahead."""
        assert ticket_state(3, figures(prequeue=None)).position is None
        sold_out = figures(serving=4, sold_out=True)
        assert [ticket_state(n, sold_out).position for n in (4, 5, 7)] == [0, 1, 3]
        again = figures(serving=4)  # stock came back: the same places, waiting
        assert [ticket_state(n, again) for n in (4, 7)] == [
            TicketView("waiting", 0), TicketView("waiting", 3)]
        passes: tuple[PassState | None, ...] = (None, "outstanding", "used", "expired")
        for pass_state in passes:
            assert ticket_state(2, sold_out, pass_state).position == 0
        closed = figures(serving=4, closed=True)
        assert {ticket_state(n, closed) for n in (2, 7)} == {TicketView("closed", 0)}
        assert ticket_state(3, figures(prequeue=None, closed=True)) == TicketView("closed", 0)

    def test_every_prequeue_place_is_ahead_of_every_later_one(self) -> None:
        drawn = figures(prequeue=50, joined=80)
        early = [place(n, drawn) for n in range(50)]
        late = [place(n, drawn) for n in range(50, 80)]
        assert max(p for p in early if p is not None) < min(p for p in late if p is not None)
