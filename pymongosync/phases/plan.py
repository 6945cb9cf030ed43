"""Phase 2, initializing partitions: each collection split into ``_id`` ranges to copy in parallel.

Boundaries come from a ``$sample`` of ``_id`` values sorted in BSON order; the first range starts
at MinKey and the last one has no upper bound, so every document of any ``_id`` type belongs to
exactly one range. Small and capped collections are one partition (capped ones are read in
natural order, as their insertion order is part of what they are).

With one instance per source shard (:mod:`pymongosync.instances`) the coordinator plans every
collection and gives each partition to an instance: a collection sharded on ``{_id: 1}`` is
split at its chunks, each chunk the partition of the instance whose shard owns it; any other
collection's ranges are spread over the instances (reads go through the router, which filters
each shard's orphans, so any instance may copy any range).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from bson.max_key import MaxKey
from bson.min_key import MinKey

from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.state import NamespaceRecord, NamespaceRef, PartitionRecord, Phase

log = logging.getLogger("pymongosync.copy")

# Collections smaller than this are copied as one partition.
SINGLE_PARTITION_BYTES = 16 * 1024 * 1024
TARGET_PARTITION_BYTES = 32 * 1024 * 1024
SAMPLES_PER_PARTITION = 8
MAX_PARTITIONS = 256


def partition_count(namespace: NamespaceRecord) -> int:
    """How many ranges a collection is split into (1: no sampling needed)."""
    size, documents = namespace.estimated_bytes, namespace.estimated_documents
    if namespace.options.get("capped") or size <= SINGLE_PARTITION_BYTES or documents <= 1:
        return 1
    return int(min(MAX_PARTITIONS, max(2, size // TARGET_PARTITION_BYTES)))


def plan_partitions(namespace: NamespaceRecord, sampled_ids: list[Any]) -> list[PartitionRecord]:
    """The partitions of one collection, from ``_id`` values sampled in BSON order.

    Pure: equal inputs give equal plans, so re-planning after a crash changes nothing.
    Duplicate neighbouring samples are merged, so no range is empty by construction.
    """
    count = partition_count(namespace)
    bounds: list[Any] = [MinKey()]
    if count > 1 and sampled_ids:
        step = max(1, len(sampled_ids) // count)
        for boundary in sampled_ids[step::step]:
            if boundary != bounds[-1]:
                bounds.append(boundary)
    bounds.append(MaxKey())
    ranges = list(zip(bounds, bounds[1:]))
    last = len(ranges) - 1

    def share(total: int, index: int) -> int:  # the remainder goes to the last range
        return total // len(ranges) + (total % len(ranges) if index == last else 0)

    return [PartitionRecord(
        id=f"{namespace.id}#{index}", namespace=NamespaceRef(db=namespace.db,
                                                             coll=namespace.name),
        index=index, lower=lower, upper=upper, is_last=index == last,
        natural=bool(namespace.options.get("capped")),
        estimated_document_count=share(namespace.estimated_documents, index),
        total_byte_count=share(namespace.estimated_bytes, index))
        for index, (lower, upper) in enumerate(ranges)]


def chunk_partitions(namespace: NamespaceRecord,
                     owners: list[tuple[Any, Any, str]]) -> list[PartitionRecord]:
    """One partition per chunk of a collection sharded on ``{_id: 1}``, for its owner."""
    last = len(owners) - 1

    def share(total: int, index: int) -> int:
        return total // len(owners) + (total % len(owners) if index == last else 0)

    return [PartitionRecord(
        id=f"{namespace.id}#{index}", namespace=NamespaceRef(db=namespace.db,
                                                             coll=namespace.name),
        index=index, lower=MinKey() if index == 0 else lower, upper=upper,
        is_last=index == last, instance=shard,
        estimated_document_count=share(namespace.estimated_documents, index),
        total_byte_count=share(namespace.estimated_bytes, index))
        for index, (lower, upper, shard) in enumerate(owners)]


def spread(namespace: NamespaceRecord, partitions: list[PartitionRecord],
           instances: tuple[str, ...]) -> list[PartitionRecord]:
    """Each range to an instance, round robin from a start fixed by the collection's name, so
    that re-planning after a crash assigns the same way and small collections spread too."""
    start = zlib.crc32(namespace.id.encode("utf-8"))
    for partition in partitions:
        partition.instance = instances[(start + partition.index) % len(instances)]
    return partitions


class PlanPartitions(PhaseStep):
    phase = Phase.PLAN_PARTITIONS

    def run(self, context: PhaseContext) -> None:
        for namespace in context.store.namespaces():
            context.check_stop()
            if not namespace.is_collection or namespace.partitioned:
                continue
            count = partition_count(namespace)
            # mongosync's lines for each collection's partitions (spec §5.2), which MongoDB's
            # tooling gathers into its partition summary.
            where = {"database": namespace.db, "collection": namespace.name}
            sampled: list[Any] = []
            if count == 1:
                reason = "capped collection" if namespace.options.get("capped") else \
                    f"at most {SINGLE_PARTITION_BYTES // (1024 * 1024)} MiB"
                log.info("Creating a single partition for whole collection",
                         extra={"fields": {**where, "reason": reason}})
            else:
                log.info("Creating initial partitions for non-capped collection", extra={
                    "fields": {**where, "expectedSizePerPartition":
                               namespace.estimated_bytes // count}})
                log.info("Pre-sampling information", extra={"fields": {
                    **where, "sampler": "$sample", "collectionDocCount":
                    namespace.estimated_documents,
                    "numIDsToSample": count * SAMPLES_PER_PARTITION}})
                sampled = context.source.sample_ids(namespace.db, namespace.name,
                                                    count * SAMPLES_PER_PARTITION)
            partitions = plan_partitions(namespace, sampled)
            if context.layout.multi:
                owners = [] if namespace.options.get("capped") else \
                    context.source.chunk_owners(namespace.db, namespace.name)
                partitions = chunk_partitions(namespace, owners) if owners else \
                    spread(namespace, partitions, context.layout.instances)
            context.store.replace_partitions(namespace.db, namespace.name, partitions)
            for partition in partitions if count > 1 else ():
                log.debug("Persisted a new partition after sampling", extra={"fields": {
                    "collection": namespace.name, "partition": {
                        "partition": {"db": namespace.db, "coll": namespace.name},
                        "index": partition.index}}})
            context.store.mark_partitioned(namespace.id)
