"""The array literal a rebuild passes its SKUs in reads back as the same strings."""

from __future__ import annotations

import pytest

from allocation.adapters.sql_arrays import text_array


@pytest.mark.parametrize(("values", "literal"), [
    ([], "{}"),
    (["a"], '{"a"}'),
    (["a", "NULL", "b-1.x_2"], '{"a","NULL","b-1.x_2"}'),  # NULL quoted: a name, not a null
    (['say "hi"', "back\\slash", "c,d"], '{"say \\"hi\\"","back\\\\slash","c,d"}'),
])
def test_each_value_quoted_and_escaped(values: list[str], literal: str) -> None:
    assert text_array(values) == literal
