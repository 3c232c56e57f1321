"""The shared input rules (API.md, Identity) as plain checks: what they refuse, the error they
raise, that they agree with the HTTP and pub/sub models, and the command line's use of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from allocation.domain import errors
from allocation.entrypoints import cli, schemas

Check = Callable[..., object]
NOT_INTEGERS: list[object] = [1.5, 2.0, True, False, "3", None, b"3", [1], 1 + 0j]


def refusal(check: Check, value: object, *field: str) -> errors.InvalidInput:
    with pytest.raises(errors.InvalidInput) as caught:
        check(value, *field)
    assert not isinstance(caught.value, ValidationError)
    return caught.value


class TestQty:
    @pytest.mark.parametrize("value", [1.5, True, "3", 0, -1, 10**7])
    def test_refuses_with_the_projects_error_naming_the_field(self, value: object) -> None:
        exc = refusal(schemas.check_qty, value)
        assert exc.field == "qty" and exc.code == "invalid_field"
        assert exc.message.startswith("qty: ")
        assert isinstance(exc, errors.DomainError) and isinstance(exc, ValueError)

    @pytest.mark.parametrize("value", [*NOT_INTEGERS, 1_000_001, 10**100, -(10**100)])
    def test_refuses_every_non_integer_and_out_of_range(self, value: object) -> None:
        refusal(schemas.check_qty, value)

    @pytest.mark.parametrize("value", [1, 7, 1_000_000])
    def test_accepts_the_range(self, value: int) -> None:
        assert schemas.check_qty(value) == value
        assert type(schemas.check_qty(value)) is int

    def test_names_the_callers_field(self) -> None:
        assert refusal(schemas.check_qty, 0, "num").field == "num"


class TestTotal:
    @pytest.mark.parametrize("value", [*NOT_INTEGERS, -1, 1_000_000_001])
    def test_refuses(self, value: object) -> None:
        exc = refusal(schemas.check_total, value)
        assert exc.field == "total" and exc.message.startswith("total: ")

    @pytest.mark.parametrize("value", [0, 1, 1_000_000_000])
    def test_accepts_the_bounds(self, value: int) -> None:
        assert schemas.check_total(value) == value


class TestDelta:
    @pytest.mark.parametrize("value", [*NOT_INTEGERS, -1_000_000_001, 1_000_000_001])
    def test_refuses(self, value: object) -> None:
        exc = refusal(schemas.check_delta, value)
        assert exc.field == "delta" and exc.message.startswith("delta: ")

    @pytest.mark.parametrize("value", [-1_000_000_000, -1, 0, 1, 1_000_000_000])
    def test_accepts_the_bounds(self, value: int) -> None:
        assert schemas.check_delta(value) == value


class TestNamesAndKeys:
    @pytest.mark.parametrize("value", ["a", "A.b_c-9", "7", "x" * 64])
    def test_accepts_names(self, value: str) -> None:
        assert schemas.check_name(value, "sku") == value

    @pytest.mark.parametrize("value", ["", "x" * 65, "no spaces", "-lead", ".lead", "a/b",
                                       "a\n", "é", 7, None, b"ab", True])
    def test_refuses_names(self, value: object) -> None:
        exc = refusal(schemas.check_name, value, "sku")
        assert exc.field == "sku" and exc.message.startswith("sku: ")

    @pytest.mark.parametrize("value", ["k", "order-42", " spaced ok ", "~" * 128])
    def test_accepts_keys(self, value: str) -> None:
        assert schemas.check_idempotency_key(value) == value

    @pytest.mark.parametrize("value", ["", "a,b", "k" * 129, "tab\there", "é", 42, None])
    def test_refuses_keys(self, value: object) -> None:
        assert refusal(schemas.check_idempotency_key, value).field == "idempotency_key"

    def test_a_long_value_is_shown_cut_short(self) -> None:
        assert len(refusal(schemas.check_name, "!" * 10_000, "sku").message) < 200


def refused_by_model(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return True
    return False


def refused_by_check(check: Check, value: object) -> bool:
    try:
        check(value)
    except errors.InvalidInput:
        return True
    return False


numbers = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                    st.booleans(), st.text(max_size=12), st.none(),
                    st.sampled_from([0, 1, 10**6, 10**6 + 1, 10**9, 10**9 + 1, -(10**9) - 1]))


@given(value=numbers)
def test_the_checks_agree_with_the_http_and_message_models(value: object) -> None:
    """One set of rules: what a check refuses, the HTTP body and the pub/sub message refuse."""
    key = {"namespace": "a", "sku": "b", "idempotency_key": "k"}
    assert refused_by_check(schemas.check_qty, value) == refused_by_model(
        schemas.QtyBody, {"qty": value}) == refused_by_model(
        schemas.DecrementMessage, {"command": "Decrement", "qty": value, **key})
    assert refused_by_check(schemas.check_total, value) == refused_by_model(
        schemas.InitBody, {"total": value}) == refused_by_model(
        schemas.InitMessage, {"command": "InitInventory", "total": value, **key})
    assert refused_by_check(schemas.check_delta, value) == refused_by_model(
        schemas.AdjustBody, {"delta": value}) == refused_by_model(
        schemas.AdjustMessage, {"command": "AdjustTotal", "delta": value, **key})


@given(value=st.text(max_size=70))
def test_the_name_check_agrees_with_the_path_model(value: str) -> None:
    assert refused_by_check(lambda v: schemas.check_name(v, "sku"), value) == refused_by_model(
        schemas.ItemPath, {"namespace": "a", "sku": value})


class TestCommandLine:
    """Bad arguments are refused (exit 2) before anything is built or connected."""

    @pytest.fixture(autouse=True)
    def no_services(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse() -> None:
            raise AssertionError("the command went on to build the application")
        monkeypatch.setattr(cli, "_app", refuse)

    @staticmethod
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli.main, list(args))
        return result.exit_code, result.output

    @pytest.mark.parametrize("qty", ["1.5", "True", "0", "-1", "10000000", "1_000", " 2", "²",
                                     "0x10", "", "1" * 5000])
    @pytest.mark.parametrize("command", ["decrement", "refund"])
    def test_a_bad_qty(self, command: str, qty: str) -> None:
        code, output = self.run(command, "ns", "a", "--", qty)
        assert code == 2 and "qty" in output, output

    @pytest.mark.parametrize("delta", ["1.5", "-1000000001", "1000000001", "True"])
    def test_a_bad_delta(self, delta: str) -> None:
        code, output = self.run("adjust", "ns", "a", "--", delta)
        assert code == 2 and "delta" in output, output

    @pytest.mark.parametrize("total", ["1.0", "-1", "1000000001", "ten"])
    def test_a_bad_total(self, total: str) -> None:
        code, output = self.run("init", "ns", "a", "--", total)
        assert code == 2 and "total" in output, output

    def test_a_bad_key(self) -> None:
        code, output = self.run("decrement", "ns", "a", "1", "--key", "a,b")
        assert code == 2 and "idempotency_key" in output and "comma" in output, output

    @pytest.mark.parametrize(("args", "field"), [
        (("init", "bad ns", "a", "1"), "namespace"),
        (("init", "ns", "bad sku", "1"), "sku"),
        (("decrement", "--", "ns", "-x", "1"), "sku"),
        (("adjust", "ns/x", "a", "1"), "namespace"),
    ])
    def test_bad_names(self, args: tuple[str, ...], field: str) -> None:
        code, output = self.run(*args)
        assert code == 2 and f"invalid {field}" in output, output

    @pytest.mark.parametrize("args", [
        ("reserve", "ns"),  # no lines
        ("reserve", "ns", "a"),
        ("reserve", "ns", "a:0"),
        ("reserve", "ns", "a:1.5"),
        ("reserve", "ns", "a b:1"),
        ("reserve", "ns", "a:1", "--ttl", "0"),
        ("reserve", "ns", "a:1", "--ttl", "86401"),
        ("reserve", "ns", "a:1", "--buyer", "a b"),
        ("reserve", "ns", "a:1", "--key", "a,b"),
        ("reserve", "ns", *["a:1"] * 101),
        ("reserve", "bad ns", "a:1"),
        ("confirm", "ns", "a/b"),
        ("release", "ns", "x" * 65),
        ("sweep", "--interval", "0"),
    ])
    def test_bad_reservation_input(self, args: tuple[str, ...]) -> None:
        code, output = self.run(*args)
        assert code == 2, output

    def test_invalid_input_raised_inside_a_command_is_a_usage_error(self) -> None:
        @click.command()
        @cli.domain_exit
        def command() -> None:
            schemas.check_qty(1.5)

        result = CliRunner().invoke(command, [])
        assert result.exit_code == 2 and "invalid qty" in result.output

    def test_import_checks_every_row_by_the_same_rules(self, tmp_path: Path) -> None:
        rows = tmp_path / "rows.csv"
        rows.write_text("sku,total\nok,1\nq,²\nr,--5\ns,1.5\nt,1000000001\nu v,1\nw,+7\n")
        code, output = self.run("import", "ns", str(rows))
        assert code == 2, output
        for line in (3, 4, 5, 6):
            assert f"line {line}: total must be" in output
        assert "line 7: invalid sku" in output
        assert "line 8" not in output and "line 2" not in output
