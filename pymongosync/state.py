"""The migration's stored state as typed records, with stable identifiers and a schema version.

Every record lives in the destination's reserved database (``mongosync_reserved_for_internal_use``)
and only :mod:`pymongosync.store` reads or writes it. The layout follows mongosync's own where it
has one (spec §14), so that tools written for mongosync find familiar names:

- ``globalState`` — one document: the validated /start request, both clusters' identities, the
  change-stream start time, what the migration changed on the clusters (write blocks, balancers)
  so it can be undone, and any fatal error;
- ``resumeData`` — one document per instance (``_id: "coordinator"`` for a lone instance): state,
  phase and its history, the change-stream resume information, the commit progress, counters;
- ``namespaces`` — one document per source collection or view being migrated;
- ``partitions`` — one document per ``_id`` range of a collection, with its resume point and the
  worker that has claimed it;
- ``created`` — every database and collection this migration created on the destination;
- ``lease`` — which process owns the migration (one owner at a time, see :mod:`pymongosync.lease`);
- ``statistics``, ``uuidMap``, ``indexCorrection`` — views for MongoDB's tooling (Mongosync
  Insights) in mongosync's shape, written as the engine goes and never read back.

Identifiers (states, phases, partition statuses) are enums whose values are stable: what is
stored and resumed never depends on display text. Display labels (``/progress``, logs) are
looked up from them (``phaseTransitions`` alone stores the texts, which MongoDB's tooling
matches, and reads both). ``schemaVersion`` in ``globalState`` says which layout a migration was
stored with; :func:`upgrade_v1` reads the layout of the first release (one ``migration``
document, before ``schemaVersion`` existed).
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Any, Literal, Self

from bson.timestamp import Timestamp
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator
from pydantic.alias_generators import to_camel

from pymongosync.request import NamespaceFilterEntry, StartRequest

SCHEMA_VERSION = 2
COORDINATOR = "coordinator"
GLOBAL_STATE_ID = "globalState"


class MigrationState(StrEnum):
    """The states of spec §4 (INITIALIZING is the process's own, never stored)."""

    IDLE = "IDLE"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMMITTING = "COMMITTING"
    COMMITTED = "COMMITTED"
    REVERSING = "REVERSING"


class Phase(StrEnum):
    """The persisted phases, in order. Values are mongosync's ``mongosync_phase`` names."""

    PREPARE = "InitializingCollectionsAndIndexes"
    PLAN_PARTITIONS = "InitializingPartitions"
    COPY = "CollectionCopy"
    BUILD_INDEXES = "BuildingIndexes"
    APPLY_CHANGES = "ChangeEventApplication"
    COMMIT = "Commit"
    DONE = "CommitCompleted"

    @property
    def label(self) -> str:
        """mongosync's ``syncPhase`` text: what logs say and the metadata shows operators."""
        return _PHASE_LABELS[self]

    @property
    def next(self) -> Phase:
        order = list(Phase)
        return order[min(order.index(self) + 1, len(order) - 1)]

    @classmethod
    def from_label(cls, label: str) -> Phase:
        for phase, text in _PHASE_LABELS.items():
            if text == label:
                return phase
        raise ValueError(f"unknown phase {label!r}")


_PHASE_LABELS = {
    Phase.PREPARE: "initializing collections and indexes",
    Phase.PLAN_PARTITIONS: "initializing partitions",
    Phase.COPY: "collection copy",
    Phase.BUILD_INDEXES: "building indexes",
    Phase.APPLY_CHANGES: "change event application",
    Phase.COMMIT: "commit",
    Phase.DONE: "commit completed",
}


class PartitionStatus(StrEnum):
    NOT_STARTED = "not started"
    IN_PROGRESS = "in progress"
    DONE = "done"


class NamespaceKind(StrEnum):
    COLLECTION = "collection"
    VIEW = "view"
    TIMESERIES = "timeseries"


class Record(BaseModel):
    """A stored document: Python names in snake_case, stored names in camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              arbitrary_types_allowed=True, extra="ignore")

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @classmethod
    def from_document(cls, document: Any) -> Self:
        return cls.model_validate(dict(document))

    @classmethod
    def stored_name(cls, field: str) -> str:
        """The document key of a field (``copied_byte_count`` → ``copiedByteCount``)."""
        info = cls.model_fields[field]
        return info.alias or field

    def stored_values(self, *fields: str) -> dict[str, Any]:
        """``{stored name: stored value}`` of some fields, for a ``$set`` (only those are
        serialized: change application saves its checkpoint after every batch)."""
        unknown = set(fields).difference(type(self).model_fields)
        if unknown:
            raise KeyError(f"{type(self).__name__} has no field {sorted(unknown)}")
        return self.model_dump(by_alias=True, include=set(fields))


class ErrorRecord(Record):
    name: str
    message: str
    at: datetime.datetime | None = None
    # A condition the operator can lift (e.g. the change buffer's limit): a process started
    # again goes on instead of refusing the migration.
    resumable: bool = False


class GlobalState(Record):
    """What the migration is: fixed at /start, plus what it changed on the clusters."""

    id: str = Field(GLOBAL_STATE_ID, alias="_id")
    schema_version: int = SCHEMA_VERSION
    migration_id: str
    created_at: datetime.datetime
    request: dict[str, Any]  # StartRequest.to_document()
    source_label: str
    destination_label: str
    cluster_hosts: dict[str, list[str]]
    change_stream_start_time: Timestamp
    destination_write_blocked_by_us: bool = False
    source_write_blocked_by_us: bool = False
    # role ("source"/"destination") -> True when this migration stopped that balancer.
    balancers_stopped_by_us: dict[str, bool] = Field(default_factory=dict)
    reversed_from: str | None = None
    superseded_by: str | None = None
    # Set by `mongosync reset` before it drops anything: such a migration must never resume.
    reset_started_at: datetime.datetime | None = None
    # --disableVerification once given stays in force (as in mongosync).
    verification_disabled: bool = False
    # --hotDocIDs of every process that ran the migration (HotDocument.to_stored texts): their
    # CRUD events are skipped and the documents taken from the source at commit.
    hot_documents: list[str] = Field(default_factory=list)
    # Source changes stored on the destination while the copy runs (fixed at /start).
    change_buffering: bool = True
    # One instance per source shard (--id): the source's shard ids at /start, the first one
    # the coordinator. Empty: one instance drives the whole migration.
    instances: list[str] = Field(default_factory=list)
    # What /start's pre-flight warned about (pymongosync.preflight), shown in /progress.
    preflight_warnings: list[str] = Field(default_factory=list)
    # The source's namespaces were listed after /start's change-stream start time: the time
    # before the listing began, and per database the time before its collections were listed.
    # Earlier change events are what the listing saw already (changes/translate.py Listing).
    listing_started: Timestamp | None = None
    listing_times: dict[str, Timestamp] = Field(default_factory=dict)
    error: ErrorRecord | None = None

    def mongosync_settings(self) -> dict[str, Any]:
        """The migration's settings under mongosync's own ``globalState`` names and values
        (spec §14), which MongoDB's tooling reads (Mongosync Insights' status view). They are
        derived from the request, never read back: :meth:`to_document` and
        :meth:`stored_values` add them, so every write of the record keeps them current."""
        request = StartRequest.from_document(self.request)
        natural = request.copyInNaturalOrder or []
        verifying = request.verification.enabled and not self.verification_disabled
        return {
            "reversible": request.reversible,
            "writeBlockingMode": request.write_blocking_mode,
            "buildIndexes": request.buildIndexes,
            "detectRandomId": request.detectRandomId,
            "verificationMode": "startAtCEA" if verifying else "disabled",
            "namespaceFilter": {"inclusionFilter": _filter_entries(request.includeNamespaces),
                                "exclusionFilter": _filter_entries(request.excludeNamespaces)},
            "copyInNaturalOrderFilter": {
                "selectAll": any(entry.database == "." for entry in natural),
                "dbsAndColls": {entry.database: list(entry.collections or [])
                                for entry in natural if entry.database != "."}},
        }

    def to_document(self) -> dict[str, Any]:
        return {**super().to_document(), **self.mongosync_settings()}

    def stored_values(self, *fields: str) -> dict[str, Any]:
        return {**super().stored_values(*fields), **self.mongosync_settings()}


def _filter_entries(entries: list[NamespaceFilterEntry] | None) -> list[dict[str, Any]] | None:
    """Namespace filter entries as mongosync stores them: ``database`` is a list of names."""
    if entries is None:
        return None
    stored = []
    for entry in entries:
        document = entry.model_dump(exclude_none=True)
        if entry.database is not None:
            document["database"] = [entry.database]
        stored.append(document)
    return stored


class ResumeInfo(Record):
    """Where change application stands: mongosync's ``crudChangeStreamResumeInfo``."""

    resume_token: dict[str, Any] | None = None
    last_event_ts: Timestamp | None = None


class PhaseTransition(Record):
    """``resumeData.phaseTransitions[]``. The phase is stored as its ``syncPhase`` text, as
    mongosync stores it: MongoDB's Mongosync Insights finds the start and the end of a
    migration by the texts ``initializing collections and indexes`` and ``commit completed``.
    Transitions stored under the phase identifiers (before this was so) are read too."""

    phase: Phase
    ts: datetime.datetime

    @field_validator("phase", mode="before")
    @classmethod
    def _from_label(cls, value: Any) -> Any:
        if isinstance(value, str) and value in _PHASE_LABELS.values():
            return Phase.from_label(value)
        return value

    @field_serializer("phase")
    def _as_label(self, phase: Phase) -> str:
        return phase.label


class IndexRef(Record):
    db: str
    coll: str
    name: str
    # The source's unique index also has prepareUnique (set on it after its conversion):
    # converting the destination's clears it, so it is set again.
    prepare_unique: bool = False


class ResumeData(Record):
    """One instance's progress: state, phase, change-stream position, commit steps."""

    id: str = Field(COORDINATOR, alias="_id")
    state: MigrationState
    phase: Phase
    sync_phase: str = ""  # the phase's label, as mongosync stores it
    phase_transitions: list[PhaseTransition] = Field(default_factory=list)
    crud_change_stream_resume_info: ResumeInfo = Field(default_factory=ResumeInfo)
    # mongosync's ``ddlChangeStreamResumeInfo``: the time of the last DDL event applied. One
    # instance reads one stream of both kinds, so its resume token is the one above; with one
    # instance per source shard, the coordinator's DDL stream is the router's, resumed from here.
    ddl_change_stream_resume_info: ResumeInfo | None = None
    # ``{"Source": "cluster0: host:port", "Destination": ...}``, as /progress shows it.
    direction_mapping: dict[str, str] | None = None
    events_applied: int = 0
    copy_finished_time: Timestamp | None = None
    # The persisted end position of the commit: every event up to it is applied before canWrite.
    commit_time: Timestamp | None = None
    can_write: bool = False
    can_write_time: Timestamp | None = None
    pending_unique: list[IndexRef] = Field(default_factory=list)
    # The last batch of the change buffer that change application has applied.
    buffer_applied_seq: int = 0
    # Whether the index builds beside change application have finished.
    index_builds_done: bool = False
    # -- one instance per source shard (pymongosync.instances) --
    # Every event of this instance's shard before this cluster time is applied.
    applied_before: Timestamp | None = None
    # The coordinator's DDL stream: every DDL event up to ``ddl_seen_through`` is known, and
    # the one at ``ddl_pending`` waits for every instance to reach it before it is applied.
    ddl_seen_through: Timestamp | None = None
    ddl_pending: Timestamp | None = None
    # The last batch of the coordinator's buffered DDL stream it has applied.
    ddl_buffer_applied_seq: int = 0
    # This instance applied every event of its shard up to the commit time.
    commit_drained: bool = False
    # The coordinator's canCommit conditions that only it can judge (index builds, verifier).
    ready_to_commit: bool = False
    updated_at: datetime.datetime | None = None


class NamespaceRecord(Record):
    """A source collection or view as it was when the migration listed it."""

    id: str = Field(alias="_id")  # "db.name"
    db: str
    name: str
    kind: NamespaceKind
    options: dict[str, Any] = Field(default_factory=dict)
    uuid: Any = None
    indexes: list[dict[str, Any]] = Field(default_factory=list)
    shard_key: dict[str, Any] | None = None
    estimated_documents: int = 0
    estimated_bytes: int = 0
    partitioned: bool = False

    @property
    def is_collection(self) -> bool:
        return self.kind == NamespaceKind.COLLECTION


class NamespaceRef(Record):
    db: str
    coll: str

    @property
    def full_name(self) -> str:
        return f"{self.db}.{self.coll}"


class CopiedId(Record):
    """The ``_id`` of the last document a partition copied (wrapped: ``null`` is a valid
    ``_id``, so a bare value could not tell "nothing copied yet" apart)."""

    id: Any = Field(alias="_id")


class PartitionRecord(Record):
    """An ``_id`` range of one collection: copied by one worker at a time, resumable."""

    id: str = Field(alias="_id")
    namespace: NamespaceRef
    index: int
    lower: Any
    upper: Any
    is_last: bool
    natural: bool = False  # capped collections: one partition, read in natural order
    partition_phase: PartitionStatus = PartitionStatus.NOT_STARTED
    last_copied: CopiedId | None = None
    copied_document_count: int = 0
    copied_byte_count: int = 0
    estimated_document_count: int = 0
    total_byte_count: int = 0  # estimate, as mongosync's field of that name
    owner: str | None = None
    # The instance (source shard id) that copies this partition; None: any instance (a
    # migration driven by one instance).
    instance: str | None = None
    claim_renewed_at: datetime.datetime | None = None
    # A claim with a lease (copy worker processes) lapses once ``claimRenewedAt`` plus this is
    # past the destination server's clock: another worker may then take the partition over.
    # None: the claim lasts until it is given back (release_claims, finish_partition).
    claim_lease_millis: int | None = None


class LeaseRecord(Record):
    """Who owns the migration; live while ``renewedAt + leaseMillis`` is after the server's
    clock (server time only, so clock skew between hosts does not matter)."""

    id: str = Field(COORDINATOR, alias="_id")
    owner: str
    host: str
    pid: int
    process: str  # see lease.ProcessIdentity.process
    lease_millis: int
    renewed_at: datetime.datetime | None = None


class BufferedBatch(Record):
    """Source change events stored on the destination while the copy runs, in stream order:
    ``seq`` orders the batches, ``resume_token`` resumes the source stream right after them."""

    seq: int = Field(alias="_id")
    resume_token: dict[str, Any] | None = None
    last_event_ts: Timestamp | None = None
    events: list[Any] = Field(default_factory=list)  # raw BSON change events
    size: int = 0


class BufferTotals(Record):
    batches: int = 0
    events: int = 0
    size: int = 0
    last_seq: int = 0
    last_event_ts: Timestamp | None = None
    resume_token: dict[str, Any] | None = None


class CopyTotals(Record):
    """Copy progress summed over partitions: of the whole migration, or of one namespace."""

    partitions: int = 0
    partitions_done: int = 0
    copied_bytes: int = 0
    copied_documents: int = 0
    estimated_bytes: int = 0
    estimated_documents: int = 0
    by_namespace: dict[str, CopyTotals] = Field(default_factory=dict)

    def add(self, partition: PartitionRecord) -> None:
        self.partitions += 1
        self.partitions_done += partition.partition_phase == PartitionStatus.DONE
        self.copied_bytes += partition.copied_byte_count
        self.copied_documents += partition.copied_document_count
        self.estimated_bytes += partition.total_byte_count
        self.estimated_documents += partition.estimated_document_count


# -- what MongoDB's tooling reads (spec §14) ------------------------------------------------------
# Written beside the records above for tools made for mongosync (Mongosync Insights), never read
# back by pymongosync: losing one loses nothing but a view. Collections are named by their source
# UUID, as mongosync names them; a collection without one (none on 6.0+) by "db.coll".


class StatisticsKey(Record):
    field_name: str = "collectionStats"
    id: str = COORDINATOR  # the instance
    uuid: Any


class CollectionStatistics(Record):
    """``statistics``: one collection's copy, refreshed when its partitions are planned and
    whenever one of them finishes."""

    key: StatisticsKey = Field(alias="_id")
    namespace: NamespaceRef
    estimated_copied_bytes: int
    estimated_total_bytes: int
    num_partitions: int
    num_completed_partitions: int
    copied_document_count: int
    estimated_document_count: int

    @classmethod
    def of(cls, namespace: NamespaceRef, uuid: Any, totals: CopyTotals) -> CollectionStatistics:
        return cls(key=StatisticsKey(uuid=uuid), namespace=namespace,
                   estimated_copied_bytes=totals.copied_bytes,
                   estimated_total_bytes=max(totals.estimated_bytes, totals.copied_bytes),
                   num_partitions=totals.partitions,
                   num_completed_partitions=totals.partitions_done,
                   copied_document_count=totals.copied_documents,
                   estimated_document_count=totals.estimated_documents)


class UuidMapping(Record):
    """``uuidMap``: a source collection (by UUID) and where it goes on the destination."""

    id: Any = Field(alias="_id")
    db_name: str
    src_db_name: str = Field(alias="srcDBName")
    src_coll_name: str
    dst_db_name: str = Field(alias="dstDBName")
    dst_coll_name: str

    @classmethod
    def of(cls, record: NamespaceRecord) -> UuidMapping:
        return cls(id=record.uuid, db_name=record.db, src_db_name=record.db,
                   src_coll_name=record.name, dst_db_name=record.db, dst_coll_name=record.name)


class IndexCorrectionKey(Record):
    db_name: str
    coll_uuid: Any = Field(alias="collUUID")
    index_name: str


class IndexCorrection(Record):
    """``indexCorrection``: one index to build on the destination; it is pending while the
    two counters differ (mongosync's semantics, which the tooling relies on)."""

    key: IndexCorrectionKey = Field(alias="_id")
    namespace: NamespaceRef
    should_correct_counter: int = 1
    last_corrected_counter: int = 0


# -- the layout of the first release (schema version 1) -----------------------------------------


def upgrade_v1_migration(document: dict[str, Any]) -> tuple[GlobalState, ResumeData]:
    """The two records of a version-1 ``migration`` document (one document held everything)."""
    counters = document.get("counters") or {}
    error = document.get("error")
    global_state = GlobalState(
        migration_id=document["migrationId"], created_at=document["createdAt"],
        request=document["request"], source_label=document["sourceLabel"],
        destination_label=document["destinationLabel"],
        cluster_hosts=document.get("clusterHosts") or {},
        change_stream_start_time=document["changeStreamStartTime"],
        destination_write_blocked_by_us=bool(document.get("destinationWriteBlockedByUs")),
        source_write_blocked_by_us=bool(document.get("sourceWriteBlockedByUs")),
        balancers_stopped_by_us=dict(document.get("balancersStoppedByUs") or {}),
        reversed_from=document.get("reversedFrom"), superseded_by=document.get("supersededBy"),
        reset_started_at=document.get("resetStartedAt"),
        error=None if not error else ErrorRecord(name=error["name"], message=error["message"],
                                                 at=error.get("at")))
    phase = Phase.from_label(document["phase"])
    resume = ResumeData(
        state=MigrationState(document["state"]), phase=phase, sync_phase=phase.label,
        crud_change_stream_resume_info=ResumeInfo(resume_token=document.get("resumeToken"),
                                                  last_event_ts=document.get("lastAppliedTime")),
        events_applied=int(counters.get("eventsApplied", 0)),
        copy_finished_time=document.get("copyFinishedTime"),
        commit_time=document.get("commitTime"), can_write=bool(document.get("canWrite")),
        can_write_time=document.get("canWriteTime"),
        pending_unique=[IndexRef(db=db, coll=coll, name=name)
                        for db, coll, name in document.get("pendingUnique") or []],
        updated_at=document.get("updatedAt"))
    return global_state, resume


def upgrade_v1_partition(document: dict[str, Any]) -> PartitionRecord:
    """A version-1 partition (``namespace`` as "db.coll", ``status``, ``lastId``)."""
    last_id = document.get("lastId")
    return PartitionRecord(
        id=document["_id"], namespace=NamespaceRef(db=document["db"],
                                                   coll=document["collection"]),
        index=document["index"], lower=document["lower"], upper=document["upper"],
        is_last=bool(document.get("last")), natural=bool(document.get("natural")),
        partition_phase=PartitionStatus(document["status"]),
        # Version 1 could not store a null _id as a resume point; such a partition restarts,
        # and its counts with it.
        last_copied=None if last_id is None else CopiedId(id=last_id),
        copied_document_count=0 if last_id is None else int(document.get("copiedDocuments", 0)),
        copied_byte_count=0 if last_id is None else int(document.get("copiedBytes", 0)),
        estimated_document_count=int(document.get("estimatedDocuments", 0)),
        total_byte_count=int(document.get("estimatedBytes", 0)))


def is_v1_partition(document: dict[str, Any]) -> bool:
    return "status" in document and "partitionPhase" not in document


# -- the embedded verifier ---------------------------------------------------------------------


class VerificationPhase(StrEnum):
    """mongosync's ``verification.*.phase`` values, and how the verification ended."""

    NOT_STARTED = "not started"
    INITIAL_HASHING = "initial hashing"
    STREAM_HASHING = "stream hashing"
    PASSED = "passed"
    FAILED = "failed"


class TaskStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"


class MismatchKind(StrEnum):
    MISSING = "missing"  # on the source, not on the destination
    EXTRA = "extra"  # on the destination only
    DIFFERENT = "different"  # both, with other bytes (values, types or field order)
    INDEX = "index"
    OPTION = "option"
    VIEW = "view"
    SHARD_KEY = "shard key"
    COLLECTION = "collection"  # a whole collection missing or extra


# Differences of documents, not of metadata: what ``mongosync repair`` can take from the source.
DOCUMENT_KINDS = frozenset({MismatchKind.MISSING, MismatchKind.EXTRA, MismatchKind.DIFFERENT})


class VerifierState(Record):
    """The verifier of one migration: where it stands, what it has seen."""

    id: str = Field("verifier", alias="_id")
    phase: VerificationPhase = VerificationPhase.NOT_STARTED
    # Where the destination's change stream is followed from (writes made behind the tool's
    # back show up there).
    destination_resume_token: dict[str, Any] | None = None
    destination_start_time: Timestamp | None = None
    destination_last_event_ts: Timestamp | None = None
    # With one instance per source shard, where the source's change stream (every shard's,
    # through the router) is followed from: each instance applies only its own shard's.
    source_resume_token: dict[str, Any] | None = None
    source_start_time: Timestamp | None = None
    source_last_event_ts: Timestamp | None = None
    # With one instance per source shard: every change up to these cluster times (each side's
    # own clock) is verified. The coordinator's verifier stores them; the other instances'
    # /progress tells its lags from them.
    source_verified_through: Timestamp | None = None
    destination_verified_through: Timestamp | None = None
    # The documents hashed are summed from the ranges (verifier.store.TaskSummary).
    rechecked_documents: int = 0
    rehashed_documents: int = 0  # hashed again after a stop interrupted their range
    final_started_at: datetime.datetime | None = None
    verdict: str | None = None
    # The clusters compared ("source"/"destination" → hosts), for ``mongosync verify``.
    clusters: dict[str, list[str]] | None = None


class VerificationTask(Record):
    """One ``_id`` range to hash on both sides (the copy's partition of the same name)."""

    id: str = Field(alias="_id")
    namespace: NamespaceRef
    lower: Any
    upper: Any
    is_last: bool
    status: TaskStatus = TaskStatus.PENDING
    owner: str | None = None
    hashed_source: int = 0
    hashed_destination: int = 0
    estimated_documents: int = 0


class RecheckKey(Record):
    """Stored as the recheck's ``_id``: the server compares it by value, so 1 and 1.0 are one
    document, as they are one ``_id``."""

    ns: str
    id: Any


class Recheck(Record):
    """A document to compare again on both sides, once change application has applied every
    source change up to ``due``."""

    key: RecheckKey = Field(alias="_id")
    due: Timestamp
    attempts: int = 0


class Mismatch(Record):
    """One difference the verifier found and confirmed."""

    namespace: str
    kind: MismatchKind
    document_id: CopiedId | None = None
    detail: str = ""
    at: datetime.datetime | None = None


class Repair(Record):
    """A document ``mongosync repair`` took from the source after the verifier found it
    different (stored under the document's recheck key: repairing it again rewrites it)."""

    key: RecheckKey = Field(alias="_id")
    kind: MismatchKind  # what the verifier had found
    action: Literal["replaced", "deleted"]  # what the destination's document became
    at: datetime.datetime | None = None
