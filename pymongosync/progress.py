"""The ``/api/v1/progress`` document (spec §3.4), rendered from a snapshot held in memory.

Rendering never talks to a cluster: :class:`ProgressView` is filled by the migration from its
records and by a monitor thread that samples the source's newest time and the copy totals, so
``/progress`` answers at once even when a cluster does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp

from pymongosync import oplog_window
from pymongosync.durations import OperationDurations
from pymongosync.state import (
    CopyTotals,
    GlobalState,
    MigrationState,
    Phase,
    ResumeData,
    VerificationPhase,
)

CAN_COMMIT_LAG_SECONDS = 30
UNANSWERED_WARNING_SECONDS = 10
# The change buffer warns once it holds this much of its limit.
BUFFER_WARNING_FRACTION = 0.8
# estimatedSecondsToCEACatchup extrapolates how lag fell over this last stretch of time.
CATCHUP_WINDOW_SECONDS = 60.0


def empty_progress(state: str) -> dict[str, Any]:
    """/progress before any migration exists (IDLE, or INITIALIZING in the API layer): every
    field null except ``state`` and ``canCommit`` (spec §3.4)."""
    return {"state": state, "canCommit": False, "canWrite": None, "info": None,
            "lagTimeSeconds": None, "lag": None, "totalEventsApplied": None,
            "collectionCopy": None, "directionMapping": None, "mongosyncID": None,
            "coordinatorID": None}


# -- what the migration's helpers show of themselves ------------------------------------------
@dataclass
class BufferFigures:
    """What /progress and /metrics show of the buffer."""

    events: int = 0
    size: int = 0
    limit: int = 0  # bytes (the buffer's limit, set by the buffer)
    stored_up_to: Timestamp | None = None
    receiving: bool = False


@dataclass
class IndexFigures:
    """``indexBuilding`` of /progress."""

    indexes_built: int = 0
    indexes_total: int = 0
    collections_finished: int = 0
    collections_total: int = 0
    done: bool = False

    def document(self) -> dict[str, int]:
        return {"indexesBuilt": self.indexes_built, "totalIndexesToBuild": self.indexes_total,
                "collectionsFinished": self.collections_finished,
                "collectionsTotal": self.collections_total}


@dataclass
class SideStatus:
    """``verification.source`` or ``verification.destination`` of /progress."""

    estimated_documents: int
    hashed_documents: int
    lag_seconds: int | None
    collections: int
    collections_scanned: int
    phase: VerificationPhase

    def document(self) -> dict[str, Any]:
        phase = self.phase
        if phase in (VerificationPhase.PASSED, VerificationPhase.FAILED):
            phase = VerificationPhase.STREAM_HASHING  # mongosync has no phase past this one
        return {"estimatedDocumentCount": self.estimated_documents,
                "hashedDocumentCount": self.hashed_documents,
                "lagTimeSeconds": self.lag_seconds,
                "totalCollectionCount": self.collections,
                "scannedCollectionCount": self.collections_scanned,
                "phase": phase.value}


@dataclass
class Counters:
    """Figures the phases update as they go; /progress and /metrics read them from memory."""

    events_applied: int = 0
    crud_events: int = 0
    ddl_events: int = 0
    refetched: int = 0
    hot_events_skipped: int = 0  # CRUD events of --hotDocIDs documents (taken at commit)
    # Source times of the last CRUD and the last DDL event applied (crudLagSeconds,
    # ddlLagSeconds); None until one of that kind has been applied.
    last_crud_event_time: Timestamp | None = None
    last_ddl_event_time: Timestamp | None = None
    # Copy workers allowed to copy right now (the copy's adaptive pace; 0 outside the copy).
    copy_workers_active: int = 0
    # How long the operations on the clusters take (/metrics, ``Operation duration stats``).
    durations: OperationDurations = field(default_factory=OperationDurations)


@dataclass
class ClusterContact:
    """How a cluster last answered the monitor's pings."""

    label: str
    ping_latency_ms: int | None = None  # None: not measured yet; -1: the last ping failed
    last_answer: float | None = None  # monotonic time
    first_failure: float | None = None  # monotonic time of the first failed ping since then
    error: str | None = None

    def answered(self, seconds: float) -> None:
        self.ping_latency_ms = int(seconds * 1000)
        self.last_answer, self.first_failure, self.error = time.monotonic(), None, None

    def failed(self, error: str) -> None:
        self.ping_latency_ms = -1
        self.error = error
        if self.first_failure is None:
            self.first_failure = time.monotonic()

    def unanswered_seconds(self) -> float:
        """How long the cluster has not answered (0 while it answers)."""
        if self.first_failure is None:
            return 0.0
        return time.monotonic() - (self.last_answer or self.first_failure)


@dataclass
class StandbyInfo:
    """Who owns the migration while this process stands by."""

    host: str
    pid: int
    owner: str


@dataclass
class ProgressView:
    """Everything /progress shows, as the migration last knew it."""

    global_state: GlobalState
    resume: ResumeData
    source_display: str
    destination_display: str
    events_applied: int
    copy_totals: CopyTotals = field(default_factory=CopyTotals)
    latest_source_time: Timestamp | None = None
    error: tuple[str, str] | None = None  # (name, message)
    standby: StandbyInfo | None = None
    source_label: str = ""
    mongosync_id: str = "coordinator"
    write_blocking_mode: str = "sourceAndDestination"
    contacts: dict[str, ClusterContact] = field(default_factory=dict)  # "source", "destination"
    pause_pending: bool = False
    # The embedded verifier's two sides, when it is on, and whether it allows a commit.
    verification: tuple[SideStatus, SideStatus] | None = None
    verification_details: dict[str, Any] | None = None
    verification_committable: bool = True
    # estimatedOplogTimeRemaining: seconds of headroom (None: unknown), and whether checked.
    oplog_remaining: int | None = None
    oplog_checked: bool | None = None  # None: not shown (not RUNNING, or after canWrite)
    oplog_refused: str | None = None  # the source's answer when it refused to show its oplog
    change_buffer: BufferFigures | None = None
    index_building: IndexFigures | None = None
    last_crud_event_time: Timestamp | None = None  # Counters'
    last_ddl_event_time: Timestamp | None = None
    # (monotonic seconds, lag seconds) sampled during change event application, oldest first.
    lag_samples: Sequence[tuple[float, int]] = ()
    active_copy_workers: int = 0  # Counters'
    # One instance per source shard: the coordinator's id, this instance's share of the copy
    # (estimatedCopiedBytes is per instance, estimatedTotalBytes global, spec §3.9), whether
    # what only the coordinator judges allows a commit, and instances not started yet.
    coordinator_id: str | None = None
    own_copy_totals: CopyTotals | None = None
    instances_ready: bool = True
    instances_missing: Sequence[str] = ()


def lag_between(latest: Timestamp | None, position: Timestamp | None) -> int | None:
    """Seconds from an applied ``position`` to the source's ``latest`` time (never negative);
    None while either is unknown."""
    if latest is None or position is None:
        return None
    return max(0, latest.time - position.time)


def _later(position: Timestamp | None, event_time: Timestamp | None) -> Timestamp | None:
    if position is None or (event_time is not None and event_time > position):
        return event_time
    return position


def estimate_catchup_seconds(samples: Sequence[tuple[float, int]]) -> int | None:
    """mongosync's ``estimatedSecondsToCEACatchup`` (spec §3.4): how long lag takes to reach 0
    at the pace it fell over the last :data:`CATCHUP_WINDOW_SECONDS`; None when it did not
    fall over that stretch (no estimate rather than an endless one)."""
    if len(samples) < 2:
        return None
    end, lag_now = samples[-1]
    start, lag_then = next((at, lag) for at, lag in samples
                           if at >= end - CATCHUP_WINDOW_SECONDS)
    if end <= start or lag_now >= lag_then:
        return None
    return math.ceil(lag_now * (end - start) / (lag_then - lag_now))


def _info(phase: Phase) -> str:
    return {Phase.APPLY_CHANGES: "change event application",
            Phase.COMMIT: "waiting for commit to complete",
            Phase.DONE: "commit completed"}.get(phase, "collection copy")


def render(view: ProgressView) -> dict[str, Any]:
    resume, state = view.resume, view.resume.state
    phase = resume.phase
    applied = resume.crud_change_stream_resume_info.last_event_ts or \
        view.global_state.change_stream_start_time
    lag_seconds: int | None = None
    cea_stage = None
    if phase in (Phase.APPLY_CHANGES, Phase.COMMIT) and \
            state not in (MigrationState.PAUSED, MigrationState.COMMITTED):
        lag_seconds = lag_between(view.latest_source_time, applied)
        copy_end = resume.copy_finished_time
        cea_stage = ("collection copy drain" if copy_end is not None and applied is not None
                     and applied < copy_end else "steady state")
    # One change stream carries both kinds of events, applied in source order: every event up
    # to the checkpoint (``applied``) is applied, whatever its kind. Each kind's lag counts from
    # the later of the checkpoint and the last event of that kind applied since (mid-batch),
    # and DDL has none until a DDL event has been applied.
    crud_lag = lag_between(view.latest_source_time, _later(applied, view.last_crud_event_time))
    ddl_lag = None if view.last_ddl_event_time is None else \
        lag_between(view.latest_source_time, _later(applied, view.last_ddl_event_time))
    if lag_seconds is None:
        crud_lag = ddl_lag = None
    if state == MigrationState.COMMITTED:
        lag_seconds = crud_lag = 0
        ddl_lag = None if view.last_ddl_event_time is None else 0
    can_commit = (state == MigrationState.RUNNING and phase == Phase.APPLY_CHANGES
                  and lag_seconds is not None and lag_seconds <= CAN_COMMIT_LAG_SECONDS
                  and view.error is None and view.standby is None
                  and view.verification_committable and view.instances_ready
                  and (view.index_building is None or view.index_building.done))
    totals = view.copy_totals
    progress: dict[str, Any] = {
        "state": state.value, "canCommit": can_commit, "canWrite": resume.can_write,
        "info": _info(phase),
        "lag": None if state == MigrationState.PAUSED or lag_seconds is None else {
            "overallLagSeconds": lag_seconds, "crudLagSeconds": crud_lag,
            "ddlLagSeconds": ddl_lag},
        "lagTimeSeconds": None if state == MigrationState.PAUSED else lag_seconds,
        "totalEventsApplied": view.events_applied,
        "collectionCopy": {
            "estimatedTotalBytes": max(totals.estimated_bytes, totals.copied_bytes, 1)
            if totals.partitions else 1,
            "estimatedCopiedBytes": (view.own_copy_totals or totals).copied_bytes},
        "directionMapping": {"Source": view.source_display,
                             "Destination": view.destination_display},
        "mongosyncID": view.mongosync_id,
        "coordinatorID": view.coordinator_id or view.mongosync_id,
    }
    if cea_stage is not None:
        progress["ceaStage"] = cea_stage
    if state == MigrationState.RUNNING and phase == Phase.APPLY_CHANGES:
        catchup = estimate_catchup_seconds(view.lag_samples)
        if catchup is not None:  # absent outside CEA, or when lag did not fall (spec §3.4)
            progress["estimatedSecondsToCEACatchup"] = catchup
    if view.index_building is not None:
        progress["indexBuilding"] = view.index_building.document()
    if view.oplog_checked is not None:
        progress["estimatedOplogTimeRemaining"] = oplog_window.describe(
            view.oplog_remaining if view.oplog_checked else None)
        if view.oplog_checked:  # the figure behind the words, for machines
            progress["oplogTimeRemainingSeconds"] = view.oplog_remaining
    buffer = view.change_buffer
    if buffer is not None:
        buffer_lag = None if view.latest_source_time is None or buffer.stored_up_to is None \
            else max(0, view.latest_source_time.time - buffer.stored_up_to.time)
        progress["changeBuffer"] = {"receiving": buffer.receiving, "events": buffer.events,
                                    "bytes": buffer.size, "limitBytes": buffer.limit,
                                    "lagSeconds": buffer_lag}
    if view.verification is not None:
        progress["verification"] = {"source": view.verification[0].document(),
                                    "destination": view.verification[1].document()}
    if view.verification_details is not None:
        progress["verificationDetails"] = view.verification_details
    for role, contact in view.contacts.items():
        # Spec §3.4: absent under 1 ms or before the first ping; -1 after a failed ping.
        if contact.ping_latency_ms is not None and contact.ping_latency_ms != 0:
            progress[role] = {"pingLatencyMs": contact.ping_latency_ms}
    warnings = []
    for role, contact in view.contacts.items():
        silent = contact.unanswered_seconds()
        if silent >= UNANSWERED_WARNING_SECONDS:
            warnings.append(f"the {role} cluster {contact.label} has not answered for "
                            f"{silent:.0f} s ({contact.error}); the migration waits for it and "
                            f"retries")
    if view.oplog_checked and view.oplog_remaining is not None and \
            view.oplog_remaining < oplog_window.LOW_SECONDS:
        warnings.append(f"{oplog_window.LOW_OPLOG_WARNING} The source's oplog holds about "
                        f"{view.oplog_remaining // 60} minutes more than what the migration "
                        f"still needs: grow it (replSetResizeOplog) before it rolls over, or "
                        f"the migration must start over")
    if view.oplog_refused is not None:
        warnings.append(f"estimatedOplogTimeRemaining cannot be checked: the source refused to "
                        f"show its oplog ({view.oplog_refused}). On a sharded source each "
                        f"shard's oplog is read on the shard itself, where the user mongosync "
                        f"signs in as must exist too (a shard-local user with clusterMonitor); "
                        f"meanwhile watch each shard's window with db.getReplicationInfo()")
    if buffer is not None and buffer.size >= BUFFER_WARNING_FRACTION * buffer.limit:
        warnings.append(f"the change buffer holds {buffer.size // 2**20} MiB of its "
                        f"{buffer.limit // 2**20} MiB limit: past it, the migration stops "
                        f"(ChangeBufferFull) until mongosync is started again with a larger "
                        f"--changeBufferLimitMB")
    if state in (MigrationState.RUNNING, MigrationState.PAUSED):
        warnings += [f"pre-flight warning: {text}"
                     for text in view.global_state.preflight_warnings]
    if view.instances_missing:
        warnings.append(f"waiting for the instances {', '.join(view.instances_missing)}: "
                        f"start one mongosync per source shard with --id <shard id> and send "
                        f"each the same /start")
    if view.pause_pending:
        warnings.append("a pause was requested: the migration stops at its next checkpoint, "
                        "once the cluster it is waiting for answers")
    if view.global_state.source_write_blocked_by_us:
        warnings.append("mongosync has blocked user writes on the source cluster "
                        f"{view.source_label}; unblock them with "
                        "db.adminCommand({setUserWriteBlockMode: 1, global: false}) when "
                        "the source should take writes again")
    if view.write_blocking_mode != "sourceAndDestination" and state in (
            MigrationState.COMMITTING, MigrationState.COMMITTED):
        warnings.append(f"the source cluster {view.source_label} is not write-blocked "
                        f"(write blocking {view.write_blocking_mode}): changes written to it "
                        f"after the commit began are not migrated, and fail the commit while "
                        f"it is under way")
    if view.error is not None:
        warnings.append(f"the migration stopped on a fatal error: {view.error[0]}: "
                        f"{view.error[1]}")
    if view.standby is not None:
        warnings.append(f"this process is standing by: the migration is owned by the "
                        f"mongosync process on {view.standby.host} (pid {view.standby.pid}); "
                        f"it takes over if that process stops renewing its lease")
    if warnings:
        progress["warnings"] = warnings
    progress["copyDetails"] = {
        "partitions": totals.partitions, "partitionsDone": totals.partitions_done,
        "copiedDocuments": totals.copied_documents,
        "estimatedDocuments": totals.estimated_documents, "phase": phase.label,
        "activeWorkers": view.active_copy_workers,
        # Per-namespace copy progress (spec §25.2: mongosync keeps it in its metadata only).
        "namespaces": [{"namespace": name, "partitions": each.partitions,
                        "partitionsDone": each.partitions_done,
                        "copiedDocuments": each.copied_documents,
                        "estimatedDocuments": each.estimated_documents,
                        "copiedBytes": each.copied_bytes, "estimatedBytes": each.estimated_bytes}
                       for name, each in sorted(totals.by_namespace.items())]}
    if view.standby is not None:
        progress["standby"] = {"owner": view.standby.owner, "host": view.standby.host,
                               "pid": view.standby.pid}
    if view.error is not None:
        progress["error"] = {"name": view.error[0], "message": view.error[1]}
    return progress
