"""``find`` projection semantics (MongoDB 4.4+)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu.bsonvalues import MISSING
from mongoemu.errors import CommandError
from mongoemu.query import projection as projection_module
from mongoemu.query.matcher import Matcher
from mongoemu.query.projection import Projection

DOC: dict[str, Any] = {
    "_id": 1,
    "name": "n",
    "size": {"h": 10, "w": 20, "uom": "cm"},
    "tags": ["a", "b", "c", "d"],
    "items": [{"k": 1, "v": "x"}, {"k": 2, "v": "y"}, 5, [{"k": 3, "v": "z"}]],
    "z": 0,
}


def project(spec: dict[str, Any] | None, doc: dict[str, Any] = DOC, position: int | None = None) -> dict[str, Any]:
    return Projection(spec).apply(doc, position)


def error(spec: dict[str, Any]) -> CommandError:
    with pytest.raises(CommandError) as info:
        Projection(spec)
    return info.value


class TestInclusion:
    def test_includes_listed_fields_in_document_order_with_id(self) -> None:
        out = project({"z": 1, "name": 1})
        assert out == {"_id": 1, "name": "n", "z": 0}
        assert list(out) == ["_id", "name", "z"]

    def test_id_can_be_suppressed(self) -> None:
        assert project({"name": 1, "_id": 0}) == {"name": "n"}
        assert project({"_id": 1}) == {"_id": 1}

    def test_truthy_values_include(self) -> None:
        assert project({"name": True, "z": 5}) == {"_id": 1, "name": "n", "z": 0}

    def test_dotted_paths_into_sub_documents(self) -> None:
        assert project({"size.h": 1, "size.uom": 1}) == {"_id": 1, "size": {"h": 10, "uom": "cm"}}
        assert project({"size": {"w": 1}}) == {"_id": 1, "size": {"w": 20}}
        assert project({"size.nope": 1}) == {"_id": 1, "size": {}}
        assert project({"name.x": 1}) == {"_id": 1}

    def test_dotted_paths_into_arrays_drop_scalars(self) -> None:
        assert project({"items.k": 1}) == {"_id": 1, "items": [{"k": 1}, {"k": 2}, [{"k": 3}]]}

    def test_missing_fields_are_omitted(self) -> None:
        assert project({"nope": 1}) == {"_id": 1}

    def test_result_is_new_but_shares_unprojected_values(self) -> None:
        out = project({"size": 1})
        assert out is not DOC and out["size"] is DOC["size"]


class TestExclusion:
    def test_excludes_listed_fields(self) -> None:
        out = project({"tags": 0, "items": 0, "size.w": 0})
        assert out == {"_id": 1, "name": "n", "size": {"h": 10, "uom": "cm"}, "z": 0}
        assert list(out) == ["_id", "name", "size", "z"]

    def test_id_only(self) -> None:
        assert "_id" not in project({"_id": 0})
        assert project({"_id": 0, "tags": 0, "items": 0, "size": 0}) == {"name": "n", "z": 0}

    def test_id_included_explicitly_in_exclusion(self) -> None:
        assert project({"_id": 1, "name": 0, "size": 0, "tags": 0, "items": 0}) == {"_id": 1, "z": 0}

    def test_dotted_exclusion_into_arrays_keeps_scalars(self) -> None:
        out = project({"items.v": 0})
        assert out["items"] == [{"k": 1}, {"k": 2}, 5, [{"k": 3}]]

    def test_input_is_not_modified(self) -> None:
        doc = {"_id": 1, "a": {"b": 1, "c": 2}}
        Projection({"a.b": 0}).apply(doc)
        assert doc == {"_id": 1, "a": {"b": 1, "c": 2}}


class TestErrors:
    def test_mixing_inclusion_and_exclusion(self) -> None:
        exc = error({"a": 1, "b": 0})
        assert exc.code == 31254
        assert exc.errmsg == "Cannot do exclusion on field b in inclusion projection"
        exc = error({"a": 0, "b": 1})
        assert exc.code == 31253
        assert exc.errmsg == "Cannot do inclusion on field b in exclusion projection"

    def test_expression_in_exclusion(self) -> None:
        assert error({"a": 0, "b": "$x"}).code == 31252

    def test_path_collisions(self) -> None:
        assert error({"a": 1, "a.b": 1}).code == 31250
        assert error({"a.b": 1, "a": 1}).code == 31250

    def test_invalid_field_names_and_values(self) -> None:
        assert error({"$a": 1}).code == 16410
        assert error({"a..b": 1}).code == 40352
        assert error({"a": {}}).code == 51270
        assert error({"a.$.b": 1}).code == 31394
        assert error({"a.$": 1, "b.$": 1}).code == 31276
        assert error({"a.$": 0}).code == 31395
        assert error({"a": {"$slice": "x"}}).code == 28667
        assert error({"a": {"$slice": [1, 0]}}).code == 28724
        assert error({"a.b": {"$elemMatch": {"x": 1}}}).code == 31275
        assert error({"a": {"$meta": "nope"}}).code == 17308
        with pytest.raises(CommandError):
            Projection([("a", 1)])  # type: ignore[arg-type]


class TestSlice:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            (2, ["a", "b"]),
            (-2, ["c", "d"]),
            (0, []),
            (10, ["a", "b", "c", "d"]),
            (-10, ["a", "b", "c", "d"]),
            ([1, 2], ["b", "c"]),
            ([-3, 2], ["b", "c"]),
            ([-10, 2], ["a", "b"]),
            ([5, 2], []),
        ],
    )
    def test_slice_forms(self, spec: Any, expected: list[str]) -> None:
        assert project({"tags": {"$slice": spec}})["tags"] == expected

    def test_slice_alone_is_an_exclusion(self) -> None:
        out = project({"tags": {"$slice": 1}})
        assert out == {**DOC, "tags": ["a"]}

    def test_slice_with_inclusion(self) -> None:
        assert project({"tags": {"$slice": 1}, "name": 1}) == {"_id": 1, "name": "n", "tags": ["a"]}

    def test_slice_with_exclusion(self) -> None:
        out = project({"tags": {"$slice": -1}, "items": 0})
        assert out == {"_id": 1, "name": "n", "size": DOC["size"], "tags": ["d"], "z": 0}

    def test_slice_on_nested_and_non_arrays(self) -> None:
        doc = {"_id": 1, "a": [{"b": [1, 2, 3]}, {"b": [4, 5]}], "s": "x"}
        assert Projection({"a.b": {"$slice": 1}}).apply(doc)["a"] == [{"b": [1]}, {"b": [4]}]
        assert Projection({"s": {"$slice": 1}}).apply(doc)["s"] == "x"


class TestElemMatch:
    DOC = {"_id": 1, "zip": "x", "students": [{"name": "a", "school": 102, "age": 10},
                                             {"name": "b", "school": 102, "age": 11},
                                             {"name": "c", "school": 101, "age": 12}]}

    def test_first_matching_element_only(self) -> None:
        out = Projection({"students": {"$elemMatch": {"school": 102}}}).apply(self.DOC)
        assert out == {"_id": 1, "students": [self.DOC["students"][0]]}

    def test_no_match_omits_the_field(self) -> None:
        out = Projection({"students": {"$elemMatch": {"school": 999}}}).apply(self.DOC)
        assert out == {"_id": 1}
        assert Projection({"zip": {"$elemMatch": {"a": 1}}}).apply(self.DOC) == {"_id": 1}

    def test_result_follows_other_included_fields(self) -> None:
        out = Projection({"students": {"$elemMatch": {"age": {"$gt": 10}}}, "zip": 1}).apply(self.DOC)
        assert list(out) == ["_id", "zip", "students"]
        assert out["students"] == [self.DOC["students"][1]]

    def test_value_form(self) -> None:
        doc = {"_id": 1, "scores": [70, 85, 90]}
        out = Projection({"scores": {"$elemMatch": {"$gt": 80}}}).apply(doc)
        assert out == {"_id": 1, "scores": [85]}

    def test_with_exclusion(self) -> None:
        out = Projection({"students": {"$elemMatch": {"age": 12}}, "zip": 0}).apply(self.DOC)
        assert out == {"_id": 1, "students": [self.DOC["students"][2]]}


class TestPositional:
    DOC = {"_id": 1, "grades": [80, 85, 90], "other": 1,
           "nested": {"list": [{"v": 1}, {"v": 2}]}}

    def test_uses_the_matched_position(self) -> None:
        matched, position = Matcher({"grades": {"$gte": 85}}).matches_with_position(self.DOC)
        assert matched and position == 1
        out = Projection({"grades.$": 1}).apply(self.DOC, position)
        assert out == {"_id": 1, "grades": [85]}

    def test_nested_array_path(self) -> None:
        matched, position = Matcher({"nested.list.v": 2}).matches_with_position(self.DOC)
        out = Projection({"nested.list.$": 1}).apply(self.DOC, position)
        assert out == {"_id": 1, "nested": {"list": [{"v": 2}]}}
        assert self.DOC["nested"]["list"] == [{"v": 1}, {"v": 2}]

    def test_path_through_array_of_documents(self) -> None:
        doc = {"_id": 1, "a": [{"b": 1, "c": 0}, {"b": 2, "c": 0}]}
        out = Projection({"a.b.$": 1}).apply(doc, 1)
        assert out == {"_id": 1, "a": [{"b": 2}]}

    def test_missing_position_is_an_error(self) -> None:
        with pytest.raises(CommandError) as info:
            Projection({"grades.$": 1}).apply(self.DOC, None)
        assert info.value.code == 51246
        with pytest.raises(CommandError):
            Projection({"grades.$": 1}).apply(self.DOC, 7)

    def test_missing_or_scalar_field_is_left_alone(self) -> None:
        assert Projection({"nope.$": 1}).apply(self.DOC, None) == {"_id": 1}
        assert Projection({"other.$": 1}).apply(self.DOC, None) == {"_id": 1, "other": 1}


class TestMetaAndExpressions:
    def test_meta_is_accepted_and_adds_nothing(self) -> None:
        assert project({"score": {"$meta": "textScore"}}) == DOC
        assert project({"score": {"$meta": "textScore"}, "name": 1}) == {"_id": 1, "name": "n"}

    def test_expressions_are_delegated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seen: list[Any] = []

        def fake(expression: Any, variables: dict[str, Any], collation: Any) -> Any:
            def run(doc: Any) -> Any:
                seen.append((expression, doc, variables))
                return MISSING if expression == "$nope" else ("computed", expression)
            return run

        monkeypatch.setattr(projection_module, "expression_function", fake)
        doc = {"_id": 1, "a": 1, "b": {"c": 1}}
        out = Projection({"x": "$a", "a": 1, "gone": "$nope", "b.d": {"$add": [1]}},
                         variables={"v": 1}).apply(doc)
        assert out == {"_id": 1, "a": 1, "b": {"d": ("computed", {"$add": [1]})}, "x": ("computed", "$a")}
        assert list(out) == ["_id", "a", "b", "x"]
        assert ("$a", doc, {"v": 1}) in seen

    def test_computed_field_replaces_scalars_with_documents(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(projection_module, "expression_function",
                            lambda expression, variables, collation: lambda doc: 7)
        assert Projection({"a.b": {"$literal": 7}}).apply({"_id": 1, "a": 1}) == {"_id": 1, "a": {"b": 7}}
        assert Projection({"a.b": {"$literal": 7}}).apply({"_id": 1}) == {"_id": 1, "a": {"b": 7}}
        assert Projection({"a.b": {"$literal": 7}}).apply({"_id": 1, "a": [{"x": 1}, 2]}) == {
            "_id": 1, "a": [{"b": 7}]}
        assert Projection({"_id": 0, "a": "x"}).apply({"_id": 1}) == {"a": 7}

    def test_with_the_real_engine(self) -> None:
        pytest.importorskip("mongoemu.query.expressions")
        out = Projection({"total": {"$add": ["$a", "$b"]}, "a": 1, "label": "fixed"}).apply(
            {"_id": 1, "a": 2, "b": 3})
        assert out == {"_id": 1, "a": 2, "total": 5, "label": "fixed"}


class TestIdentity:
    def test_empty_projection_returns_input(self) -> None:
        assert Projection(None).apply(DOC) is DOC
        assert Projection({}).apply(DOC) is DOC
        assert Projection({}).is_identity
        assert not Projection({"a": 1}).is_identity


_documents = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.one_of(st.integers(), st.text(max_size=3),
              st.dictionaries(st.sampled_from(["x", "y"]), st.integers(), max_size=2)),
    max_size=4,
).map(lambda d: {"_id": 0, **d})


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(_documents, st.sets(st.sampled_from(["a", "b", "c", "d", "a.x", "b.y"]), min_size=1))
    def test_inclusion_and_exclusion_partition_the_document(self, doc: dict[str, Any], fields: set[str]) -> None:
        top = {f for f in fields if "." not in f}
        if not top:
            return
        included = Projection({f: 1 for f in top}).apply(doc)
        excluded = Projection({f: 0 for f in top}).apply(doc)
        assert set(included) == ({"_id"} | top) & set(doc)
        assert set(excluded) == set(doc) - top
        assert [k for k in doc if k in included] == list(included)
        assert [k for k in doc if k in excluded] == list(excluded)
