"""Documents are identified by ``_id`` value, as the server matches them: 1, 1.0,
NumberLong(1) and NumberDecimal("1") are one key (the no-silent-loss issue, item 1)."""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument

from pymongosync.changes.translate import collapse
from pymongosync.cluster_client import Delete, Upsert
from pymongosync.identity import id_key

NUMERICALLY_ONE = [1, Int64(1), 1.0, Decimal128("1"), Decimal128("1.000")]


@pytest.mark.parametrize("left", NUMERICALLY_ONE)
@pytest.mark.parametrize("right", NUMERICALLY_ONE)
def test_numerically_equal_ids_are_one_key(left: Any, right: Any) -> None:
    assert id_key(left) == id_key(right) and hash(id_key(left)) == hash(id_key(right))


@pytest.mark.parametrize("left, right", [
    (1, 2), (1, "1"), (0.1, Decimal128("0.1")), (Code("x"), "x"), (True, 1),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ([1], 1), (Binary(b"x", 0), Binary(b"x", 4)),
    (datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), Timestamp(1577836800, 0)),
    (MinKey(), None), (MaxKey(), MinKey()), (Regex("a", "i"), Regex("a", "")),
    (ObjectId("0" * 24), "0" * 24), (float("nan"), 0.0),
])
def test_different_values_are_different_keys(left: Any, right: Any) -> None:
    assert id_key(left) != id_key(right)


@pytest.mark.parametrize("left, right", [
    ({"a": 1}, {"a": 1.0}), (-0.0, 0), (float("nan"), Decimal128("NaN")),
    (float("inf"), Decimal128("Infinity")), ("é", "é"),
    (datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), DatetimeMS(1577836800000)),
    ([1, {"x": Int64(2)}], [1.0, {"x": Decimal128("2")}]),
])
def test_values_the_server_compares_equal_are_one_key(left: Any, right: Any) -> None:
    assert id_key(left) == id_key(right)


def test_out_of_range_dates_have_keys() -> None:
    assert id_key(DatetimeMS(-(10 ** 15))) != id_key(DatetimeMS(10 ** 15))


def event(kind: str, _id: Any, **fields: Any) -> RawBSONDocument:
    document: dict[str, Any] = {"operationType": kind, "ns": {"db": "app", "coll": "c"},
                                "documentKey": {"_id": _id},
                                "clusterTime": Timestamp(1, 1), **fields}
    if kind in ("insert", "replace"):
        document["fullDocument"] = {"_id": _id, "v": kind}
    return RawBSONDocument(bson.encode(document))


@pytest.mark.parametrize("one, other", [(1.0, 1), (7, Decimal128("7")), (Int64(3), 3.0)])
def test_collapse_groups_numerically_equal_ids(one: Any, other: Any) -> None:
    """delete {_id: 1.0}, insert {_id: 1}, delete {_id: 1}, insert {_id: 1.0}: one document,
    whose last full-state write is the final insert. Grouped by raw bytes, the writes came out
    as "upsert 1.0, delete 1", and the delete removed the document by value."""
    step = collapse([event("delete", one), event("insert", other), event("delete", other),
                     event("insert", one)])
    writes = step.writes[("app", "c")]
    assert len(writes) == 1 and isinstance(writes[0], Upsert)
    assert bson.decode(writes[0].document.raw)["_id"] == one
    step = collapse([event("insert", one), event("delete", other)])
    assert [type(write) for write in step.writes[("app", "c")]] == [Delete]
