"""The /progress document (pymongosync.progress.render), from views held in memory."""

from __future__ import annotations

from typing import Any

import pytest
from bson.timestamp import Timestamp

from pymongosync.progress import (
    ClusterContact,
    ProgressView,
    StandbyInfo,
    empty_progress,
    estimate_catchup_seconds,
    render,
)
from pymongosync.state import (
    CopyTotals,
    MigrationState,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
    Phase,
    ResumeInfo,
)
from pymongosync.store import copy_totals_of
from tests.unit.support import global_state, request, resume_data

START = Timestamp(1_700_000_000, 1)


def view(state: MigrationState = MigrationState.RUNNING, phase: Phase = Phase.APPLY_CHANGES,
         *, applied: Timestamp | None = None, latest: Timestamp | None = None,
         copy_end: Timestamp | None = None, **fields: Any) -> ProgressView:
    resume = resume_data(state, phase)
    resume.crud_change_stream_resume_info = ResumeInfo(last_event_ts=applied)
    resume.copy_finished_time = copy_end
    return ProgressView(global_state=global_state(request(), START), resume=resume,
                        source_display="cluster0: a:1", destination_display="cluster1: b:2",
                        events_applied=42, latest_source_time=latest, source_label="cluster0",
                        **fields)


def at(seconds: int) -> Timestamp:
    return Timestamp(START.time + seconds, 1)


def test_idle_progress_is_null_but_for_state() -> None:
    assert empty_progress("IDLE") == {
        "state": "IDLE", "canCommit": False, "canWrite": None, "info": None,
        "lagTimeSeconds": None, "lag": None, "totalEventsApplied": None,
        "collectionCopy": None, "directionMapping": None, "mongosyncID": None,
        "coordinatorID": None}


def test_progress_while_copying() -> None:
    def partition(index: int, coll: str, **fields: Any) -> PartitionRecord:
        return PartitionRecord(id=f"shop.{coll}#{index}", index=index, lower=index,
                               upper=index + 1, is_last=False,
                               namespace=NamespaceRef(db="shop", coll=coll), **fields)

    totals = copy_totals_of([
        partition(0, "orders", partition_phase=PartitionStatus.DONE, copied_byte_count=600,
                  copied_document_count=6, total_byte_count=500, estimated_document_count=5),
        partition(1, "orders", copied_byte_count=100, copied_document_count=1,
                  total_byte_count=500, estimated_document_count=5),
        partition(0, "users", total_byte_count=1000, estimated_document_count=10)])
    progress = render(view(phase=Phase.COPY, latest=at(100), copy_totals=totals))

    assert progress["state"] == "RUNNING" and progress["info"] == "collection copy"
    assert progress["canCommit"] is False and progress["canWrite"] is False
    assert progress["lag"] is None and progress["lagTimeSeconds"] is None
    assert "ceaStage" not in progress and "warnings" not in progress
    assert progress["collectionCopy"] == {"estimatedTotalBytes": 2000,
                                          "estimatedCopiedBytes": 700}
    assert progress["totalEventsApplied"] == 42
    assert progress["directionMapping"] == {"Source": "cluster0: a:1",
                                            "Destination": "cluster1: b:2"}
    assert progress["mongosyncID"] == progress["coordinatorID"] == "coordinator"
    details = progress["copyDetails"]
    assert (details["partitions"], details["partitionsDone"], details["copiedDocuments"],
            details["estimatedDocuments"], details["phase"]) == (3, 1, 7, 20, "collection copy")
    assert [entry["namespace"] for entry in details["namespaces"]] == ["shop.orders",
                                                                       "shop.users"]
    assert details["namespaces"][0]["partitionsDone"] == 1


def test_copied_bytes_beyond_the_estimate_raise_the_total() -> None:
    over = CopyTotals(partitions=1, copied_bytes=900, estimated_bytes=500)
    assert render(view(phase=Phase.COPY, copy_totals=over))["collectionCopy"] == {
        "estimatedTotalBytes": 900, "estimatedCopiedBytes": 900}
    assert render(view(phase=Phase.PREPARE))["collectionCopy"] == {
        "estimatedTotalBytes": 1, "estimatedCopiedBytes": 0}


def test_lag_and_stage_during_change_event_application() -> None:
    steady = render(view(applied=at(50), latest=at(62), copy_end=at(40)))
    assert steady["lagTimeSeconds"] == 12
    assert steady["lag"] == {"overallLagSeconds": 12, "crudLagSeconds": 12,
                             "ddlLagSeconds": None}
    assert steady["ceaStage"] == "steady state"
    assert steady["info"] == "change event application"
    assert steady["canCommit"] is True

    draining = render(view(applied=at(30), latest=at(45), copy_end=at(40)))
    assert draining["ceaStage"] == "collection copy drain"
    # Nothing applied yet: lag counts from the change stream's start.
    assert render(view(latest=at(20)))["lagTimeSeconds"] == 20
    assert render(view(applied=at(50), latest=at(49)))["lagTimeSeconds"] == 0
    assert render(view(applied=at(50)))["lag"] is None  # the source's time is not known yet


@pytest.mark.parametrize("lag, can_commit", [(0, True), (30, True), (31, False)])
def test_can_commit_needs_a_lag_of_at_most_thirty_seconds(lag: int, can_commit: bool) -> None:
    assert render(view(applied=at(100), latest=at(100 + lag)))["canCommit"] is can_commit


def test_can_commit_needs_running_change_event_application() -> None:
    for state, phase in ((MigrationState.RUNNING, Phase.COPY),
                         (MigrationState.PAUSED, Phase.APPLY_CHANGES),
                         (MigrationState.COMMITTING, Phase.COMMIT)):
        assert render(view(state, phase, applied=at(1), latest=at(2)))["canCommit"] is False


def test_paused_progress_has_no_lag() -> None:
    progress = render(view(MigrationState.PAUSED, applied=at(1), latest=at(100)))
    assert progress["state"] == "PAUSED"
    assert progress["lag"] is None and progress["lagTimeSeconds"] is None
    assert "ceaStage" not in progress and progress["canCommit"] is False


def test_committing_and_committed() -> None:
    committing = render(view(MigrationState.COMMITTING, Phase.COMMIT, applied=at(10),
                             latest=at(14)))
    assert committing["info"] == "waiting for commit to complete"
    assert committing["lagTimeSeconds"] == 4 and committing["canCommit"] is False

    resume_view = view(MigrationState.COMMITTED, Phase.DONE, applied=at(10), latest=at(99))
    resume_view.resume.can_write = True
    committed = render(resume_view)
    assert committed["state"] == "COMMITTED" and committed["info"] == "commit completed"
    assert committed["lagTimeSeconds"] == 0
    assert committed["lag"] == {"overallLagSeconds": 0, "crudLagSeconds": 0,
                                "ddlLagSeconds": None}
    assert committed["canWrite"] is True and committed["canCommit"] is False


def test_a_fatal_error_is_shown_and_forbids_commit() -> None:
    progress = render(view(applied=at(1), latest=at(2),
                           error=("ChangeStreamHistoryLost", "the oplog rolled over")))
    assert progress["canCommit"] is False
    assert progress["error"] == {"name": "ChangeStreamHistoryLost",
                                 "message": "the oplog rolled over"}
    assert progress["warnings"] == ["the migration stopped on a fatal error: "
                                    "ChangeStreamHistoryLost: the oplog rolled over"]


def test_a_standby_process_says_who_owns_the_migration() -> None:
    progress = render(view(applied=at(1), latest=at(2),
                           standby=StandbyInfo(host="host-b", pid=7, owner="host-b:7:x")))
    assert progress["canCommit"] is False
    assert progress["standby"] == {"owner": "host-b:7:x", "host": "host-b", "pid": 7}
    assert len(progress["warnings"]) == 1
    assert "host-b (pid 7)" in progress["warnings"][0]


def test_a_source_blocked_by_the_migration_is_a_warning() -> None:
    blocked = view(MigrationState.COMMITTED, Phase.DONE)
    blocked.global_state.source_write_blocked_by_us = True
    warnings = render(blocked)["warnings"]
    assert len(warnings) == 1
    assert "blocked user writes on the source cluster cluster0" in warnings[0]
    assert "setUserWriteBlockMode" in warnings[0]


# -- per-kind lag, time to catch up, the clusters' ping ------------------------------------------


def test_crud_and_ddl_lag_count_from_the_last_event_of_each_kind_applied() -> None:
    # Mid-batch: a CRUD event of t+58 and a DDL event of t+55 applied after the t+50
    # checkpoint; the source is at t+62.
    mid_batch = render(view(applied=at(50), latest=at(62), last_crud_event_time=at(58),
                            last_ddl_event_time=at(55)))
    assert mid_batch["lag"] == {"overallLagSeconds": 12, "crudLagSeconds": 4,
                                "ddlLagSeconds": 7}
    # Checkpointed past both: every event of either kind up to the checkpoint is applied.
    caught_up = render(view(applied=at(60), latest=at(62), last_crud_event_time=at(58),
                            last_ddl_event_time=at(20)))
    assert caught_up["lag"] == {"overallLagSeconds": 2, "crudLagSeconds": 2,
                                "ddlLagSeconds": 2}
    # No DDL event applied yet: no DDL lag; no CRUD event yet: CRUD lag from the position.
    fresh = render(view(applied=at(50), latest=at(62)))
    assert fresh["lag"] == {"overallLagSeconds": 12, "crudLagSeconds": 12,
                            "ddlLagSeconds": None}
    # Committed: nothing left to apply, of either kind.
    done = view(MigrationState.COMMITTED, Phase.DONE, applied=at(10), latest=at(99),
                last_ddl_event_time=at(5))
    assert render(done)["lag"] == {"overallLagSeconds": 0, "crudLagSeconds": 0,
                                   "ddlLagSeconds": 0}
    # Paused or before change application: no lag of any kind.
    assert render(view(MigrationState.PAUSED, applied=at(1), latest=at(9),
                       last_ddl_event_time=at(1)))["lag"] is None
    assert render(view(phase=Phase.COPY, latest=at(9), last_crud_event_time=at(1)))["lag"] \
        is None


def test_seconds_to_catch_up_follow_how_lag_fell() -> None:
    # Lag fell from 100 s to 40 s in 30 s: 2 s of lag per second, 20 s to go.
    assert estimate_catchup_seconds([(1000.0, 100), (1015.0, 70), (1030.0, 40)]) == 20
    # Only the last minute counts: the fall before it does not.
    assert estimate_catchup_seconds([(0.0, 500), (100.0, 40), (130.0, 40)]) is None
    assert estimate_catchup_seconds([(0.0, 10), (10.0, 12)]) is None  # rising
    assert estimate_catchup_seconds([(5.0, 10)]) is None and estimate_catchup_seconds([]) is None
    assert estimate_catchup_seconds([(0.0, 9), (3.0, 0)]) == 0  # caught up
    assert estimate_catchup_seconds([(0.0, 10), (7.0, 3)]) == 3  # rounded up


def test_seconds_to_catch_up_only_during_change_event_application() -> None:
    falling = [(0.0, 30), (10.0, 20)]
    during = render(view(applied=at(40), latest=at(60), lag_samples=falling))
    assert during["estimatedSecondsToCEACatchup"] == 20
    assert "estimatedSecondsToCEACatchup" not in render(view(applied=at(40), latest=at(60)))
    assert "estimatedSecondsToCEACatchup" not in render(view(
        applied=at(40), latest=at(60), lag_samples=[(0.0, 10), (10.0, 20)]))
    for state, phase in ((MigrationState.RUNNING, Phase.COPY),
                         (MigrationState.PAUSED, Phase.APPLY_CHANGES),
                         (MigrationState.COMMITTING, Phase.COMMIT)):
        assert "estimatedSecondsToCEACatchup" not in render(view(
            state, phase, applied=at(40), latest=at(60), lag_samples=falling))


def test_ping_latency_of_each_cluster() -> None:
    source, destination = ClusterContact(label="cluster0"), ClusterContact(label="cluster1")
    source.answered(0.25)
    destination.failed("ServerSelectionTimeoutError: no answer")
    progress = render(view(contacts={"source": source, "destination": destination}))
    assert progress["source"] == {"pingLatencyMs": 250}
    assert progress["destination"] == {"pingLatencyMs": -1}
    fast = ClusterContact(label="cluster0")
    fast.answered(0.0002)  # under 1 ms: absent, as mongosync (spec §3.4)
    assert "source" not in render(view(contacts={"source": fast,
                                                 "destination": ClusterContact("cluster1")}))


def test_per_namespace_copy_progress() -> None:
    def partition(coll: str, index: int, **fields: Any) -> PartitionRecord:
        return PartitionRecord(id=f"app.{coll}#{index}", index=index, lower=index,
                               upper=index + 1, is_last=False,
                               namespace=NamespaceRef(db="app", coll=coll), **fields)

    totals = copy_totals_of([
        partition("a", 0, partition_phase=PartitionStatus.DONE, copied_byte_count=300,
                  copied_document_count=3, total_byte_count=300, estimated_document_count=3),
        partition("a", 1, partition_phase=PartitionStatus.IN_PROGRESS, copied_byte_count=50,
                  copied_document_count=1, total_byte_count=300, estimated_document_count=3),
        partition("b", 0, total_byte_count=70, estimated_document_count=7)])
    namespaces = render(view(phase=Phase.COPY, copy_totals=totals))["copyDetails"]["namespaces"]
    assert namespaces == [
        {"namespace": "app.a", "partitions": 2, "partitionsDone": 1, "copiedDocuments": 4,
         "estimatedDocuments": 6, "copiedBytes": 350, "estimatedBytes": 600},
        {"namespace": "app.b", "partitions": 1, "partitionsDone": 0, "copiedDocuments": 0,
         "estimatedDocuments": 7, "copiedBytes": 0, "estimatedBytes": 70}]
