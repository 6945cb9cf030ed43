"""The copy's pacing policy as a pure function (latency and lag readings → worker count), the
pacer that feeds it, and the figure /progress shows."""

from __future__ import annotations

import pytest

from pymongosync.phases import pacing
from pymongosync.phases.pacing import PaceReading, PaceState, Pacer, decide_pace
from pymongosync.progress import render
from pymongosync.state import Phase
from tests.unit.test_progress import view

FAST = 10e-6  # seconds per document


def reading(latency: float | None = FAST, lag: float | None = 0.0) -> PaceReading:
    return PaceReading(latency=latency, change_lag=lag)


def test_slow_start_doubles_up_to_the_ceiling_while_the_destination_keeps_up() -> None:
    state = PaceState(workers=1)
    counts = []
    for _ in range(5):
        decision = decide_pace(state, reading(), ceiling=8)
        state = decision.state
        counts.append(state.workers)
    assert counts == [2, 4, 8, 8, 8]
    held = decide_pace(state, reading(), ceiling=8)
    assert held.reason is None and held.state.workers == 8


def test_a_climbing_write_latency_takes_workers_away() -> None:
    state = PaceState(workers=8, baseline=FAST, slow_start=True)
    decision = decide_pace(state, reading(latency=3 * FAST), ceiling=8)
    assert decision.state.workers == 6  # a quarter fewer
    assert decision.reason is not None and "write latency" in decision.reason
    assert decision.state.slow_start is False
    assert decision.state.baseline == pytest.approx(FAST * pacing.BASELINE_DRIFT)
    # From one worker there is nothing left to take.
    floor = decide_pace(PaceState(workers=1, baseline=FAST), reading(latency=5 * FAST), 8)
    assert floor.state.workers == 1 and floor.reason is None


def test_after_a_back_off_workers_come_back_one_at_a_time() -> None:
    state = PaceState(workers=3, baseline=FAST, slow_start=False)
    decision = decide_pace(state, reading(latency=FAST), ceiling=8)
    assert decision.state.workers == 4 and decision.reason is not None


def test_latency_between_the_thresholds_holds_the_pace() -> None:
    between = FAST * (pacing.LATENCY_GROW_FACTOR + pacing.LATENCY_BACKOFF_FACTOR) / 2
    decision = decide_pace(PaceState(workers=4, baseline=FAST), reading(latency=between), 8)
    assert decision.state.workers == 4 and decision.reason is None


def test_change_lag_halves_the_workers_and_blocks_growth() -> None:
    lagging = decide_pace(PaceState(workers=8, baseline=FAST), reading(lag=45.0), ceiling=8)
    assert lagging.state.workers == 4
    assert lagging.reason is not None and "45 s behind" in lagging.reason
    # Between the two thresholds: no more workers, even with a fast destination.
    middle = (pacing.LAG_GROW_SECONDS + pacing.LAG_BACKOFF_SECONDS) / 2
    held = decide_pace(PaceState(workers=4, baseline=FAST, slow_start=False),
                       reading(lag=middle), ceiling=8)
    assert held.state.workers == 4 and held.reason is None
    # The lag wins over a fast destination.
    both = decide_pace(PaceState(workers=2, baseline=FAST), reading(latency=FAST / 2, lag=60),
                       ceiling=8)
    assert both.state.workers == 1


def test_without_a_reading_the_pace_holds() -> None:
    decision = decide_pace(PaceState(workers=2), reading(latency=None, lag=None), ceiling=8)
    assert decision.state.workers == 2 and decision.reason is None
    # No change buffer (lag None) does not stop growth when the destination keeps up.
    grows = decide_pace(PaceState(workers=2), reading(lag=None), ceiling=8)
    assert grows.state.workers == 4


def test_load_level_is_the_ceiling() -> None:
    decision = decide_pace(PaceState(workers=8), reading(), ceiling=4)
    assert decision.state.workers == 4 and decision.reason == "loadLevel allows 4 copy workers"
    assert decide_pace(PaceState(workers=3, slow_start=True), reading(), 4).state.workers == 4


def test_the_baseline_is_the_best_latency_seen_drifting_up() -> None:
    first = decide_pace(PaceState(workers=1), reading(latency=2 * FAST), 8)
    assert first.state.baseline == 2 * FAST
    better = decide_pace(first.state, reading(latency=FAST), 8)
    assert better.state.baseline == FAST
    unknown = decide_pace(better.state, reading(latency=None), 8)
    assert unknown.state.baseline == pytest.approx(FAST * pacing.BASELINE_DRIFT)


def test_the_pacer_decides_on_the_median_of_full_batches() -> None:
    now = [100.0]
    pacer = Pacer(ceiling=8, clock=lambda: now[0])
    assert pacer.workers == 1 and not pacer.due()
    pacer.observe(1000, 1000 * FAST, full=True)
    pacer.observe(1000, 1200 * FAST, full=True)
    pacer.observe(1000, 900 * FAST, full=True)
    pacer.observe(3, 100 * FAST, full=False)  # a partition's short tail: not a latency
    now[0] += pacing.PACE_EVERY_SECONDS
    assert pacer.due()
    decision = pacer.decide(change_lag=None)
    assert decision.state.baseline == pytest.approx(FAST)  # the median of the full three
    assert pacer.workers == 2 and not pacer.due()
    now[0] += pacing.PACE_EVERY_SECONDS
    assert pacer.decide(change_lag=None).reason is None  # nothing inserted: hold
    assert pacer.workers == 2


def test_progress_shows_the_active_copy_workers() -> None:
    assert render(view(phase=Phase.COPY, active_copy_workers=3))["copyDetails"][
        "activeWorkers"] == 3
    assert render(view(phase=Phase.APPLY_CHANGES))["copyDetails"]["activeWorkers"] == 0
