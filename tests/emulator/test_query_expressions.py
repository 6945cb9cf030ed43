"""Aggregation expressions (mongoemu.query.expressions) against the server's documented behaviour."""

from __future__ import annotations

import datetime
import math

import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu.bsonvalues import MISSING
from mongoemu.errors import CommandError
from mongoemu.query.expressions import (
    Expression,
    compile_expression,
    evaluate,
    hashed_index_key,
    make_env,
    truthy,
)

UTC = datetime.timezone.utc


def ev(expr, doc=None, variables=None, **kwargs):
    return evaluate(expr, {} if doc is None else doc, variables, **kwargs)


def error_code(expr, doc=None, variables=None) -> int:
    with pytest.raises(CommandError) as info:
        ev(expr, doc, variables)
    return info.value.code


def same(actual, expected) -> bool:
    """Equal and of the same BSON type (1 vs 1.0 vs Int64(1) matter here)."""
    return type(actual) is type(expected) and actual == expected


def dt(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Field paths, variables, literals
# --------------------------------------------------------------------------------------------


class TestPathsAndVariables:
    def test_field_paths(self):
        doc = {"a": {"b": {"c": 5}}, "x": 1}
        assert ev("$x", doc) == 1
        assert ev("$a.b.c", doc) == 5
        assert ev("$a.zz", doc) is MISSING
        assert ev("$x.y", doc) is MISSING

    def test_array_traversal_skips_non_documents(self):
        doc = {"a": [{"b": 1}, {"c": 2}, 7, {"b": [3, 4]}, [{"b": 9}]]}
        assert ev("$a.b", doc) == [1, [3, 4]]

    def test_numeric_component_is_a_field_name(self):
        assert ev("$a.0", {"a": [10, 20]}) == []
        assert ev("$a.0", {"a": {"0": "zero"}}) == "zero"

    def test_root_current_and_variable_paths(self):
        doc = {"a": {"b": 2}}
        assert ev("$$ROOT", doc) == doc
        assert ev("$$CURRENT.a.b", doc) == 2
        assert ev("$$v.k", doc, {"v": {"k": 3}}) == 3
        assert ev("$$v.k", doc, {"v": [{"k": 1}, {"k": 2}]}) == [1, 2]

    def test_remove_and_expression_objects(self):
        assert ev({"a": "$$REMOVE", "b": 1, "c": "$missing"}) == {"b": 1}
        assert ev(["$missing", 1, "$$REMOVE"]) == [None, 1, None]

    def test_now_is_stable_within_one_environment(self):
        env = make_env({})
        fn = compile_expression(["$$NOW", "$$NOW"])
        first, second = fn(env)
        assert first == second and first.tzinfo is not None
        assert first.microsecond % 1000 == 0

    def test_now_and_cluster_time_can_be_pinned(self):
        now = dt(2020, 1, 1)
        assert ev("$$NOW", variables={"NOW": now}) == now
        assert ev("$$CLUSTER_TIME", variables={"CLUSTER_TIME": Timestamp(5, 1)}) == Timestamp(5, 1)
        assert error_code("$$CLUSTER_TIME") == 51144

    def test_undefined_and_invalid_variables(self):
        assert error_code("$$nope") == 17276
        assert error_code("$$FOO") == 17276
        assert error_code("$$") == 16869
        assert error_code("$$a-b", variables={"a": 1}) == 16871
        assert error_code("$") == 16872
        assert error_code("$a..b") == 15998

    def test_literal_and_constants(self):
        assert ev({"$literal": "$notAPath"}) == "$notAPath"
        assert ev({"$literal": {"$add": [1, 2]}}) == {"$add": [1, 2]}
        assert ev("plain") == "plain"
        assert ev(5) == 5

    def test_constant_containers_are_fresh_copies(self):
        fn = compile_expression({"$literal": {"a": [1]}})
        env = make_env({})
        first = fn(env)
        first["a"].append(2)
        assert fn(env) == {"a": [1]}

    def test_let(self):
        expr = {"$let": {"vars": {"x": 2, "y": {"$add": ["$a", 1]}}, "in": {"$multiply": ["$$x", "$$y"]}}}
        assert ev(expr, {"a": 4}) == 10
        # Bindings see the outer scope, not each other.
        shadow = {"$let": {"vars": {"x": 1}, "in": {"$let": {"vars": {"x": 2, "y": "$$x"}, "in": "$$y"}}}}
        assert ev(shadow) == 1
        assert error_code({"$let": {"vars": {"Bad": 1}, "in": 1}}) == 16867
        assert error_code({"$let": {"vars": {}, "in": 1, "extra": 1}}) == 16875
        assert error_code({"$let": {"in": 1}}) == 16876

    def test_let_can_rebind_current(self):
        assert ev({"$let": {"vars": {"CURRENT": "$inner"}, "in": "$x"}}, {"inner": {"x": 7}}) == 7

    def test_unknown_operator_and_malformed_operator_objects(self):
        with pytest.raises(CommandError) as info:
            ev({"$foo": 1})
        assert info.value.code == 168
        assert info.value.code_name == "InvalidPipelineOperator"
        assert info.value.errmsg == "Unrecognized expression '$foo'"
        assert error_code({"$add": [1], "$sub": 2}) == 15983
        assert error_code({"a.b": 1}) == 16412
        assert error_code({"ok": 1, "$x": 1}) == 16410

    def test_arity(self):
        assert error_code({"$subtract": [1]}) == 16020
        assert error_code({"$substrCP": ["a", 1]}) == 16020
        assert error_code({"$indexOfBytes": ["a"]}) == 28667

    def test_expression_object_reuse(self):
        compiled = Expression({"$add": ["$a", 1]})
        assert [compiled.evaluate({"a": n}) for n in range(3)] == [1, 2, 3]

    def test_truthy(self):
        assert not any(truthy(v) for v in (False, None, MISSING, 0, 0.0, Int64(0), Decimal128("0")))
        assert all(truthy(v) for v in (True, 1, -0.5, "", [], {}, float("nan")))


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------


class TestArithmetic:
    @pytest.mark.parametrize(
        "args, expected",
        [
            ([1, 2], 3),
            ([1, Int64(2)], Int64(3)),
            ([1, 2.5], 3.5),
            ([Int64(1), 2.0], 3.0),
            ([1, Decimal128("2.5")], Decimal128("3.5")),
            ([2**31 - 1, 1], Int64(2**31)),
            ([Int64(2**63 - 1), 1], float(2**63)),
            ([], 0),
        ],
    )
    def test_add_types(self, args, expected):
        assert same(ev({"$add": args}), expected)

    def test_add_dates_and_nulls(self):
        assert ev({"$add": [dt(2020, 1, 1), 1000]}) == dt(2020, 1, 1, 0, 0, 1)
        assert ev({"$add": [dt(2020, 1, 1), 1.6]}) == dt(2020, 1, 1, 0, 0, 0, 2000)
        assert ev({"$add": [1, None]}) is None
        assert ev({"$add": [1, "$missing"]}) is None

    def test_add_errors(self):
        with pytest.raises(CommandError) as info:
            ev({"$add": [1, "x"]})
        assert info.value.code == 16554
        assert info.value.errmsg == "$add only supports numeric or date types, not string"
        assert error_code({"$add": [dt(2020, 1, 1), dt(2020, 1, 2)]}) == 16612

    def test_subtract(self):
        assert same(ev({"$subtract": [5, 2]}), 3)
        assert same(ev({"$subtract": [-(2**31), 1]}), Int64(-(2**31) - 1))
        assert same(ev({"$subtract": [dt(2020, 1, 2), dt(2020, 1, 1)]}), Int64(86_400_000))
        assert ev({"$subtract": [dt(2020, 1, 1, 0, 0, 1), 1000]}) == dt(2020, 1, 1)
        assert ev({"$subtract": [None, 1]}) is None
        assert error_code({"$subtract": [1, dt(2020, 1, 1)]}) == 16556
        assert error_code({"$subtract": ["a", 1]}) == 16556

    def test_multiply(self):
        assert same(ev({"$multiply": [2, 3, 4]}), 24)
        assert same(ev({"$multiply": [2**20, 2**20]}), Int64(2**40))
        assert same(ev({"$multiply": [2, 1.5]}), 3.0)
        assert same(ev({"$multiply": [Decimal128("1.5"), 2]}), Decimal128("3.0"))
        assert ev({"$multiply": [2, None]}) is None
        assert error_code({"$multiply": [2, "3"]}) == 16555

    def test_divide(self):
        assert same(ev({"$divide": [6, 3]}), 2.0)
        assert same(ev({"$divide": [Decimal128("1"), 4]}), Decimal128("0.25"))
        assert ev({"$divide": [1, None]}) is None
        assert error_code({"$divide": [1, 0]}) == 16608
        assert error_code({"$divide": [1, "a"]}) == 16609

    def test_mod(self):
        assert same(ev({"$mod": [7, 3]}), 1)
        assert same(ev({"$mod": [-7, 3]}), -1)
        assert same(ev({"$mod": [7, Int64(3)]}), Int64(1))
        assert same(ev({"$mod": [7.5, 2]}), 1.5)
        assert same(ev({"$mod": [Decimal128("-7"), 4]}), Decimal128("-3"))
        assert error_code({"$mod": [1, 0]}) == 16610
        assert error_code({"$mod": ["a", 1]}) == 16611

    def test_abs_ceil_floor(self):
        assert same(ev({"$abs": -5}), 5)
        assert same(ev({"$abs": -(2**31)}), Int64(2**31))
        assert same(ev({"$abs": -2.5}), 2.5)
        assert ev({"$abs": None}) is None
        assert same(ev({"$ceil": 1.2}), 2.0)
        assert same(ev({"$floor": -1.2}), -2.0)
        assert same(ev({"$floor": 7}), 7)
        assert same(ev({"$ceil": Decimal128("1.1")}), Decimal128("2"))
        assert error_code({"$ceil": "x"}) == 28765

    def test_float_functions(self):
        assert same(ev({"$sqrt": 16}), 4.0)
        assert error_code({"$sqrt": -1}) == 28714
        assert ev({"$exp": 0}) == 1.0
        assert ev({"$ln": 1}) == 0.0
        assert error_code({"$ln": 0}) == 28766
        assert ev({"$log10": 1000}) == pytest.approx(3.0)
        assert error_code({"$log10": -1}) == 28761
        assert ev({"$log": [8, 2]}) == pytest.approx(3.0)
        assert error_code({"$log": [8, 1]}) == 28759
        assert isinstance(ev({"$sqrt": Decimal128("2")}), Decimal128)

    def test_pow(self):
        assert same(ev({"$pow": [2, 10]}), 1024)
        assert same(ev({"$pow": [2, 40]}), Int64(2**40))
        assert same(ev({"$pow": [2, -1]}), 0.5)
        assert same(ev({"$pow": [-1, -3]}), -1)
        assert same(ev({"$pow": [4, 0.5]}), 2.0)
        assert same(ev({"$pow": [10, 400]}), math.inf)
        assert error_code({"$pow": [0, -1]}) == 28764

    @pytest.mark.parametrize(
        "args, expected",
        [
            ([10.5, 0], 10.0),
            ([11.5, 0], 12.0),
            ([-12.5, 0], -12.0),
            ([1.2345, 2], 1.23),
            ([25, -1], 20),
            ([35, -1], 40),
            ([Int64(1234), -2], Int64(1200)),
            ([Decimal128("2.675"), 2], Decimal128("2.68")),
            ([7, 2], 7),
        ],
    )
    def test_round(self, args, expected):
        assert same(ev({"$round": args}), expected)

    def test_trunc(self):
        assert same(ev({"$trunc": [1.99, 1]}), 1.9)
        assert same(ev({"$trunc": -1.7}), -1.0)
        assert same(ev({"$trunc": [199, -2]}), 100)
        assert error_code({"$round": [1, 101]}) == 5155302

    def test_trigonometry(self):
        assert ev({"$sin": 0}) == 0.0
        assert ev({"$degreesToRadians": 180}) == pytest.approx(math.pi)
        assert ev({"$atan2": [1, 1]}) == pytest.approx(math.pi / 4)
        assert error_code({"$acos": 2}) == 50989

    @given(st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=6))
    @settings(max_examples=60, deadline=None)
    def test_add_int32_property(self, numbers):
        result = ev({"$add": numbers})
        assert result == sum(numbers)
        expected_type = int if -(2**31) <= sum(numbers) < 2**31 else Int64
        assert type(result) is expected_type


# --------------------------------------------------------------------------------------------
# Comparison, boolean, conditional
# --------------------------------------------------------------------------------------------


class TestLogic:
    def test_comparisons(self):
        assert ev({"$eq": [1, 1.0]}) is True
        assert ev({"$eq": [Int64(5), Decimal128("5")]}) is True
        assert ev({"$gt": ["a", 5]}) is True  # strings sort after numbers
        assert ev({"$lt": [None, 0]}) is True
        assert ev({"$cmp": [2, 1]}) == 1
        assert ev({"$cmp": ["a", "b"]}) == -1
        assert ev({"$ne": [[1, 2], [1, 2]]}) is False
        assert ev({"$gte": [{"a": 1}, {"a": 1}]}) is True

    def test_missing_sorts_below_null(self):
        assert ev({"$eq": ["$missing", None]}) is False
        assert ev({"$lt": ["$missing", None]}) is True
        assert ev({"$eq": ["$missing", "$alsoMissing"]}) is True

    def test_collation_aware_comparison(self):
        from mongoemu.query.collation import parse_collation

        collation = parse_collation({"locale": "en", "strength": 2})
        assert ev({"$eq": ["abc", "ABC"]}, collation=collation) is True
        assert ev({"$eq": ["abc", "ABC"]}) is False
        assert ev({"$in": ["X", ["x", "y"]]}, collation=collation) is True

    def test_and_or_not(self):
        assert ev({"$and": [1, "a", []]}) is True
        assert ev({"$and": [1, 0]}) is False
        assert ev({"$and": []}) is True
        assert ev({"$or": [None, 0, "$missing"]}) is False
        assert ev({"$or": []}) is False
        assert ev({"$not": [0]}) is True
        assert ev({"$not": "$missing"}) is True
        # Short-circuit: the erroring branch is never evaluated.
        assert ev({"$or": [True, {"$divide": [1, 0]}]}) is True

    def test_cond(self):
        assert ev({"$cond": [{"$gt": ["$a", 1]}, "big", "small"]}, {"a": 2}) == "big"
        assert ev({"$cond": {"if": "$missing", "then": 1, "else": 2}}) == 2
        assert error_code({"$cond": {"if": 1, "then": 2}}) == 17082
        assert error_code({"$cond": {"if": 1, "then": 2, "else": 3, "x": 1}}) == 17083
        assert error_code({"$cond": [1, 2]}) == 16020

    def test_if_null(self):
        assert ev({"$ifNull": ["$a", "$b", "default"]}, {"b": None}) == "default"
        assert ev({"$ifNull": ["$a", "$b", "default"]}, {"b": 0}) == 0
        assert ev({"$ifNull": ["$a", "$missing"]}) is MISSING
        assert error_code({"$ifNull": ["$a"]}) == 16021

    def test_switch(self):
        expr = {"$switch": {"branches": [{"case": {"$lt": ["$n", 0]}, "then": "neg"},
                                         {"case": {"$eq": ["$n", 0]}, "then": "zero"}],
                            "default": "pos"}}
        assert [ev(expr, {"n": n}) for n in (-1, 0, 1)] == ["neg", "zero", "pos"]
        no_default = {"$switch": {"branches": [{"case": False, "then": 1}]}}
        assert error_code(no_default) == 40066
        assert error_code({"$switch": {"branches": []}}) == 40068
        assert error_code({"$switch": {"branches": [{"case": 1}]}}) == 40065
        assert error_code({"$switch": {"branches": [], "bogus": 1}}) == 40067


# --------------------------------------------------------------------------------------------
# Strings
# --------------------------------------------------------------------------------------------


class TestStrings:
    def test_concat(self):
        assert ev({"$concat": ["a", "b", "c"]}) == "abc"
        assert ev({"$concat": ["a", None]}) is None
        assert ev({"$concat": ["a", "$missing"]}) is None
        with pytest.raises(CommandError) as info:
            ev({"$concat": ["a", 1]})
        assert (info.value.code, info.value.errmsg) == (16702, "$concat only supports strings, not int")

    def test_case_conversion_is_ascii_only(self):
        assert ev({"$toUpper": "abcé"}) == "ABCé"
        assert ev({"$toLower": "ÀBC"}) == "Àbc"
        assert ev({"$toLower": None}) == ""
        assert ev({"$toUpper": 12}) == "12"
        assert ev({"$toUpper": 1.5}) == "1.5"
        assert ev({"$strcasecmp": ["abc", "ABC"]}) == 0
        assert ev({"$strcasecmp": ["a", "B"]}) == -1

    def test_substr_bytes(self):
        assert ev({"$substr": ["hello", 1, 3]}) == "ell"
        assert ev({"$substrBytes": ["hello", 2, -1]}) == "llo"
        assert ev({"$substrBytes": ["hello", 10, 2]}) == ""
        assert ev({"$substrBytes": [12345, 1, 2]}) == "23"
        assert ev({"$substrBytes": ["héllo", 0, 3]}) == "hé"
        assert error_code({"$substrBytes": ["héllo", 2, 1]}) == 28656
        assert error_code({"$substrBytes": ["héllo", 0, 2]}) == 28657
        assert error_code({"$substrBytes": ["abc", -1, 1]}) == 50752
        assert error_code({"$substrBytes": ["abc", "a", 1]}) == 16034

    def test_substr_code_points(self):
        assert ev({"$substrCP": ["héllo", 1, 3]}) == "éll"
        assert ev({"$substrCP": ["abc", 5, 1]}) == ""
        assert error_code({"$substrCP": ["abc", 0.5, 1]}) == 34451
        assert error_code({"$substrCP": ["abc", 0, -1]}) == 34454

    def test_lengths(self):
        assert ev({"$strLenBytes": "héllo"}) == 6
        assert ev({"$strLenCP": "héllo"}) == 5
        assert error_code({"$strLenBytes": 1}) == 34473
        assert error_code({"$strLenCP": None}) == 34471

    def test_split(self):
        assert ev({"$split": ["a-b-c", "-"]}) == ["a", "b", "c"]
        assert ev({"$split": ["abc", "x"]}) == ["abc"]
        assert ev({"$split": [None, "-"]}) is None
        assert error_code({"$split": ["a", ""]}) == 40087
        assert error_code({"$split": [1, "-"]}) == 40085

    def test_trim(self):
        assert ev({"$trim": {"input": "  a b \n"}}) == "a b"
        assert ev({"$ltrim": {"input": "xxaxx", "chars": "x"}}) == "axx"
        assert ev({"$rtrim": {"input": "xxaxx", "chars": "x"}}) == "xxa"
        assert ev({"$trim": {"input": "\u00a0a\u2003"}}) == "a"
        assert ev({"$trim": {"input": None}}) is None
        assert error_code({"$trim": {"input": 1}}) == 50699
        assert error_code({"$trim": {"chars": "a"}}) == 50695
        assert error_code({"$trim": {"input": "a", "x": 1}}) == 50694

    def test_index_of(self):
        assert ev({"$indexOfBytes": ["cafétéria", "t"]}) == 5
        assert ev({"$indexOfCP": ["cafétéria", "t"]}) == 4
        assert ev({"$indexOfCP": ["abcabc", "b", 2]}) == 4
        assert ev({"$indexOfCP": ["abcabc", "b", 2, 4]}) == -1
        assert ev({"$indexOfCP": ["abc", "z"]}) == -1
        assert ev({"$indexOfCP": [None, "z"]}) is None
        assert error_code({"$indexOfCP": ["abc", "b", -1]}) == 40097
        assert error_code({"$indexOfCP": ["abc", "b", 1.5]}) == 40096
        assert error_code({"$indexOfCP": ["abc", 1]}) == 40092

    def test_regex_operators(self):
        assert ev({"$regexMatch": {"input": "Hello", "regex": "^h", "options": "i"}}) is True
        assert ev({"$regexMatch": {"input": "Hello", "regex": Regex("^h", "i")}}) is True
        assert ev({"$regexMatch": {"input": None, "regex": "a"}}) is False
        found = ev({"$regexFind": {"input": "héllo world", "regex": "(o) (w)(x)?"}})
        assert found == {"match": "o w", "idx": 4, "captures": ["o", "w", None]}
        assert ev({"$regexFind": {"input": "abc", "regex": "z"}}) is None
        all_found = ev({"$regexFindAll": {"input": "a1b22", "regex": "(?<digits>\\d+)"}})
        assert [m["match"] for m in all_found] == ["1", "22"]
        assert error_code({"$regexMatch": {"input": 1, "regex": "a"}}) == 51104
        assert error_code({"$regexMatch": {"input": "a", "regex": Regex("a", "i"), "options": "m"}}) == 51075
        assert error_code({"$regexMatch": {"input": "a", "regex": "a", "options": "q"}}) == 51108
        assert error_code({"$regexMatch": {"input": "a", "regex": "("}}) == 51111

    def test_replace(self):
        assert ev({"$replaceOne": {"input": "a.b.c", "find": ".", "replacement": "-"}}) == "a-b.c"
        assert ev({"$replaceAll": {"input": "a.b.c", "find": ".", "replacement": "-"}}) == "a-b-c"
        assert ev({"$replaceAll": {"input": None, "find": ".", "replacement": "-"}}) is None
        assert error_code({"$replaceAll": {"input": 1, "find": ".", "replacement": "-"}}) == 51746


# --------------------------------------------------------------------------------------------
# Arrays and sets
# --------------------------------------------------------------------------------------------


class TestArrays:
    def test_size_and_element_access(self):
        assert ev({"$size": [[1, 2, 3]]}) == 3
        with pytest.raises(CommandError) as info:
            ev({"$size": "$missing"})
        assert info.value.code == 17124
        assert info.value.errmsg == "The argument to $size must be an array. Type of the argument is: missing"
        assert ev({"$arrayElemAt": [[1, 2, 3], -1]}) == 3
        assert ev({"$arrayElemAt": [[1, 2, 3], 5]}) is MISSING
        assert ev({"$arrayElemAt": [None, 0]}) is None
        assert error_code({"$arrayElemAt": [[1], 0.5]}) == 28691
        assert error_code({"$arrayElemAt": [1, 0]}) == 28689
        assert ev({"$first": [[1, 2]]}) == 1
        assert ev({"$last": "$a"}, {"a": [1, 2]}) == 2
        assert ev({"$first": [[]]}) is MISSING
        assert ev({"$first": "$missing"}) is None
        assert error_code({"$last": 5}) == 28689

    def test_slice(self):
        array = [1, 2, 3, 4, 5]
        assert ev({"$slice": [array, 2]}) == [1, 2]
        assert ev({"$slice": [array, -2]}) == [4, 5]
        assert ev({"$slice": [array, 1, 2]}) == [2, 3]
        assert ev({"$slice": [array, -2, 5]}) == [4, 5]
        assert ev({"$slice": [array, -10, 2]}) == [1, 2]
        assert ev({"$slice": [None, 1]}) is None
        assert error_code({"$slice": [array, 1, 0]}) == 28729
        assert error_code({"$slice": [1, 1]}) == 28724

    def test_concat_in_index_reverse(self):
        assert ev({"$concatArrays": [[1], [2, 3], []]}) == [1, 2, 3]
        assert ev({"$concatArrays": [[1], None]}) is None
        assert error_code({"$concatArrays": [[1], 2]}) == 28664
        assert ev({"$in": [2.0, [1, 2]]}) is True
        assert ev({"$in": [[1], [[1], 2]]}) is True
        assert error_code({"$in": [1, "$missing"]}) == 40081
        assert ev({"$indexOfArray": [["a", "b", "a"], "a", 1]}) == 2
        assert ev({"$indexOfArray": [["a"], "z"]}) == -1
        assert ev({"$indexOfArray": [None, "z"]}) is None
        assert ev({"$reverseArray": [[1, 2, 3]]}) == [3, 2, 1]
        assert ev({"$isArray": [[1]]}) is True
        assert ev({"$isArray": "$missing"}) is False

    def test_range(self):
        assert ev({"$range": [0, 5]}) == [0, 1, 2, 3, 4]
        assert ev({"$range": [10, 0, -3]}) == [10, 7, 4, 1]
        assert ev({"$range": [0, 3.0]}) == [0, 1, 2]
        assert error_code({"$range": [0, 5, 0]}) == 34449
        assert error_code({"$range": ["a", 5]}) == 34443
        assert error_code({"$range": [0, 2**40]}) == 34446

    def test_filter_map_reduce(self):
        assert ev({"$filter": {"input": [1, 2, 3, 4], "cond": {"$gt": ["$$this", 2]}}}) == [3, 4]
        assert ev({"$filter": {"input": [1, 2, 3, 4], "as": "n", "cond": {"$gt": ["$$n", 1]}, "limit": 2}}) == [2, 3]
        assert ev({"$filter": {"input": None, "cond": True}}) is None
        assert error_code({"$filter": {"input": 1, "cond": True}}) == 28651
        assert error_code({"$filter": {"input": [], "cond": True, "limit": 0}}) == 327392
        assert error_code({"$filter": {"input": []}}) == 28648
        assert ev({"$map": {"input": [1, 2], "as": "x", "in": {"$multiply": ["$$x", 10]}}}) == [10, 20]
        assert ev({"$map": {"input": [{"a": 1}, {}], "in": "$$this.a"}}) == [1, None]
        assert error_code({"$map": {"input": 1, "in": 1}}) == 16883
        assert ev({"$reduce": {"input": [1, 2, 3], "initialValue": 0,
                               "in": {"$add": ["$$value", "$$this"]}}}) == 6
        assert ev({"$reduce": {"input": [[1], [2]], "initialValue": [],
                               "in": {"$concatArrays": ["$$value", "$$this"]}}}) == [1, 2]
        assert error_code({"$reduce": {"input": [1], "in": 1}}) == 40078

    def test_zip(self):
        assert ev({"$zip": {"inputs": [[1, 2, 3], ["a", "b"]]}}) == [[1, "a"], [2, "b"]]
        assert ev({"$zip": {"inputs": [[1, 2, 3], ["a"]], "useLongestLength": True,
                            "defaults": [0, "z"]}}) == [[1, "a"], [2, "z"], [3, "z"]]
        assert ev({"$zip": {"inputs": [[1], None]}}) is None
        assert error_code({"$zip": {"inputs": [[1]], "defaults": [1]}}) == 34466
        assert error_code({"$zip": {"inputs": [1]}}) == 34468

    def test_sort_array(self):
        assert ev({"$sortArray": {"input": [3, "a", 1, None], "sortBy": 1}}) == [None, 1, 3, "a"]
        assert ev({"$sortArray": {"input": [3, 1, 2], "sortBy": -1}}) == [3, 2, 1]
        docs = [{"n": 2, "k": "b"}, {"n": 1, "k": "a"}, {"n": 2, "k": "a"}]
        assert ev({"$sortArray": {"input": docs, "sortBy": {"n": -1, "k": 1}}}) == [
            {"n": 2, "k": "a"}, {"n": 2, "k": "b"}, {"n": 1, "k": "a"}]
        assert error_code({"$sortArray": {"input": 1, "sortBy": 1}}) == 2942504

    def test_object_array_conversion(self):
        assert ev({"$arrayToObject": [[["a", 1], ["b", 2]]]}) == {"a": 1, "b": 2}
        assert ev({"$arrayToObject": [[{"k": "a", "v": 1}, {"k": "a", "v": 2}]]}) == {"a": 2}
        assert ev({"$arrayToObject": [None]}) is None
        assert error_code({"$arrayToObject": [[["a"]]]}) == 40397
        assert error_code({"$arrayToObject": [[[1, 2]]]}) == 40395
        assert ev({"$objectToArray": {"$literal": {"a": 1, "b": {"c": 2}}}}) == [
            {"k": "a", "v": 1}, {"k": "b", "v": {"c": 2}}]
        assert error_code({"$objectToArray": 1}) == 40390

    def test_all_any(self):
        assert ev({"$allElementsTrue": [[1, True, "a"]]}) is True
        assert ev({"$allElementsTrue": [[]]}) is True
        assert ev({"$anyElementTrue": [[0, None, False]]}) is False
        assert error_code({"$anyElementTrue": [1]}) == 17040

    def test_sets(self):
        assert ev({"$setUnion": [[1, 2, 1], [2.0, 3]]}) == [1, 2, 3]
        assert ev({"$setUnion": [[1], None]}) is None
        assert ev({"$setIntersection": [[1, 2, 3], [3, 1, 5]]}) == [1, 3]
        assert ev({"$setIntersection": []}) == []
        assert ev({"$setDifference": [[1, 2, 2, 3], [2]]}) == [1, 3]
        assert ev({"$setEquals": [[1, 2, 2], [2, 1]]}) is True
        assert ev({"$setEquals": [[1], [1, 2]]}) is False
        assert ev({"$setIsSubset": [[1, 1], [1, 2]]}) is True
        assert error_code({"$setEquals": [[1], None]}) == 17044
        assert error_code({"$setIsSubset": [1, [1]]}) == 17046
        assert error_code({"$setUnion": [[1], 2]}) == 17043

    @given(st.lists(st.integers(-5, 5)), st.lists(st.integers(-5, 5)))
    @settings(max_examples=60, deadline=None)
    def test_set_operators_match_python_sets(self, a, b):
        assert set(ev({"$setUnion": [a, b]})) == set(a) | set(b)
        assert set(ev({"$setIntersection": [a, b]})) == set(a) & set(b)
        assert set(ev({"$setDifference": [a, b]})) == set(a) - set(b)
        assert ev({"$setIsSubset": [a, b]}) == (set(a) <= set(b))

    def test_n_operators(self):
        array = [3, None, 1, 5, 2]
        assert ev({"$maxN": {"n": 2, "input": array}}) == [5, 3]
        assert ev({"$minN": {"n": 2, "input": array}}) == [1, 2]
        assert ev({"$firstN": {"n": 2, "input": array}}) == [3, None]
        assert ev({"$lastN": {"n": 10, "input": array}}) == array
        assert error_code({"$maxN": {"n": 0, "input": array}}) == 5787908
        assert error_code({"$maxN": {"n": "a", "input": array}}) == 5787902
        assert error_code({"$firstN": {"n": 1, "input": 5}}) == 5788200

    def test_aggregate_expression_forms(self):
        assert same(ev({"$sum": [[1, 2, "x", None]]}), 3)
        assert same(ev({"$sum": [1, Int64(2)]}), Int64(3))
        assert same(ev({"$sum": "$missing"}), 0)
        assert same(ev({"$sum": [[1, 2.5]]}), 3.5)
        assert ev({"$avg": [[1, 2, 3, "x"]]}) == 2.0
        assert ev({"$avg": [[]]}) is None
        assert ev({"$max": [[1, "a", None]]}) == "a"
        assert ev({"$min": [1, 5, None]}) == 1
        assert ev({"$min": [[]]}) is None
        assert ev({"$stdDevPop": [[1, 2, 3, 4]]}) == pytest.approx(1.118033988749895)
        assert ev({"$stdDevSamp": [[1, 2, 3, 4]]}) == pytest.approx(1.2909944487358056)
        assert ev({"$stdDevSamp": [[1]]}) is None


# --------------------------------------------------------------------------------------------
# Types and conversion
# --------------------------------------------------------------------------------------------


class TestTypes:
    @pytest.mark.parametrize(
        "value, name",
        [(1, "int"), (Int64(1), "long"), (2**40, "long"), (1.5, "double"), (Decimal128("1"), "decimal"),
         ("s", "string"), (True, "bool"), (None, "null"), ([1], "array"), ({"a": 1}, "object"),
         (ObjectId(), "objectId"), (dt(2020, 1, 1), "date"), (Timestamp(1, 1), "timestamp"),
         (Regex("a"), "regex")],
    )
    def test_type(self, value, name):
        assert ev({"$type": {"$literal": value}}) == name

    def test_type_of_missing_and_is_number(self):
        assert ev({"$type": "$nope"}) == "missing"
        assert ev({"$isNumber": Int64(1)}) is True
        assert ev({"$isNumber": "1"}) is False
        assert ev({"$isNumber": True}) is False

    @pytest.mark.parametrize(
        "value, expected",
        [(1.0, "1"), (1.5, "1.5"), (1e20, "1e+20"), (Int64(7), "7"), (True, "true"),
         (Decimal128("1.50"), "1.50"), (float("nan"), "NaN"), (float("-inf"), "-Infinity"),
         (dt(2020, 1, 2, 3, 4, 5, 6000), "2020-01-02T03:04:05.006Z"),
         (ObjectId("5f1a2b3c4d5e6f7081920304"), "5f1a2b3c4d5e6f7081920304")],
    )
    def test_to_string(self, value, expected):
        assert ev({"$toString": {"$literal": value}}) == expected

    def test_numeric_conversions(self):
        assert same(ev({"$toInt": "42"}), 42)
        assert same(ev({"$toInt": 3.9}), 3)
        assert same(ev({"$toInt": -3.9}), -3)
        assert same(ev({"$toInt": True}), 1)
        assert same(ev({"$toLong": 5}), Int64(5))
        assert same(ev({"$toLong": dt(1970, 1, 1, 0, 0, 1)}), Int64(1000))
        assert same(ev({"$toDouble": "2.5"}), 2.5)
        assert same(ev({"$toDouble": Int64(3)}), 3.0)
        assert same(ev({"$toDouble": dt(1970, 1, 1, 0, 0, 1)}), 1000.0)
        assert ev({"$toDecimal": 2.5}) == Decimal128("2.50000000000000")
        assert ev({"$toDecimal": "1.25"}) == Decimal128("1.25")
        assert ev({"$toInt": None}) is None

    def test_conversion_failures(self):
        with pytest.raises(CommandError) as info:
            ev({"$toInt": "1.5"})
        assert info.value.code == 241
        assert info.value.code_name == "ConversionFailure"
        assert info.value.errmsg.startswith("Failed to parse number '1.5' in $convert with no onError value")
        assert error_code({"$toInt": 2**40}) == 241
        assert error_code({"$toInt": float("nan")}) == 241
        assert error_code({"$toDouble": "1_000"}) == 241
        assert error_code({"$toInt": " 1"}) == 241
        assert error_code({"$toObjectId": "abc"}) == 241
        assert error_code({"$toDate": 5}) == 241  # int32 is not a date

    def test_bool_object_id_date(self):
        assert ev({"$toBool": 0}) is False
        assert ev({"$toBool": "false"}) is True
        assert ev({"$toBool": [[0]]}) is True
        oid = ObjectId("5f1a2b3c4d5e6f7081920304")
        assert ev({"$toObjectId": "5f1a2b3c4d5e6f7081920304"}) == oid
        assert ev({"$toDate": {"$literal": oid}}) == oid.generation_time
        assert ev({"$toDate": Int64(86_400_000)}) == dt(1970, 1, 2)
        assert ev({"$toDate": "2020-03-04T05:06:07.5Z"}) == dt(2020, 3, 4, 5, 6, 7, 500000)
        assert ev({"$toDate": {"$literal": Timestamp(60, 1)}}) == dt(1970, 1, 1, 0, 1)

    def test_convert(self):
        assert same(ev({"$convert": {"input": "12", "to": "int"}}), 12)
        assert same(ev({"$convert": {"input": "12", "to": 18}}), Int64(12))
        assert ev({"$convert": {"input": "x", "to": "int", "onError": "bad"}}) == "bad"
        assert ev({"$convert": {"input": None, "to": "int", "onNull": "none"}}) == "none"
        assert ev({"$convert": {"input": "$missing", "to": "int"}}) is None
        assert ev({"$convert": {"input": [1], "to": "string", "onError": "no"}}) == "no"
        assert error_code({"$convert": {"input": 1, "to": "nope"}}) == 2
        assert error_code({"$convert": {"input": 1, "to": 100}}) == 2
        with pytest.raises(CommandError) as info:
            ev({"$convert": {"input": [1], "to": "int"}})
        assert info.value.errmsg == "Unsupported conversion from array to int in $convert with no onError value"

    @given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    @settings(max_examples=60, deadline=None)
    def test_long_string_round_trip(self, number):
        assert ev({"$toLong": {"$toString": Int64(number)}}) == number


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------


class TestDates:
    MOMENT = dt(2021, 3, 14, 15, 9, 26, 535000)  # a Sunday

    @pytest.mark.parametrize(
        "op, expected",
        [("$year", 2021), ("$month", 3), ("$dayOfMonth", 14), ("$hour", 15), ("$minute", 9), ("$second", 26),
         ("$millisecond", 535), ("$dayOfWeek", 1), ("$dayOfYear", 73), ("$week", 11), ("$isoWeek", 10),
         ("$isoWeekYear", 2021), ("$isoDayOfWeek", 7)],
    )
    def test_parts(self, op, expected):
        assert ev({op: "$d"}, {"d": self.MOMENT}) == expected
        assert ev({op: ["$d"]}, {"d": self.MOMENT}) == expected

    def test_parts_with_timezones_and_other_date_types(self):
        doc = {"d": self.MOMENT}
        assert ev({"$hour": {"date": "$d", "timezone": "America/New_York"}}, doc) == 11
        assert ev({"$hour": {"date": "$d", "timezone": "+05:30"}}, doc) == 20
        assert ev({"$minute": {"date": "$d", "timezone": "+0530"}}, doc) == 39
        assert ev({"$year": {"date": "$d", "timezone": "$missing"}}, doc) is None
        assert ev({"$year": "$missing"}) is None
        assert ev({"$year": {"$literal": Timestamp(0, 1)}}) == 1970
        assert error_code({"$hour": {"date": "$d", "timezone": "Mars/Base"}}, doc) == 40485
        assert error_code({"$year": "2020"}) == 16006
        assert ev({"$week": dt(2022, 1, 1)}) == 0

    def test_date_to_string(self):
        doc = {"d": self.MOMENT}
        assert ev({"$dateToString": {"date": "$d"}}, doc) == "2021-03-14T15:09:26.535Z"
        assert ev({"$dateToString": {"date": "$d", "format": "%d/%m/%Y %j %w %u %U %V %G %%"}}, doc) == \
            "14/03/2021 073 1 7 11 10 2021 %"
        assert ev({"$dateToString": {"date": "$d", "format": "%H:%M %z %Z", "timezone": "-02:30"}}, doc) == \
            "12:39 -0230 -150"
        assert ev({"$dateToString": {"date": "$d", "timezone": "Europe/Paris"}}, doc) == "2021-03-14T16:09:26.535"
        assert ev({"$dateToString": {"date": "$d", "format": "%b %B"}}, doc) == "Mar March"
        assert ev({"$dateToString": {"date": "$missing", "onNull": "none"}}) == "none"
        assert ev({"$dateToString": {"date": "$missing"}}) is None
        assert error_code({"$dateToString": {"date": "$d", "format": "%q"}}, doc) == 18536
        assert error_code({"$dateToString": {"date": "$d", "format": "abc%"}}, doc) == 18535

    def test_date_from_string(self):
        assert ev({"$dateFromString": {"dateString": "2017-02-08T12:10:40.787"}}) == dt(2017, 2, 8, 12, 10, 40, 787000)
        assert ev({"$dateFromString": {"dateString": "2017-02-08"}}) == dt(2017, 2, 8)
        assert ev({"$dateFromString": {"dateString": "2017-02-08T12:10:40Z"}}) == dt(2017, 2, 8, 12, 10, 40)
        assert ev({"$dateFromString": {"dateString": "2017-02-08T12:10:40+01:00"}}) == dt(2017, 2, 8, 11, 10, 40)
        assert ev({"$dateFromString": {"dateString": "2017-02-08 12:10",
                                       "timezone": "America/New_York"}}) == dt(2017, 2, 8, 17, 10)
        assert ev({"$dateFromString": {"dateString": "15/06/2018", "format": "%d/%m/%Y"}}) == dt(2018, 6, 15)
        assert ev({"$dateFromString": {"dateString": "bad", "onError": "oops"}}) == "oops"
        assert ev({"$dateFromString": {"dateString": None, "onNull": 0}}) == 0
        assert error_code({"$dateFromString": {"dateString": "2017-13-01"}}) == 241
        assert error_code({"$dateFromString": {"dateString": "2017-01-01Z", "timezone": "UTC"}}) == 40554

    def test_date_from_and_to_parts(self):
        assert ev({"$dateFromParts": {"year": 2020, "month": 14, "day": 1}}) == dt(2021, 2, 1)
        assert ev({"$dateFromParts": {"year": 2020, "day": 0}}) == dt(2019, 12, 31)
        assert ev({"$dateFromParts": {"year": 2020, "hour": 1, "timezone": "+01:00"}}) == dt(2020, 1, 1)
        assert ev({"$dateFromParts": {"isoWeekYear": 2021, "isoWeek": 10, "isoDayOfWeek": 7}}) == dt(2021, 3, 14)
        assert ev({"$dateFromParts": {"year": None}}) is None
        assert error_code({"$dateFromParts": {"year": 2020, "isoWeek": 1}}) == 40489
        assert error_code({"$dateFromParts": {"month": 1}}) == 40516
        assert error_code({"$dateFromParts": {"year": 10000}}) == 40523
        parts = ev({"$dateToParts": {"date": self.MOMENT}})
        assert parts == {"year": 2021, "month": 3, "day": 14, "hour": 15, "minute": 9, "second": 26,
                         "millisecond": 535}
        iso = ev({"$dateToParts": {"date": self.MOMENT, "iso8601": True}})
        assert (iso["isoWeekYear"], iso["isoWeek"], iso["isoDayOfWeek"]) == (2021, 10, 7)

    def test_date_add_and_subtract(self):
        start = dt(2021, 1, 31, 10)
        assert ev({"$dateAdd": {"startDate": start, "unit": "month", "amount": 1}}) == dt(2021, 2, 28, 10)
        assert ev({"$dateAdd": {"startDate": start, "unit": "quarter", "amount": 1}}) == dt(2021, 4, 30, 10)
        assert ev({"$dateAdd": {"startDate": start, "unit": "hour", "amount": -11}}) == dt(2021, 1, 30, 23)
        assert ev({"$dateSubtract": {"startDate": start, "unit": "week", "amount": 1}}) == dt(2021, 1, 24, 10)
        assert ev({"$dateAdd": {"startDate": start, "unit": "year", "amount": Int64(1)}}) == dt(2022, 1, 31, 10)
        # Across a DST change a day keeps the wall-clock time, hours do not.
        before = dt(2021, 3, 13, 17)  # 12:00 in New York
        assert ev({"$dateAdd": {"startDate": before, "unit": "day", "amount": 1,
                                "timezone": "America/New_York"}}) == dt(2021, 3, 14, 16)
        assert ev({"$dateAdd": {"startDate": before, "unit": "hour", "amount": 24,
                                "timezone": "America/New_York"}}) == dt(2021, 3, 14, 17)
        assert ev({"$dateAdd": {"startDate": None, "unit": "day", "amount": 1}}) is None
        assert error_code({"$dateAdd": {"startDate": start, "unit": "day", "amount": 1.5}}) == 5166405
        assert error_code({"$dateAdd": {"startDate": start, "unit": "fortnight", "amount": 1}}) == 2

    def test_date_diff(self):
        a, b = dt(2020, 12, 31, 23, 59), dt(2021, 1, 1, 0, 1)
        assert same(ev({"$dateDiff": {"startDate": a, "endDate": b, "unit": "year"}}), Int64(1))
        assert same(ev({"$dateDiff": {"startDate": a, "endDate": b, "unit": "minute"}}), Int64(2))
        assert ev({"$dateDiff": {"startDate": a, "endDate": b, "unit": "day"}}) == 1
        assert ev({"$dateDiff": {"startDate": b, "endDate": a, "unit": "month"}}) == -1
        # 2021-03-13 is a Saturday, 2021-03-14 a Sunday.
        sat, sun = dt(2021, 3, 13), dt(2021, 3, 14)
        assert ev({"$dateDiff": {"startDate": sat, "endDate": sun, "unit": "week"}}) == 1
        assert ev({"$dateDiff": {"startDate": sat, "endDate": sun, "unit": "week", "startOfWeek": "mon"}}) == 0
        assert ev({"$dateDiff": {"startDate": a, "endDate": b, "unit": "quarter"}}) == 1
        assert ev({"$dateDiff": {"startDate": a, "endDate": "$missing", "unit": "day"}}) is None

    def test_date_trunc(self):
        moment = self.MOMENT
        assert ev({"$dateTrunc": {"date": moment, "unit": "day"}}) == dt(2021, 3, 14)
        assert ev({"$dateTrunc": {"date": moment, "unit": "hour", "binSize": 6}}) == dt(2021, 3, 14, 12)
        assert ev({"$dateTrunc": {"date": moment, "unit": "month", "binSize": 2}}) == dt(2021, 3, 1)
        assert ev({"$dateTrunc": {"date": moment, "unit": "quarter"}}) == dt(2021, 1, 1)
        assert ev({"$dateTrunc": {"date": moment, "unit": "year", "binSize": 5}}) == dt(2020, 1, 1)
        assert ev({"$dateTrunc": {"date": moment, "unit": "week"}}) == dt(2021, 3, 14)
        assert ev({"$dateTrunc": {"date": moment, "unit": "week", "startOfWeek": "monday"}}) == dt(2021, 3, 8)
        assert ev({"$dateTrunc": {"date": moment, "unit": "day", "timezone": "+10:00"}}) == dt(2021, 3, 14, 14)
        assert error_code({"$dateTrunc": {"date": moment, "unit": "day", "binSize": 0}}) == 5439017


# --------------------------------------------------------------------------------------------
# Objects and miscellaneous
# --------------------------------------------------------------------------------------------


class TestObjectsAndMisc:
    def test_merge_objects(self):
        assert ev({"$mergeObjects": [{"a": 1, "b": 1}, {"b": 2}, None, "$missing"]}) == {"a": 1, "b": 2}
        assert ev({"$mergeObjects": "$doc"}, {"doc": {"x": 1}}) == {"x": 1}
        assert error_code({"$mergeObjects": [{"a": 1}, 5]}) == 40400

    def test_get_set_unset_field(self):
        doc = {"a.b": 1, "$price": 5, "plain": {"x": 2}}
        assert ev({"$getField": "a.b"}, doc) == 1
        assert ev({"$getField": {"$literal": "$price"}}, doc) == 5
        assert ev({"$getField": {"field": "x", "input": "$plain"}}, doc) == 2
        assert ev({"$getField": {"field": "x", "input": "$missing"}}, doc) is None
        assert ev({"$getField": "nothing"}, doc) is MISSING
        assert error_code({"$getField": {"field": "x", "input": 5}}) == 3041705
        assert error_code({"$getField": {"field": 5}}) == 5654601
        assert ev({"$setField": {"field": "a.b", "input": "$$ROOT", "value": 9}}, doc)["a.b"] == 9
        assert "$price" not in ev({"$unsetField": {"field": {"$literal": "$price"}, "input": "$$ROOT"}}, doc)
        assert error_code({"$unsetField": {"field": "$price", "input": "$$ROOT"}}, doc) == 5654602
        assert "plain" not in ev({"$setField": {"field": "plain", "input": "$$ROOT", "value": "$$REMOVE"}}, doc)
        assert ev({"$setField": {"field": "a", "input": None, "value": 1}}) is None
        assert error_code({"$setField": {"field": "a", "input": 5, "value": 1}}) == 4161105

    def test_rand_and_sizes(self):
        values = {ev({"$rand": {}}) for _ in range(5)}
        assert all(isinstance(v, float) and 0 <= v < 1 for v in values) and len(values) > 1
        assert error_code({"$rand": {"seed": 1}}) == 3040500
        assert ev({"$bsonSize": {"$literal": {}}}) == 5
        assert ev({"$bsonSize": {"$literal": {"a": 1}}}) == 12
        assert ev({"$bsonSize": None}) is None
        assert error_code({"$bsonSize": 1}) == 31393
        assert ev({"$binarySize": "héllo"}) == 6

    def test_hashed_index_key(self):
        key = ev({"$toHashedIndexKey": "$a"}, {"a": 1})
        assert isinstance(key, Int64)
        assert key == hashed_index_key(1.0) == hashed_index_key(Int64(1)) == hashed_index_key(Decimal128("1.0"))
        assert key != hashed_index_key(2)
        assert hashed_index_key({"x": [1, "a"]}) == hashed_index_key({"x": [1.0, "a"]})
        assert hashed_index_key(None) == ev({"$toHashedIndexKey": "$missing"})

    def test_timestamp_parts_and_meta(self):
        assert same(ev({"$tsSecond": {"$literal": Timestamp(10, 2)}}), Int64(10))
        assert same(ev({"$tsIncrement": {"$literal": Timestamp(10, 2)}}), Int64(2))
        assert ev({"$meta": "textScore"}) is MISSING
        assert error_code({"$meta": "bogus"}) == 17308
        assert error_code({"$function": {"body": "x", "args": [], "lang": "js"}}) == 115
