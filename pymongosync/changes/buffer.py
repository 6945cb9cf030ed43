"""The change buffer: the source's change stream, received while the copy runs and stored on
the destination, so that the source's oplog only has to hold what the buffer has not stored yet.

Without it, change application starts after the copy and the source's oplog must keep every
change since the migration began: a copy of a few terabytes takes days, and an oplog of a few
hours rolls over (``ChangeStreamHistoryLost``, start again from scratch). With it, a thread
reads the stream from the migration's start time while the copy runs and appends the events,
in order, to ``changeBuffer`` in the metadata database; each stored batch carries the resume
token right after its events, in the same write, so a restart goes on from the last stored
batch. Change application replays the buffer first (deleting what it has applied), then
follows the live stream from the buffer's last token.

The buffer lives on the destination, beside the rest of the migration's state, rather than on
the local disk: like everything else, it survives the loss of the host running pymongosync, and
another host (or a standby process) can take the migration over. Its size is bounded: past the
limit the migration stops with ``ChangeBufferFull`` (nothing is applied half-way; a restart with
a larger limit goes on).

With one instance per source shard, each instance buffers its own shard's stream (read through
the router) under its own name, and the coordinator also buffers the DDL events of the router's
stream (``ddl``), which it applies for every instance (:mod:`pymongosync.instances`).
"""

from __future__ import annotations

import logging
import threading
import time

from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from pymongosync.changes.reader import (CRUD, RESUME_AFTER_SECONDS, raise_unless_resumable,
                                       read_batches, token_time)
from pymongosync.errors import (
    ChangeBufferFull,
    InternalError,
    MigrationError,
)
from pymongosync.phases.context import PhaseContext
from pymongosync.progress import BufferFigures
from pymongosync.state import BufferedBatch
from pymongosync.store import MAIN_STREAM

log = logging.getLogger("pymongosync.buffer")

# A stored batch at most this big (a document of the destination holds 16 MiB).
BATCH_BYTES = 8 * 1024 * 1024
# Without events, the stored position still moves on this often: it is what the source's
# oplog must still hold.
MARK_EVERY_SECONDS = 5.0
# Between reads of the stream that found everything the source had: the buffer may lag a
# little, and under a trickle of writes asking again at once cost a getMore per event or two.
# Measured with bench.change_buffer (400 writes/s during the copy): the buffer added 5 µs of
# CPU per copied document (23 against 18) before, 1 µs after.
POLL_SECONDS = 0.1
DEFAULT_LIMIT_BYTES = 10 * 1024 * 1024 * 1024


def split(events: list[RawBSONDocument]) -> list[list[RawBSONDocument]]:
    """Events in stored batches: each within the size of a batch, and each DDL event alone in
    its batch. The checkpoint after the batch before a DDL event is then the one just before
    it, and the one after its batch the one just after it: a restart between the two applies
    the DDL event again, alone, never the writes before it (phases/apply.py)."""
    batches: list[list[RawBSONDocument]] = []
    current: list[RawBSONDocument] = []
    size = 0
    for event in events:
        length = len(event.raw)
        if event["operationType"] not in CRUD:
            if current:
                batches.append(current)
            batches.append([event])
            current, size = [], 0
            continue
        if current and size + length > BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
        current.append(event)
        size += length
    if current:
        batches.append(current)
    return batches


class ChangeBuffer:
    """Receives the source's changes into the destination while earlier phases run."""

    def __init__(self, context: PhaseContext, limit_bytes: int = DEFAULT_LIMIT_BYTES, *,
                 stream: str = MAIN_STREAM, shard: str | None = None,
                 ddl_only: bool = False) -> None:
        self.context = context
        self.stream = stream  # the name it is stored under
        self.shard = shard  # one shard's stream (None: the whole cluster's)
        self.ddl_only = ddl_only  # only DDL events are stored (the coordinator's DDL stream)
        self.figures = BufferFigures(limit=limit_bytes)
        self.error: MigrationError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        totals = self.context.store.buffer_totals(self.stream)
        self.figures.events, self.figures.size = totals.events, totals.size
        self.figures.stored_up_to = totals.last_event_ts
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"change-buffer-{self.stream}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop receiving (what was received is stored); False if still running."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _run(self) -> None:
        self.figures.receiving = True
        try:
            while not self._stop.is_set():
                try:
                    self._receive()
                except PyMongoError as exc:
                    raise_unless_resumable(exc, "changes",
                                           ": the change buffer could not keep up with it")
                    log.warning("change buffer: stream interrupted, resuming: %s", exc)
                    self._stop.wait(RESUME_AFTER_SECONDS)
        except MigrationError as exc:
            self._failed(exc)
        except Exception as exc:  # handed to the runner, which records it
            log.exception("change buffer failed")
            self._failed(InternalError(f"the change buffer failed: {type(exc).__name__}: "
                                       f"{exc}"))
        finally:
            self.figures.receiving = False

    def _failed(self, error: MigrationError) -> None:
        self.error = error
        self.context.stop.set()  # the phases stop; the runner raises the error

    def _receive(self) -> None:
        context = self.context
        totals = context.store.buffer_totals(self.stream)
        seq = totals.last_seq
        token = totals.resume_token
        start_at = None if token is not None else context.global_state.change_stream_start_time
        last_stored = time.monotonic()
        with read_batches(context.source, self._stop, resume_after=token,
                          start_at=start_at, shard=self.shard, poll_interval=POLL_SECONDS,
                          durations=context.counters.durations) as batches:
            for batch in batches:
                received = [event for event in batch.events
                            if event["operationType"] not in CRUD] if self.ddl_only \
                    else batch.events
                if not received and time.monotonic() - last_stored < MARK_EVERY_SECONDS:
                    continue
                groups = split(received) or [[]]
                for number, events in enumerate(groups):
                    size = sum(len(event.raw) for event in events)
                    if self.figures.size + size > self.figures.limit:
                        raise ChangeBufferFull(
                            f"the change buffer reached its limit ({self.figures.limit // 2**20}"
                            f" MiB, {self.figures.events} events stored): the copy outlasts "
                            f"what it may hold. Nothing is lost and nothing was applied "
                            f"half-way: start mongosync again with a larger "
                            f"--changeBufferLimitMB (and the room for it on the destination), "
                            f"and it goes on from here")
                    last = events[-1] if events else None
                    # Only the last group ends where the stream's token is; an earlier one
                    # ends at its last event, whose own token is its _id.
                    resume = batch.resume_token if number == len(groups) - 1 else \
                        (None if last is None else last["_id"])
                    seq += 1
                    context.store.append_buffer(BufferedBatch(
                        seq=seq, resume_token=None if resume is None else dict(resume),
                        last_event_ts=None if last is None else last["clusterTime"],
                        events=events, size=size), self.stream)
                    self.figures.events += len(events)
                    self.figures.size += size
                    for reached in (None if last is None else last["clusterTime"],
                                    token_time(resume)):
                        if reached is not None and (self.figures.stored_up_to is None or
                                                    reached > self.figures.stored_up_to):
                            self.figures.stored_up_to = reached
                last_stored = time.monotonic()
