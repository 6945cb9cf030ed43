"""Query matcher semantics (MongoDB manual rules), filter analysis helpers, paths and collation."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu import bsonvalues
from mongoemu.bsonvalues import MISSING
from mongoemu.errors import CommandError
from mongoemu.query import matcher as matcher_module
from mongoemu.query.collation import Collation, parse_collation, sort_key_collated
from mongoemu.query.matcher import (
    Matcher,
    equality_fields,
    id_range,
    id_values,
    is_simple_id_equality,
)
from mongoemu.query.paths import array_index, get_path, get_path_values


def match(filter: dict[str, Any], doc: dict[str, Any], collation: dict[str, Any] | None = None) -> bool:
    return Matcher(filter, parse_collation(collation)).matches(doc)


def position(filter: dict[str, Any], doc: dict[str, Any]) -> tuple[bool, int | None]:
    return Matcher(filter).matches_with_position(doc)


def error_code(filter: dict[str, Any]) -> int:
    with pytest.raises(CommandError) as info:
        Matcher(filter)
    return info.value.code


# -- paths -------------------------------------------------------------------------------------


class TestPaths:
    def test_get_path_indexes_arrays_without_fan_out(self) -> None:
        doc = {"a": [{"b": 1}, {"b": 2}], "c": {"d": [5, 6]}}
        assert get_path(doc, "a.1.b") == 2
        assert get_path(doc, "c.d.0") == 5
        assert get_path(doc, "a.b") is MISSING
        assert get_path(doc, "a.5") is MISSING
        assert get_path(doc, "x.y") is MISSING
        assert get_path(doc, "c") == {"d": [5, 6]}

    def test_get_path_values_fans_out_and_offers_leaf_arrays_whole(self) -> None:
        doc = {"a": [{"b": 1}, {"b": [2, 3]}, {"c": 4}, 7]}
        assert get_path_values(doc, "a.b") == [1, 2, 3, [2, 3]]
        assert get_path_values(doc, "a.b", expand_leaf_arrays=False) == [1, [2, 3]]
        assert get_path_values(doc, "a.b", include_missing=True) == [1, 2, 3, [2, 3], MISSING]
        assert get_path_values(doc, "a.0.b") == [1]
        assert get_path_values(doc, "nope") == []
        assert get_path_values(doc, "nope", include_missing=True) == [MISSING]

    def test_numeric_component_matches_index_and_field_name(self) -> None:
        doc = {"a": [{"0": "field"}, "second"]}
        assert get_path_values(doc, "a.0") == [{"0": "field"}, "field"]
        assert get_path_values(doc, "a.1") == ["second"]

    def test_array_index_only_accepts_canonical_integers(self) -> None:
        assert array_index("0") == 0
        assert array_index("12") == 12
        assert array_index("01") == -1
        assert array_index("-1") == -1
        assert array_index("x") == -1
        assert array_index("²") == -1


# -- equality ----------------------------------------------------------------------------------


class TestEquality:
    def test_scalar_and_array_element_and_whole_array(self) -> None:
        assert match({"a": 1}, {"a": 1})
        assert match({"a": 1}, {"a": [0, 1]})
        assert match({"a": [0, 1]}, {"a": [0, 1]})
        assert not match({"a": [1, 0]}, {"a": [0, 1]})
        assert match({"a": [1]}, {"a": [[1], 2]})
        assert not match({"a": 1}, {"a": [[1]]})
        assert not match({"a": 1}, {"b": 1})

    def test_numbers_compare_across_types(self) -> None:
        for stored in (1, 1.0, Int64(1), Decimal128("1"), Decimal128("1.000")):
            for query in (1, 1.0, Int64(1), Decimal128("1")):
                assert match({"a": query}, {"a": stored}), (query, stored)
        assert not match({"a": 0.1}, {"a": Decimal128("0.1")})
        assert not match({"a": 1}, {"a": "1"})

    def test_bool_is_not_a_number(self) -> None:
        assert not match({"a": 1}, {"a": True})
        assert not match({"a": True}, {"a": 1})
        assert match({"a": True}, {"a": True})
        assert not match({"a": False}, {"a": 0})

    def test_nan_equals_nan(self) -> None:
        nan = float("nan")
        assert match({"a": nan}, {"a": nan})
        assert match({"a": {"$eq": nan}}, {"a": Decimal128("NaN")})
        assert not match({"a": nan}, {"a": 1})
        assert match({"a": {"$in": [nan]}}, {"a": nan})

    def test_null_matches_null_and_missing(self) -> None:
        assert match({"a": None}, {"a": None})
        assert match({"a": None}, {})
        assert match({"a": None}, {"a": [1, None]})
        assert not match({"a": None}, {"a": 0})
        assert match({"a.b": None}, {"a": {"c": 1}})
        assert match({"a.b": None}, {"a": 5})
        assert match({"a.b": None}, {"a": [{"b": 1}, {"c": 1}]})
        assert not match({"a.b": None}, {"a": [{"b": 1}]})
        # Scalars inside an array are skipped by a remaining path, so nothing is null there.
        assert not match({"a.b": None}, {"a": [1, 2]})

    def test_embedded_documents_match_exactly_and_in_order(self) -> None:
        assert match({"a": {"x": 1, "y": 2}}, {"a": {"x": 1, "y": 2}})
        assert not match({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}})
        assert not match({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}})
        assert match({"a": {"x": 1}}, {"a": [{"x": 1}, {"x": 2}]})
        assert match({"a": {}}, {"a": {}})

    def test_dotted_paths_through_arrays_of_documents(self) -> None:
        doc = {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": {"c": 3}}]}
        assert match({"a.b.c": 2}, doc)
        assert match({"a.b.c": 3}, doc)
        assert not match({"a.b.c": 4}, doc)
        assert match({"a.0.b.1.c": 2}, doc)
        assert match({"a.1.b.c": 3}, doc)
        assert not match({"a.b.c": 1}, {"a": [[{"b": {"c": 1}}]]})

    def test_other_bson_types(self) -> None:
        oid = ObjectId()
        when = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
        doc = {"o": oid, "d": when, "b": Binary(b"\x01\x02", 4), "t": Timestamp(5, 1), "raw": b"x"}
        assert match({"o": oid}, doc)
        assert not match({"o": ObjectId()}, doc)
        assert match({"d": when}, doc)
        assert match({"b": Binary(b"\x01\x02", 4)}, doc)
        assert not match({"b": Binary(b"\x01\x02", 0)}, doc)
        assert match({"t": Timestamp(5, 1)}, doc)
        assert match({"raw": b"x"}, doc)
        assert match({"m": MinKey()}, {"m": MinKey()})
        assert not match({"m": MinKey()}, {"m": None})

    def test_regex_value_matches_strings(self) -> None:
        assert match({"s": Regex("^ab", "i")}, {"s": "ABC"})
        assert match({"s": re.compile("b.d")}, {"s": ["xx", "abcd"]})
        assert not match({"s": Regex("^ab")}, {"s": "xab"})
        assert not match({"s": Regex("1")}, {"s": 1})
        # A stored regex matches the same regex.
        assert match({"s": Regex("^ab", "i")}, {"s": Regex("^ab", "i")})
        assert not match({"s": Regex("^ab", "i")}, {"s": Regex("^ab")})

    def test_eq_with_regex_operand_is_literal(self) -> None:
        assert not match({"s": {"$eq": Regex("^a")}}, {"s": "abc"})
        assert match({"s": {"$eq": Regex("^a")}}, {"s": Regex("^a")})

    def test_dbref_shaped_filter_value_is_literal(self) -> None:
        ref = {"$ref": "c", "$id": 1}
        assert match({"r": ref}, {"r": {"$ref": "c", "$id": 1}})

    def test_ne_and_nin_negate_over_the_whole_array(self) -> None:
        assert not match({"a": {"$ne": 1}}, {"a": [1, 2]})
        assert match({"a": {"$ne": 3}}, {"a": [1, 2]})
        assert match({"a": {"$ne": 1}}, {})
        assert not match({"a": {"$ne": None}}, {})
        assert match({"a": {"$ne": None}}, {"a": 0})
        assert match({"a": {"$nin": [3, 4]}}, {"a": [1, 2]})
        assert not match({"a": {"$nin": [2, 4]}}, {"a": [1, 2]})
        assert match({"a": {"$nin": [2]}}, {})


# -- comparison --------------------------------------------------------------------------------


class TestComparison:
    def test_type_bracketing(self) -> None:
        assert match({"a": {"$gt": 1}}, {"a": 2})
        assert not match({"a": {"$gt": 1}}, {"a": "2"})
        assert not match({"a": {"$lt": "b"}}, {"a": 1})
        assert match({"a": {"$lt": "b"}}, {"a": "a"})
        assert not match({"a": {"$gte": 1}}, {"a": None})
        assert not match({"a": {"$gt": 1}}, {})
        assert match({"a": {"$gt": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)}},
                     {"a": datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)})
        assert not match({"a": {"$gt": ObjectId("0" * 24)}}, {"a": "z"})

    def test_numeric_widths(self) -> None:
        assert match({"a": {"$gt": Decimal128("1.5")}}, {"a": 2})
        assert match({"a": {"$lt": 2}}, {"a": Decimal128("1.9999")})
        assert match({"a": {"$gte": Int64(2**40)}}, {"a": float(2**40)})
        assert not match({"a": {"$gt": 2**53}}, {"a": float(2**53)})
        assert match({"a": {"$lte": 1}}, {"a": 1.0})
        assert match({"a": {"$gt": float("-inf")}}, {"a": -1e308})

    def test_nan_never_orders(self) -> None:
        nan = float("nan")
        assert not match({"a": {"$lt": 5}}, {"a": nan})
        assert not match({"a": {"$gt": 5}}, {"a": nan})
        assert not match({"a": {"$gt": nan}}, {"a": 5})
        assert match({"a": {"$gte": nan}}, {"a": nan})
        assert match({"a": {"$lte": nan}}, {"a": Decimal128("NaN")})
        assert not match({"a": {"$lt": nan}}, {"a": nan})
        assert not match({"a": {"$lt": Decimal128("5")}}, {"a": nan})
        assert not match({"a": {"$gt": 5}}, {"a": Decimal128("NaN")})

    def test_null_operand(self) -> None:
        assert match({"a": {"$gte": None}}, {})
        assert match({"a": {"$lte": None}}, {"a": None})
        assert not match({"a": {"$gt": None}}, {"a": None})
        assert not match({"a": {"$lt": None}}, {"a": 1})

    def test_minkey_maxkey_compare_with_everything(self) -> None:
        assert match({"a": {"$gt": MinKey()}}, {"a": "x"})
        assert match({"a": {"$gt": MinKey()}}, {"a": None})
        assert not match({"a": {"$gt": MinKey()}}, {"a": MinKey()})
        assert match({"a": {"$lt": MaxKey()}}, {"a": {"x": 1}})
        assert not match({"a": {"$gt": MaxKey()}}, {"a": 1})
        assert match({"a": {"$gte": MaxKey()}}, {"a": MaxKey()})

    def test_array_elements_satisfy_each_operator_independently(self) -> None:
        assert match({"a": {"$gt": 1, "$lt": 5}}, {"a": [0, 10]})
        assert not match({"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}}, {"a": [0, 10]})
        assert match({"a": {"$gt": [1]}}, {"a": [2]})

    def test_documents_compare_field_by_field(self) -> None:
        assert match({"a": {"$gt": {"x": 1}}}, {"a": {"x": 2}})
        assert match({"a": {"$gt": {"x": 1}}}, {"a": {"y": 0}})
        assert not match({"a": {"$lt": {"x": 1}}}, {"a": {"x": 1}})

    def test_in(self) -> None:
        assert match({"a": {"$in": [1, "x"]}}, {"a": "x"})
        assert match({"a": {"$in": [1.0]}}, {"a": Int64(1)})
        assert match({"a": {"$in": [Decimal128("2")]}}, {"a": [5, 2]})
        assert match({"a": {"$in": [None]}}, {})
        assert not match({"a": {"$in": []}}, {"a": 1})
        assert not match({"a": {"$in": [1]}}, {"a": True})
        assert match({"a": {"$in": [True]}}, {"a": True})
        assert match({"a": {"$in": [Regex("^x"), 5]}}, {"a": "xyz"})
        assert match({"a": {"$in": [[1, 2]]}}, {"a": [1, 2]})
        assert match({"a": {"$in": [{"b": 1}]}}, {"a": [{"b": 1}]})
        assert match({"a": {"$in": [ObjectId("0" * 24)]}}, {"a": ObjectId("0" * 24)})

    def test_in_rejects_bad_arguments(self) -> None:
        assert error_code({"a": {"$in": 1}}) == 2
        assert error_code({"a": {"$in": [{"$gt": 1}]}}) == 2
        assert error_code({"a": {"$nin": "x"}}) == 2


# -- element and evaluation operators ----------------------------------------------------------


class TestElementOperators:
    def test_exists(self) -> None:
        assert match({"a": {"$exists": True}}, {"a": None})
        assert not match({"a": {"$exists": True}}, {})
        assert match({"a": {"$exists": False}}, {})
        assert match({"a": {"$exists": 0}}, {"b": 1})
        assert match({"a": {"$exists": 1}}, {"a": []})
        assert match({"a.b": {"$exists": True}}, {"a": [{"c": 1}, {"b": 2}]})
        assert not match({"a.b": {"$exists": True}}, {"a": [1, 2]})
        assert match({"a.b": {"$exists": False}}, {"a": [1, 2]})
        assert match({"a.1": {"$exists": True}}, {"a": [1, 2]})

    def test_type_by_name_number_and_alias(self) -> None:
        doc = {"i": 1, "l": Int64(1), "big": 2**40, "d": 1.5, "dec": Decimal128("1"), "s": "x",
               "arr": [1, "x"], "n": None, "o": {}, "b": True, "oid": ObjectId(), "bin": b"x",
               "date": datetime.datetime.now(datetime.timezone.utc), "re": Regex("x")}
        assert match({"i": {"$type": "int"}}, doc)
        assert not match({"l": {"$type": "int"}}, doc)
        assert match({"l": {"$type": "long"}}, doc)
        assert match({"big": {"$type": 18}}, doc)
        assert match({"d": {"$type": 1}}, doc)
        assert match({"d": {"$type": 1.0}}, doc)
        assert match({"dec": {"$type": "decimal"}}, doc)
        for field in ("i", "l", "d", "dec"):
            assert match({field: {"$type": "number"}}, doc)
        assert not match({"s": {"$type": "number"}}, doc)
        assert match({"arr": {"$type": "array"}}, doc)
        assert match({"arr": {"$type": "string"}}, doc)
        assert match({"n": {"$type": "null"}}, doc)
        assert not match({"missing": {"$type": "null"}}, doc)
        assert match({"o": {"$type": "object"}}, doc)
        assert match({"b": {"$type": "bool"}}, doc)
        assert match({"oid": {"$type": "objectId"}}, doc)
        assert match({"bin": {"$type": "binData"}}, doc)
        assert match({"date": {"$type": 9}}, doc)
        assert match({"re": {"$type": "regex"}}, doc)
        assert match({"s": {"$type": ["int", "string"]}}, doc)
        assert match({"arr": {"$type": "array"}}, {"arr": []})

    def test_type_errors(self) -> None:
        assert error_code({"a": {"$type": "nope"}}) == 2
        assert error_code({"a": {"$type": 99}}) == 2
        assert error_code({"a": {"$type": 1.5}}) == 2
        assert error_code({"a": {"$type": {}}}) == 14
        assert error_code({"a": {"$type": []}}) == 9

    def test_size(self) -> None:
        assert match({"a": {"$size": 2}}, {"a": [1, 2]})
        assert match({"a": {"$size": 1}}, {"a": [[1, 2]]})
        assert not match({"a": {"$size": 2}}, {"a": [[1, 2]]})
        assert match({"a": {"$size": 0}}, {"a": []})
        assert not match({"a": {"$size": 0}}, {})
        assert not match({"a": {"$size": 1}}, {"a": "x"})
        assert match({"a.b": {"$size": 2}}, {"a": [{"b": [1]}, {"b": [1, 2]}]})
        assert match({"a": {"$size": Int64(2)}}, {"a": [1, 2]})
        assert not match({"a": {"$size": 1.5}}, {"a": [1]})
        assert error_code({"a": {"$size": -1}}) == 2
        assert error_code({"a": {"$size": "1"}}) == 2

    def test_mod(self) -> None:
        assert match({"a": {"$mod": [4, 0]}}, {"a": 8})
        assert match({"a": {"$mod": [4, 1]}}, {"a": [2, 5]})
        assert match({"a": {"$mod": [4, -1]}}, {"a": -5})
        assert match({"a": {"$mod": [4.5, 1]}}, {"a": 5})
        assert match({"a": {"$mod": [4, 1]}}, {"a": 5.9})
        assert match({"a": {"$mod": [4, 1]}}, {"a": Decimal128("9")})
        assert not match({"a": {"$mod": [4, 1]}}, {"a": "5"})
        assert not match({"a": {"$mod": [4, 1]}}, {"a": float("nan")})
        assert error_code({"a": {"$mod": [0, 1]}}) == 2
        assert error_code({"a": {"$mod": [4]}}) == 2
        assert error_code({"a": {"$mod": [4, 1, 2]}}) == 2
        assert error_code({"a": {"$mod": 4}}) == 2
        assert error_code({"a": {"$mod": ["4", 1]}}) == 2

    def test_bitwise(self) -> None:
        doc = {"a": 0b1010, "neg": -1, "bin": Binary(b"\x05\x01"), "d": 10.0, "frac": 10.5}
        assert match({"a": {"$bitsAllSet": [1, 3]}}, doc)
        assert match({"a": {"$bitsAllSet": 0b1010}}, doc)
        assert not match({"a": {"$bitsAllSet": [0, 1]}}, doc)
        assert match({"a": {"$bitsAnySet": [0, 1]}}, doc)
        assert match({"a": {"$bitsAllClear": [0, 2]}}, doc)
        assert match({"a": {"$bitsAnyClear": [0, 1]}}, doc)
        assert not match({"a": {"$bitsAnyClear": [1, 3]}}, doc)
        assert match({"neg": {"$bitsAllSet": [0, 63, 200]}}, doc)
        assert match({"bin": {"$bitsAllSet": [0, 2, 8]}}, doc)
        assert match({"bin": {"$bitsAllClear": [1, 100]}}, doc)
        assert match({"a": {"$bitsAllSet": Binary(b"\x0a")}}, doc)
        assert match({"d": {"$bitsAllSet": [1, 3]}}, doc)
        assert not match({"frac": {"$bitsAnySet": [1, 3]}}, doc)
        assert not match({"s": {"$bitsAnySet": [0]}}, {"s": "x"})
        assert error_code({"a": {"$bitsAllSet": -1}}) == 9
        assert error_code({"a": {"$bitsAllSet": [-1]}}) == 9
        assert error_code({"a": {"$bitsAllSet": "x"}}) == 2

    def test_regex_operator_and_options(self) -> None:
        assert match({"s": {"$regex": "^ab"}}, {"s": "abc"})
        assert match({"s": {"$regex": "^ab", "$options": "i"}}, {"s": "ABc"})
        assert match({"s": {"$options": "i", "$regex": "^ab"}}, {"s": "ABc"})
        assert match({"s": {"$regex": Regex("^ab", "i")}}, {"s": "ABc"})
        assert match({"s": {"$regex": "^b", "$options": "m"}}, {"s": "a\nb"})
        assert not match({"s": {"$regex": "^b"}}, {"s": "a\nb"})
        assert match({"s": {"$regex": "a.b", "$options": "s"}}, {"s": "a\nb"})
        assert match({"s": {"$regex": "a b # comment", "$options": "x"}}, {"s": "ab"})
        assert match({"s": {"$regex": "é", "$options": "u"}}, {"s": "café"})
        assert match({"s": {"$regex": "c$"}}, {"s": ["x", "abc"]})
        assert match({"s": {"$regex": r"abc\z"}}, {"s": "xabc"})
        assert not match({"s": {"$regex": r"abc\z"}}, {"s": "abc\n"})
        assert match({"s": {"$regex": r"(?<w>a)\k<w>"}}, {"s": "aa"})
        assert not match({"s": {"$regex": "1"}}, {"s": 1})

    def test_regex_errors(self) -> None:
        assert error_code({"s": {"$options": "i"}}) == 2
        assert error_code({"s": {"$regex": "a", "$options": "q"}}) == 51108
        assert error_code({"s": {"$regex": Regex("a", "i"), "$options": "m"}}) == 51075
        assert error_code({"s": {"$regex": "("}}) == 51091
        assert error_code({"s": {"$regex": 5}}) == 2


# -- array operators ---------------------------------------------------------------------------


class TestArrayOperators:
    def test_elem_match_query_form(self) -> None:
        doc = {"a": [{"x": 1, "y": 2}, {"x": 2, "y": 1}]}
        assert match({"a": {"$elemMatch": {"x": 1, "y": 2}}}, doc)
        assert not match({"a": {"$elemMatch": {"x": 1, "y": 1}}}, doc)
        assert match({"a": {"x": 1, "y": 2}}, doc)  # exact sub-document equality
        assert match({"a.x": 1, "a.y": 1}, doc)  # each condition by a different element
        assert match({"a": {"$elemMatch": {"$or": [{"x": 5}, {"y": 1}]}}}, doc)
        assert match({"a": {"$elemMatch": {}}}, doc)
        assert not match({"a": {"$elemMatch": {}}}, {"a": [1, 2]})
        assert not match({"a": {"$elemMatch": {"x": 1}}}, {"a": {"x": 1}})
        assert match({"a": {"$elemMatch": {"0": 1}}}, {"a": [[1, 2]]})

    def test_elem_match_value_form(self) -> None:
        assert match({"a": {"$elemMatch": {"$gte": 80, "$lt": 85}}}, {"a": [70, 82, 90]})
        assert not match({"a": {"$elemMatch": {"$gte": 80, "$lt": 85}}}, {"a": [70, 90]})
        assert match({"a": {"$elemMatch": {"$ne": 1}}}, {"a": [1, 2]})
        assert not match({"a": {"$elemMatch": {"$ne": 1}}}, {"a": [1, 1]})
        assert match({"a": {"$elemMatch": {"$elemMatch": {"$gt": 1}}}}, {"a": [[0], [2]]})
        assert match({"a": {"$elemMatch": {"$regex": "^x"}}}, {"a": ["y", "xa"]})
        assert match({"a": {"$elemMatch": {"$not": {"$gt": 5}}}}, {"a": [10, 3]})
        assert match({"a": {"$elemMatch": {"$type": "string"}}}, {"a": [1, "s"]})
        assert match({"a": {"$elemMatch": {"$exists": True}}}, {"a": [1]})
        assert match({"a": {"$elemMatch": {"$size": 1}}}, {"a": [[1], [1, 2]]})
        assert match({"a": {"$elemMatch": {"$in": [3, 4]}}}, {"a": [1, 4]})

    def test_elem_match_through_outer_array(self) -> None:
        doc = {"a": [{"b": [{"c": 1}]}, {"b": [{"c": 2}]}]}
        assert match({"a.b": {"$elemMatch": {"c": 2}}}, doc)
        assert position({"a.b": {"$elemMatch": {"c": 2}}}, doc) == (True, 1)

    def test_elem_match_errors(self) -> None:
        assert error_code({"a": {"$elemMatch": 1}}) == 2
        assert error_code({"a": {"$elemMatch": {"$foo": 1}}}) == 2

    def test_all(self) -> None:
        assert match({"a": {"$all": [1, 2]}}, {"a": [2, 3, 1]})
        assert not match({"a": {"$all": [1, 4]}}, {"a": [2, 3, 1]})
        assert match({"a": {"$all": [1]}}, {"a": 1})
        assert not match({"a": {"$all": []}}, {"a": [1]})
        assert match({"a": {"$all": [[1, 2]]}}, {"a": [1, 2]})
        assert match({"a": {"$all": [[1, 2]]}}, {"a": [[1, 2], 3]})
        assert match({"a": {"$all": [Regex("^x"), "y"]}}, {"a": ["xa", "y"]})
        assert match({"a.b": {"$all": [1, 2]}}, {"a": [{"b": 1}, {"b": 2}]})
        docs = {"a": [{"x": 1, "y": 1}, {"x": 2, "y": 5}]}
        assert match({"a": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"y": 5}}]}}, docs)
        assert not match({"a": {"$all": [{"$elemMatch": {"x": 1, "y": 5}}]}}, docs)
        assert error_code({"a": {"$all": [{"$elemMatch": {"x": 1}}, 1]}}) == 2
        assert error_code({"a": {"$all": 1}}) == 2
        assert error_code({"a": {"$all": [{"$gt": 1}]}}) == 2


# -- logical operators -------------------------------------------------------------------------


class TestLogical:
    def test_and_or_nor(self) -> None:
        doc = {"a": 1, "b": 2}
        assert match({"$and": [{"a": 1}, {"b": 2}]}, doc)
        assert not match({"$and": [{"a": 1}, {"b": 3}]}, doc)
        assert match({"$or": [{"a": 5}, {"b": 2}]}, doc)
        assert not match({"$or": [{"a": 5}, {"b": 5}]}, doc)
        assert match({"$nor": [{"a": 5}, {"b": 5}]}, doc)
        assert not match({"$nor": [{"a": 1}]}, doc)
        assert match({"$and": [{"$or": [{"a": 1}]}, {"$nor": [{"c": 1}]}]}, doc)
        assert match({"$and": [{}]}, doc)

    def test_not(self) -> None:
        assert match({"a": {"$not": {"$gt": 5}}}, {"a": 3})
        assert match({"a": {"$not": {"$gt": 5}}}, {})
        assert not match({"a": {"$not": {"$gt": 5}}}, {"a": [3, 6]})
        assert match({"a": {"$not": Regex("^x")}}, {"a": "yx"})
        assert match({"a": {"$not": re.compile("^x")}}, {"a": 1})
        assert not match({"a": {"$not": {"$regex": "^x", "$options": "i"}}}, {"a": "Xy"})
        assert match({"a": {"$not": {"$in": [1, 2]}}}, {"a": 3})
        assert error_code({"a": {"$not": {}}}) == 2
        assert error_code({"a": {"$not": 5}}) == 2
        assert error_code({"a": {"$not": {"b": 1}}}) == 2

    def test_logical_errors(self) -> None:
        assert error_code({"$and": []}) == 2
        assert error_code({"$or": {}}) == 2
        assert error_code({"$nor": [1]}) == 2

    def test_misc_top_level(self) -> None:
        assert match({"$comment": "why", "a": 1}, {"a": 1})
        assert match({"$alwaysTrue": 1}, {})
        assert not match({"$alwaysFalse": 1}, {})
        assert match({"$sampleRate": 1}, {})
        assert not match({"$sampleRate": 0}, {})
        assert error_code({"$sampleRate": 2}) == 2
        assert error_code({"$sampleRate": "x"}) == 2

    def test_empty_and_none_filter_match_everything(self) -> None:
        assert Matcher({}).matches({"a": 1})
        assert Matcher(None).matches({})

    def test_unsupported_and_unknown_operators(self) -> None:
        with pytest.raises(CommandError) as info:
            Matcher({"a": {"$foo": 1}})
        assert info.value.code == 2 and info.value.errmsg == "unknown operator: $foo"
        with pytest.raises(CommandError) as info:
            Matcher({"$foo": 1})
        assert info.value.errmsg == "unknown top level operator: $foo"
        assert error_code({"a": {"$eq": 1, "b": 2}}) == 2
        assert "not supported" in _errmsg({"$where": "this.a == 1"})
        assert error_code({"$text": {"$search": "x"}}) == 27
        assert "not supported" in _errmsg({"loc": {"$near": [0, 0]}})
        assert error_code({"loc": {"$geoWithin": {}}}) == 2
        with pytest.raises(CommandError):
            Matcher([{"a": 1}])  # type: ignore[arg-type]


def _errmsg(filter: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as info:
        Matcher(filter)
    return info.value.errmsg


# -- $expr and $jsonSchema ---------------------------------------------------------------------


class TestExpr:
    def test_delegates_to_the_expression_engine(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[tuple[Any, Any, Any]] = []

        def fake(expression: Any, variables: dict[str, Any], collation: Any) -> Any:
            def run(doc: Any) -> Any:
                calls.append((expression, doc, variables))
                return doc.get("result", MISSING)
            return run

        monkeypatch.setattr(matcher_module, "expression_function", fake)
        m = Matcher({"$expr": {"$eq": ["$a", 1]}}, variables={"v": 1})
        for result, expected in ((True, True), (1, True), (0, False), (Decimal128("0"), False),
                                 (None, False), (False, False), ("", True), ([], True)):
            assert m.matches({"result": result}) is expected, result
        assert not m.matches({})
        assert calls[0] == ({"$eq": ["$a", 1]}, {"result": True}, {"v": 1})

    def test_with_the_real_engine(self) -> None:
        pytest.importorskip("mongoemu.query.expressions")
        m = Matcher({"$expr": {"$gt": ["$a", "$b"]}})
        assert m.matches({"a": 2, "b": 1})
        assert not m.matches({"a": 1, "b": 2})
        m = Matcher({"$expr": {"$eq": ["$a", "$$target"]}}, variables={"target": 5})
        assert m.matches({"a": 5})


class TestJsonSchema:
    def test_common_keywords(self) -> None:
        schema = {
            "bsonType": "object",
            "required": ["name", "age"],
            "properties": {
                "name": {"bsonType": "string", "minLength": 2, "maxLength": 5, "pattern": "^[A-Z]"},
                "age": {"bsonType": ["int", "long"], "minimum": 0, "maximum": 150},
                "tags": {"bsonType": "array", "items": {"bsonType": "string"}, "minItems": 1,
                         "maxItems": 3, "uniqueItems": True},
                "kind": {"enum": ["a", "b", 1]},
                "score": {"type": "number", "exclusiveMaximum": True, "maximum": 10, "multipleOf": 0.5},
            },
            "additionalProperties": False,
            "patternProperties": {"^x_": {"bsonType": "int"}},
        }
        m = Matcher({"$jsonSchema": {**schema, "properties": {**schema["properties"], "_id": {}}}})
        good = {"_id": 1, "name": "Ann", "age": 30, "tags": ["a"], "kind": 1, "score": 9.5, "x_1": 5}
        assert m.matches(good)
        assert not m.matches({**good, "name": "ann"})
        assert not m.matches({**good, "name": "A"})
        assert not m.matches({**good, "age": 30.0})
        assert not m.matches({**good, "age": -1})
        assert not m.matches({k: v for k, v in good.items() if k != "age"})
        assert not m.matches({**good, "tags": []})
        assert not m.matches({**good, "tags": ["a", "a"]})
        assert not m.matches({**good, "tags": [1]})
        assert not m.matches({**good, "kind": "c"})
        assert not m.matches({**good, "score": 10})
        assert not m.matches({**good, "score": 9.25})
        assert not m.matches({**good, "extra": 1})
        assert not m.matches({**good, "x_2": "s"})

    def test_keywords_ignore_other_types(self) -> None:
        m = Matcher({"$jsonSchema": {"properties": {"a": {"minimum": 5, "minLength": 3}}}})
        assert m.matches({"a": "long enough"})
        assert m.matches({"a": 7})
        assert not m.matches({"a": 2})
        assert not m.matches({"a": "ab"})
        assert m.matches({"a": [1]})
        assert m.matches({})

    def test_combinators_items_and_dependencies(self) -> None:
        m = Matcher({"$jsonSchema": {"properties": {
            "a": {"anyOf": [{"bsonType": "string"}, {"bsonType": "int"}]},
            "b": {"oneOf": [{"minimum": 0}, {"maximum": 10}]},
            "c": {"not": {"bsonType": "null"}},
            "d": {"items": [{"bsonType": "int"}, {"bsonType": "string"}], "additionalItems": False},
            "e": {"allOf": [{"minProperties": 1}, {"maxProperties": 1}]},
        }, "dependencies": {"f": ["g"]}}})
        assert m.matches({"a": "s", "b": 20, "c": 1, "d": [1, "x"], "e": {"k": 1}})
        assert not m.matches({"a": 1.5})
        assert not m.matches({"b": 5})
        assert not m.matches({"c": None})
        assert not m.matches({"d": [1, "x", 3]})
        assert not m.matches({"d": ["x"]})
        assert not m.matches({"e": {}})
        assert not m.matches({"f": 1})
        assert m.matches({"f": 1, "g": 2})

    def test_type_keyword(self) -> None:
        m = Matcher({"$jsonSchema": {"properties": {"a": {"type": ["boolean", "null"]}}}})
        assert m.matches({"a": True}) and m.matches({"a": None})
        assert not m.matches({"a": 0})

    def test_schema_errors(self) -> None:
        assert error_code({"$jsonSchema": {"foo": 1}}) == 9
        assert error_code({"$jsonSchema": {"type": "integer"}}) == 9
        assert error_code({"$jsonSchema": {"type": "object", "bsonType": "object"}}) == 9
        assert error_code({"$jsonSchema": {"bsonType": "nope"}}) == 2
        assert error_code({"$jsonSchema": {"required": []}}) == 2
        assert error_code({"$jsonSchema": {"minimum": "x"}}) == 14
        assert error_code({"$jsonSchema": 1}) == 14


# -- collation ---------------------------------------------------------------------------------


class TestCollation:
    def test_strength_two_is_case_insensitive(self) -> None:
        coll = {"locale": "en", "strength": 2}
        assert match({"s": "abc"}, {"s": "ABC"}, coll)
        assert not match({"s": "abc"}, {"s": "ábc"}, coll)
        assert match({"s": {"$in": ["X", "abc"]}}, {"s": "aBc"}, coll)
        assert match({"s": {"$gt": "B"}}, {"s": "c"}, coll)
        assert not match({"s": {"$gt": "b"}}, {"s": "B"}, coll)
        assert match({"s": {"$ne": "ABC"}}, {"s": "abd"}, coll)
        assert not match({"s": {"$ne": "ABC"}}, {"s": "abc"}, coll)
        assert match({"s": ["A", "b"]}, {"s": ["a", "B"]}, coll)
        assert match({"d": {"k": "V"}}, {"d": {"k": "v"}}, coll)
        # Regexes ignore the collation.
        assert not match({"s": Regex("^a")}, {"s": "ABC"}, coll)

    def test_strength_one_ignores_accents(self) -> None:
        coll = {"locale": "fr", "strength": 1}
        assert match({"s": "cafe"}, {"s": "Café"}, coll)
        assert not match({"s": "cafe"}, {"s": "Café"}, {"locale": "fr", "strength": 2})
        assert not match({"s": "cafe"}, {"s": "Café"})

    def test_default_strength_is_case_sensitive(self) -> None:
        assert not match({"s": "abc"}, {"s": "ABC"}, {"locale": "en"})
        assert match({"s": "abc"}, {"s": "abc"}, {"locale": "en"})
        assert match({"s": "abc"}, {"s": "abc"}, {"locale": "simple"})

    def test_keys_order_like_icu_levels(self) -> None:
        en = Collation.from_document({"locale": "en"})
        words = ["b", "A", "a", "B", "á"]
        assert sorted(words, key=en.collation_key) == ["a", "A", "á", "b", "B"]
        upper = Collation.from_document({"locale": "en", "caseFirst": "upper"})
        assert sorted(["a", "A"], key=upper.collation_key) == ["A", "a"]
        numeric = Collation.from_document({"locale": "en", "numericOrdering": True})
        assert sorted(["item10", "item9", "item1", "item-"], key=numeric.collation_key) == [
            "item-", "item1", "item9", "item10"]
        assert sorted(["10", "9"], key=en.collation_key) == ["10", "9"]
        case_level = Collation.from_document({"locale": "en", "strength": 1, "caseLevel": True})
        assert case_level.collation_key("á") == case_level.collation_key("a")
        assert case_level.collation_key("A") != case_level.collation_key("a")
        shifted = Collation.from_document({"locale": "en", "alternate": "shifted"})
        assert shifted.collation_key("a-b") == shifted.collation_key("ab")
        assert en.collation_key("a-b") != en.collation_key("ab")

    def test_sort_key_collated_reaches_nested_strings(self) -> None:
        coll = Collation.from_document({"locale": "en", "strength": 2})
        assert sort_key_collated({"a": ["X"]}, coll) == sort_key_collated({"a": ["x"]}, coll)
        assert sort_key_collated({"A": "x"}, coll) != sort_key_collated({"a": "x"}, coll)
        assert sort_key_collated(5, coll) == bsonvalues.sort_key(5)
        assert sort_key_collated("X", None) == bsonvalues.sort_key("X")

    def test_document_round_trip_and_simple(self) -> None:
        coll = Collation.from_document({"locale": "en_US", "strength": 2})
        doc = coll.to_document()
        assert doc["locale"] == "en_US" and doc["strength"] == 2 and doc["caseFirst"] == "off"
        assert Collation.from_document(doc) == coll
        assert parse_collation({"locale": "simple"}) is None
        assert parse_collation(None) is None
        assert Collation.from_document({"locale": "simple"}).simple

    @pytest.mark.parametrize(
        ("spec", "code"),
        [
            ({"strength": 2}, 40414),
            ({"locale": "en", "bogus": 1}, 40415),
            ({"locale": 5}, 14),
            ({"locale": "en", "strength": 6}, 2),
            ({"locale": "en", "strength": "2"}, 14),
            ({"locale": "en", "caseFirst": "sideways"}, 2),
            ({"locale": "en", "alternate": "x"}, 2),
            ({"locale": "en", "maxVariable": "x"}, 2),
            ({"locale": "en", "caseLevel": 1}, 14),
            ({"locale": "not a locale!"}, 2),
            ("en", 14),
        ],
    )
    def test_invalid_collations(self, spec: Any, code: int) -> None:
        with pytest.raises(CommandError) as info:
            Collation.from_document(spec)
        assert info.value.code == code


# -- positions ---------------------------------------------------------------------------------


class TestPositions:
    def test_first_matching_element_of_the_array(self) -> None:
        assert position({"a": 2}, {"a": [1, 2, 2]}) == (True, 1)
        assert position({"a.b": 2}, {"a": [{"b": 1}, {"b": 2}]}) == (True, 1)
        assert position({"a": {"$elemMatch": {"b": 1}}}, {"a": [{"b": 0}, {"b": 1}]}) == (True, 1)
        assert position({"a": {"$gt": 1}}, {"a": 5}) == (True, None)
        assert position({"a": [1, 2]}, {"a": [1, 2]}) == (True, None)
        assert position({"a": 3}, {"a": [1, 2]}) == (False, None)

    def test_outermost_array_wins(self) -> None:
        doc = {"a": [{"b": [0, 0]}, {"b": [0, 7]}]}
        assert position({"a.b": 7}, doc) == (True, 1)

    def test_last_positional_predicate_wins_in_a_conjunction(self) -> None:
        doc = {"a": [1, 2], "c": [5, 6, 7]}
        assert position({"a": 2, "c": 7}, doc) == (True, 2)
        assert position({"a": 2, "x": None}, doc) == (True, 1)
        assert position({"$and": [{"c": 6}, {"a": {"$exists": True}}]}, doc) == (True, 1)
        assert position({"$or": [{"a": 9}, {"c": 6}]}, doc) == (True, 1)


# -- filter analysis ---------------------------------------------------------------------------


class TestFilterAnalysis:
    def test_is_simple_id_equality(self) -> None:
        oid = ObjectId()
        assert is_simple_id_equality({"_id": oid}) == (True, oid)
        assert is_simple_id_equality({"_id": {"$eq": 5}}) == (True, 5)
        assert is_simple_id_equality({"_id": {"k": 1}}) == (True, {"k": 1})
        assert is_simple_id_equality({"_id": 5, "$comment": "x"}) == (True, 5)
        assert is_simple_id_equality({"_id": 5, "a": 1}) == (False, None)
        assert is_simple_id_equality({"_id": {"$gt": 5}}) == (False, None)
        assert is_simple_id_equality({"_id": {"$eq": 5, "$ne": 6}}) == (False, None)
        assert is_simple_id_equality({"_id": Regex("x")}) == (False, None)
        assert is_simple_id_equality({"a": 1}) == (False, None)
        coll = Collation.from_document({"locale": "en", "strength": 2})
        assert is_simple_id_equality({"_id": "x"}, coll) == (False, None)
        assert is_simple_id_equality({"_id": 5}, coll) == (True, 5)

    def test_id_range(self) -> None:
        lower, lower_inc, upper, upper_inc = id_range({"_id": {"$gte": 5, "$lt": 10}})
        assert (lower, lower_inc, upper, upper_inc) == (5, True, 10, False)
        assert id_range({"_id": 7}) == (7, True, 7, True)
        assert id_range({"a": 1}) is None
        assert id_range({"_id": {"$in": [1, 2]}}) is None
        assert id_range({"$and": [{"_id": {"$gt": 1}}, {"x": 1}, {"$and": [{"_id": {"$lte": 4}}]}]}) == (
            1, False, 4, True)
        # Type bracketing: numbers stop before the first string.
        assert id_range({"_id": {"$gt": 5}}) == (5, False, "", False)
        lower, lower_inc, upper, upper_inc = id_range({"_id": {"$lt": "m"}})
        assert (lower, lower_inc, upper, upper_inc) == ("", True, "m", False)
        lower, _, upper, _ = id_range({"_id": {"$gt": ObjectId("0" * 24)}})
        assert upper is False
        # Tightest bounds win; equal bounds keep the stricter inclusivity.
        assert id_range({"_id": {"$gte": 5, "$gt": 5, "$lt": 9, "$lte": 8}}) == (5, False, 8, True)
        # Unsatisfiable predicates give an empty range.
        low, low_inc, high, high_inc = id_range({"_id": {"$gt": None}})
        assert bsonvalues.compare(low, high) == 0 and not (low_inc and high_inc)
        assert id_range({"_id": {"$gte": None}}) == (None, True, None, True)
        lower, lower_inc, upper, upper_inc = id_range({"_id": {"$gt": MinKey()}})
        assert isinstance(lower, MinKey) and not lower_inc and isinstance(upper, MaxKey)
        coll = Collation.from_document({"locale": "en", "strength": 2})
        assert id_range({"_id": {"$gt": "a"}}, coll) is None

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.one_of(st.integers(-50, 50), st.floats(-50, 50, allow_nan=False),
                           st.text(max_size=3)), min_size=1, max_size=30),
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(st.integers(-50, 50), st.text(max_size=3)),
    )
    def test_id_range_contains_every_match(self, ids: list[Any], op: str, operand: Any) -> None:
        filter = {"_id": {op: operand}}
        bounds = id_range(filter)
        assert bounds is not None
        lower, lower_inc, upper, upper_inc = bounds
        m = Matcher(filter)
        for value in ids:
            if m.matches({"_id": value}):
                low = bsonvalues.compare(value, lower)
                high = bsonvalues.compare(value, upper)
                assert low > 0 or (low == 0 and lower_inc)
                assert high < 0 or (high == 0 and upper_inc)

    def test_id_values(self) -> None:
        assert id_values({"_id": 1}) == [1]
        assert id_values({"_id": {"$in": [1, 2, 3]}}) == [1, 2, 3]
        assert id_values({"$and": [{"_id": {"$in": [1, 2, 3]}}, {"_id": {"$in": [2.0, 3, 4]}}]}) == [2, 3]
        assert id_values({"_id": {"$in": [Regex("x")]}}) is None
        assert id_values({"_id": {"$gt": 1}}) is None
        assert id_values({"a": 1}) is None

    def test_equality_fields(self) -> None:
        assert equality_fields({"a": 1, "b.c": "x", "d": {"$gt": 1}, "e": Regex("x")}) == {
            "a": 1, "b.c": "x"}
        assert equality_fields({"$and": [{"a": {"$eq": 1}}, {"b": {"$in": [2]}}], "c": {"$in": [1, 2]}}) == {
            "a": 1, "b": 2}
        assert equality_fields({"$or": [{"a": 1}]}) == {"a": 1}
        assert equality_fields({"$or": [{"a": 1}, {"a": 2}]}) == {}
        assert equality_fields({"a": {"k": 1}}) == {"a": {"k": 1}}
        assert equality_fields({"a": {"$eq": 1, "$exists": True}}) == {"a": 1}
        with pytest.raises(CommandError) as info:
            equality_fields({"$and": [{"a": 1}, {"a": 2}]})
        assert info.value.code == 54 and info.value.code_name == "NotSingleValueField"
        with pytest.raises(CommandError):
            equality_fields({"a": 1, "a.b": 2})


# -- properties and performance ----------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.builds(Int64, st.integers(-(2**62), 2**62)),
    st.builds(lambda n: Decimal128(str(n)), st.integers(-1000, 1000)),
)


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(_scalars, _scalars)
    def test_comparisons_agree_with_bson_order_within_a_type(self, stored: Any, operand: Any) -> None:
        doc = {"a": stored}
        same_type = bsonvalues.type_rank(stored) == bsonvalues.type_rank(operand)
        nan = bsonvalues.is_nan(stored) or bsonvalues.is_nan(operand)
        order = bsonvalues.compare(stored, operand)
        assert match({"a": {"$eq": operand}}, doc) == (order == 0)
        assert match({"a": {"$ne": operand}}, doc) == (order != 0)
        if operand is None:
            return
        if not same_type:
            for op in ("$gt", "$gte", "$lt", "$lte"):
                assert not match({"a": {op: operand}}, doc)
        elif nan:
            both = bsonvalues.is_nan(stored) and bsonvalues.is_nan(operand)
            assert match({"a": {"$gte": operand}}, doc) == both
            assert not match({"a": {"$gt": operand}}, doc)
        else:
            assert match({"a": {"$gt": operand}}, doc) == (order > 0)
            assert match({"a": {"$gte": operand}}, doc) == (order >= 0)
            assert match({"a": {"$lt": operand}}, doc) == (order < 0)
            assert match({"a": {"$lte": operand}}, doc) == (order <= 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_scalars, max_size=5), _scalars)
    def test_in_is_equality_with_any_item(self, items: list[Any], value: Any) -> None:
        expected = any(bsonvalues.values_equal(value, item) for item in items)
        assert match({"a": {"$in": items}}, {"a": value}) == expected
        assert match({"a": {"$nin": items}}, {"a": value}) == (not expected)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(-5, 5), max_size=6), st.integers(-5, 5))
    def test_array_equality_is_element_or_whole(self, array: list[int], value: int) -> None:
        assert match({"a": value}, {"a": array}) == (value in array)
        assert match({"a": array}, {"a": array})


def test_simple_filter_costs_microseconds() -> None:
    m = Matcher({"status": "active"})
    docs = [{"_id": i, "status": "active" if i % 2 else "idle", "n": i} for i in range(20000)]
    started = time.perf_counter()
    hits = sum(1 for doc in docs if m.matches(doc))
    elapsed = time.perf_counter() - started
    assert hits == 10000
    assert elapsed / len(docs) < 5e-6
