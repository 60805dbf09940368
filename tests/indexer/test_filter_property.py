"""Property test of the metadata-filter language against real SQLite and PostgreSQL catalogs.

For any JSON-like filter Hypothesis can build (valid keys and operators, garbage keys, unknown operators, values of
every JSON type, huge numbers, NaN, long and odd strings):
- `parse_filter` either accepts it or raises `InvalidInput`, nothing else;
- an accepted filter compiles to SQL whose text holds no caller string (every key and value is a bound parameter);
- the database returns exactly the rows a plain-Python reading of the documented semantics selects.

Bounded in the suite (FUZZ_EXAMPLES, default 60 per engine); `make fuzz` runs thousands.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.catalog.filters import OPERATORS, Condition, filter_clauses, parse_filter
from indexer.catalog.repo import NewImage
from indexer.catalog.tables import Image
from indexer.errors import InvalidInput

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
KEYS = ["a", "b", "year", "tag", "n-1"]
STRINGS = ["", "red", "Red", "rot", "红", "Über", "z", "2001", "a b", "0.5"]
NUMBERS = [-3, -1, 0, 1, 2, 3, 2000, 2001, 2003, 0.5, 2.25, -1.5, 1e-3, 2001.0]
POOL = STRINGS + NUMBERS + [True, False]


def _rows(n: int = 40) -> list[dict[str, Any]]:
    """Seeded metadata rows: pool values, JSON null, nested objects and arrays (which only `exists` may match)."""
    rng = random.Random(7)
    extra = [None, [1, 2], {"x": 1}, {"a": "red"}]
    return [{k: rng.choice(POOL + extra) for k in rng.sample(KEYS, rng.randint(0, len(KEYS)))} for _ in range(n)]


ROWS = _rows()

scalars = st.one_of(
    st.sampled_from(POOL),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(min_size=1000, max_size=1100, alphabet="xy"),
)
values = st.one_of(scalars, st.none(), st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=5), scalars))
operators = st.one_of(st.sampled_from(OPERATORS), st.text(max_size=6))
terms = st.one_of(values, st.dictionaries(operators, st.one_of(values, st.lists(scalars, max_size=6)), max_size=3))
keys = st.one_of(st.sampled_from(KEYS + ["missing"]), st.text(max_size=12))
# Well-formed filters over the rows' own keys and values, so that many select some rows but not all.
pool_values = st.sampled_from(POOL)
well_formed = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(
        pool_values,
        st.dictionaries(st.sampled_from(["eq", "gt", "gte", "lt", "lte"]), pool_values, min_size=1, max_size=2),
        st.fixed_dictionaries({"in": st.lists(pool_values, max_size=5)}),
        st.fixed_dictionaries({"exists": st.booleans()}),
    ),
    min_size=1,
    max_size=3,
)
filters = st.one_of(well_formed, st.dictionaries(keys, terms, max_size=4), values)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "other"


def _holds(meta: dict[str, Any], cond: Condition) -> bool:
    """The documented semantics: type-strict comparisons; absent keys and objects, arrays, null match only exists."""
    if cond.op == "exists":
        return (cond.key in meta) == cond.value
    if cond.key not in meta:
        return False
    stored = meta[cond.key]
    wanted = cond.value if cond.op == "in" else (cond.value,)
    if cond.op in ("eq", "in"):
        return any(_kind(stored) == _kind(w) != "other" and stored == w for w in wanted)
    if _kind(stored) != _kind(cond.value) or _kind(stored) not in ("number", "string"):
        return False
    return {"gt": stored > cond.value, "gte": stored >= cond.value, "lt": stored < cond.value,
            "lte": stored <= cond.value}[cond.op]  # fmt: skip


def _caller_strings(conditions: list[Condition]) -> list[str]:
    found = []
    if any(cond.op == "in" and not cond.value for cond in conditions):
        return []  # an empty `in` is a constant FALSE, and SQL folds the whole AND into it: nothing is named
    for cond in conditions:
        found.append(cond.key)
        values_ = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        found += [v for v in values_ if isinstance(v, str)]
    return found


@pytest.fixture
def catalog(sessions: sessionmaker[Session]) -> tuple[sessionmaker[Session], int, list[int]]:
    with session_scope(sessions) as s:
        cid = repo.create_collection(s, name="f", encoder="test-tiny", dim=8, fingerprint="fp").id
        shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(ROWS))]
        refs = repo.add_images(s, cid, [NewImage(sha, meta=meta or None) for sha, meta in zip(shas, ROWS)])
        repo.set_image_status(s, [r.id for r in refs], "indexed")
    return sessions, cid, [r.id for r in refs]


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=filters)
def test_filters_are_refused_cleanly_or_select_exactly_the_documented_rows(catalog, spec: Any) -> None:  # noqa: ANN001
    sessions, cid, ids = catalog
    try:
        conditions = parse_filter(spec)
    except InvalidInput:
        with session_scope(sessions) as s, pytest.raises(InvalidInput):
            repo.ids_matching_filter(s, cid, spec)
        return
    with session_scope(sessions) as s:
        dialect = s.get_bind().dialect
        statement = select(Image.id).where(*filter_clauses(dialect.name, conditions))
        sql = str(statement.compile(dialect=dialect))
        got = repo.ids_matching_filter(s, cid, spec).tolist()
    # No caller string became SQL text: the statement has no string literal at all, and each value is a parameter.
    assert "'" not in sql
    params = []
    for value in statement.compile(dialect=dialect).params.values():
        params += value if isinstance(value, list) else [value]  # an IN list is one expanding parameter
    for text in _caller_strings(conditions):
        assert any(text == p or (isinstance(p, str) and text in p) for p in params), (text, sql)
    expected = [i for i, meta in zip(ids, ROWS) if all(_holds(meta, c) for c in conditions)]
    assert got == expected, (spec, got, expected)


def test_the_reference_semantics_are_not_trivial() -> None:
    """Guard against a property that passes because every filter selects nothing (or everything)."""
    specs = ({"a": {"in": STRINGS}}, {"year": {"gte": 2000}}, {"b": {"exists": True}})
    counts = [sum(all(_holds(m, c) for c in parse_filter(spec)) for m in ROWS) for spec in specs]
    assert all(0 < n < len(ROWS) for n in counts), counts


def test_an_in_list_mixing_integers_and_floats_keeps_both(catalog) -> None:  # noqa: ANN001
    """Found by the property above on PostgreSQL: [-3, 0.5] was bound as INTEGERs, so 0.5 matched the zeros."""
    sessions, cid, ids = catalog
    for spec in ({"a": {"in": [-3, 0.5]}}, {"a": {"in": [0.5, -3]}}, {"a": {"in": [2001, 2001.0, "2001"]}}):
        with session_scope(sessions) as s:
            got = repo.ids_matching_filter(s, cid, spec).tolist()
        assert got == [i for i, meta in zip(ids, ROWS) if all(_holds(meta, c) for c in parse_filter(spec))], spec
        assert got, spec
