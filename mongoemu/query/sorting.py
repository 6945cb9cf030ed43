"""MongoDB sort order for documents (``find`` sort, ``$sort``, ``$push`` ``$sort``, ...).

Per sort field the document contributes one BSON value: a missing field sorts as ``null``; an
array sorts by its smallest element when ascending and its largest when descending (an empty array
sorts just below ``null``). Values are compared with :func:`bsonvalues.sort_key`, strings through
the collation when one is given.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from mongoemu.bsonvalues import MISSING, RANK_MINKEY, is_number, numeric_value, sort_key
from mongoemu.errors import CommandError
from mongoemu.query.collation import Collation, effective, sort_key_collated
from mongoemu.query.paths import get_path_values, split_path

SortKey = Callable[[dict[str, Any]], tuple]

# Between MinKey (RANK_MINKEY,) and null (RANK_NULL,): the documented place of an empty array.
_EMPTY_ARRAY_KEY = (RANK_MINKEY, 1)
_NULL_KEY = sort_key(None)


class _Descending:
    """Inverts the order of a key so that mixed-direction sorts remain one tuple comparison."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: "_Descending") -> bool:
        return other.key < self.key

    def __gt__(self, other: "_Descending") -> bool:
        return other.key > self.key

    def __le__(self, other: "_Descending") -> bool:
        return other.key <= self.key

    def __ge__(self, other: "_Descending") -> bool:
        return other.key >= self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"_Descending({self.key!r})"


def parse_sort(sort_spec: Any) -> list[tuple[str, int]]:
    """``[(path, 1 | -1 | 0)]``, 0 standing for a ``{$meta: ...}`` component.

    Raises the server's errors: 15974 for a non-numeric direction, 15975 for a number other than
    ±1, 17312 for an operator other than ``$meta``.
    """
    if not isinstance(sort_spec, dict):
        raise CommandError(14, "sort must be an object")
    fields: list[tuple[str, int]] = []
    for path, direction in sort_spec.items():
        if path == "" or "" in split_path(path):
            raise CommandError(40352, "FieldPath field names may not be empty strings.")
        if path.startswith("$"):
            raise CommandError(16410, "FieldPath field names may not start with '$'.")
        if isinstance(direction, dict):
            if len(direction) != 1 or "$meta" not in direction:
                raise CommandError(17312, "$meta is the only expression supported by $sort right now")
            if not isinstance(direction["$meta"], str):
                raise CommandError(17308, f"Unsupported argument to $meta: {direction['$meta']!r}")
            fields.append((path, 0))
        elif is_number(direction):
            number = numeric_value(direction)
            if number == 1:
                fields.append((path, 1))
            elif number == -1:
                fields.append((path, -1))
            else:
                raise CommandError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")
        else:
            raise CommandError(15974, f"Illegal key in $sort specification: {path}: {direction!r}")
    return fields


def make_sort_key(sort_spec: Any, collation: Collation | None = None) -> SortKey:
    """A key function ordering documents as ``sort_spec`` does (usable with ``sorted``/``min``)."""
    collation = effective(collation)
    value_key: Callable[[Any], Any] = (
        sort_key if collation is None else (lambda value: sort_key_collated(value, collation))
    )
    components = [_component(path, direction, value_key) for path, direction in parse_sort(sort_spec)]
    if len(components) == 1:
        only = components[0]
        return lambda doc: (only(doc),)
    return lambda doc: tuple(component(doc) for component in components)


def sort_documents(
    docs: Iterable[dict[str, Any]], sort_spec: Any, collation: Collation | None = None
) -> list[dict[str, Any]]:
    """A new list sorted by ``sort_spec``; ties keep their input order."""
    return sorted(docs, key=make_sort_key(sort_spec, collation))


def _component(path: str, direction: int, value_key: Callable[[Any], Any]) -> Callable[[dict[str, Any]], Any]:
    if direction == 0:
        return lambda doc: 0
    pick = min if direction == 1 else max

    def key_of(values: list[Any]) -> Any:
        candidates: list[Any] = []
        for value in values:
            if value.__class__ is list:
                if value:
                    candidates.extend(value_key(element) for element in value)
                else:
                    candidates.append(_EMPTY_ARRAY_KEY)
            elif value is MISSING:
                candidates.append(_NULL_KEY)
            else:
                candidates.append(value_key(value))
        return pick(candidates) if candidates else _NULL_KEY

    def dotted(doc: dict[str, Any]) -> Any:
        return key_of(get_path_values(doc, path, expand_leaf_arrays=False, include_missing=True))

    parts = split_path(path)
    component = dotted
    if len(parts) == 1:
        name = parts[0]

        def top_level(doc: dict[str, Any]) -> Any:
            value = doc.get(name, MISSING)
            return key_of([value]) if value.__class__ is list else value_key(value)

        component = top_level
    if direction == 1:
        return component
    return lambda doc: _Descending(component(doc))
