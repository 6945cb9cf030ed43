"""Partition planning (pymongosync.phases.plan): pure planning and the phase over fakes."""

from __future__ import annotations

from typing import Any

import pytest
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from pymongo.errors import AutoReconnect

from pymongosync.phases.plan import (
    MAX_PARTITIONS,
    SINGLE_PARTITION_BYTES,
    TARGET_PARTITION_BYTES,
    PlanPartitions,
    partition_count,
    plan_partitions,
)
from pymongosync.state import NamespaceKind, NamespaceRecord, PartitionRecord, Phase
from tests.unit.fakes import id_key
from tests.unit.support import make_context, pair

MIB = 1024 * 1024


def namespace(size: int, documents: int = 1000, name: str = "orders",
              options: dict[str, Any] | None = None) -> NamespaceRecord:
    return NamespaceRecord(id=f"shop.{name}", db="shop", name=name,
                           kind=NamespaceKind.COLLECTION, options=options or {},
                           estimated_bytes=size, estimated_documents=documents)


def bounds(plan: list[PartitionRecord]) -> list[Any]:
    return [plan[0].lower] + [partition.upper for partition in plan]


def assert_covers_everything(plan: list[PartitionRecord]) -> None:
    """MinKey to MaxKey, contiguous, strictly increasing, numbered in order, last is last."""
    assert isinstance(plan[0].lower, MinKey) and isinstance(plan[-1].upper, MaxKey)
    for index, (left, right) in enumerate(zip(plan, plan[1:])):
        assert left.upper == right.lower and id_key(left.lower) < id_key(left.upper)
        assert left.index == index and not left.is_last
    assert plan[-1].is_last and plan[-1].index == len(plan) - 1
    assert [partition.id for partition in plan] == [f"shop.orders#{n}" for n in range(len(plan))]


def test_a_small_collection_is_one_partition_over_every_id() -> None:
    plan = plan_partitions(namespace(SINGLE_PARTITION_BYTES, 1234), [])

    assert len(plan) == 1
    assert_covers_everything(plan)
    only = plan[0]
    assert not only.natural
    assert (only.estimated_document_count, only.total_byte_count) == (1234,
                                                                       SINGLE_PARTITION_BYTES)
    assert only.namespace.full_name == "shop.orders"


def test_a_capped_collection_is_one_natural_partition() -> None:
    capped = namespace(10 * TARGET_PARTITION_BYTES, options={"capped": True, "size": 1 << 40})
    assert partition_count(capped) == 1
    plan = plan_partitions(capped, list(range(100)))
    assert len(plan) == 1 and plan[0].natural and plan[0].is_last


def test_a_single_huge_document_is_one_partition() -> None:
    assert partition_count(namespace(10 * TARGET_PARTITION_BYTES, documents=1)) == 1


def test_partition_counts_follow_the_size() -> None:
    assert partition_count(namespace(SINGLE_PARTITION_BYTES + 1)) == 2  # at least two
    assert partition_count(namespace(5 * TARGET_PARTITION_BYTES + MIB)) == 5
    assert partition_count(namespace(10_000 * TARGET_PARTITION_BYTES)) == MAX_PARTITIONS


def test_a_large_collection_splits_at_sampled_ids() -> None:
    large = namespace(4 * TARGET_PARTITION_BYTES, documents=1000)
    sampled = list(range(0, 320, 10))  # 32 samples, 8 per partition
    plan = plan_partitions(large, sampled)

    assert bounds(plan)[1:-1] == [80, 160, 240]
    assert_covers_everything(plan)
    assert [p.estimated_document_count for p in plan] == [250] * 4
    assert [p.total_byte_count for p in plan] == [TARGET_PARTITION_BYTES] * 4


def test_duplicate_samples_are_merged() -> None:
    large = namespace(4 * TARGET_PARTITION_BYTES)
    plan = plan_partitions(large, [1] * 8 + [5] * 24)  # boundaries at 1, 5, 5, 5
    assert bounds(plan)[1:-1] == [5]
    assert_covers_everything(plan)

    same = plan_partitions(large, ["x"] * 32)
    assert bounds(same)[1:-1] == ["x"] and len(same) == 2
    assert [p.estimated_document_count for p in same] == [500, 500]


def test_samples_of_mixed_types_split_in_bson_order() -> None:
    sampled = sorted([3, "b", ObjectId("65f000000000000000000001"), None, 2.5, "a", True,
                      {"k": 1}], key=id_key)
    plan = plan_partitions(namespace(8 * TARGET_PARTITION_BYTES), sampled)
    assert bounds(plan)[1:-1] == sampled[1:]
    assert_covers_everything(plan)


def test_planning_is_deterministic() -> None:
    large = namespace(3 * TARGET_PARTITION_BYTES)
    sampled = list(range(24))
    assert plan_partitions(large, sampled) == plan_partitions(large, list(sampled))


def test_the_phase_plans_every_collection_once() -> None:
    source, destination, store, _ = pair()
    source.samples["shop.orders"] = list(range(0, 160, 10))
    for record in (namespace(2 * TARGET_PARTITION_BYTES), namespace(MIB, 10, name="small"),
                   NamespaceRecord(id="shop.view", db="shop", name="view",
                                   kind=NamespaceKind.VIEW,
                                   options={"viewOn": "orders", "pipeline": []})):
        store.put_namespace(record)
    context = make_context(source, destination, store, phase=Phase.PLAN_PARTITIONS)
    PlanPartitions().run(context)

    planned = sorted((p.id, p.lower, p.upper) for p in store.partition_records()
                     if p.namespace.coll != "small")
    assert [entry[0] for entry in planned] == ["shop.orders#0", "shop.orders#1"]
    assert planned[0][2] == 80
    assert [p.id for p in store.partition_records() if p.namespace.coll == "small"] == \
        ["shop.small#0"]
    assert all(ns.partitioned for ns in store.namespaces() if ns.is_collection)
    assert source.calls.count("sample_ids") == 1  # the small one needs no sample

    source.samples["shop.orders"] = [42] * 16
    PlanPartitions().run(context)  # a second run changes nothing
    assert source.calls.count("sample_ids") == 1
    assert len(store.partition_records()) == 3


def test_planning_again_after_a_crash_leaves_only_the_new_plan() -> None:
    source, destination, store, _ = pair()
    store.put_namespace(namespace(4 * TARGET_PARTITION_BYTES))
    source.samples["shop.orders"] = list(range(32))
    store.fail_next("mark_partitioned", AutoReconnect("crash"))
    context = make_context(source, destination, store, phase=Phase.PLAN_PARTITIONS)
    with pytest.raises(AutoReconnect):
        PlanPartitions().run(context)
    assert len(store.partition_records()) == 4

    source.samples["shop.orders"] = [7] * 32  # another sample: two ranges
    PlanPartitions().run(context)
    plan = sorted(store.partition_records(), key=lambda p: p.index)
    assert len(plan) == 2
    assert_covers_everything(plan)
