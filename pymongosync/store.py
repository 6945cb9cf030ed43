"""The metadata store: the only code that reads or writes the migration's stored state.

It speaks the typed records of :mod:`pymongosync.state`; field names of the stored documents
appear here and nowhere else. Every method is one idempotent read or write (or a retry of one),
so a crash between any two calls resumes correctly. Transient failures (elections, network) are
retried for a bounded time, as every metadata write is safe to repeat.

:class:`MetadataStore` is the MongoDB implementation; the protocol it satisfies,
:class:`MigrationStore`, is what the engine depends on, so unit tests can use an in-memory store.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar

import bson
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from pymongo.mongo_client import MongoClient

from pymongosync.errors import InternalError, MetadataTooNew
from pymongosync.lease import LeaseStore
from pymongosync.retry import retrying
from pymongosync.state import (
    COORDINATOR,
    BufferedBatch,
    BufferTotals,
    GLOBAL_STATE_ID,
    SCHEMA_VERSION,
    CollectionStatistics,
    CopiedId,
    CopyTotals,
    ErrorRecord,
    GlobalState,
    IndexCorrection,
    IndexCorrectionKey,
    LeaseRecord,
    NamespaceRecord,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
    ResumeData,
    UuidMapping,
    is_v1_partition,
    upgrade_v1_migration,
    upgrade_v1_partition,
)

METADATA_DATABASE = "mongosync_reserved_for_internal_use"
# The change buffer of a lone instance; a multi-instance migration buffers one stream per
# instance (named after it) and the coordinator's DDL stream ("ddl").
MAIN_STREAM = "main"
# Names of other mongosync releases' metadata, recognised as leftovers.
LEGACY_METADATA_PREFIXES = ("__mdb_internal_mongosync", "mongosync_reserved_for_verification_")
V1_MIGRATION_COLLECTION = "migration"
V1_MIGRATION_ID = "migration"
# A stored batch whose events are larger than this keeps them in pieces beside it: the change
# event of a document of 16 MiB (the largest) is larger than a document of the destination may
# be. The buffer's batches are 8 MiB at most otherwise (changes/buffer.py), so only a batch of
# one large event is stored in pieces.
BUFFER_INLINE_BYTES = 15 * 2**20
BUFFER_PIECE_BYTES = 8 * 2**20

_RAW: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument, tz_aware=True,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)

P = ParamSpec("P")
R = TypeVar("R")


def _plain_token(token: Any) -> dict[str, Any] | None:
    return None if token is None else {key: value for key, value in token.items()}


def copy_totals_of(partitions: Iterable[PartitionRecord]) -> CopyTotals:
    """Totals of the whole migration and of each namespace."""
    totals = CopyTotals()
    for partition in partitions:
        totals.add(partition)
        name = partition.namespace.full_name
        totals.by_namespace.setdefault(name, CopyTotals()).add(partition)
    return totals


def is_metadata_database(name: str) -> bool:
    return name == METADATA_DATABASE or name.startswith(LEGACY_METADATA_PREFIXES)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _retried(method: Callable[P, R]) -> Callable[P, R]:
    """Metadata reads and writes are idempotent, so transient failures are simply retried."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return retrying(lambda: method(*args, **kwargs))
    return wrapper


class StoredMigration:
    """A migration as loaded: its global state and this instance's resume data."""

    def __init__(self, global_state: GlobalState, resume: ResumeData,
                 schema_version: int) -> None:
        self.global_state = global_state
        self.resume = resume
        self.schema_version = schema_version


class MigrationStore(LeaseStore, Protocol):
    """What the engine needs of the metadata (implemented by MetadataStore and test fakes)."""

    def load(self, instance: str = COORDINATOR) -> StoredMigration | None: ...
    def load_global(self) -> GlobalState | None: ...
    def upgrade(self) -> None: ...
    def create(self, global_state: GlobalState, resume: ResumeData,
               replace_superseded: bool = False) -> StoredMigration: ...
    def save_global(self, record: GlobalState, *fields: str) -> None: ...
    def add_hot_documents(self, documents: list[str]) -> list[str]: ...
    def save_resume(self, record: ResumeData, *fields: str) -> None: ...
    def resume_records(self) -> dict[str, ResumeData]: ...
    def record_error(self, name: str, message: str, resumable: bool = False) -> None: ...
    def clear_error(self) -> None: ...
    def mark_reset_started(self) -> None: ...
    def put_namespace(self, record: NamespaceRecord) -> None: ...
    def remove_namespace(self, record: NamespaceRecord) -> None: ...
    def namespaces(self) -> list[NamespaceRecord]: ...
    def mark_partitioned(self, namespace_id: str) -> None: ...
    def add_partitions(self, partitions: Iterable[PartitionRecord]) -> None: ...
    def replace_partitions(self, db: str, coll: str,
                           partitions: Iterable[PartitionRecord]) -> None: ...
    def partition(self, partition_id: str) -> PartitionRecord | None: ...
    def partition_records(self) -> list[PartitionRecord]: ...
    def claim_partition(self, owner: str, lease_seconds: float | None = None, *,
                        instance: str | None = None) -> PartitionRecord | None: ...
    def renew_partition_claim(self, partition_id: str, owner: str) -> bool: ...
    def release_partition(self, partition_id: str, owner: str) -> None: ...
    def release_claims(self, owner_prefix: str) -> None: ...
    def record_partition_progress(self, partition_id: str, owner: str, last_id: Any,
                                  copied_documents: int, copied_bytes: int) -> bool: ...
    def finish_partition(self, partition_id: str) -> None: ...
    def copy_totals(self, *, instance: str | None = None) -> CopyTotals: ...
    def partition_counts(self, *, instance: str | None = None) -> tuple[int, int]: ...
    def record_index_builds(self, namespace: NamespaceRecord, names: list[str], *,
                            built: bool) -> None: ...
    def append_buffer(self, batch: BufferedBatch, stream: str = MAIN_STREAM) -> None: ...
    def buffer_batches(self, after_seq: int, limit: int,
                       stream: str = MAIN_STREAM) -> list[BufferedBatch]: ...
    def drop_buffer_through(self, seq: int, stream: str = MAIN_STREAM) -> None: ...
    def buffer_totals(self, stream: str = MAIN_STREAM) -> BufferTotals: ...
    def record_created(self, database: str, collection: str, *, new_database: bool) -> None: ...
    def confirm_created(self, database: str, collection: str) -> None: ...
    def forget_created(self, database: str, collection: str) -> None: ...
    def created_databases(self) -> list[str]: ...
    def created_namespaces(self) -> list[str]: ...
    def unconfirmed_namespaces(self) -> list[str]: ...


class MetadataStore:
    """The metadata in the destination's reserved database."""

    def __init__(self, client: MongoClient[Any], database: str = METADATA_DATABASE) -> None:
        self.client = client
        self.db: Database[Any] = client[database]
        self.global_states: Collection[Any] = self.db["globalState"]
        self.resume_data: Collection[Any] = self.db["resumeData"]
        self.namespace_records: Collection[Any] = self.db["namespaces"]
        self.partitions: Collection[Any] = self.db["partitions"]
        self.created: Collection[Any] = self.db["created"]
        self.leases: Collection[Any] = self.db["lease"]
        # Raw: buffered change events stay the bytes the source sent.
        self.change_buffer: Collection[RawBSONDocument] = self.db.get_collection(
            "changeBuffer", codec_options=_RAW)
        self.v1_migrations: Collection[Any] = self.db[V1_MIGRATION_COLLECTION]
        # Views for MongoDB's tooling (state.py: CollectionStatistics, UuidMapping,
        # IndexCorrection), written beside the records they are derived from.
        self.statistics: Collection[Any] = self.db["statistics"]
        self.uuid_map: Collection[Any] = self.db["uuidMap"]
        self.index_corrections: Collection[Any] = self.db["indexCorrection"]

    # -- the migration ---------------------------------------------------------------------------
    @_retried
    def load(self, instance: str = COORDINATOR) -> StoredMigration | None:
        """The stored migration in any known layout, read only (see :meth:`upgrade`)."""
        document = self.global_states.find_one({"_id": GLOBAL_STATE_ID})
        if document is not None:
            version = int(document.get("schemaVersion", 0))
            if version > SCHEMA_VERSION:
                raise MetadataTooNew(
                    f"the migration on this destination was stored by a newer pymongosync "
                    f"(metadata schema {version}; this release reads up to {SCHEMA_VERSION}); "
                    f"run that release, or reset the destination")
            resume = self.resume_data.find_one({"_id": instance})
            if resume is None:
                return None  # a crash inside create(): nothing was started yet
            return StoredMigration(GlobalState.from_document(document),
                                   ResumeData.from_document(resume), version)
        old = self.v1_migrations.find_one({"_id": V1_MIGRATION_ID})
        if old is None:
            return None
        global_state, resume = upgrade_v1_migration(old)
        return StoredMigration(global_state, resume, 1)

    @_retried
    def load_global(self) -> GlobalState | None:
        """The migration's global record alone (current layout), whichever instances have
        joined it."""
        document = self.global_states.find_one({"_id": GLOBAL_STATE_ID})
        return None if document is None else GlobalState.from_document(document)

    @_retried
    def upgrade(self) -> None:
        """Rewrite a version-1 layout as the current one. Each step is idempotent and the old
        document goes last, so a crash at any point leaves a layout :meth:`load` reads."""
        old = self.v1_migrations.find_one({"_id": V1_MIGRATION_ID})
        if old is None:
            return
        if self.global_states.find_one({"_id": GLOBAL_STATE_ID}) is None:
            global_state, resume = upgrade_v1_migration(old)
            self.resume_data.replace_one({"_id": resume.id}, resume.to_document(), upsert=True)
            self.global_states.replace_one({"_id": GLOBAL_STATE_ID},
                                           global_state.to_document(), upsert=True)
        for document in self.partitions.find({"status": {"$exists": True}}):
            if is_v1_partition(document):
                partition = upgrade_v1_partition(document)
                self.partitions.replace_one({"_id": partition.id}, partition.to_document())
        self._ensure_indexes()
        self.v1_migrations.drop()

    def _ensure_indexes(self) -> None:
        self.partitions.create_index([("namespace.db", ASCENDING), ("namespace.coll", ASCENDING),
                                      ("index", ASCENDING)])

    @_retried
    def create(self, global_state: GlobalState, resume: ResumeData,
               replace_superseded: bool = False) -> StoredMigration:
        """Store a new migration; after a crash during a previous call, keep what is stored.

        ``replace_superseded``: a record this cluster holds from an earlier direction of the
        same migration (superseded when it was reversed) gives way to the new one.
        """
        self._ensure_indexes()
        if replace_superseded:
            stale = self.global_states.find_one({"_id": GLOBAL_STATE_ID})
            if stale is not None and stale.get("supersededBy") and \
                    stale.get("migrationId") != global_state.migration_id:
                self.resume_data.replace_one({"_id": resume.id}, resume.to_document(),
                                             upsert=True)
                self.global_states.replace_one({"_id": GLOBAL_STATE_ID, "migrationId":
                                                stale["migrationId"]},
                                               global_state.to_document())
                stored = self.load(resume.id)
                assert stored is not None
                return stored
        self.resume_data.replace_one({"_id": resume.id}, resume.to_document(), upsert=True)
        try:
            # Written last: it is what makes the migration exist for load().
            self.global_states.insert_one(global_state.to_document())
        except DuplicateKeyError:
            pass
        stored = self.load(resume.id)
        assert stored is not None
        return stored

    @_retried
    def save_global(self, record: GlobalState, *fields: str) -> None:
        self.global_states.update_one({"_id": record.id},
                                      {"$set": record.stored_values(*fields)})

    @_retried
    def add_hot_documents(self, documents: list[str]) -> list[str]:
        """Add to the stored hot documents at once (instances add theirs concurrently; set
        semantics: adding one again changes nothing) and return them all."""
        stored = self.global_states.find_one_and_update(
            {"_id": GLOBAL_STATE_ID}, {"$addToSet": {"hotDocuments": {"$each": documents}}},
            projection={"hotDocuments": True}, return_document=ReturnDocument.AFTER)
        return list((stored or {}).get("hotDocuments") or documents)

    @_retried
    def mark_reset_started(self) -> None:
        """Say, before anything is dropped, that this migration is being reset: no process
        may resume it from here on (whatever layout it is stored in)."""
        at = now()
        self.global_states.update_one({"_id": GLOBAL_STATE_ID}, {"$set": {"resetStartedAt": at}})
        self.v1_migrations.update_one({"_id": V1_MIGRATION_ID}, {"$set": {"resetStartedAt": at}})

    @_retried
    def save_resume(self, record: ResumeData, *fields: str) -> None:
        record.updated_at = now()
        self.resume_data.update_one({"_id": record.id},
                                    {"$set": record.stored_values(*fields, "updated_at")})

    @_retried
    def resume_records(self) -> dict[str, ResumeData]:
        """Every instance's resume data, by ``_id`` (one per instance of a migration)."""
        return {str(document["_id"]): ResumeData.from_document(document)
                for document in self.resume_data.find()}

    def record_error(self, name: str, message: str, resumable: bool = False) -> None:
        error = ErrorRecord(name=name, message=message, at=now(), resumable=resumable)
        retrying(lambda: self.global_states.update_one(
            {"_id": GLOBAL_STATE_ID}, {"$set": {"error": error.to_document()}}))

    def clear_error(self) -> None:
        """A resumable error's cause was lifted: the migration goes on."""
        retrying(lambda: self.global_states.update_one({"_id": GLOBAL_STATE_ID},
                                                       {"$set": {"error": None}}))

    # -- namespaces ------------------------------------------------------------------------------
    @_retried
    def put_namespace(self, record: NamespaceRecord) -> None:
        self.namespace_records.replace_one({"_id": record.id}, record.to_document(), upsert=True)
        if record.is_collection and record.uuid is not None:
            mapping = UuidMapping.of(record)
            self.uuid_map.replace_one({"_id": mapping.id}, mapping.to_document(), upsert=True)

    @_retried
    def remove_namespace(self, record: NamespaceRecord) -> None:
        """A namespace an interrupted listing recorded and a complete one did not find."""
        self.namespace_records.delete_one({"_id": record.id})
        if record.is_collection and record.uuid is not None:
            self.uuid_map.delete_one({"_id": UuidMapping.of(record).id})

    @_retried
    def namespaces(self) -> list[NamespaceRecord]:
        return [NamespaceRecord.from_document(document)
                for document in self.namespace_records.find().sort("_id", ASCENDING)]

    @_retried
    def mark_partitioned(self, namespace_id: str) -> None:
        self.namespace_records.update_one({"_id": namespace_id}, {"$set": {"partitioned": True}})

    # -- partitions ------------------------------------------------------------------------------
    @_retried
    def add_partitions(self, partitions: Iterable[PartitionRecord]) -> None:
        for partition in partitions:
            self.partitions.replace_one({"_id": partition.id}, partition.to_document(),
                                        upsert=True)

    @_retried
    def replace_partitions(self, db: str, coll: str,
                           partitions: Iterable[PartitionRecord]) -> None:
        """A collection's plan, replacing any earlier one (planning interrupted by a crash
        may have left part of a plan made from another sample)."""
        self.partitions.delete_many({"namespace.db": db, "namespace.coll": coll})
        self.add_partitions(partitions)
        self._refresh_statistics(db, coll)

    def _refresh_statistics(self, db: str, coll: str) -> None:
        """The collection's ``statistics`` document, recomputed from its partitions."""
        partitions = [PartitionRecord.from_document(document) for document in
                      self.partitions.find({"namespace.db": db, "namespace.coll": coll})]
        namespace = self.namespace_records.find_one({"_id": f"{db}.{coll}"}, {"uuid": 1})
        uuid = (namespace or {}).get("uuid") or f"{db}.{coll}"
        statistics = CollectionStatistics.of(NamespaceRef(db=db, coll=coll), uuid,
                                             copy_totals_of(partitions))
        self.statistics.replace_one({"_id": statistics.key.to_document()},
                                    statistics.to_document(), upsert=True)

    @_retried
    def partition(self, partition_id: str) -> PartitionRecord | None:
        document = self.partitions.find_one({"_id": partition_id})
        return None if document is None else PartitionRecord.from_document(document)

    @_retried
    def partition_records(self) -> list[PartitionRecord]:
        return [PartitionRecord.from_document(document) for document in self.partitions.find()]

    # A claim with a lease has lapsed once claimRenewedAt + claimLeaseMillis is past the server's
    # clock ($$NOW), as for the migration lease: the clocks of pymongosync's hosts never matter.
    # A claim without a lease (claimLeaseMillis null or absent, which $gt 0 excludes) never lapses.
    _CLAIM_LAPSED = {"$expr": {"$and": [
        {"$gt": ["$claimLeaseMillis", 0]},
        {"$lt": [{"$add": ["$claimRenewedAt", "$claimLeaseMillis"]}, "$$NOW"]}]}}

    @_retried
    def claim_partition(self, owner: str, lease_seconds: float | None = None, *,
                        instance: str | None = None) -> PartitionRecord | None:
        """Give ``owner`` the next unfinished partition nobody holds, in collection order
        (``instance``: of the partitions assigned to that instance, or to none).

        A claim is an atomic conditional write, so two workers never get the same partition.
        With ``lease_seconds`` the claim lapses unless renewed (:meth:`renew_partition_claim`,
        or any progress recorded) within that time, and a partition whose claim has lapsed
        is claimable again: its new owner resumes from its last checkpoint. Claims without a
        lease are given back by :meth:`release_claims` when their instance starts again.

        An unfinished partition ``owner`` already holds comes first: a claim the destination
        applied but answered with an error (a write concern error) is sent again by the
        retry, and a new claim would leave that one held by a worker that never knew it had
        it (without a lease, until the instance starts again: the copy never finished).
        """
        lease_millis = None if lease_seconds is None else max(1, int(lease_seconds * 1000))
        unfinished = {"partitionPhase": {"$ne": PartitionStatus.DONE.value}}
        claimable: dict[str, Any] = {**unfinished, "$or": [{"owner": None},
                                                           self._CLAIM_LAPSED]}
        if instance is not None:
            claimable["instance"] = {"$in": [None, instance]}
        for wanted in ({**unfinished, "owner": owner}, claimable):
            document = self.partitions.find_one_and_update(
                wanted,
                {"$set": {"owner": owner, "claimLeaseMillis": lease_millis},
                 "$currentDate": {"claimRenewedAt": True}},
                sort=[("namespace.db", ASCENDING), ("namespace.coll", ASCENDING),
                      ("index", ASCENDING)],
                return_document=ReturnDocument.AFTER)
            if document is not None:
                return PartitionRecord.from_document(document)
        return None

    @_retried
    def renew_partition_claim(self, partition_id: str, owner: str) -> bool:
        """Push the claim's lease on; False when ``owner`` no longer holds the partition."""
        result = self.partitions.update_one({"_id": partition_id, "owner": owner},
                                            {"$currentDate": {"claimRenewedAt": True}})
        return result.matched_count == 1

    @_retried
    def release_partition(self, partition_id: str, owner: str) -> None:
        """Give one partition back, if ``owner`` still holds it; its checkpoint stays."""
        self.partitions.update_one({"_id": partition_id, "owner": owner}, {"$set": {
            "owner": None, "claimRenewedAt": None, "claimLeaseMillis": None}})

    @_retried
    def release_claims(self, owner_prefix: str) -> None:
        """Give back every claim held by workers of one instance (they are not running)."""
        claims = [document["_id"] for document in self.partitions.find(
            {"owner": {"$ne": None}}, {"owner": 1}) if
            str(document.get("owner", "")).startswith(owner_prefix)]
        if claims:
            self.partitions.update_many({"_id": {"$in": claims}}, {"$set": {
                "owner": None, "claimRenewedAt": None, "claimLeaseMillis": None}})

    @_retried
    def record_partition_progress(self, partition_id: str, owner: str, last_id: Any,
                                  copied_documents: int, copied_bytes: int) -> bool:
        """Checkpoint a copied batch and renew the claim; only the claim's holder may, and
        only while the partition is unfinished. False (nothing written) otherwise: the worker
        lost its claim (it lapsed and another took the partition over) and must stop copying
        it. This is the fence that keeps two workers from copying one partition at once.

        The counts are the partition's totals so far, set, not added: a checkpoint sent again
        after its answer was lost counts its batch once."""
        result = self.partitions.update_one(
            {"_id": partition_id, "owner": owner,
             "partitionPhase": {"$ne": PartitionStatus.DONE.value}},
            {"$set": {"partitionPhase": PartitionStatus.IN_PROGRESS.value,
                      "lastCopied": CopiedId(id=last_id).to_document(),
                      "copiedDocumentCount": copied_documents,
                      "copiedByteCount": copied_bytes},
             "$currentDate": {"claimRenewedAt": True}})
        return result.matched_count == 1

    @_retried
    def finish_partition(self, partition_id: str) -> None:
        document = self.partitions.find_one_and_update(
            {"_id": partition_id},
            {"$set": {"partitionPhase": PartitionStatus.DONE.value, "owner": None,
                      "claimLeaseMillis": None}},
            projection={"namespace": 1})
        if document is not None:
            self._refresh_statistics(document["namespace"]["db"], document["namespace"]["coll"])

    @_retried
    def copy_totals(self, *, instance: str | None = None) -> CopyTotals:
        """Of every partition, or of one instance's (``instance``)."""
        return copy_totals_of(partition for partition in self.partition_records()
                              if instance is None or partition.instance in (None, instance))

    @_retried
    def partition_counts(self, *, instance: str | None = None) -> tuple[int, int]:
        """(partitions copied, partitions planned), of every instance or of one: two counts,
        not a read of every record."""
        mine: dict[str, Any] = {} if instance is None else {"instance": {"$in": [None, instance]}}
        done = self.partitions.count_documents(
            {**mine, "partitionPhase": PartitionStatus.DONE.value})
        return done, self.partitions.count_documents(mine)

    @_retried
    def record_index_builds(self, namespace: NamespaceRecord, names: list[str], *,
                            built: bool) -> None:
        """``indexCorrection``: the collection's indexes, pending (before they are built) or
        built (after)."""
        for name in names:
            correction = IndexCorrection(
                key=IndexCorrectionKey(db_name=namespace.db,
                                       coll_uuid=namespace.uuid or namespace.id,
                                       index_name=name),
                namespace=NamespaceRef(db=namespace.db, coll=namespace.name),
                last_corrected_counter=1 if built else 0)
            self.index_corrections.replace_one({"_id": correction.key.to_document()},
                                               correction.to_document(), upsert=True)

    # -- the change buffer ---------------------------------------------------------------------
    @_retried
    def _buffer(self, stream: str) -> Collection[RawBSONDocument]:
        """The collection of one buffered stream: ``changeBuffer`` for a lone instance's,
        ``changeBuffer.<name>`` for each stream of a multi-instance migration."""
        if stream == MAIN_STREAM:
            return self.change_buffer
        return self.db.get_collection(f"changeBuffer.{stream}", codec_options=_RAW)

    def _buffer_pieces(self, stream: str) -> Collection[Any]:
        """Where the events of a batch too large for one document are kept, in pieces."""
        name = "changeBufferPieces" if stream == MAIN_STREAM else f"changeBufferPieces.{stream}"
        return self.db[name]

    def append_buffer(self, batch: BufferedBatch, stream: str = MAIN_STREAM) -> None:
        """One batch of source events, stored with the resume token right after them (one
        write: events and position are stored together). Events too large for that document
        are written in pieces first, each addressed by (seq, number): the batch's document,
        written last, makes them part of the buffer, and a restart before it writes them
        again at the same addresses."""
        record: dict[str, Any] = {
            "_id": Int64(batch.seq), "resumeToken": batch.resume_token,
            "lastEventTs": batch.last_event_ts, "events": batch.events, "size": batch.size}
        if batch.size > BUFFER_INLINE_BYTES:
            data = b"".join(event.raw for event in batch.events)
            pieces = self._buffer_pieces(stream)
            count = 0
            for start in range(0, len(data), BUFFER_PIECE_BYTES):
                key = {"seq": Int64(batch.seq), "n": count}
                pieces.replace_one({"_id": key}, {
                    "_id": key, "data": Binary(data[start:start + BUFFER_PIECE_BYTES])},
                    upsert=True)
                count += 1
            record.update(events=[], pieces=count, eventCount=len(batch.events))
        self._buffer(stream).replace_one({"_id": Int64(batch.seq)}, record, upsert=True)

    @_retried
    def buffer_batches(self, after_seq: int, limit: int,
                       stream: str = MAIN_STREAM) -> list[BufferedBatch]:
        documents = self._buffer(stream).find({"_id": {"$gt": after_seq}}).sort(
            "_id", ASCENDING).limit(limit)
        return [BufferedBatch(seq=int(document["_id"]),
                              resume_token=_plain_token(document["resumeToken"]),
                              last_event_ts=document["lastEventTs"],
                              events=self._buffered_events(document, stream),
                              size=int(document["size"]))
                for document in documents]

    def _buffered_events(self, document: RawBSONDocument, stream: str) -> list[Any]:
        count = document.get("pieces")
        if count is None:
            return list(document["events"])
        seq = document["_id"]
        pieces = list(self._buffer_pieces(stream).find(
            {"_id.seq": seq, "_id.n": {"$lt": count}}).sort("_id.n", ASCENDING))
        if [piece["_id"]["n"] for piece in pieces] != list(range(count)):
            raise InternalError(f"stored batch {seq} of the change buffer lacks pieces of its "
                                f"events ({len(pieces)} of {count} found)")
        return bson.decode_all(b"".join(bytes(piece["data"]) for piece in pieces), _RAW)

    @_retried
    def drop_buffer_through(self, seq: int, stream: str = MAIN_STREAM) -> None:
        self._buffer(stream).delete_many({"_id": {"$lte": seq}})
        self._buffer_pieces(stream).delete_many({"_id.seq": {"$lte": seq}})

    @_retried
    def buffer_totals(self, stream: str = MAIN_STREAM) -> BufferTotals:
        totals = BufferTotals()
        for row in self._buffer(stream).aggregate([{"$group": {
                "_id": None, "batches": {"$sum": 1},
                "events": {"$sum": {"$ifNull": ["$eventCount", {"$size": "$events"}]}},
                "size": {"$sum": "$size"}}}]):
            totals.batches, totals.events = int(row["batches"]), int(row["events"])
            totals.size = int(row["size"])
        last = self._buffer(stream).find_one({}, {"events": 0}, sort=[("_id", -1)])
        if last is not None:
            totals.last_seq = int(last["_id"])
            totals.last_event_ts = last["lastEventTs"]
            totals.resume_token = _plain_token(last["resumeToken"])
        return totals

    # -- what this migration created on the destination ----------------------------------------
    @_retried
    def record_created(self, database: str, collection: str, *, new_database: bool) -> None:
        """Note a namespace *before* creating it, so a crash in between cannot hide it.

        The collection stays unconfirmed until :meth:`confirm_created`: only what this
        migration really created is ever dropped by ``mongosync reset``. The database is
        recorded only when it did not exist: a database that held data before is never ours.
        """
        if new_database:
            self.created.update_one({"_id": database}, {"$setOnInsert": {"kind": "database"}},
                                    upsert=True)
        self.created.update_one({"_id": f"{database}.{collection}"}, {"$setOnInsert": {
            "kind": "collection", "confirmed": False}}, upsert=True)

    @_retried
    def confirm_created(self, database: str, collection: str) -> None:
        self.created.update_one({"_id": f"{database}.{collection}"},
                                {"$set": {"confirmed": True}})

    @_retried
    def forget_created(self, database: str, collection: str) -> None:
        """The namespace existed already: it is not this migration's (unless confirmed)."""
        self.created.delete_one({"_id": f"{database}.{collection}", "confirmed": False})

    @_retried
    def created_databases(self) -> list[str]:
        return sorted(d["_id"] for d in self.created.find({"kind": "database"}))

    @_retried
    def created_namespaces(self) -> list[str]:
        """Collections this migration created (the first release did not record
        confirmations: its records count as confirmed)."""
        return sorted(d["_id"] for d in self.created.find({"kind": "collection",
                                                            "confirmed": {"$ne": False}}))

    @_retried
    def unconfirmed_namespaces(self) -> list[str]:
        """Collections a crash may have left created but not confirmed."""
        return sorted(d["_id"] for d in self.created.find({"kind": "collection",
                                                            "confirmed": False}))

    # -- the ownership lease (the protocol is in lease.py) -----------------------------------------
    # Liveness is judged by the destination server's clock: renewedAt is written with
    # $currentDate and compared with $$NOW, so the clocks of pymongosync's hosts never matter.
    _EXPIRED = {"$expr": {"$lt": [{"$add": ["$renewedAt", "$leaseMillis"]}, "$$NOW"]}}
    _LIVE = {"$expr": {"$gte": [{"$add": ["$renewedAt", "$leaseMillis"]}, "$$NOW"]}}

    @_retried
    def try_take_lease(self, lease: LeaseRecord, *, from_owner: str | None = None) -> bool:
        """Write ``lease`` if the lease is free or ours already; else, if it has expired, or
        (with ``from_owner``) if it is held by exactly that owner. One conditional write: when
        the filter does not match, the upsert collides on ``_id`` and nothing is written."""
        fields = lease.to_document()
        fields.pop("_id")
        fields.pop("renewedAt", None)
        takeable = self._EXPIRED if from_owner is None else {"owner": from_owner}
        try:
            self.leases.update_one(
                {"_id": lease.id, "$or": [{"owner": lease.owner}, takeable]},
                {"$set": fields, "$currentDate": {"renewedAt": True}}, upsert=True)
        except DuplicateKeyError:
            return False
        return True

    @_retried
    def renew_lease(self, lease_id: str, owner: str) -> bool:
        result = self.leases.update_one({"_id": lease_id, "owner": owner},
                                        {"$currentDate": {"renewedAt": True}})
        return result.matched_count == 1

    @_retried
    def drop_lease(self, lease_id: str, owner: str) -> None:
        self.leases.delete_one({"_id": lease_id, "owner": owner})

    @_retried
    def read_lease(self, lease_id: str) -> tuple[LeaseRecord | None, bool]:
        """The stored lease, and whether it is still live."""
        document = self.leases.find_one({"_id": lease_id})
        if document is None:
            return None, False
        live = self.leases.find_one({"_id": lease_id, **self._LIVE}, {"_id": 1}) is not None
        return LeaseRecord.from_document(document), live
