"""Phase 1, initializing collections and indexes: the destination takes the source's shape.

Destination writes are blocked (unless the request says not to), balancers the migration needs
stopped are stopped and remembered, every included source collection and view is recorded in
the store and created on the destination with its temporary options (spec §6–§7), sharded like
the source or as ``shardingEntries`` ask, and with ``beforeDataCopy`` its indexes are built now.
Every step checks what is stored or present first, so running the phase again is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from bson.timestamp import Timestamp

from pymongosync import catalog
from pymongosync.changes.reader import CRUD, events_between
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.state import NamespaceKind, NamespaceRecord, Phase


class PrepareCollections(PhaseStep):
    phase = Phase.PREPARE

    def run(self, context: PhaseContext) -> None:
        self._block_destination_writes(context)
        self._stop_balancers(context)
        self._create_namespaces(context)

    def _block_destination_writes(self, context: PhaseContext) -> None:
        if context.request.write_blocking_mode != "none":
            context.block_user_writes("destination")

    def _stop_balancers(self, context: PhaseContext) -> None:
        state = context.global_state
        for role, cluster in (("source", context.source), ("destination", context.destination)):
            if role in state.balancers_stopped_by_us:
                # Recorded before it is done: a process stopped in between did not stop it.
                if state.balancers_stopped_by_us[role] and cluster.balancer_running():
                    cluster.set_balancer(False)
                continue
            running = bool(cluster.balancer_running())
            state.balancers_stopped_by_us[role] = running
            context.save_global("balancers_stopped_by_us")
            if running:
                cluster.set_balancer(False)

    def _list_namespaces(self, context: PhaseContext) -> list[NamespaceRecord]:
        """The source's namespaces, listed once for the migration and stored with the times
        of the listing. This phase run again (a transient error, a restart) goes on from the
        stored listing: listing again would mix two listings, the records of one with the
        destination collections and listing times of the other, and a collection renamed in
        between would be copied under neither name, or kept under both (campaign seed 91).
        The times are saved last: they mark the listing complete."""
        state, store = context.global_state, context.store
        if state.listing_started is not None:
            return store.namespaces()
        started = context.source.cluster_time()
        listed_at: dict[str, Timestamp] = {}
        entries = catalog.list_namespaces(
            context.source, context.namespace_filter, listed_at,
            settled=lambda db, after, until: _settled(context, db, after, until))
        listed = {entry.id for entry in entries}
        for record in store.namespaces():
            if record.id not in listed:  # recorded by an interrupted listing, found no more
                store.remove_namespace(record)
        for entry in entries:
            store.put_namespace(entry)
        state.listing_started, state.listing_times = started, listed_at
        context.save_global("listing_started", "listing_times")
        return entries

    def _create_namespaces(self, context: PhaseContext) -> None:
        request, store, destination = context.request, context.store, context.destination
        entries = self._list_namespaces(context)
        sharding_entries = request.sharding_keys()
        destination_sharded = destination.is_sharded
        # Views after collections: a view may be defined on a collection created here.
        if request.preExistingDestinationData:
            # With pre-existing destination data, mongosync does not migrate views (spec §3.3).
            entries = [entry for entry in entries if entry.kind != NamespaceKind.VIEW]
        for entry in sorted(entries, key=lambda e: e.kind == NamespaceKind.VIEW):
            context.check_stop()
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


def _settled(context: PhaseContext, db: str, after: Timestamp, until: Timestamp) -> bool:
    """No DDL event touched ``db`` after ``after`` and up to ``until``."""
    touched = any(ddl_events_of(context, db, after, until))
    context.check_stop()  # a stop cuts the read short: nothing is concluded from it
    return not touched


def ddl_events_of(context: PhaseContext, db: str, after: Timestamp,
                  until: Timestamp) -> Iterator[Mapping[str, Any]]:
    """The source's DDL events that touch ``db`` (a rename into it included) after ``after``
    and up to ``until``."""
    for event in events_between(context.source, context.stop, after=after, until=until):
        if event["operationType"] in CRUD:
            continue
        ns = event.get("ns") or {}
        target = (event.get("operationDescription") or {}).get("to") or {}
        if ns.get("db") == db or target.get("db") == db:
            yield event
