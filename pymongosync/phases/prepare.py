"""Phase 1, initializing collections and indexes: the destination takes the source's shape.

Destination writes are blocked (unless the request says not to), balancers the migration needs
stopped are stopped and remembered, every included source collection and view is recorded in
the store and created on the destination with its temporary options (spec §6–§7), sharded like
the source or as ``shardingEntries`` ask, and with ``beforeDataCopy`` its indexes are built now.
Every step checks what is stored or present first, so running the phase again is harmless.
"""

from __future__ import annotations

from bson.timestamp import Timestamp

from pymongosync import catalog
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.state import NamespaceKind, Phase


class PrepareCollections(PhaseStep):
    phase = Phase.PREPARE

    def run(self, context: PhaseContext) -> None:
        self._block_destination_writes(context)
        self._stop_balancers(context)
        self._create_namespaces(context)

    def _block_destination_writes(self, context: PhaseContext) -> None:
        state = context.global_state
        if context.request.write_blocking_mode != "none" and \
                not state.destination_write_blocked_by_us:
            # Recorded before it is done: a crash in between leaves something reset can undo.
            state.destination_write_blocked_by_us = True
            context.save_global("destination_write_blocked_by_us")
            context.destination.set_write_block(True)

    def _stop_balancers(self, context: PhaseContext) -> None:
        state = context.global_state
        for role, cluster in (("source", context.source), ("destination", context.destination)):
            if role in state.balancers_stopped_by_us:
                continue
            running = bool(cluster.balancer_running())
            state.balancers_stopped_by_us[role] = running
            context.save_global("balancers_stopped_by_us")
            if running:
                cluster.set_balancer(False)

    def _create_namespaces(self, context: PhaseContext) -> None:
        request, store, destination = context.request, context.store, context.destination
        started = context.source.cluster_time()
        listed_at: dict[str, Timestamp] = {}
        entries = catalog.list_namespaces(context.source, context.namespace_filter, listed_at)
        state = context.global_state
        if state.listing_started is None:  # the first listing's: its records are the stored ones
            state.listing_started, state.listing_times = started, listed_at
            context.save_global("listing_started", "listing_times")
        sharding_entries = request.sharding_keys()
        destination_sharded = destination.is_sharded
        known = {record.id for record in store.namespaces()}
        # Views after collections: a view may be defined on a collection created here.
        if request.preExistingDestinationData:
            # With pre-existing destination data, mongosync does not migrate views (spec §3.3).
            entries = [entry for entry in entries if entry.kind != NamespaceKind.VIEW]
        for entry in sorted(entries, key=lambda e: e.kind == NamespaceKind.VIEW):
            context.check_stop()
            if entry.id not in known:
                store.put_namespace(entry)
            options = catalog.temporary_collection_options(entry.options)
            catalog.create_collection(destination, store, entry.db, entry.name, options)
            if not entry.is_collection:
                continue
            shard_key = entry.shard_key or sharding_entries.get(entry.id)
            if destination_sharded and shard_key:
                catalog.shard_collection(destination, entry.db, entry.name, shard_key,
                                         entry.indexes)
            if request.builds_indexes_before_copy:
                specs = catalog.indexes_to_build(entry.indexes, request.buildIndexes)
                names = [spec["name"] for spec in specs]
                # indexCorrection, for MongoDB's tooling: pending until built.
                store.record_index_builds(entry, names, built=False)
                catalog.create_indexes(destination, entry.db, entry.name, specs)
                store.record_index_builds(entry, names, built=True)
