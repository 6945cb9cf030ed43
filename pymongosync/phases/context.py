"""What every phase works with: the clusters, the store, the request and the signals."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bson.timestamp import Timestamp

from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.changes.translate import Listing, SourceChange
from pymongosync.changes.writer import ChangeWriter
from pymongosync.cluster_client import ClusterClient
from pymongosync.errors import MigrationError, Stopped
from pymongosync.instances import InstanceGroup, InstanceLayout
from pymongosync.namespaces import NamespaceFilter
from pymongosync.progress import BufferFigures, Counters, IndexFigures, SideStatus
from pymongosync.request import StartRequest
from pymongosync.state import GlobalState, IndexRef, MigrationState, Phase, ResumeData
from pymongosync.store import MigrationStore


# -- the helpers that work beside the phases, as the phases and /progress see them ---------------
# (Narrow interfaces: the modules that implement them build on this one.)
class HelperThread(Protocol):
    """A helper with a thread of its own (the change buffer, the index builds), started and
    stopped by the phases; its failure is kept in ``error`` and stops them."""

    error: MigrationError | None

    def start(self) -> None: ...
    def stop(self, timeout: float | None = None) -> bool: ...


class ChangeBuffering(HelperThread, Protocol):
    """The change buffer (``changes/buffer.py``)."""

    figures: BufferFigures


class IndexBuilds(HelperThread, Protocol):
    """The index builds beside change application (``phases/indexes.py``)."""

    figures: IndexFigures


class Verification(Protocol):
    """The embedded verifier (``verifier/embedded.py``)."""

    @property
    def started(self) -> bool: ...
    @property
    def running(self) -> bool: ...
    @property
    def notes_source_changes(self) -> bool: ...
    def ensure_started(self) -> None: ...
    def applied_up_to(self) -> Timestamp | None: ...
    def stop(self, timeout: float | None = None) -> bool: ...
    def note_source_changes(self, changes: Iterable[SourceChange]) -> None: ...
    def details(self) -> dict[str, Any]: ...
    def committable(self, latest_source: Timestamp | None, limit: int) -> bool: ...
    def sides(self, latest_source: Timestamp | None) -> tuple[SideStatus, SideStatus]: ...
    def final_documents(self, commit_time: Timestamp) -> None: ...
    def final_metadata(self, pending_unique: list[IndexRef], commit_time: Timestamp) -> None: ...


@dataclass(frozen=True)
class ConnectionStrings:
    """How a worker process opens its own connections to the two clusters (picklable; the
    strings hold credentials, so they travel to workers through a pipe, never a command line).
    """

    source_label: str
    source_uri: str
    destination_label: str
    destination_uri: str


@dataclass
class PhaseContext:
    """One migration as the phases see it.

    ``stop`` means "leave as soon as what was done is saved" (pause, shutdown, lost
    ownership); ``commit_requested`` means "/commit was accepted": the change-application phase
    then ends and the commit phase takes over. They are separate so that neither is mistaken
    for the other.
    """

    source: ClusterClient
    destination: ClusterClient
    store: MigrationStore
    request: StartRequest
    global_state: GlobalState
    resume: ResumeData
    namespace_filter: NamespaceFilter
    load_level: int = 3
    instance: str = "coordinator"
    stop: threading.Event = field(default_factory=threading.Event)
    commit_requested: threading.Event = field(default_factory=threading.Event)
    counters: Counters = field(default_factory=Counters)
    notify: Callable[[str], None] = lambda message: None
    # The embedded verifier, when verification is on (set by the migration).
    verifier: Verification | None = None
    # --hotDocIDs, as stored with the migration (set by the migration).
    hot_documents: HotDocuments = field(default_factory=HotDocuments)
    # The change buffer while it receives (set by the runner), and its size limit.
    change_buffer: ChangeBuffering | None = None
    # One instance per source shard: the coordinator's buffer of the router's DDL events.
    ddl_buffer: ChangeBuffering | None = None
    change_buffer_limit: int = 10 * 1024 * 1024 * 1024
    # Indexes per createIndexes command (--createIndexesBatchSize; None: one at a time).
    create_indexes_batch_size: int | None = None
    # The index builds that run beside change application (set by that phase).
    index_builder: IndexBuilds | None = None
    # Held while a DDL event is applied, and while the index builder checks a namespace and
    # builds its indexes (changes/writer.py).
    ddl_lock: threading.Lock = field(default_factory=threading.Lock)
    # Where the clusters are, for phases that work in worker processes (set by the migration;
    # None: in-process clusters only, e.g. the unit tests' fakes, and the copy uses threads).
    connection_strings: ConnectionStrings | None = None
    # One instance per source shard: which one this is (pymongosync.instances).
    layout: InstanceLayout = field(default_factory=InstanceLayout)

    @property
    def group(self) -> InstanceGroup:
        """The other instances of a multi-instance migration, as the metadata tells."""
        return InstanceGroup(self.store, self.layout)

    def listing(self) -> Listing:
        """What the listing of the source's namespaces saw (stored by the prepare phase,
        which with one instance per source shard ran in the coordinator: read from the store).
        """
        state = self.store.load_global() or self.global_state
        return Listing.of(state.listing_started, state.listing_times,
                          ((record.db, record.name, record.uuid)
                           for record in self.store.namespaces() if record.is_collection))

    def change_writer(self) -> ChangeWriter:
        """A writer of change events to the destination, set up as every phase that applies
        them needs it: views only into a destination without data of its own (mongosync's
        rule), and DDL under the lock the index builds share."""
        return ChangeWriter(self.source, self.destination, self.namespace_filter,
                            self.request.buildIndexes, self.store, self.counters,
                            migrate_views=not self.request.preExistingDestinationData,
                            ddl_lock=self.ddl_lock, hot_documents=self.all_hot_documents)

    def all_hot_documents(self) -> HotDocuments:
        """The hot documents of every instance: with one instance per source shard, each
        stores its own (--hotDocIDs) before it applies anything, so the store has them all by
        the time a DDL event or the commit needs them."""
        if not self.layout.multi:
            return self.hot_documents
        stored = self.store.load_global()
        return self.hot_documents | HotDocuments.from_stored(
            stored.hot_documents if stored is not None else [])

    def wait_for_instances(self, condition: Callable[[], bool]) -> None:
        """Until ``condition`` holds of the instances' shared records; Stopped on stop."""
        self.group.wait(condition, self.stop.is_set)

    @classmethod
    def build(cls, source: ClusterClient, destination: ClusterClient, store: MigrationStore,
              global_state: GlobalState, resume: ResumeData, *, load_level: int = 3,
              notify: Callable[[str], None] | None = None) -> PhaseContext:
        """A context for a stored migration; the namespace filter is built here, once."""
        request = StartRequest.from_document(global_state.request)
        context = cls(source=source, destination=destination, store=store, request=request,
                      global_state=global_state, resume=resume,
                      namespace_filter=request.namespace_filter(),
                      load_level=load_level, instance=resume.id)
        if notify is not None:
            context.notify = notify
        context.counters.events_applied = resume.events_applied
        if resume.ddl_change_stream_resume_info is not None:  # ddlLagSeconds after a restart
            context.counters.last_ddl_event_time = \
                resume.ddl_change_stream_resume_info.last_event_ts
        return context

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()

    @property
    def committing(self) -> bool:
        return self.commit_requested.is_set() or self.resume.state == MigrationState.COMMITTING

    def save_global(self, *fields: str) -> None:
        self.store.save_global(self.global_state, *fields)

    def block_user_writes(self, role: Literal["source", "destination"]) -> bool:
        """Block user writes on the source or the destination, recorded in the global state
        (``<role>_write_blocked_by_us``) before it is done: a process stopped in between leaves
        a record that the next one (or ``mongosync reset``) acts on, never a block nobody knows
        of. Where the record exists, the block is checked and set again only if missing.
        True when this call recorded it."""
        cluster = self.source if role == "source" else self.destination
        record = f"{role}_write_blocked_by_us"
        if getattr(self.global_state, record):
            if cluster.write_blocked() is not True:  # None: the server does not say; set again
                cluster.set_write_block(True)
            return False
        setattr(self.global_state, record, True)
        self.save_global(record)
        cluster.set_write_block(True)
        return True

    def save_resume(self, *fields: str) -> None:
        self.store.save_resume(self.resume, *fields)

    def set_state(self, state: MigrationState) -> None:
        """Persist a new state; in memory only once stored (a failed write changes nothing)."""
        previous, self.resume.state = self.resume.state, state
        try:
            self.save_resume("state")
        except BaseException:
            self.resume.state = previous
            raise


class PhaseStep:
    """A phase: ``run`` does its work from whatever it stored before, and returns when done.

    It raises :class:`pymongosync.errors.Stopped` when ``context.stop`` interrupts it; the
    runner then leaves, and the next process runs the same phase again from its saved state.
    """

    phase: Phase

    def run(self, context: PhaseContext) -> None:
        raise NotImplementedError
