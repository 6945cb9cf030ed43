"""Tests for mongoemu.query.update: operator updates, replacements, pipelines, upserts, validation.

Expected documents and error texts are MongoDB's (server sources under src/mongo/db/update and the
jstests that exercise them); comments point out the less obvious server behaviours.
"""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mongoemu.bsonvalues import CODEC, deep_copy
from mongoemu.errors import CommandError
from mongoemu.query.collation import parse_collation
from mongoemu.query.update import (
    apply_update,
    classify_update,
    parse_update,
    upsert_seed,
    validate_new_document,
)
from mongoemu.query.update_description import bson_identical

NOW = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)


def fails(code: int, message: str | None = None):
    """Context manager asserting a CommandError with ``code`` (and exact ``message``)."""

    class _Raises:
        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type, exc, tb) -> bool:
            assert exc_type is not None, f"expected error {code}, nothing raised"
            assert isinstance(exc, CommandError), exc
            assert exc.code == code, (exc.code, exc.errmsg)
            if message is not None:
                assert exc.errmsg == message
            return True

    return _Raises()


def update(doc: dict, spec: Any, **kwargs: Any) -> dict:
    before = bson.encode(doc, codec_options=CODEC)
    result = apply_update(doc, spec, now=NOW, **kwargs)
    assert bson.encode(doc, codec_options=CODEC) == before, "input document was mutated"
    return result


def same(a: Any, b: Any) -> bool:
    return bson_identical(a, b)


# ---------------------------------------------------------------------------------------------
# classify_update


class TestClassify:
    def test_kinds(self) -> None:
        assert classify_update({"$set": {"a": 1}}) == "operators"
        assert classify_update({"$set": {}, "$inc": {}}) == "operators"
        assert classify_update({"a": 1}) == "replacement"
        assert classify_update({}) == "replacement"
        assert classify_update([]) == "pipeline"
        assert classify_update([{"$set": {"a": 1}}]) == "pipeline"

    def test_plain_field_after_operator(self) -> None:
        with fails(9, "Unknown modifier: a. Expected a valid update modifier or pipeline-style "
                      "update specified as an array"):
            classify_update({"$set": {"x": 1}, "a": 1})

    def test_unknown_operator(self) -> None:
        with fails(9, "Unknown modifier: $pushAll. Expected a valid update modifier or "
                      "pipeline-style update specified as an array"):
            classify_update({"$pushAll": {"a": [1]}})

    def test_operator_argument_must_be_document(self) -> None:
        with fails(9, "Modifiers operate on fields but we found type int instead. For example: "
                      "{$mod: {<field>: ...}} not {$set: 1}"):
            classify_update({"$set": 1})

    def test_not_a_document(self) -> None:
        with fails(9, "Update argument must be either an object or an array"):
            classify_update(5)
        with fails(14, "Each element of the 'pipeline' array must be an object"):
            classify_update([1])

    def test_dollar_field_after_plain_field_fails_when_applied(self) -> None:
        # The server sees a replacement and rejects the $-field during storage validation.
        assert classify_update({"a": 1, "$set": {"b": 1}}) == "replacement"
        with fails(52, "The dollar ($) prefixed field '$set' in '$set' is not allowed in the "
                       "context of an update's replacement document. Consider using an "
                       "aggregation pipeline with $replaceWith."):
            update({"_id": 1}, {"a": 1, "$set": {"b": 1}})

    def test_operators_are_validated_one_at_a_time(self) -> None:
        # The server validates each operator just before parsing its paths.
        update_spec = {"$set": {"a..b": 1}, "$foo": {}}
        with fails(56):
            parse_update(update_spec)
        with fails(9):
            classify_update(update_spec)

    def test_parse_errors_surface_without_a_document(self) -> None:
        with fails(56, "The update path 'a..b' contains an empty field name, which is not "
                       "allowed."):
            parse_update({"$set": {"a..b": 1}})

    def test_parsed_update_applies_to_many_documents(self) -> None:
        parsed = parse_update({"$inc": {"n": 1}})
        assert parsed.kind == "operators"
        docs = [{"_id": i, "n": i} for i in range(3)]
        assert [parsed.apply(d)["n"] for d in docs] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# $set / $unset and paths


class TestSet:
    def test_new_fields_in_lexicographic_order(self) -> None:
        result = update({"_id": 1, "z": 0}, {"$set": {"b": 1, "a": 1, "c.y": 1, "c.x": 2}})
        assert list(result) == ["_id", "z", "a", "b", "c"]
        assert list(result["c"]) == ["x", "y"]

    def test_numeric_names_in_numeric_order(self) -> None:
        result = update({"_id": 1, "a": {}}, {"$set": {"a.10": 1, "a.9": 2, "a.b": 3}})
        assert list(result["a"]) == ["9", "10", "b"]

    def test_existing_field_keeps_its_position(self) -> None:
        result = update({"_id": 1, "a": 1, "b": 2}, {"$set": {"a": 5}})
        assert list(result.items()) == [("_id", 1), ("a", 5), ("b", 2)]

    def test_same_value_is_a_noop_but_other_type_is_not(self) -> None:
        doc = {"_id": 1, "a": 1}
        assert same(update(doc, {"$set": {"a": 1}}), doc)
        changed = update(doc, {"$set": {"a": 1.0}})
        assert isinstance(changed["a"], float) and not same(changed, doc)

    def test_creates_intermediate_documents(self) -> None:
        assert update({"_id": 1}, {"$set": {"a.b.c": 1}}) == {"_id": 1, "a": {"b": {"c": 1}}}
        assert update({"_id": 1, "a": {"x": 1}}, {"$set": {"a.b.c": 1}}) == {
            "_id": 1, "a": {"x": 1, "b": {"c": 1}}}

    def test_numeric_component_on_missing_path_is_a_field_name(self) -> None:
        assert update({"_id": 1}, {"$set": {"a.0": 1}}) == {"_id": 1, "a": {"0": 1}}
        assert update({"_id": 1, "a": {}}, {"$set": {"a.0.b": 1}}) == {"_id": 1, "a": {"0": {"b": 1}}}

    def test_array_index_beyond_the_end_pads_with_null(self) -> None:
        assert update({"_id": 1, "a": [1]}, {"$set": {"a.3": 9}}) == {
            "_id": 1, "a": [1, None, None, 9]}
        assert update({"_id": 1, "a": []}, {"$set": {"a.2.b": 1}}) == {
            "_id": 1, "a": [None, None, {"b": 1}]}

    def test_array_element_update(self) -> None:
        assert update({"_id": 1, "a": [{"b": 1}, {"b": 2}]}, {"$set": {"a.1.b": 5}}) == {
            "_id": 1, "a": [{"b": 1}, {"b": 5}]}
        assert update({"_id": 1, "a": [1, 2]}, {"$set": {"a.01": 7}}) == {"_id": 1, "a": [1, 7]}

    def test_siblings_see_the_path_created_by_each_other(self) -> None:
        assert update({"_id": 1}, {"$set": {"a.b": 1, "a.c": 2}, "$inc": {"a.d": 3}}) == {
            "_id": 1, "a": {"b": 1, "c": 2, "d": 3}}

    def test_path_not_viable(self) -> None:
        with fails(28, "Cannot create field 'b' in element {a: 1}"):
            update({"_id": 1, "a": 1}, {"$set": {"a.b": 1}})
        with fails(28, "Cannot create field 'b' in element {a: null}"):
            update({"_id": 1, "a": None}, {"$set": {"a.b.c": 1}})
        with fails(28, "Cannot create field 'b' in element {a: [ { b: 0 } ]}"):
            update({"_id": 1, "a": [{"b": 0}]}, {"$set": {"a.b": 1}})
        with fails(28, "Cannot create field 'c' in element {b: \"x\"}"):
            update({"_id": 1, "a": {"b": "x"}}, {"$set": {"a.b.c": 1}})

    def test_does_not_mutate_and_copies_values(self) -> None:
        value = {"deep": [1, {"x": 1}]}
        doc = {"_id": 1, "a": {"b": [1, 2]}}
        result = update(doc, {"$set": {"v": value, "a.b.0": 5}})
        value["deep"][1]["x"] = 99
        assert result["v"] == {"deep": [1, {"x": 1}]}
        assert doc == {"_id": 1, "a": {"b": [1, 2]}}
        result["a"]["b"].append(3)
        assert doc["a"]["b"] == [1, 2]

    def test_empty_paths(self) -> None:
        with fails(56, "An empty update path is not valid."):
            update({"_id": 1}, {"$set": {"": 1}})
        with fails(56, "The update path 'a.' contains an empty field name, which is not allowed."):
            update({"_id": 1}, {"$set": {"a.": 1}})

    def test_empty_operator_is_allowed(self) -> None:
        doc = {"_id": 1, "a": 1}
        assert same(update(doc, {"$set": {}}), doc)

    def test_dollar_prefixed_names(self) -> None:
        message = ("The dollar ($) prefixed field '$a' in '$a' is not allowed in the context of an "
                   "update's replacement document. Consider using an aggregation pipeline with "
                   "$replaceWith.")
        with fails(52, message):
            update({"_id": 1}, {"$set": {"$a": 1}})
        with fails(52, message):
            update({"_id": 1}, {"$set": {"$a.b": 1}})
        # Below the top level '$' names are storable since 5.0.
        assert update({"_id": 1}, {"$set": {"a.$b": 1}}) == {"_id": 1, "a": {"$b": 1}}
        assert update({"_id": 1}, {"$set": {"a": {"$b": 1, "c.d": 2}}}) == {
            "_id": 1, "a": {"$b": 1, "c.d": 2}}

    def test_conflicts(self) -> None:
        with fails(40, "Updating the path 'a.b' would create a conflict at 'a'"):
            update({"_id": 1}, {"$set": {"a": 1}, "$inc": {"a.b": 1}})
        with fails(40, "Updating the path 'a' would create a conflict at 'a'"):
            update({"_id": 1}, {"$set": {"a.b": 1}, "$inc": {"a": 1}})
        with fails(40, "Updating the path 'a' would create a conflict at 'a'"):
            update({"_id": 1}, {"$set": {"a": 1}, "$unset": {"a": 1}})
        # Disjoint siblings are fine.
        assert update({"_id": 1}, {"$set": {"a.b": 1}, "$inc": {"a.c": 1}}) == {
            "_id": 1, "a": {"b": 1, "c": 1}}

    def test_immutable_id(self) -> None:
        with fails(66, "Performing an update on the path '_id' would modify the immutable field "
                       "'_id'"):
            update({"_id": 1}, {"$set": {"_id": 2}})
        with fails(66, "Performing an update on the path '_id.a' would modify the immutable "
                       "field '_id'"):
            update({"_id": {"a": 1}}, {"$set": {"_id.a": 2}})
        with fails(66, "Updating the path '_id' to _id: { a: 1, b: 2 } would modify the immutable "
                       "field '_id'"):
            update({"_id": {"a": 1}}, {"$set": {"_id.b": 2}})
        # Setting _id to the value it has is a no-op, not an error.
        assert update({"_id": 1, "a": 1}, {"$set": {"_id": 1, "a": 2}}) == {"_id": 1, "a": 2}

    def test_nesting_limit(self) -> None:
        deep: Any = 1
        for _ in range(180):
            deep = {"x": deep}
        with fails(15, "Document exceeds maximum nesting depth of 180"):
            update({"_id": 1}, {"$set": {"a": deep}})


class TestUnset:
    def test_removes_fields(self) -> None:
        assert update({"_id": 1, "a": 1, "b": {"c": 1, "d": 2}}, {"$unset": {"a": "", "b.c": 1}}) == {
            "_id": 1, "b": {"d": 2}}

    def test_missing_and_non_viable_paths_are_no_ops(self) -> None:
        doc = {"_id": 1, "a": 1}
        assert same(update(doc, {"$unset": {"x": 1, "a.b": 1}}), doc)

    def test_array_element_becomes_null(self) -> None:
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$unset": {"a.1": 1}}) == {
            "_id": 1, "a": [1, None, 3]}

    def test_id(self) -> None:
        with fails(66, "Performing an update on the path '_id' would modify the immutable field "
                       "'_id'"):
            update({"_id": 1}, {"$unset": {"_id": 1}})


# ---------------------------------------------------------------------------------------------
# Arithmetic and comparisons


class TestArithmetic:
    @pytest.mark.parametrize("current, by, expected", [
        (1, 2, 3),
        (2**31 - 1, 1, Int64(2**31)),  # int32 overflow widens to int64
        (-(2**31), -1, Int64(-(2**31) - 1)),
        (Int64(5), 1, Int64(6)),
        (5, Int64(1), Int64(6)),
        (5, 0.5, 5.5),
        (5, 0.0, 5.0),  # a double argument makes the field a double, even when adding zero
        (1.5, Int64(1), 2.5),
        (Decimal128("1.5"), 1, Decimal128("2.5")),
        (1, Decimal128("0.25"), Decimal128("1.25")),
        (0.1, Decimal128("1"), Decimal128("1.100000000000000")),  # double → 15 digits
    ])
    def test_inc_types(self, current: Any, by: Any, expected: Any) -> None:
        result = update({"_id": 1, "a": current}, {"$inc": {"a": by}})["a"]
        assert same(result, expected), (result, expected)

    @pytest.mark.parametrize("current, by, expected", [
        (3, 4, 12),
        (2**16, 2**16, Int64(2**32)),
        (Int64(3), 2, Int64(6)),
        (3, 0.5, 1.5),
        (Decimal128("2"), 3, Decimal128("6")),
    ])
    def test_mul_types(self, current: Any, by: Any, expected: Any) -> None:
        assert same(update({"_id": 1, "a": current}, {"$mul": {"a": by}})["a"], expected)

    def test_missing_field(self) -> None:
        assert same(update({"_id": 1}, {"$inc": {"a": Int64(5)}})["a"], Int64(5))
        assert same(update({"_id": 1}, {"$mul": {"a": 3}})["a"], 0)
        assert same(update({"_id": 1}, {"$mul": {"a": Int64(3)}})["a"], Int64(0))
        assert same(update({"_id": 1}, {"$mul": {"a": 2.5}})["a"], 0.0)
        assert same(update({"_id": 1}, {"$mul": {"a": Decimal128("2.5")}})["a"],
                    Decimal128("0.0"))

    def test_identity_is_a_noop(self) -> None:
        doc = {"_id": 1, "a": 5, "b": 2.0}
        assert same(update(doc, {"$inc": {"a": 0}, "$mul": {"b": 1.0}}), doc)

    def test_int64_overflow(self) -> None:
        with fails(2, "Failed to apply $inc operations to current value ((NumberLong)"
                      "9223372036854775807) for document {_id: 1}"):
            update({"_id": 1, "a": Int64(2**63 - 1)}, {"$inc": {"a": 1}})
        with fails(2, "Failed to apply $mul operations to current value ((NumberLong)"
                      "4611686018427387904) for document {_id: \"x\"}"):
            update({"_id": "x", "a": Int64(2**62)}, {"$mul": {"a": 2}})

    def test_errors(self) -> None:
        with fails(14, "Cannot increment with non-numeric argument: {a: \"x\"}"):
            update({"_id": 1}, {"$inc": {"a": "x"}})
        with fails(14, "Cannot multiply with non-numeric argument: {a: true}"):
            update({"_id": 1}, {"$mul": {"a": True}})
        with fails(14, "Cannot apply $inc to a value of non-numeric type. {_id: 1} has the field "
                       "'b' of non-numeric type string"):
            update({"_id": 1, "a": {"b": "x"}}, {"$inc": {"a.b": 1}})
        with fails(14, "Cannot apply $mul to a value of non-numeric type. {_id: 1} has the field "
                       "'a' of non-numeric type bool"):
            update({"_id": 1, "a": True}, {"$mul": {"a": 2}})


class TestMinMax:
    def test_min_max(self) -> None:
        doc = {"_id": 1, "lo": 5, "hi": 5}
        assert update(doc, {"$min": {"lo": 3, "hi": 9}, "$max": {}}) == {"_id": 1, "lo": 3, "hi": 5}
        assert update(doc, {"$max": {"lo": 3, "hi": 9}}) == {"_id": 1, "lo": 5, "hi": 9}

    def test_compares_across_types_in_bson_order(self) -> None:
        assert update({"_id": 1, "a": 5}, {"$max": {"a": "x"}})["a"] == "x"
        assert update({"_id": 1, "a": 5}, {"$min": {"a": None}})["a"] is None
        # Equal values of another numeric type are left alone.
        assert same(update({"_id": 1, "a": 1}, {"$min": {"a": 1.0}})["a"], 1)

    def test_missing_is_created(self) -> None:
        assert update({"_id": 1}, {"$min": {"a.b": 3}}) == {"_id": 1, "a": {"b": 3}}

    def test_dates(self) -> None:
        early = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        late = datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
        assert update({"_id": 1, "d": late}, {"$min": {"d": early}})["d"] == early

    def test_collation(self) -> None:
        collation = parse_collation({"locale": "en", "strength": 2})
        doc = {"_id": 1, "a": "abc"}
        assert same(update(doc, {"$max": {"a": "ABC"}}, collation=collation), doc)
        assert update(doc, {"$max": {"a": "ABC"}})["a"] == "abc"  # binary: "a" > "A"


class TestCurrentDate:
    def test_date_and_timestamp(self) -> None:
        ts = Timestamp(1700000000, 3)
        result = update({"_id": 1, "a": 1}, {"$currentDate": {
            "a": True, "b": {"$type": "date"}, "c": {"$type": "timestamp"}, "d": False}},
            cluster_time=ts)
        expected = NOW.replace(microsecond=123000)  # BSON dates have millisecond precision
        assert result == {"_id": 1, "a": expected, "b": expected, "c": ts, "d": expected}

    def test_default_timestamp_from_now(self) -> None:
        result = update({"_id": 1}, {"$currentDate": {"t": {"$type": "timestamp"}}})
        assert result["t"] == Timestamp(int(NOW.timestamp()), 1)

    def test_errors(self) -> None:
        with fails(2, "Unrecognized $currentDate option: $x"):
            update({"_id": 1}, {"$currentDate": {"a": {"$x": 1}}})
        with fails(2, "The '$type' string field is required to be 'date' or 'timestamp': "
                      "{$currentDate: {field : {$type: 'date'}}}"):
            update({"_id": 1}, {"$currentDate": {"a": {"$type": "x"}}})
        with fails(2, "int is not valid type for $currentDate. Please use a boolean ('true') or a "
                      "$type expression ({$type: 'timestamp/date'})."):
            update({"_id": 1}, {"$currentDate": {"a": 1}})


class TestBit:
    def test_operations(self) -> None:
        assert update({"_id": 1, "a": 12}, {"$bit": {"a": {"and": 10}}})["a"] == 8
        assert update({"_id": 1, "a": 12}, {"$bit": {"a": {"or": 3, "xor": 1}}})["a"] == 14
        assert same(update({"_id": 1, "a": 1}, {"$bit": {"a": {"or": Int64(2)}}})["a"], Int64(3))
        assert same(update({"_id": 1}, {"$bit": {"a": {"or": 5}}})["a"], 5)
        assert same(update({"_id": 1, "a": -1}, {"$bit": {"a": {"and": 0x0F}}})["a"], 15)

    def test_errors(self) -> None:
        with fails(2, "Cannot apply $bit to a value of non-integral type._id: 1 has the field a "
                      "of non-integer type double"):
            update({"_id": 1, "a": 1.0}, {"$bit": {"a": {"and": 1}}})
        with fails(2, "The $bit modifier field must be an Integer(32/64 bit); a 'double' is not "
                      "supported here: {and: 1.0}"):
            update({"_id": 1}, {"$bit": {"a": {"and": 1.0}}})
        with fails(2, "The $bit modifier only supports 'and', 'or', and 'xor', not 'not' which is "
                      "an unknown operator: {not: 1}"):
            update({"_id": 1}, {"$bit": {"a": {"not": 1}}})
        with fails(2, "You must pass in at least one bitwise operation. The format is: "
                      "{$bit: {field: {and/or/xor: #}}"):
            update({"_id": 1}, {"$bit": {"a": {}}})
        with fails(2, "The $bit modifier is not compatible with a int. You must pass in an "
                      "embedded document: {$bit: {field: {and/or/xor: #}}"):
            update({"_id": 1}, {"$bit": {"a": 1}})


# ---------------------------------------------------------------------------------------------
# $rename


class TestRename:
    def test_basic(self) -> None:
        result = update({"_id": 1, "a": 1, "b": 2}, {"$rename": {"a": "c"}})
        assert list(result.items()) == [("_id", 1), ("b", 2), ("c", 1)]

    def test_overwrites_existing_target_in_place(self) -> None:
        result = update({"_id": 1, "b": 2, "a": [1]}, {"$rename": {"a": "b"}})
        assert list(result.items()) == [("_id", 1), ("b", [1])]

    def test_nested(self) -> None:
        assert update({"_id": 1, "a": {"b": 1, "x": 0}}, {"$rename": {"a.b": "c.d"}}) == {
            "_id": 1, "a": {"x": 0}, "c": {"d": 1}}

    def test_missing_source_is_a_noop(self) -> None:
        doc = {"_id": 1, "a": 1}
        assert same(update(doc, {"$rename": {"x": "y"}}), doc)

    def test_argument_errors(self) -> None:
        with fails(2, "The 'to' field for $rename must be a string: a: 1"):
            update({"_id": 1}, {"$rename": {"a": 1}})
        with fails(2, 'The source and target field for $rename must differ: a: "a"'):
            update({"_id": 1}, {"$rename": {"a": "a"}})
        with fails(2, 'The source and target field for $rename must not be on the same path: '
                      'a: "a.b"'):
            update({"_id": 1}, {"$rename": {"a": "a.b"}})
        with fails(2, "The source field for $rename may not be dynamic: a.$[]"):
            update({"_id": 1}, {"$rename": {"a.$[]": "b"}})
        with fails(2, "The destination field for $rename may not be dynamic: b.$"):
            update({"_id": 1}, {"$rename": {"a": "b.$"}})

    def test_array_errors(self) -> None:
        with fails(2, "The source field cannot be an array element, 'a.0' in doc with _id: 1 has "
                      "an array field called 'a'"):
            update({"_id": 1, "a": [1]}, {"$rename": {"a.0": "b"}})
        with fails(2, "The destination field cannot be an array element, 'b.0' in doc with _id: 1 "
                      "has an array field called 'b'"):
            update({"_id": 1, "a": 1, "b": [1]}, {"$rename": {"a": "b.0"}})
        with fails(28, "cannot use the part (a of a.b) to traverse the element ({a: 1})"):
            update({"_id": 1, "a": 1}, {"$rename": {"a.b": "c"}})

    def test_conflicts_with_other_operators(self) -> None:
        with fails(40, "Updating the path 'b' would create a conflict at 'b'"):
            update({"_id": 1}, {"$rename": {"a": "b"}, "$set": {"b": 1}})
        with fails(40, "Updating the path 'a' would create a conflict at 'a'"):
            update({"_id": 1}, {"$rename": {"a": "b"}, "$set": {"a": 1}})

    def test_id(self) -> None:
        with fails(66, "Unsetting the path '_id' using $rename would modify the immutable field "
                       "'_id'"):
            update({"_id": 1}, {"$rename": {"_id": "x"}})
        with fails(66, "Performing an update on the path '_id' would modify the immutable field "
                       "'_id'"):
            update({"_id": 1, "a": 2}, {"$rename": {"a": "_id"}})


# ---------------------------------------------------------------------------------------------
# Array operators


class TestPush:
    def test_append_and_create(self) -> None:
        assert update({"_id": 1, "a": [1]}, {"$push": {"a": 2}}) == {"_id": 1, "a": [1, 2]}
        assert update({"_id": 1}, {"$push": {"a.b": [1]}}) == {"_id": 1, "a": {"b": [[1]]}}
        assert update({"_id": 1}, {"$push": {"a": {"$each": []}}}) == {"_id": 1, "a": []}

    def test_document_without_each_is_pushed_as_is(self) -> None:
        assert update({"_id": 1, "a": []}, {"$push": {"a": {"$slice": 1, "x": 2}}}) == {
            "_id": 1, "a": [{"$slice": 1, "x": 2}]}

    @pytest.mark.parametrize("position, expected", [
        (0, [8, 9, 1, 2, 3]),
        (1, [1, 8, 9, 2, 3]),
        (3, [1, 2, 3, 8, 9]),
        (10, [1, 2, 3, 8, 9]),
        (-1, [1, 2, 8, 9, 3]),
        (-3, [8, 9, 1, 2, 3]),
        (-10, [8, 9, 1, 2, 3]),
    ])
    def test_position(self, position: int, expected: list) -> None:
        result = update({"_id": 1, "a": [1, 2, 3]},
                        {"$push": {"a": {"$each": [8, 9], "$position": position}}})
        assert result["a"] == expected

    def test_sort_and_slice(self) -> None:
        spec = {"$each": [5, 1], "$sort": 1, "$slice": 3}
        assert update({"_id": 1, "a": [4, 2]}, {"$push": {"a": spec}})["a"] == [1, 2, 4]
        spec = {"$each": [5, 1], "$sort": -1, "$slice": -2}
        assert update({"_id": 1, "a": [4, 2]}, {"$push": {"a": spec}})["a"] == [2, 1]
        assert update({"_id": 1, "a": [4, 2]}, {"$push": {"a": {"$each": [1], "$slice": 0}}})[
            "a"] == []

    def test_sort_by_fields(self) -> None:
        docs = [{"s": 2, "n": "b"}, {"n": "none"}, {"s": 1, "t": {"u": 9}}, {"s": 1, "t": {"u": 3}}]
        result = update({"_id": 1, "a": docs},
                        {"$push": {"a": {"$each": [], "$sort": {"s": 1, "t.u": -1}}}})
        # Missing sort fields count as null, which sorts before numbers.
        assert result["a"] == [{"n": "none"}, {"s": 1, "t": {"u": 9}}, {"s": 1, "t": {"u": 3}},
                               {"s": 2, "n": "b"}]

    def test_sort_mixed_types_in_bson_order(self) -> None:
        result = update({"_id": 1, "a": ["b", 3, None, {"x": 1}, 1.5]},
                        {"$push": {"a": {"$each": [], "$sort": 1}}})
        assert result["a"] == [None, 1.5, 3, "b", {"x": 1}]

    def test_errors(self) -> None:
        with fails(2, "The field 'a.b' must be an array but is of type int in document {_id: 1}"):
            update({"_id": 1, "a": {"b": 1}}, {"$push": {"a.b": 1}})
        with fails(2, "The argument to $each in $push must be an array but it was of type: "
                      "object"):
            update({"_id": 1}, {"$push": {"a": {"$each": {}}}})
        with fails(2, "Unrecognized clause in $push: $foo"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$foo": 1}}})
        with fails(2, "The value for $slice must be an integer value but was given type: string"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$slice": "1"}}})
        with fails(2, "The value for $position must be an integer value, not of type: double"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$position": 1.5}}})
        with fails(2, "The $sort element value must be either 1 or -1"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$sort": 2}}})
        with fails(2, "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} "
                      "to sort embedded fields"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$sort": "x"}}})
        with fails(2, "The $sort pattern is empty when it should be a set of fields."):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$sort": {}}}})
        with fails(2, "The $sort field is a dotted field but has an empty part: a..b"):
            update({"_id": 1}, {"$push": {"a": {"$each": [], "$sort": {"a..b": 1}}}})


class TestAddToSet:
    def test_adds_missing_values_only(self) -> None:
        assert update({"_id": 1, "a": [1, 2]}, {"$addToSet": {"a": 3}})["a"] == [1, 2, 3]
        doc = {"_id": 1, "a": [1, {"x": 1}]}
        assert same(update(doc, {"$addToSet": {"a": 1.0}}), doc)  # 1.0 equals 1
        assert same(update(doc, {"$addToSet": {"a": {"x": 1}}}), doc)
        # Field order matters for document equality.
        assert update({"_id": 1, "a": [{"x": 1, "y": 2}]}, {"$addToSet": {"a": {"y": 2, "x": 1}}})[
            "a"] == [{"x": 1, "y": 2}, {"y": 2, "x": 1}]

    def test_each_is_deduplicated(self) -> None:
        assert update({"_id": 1, "a": [1]}, {"$addToSet": {"a": {"$each": [2, 1, 2, 3]}}})[
            "a"] == [1, 2, 3]
        assert update({"_id": 1}, {"$addToSet": {"a": {"$each": [2, 2]}}}) == {"_id": 1, "a": [2]}

    def test_collation(self) -> None:
        collation = parse_collation({"locale": "en", "strength": 2})
        doc = {"_id": 1, "a": ["abc"]}
        assert same(update(doc, {"$addToSet": {"a": "ABC"}}, collation=collation), doc)

    def test_errors(self) -> None:
        with fails(2, "Cannot apply $addToSet to non-array field. Field named 'a' has non-array "
                      "type int"):
            update({"_id": 1, "a": 1}, {"$addToSet": {"a": 1}})
        with fails(14, "The argument to $each in $addToSet must be an array but it was of type "
                       "int"):
            update({"_id": 1}, {"$addToSet": {"a": {"$each": 1}}})
        with fails(2, "Found unexpected fields after $each in $addToSet: { $each: [ 1 ], x: 1 }"):
            update({"_id": 1}, {"$addToSet": {"a": {"$each": [1], "x": 1}}})


class TestPop:
    def test_pop(self) -> None:
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$pop": {"a": 1}})["a"] == [1, 2]
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$pop": {"a": -1}})["a"] == [2, 3]
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$pop": {"a": 1.0}})["a"] == [1, 2]

    def test_noops(self) -> None:
        doc = {"_id": 1, "a": [], "b": {}}
        assert same(update(doc, {"$pop": {"a": 1, "x": 1, "b.c": 1}}), doc)

    def test_errors(self) -> None:
        with fails(14, "Path 'a' contains an element of non-array type 'int'"):
            update({"_id": 1, "a": 1}, {"$pop": {"a": 1}})
        with fails(9, "$pop expects 1 or -1, found: 2"):
            update({"_id": 1}, {"$pop": {"a": 2}})
        with fails(9, 'Expected a number in: a: "x"'):
            update({"_id": 1}, {"$pop": {"a": "x"}})
        with fails(28, "Cannot use the part (b) of (a.b) to traverse the element ({a: 1})"):
            update({"_id": 1, "a": 1}, {"$pop": {"a.b": 1}})


class TestPull:
    def test_equality(self) -> None:
        assert update({"_id": 1, "a": [1, 2, 1.0, "1"]}, {"$pull": {"a": 1}})["a"] == [2, "1"]
        assert update({"_id": 1, "a": [[1, 2], [1]]}, {"$pull": {"a": [1]}})["a"] == [[1, 2]]

    def test_condition_on_the_element(self) -> None:
        assert update({"_id": 1, "a": [1, 5, 3, 7]}, {"$pull": {"a": {"$gte": 5}}})["a"] == [1, 3]
        assert update({"_id": 1, "a": ["ab", "b", "xa"]}, {"$pull": {"a": Regex("^a")}})["a"] == [
            "b", "xa"]
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$pull": {"a": {"$in": [1, 3]}}})["a"] == [2]

    def test_document_condition_is_a_query(self) -> None:
        doc = {"_id": 1, "a": [{"x": 1, "y": 1}, {"x": 2}, 5, {"x": [1, 3]}]}
        # {x: 1} matches documents whose x is (or contains) 1; scalars never match.
        assert update(doc, {"$pull": {"a": {"x": 1}}})["a"] == [{"x": 2}, 5]
        assert update(doc, {"$pull": {"a": {"x": {"$gt": 1}}}})["a"] == [{"x": 1, "y": 1}, 5]
        assert update(doc, {"$pull": {"a": {}}})["a"] == [5]

    def test_missing_and_errors(self) -> None:
        doc = {"_id": 1}
        assert same(update(doc, {"$pull": {"a": 1}}), doc)
        with fails(2, "Cannot apply $pull to a non-array value"):
            update({"_id": 1, "a": 1}, {"$pull": {"a": 1}})
        with fails(28, "Cannot use the part (b) of (a.b) to traverse the element ({a: \"s\"})"):
            update({"_id": 1, "a": "s"}, {"$pull": {"a.b": 1}})

    def test_pull_all(self) -> None:
        assert update({"_id": 1, "a": [1, 2, 3, 1, {"x": 1}]},
                      {"$pullAll": {"a": [1, {"x": 1}]}})["a"] == [2, 3]
        with fails(2, "$pullAll requires an array argument but was given a int"):
            update({"_id": 1}, {"$pullAll": {"a": 1}})
        with fails(2, "Cannot apply $pull to a non-array value"):
            update({"_id": 1, "a": {}}, {"$pullAll": {"a": [1]}})


# ---------------------------------------------------------------------------------------------
# Positional and array-filter updates


class TestPositional:
    def test_matched_position(self) -> None:
        doc = {"_id": 1, "a": [{"b": 1}, {"b": 2}]}
        assert update(doc, {"$set": {"a.$.b": 5}}, matched_position=1)["a"] == [{"b": 1}, {"b": 5}]
        assert update({"_id": 1, "a": [1, 2, 3]}, {"$inc": {"a.$": 10}}, matched_position=2)[
            "a"] == [1, 2, 13]

    def test_merges_with_the_same_explicit_index(self) -> None:
        doc = {"_id": 1, "a": [{"x": 0}, {"x": 0}]}
        result = update(doc, {"$set": {"a.$.y": 1, "a.1.z": 2}}, matched_position=1)
        assert result["a"] == [{"x": 0}, {"x": 0, "y": 1, "z": 2}]
        with fails(40, "Update created a conflict at 'a.1'"):
            update({"_id": 1, "a": [1, 2]}, {"$set": {"a.$": 1, "a.1": 2}}, matched_position=1)

    def test_errors(self) -> None:
        with fails(2, "The positional operator did not find the match needed from the query."):
            update({"_id": 1, "a": [1]}, {"$set": {"a.$": 1}})
        with fails(2, "Too many positional (i.e. '$') elements found in path 'a.$.b.$'"):
            update({"_id": 1}, {"$set": {"a.$.b.$": 1}})
        with fails(2, "Cannot have positional (i.e. '$') element in the first position in path "
                      "'$.a'"):
            update({"_id": 1}, {"$set": {"$.a": 1}})


class TestArrayFilters:
    def test_all_elements(self) -> None:
        assert update({"_id": 1, "a": [0, 1]}, {"$set": {"a.$[]": 3}})["a"] == [3, 3]
        assert update({"_id": 1, "a": [{"b": 0}, {"b": 1}]}, {"$inc": {"a.$[].b": 2}})["a"] == [
            {"b": 2}, {"b": 3}]
        assert update({"_id": 1, "a": [0, 1]}, {"$unset": {"a.$[]": 1}})["a"] == [None, None]
        assert update({"_id": 1, "a": [[0], [1]]}, {"$addToSet": {"a.$[]": 2}})["a"] == [
            [0, 2], [1, 2]]

    def test_scalar_elements(self) -> None:
        result = update({"_id": 1, "a": [0, 1, 0, 1]}, {"$set": {"a.$[i]": 2}},
                        array_filters=[{"i": 0}])
        assert result["a"] == [2, 1, 2, 1]

    def test_document_elements(self) -> None:
        doc = {"_id": 1, "grades": [{"grade": 80}, {"grade": 85}, {"grade": 90}]}
        result = update(doc, {"$set": {"grades.$[x].ok": True}}, array_filters=[{"x.grade": {"$gte": 85}}])
        assert result["grades"] == [{"grade": 80}, {"grade": 85, "ok": True},
                                    {"grade": 90, "ok": True}]

    def test_array_elements_match_like_fields(self) -> None:
        # An array element that is itself an array matches {i: 0} when it contains 0.
        result = update({"_id": 1, "a": [[0], [1]]}, {"$addToSet": {"a.$[i]": 2}},
                        array_filters=[{"i": 0}])
        assert result["a"] == [[0, 2], [1]]

    def test_logical_filter_and_nesting(self) -> None:
        result = update({"_id": 1, "a": [0, 1, 3]}, {"$set": {"a.$[i]": 2}},
                        array_filters=[{"$or": [{"i": 0}, {"i": 3}]}])
        assert result["a"] == [2, 1, 2]
        doc = {"_id": 1, "a": [{"b": 0, "c": [{"d": 0}, {"d": 1}]}, {"b": 1, "c": [{"d": 0}]}]}
        result = update(doc, {"$set": {"a.$[i].c.$[j].d": 2}},
                        array_filters=[{"i.b": 0}, {"j.d": 0}])
        assert result["a"] == [{"b": 0, "c": [{"d": 2}, {"d": 1}]}, {"b": 1, "c": [{"d": 0}]}]
        result = update({"_id": 1, "a": [[0, 1], [0, 1]]}, {"$set": {"a.$[].$[j]": 2}},
                        array_filters=[{"j": 0}])
        assert result["a"] == [[2, 1], [2, 1]]

    def test_disjoint_identifiers_do_not_conflict(self) -> None:
        doc = {"_id": 1, "a": [{"x": 0, "b": [{"y": 0, "c": 0, "d": 0}]}]}
        result = update(doc, {"$set": {"a.$[i].b.$[k].c": 1, "a.$[j].b.$[k].d": 1}},
                        array_filters=[{"i.x": 0}, {"j.x": 0}, {"k.y": 0}])
        assert result["a"] == [{"x": 0, "b": [{"y": 0, "c": 1, "d": 1}]}]

    def test_conflicts(self) -> None:
        with fails(40, "Update created a conflict at 'a.0'"):
            update({"_id": 1, "a": [0]}, {"$set": {"a.$[i]": 2, "a.$[j]": 3}},
                   array_filters=[{"i": 0}, {"j": 0}])
        doc = {"_id": 1, "a": [{"x": 0, "b": [{"y": 0, "c": 0}]}, {"x": 1, "b": [{"y": 0}]}]}
        with fails(40, "Update created a conflict at 'a.0.b.$[k].c'"):
            update(doc, {"$set": {"a.$[i].b.$[k].c": 1, "a.$[j].b.$[k].c": 2}},
                   array_filters=[{"i.x": 0}, {"j.x": 0}, {"k.y": 0}])
        with fails(40, "Updating the path 'a.0' would create a conflict at 'a'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 0, "a.0": 0}}, array_filters=[{"i": 0}])
        with fails(40, "Updating the path 'a.$' would create a conflict at 'a'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 0, "a.$": 0}}, array_filters=[{"i": 0}])

    def test_filter_errors(self) -> None:
        with fails(2, "No array filter found for identifier 'i' in path 'a.$[i]'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 0}})
        with fails(9, "The array filter for identifier 'j' was not used in the update "
                      "{ $set: { a.$[i]: 5 } }"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters=[{"i": 0}, {"j": 0}])
        with fails(9, "Found multiple array filters with the same top-level field name i"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters=[{"i": 0}, {"i": 1}])
        with fails(9, "Error parsing array filter :: caused by :: Expected a single top-level "
                      "field name, found 'i' and 'j'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters=[{"i": 0, "j": 0}])
        with fails(2, "Error parsing array filter :: caused by :: The top-level field name must "
                      "be an alphanumeric string beginning with a lowercase letter, found 'I'"):
            update({"_id": 1}, {"$set": {"a.$[I]": 5}}, array_filters=[{"I": 0}])
        with fails(9, "Cannot use an expression without a top-level field name in arrayFilters"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters=[{}])
        with fails(2, "Error parsing array filter :: caused by :: unknown top level operator: $i"):
            update({"_id": 1}, {"$set": {"a.$[$i]": 5}}, array_filters=[{"$i": 0}])
        with fails(2, "Cannot have array filter identifier (i.e. '$[<id>]') element in the first "
                      "position in path '$[].a'"):
            update({"_id": 1}, {"$set": {"$[].a": 5}})
        with fails(14, "BSON field 'arrayFilters' is the wrong type 'object', expected type "
                       "'array'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters={"i": 0})
        with fails(14, "BSON field 'arrayFilters.0' is the wrong type 'string', expected type "
                       "'object'"):
            update({"_id": 1}, {"$set": {"a.$[i]": 5}}, array_filters=["bad"])
        with fails(9, "arrayFilters may not be specified for pipeline-style updates"):
            update({"_id": 1}, [{"$set": {"a": 1}}], array_filters=[{"i": 0}])

    def test_application_errors(self) -> None:
        with fails(2, "The path 'a.b' must exist in the document in order to apply array "
                      "updates."):
            update({"_id": 1}, {"$set": {"a.b.$[]": 1}})
        with fails(2, "Cannot apply array updates to non-array element a: 1"):
            update({"_id": 1, "a": 1}, {"$set": {"a.$[]": 1}})
        with fails(28, "Cannot create field '$[i' in element {a: [ 0 ]}"):
            update({"_id": 1, "a": [0], "b": [{"j": 0}]}, {"$set": {"a.$[i.j]": 1, "b.$[i]": 1}},
                   array_filters=[{"i.j": 0}])
        with fails(28, "Cannot create field 'b' in element {0: 0}"):
            update({"_id": 1, "a": [0]}, {"$set": {"a.$[i].b": 1}}, array_filters=[{"i": 0}])

    def test_collation(self) -> None:
        collation = parse_collation({"locale": "en_US", "strength": 2})
        result = update({"_id": 1, "a": ["foo", "FOO", "bar"]}, {"$set": {"a.$[i]": "x"}},
                        array_filters=[{"i": "foo"}], collation=collation)
        assert result["a"] == ["x", "x", "bar"]


# ---------------------------------------------------------------------------------------------
# Replacement and pipeline updates


class TestReplacement:
    def test_keeps_the_id(self) -> None:
        assert update({"_id": 1, "a": 1}, {"b": 2}) == {"_id": 1, "b": 2}
        result = update({"_id": 1, "a": 1}, {"b": 2, "_id": 1})
        assert list(result) == ["_id", "b"]
        assert update({"_id": 1, "a": 1}, {}) == {"_id": 1}

    def test_changing_the_id(self) -> None:
        with fails(66, "After applying the update, the (immutable) field '_id' was found to have "
                       "been altered to _id: 2"):
            update({"_id": 1}, {"_id": 2})
        # The server compares with woCompare, so an equal number of another type passes.
        assert same(update({"_id": 1}, {"_id": 1.0})["_id"], 1.0)

    def test_storage_rules(self) -> None:
        with fails(52, "The dollar ($) prefixed field '$x' in '$x' is not allowed in the context "
                       "of an update's replacement document. Consider using an aggregation "
                       "pipeline with $replaceWith."):
            update({"_id": 1}, {"a": 1, "$x": 1})
        assert update({"_id": 1}, {"a": {"$b": 1}, "c.d": 1}) == {"_id": 1, "a": {"$b": 1}, "c.d": 1}
        with fails(53, "The '_id' value cannot be of type array"):
            update({"_id": 1}, {"_id": [1]})
        with fails(52, "_id fields may not contain '$'-prefixed fields: $a is not valid for "
                       "storage."):
            update({"_id": {"x": 1}}, {"_id": {"$a": 1}})

    def test_upsert_replacement(self) -> None:
        seed = upsert_seed({"_id": 7, "a": 1}, {"b": 1})
        assert seed == {"_id": 7}
        assert apply_update(seed, {"b": 1, "$x": 2}, is_upsert_insert=True) == {
            "_id": 7, "b": 1, "$x": 2}
        with fails(66, "After applying the update, the (immutable) field '_id' was found to have "
                       "been altered to _id: 8"):
            apply_update(seed, {"_id": 8}, is_upsert_insert=True)


class TestPipeline:
    def test_stages(self) -> None:
        doc = {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]}
        assert update(doc, [{"$set": {"array": ["foo", {"a": "bar"}]}}]) == {
            "_id": 1, "a": 1, "array": ["foo", {"a": "bar"}]}
        assert update(doc, [{"$unset": ["a", "array"]}, {"$set": {"b": 2}}]) == {"_id": 1, "b": 2}
        assert update(doc, [{"$replaceWith": {"x": 1}}]) == {"_id": 1, "x": 1}

    def test_removing_the_id_keeps_it(self) -> None:
        assert update({"_id": 1, "a": 1}, [{"$project": {"a": 1, "_id": 0}}]) == {"_id": 1, "a": 1}

    def test_changing_the_id(self) -> None:
        with fails(66, "After applying the update, the (immutable) field '_id' was found to have "
                       "been altered to _id: 5"):
            update({"_id": 1}, [{"$set": {"_id": 5}}])

    def test_top_level_dollar_fields_are_allowed(self) -> None:
        # crud spec test updateMany-dots_and_dollars (5.0+).
        stage = {"$replaceWith": {"$setField": {"field": {"$literal": "$a"}, "value": 1,
                                                "input": "$$ROOT"}}}
        assert update({"_id": 1, "foo": {}}, [stage]) == {"_id": 1, "foo": {}, "$a": 1}

    def test_let_variables_and_now(self) -> None:
        result = update({"_id": 1}, [{"$set": {"v": "$$x", "t": "$$NOW"}}], variables={"x": 7})
        assert result == {"_id": 1, "v": 7, "t": NOW.replace(microsecond=123000)}
        parsed = parse_update([{"$set": {"v": "$$x"}}], variables={"x": 8})
        assert parsed.apply({"_id": 1}) == {"_id": 1, "v": 8}

    def test_stage_errors(self) -> None:
        with fails(168, "Unrecognized expression '$foo'"):
            parse_update([{"$set": {"a": {"$foo": 1}}}])
        with fails(72, "$match is not allowed to be used within an update"):
            update({"_id": 1}, [{"$match": {}}])
        with fails(40324, "Unrecognized pipeline stage name: '$bogus'"):
            update({"_id": 1}, [{"$bogus": {}}])
        with fails(40323, "A pipeline stage specification object must contain exactly one field."):
            update({"_id": 1}, [{"$set": {}, "$unset": "a"}])


# ---------------------------------------------------------------------------------------------
# Upserts


class TestUpsertSeed:
    def test_equalities_become_the_seed(self) -> None:
        query = {"b": 1, "a.x": 2, "$and": [{"c": {"$eq": 3}}, {"d": {"$in": [4]}}],
                 "e": {"$gt": 1}, "f": Regex("x"), "$or": [{"g": 5}], "h": {"$all": [6]},
                 "$expr": {"$eq": ["$q", 1]}}
        seed = upsert_seed(query, {"$set": {"z": 1}})
        # In path order, as the canonical query lists them.
        assert list(seed.items()) == [("a", {"x": 2}), ("b", 1), ("c", 3), ("d", 4), ("g", 5),
                                      ("h", 6)]

    def test_id_and_documents(self) -> None:
        assert upsert_seed({"_id": {"x": 1}, "a": {"b": 1}, "n": None}, {"$inc": {"c": 1}}) == {
            "_id": {"x": 1}, "a": {"b": 1}, "n": None}
        assert upsert_seed({"a": {"$gt": 1}, "$or": [{"b": 1}, {"c": 1}]}, {"$set": {}}) == {}

    def test_replacement_takes_only_the_id(self) -> None:
        assert upsert_seed({"_id": 1, "a": 2}, {"x": 1}) == {"_id": 1}
        with fails(179, "field at '_id' must be exactly specified, field at sub-path '_id.a'found"):
            upsert_seed({"_id.a": 1}, {"x": 1})

    def test_conflicting_equalities(self) -> None:
        with fails(54, "cannot infer query fields to set, path 'a' is matched twice"):
            upsert_seed({"$and": [{"a": 1}, {"a": 2}]}, {"$set": {}})
        with fails(54, "cannot infer query fields to set, both paths 'a.b' and 'a' are matched"):
            upsert_seed({"a.b": 1, "a": {"b": 1}}, {"$set": {}})
        with fails(54, "cannot infer query fields to set, path 'a' is matched twice"):
            upsert_seed({"a": {"$all": [1, 2]}}, {"$set": {}})

    def test_upsert_application(self) -> None:
        seed = upsert_seed({"a": 1, "_id": 3}, {"$set": {"b": 1}, "$setOnInsert": {"c": 1}})
        result = apply_update(seed, {"$set": {"b": 1}, "$setOnInsert": {"c": 1}},
                              is_upsert_insert=True)
        assert result == {"_id": 3, "a": 1, "b": 1, "c": 1}
        assert apply_update({"_id": 3}, {"$setOnInsert": {"c": 1}}) == {"_id": 3}

    def test_upsert_id_comes_first(self) -> None:
        result = apply_update({"a": 1}, {"$set": {"_id": 5}}, is_upsert_insert=True)
        assert list(result.items()) == [("_id", 5), ("a", 1)]
        with fails(66, "Performing an update on the path '_id' would modify the immutable field "
                       "'_id'"):
            apply_update({"_id": 1}, {"$setOnInsert": {"_id": 2}}, is_upsert_insert=True)

    def test_upsert_validation(self) -> None:
        # An upsert validates the finished document, where top-level '$' fields are allowed.
        assert apply_update({}, {"$set": {"$a": 1}}, is_upsert_insert=True) == {"$a": 1}
        with fails(53, "The '_id' value cannot be of type array"):
            apply_update({}, {"$set": {"_id": [1]}}, is_upsert_insert=True)
        with fails(2, "The positional operator did not find the match needed from the query."):
            apply_update({"a": [1]}, {"$set": {"a.$": 1}}, is_upsert_insert=True)


# ---------------------------------------------------------------------------------------------
# Insert validation


class TestValidateNewDocument:
    def test_allowed_names(self) -> None:
        validate_new_document({"_id": 1, "$a": 1, "a.b": 1, "c": {"$d": 1, "e.f": 2}})

    def test_id_rules(self) -> None:
        with fails(2, "can't use an array for _id"):
            validate_new_document({"_id": [1]})
        with fails(2, "can't use a regex for _id"):
            validate_new_document({"_id": Regex("a")})
        with fails(52, "_id fields may not contain '$'-prefixed fields: $a is not valid for "
                       "storage."):
            validate_new_document({"_id": {"x": {"$a": 1}}})
        validate_new_document({"_id": {"$ref": "c", "$id": 1, "$db": "d"}})  # a DBRef is fine
        validate_new_document({"a": 1})  # _id is generated by the caller

    def test_nesting_limit(self) -> None:
        def nested(levels: int) -> Any:
            value: Any = {}
            for _ in range(levels - 1):
                value = {"x": value}
            return value

        validate_new_document(nested(180))
        with fails(15, "cannot insert document because it exceeds 180 levels of nesting"):
            validate_new_document(nested(181))


# ---------------------------------------------------------------------------------------------
# Properties

_names = st.text(alphabet="abcxyz019", min_size=1, max_size=3)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False, width=64), st.text(max_size=4),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_names, inner, max_size=3)),
    max_leaves=8,
)
_docs = st.dictionaries(_names, _values, max_size=5).map(lambda d: {"_id": 1, **d})
_paths = st.lists(_names, min_size=1, max_size=3).map(".".join)
_updates = st.fixed_dictionaries({}, optional={
    "$set": st.dictionaries(_paths, _values, max_size=2),
    "$unset": st.dictionaries(_paths, st.just(""), max_size=2),
    "$inc": st.dictionaries(_paths, st.integers(-5, 5), max_size=2),
    "$push": st.dictionaries(_paths, _scalars, max_size=1),
    "$pull": st.dictionaries(_paths, _scalars, max_size=1),
    "$rename": st.dictionaries(_names, _names, max_size=1),
}).filter(bool)


def _get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc[part]
        else:
            doc = doc[int(part)]
    return doc


class TestProperties:
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(_docs, _updates)
    def test_never_mutates_and_keeps_id_first(self, doc: dict, spec: dict) -> None:
        snapshot = bson.encode(doc, codec_options=CODEC)
        try:
            result = apply_update(doc, spec, now=NOW)
        except CommandError:
            assert bson.encode(doc, codec_options=CODEC) == snapshot
            return
        assert bson.encode(doc, codec_options=CODEC) == snapshot
        assert next(iter(result)) == "_id" and result["_id"] == 1
        bson.encode(result, codec_options=CODEC)  # always storable

    @settings(max_examples=300)
    @given(_docs, _paths, _values)
    def test_set_then_read_back(self, doc: dict, path: str, value: Any) -> None:
        assume(not path.startswith("_id"))
        try:
            result = apply_update(doc, {"$set": {path: value}})
        except CommandError as error:
            assert error.code == 28
            return
        assert bson_identical(_get(result, path), value)
        copy = deep_copy(result)
        assert bson_identical(apply_update(result, {"$set": {path: value}}), copy)  # idempotent

    @settings(max_examples=200)
    @given(st.lists(st.text(alphabet="ab09", min_size=1, max_size=3), min_size=1, max_size=6,
                    unique=True))
    def test_new_fields_come_in_update_order(self, names: list[str]) -> None:
        result = apply_update({"_id": 0}, {"$set": {name: 1 for name in names}})

        def key(name: str) -> tuple:
            strict = name.isdigit() and (name == "0" or name[0] != "0")
            return (0, int(name), "") if strict else (1, 0, name)

        fields = list(result)[1:]
        for first, second in zip(fields, fields[1:]):
            if key(first)[0] == key(second)[0] == 0:
                assert int(first) < int(second)
            elif not (key(first)[0] == 0 or key(second)[0] == 0):
                assert first < second

    @settings(max_examples=300)
    @given(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**40), 2**40).map(Int64),
                     st.floats(allow_nan=False, allow_infinity=False, width=64),
                     st.decimals(allow_nan=False, allow_infinity=False, places=3,
                                 min_value=-10**6, max_value=10**6).map(Decimal128)),
           st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**40), 2**40).map(Int64),
                     st.floats(allow_nan=False, allow_infinity=False, width=64),
                     st.decimals(allow_nan=False, allow_infinity=False, places=3,
                                 min_value=-10**6, max_value=10**6).map(Decimal128)))
    def test_inc_keeps_bson_types(self, current: Any, by: Any) -> None:
        result = apply_update({"_id": 1, "a": current}, {"$inc": {"a": by}})["a"]
        types_ = {type(current), type(by)}
        if Decimal128 in types_:
            assert isinstance(result, Decimal128)
        elif float in types_:
            assert isinstance(result, float) and result == float(current) + float(by)
        elif Int64 in types_:
            assert isinstance(result, Int64) and result == int(current) + int(by)
        else:
            total = int(current) + int(by)
            expected_type = int if -(2**31) <= total < 2**31 else Int64
            assert type(result) is expected_type and result == total

    @settings(max_examples=200)
    @given(st.lists(st.integers(0, 9), max_size=6), st.lists(st.integers(0, 9), max_size=4),
           st.integers(-8, 8), st.one_of(st.none(), st.sampled_from([1, -1])))
    def test_push_each_slice_sort(self, array: list, each: list, slice_: int,
                                  sort: int | None) -> None:
        spec: dict[str, Any] = {"$each": each, "$slice": slice_}
        if sort is not None:
            spec["$sort"] = sort
        result = apply_update({"_id": 1, "a": array}, {"$push": {"a": spec}})["a"]
        combined = array + each
        if sort is not None:
            combined = sorted(combined, reverse=sort < 0)
        expected = combined[:slice_] if slice_ >= 0 else combined[len(combined) + slice_:]
        if -slice_ > len(combined):
            expected = combined
        assert result == expected
