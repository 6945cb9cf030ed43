"""The migration: its lifecycle (states of spec §4) composed of persisted phases.

Phases run one after another on a worker thread, each resumable from what it stored:

    initializing collections and indexes → initializing partitions → collection copy
    → building indexes → change event application → commit → commit completed

``/start`` (``Migration.start``) only validates and records; the worker does the rest. A
process that starts against clusters holding a migration picks it up in the state it had
(``Migration.open``), with nothing lost or duplicated.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from pymongosync import catalog
from pymongosync.changes import ApplyStats, ChangeApplier
from pymongosync.clusters import Cluster
from pymongosync.copy import CopyStopped, copy_partitions
from pymongosync.errors import (ClusterMismatch, DestinationNotEmpty, InvalidState,
                                MigrationError, UnsupportedCluster)
from pymongosync.metadata import METADATA_DATABASE, MetadataStore
from pymongosync.namespaces import NamespaceFilter
from pymongosync.partitions import plan_partitions
from pymongosync.request import StartRequest
from pymongosync.reset import describe_leftovers
from pymongosync.retry import RETRY_FOR_SECONDS, is_transient

log = logging.getLogger("pymongosync.engine")

IDLE, RUNNING, PAUSED = "IDLE", "RUNNING", "PAUSED"
COMMITTING, COMMITTED, REVERSING = "COMMITTING", "COMMITTED", "REVERSING"

PHASE_COLLECTIONS = "initializing collections and indexes"
PHASE_PARTITIONS = "initializing partitions"
PHASE_COPY = "collection copy"
PHASE_INDEXES = "building indexes"
PHASE_CEA = "change event application"
PHASE_COMMIT = "commit"
PHASE_DONE = "commit completed"

CAN_COMMIT_LAG_SECONDS = 30
HEARTBEAT_SECONDS = 2.0


def latest_time(cluster: Cluster) -> Timestamp:
    """The cluster's newest operation time, without writing anything."""
    hello = cluster.hello()
    last_write = hello.get("lastWrite") or {}
    op_time = last_write.get("opTime") or {}
    if isinstance(op_time.get("ts"), Timestamp):
        return op_time["ts"]
    return cluster.client.admin.command("ping")["operationTime"]


def empty_progress(state: str) -> dict[str, Any]:
    """/progress before any migration exists (IDLE, or INITIALIZING in the API layer): every
    field null except ``state`` and ``canCommit`` (spec §3.4)."""
    return {"state": state, "canCommit": False, "canWrite": None, "info": None,
            "lagTimeSeconds": None, "lag": None, "totalEventsApplied": None,
            "collectionCopy": None, "directionMapping": None, "mongosyncID": None,
            "coordinatorID": None}


class Migration:
    """One migration between two clusters; thread-safe entry points for the API layer."""

    def __init__(self, cluster0: Cluster, cluster1: Cluster, load_level: int = 3) -> None:
        self.clusters = {"cluster0": cluster0, "cluster1": cluster1}
        self.load_level = load_level
        self.state = IDLE
        self.request: StartRequest | None = None
        self.source: Cluster | None = None
        self.destination: Cluster | None = None
        self.store: MetadataStore | None = None
        self.error: MigrationError | None = None
        self.stats = ApplyStats()
        self._lock = threading.RLock()
        self._interrupt = threading.Event()
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self._heart: threading.Thread | None = None
        self._listeners: list[Callable[[str], None]] = []

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, cluster0: Cluster, cluster1: Cluster, load_level: int = 3) -> "Migration":
        """Attach to the migration stored on either cluster, or stay IDLE when there is none."""
        migration = cls(cluster0, cluster1, load_level)
        for destination_label in ("cluster1", "cluster0"):
            store = MetadataStore(migration.clusters[destination_label].client)
            document = store.load()
            if document is None or document.get("supersededBy"):
                continue
            migration._attach(store, document)
            return migration
        return migration

    def _attach(self, store: MetadataStore, document: dict[str, Any]) -> None:
        request = StartRequest.from_document(document["request"])
        stored_hosts = document.get("clusterHosts", {})
        for label, cluster in self.clusters.items():
            if stored_hosts.get(label) and stored_hosts[label] != cluster.hosts:
                raise ClusterMismatch(
                    f"the migration stored on {request.destination} was started with {label} = "
                    f"{', '.join(stored_hosts[label])}, not {', '.join(cluster.hosts)}; start "
                    f"with the same --cluster0/--cluster1 as before, or reset the destination")
        self.request = request
        self.source = self.clusters[document["sourceLabel"]]
        self.destination = self.clusters[document["destinationLabel"]]
        self.store = store
        self.state = document["state"]
        self.stats.events = int((document.get("counters") or {}).get("eventsApplied", 0))
        if document.get("error"):
            self.error = MigrationError(document["error"]["message"])
            self.error.name = document["error"]["name"]
        if self.state in (RUNNING, COMMITTING, REVERSING) and self.error is None:
            self._launch()

    # -- API entry points ----------------------------------------------------------------------
    def start(self, request: StartRequest) -> None:
        with self._lock:
            if self.state != IDLE:
                raise InvalidState(f"Currently in {self.state} state, needs to be in IDLE state")
            source = self.clusters[request.source]
            destination = self.clusters[request.destination]
            self._preflight(request, source, destination)
            store = MetadataStore(destination.client)
            start_time = source.cluster_time()
            store.create({
                "request": request.to_document(), "sourceLabel": request.source,
                "destinationLabel": request.destination,
                "clusterHosts": {label: c.hosts for label, c in self.clusters.items()},
                "state": RUNNING, "phase": PHASE_COLLECTIONS, "changeStreamStartTime": start_time,
                "resumeToken": None, "counters": {"eventsApplied": 0},
                "writeBlocking": request.write_blocking_mode,
            })
            self.request, self.source, self.destination, self.store = (
                request, source, destination, store)
            self.state = RUNNING
            self._launch()

    def pause(self) -> None:
        with self._lock:
            if self.state != RUNNING:
                raise InvalidState(f"Currently in {self.state} state, needs to be in RUNNING "
                                   f"state")
            self._stop_worker()
            self.state = PAUSED
            self.store.update({"state": PAUSED})

    def resume(self) -> None:
        with self._lock:
            if self.state != PAUSED:
                raise InvalidState(f"Currently in {self.state} state, needs to be in PAUSED "
                                   f"state")
            self.state = RUNNING
            self.store.update({"state": RUNNING})
            self._launch()

    def commit(self) -> None:
        with self._lock:
            if self.state != RUNNING:
                raise InvalidState(f"Currently in {self.state} state, needs to be in RUNNING "
                                   f"state")
            if not self.progress()["canCommit"]:
                raise InvalidState("canCommit is false: wait until the initial copy has finished "
                                   "and lag is at most 30 seconds (see GET /api/v1/progress)")
            self.state = COMMITTING
            self.store.update({"state": COMMITTING})
            self._interrupt.set()  # leaves the steady-state loop; the worker then commits

    def reverse(self) -> None:
        with self._lock:
            if self.state != COMMITTED:
                raise InvalidState(f"Currently in {self.state} state, needs to be in COMMITTED "
                                   f"state")
            if not self.request.reversible:
                raise InvalidState("this migration was not started with reversible: true, so "
                                   "it cannot be reversed")
            document = self.store.load()
            old_source, old_destination = self.source, self.destination
            reversed_request = self.request.reversed()
            new_store = MetadataStore(old_source.client)
            new_store.create({
                "request": reversed_request.to_document(),
                "sourceLabel": reversed_request.source,
                "destinationLabel": reversed_request.destination,
                "clusterHosts": document["clusterHosts"], "state": REVERSING,
                "phase": PHASE_CEA, "changeStreamStartTime": document["canWriteTime"],
                "resumeToken": None, "counters": {"eventsApplied": 0},
                "writeBlocking": reversed_request.write_blocking_mode,
                "destinationWriteBlockedByUs": document.get("sourceWriteBlockedByUs", False),
                "reversedFrom": document["migrationId"],
            })
            self.store.update({"supersededBy": "reverse"})
            self.request, self.source, self.destination = (reversed_request, old_destination,
                                                           old_source)
            self.store = new_store
            self.state = REVERSING
            self.stats = ApplyStats()
            self._launch()

    def close(self) -> None:
        """Checkpoint and stop working (process shutdown); the stored state is unchanged."""
        with self._lock:
            self._closing.set()
            self._stop_worker()

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Called with a short message at every phase or state change (for logs)."""
        self._listeners.append(listener)

    # -- checks before anything is written ---------------------------------------------------
    def _preflight(self, request: StartRequest, source: Cluster, destination: Cluster) -> None:
        for cluster in (source, destination):
            cluster.check_supported()
        request.check_topology(source.is_sharded, destination.is_sharded, source.version(),
                               destination.version())
        leftovers = describe_leftovers(source, destination,
                                       user_data_allowed=request.preExistingDestinationData)
        if leftovers:
            raise DestinationNotEmpty(leftovers)
        namespace_filter = NamespaceFilter.from_request(request)
        timeseries = [ns.namespace for ns in catalog.list_source_namespaces(
            source.client, namespace_filter, sharded=False) if ns.kind == "timeseries"]
        if timeseries:
            raise UnsupportedCluster(
                f"time-series collections cannot be migrated ({', '.join(timeseries)}); "
                f"exclude them with excludeNamespaces")

    # -- the worker ----------------------------------------------------------------------------
    def _launch(self) -> None:
        self._interrupt.clear()
        self._worker = threading.Thread(target=self._work, name="migration", daemon=True)
        self._worker.start()
        if self._heart is None or not self._heart.is_alive():
            self._heart = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
            self._heart.start()

    def _stop_worker(self) -> None:
        self._interrupt.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        self._worker = None

    def _heartbeat(self) -> None:
        while not self._closing.is_set():
            store = self.store
            if store is not None:
                try:
                    store.heartbeat()
                except Exception as exc:  # noqa: BLE001 - a missed beat is only logged
                    log.debug("heartbeat failed: %s", exc)
            self._closing.wait(HEARTBEAT_SECONDS)

    def _notify(self, message: str) -> None:
        log.info(message)
        for listener in self._listeners:
            listener(message)

    def _work(self) -> None:
        transient_since: float | None = None
        try:
            while not self._interrupt.is_set():
                document = self.store.load()
                phase = document["phase"]
                if phase == PHASE_DONE:
                    return
                try:
                    self._run_phase(phase, document)
                    transient_since = None
                except PyMongoError as exc:
                    # Every phase resumes from what it stored, so a network error or an
                    # election just means running the phase again (for up to 30 minutes).
                    if not is_transient(exc):
                        raise
                    transient_since = transient_since or time.monotonic()
                    if time.monotonic() - transient_since > RETRY_FOR_SECONDS:
                        raise
                    log.warning("transient error in %s, retrying: %s", phase, exc)
                    self._interrupt.wait(1.0)
        except CopyStopped:
            return
        except MigrationError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - any other failure is fatal and recorded
            log.exception("migration failed")
            failure = MigrationError(f"{type(exc).__name__}: {exc}")
            failure.name = "InternalError"
            self._fail(failure)

    def _fail(self, error: MigrationError) -> None:
        self.error = error
        self._notify(f"fatal: {error.name}: {error.message}")
        try:
            self.store.record_error(error.name, error.message)
        except Exception:  # noqa: BLE001 - the destination may be what failed
            log.exception("could not record the error in the metadata")

    def _set_phase(self, phase: str) -> None:
        self.store.update({"phase": phase})
        self._notify(f"Starting {phase} phase")

    def _run_phase(self, phase: str, document: dict[str, Any]) -> None:
        if phase == PHASE_COLLECTIONS:
            self._initialize_collections(document)
            self._set_phase(PHASE_PARTITIONS)
        elif phase == PHASE_PARTITIONS:
            for namespace in self.store.namespace_documents():
                if namespace["kind"] == "collection" and not namespace.get("partitioned"):
                    self.store.add_partitions(plan_partitions(self.source.client, namespace))
                    self.store.update_namespace(namespace["_id"], {"partitioned": True})
            self._set_phase(PHASE_COPY)
        elif phase == PHASE_COPY:
            copy_partitions(self.source.client, self.destination.client, self.store,
                            self.load_level, self._interrupt)
            self.store.update({"copyFinishedTime": self.source.cluster_time()})
            self._set_phase(PHASE_INDEXES)
        elif phase == PHASE_INDEXES:
            if not self.request.builds_indexes_before_copy:
                self._build_indexes()
            self._set_phase(PHASE_CEA)
        elif phase == PHASE_CEA:
            if document["state"] in (COMMITTING,):
                self._set_phase(PHASE_COMMIT)
                return
            if document["state"] == REVERSING:
                self.state = RUNNING
                self.store.update({"state": RUNNING})
                self._notify("Transitioning the state to RUNNING (reversed)")
            self._applier().run(self._interrupt)
            if self.store.load()["state"] == COMMITTING:
                self._interrupt.clear()
        elif phase == PHASE_COMMIT:
            self._commit(document)

    # -- phases --------------------------------------------------------------------------------
    def _initialize_collections(self, document: dict[str, Any]) -> None:
        request, store = self.request, self.store
        destination = self.destination
        if request.write_blocking_mode != "none" and not document.get(
                "destinationWriteBlockedByUs"):
            store.update({"destinationWriteBlockedByUs": True})
            destination.set_write_block(True)
        balancers = document.get("balancersStoppedByUs") or {}
        for role, cluster in (("source", self.source), ("destination", destination)):
            if role not in balancers:
                running = cluster.balancer_running()
                if running:
                    store.update({f"balancersStoppedByUs.{role}": True})
                    cluster.set_balancer(False)
        namespace_filter = NamespaceFilter.from_request(request)
        entries = catalog.list_source_namespaces(self.source.client, namespace_filter,
                                                 self.source.is_sharded)
        sharding_entries = request.sharding_keys()
        destination_sharded = destination.is_sharded
        known = {d["_id"] for d in store.namespace_documents()}
        for entry in sorted(entries, key=lambda e: e.kind == "view"):
            if entry.namespace not in known:
                store.put_namespace(entry.to_document())
            options = catalog.temporary_collection_options(entry.options)
            catalog.create_collection(destination.client, entry.db, entry.name, options,
                                      store.record_created)
            if entry.kind != "collection":
                continue
            shard_key = entry.shard_key or sharding_entries.get(entry.namespace)
            if destination_sharded and shard_key:
                catalog.shard_collection(destination.client, entry.db, entry.name, shard_key)
            if request.builds_indexes_before_copy:
                catalog.create_indexes(destination.client, entry.db, entry.name,
                                       catalog.indexes_to_build(entry.indexes,
                                                                request.buildIndexes))

    def _build_indexes(self) -> None:
        for namespace in self.store.namespace_documents():
            if namespace["kind"] != "collection":
                continue
            catalog.create_indexes(self.destination.client, namespace["db"], namespace["name"],
                                   catalog.indexes_to_build(namespace["indexes"],
                                                            self.request.buildIndexes))

    def _applier(self) -> ChangeApplier:
        def on_applied(stats: ApplyStats) -> None:
            self.store.update({"counters.eventsApplied": stats.events})

        applier = ChangeApplier(
            source=self.source.client, raw_source=self.source.raw_client,
            destination=self.destination.client, store=self.store,
            namespace_filter=NamespaceFilter.from_request(self.request),
            build_mode=self.request.buildIndexes,
            destination_sharded=self.destination.is_sharded, stats=self.stats,
            on_applied=on_applied)
        return applier

    def _commit(self, document: dict[str, Any]) -> None:
        """Cutover (spec §10.2); every step is safe to repeat after a crash."""
        store, request = self.store, self.request
        if request.write_blocking_mode == "sourceAndDestination" and not document.get(
                "sourceWriteBlockedByUs"):
            store.update({"sourceWriteBlockedByUs": True})
            self.source.set_write_block(True)
            self._notify("blocked writes on the source")
        commit_time = document.get("commitTime")
        if commit_time is None:
            commit_time = self.source.cluster_time()
            store.update({"commitTime": commit_time})
        if not self._applier().run(self._interrupt, until=commit_time):
            return  # interrupted (shutdown): the next process continues the commit
        document = store.load()
        if not document.get("canWrite"):
            pending = catalog.restore_final_options(
                self.source.client, self.destination.client,
                NamespaceFilter.from_request(request), request.buildIndexes)
            store.update({"pendingUnique": [list(p) for p in pending]})
            if document.get("destinationWriteBlockedByUs"):
                self.destination.set_write_block(False)
            store.update({"canWrite": True, "destinationWriteBlockedByUs": False,
                          "canWriteTime": self.destination.cluster_time()})
            self._notify("destination writes are allowed (canWrite)")
            document = store.load()
        catalog.enforce_unique(self.destination.client,
                               [tuple(p) for p in document.get("pendingUnique", [])])
        if not request.reversible:
            for role, cluster in (("source", self.source), ("destination", self.destination)):
                if (document.get("balancersStoppedByUs") or {}).get(role):
                    cluster.set_balancer(True)
                    store.update({f"balancersStoppedByUs.{role}": False})
        store.update({"state": COMMITTED, "phase": PHASE_DONE})
        self.state = COMMITTED
        self._notify("Transitioning the state to COMMITTED")

    # -- observation ---------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0,
                 interval: float = 0.1) -> dict[str, Any]:
        """Poll :meth:`progress` until ``predicate`` holds (tests and the demo use it)."""
        deadline = time.monotonic() + timeout
        while True:
            progress = self.progress()
            if predicate(progress):
                return progress
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not reached; progress: {progress}")
            time.sleep(interval)

    def progress(self) -> dict[str, Any]:
        """The /api/v1/progress document (spec §3.4)."""
        if self.state == IDLE or self.store is None:
            return empty_progress(IDLE)
        document = self.store.load() or {}
        phase = document.get("phase")
        totals = self.store.copy_totals()
        state = self.state
        lag_seconds = None
        cea_stage = None
        if phase in (PHASE_CEA, PHASE_COMMIT) and state not in (PAUSED, COMMITTED):
            applied = document.get("lastAppliedTime") or document.get("changeStreamStartTime")
            latest = latest_time(self.source)
            lag_seconds = max(0, latest.time - applied.time) if applied else None
            copy_end = document.get("copyFinishedTime")
            cea_stage = ("collection copy drain" if copy_end and applied and
                         (applied.time, applied.inc) < (copy_end.time, copy_end.inc)
                         else "steady state")
        if state == COMMITTED:
            lag_seconds = 0
        info = {PHASE_CEA: "change event application", PHASE_COMMIT:
                "waiting for commit to complete", PHASE_DONE: "commit completed"}.get(
                    phase, "collection copy")
        can_commit = (state == RUNNING and phase == PHASE_CEA and lag_seconds is not None
                      and lag_seconds <= CAN_COMMIT_LAG_SECONDS and self.error is None)
        progress: dict[str, Any] = {
            "state": state, "canCommit": can_commit, "canWrite": bool(document.get("canWrite")),
            "info": info,
            "lag": None if state == PAUSED or lag_seconds is None else {
                "overallLagSeconds": lag_seconds, "crudLagSeconds": lag_seconds,
                "ddlLagSeconds": None},
            "lagTimeSeconds": None if state == PAUSED else lag_seconds,
            "totalEventsApplied": int((document.get("counters") or {}).get("eventsApplied", 0)),
            "collectionCopy": {
                "estimatedTotalBytes": max(totals["estimatedBytes"], totals["copiedBytes"], 1)
                if totals["partitions"] else 1,
                "estimatedCopiedBytes": totals["copiedBytes"]},
            "directionMapping": {"Source": self.source.display,
                                 "Destination": self.destination.display},
            "mongosyncID": "coordinator", "coordinatorID": "coordinator",
        }
        if cea_stage is not None:
            progress["ceaStage"] = cea_stage
        warnings = []
        if document.get("sourceWriteBlockedByUs"):
            warnings.append("mongosync has blocked user writes on the source cluster "
                            f"{self.source.label}; unblock them with "
                            "db.adminCommand({setUserWriteBlockMode: 1, global: false}) when "
                            "the source should take writes again")
        if self.error is not None:
            warnings.append(f"the migration stopped on a fatal error: {self.error.name}: "
                            f"{self.error.message}")
        if warnings:
            progress["warnings"] = warnings
        progress["copyDetails"] = {"partitions": totals["partitions"],
                                   "partitionsDone": totals["partitionsDone"],
                                   "copiedDocuments": totals["copiedDocuments"],
                                   "estimatedDocuments": totals["estimatedDocuments"],
                                   "phase": phase}
        if self.error is not None:
            progress["error"] = {"name": self.error.name, "message": self.error.message}
        return progress


__all__ = ["Migration", "METADATA_DATABASE", "IDLE", "RUNNING", "PAUSED", "COMMITTING",
           "COMMITTED", "REVERSING"]
