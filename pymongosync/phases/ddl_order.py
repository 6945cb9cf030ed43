"""DDL events of a migration run one instance per source shard, in the cluster's order.

Every instance applies the CRUD events of its own shard's stream; DDL events (a drop, a
rename, an index built on the source) are the coordinator's, read once from the router's
stream, because one DDL event may concern every shard. Two records of the coordinator order
them against every shard's writes (``pymongosync.instances``):

- ``ddl_seen_through``: every DDL event up to this cluster time (included) has been read and
  applied;
- ``ddl_pending``: the DDL event read next, at this time, waiting to be applied.

Each instance applies its shard's events up to what those allow (:class:`DdlGate`): before
``ddl_pending`` when one waits, else up to ``ddl_seen_through``; and publishes
``applied_before`` (every event of its shard before that time is applied and will not be
applied again). The coordinator (:class:`DdlCoordinator`) applies the pending DDL event once
every instance's ``applied_before`` has passed it. So a write before a drop is applied before
the drop, on whichever shard it was, and a write after it after it.

The price: an instance's events wait for the router's stream to pass them, which on an idle
cluster moves with the shards' periodic no-op writes (``periodicNoopIntervalSecs``, 10 s at
most by default on MongoDB); lag is at least that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from pymongosync.changes.reader import (CRUD, RESUME_AFTER_SECONDS, raise_unless_resumable,
                                       read_batches, token_time)
from pymongosync.changes.translate import DdlAction, DdlStep, Listing, renamed_to_db
from pymongosync.errors import InternalError, MigrationError, Stopped
from pymongosync.instances import DDL_STREAM, POLL_SECONDS
from pymongosync.phases.context import PhaseContext
from pymongosync.state import ResumeInfo

log = logging.getLogger("pymongosync.changes")

REPLAY_BATCHES = 8


def just_after(time_: Timestamp) -> Timestamp:
    """The first cluster time after ``time_`` (an exclusive bound that admits ``time_``)."""
    return Timestamp(time_.time, time_.inc + 1)


def just_before(time_: Timestamp) -> Timestamp:
    """The last cluster time before ``time_``."""
    if time_.inc > 0:
        return Timestamp(time_.time, time_.inc - 1)
    return Timestamp(time_.time - 1, 2**32 - 1)


def gate_limit(seen_through: Timestamp | None, pending: Timestamp | None) -> Timestamp | None:
    """Events before this time may be applied (None: none yet)."""
    if pending is not None:
        return pending
    return None if seen_through is None else just_after(seen_through)


class DdlGate:
    """How far an instance may apply its shard's events, from the coordinator's record."""

    def __init__(self, context: PhaseContext) -> None:
        self.context = context
        self._limit: Timestamp | None = None

    def refresh(self) -> Timestamp | None:
        coordinator = self.context.group.coordinator()
        if coordinator is not None:
            limit = gate_limit(coordinator.ddl_seen_through, coordinator.ddl_pending)
            if limit is not None and (self._limit is None or limit > self._limit):
                self._limit = limit
        return self._limit

    def admitted(self, events: Sequence[Mapping[str, Any]]) -> int:
        """How many of ``events`` (in stream order) may be applied now."""
        if not events:
            return 0
        limit = self._limit
        if limit is None or events[-1]["clusterTime"] >= limit:
            limit = self.refresh()
        if limit is None:
            return 0
        count = 0
        for event in events:
            if event["clusterTime"] >= limit:
                break
            count += 1
        return count

    def wait_past(self, time_: Timestamp) -> bool:
        """Until events at ``time_`` may be applied; False when stopped first."""
        stop = self.context.stop
        while not stop.is_set():
            limit = self.refresh()
            if limit is not None and time_ < limit:
                return True
            stop.wait(POLL_SECONDS)
        return False


class DdlCoordinator:
    """The coordinator's thread that applies the router's DDL events in order."""

    def __init__(self, context: PhaseContext) -> None:
        self.context = context
        self.writer = context.change_writer()
        self.error: MigrationError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listing: Listing | None = None

    def start(self) -> None:
        self.listing = self.context.listing()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ddl-coordinator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading (what was applied is saved); raises the thread's error, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def _stopped(self) -> bool:
        return self._stop.is_set() or self.context.stop.is_set()

    def _run(self) -> None:
        try:
            while not self._stopped():
                try:
                    self._follow()
                    return
                except PyMongoError as exc:
                    raise_unless_resumable(exc, "DDL events")
                    log.warning("DDL stream interrupted, resuming: %s", exc)
                    self._stop.wait(RESUME_AFTER_SECONDS)
        except Stopped:
            return
        except MigrationError as exc:
            self._failed(exc)
        except Exception as exc:  # handed to the phase, which records it
            log.exception("applying DDL events failed")
            self._failed(InternalError(f"applying DDL events failed: {type(exc).__name__}: "
                                       f"{exc}"))

    def _failed(self, error: MigrationError) -> None:
        self.error = error
        self.context.stop.set()  # the phase stops and raises the error

    def _follow(self) -> None:
        context = self.context
        resume = context.resume
        if context.global_state.change_buffering:
            while not self._stopped():
                stored = context.store.buffer_batches(resume.ddl_buffer_applied_seq,
                                                      limit=REPLAY_BATCHES, stream=DDL_STREAM)
                if not stored:
                    break
                for batch in stored:
                    self._take(batch.events, batch.resume_token, batch.last_event_ts)
                    resume.ddl_buffer_applied_seq = batch.seq
                    context.save_resume("ddl_buffer_applied_seq")
                    context.store.drop_buffer_through(batch.seq, stream=DDL_STREAM)
        info = resume.ddl_change_stream_resume_info
        token = None if info is None else info.resume_token
        start_at = None if token is not None else context.global_state.change_stream_start_time
        with read_batches(context.source, self._stop, resume_after=token, start_at=start_at,
                          durations=context.counters.durations) as batches:
            for read in batches:
                if self._stopped():
                    return
                self._take([event for event in read.events
                            if event["operationType"] not in CRUD], read.resume_token, None)

    def _take(self, events: Sequence[Mapping[str, Any]], token: Mapping[str, Any] | None,
              stored_last: Timestamp | None) -> None:
        """Apply one batch of DDL events, each once every instance has reached it; then record
        how far the stream has been read."""
        context = self.context
        resume = context.resume
        group = context.group
        for event in events:
            at: Timestamp = event["clusterTime"]
            if resume.ddl_seen_through is not None and at <= resume.ddl_seen_through:
                continue  # applied before a restart
            ns = event.get("ns") or {}
            action: DdlAction = "apply"
            if self.listing is not None and isinstance(ns.get("db"), str):
                action = self.listing.ddl_action(ns["db"], at, renamed_to_db(event))
            if action == "seen":
                continue  # the listing of the source's namespaces saw it
            if resume.ddl_pending != at:
                resume.ddl_pending = at
                context.save_resume("ddl_pending")

            def reached(at: Timestamp = at) -> bool:
                applied = group.applied_before()
                return applied is not None and applied >= at

            group.wait(reached, self._stopped)
            self.writer.apply_ddl(DdlStep(event, copy_target=action == "copy-target"))
            resume.ddl_pending = None
            resume.ddl_seen_through = at
            resume.ddl_change_stream_resume_info = ResumeInfo(
                resume_token=dict(event["_id"]), last_event_ts=at)
            context.save_resume("ddl_pending", "ddl_seen_through",
                                "ddl_change_stream_resume_info")
            log.info("applied a DDL event once every instance reached it", extra={"fields": {
                "operationType": event["operationType"], "clusterTime": str(at)}})
        # A resume token's time bounds what was read from above, not including it: a
        # high-water mark at T sorts before T's own events, which may still come.
        token_reached = token_time(token)
        reached_time = just_before(token_reached) if token_reached is not None else stored_last
        if reached_time is not None and (resume.ddl_seen_through is None
                                         or reached_time > resume.ddl_seen_through):
            resume.ddl_seen_through = reached_time
            fields = ["ddl_seen_through"]
            if token is not None:
                resume.ddl_change_stream_resume_info = ResumeInfo(
                    resume_token=dict(token), last_event_ts=reached_time)
                fields.append("ddl_change_stream_resume_info")
            context.save_resume(*fields)

