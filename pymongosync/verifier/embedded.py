"""The verifier embedded in a migration: it proves, before cutover, that the destination holds
what the source holds.

How it works (in the manner of mongodb-labs/migration-verifier):

1. **Initial hashing.** Once change application has caught up with the copy, every ``_id``
   range of the copy is read on both clusters and compared byte for byte
   (:func:`pymongosync.verifier.compare.compare_range`), a few ranges at a time. Each finished
   range is recorded, so a pause, a kill -9 or a restart goes on with the ranges not yet
   hashed.
2. **Stream hashing.** From then on, every document that changes — on the source (told by
   change application, for each event it applies) or on the destination (its own change
   stream: writes behind the tool's back show up there) — is queued as a *recheck* on the
   destination, beside the migration's metadata. A recheck is read again on both sides once
   change application has applied every source change up to the change that queued it; equal,
   it is done; different, it waits for the next round. Differences found by hashing are queued
   the same way: nothing is declared while writes may be in flight.
3. **Final verification**, during commit, once the source is write-blocked and every change up
   to the commit time is applied: every pending recheck is read on both sides, twice before a
   difference counts; collections, indexes, views and shard keys are compared once the final
   options are back. Any change to either cluster after the final verification began fails the
   migration, as does any difference: the report lists each one on the destination.

Its state is per range and per pending recheck, never per document: memory does not grow with
the number of documents.

With one instance per source shard, the coordinator's verifier verifies the whole migration:
it hashes every instance's ranges, follows the source's change stream through the router (every
shard's changes: each instance applies only its own shard's) instead of being told by change
application, and compares a recheck once every instance has applied its shard's changes up to
it. Its final verification runs once every instance has drained its shard to the commit time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import bson
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from pymongosync import catalog
from pymongosync.changes.events import DECODED
from pymongosync.changes.reader import (
    CRUD,
    Change,
    changes_after,
    read_batches,
    summarize_changes,
)
from pymongosync.changes.translate import SourceChange
from pymongosync.cluster_client import ClusterClient
from pymongosync.errors import Stopped, VerificationFailed
from pymongosync.identity import id_key
from pymongosync.phases.commit import refuse_late_source_writes
from pymongosync.phases.copy import PARALLELISM_BY_LOAD_LEVEL
from pymongosync.phases.ddl_order import just_before
from pymongosync.phases.context import PhaseContext
from pymongosync.progress import SideStatus
from pymongosync.retry import is_transient
from pymongosync.state import (
    DOCUMENT_KINDS,
    IndexRef,
    Mismatch,
    NamespaceRecord,
    NamespaceRef,
    Recheck,
    RecheckKey,
    VerificationPhase,
    VerificationTask,
    VerifierState,
)
from pymongosync.store import now
from pymongosync.verifier.compare import (
    compare_documents,
    compare_metadata,
    compare_range,
    describe,
)
from pymongosync.verifier.store import TaskSummary, VerifierStore

log = logging.getLogger("pymongosync.verifier")

RECHECK_BATCH = 500
ROUND_SECONDS = 0.5
SHOWN_MISMATCHES = 5
MISMATCHES_TEXT = "the verifier found one or more mismatches"


class EmbeddedVerifier:
    def __init__(self, context: PhaseContext, store: VerifierStore,
                 workers: int | None = None) -> None:
        self.context = context
        self.store = store
        # As many ranges at once as the copy copies (loadLevel).
        self.workers = workers or PARALLELISM_BY_LOAD_LEVEL.get(context.load_level, 4)
        self.state = store.load_state() or VerifierState()
        self.summary = TaskSummary()
        self.pending_rechecks = 0
        self.mismatch_count = 0
        self.first_mismatches: list[Mismatch] = []
        # Documents `mongosync repair` took from the source after an earlier final verification.
        self.repaired = store.repair_count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()  # starting the threads, or stopping them
        self._lock = threading.Lock()
        self._oldest_due: Timestamp | None = None
        self._latest_destination: Timestamp | None = None
        self._hashed_now = [0, 0]  # hashed by ranges in progress, not yet recorded
        # (source, destination) cluster times when the final verification began.
        self._final_started: tuple[Timestamp, Timestamp] | None = None
        # One instance per source shard: this is the coordinator's, which follows the source.
        self.follows_source = context.layout.multi

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.state.phase != VerificationPhase.NOT_STARTED

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def ensure_started(self) -> None:
        """Begin (or go on with) verifying; called once change application has caught up
        with the copy. Idempotent."""
        if self.running or self.state.phase in (VerificationPhase.PASSED,
                                                VerificationPhase.FAILED):
            return
        context = self.context
        self._begin()
        self.store.release_claims(f"{context.instance}:")
        threads = [threading.Thread(target=self._guarded, args=(self._hash_ranges, n),
                                    name=f"verifier-hash-{n}", daemon=True)
                   for n in range(self.workers)]
        threads.append(threading.Thread(target=self._guarded, args=(self._follow_destination, 0),
                                        name="verifier-destination", daemon=True))
        if self.follows_source:
            threads.append(threading.Thread(target=self._guarded, args=(self._follow_source, 0),
                                            name="verifier-source", daemon=True))
        threads.append(threading.Thread(target=self._guarded, args=(self._recheck_rounds, 0),
                                        name="verifier-rechecks", daemon=True))
        # A stop (a /pause, the process stopping) may come from another thread at any time:
        # one that came first keeps the threads from starting, and one that comes later finds
        # them all started (joining a thread not started yet raised RuntimeError, and /pause
        # answered 500: campaign seed 17 with a sharded source).
        with self._starting:
            if context.stop.is_set():
                return
            self._stop.clear()
            for thread in threads:
                thread.start()
            self._threads = threads

    def _begin(self) -> None:
        """The ranges to hash (every partition of the copy, every instance's) and the times
        from which changes are followed. Idempotent."""
        if self.started:
            return
        context = self.context
        tasks = [VerificationTask(
            id=partition.id, namespace=partition.namespace, lower=partition.lower,
            upper=partition.upper, is_last=partition.is_last,
            estimated_documents=partition.estimated_document_count)
            for partition in context.store.partition_records()]
        self.store.ensure_tasks(tasks)
        self.state.destination_start_time = context.destination.cluster_time()
        fields = ["destination_start_time", "phase"]
        if self.follows_source:
            self.state.source_start_time = context.source.cluster_time()
            fields.append("source_start_time")
        self.state.phase = VerificationPhase.INITIAL_HASHING
        self.store.save_state(self.state, *fields)
        log.info("verifier: initial hashing started")

    def applied_up_to(self) -> Timestamp | None:
        """Every source change up to this time is applied: this instance's position, or with
        one instance per source shard the earliest of theirs (each has applied every change
        before its ``applied_before``)."""
        context = self.context
        if not context.layout.multi:
            return context.resume.crud_change_stream_resume_info.last_event_ts
        before = context.group.applied_before()
        return None if before is None else just_before(before)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the background work; False if a thread is still running after ``timeout``
        (for all of them together)."""
        with self._starting:
            self._stop.set()
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    def _guarded(self, work: Any, number: int) -> None:
        """A background task: transient errors wait and go on; anything else stops the
        verifier and is reported by the commit (nothing is lost: the state is stored)."""
        while not self._stop.is_set():
            try:
                work(number)
                return
            except Stopped:
                return
            except PyMongoError as exc:
                if not is_transient(exc):
                    log.exception("verifier: %s failed", work.__name__)
                    return
                log.warning("verifier: transient error, retrying: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("verifier: %s failed", work.__name__)
                return

    # -- feeds ---------------------------------------------------------------------------------
    @property
    def notes_source_changes(self) -> bool:
        """Whether change application is to tell it each document it writes (not when it
        follows the source's stream itself)."""
        return self.started and self.state.phase != VerificationPhase.PASSED and \
            not self.follows_source

    def note_source_changes(self, changes: Iterable[SourceChange]) -> None:
        """Documents change application has just written: check them again once applied
        (one recheck per document, due at its last change)."""
        if not self.notes_source_changes:
            return
        latest: dict[tuple[str, Hashable], Recheck] = {}
        for change in changes:
            value = bson.decode(change.id_document, DECODED)["_id"]
            key = RecheckKey(ns=f"{change.db}.{change.coll}", id=value)
            latest[(key.ns, id_key(value))] = Recheck(key=key, due=change.time)
        if latest:
            self.store.add_rechecks(list(latest.values()))

    def _rechecks(self, events: Iterable[Mapping[str, Any]],
                  due: Timestamp | None) -> list[Recheck]:
        """One recheck per changed document (the last change's time), within the filter."""
        latest: dict[tuple[str, Hashable], Recheck] = {}
        included = self.context.namespace_filter
        for event in events:
            if event["operationType"] not in CRUD:
                continue
            ns = event["ns"]
            db, coll = ns["db"], ns["coll"]
            if not included.includes(db, coll):
                continue
            value = event["documentKey"]["_id"]
            key = RecheckKey(ns=f"{db}.{coll}", id=value)
            latest[(key.ns, id_key(value))] = Recheck(key=key, due=due or event["clusterTime"])
        return list(latest.values())

    # -- initial hashing ---------------------------------------------------------------------
    def _hash_ranges(self, number: int) -> None:
        context = self.context
        owner = f"{context.instance}:verify-{number}:"  # ends with ':': a prefix of itself only
        while not self._stop.is_set():
            task = self.store.claim_task(owner)
            if task is None:
                self._initial_hashing_done()
                return
            try:
                self._hash(task)
            except Stopped:
                raise  # the next start gives back what a stopped run held (paused: no writes)
            except Exception:
                # Given back before the retry claims a range: claimed, it would never be
                # hashed, and initial hashing would never finish.
                self.store.release_claims(owner)
                raise

    def _hash(self, task: VerificationTask) -> None:
        context = self.context
        counted = [0, 0]

        def progress(side: int, documents: int) -> None:
            counted[side] += documents
            with self._lock:
                self._hashed_now[side] += documents
            if self._stop.is_set():
                raise Stopped()
            # What a stop would make the next run read again (one small write per batch).
            self.store.task_progress(task.id, counted[0], counted[1])

        db, coll = task.namespace.db, task.namespace.coll
        try:
            result = compare_range(context.source, context.destination, db, coll, task.lower,
                                   None if task.is_last else task.upper, on_batch=progress)
        finally:
            with self._lock:
                self._hashed_now[0] -= counted[0]
                self._hashed_now[1] -= counted[1]
        if result.differing:
            due = context.source.latest_time()
            self.store.add_rechecks([Recheck(key=RecheckKey(ns=f"{db}.{coll}", id=value),
                                             due=due) for value in result.differing])
        self.store.finish_task(task.id, result.source_documents, result.destination_documents)

    def _initial_hashing_done(self) -> None:
        with self._lock:
            if self.state.phase != VerificationPhase.INITIAL_HASHING:
                return
            summary = self.store.task_summary()
            if summary.done < summary.tasks:
                return  # another worker still hashes its range
            # Shown with the phase: every range's count is in it now (until the next refresh,
            # /progress said "stream hashing" with the figures of before, 0 hashed in a demo).
            self.summary = summary
            self.state.phase = VerificationPhase.STREAM_HASHING
        self.store.save_state(self.state, "phase")
        log.info("verifier: initial hashing finished; stream hashing")

    # -- stream hashing ----------------------------------------------------------------------
    def _follow_destination(self, number: int) -> None:
        """The destination's own changes (ours and anyone else's) become rechecks."""
        while not self._stop.is_set():
            self._read_changes("destination", until=None)

    def _follow_source(self, number: int) -> None:
        """With one instance per source shard: every shard's changes become rechecks, each due
        once every instance has applied up to it."""
        while not self._stop.is_set():
            self._read_changes("source", until=None)

    def _read_changes(self, side: str, until: Timestamp | None) -> None:
        """One cluster's change stream, from where it was followed to (``until``: up to that
        time, else until stopped). A destination change is due once change application has
        applied what it has now (it may be change application's own write); a source change
        once it is applied."""
        context, state = self.context, self.state
        cluster = context.source if side == "source" else context.destination
        token = getattr(state, f"{side}_resume_token")
        with read_batches(cluster, self._stop if until is None else threading.Event(),
                          resume_after=token,
                          start_at=None if token else getattr(state, f"{side}_start_time"),
                          ) as batches:
            for batch in batches:
                due = None if side == "source" else self.applied_up_to()
                rechecks = self._rechecks(batch.events, due=due)
                if rechecks:
                    self.store.add_rechecks(rechecks)
                if batch.events:
                    setattr(state, f"{side}_last_event_ts", batch.events[-1]["clusterTime"])
                if batch.resume_token is not None:
                    setattr(state, f"{side}_resume_token", dict(batch.resume_token))
                self.store.save_state(state, f"{side}_resume_token", f"{side}_last_event_ts")
                reached = _token_time(batch.resume_token)
                if until is not None and reached is not None and reached >= until:
                    return
                if until is None and self._stop.is_set():
                    return

    def _recheck_rounds(self, number: int) -> None:
        while not self._stop.is_set():
            applied = self.applied_up_to()
            if applied is None or self.recheck_round(applied) < RECHECK_BATCH:
                self._refresh()
                self._stop.wait(ROUND_SECONDS)

    def recheck_round(self, up_to: Timestamp | None) -> int:
        """Compare the rechecks due by ``up_to``: equal ones are done, others wait for a later
        round. Returns how many were compared."""
        due = self.store.due_rechecks(up_to, RECHECK_BATCH)
        if not due:
            return 0
        differing = self._differing(due)
        self.store.remove_rechecks([recheck.key for recheck in due
                                    if id_key((recheck.key.ns, recheck.key.id)) not in differing])
        if differing:
            later = self.context.source.latest_time()
            for recheck in due:
                if id_key((recheck.key.ns, recheck.key.id)) in differing:
                    self.store.postpone_recheck(recheck.key, later)
        self.store.add_counts(rechecked=len(due))
        return len(due)

    def _differing(self, rechecks: list[Recheck]) -> set[Hashable]:
        """The rechecks whose document differs now (keyed by namespace and _id value)."""
        by_namespace: dict[str, list[Any]] = defaultdict(list)
        for recheck in rechecks:
            by_namespace[recheck.key.ns].append(recheck.key.id)
        differing: set[Hashable] = set()
        for ns, ids in by_namespace.items():
            db, coll = ns.split(".", 1)
            for difference in compare_documents(self.context.source, self.context.destination,
                                                db, coll, ids):
                differing.add(id_key((ns, difference.id)))
        return differing

    def _refresh(self) -> None:
        """Figures for /progress (read from the store, not kept per document)."""
        summary = self.store.task_summary()
        pending = self.store.recheck_count()
        oldest = self.store.oldest_due()
        state = self.store.load_state()
        latest_destination = self.context.destination.latest_time()
        with self._lock:
            self.summary, self.pending_rechecks, self._oldest_due = summary, pending, oldest
            self._latest_destination = latest_destination
            if state is not None:
                for name in ("rechecked_documents", "rehashed_documents"):
                    setattr(self.state, name, getattr(state, name))
        if self.follows_source:
            self._publish_verified_through()

    # -- what /progress shows ----------------------------------------------------------------
    def details(self) -> dict[str, Any]:
        """pymongosync's own figures beside mongosync's ``verification`` fields."""
        with self._lock:
            return _details(self.state, self.pending_rechecks, self.mismatch_count,
                            self.first_mismatches, self.repaired)

    def committable(self, latest_source: Timestamp | None, limit: int) -> bool:
        """Initial hashing done, and no more than ``limit`` seconds behind on either side."""
        if self.state.phase != VerificationPhase.STREAM_HASHING:
            return False
        lags = [side.lag_seconds for side in self.sides(latest_source)]
        return all(lag is not None and lag <= limit for lag in lags)

    def verified_through(self) -> tuple[Timestamp | None, Timestamp | None]:
        """The cluster times up to which every change is verified, on the source and on the
        destination (None: not known yet)."""
        with self._lock:
            oldest = self._oldest_due
        source = self.applied_up_to()
        if source is not None:
            if oldest is not None and oldest < source:
                source = oldest  # changes applied, not yet compared
            if self.follows_source:  # the source's changes it has not read yet
                followed = _token_time(self.state.source_resume_token) or \
                    self.state.source_start_time
                if followed is not None and followed < source:
                    source = followed
        destination = _token_time(self.state.destination_resume_token) or \
            self.state.destination_last_event_ts or self.state.destination_start_time
        return source, destination

    def _publish_verified_through(self) -> None:
        """For the /progress of the other instances of a migration run one per source
        shard; stored only when it moved by a second or more, the unit of a lag."""
        source, destination = self.verified_through()
        state = self.state
        if _seconds(source, destination) != _seconds(state.source_verified_through,
                                                     state.destination_verified_through):
            state.source_verified_through = source
            state.destination_verified_through = destination
            self.store.save_state(state, "source_verified_through",
                                  "destination_verified_through")

    def sides(self, latest_source: Timestamp | None) -> tuple[SideStatus, SideStatus]:
        with self._lock:
            summary = self.summary
            hashed = (summary.hashed_source + self._hashed_now[0],
                      summary.hashed_destination + self._hashed_now[1])
            latest_destination = self._latest_destination
        source_through, destination_through = self.verified_through()
        phase = self.state.phase
        return (SideStatus(summary.estimated_documents, hashed[0],
                           lag_seconds(latest_source, source_through), summary.collections,
                           summary.collections_done, phase),
                SideStatus(summary.estimated_documents, hashed[1],
                           lag_seconds(latest_destination, destination_through),
                           summary.collections, summary.collections_done, phase))

    # -- final verification --------------------------------------------------------------------
    def final_documents(self, commit_time: Timestamp) -> None:
        """Every pending recheck, with the source quiet and every change up to the commit time
        applied. Raises :class:`VerificationFailed` on any difference."""
        context = self.context
        if not self.stop(timeout=60):
            raise Stopped()
        # The background threads are done; the final hashing below runs in this thread and
        # must not take their stop for its own (it raised Stopped at its first batch, and the
        # commit ended without a word whenever a range was still to hash).
        self._stop.clear()
        self._begin()  # (when the commit came before the verifier had begun)
        self._final_started = (context.source.cluster_time(),
                               context.destination.cluster_time())
        self.state.final_started_at = now()
        self.store.save_state(self.state, "final_started_at")
        if self.follows_source:  # every change any instance applied is a recheck
            self._read_changes("source", until=commit_time)
        self._cover_what_hashing_missed()
        self._hash_remaining_ranges()
        mismatches = self._final_rechecks()  # the backlog, while the stream catches up
        self._read_changes("destination", until=self._final_started[1])
        mismatches += self._final_rechecks()
        self._conclude(mismatches, final=False)

    def final_metadata(self, pending_unique: list[IndexRef], commit_time: Timestamp) -> None:
        """Collections, indexes, views and shard keys, once the final options are back; then
        no change may have reached either cluster since the final verification began (nor the
        source since the commit time)."""
        context = self.context
        include_views = not context.request.preExistingDestinationData
        source = [record for record in catalog.list_namespaces(context.source,
                                                               context.namespace_filter)
                  if include_views or record.kind != "view"]
        destination = [record for record in catalog.list_namespaces(context.destination,
                                                                    context.namespace_filter)
                       if include_views or record.kind != "view"]
        expected: dict[str, Mapping[str, Any]] = {}
        if context.destination.is_sharded:
            expected = {record.id: record.shard_key for record in source
                        if record.shard_key is not None}
            # An entry of shardingEntries names the collection listed under its name, which
            # the migration sharded; one renamed over it or created under its name since is
            # another collection, which stays unsharded.
            listed = catalog.uuids_by_name(context.store.namespaces())
            now_there = catalog.uuids_by_name(source)
            expected.update({name: key for name, key in context.request.sharding_keys().items()
                             if name in listed and now_there.get(name) == listed[name]})
        mismatches = compare_metadata(source, destination, pending_unique=pending_unique,
                                      expected_shard_keys=expected,
                                      build_mode=context.request.buildIndexes)
        self._refuse_late_changes(commit_time)
        self._conclude(mismatches, final=True)

    def _refuse_late_changes(self, commit_time: Timestamp) -> None:
        context = self.context
        started_source, started_destination = self._final_started or (commit_time, None)
        found: dict[str, list[Change]] = {}

        def read(side: str, cluster: ClusterClient, after: Timestamp, crud_only: bool) -> None:
            found[side] = changes_after(cluster, context.stop, context.namespace_filter,
                                        after=after, crud_only=crud_only)

        readers = [threading.Thread(target=read, args=("source", context.source, commit_time,
                                                       False))]
        if started_destination is not None:  # our own writes end before it: CRUD is anyone's
            readers.append(threading.Thread(target=read, args=(
                "destination", context.destination, started_destination, True)))
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        context.check_stop()
        source_changes = found.get("source", [])
        refuse_late_source_writes(context, commit_time,
                                  [c for c in source_changes if c.time <= started_source])
        after_start = [c for c in source_changes if c.time > started_source]
        if after_start:
            raise VerificationFailed(
                f"source cluster was modified after Mongosync final verification began "
                f"({summarize_changes(after_start)}); stop every application writing to the "
                f"source, run `mongosync reset` and migrate again")
        if found.get("destination"):
            raise VerificationFailed(
                f"destination cluster was modified after Mongosync final verification began "
                f"({summarize_changes(found['destination'])}); nothing may write to the "
                f"destination before canWrite is true: run `mongosync reset` and migrate again")

    def _cover_what_hashing_missed(self) -> None:
        """A task for the whole of each collection of the migration, on either cluster, whose
        documents the ranges and the rechecks may not have compared. Idempotent: a task is
        added once. With the source write-blocked and every change applied, those are:

        - a collection no range of the copy covers. Ranges come from the copy's plan, made
          from the listing of the source's namespaces: a collection the listing missed (one
          renamed across databases while they were listed) was neither copied nor hashed, and
          only the documents changed since were rechecked; the verifier passed a collection
          with none of its other documents (campaign seed 369);
        - a collection that is no longer the one planned under its name (another UUID), or
          whose document counts differ between the clusters: documents may have changed
          without a change event. ``convertToCapped`` copies them into a new collection with
          inserts that change streams do not show; hashed before it, and rechecked only where
          events came, a collection replaced by an empty one passed (a mismatch the counts
          show at once). The counts are the servers' own (``$collStats``), which are not
          exact everywhere (orphans on a sharded cluster): they only decide what to hash.
        """
        context = self.context
        planned = {partition.namespace.full_name
                   for partition in context.store.partition_records()}
        planned_uuids = catalog.uuids_by_name(context.store.namespaces())
        source, destination = ({record.id: record for record in
                                catalog.list_namespaces(cluster, context.namespace_filter)
                                if record.is_collection}
                               for cluster in (context.source, context.destination))

        def documents(side: dict[str, NamespaceRecord], name: str) -> int:
            return side[name].estimated_documents if name in side else 0

        tasks: dict[str, VerificationTask] = {}
        reasons: dict[str, str] = {}
        for name in sorted(source.keys() | destination.keys()):
            if name not in planned:
                reasons[name] = "not planned"
            elif name in source and name in planned_uuids and \
                    catalog.uuid_bytes(source[name].uuid) != planned_uuids[name]:
                reasons[name] = "replaced on the source"
            elif documents(source, name) != documents(destination, name):
                reasons[name] = "counts differ"
            else:
                continue
            record = source.get(name) or destination[name]
            tasks[name] = VerificationTask(
                id=f"{name}#whole", namespace=NamespaceRef(db=record.db, coll=record.name),
                lower=MinKey(), upper=MaxKey(), is_last=True,
                estimated_documents=record.estimated_documents)
        if tasks:
            log.info("verifier: %d collection(s) hashed whole: %s", len(tasks),
                     ", ".join(f"{name} ({reasons[name]})" for name in sorted(tasks)))
            self.store.ensure_tasks(tasks.values())

    def _hash_remaining_ranges(self) -> None:
        while (task := self.store.claim_task(f"{self.context.instance}:verify-final")) \
                is not None:
            self._hash(task)
        self.state.phase = VerificationPhase.STREAM_HASHING
        self.store.save_state(self.state, "phase")

    def _final_rechecks(self) -> list[Mismatch]:
        suspects: list[Recheck] = []
        while True:
            due = self.store.due_rechecks(None, RECHECK_BATCH)
            if not due:
                break
            differing = self._differing(due)
            suspects += [recheck for recheck in due
                         if id_key((recheck.key.ns, recheck.key.id)) in differing]
            self.store.remove_rechecks([recheck.key for recheck in due])
            self.store.add_counts(rechecked=len(due))
        # Read once more before anything is declared.
        by_namespace: dict[str, list[Any]] = defaultdict(list)
        for recheck in suspects:
            by_namespace[recheck.key.ns].append(recheck.key.id)
        mismatches: list[Mismatch] = []
        for ns, ids in by_namespace.items():
            db, coll = ns.split(".", 1)
            for start in range(0, len(ids), RECHECK_BATCH):
                mismatches += [difference.mismatch() for difference in compare_documents(
                    self.context.source, self.context.destination, db, coll,
                    ids[start:start + RECHECK_BATCH])]
        return mismatches

    def _conclude(self, mismatches: list[Mismatch], final: bool) -> None:
        if mismatches:
            self.store.add_mismatches(mismatches)
            self.mismatch_count = self.store.mismatch_count()
            self.first_mismatches = self.store.mismatches(SHOWN_MISMATCHES)
            self.state.phase, self.state.verdict = VerificationPhase.FAILED, "mismatches"
            self.store.save_state(self.state, "phase", "verdict")
            shown = "; ".join(describe(mismatch) for mismatch in
                              self.first_mismatches[:SHOWN_MISMATCHES])
            # Documents only (with the source write-blocked at commit): they can be taken from
            # the source instead of migrating again.
            repairable = not final and all(mismatch.kind in DOCUMENT_KINDS
                                           for mismatch in mismatches)
            remedy = (" To take these documents from the source and finish the commit: stop "
                      "mongosync, run `mongosync repair --cluster0 <URI> --cluster1 <URI>`, "
                      "then start mongosync again with the same flags" if repairable else "")
            raise VerificationFailed(
                f"{MISMATCHES_TEXT}: {self.mismatch_count} found, the first: {shown}. The full "
                f"list: `mongosync verify --cluster0 <URI> --cluster1 <URI> --report`.{remedy}")
        if final:
            self.state.phase, self.state.verdict = VerificationPhase.PASSED, "equal"
            self.store.save_state(self.state, "phase", "verdict")
            log.info("verifier: the destination equals the source")


def _details(state: VerifierState, pending_rechecks: int, mismatch_count: int,
             first_mismatches: list[Mismatch], repaired: int) -> dict[str, Any]:
    return {"pendingRechecks": pending_rechecks,
            "recheckedDocuments": state.rechecked_documents,
            "rehashedDocuments": state.rehashed_documents,
            "mismatches": mismatch_count,
            "firstMismatches": [describe(m) for m in first_mismatches],
            "repairedDocuments": repaired,
            "verdict": state.verdict}


def _seconds(*times: Timestamp | None) -> tuple[int | None, ...]:
    return tuple(None if time_ is None else time_.time for time_ in times)


def lag_seconds(latest: Timestamp | None, through: Timestamp | None) -> int | None:
    """How far behind ``latest`` a side verified ``through`` is, in seconds."""
    if latest is None or through is None:
        return None
    return max(0, latest.time - through.time)


def stored_figures(store: VerifierStore, latest_source: Timestamp | None,
                   latest_destination: Timestamp | None
                   ) -> tuple[tuple[SideStatus, SideStatus], dict[str, Any]]:
    """The verification as the coordinator's verifier has stored it, for the /progress of the
    other instances of a migration run one instance per source shard (``verification`` and
    ``verificationDetails``). The lags are measured from the times it verified through to
    the clusters' latest: they grow while the coordinator is down, as its verifier's would."""
    state = store.load_state() or VerifierState()
    summary = store.task_summary()
    sides = tuple(SideStatus(summary.estimated_documents, hashed, lag_seconds(latest, through),
                             summary.collections, summary.collections_done, state.phase)
                  for hashed, latest, through in (
                      (summary.hashed_source, latest_source,
                       state.source_verified_through),
                      (summary.hashed_destination, latest_destination,
                       state.destination_verified_through)))
    details = _details(state, store.recheck_count(), store.mismatch_count(),
                       store.mismatches(SHOWN_MISMATCHES), store.repair_count())
    return (sides[0], sides[1]), details


def _token_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    from pymongosync.changes.reader import token_time

    return token_time(token)
