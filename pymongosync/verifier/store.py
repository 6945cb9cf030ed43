"""Where the verifier keeps its progress: beside the migration's metadata on the destination
(:class:`MetadataVerifierStore`), or in a local file for ``mongosync verify``, which must not
write to the clusters it checks (:class:`pymongosync.verifier.standalone.LocalVerifierStore`).

State per range and per pending recheck, never per document hashed: memory and storage follow
how much changes, not how much there is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from pymongo import ASCENDING, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.mongo_client import MongoClient

from pymongosync.retry import retrying
from pymongosync.state import (
    Mismatch,
    Recheck,
    RecheckKey,
    Repair,
    TaskStatus,
    VerificationTask,
    VerifierState,
)
from pymongosync.store import METADATA_DATABASE, now


@dataclass
class TaskSummary:
    tasks: int = 0
    done: int = 0
    estimated_documents: int = 0
    collections: int = 0
    collections_done: int = 0
    # Documents hashed on each side, of the finished ranges: summed from the ranges' own
    # records, which each finish sets once (a running total incremented beside them would
    # count a range twice when the answer to its increment is lost and it is sent again).
    hashed_source: int = 0
    hashed_destination: int = 0


class TaskStore(Protocol):
    """What hashing ranges needs (the embedded verifier and ``mongosync verify``)."""

    def load_state(self) -> VerifierState | None: ...
    def save_state(self, state: VerifierState, *fields: str) -> None: ...
    def add_counts(self, rechecked: int = 0, rehashed: int = 0) -> None: ...
    def ensure_tasks(self, tasks: Iterable[VerificationTask]) -> None: ...
    def claim_task(self, owner: str) -> VerificationTask | None: ...
    def task_progress(self, task_id: str, source: int, destination: int) -> None: ...
    def finish_task(self, task_id: str, source: int, destination: int) -> None: ...
    def release_claims(self, owner_prefix: str) -> None: ...
    def task_summary(self) -> TaskSummary: ...
    def add_mismatches(self, mismatches: list[Mismatch]) -> None: ...
    def mismatches(self, limit: int = 0) -> list[Mismatch]: ...
    def mismatch_count(self) -> int: ...
    def clear(self) -> None: ...


class VerifierStore(TaskStore, Protocol):
    """And the rechecks of documents changed while the migration runs."""

    def add_rechecks(self, rechecks: list[Recheck]) -> None: ...
    def due_rechecks(self, up_to: Timestamp | None, limit: int) -> list[Recheck]: ...
    def remove_rechecks(self, keys: list[RecheckKey]) -> None: ...
    def postpone_recheck(self, key: RecheckKey, due: Timestamp) -> None: ...
    def recheck_count(self) -> int: ...
    def oldest_due(self) -> Timestamp | None: ...
    def repair_count(self) -> int: ...


def summarize(tasks: Iterable[VerificationTask]) -> TaskSummary:
    summary = TaskSummary()
    open_namespaces: dict[str, bool] = {}
    for task in tasks:
        summary.tasks += 1
        if task.status == TaskStatus.DONE:
            summary.done += 1
            summary.hashed_source += task.hashed_source
            summary.hashed_destination += task.hashed_destination
        summary.estimated_documents += task.estimated_documents
        name = task.namespace.full_name
        open_namespaces[name] = open_namespaces.get(name, False) or \
            task.status != TaskStatus.DONE
    summary.collections = len(open_namespaces)
    summary.collections_done = sum(1 for still in open_namespaces.values() if not still)
    return summary


class MetadataVerifierStore:
    """The embedded verifier's progress, in the migration's metadata database."""

    def __init__(self, client: MongoClient[Any], database: str = METADATA_DATABASE) -> None:
        db = client[database]
        self.states: Collection[Any] = db["verifierState"]
        self.tasks: Collection[Any] = db["verifierTasks"]
        self.rechecks: Collection[Any] = db["verifierRechecks"]
        self.mismatch_records: Collection[Any] = db["verifierMismatches"]
        self.repairs: Collection[Any] = db["verifierRepairs"]

    # Every method is one read or write, retried on transient errors, and idempotent but for
    # the rechecked and rehashed counts (add_counts, release_claims).
    def clear(self) -> None:
        """Forget an earlier verification (of the other direction of a reversed migration)."""
        for collection in (self.states, self.tasks, self.rechecks, self.mismatch_records,
                           self.repairs):
            retrying(collection.drop)

    def load_state(self) -> VerifierState | None:
        document = retrying(lambda: self.states.find_one({"_id": "verifier"}))
        return None if document is None else VerifierState.from_document(document)

    def save_state(self, state: VerifierState, *fields: str) -> None:
        values = state.stored_values(*fields) if fields else \
            {k: v for k, v in state.to_document().items() if k != "_id"}
        retrying(lambda: self.states.update_one({"_id": state.id}, {"$set": values},
                                                upsert=True))

    def add_counts(self, rechecked: int = 0, rehashed: int = 0) -> None:
        # Not idempotent, deliberately: these two figures are told, never relied on, and a
        # batch counted twice after a lost answer costs less than a record per recheck
        # would. The hashed counts are exact (TaskSummary).
        increments = {name: value for name, value in (
            ("recheckedDocuments", rechecked), ("rehashedDocuments", rehashed)) if value}
        if increments:
            retrying(lambda: self.states.update_one({"_id": "verifier"}, {"$inc": increments},
                                                    upsert=True))

    # -- ranges ----------------------------------------------------------------------------------
    def ensure_tasks(self, tasks: Iterable[VerificationTask]) -> None:
        writes = [UpdateOne({"_id": task.id}, {"$setOnInsert": {
            k: v for k, v in task.to_document().items() if k != "_id"}}, upsert=True)
            for task in tasks]
        if writes:
            retrying(lambda: self.tasks.bulk_write(writes, ordered=False))

    def claim_task(self, owner: str) -> VerificationTask | None:
        """The next range nobody holds, for ``owner``; a range ``owner`` already holds comes
        first: a claim the destination applied but answered with an error is sent again by
        the retry, and a new claim would leave that range held by a worker that never knew it
        had it, never hashed (campaign seed 12 with CAMPAIGN_ONE_PER_SHARD=1: initial hashing
        never finished)."""
        def claim() -> Any:
            for holder in (owner, None):
                document = self.tasks.find_one_and_update(
                    {"status": TaskStatus.PENDING.value, "owner": holder},
                    {"$set": {"owner": owner}},
                    sort=[("namespace.db", ASCENDING), ("namespace.coll", ASCENDING),
                          ("_id", ASCENDING)],
                    return_document=ReturnDocument.AFTER)
                if document is not None:
                    return document
            return None

        document = retrying(claim)
        return None if document is None else VerificationTask.from_document(document)

    def task_progress(self, task_id: str, source: int, destination: int) -> None:
        retrying(lambda: self.tasks.update_one({"_id": task_id}, {"$set": {
            "hashedSource": source, "hashedDestination": destination}}))

    def finish_task(self, task_id: str, source: int, destination: int) -> None:
        retrying(lambda: self.tasks.update_one({"_id": task_id}, {"$set": {
            "status": TaskStatus.DONE.value, "owner": None, "hashedSource": source,
            "hashedDestination": destination}}))

    def release_claims(self, owner_prefix: str) -> None:
        """Give back the ranges a stopped run was hashing; what they had hashed is hashed
        again, and counted as such."""
        def release() -> None:
            for document in self.tasks.find({"owner": {"$ne": None},
                                             "status": TaskStatus.PENDING.value}):
                if not str(document["owner"]).startswith(owner_prefix):
                    continue
                partial = int(document.get("hashedSource", 0)) + \
                    int(document.get("hashedDestination", 0))
                self.tasks.update_one({"_id": document["_id"]}, {"$set": {
                    "owner": None, "hashedSource": 0, "hashedDestination": 0}})
                if partial:
                    self.states.update_one({"_id": "verifier"},
                                           {"$inc": {"rehashedDocuments": partial}}, upsert=True)
        retrying(release)

    def task_summary(self) -> TaskSummary:
        return summarize(VerificationTask.from_document(document)
                         for document in retrying(lambda: list(self.tasks.find())))

    # -- rechecks --------------------------------------------------------------------------------
    def add_rechecks(self, rechecks: list[Recheck]) -> None:
        # The latest due wins: a document changed again must wait for that change to apply.
        writes = [UpdateOne({"_id": recheck.key.to_document()},
                            {"$max": {"due": recheck.due}, "$setOnInsert": {"attempts": 0}},
                            upsert=True) for recheck in rechecks]
        if writes:
            retrying(lambda: self.rechecks.bulk_write(writes, ordered=False))

    def due_rechecks(self, up_to: Timestamp | None, limit: int) -> list[Recheck]:
        query = {} if up_to is None else {"due": {"$lte": up_to}}
        documents = retrying(lambda: list(self.rechecks.find(query).sort("due", ASCENDING)
                                          .limit(limit)))
        return [Recheck.from_document(document) for document in documents]

    def remove_rechecks(self, keys: list[RecheckKey]) -> None:
        if keys:
            retrying(lambda: self.rechecks.delete_many(
                {"_id": {"$in": [key.to_document() for key in keys]}}))

    def postpone_recheck(self, key: RecheckKey, due: Timestamp) -> None:
        retrying(lambda: self.rechecks.update_one({"_id": key.to_document()},
                                                  {"$max": {"due": due},
                                                   "$inc": {"attempts": 1}}))

    def recheck_count(self) -> int:
        return int(retrying(lambda: self.rechecks.estimated_document_count()))

    def oldest_due(self) -> Timestamp | None:
        document = retrying(lambda: self.rechecks.find_one({}, sort=[("due", ASCENDING)]))
        return None if document is None else document["due"]

    # -- the report ------------------------------------------------------------------------------
    def add_mismatches(self, mismatches: list[Mismatch]) -> None:
        # Each record gets its _id here, before the first attempt, and is written by it: a
        # retry after a write the destination applied but answered with an error (a write
        # concern error, a connection lost after the write) finds it there and leaves it,
        # where inserting it again failed with DuplicateKey and took the migration down.
        stamped = [{"_id": ObjectId(),
                    **mismatch.model_copy(update={"at": mismatch.at or now()}).to_document()}
                   for mismatch in mismatches]
        writes = [ReplaceOne({"_id": record["_id"]}, record, upsert=True) for record in stamped]
        if writes:
            retrying(lambda: self.mismatch_records.bulk_write(writes, ordered=False))

    def mismatches(self, limit: int = 0) -> list[Mismatch]:
        documents = retrying(lambda: list(self.mismatch_records.find({}, {"_id": 0})
                                          .sort("at", ASCENDING).limit(limit)))
        return [Mismatch.from_document(document) for document in documents]

    def mismatch_count(self) -> int:
        return int(retrying(lambda: self.mismatch_records.count_documents({})))

    def mismatch_tally(self) -> dict[tuple[str, str], int]:
        """How many mismatches of each kind in each namespace: ``{(namespace, kind): n}``,
        each one counted once however often it was reported (a document by its ``_id``
        value, as the server groups them)."""
        groups = retrying(lambda: list(self.mismatch_records.aggregate([
            # Metadata differences have no document: their details tell them apart.
            {"$group": {"_id": {"namespace": "$namespace", "kind": "$kind",
                                "document": "$documentId",
                                "detail": {"$cond": [{"$eq": ["$documentId", None]},
                                                     "$detail", None]}}}},
            {"$group": {"_id": {"namespace": "$_id.namespace", "kind": "$_id.kind"},
                        "count": {"$sum": 1}}}])))
        return {(group["_id"]["namespace"], group["_id"]["kind"]): int(group["count"])
                for group in groups}

    def mismatch_batches(self, size: int) -> Iterator[list[Mismatch]]:
        """Every mismatch, ``size`` at a time, by namespace (one cursor: memory follows the
        batch, not the report)."""
        cursor = self.mismatch_records.find({}, {"_id": 0}).sort(
            [("namespace", ASCENDING), ("_id", ASCENDING)]).batch_size(size)
        batch: list[Mismatch] = []
        for document in cursor:
            batch.append(Mismatch.from_document(document))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def clear_mismatches(self) -> None:
        """Forget the report once every document in it is repaired (``mongosync repair``)."""
        retrying(lambda: self.mismatch_records.delete_many({}))

    # -- repairs ---------------------------------------------------------------------------------
    def add_repairs(self, repairs: list[Repair]) -> None:
        writes = [UpdateOne({"_id": repair.key.to_document()},
                            {"$set": {k: v for k, v in repair.to_document().items()
                                      if k != "_id"}}, upsert=True)
                  for repair in repairs]
        if writes:
            retrying(lambda: self.repairs.bulk_write(writes, ordered=False))

    def repair_count(self) -> int:
        return int(retrying(lambda: self.repairs.count_documents({})))

