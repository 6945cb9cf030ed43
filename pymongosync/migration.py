"""The migration's lifecycle: the states of spec §4 around the phase runner, one owner at a time.

:class:`Migration` is what the API and the process hold. ``start`` validates and records;
the runner (:mod:`pymongosync.phases.runner`) does the work on a worker thread, each phase
resuming from what it stored. A process that starts against clusters holding a migration picks
it up in the state it had (:meth:`Migration.open`), with nothing lost or duplicated — if it can
take the ownership lease; otherwise it stands by, writes nothing, and takes over once the
owner stops renewing (see :mod:`pymongosync.lease`).

``/progress`` is rendered from memory (:mod:`pymongosync.progress`): a monitor thread renews
the lease and samples what the view needs from the clusters, so the API never waits on them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import OperationFailure

from pymongosync import catalog, oplog_window, retry
from pymongosync.changes.buffer import DEFAULT_LIMIT_BYTES
from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.cluster_client import ClusterClient
from pymongosync.clusters import Cluster, redact
from pymongosync.errors import (
    ClusterMismatch,
    ClusterUnavailable,
    DestinationNotEmpty,
    InternalError,
    InstanceMismatch,
    InvalidState,
    MigrationError,
    NamespaceConflict,
    NotOwner,
    ResetInProgress,
    error_from_record,
)
from pymongosync.lease import RENEW_EVERY_SECONDS, Lease, LeaseHolder
from pymongosync.instances import (
    POLL_SECONDS,
    InstanceLayout,
    layout_for_start,
    layout_of_stored,
)
from pymongosync.leftovers import reset_command_line
from pymongosync.namespaces import SYSTEM_DATABASES
from pymongosync.phases.context import ConnectionStrings, PhaseContext
from pymongosync.phases.indexes import builds_after_copy
from pymongosync.phases.runner import run_phases
from pymongosync.preflight import check_before_start
from pymongosync.progress import (
    CAN_COMMIT_LAG_SECONDS,
    ClusterContact,
    IndexFigures,
    ProgressView,
    SideStatus,
    StandbyInfo,
    empty_progress,
    lag_between,
    render,
)
from pymongosync.request import StartRequest
from pymongosync.state import (
    CopyTotals,
    GlobalState,
    MigrationState,
    NamespaceKind,
    Phase,
    PhaseTransition,
    ResumeData,
)
from pymongosync.store import MigrationStore, StoredMigration, is_metadata_database, now
from pymongosync.verifier.embedded import EmbeddedVerifier, stored_figures

log = logging.getLogger("pymongosync.engine")


@dataclass(frozen=True)
class EngineSettings:
    """How this process runs a migration (command-line options, not stored with it)."""

    change_buffering: bool = True  # for a migration /start begins here; then it is stored
    change_buffer_limit_bytes: int = DEFAULT_LIMIT_BYTES
    create_indexes_batch_size: int | None = None
    # --hotDocIDs: added to those stored with the migration (never removed).
    hot_documents: HotDocuments = field(default_factory=HotDocuments)


MONITOR_SECONDS = 0.5
# How long /start on one instance waits for the migration another instance is storing.
JOIN_WAIT_SECONDS = 10.0
OPLOG_EVERY_SECONDS = 30.0
# How long an API call or a shutdown waits for the worker to reach a checkpoint.
STOP_WAIT_SECONDS = 10.0
LEASE_RELEASE_SECONDS = 3.0
# Cluster calls of the monitor (pings, samples) give up after this.
SAMPLE_SECONDS = 5.0
PING_EVERY_SECONDS = 5.0
# mongosync's periodic log lines (``Replication progress``, ``Operation duration stats``), which
# MongoDB's tooling plots; the first one of each is written as soon as it has figures.
REPORT_EVERY_SECONDS = 10.0
# Lag samples kept for estimatedSecondsToCEACatchup: more than its window at MONITOR_SECONDS.
LAG_SAMPLES = 240


class Migration:
    """One migration between two clusters; thread-safe entry points for the API layer."""

    def __init__(self, cluster0: Cluster, cluster1: Cluster, load_level: int = 3,
                 lease_seconds: float | None = None, disable_verification: bool = False,
                 settings: EngineSettings | None = None,
                 instance_id: str | None = None) -> None:
        self.clusters: dict[str, Cluster] = {"cluster0": cluster0, "cluster1": cluster1}
        # --id: one instance per source shard (pymongosync.instances); None: the only one.
        self.instance_id = instance_id
        self.layout = InstanceLayout()
        self.load_level = load_level
        self.disable_verification = disable_verification
        self.settings = settings or EngineSettings()
        self.lease_seconds = lease_seconds
        self.error: MigrationError | None = None
        self.context: PhaseContext | None = None
        self.store: MigrationStore | None = None
        self.lease: Lease | None = None
        self.standby: LeaseHolder | None = None
        # Renewals failed for longer than the lease while we drove the migration, and the
        # lease has not been taken back yet: we stopped, and nobody may be driving it.
        self._lease_lost = False
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._copy_totals = CopyTotals()
        self._latest_source_time: Any = None
        self._pause_pending = False
        self._contacts: dict[str, ClusterContact] = {}
        self._oplog_earliest: Any = None
        self._oplog_refused: str | None = None  # why the source refused to show its oplog
        # (monotonic time, lag) while change events are applied: estimatedSecondsToCEACatchup.
        # A tuple replaced whole, so the API thread reads it while the monitor adds to it.
        self._lag_samples: tuple[tuple[float, int], ...] = ()
        # message -> (monotonic time, events applied) when that periodic line was last written.
        self._reported: dict[str, tuple[float, int]] = {}
        # A multi-instance migration stored on this destination that this instance has not
        # joined yet (its /start joins it), and what the others' records last said.
        self._joinable: MigrationStore | None = None
        self._own_copy_totals: CopyTotals | None = None
        self._instances_ready = True
        self._instances_missing: tuple[str, ...] = ()
        # Another instance than the coordinator: the coordinator's verification, as stored.
        self._coordinator_verification: tuple[tuple[SideStatus, SideStatus],
                                              dict[str, Any]] | None = None

    # -- what the API reads ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        return MigrationState.IDLE.value if self.context is None else \
            self.context.resume.state.value

    @property
    def phase(self) -> Phase | None:
        return None if self.context is None else self.context.resume.phase

    @property
    def request(self) -> StartRequest | None:
        return None if self.context is None else self.context.request

    @property
    def source(self) -> ClusterClient | None:
        return None if self.context is None else self.context.source

    @property
    def destination(self) -> ClusterClient | None:
        return None if self.context is None else self.context.destination

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Called with a short message at every phase or state change (for logs)."""
        self._listeners.append(listener)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, cluster0: Cluster, cluster1: Cluster, load_level: int = 3,
             lease_seconds: float | None = None, disable_verification: bool = False,
             settings: EngineSettings | None = None,
             instance_id: str | None = None) -> Migration:
        """Attach to the migration stored on either cluster, or stay IDLE when there is none
        (or when it is a multi-instance migration this instance has not joined yet: its
        ``/start`` joins it).

        ``disable_verification`` (``--disableVerification``) turns the embedded verifier off
        for good: the choice is stored with the migration."""
        migration = cls(cluster0, cluster1, load_level, lease_seconds, disable_verification,
                        settings, instance_id)
        for destination_label in ("cluster1", "cluster0"):
            store = migration.clusters[destination_label].metadata_store()
            global_state = store.load_global()
            if global_state is not None and global_state.superseded_by:
                continue
            if global_state is not None:
                migration.layout = migration._layout_of(global_state)
            stored = store.load(migration.layout.resume_id())
            if stored is None:
                if global_state is not None:
                    migration._check_stored(global_state)
                    migration._joinable = store  # /start joins it
                    return migration
                continue
            migration._attach(store, stored)
            return migration
        return migration

    def _layout_of(self, global_state: GlobalState) -> InstanceLayout:
        """This process's place in a stored migration (refused when --id does not fit)."""
        source = self.clusters[global_state.source_label]
        return layout_of_stored(global_state, self.instance_id,
                                source.shard_ids() if global_state.instances else None)

    def _new_lease(self, store: MigrationStore) -> Lease:
        instance = self.layout.resume_id()
        if self.lease_seconds is None:
            return Lease(store, instance=instance)
        return Lease(store, instance=instance, seconds=self.lease_seconds)

    def _take_new_lease(self, store: MigrationStore, holder_does: str) -> Lease:
        """This instance's lease, taken; NotOwner naming the live process that holds it
        (``holder_does``: what that process is doing, as the refusal says)."""
        lease = self._new_lease(store)
        if not lease.try_acquire():
            holder = lease.holder()
            raise NotOwner(f"another mongosync process "
                           f"({holder.describe() if holder else 'unknown'}) {holder_does}")
        return lease

    def _check_stored(self, global_state: GlobalState) -> None:
        """Refuse a stored migration a reset began removing, or one of other clusters."""
        request = StartRequest.from_document(global_state.request)
        if global_state.reset_started_at is not None:
            command = reset_command_line(*self.clusters.values())
            raise ResetInProgress(
                f"`mongosync reset` started removing the migration stored on "
                f"{request.destination} at {global_state.reset_started_at:%Y-%m-%d %H:%M:%S} "
                f"UTC and did not finish; it cannot be resumed. Run `{command}` again to "
                f"finish the reset, then start a new migration")
        for label, cluster in self.clusters.items():
            hosts = global_state.cluster_hosts.get(label)
            if hosts and hosts != cluster.hosts:
                raise ClusterMismatch(
                    f"the migration stored on {request.destination} was started with {label} = "
                    f"{', '.join(hosts)}, not {', '.join(cluster.hosts)}; start with the same "
                    f"--cluster0/--cluster1 as before, or reset the destination")

    def _attach(self, store: MigrationStore, stored: StoredMigration) -> None:
        global_state = stored.global_state
        self._check_stored(global_state)
        self.store = store
        self.context = self._context(store, stored)
        if global_state.error is not None and global_state.error.resumable:
            # A condition the operator could lift (a larger change buffer, say): go on; if it
            # still holds, the same error comes back.
            self._notify(f"going on after {global_state.error.name}: "
                         f"{global_state.error.message}")
            store.clear_error()
            global_state.error = None
        if global_state.error is not None:
            self.error = error_from_record(global_state.error.name, global_state.error.message)
            return  # a failed migration is only reported: nothing runs, nothing is written
        self.lease = self._new_lease(store)
        if self.lease.try_acquire():
            self._take_over(stored)
        else:
            self.standby = self.lease.holder()
            self._notify(f"standing by: the migration is owned by "
                         f"{self.standby.describe() if self.standby else 'another process'}")
        self._start_monitor()

    def _context(self, store: MigrationStore, stored: StoredMigration) -> PhaseContext:
        global_state = stored.global_state
        context = PhaseContext.build(
            self.clusters[global_state.source_label], self.clusters[global_state.destination_label],
            store, global_state, stored.resume, load_level=self.load_level, notify=self._notify)
        context.change_buffer_limit = self.settings.change_buffer_limit_bytes
        context.create_indexes_batch_size = self.settings.create_indexes_batch_size
        source, destination = (self.clusters[global_state.source_label],
                               self.clusters[global_state.destination_label])
        context.connection_strings = ConnectionStrings(source.label, source.uri,
                                                       destination.label, destination.uri)
        context.layout = self.layout
        return context

    def _configure_owned_context(self) -> None:
        """What this process adds to the migration it now drives: its --hotDocIDs, and the
        embedded verifier."""
        self._adopt_hot_documents()
        self._attach_verifier()

    def _adopt_hot_documents(self) -> None:
        """The hot documents this process was given join those stored with the migration
        (spec §2.2: IDs can be added by a restart, never removed). Stored before any change is
        applied, so the instance that commits takes every instance's from the store."""
        context = self.context
        assert context is not None
        state = context.global_state
        stored = HotDocuments.from_stored(state.hot_documents)
        added = [document for document in self.settings.hot_documents
                 if (document.namespace, document.identity) not in stored]
        if added:
            state.hot_documents = context.store.add_hot_documents(
                [document.to_stored() for document in added])
            stored = HotDocuments.from_stored(state.hot_documents)
            self._notify(f"hot documents (--hotDocIDs): {len(added)} added, {len(stored)} in "
                         f"all; their change events are skipped and each is taken from the "
                         f"source at commit")
        context.hot_documents = stored

    def _attach_verifier(self) -> None:
        """The embedded verifier, on unless the request or --disableVerification says not."""
        context = self.context
        assert context is not None
        state = context.global_state
        enabled = context.request.verification.enabled and not state.verification_disabled
        if enabled and self.disable_verification:
            state.verification_disabled = True
            context.save_global("verification_disabled")
            self._notify("verification disabled (--disableVerification), for good")
            enabled = False
        if enabled and self.layout.multi and not self.layout.is_coordinator:
            # The coordinator's verifier verifies every shard's documents; the other
            # instances apply their shard's changes (verifier/embedded.py).
            enabled = False
        destination = self.clusters[state.destination_label]
        context.verifier = EmbeddedVerifier(context, destination.verifier_store()) \
            if enabled else None

    def _take_over(self, stored: StoredMigration) -> None:
        """We own the migration: bring its layout up to date and run it if it is active."""
        assert self.store is not None
        if stored.schema_version < 2:
            self.store.upgrade()
            reloaded = self.store.load(self.layout.resume_id())
            assert reloaded is not None
            stored = reloaded
        self.context = self._context(self.store, stored)
        self._configure_owned_context()
        self.standby = None
        self._lease_lost = False
        if stored.resume.state == MigrationState.RUNNING and self._pause_pending:
            # A /pause answered 503 ("PAUSED then") before this process lost the lease:
            # honoured now, rather than the migration started again and the pause forgotten
            # (campaign seed 327).
            self._persist_pause()
            return
        if stored.resume.state in (MigrationState.RUNNING, MigrationState.COMMITTING,
                                   MigrationState.REVERSING):
            if stored.resume.state == MigrationState.COMMITTING:
                self.context.commit_requested.set()
            self._launch()

    # -- API entry points ----------------------------------------------------------------------
    def _require_owner(self) -> None:
        if self._lease_lost:
            raise ClusterUnavailable(
                "the destination was unreachable for longer than the migration lease: this "
                "process stopped the migration and takes it back once the destination answers; "
                "try again then")
        if self.standby is not None:
            raise NotOwner(f"this process is standing by: the migration is owned by "
                           f"{self.standby.describe()}; send the request to that process (it "
                           f"answers on its own --port), or stop it and this one takes over")

    def _require_state(self, *states: MigrationState) -> None:
        if self.state not in states:
            raise InvalidState(f"Currently in {self.state} state, needs to be in "
                               f"{states[0].value} state")

    def start(self, request: StartRequest) -> None:
        with self._lock:
            self._require_owner()
            self._require_state(MigrationState.IDLE)
            source = self.clusters[request.source]
            destination = self.clusters[request.destination]
            store = self._joinable or destination.metadata_store()
            existing = store.load_global()
            if existing is not None and not existing.superseded_by and (
                    existing.instances or self._joinable is not None):
                self._join(request, store, existing)
                return
            # Until the migration is stored, /start only reads: what a dropped connection or
            # a failover interrupts is read again, as the migration's own reads are.
            layout = retry.retrying(
                lambda: layout_for_start(source, source.shard_ids(), self.instance_id))
            if layout.multi and request.reversible:
                raise InstanceMismatch(
                    "reversible: true is not supported with one instance per source shard "
                    "(--id) in pymongosync: /reverse would have to be a barrier across "
                    "instances, which it is not yet. Start one mongosync without --id for a "
                    "reversible migration, or start without reversible")
            try:
                warnings = retry.retrying(lambda: self._preflight(request, source, destination))
            except DestinationNotEmpty:
                # /start sent to every instance at once: another instance of this migration
                # may be storing it right now (its lease and resume data come before the
                # migration itself, which the check above saw as leftovers). Join it once it
                # is stored; anything else on the destination is refused as it was.
                joined = self._stored_by_another_instance(store) if layout.multi else None
                if joined is None:
                    raise
                self._join(request, store, joined)
                return
            retry.retrying(lambda: self._refuse_conflicts(request, source, destination))
            log.info("Preflight checks completed.")  # mongosync's line (spec §17)
            self.layout = layout
            lease = self._take_new_lease(store, "is starting a migration on this destination")
            start_time = source.cluster_time()
            global_state = GlobalState(
                migration_id=str(uuid.uuid4()), created_at=now(),
                request=request.to_document(), source_label=request.source,
                destination_label=request.destination,
                cluster_hosts={label: c.hosts for label, c in self.clusters.items()},
                change_stream_start_time=start_time,
                change_buffering=self.settings.change_buffering,
                preflight_warnings=warnings, instances=list(layout.instances))
            resume = _new_resume(MigrationState.RUNNING, Phase.PREPARE, source, destination)
            resume.id = layout.resume_id()
            stored = store.create(global_state, resume)
            if stored.global_state.migration_id != global_state.migration_id:
                # Another instance stored the migration at the same moment: this one joins it.
                self._refuse_other_request(request, stored.global_state)
            self.store, self.lease = store, lease
            self.context = self._context(store, stored)
            self._configure_owned_context()
            # The runner announces each phase it moves to; the first one is announced here.
            self._notify(f"Starting {Phase.PREPARE.label} phase")
            self._launch()
            self._start_monitor()

    @staticmethod
    def _stored_by_another_instance(store: MigrationStore) -> GlobalState | None:
        """The multi-instance migration another instance is storing, once it is stored (None
        if none is within a few seconds)."""
        deadline = time.monotonic() + JOIN_WAIT_SECONDS
        while True:
            existing = retry.retrying(store.load_global)
            if existing is not None and not existing.superseded_by and existing.instances:
                return existing
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)

    def _join(self, request: StartRequest, store: MigrationStore,
              global_state: GlobalState) -> None:
        """``/start`` on an instance of a multi-instance migration another instance stored:
        the same request, then this instance's own record and work."""
        self._check_stored(global_state)
        self.layout = self._layout_of(global_state)
        self._refuse_other_request(request, global_state)
        source = self.clusters[global_state.source_label]
        destination = self.clusters[global_state.destination_label]
        lease = self._take_new_lease(store, f"runs instance {self.instance_id} of this migration")
        resume = _new_resume(MigrationState.RUNNING, Phase.PREPARE, source, destination)
        resume.id = self.layout.resume_id()
        stored = store.create(global_state, resume)
        log.info("Preflight checks completed.")
        self._joinable = None
        self.store, self.lease = store, lease
        self.context = self._context(store, stored)
        self._configure_owned_context()
        self._notify(f"joined the migration as instance {self.instance_id} (coordinator: "
                     f"{self.layout.coordinator})")
        self._notify(f"Starting {Phase.PREPARE.label} phase")
        self._launch()
        self._start_monitor()

    @staticmethod
    def _refuse_other_request(request: StartRequest, stored: GlobalState) -> None:
        if request.to_document() != stored.request:
            raise InvalidState(
                "every instance of a multi-instance migration must get the same /start body, "
                "and this one differs from the one the migration was started with: send the "
                "same body to every instance")

    def pause(self) -> None:
        with self._lock:
            self._require_owner()
            self._require_state(MigrationState.RUNNING)
            self._pause_pending = True
            if not self._stop_worker(timeout=STOP_WAIT_SECONDS):
                raise ClusterUnavailable(
                    f"the migration did not reach a checkpoint within {STOP_WAIT_SECONDS:.0f} s: "
                    f"it is waiting for a cluster that does not answer (see the warnings of "
                    f"GET /api/v1/progress). It stops at its next checkpoint and is PAUSED then")
            self._persist_pause()

    def _persist_pause(self) -> None:
        assert self.context is not None
        self.context.set_state(MigrationState.PAUSED)
        self._pause_pending = False

    def resume(self) -> None:
        with self._lock:
            self._require_owner()
            self._require_state(MigrationState.PAUSED)
            assert self.context is not None
            self.context.set_state(MigrationState.RUNNING)
            self._launch()

    def commit(self) -> None:
        with self._lock:
            self._require_owner()
            self._require_state(MigrationState.RUNNING)
            if not self.progress()["canCommit"]:
                raise InvalidState("canCommit is false: wait until the initial copy has finished "
                                   "and lag is at most 30 seconds (see GET /api/v1/progress)")
            assert self.context is not None
            # Persisted first: a process that starts after a crash continues the commit.
            self.context.set_state(MigrationState.COMMITTING)
            self.context.commit_requested.set()
            log.info("Commit handler called")  # where MongoDB's tooling sees the commit begin
            context = self.context
        if self.layout.multi:
            # As mongosync: with one instance per shard, /commit returns once every instance
            # has received it (recorded first, so nothing waits on this call's client).
            group = context.group
            while not group.commit_requested_by_all():
                if self._closing.wait(POLL_SECONDS):
                    return

    def reverse(self) -> None:
        with self._lock:
            self._require_owner()
            self._require_state(MigrationState.COMMITTED)
            context = self.context
            assert context is not None and self.store is not None
            if not context.request.reversible:
                raise InvalidState("this migration was not started with reversible: true, so "
                                   "it cannot be reversed")
            old_state = context.global_state
            reversed_request = context.request.reversed()
            new_store = context.source.metadata_store()
            lease = self._new_lease(new_store)
            if not lease.try_acquire():
                raise NotOwner("another mongosync process owns the reversed migration")
            global_state = GlobalState(
                migration_id=str(uuid.uuid4()), created_at=now(),
                request=reversed_request.to_document(), source_label=reversed_request.source,
                destination_label=reversed_request.destination,
                cluster_hosts=old_state.cluster_hosts,
                change_stream_start_time=context.resume.can_write_time,
                destination_write_blocked_by_us=old_state.source_write_blocked_by_us,
                hot_documents=old_state.hot_documents, reversed_from=old_state.migration_id)
            # A verification this cluster holds from an earlier direction is not this one's.
            self.clusters[old_state.source_label].verifier_store().clear()
            stored = new_store.create(global_state,
                                      _new_resume(MigrationState.REVERSING, Phase.APPLY_CHANGES,
                                                  self.clusters[reversed_request.source],
                                                  self.clusters[reversed_request.destination]),
                                      replace_superseded=True)
            old_state.superseded_by = "reverse"
            context.save_global("superseded_by")
            if self.lease is not None:
                self.lease.release()
            self.store, self.lease = new_store, lease
            self.context = self._context(new_store, stored)
            self._configure_owned_context()
            self._launch()

    def close(self) -> None:
        """Checkpoint and stop working (process shutdown); the stored state is unchanged.

        Bounded in time: a worker held by a cluster that does not answer is left behind (its
        thread ends with the process) — everything it did is checkpointed, and the next
        process resumes from there."""
        self._closing.set()
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        if not self._stop_worker(timeout=STOP_WAIT_SECONDS):
            log.warning("the migration worker did not stop within %.0f s (a cluster does not "
                        "answer); stopping anyway: it resumes from its last checkpoint",
                        STOP_WAIT_SECONDS)
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.lease is not None and self.standby is None:
            try:
                with retry.bounded(LEASE_RELEASE_SECONDS):
                    self.lease.release()  # the next process takes over at once
            except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
                log.warning("could not release the migration lease: %s", exc)

    # -- checks before anything is written ---------------------------------------------------
    def _preflight(self, request: StartRequest, source: Cluster,
                   destination: Cluster) -> list[str]:
        # Versions, topology, an empty destination, then every check of pymongosync.preflight
        # (privileges, disk, indexes, field names, zones, oplog window...): all before any write.
        return [finding.describe() for finding in check_before_start(
            request, source, destination, change_buffering=self.settings.change_buffering)]

    def _refuse_conflicts(self, request: StartRequest, source: Cluster,
                          destination: Cluster) -> None:
        """With pre-existing destination data, no namespace to migrate may exist there already
        (mongosync's rule): its documents would be mixed with the source's."""
        if not request.preExistingDestinationData:
            return  # the destination holds no user data at all (checked by the pre-flight)
        wanted = {entry.id for entry in catalog.list_namespaces(source,
                                                                request.namespace_filter())
                  if entry.kind != NamespaceKind.VIEW}  # views are not migrated then
        existing = {f"{db}.{info['name']}" for db in destination.database_names()
                    if db not in SYSTEM_DATABASES and not is_metadata_database(db)
                    for info in destination.collection_infos(db)}
        conflicts = sorted(wanted & existing)
        if conflicts:
            raise NamespaceConflict(
                f"namespace conflict detected: {', '.join(conflicts)} already exist on the "
                f"destination {destination.label} and are in this migration; exclude them "
                f"with excludeNamespaces, or drop or rename them on the destination first")

    # -- the worker ----------------------------------------------------------------------------
    def _launch(self) -> None:
        assert self.context is not None
        self.context.stop.clear()
        self._worker = threading.Thread(target=self._work, args=(self.context,),
                                        name="migration", daemon=True)
        self._worker.start()

    def _stop_worker(self, timeout: float | None = None) -> bool:
        """Ask the worker (and the verifier) to stop and wait, ``timeout`` for both together;
        False if still running."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if self.context is not None:
            self.context.stop.set()
            if self.context.verifier is not None:
                self.context.verifier.stop(left())
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(left())
            if worker.is_alive():
                return False
        self._worker = None
        return True

    def _notify(self, message: str) -> None:
        log.info(message)
        for listener in self._listeners:
            listener(message)

    def _work(self, context: PhaseContext) -> None:
        try:
            run_phases(context)
        except Exception as exc:  # every failure is fatal and recorded...
            if self._closing.is_set():
                # ...except one of a worker the shutdown gave up waiting for (its clients are
                # closed under it): it resumes from its last checkpoint next time.
                log.info("the migration worker stopped with the process: %s", exc)
                return
            if not isinstance(exc, MigrationError):
                log.exception("migration failed")
                exc = InternalError(f"{type(exc).__name__}: {exc}")
            self._fail(context, exc)

    def _fail(self, context: PhaseContext, error: MigrationError) -> None:
        self.error = error
        self._notify(f"fatal: {error.error_name}: {error.message}")
        try:
            context.store.record_error(error.error_name, error.message, error.resumable)
        except Exception:
            log.exception("could not record the error in the metadata")

    # -- the monitor: lease, standby, and what /progress needs from the clusters -------------
    def _start_monitor(self) -> None:
        if self._monitor is None or not self._monitor.is_alive():
            self._monitor = threading.Thread(target=self._watch, name="monitor", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        last_renewal = last_ping = last_oplog = 0.0
        while not self._closing.is_set():
            if time.monotonic() - last_ping >= PING_EVERY_SECONDS:
                last_ping = time.monotonic()
                self._ping_clusters()
            if time.monotonic() - last_oplog >= OPLOG_EVERY_SECONDS:
                last_oplog = time.monotonic()
                self._in_bounded_time(self._sample_oplog)
            if time.monotonic() - last_renewal >= RENEW_EVERY_SECONDS:
                last_renewal = time.monotonic()
                self._in_bounded_time(self._keep_or_take_lease)
            self._in_bounded_time(self._sample)
            self._in_bounded_time(self._report)
            if self._pause_pending and (self._worker is None or not self._worker.is_alive()):
                self._in_bounded_time(self._finish_pause)
            self._closing.wait(MONITOR_SECONDS)

    @staticmethod
    def _in_bounded_time(step: Callable[[], None]) -> None:
        """One monitor step: it gives up after a while rather than hold the monitor on a
        cluster that does not answer; a missed step is done again next round."""
        try:
            with retry.bounded(SAMPLE_SECONDS):
                step()
        except Exception as exc:  # noqa: BLE001 - a missed sample is retried next round
            log.debug("monitor: %s", exc)

    def _finish_pause(self) -> None:
        """A pause the worker could not honour at once is recorded when it has stopped."""
        with self._lock:
            if self._pause_pending and self.state == MigrationState.RUNNING.value:
                self._persist_pause()

    def _ping_clusters(self) -> None:
        context = self.context
        if context is None:
            return
        for role, cluster in (("source", context.source), ("destination", context.destination)):
            contact = self._contacts.setdefault(role, ClusterContact(label=cluster.label))
            started = time.monotonic()
            try:
                with retry.bounded(SAMPLE_SECONDS):
                    cluster.ping()
            except Exception as exc:  # noqa: BLE001 - reported in /progress, not raised
                contact.failed(f"{type(exc).__name__}: {redact(str(exc))}"[:300])
            else:
                contact.answered(time.monotonic() - started)

    def _keep_or_take_lease(self) -> None:
        lease, store = self.lease, self.store
        if lease is None or store is None or self.error is not None:
            return
        if self.standby is None and not self._lease_lost:
            if not lease.renew():
                with self._lock:
                    if self.lease is not lease:
                        # A reverse released this lease while it was being renewed and holds
                        # the reversed migration's: losing the released one loses nothing.
                        return
                    # Ownership can no longer be guaranteed: stop writing before another
                    # process may take over. Recorded first: reading the holder may fail too
                    # (the destination is what is unreachable), and the next rounds must then
                    # take the lease back, not renew it and leave the migration stopped.
                    self._lease_lost = True
                self._stop_worker(timeout=STOP_WAIT_SECONDS)
                self._notify("lost the migration lease: standing by")
                self.standby = lease.holder()
            return
        # This instance's own record: a non-coordinator instance (--id) that took the
        # coordinator's would write its shard's resume token and applied_before over the
        # coordinator's (campaign seed 57 with CAMPAIGN_ONE_PER_SHARD=1).
        mine = self.layout.resume_id()
        if lease.try_acquire():
            with self._lock:
                stored = store.load(mine)
                if stored is not None:
                    self._notify("took over the migration")
                    self._take_over(stored)
        else:
            self.standby = lease.holder() or self.standby
            stored = store.load(mine)
            if stored is not None and self.context is not None:
                self.context.resume = stored.resume
                self.context.global_state = stored.global_state

    def _sample(self) -> None:
        context = self.context
        if context is None or self.store is None:
            return
        phase, state = context.resume.phase, context.resume.state
        if state in (MigrationState.RUNNING, MigrationState.COMMITTING,
                     MigrationState.REVERSING) and not context.resume.can_write:
            self._latest_source_time = context.source.latest_time()
        if phase == Phase.APPLY_CHANGES and state == MigrationState.RUNNING:
            lag = lag_between(self._latest_source_time,
                              context.resume.crud_change_stream_resume_info.last_event_ts
                              or context.global_state.change_stream_start_time)
            if lag is not None:
                self._lag_samples = (*self._lag_samples[1 - LAG_SAMPLES:],
                                     (time.monotonic(), lag))
        else:  # an estimate is of this stretch of change application only
            self._lag_samples = ()
        if phase in (Phase.PLAN_PARTITIONS, Phase.COPY) or self._copy_totals.partitions == 0 \
                or self._copy_totals.partitions_done < self._copy_totals.partitions:
            self._copy_totals = self.store.copy_totals()
            if self.layout.multi:
                self._own_copy_totals = self.store.copy_totals(instance=self.layout.me)
        if self.layout.multi:
            self._sample_instances(context)

    def _sample_instances(self, context: PhaseContext) -> None:
        """What this instance's canCommit needs of the others: for the coordinator, that every
        instance has joined and finished its copy; for the others, the coordinator's own
        verdict (index builds, verifier), which it stores for them."""
        group = context.group
        self._instances_missing = tuple(group.missing())
        if self.layout.is_coordinator:
            self._instances_ready = not self._instances_missing and group.all_copied()
            # Once committing, it was ready: the others' /commit still needs to see that (its
            # canCommit is false past RUNNING, and they refused /commit for good, while its
            # own /commit waited for theirs).
            ready = self.progress()["canCommit"] or self.state in (
                MigrationState.COMMITTING.value, MigrationState.COMMITTED.value)
            if ready != context.resume.ready_to_commit and self.standby is None:
                context.resume.ready_to_commit = ready
                context.save_resume("ready_to_commit")
        else:
            coordinator = group.coordinator()
            self._instances_ready = coordinator is not None and coordinator.ready_to_commit
            state = context.global_state
            if context.request.verification.enabled and not state.verification_disabled:
                # The coordinator's verifier verifies every shard: its figures, as stored.
                self._coordinator_verification = stored_figures(
                    self.clusters[state.destination_label].verifier_store(),
                    self._latest_source_time, context.destination.latest_time())

    def _is_due(self, line: str) -> bool:
        last = self._reported.get(line)
        return last is None or time.monotonic() - last[0] >= REPORT_EVERY_SECONDS

    def _report(self) -> None:
        """mongosync's periodic lines, from memory (spec §5.3): ``Operation duration stats``
        with the clusters' ping latency and the durations of the reads and writes since the
        last one (pymongosync.durations), and ``Replication progress`` while change events are
        applied. MongoDB's Mongosync Insights plots them from the log."""
        context = self.context
        if context is None or self.standby is not None or self.error is not None:
            return
        applied = context.counters.events_applied
        pings = {f"{role}PingLatencyMs": contact.ping_latency_ms
                 for role, contact in self._contacts.items()
                 if contact.ping_latency_ms is not None}
        if pings and self._is_due("Operation duration stats"):
            self._reported["Operation duration stats"] = (time.monotonic(), applied)
            # The copy's and change application's reads and writes since the last line.
            stats = {**pings, **context.counters.durations.take_recent()}
            log.info("Operation duration stats", extra={"fields": stats})
        resume = context.resume
        if resume.phase not in (Phase.APPLY_CHANGES, Phase.COMMIT) or resume.state not in (
                MigrationState.RUNNING, MigrationState.COMMITTING) or resume.can_write or \
                not self._is_due("Replication progress"):
            return
        progress = self.progress()
        if progress["lagTimeSeconds"] is None:
            return  # not sampled yet: next round
        last = self._reported.get("Replication progress")
        now_ = time.monotonic()
        self._reported["Replication progress"] = (now_, applied)
        rate = 0.0 if last is None else (applied - last[1]) / max(now_ - last[0], 1e-3)
        lag = progress["lag"] or {}
        fields = {"lagTimeSeconds": progress["lagTimeSeconds"],
                  "crudLagSeconds": lag.get("crudLagSeconds"),
                  "ddlLagSeconds": lag.get("ddlLagSeconds"),
                  "totalEventsApplied": progress["totalEventsApplied"],
                  "eventApplicationRatePerSecond": round(rate, 2),
                  "ceaStage": progress.get("ceaStage"),
                  "estimatedOplogTimeRemaining": progress.get("estimatedOplogTimeRemaining"),
                  "estimatedSecondsToCEACatchup": progress.get("estimatedSecondsToCEACatchup")}
        log.info("Replication progress", extra={"fields": {
            name: value for name, value in fields.items() if value is not None}})

    def _sample_oplog(self) -> None:
        """The oldest entry the source's oplog still holds (every 30 s, while it matters)."""
        context = self.context
        if context is None or self.standby is not None or context.resume.can_write or \
                context.resume.state != MigrationState.RUNNING:
            return
        try:
            self._oplog_earliest = oplog_window.earliest_entry_of(
                self.clusters[context.global_state.source_label])
            self._oplog_refused = None
        except OperationFailure as exc:
            if exc.code not in oplog_window.REFUSED_CODES:
                raise  # the monitor retries it next round
            # It will not change by itself: said once in the log, and in /progress's warnings.
            refused = redact(str(exc))
            if self._oplog_refused is None:
                log.warning("the source's oplog window cannot be read: %s", refused)
            self._oplog_refused = refused

    def _oplog_needed(self) -> Any:
        """The oldest source position the migration still needs."""
        context = self.context
        assert context is not None
        buffer = context.change_buffer
        if buffer is not None and buffer.figures.stored_up_to is not None:
            return buffer.figures.stored_up_to
        return context.resume.crud_change_stream_resume_info.last_event_ts or \
            context.global_state.change_stream_start_time

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

    def progress(self, mongosync_id: str = "coordinator") -> dict[str, Any]:
        """The /api/v1/progress document (spec §3.4), from memory."""
        context = self.context
        if context is None:
            return empty_progress(MigrationState.IDLE.value)
        standby = self.standby
        view = ProgressView(
            global_state=context.global_state, resume=context.resume,
            source_display=context.source.display,
            destination_display=context.destination.display,
            events_applied=context.counters.events_applied if standby is None
            else context.resume.events_applied,
            copy_totals=self._copy_totals, latest_source_time=self._latest_source_time,
            error=None if self.error is None else (self.error.error_name, self.error.message),
            standby=None if standby is None else StandbyInfo(
                host=standby.record.host, pid=standby.record.pid, owner=standby.record.owner),
            source_label=context.source.label, mongosync_id=mongosync_id,
            write_blocking_mode=context.request.write_blocking_mode,
            contacts=dict(self._contacts), pause_pending=self._pause_pending,
            last_crud_event_time=context.counters.last_crud_event_time,
            last_ddl_event_time=context.counters.last_ddl_event_time,
            lag_samples=self._lag_samples,
            coordinator_id=self.layout.coordinator if self.layout.multi else None,
            own_copy_totals=self._own_copy_totals, instances_ready=self._instances_ready,
            instances_missing=self._instances_missing,
            active_copy_workers=context.counters.copy_workers_active)
        if context.resume.state == MigrationState.RUNNING and not context.resume.can_write:
            view.oplog_remaining = None if self._oplog_earliest is None else \
                oplog_window.remaining_seconds(self._oplog_earliest, self._oplog_needed())
            view.oplog_checked = self._oplog_earliest is not None
            view.oplog_refused = self._oplog_refused
        buffer = context.change_buffer
        if buffer is not None:
            view.change_buffer = buffer.figures
        builder = context.index_builder
        if context.resume.phase == Phase.APPLY_CHANGES:
            if builder is not None:
                view.index_building = builder.figures
            elif builds_after_copy(context) and not context.resume.index_builds_done and \
                    context.resume.copy_finished_time is not None and self.layout.is_coordinator:
                # The phase has begun and its builder not yet: the builds are still to do.
                view.index_building = IndexFigures()
        verifier = context.verifier
        if verifier is not None and standby is None:
            view.verification = verifier.sides(self._latest_source_time)
            view.verification_details = verifier.details()
            view.verification_committable = verifier.committable(self._latest_source_time,
                                                                 CAN_COMMIT_LAG_SECONDS)
        elif self._coordinator_verification is not None and standby is None:
            view.verification, view.verification_details = self._coordinator_verification
        return render(view)


def _new_resume(state: MigrationState, phase: Phase, source: Cluster,
                destination: Cluster) -> ResumeData:
    return ResumeData(state=state, phase=phase, sync_phase=phase.label,
                      phase_transitions=[PhaseTransition(phase=phase, ts=now())],
                      direction_mapping={"Source": source.display,
                                         "Destination": destination.display})
