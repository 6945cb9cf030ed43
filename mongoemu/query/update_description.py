"""Delta ("$v: 2") diffs between two versions of a document, and the change-stream view of them.

Since 5.0 a server logs an update as ``o: {$v: 2, diff: {...}}`` and a change stream turns that diff
into ``updateDescription``.  The emulator computes the same diff from the pre- and post-image, with
the algorithm of the server's ``doc_diff::computeOplogDiff`` (the one it uses for pipeline-style
updates):

* document diff: ``{d: {field: false}, u: {field: value}, i: {field: value}, s<field>: sub-diff}``;
* array diff: ``{a: true, l: newLength, u<index>: value, s<index>: sub-diff}`` (``l`` only when the
  array shrank).

:func:`compute_diff` builds the diff, :func:`describe_diff` turns it into ``updateDescription``
(field order ``updatedFields``, ``removedFields``, ``truncatedArrays``, then ``disambiguatedPaths``
with ``showExpandedEvents``), :func:`disambiguated_paths` gives that last map alone and
:func:`apply_diff` replays a diff (oplog application, and the way the tests check the diff).
:func:`bson_identical` is the server's ``binaryEqual``: a no-op update is one whose post-image is
identical to the pre-image, which Python's ``==`` cannot tell (``1 == 1.0 == Int64(1) == True``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

from bson.dbref import DBRef

from mongoemu.bsonvalues import (
    TYPE_NUMBERS,
    datetime_to_millis,
    deep_copy,
    encode,
    type_name,
    utf8,
)

# BSON element type bytes, used to decide "same type" exactly as the server does.
_T_DOUBLE, _T_STRING, _T_OBJECT, _T_ARRAY, _T_BINARY = 1, 2, 3, 4, 5
_T_OBJECTID, _T_BOOL, _T_DATE, _T_NULL, _T_REGEX = 7, 8, 9, 10, 11
_T_CODE, _T_CODE_W_SCOPE, _T_INT, _T_TIMESTAMP, _T_LONG, _T_DECIMAL = 13, 15, 16, 17, 18, 19
_T_MINKEY, _T_MAXKEY, _T_OTHER = -1, 127, 0

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# Sizes the server's diff builder charges (document_diff_serialization.h): an empty document diff,
# an empty array diff ({a: true}), the wrapper of a d/u/i section, and the ``l`` resize field.
_EMPTY_DOC_DIFF_SIZE = 5
_EMPTY_ARRAY_DIFF_SIZE = 9
_SECTION_WRAP_SIZE = 8
_RESIZE_SIZE = 7
# Bytes of ``{$v: 2, diff: ...}`` the server adds to the top-level diff before comparing sizes.
_DELTA_ENTRY_METADATA_SIZE = 15


def _type_code(value: Any) -> int:
    return TYPE_NUMBERS.get(type_name(value), _T_OTHER)


def _encoded_value(value: Any) -> bytes:
    return encode({"": value})


def bson_identical(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` encode to the same BSON bytes (same types, order and values)."""
    if a is b:
        return True
    type_a = _type_code(a)
    if type_a != _type_code(b):
        return False
    if type_a == _T_OBJECT:
        if isinstance(a, DBRef) or isinstance(b, DBRef):
            return _encoded_value(a) == _encoded_value(b)
        if len(a) != len(b):
            return False
        return all(ka == kb and bson_identical(va, vb)
                   for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if type_a == _T_ARRAY:
        return len(a) == len(b) and all(bson_identical(x, y) for x, y in zip(a, b))
    if type_a == _T_DOUBLE:
        # Bitwise: -0.0 differs from 0.0 and NaN equals the same NaN, as in binaryEqual.
        return struct.pack("<d", a) == struct.pack("<d", b)
    if type_a == _T_DATE:
        return datetime_to_millis(a) == datetime_to_millis(b)
    if type_a == _T_DECIMAL:
        return a.bid == b.bid
    if type_a in (_T_STRING, _T_INT, _T_LONG, _T_BOOL, _T_NULL, _T_OBJECTID, _T_TIMESTAMP,
                  _T_MINKEY, _T_MAXKEY):
        return bool(a == b)
    return _encoded_value(a) == _encoded_value(b)


def bson_value_size(value: Any) -> int:
    """Bytes the value occupies in a BSON element (without the type byte and field name)."""
    code = _type_code(value)
    if code in (_T_NULL, _T_MINKEY, _T_MAXKEY):
        return 0
    if code == _T_BOOL:
        return 1
    if code == _T_INT:
        return 4
    if code in (_T_LONG, _T_DOUBLE, _T_DATE, _T_TIMESTAMP):
        return 8
    if code == _T_DECIMAL:
        return 16
    if code == _T_OBJECTID:
        return 12
    if code == _T_STRING:
        return len(utf8(value)) + 5
    if code == _T_OBJECT and not isinstance(value, DBRef):
        return bson_document_size(value)
    if code == _T_ARRAY:
        return 5 + sum(len(str(i)) + 2 + bson_value_size(v) for i, v in enumerate(value))
    # Rare types: let the encoder measure them ({"": v} adds 4 + 1 + 1 + 1 bytes).
    return len(_encoded_value(value)) - 7


def bson_document_size(document: Mapping[str, Any]) -> int:
    """Size of the encoded document."""
    return 5 + sum(len(utf8(k)) + 2 + bson_value_size(v) for k, v in document.items())


class _DocDiff:
    """A document sub-diff being built, with the server's approximate size accounting."""

    __slots__ = ("deletes", "updates", "inserts", "subdiffs", "size")

    def __init__(self, padding: int = 0) -> None:
        self.deletes: list[str] = []
        self.updates: list[tuple[str, Any]] = []
        self.inserts: list[tuple[str, Any]] = []
        self.subdiffs: list[tuple[str, _DocDiff | _ArrayDiff]] = []
        self.size = padding + _EMPTY_DOC_DIFF_SIZE

    def _charge(self, name: str, section: list, value_size: int) -> None:
        self.size += len(utf8(name)) + 2 + value_size
        if not section:
            self.size += _SECTION_WRAP_SIZE

    def add_delete(self, name: str) -> None:
        self._charge(name, self.deletes, 1)
        self.deletes.append(name)

    def add_update(self, name: str, value: Any) -> None:
        self._charge(name, self.updates, bson_value_size(value))
        self.updates.append((name, value))

    def add_insert(self, name: str, value: Any) -> None:
        self._charge(name, self.inserts, bson_value_size(value))
        self.inserts.append((name, value))

    def add_subdiff(self, name: str, sub: _DocDiff | _ArrayDiff) -> None:
        self.size += len(utf8(name)) + 2 + sub.size + 1  # +1: the "s" prefix
        self.subdiffs.append((name, sub))

    def serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.deletes:
            out["d"] = {name: False for name in self.deletes}
        if self.updates:
            out["u"] = {name: deep_copy(value) for name, value in self.updates}
        if self.inserts:
            out["i"] = {name: deep_copy(value) for name, value in self.inserts}
        for name, sub in self.subdiffs:
            out["s" + name] = sub.serialize()
        return out


class _ArrayDiff:
    """An array sub-diff being built; entries are kept in index order as the server serializes."""

    __slots__ = ("entries", "new_size", "size")

    def __init__(self) -> None:
        self.entries: list[tuple[int, Any, bool]] = []  # (index, value or sub-diff, is_subdiff)
        self.new_size: int | None = None
        self.size = _EMPTY_ARRAY_DIFF_SIZE

    def add_update(self, index: int, value: Any) -> None:
        self.size += 1 + len(str(index)) + 2 + bson_value_size(value)
        self.entries.append((index, value, False))

    def add_subdiff(self, index: int, sub: _DocDiff | _ArrayDiff) -> None:
        self.size += 1 + len(str(index)) + 2 + sub.size
        self.entries.append((index, sub, True))

    def set_resize(self, new_size: int) -> None:
        self.new_size = new_size
        self.size += _RESIZE_SIZE

    def serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": True}
        if self.new_size is not None:
            out["l"] = self.new_size
        for index, value, is_subdiff in self.entries:
            if is_subdiff:
                out[f"s{index}"] = value.serialize()
            else:
                out[f"u{index}"] = deep_copy(value)
        return out


def _both_containers(pre: Any, post: Any) -> bool:
    pre_code = _type_code(pre)
    return pre_code == _type_code(post) and pre_code in (_T_OBJECT, _T_ARRAY) and not (
        isinstance(pre, DBRef) or isinstance(post, DBRef))


def _sub_diff(pre: Any, post: Any, limited: bool) -> _DocDiff | _ArrayDiff | None:
    if isinstance(pre, list):
        return _array_diff(pre, post, limited)
    return _doc_diff(pre, post, limited)


def _array_diff(pre: list, post: list, limited: bool) -> _ArrayDiff | None:
    """computeArrayDiff: element-wise by position, appends as updates, ``l`` when it shrank."""
    diff = _ArrayDiff()
    post_size = bson_value_size(post) if limited else 0
    common = min(len(pre), len(post))
    for index in range(common):
        if limited and post_size < diff.size:
            return None
        pre_value, post_value = pre[index], post[index]
        if bson_identical(pre_value, post_value):
            continue
        if _both_containers(pre_value, post_value):
            sub = _sub_diff(pre_value, post_value, limited)
            if sub is None:
                diff.add_update(index, post_value)
            else:
                diff.add_subdiff(index, sub)
        else:
            diff.add_update(index, post_value)
    for index in range(common, len(post)):
        diff.add_update(index, post[index])
    if len(pre) > len(post):
        diff.set_resize(len(post))
    if limited and post_size <= diff.size:
        return None
    return diff


def _doc_diff(pre: Mapping[str, Any], post: Mapping[str, Any], limited: bool,
              padding: int = 0) -> _DocDiff | None:
    """computeDocDiff: walks both documents in order, as the server does.

    A field whose name differs at the current position is presumed deleted; if it shows up later
    in the post-image it is logged as an insert (so a reordered field is reported as updated).
    """
    diff = _DocDiff(padding)
    post_size = bson_document_size(post) if limited else 0
    pre_items = list(pre.items())
    post_items = list(post.items())
    i = j = 0
    deletes: set[str] = set()
    while i < len(pre_items) and j < len(post_items):
        if limited and post_size < diff.size:
            return None
        pre_name, pre_value = pre_items[i]
        post_name, post_value = post_items[j]
        if pre_name == post_name:
            if not bson_identical(pre_value, post_value):
                if _both_containers(pre_value, post_value):
                    sub = _sub_diff(pre_value, post_value, limited)
                    if sub is None:
                        diff.add_update(pre_name, post_value)
                    else:
                        diff.add_subdiff(pre_name, sub)
                else:
                    diff.add_update(pre_name, post_value)
            i += 1
            j += 1
        else:
            deletes.add(pre_name)
            i += 1
    for pre_name, _ in pre_items[i:]:
        diff.add_delete(pre_name)
    for post_name, post_value in post_items[j:]:
        diff.add_insert(post_name, post_value)
        deletes.discard(post_name)
    # The server keeps these in a std::set, so they come out in byte order.
    for name in sorted(deletes, key=utf8):
        diff.add_delete(name)
    if limited and post_size <= diff.size:
        return None
    return diff


def compute_diff(before: Mapping[str, Any], after: Mapping[str, Any], *,
                 size_limited: bool = False) -> dict[str, Any] | None:
    """The ``$v: 2`` diff turning ``before`` into ``after``.

    Returns None when the documents are identical.  With ``size_limited`` (what the server does
    for pipeline-style updates) sub-diffs larger than the value they describe are replaced by the
    whole value, and None is also returned when the diff is not smaller than ``after`` itself —
    the server then logs a full replacement, which change streams report as a ``replace`` event.
    Check :func:`bson_identical` first to tell the two None cases apart.
    """
    if bson_identical(before, after):
        return None
    diff = _doc_diff(before, after, size_limited, _DELTA_ENTRY_METADATA_SIZE)
    if diff is None:
        return None
    return diff.serialize()


def diff_from_log(after: Mapping[str, Any],
                  log: list[tuple[str, tuple[str, ...], int]]) -> dict[str, Any] | None:
    """The ``$v: 2`` diff of an operator update, from what its modifiers did (V2LogBuilder).

    An operator update is not diffed from its images: each modifier logs the path it changed,
    with the value it left there (``$set`` of a whole sub-document logs that sub-document,
    whatever its field order — comparing field by field would report the fields and lose the
    new order), a created path logs its first new component, ``$unset`` a delete, and an append
    by ``$push`` the new elements alone. ``log`` holds ("updated" | "created" | "deleted", path,
    index of the first created component); None when nothing was logged.
    """
    if not log:
        return None
    root = _DocDiff()
    children: dict[int, dict[str, Any]] = {}  # id(node) -> sub-diffs by field name or index
    for kind, path, first_created in log:
        last = first_created if kind == "created" else len(path) - 1
        node: _DocDiff | _ArrayDiff = root
        value: Any = after
        for part in path[:last]:
            value = value[int(part)] if isinstance(value, list) else value[part]
            key: str | int = int(part) if isinstance(node, _ArrayDiff) else part
            known = children.setdefault(id(node), {})
            child = known.get(key)
            if child is None:
                child = _ArrayDiff() if isinstance(value, list) else _DocDiff()
                known[key] = child
                if isinstance(node, _ArrayDiff):
                    node.add_subdiff(int(part), child)
                else:
                    node.add_subdiff(part, child)
            node = child
        name = path[last]
        if isinstance(node, _ArrayDiff):
            # Arrays have no inserts or deletes: a new or unset element is an update.
            index = int(name)
            node.add_update(index, value[index] if index < len(value) else None)
        elif kind == "deleted":
            node.add_delete(name)
        elif kind == "created":
            node.add_insert(name, value[name])
        else:
            node.add_update(name, value[name])
    _order_array_entries(root)
    return root.serialize()


def _order_array_entries(node: _DocDiff | _ArrayDiff) -> None:
    """Array sub-diffs list their indexes in order, however the modifiers visited them."""
    if isinstance(node, _ArrayDiff):
        node.entries.sort(key=lambda entry: entry[0])
        for _, value, is_subdiff in node.entries:
            if is_subdiff:
                _order_array_entries(value)
    else:
        for _, sub in node.subdiffs:
            _order_array_entries(sub)


# ---------------------------------------------------------------------------------------------
# Reading a diff (the change-stream side)


def _is_strict_numeric(part: str) -> bool:
    """FieldRef::isNumericPathComponentStrict: digits only, no leading zero (except "0")."""
    return part.isascii() and part.isdigit() and (part == "0" or part[0] != "0")


def _walk(diff: Mapping[str, Any], path: list[str | int],
          ambiguous: list[bool]) -> Iterator[tuple[str, list[str | int], bool, Any]]:
    """Yields (kind, path, ambiguous, payload) in the order the server's diff parser reports them.

    ``kind`` is "updated", "removed" or "truncated"; ``ambiguous`` follows the server's rule: a
    field name that contains a dot, or is numeric below the top level, makes the rest of the path
    ambiguous (array indexes alone never do).
    """

    def extend(part: str | int) -> tuple[list[str | int], list[bool]]:
        already = bool(ambiguous) and ambiguous[-1]
        if isinstance(part, int):
            flag = already
        else:
            numeric = len(path) >= 1 and _is_strict_numeric(part)
            flag = already or numeric or "." in part
        return path + [part], ambiguous + [flag]

    if "a" in diff:  # array diffs start with {a: true}; document diffs never have an "a" key
        if "l" in diff:
            yield "truncated", path, bool(ambiguous) and ambiguous[-1], diff["l"]
        for key, value in diff.items():
            if key in ("a", "l"):
                continue
            sub_path, sub_ambiguous = extend(int(key[1:]))
            if key[0] == "u":
                yield "updated", sub_path, sub_ambiguous[-1], value
            else:
                yield from _walk(value, sub_path, sub_ambiguous)
        return
    for section in ("u", "i"):
        for name, value in diff.get(section, {}).items():
            sub_path, sub_ambiguous = extend(name)
            yield "updated", sub_path, sub_ambiguous[-1], value
    for name in diff.get("d", {}):
        sub_path, sub_ambiguous = extend(name)
        yield "removed", sub_path, sub_ambiguous[-1], None
    for key, value in diff.items():
        if key[0] == "s":
            sub_path, sub_ambiguous = extend(key[1:])
            yield from _walk(value, sub_path, sub_ambiguous)


def _dotted(path: list[str | int]) -> str:
    return ".".join(str(part) for part in path)


def describe_diff(diff: Mapping[str, Any], *, show_expanded_events: bool = False) -> dict[str, Any]:
    """``updateDescription`` for a delta diff (``disambiguatedPaths`` only with expanded events)."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    disambiguated: dict[str, list[str | int]] = {}
    for kind, path, ambiguous, payload in _walk(diff, [], []):
        dotted = _dotted(path)
        if kind == "updated":
            updated[dotted] = deep_copy(payload)
        elif kind == "removed":
            removed.append(dotted)
        else:
            truncated.append({"field": dotted, "newSize": payload})
        if ambiguous:
            disambiguated[dotted] = list(path)
    description: dict[str, Any] = {"updatedFields": updated, "removedFields": removed,
                                   "truncatedArrays": truncated}
    if show_expanded_events:
        description["disambiguatedPaths"] = disambiguated
    return description


def disambiguated_paths(diff: Mapping[str, Any]) -> dict[str, list[str | int]]:
    """The ``disambiguatedPaths`` map of a diff (``showExpandedEvents``, 6.1+).

    It takes the diff rather than the description because only the diff tells an array index
    (``a.0`` through an array, unambiguous) from a field named "0" (ambiguous).
    """
    return describe_diff(diff, show_expanded_events=True)["disambiguatedPaths"]


def describe_update(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any] | None:
    """``updateDescription`` of the change from ``before`` to ``after``; None for a no-op."""
    diff = compute_diff(before, after)
    if diff is None:
        return None
    return describe_diff(diff)


# ---------------------------------------------------------------------------------------------
# Applying a diff (oplog application)


def _apply_array_diff(array: list, diff: Mapping[str, Any]) -> list:
    result = list(array)
    for key, value in diff.items():
        if key in ("a", "l"):
            continue
        index = int(key[1:])
        if key[0] == "u":
            if index >= len(result):
                result.extend([None] * (index + 1 - len(result)))
            result[index] = deep_copy(value)
        elif index < len(result):
            result[index] = _apply_sub_diff(result[index], value)
    if "l" in diff:
        new_size = diff["l"]
        del result[new_size:]
        result.extend([None] * (new_size - len(result)))
    return result


def _apply_sub_diff(value: Any, diff: Mapping[str, Any]) -> Any:
    is_array_diff = "a" in diff
    if is_array_diff and isinstance(value, list):
        return _apply_array_diff(value, diff)
    if not is_array_diff and isinstance(value, Mapping):
        return apply_diff(value, diff)
    return value


def apply_diff(document: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """A new document: ``document`` with the delta ``diff`` applied (as the server's applier)."""
    deletes = diff.get("d", {})
    updates = diff.get("u", {})
    inserts = diff.get("i", {})
    subdiffs = {key[1:]: value for key, value in diff.items() if key[0] == "s"}
    result: dict[str, Any] = {}
    for name, value in document.items():
        if name in deletes or name in inserts:
            continue
        if name in updates:
            result[name] = deep_copy(updates[name])
        elif name in subdiffs:
            result[name] = _apply_sub_diff(value, subdiffs[name])
        else:
            result[name] = deep_copy(value)
    for name, value in updates.items():
        if name not in result:
            result[name] = deep_copy(value)
    for name, value in inserts.items():
        result[name] = deep_copy(value)
    return result
