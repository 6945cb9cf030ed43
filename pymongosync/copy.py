"""Collection copy: partitions read from the source and bulk-inserted, in parallel.

Documents stay raw BSON from the source read to the destination write. Each partition
records the last ``_id`` it copied after every batch, so an interrupted partition resumes
from there (mongosync would restart it from its beginning). Duplicate-key errors are
expected (a resumed batch, a document also inserted by change application) and ignored.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable

from pymongo import MongoClient
from pymongo.errors import BulkWriteError, OperationFailure

from pymongosync.clusters import RAW
from pymongosync.metadata import MetadataStore
from pymongosync.retry import retrying

log = logging.getLogger("pymongosync.copy")

BATCH_DOCUMENTS = 1000
PARALLELISM_BY_LOAD_LEVEL = {1: 1, 2: 2, 3: 4, 4: 8}
DUPLICATE_KEY = 11000


class CopyStopped(Exception):
    """Copying was interrupted on request (pause or shutdown); progress is saved."""


def copy_partitions(source: MongoClient, destination: MongoClient, store: MetadataStore,
                    load_level: int, stop: threading.Event,
                    on_batch: Callable[[int, int], None] | None = None) -> None:
    """Copy every unfinished partition; returns when all are done, raises CopyStopped."""
    pending = list(store.partitions_to_copy())
    workers = PARALLELISM_BY_LOAD_LEVEL.get(load_level, 4)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy") as pool:
        futures = [pool.submit(copy_partition, source, destination, store, partition, stop,
                               on_batch) for partition in pending]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            stop.set()
            raise
    if stop.is_set():
        raise CopyStopped()


def copy_partition(source: MongoClient, destination: MongoClient, store: MetadataStore,
                   partition: dict[str, Any], stop: threading.Event,
                   on_batch: Callable[[int, int], None] | None = None) -> None:
    """Copy one partition, resuming from its checkpoint after any transient failure."""
    retrying(lambda: _copy_from_checkpoint(source, destination, store, partition["_id"], stop,
                                           on_batch))


def _copy_from_checkpoint(source: MongoClient, destination: MongoClient, store: MetadataStore,
                          partition_id: str, stop: threading.Event,
                          on_batch: Callable[[int, int], None] | None) -> None:
    partition = store.partitions.find_one({"_id": partition_id})
    if partition is None or partition["status"] == "done" or stop.is_set():
        return
    namespace = store.namespaces.find_one({"_id": partition["namespace"]}) or {}
    source_name = current_source_name(source, partition["db"], partition["collection"],
                                      namespace.get("uuid"))
    target = destination[partition["db"]].get_collection(partition["collection"],
                                                         codec_options=RAW)
    if source_name is None:  # dropped on the source: change application drops it here too
        store.finish_partition(partition_id)
        return
    source_collection = source[source_name[0]].get_collection(source_name[1], codec_options=RAW)
    resume_after = partition.get("lastId")
    cursor = source_collection.find({}, batch_size=BATCH_DOCUMENTS)
    if not partition.get("natural"):
        lower = partition["lower"] if resume_after is None else resume_after
        cursor = cursor.hint([("_id", 1)]).min([("_id", lower)])
        if not partition.get("last"):
            cursor = cursor.max([("_id", partition["upper"])])
    batch: list[Any] = []
    batch_bytes = 0
    # A natural-order (capped) partition restarts from its beginning: duplicates are ignored.
    for document in cursor:
        if resume_after is not None and not partition.get("natural") \
                and document["_id"] == resume_after:
            continue
        batch.append(document)
        batch_bytes += len(document.raw)
        if len(batch) >= BATCH_DOCUMENTS:
            _flush(target, store, partition_id, batch, batch_bytes, on_batch)
            batch, batch_bytes = [], 0
            if stop.is_set():
                return
    if batch:
        _flush(target, store, partition_id, batch, batch_bytes, on_batch)
    store.finish_partition(partition_id)


def _flush(target: Any, store: MetadataStore, partition_id: str, batch: list[Any], size: int,
           on_batch: Callable[[int, int], None] | None) -> None:
    _write(target, batch)
    store.partition_progress(partition_id, batch[-1]["_id"], len(batch), size)
    if on_batch:
        on_batch(len(batch), size)


def current_source_name(source: MongoClient, db: str, collection: str,
                        collection_uuid: Any) -> tuple[str, str] | None:
    """Where a collection is now: renamed collections are found again by their UUID."""
    if collection_uuid is None:
        return db, collection
    for info in source[db].list_collections(filter={"name": collection}):
        if (info.get("info") or {}).get("uuid") == collection_uuid:
            return db, collection
    for database in source.list_database_names():
        for info in source[database].list_collections(filter={"info.uuid": collection_uuid}):
            return database, info["name"]
    return None


def _write(target: Any, batch: list[Any]) -> None:
    def insert() -> None:
        try:
            target.insert_many(batch, ordered=False, bypass_document_validation=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            unexpected = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if unexpected or exc.details.get("writeConcernErrors"):
                raise OperationFailure(f"copy into {target.full_name} failed: "
                                       f"{(unexpected or exc.details['writeConcernErrors'])[0]}")
    insert()
