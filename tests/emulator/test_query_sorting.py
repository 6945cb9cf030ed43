"""MongoDB sort semantics: BSON order, arrays, missing fields, collation, spec validation."""

from __future__ import annotations

import datetime
import functools
from typing import Any

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu import bsonvalues
from mongoemu.errors import CommandError
from mongoemu.query.collation import Collation
from mongoemu.query.sorting import make_sort_key, parse_sort, sort_documents


def ids(docs: list[dict[str, Any]]) -> list[Any]:
    return [doc["_id"] for doc in docs]


class TestOrder:
    def test_bson_type_order(self) -> None:
        values = [MaxKey(), True, "s", {"a": 1}, [], None, 3, ObjectId("0" * 24), MinKey(),
                  datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), b"b"]
        docs = [{"_id": i, "v": v} for i, v in enumerate(values)]
        ordered = [doc["v"] for doc in sort_documents(docs, {"v": 1})]
        # The one-element arrays sort by their element; [] sorts below null.
        assert ordered == [MinKey(), [], None, 3, "s", {"a": 1}, b"b", ObjectId("0" * 24), True,
                           datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), MaxKey()]

    def test_numbers_of_every_width(self) -> None:
        docs = [{"_id": 0, "v": 2.5}, {"_id": 1, "v": Int64(2)}, {"_id": 2, "v": Decimal128("3")},
                {"_id": 3, "v": float("nan")}, {"_id": 4, "v": -1}]
        assert ids(sort_documents(docs, {"v": 1})) == [3, 4, 1, 0, 2]
        assert ids(sort_documents(docs, {"v": -1})) == [2, 0, 1, 4, 3]

    def test_missing_sorts_as_null(self) -> None:
        docs = [{"_id": 0, "v": 1}, {"_id": 1}, {"_id": 2, "v": None}, {"_id": 3, "v": MinKey()}]
        assert ids(sort_documents(docs, {"v": 1, "_id": 1})) == [3, 1, 2, 0]
        assert ids(sort_documents(docs, {"v": -1, "_id": -1})) == [0, 2, 1, 3]

    def test_arrays_use_min_ascending_and_max_descending(self) -> None:
        docs = [{"_id": 0, "v": [1, 10]}, {"_id": 1, "v": 5}, {"_id": 2, "v": [3, 4]}]
        assert ids(sort_documents(docs, {"v": 1})) == [0, 2, 1]
        assert ids(sort_documents(docs, {"v": -1})) == [0, 1, 2]

    def test_empty_array_below_null(self) -> None:
        docs = [{"_id": 0, "v": None}, {"_id": 1, "v": []}, {"_id": 2, "v": MinKey()}]
        assert ids(sort_documents(docs, {"v": 1})) == [2, 1, 0]

    def test_dotted_paths_through_arrays(self) -> None:
        docs = [{"_id": 0, "a": [{"b": 5}, {"b": 1}]}, {"_id": 1, "a": {"b": 3}},
                {"_id": 2, "a": [{"b": 2}, {"c": 9}]}, {"_id": 3, "a": [{"b": [0, 8]}]}]
        assert ids(sort_documents(docs, {"a.b": 1})) == [2, 3, 0, 1]  # doc 2 has a missing b → null
        assert ids(sort_documents(docs, {"a.b": -1})) == [3, 0, 1, 2]
        assert ids(sort_documents(docs, {"a.0.b": 1})) == [1, 3, 2, 0]  # doc 1 has no a.0

    def test_multiple_keys_and_mixed_directions(self) -> None:
        docs = [{"_id": i, "a": a, "b": b} for i, (a, b) in enumerate([(1, 2), (1, 1), (0, 5), (1, 3)])]
        assert ids(sort_documents(docs, {"a": 1, "b": -1})) == [2, 3, 0, 1]
        assert ids(sort_documents(docs, {"a": -1, "b": 1})) == [1, 0, 3, 2]

    def test_ties_keep_input_order(self) -> None:
        docs = [{"_id": i, "a": i % 2} for i in range(6)]
        assert ids(sort_documents(docs, {"a": 1})) == [0, 2, 4, 1, 3, 5]

    def test_documents_compare_field_by_field(self) -> None:
        docs = [{"_id": 0, "v": {"a": 2}}, {"_id": 1, "v": {"a": 1, "b": 1}}, {"_id": 2, "v": {"a": 1}}]
        assert ids(sort_documents(docs, {"v": 1})) == [2, 1, 0]

    def test_meta_is_accepted(self) -> None:
        docs = [{"_id": 1}, {"_id": 0}]
        assert ids(sort_documents(docs, {"score": {"$meta": "textScore"}, "_id": 1})) == [0, 1]

    def test_empty_spec_keeps_order(self) -> None:
        docs = [{"_id": 1}, {"_id": 0}]
        assert ids(sort_documents(docs, {})) == [1, 0]

    def test_numeric_direction_types(self) -> None:
        docs = [{"_id": 0}, {"_id": 1}]
        assert ids(sort_documents(docs, {"_id": -1.0})) == [1, 0]
        assert ids(sort_documents(docs, {"_id": Int64(-1)})) == [1, 0]


class TestCollation:
    def test_case_insensitive_sort(self) -> None:
        docs = [{"_id": i, "s": s} for i, s in enumerate(["b", "A", "a", "C"])]
        coll = Collation.from_document({"locale": "en", "strength": 2})
        ordered = [d["s"] for d in sort_documents(docs, {"s": 1}, coll)]
        assert ordered == ["A", "a", "b", "C"]
        assert [d["s"] for d in sort_documents(docs, {"s": 1})] == ["A", "C", "a", "b"]

    def test_numeric_ordering(self) -> None:
        docs = [{"_id": i, "s": s} for i, s in enumerate(["10", "9", "100"])]
        coll = Collation.from_document({"locale": "en", "numericOrdering": True})
        assert [d["s"] for d in sort_documents(docs, {"s": 1}, coll)] == ["9", "10", "100"]

    def test_simple_collation_is_binary(self) -> None:
        docs = [{"_id": i, "s": s} for i, s in enumerate(["b", "A"])]
        simple = Collation.from_document({"locale": "simple"})
        assert [d["s"] for d in sort_documents(docs, {"s": 1}, simple)] == ["A", "b"]

    def test_strings_nested_in_arrays_are_collated(self) -> None:
        docs = [{"_id": 0, "s": ["z", "B"]}, {"_id": 1, "s": ["a"]}]
        coll = Collation.from_document({"locale": "en", "strength": 1})
        assert ids(sort_documents(docs, {"s": 1}, coll)) == [1, 0]


class TestSpecValidation:
    @pytest.mark.parametrize(
        ("spec", "code"),
        [
            ({"a": 2}, 15975),
            ({"a": 0}, 15975),
            ({"a": "asc"}, 15974),
            ({"a": True}, 15974),
            ({"a": None}, 15974),
            ({"a": {"$foo": 1}}, 17312),
            ({"a": {"$meta": 1}}, 17308),
            ({"": 1}, 40352),
            ({"$a": 1}, 16410),
            ([("a", 1)], 14),
        ],
    )
    def test_invalid_specs(self, spec: Any, code: int) -> None:
        with pytest.raises(CommandError) as info:
            make_sort_key(spec)
        assert info.value.code == code

    def test_parse_sort(self) -> None:
        assert parse_sort({"a": 1, "b": -1.0, "c": {"$meta": "textScore"}}) == [("a", 1), ("b", -1), ("c", 0)]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.builds(Int64, st.integers(-100, 100)),
    st.builds(lambda n: Decimal128(str(n)), st.integers(-100, 100)),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(-3, 3), max_size=2),
    st.just(MinKey()),
    st.just(MaxKey()),
)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(_values, max_size=15))
    def test_ascending_agrees_with_bson_compare(self, values: list[Any]) -> None:
        docs = [{"_id": i, "v": v} for i, v in enumerate(values)]
        ordered = [d["v"] for d in sort_documents(docs, {"v": 1})]
        expected = sorted(values, key=functools.cmp_to_key(bsonvalues.compare))
        assert [bsonvalues.sort_key(v) for v in ordered] == [bsonvalues.sort_key(v) for v in expected]
        for a, b in zip(ordered, ordered[1:]):
            assert bsonvalues.compare(a, b) <= 0

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_values, max_size=15))
    def test_descending_is_reverse_of_ascending_up_to_ties(self, values: list[Any]) -> None:
        docs = [{"_id": i, "v": v} for i, v in enumerate(values)]
        descending = [d["v"] for d in sort_documents(docs, {"v": -1})]
        for a, b in zip(descending, descending[1:]):
            assert bsonvalues.compare(a, b) >= 0

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.lists(st.integers(-20, 20), min_size=1, max_size=4), max_size=10))
    def test_arrays_sort_by_extreme_element(self, arrays: list[list[int]]) -> None:
        docs = [{"_id": i, "v": arr} for i, arr in enumerate(arrays)]
        assert [min(d["v"]) for d in sort_documents(docs, {"v": 1})] == sorted(min(a) for a in arrays)
        assert [max(d["v"]) for d in sort_documents(docs, {"v": -1})] == sorted(
            (max(a) for a in arrays), reverse=True)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=12))
    def test_compound_key_matches_tuple_order(self, pairs: list[tuple[int, int]]) -> None:
        docs = [{"_id": i, "a": a, "b": b} for i, (a, b) in enumerate(pairs)]
        got = [(d["a"], d["b"]) for d in sort_documents(docs, {"a": 1, "b": -1})]
        assert got == sorted(pairs, key=lambda p: (p[0], -p[1]))
