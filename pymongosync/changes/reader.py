"""Reading the source's change stream in batches, one batch ahead of the applier.

One cluster-wide stream with expanded (DDL) events, opened on a client that decodes to
``RawBSONDocument`` so documents reach the destination byte for byte. A reader thread fills a
small queue of ``(events, resume token)`` batches while the applying thread writes the
previous one, so the two round trips overlap. A batch is handed over when it is full or when
its oldest event has waited long enough, so a trickle of writes is never held back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from pymongosync.cluster_client import ClusterClient
from pymongosync.durations import OperationDurations, OperationKind
from pymongosync.errors import ChangeStreamHistoryLost
from pymongosync.namespaces import NamespaceFilter
from pymongosync.retry import is_transient, retrying

CRUD = frozenset({"insert", "update", "replace", "delete"})
BATCH_EVENTS = 1000
READ_AHEAD = 4  # batches read while one is being applied
MAX_BATCH_AGE_SECONDS = 0.25
HISTORY_LOST = 286  # ChangeStreamHistoryLost: the resume point has left the source's oplog
RESUME_AFTER_SECONDS = 0.5  # the wait before a stream interrupted by a transient error resumes


def raise_unless_resumable(exc: PyMongoError, needed: str, cause: str = "") -> None:
    """Return when a change stream interrupted by ``exc`` may resume from its token (a
    transient error). Raise :class:`ChangeStreamHistoryLost` when the source's oplog no longer
    holds the ``needed`` events (``cause``: why, where known), and ``exc`` itself for any other
    error: resuming cannot mend it."""
    if isinstance(exc, OperationFailure) and exc.code == HISTORY_LOST:
        raise ChangeStreamHistoryLost(
            f"the source oplog no longer holds the {needed} this migration still needs "
            f"(ChangeStreamHistoryLost){cause}; the migration must be restarted from scratch "
            "with a larger source oplog") from None
    if not is_transient(exc):
        raise exc


@dataclass
class EventBatch:
    events: list[RawBSONDocument]
    resume_token: Mapping[str, Any] | None


def token_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time a resume token encodes (its KeyString starts with the Timestamp)."""
    data = token.get("_data") if token is not None else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


@contextmanager
def read_batches(source: ClusterClient, stop: threading.Event, *,
                 resume_after: Mapping[str, Any] | None, start_at: Timestamp | None,
                 max_await_ms: int = 250, shard: str | None = None,
                 poll_interval: float = 0.0,
                 durations: OperationDurations | None = None) -> Iterator[Iterator[EventBatch]]:
    """Batches of events from the resume point; the reader thread ends with the context.
    ``shard``: one shard's stream of a sharded cluster (one instance per source shard).
    ``poll_interval``: while a batch gathers, how long to wait after reading all the server
    had before asking it again. A server answers a getMore as soon as it has one event, so
    under a trickle of writes each getMore brings one or two: for a reader that can wait
    (the change buffer), waiting lets them gather into fewer round trips.
    ``durations``: where change application's reads are timed (one per round trip).

    An error of the stream (e.g. ChangeStreamHistoryLost) is raised from the iterator, after
    every batch read before it.
    """
    stream = retrying(lambda: source.watch(resume_after=resume_after, start_at=start_at,
                                           batch_size=BATCH_EVENTS, max_await_ms=max_await_ms,
                                           shard=shard))
    batches: queue.Queue[EventBatch | None] = queue.Queue(maxsize=READ_AHEAD)
    finished = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            buffer: list[RawBSONDocument] = []
            oldest = 0.0
            while not stop.is_set() and not finished.is_set():
                # As many as the batch lacks: a server batch is taken in one call, not per event;
                # timed when it is a round trip (nothing received is left to hand out).
                with durations.timing(OperationKind.CEA_SOURCE_READ) \
                        if durations is not None and not stream.buffered else nullcontext():
                    events = stream.next_events(BATCH_EVENTS - len(buffer))
                if events:
                    if not buffer:
                        oldest = time.monotonic()
                    buffer.extend(events)
                    age = time.monotonic() - oldest
                    if len(buffer) < BATCH_EVENTS and age < MAX_BATCH_AGE_SECONDS:
                        if poll_interval and not stream.buffered:
                            stop.wait(min(poll_interval, MAX_BATCH_AGE_SECONDS - age))
                        continue
                _put(batches, EventBatch(buffer, stream.resume_token), finished)
                buffer = []
        except BaseException as exc:  # noqa: BLE001 - handed to the applying thread
            failure.append(exc)
        finally:
            stream.close()
            _put(batches, None, finished)

    def batches_until_end() -> Iterator[EventBatch]:
        while True:
            item = batches.get()
            if item is None:
                break
            yield item
        if failure:
            raise failure[0]

    reader = threading.Thread(target=read, name="change-stream-reader", daemon=True)
    reader.start()
    try:
        yield batches_until_end()
    finally:
        finished.set()
        while reader.is_alive():
            try:
                batches.get(timeout=0.05)
            except queue.Empty:
                pass


def events_between(source: ClusterClient, stop: threading.Event, after: Timestamp,
                   until: Timestamp) -> Iterator[RawBSONDocument]:
    """Every event with a cluster time after ``after`` and up to ``until``."""
    # A short wait when idle: this reads up to a known time, which the stream soon passes.
    with read_batches(source, stop, resume_after=None, start_at=after,
                      max_await_ms=50) as batches:
        for batch in batches:
            for event in batch.events:
                if event["clusterTime"] > until:
                    return
                if event["clusterTime"] > after:
                    yield event
            reached = token_time(batch.resume_token)
            if reached is not None and reached >= until:
                return


@dataclass
class Change:
    """A change a cluster had, summed up: when, what kind, where."""

    time: Timestamp
    crud: bool
    namespace: str


def changes_after(cluster: ClusterClient, stop: threading.Event,
                  namespace_filter: NamespaceFilter, after: Timestamp,
                  crud_only: bool = False) -> list[Change]:
    """The changes within the migration's namespaces since ``after``, up to now."""
    found: list[Change] = []
    for event in events_between(cluster, stop, after=after, until=cluster.cluster_time()):
        crud = event["operationType"] in CRUD
        ns: Mapping[str, Any] = event.get("ns") or {}
        db, coll = ns.get("db"), ns.get("coll")
        if (crud_only and not crud) or not isinstance(db, str):
            continue
        inside = namespace_filter.includes(db, coll) if isinstance(coll, str) else \
            namespace_filter.includes_database(db)
        if inside:
            found.append(Change(event["clusterTime"], crud,
                                db + ("." + coll if isinstance(coll, str) else "")))
    return found


def summarize_changes(changes: list[Change]) -> str:
    """``3 writes to app.items, 1 DDL change to app``."""
    counts = Counter(f"{'writes' if change.crud else 'DDL changes'} to {change.namespace}"
                     for change in changes)
    return ", ".join(f"{count} {what}" for what, count in sorted(counts.items()))


def _put(batches: queue.Queue[EventBatch | None], item: EventBatch | None,
         finished: threading.Event) -> None:
    """Hand a batch over unless the applying side has stopped listening."""
    while not finished.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
