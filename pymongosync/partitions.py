"""Splitting a collection into ``_id`` ranges that can be copied in parallel.

Ranges are read with ``min``/``max`` on the ``_id`` index rather than ``$gte``/``$lt``
filters: index bounds follow BSON order across types, where query operators would only
compare values of one type and silently skip documents whose ``_id`` has another.
"""

from __future__ import annotations

from typing import Any

from bson.max_key import MaxKey
from bson.min_key import MinKey
from pymongo import MongoClient

# Collections smaller than this are copied as one partition.
SINGLE_PARTITION_BYTES = 16 * 1024 * 1024
TARGET_PARTITION_BYTES = 32 * 1024 * 1024
SAMPLES_PER_PARTITION = 8
MAX_PARTITIONS = 256


def plan_partitions(client: MongoClient, namespace: dict[str, Any]) -> list[dict[str, Any]]:
    """Partition documents for one source collection (the first covers MinKey, the last MaxKey)."""
    size = int(namespace.get("estimatedBytes") or 0)
    documents = int(namespace.get("estimatedDocuments") or 0)
    capped = bool(namespace["options"].get("capped"))
    bounds: list[Any] = [MinKey()]
    if not capped and size > SINGLE_PARTITION_BYTES and documents > 1:
        count = min(MAX_PARTITIONS, max(2, size // TARGET_PARTITION_BYTES))
        sampled = client[namespace["db"]][namespace["name"]].aggregate([
            {"$sample": {"size": int(count * SAMPLES_PER_PARTITION)}},
            {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}])
        ids = [document["_id"] for document in sampled]
        step = max(1, len(ids) // count)
        for boundary in ids[step::step]:
            if boundary != bounds[-1]:
                bounds.append(boundary)
    bounds.append(MaxKey())
    partitions = []
    ranges = list(zip(bounds, bounds[1:]))
    for index, (lower, upper) in enumerate(ranges):
        partitions.append({
            "_id": f"{namespace['_id']}#{index}", "namespace": namespace["_id"],
            "db": namespace["db"], "collection": namespace["name"], "index": index,
            "lower": lower, "upper": upper, "last": index == len(ranges) - 1,
            "natural": capped, "status": "not started", "lastId": None,
            "copiedDocuments": 0, "copiedBytes": 0,
            "estimatedDocuments": documents // len(ranges), "estimatedBytes": size // len(ranges),
        })
    return partitions
