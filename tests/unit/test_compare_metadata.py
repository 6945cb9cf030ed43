"""Comparing collections' metadata (pymongosync.verifier.compare.compare_metadata)."""

from __future__ import annotations

from typing import Any

from pymongosync.state import IndexRef, NamespaceKind, NamespaceRecord
from pymongosync.verifier.compare import MismatchKind, compare_metadata


def record(options: dict[str, Any]) -> NamespaceRecord:
    return NamespaceRecord(_id="shop.orders", db="shop", name="orders",
                           kind=NamespaceKind.COLLECTION, options=options,
                           indexes=[{"v": 2, "key": {"_id": 1}, "name": "_id_"}])


def test_options_differ_but_temp_does_not_count() -> None:
    # The destination creates a copy of a temporary collection as a lasting one.
    assert compare_metadata([record({"temp": True, "validator": {"a": 1}})],
                            [record({"validator": {"a": 1}})]) == []
    [mismatch] = compare_metadata([record({"validator": {"a": 1}})],
                                  [record({"validator": {"a": 2}})])
    assert mismatch.kind == MismatchKind.OPTION and mismatch.namespace == "shop.orders"


def test_an_index_converted_after_the_final_verification_counts_as_it_will_be() -> None:
    """Until writes are allowed, a unique index is prepareUnique on the destination; the
    conversion after them clears prepareUnique, which is set again where the source's unique
    index has it too (campaign seed 10375)."""
    def with_index(spec: dict[str, Any]) -> NamespaceRecord:
        base = record({})
        return base.model_copy(update={"indexes": [*base.indexes, spec]})

    key = {"key": {"pu": 1}, "name": "pu_1", "v": 2}
    source = with_index({**key, "unique": True, "prepareUnique": True})
    pending_here = with_index({**key, "prepareUnique": True})
    assert compare_metadata([source], [pending_here], pending_unique=[IndexRef(
        db="shop", coll="orders", name="pu_1", prepare_unique=True)]) == []
    [mismatch] = compare_metadata([source], [pending_here], pending_unique=[IndexRef(
        db="shop", coll="orders", name="pu_1")])
    assert mismatch.kind == MismatchKind.INDEX and "prepareUnique" in mismatch.detail
    plain_source = with_index({**key, "unique": True})
    assert compare_metadata([plain_source], [pending_here], pending_unique=[IndexRef(
        db="shop", coll="orders", name="pu_1")]) == []
