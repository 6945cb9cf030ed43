"""The stored records (pymongosync.state): BSON round trips, phases, the first release's layout."""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp

from pymongosync.state import (
    CollectionStatistics,
    CopiedId,
    CopyTotals,
    ErrorRecord,
    GlobalState,
    IndexCorrection,
    IndexCorrectionKey,
    IndexRef,
    MigrationState,
    NamespaceKind,
    NamespaceRecord,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
    Phase,
    PhaseTransition,
    Record,
    ResumeData,
    ResumeInfo,
    UuidMapping,
    is_v1_partition,
    upgrade_v1_migration,
    upgrade_v1_partition,
)
from tests.unit.fakes import METADATA_CODEC
from tests.unit.support import (
    CREATED_AT,
    global_state,
    request,
    v1_migration_document,
    v1_partition_documents,
)

BEFORE_YEAR_ONE = DatetimeMS(-62_135_596_800_001)
AFTER_YEAR_9999 = DatetimeMS(253_402_300_800_000)


def stored(record: Record) -> dict[str, Any]:
    """The document as the metadata database gives it back."""
    return bson.decode(bson.encode(record.to_document()), codec_options=METADATA_CODEC)


def exact(value: Any) -> bytes:
    return bson.encode({"v": value})


def partition(**fields: Any) -> PartitionRecord:
    return PartitionRecord(**{"_id": "shop.orders#3", "namespace": NamespaceRef(
        db="shop", coll="orders"), "index": 3, "lower": Int64(1), "upper": MaxKey(),
        "is_last": True, **fields})


@pytest.mark.parametrize("lower, upper, last", [
    (Int64(5), Code("function() {}", {"x": 1}), Decimal128("1.5")),
    (MinKey(), MaxKey(), "text"),
    (BEFORE_YEAR_ONE, AFTER_YEAR_9999, BEFORE_YEAR_ONE),
    (Binary(b"\x01\x02", 4), {"a": Int64(1), "b": [1.5, None]}, None),
])
def test_partitions_keep_bson_types_through_the_store(lower: Any, upper: Any,
                                                      last: Any) -> None:
    record = partition(lower=lower, upper=upper, last_copied=CopiedId(id=last),
                       partition_phase=PartitionStatus.IN_PROGRESS)
    back = PartitionRecord.from_document(stored(record))

    assert exact(back.lower) == exact(lower) and exact(back.upper) == exact(upper)
    assert back.last_copied is not None and exact(back.last_copied.id) == exact(last)
    assert back == record
    assert back.partition_phase is PartitionStatus.IN_PROGRESS


def test_a_null_id_is_a_resume_point_not_the_absence_of_one() -> None:
    resumed = PartitionRecord.from_document(stored(partition(last_copied=CopiedId(id=None))))
    fresh = PartitionRecord.from_document(stored(partition()))
    assert resumed.last_copied == CopiedId(id=None)
    assert fresh.last_copied is None
    assert stored(partition(last_copied=CopiedId(id=None)))["lastCopied"] == {"_id": None}


def test_records_are_stored_under_camel_case_names() -> None:
    document = partition(copied_byte_count=7).to_document()
    assert {"_id", "namespace", "isLast", "partitionPhase", "lastCopied", "copiedByteCount",
            "copiedDocumentCount", "totalByteCount", "estimatedDocumentCount",
            "claimRenewedAt"} <= set(document)
    assert document["partitionPhase"] == "not started"
    assert ResumeData.stored_name("crud_change_stream_resume_info") == \
        "crudChangeStreamResumeInfo"
    resume = ResumeData(state=MigrationState.RUNNING, phase=Phase.COPY, events_applied=3)
    assert resume.stored_values("events_applied", "phase") == {"eventsApplied": 3,
                                                               "phase": "CollectionCopy"}


def test_resume_data_and_global_state_round_trip() -> None:
    resume = ResumeData(
        state=MigrationState.COMMITTING, phase=Phase.COMMIT, sync_phase="commit",
        phase_transitions=[PhaseTransition(phase=Phase.COMMIT, ts=CREATED_AT)],
        crud_change_stream_resume_info=ResumeInfo(
            resume_token={"_data": "826553658000000001"}, last_event_ts=Timestamp(5, 6)),
        events_applied=Int64(2**40), copy_finished_time=Timestamp(4, 1),
        commit_time=Timestamp(6, 0), pending_unique=[IndexRef(db="d", coll="c", name="x")],
        updated_at=CREATED_AT)
    back = ResumeData.from_document(stored(resume))
    assert back == resume
    assert isinstance(back.crud_change_stream_resume_info.last_event_ts, Timestamp)

    state = global_state(request(reversible=True), Timestamp(1, 2),
                         balancers_stopped_by_us={"source": True},
                         error=ErrorRecord(name="InternalError", message="x", at=CREATED_AT))
    assert GlobalState.from_document(stored(state)) == state
    assert stored(state)["_id"] == "globalState" and stored(state)["schemaVersion"] == 2


def test_namespace_records_keep_options_and_uuid() -> None:
    record = NamespaceRecord(id="shop.orders", db="shop", name="orders",
                             kind=NamespaceKind.COLLECTION,
                             options={"capped": True, "size": Int64(1 << 33),
                                      "validator": {"$jsonSchema": {"required": ["a"]}}},
                             uuid=Binary(b"0123456789abcdef", 4),
                             indexes=[{"v": 2, "key": {"a": -1}, "name": "a_-1",
                                       "expireAfterSeconds": Int64(10)}])
    back = NamespaceRecord.from_document(stored(record))
    assert back == record and isinstance(back.options["size"], Int64)
    assert isinstance(back.uuid, Binary) and back.uuid.subtype == 4
    assert back.is_collection


def test_phases_in_order_with_labels() -> None:
    assert list(Phase) == [Phase.PREPARE, Phase.PLAN_PARTITIONS, Phase.COPY,
                           Phase.BUILD_INDEXES, Phase.APPLY_CHANGES, Phase.COMMIT, Phase.DONE]
    assert [phase.next for phase in Phase] == list(Phase)[1:] + [Phase.DONE]
    assert [phase.label for phase in Phase] == [
        "initializing collections and indexes", "initializing partitions", "collection copy",
        "building indexes", "change event application", "commit", "commit completed"]
    assert Phase.APPLY_CHANGES.value == "ChangeEventApplication"
    assert all(Phase.from_label(phase.label) is phase for phase in Phase)
    with pytest.raises(ValueError):
        Phase.from_label("CollectionCopy")  # a value, not a label


# -- the first release's layout ----------------------------------------------------------------


def test_a_v1_migration_upgrades_to_its_two_records() -> None:
    global_state_, resume = upgrade_v1_migration(v1_migration_document())

    assert global_state_.migration_id == "v1-migration"
    assert global_state_.created_at == CREATED_AT
    assert (global_state_.source_label, global_state_.destination_label) == ("cluster0",
                                                                             "cluster1")
    assert global_state_.cluster_hosts == {"cluster0": ["a:1"], "cluster1": ["b:2"]}
    assert global_state_.change_stream_start_time == Timestamp(1_700_000_000, 3)
    assert global_state_.destination_write_blocked_by_us is True
    assert global_state_.source_write_blocked_by_us is False
    assert global_state_.balancers_stopped_by_us == {"source": True}
    assert global_state_.error is None and global_state_.schema_version == 2
    assert global_state_.request["buildIndexes"] == "afterDataCopy"

    assert (resume.state, resume.phase) == (MigrationState.RUNNING, Phase.APPLY_CHANGES)
    assert resume.sync_phase == "change event application"
    assert resume.crud_change_stream_resume_info == ResumeInfo(
        resume_token={"_data": "8265536580000000052B0229296E04"},
        last_event_ts=Timestamp(1_700_000_200, 7))
    assert resume.events_applied == 1234
    assert resume.copy_finished_time == Timestamp(1_700_000_100, 1)
    assert resume.commit_time is None and resume.can_write is False
    assert resume.pending_unique == [] and resume.id == "coordinator"


def test_a_committed_v1_migration_upgrades_with_its_commit_progress() -> None:
    document = v1_migration_document() | {
        "state": "COMMITTED", "phase": "commit completed", "commitTime": Timestamp(9, 1),
        "canWrite": True, "canWriteTime": Timestamp(9, 2), "sourceWriteBlockedByUs": True,
        "destinationWriteBlockedByUs": False,
        "pendingUnique": [["shop", "orders", "a_1"]],
        "balancersStoppedByUs": {"source": False},
        "error": {"name": "InternalError", "message": "late", "at": CREATED_AT},
        "supersededBy": "reverse"}
    global_state_, resume = upgrade_v1_migration(document)

    assert (resume.state, resume.phase) == (MigrationState.COMMITTED, Phase.DONE)
    assert (resume.commit_time, resume.can_write, resume.can_write_time) == (
        Timestamp(9, 1), True, Timestamp(9, 2))
    assert resume.pending_unique == [IndexRef(db="shop", coll="orders", name="a_1")]
    assert global_state_.source_write_blocked_by_us is True
    assert global_state_.error == ErrorRecord(name="InternalError", message="late",
                                              at=CREATED_AT)
    assert global_state_.superseded_by == "reverse"


def test_v1_partitions_upgrade() -> None:
    done, running = (upgrade_v1_partition(document) for document in v1_partition_documents())

    assert all(is_v1_partition(document) for document in v1_partition_documents())
    assert not is_v1_partition(done.to_document())
    assert done.namespace == NamespaceRef(db="shop", coll="orders")
    assert (done.id, done.index, done.is_last, done.natural) == ("shop.orders#0", 0, False,
                                                                 False)
    assert isinstance(done.lower, MinKey) and exact(done.upper) == exact(Int64(500))
    assert done.partition_phase == PartitionStatus.DONE
    assert done.last_copied == CopiedId(id=Int64(499))
    assert (done.copied_document_count, done.copied_byte_count,
            done.estimated_document_count, done.total_byte_count) == (500, 50_000, 500, 50_000)
    assert running.partition_phase == PartitionStatus.IN_PROGRESS and running.is_last
    assert running.last_copied is None  # version 1 could not tell a null _id from none
    assert running.owner is None


def test_dates_out_of_python_range_stay_dates() -> None:
    record = partition(lower=BEFORE_YEAR_ONE, upper=AFTER_YEAR_9999,
                       claim_renewed_at=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
    document = stored(record)
    assert isinstance(document["lower"], DatetimeMS)
    assert isinstance(document["claimRenewedAt"], datetime.datetime)
    assert PartitionRecord.from_document(document).upper == AFTER_YEAR_9999


# -- what MongoDB's tooling reads (spec §14) ------------------------------------------------------


def test_phase_transitions_are_stored_as_mongosync_phase_texts() -> None:
    transitions = [PhaseTransition(phase=phase, ts=CREATED_AT) for phase in Phase]
    document = stored(ResumeData(state=MigrationState.COMMITTED, phase=Phase.DONE,
                                 phase_transitions=transitions))
    assert [entry["phase"] for entry in document["phaseTransitions"]] == [
        phase.label for phase in Phase]
    assert ResumeData.from_document(document).phase_transitions == transitions
    # Stored before they were texts: the identifiers are read too.
    older = {**document, "phaseTransitions": [{"phase": "CommitCompleted", "ts": CREATED_AT}]}
    assert ResumeData.from_document(older).phase_transitions == [
        PhaseTransition(phase=Phase.DONE, ts=CREATED_AT)]


def test_global_state_carries_mongosync_settings_under_its_names() -> None:
    filtered = global_state(request(
        includeNamespaces=[{"database": "app", "collections": ["users"]}],
        excludeNamespaces=[{"databaseRegex": {"pattern": "^tmp"}}],
        copyInNaturalOrder=[{"database": "logs", "collections": ["events"]}],
        buildIndexes="beforeDataCopy", detectRandomId=False), Timestamp(1, 2))
    document = stored(filtered)
    assert {key: document[key] for key in ("reversible", "writeBlockingMode", "buildIndexes",
                                           "detectRandomId", "verificationMode")} == {
        "reversible": False, "writeBlockingMode": "destinationOnly",
        "buildIndexes": "beforeDataCopy", "detectRandomId": False,
        "verificationMode": "startAtCEA"}
    assert document["namespaceFilter"] == {
        "inclusionFilter": [{"database": ["app"], "collections": ["users"]}],
        "exclusionFilter": [{"databaseRegex": {"pattern": "^tmp", "options": ""}}]}
    assert document["copyInNaturalOrderFilter"] == {"selectAll": False,
                                                    "dbsAndColls": {"logs": ["events"]}}
    # Derived, never read back: the record is what it was.
    assert GlobalState.from_document(document) == filtered

    everything = global_state(request(reversible=True,
                                      copyInNaturalOrder=[{"database": "."}]), Timestamp(1, 2))
    assert stored(everything)["namespaceFilter"] == {"inclusionFilter": None,
                                                     "exclusionFilter": None}
    assert stored(everything)["writeBlockingMode"] == "sourceAndDestination"
    assert stored(everything)["copyInNaturalOrderFilter"]["selectAll"] is True
    # A partial save refreshes them: verification turned off for good shows at once.
    everything.verification_disabled = True
    assert everything.stored_values("verification_disabled")["verificationMode"] == "disabled"


def test_tooling_records_have_mongosync_field_names() -> None:
    uuid = Binary(b"0123456789abcdef", 4)
    record = NamespaceRecord(id="shop.orders", db="shop", name="orders",
                             kind=NamespaceKind.COLLECTION, uuid=uuid)
    assert stored(UuidMapping.of(record)) == {
        "_id": uuid, "dbName": "shop", "srcDBName": "shop", "srcCollName": "orders",
        "dstDBName": "shop", "dstCollName": "orders"}
    totals = CopyTotals(partitions=3, partitions_done=1, copied_bytes=700, copied_documents=7,
                        estimated_bytes=500, estimated_documents=5)
    statistics = stored(CollectionStatistics.of(NamespaceRef(db="shop", coll="orders"), uuid,
                                                totals))
    assert statistics == {
        "_id": {"fieldName": "collectionStats", "id": "coordinator", "uuid": uuid},
        "namespace": {"db": "shop", "coll": "orders"}, "estimatedCopiedBytes": 700,
        "estimatedTotalBytes": 700, "numPartitions": 3, "numCompletedPartitions": 1,
        "copiedDocumentCount": 7, "estimatedDocumentCount": 5}
    correction = IndexCorrection(key=IndexCorrectionKey(db_name="shop", coll_uuid=uuid,
                                                        index_name="a_1"),
                                 namespace=NamespaceRef(db="shop", coll="orders"))
    assert stored(correction) == {
        "_id": {"dbName": "shop", "collUUID": uuid, "indexName": "a_1"},
        "namespace": {"db": "shop", "coll": "orders"}, "shouldCorrectCounter": 1,
        "lastCorrectedCounter": 0}
