"""Tests for mongoemu.query.update_description: $v:2 diffs and change-stream updateDescription.

Expected shapes come from the driver spec tests (change-streams.json, change-streams-
disambiguatedPaths.json) and from the server's diff algorithm (document_diff_calculator.cpp).
"""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu.bsonvalues import CODEC, deep_copy
from mongoemu.errors import CommandError
from mongoemu.query.update import apply_update
from mongoemu.query.update_description import (
    apply_diff,
    bson_document_size,
    bson_identical,
    bson_value_size,
    compute_diff,
    describe_diff,
    describe_update,
    disambiguated_paths,
)


def encoded(doc: Any) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


def description(updated: dict | None = None, removed: list | None = None,
                truncated: list | None = None) -> dict:
    return {"updatedFields": updated or {}, "removedFields": removed or [],
            "truncatedArrays": truncated or []}


# ---------------------------------------------------------------------------------------------
# The spec tests' events


class TestSpecShapes:
    def test_array_truncation(self) -> None:
        # change-streams.json "Test array truncation" (a pipeline-style update).
        before = {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]}
        after = {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}]}
        expected = description(truncated=[{"field": "array", "newSize": 2}])
        assert describe_update(before, after) == expected
        diff = compute_diff(before, after, size_limited=True)
        assert diff == {"sarray": {"a": True, "l": 2}}
        assert describe_diff(diff) == expected

    def test_simple_set(self) -> None:
        # change-streams.json "Test insert, update, replace, and delete event types".
        before = {"_id": ObjectId(), "x": 1}
        after = apply_update(before, {"$set": {"x": 2}})
        assert describe_update(before, after) == description({"x": 2})

    def test_key_order(self) -> None:
        result = describe_update({"_id": 1}, {"_id": 1, "a": 1})
        assert list(result) == ["updatedFields", "removedFields", "truncatedArrays"]
        diff = compute_diff({"_id": 1}, {"_id": 1, "a": 1})
        expanded = describe_diff(diff, show_expanded_events=True)
        assert list(expanded) == ["updatedFields", "removedFields", "truncatedArrays",
                                  "disambiguatedPaths"]
        assert expanded["disambiguatedPaths"] == {}

    def test_disambiguated_numeric_field(self) -> None:
        # change-streams-disambiguatedPaths.json: $set {"a.1": 2} on {a: {"1": 1}}.
        before = {"_id": 1, "a": {"1": 1}}
        after = apply_update(before, {"$set": {"a.1": 2}})
        diff = compute_diff(before, after)
        assert describe_diff(diff, show_expanded_events=True) == {
            "updatedFields": {"a.1": 2}, "removedFields": [], "truncatedArrays": [],
            "disambiguatedPaths": {"a.1": ["a", "1"]}}
        assert "disambiguatedPaths" not in describe_diff(diff)

    def test_disambiguated_array_index_is_an_int(self) -> None:
        # change-streams-disambiguatedPaths.json: $set {"a.0.1": 2} on {a: [{"1": 1}]}.
        before = {"_id": 1, "a": [{"1": 1}]}
        after = apply_update(before, {"$set": {"a.0.1": 2}})
        paths = disambiguated_paths(compute_diff(before, after))
        assert paths == {"a.0.1": ["a", 0, "1"]}
        assert type(paths["a.0.1"][1]) is int


# ---------------------------------------------------------------------------------------------
# Diff shapes


class TestDiff:
    def test_no_change(self) -> None:
        doc = {"_id": 1, "a": [1, {"b": 2.5}], "c": Int64(3)}
        assert compute_diff(doc, deep_copy(doc)) is None
        assert describe_update(doc, deep_copy(doc)) is None

    def test_type_changes_are_changes(self) -> None:
        assert describe_update({"_id": 1, "a": 1}, {"_id": 1, "a": 1.0}) == description({"a": 1.0})
        assert describe_update({"_id": 1, "a": 1}, {"_id": 1, "a": Int64(1)}) == \
            description({"a": Int64(1)})
        assert describe_update({"_id": 1, "a": 0.0}, {"_id": 1, "a": -0.0}) is not None
        assert describe_update({"_id": 1, "a": 1}, {"_id": 1, "a": True}) is not None

    def test_sub_documents(self) -> None:
        before = {"_id": 1, "a": {"b": 1, "c": 2, "d": {"e": 1}}}
        after = {"_id": 1, "a": {"b": 1, "c": 3, "d": {}, "f": 4}}
        assert compute_diff(before, after) == {
            "sa": {"u": {"c": 3}, "i": {"f": 4}, "sd": {"d": {"e": False}}}}
        assert describe_update(before, after) == description({"a.c": 3, "a.f": 4}, ["a.d.e"])

    def test_arrays(self) -> None:
        base = {"_id": 1, "arr": [1, 2, 3]}
        assert describe_update(base, {"_id": 1, "arr": [1, 2, 3, 4, 5]}) == description(
            {"arr.3": 4, "arr.4": 5})
        assert describe_update(base, {"_id": 1, "arr": [1, 9, 3]}) == description({"arr.1": 9})
        assert describe_update(base, {"_id": 1, "arr": [7]}) == description(
            {"arr.0": 7}, truncated=[{"field": "arr", "newSize": 1}])
        assert describe_update(base, {"_id": 1, "arr": []}) == description(
            truncated=[{"field": "arr", "newSize": 0}])
        nested = {"_id": 1, "arr": [{"x": 1}, [1, 2]]}
        assert describe_update(nested, {"_id": 1, "arr": [{"x": 2}, [1]]}) == description(
            {"arr.0.x": 2}, truncated=[{"field": "arr.1", "newSize": 1}])

    def test_type_switch_replaces_the_whole_value(self) -> None:
        assert describe_update({"_id": 1, "a": [1]}, {"_id": 1, "a": {"0": 1}}) == description(
            {"a": {"0": 1}})
        assert describe_update({"_id": 1, "a": {"x": 1}}, {"_id": 1, "a": "x"}) == description(
            {"a": "x"})

    def test_removed_and_reordered_fields(self) -> None:
        before = {"_id": 1, "x": 1, "a": 1, "b": 2, "z": [1, 2, 3]}
        after = {"_id": 1, "b": 3, "c": 4, "z": [1, 2, 3]}
        # As on the server: fields before a mismatch are presumed deleted; a field met again later
        # (here z) is logged as an insert, i.e. reported in updatedFields with its whole value.
        assert compute_diff(before, after) == {
            "d": {"a": False, "x": False}, "u": {"b": 3}, "i": {"c": 4, "z": [1, 2, 3]}}
        assert describe_update(before, after) == description(
            {"b": 3, "c": 4, "z": [1, 2, 3]}, ["a", "x"])
        assert describe_update({"_id": 1, "a": 1, "b": 2}, {"_id": 1, "b": 2, "a": 1}) == \
            description({"a": 1})

    def test_trailing_deletes_come_before_skipped_ones(self) -> None:
        before = {"_id": 1, "q": 1, "k": 2, "m": 3, "y": 4, "r": 5}
        after = {"_id": 1, "m": 3}
        assert describe_update(before, after)["removedFields"] == ["y", "r", "k", "q"]

    def test_updated_fields_order(self) -> None:
        before = {"_id": 1, "s": {"x": 1}, "a": 1, "t": [1]}
        after = {"_id": 1, "s": {"x": 2}, "a": 2, "t": [2], "n": 1}
        assert list(describe_update(before, after)["updatedFields"]) == ["a", "n", "s.x", "t.0"]

    def test_values_are_copies(self) -> None:
        after = {"_id": 1, "a": {"b": [1]}}
        diff = compute_diff({"_id": 1}, after)
        after["a"]["b"].append(2)
        assert diff == {"i": {"a": {"b": [1]}}}


class TestSizeLimits:
    def test_small_sub_diffs_become_whole_values(self) -> None:
        padding = "x" * 200
        before = {"_id": 1, "pad": padding, "a": {"1": 1}}
        after = {"_id": 1, "pad": padding, "a": {"1": 2}}
        # {u: {"1": 2}} is bigger than {"1": 2} itself, so the server logs the whole field.
        assert compute_diff(before, after, size_limited=True) == {"u": {"a": {"1": 2}}}
        assert compute_diff(before, after) == {"sa": {"u": {"1": 2}}}

    def test_shifted_arrays_become_whole_values(self) -> None:
        padding = "x" * 500
        before = {"_id": 1, "pad": padding, "arr": list(range(20))}
        after = {"_id": 1, "pad": padding, "arr": list(range(1, 20))}  # $pop: -1
        assert compute_diff(before, after, size_limited=True) == {"u": {"arr": list(range(1, 20))}}
        appended = {"_id": 1, "pad": padding, "arr": list(range(21))}
        assert compute_diff(before, appended, size_limited=True) == {
            "sarr": {"a": True, "u20": 20}}

    def test_diff_larger_than_the_document(self) -> None:
        before = {"_id": 1, "a": 1, "b": 2}
        after = {"_id": 1, "c": 3}
        # The server would log a full replacement (a "replace" event) for a pipeline update.
        assert compute_diff(before, after, size_limited=True) is None
        assert compute_diff(before, after) is not None


class TestDisambiguatedPaths:
    def test_rules(self) -> None:
        before = {"_id": 1, "a.b": 1, "0": 1, "n": {"01": 1, "2": {"c": 1}, "3": [1, 2]},
                  "arr": [{"5": 1}], "gone": {"7": 1}}
        after = {"_id": 1, "a.b": 2, "0": 2, "n": {"01": 2, "2": {"c": 2}, "3": [1]},
                 "arr": [{"5": 2}], "gone": {}}
        diff = compute_diff(before, after)
        assert describe_diff(diff)["truncatedArrays"] == [{"field": "n.3", "newSize": 1}]
        assert disambiguated_paths(diff) == {
            "a.b": ["a.b"],                  # a dotted name is ambiguous anywhere
            "n.2.c": ["n", "2", "c"],        # a numeric name below the top level
            "n.3": ["n", "3"],               # ... also for truncatedArrays
            "arr.0.5": ["arr", 0, "5"],
            "gone.7": ["gone", "7"],         # ... and for removedFields
        }  # "0" at the top level, "01" (leading zero) and plain array indexes are unambiguous


# ---------------------------------------------------------------------------------------------
# Applying diffs


class TestApplyDiff:
    def test_reproduces_order_and_types(self) -> None:
        before = {"_id": 1, "x": 1, "a": [1, {"b": 2}], "c": {"d": 1}}
        after = {"_id": 1, "c": {"e": Int64(1)}, "a": [1, {"b": 2.0}, 3], "x": 1}
        result = apply_diff(before, compute_diff(before, after))
        assert encoded(result) == encoded(after)

    def test_truncation_and_padding(self) -> None:
        assert apply_diff({"a": [1, 2, 3]}, {"sa": {"a": True, "l": 1}}) == {"a": [1]}
        assert apply_diff({"a": [1]}, {"sa": {"a": True, "u3": 4}}) == {"a": [1, None, None, 4]}


# ---------------------------------------------------------------------------------------------
# BSON helpers


_names = st.text(alphabet="ab1", min_size=1, max_size=2)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(width=64), st.text(max_size=5),
    st.sampled_from([Decimal128("1.0"), Decimal128("1"), Binary(b"ab", 4), Binary(b"ab", 0),
                     Regex("a", "i"), Timestamp(1, 2), ObjectId("0" * 24)]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_names, inner, max_size=4)),
    max_leaves=12,
)
_docs = st.dictionaries(_names, _values, max_size=5).map(lambda d: {"_id": 1, **d})


class TestBsonHelpers:
    @settings(max_examples=300)
    @given(_values, _values)
    def test_identical_means_same_bytes(self, a: Any, b: Any) -> None:
        assert bson_identical(a, b) == (encoded({"v": a}) == encoded({"v": b}))
        assert bson_identical(a, deep_copy(a))

    @settings(max_examples=300)
    @given(_docs)
    def test_sizes(self, doc: dict) -> None:
        assert bson_document_size(doc) == len(encoded(doc))
        for value in doc.values():
            assert bson_value_size(value) == len(encoded({"": value})) - 7


# ---------------------------------------------------------------------------------------------
# Properties: the description / diff turns `before` into `after`


def _set_path(doc: Any, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last = parts[-1]
    if isinstance(doc, list):
        index = int(last)
        doc.extend([None] * (index + 1 - len(doc)))
        doc[index] = deep_copy(value)
    else:
        doc[last] = deep_copy(value)


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_description(before: dict, desc: dict) -> dict:
    """What a consumer of change events does: truncate, unset, then $set each updated path."""
    doc = deep_copy(before)
    for truncation in desc["truncatedArrays"]:
        del _resolve(doc, truncation["field"].split("."))[truncation["newSize"]:]
    for path in desc["removedFields"]:
        *parent, last = path.split(".")
        del _resolve(doc, parent)[last]
    for path, value in desc["updatedFields"].items():
        _set_path(doc, path.split("."), value)
    return doc


def canonical(value: Any) -> Any:
    """Field order does not matter to a consumer applying a description."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


_paths = st.lists(_names, min_size=1, max_size=3).map(".".join)
_updates = st.fixed_dictionaries({}, optional={
    "$set": st.dictionaries(_paths, _values, max_size=3),
    "$unset": st.dictionaries(_paths, st.just(""), max_size=2),
    "$push": st.dictionaries(_paths, _scalars, max_size=1),
    "$pop": st.dictionaries(_paths, st.sampled_from([1, -1]), max_size=1),
    "$pull": st.dictionaries(_paths, _scalars, max_size=1),
    "$rename": st.dictionaries(_names, _names, max_size=1),
}).filter(bool)


@st.composite
def _before_after(draw: st.DrawFn) -> tuple[dict, dict]:
    before = draw(_docs)
    if draw(st.booleans()):
        return before, draw(_docs)
    try:
        return before, apply_update(before, draw(_updates))
    except CommandError:
        return before, before


class TestProperties:
    @settings(max_examples=400)
    @given(_before_after(), st.booleans())
    def test_diff_reproduces_after_exactly(self, pair: tuple[dict, dict], limited: bool) -> None:
        before, after = pair
        diff = compute_diff(before, after, size_limited=limited)
        if diff is None:
            assert limited or bson_identical(before, after)
            return
        assert encoded(apply_diff(before, diff)) == encoded(after)
        encoded(diff)  # storable in an oplog entry

    @settings(max_examples=400)
    @given(_before_after())
    def test_description_reproduces_after(self, pair: tuple[dict, dict]) -> None:
        before, after = pair
        desc = describe_update(before, after)
        if desc is None:
            assert bson_identical(before, after)
            return
        assert not bson_identical(before, after)
        result = apply_description(before, desc)
        assert encoded(canonical(result)) == encoded(canonical(after))

    @settings(max_examples=200)
    @given(_before_after())
    def test_disambiguated_paths_name_reported_paths(self, pair: tuple[dict, dict]) -> None:
        before, after = pair
        diff = compute_diff(before, after)
        if diff is None:
            return
        desc = describe_diff(diff, show_expanded_events=True)
        reported = (set(desc["updatedFields"]) | set(desc["removedFields"])
                    | {t["field"] for t in desc["truncatedArrays"]})
        for path, parts in desc["disambiguatedPaths"].items():
            assert path in reported
            assert ".".join(str(p) for p in parts) == path


@pytest.mark.parametrize("before, after", [
    ({"_id": 1, "a": [1, 2, 3, 4]}, {"_id": 1, "a": [2, 3, 4]}),
    ({"_id": 1, "a": {"b": {"c": [1]}}}, {"_id": 1, "a": {"b": {"c": [1, {"d": 1}]}}}),
    ({"_id": 1, "a": [[1, [2]]]}, {"_id": 1, "a": [[1, [3]]]}),
])
def test_round_trips(before: dict, after: dict) -> None:
    for limited in (False, True):
        diff = compute_diff(before, after, size_limited=limited)
        if diff is not None:
            assert encoded(apply_diff(before, diff)) == encoded(after)
    assert encoded(canonical(apply_description(before, describe_update(before, after)))) == \
        encoded(canonical(after))


# ---------------------------------------------------------------------------------------------
# Operator updates: the diff is what the modifiers logged (the server's V2LogBuilder), not an
# image diff — so a sub-document set whole is reported whole, in its new field order.


def logged_diff(before: dict, update: dict) -> tuple[dict, dict | None]:
    from mongoemu.query.update import parse_update
    from mongoemu.query.update_description import diff_from_log
    log: list = []
    after = parse_update(update).apply(before, log=log)
    return after, diff_from_log(after, log)


class TestModifierDiffs:
    def test_set_of_a_reordered_sub_document_replaces_it(self) -> None:
        before = {"_id": 1, "a": {"x": 1, "y": 2}}
        after, diff = logged_diff(before, {"$set": {"a": {"y": 2, "x": 1}}})
        assert diff == {"u": {"a": {"y": 2, "x": 1}}}
        reported = describe_diff(diff)
        assert reported == description({"a": {"y": 2, "x": 1}})
        assert list(reported["updatedFields"]["a"]) == ["y", "x"]
        assert encoded(apply_description(before, reported)) == encoded(after)

    def test_set_of_a_changed_sub_document_is_the_whole_value(self) -> None:
        _, diff = logged_diff({"_id": 1, "a": {"x": 1, "y": 2}}, {"$set": {"a": {"x": 1, "y": 3}}})
        assert diff == {"u": {"a": {"x": 1, "y": 3}}}

    def test_paths(self) -> None:
        before = {"_id": 1, "a": {"x": 1}, "arr": [1, 2], "gone": 1, "old": {"k": 1}}
        _, diff = logged_diff(before, {"$set": {"a.x": 2, "n.m": 3, "arr.1": 9},
                                       "$unset": {"gone": ""}, "$rename": {"old.k": "moved"}})
        assert diff == {"d": {"gone": False}, "i": {"moved": 1, "n": {"m": 3}},
                        "sa": {"u": {"x": 2}}, "sarr": {"a": True, "u1": 9},
                        "sold": {"d": {"k": False}}}

    def test_array_modifiers(self) -> None:
        before = {"_id": 1, "arr": [1, 2, 3]}
        assert logged_diff(before, {"$push": {"arr": 4}})[1] == {"sarr": {"a": True, "u3": 4}}
        # Anything but an append to a non-empty array logs the whole array.
        assert logged_diff(before, {"$pull": {"arr": 2}})[1] == {"u": {"arr": [1, 3]}}
        assert logged_diff(before, {"$pop": {"arr": 1}})[1] == {"u": {"arr": [1, 2]}}
        assert logged_diff(before, {"$addToSet": {"arr": 5}})[1] == {"u": {"arr": [1, 2, 3, 5]}}
        assert logged_diff(before, {"$push": {"arr": {"$each": [0], "$position": 0}}})[1] == {
            "u": {"arr": [0, 1, 2, 3]}}
        assert logged_diff({"_id": 1, "arr": []}, {"$push": {"arr": 1}})[1] == {"u": {"arr": [1]}}
        assert logged_diff(before, {"$unset": {"arr.0": ""}})[1] == {
            "sarr": {"a": True, "u0": None}}

    @settings(max_examples=400)
    @given(_docs, _updates)
    def test_description_reproduces_after_in_order(self, before: dict, update: dict) -> None:
        try:
            after, diff = logged_diff(before, update)
        except CommandError:
            return
        if bson_identical(before, after):
            return
        assert diff is not None
        assert encoded(apply_diff(before, diff)) == encoded(after)
        assert encoded(apply_description(before, describe_diff(diff))) == encoded(after)
