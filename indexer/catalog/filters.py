"""Metadata filters: validation, and translation into portable SQL over the `images.meta` JSON column.

A filter is a mapping from a top-level metadata key to either a scalar (shorthand for `eq`) or a mapping of
operators, all combined with AND:

    {"color": "red", "year": {"gte": 2000, "lt": 2010}, "tag": {"in": ["cat", "dog"]}, "caption": {"exists": True}}

Only whitelisted operators exist, keys must match `KEY_PATTERN`, and every key and value reaches the database as a
bound parameter, so no user string ever becomes SQL text. Comparisons are type-strict on both engines: a string
never equals a number, a number never equals a boolean, and a key that is absent (or whose value is an object, an
array or JSON null) matches nothing except `exists`. Strings compare by code point on both engines (binary on
SQLite, `COLLATE "C"` on PostgreSQL), so range filters over strings give the same rows everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Float, Numeric, and_, bindparam, case, cast, false, func, or_

from indexer.catalog.tables import Image
from indexer.errors import InvalidInput

OPERATORS = ("eq", "gt", "gte", "lt", "lte", "in", "exists")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
MAX_KEYS = 32
MAX_IN_VALUES = 1024
MAX_STRING_LENGTH = 1024
# Integers beyond int64 cannot be bound on every driver, and JSON numbers there lose precision anyway.
_INT_LIMIT = 2**63

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """One validated `key <op> value` term of a filter."""

    key: str
    op: str
    value: Any


def parse_filter(spec: Mapping[str, Any] | None) -> list[Condition]:
    """Validate a filter and return its terms; raise `InvalidInput` naming what is allowed."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise InvalidInput(
            f"A filter must be an object of key -> value or key -> {{operator: value}}, got {_kind(spec)}"
        )
    if len(spec) > MAX_KEYS:
        raise InvalidInput(f"A filter may name at most {MAX_KEYS} keys, got {len(spec)}")
    conditions: list[Condition] = []
    for key, term in spec.items():
        _check_key(key)
        if isinstance(term, Mapping):
            if not term:
                raise InvalidInput(f"Filter on {key!r} has no operator. Available: {list(OPERATORS)}")
            conditions.extend(_parse_operator(key, op, value) for op, value in term.items())
        else:
            conditions.append(_parse_operator(key, "eq", term))
    return conditions


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidInput(
            f"Invalid filter key {key!r}: keys name top-level metadata fields and must match "
            f"{KEY_PATTERN.pattern} (letters, digits, '_' and '-'; nested paths are not supported)"
        )


def _parse_operator(key: str, op: object, value: object) -> Condition:
    if op not in OPERATORS:
        raise InvalidInput(f"Unknown filter operator {op!r} on {key!r}. Available: {list(OPERATORS)}")
    if op == "exists":
        if not isinstance(value, bool):
            raise InvalidInput(f"Filter {key!r}: 'exists' takes true or false, got {_kind(value)}")
        return Condition(key, "exists", value)
    if op == "in":
        if not isinstance(value, list | tuple):
            raise InvalidInput(f"Filter {key!r}: 'in' takes a list of values, got {_kind(value)}")
        if len(value) > MAX_IN_VALUES:
            raise InvalidInput(f"Filter {key!r}: 'in' takes at most {MAX_IN_VALUES} values, got {len(value)}")
        return Condition(key, "in", tuple(_check_scalar(key, op, v) for v in value))
    scalar = _check_scalar(key, str(op), value)
    if op in RANGE_OPERATORS and isinstance(scalar, bool):
        raise InvalidInput(f"Filter {key!r}: {op!r} compares numbers or strings, not booleans")
    return Condition(key, str(op), scalar)


def _check_scalar(key: str, op: str, value: object) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            raise InvalidInput(f"Filter {key!r}: integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"Filter {key!r}: {value} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise InvalidInput(f"Filter {key!r}: strings are limited to {MAX_STRING_LENGTH} characters")
        if "\x00" in value:  # no stored string holds one (see indexer/metadata.py), and PostgreSQL refuses it
            raise InvalidInput(f"Filter {key!r}: strings may not contain the NUL character")
        return value
    hint = " (use {'exists': false} to match a missing key)" if value is None else ""
    raise InvalidInput(f"Filter {key!r} {op!r}: values must be strings, numbers or booleans, got {_kind(value)}{hint}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _JsonField:
    """Typed views of one top-level key of `images.meta` for one SQL dialect.

    Each view is NULL unless the stored value has the matching JSON type, which is what makes comparisons
    type-strict and keeps PostgreSQL from ever casting a non-numeric string to NUMERIC.
    """

    def __init__(self, dialect: str, key: str) -> None:
        if dialect == "postgresql":
            node = func.jsonb_extract_path(Image.meta, key)
            self.json_type = func.jsonb_typeof(node)
            text = func.jsonb_extract_path_text(Image.meta, key)
            self.number = case((self.json_type == "number", cast(text, Numeric)))
            self.string = case((self.json_type == "string", text)).collate("C")
            self.is_true = and_(self.json_type == "boolean", text == "true")
            self.is_false = and_(self.json_type == "boolean", text == "false")
        elif dialect == "sqlite":
            # KEY_PATTERN excludes quotes, so quoting the key inside the JSON path cannot be escaped from.
            path = f'$."{key}"'
            self.json_type = func.json_type(Image.meta, path)
            value = func.json_extract(Image.meta, path)
            self.number = case((self.json_type.in_(("integer", "real")), value))
            self.string = case((self.json_type == "text", value))
            self.is_true = self.json_type == "true"
            self.is_false = self.json_type == "false"
        else:
            raise InvalidInput(f"Metadata filters support the sqlite and postgresql dialects, not {dialect!r}")

    def compare(self, op: str, value: Scalar) -> ColumnElement[bool]:
        if isinstance(value, bool):
            return self.is_true if value else self.is_false
        column = self.string if isinstance(value, str) else self.number
        if op == "eq":
            return column == value
        if op == "gt":
            return column > value
        if op == "gte":
            return column >= value
        if op == "lt":
            return column < value
        return column <= value


def filter_clauses(dialect: str, conditions: list[Condition]) -> list[ColumnElement[bool]]:
    """SQL boolean expressions (to AND together) for validated conditions on `dialect`."""
    clauses: list[ColumnElement[bool]] = []
    for cond in conditions:
        field = _JsonField(dialect, cond.key)
        if cond.op == "exists":
            clauses.append(field.json_type.is_not(None) if cond.value else field.json_type.is_(None))
        elif cond.op == "in":
            clauses.append(_in_clause(field, cond.value))
        else:
            clauses.append(field.compare(cond.op, cond.value))
    return clauses


def _in_clause(field: _JsonField, values: tuple[Scalar, ...]) -> ColumnElement[bool]:
    strings = [v for v in values if isinstance(v, str)]
    integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    floats = [v for v in values if isinstance(v, float)]
    parts: list[ColumnElement[bool]] = []
    if strings:
        parts.append(field.string.in_(strings))
    # Integers and floats go in separate, explicitly typed lists: an untyped list takes the type of its first value
    # (so [-3, 0.5] was sent as INTEGERs and 0.5 became 0 on PostgreSQL), and one mixed list would be compared as
    # floats, losing exactness for large integers.
    if integers:
        parts.append(field.number.in_(bindparam(None, integers, expanding=True, type_=BigInteger())))
    if floats:
        parts.append(field.number.in_(bindparam(None, floats, expanding=True, type_=Float())))
    # `is`, not `in`: 1 == True in Python, and a numeric 1 must not select JSON true.
    if any(v is True for v in values):
        parts.append(field.is_true)
    if any(v is False for v in values):
        parts.append(field.is_false)
    if not parts:
        return false()
    return or_(*parts) if len(parts) > 1 else parts[0]
