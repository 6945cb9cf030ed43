"""Shard keys: a document's position in key space, chunk bounds, and what a query pins down.

A *point* is the tuple of :func:`~mongoemu.bsonvalues.sort_key` values of a document's shard-key
fields (a hashed field contributes the hash of its value), so points, chunk bounds (which hold
``MinKey``/``MaxKey``) and ranges compare with plain tuple ordering in BSON order. The router
(targeting) and the shards (ownership filtering, range deletion) use the same functions, so
they always agree on which chunk a document belongs to.
"""

from __future__ import annotations

from typing import Any, Iterable

from bson.max_key import MaxKey
from bson.min_key import MinKey

from mongoemu.bsonvalues import MISSING, encode, sort_key
from mongoemu.query.paths import get_path

Point = tuple[tuple[Any, ...], ...]
Range = tuple[Point, Point]  # [lower, upper)


def is_hashed(pattern: dict[str, Any]) -> bool:
    return "hashed" in pattern.values()


def _hash(value: Any) -> Any:
    from mongoemu.query.expressions import hashed_index_key
    return hashed_index_key(value)


def key_values(document: Any, pattern: dict[str, Any]) -> list[Any]:
    """The document's shard-key values (missing fields count as null, as on MongoDB 4.4+);
    hashed fields are hashed."""
    values = []
    for field, kind in pattern.items():
        value = get_path(document, field)
        if value is MISSING:
            value = None
        values.append(_hash(value) if kind == "hashed" else value)
    return values


def same_key(first: Any, second: Any, pattern: dict[str, Any]) -> bool:
    """Whether two versions of a document have the same shard key as a shard tells whether an
    update changed it: the key values (hashed where the key is) compared byte for byte
    (BSONObj::binaryEqual), so 5 and 5.0 differ while a missing field and null do not."""
    return encode({"key": key_values(first, pattern)}) == \
        encode({"key": key_values(second, pattern)})


def point_of(document: Any, pattern: dict[str, Any]) -> Point:
    return tuple(sort_key(value) for value in key_values(document, pattern))


def bound_point(bound: Any, pattern: dict[str, Any]) -> Point:
    """A chunk bound document (``{field: value | MinKey | MaxKey}``) as a point."""
    return tuple(sort_key(bound[field]) for field in pattern)


def global_min(pattern: dict[str, Any]) -> dict[str, Any]:
    return {field: MinKey() for field in pattern}


def global_max(pattern: dict[str, Any]) -> dict[str, Any]:
    return {field: MaxKey() for field in pattern}


def in_ranges(point: Point, ranges: Iterable[Range]) -> bool:
    return any(lower <= point < upper for lower, upper in ranges)


def overlaps(first: Range, second: Range) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def equality_values(query: Any, pattern: dict[str, Any]) -> list[Any] | None:
    """The shard-key values a query fixes by equality on every key field (``{f: v}`` or
    ``{f: {$eq: v}}``, also inside a top-level ``$and``), hashed where the key is; None when
    it does not fix all of them (the query then goes to every shard owning a chunk)."""
    if not isinstance(query, dict):
        return None
    found: dict[str, Any] = {}
    _collect_equalities(query, found)
    values = []
    for field, kind in pattern.items():
        if field not in found:
            return None
        value = found[field]
        values.append(_hash(value) if kind == "hashed" else value)
    return values


def _collect_equalities(query: dict[str, Any], found: dict[str, Any]) -> None:
    for field, condition in query.items():
        if field == "$and" and isinstance(condition, list):
            for clause in condition:
                if isinstance(clause, dict):
                    _collect_equalities(clause, found)
            continue
        if field.startswith("$"):
            continue
        if isinstance(condition, dict):
            if len(condition) == 1 and "$eq" in condition:
                condition = condition["$eq"]
            elif any(key.startswith("$") for key in condition):
                continue
        if isinstance(condition, list) or hasattr(condition, "pattern"):
            continue  # an array matches its elements, a regex many strings: not one point
        found.setdefault(field, condition)


def point_from_values(values: list[Any]) -> Point:
    return tuple(sort_key(value) for value in values)


def describe(values: list[Any], pattern: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(pattern, values))
