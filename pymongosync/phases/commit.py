"""Phase 6, commit: the cutover of spec §10.2. Every step is safe to repeat after a crash.

1. Source writes are blocked (``sourceAndDestination``), recorded before it is done.
2. The commit time is taken from the source and stored: the persisted end position.
3. Every change up to it is applied; then the hot documents (``--hotDocIDs``), whose events
   were skipped, are taken as the source has them.
4. The destination gets the source's final options back (unique indexes to ``prepareUnique``),
   its writes are unblocked and ``canWrite`` is recorded with the destination's time.
5. Unique indexes are enforced; balancers this migration stopped are started again
   (not for a reversible migration, which may still go the other way).

With one instance per source shard it is a barrier (:mod:`pymongosync.instances`): the
coordinator blocks the source once every instance has been asked to commit, and stores the
commit time; every instance applies its shard's changes up to it and says so
(``commit_drained``); the coordinator does steps 4 and 5 once all have, and the others report
COMMITTED after it.
"""

from __future__ import annotations

from bson.timestamp import Timestamp

from pymongosync import catalog
from pymongosync.changes.reader import Change, changes_after, summarize_changes
from pymongosync.durations import OperationKind
from pymongosync.errors import SourceModifiedDuringCommit, Stopped
from pymongosync.phases.apply import ChangeApplier, ddl_coordinator
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.phases.indexes import finish_builds
from pymongosync.retry import retrying
from pymongosync.state import MigrationState, Phase


def refuse_late_source_writes(context: PhaseContext, commit_time: Timestamp,
                              changes: list[Change] | None = None) -> None:
    """Fail rather than cut over when the source changed after the commit time: those changes
    are not on the destination. With a namespace filter the source is not write-blocked
    (``destinationOnly``), so an application that kept writing would otherwise lose them."""
    if changes is None:
        changes = changes_after(context.source, context.stop, context.namespace_filter,
                                after=commit_time)
    context.check_stop()
    if changes:
        raise SourceModifiedDuringCommit(
            f"source cluster was modified after commit began ({summarize_changes(changes)}): "
            f"these changes are not on the destination, which stays write-blocked. Stop every "
            f"application writing to the source before /commit; then run `mongosync reset` and "
            f"migrate again")


class Commit(PhaseStep):
    phase = Phase.COMMIT

    def run(self, context: PhaseContext) -> None:
        layout = context.layout
        if layout.multi and not layout.is_coordinator:
            self._follow_the_coordinator(context)
            return
        ddl = ddl_coordinator(context)
        try:
            self._commit(context)
        finally:
            if ddl is not None:
                ddl.stop(timeout=10.0)  # raises what failed it

    def _commit(self, context: PhaseContext) -> None:
        state, resume, request = context.global_state, context.resume, context.request
        layout, group = context.layout, context.group
        finish_builds(context)  # before the source is blocked: its applications wait less
        if layout.multi and resume.commit_time is None:
            context.notify("waiting for /commit on every instance")
            context.wait_for_instances(group.commit_requested_by_all)
        if request.write_blocking_mode == "sourceAndDestination":
            if context.block_user_writes("source"):
                context.notify("blocked writes on the source")
        if resume.commit_time is None:
            resume.commit_time = context.source.cluster_time()
            context.save_resume("commit_time")
        if not ChangeApplier(context).run(until=resume.commit_time):
            raise Stopped()  # the next process continues the commit
        if layout.multi and not resume.can_write:
            _drained(context)
            context.wait_for_instances(group.drained_by_all)
        if not resume.can_write:
            take_hot_documents(context)
            if context.verifier is not None:
                context.verifier.final_documents(resume.commit_time)
            resume.pending_unique = catalog.restore_final_options(
                context.source, context.destination, context.namespace_filter,
                request.buildIndexes, built={record.id: record.uuid
                                             for record in context.store.namespaces()})
            context.save_resume("pending_unique")
            if context.verifier is not None:
                # With the late source changes, told apart by when they came.
                context.verifier.final_metadata(resume.pending_unique, resume.commit_time)
            else:
                refuse_late_source_writes(context, resume.commit_time)
            if state.destination_write_blocked_by_us:
                context.destination.set_write_block(False)
                state.destination_write_blocked_by_us = False
                context.save_global("destination_write_blocked_by_us")
            resume.can_write = True
            resume.can_write_time = context.destination.cluster_time()
            context.save_resume("can_write", "can_write_time")
            context.notify("destination writes are allowed (canWrite)")
        catalog.enforce_unique(context.destination, resume.pending_unique)
        if not request.reversible:
            for role, cluster in (("source", context.source),
                                  ("destination", context.destination)):
                if state.balancers_stopped_by_us.get(role):
                    cluster.set_balancer(True)
                    state.balancers_stopped_by_us[role] = False
                    context.save_global("balancers_stopped_by_us")
        # Persisted with the move to the next phase, in the same write.
        resume.state = MigrationState.COMMITTED

    @staticmethod
    def _follow_the_coordinator(context: PhaseContext) -> None:
        """An instance other than the coordinator: its shard's changes up to the coordinator's
        commit time, then COMMITTED once the coordinator is."""
        resume, group = context.resume, context.group

        def commit_time() -> Timestamp | None:
            coordinator = group.coordinator()
            return None if coordinator is None else coordinator.commit_time

        if resume.commit_time is None:
            context.wait_for_instances(lambda: commit_time() is not None)
            resume.commit_time = commit_time()
            context.save_resume("commit_time")
        assert resume.commit_time is not None
        if not ChangeApplier(context).run(until=resume.commit_time):
            raise Stopped()
        _drained(context)

        def committed() -> bool:
            coordinator = group.coordinator()
            return coordinator is not None and coordinator.state == MigrationState.COMMITTED

        context.wait_for_instances(committed)
        coordinator = group.coordinator()
        assert coordinator is not None
        resume.can_write, resume.can_write_time = coordinator.can_write, coordinator.can_write_time
        context.save_resume("can_write", "can_write_time")
        resume.state = MigrationState.COMMITTED  # stored with the move to the next phase


def take_hot_documents(context: PhaseContext) -> None:
    """Every hot document (of every instance), as the source has it now that every change up
    to the commit time is applied: their own events were skipped (changes/hot_documents.py).
    Safe to repeat."""
    with context.counters.durations.timing(OperationKind.HOT_DOC_STATES_READ):
        hot = context.all_hot_documents()
    if not hot:
        return
    writer = context.change_writer()
    taken = 0
    for db, coll in sorted(hot.namespaces):
        if not context.namespace_filter.includes(db, coll):
            continue
        context.check_stop()
        if not retrying(lambda: context.source.collection_infos(db, coll)):
            # Dropped or renamed away on the source, and so here: the rename took it first.
            continue
        for document in hot.in_namespace(db, coll):
            writer.refetch(db, coll, document.key, hot=True)
            taken += 1
    context.notify(f"took {taken} hot documents (--hotDocIDs) as the source has them")


def _drained(context: PhaseContext) -> None:
    if not context.resume.commit_drained:
        context.resume.commit_drained = True
        context.save_resume("commit_drained")
