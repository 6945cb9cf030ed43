"""Dotted-path access with MongoDB's array rules.

Two readings of a path exist in MongoDB and both are needed across the emulator:

* the *query* reading (:func:`get_path_values`): a path component applied to an array fans out over
  the array's sub-documents, a numeric component may also select an array element, and an array
  reached at the end of the path offers both its elements and itself;
* the *update/expression* reading (:func:`get_path`): exactly one value or :data:`MISSING`, numeric
  components index arrays and nothing fans out.

Everything here is plain loops over dicts and lists because these functions sit on every hot path
(matching, sorting, index keys).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bson.dbref import DBRef

from mongoemu.bsonvalues import MISSING


@lru_cache(maxsize=4096)
def split_path(path: str) -> tuple[str, ...]:
    """``"a.b.0"`` → ``("a", "b", "0")``, cached because the same paths are split for every document."""
    return tuple(path.split("."))


def array_index(component: str) -> int:
    """The array offset a path component denotes, or -1.

    MongoDB only treats canonical non-negative integers as offsets: ``"01"`` and ``"+1"`` are field
    names, never positions.
    """
    if component.isascii() and component.isdigit() and (component == "0" or component[0] != "0"):
        return int(component)
    return -1


@lru_cache(maxsize=4096)
def path_indexes(path: str) -> tuple[int, ...]:
    """:func:`array_index` of every component of ``path`` (cached alongside :func:`split_path`)."""
    return tuple(array_index(part) for part in split_path(path))


def get_path(doc: Any, path: str) -> Any:
    """The single value at ``path`` or :data:`MISSING`; numeric components index arrays."""
    node = doc
    for part in split_path(path):
        cls = node.__class__
        if cls is dict:
            node = node.get(part, MISSING)
        elif cls is list:
            index = array_index(part)
            if index < 0 or index >= len(node):
                return MISSING
            node = node[index]
        elif cls is DBRef:
            node = node.as_doc().get(part, MISSING)
        else:
            return MISSING
        if node is MISSING:
            return MISSING
    return node


def get_path_values(
    doc: Any, path: str, *, expand_leaf_arrays: bool = True, include_missing: bool = False
) -> list[Any]:
    """Every value ``path`` reaches under the query reading.

    With ``expand_leaf_arrays`` an array at the end of the path contributes its elements followed
    by the array itself (what equality and range predicates test). With ``include_missing`` each
    place where the path stops short (a sub-document without the field, a scalar in the way)
    contributes :data:`MISSING`, which is what sort keys and index keys treat as ``null``; without
    it an empty list means the path reaches nothing.
    """
    out: list[Any] = []
    _collect(doc, split_path(path), path_indexes(path), 0, expand_leaf_arrays, include_missing, out)
    return out


def _collect(
    node: Any,
    parts: tuple[str, ...],
    indexes: tuple[int, ...],
    i: int,
    expand: bool,
    include_missing: bool,
    out: list[Any],
) -> None:
    n = len(parts)
    while i < n:
        cls = node.__class__
        if cls is dict:
            node = node.get(parts[i], MISSING)
            i += 1
            continue
        if cls is list:
            part, index = parts[i], indexes[i]
            for j, element in enumerate(node):
                if j == index:
                    _collect(element, parts, indexes, i + 1, expand, include_missing, out)
                if element.__class__ is dict and (index < 0 or part in element):
                    _collect(element, parts, indexes, i, expand, include_missing, out)
            return
        if cls is DBRef:
            node = node.as_doc()
            continue
        node = MISSING
        break
    if node is MISSING:
        if include_missing:
            out.append(MISSING)
        return
    if expand and node.__class__ is list:
        out.extend(node)
    out.append(node)
