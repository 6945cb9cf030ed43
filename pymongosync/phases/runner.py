"""The migration as the composition of its phases, each resumable from what it stored.

    prepare collections → plan partitions → copy → build indexes → apply changes → commit

The runner reads the stored phase, runs it, records the next one (with the time of the
transition) and goes on until the migration is committed or ``stop`` is set. A transient
error (network, election, interrupted operation) runs the same phase again, from what it had
saved, for up to 30 minutes; any other error goes up to the caller, which records it.
"""

from __future__ import annotations

import logging
import time

from pymongo.errors import PyMongoError

from pymongosync.changes.buffer import ChangeBuffer
from pymongosync.instances import DDL_STREAM
from pymongosync.errors import Stopped
from pymongosync.phases.apply import ApplyChanges
from pymongosync.phases.commit import Commit
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.phases.copy import CopyCollections
from pymongosync.phases.indexes import BuildIndexes
from pymongosync.phases.plan import PlanPartitions
from pymongosync.phases.prepare import PrepareCollections
from pymongosync.retry import RETRY_FOR_SECONDS, is_transient
from pymongosync.state import Phase, PhaseTransition
from pymongosync.store import now

log = logging.getLogger("pymongosync.engine")

PIPELINE: tuple[PhaseStep, ...] = (PrepareCollections(), PlanPartitions(), CopyCollections(),
                                   BuildIndexes(), ApplyChanges(), Commit())
STEPS = {step.phase: step for step in PIPELINE}


# While these run, the change buffer receives the source's changes (when it is on).
BUFFERED_PHASES = frozenset({Phase.PREPARE, Phase.PLAN_PARTITIONS, Phase.COPY,
                             Phase.BUILD_INDEXES})


# With one instance per source shard, the coordinator alone prepares the destination and plans
# every instance's partitions; the others wait for the plan (their change buffers receiving).
COORDINATOR_ONLY = frozenset({Phase.PREPARE, Phase.PLAN_PARTITIONS})
PHASE_ORDER = list(Phase)


def _wait_for_the_plan(context: PhaseContext) -> None:
    def planned() -> bool:
        coordinator = context.group.coordinator()
        return coordinator is not None and \
            PHASE_ORDER.index(coordinator.phase) >= PHASE_ORDER.index(Phase.COPY)
    context.wait_for_instances(planned)


def run_phases(context: PhaseContext, steps: dict[Phase, PhaseStep] | None = None) -> None:
    """Run the stored phase and every later one; returns when done or stopped."""
    try:
        _run(context, STEPS if steps is None else steps)
    finally:
        _buffer_while(context, wanted=False)


def _buffer_while(context: PhaseContext, wanted: bool) -> None:
    """Start the change buffer for the phases before change application, stop it after; a
    failure of the buffer is raised here. With one instance per source shard, each buffers
    its shard's stream, and the coordinator the router's DDL events besides."""
    layout = context.layout
    if wanted and context.change_buffer is None:
        context.change_buffer = ChangeBuffer(
            context, context.change_buffer_limit, stream=layout.stream, shard=layout.shard)
        context.change_buffer.start()
        if layout.multi and layout.is_coordinator:
            context.ddl_buffer = ChangeBuffer(context, context.change_buffer_limit,
                                              stream=DDL_STREAM, ddl_only=True)
            context.ddl_buffer.start()
    elif not wanted:
        buffers = [buffer for buffer in (context.change_buffer, context.ddl_buffer)
                   if buffer is not None]
        for buffer in buffers:
            buffer.stop()
        context.change_buffer = context.ddl_buffer = None
        for buffer in buffers:
            if buffer.error is not None:
                raise buffer.error


def _run(context: PhaseContext, steps: dict[Phase, PhaseStep]) -> None:
    transient_since: float | None = None
    while not context.stop.is_set():
        phase = context.resume.phase
        if phase == Phase.DONE:
            return
        _buffer_while(context, wanted=context.global_state.change_buffering
                      and phase in BUFFERED_PHASES)
        try:
            if phase in COORDINATOR_ONLY and not context.layout.is_coordinator:
                _wait_for_the_plan(context)
            else:
                steps[phase].run(context)
        except Stopped:
            return
        except PyMongoError as exc:
            # Every phase resumes from what it stored, so a network error or an election just
            # means running the phase again.
            if not is_transient(exc):
                raise
            transient_since = transient_since or time.monotonic()
            if time.monotonic() - transient_since > RETRY_FOR_SECONDS:
                raise
            log.warning("transient error in %s, retrying: %s", phase.label, exc)
            context.stop.wait(1.0)
            continue
        transient_since = None
        advance(context, phase.next)


def advance(context: PhaseContext, phase: Phase) -> None:
    """Record the move to ``phase`` (with any state change the finished phase made)."""
    resume = context.resume
    resume.phase = phase
    resume.sync_phase = phase.label
    resume.phase_transitions.append(PhaseTransition(phase=phase, ts=now()))
    context.save_resume("phase", "sync_phase", "phase_transitions", "state")
    if phase == Phase.DONE:
        context.notify("Transitioning the state to COMMITTED")
    else:
        context.notify(f"Starting {phase.label} phase")
