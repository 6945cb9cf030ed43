"""Phase 3, collection copy: partitions read from the source and bulk-inserted, in parallel.

Copy workers (``copy_worker.py``) claim partitions through the metadata store, read them as raw
BSON batches and insert them unordered on the destination; after every batch the partition
records the last ``_id`` it copied, so an interrupted partition resumes from there (mongosync
would restart it from its beginning). Duplicate-key errors are expected (a resumed batch, a
document also written by change application) and ignored: the change stream, replayed from
before the copy began, brings every such document to its final state.

Workers are processes: one Python process spends about 6 µs of CPU per copied document under
one GIL, so threads top out near 160k documents/s whatever the clusters can take. Each worker
process opens its own connections and store; its claims carry a lease (``CLAIM_LEASE_SECONDS``,
renewed with every checkpoint and every ``RENEW_EVERY_SECONDS`` in between) judged by the
destination server's clock, and its checkpoints are fenced by the claim: a partition is never
copied by two live workers at once. When a worker process dies (kill -9 included) this
process sees it at once, gives its partition back and starts another in its place; the
partition resumes from its checkpoint. A claim this process cannot give back (its host died)
lapses with its lease. Workers die with this process (``copy_worker.die_with_parent``), and
every way out of :meth:`CopyCollections.run` stops and reaps them first.

Threads remain for clusters that only live in this process (the unit tests' in-memory fakes):
the same worker loop, the same claims, no processes.

How many workers copy at once is paced (``pacing.py``): from one, up to the ``loadLevel``
ceiling, backing off when the destination's write latency climbs or the change buffer falls
behind the source; ``/progress`` shows the count as ``copyDetails.activeWorkers``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Protocol

from pymongo.errors import PyMongoError

from pymongosync.durations import OperationKind
from pymongosync.errors import CopyWorkerFailed, Stopped, error_from_record
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.phases.copy_worker import (
    DUPLICATE_KEY,
    BatchCopied,
    Busy,
    ClaimLost,
    CopySettings,
    Idle,
    LogLine,
    PartitionFinished,
    WorkerEvent,
    WorkerFailed,
    WorkerSpec,
    WorkerStarted,
    copy_partitions,
    describe_failure,
    insert_ignoring_duplicates,
    owner_prefix,
    worker_main,
)
from pymongosync.phases.pacing import Pacer, PaceState
from pymongosync.retry import bounded
from pymongosync.state import NamespaceRecord, Phase
from pymongosync.store import MetadataStore

__all__ = ["DUPLICATE_KEY", "PARALLELISM_BY_LOAD_LEVEL", "CopyCollections",
           "insert_ignoring_duplicates", "worker_ceiling"]

log = logging.getLogger("pymongosync.copy")

BATCH_DOCUMENTS = 1000
# A batch ends at this many bytes too, so a worker holds one batch of bounded size whatever
# the documents' sizes (a write command carries up to 16 MiB plus one document anyway).
BATCH_BYTES = 16 * 1024 * 1024
# loadLevel → the most partitions copied at once: mongosync's documented meaning of loadLevel
# is the load put on the clusters, so the ceiling per level is what it was with threads
# (1, 2, 4, 8 partitions in flight). Each worker process holds one partition and one batch at a
# time, so this is also the number of worker processes; see worker_ceiling for the cap.
PARALLELISM_BY_LOAD_LEVEL = {1: 1, 2: 2, 3: 4, 4: 8}
# A worker spends roughly half its time waiting for a read or a write to come back, so two
# processes per core keep the cores busy; more would only queue for CPU on this host.
PROCESSES_PER_CORE = 2
CLAIM_LEASE_SECONDS = 30.0
RENEW_EVERY_SECONDS = 5.0
# How often an idle or parked worker looks for a free partition (one lapsed meanwhile, or
# given back by a parked worker).
IDLE_POLL_SECONDS = 0.5
# Stopping: how long workers get to finish the batch in flight before they are killed (a
# killed worker loses nothing: its partition resumes from the last checkpoint).
STOP_GRACE_SECONDS = 5.0
# Worker processes may die (killed, out of memory) and are replaced; past this many deaths in
# one run the copy fails rather than loop.
MAX_WORKER_DEATHS_PER_SLOT = 3
# A worker process not heard from for this long (not even its heartbeat) is frozen: stopped,
# swapped out for ever, or wedged while holding the GIL. It is killed and replaced like one
# that died (its partition resumes from its checkpoint), so a frozen worker cannot hold the
# copy up for ever, even when it is the only one the pace runs. Far above any pause a
# healthy process sees (a heartbeat is sent every second), and below a lease's length
# several times over: the claim it held has long lapsed and been taken over, or is
# released by the replacement.
FROZEN_WORKER_SECONDS = 60.0
# When every worker is idle: how often the partition counts are read to tell the copy is over.
DONE_CHECK_SECONDS = 1.0
# Reading the source's time for the change lag gives up after this (the pace then holds).
LAG_READ_SECONDS = 2.0


def worker_ceiling(load_level: int, processes: bool = True) -> int:
    """The most workers copying at once for a ``loadLevel``."""
    partitions = PARALLELISM_BY_LOAD_LEVEL.get(load_level, PARALLELISM_BY_LOAD_LEVEL[3])
    if not processes:
        return partitions
    return max(1, min(partitions, PROCESSES_PER_CORE * (os.cpu_count() or 1)))


def change_lag_seconds(context: PhaseContext) -> float | None:
    """How far the change buffer is behind the source (None without a receiving buffer)."""
    buffer = context.change_buffer
    if buffer is None:
        return None
    figures = buffer.figures
    stored = figures.stored_up_to
    if not figures.receiving or stored is None:
        return None
    try:
        with bounded(LAG_READ_SECONDS):
            latest = context.source.latest_time()
    except PyMongoError as exc:  # a missed reading: the pace holds until the next one
        log.debug("copy pace: could not read the source's time: %s", exc)
        return None
    return float(max(0, latest.time - stored.time))


# -- workers ----------------------------------------------------------------------------------


class WorkerPool(Protocol):
    """Copy workers by slot (0, 1, ...): processes, or threads over in-memory clusters."""

    reports_batches: bool  # whether the pool calls on_batch itself (in the worker's thread)

    def start(self, slot: int, active: bool) -> None: ...

    def running(self, slot: int) -> bool: ...

    def set_active(self, slot: int, active: bool) -> None: ...

    def receive(self, timeout: float) -> list[tuple[int, WorkerEvent]]:
        """Events of the workers, waiting up to ``timeout`` for the first."""
        ...

    def ended(self) -> list[tuple[int, int | None]]:
        """Slots whose worker ended since the last call, with the process's exit code."""
        ...

    def describe(self, slot: int) -> str: ...

    def frozen(self, after_seconds: float) -> list[int]:
        """Slots whose worker has not been heard from for ``after_seconds``."""
        ...

    def kill(self, slot: int) -> None:
        """End a frozen worker at once; it is then reported by :meth:`ended`."""
        ...

    def close(self) -> None:
        """Stop every worker, wait for them a while, then kill what is left."""
        ...


class _ThreadSignals:
    def __init__(self, context: PhaseContext, pool_stop: threading.Event, active: bool,
                 events: queue.Queue[tuple[int, WorkerEvent | None]], slot: int,
                 on_batch: Callable[[int, int], None] | None) -> None:
        self.context, self.pool_stop, self.events, self.slot = context, pool_stop, events, slot
        self.on_batch = on_batch
        self.activity = threading.Event()
        if active:
            self.activity.set()
        self.changed = threading.Event()

    def stopping(self) -> bool:
        return self.pool_stop.is_set() or self.context.stop.is_set()

    def active(self) -> bool:
        return self.activity.is_set()

    def pause(self, seconds: float) -> None:
        self.changed.wait(seconds)
        self.changed.clear()

    def emit(self, event: WorkerEvent) -> None:
        if isinstance(event, BatchCopied) and self.on_batch is not None:
            # In the worker's own thread: a callback that stops the copy is obeyed before
            # the next batch.
            self.on_batch(event.documents, event.size)
        self.events.put((self.slot, event))


class ThreadWorkerPool:
    """Workers as threads of this process, over the context's own clusters and store."""

    reports_batches = True

    def __init__(self, context: PhaseContext, settings: CopySettings,
                 namespaces: dict[str, NamespaceRecord],
                 on_batch: Callable[[int, int], None] | None) -> None:
        self.context, self.settings, self.namespaces = context, settings, namespaces
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._events: queue.Queue[tuple[int, WorkerEvent | None]] = queue.Queue()
        self._workers: dict[int, tuple[threading.Thread, _ThreadSignals]] = {}
        self._ended: list[tuple[int, int | None]] = []

    def start(self, slot: int, active: bool) -> None:
        signals = _ThreadSignals(self.context, self._stop, active, self._events, slot,
                                 self.on_batch)
        thread = threading.Thread(target=self._work, args=(slot, signals),
                                  name=f"copy-{slot}", daemon=True)
        self._workers[slot] = (thread, signals)
        thread.start()

    def _work(self, slot: int, signals: _ThreadSignals) -> None:
        context = self.context
        try:
            copy_partitions(context.source, context.destination, context.store,
                            self.namespaces, f"{owner_prefix(context.instance, slot)}thread",
                            self.settings, signals)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the coordinator, which raises it
            self._events.put((slot, describe_failure(exc, keep=True)))
        finally:
            self._events.put((slot, None))

    def running(self, slot: int) -> bool:
        worker = self._workers.get(slot)
        return worker is not None and worker[0].is_alive()

    def set_active(self, slot: int, active: bool) -> None:
        signals = self._workers[slot][1]
        if active:
            signals.activity.set()
        else:
            signals.activity.clear()
        signals.changed.set()

    def receive(self, timeout: float) -> list[tuple[int, WorkerEvent]]:
        received: list[tuple[int, WorkerEvent]] = []
        try:
            item = self._events.get(timeout=timeout)
            while True:
                slot, event = item
                if event is None:
                    self._ended.append((slot, None))
                else:
                    received.append((slot, event))
                item = self._events.get_nowait()
        except queue.Empty:
            return received

    def ended(self) -> list[tuple[int, int | None]]:
        ended, self._ended = self._ended, []
        return ended

    def describe(self, slot: int) -> str:
        return f"copy worker {slot} (thread)"

    def frozen(self, after_seconds: float) -> list[int]:
        return []  # a thread freezes only with this process, which then watches nothing

    def kill(self, slot: int) -> None:
        raise NotImplementedError("threads cannot be killed; frozen() names none")

    def close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for thread, signals in self._workers.values():
            signals.changed.set()
            thread.join(max(0.0, deadline - time.monotonic()))


class ProcessWorkerPool:
    """Workers as processes (``spawn``: a fresh interpreter, no state inherited but what the
    spec carries), each with a duplex pipe to this process."""

    reports_batches = False

    def __init__(self, context: PhaseContext, settings: CopySettings) -> None:
        strings = context.connection_strings
        store = context.store
        assert strings is not None and isinstance(store, MetadataStore)
        self.context, self.settings = context, settings
        self.strings, self.metadata_database = strings, store.db.name
        self._spawn = multiprocessing.get_context("spawn")
        self._workers: dict[int, tuple[BaseProcess, Connection]] = {}
        self._ended: list[tuple[int, int | None]] = []
        self._pids: dict[int, int | None] = {}
        self._heard: dict[int, float] = {}  # slot → when its worker last sent anything

    def start(self, slot: int, active: bool) -> None:
        strings = self.strings
        spec = WorkerSpec(slot=slot, instance=self.context.instance,
                          source_label=strings.source_label, source_uri=strings.source_uri,
                          destination_label=strings.destination_label,
                          destination_uri=strings.destination_uri,
                          metadata_database=self.metadata_database, settings=self.settings,
                          parent_pid=os.getpid(), active=active)
        ours, theirs = self._spawn.Pipe(duplex=True)
        process = self._spawn.Process(target=worker_main, args=(spec, theirs),
                                      name=f"pymongosync-copy-{slot}", daemon=True)
        process.start()
        theirs.close()  # the worker holds its end: EOF here means it is gone
        self._workers[slot] = (process, ours)
        self._pids[slot] = process.pid
        self._heard[slot] = time.monotonic()  # starting counts: an interpreter takes seconds
        log.debug("started copy worker %d (pid %s)", slot, process.pid)

    def running(self, slot: int) -> bool:
        return slot in self._workers

    def set_active(self, slot: int, active: bool) -> None:
        self._send(slot, ("active", active))

    def _send(self, slot: int, command: tuple[str, bool]) -> None:
        worker = self._workers.get(slot)
        if worker is None:
            return
        try:
            worker[1].send(command)
        except (BrokenPipeError, EOFError, OSError):
            pass  # it died: its sentinel tells, and it is handled there

    def receive(self, timeout: float) -> list[tuple[int, WorkerEvent]]:
        by_connection = {connection: slot for slot, (_, connection) in self._workers.items()}
        by_sentinel = {process.sentinel: slot for slot, (process, _) in self._workers.items()}
        if not self._workers:
            time.sleep(timeout)
            return []
        received: list[tuple[int, WorkerEvent]] = []
        ready = wait([*by_connection, *by_sentinel], timeout)
        for item in ready:
            if isinstance(item, Connection) and item in by_connection:
                received += [(by_connection[item], event) for event in self._drain(item)]
                self._heard[by_connection[item]] = time.monotonic()
        for item in ready:
            slot = by_sentinel.get(item) if isinstance(item, int) else None
            if slot is None:
                continue
            process, connection = self._workers.pop(slot)
            received += [(slot, event) for event in self._drain(connection)]
            process.join()
            connection.close()
            self._ended.append((slot, process.exitcode))
        return received

    @staticmethod
    def _drain(connection: Connection) -> list[WorkerEvent]:
        events: list[WorkerEvent] = []
        try:
            while connection.poll():
                events.append(connection.recv())
        except (EOFError, OSError):
            pass  # the worker is gone; its sentinel says so
        return events

    def ended(self) -> list[tuple[int, int | None]]:
        ended, self._ended = self._ended, []
        return ended

    def describe(self, slot: int) -> str:
        return f"copy worker {slot} (pid {self._pids.get(slot)})"

    def frozen(self, after_seconds: float) -> list[int]:
        now = time.monotonic()
        return [slot for slot in self._workers
                if now - self._heard.get(slot, now) >= after_seconds]

    def kill(self, slot: int) -> None:
        worker = self._workers.get(slot)
        if worker is not None:
            worker[0].kill()  # SIGKILL ends a stopped process too; its sentinel then tells
            self._heard[slot] = time.monotonic()  # not named again before its sentinel

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._workers.values() if process.pid]

    def close(self) -> None:
        for slot in list(self._workers):
            self._send(slot, ("stop", True))
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process, _ in self._workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in self._workers.values():
            if process.is_alive():
                log.warning("copy worker pid %s did not stop in %.0f s: terminating it",
                            process.pid, STOP_GRACE_SECONDS)
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join()
        for process, connection in self._workers.values():
            connection.close()
            process.close()
        self._workers.clear()
        try:
            # Workers killed above could not give their partitions back.
            self.context.store.release_claims(f"{self.context.instance}:copy-")
        except Exception as exc:  # noqa: BLE001 - the next run releases them (or they lapse)
            log.warning("could not give back the copy workers' claims: %s", exc)


# -- the phase ----------------------------------------------------------------------------------


class CopyCoordinator:
    """Runs the copy's workers: paces them, watches them, replaces the dead, tells when the
    copy is over, and raises the first failure."""

    def __init__(self, context: PhaseContext, pool: WorkerPool, pacer: Pacer, *,
                 paced: bool, on_batch: Callable[[int, int], None] | None) -> None:
        self.context, self.pool, self.pacer = context, pool, pacer
        self.paced, self.on_batch = paced, on_batch
        self._active: dict[int, bool] = {}
        self._idle: set[int] = set()
        self._deaths = 0
        self._check_done_at = 0.0

    def run(self) -> None:
        context = self.context
        self._apply_pace()
        while True:
            context.check_stop()
            for slot, event in self.pool.receive(0.2):
                self._handle(slot, event)
            for slot, exit_code in self.pool.ended():
                self._ended(slot, exit_code)
            self._replace_frozen_workers()
            context.check_stop()
            if self.paced and self.pacer.due():
                decision = self.pacer.decide(change_lag_seconds(context))
                if decision.reason is not None:
                    log.info(f"Copy pace: {self._target()} copy workers "
                             f"(was {sum(self._active.values())}): {decision.reason}",
                             extra={"fields": {"activeWorkers": self.pacer.workers,
                                               "reason": decision.reason}})
                    self._apply_pace()
            if self._copied_everything():
                return

    def _target(self) -> int:
        return self.pacer.workers

    def _apply_pace(self) -> None:
        target = self._target()
        for slot in range(max(target, len(self._active))):
            wanted = slot < target
            if self.pool.running(slot):
                if self._active.get(slot) != wanted:
                    self.pool.set_active(slot, wanted)
            elif wanted:
                self.pool.start(slot, True)
                self._idle.discard(slot)
            self._active[slot] = wanted
        self.context.counters.copy_workers_active = target

    def _handle(self, slot: int, event: WorkerEvent) -> None:
        if isinstance(event, BatchCopied):
            self.pacer.observe(event.documents, event.insert_seconds, full=event.full)
            durations = self.context.counters.durations
            durations.record(OperationKind.COPY_SOURCE_READ, event.read_seconds)
            durations.record(OperationKind.COPY_DESTINATION_WRITE, event.insert_seconds)
            if self.on_batch is not None and not self.pool.reports_batches:
                self.on_batch(event.documents, event.size)
        elif isinstance(event, WorkerStarted):
            # A fixed cost of the copy, set apart from its cost per document by benchmarks.
            log.debug(f"copy worker {slot} (pid {event.pid}) started: "
                      f"{event.startup_cpu_seconds:.2f} s of CPU to start",
                      extra={"fields": {"copyWorker": slot, "workerPid": event.pid,
                                        "startupCpuSeconds": event.startup_cpu_seconds}})
        elif isinstance(event, Idle):
            if slot not in self._idle:
                self._idle.add(slot)
                self._check_done_at = 0.0  # look now: this may be the last one
        elif isinstance(event, Busy):
            self._idle.discard(slot)
        elif isinstance(event, PartitionFinished):
            done, planned = self.context.store.partition_counts()
            # mongosync's words: MongoDB's tooling charts the copy from this line.
            log.info(f"Completed writing {done} / {planned} partitions to destination "
                     f"cluster", extra={"fields": {"namespace": event.namespace}})
        elif isinstance(event, ClaimLost):
            self._idle.discard(slot)
        elif isinstance(event, LogLine):
            logging.getLogger(event.logger).log(event.level, event.message,
                                                extra={"fields": event.fields})
        elif isinstance(event, WorkerFailed):
            self._fail(slot, event)

    def _fail(self, slot: int, failure: WorkerFailed) -> None:
        if failure.error is not None:
            raise failure.error
        log.error(f"{self.pool.describe(slot)} failed: {failure.error_type}: "
                  f"{failure.message}", extra={"fields": {"traceback": failure.details}})
        if failure.migration_error:
            raise error_from_record(failure.error_type, failure.message)
        raise CopyWorkerFailed(f"{self.pool.describe(slot)} failed: {failure.error_type}: "
                               f"{failure.message}")

    def _ended(self, slot: int, exit_code: int | None) -> None:
        self._idle.discard(slot)
        context = self.context
        context.store.release_claims(owner_prefix(context.instance, slot))
        if context.stop.is_set():
            return
        self._deaths += 1
        who = self.pool.describe(slot)
        if self._deaths > MAX_WORKER_DEATHS_PER_SLOT * max(1, len(self._active)):
            raise CopyWorkerFailed(
                f"copy workers ended unexpectedly {self._deaths} times (the last: {who}, exit "
                f"code {exit_code}); the copy stops here and resumes from its checkpoints when "
                f"the migration is resumed. The log has each worker's last lines")
        log.warning(f"{who} ended unexpectedly (exit code {exit_code}): its partition is "
                    f"released and another worker takes it over from its checkpoint",
                    extra={"fields": {"exitCode": exit_code}})
        if self._active.get(slot):
            self.pool.start(slot, True)

    def _replace_frozen_workers(self) -> None:
        for slot in self.pool.frozen(FROZEN_WORKER_SECONDS):
            log.warning(f"{self.pool.describe(slot)} has not been heard from for "
                        f"{FROZEN_WORKER_SECONDS:.0f} s: it is frozen, and is killed and "
                        f"replaced", extra={"fields": {"copyWorker": slot}})
            self.pool.kill(slot)  # _ended, once its sentinel tells, releases and restarts

    def _copied_everything(self) -> bool:
        """True once every partition is done (asked only while every active worker is idle,
        since a worker that finds nothing to claim is the first sign of the end)."""
        active = [slot for slot, wanted in self._active.items() if wanted]
        if not active or any(slot not in self._idle or not self.pool.running(slot)
                             for slot in active):
            return False
        now = time.monotonic()
        if now < self._check_done_at:
            return False
        self._check_done_at = now + DONE_CHECK_SECONDS
        done, planned = self.context.store.partition_counts(instance=self.context.layout.shard)
        return done == planned


class CopyCollections(PhaseStep):
    phase = Phase.COPY

    def __init__(self, on_batch: Callable[[int, int], None] | None = None, *,
                 workers: int | None = None, processes: bool = True) -> None:
        """``on_batch(documents, bytes)`` after every batch copied; ``workers`` pins the
        number of workers (no pacing; benchmarks); ``processes=False`` keeps workers in
        threads even where processes could be used."""
        self.on_batch = on_batch
        self.workers = workers
        self.processes = processes

    def uses_processes(self, context: PhaseContext) -> bool:
        """Processes need clusters a new process can reach on its own (URIs) and the store
        they share on the destination; in-memory fakes have neither."""
        return self.processes and context.connection_strings is not None and \
            isinstance(context.store, MetadataStore)

    def run(self, context: PhaseContext) -> None:
        # The lease guarantees no other process works as this instance: claims left by its
        # previous run are stale.
        context.store.release_claims(f"{context.instance}:")
        processes = self.uses_processes(context)
        ceiling = self.workers or worker_ceiling(context.load_level, processes)
        settings = CopySettings(
            batch_documents=BATCH_DOCUMENTS, batch_bytes=BATCH_BYTES,
            claim_lease_seconds=CLAIM_LEASE_SECONDS if processes else None,
            renew_every_seconds=RENEW_EVERY_SECONDS, idle_poll_seconds=IDLE_POLL_SECONDS,
            instance=context.layout.me if context.layout.multi else None)
        pool: WorkerPool
        if processes:
            pool = ProcessWorkerPool(context, settings)
        else:
            namespaces = {record.id: record for record in context.store.namespaces()}
            pool = ThreadWorkerPool(context, settings, namespaces, self.on_batch)
        pacer = Pacer(ceiling) if self.workers is None else \
            Pacer(ceiling, state=PaceState(workers=ceiling, slow_start=False))
        log.info("copying with up to %d %s", ceiling,
                 "worker processes" if processes else "worker threads",
                 extra={"fields": {"loadLevel": context.load_level, "ceiling": ceiling,
                                   "paced": self.workers is None}})
        try:
            CopyCoordinator(context, pool, pacer, paced=self.workers is None,
                            on_batch=self.on_batch).run()
        finally:
            context.counters.copy_workers_active = 0
            pool.close()
        context.check_stop()
        context.resume.copy_finished_time = context.source.cluster_time()
        context.save_resume("copy_finished_time")
