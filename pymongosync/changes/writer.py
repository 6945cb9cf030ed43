"""Applying translated change events to the destination: CRUD writes and DDL.

CRUD writes go in ordered bulk writes per namespace. When the destination refuses one (it is
ahead of or behind the event in a way an update cannot express, e.g. a path through a value
that is not a document), the document is taken as the source has it now and later events
converge from there. DDL events are replayed as the same command on the destination, within
the namespace filter's rules for renames (spec §13.3); index and collection options stay in
their temporary form until commit (spec §6–§7).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, cast

from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, OperationFailure

from pymongosync import catalog
from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.changes.translate import CrudStep, DdlStep, Operation, Refetch, Step
from pymongosync.cluster_client import ClusterClient, Delete, RangeRead, Upsert, Write
from pymongosync.durations import OperationKind
from pymongosync.errors import UnsupportedSourceChange
from pymongosync.namespaces import NamespaceFilter
from pymongosync.progress import Counters
from pymongosync.received import RAW, RECEIVED
from pymongosync.retry import retrying

SHARD_KEY_NOT_FOUND = 61  # an upsert the router cannot target without the whole shard key

log = logging.getLogger("pymongosync.changes")

# Already applied before a restart: the namespace or index is already in the state the event
# leads to (NamespaceNotFound, IndexNotFound, NamespaceExists, index option/key conflicts).
IGNORED_DDL_ERRORS = frozenset({26, 27, 48, 68, 85, 86})
NAMESPACE_EXISTS = 48
RECOPY_BATCH = 1000


class ChangeWriter:
    """Writes translated steps to the destination."""

    def __init__(self, source: ClusterClient, destination: ClusterClient,
                 namespace_filter: NamespaceFilter, build_mode: str,
                 created: catalog.CreatedNamespaces, counters: Counters, *,
                 migrate_views: bool = True, ddl_lock: threading.Lock | None = None,
                 hot_documents: Callable[[], HotDocuments] = HotDocuments) -> None:
        self.source = source
        self.destination = destination
        self.namespace_filter = namespace_filter
        self.build_mode = build_mode
        self.created = created
        # With pre-existing destination data, mongosync does not migrate views (spec §3.3).
        self.migrate_views = migrate_views
        self.counters = counters
        # Their CRUD events are skipped (changes/hot_documents.py): a rename takes them first.
        # Asked for at each rename (instances may have added theirs since this one started).
        self.hot_documents = hot_documents
        self._counting = threading.Lock()  # lanes refetch from their own threads
        self.destination_sharded = destination.is_sharded
        # Held while a DDL event is applied: the index builds beside change application take
        # it to check a namespace and build its indexes with no DDL event in between.
        self.ddl_lock = ddl_lock or threading.Lock()
        # Destination namespaces seen to exist since the last DDL event (see _ensure_collection).
        self._present: set[tuple[str, str]] = set()
        self._presence = threading.Lock()
        # Destination namespaces whose upserts name the whole shard key, with its pattern: the
        # destination answered ShardKeyNotFound to one by _id (see _replacing).
        self._full_key_upserts: dict[tuple[str, str], dict[str, Any] | None] = {}

    def apply(self, steps: list[Step],
              after_ddl: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        """Apply the steps in order; ``after_ddl`` is called after each DDL event (to
        checkpoint there: a replay after a crash then never repeats an applied DDL)."""
        for step in steps:
            if isinstance(step, CrudStep):
                for (db, coll), operations in step.writes.items():
                    self.write(db, coll, operations, step.collection_uuids.get((db, coll)))
                self.counters.crud_events += step.events
                if step.last_time is not None:
                    self.counters.last_crud_event_time = step.last_time
            else:
                self.apply_ddl(step)
                if after_ddl is not None:
                    after_ddl(step.event)

    # -- CRUD ------------------------------------------------------------------------------------
    def write(self, db: str, coll: str, operations: list[Operation],
              collection_uuid: Any = None) -> None:
        """Apply one namespace's operations in order (safe to call from several threads for
        different documents: each lane writes its own)."""
        if operations:
            self._ensure_collection(db, coll, collection_uuid)
        while operations:
            head = operations[0]
            if isinstance(head, Refetch):
                self.refetch(db, coll, head.key, collection_uuid)
                operations = operations[1:]
                continue
            # Up to the next refetch (usually all of them), found at C speed.
            kinds = list(map(type, operations))
            end = kinds.index(Refetch) if Refetch in kinds else len(operations)
            chunk = cast(list[Write], operations[:end])
            sent, origins = self._targeted(db, coll, chunk)
            try:
                retrying(lambda: self._timed_write(db, coll, sent))
                operations = operations[len(chunk):]
            except BulkWriteError as exc:
                if not exc.details.get("writeErrors"):
                    raise  # a write concern error that outlasted the retries
                error = exc.details["writeErrors"][0]
                index = origins[error["index"]]
                if error.get("code") == SHARD_KEY_NOT_FOUND and isinstance(chunk[index], Upsert) \
                        and (db, coll) not in self._full_key_upserts:
                    # Those before it are applied (ordered): it and the rest go again, each
                    # upsert naming the whole shard key.
                    self._full_key_upserts[(db, coll)] = self._shard_key_of(db, coll)
                    operations = operations[index:]
                    continue
                # The destination document is ahead of or behind this event in a way the
                # update cannot express: take it as the source has it now.
                self.refetch(db, coll, chunk[index].key, collection_uuid)
                operations = operations[index + 1:]

    def _targeted(self, db: str, coll: str, chunk: list[Write]) -> tuple[list[Write], list[int]]:
        """The writes to send for ``chunk`` (upserts naming the whole shard key where the
        destination needs it), and the position in ``chunk`` each one comes from."""
        pattern = self._full_key_upserts.get((db, coll))  # (a DDL event may clear it now)
        if not pattern:
            return chunk, list(range(len(chunk)))
        sent: list[Write] = []
        origins: list[int] = []
        for position, write in enumerate(chunk):
            expanded = _replacing(pattern, write.key, write.document) \
                if isinstance(write, Upsert) else [write]
            sent.extend(expanded)
            origins.extend([position] * len(expanded))
        return sent, origins

    def _timed_write(self, db: str, coll: str, writes: list[Write],
                     operation: OperationKind = OperationKind.CEA_DESTINATION_WRITE) -> None:
        with self.counters.durations.timing(operation):
            self.destination.write(db, coll, writes)

    def refetch(self, db: str, coll: str, key: Mapping[str, Any],
                collection_uuid: Any = None, *, hot: bool = False) -> None:
        """Make the destination document what the source holds now. The source collection is
        found by UUID: renamed since the event, it is read under its new name (read under the
        old one, the document would look deleted). ``hot``: a --hotDocIDs document taken at
        commit (timed as such)."""
        with self._counting:
            self.counters.refetched += 1
        where = retrying(lambda: catalog.locate(self.source, db, coll, collection_uuid))
        if where is None:
            return  # dropped on the source since: its drop event follows and drops it here

        def read() -> RawBSONDocument | None:
            with self.counters.durations.timing(OperationKind.HOT_DOC_REFETCH) if hot \
                    else nullcontext():
                return self.source.find_by_id(where[0], where[1], key)

        current = retrying(read)
        writes: list[Write] = [Delete(key)] if current is None else \
            _replacing(self._shard_key_of(db, coll), key, current)
        self._ensure_collection(db, coll, collection_uuid)
        kind = OperationKind.HOT_DOC_APPLY if hot else OperationKind.CEA_DESTINATION_WRITE
        retrying(lambda: self._timed_write(db, coll, writes, kind))

    def _shard_key_of(self, db: str, coll: str) -> dict[str, Any] | None:
        """The destination collection's shard key pattern (None: not sharded)."""
        if not self.destination_sharded:
            return None
        return retrying(lambda: self.destination.shard_keys()).get(f"{db}.{coll}")

    def _ensure_collection(self, db: str, coll: str, collection_uuid: Any) -> None:
        """A write must not create its destination collection implicitly: that collection
        would have none of the source's options. It happens when a restart replays events
        from a checkpoint before a DDL event that was applied but not yet checkpointed: a
        replayed insert into a collection since renamed (say, a capped one renamed over
        another with dropTarget) re-created it plain, and the replayed rename then put that
        plain collection in the capped one's place. The collection is created first, with
        the options (in their temporary form) of the source collection the event is about,
        found by its UUID wherever it is now; one dropped since gets none, and its drop event
        follows."""
        with self._presence:
            if (db, coll) in self._present:
                return
            if not retrying(lambda: self.destination.collection_infos(db, coll)):
                options = retrying(lambda: self._source_options(collection_uuid))
                log.info("creating %s.%s on the destination before writing to it, with the "
                         "options of its source collection", db, coll)
                retrying(lambda: catalog.create_collection(
                    self.destination, self.created, db, coll,
                    catalog.temporary_collection_options(options)))
            self._present.add((db, coll))

    def _source_options(self, collection_uuid: Any) -> dict[str, Any]:
        where = None if collection_uuid is None else \
            self.source.find_collection_by_uuid(collection_uuid)
        if where is None:
            return {}
        infos = self.source.collection_infos(where[0], where[1])
        return dict(infos[0].get("options", {})) if infos else {}

    # -- DDL -------------------------------------------------------------------------------------
    def apply_ddl(self, step: DdlStep) -> None:
        event = step.event
        kind = event["operationType"]
        ns = event.get("ns") or {}
        db, coll = ns.get("db"), ns.get("coll")
        description = event.get("operationDescription") or {}
        if not isinstance(db, str):
            log.debug("ignoring %s event without a database", kind)
            return
        if coll is not None and kind != "rename" and not self.namespace_filter.includes(db, coll):
            return  # outside the migration (renames decide by both names, below)
        if coll is None and not self.namespace_filter.includes_database(db):
            return
        handler = getattr(self, f"_ddl_{kind}", None) if not step.copy_target else \
            self._copy_renamed_target
        if handler is None:
            if kind in ("reshardCollection", "refineCollectionShardKey"):
                raise UnsupportedSourceChange(
                    f"{kind} on {db}.{coll} during a migration is not supported (spec §8); "
                    f"restart the migration after it completes")
            log.debug("ignoring %s event", kind)
            return
        with self._presence:
            self._present.clear()  # this event may drop, rename or create any of them
            self._full_key_upserts.clear()  # or shard one
        try:
            with self.ddl_lock:
                retrying(lambda: handler(db, coll, description, event.get("collectionUUID")))
        except OperationFailure as exc:
            if exc.code not in IGNORED_DDL_ERRORS:
                raise
        self.counters.ddl_events += 1
        self.counters.last_ddl_event_time = event["clusterTime"]

    def _ddl_create(self, db: str, coll: str, description: Any,
                    collection_uuid: Any) -> None:
        options = {k: v for k, v in plain(description).items() if k != "idIndex"}
        if "viewOn" in options and not self.migrate_views:
            return
        catalog.create_collection(self.destination, self.created, db, coll,
                                  catalog.temporary_collection_options(options))
        if options.get("capped") and collection_uuid is not None and \
                not _CONVERT_TO_CAPPED.fullmatch(coll):
            # cloneCollectionAsCapped (unsupported by mongosync, spec §7) fills the capped
            # collection it creates with inserts that no change stream shows. What the source
            # holds now is copied, and the events to come bring it on from there, as after the
            # copy phase (upserts, then the same writes again: nothing changes twice).
            # (convertToCapped's temporary collection is copied when it is renamed.)
            self._copy_documents(db, coll, catalog.locate(self.source, db, coll, collection_uuid),
                                 collection_uuid)

    def _ddl_drop(self, db: str, coll: str, description: Any,
                  collection_uuid: Any) -> None:
        self.destination.drop_collection(db, coll)

    def _ddl_dropDatabase(self, db: str, coll: None, description: Any,  # noqa: N802 - named after the event
                          collection_uuid: Any) -> None:
        # Only what the migration syncs: with pre-existing destination data, the database may
        # also hold collections that are not the migration's.
        names = [info["name"] for info in self.destination.collection_infos(db)]
        if all(self.namespace_filter.includes(db, name) for name in names):
            self.destination.drop_database(db)
            return
        for name in names:
            if self.namespace_filter.includes(db, name):
                self.destination.drop_collection(db, name)

    def _ddl_rename(self, db: str, coll: str, description: Any,
                    collection_uuid: Any) -> None:
        target = description["to"]
        to_db, to_coll = target["db"], target["coll"]
        drop_target = bool(description.get("dropTarget"))
        if converted_to_capped(db, coll, to_db, to_coll, drop_target):
            self._follow_convert_to_capped(db, coll, to_coll, collection_uuid)
            return
        action = self.namespace_filter.rename_action(db, coll, to_db, to_coll)
        if action == "ignore":
            return
        if action == "fatal":
            raise UnsupportedSourceChange(
                f"{db}.{coll} was renamed to {to_db}.{to_coll}, which the namespace filter "
                f"excludes; include the whole target database to allow such renames")
        if action == "drop-source":
            self.destination.drop_collection(db, coll)
            return
        if action == "create-target":
            if drop_target:  # the renamed collection replaces the target (e.g. $out)
                self.destination.drop_collection(to_db, to_coll)
            self._copy_whole_collection(to_db, to_coll, collection_uuid)
            return
        if to_db != db and self._shard_key_of(db, coll) is not None:
            # Into a sharded destination (spec §3.3: renames across databases are never
            # supported there): MongoDB renames a sharded collection within its database only.
            raise UnsupportedSourceChange(
                f"{db}.{coll} was renamed on the source into another database ({to_db}."
                f"{to_coll}), but it is sharded on the destination, where MongoDB renames a "
                f"sharded collection within its database only; mongosync does not support "
                f"renames across databases into a sharded cluster: reset the destination and "
                f"start again, and rename collections within their database during a "
                f"migration")
        for document in self.hot_documents().in_namespace(db, coll):
            # Its events under the old name were skipped and none under the new name will
            # bring it up to date: it is taken as the source has it now, before it moves.
            self.refetch(db, coll, document.key, collection_uuid)
        self.created.record_created(to_db, to_coll,
                                    new_database=to_db not in self.destination.database_names())
        try:
            self.destination.rename_collection(f"{db}.{coll}", f"{to_db}.{to_coll}",
                                               drop_target)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS or drop_target:
                raise
            # On the source the target did not exist when it was renamed: here it does, so the
            # rename was applied before a restart, and events replayed since then re-created
            # the collection under its old name. That copy is stale: its documents are in the
            # target already.
            self.destination.drop_collection(db, coll)
        self.created.confirm_created(to_db, to_coll)

    def _ddl_createIndexes(self, db: str, coll: str, description: Any,  # noqa: N802 - named after the event
                           collection_uuid: Any) -> None:
        specs = [plain(spec) for spec in description.get("indexes", [])]
        catalog.create_indexes(self.destination, db, coll,
                               catalog.indexes_to_build(specs, self.build_mode))

    def _ddl_dropIndexes(self, db: str, coll: str, description: Any,  # noqa: N802 - named after the event
                         collection_uuid: Any) -> None:
        for spec in description.get("indexes", []):
            try:
                catalog.drop_index(self.destination, db, coll, spec["name"])
            except OperationFailure as exc:
                if exc.code not in IGNORED_DDL_ERRORS:
                    raise

    def _ddl_modify(self, db: str, coll: str, description: Any,
                    collection_uuid: Any) -> None:
        # Index options, TTL and capped limits stay in their temporary state until commit,
        # which copies them from the source; everything else follows at once.
        change = {k: v for k, v in plain(description).items()
                  if k in ("validator", "validationLevel", "validationAction", "viewOn",
                           "pipeline", "changeStreamPreAndPostImages")}
        if "viewOn" in change and not self.migrate_views:
            return
        if change:
            self.destination.modify_collection(db, coll, change)

    def _ddl_shardCollection(self, db: str, coll: str, description: Any,  # noqa: N802 - named after the event
                             collection_uuid: Any) -> None:
        if self.destination_sharded:
            catalog.shard_collection(self.destination, db, coll,
                                     plain(description["shardKey"]),
                                     self.source.index_specs(db, coll))

    def _copy_renamed_target(self, db: str, coll: str | None, description: Any,
                             collection_uuid: Any) -> None:
        """A rename that the listing of the source's namespaces saw under neither name
        (``DdlStep.copy_target``): the collection is copied whole under its new name, as the
        source has it now, replacing whatever the destination holds there (the target the
        rename dropped, as listed). Events after the rename are applied to it next, so
        applying this step again after a restart comes to the same result."""
        target = description["to"]
        to_db, to_coll = target["db"], target["coll"]
        if not self.namespace_filter.includes(to_db, to_coll):
            return
        self.destination.drop_collection(to_db, to_coll)
        self._copy_whole_collection(to_db, to_coll, collection_uuid)

    def _follow_convert_to_capped(self, db: str, temporary: str, coll: str,
                                  collection_uuid: Any) -> None:
        """``convertToCapped`` on the source (spec §7; mongosync stops there). The server
        created a new capped collection under a temporary name, copied the documents into it
        with inserts that no change stream shows, and renamed it over the original (this
        event). Renamed here as the event says, the destination's collection would be replaced
        by an empty one: instead, the new collection is copied whole from the source under
        the original's name, and the empty temporary one dropped. Its capped limits are lifted
        until the commit, which sets the source's, as for every capped collection."""
        log.info("%s.%s was converted to a capped collection on the source: copying it whole",
                 db, coll)
        if self.namespace_filter.includes(db, temporary):
            self.destination.drop_collection(db, temporary)
        if self.namespace_filter.includes(db, coll):
            self.destination.drop_collection(db, coll)
            self._copy_whole_collection(db, coll, collection_uuid)

    def _copy_whole_collection(self, db: str, coll: str, collection_uuid: Any) -> None:
        """A collection whose documents never came as events here (renamed into the filter,
        or made anew by convertToCapped), copied whole from the source into ``db.coll``.

        It is read where the source has it now, found by its UUID (the event's): renamed
        again since — that rename's event still to apply —, it is read under its newest name,
        and the renames to come move the copy there. A UUID found nowhere (dropped since, or a
        server whose rename across databases gives the collection a new UUID) is read by
        name: whatever is there now, if anything, the events to come (its drop, or the
        creation and writes of what replaced it) bring the destination to. Every write is an
        upsert, so reading again (the collection moved while it was read, or the event is
        applied again after a restart) changes nothing."""
        where = catalog.locate(self.source, db, coll, collection_uuid)
        if where is None:
            where, collection_uuid = (db, coll), None
        infos = self.source.collection_infos(*where)
        if not infos:
            return
        options = catalog.temporary_collection_options(dict(infos[0].get("options", {})))
        catalog.create_collection(self.destination, self.created, db, coll, options)
        specs = self.source.index_specs(*where)
        # Sharded as the source has it: its shardCollection event, if any, came under a name
        # the filter leaves out, or before the listing (campaign seed 223, sharded source and
        # destination: a sharded collection renamed into the filter was copied unsharded).
        shard_key = self.source.shard_keys().get(".".join(where)) \
            if self.destination_sharded else None
        if shard_key is not None:
            catalog.shard_collection(self.destination, db, coll, shard_key, specs)
        catalog.create_indexes(self.destination, db, coll,
                               catalog.indexes_to_build(specs, self.build_mode))
        self._copy_documents(db, coll, where, collection_uuid)

    def _copy_documents(self, db: str, coll: str, where: tuple[str, str] | None,
                        collection_uuid: Any) -> None:
        """The documents of the source collection at ``where`` (found by ``collection_uuid``)
        upserted into ``db.coll``; read again wherever it went if it moves while read."""
        while where is not None:
            read = RangeRead(db=where[0], coll=where[1], collection_uuid=collection_uuid,
                             batch_size=RECOPY_BATCH)
            try:
                for batch in self.source.read_batches(read):
                    writes: list[Write] = [Upsert({"_id": document["_id"]}, document)
                                           for document in batch]
                    self._timed_write(db, coll, writes)
                return
            except OperationFailure as exc:
                if collection_uuid is None or exc.code not in catalog.MOVED_WHILE_READING:
                    raise
                log.info("%s.%s moved while it was read (%s): finding it again by UUID",
                         *where, exc.code)
            where = catalog.locate(self.source, db, coll, collection_uuid)


# convertToCapped's temporary collection, as MongoDB names it (capped_utils.cpp): "tmp", five
# letters or digits, ".convertToCapped.", then the name of the collection it converts.
_CONVERT_TO_CAPPED = re.compile(r"tmp[0-9A-Za-z]{5}\.convertToCapped\.(.+)", re.DOTALL)


def converted_to_capped(db: str, coll: str, to_db: str, to_coll: str, drop_target: bool) -> bool:
    """Whether a rename is the last step of ``convertToCapped``: its temporary collection
    renamed over the collection it converts."""
    match = _CONVERT_TO_CAPPED.fullmatch(coll)
    return drop_target and db == to_db and match is not None and match.group(1) == to_coll


def plain(value: Any) -> Any:
    """Decode raw event values into plain Python structures for command arguments."""
    if isinstance(value, RawBSONDocument | Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _value_at(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (None where a part is missing: a shard key field a document
    lacks is null to the router)."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _replacing(pattern: Mapping[str, Any] | None, key: Mapping[str, Any],
               document: Any) -> list[Write]:
    """The writes that make the destination document with this ``_id`` ``document``, in a
    collection of this shard key ``pattern``. An upsert into a collection sharded on more than
    ``_id`` names the whole shard key (MongoDB before 7.1 targets no upsert without it, and
    ``key`` may hold the ``_id`` alone: a replica set's documentKey), and the document is deleted by
    ``_id`` first: its shard key value may have changed since the destination's copy was
    written, and an upsert by the new value would add a second document with this ``_id`` on
    another shard instead of replacing it."""
    if not pattern or set(pattern) == {"_id"}:
        return [Upsert(key, document)]
    # (An event's document is its bytes, not a mapping: read them.)
    fields = document if isinstance(document, Mapping) else RECEIVED(document.raw, RAW)
    full_key = {field: _value_at(fields, field) for field in pattern if field != "_id"}
    full_key["_id"] = key["_id"]
    return [Delete({"_id": key["_id"]}), Upsert(full_key, document)]
