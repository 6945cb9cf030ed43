"""A copy worker: claims partitions through the metadata store and copies them batch by batch.

The same loop (:func:`copy_partitions`) runs in a worker process (the real path, one per core's
worth of work, see ``copy.py``) or in a thread (over in-memory fakes). A worker

- claims the next free partition with a lease (:meth:`MigrationStore.claim_partition`); the
  lease is renewed with every checkpoint and, for slow batches, by a keeper thread;
- reads it from its checkpoint as raw BSON batches (never decoded) and inserts each batch
  unordered, duplicate keys ignored, then checkpoints the batch's last ``_id``. The checkpoint
  is a write only the claim's holder can make: a worker whose claim lapsed and was taken over
  learns it there, before it records anything, and leaves the partition to its new owner;
- keeps at most one batch in memory, of at most ``batch_documents`` documents and about
  ``batch_bytes`` bytes;
- parks when the pace (``pacing.py``) leaves it out: it gives its partition back at a batch
  boundary (the next worker resumes from the checkpoint) and waits;
- reports each batch (documents, bytes, insert time) so that the parent can pace the copy and
  count rates.

In a process (:func:`worker_main`) it opens its own connections and store, hears the parent
through a pipe (pace, stop), tells it events and log records back through the same pipe, and
dies with the parent: the kernel kills it when the parent goes (Linux's parent-death signal),
and on any system it exits as soon as the pipe says the parent is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, OperationFailure

from pymongosync.catalog import MOVED_WHILE_READING, locate
from pymongosync.cluster_client import ClusterClient, RangeRead
from pymongosync.errors import MigrationError, Stopped
from pymongosync.retry import retrying
from pymongosync.state import NamespaceRecord, PartitionRecord, PartitionStatus
from pymongosync.store import MigrationStore

log = logging.getLogger("pymongosync.copy")

DUPLICATE_KEY = 11000
PR_SET_PDEATHSIG = 1


def insert_ignoring_duplicates(destination: ClusterClient, db: str, coll: str,
                               documents: list[RawBSONDocument]) -> None:
    """Insert unordered; a document already there (same ``_id``) is not an error."""
    try:
        destination.insert_documents(db, coll, documents)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        unexpected = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        if unexpected or exc.details.get("writeConcernErrors"):
            first = (unexpected or exc.details["writeConcernErrors"])[0]
            raise OperationFailure(f"copy into {db}.{coll} failed: {first}",
                                   code=first.get("code")) from None


@dataclass(frozen=True)
class CopySettings:
    """How workers copy (picklable: given to worker processes as it is)."""

    batch_documents: int
    batch_bytes: int
    claim_lease_seconds: float | None  # None: claims without a lease (threads)
    renew_every_seconds: float
    idle_poll_seconds: float
    # One instance per source shard: this instance's id (its partitions only); None: all.
    instance: str | None = None


# -- what a worker tells its parent -------------------------------------------------------------


@dataclass(frozen=True)
class BatchCopied:
    partition_id: str
    documents: int
    size: int
    insert_seconds: float
    full: bool  # as large as a batch may be (by count or by bytes)
    read_seconds: float = 0.0  # reading it from the source


@dataclass(frozen=True)
class WorkerStarted:
    """A worker process is connected and about to claim: what starting it cost (an
    interpreter, the imports, the connections), a fixed cost to set apart from the copy's."""

    pid: int
    startup_cpu_seconds: float


@dataclass(frozen=True)
class Idle:
    """No partition is free to claim (the copy may be over, or others hold the rest)."""


@dataclass(frozen=True)
class Busy:
    partition_id: str


@dataclass(frozen=True)
class PartitionFinished:
    partition_id: str
    namespace: str


@dataclass(frozen=True)
class ClaimLost:
    partition_id: str


@dataclass(frozen=True)
class WorkerFailed:
    """An error the worker could not retry. ``error`` is the exception itself from a thread;
    from a process, its description (exceptions do not cross processes faithfully)."""

    error_type: str
    message: str
    migration_error: bool  # a MigrationError: ``error_type`` is then its stable name
    details: str = ""  # the traceback, for the log
    error: BaseException | None = None


@dataclass(frozen=True)
class Heartbeat:
    """The worker process is alive and runs (sent by a thread of its own, whatever the copy
    is waiting for): a process that stops sending them is frozen, and its parent replaces it."""


@dataclass(frozen=True)
class LogLine:
    level: int
    logger: str
    message: str
    fields: dict[str, Any]


WorkerEvent = (BatchCopied | WorkerStarted | Idle | Busy | PartitionFinished | ClaimLost |
               WorkerFailed | Heartbeat | LogLine)


class WorkerSignals(Protocol):
    """What a worker hears from its parent and tells it."""

    def stopping(self) -> bool: ...

    def active(self) -> bool: ...

    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds``, less when told something (stop, pace)."""
        ...

    def emit(self, event: WorkerEvent) -> None: ...


class Outcome(enum.Enum):
    FINISHED = "finished"
    PARKED = "parked"  # the pace left this worker out: the partition was given back
    LOST = "lost"  # the claim lapsed and another worker holds the partition


class ClaimKeeper:
    """Renews the claim a worker holds while a batch takes longer than the renewal period;
    notices when the claim is lost."""

    def __init__(self, store: MigrationStore, owner: str, every_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.every_seconds = every_seconds
        self._held: str | None = None
        self._lost = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="copy-claim-keeper", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def holding(self, partition_id: str) -> Iterator[None]:
        with self._lock:
            self._held, self._lost = partition_id, False
        try:
            yield
        finally:
            with self._lock:
                self._held = None

    @property
    def lost(self) -> bool:
        with self._lock:
            return self._lost

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.every_seconds)
            with self._lock:
                held = self._held
            if held is None or self._closed:
                continue
            try:
                kept = self.store.renew_partition_claim(held, self.owner)
            except Exception as exc:  # noqa: BLE001 - the lease decides; the copy fences itself
                log.warning("could not renew the claim on %s: %s", held, exc)
                continue
            with self._lock:
                if not kept and self._held == held:
                    self._lost = True


def copy_partitions(source: ClusterClient, destination: ClusterClient, store: MigrationStore,
                    namespaces: dict[str, NamespaceRecord], owner: str, settings: CopySettings,
                    signals: WorkerSignals) -> None:
    """Claim and copy partitions until told to stop (raises :class:`Stopped`)."""
    keeper = ClaimKeeper(store, owner, settings.renew_every_seconds) \
        if settings.claim_lease_seconds is not None else None
    idle = False
    try:
        while True:
            if signals.stopping():
                raise Stopped()
            if not signals.active():
                signals.pause(settings.idle_poll_seconds)
                continue
            partition = store.claim_partition(owner, settings.claim_lease_seconds,
                                              instance=settings.instance)
            if partition is None:
                if not idle:
                    signals.emit(Idle())
                    idle = True
                signals.pause(settings.idle_poll_seconds)
                continue
            idle = False
            signals.emit(Busy(partition.id))
            namespace = namespaces[partition.namespace.full_name]
            copier = PartitionCopier(source, destination, store, namespace, partition.id, owner,
                                     settings, signals, keeper)
            outcome: Outcome | None = None
            try:
                with keeper.holding(partition.id) if keeper is not None \
                        else contextlib.nullcontext():
                    outcome = retrying(copier.copy)
            finally:
                if outcome is not Outcome.FINISHED and outcome is not Outcome.LOST:
                    # Parked, stopped or failed: the partition goes back with its checkpoint.
                    _give_back(store, partition.id, owner)
            if outcome is Outcome.FINISHED:
                signals.emit(PartitionFinished(partition.id, namespace.id))
            elif outcome is Outcome.LOST:
                log.warning("lost the claim on partition %s (its lease lapsed and another "
                            "worker took it over): leaving it to that worker", partition.id,
                            extra={"fields": {"owner": owner}})
                signals.emit(ClaimLost(partition.id))
    finally:
        if keeper is not None:
            keeper.close()


def _give_back(store: MigrationStore, partition_id: str, owner: str) -> None:
    try:
        store.release_partition(partition_id, owner)
    except Exception as exc:  # noqa: BLE001 - the claim lapses anyway, or the parent releases it
        log.warning("could not give partition %s back: %s", partition_id, exc)


class PartitionCopier:
    """One partition, copied from its last checkpoint (re-read on every attempt, so a retry
    after a transient error resumes too)."""

    def __init__(self, source: ClusterClient, destination: ClusterClient, store: MigrationStore,
                 namespace: NamespaceRecord, partition_id: str, owner: str,
                 settings: CopySettings, signals: WorkerSignals,
                 keeper: ClaimKeeper | None) -> None:
        self.source, self.destination, self.store = source, destination, store
        self.namespace, self.partition_id, self.owner = namespace, partition_id, owner
        self.settings, self.signals, self.keeper = settings, signals, keeper

    def copy(self) -> Outcome:
        while True:
            try:
                return self._copy_from_checkpoint()
            except OperationFailure as exc:
                # The partition resumes from its checkpoint under the collection's new name.
                if exc.code not in MOVED_WHILE_READING:
                    raise
                log.info("%s moved while it was read (%s): finding it again by UUID",
                         self.namespace.id, exc.code)
                if self.signals.stopping():
                    raise Stopped() from None

    def _copy_from_checkpoint(self) -> Outcome:
        store, settings = self.store, self.settings
        partition = store.partition(self.partition_id)
        if partition is None or partition.partition_phase == PartitionStatus.DONE:
            return Outcome.FINISHED
        if partition.owner != self.owner:
            return Outcome.LOST
        where = locate(self.source, self.namespace.db, self.namespace.name,
                       self.namespace.uuid)
        if where is None:  # dropped on the source: change application drops it here too
            store.finish_partition(self.partition_id)
            return Outcome.FINISHED
        read = range_read(partition, where, self.namespace.uuid, settings)
        # Totals, recorded as such (a checkpoint sent again counts once); a natural-order
        # partition is read again from its beginning, and so counted again from zero.
        copied_documents, copied_bytes = (0, 0) if partition.natural else \
            (partition.copied_document_count, partition.copied_byte_count)
        batches = iter(self.source.read_batches(read))
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            read_seconds = time.perf_counter() - started
            started = time.perf_counter()
            insert_ignoring_duplicates(self.destination, partition.namespace.db,
                                       partition.namespace.coll, batch)
            seconds = time.perf_counter() - started
            size = sum(len(document.raw) for document in batch)
            copied_documents += len(batch)
            copied_bytes += size
            if (self.keeper is not None and self.keeper.lost) or \
                    not store.record_partition_progress(self.partition_id, self.owner,
                                                        batch[-1]["_id"], copied_documents,
                                                        copied_bytes):
                return Outcome.LOST
            self.signals.emit(BatchCopied(
                self.partition_id, len(batch), size, seconds,
                full=len(batch) >= settings.batch_documents or size >= settings.batch_bytes,
                read_seconds=read_seconds))
            if self.signals.stopping():
                raise Stopped()
            if not self.signals.active():
                return Outcome.PARKED
        store.finish_partition(self.partition_id)
        return Outcome.FINISHED


def range_read(partition: PartitionRecord, where: tuple[str, str], collection_uuid: object,
               settings: CopySettings) -> RangeRead:
    if partition.natural:
        # A natural-order (capped) partition restarts from its beginning: duplicates are
        # ignored.
        return RangeRead(db=where[0], coll=where[1], natural=True,
                         collection_uuid=collection_uuid, batch_size=settings.batch_documents,
                         max_bytes=settings.batch_bytes)
    return RangeRead(db=where[0], coll=where[1], lower=partition.lower,
                     upper=None if partition.is_last else partition.upper,
                     after=partition.last_copied, collection_uuid=collection_uuid,
                     batch_size=settings.batch_documents, max_bytes=settings.batch_bytes)


def describe_failure(error: BaseException, *, keep: bool) -> WorkerFailed:
    """A worker's fatal error as its parent is told it (``keep``: with the exception)."""
    details = "".join(traceback.format_exception(error))
    if isinstance(error, MigrationError):
        return WorkerFailed(error.error_name, error.message, True, details,
                            error if keep else None)
    code = getattr(error, "code", None)
    text = f"{error} (code {code})" if code is not None else str(error)
    return WorkerFailed(type(error).__name__, text, False, details, error if keep else None)


# -- the worker process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, sent to it when it is spawned."""

    slot: int
    instance: str
    source_label: str
    source_uri: str
    destination_label: str
    destination_uri: str
    metadata_database: str
    settings: CopySettings
    parent_pid: int
    active: bool

    @property
    def owner_prefix(self) -> str:
        return owner_prefix(self.instance, self.slot)


# How often a worker process tells its parent it is alive (see Heartbeat).
HEARTBEAT_SECONDS = 1.0


def owner_prefix(instance: str, slot: int) -> str:
    """Claims of every worker that ever ran in one slot (the colon ends the slot number)."""
    return f"{instance}:copy-{slot}:"


class PipeSignals:
    """A worker process's side of its pipe: commands in (a thread reads them), events out."""

    def __init__(self, connection: Connection, active: bool,
                 on_parent_gone: Callable[[], None]) -> None:
        self.connection = connection
        self._active = threading.Event()
        if active:
            self._active.set()
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._send_lock = threading.Lock()
        self._on_parent_gone = on_parent_gone
        threading.Thread(target=self._listen, name="copy-parent-pipe", daemon=True).start()
        threading.Thread(target=self._beat, name="copy-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.emit(Heartbeat())

    def _listen(self) -> None:
        while True:
            try:
                command, value = self.connection.recv()
            except (EOFError, OSError):
                self._on_parent_gone()  # the parent is gone: so are we
                return
            if command == "stop":
                self._stop.set()
            elif command == "active":
                if value:
                    self._active.set()
                else:
                    self._active.clear()
            self._changed.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def active(self) -> bool:
        return self._active.is_set()

    def pause(self, seconds: float) -> None:
        self._changed.wait(seconds)
        self._changed.clear()

    def emit(self, event: WorkerEvent) -> None:
        try:
            with self._send_lock:
                self.connection.send(event)
        except (BrokenPipeError, EOFError, OSError):
            self._on_parent_gone()


class ForwardingHandler(logging.Handler):
    """Log records of a worker process, sent to the parent, which writes them in its log."""

    def __init__(self, signals: PipeSignals, slot: int) -> None:
        super().__init__(logging.INFO)
        self.signals = signals
        self.slot = slot

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(getattr(record, "fields", None) or {})
        fields.update(copyWorker=self.slot, workerPid=os.getpid())
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must not stop the copy
            message = str(record.msg)
        self.signals.emit(LogLine(record.levelno, record.name, message, fields))


def _exit_now() -> None:
    os._exit(0)


def die_with_parent(parent_pid: int) -> None:
    """Be killed by the kernel when the parent dies (Linux), and leave at once if it already
    has. Elsewhere the pipe alone tells: its end closes with the parent."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl here: the pipe watch still applies
            pass
    if os.getppid() != parent_pid:
        _exit_now()


def worker_main(spec: WorkerSpec, connection: Connection) -> None:
    """A worker process's life: connect, copy until told to stop, give its claim back."""
    die_with_parent(spec.parent_pid)
    # Ctrl-C at a terminal reaches the whole process group: the parent stops the copy at a
    # checkpoint and tells the workers so; they must not fail on the interrupt themselves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals = PipeSignals(connection, spec.active, _exit_now)
    root = logging.getLogger()
    root.addHandler(ForwardingHandler(signals, spec.slot))
    root.setLevel(logging.INFO)
    # Imported here: the parent module imports this one, and a worker needs PyMongo's
    # implementation of the clusters only.
    from pymongosync.clusters import Cluster
    from pymongosync.store import MetadataStore

    clusters: list[Cluster] = []
    try:
        source = Cluster.connect(spec.source_label, spec.source_uri)
        clusters.append(source)
        destination = Cluster.connect(spec.destination_label, spec.destination_uri)
        clusters.append(destination)
        store = MetadataStore(destination.client, spec.metadata_database)
        namespaces = {record.id: record for record in store.namespaces()}
        signals.emit(WorkerStarted(os.getpid(), time.process_time()))
        copy_partitions(source, destination, store, namespaces,
                        f"{spec.owner_prefix}{os.getpid()}", spec.settings, signals)
    except Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which raises
        signals.emit(describe_failure(exc, keep=False))
    finally:
        for cluster in clusters:
            cluster.close()
