"""Change application in parallel: lanes that each apply their share of every step, in order.

Each lane is a thread with a queue. A step's writes are split by document (the lane is chosen
from the document's ``_id`` as the server compares them, :mod:`pymongosync.changes.translate`),
so every document's writes go through one lane in the source's order, and lanes never wait
for one another except at barriers: a DDL event, or a transaction whose writes span lanes, is
applied once every lane has applied everything before it (:meth:`ApplierLanes.wait_idle`).

Checkpoints never pass an unapplied event, whichever lane finishes first: after the steps of a
batch, a :class:`Marker` is queued on every lane; it is reached once every lane has applied
everything queued before it, which is the oldest position still unapplied by some lane (a low
watermark). Markers are reached in the order they were queued, so the checkpoint of the newest
reached one covers every batch before it. A lane that fails stops where it is: no marker after
its failed write is ever reached, and the error is raised to the caller at its next call.

**Threads, not processes**, by measurement (``bench/apply_scaling.py`` and the per-thread CPU
of the engine draining a 40,000-event backlog into a ``--discard-writes`` destination, on 2
cores): of about 12 µs of engine CPU per event, the lane threads spend about 2.3 µs (building
the write commands, sending them, reading the replies); reading the change stream (1.5 µs) and
decoding, routing and collapsing the events (7.8 µs) stay in one thread whatever the lanes are,
since routing needs each event's ``documentKey``. A process pool could only take over the
lanes' share (at most about 1.2× with one core per worker), unless workers decoded the events
again, which costs the 3 µs per event decoding takes, on top of passing every event's bytes
through a pipe. What lanes buy is concurrency with the destination: each write command waits
for a server round trip (``w: majority``), during which its thread holds no GIL, so N lanes keep
N commands in flight while the engine's one core keeps translating; against a destination
that answers slower than the engine computes — every real one under load — that is where the
throughput comes from. One engine process is thus bounded near 1 / (12 µs) ≈ 80,000 events/s
of its own CPU; going past that takes processes that each read their own stream (one instance
per source shard, as mongosync runs). The copy phase, whose per-document work is all in the
workers, uses processes (``phases/copy.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from pymongosync.changes.events import DECODED
from pymongosync.changes.translate import CrudStep, LaneWrites, Namespace

log = logging.getLogger("pymongosync.changes")

# A lane's writes for one step: which namespaces, and the UUID of each one's collection.
ApplyLane = Callable[[LaneWrites, dict[Namespace, Any]], None]


@dataclass
class Marker:
    """A point in the lanes' queues; reached once every lane has applied all before it."""

    lanes_to_pass: int
    payload: Any = None  # what the caller does once it is reached (e.g. a checkpoint)
    passed: int = field(default=0, init=False)  # lanes past it (counted under the lanes' lock)

    @property
    def reached(self) -> bool:
        return self.passed >= self.lanes_to_pass


_STOP = object()  # tells a lane thread to end


class ApplierLanes:
    """``count`` lanes applying steps with ``apply`` (called in the lane's own thread)."""

    def __init__(self, count: int, apply: ApplyLane, name: str = "change-applier") -> None:
        self.count = count
        self._apply = apply
        self._queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(count)]
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(number,),
                                          name=f"{name}-{number}", daemon=True)
                         for number in range(count)]
        for thread in self._threads:
            thread.start()

    # -- the caller's side ---------------------------------------------------------------------
    def submit(self, step: CrudStep) -> None:
        """Queue each lane's share of ``step`` (lanes without writes get nothing)."""
        self.raise_failure()
        for number, writes in enumerate(step.lanes):
            if writes:
                self._queues[number].put((writes, step.collection_uuids))

    def mark(self, payload: Any = None) -> Marker:
        """A marker after everything submitted so far."""
        marker = Marker(self.count, payload)
        for lane in self._queues:
            lane.put(marker)
        return marker

    def wait_until(self, marker: Marker, stop: threading.Event | None = None) -> bool:
        """Wait until ``marker`` is reached (True), or ``stop`` is set (False)."""
        with self._changed:
            while not marker.reached:
                self._raise_failure_locked()
                if stop is not None and stop.is_set():
                    return False
                self._changed.wait(0.1)
        return True

    def wait_idle(self) -> None:
        """Wait until every lane has applied everything submitted (a barrier)."""
        self.wait_until(self.mark())

    def raise_failure(self) -> None:
        with self._changed:
            self._raise_failure_locked()

    def close(self) -> None:
        """End the lane threads; what is still queued is dropped (it was never checkpointed)."""
        self._closing.set()
        for lane in self._queues:
            lane.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
            if thread.is_alive():  # a write that does not return: its thread is a daemon
                log.warning("%s did not end within 30 s; left behind", thread.name)

    def _raise_failure_locked(self) -> None:
        if self._error is not None:
            raise self._error

    # -- a lane's side -------------------------------------------------------------------------
    def _run(self, number: int) -> None:
        lane = self._queues[number]
        while True:
            item = lane.get()
            if item is _STOP or self._closing.is_set():
                return
            if isinstance(item, Marker):
                with self._changed:
                    item.passed += 1
                    self._changed.notify_all()
                continue
            try:
                writes, collection_uuids = item
                self._apply(writes, collection_uuids)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller; the lane stops
                with self._changed:
                    if self._error is None:
                        self._error = exc
                    self._changed.notify_all()
                # A failed lane passes no marker again: no checkpoint goes past its failure.
                return


# -- how evenly the lanes share the work -----------------------------------------------------

LOW_PARALLELISM_TEXT = "The level of CEA parallelization for this collection is low"


class LaneBalance:
    """Watches how the steps' writes spread over the lanes, and warns as mongosync does (spec
    §5.3) when one lane does most of them because of a few documents: their writes go through
    one lane in order, and the others wait for it at each checkpoint. ``--hotDocIDs`` names
    such documents, so that their events are skipped and they are taken at commit.

    Over each window of ``window_writes`` writes: when one lane had more than ``share`` of them,
    the document with most writes in the steps where that lane led is named, at most once per
    ``every_seconds`` per collection. Costs a sum per lane per step; the per-document count
    runs only for a step one lane leads.
    """

    def __init__(self, lanes: int, window_writes: int = 5000, share: float = 0.5,
                 every_seconds: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lanes = lanes
        self.window_writes = window_writes
        self.share = share
        self.every_seconds = every_seconds
        self.clock = clock
        self._per_lane = [0] * lanes
        self._documents: Counter[tuple[Namespace, bytes]] = Counter()
        self._warned: dict[Namespace, float] = {}  # when each collection was last named

    def add(self, step: CrudStep) -> None:
        if self.lanes < 2:
            return  # one lane: nothing runs beside it to wait
        sizes = [sum(map(len, writes.values())) for writes in step.lanes]
        total = sum(sizes)
        if not total:
            return
        for number, size in enumerate(sizes):
            self._per_lane[number] += size
        busiest = max(range(self.lanes), key=sizes.__getitem__)
        if sizes[busiest] > total * self.share:
            for namespace, operations in step.lanes[busiest].items():
                for operation in operations:
                    key = operation.key
                    raw = key.raw if isinstance(key, RawBSONDocument) else bson.encode(key)
                    self._documents[(namespace, bytes(raw))] += 1
        if sum(self._per_lane) >= self.window_writes:
            self._conclude()

    def _conclude(self) -> None:
        total, busiest = sum(self._per_lane), max(self._per_lane)
        documents = self._documents
        self._per_lane, self._documents = [0] * self.lanes, Counter()
        if busiest <= total * self.share or not documents:
            return
        (namespace, key), writes = documents.most_common(1)[0]
        now = self.clock()
        last = self._warned.get(namespace)
        if last is not None and now - last < self.every_seconds:
            return
        self._warned[namespace] = now
        document_key = bson.decode(key, DECODED)  # a date before year 1 too
        log.warning(f"{LOW_PARALLELISM_TEXT}: one of {self.lanes} applier lanes had "
                    f"{busiest} of the last {total} writes, {writes} of them to one document "
                    f"of {namespace[0]}.{namespace[1]} ({document_key}). If a few documents are "
                    f"updated this often, name them with --hotDocIDs: their change events are "
                    f"then skipped and each is taken from the source at commit",
                    extra={"fields": {"namespace": f"{namespace[0]}.{namespace[1]}",
                                      "documentKey": str(document_key), "writes": writes,
                                      "busiestLaneWrites": busiest, "windowWrites": total}})
