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


def test_the_index_on_the_destinations_own_shard_key_is_not_a_mismatch() -> None:
    """A shardingEntries collection renamed during the migration keeps its shard key, and the
    index sharding made on it, under a name no entry names: that index is no mismatch, as on
    the entry's own name (campaign seed 0 with CAMPAIGN_SHARDED_DESTINATION=1 failed its
    verification with "index nested.z_1 only on the destination"). An index on another key
    that only the destination has still is one."""
    source = record({})
    sharded = source.model_copy(update={"shard_key": {"nested.z": 1}, "indexes": [
        *source.indexes, {"v": 2, "key": {"nested.z": 1}, "name": "nested.z_1"}]})
    assert compare_metadata([source], [sharded]) == []
    assert compare_metadata([source], [sharded],
                            expected_shard_keys={"shop.orders": {"nested.z": 1}}) == []
    [wrong_key] = compare_metadata([source], [sharded],
                                   expected_shard_keys={"shop.orders": {"_id": "hashed"}})
    assert wrong_key.kind == MismatchKind.SHARD_KEY
    [extra] = compare_metadata([source], [sharded.model_copy(update={"shard_key": {"n": 1}})])
    assert extra.kind == MismatchKind.INDEX and "nested.z_1 only on the destination" in \
        extra.detail
