"""Everything needed to resume, stored in the destination's reserved database.

Layout of ``mongosync_reserved_for_internal_use``:

- ``migration`` — one document (``_id: "migration"``): the validated /start request, both
  clusters' identities, state and phase, the change-stream start time and resume token, the
  commit progress, what the migration changed on the clusters (write blocks, balancers), the
  counters behind /progress, a heartbeat of the process working on it, and any fatal error.
- ``namespaces`` — one document per source collection or view being migrated.
- ``partitions`` — one document per ``_id`` range of a collection, with its resume point.
- ``created`` — every database and collection this migration created on the destination.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from typing import Any

import functools
from typing import Callable, TypeVar

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from pymongosync.retry import retrying

F = TypeVar("F", bound=Callable[..., Any])


def _retried(method: F) -> F:
    """Metadata reads and writes are idempotent, so transient failures are simply retried."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: method(*args, **kwargs))
    return wrapper  # type: ignore[return-value]

METADATA_DATABASE = "mongosync_reserved_for_internal_use"
# Names of other mongosync releases' metadata, recognised as leftovers.
LEGACY_METADATA_PREFIXES = ("__mdb_internal_mongosync", "mongosync_reserved_for_verification_",
                            "mongosync_internal_")
MIGRATION_ID = "migration"


def is_metadata_database(name: str) -> bool:
    return name == METADATA_DATABASE or name.startswith(LEGACY_METADATA_PREFIXES)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class MetadataStore:
    def __init__(self, destination: MongoClient) -> None:
        self.client = destination
        self.db = destination[METADATA_DATABASE]
        self.migrations: Collection = self.db["migration"]
        self.namespaces: Collection = self.db["namespaces"]
        self.partitions: Collection = self.db["partitions"]
        self.created: Collection = self.db["created"]

    # -- the migration document ----------------------------------------------------------------
    @_retried
    def exists(self) -> bool:
        return self.load() is not None

    @_retried
    def load(self) -> dict[str, Any] | None:
        return self.migrations.find_one({"_id": MIGRATION_ID})

    @_retried
    def create(self, document: dict[str, Any]) -> dict[str, Any]:
        document = {"_id": MIGRATION_ID, "migrationId": str(uuid.uuid4()), "createdAt": now(),
                    "updatedAt": now(), **document}
        try:
            self.migrations.insert_one(document)
        except DuplicateKeyError:
            pass  # a restart during creation: keep what is stored
        self.partitions.create_index([("namespace", ASCENDING), ("index", ASCENDING)])
        return self.load() or document

    @_retried
    def update(self, changes: dict[str, Any], unset: list[str] | None = None) -> None:
        update: dict[str, Any] = {"$set": {**changes, "updatedAt": now()}}
        if unset:
            update["$unset"] = {field: "" for field in unset}
        self.migrations.update_one({"_id": MIGRATION_ID}, update)

    @_retried
    def heartbeat(self, owner: str | None = None) -> None:
        """Say that a live process works on this migration (``reset`` refuses while fresh)."""
        self.migrations.update_one({"_id": MIGRATION_ID}, {"$set": {
            "heartbeat": {"owner": owner or process_identity(), "at": now()}}})

    def record_error(self, name: str, message: str) -> None:
        self.update({"error": {"name": name, "message": message, "at": now()}})

    # -- namespaces ------------------------------------------------------------------------------
    @_retried
    def put_namespace(self, document: dict[str, Any]) -> None:
        self.namespaces.replace_one({"_id": document["_id"]}, document, upsert=True)

    @_retried
    def update_namespace(self, namespace: str, changes: dict[str, Any]) -> None:
        self.namespaces.update_one({"_id": namespace}, {"$set": changes})

    @_retried
    def namespace_documents(self) -> list[dict[str, Any]]:
        return list(self.namespaces.find().sort("_id", ASCENDING))

    # -- partitions ------------------------------------------------------------------------------
    @_retried
    def add_partitions(self, partitions: list[dict[str, Any]]) -> None:
        for partition in partitions:
            self.partitions.replace_one({"_id": partition["_id"]}, partition, upsert=True)

    @_retried
    def partitions_to_copy(self) -> list[dict[str, Any]]:
        return list(self.partitions.find({"status": {"$ne": "done"}}).sort(
            [("namespace", ASCENDING), ("index", ASCENDING)]))

    @_retried
    def partition_progress(self, partition_id: str, last_id: Any, documents: int,
                           size: int) -> None:
        self.partitions.update_one({"_id": partition_id}, {
            "$set": {"status": "in progress", "lastId": last_id},
            "$inc": {"copiedDocuments": documents, "copiedBytes": size}})

    @_retried
    def finish_partition(self, partition_id: str) -> None:
        self.partitions.update_one({"_id": partition_id}, {"$set": {"status": "done"}})

    @_retried
    def copy_totals(self) -> dict[str, int]:
        totals = {"partitions": 0, "partitionsDone": 0, "copiedBytes": 0, "copiedDocuments": 0,
                  "estimatedBytes": 0, "estimatedDocuments": 0}
        for partition in self.partitions.find({}, {"status": 1, "copiedBytes": 1,
                                                   "copiedDocuments": 1, "estimatedBytes": 1,
                                                   "estimatedDocuments": 1}):
            totals["partitions"] += 1
            totals["partitionsDone"] += partition.get("status") == "done"
            for key in ("copiedBytes", "copiedDocuments", "estimatedBytes", "estimatedDocuments"):
                totals[key] += int(partition.get(key, 0))
        return totals

    # -- what this migration created on the destination ----------------------------------------
    @_retried
    def record_created(self, database: str, collection: str | None = None) -> None:
        """Note a namespace *before* creating it, so a crash in between cannot hide it."""
        self.created.update_one({"_id": database}, {"$setOnInsert": {"kind": "database"}},
                                upsert=True)
        if collection is not None:
            self.created.update_one({"_id": f"{database}.{collection}"},
                                    {"$setOnInsert": {"kind": "collection"}}, upsert=True)

    @_retried
    def created_databases(self) -> list[str]:
        return sorted(d["_id"] for d in self.created.find({"kind": "database"}))


def process_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"

