"""Adaptive pacing of the copy: how many copy workers copy at once.

``loadLevel`` sets the ceiling; within it, the pace follows what the clusters say, as TCP's
congestion control does (additive increase, multiplicative decrease):

- **slow start**: the copy begins with one worker and doubles the count at each decision while
  the destination keeps up, so a small copy does not pay for workers it cannot use and the
  best write latency (the baseline) is measured before the destination is loaded;
- **destination write latency**: each batch's insert is timed (seconds per document, median of
  the full batches since the last decision). At ``LATENCY_BACKOFF_FACTOR`` times the baseline,
  the destination is queueing: a quarter of the workers (at least one) stop. Below
  ``LATENCY_GROW_FACTOR`` times it, one more worker may start;
- **change lag**: while the copy runs, the change buffer stores the source's changes on the
  destination; when it falls ``LAG_BACKOFF_SECONDS`` behind the source, the copy is taking
  the destination (or this host) from it, and half the workers stop: a copy that outruns the
  buffer only moves the risk to the source's oplog. Workers are added again only under
  ``LAG_GROW_SECONDS``.

The baseline is the lowest latency seen, drifting up by ``BASELINE_DRIFT`` per decision so that
a change of data (larger documents) is learnt rather than mistaken for load for ever.

:func:`decide_pace` is the policy, a pure function of the figures; :class:`Pacer` gathers the
figures and asks it once per ``PACE_EVERY_SECONDS``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

PACE_EVERY_SECONDS = 1.0
LATENCY_BACKOFF_FACTOR = 2.0
LATENCY_GROW_FACTOR = 1.5
LAG_BACKOFF_SECONDS = 30.0
LAG_GROW_SECONDS = 15.0
BASELINE_DRIFT = 1.02


@dataclass(frozen=True)
class PaceReading:
    """The figures of one decision; None where there is nothing to tell (no full batch was
    inserted since the last decision; no change buffer)."""

    latency: float | None  # seconds per document of the destination's inserts
    change_lag: float | None  # seconds the change buffer is behind the source


@dataclass(frozen=True)
class PaceState:
    workers: int
    baseline: float | None = None  # seconds per document: the best latency seen (drifting)
    slow_start: bool = True


@dataclass(frozen=True)
class PaceDecision:
    state: PaceState
    reason: str | None  # why the worker count changed; None when it did not


def _microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def decide_pace(state: PaceState, reading: PaceReading, ceiling: int) -> PaceDecision:
    """The next number of copy workers (1 to ``ceiling``), and why it changed."""
    workers = max(1, min(state.workers, ceiling))
    baseline = None if state.baseline is None else state.baseline * BASELINE_DRIFT
    latency, lag = reading.latency, reading.change_lag
    learnt = baseline if latency is None else latency if baseline is None else \
        min(baseline, latency)
    after = replace(state, workers=workers, baseline=learnt)

    if lag is not None and lag >= LAG_BACKOFF_SECONDS:
        fewer = max(1, workers // 2)
        reason = (f"the change buffer is {lag:.0f} s behind the source (at least "
                  f"{LAG_BACKOFF_SECONDS:.0f} s): fewer copy workers leave it the destination")
        return _changed(after, fewer, reason, slow_start=False)
    if latency is not None and baseline is not None and \
            latency >= LATENCY_BACKOFF_FACTOR * baseline:
        fewer = max(1, workers - max(1, workers // 4))
        reason = (f"destination write latency rose to {_microseconds(latency)} per document, "
                  f"{latency / baseline:.1f} times the best seen ({_microseconds(baseline)})")
        return _changed(after, fewer, reason, slow_start=False)
    lag_low = lag is None or lag < LAG_GROW_SECONDS
    latency_low = latency is not None and (baseline is None or
                                           latency < LATENCY_GROW_FACTOR * baseline)
    if workers < ceiling and lag_low and latency_low:
        assert latency is not None
        more = min(ceiling, workers * 2 if state.slow_start else workers + 1)
        reason = (f"destination write latency {_microseconds(latency)} per document"
                  + ("" if lag is None else f", change lag {lag:.0f} s")
                  + f": room for more copy workers (loadLevel allows {ceiling})")
        return _changed(after, more, reason, slow_start=state.slow_start)
    if workers != state.workers:
        return PaceDecision(after, f"loadLevel allows {ceiling} copy workers")
    return PaceDecision(after, None)


def _changed(state: PaceState, workers: int, reason: str, *, slow_start: bool) -> PaceDecision:
    changed = workers != state.workers
    return PaceDecision(replace(state, workers=workers, slow_start=slow_start),
                        reason if changed else None)


@dataclass
class Pacer:
    """Collects insert latencies between decisions and applies :func:`decide_pace`."""

    ceiling: int
    clock: Callable[[], float] = time.monotonic
    state: PaceState = field(default_factory=lambda: PaceState(workers=1))
    _latencies: list[float] = field(default_factory=list)
    _last_decision: float | None = None

    def __post_init__(self) -> None:
        self.state = replace(self.state, workers=max(1, min(self.state.workers, self.ceiling)))
        self._last_decision = self.clock()

    @property
    def workers(self) -> int:
        return self.state.workers

    def observe(self, documents: int, seconds: float, *, full: bool) -> None:
        """One inserted batch. Only full batches count: a partition's short last batch costs
        its round trip more than its documents, which would read as latency."""
        if full and documents > 0:
            self._latencies.append(seconds / documents)

    def due(self) -> bool:
        return self._last_decision is None or \
            self.clock() - self._last_decision >= PACE_EVERY_SECONDS

    def decide(self, change_lag: float | None) -> PaceDecision:
        latency = statistics.median(self._latencies) if self._latencies else None
        self._latencies.clear()
        self._last_decision = self.clock()
        decision = decide_pace(self.state, PaceReading(latency=latency, change_lag=change_lag),
                               self.ceiling)
        self.state = decision.state
        return decision
