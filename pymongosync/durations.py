"""How long the migration's operations on the clusters take, by kind.

Two readers, as mongosync has them (spec §5.3, §18.1):

- ``/metrics`` (and the metrics log): one histogram per kind, named as mongosync's
  (``mongosync_cea_destination_write_op_duration``...), in seconds, since the process started;
- the ``Operation duration stats`` log line: for the four kinds MongoDB's Mongosync Insights
  plots (``CollectionCopySourceRead``, ``CollectionCopyDestinationWrite``, ``CEASourceRead``,
  ``CEADestinationWrite``), the average, the maximum (ms) and the number of operations since
  the previous line.

What one operation is: one batch read or written by a copy worker; one ``getMore`` of the
source's change stream (which, on an idle stream, includes the server's wait for new events,
up to ``maxAwaitTimeMS``); one bulk write of change application; and at commit, the read of the
stored ``--hotDocIDs``, and each hot document's read from the source and write to the
destination. Recording one costs a lock and a few additions; it is done per batch or per bulk
write, never per document.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# Upper bounds (seconds) of the histograms' buckets: from a local round trip to a retried write.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperationKind(Enum):
    """A kind of operation: its metric's name, its key in ``Operation duration stats`` (None:
    not logged there) and what one operation is."""

    COPY_SOURCE_READ = ("mongosync_collection_copy_source_read_op_duration",
                        "CollectionCopySourceRead", "a batch of a partition read from the source")
    COPY_DESTINATION_WRITE = ("mongosync_collection_copy_destination_write_op_duration",
                              "CollectionCopyDestinationWrite",
                              "a batch of a partition inserted on the destination")
    CEA_SOURCE_READ = ("mongosync_cea_source_read_op_duration", "CEASourceRead",
                       "a getMore of the source's change stream (waiting for events when idle)")
    CEA_DESTINATION_WRITE = ("mongosync_cea_destination_write_op_duration",
                             "CEADestinationWrite",
                             "a bulk write of change events applied on the destination")
    HOT_DOC_STATES_READ = ("mongosync_hot_doc_states_read_op_duration", None,
                           "the read of the stored --hotDocIDs at commit")
    HOT_DOC_REFETCH = ("mongosync_hot_doc_refetch_op_duration", None,
                       "a hot document read from the source at commit")
    HOT_DOC_APPLY = ("mongosync_hot_doc_apply_op_duration", None,
                     "a hot document replaced or deleted on the destination at commit")

    def __init__(self, metric: str, logged_as: str | None, one: str) -> None:
        self.metric = metric
        self.logged_as = logged_as
        self.one = one


@dataclass
class Histogram:
    """Durations of one kind: per bucket (non-cumulative, the last one past every bound)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(le, operations at most that long)``, ending with ``+Inf``."""
        buckets, seen = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            seen += count
            buckets.append((bound, seen))
        return buckets


@dataclass
class _Window:
    """Durations of one kind since the last ``Operation duration stats`` line."""

    count: int = 0
    total: float = 0.0
    maximum: float = 0.0


class OperationDurations:
    """The durations recorded in this process (thread-safe: lanes and readers record)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._histograms = {operation: Histogram() for operation in OperationKind}
        self._windows = {operation: _Window() for operation in OperationKind}

    def record(self, operation: OperationKind, seconds: float) -> None:
        bucket = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            histogram = self._histograms[operation]
            histogram.counts[bucket] += 1
            histogram.total += seconds
            if operation.logged_as is None:
                return
            window = self._windows[operation]
            window.count += 1
            window.total += seconds
            window.maximum = max(window.maximum, seconds)

    @contextmanager
    def timing(self, operation: OperationKind) -> Iterator[None]:
        """Record how long the body takes (also when it raises: a failed try took that long)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(operation, time.perf_counter() - started)

    def histogram(self, operation: OperationKind) -> Histogram:
        with self._lock:
            recorded = self._histograms[operation]
            return Histogram(list(recorded.counts), recorded.total)

    def take_recent(self) -> dict[str, dict[str, Any]]:
        """The logged kinds' figures since the last call (kinds without operations left
        out), as ``Operation duration stats`` carries them; the next call starts afresh."""
        stats: dict[str, dict[str, Any]] = {}
        with self._lock:
            for operation, window in self._windows.items():
                if operation.logged_as is None or not window.count:
                    continue
                stats[operation.logged_as] = {
                    "averageDurationMs": round(window.total / window.count * 1000, 3),
                    "maximumDurationMs": round(window.maximum * 1000, 3),
                    "numOperations": window.count}
                self._windows[operation] = _Window()
        return stats
