"""Many names as one PostgreSQL array parameter. psycopg2 quotes each element of a list
parameter in Python, about half a microsecond each, which a rebuild paid for its thousands of
SKUs on each statement of a batch; one text parameter, cast to ``text[]`` in the statement,
costs a join."""

from __future__ import annotations

from collections.abc import Sequence


def text_array(values: Sequence[str]) -> str:
    """``values`` as a PostgreSQL array literal, every element quoted (so that none reads as
    NULL), a backslash or a double quote escaped."""
    if not values:
        return "{}"
    body = '","'.join(values)
    if "\\" in body or body.count('"') != 2 * (len(values) - 1):
        body = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + body + '"}'
