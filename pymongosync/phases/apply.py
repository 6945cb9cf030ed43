"""Phase 5, change event application (CEA): the source's change stream replayed on the destination.

The stream is read from the time recorded before anything was listed (or from the last saved
resume token), translated batch by batch into idempotent writes, and written by applier lanes
in parallel (``changes/appliers.py``: each document's writes in one lane, in order; DDL events
and transactions spanning lanes are barriers). Once every lane has applied a batch, one
checkpoint write saves the resume token, the time of the last event and the counters together;
lanes finishing out of order never move it past an event some lane has not applied. A crash
replays at most the batches in flight, harmlessly (every write is idempotent and addressed by
``_id``).

The checkpoint never falls inside a transaction: a batch that ends inside one is checkpointed
just before the transaction began (or not at all, when it began in an earlier batch), so a
restart reads the whole transaction again.

The phase runs until ``/commit`` is accepted; the commit phase then uses the same
:class:`ChangeApplier` to apply everything up to its persisted end position.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from pymongosync.changes.appliers import ApplierLanes, LaneBalance, Marker
from pymongosync.changes.reader import (RESUME_AFTER_SECONDS, raise_unless_resumable, read_batches,
                                       token_time)
from pymongosync.changes.translate import (
    CrudStep,
    LaneWrites,
    Namespace,
    Position,
    SourceChange,
    Translation,
    Translator,
)
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.phases.ddl_order import DdlCoordinator, DdlGate
from pymongosync.phases.indexes import IndexBuilder, builds_after_copy
from pymongosync.state import BufferedBatch, MigrationState, Phase, ResumeInfo

log = logging.getLogger("pymongosync.changes")

REPLAY_BATCHES = 8  # stored batches read at a time from the change buffer
# loadLevel → applier lanes (mongosync's loadLevel is the load put on the clusters: as many
# writes in flight as the copy has partitions in flight).
LANES_BY_LOAD_LEVEL = {1: 1, 2: 2, 3: 4, 4: 8}
# Batches handed to the lanes and not yet checkpointed: enough to keep the lanes busy while
# the next batch is read and translated; each one is at most a reader batch of events.
MAX_BATCHES_IN_FLIGHT = 3
# How often the position reached is stored while batches follow one another. Each batch moves
# it in memory; storing it is a write to the destination that cost about 1 ms of CPU, a
# microsecond per event at full speed. A restart replays what came after the stored position
# (every write is idempotent). Stored at once, whatever the time: after a DDL event, when
# the lanes are drained (a barrier, the goal of a commit, a pause), and with one instance per
# source shard (the coordinator waits for each instance's position).
CHECKPOINT_EVERY_SECONDS = 0.5
# While changes are applied, the cyclic garbage collector runs after this many new container
# objects instead of Python's 700. Applying allocates a few containers per event (decoded
# fields, writes), all freed by reference counting; with the default threshold, the collector
# ran every ~100 events and kept traversing the batches in flight: measured, about a quarter
# of change application's CPU. Garbage cycles, rare here, wait a little longer to be collected.
GC_THRESHOLD_WHILE_APPLYING = 50_000


def lanes_for(load_level: int) -> int:
    return LANES_BY_LOAD_LEVEL.get(load_level, LANES_BY_LOAD_LEVEL[3])


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The garbage collector's first threshold raised (process-wide) while inside."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_THRESHOLD_WHILE_APPLYING), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


@dataclass
class _Applied:
    """What a batch handed to the lanes brings, once they have applied it."""

    position: Position | None  # where to resume after it (None: no new safe position)
    buffer_seq: int | None  # the stored batch of the change buffer the position covers
    events: int
    crud_events: int
    last_crud_time: Timestamp | None
    changes: list[SourceChange] = field(default_factory=list)
    # One instance per source shard: every event of this shard before it is then applied.
    applied_before: Timestamp | None = None
    # It holds a DDL event: its checkpoint is stored at once (never apply a DDL event twice).
    has_ddl: bool = False


class ChangeApplier:
    def __init__(self, context: PhaseContext, lanes: int | None = None) -> None:
        self.context = context
        self.writer = context.change_writer()
        self.lane_count = lanes if lanes is not None else lanes_for(context.load_level)
        self.translator = Translator(context.namespace_filter, self.writer.destination_sharded,
                                     lanes=self.lane_count, listing=context.listing(),
                                     hot_documents=context.hot_documents)
        self._lanes: ApplierLanes | None = None
        self.balance = LaneBalance(self.lane_count)  # warns of documents that hold lanes back
        self._in_flight: deque[Marker] = deque()
        self._replayed_seq: int | None = None  # the last stored batch handed to the lanes
        self._stored_at = float("-inf")  # time.monotonic() of the last stored checkpoint
        self._unstored: set[str] = set()  # fields of the checkpoint moved since then
        # One instance per source shard (pymongosync.instances): this instance applies its
        # shard's CRUD events, as far as the coordinator's DDL stream allows.
        self.multi = context.layout.multi
        self.gate = DdlGate(context) if self.multi else None

    def run(self, until: Timestamp | None = None) -> bool:
        """Apply events until ``stop``; with ``until``, until every event up to that time is
        applied; without it, until a commit is requested.

        Returns True when it reached its goal, False when stopped first.
        """
        with _fewer_collections():
            return self._run(until)

    def _run(self, until: Timestamp | None) -> bool:
        context = self.context
        while not context.stop.is_set():
            try:
                if self._follow(until):
                    return True
            except PyMongoError as exc:
                raise_unless_resumable(exc, "changes")
                log.warning("change stream interrupted, resuming from the saved token: %s", exc)
                context.stop.wait(RESUME_AFTER_SECONDS)
        return False

    def _reached(self, until: Timestamp | None) -> bool:
        if until is None:
            if not self.context.committing:
                return False
            if self.multi and not self.context.layout.is_coordinator:
                # Applying goes on until the coordinator has fixed the commit time: a DDL event
                # the coordinator holds may wait for this shard's events before it.
                coordinator = self.context.group.coordinator()
                return coordinator is not None and coordinator.commit_time is not None
            return True
        last = self.context.resume.crud_change_stream_resume_info.last_event_ts
        return last is not None and last >= until

    def _follow(self, until: Timestamp | None) -> bool:
        context = self.context
        if self._reached(until):
            return True
        with self._applying():
            if self._replay_buffer(until):
                return True
            if context.stop.is_set():
                return False
            # The live stream goes on from the last checkpoint: every replayed batch first. (A
            # transaction the buffer ended in is read again from its start.)
            self._drain()
            self.translator.forget_open_transaction()
            info = context.resume.crud_change_stream_resume_info
            start_at = None if info.resume_token is not None else \
                context.global_state.change_stream_start_time
            with read_batches(context.source, context.stop, resume_after=info.resume_token,
                              start_at=start_at, shard=context.layout.shard,
                              durations=context.counters.durations) as batches:
                for batch in batches:
                    if not self._handle(batch.events, batch.resume_token, until):
                        return False
                    if self._reached(until):
                        return True
        return False

    @contextmanager
    def _applying(self) -> Iterator[None]:
        """Lanes for one reading of the stream: on the way out, what they applied is
        checkpointed; after an error, what they had not applied is dropped (a restart reads
        it again from the last checkpoint)."""
        self._lanes = ApplierLanes(self.lane_count, self._apply_lane)
        self._in_flight.clear()
        self._replayed_seq = None
        self.translator.forget_open_transaction()
        try:
            yield
            self._drain()
        finally:
            self._lanes.close()
            self._lanes = None

    def _replay_buffer(self, until: Timestamp | None) -> bool:
        """Apply what the change buffer stored while the copy ran, batch by batch, each
        checkpointed with its position in the buffer and its resume token in one write, then
        deleted. True when ``until`` was reached."""
        context = self.context
        if not context.global_state.change_buffering:
            return False
        after = context.resume.buffer_applied_seq
        while not context.stop.is_set():
            batches = context.store.buffer_batches(after, limit=REPLAY_BATCHES,
                                                   stream=context.layout.stream)
            if not batches:
                return False
            last_seq, batches = batches[-1].seq, self._skip_applied(batches)
            if not batches:
                after = last_seq
                continue
            for batch in batches:
                if not self._handle(batch.events, batch.resume_token, until,
                                    buffer_seq=batch.seq, stored_last_time=batch.last_event_ts):
                    return False
                after = batch.seq
                if self._reached(until):
                    return True
                if context.stop.is_set():
                    return False
        return False

    def _skip_applied(self, batches: list[BufferedBatch]) -> list[BufferedBatch]:
        """The stored batches not applied yet. Those whose last event is older than the last
        applied one were applied, the live stream having gone past them (a batch that ended
        inside a transaction is covered only once the live stream has read the rest): applied
        again, their writes would land in collections that DDL events applied since then
        have renamed or dropped, and the checkpoint would move back to before those DDL
        events, which the stream would then apply again (campaign seed 10278, a whole
        collection lost). They are marked applied and dropped instead."""
        reached = self.context.resume.crud_change_stream_resume_info.last_event_ts
        applied = [batch for batch in batches if reached is not None and
                   batch.last_event_ts is not None and batch.last_event_ts < reached]
        if not applied:
            return batches
        resume = self.context.resume
        if applied[-1].seq > resume.buffer_applied_seq:
            log.info("change buffer: %d stored batch(es) through %d were applied already",
                     len(applied), applied[-1].seq)
            resume.buffer_applied_seq = applied[-1].seq
            self.context.save_resume("buffer_applied_seq")
            self.context.store.drop_buffer_through(applied[-1].seq,
                                                   stream=self.context.layout.stream)
        return [batch for batch in batches if batch.seq > applied[-1].seq]

    # -- one batch -----------------------------------------------------------------------------
    def _handle(self, events: list[Any], resume_token: Mapping[str, Any] | None,
                until: Timestamp | None, buffer_seq: int | None = None,
                stored_last_time: Timestamp | None = None) -> bool:
        """One batch read, applied as far as the coordinator's DDL stream allows (one
        instance per source shard), waiting for it to allow the rest. False when stopped
        while waiting: the rest is not applied, and no later batch may be either (the
        reader may hold more, read before the stop: applied, an empty one's resume token
        would move the checkpoint past the events held back, which a restart would then
        never read again; campaign seed 27 with CAMPAIGN_ONE_PER_SHARD=1, 20 inserts lost)."""
        gate = self.gate
        if gate is None:
            self._submit(events, resume_token, until, buffer_seq, stored_last_time)
            return True
        applied_before = self.context.resume.applied_before
        if applied_before is not None and events and events[0]["clusterTime"] < applied_before:
            # Read again after a restart (a checkpoint may lag): applied already, and a DDL
            # event after them may be too. Never apply them again.
            events = [event for event in events if event["clusterTime"] >= applied_before]
        while True:
            admitted = gate.admitted(events)
            if admitted == len(events):
                self._submit(events, resume_token, until, buffer_seq, stored_last_time)
                return True
            if admitted:
                last = events[admitted - 1]
                self._submit(events[:admitted], last["_id"], until)
                events = events[admitted:]
            # Held back by a DDL event not yet applied (or not yet read): say how far this
            # shard is applied, which the coordinator waits for, and wait.
            self._drain()
            self._publish_applied_before(events[0]["clusterTime"])
            if not gate.wait_past(events[0]["clusterTime"]):
                return False

    def _publish_applied_before(self, applied_before: Timestamp) -> None:
        resume = self.context.resume
        if resume.applied_before is None or applied_before > resume.applied_before:
            resume.applied_before = applied_before
            self.context.save_resume("applied_before")

    def _submit(self, events: list[Any], resume_token: Mapping[str, Any] | None,
                until: Timestamp | None, buffer_seq: int | None = None,
                stored_last_time: Timestamp | None = None) -> None:
        """Hand one batch to the lanes (DDL events and barriers applied here, in order), and
        checkpoint whatever batches the lanes have finished."""
        lanes = self._lanes
        assert lanes is not None
        verifier = self.context.verifier
        translation = self.translator.translate(
            events, note_changes=verifier is not None and verifier.notes_source_changes)
        self.context.counters.hot_events_skipped += translation.hot_skipped
        changes = translation.changes  # for the verifier, once this batch is applied
        counted = 0  # events of the batch counted by the checkpoints around its DDL events
        for step in translation.steps:
            if self.multi and not isinstance(step, CrudStep):
                continue  # the coordinator applies DDL events, from the router's stream
            if isinstance(step, CrudStep):
                self.balance.add(step)
                if step.barrier:  # a transaction across lanes: alone
                    self._drain()
                    lanes.submit(step)
                    self._drain()
                else:
                    lanes.submit(step)
                continue
            self._drain()
            if buffer_seq is None and not step.in_transaction and step.before is not None:
                # Every event before it is applied: the checkpoint moves to just before it
                # first. A restart after it is applied then applies it again alone, never
                # the writes before it, which would land in a collection it has renamed or
                # dropped since: re-created there, partial, and put in the target's place by
                # the rename with dropTarget applied again (campaign seed 10278: a whole
                # collection lost). (In the change buffer a DDL event is alone in its stored
                # batch, and the drain has stored the checkpoint of the batch before it.)
                if verifier is not None and changes:
                    verifier.note_source_changes(changes)  # before the checkpoint passes them
                    changes = []
                counted = self._count_applied(step.events_before, counted)
                self._checkpoint(step.before, self._replayed_seq, store=True)
            self.writer.apply_ddl(step)
            if buffer_seq is None and not step.in_transaction:
                # Right after a DDL event: a restart resumes past it, never applying it twice.
                # (A DDL event is alone in its stored batch in the change buffer: there, the
                # batch's own checkpoint, with its place in the buffer, is the one after it.)
                counted = self._count_applied(step.events_before + 1, counted)
                self._checkpoint(Position(step.event["_id"], step.event["clusterTime"]),
                                 self._replayed_seq, store=True)
        last_time = translation.last_time or stored_last_time
        position, covered_seq = self._position_after(translation, resume_token, last_time,
                                                     buffer_seq)
        if buffer_seq is not None:
            self._replayed_seq = buffer_seq
        crud_steps = [step for step in translation.steps if isinstance(step, CrudStep)]
        self._in_flight.append(lanes.mark(_Applied(
            position=position, buffer_seq=covered_seq, events=translation.events - counted,
            crud_events=translation.crud_events,
            last_crud_time=next((step.last_time for step in reversed(crud_steps)
                                 if step.last_time is not None), None),
            changes=changes,
            applied_before=self._applied_before(translation, resume_token),
            has_ddl=len(crud_steps) < len(translation.steps))))
        if until is not None and last_time is not None and last_time >= until:
            self._drain()  # the goal is in this batch: checkpoint it now
        while len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
            lanes.wait_until(self._in_flight[0])
            self._checkpoint_reached()
        self._checkpoint_reached()

    def _applied_before(self, translation: Translation,
                        resume_token: Mapping[str, Any] | None) -> Timestamp | None:
        """One instance per source shard: the time before which every event of the shard is
        applied once this batch is. Not past the time of its last event or of its resume
        token: more events at that time may come (a transaction's, or those a high-water mark
        at that time sorts before)."""
        if not self.multi:
            return None
        if translation.open_transaction is not None:
            return translation.last_time
        reached = [time_ for time_ in (translation.last_time, token_time(resume_token))
                   if time_ is not None]
        return max(reached) if reached else None

    def _position_after(self, translation: Translation, resume_token: Mapping[str, Any] | None,
                        last_time: Timestamp | None, buffer_seq: int | None
                        ) -> tuple[Position | None, int | None]:
        """Where a restart may resume once this batch is applied, and the stored batch of the
        buffer that position covers. Never inside a transaction: a batch that ends in one
        gives the position just before it began, or none when it began in an earlier batch."""
        if translation.open_transaction is None:
            if resume_token is None:
                return None, None
            return Position(resume_token, last_time), \
                buffer_seq if buffer_seq is not None else self._replayed_seq
        before = translation.before_open_transaction
        if before is None:
            return None, None
        # Inside this batch: it covers the stored batches before this one, not this one.
        return before, None if buffer_seq is not None else self._replayed_seq

    def _apply_lane(self, writes: LaneWrites, collection_uuids: dict[Namespace, Any]) -> None:
        """One lane's writes of a step (in that lane's thread)."""
        for (db, coll), operations in writes.items():
            self.writer.write(db, coll, operations, collection_uuids.get((db, coll)))

    def _drain(self) -> None:
        """Wait until the lanes have applied everything handed to them, and checkpoint it."""
        if self._lanes is not None:
            self._lanes.wait_idle()
            self._checkpoint_reached(store=True)

    def _count_applied(self, through: int, counted: int) -> int:
        """Count the events of the batch being applied up to ``through`` (``counted`` of them
        are already): a checkpoint inside a batch stores them with its position, and a
        restart from it never applies them again."""
        self.context.counters.events_applied += max(0, through - counted)
        return max(through, counted)

    def _checkpoint_reached(self, store: bool = False) -> None:
        """Checkpoint the newest batch every lane has applied (and count those batches);
        ``store``: store it now (otherwise when CHECKPOINT_EVERY_SECONDS have passed)."""
        reached: list[_Applied] = []
        while self._in_flight and self._in_flight[0].reached:
            reached.append(self._in_flight.popleft().payload)
        if not reached:
            if store:
                self._store_checkpoint()
            return
        counters = self.context.counters
        changes: list[SourceChange] = []
        for applied in reached:
            counters.events_applied += applied.events
            counters.crud_events += applied.crud_events
            if applied.last_crud_time is not None:
                counters.last_crud_event_time = applied.last_crud_time
            changes.extend(applied.changes)
        verifier = self.context.verifier
        if verifier is not None and changes:
            # Before the checkpoint: a restart replays the batch, and notes again.
            verifier.note_source_changes(changes)
        newest = next((applied for applied in reversed(reached) if applied.position is not None),
                      None)
        applied_before = next((applied.applied_before for applied in reversed(reached)
                               if applied.applied_before is not None), None)
        store = store or any(applied.has_ddl for applied in reached)
        if newest is None or newest.position is None:
            if applied_before is not None:
                self._publish_applied_before(applied_before)
            if store:
                self._store_checkpoint()
            return
        self._checkpoint(newest.position, newest.buffer_seq, applied_before, store=store)

    def _checkpoint(self, position: Position, buffer_seq: int | None,
                    applied_before: Timestamp | None = None, store: bool = False) -> None:
        """The resume token, the time of the last applied event, the counters (and the last
        applied batch of the change buffer, deleted once stored), stored in one write now
        when ``store``, or at the latest CHECKPOINT_EVERY_SECONDS after the last one."""
        context = self.context
        info = context.resume.crud_change_stream_resume_info
        for candidate in (position.time, token_time(position.token)):
            if candidate is not None and (info.last_event_ts is None
                                          or candidate > info.last_event_ts):
                info.last_event_ts = candidate
        moved_to, stored_at = token_time(position.token), token_time(info.resume_token)
        if moved_to is None or stored_at is None or moved_to >= stored_at:
            # Never back: the stream read from an older token applies again what it applied.
            info.resume_token = dict(position.token)
        context.resume.events_applied = context.counters.events_applied
        fields = ["crud_change_stream_resume_info", "events_applied"]
        if context.counters.last_ddl_event_time is not None and not self.multi:
            # mongosync's ddlChangeStreamResumeInfo, which MongoDB's tooling reads. (With one
            # instance per shard, the coordinator's DDL thread keeps it.)
            context.resume.ddl_change_stream_resume_info = ResumeInfo(
                last_event_ts=context.counters.last_ddl_event_time)
            fields.append("ddl_change_stream_resume_info")
        if applied_before is not None and (context.resume.applied_before is None
                                           or applied_before > context.resume.applied_before):
            context.resume.applied_before = applied_before
            fields.append("applied_before")
        if buffer_seq is not None and buffer_seq > context.resume.buffer_applied_seq:
            context.resume.buffer_applied_seq = buffer_seq
            fields.append("buffer_applied_seq")
        self._unstored.update(fields)
        if store or self.multi or \
                time.monotonic() - self._stored_at >= CHECKPOINT_EVERY_SECONDS:
            self._store_checkpoint()
        self._start_verifying_once_caught_up()

    def _store_checkpoint(self) -> None:
        """Store what the checkpoint moved since it was last stored (nothing if nothing)."""
        if not self._unstored:
            return
        context = self.context
        fields, self._unstored = self._unstored, set()
        try:
            context.save_resume(*sorted(fields))
        except BaseException:
            self._unstored |= fields  # not stored: the next checkpoint stores it
            raise
        self._stored_at = time.monotonic()
        if "buffer_applied_seq" in fields:
            context.store.drop_buffer_through(context.resume.buffer_applied_seq,
                                              stream=context.layout.stream)

    def _start_verifying_once_caught_up(self) -> None:
        """The verifier starts once the copy's backlog of changes is applied (hashing earlier
        would only find documents that change application is about to fix)."""
        context = self.context
        verifier = context.verifier
        if verifier is None or verifier.running or context.stop.is_set():
            # Stopping (pause, shutdown): the last checkpoint on the way out must not start
            # again the verifier the stop has just stopped.
            return
        if verifier.started:
            verifier.ensure_started()
            return
        copied = context.resume.copy_finished_time
        if context.layout.multi:  # (the coordinator's verifier) every instance's backlog
            copied = context.group.copies_finished()
            if copied is None:
                return
        applied = verifier.applied_up_to()
        if copied is None or (applied is not None and applied >= copied):
            verifier.ensure_started()


class ApplyChanges(PhaseStep):
    phase = Phase.APPLY_CHANGES

    def run(self, context: PhaseContext) -> None:
        if context.resume.state == MigrationState.REVERSING:
            context.set_state(MigrationState.RUNNING)
            context.notify("Transitioning the state to RUNNING (reversed)")
        if context.committing:
            return
        builder = None
        # One instance per source shard: the coordinator builds the indexes (once every
        # instance has copied) and applies the DDL events.
        if builds_after_copy(context) and context.resume.copy_finished_time is not None \
                and context.layout.is_coordinator:
            builder = context.index_builder = IndexBuilder(context)
            builder.start()
        ddl = ddl_coordinator(context)
        try:
            ChangeApplier(context).run()
        finally:
            if builder is not None:
                builder.stop(timeout=5.0)  # a long build goes on on the server meanwhile
            if ddl is not None:
                ddl.stop(timeout=10.0)  # raises what failed it
            if builder is not None and builder.error is not None:
                raise builder.error
        context.check_stop()


def ddl_coordinator(context: PhaseContext) -> DdlCoordinator | None:
    """The coordinator's DDL thread, started, when the migration runs one instance per
    source shard and this is the coordinator."""
    if not (context.layout.multi and context.layout.is_coordinator):
        return None
    ddl = DdlCoordinator(context)
    ddl.start()
    return ddl
