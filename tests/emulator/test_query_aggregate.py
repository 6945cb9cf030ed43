"""The aggregation pipeline (mongoemu.query.aggregate), stage by stage and end to end."""

from __future__ import annotations

import datetime
import itertools
from typing import Any, Iterable

import pytest
from bson.int64 import Int64
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu.errors import CommandError
from mongoemu.query.aggregate import apply_merge_pipeline, run_pipeline, validate_pipeline
from mongoemu.query.collation import parse_collation

UTC = datetime.timezone.utc


class FakeContext:
    """A PipelineContext over in-memory collections that records writes."""

    def __init__(self, collections: dict[tuple[str, str], list[dict]] | None = None, *, let=None,
                 collation=None, now=None, cluster_time=None, current_db: str = "db") -> None:
        self.collections = collections or {}
        self.variables = let
        self.collation = collation
        self.now = now
        self.cluster_time = cluster_time
        self.current_db = current_db
        self.writes: list[tuple] = []
        self.reads: list[tuple[str, str]] = []

    def read_collection(self, db: str, coll: str) -> Iterable[dict]:
        self.reads.append((db, coll))
        return list(self.collections.get((db, coll), []))

    def write_out(self, db: str, coll: str, docs: list[dict]) -> None:
        self.writes.append(("out", db, coll, docs))

    def merge_into(self, db, coll, docs, on, when_matched, when_not_matched, let) -> None:
        self.writes.append(("merge", db, coll, docs, on, when_matched, when_not_matched, let))

    def coll_stats(self, options: dict) -> list[dict]:
        return [{"ns": f"{self.current_db}.coll", "options": options}]

    def index_stats(self) -> list[dict]:
        return [{"name": "_id_", "key": {"_id": 1}}]

    def server_stage(self, name: str, spec: Any) -> Iterable[dict]:
        return [{"_id": {"id": n}, "stage": name} for n in range(3)]


def run(docs, pipeline, ctx=None) -> list[dict]:
    return list(run_pipeline(docs, pipeline, ctx))


def error_code(docs, pipeline, ctx=None) -> int:
    with pytest.raises(CommandError) as info:
        run(docs, pipeline, ctx)
    return info.value.code


NUMBERS = [{"_id": i, "x": i * 11} for i in range(1, 7)]


# --------------------------------------------------------------------------------------------
# Pipeline structure and the driver spec-test scenarios
# --------------------------------------------------------------------------------------------


class TestPipelineStructure:
    def test_stage_shape_errors(self):
        with pytest.raises(CommandError) as info:
            validate_pipeline([{"$match": {}, "$limit": 1}])
        assert info.value.code == 40323
        assert info.value.errmsg == "A pipeline stage specification object must contain exactly one field."
        with pytest.raises(CommandError) as info:
            validate_pipeline([{"$foo": {}}])
        assert (info.value.code, info.value.errmsg) == (40324, "Unrecognized pipeline stage name: '$foo'")
        with pytest.raises(CommandError) as info:
            validate_pipeline([{}])
        assert info.value.code == 40323
        with pytest.raises(CommandError):
            validate_pipeline({"$match": {}})

    def test_placement_rules(self):
        assert error_code([], [{"$out": "x"}, {"$match": {}}]) == 40601
        assert error_code([], [{"$match": {}}, {"$merge": {"into": "x"}}, {"$limit": 1}]) == 40601
        assert error_code([], [{"$match": {}}, {"$documents": []}]) == 40602
        assert error_code([], [{"$match": {}}, {"$collStats": {}}]) == 40602
        assert error_code([], [{"$facet": {"a": [{"$facet": {"b": [{"$match": {}}]}}]}}]) == 40600
        assert error_code([], [{"$facet": {"a": [{"$out": "x"}]}}]) == 40600
        assert error_code([], [{"$lookup": {"from": "c", "as": "a", "pipeline": [{"$out": "x"}]}}]) == 51047

    def test_unsupported_stages(self):
        for name in ("$geoNear", "$search", "$vectorSearch"):
            with pytest.raises(CommandError) as info:
                validate_pipeline([{name: {}}])
            assert "not supported by the emulator" in info.value.errmsg

    def test_validate_accepts_valid_pipelines(self):
        validate_pipeline([])
        validate_pipeline([{"$changeStream": {}}, {"$match": {"operationType": "insert"}}])
        validate_pipeline([{"$match": {"a": 1}}, {"$project": {"a": 1}}, {"$merge": {"into": "t"}}])

    def test_errors_are_raised_before_iteration(self):
        with pytest.raises(CommandError):
            run_pipeline([], [{"$project": {"a": {"$bogus": 1}}}])
        with pytest.raises(CommandError):
            run_pipeline([], [{"$match": {"a": {"$bogus": 1}}}])
        with pytest.raises(CommandError):
            run_pipeline([], [{"$group": {"_id": None, "n": {"$bogus": 1}}}])

    def test_streaming_over_an_endless_source(self):
        source = ({"n": n} for n in itertools.count())
        out = run(source, [{"$match": {"n": {"$mod": [2, 0]}}}, {"$project": {"_id": 0, "n": 1}}, {"$limit": 3}])
        assert out == [{"n": 0}, {"n": 2}, {"n": 4}]

    def test_spec_aggregate_multiple_stages(self):
        out = run(NUMBERS, [{"$sort": {"x": 1}}, {"$match": {"_id": {"$gt": 1}}}])
        assert out == NUMBERS[1:]

    def test_spec_aggregate_with_collation(self):
        ctx = FakeContext(collation=parse_collation({"locale": "en_US", "strength": 2}))
        assert run([{"_id": 1, "x": "ping"}], [{"$match": {"x": "PING"}}], ctx) == [{"_id": 1, "x": "ping"}]
        assert run([{"_id": 1, "x": "ping"}], [{"$match": {"x": "PING"}}]) == []

    def test_collation_document_is_accepted(self):
        ctx = FakeContext(collation={"locale": "en", "strength": 1})
        assert len(run([{"x": "é"}], [{"$match": {"x": "E"}}], ctx)) == 1

    def test_spec_aggregate_with_let(self):
        ctx = FakeContext(let={"id": 1, "x": "foo", "y": {"$literal": "$bar"}, "rand": {"$rand": {}}})
        pipeline = [{"$match": {"$expr": {"$eq": ["$_id", "$$id"]}}},
                    {"$project": {"_id": 0, "x": "$$x", "y": "$$y", "rand": "$$rand"}}]
        (doc,) = run([{"_id": 1}, {"_id": 2}], pipeline, ctx)
        assert doc["x"] == "foo" and doc["y"] == "$bar" and isinstance(doc["rand"], float)

    def test_let_names_are_validated(self):
        assert error_code([], [], FakeContext(let={"Bad": 1})) == 16867

    def test_spec_aggregate_to_collection_with_let(self):
        ctx = FakeContext(let={"id": 1})
        pipeline = [{"$match": {"$expr": {"$eq": ["$_id", "$$id"]}}}, {"$project": {"_id": 1}}, {"$out": "coll1"}]
        assert run([{"_id": 1, "a": 5}, {"_id": 2}], pipeline, ctx) == []
        assert ctx.writes == [("out", "db", "coll1", [{"_id": 1}])]

    def test_spec_merge(self):
        ctx = FakeContext()
        docs = [{"_id": 1, "x": 11}, {"_id": 2, "x": 22}, {"_id": 3, "x": 33}]
        pipeline = [{"$sort": {"x": 1}}, {"$match": {"_id": {"$gt": 1}}}, {"$merge": {"into": "other_test_collection"}}]
        assert run(docs, pipeline, ctx) == []
        assert ctx.writes == [("merge", "db", "other_test_collection", docs[1:], ["_id"], "merge", "insert", None)]

    def test_spec_database_aggregate_documents_then_merge(self):
        ctx = FakeContext()
        run([], [{"$documents": [{"_id": 2, "x": 1}]}, {"$merge": {"into": "test", "whenMatched": "fail"}}], ctx)
        assert ctx.writes[0][1:4] == ("db", "test", [{"_id": 2, "x": 1}])
        assert ctx.writes[0][5] == "fail"

    def test_spec_list_local_sessions(self):
        pipeline = [{"$listLocalSessions": {}}, {"$limit": 1}, {"$addFields": {"dummy": "dummy field"}},
                    {"$project": {"_id": 0, "dummy": 1}}]
        assert run([], pipeline, FakeContext()) == [{"dummy": "dummy field"}]

    def test_context_sources(self):
        ctx = FakeContext()
        assert run([], [{"$collStats": {"count": {}}}], ctx) == [{"ns": "db.coll", "options": {"count": {}}}]
        assert run([], [{"$indexStats": {}}], ctx)[0]["name"] == "_id_"
        assert error_code([], [{"$indexStats": {"x": 1}}], ctx) == 28803
        assert error_code([], [{"$collStats": {"bogus": {}}}], ctx) == 40168
        assert error_code([], [{"$out": "x"}]) == 115  # no context to write through

    def test_change_stream_stage_is_not_run_here(self):
        with pytest.raises(CommandError):
            run([], [{"$changeStream": {}}])


# --------------------------------------------------------------------------------------------
# $project, $addFields, $unset, $replaceRoot
# --------------------------------------------------------------------------------------------


class TestProjection:
    DOC = {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "arr": [{"x": 1, "y": 2}, 5, {"y": 3}, [{"x": 4}]]}

    def project(self, spec, doc=None):
        return run([doc or self.DOC], [{"$project": spec}])[0]

    def test_inclusion(self):
        assert self.project({"a": 1}) == {"_id": 1, "a": 1}
        assert self.project({"a": True, "_id": 0}) == {"a": 1}
        assert self.project({"b.c": 1}) == {"_id": 1, "b": {"c": 2}}
        assert self.project({"b": {"d": 1}}) == {"_id": 1, "b": {"d": 3}}
        assert self.project({"arr.x": 1}) == {"_id": 1, "arr": [{"x": 1}, {}, [{"x": 4}]]}
        assert self.project({"missing": 1}) == {"_id": 1}
        assert self.project({"_id": 1}) == {"_id": 1}

    def test_exclusion(self):
        assert self.project({"b": 0, "arr": 0}) == {"_id": 1, "a": 1}
        assert self.project({"_id": 0, "arr": 0, "b.c": 0}) == {"a": 1, "b": {"d": 3}}
        assert self.project({"arr.y": 0}) == {"_id": 1, "a": 1, "b": {"c": 2, "d": 3},
                                              "arr": [{"x": 1}, 5, {}, [{"x": 4}]]}
        assert self.project({"_id": 0})["a"] == 1

    def test_computed_fields(self):
        out = self.project({"total": {"$add": ["$a", "$b.c"]}, "a": 1, "lit": "text", "nested": {"n": "$b.d"}})
        assert out == {"_id": 1, "a": 1, "total": 3, "lit": "text", "nested": {"n": 3}}
        assert list(out) == ["_id", "a", "total", "lit", "nested"]
        assert self.project({"gone": "$$REMOVE", "a": 1}) == {"_id": 1, "a": 1}
        assert self.project({"_id": "$a"}) == {"_id": 1}
        # Inclusion drops the array's scalars before the computed field is added to each element.
        assert self.project({"arr.z": {"$literal": 0}}, {"_id": 1, "arr": [{"x": 1}, 5]}) == \
            {"_id": 1, "arr": [{"z": 0}]}

    def test_projection_errors(self):
        assert error_code([self.DOC], [{"$project": {"a": 1, "b": 0}}]) == 31253
        assert error_code([self.DOC], [{"$project": {"a": 0, "b": 1}}]) == 31254
        assert error_code([self.DOC], [{"$project": {"a": 0, "b": "$a"}}]) == 31252
        assert error_code([self.DOC], [{"$project": {}}]) == 51272
        assert error_code([self.DOC], [{"$project": "a"}]) == 15969
        assert error_code([self.DOC], [{"$project": {"a": 1, "a.b": 1}}]) == 31250
        assert error_code([self.DOC], [{"$project": {"$a": 1}}]) == 16410
        assert error_code([self.DOC], [{"$project": {"a": {}}}]) == 51270

    def test_add_fields(self):
        out = run([self.DOC], [{"$addFields": {"a": 10, "b.e": {"$multiply": ["$b.c", 2]}, "new": {"k": 1}}}])[0]
        assert out["a"] == 10
        assert out["b"] == {"c": 2, "d": 3, "e": 4}
        assert out["new"] == {"k": 1}
        assert list(out) == ["_id", "a", "b", "arr", "new"]
        assert self.DOC["b"] == {"c": 2, "d": 3}  # input untouched

    def test_set_alias_remove_and_arrays(self):
        out = run([{"_id": 1, "a": 1, "arr": [{"x": 1}, 2]}],
                  [{"$set": {"a": "$$REMOVE", "arr.y": True, "e": {}}}])[0]
        assert out == {"_id": 1, "arr": [{"x": 1, "y": True}, {"y": True}], "e": {}}
        assert run([{"a": 1}], [{"$addFields": {"a.b": 1}}]) == [{"a": {"b": 1}}]

    def test_unset(self):
        assert run([self.DOC], [{"$unset": ["a", "b.c", "arr"]}]) == [{"_id": 1, "b": {"d": 3}}]
        assert run([self.DOC], [{"$unset": "_id"}])[0].keys() == {"a", "b", "arr"}
        assert error_code([], [{"$unset": []}]) == 31119
        assert error_code([], [{"$unset": [1]}]) == 31120

    def test_replace_root_and_with(self):
        docs = [{"_id": 1, "inner": {"k": 1}}]
        assert run(docs, [{"$replaceRoot": {"newRoot": "$inner"}}]) == [{"k": 1}]
        assert run(docs, [{"$replaceWith": {"$mergeObjects": ["$inner", {"id": "$_id"}]}}]) == [{"k": 1, "id": 1}]
        with pytest.raises(CommandError) as info:
            run([{"_id": 1}], [{"$replaceRoot": {"newRoot": "$nope"}}])
        assert info.value.code == 40228
        assert "Type of resulting value: 'missing'" in info.value.errmsg
        assert error_code([], [{"$replaceRoot": {}}]) == 40414
        assert error_code([], [{"$replaceRoot": {"newRoot": "$a", "x": 1}}]) == 40415


# --------------------------------------------------------------------------------------------
# $match, $sort, $skip, $limit, $count, $unwind, $sample
# --------------------------------------------------------------------------------------------


class TestBasicStages:
    def test_match_with_expr_and_variables(self):
        docs = [{"a": 1, "b": 2}, {"a": 3, "b": 2}]
        assert run(docs, [{"$match": {"$expr": {"$gt": ["$a", "$b"]}}}]) == [docs[1]]
        assert error_code(docs, [{"$match": 5}]) == 15959

    def test_sort(self):
        docs = [{"_id": 1, "k": "b", "n": 2}, {"_id": 2, "k": "a", "n": 2}, {"_id": 3, "k": "c", "n": 1}]
        assert [d["_id"] for d in run(docs, [{"$sort": {"n": -1, "k": 1}}])] == [2, 1, 3]
        assert [d["_id"] for d in run(docs, [{"$sort": {"n": -1, "k": 1}}, {"$limit": 1}])] == [2]
        assert error_code(docs, [{"$sort": {}}]) == 15976
        assert error_code(docs, [{"$sort": {"n": 2}}]) == 15975
        assert error_code(docs, [{"$sort": 1}]) == 15973

    def test_sort_with_collation(self):
        ctx = FakeContext(collation=parse_collation({"locale": "en", "strength": 2}))
        docs = [{"s": "b"}, {"s": "A"}, {"s": "a"}, {"s": "B"}]
        assert [d["s"] for d in run(docs, [{"$sort": {"s": 1}}], ctx)] == ["A", "a", "b", "B"]
        assert [d["s"] for d in run(docs, [{"$sort": {"s": 1}}])] == ["A", "B", "a", "b"]

    @given(st.lists(st.integers(-20, 20), max_size=30), st.integers(1, 10))
    @settings(max_examples=50, deadline=None)
    def test_sort_then_limit_equals_sorted_prefix(self, values, limit):
        docs = [{"_id": i, "v": v} for i, v in enumerate(values)]
        expected = sorted(docs, key=lambda d: d["v"])[:limit]
        assert run(docs, [{"$sort": {"v": 1}}, {"$limit": limit}]) == expected

    def test_skip_limit(self):
        assert run(NUMBERS, [{"$skip": 4}]) == NUMBERS[4:]
        assert run(NUMBERS, [{"$skip": Int64(1)}, {"$limit": 2.0}]) == NUMBERS[1:3]
        assert error_code([], [{"$limit": 0}]) == 15958
        assert error_code([], [{"$limit": "1"}]) == 15957
        assert error_code([], [{"$limit": 1.5}]) == 15957
        assert error_code([], [{"$skip": -1}]) == 15956
        assert error_code([], [{"$skip": "a"}]) == 15972

    def test_count(self):
        assert run(NUMBERS, [{"$count": "n"}]) == [{"n": 6}]
        assert run([], [{"$count": "n"}]) == []
        assert error_code([], [{"$count": ""}]) == 40156
        assert error_code([], [{"$count": "$n"}]) == 40158
        assert error_code([], [{"$count": "a.b"}]) == 40160

    def test_unwind(self):
        docs = [{"_id": 1, "a": [1, 2]}, {"_id": 2, "a": []}, {"_id": 3, "a": None}, {"_id": 4}, {"_id": 5, "a": 9}]
        assert run(docs, [{"$unwind": "$a"}]) == [{"_id": 1, "a": 1}, {"_id": 1, "a": 2}, {"_id": 5, "a": 9}]
        out = run(docs, [{"$unwind": {"path": "$a", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": True}}])
        assert out == [
            {"_id": 1, "a": 1, "i": Int64(0)}, {"_id": 1, "a": 2, "i": Int64(1)}, {"_id": 2, "i": None},
            {"_id": 3, "a": None, "i": None}, {"_id": 4, "i": None}, {"_id": 5, "a": 9, "i": None},
        ]
        nested = [{"o": {"list": ["x", "y"], "keep": 1}}]
        assert run(nested, [{"$unwind": "$o.list"}]) == [{"o": {"list": "x", "keep": 1}},
                                                         {"o": {"list": "y", "keep": 1}}]
        assert nested[0]["o"]["list"] == ["x", "y"]
        assert error_code([], [{"$unwind": "a"}]) == 28818
        assert error_code([], [{"$unwind": {}}]) == 28812
        assert error_code([], [{"$unwind": {"path": "$a", "bogus": 1}}]) == 28811
        assert error_code([], [{"$unwind": {"path": "$a", "includeArrayIndex": "$i"}}]) == 28822
        assert error_code([], [{"$unwind": {"path": "$a", "preserveNullAndEmptyArrays": 1}}]) == 28809

    def test_sample(self):
        out = run(NUMBERS, [{"$sample": {"size": 3}}])
        assert len(out) == 3 and all(doc in NUMBERS for doc in out)
        assert len({d["_id"] for d in out}) == 3
        assert len(run(NUMBERS, [{"$sample": {"size": 100}}])) == 6
        assert error_code([], [{"$sample": {"size": -1}}]) == 28747
        assert error_code([], [{"$sample": {}}]) == 28749


# --------------------------------------------------------------------------------------------
# $group and accumulators
# --------------------------------------------------------------------------------------------


SALES = [
    {"_id": 1, "item": "a", "price": 10, "qty": 2, "date": datetime.datetime(2021, 1, 1, tzinfo=UTC)},
    {"_id": 2, "item": "b", "price": 20.5, "qty": 1, "date": datetime.datetime(2021, 1, 2, tzinfo=UTC)},
    {"_id": 3, "item": "a", "price": 5, "qty": 10, "date": datetime.datetime(2021, 2, 1, tzinfo=UTC)},
    {"_id": 4, "item": "c", "price": 7, "qty": None, "date": datetime.datetime(2021, 2, 3, tzinfo=UTC)},
    {"_id": 5, "item": "a", "price": 5, "date": datetime.datetime(2021, 3, 1, tzinfo=UTC)},
]


class TestGroup:
    def group(self, spec, docs=SALES):
        return run(docs, [{"$group": spec}])

    def test_basic_accumulators(self):
        out = self.group({
            "_id": "$item", "total": {"$sum": {"$multiply": ["$price", {"$ifNull": ["$qty", 0]}]}},
            "n": {"$sum": 1}, "count": {"$count": {}}, "avg": {"$avg": "$qty"}, "min": {"$min": "$qty"},
            "max": {"$max": "$price"}, "first": {"$first": "$qty"}, "last": {"$last": "$qty"},
            "prices": {"$push": "$price"}, "set": {"$addToSet": "$price"},
        })
        by_id = {doc["_id"]: doc for doc in out}
        assert [doc["_id"] for doc in out] == ["a", "b", "c"]
        a = by_id["a"]
        assert a["total"] == 70 and type(a["total"]) is int
        assert a["n"] == 3 and a["count"] == 3
        assert a["avg"] == 6.0
        assert a["min"] == 2 and a["max"] == 10
        assert a["first"] == 2 and a["last"] is None
        assert a["prices"] == [10, 5, 5] and a["set"] == [10, 5]
        assert by_id["b"]["total"] == 20.5
        assert by_id["c"]["avg"] is None and by_id["c"]["min"] is None

    def test_group_ids(self):
        assert self.group({"_id": None, "n": {"$sum": 1}}) == [{"_id": None, "n": 5}]
        assert self.group({"_id": "$missing", "n": {"$sum": 1}}) == [{"_id": None, "n": 5}]
        out = self.group({"_id": {"m": {"$month": "$date"}, "item": "$item"}, "n": {"$sum": 1}})
        assert out[0] == {"_id": {"m": 1, "item": "a"}, "n": 1}
        assert len(out) == 5
        assert self.group({"_id": None}, []) == []

    def test_numeric_ids_group_across_types(self):
        docs = [{"k": 1}, {"k": 1.0}, {"k": Int64(1)}, {"k": "1"}]
        out = self.group({"_id": "$k", "n": {"$sum": 1}}, docs)
        assert out == [{"_id": 1, "n": 3}, {"_id": "1", "n": 1}]

    def test_collation_groups_strings(self):
        ctx = FakeContext(collation=parse_collation({"locale": "en", "strength": 2}))
        out = run([{"k": "a"}, {"k": "A"}], [{"$group": {"_id": "$k", "n": {"$sum": 1}}}], ctx)
        assert out == [{"_id": "a", "n": 2}]

    def test_sum_types(self):
        docs = [{"v": 2**31 - 1}, {"v": 1}]
        assert self.group({"_id": None, "s": {"$sum": "$v"}}, docs)[0]["s"] == Int64(2**31)
        docs = [{"v": Int64(1)}, {"v": 2}, {"v": "x"}, {"v": [5]}]
        assert self.group({"_id": None, "s": {"$sum": "$v"}}, docs)[0]["s"] == Int64(3)
        assert self.group({"_id": None, "s": {"$sum": "$nothing"}})[0]["s"] == 0

    def test_merge_objects_and_std_dev(self):
        docs = [{"g": 1, "o": {"a": 1}, "v": 2}, {"g": 1, "o": {"b": 2}, "v": 4}, {"g": 1, "o": None, "v": "x"}]
        out = self.group({"_id": "$g", "o": {"$mergeObjects": "$o"}, "pop": {"$stdDevPop": "$v"},
                          "samp": {"$stdDevSamp": "$v"}}, docs)[0]
        assert out["o"] == {"a": 1, "b": 2}
        assert out["pop"] == pytest.approx(1.0)
        assert out["samp"] == pytest.approx(2 ** 0.5)

    def test_top_bottom_and_n_accumulators(self):
        out = self.group({
            "_id": "$item",
            "top": {"$top": {"sortBy": {"price": -1}, "output": "$_id"}},
            "bottom": {"$bottom": {"sortBy": {"price": -1}, "output": ["$_id", "$price"]}},
            "topN": {"$topN": {"n": 2, "sortBy": {"_id": -1}, "output": "$_id"}},
            "bottomN": {"$bottomN": {"n": 2, "sortBy": {"_id": -1}, "output": "$_id"}},
            "firstN": {"$firstN": {"n": 2, "input": "$qty"}},
            "lastN": {"$lastN": {"n": 2, "input": "$qty"}},
            "maxN": {"$maxN": {"n": 2, "input": "$qty"}},
            "minN": {"$minN": {"n": {"$cond": [{"$eq": ["$_id", "a"]}, 1, 2]}, "input": "$qty"}},
        })[0]
        assert out["top"] == 1
        assert out["bottom"][1] == 5
        assert out["topN"] == [5, 3]
        assert out["bottomN"] == [3, 1]
        assert out["firstN"] == [2, 10]
        assert out["lastN"] == [10, None]
        assert out["maxN"] == [10, 2]
        assert out["minN"] == [2]

    def test_group_errors(self):
        assert error_code([], [{"$group": {"n": {"$sum": 1}}}]) == 15955
        assert error_code([], [{"$group": {"_id": None, "n": 1}}]) == 40234
        assert error_code([], [{"$group": {"_id": None, "n": {"$sum": 1, "$avg": 1}}}]) == 40238
        assert error_code([], [{"$group": {"_id": None, "n": {"$foo": 1}}}]) == 15952
        assert error_code([], [{"$group": {"_id": None, "a.b": {"$sum": 1}}}]) == 40235
        assert error_code([], [{"$group": []}]) == 15947
        assert error_code([], [{"$group": {"_id": None, "n": {"$count": {"x": 1}}}}]) == 40181
        assert error_code([{"a": 1}], [{"$group": {"_id": None, "t": {"$topN": {"n": 0, "sortBy": {"a": 1},
                                                                                  "output": "$a"}}}}]) == 5787908

    def test_sort_by_count(self):
        out = run(SALES, [{"$sortByCount": "$item"}])
        assert out == [{"_id": "a", "count": 3}, {"_id": "b", "count": 1}, {"_id": "c", "count": 1}]
        assert error_code([], [{"$sortByCount": "item"}]) == 40148


# --------------------------------------------------------------------------------------------
# $facet, $bucket, $bucketAuto
# --------------------------------------------------------------------------------------------


class TestFacetAndBuckets:
    def test_facet(self):
        out = run(SALES, [{"$facet": {
            "count": [{"$count": "n"}],
            "cheap": [{"$match": {"price": {"$lt": 8}}}, {"$project": {"_id": 1}}],
        }}])
        assert out == [{"count": [{"n": 5}], "cheap": [{"_id": 3}, {"_id": 4}, {"_id": 5}]}]
        assert run([], [{"$facet": {"a": [{"$match": {}}]}}]) == [{"a": []}]
        assert error_code([], [{"$facet": {}}]) == 40169
        assert error_code([], [{"$facet": {"a": {}}}]) == 40170
        assert error_code([], [{"$facet": {"a": []}}]) == 40171

    def test_bucket(self):
        out = run(SALES, [{"$bucket": {"groupBy": "$price", "boundaries": [0, 10, 20], "default": "other",
                                       "output": {"n": {"$sum": 1}, "ids": {"$push": "$_id"}}}}])
        assert out == [{"_id": 0, "n": 3, "ids": [3, 4, 5]}, {"_id": 10, "n": 1, "ids": [1]},
                       {"_id": "other", "n": 1, "ids": [2]}]
        assert run(SALES, [{"$bucket": {"groupBy": "$qty", "boundaries": [0, 100], "default": -1}}]) == [
            {"_id": -1, "count": 2}, {"_id": 0, "count": 3}]

    def test_bucket_errors(self):
        assert error_code(SALES, [{"$bucket": {"groupBy": "$price", "boundaries": [0, 10]}}]) == 40066
        assert error_code([], [{"$bucket": {"groupBy": "$p", "boundaries": [0]}}]) == 40192
        assert error_code([], [{"$bucket": {"groupBy": "$p", "boundaries": [5, 1]}}]) == 40194
        assert error_code([], [{"$bucket": {"groupBy": "$p", "boundaries": [1, "a"]}}]) == 40193
        assert error_code([], [{"$bucket": {"groupBy": "$p", "boundaries": [1, 5], "default": 3}}]) == 40199
        assert error_code([], [{"$bucket": {"groupBy": "p", "boundaries": [1, 5]}}]) == 40202
        assert error_code([], [{"$bucket": {"groupBy": "$p"}}]) == 40198

    def test_bucket_auto(self):
        docs = [{"v": v} for v in range(10)]
        out = run(docs, [{"$bucketAuto": {"groupBy": "$v", "buckets": 3}}])
        assert out == [{"_id": {"min": 0, "max": 3}, "count": 3}, {"_id": {"min": 3, "max": 6}, "count": 3},
                       {"_id": {"min": 6, "max": 9}, "count": 4}]
        # Equal values never straddle two buckets.
        docs = [{"v": v} for v in (1, 1, 1, 1, 2, 3)]
        out = run(docs, [{"$bucketAuto": {"groupBy": "$v", "buckets": 3, "output": {"vals": {"$push": "$v"}}}}])
        assert [bucket["vals"] for bucket in out] == [[1, 1, 1, 1], [2, 3]]
        assert run([], [{"$bucketAuto": {"groupBy": "$v", "buckets": 2}}]) == []
        assert len(run([{"v": 1}], [{"$bucketAuto": {"groupBy": "$v", "buckets": 5}}])) == 1

    def test_bucket_auto_granularity(self):
        docs = [{"v": v} for v in range(1, 11)]
        out = run(docs, [{"$bucketAuto": {"groupBy": "$v", "buckets": 3, "granularity": "1-2-5"}}])
        assert [bucket["_id"] for bucket in out] == [{"min": 0.5, "max": 5.0}, {"min": 5.0, "max": 10.0},
                                                     {"min": 10.0, "max": 20.0}]
        assert [bucket["count"] for bucket in out] == [4, 5, 1]
        out = run(docs, [{"$bucketAuto": {"groupBy": "$v", "buckets": 2, "granularity": "POWERSOF2"}}])
        assert [bucket["_id"] for bucket in out] == [{"min": 0.5, "max": 8.0}, {"min": 8.0, "max": 16.0}]
        bucket_auto = {"$bucketAuto": {"groupBy": "$v", "buckets": 2, "granularity": "R5"}}
        assert error_code([{"v": "x"}], [bucket_auto]) == 40258
        assert error_code([], [{"$bucketAuto": {"groupBy": "$v", "buckets": 2, "granularity": "R7"}}]) == 40257
        assert error_code([], [{"$bucketAuto": {"groupBy": "$v", "buckets": 0}}]) == 40243


# --------------------------------------------------------------------------------------------
# $lookup, $graphLookup, $unionWith
# --------------------------------------------------------------------------------------------


ORDERS = [{"_id": 1, "item": "almonds", "qty": 2}, {"_id": 2, "item": "pecans", "qty": 1},
          {"_id": 3, "tags": ["almonds", "cashews"]}, {"_id": 4}]
INVENTORY = [{"_id": 1, "sku": "almonds", "stock": 120}, {"_id": 2, "sku": "bread", "stock": 80},
             {"_id": 3, "sku": "cashews", "stock": 60}, {"_id": 4, "sku": ["pecans", "walnuts"], "stock": 5},
             {"_id": 5, "sku": None}, {"_id": 6}]


class TestJoins:
    def ctx(self) -> FakeContext:
        return FakeContext({("db", "inventory"): INVENTORY, ("other", "inventory"): INVENTORY[:1]})

    def test_lookup_local_foreign(self):
        ctx = self.ctx()
        out = run(ORDERS, [{"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku",
                                        "as": "docs"}}], ctx)
        ids = [[doc["_id"] for doc in order["docs"]] for order in out]
        assert ids == [[1], [4], [5, 6], [5, 6]]
        assert ctx.reads == [("db", "inventory")]  # read once per run

    def test_lookup_array_local_field_and_namespace(self):
        ctx = self.ctx()
        out = run(ORDERS[2:3], [{"$lookup": {"from": "inventory", "localField": "tags", "foreignField": "sku",
                                             "as": "docs"}}], ctx)
        assert [doc["_id"] for doc in out[0]["docs"]] == [1, 3]
        out = run(ORDERS[:1], [{"$lookup": {"from": {"db": "other", "coll": "inventory"}, "localField": "item",
                                            "foreignField": "sku", "as": "x.docs"}}], ctx)
        assert out[0]["x"]["docs"] == INVENTORY[:1]

    def test_lookup_with_collation(self):
        ctx = FakeContext({("db", "inventory"): INVENTORY},
                          collation=parse_collation({"locale": "en", "strength": 2}))
        out = run([{"item": "ALMONDS"}], [{"$lookup": {"from": "inventory", "localField": "item",
                                                       "foreignField": "sku", "as": "d"}}], ctx)
        assert [doc["_id"] for doc in out[0]["d"]] == [1]

    def test_lookup_pipeline_with_let(self):
        pipeline = [{"$lookup": {
            "from": "inventory", "let": {"want": "$qty"},
            "pipeline": [{"$match": {"$expr": {"$gte": ["$stock", {"$multiply": ["$$want", 60]}]}}},
                         {"$project": {"_id": 1}}],
            "as": "enough"}}]
        out = run(ORDERS[:2], pipeline, self.ctx())
        assert out[0]["enough"] == [{"_id": 1}]
        assert out[1]["enough"] == [{"_id": 1}, {"_id": 2}, {"_id": 3}]

    def test_lookup_combined_and_documents(self):
        pipeline = [{"$lookup": {"from": "inventory", "localField": "item", "foreignField": "sku",
                                 "pipeline": [{"$project": {"stock": 1, "_id": 0}}], "as": "s"}}]
        assert run(ORDERS[:1], pipeline, self.ctx())[0]["s"] == [{"stock": 120}]
        docs_pipeline = [{"$lookup": {"pipeline": [{"$documents": [{"k": "$$v"}]}], "let": {"v": "$_id"},
                                      "as": "made"}}]
        assert run([{"_id": 7}], docs_pipeline, FakeContext())[0]["made"] == [{"k": 7}]

    def test_lookup_errors(self):
        assert error_code([], [{"$lookup": {"from": "x", "localField": "a", "foreignField": "b"}}]) == 9
        assert error_code([], [{"$lookup": {"from": "x", "localField": "a", "as": "b"}}]) == 9
        assert error_code([], [{"$lookup": {"localField": "a", "foreignField": "a", "as": "b"}}]) == 9
        assert error_code([], [{"$lookup": {"from": "x", "as": "b", "bogus": 1}}]) == 9
        assert error_code([], [{"$lookup": {"from": "x", "as": "b"}}]) == 9

    def test_graph_lookup(self):
        employees = [{"_id": 1, "name": "Dev"}, {"_id": 2, "name": "Eliot", "reportsTo": "Dev"},
                     {"_id": 3, "name": "Ron", "reportsTo": "Eliot"},
                     {"_id": 4, "name": "Andrew", "reportsTo": "Eliot"},
                     {"_id": 5, "name": "Asya", "reportsTo": "Ron"}, {"_id": 6, "name": "Dan", "reportsTo": "Andrew"}]
        ctx = FakeContext({("db", "employees"): employees})
        stage = {"$graphLookup": {"from": "employees", "startWith": "$reportsTo", "connectFromField": "reportsTo",
                                  "connectToField": "name", "as": "chain", "depthField": "depth"}}
        out = run([employees[4]], [stage], ctx)[0]
        assert [(doc["name"], doc["depth"]) for doc in out["chain"]] == [
            ("Ron", Int64(0)), ("Eliot", Int64(1)), ("Dev", Int64(2))]
        limited = dict(stage["$graphLookup"], maxDepth=0)
        assert [doc["name"] for doc in run([employees[4]], [{"$graphLookup": limited}], ctx)[0]["chain"]] == ["Ron"]
        restricted = dict(stage["$graphLookup"], restrictSearchWithMatch={"name": {"$ne": "Eliot"}})
        assert [doc["name"] for doc in run([employees[4]], [{"$graphLookup": restricted}], ctx)[0]["chain"]] == ["Ron"]
        assert run([employees[0]], [stage], ctx)[0]["chain"] == []
        assert error_code([], [{"$graphLookup": {"from": "e"}}], ctx) == 40105
        assert error_code([], [{"$graphLookup": dict(stage["$graphLookup"], maxDepth=-1)}], ctx) == 40101

    def test_graph_lookup_cycles_terminate(self):
        nodes = [{"_id": "a", "next": "b"}, {"_id": "b", "next": "a"}]
        ctx = FakeContext({("db", "nodes"): nodes})
        stage = {"$graphLookup": {"from": "nodes", "startWith": "$next", "connectFromField": "next",
                                  "connectToField": "_id", "as": "reach"}}
        assert {doc["_id"] for doc in run(nodes[:1], [stage], ctx)[0]["reach"]} == {"a", "b"}

    def test_union_with(self):
        ctx = self.ctx()
        out = run([{"_id": "x"}], [{"$unionWith": "inventory"}], ctx)
        assert [doc["_id"] for doc in out] == ["x", 1, 2, 3, 4, 5, 6]
        out = run([{"_id": "x"}], [{"$unionWith": {"coll": "inventory", "pipeline": [{"$match": {"stock": {"$gt": 70}}},
                                                                                      {"$project": {"_id": 1}}]}}], ctx)
        assert out == [{"_id": "x"}, {"_id": 1}, {"_id": 2}]
        out = run([], [{"$unionWith": {"pipeline": [{"$documents": [{"a": 1}]}]}}], ctx)
        assert out == [{"a": 1}]
        assert error_code([], [{"$unionWith": {"pipeline": []}}], ctx) == 40414


# --------------------------------------------------------------------------------------------
# $redact, $documents, $out, $merge
# --------------------------------------------------------------------------------------------


class TestMiscStages:
    def test_redact(self):
        doc = {"_id": 1, "level": 1, "sub": {"level": 5, "secret": True},
               "items": [{"level": 1, "x": 1}, {"level": 9}, 3, [{"level": 9}]]}
        expr = {"$cond": [{"$lte": [{"$ifNull": ["$level", 0]}, 2]}, "$$DESCEND", "$$PRUNE"]}
        assert run([doc], [{"$redact": expr}]) == [{"_id": 1, "level": 1, "items": [{"level": 1, "x": 1}, 3, []]}]
        assert run([doc], [{"$redact": "$$KEEP"}]) == [doc]
        assert run([doc], [{"$redact": "$$PRUNE"}]) == []
        assert error_code([doc], [{"$redact": 1}]) == 17053

    def test_documents(self):
        assert run([{"ignored": 1}], [{"$documents": [{"a": 1}, {"a": {"$add": [1, 1]}}]}]) == [{"a": 1}, {"a": 2}]
        now = datetime.datetime(2020, 1, 1, tzinfo=UTC)
        assert run([], [{"$documents": [{"t": "$$NOW"}]}], FakeContext(now=now)) == [{"t": now}]
        assert error_code([], [{"$documents": 5}]) == 5858203

    def test_now_and_cluster_time_are_pinned_by_the_context(self):
        now = datetime.datetime(2021, 5, 5, tzinfo=UTC)
        ctx = FakeContext(now=now, cluster_time=Timestamp(10, 1))
        out = run([{"a": 1}, {"a": 2}], [{"$addFields": {"now": "$$NOW", "ct": "$$CLUSTER_TIME"}}], ctx)
        assert [(d["now"], d["ct"]) for d in out] == [(now, Timestamp(10, 1))] * 2
        assert error_code([{"a": 1}], [{"$addFields": {"ct": "$$CLUSTER_TIME"}}]) == 51144

    def test_out_forms(self):
        ctx = FakeContext()
        run([{"a": 1}], [{"$out": {"db": "other", "coll": "target"}}], ctx)
        assert ctx.writes == [("out", "other", "target", [{"a": 1}])]
        assert error_code([], [{"$out": 5}], ctx) == 16990
        assert error_code([], [{"$out": {"coll": "x"}}], ctx) == 40414

    def test_out_copies_documents(self):
        ctx = FakeContext()
        source = [{"a": {"b": 1}}]
        run(source, [{"$out": "t"}], ctx)
        written = ctx.writes[0][3]
        written[0]["a"]["b"] = 2
        assert source[0]["a"]["b"] == 1

    def test_merge_options(self):
        ctx = FakeContext()
        pipeline = [{"$merge": {"into": {"db": "d2", "coll": "c2"}, "on": ["a", "b"],
                                "whenMatched": [{"$set": {"n": "$$new.n"}}], "whenNotMatched": "discard",
                                "let": {"new": "$$ROOT"}}}]
        run([{"a": 1, "b": 2, "n": 3}], pipeline, ctx)
        assert ctx.writes[0][1:] == ("d2", "c2", [{"a": 1, "b": 2, "n": 3}], ["a", "b"],
                                     [{"$set": {"n": "$$new.n"}}], "discard", {"new": "$$ROOT"})

    def test_merge_errors(self):
        assert error_code([], [{"$merge": {}}], FakeContext()) == 40414
        assert error_code([], [{"$merge": {"into": "x", "whenMatched": "bogus"}}], FakeContext()) == 2
        assert error_code([], [{"$merge": {"into": "x", "whenNotMatched": "bogus"}}], FakeContext()) == 2
        assert error_code([], [{"$merge": {"into": "x", "on": 5}}], FakeContext()) == 51186
        assert error_code([], [{"$merge": {"into": "x", "let": {"a": 1}}}], FakeContext()) == 51199
        assert error_code([], [{"$merge": {"into": "x", "whenMatched": [{"$match": {}}]}}], FakeContext()) == 51187
        assert error_code([], [{"$merge": {"into": "x", "extra": 1}}], FakeContext()) == 40415

    def test_apply_merge_pipeline(self):
        existing = {"_id": 1, "total": 5, "keep": True}
        incoming = {"_id": 1, "total": 3}
        merged = apply_merge_pipeline(existing, incoming, [{"$set": {"total": {"$add": ["$total", "$$new.total"]}}}],
                                      None)
        assert merged == {"_id": 1, "total": 8, "keep": True}
        custom = apply_merge_pipeline(existing, incoming, [{"$set": {"delta": "$$d"}}], {"d": "$total"})
        assert custom["delta"] == 3


# --------------------------------------------------------------------------------------------
# $setWindowFields, $fill, $densify
# --------------------------------------------------------------------------------------------


READINGS = [
    {"_id": 1, "s": "a", "t": 1, "v": 10},
    {"_id": 2, "s": "a", "t": 2, "v": 20},
    {"_id": 3, "s": "a", "t": 2, "v": 30},
    {"_id": 4, "s": "a", "t": 5, "v": 40},
    {"_id": 5, "s": "b", "t": 1, "v": 5},
]


class TestWindows:
    def windows(self, output, sort_by=None, partition="$s", docs=READINGS):
        spec: dict = {"output": output}
        if partition is not None:
            spec["partitionBy"] = partition
        if sort_by is not None:
            spec["sortBy"] = sort_by
        return run(docs, [{"$setWindowFields": spec}])

    def test_cumulative_and_whole_partition(self):
        out = self.windows({"cum": {"$sum": "$v", "window": {"documents": ["unbounded", "current"]}},
                            "total": {"$sum": "$v"}, "avg": {"$avg": "$v"}, "n": {"$count": {}},
                            "max": {"$max": "$v"}, "all": {"$push": "$_id"}}, sort_by={"t": 1})
        assert [d["cum"] for d in out] == [10, 30, 60, 100, 5]
        assert [d["total"] for d in out] == [100, 100, 100, 100, 5]
        assert [d["n"] for d in out] == [4, 4, 4, 4, 1]
        assert out[0]["avg"] == 25.0 and out[4]["max"] == 5
        assert out[0]["all"] == [1, 2, 3, 4]

    def test_moving_documents_window(self):
        out = self.windows({"m": {"$avg": "$v", "window": {"documents": [-1, 1]}}}, sort_by={"_id": 1})
        assert [d["m"] for d in out] == [15.0, 20.0, 30.0, 35.0, 5.0]

    def test_range_window(self):
        out = self.windows({"r": {"$sum": "$v", "window": {"range": [-1, 0]}}}, sort_by={"t": 1})
        assert [d["r"] for d in out] == [10, 60, 60, 40, 5]
        out = self.windows({"r": {"$push": "$_id", "window": {"range": ["current", "unbounded"]}}}, sort_by={"t": 1})
        assert out[1]["r"] == [2, 3, 4]

    def test_range_window_with_time_unit(self):
        base = datetime.datetime(2021, 1, 1, tzinfo=UTC)
        docs = [{"d": base + datetime.timedelta(hours=h), "v": 1} for h in (0, 1, 5)]
        out = run(docs, [{"$setWindowFields": {"sortBy": {"d": 1}, "output": {
            "n": {"$sum": "$v", "window": {"range": [-2, 0], "unit": "hour"}}}}}])
        assert [d["n"] for d in out] == [1, 2, 1]

    def test_rank_functions(self):
        out = self.windows({"rank": {"$rank": {}}, "dense": {"$denseRank": {}}, "num": {"$documentNumber": {}}},
                           sort_by={"t": 1})
        assert [(d["rank"], d["dense"], d["num"]) for d in out] == [(1, 1, 1), (2, 2, 2), (2, 2, 3), (4, 3, 4),
                                                                    (1, 1, 1)]

    def test_shift_and_locf(self):
        out = self.windows({"prev": {"$shift": {"output": "$v", "by": -1, "default": "none"}}}, sort_by={"_id": 1})
        assert [d["prev"] for d in out] == ["none", 10, 20, 30, "none"]
        docs = [{"t": 1, "v": 1}, {"t": 2, "v": None}, {"t": 3}, {"t": 4, "v": 4}]
        out = run(docs, [{"$setWindowFields": {"sortBy": {"t": 1}, "output": {"v": {"$locf": "$v"}}}}])
        assert [d["v"] for d in out] == [1, 1, 1, 4]

    def test_window_errors(self):
        assert error_code([], [{"$setWindowFields": {"output": {"r": {"$rank": {}}}}}]) == 5371602
        assert error_code([], [{"$setWindowFields": {"output": {"r": {"$bogus": {}}}}}]) == 5397900
        assert error_code([], [{"$setWindowFields": {"output": {
            "r": {"$sum": 1, "window": {"documents": [-1, 0]}}}}}]) == 5339901
        assert error_code([], [{"$setWindowFields": {"sortBy": {"a": 1, "b": 1}, "output": {
            "r": {"$sum": 1, "window": {"range": [-1, 0]}}}}}]) == 5339902
        assert error_code([], [{"$setWindowFields": {"sortBy": {"a": 1}, "output": {
            "r": {"$sum": 1, "window": {"documents": [1, 0]}}}}}]) == 5339900
        assert error_code([], [{"$setWindowFields": {}}]) == 40414
        assert error_code([{"a": "x"}], [{"$setWindowFields": {"sortBy": {"a": 1}, "output": {
            "r": {"$sum": 1, "window": {"range": [-1, 0]}}}}}]) == 5429414

    def test_fill(self):
        docs = [{"_id": 1, "g": "x", "t": 1, "v": 1, "w": None}, {"_id": 2, "g": "x", "t": 2, "w": 5},
                {"_id": 3, "g": "x", "t": 3, "v": 3}, {"_id": 4, "g": "y", "t": 1}]
        out = run(docs, [{"$fill": {"partitionByFields": ["g"], "sortBy": {"t": 1},
                                    "output": {"v": {"method": "linear"}, "w": {"value": 0}}}}])
        assert [(d["_id"], d["v"], d["w"]) for d in out] == [(1, 1, 0), (2, 2.0, 5), (3, 3, 0), (4, None, 0)]
        out = run(docs, [{"$fill": {"sortBy": {"t": 1}, "partitionBy": "$g", "output": {"v": {"method": "locf"}}}}])
        assert [d["v"] for d in out] == [1, 1, 3, None]
        assert error_code([], [{"$fill": {"output": {"v": {"method": "locf"}}}}]) == 6050203
        assert error_code([], [{"$fill": {"partitionBy": "$a", "partitionByFields": ["a"],
                                          "output": {"v": {"value": 1}}}}]) == 6050204

    def test_densify(self):
        docs = [{"k": "a", "t": 0}, {"k": "a", "t": 5}, {"k": "b", "t": 2}, {"other": 1}]
        out = run(docs, [{"$densify": {"field": "t", "partitionByFields": ["k"],
                                       "range": {"step": 2, "bounds": "partition"}}}])
        assert out == [{"other": 1}, {"k": "a", "t": 0}, {"k": "a", "t": 2}, {"k": "a", "t": 4}, {"k": "a", "t": 5},
                       {"k": "b", "t": 2}]
        out = run(docs[:3], [{"$densify": {"field": "t", "partitionByFields": ["k"],
                                           "range": {"step": 2, "bounds": "full"}}}])
        assert [(d["k"], d["t"]) for d in out] == [("a", 0), ("a", 2), ("a", 4), ("a", 5), ("b", 0), ("b", 2),
                                                   ("b", 4)]
        out = run([{"t": 3}], [{"$densify": {"field": "t", "range": {"step": 1, "bounds": [0, 3]}}}])
        assert [d["t"] for d in out] == [0, 1, 2, 3]

    def test_densify_dates(self):
        start = datetime.datetime(2021, 1, 31, tzinfo=UTC)
        docs = [{"d": start}, {"d": datetime.datetime(2021, 4, 30, tzinfo=UTC)}]
        out = run(docs, [{"$densify": {"field": "d", "range": {"step": 1, "unit": "month", "bounds": "full"}}}])
        assert [d["d"].date().isoformat() for d in out] == ["2021-01-31", "2021-02-28", "2021-03-31", "2021-04-30"]
        assert error_code([{"d": 1}], [{"$densify": {"field": "d", "range": {"step": 1, "unit": "day",
                                                                             "bounds": "full"}}}]) == 6053600


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


class TestProperties:
    def test_input_documents_are_never_modified(self):
        import copy

        docs = [{"_id": 1, "a": {"b": [1, {"c": 2}]}, "l": [{"k": 1}, {"k": 2}]}, {"_id": 2, "a": None}]
        before = copy.deepcopy(docs)
        ctx = FakeContext({("db", "f"): [{"k": 1, "n": {"deep": 1}}]})
        run(docs, [
            {"$addFields": {"a.b.x": 1, "a.new": "$_id"}},
            {"$unwind": {"path": "$l", "preserveNullAndEmptyArrays": True}},
            {"$lookup": {"from": "f", "localField": "l.k", "foreignField": "k", "as": "l.joined"}},
            {"$set": {"l.joined.n.deep": 2}},
            {"$project": {"a.b": 0}},
        ], ctx)
        assert docs == before
        assert ctx.collections[("db", "f")] == [{"k": 1, "n": {"deep": 1}}]

    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(-1000, 1000)), max_size=40))
    @settings(max_examples=50, deadline=None)
    def test_group_sum_matches_python(self, rows):
        docs = [{"g": g, "v": v} for g, v in rows]
        out = run(docs, [{"$group": {"_id": "$g", "total": {"$sum": "$v"}, "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}])
        expected = {}
        for g, v in rows:
            total, count = expected.get(g, (0, 0))
            expected[g] = (total + v, count + 1)
        assert [(d["_id"], d["total"], d["n"]) for d in out] == [(g, *expected[g]) for g in sorted(expected)]

    @given(st.integers(0, 12), st.integers(1, 12))
    @settings(max_examples=50, deadline=None)
    def test_skip_limit_is_slicing(self, skip, limit):
        assert run(NUMBERS, [{"$skip": skip}, {"$limit": limit}]) == NUMBERS[skip:skip + limit]
