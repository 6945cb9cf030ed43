"""Change event application (CEA): the source's change stream replayed on the destination.

One cluster-wide stream with expanded (DDL) events, from the time recorded at initialization.
Events are applied in batches; per document the source's order is kept and writes that a
later full-state write supersedes are dropped. Every write is idempotent (inserts and
replaces are upserting replacements, updates set absolute values), so after a crash the
stream resumes from the last saved token and replays a few events harmlessly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import DeleteOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from pymongosync import catalog
from pymongosync.clusters import RAW
from pymongosync.errors import ChangeStreamHistoryLost, UnsupportedSourceChange
from pymongosync.metadata import MetadataStore
from pymongosync.namespaces import NamespaceFilter
from pymongosync.retry import is_transient, retrying

log = logging.getLogger("pymongosync.changes")

CRUD = frozenset({"insert", "update", "replace", "delete"})
BATCH_EVENTS = 1000
READ_AHEAD = 4  # batches read while one is being applied
MAX_BATCH_AGE_SECONDS = 0.25
HISTORY_LOST = 286
IGNORED_DDL_ERRORS = frozenset({26, 27, 48, 68, 85, 86})  # already applied before a restart


def token_time(token: Any) -> Timestamp | None:
    """The cluster time a resume token encodes (its KeyString starts with the Timestamp)."""
    data = token.get("_data") if token is not None else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


@dataclass
class ApplyStats:
    events: int = 0
    crud: int = 0
    ddl: int = 0
    refetched: int = 0
    last_time: Timestamp | None = None


@dataclass
class ChangeApplier:
    source: MongoClient
    raw_source: MongoClient  # the same cluster, decoding to RawBSONDocument
    destination: MongoClient
    store: MetadataStore
    namespace_filter: NamespaceFilter
    build_mode: str
    destination_sharded: bool
    stats: ApplyStats = field(default_factory=ApplyStats)
    on_applied: Callable[[ApplyStats], None] | None = None

    # -- reading ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event, until: Timestamp | None = None) -> bool:
        """Apply events until ``stop`` is set or, with ``until``, everything up to that time.

        Returns whether ``until`` was reached (False when stopped first).
        """
        while not stop.is_set():
            try:
                if self._follow(stop, until):
                    return True
            except PyMongoError as exc:
                if isinstance(exc, OperationFailure) and exc.code == HISTORY_LOST:
                    raise ChangeStreamHistoryLost(
                        "the source oplog no longer holds the changes this migration still "
                        "needs (ChangeStreamHistoryLost); the migration must be restarted from "
                        "scratch with a larger source oplog") from None
                if not is_transient(exc):
                    raise
                log.warning("change stream interrupted, resuming from the saved token: %s", exc)
                stop.wait(0.5)
        return False

    def _follow(self, stop: threading.Event, until: Timestamp | None) -> bool:
        """Read on one thread, apply on this one, so the two round trips overlap."""
        migration = self.store.load() or {}
        options: dict[str, Any] = {"full_document": None, "show_expanded_events": True,
                                   "batch_size": BATCH_EVENTS, "max_await_time_ms": 250}
        if migration.get("resumeToken") is not None:
            options["resume_after"] = migration["resumeToken"]
        else:
            options["start_at_operation_time"] = migration["changeStreamStartTime"]
        # The stream is opened on a client decoding to RawBSONDocument, so documents travel to
        # the destination as the source stored them, byte for byte.
        stream = retrying(lambda: self.raw_source.watch(**options))
        batches: "queue.Queue[tuple[list[Any], Any] | None]" = queue.Queue(maxsize=READ_AHEAD)
        finished = threading.Event()
        failure: list[BaseException] = []

        def read() -> None:
            try:
                with stream:
                    buffer: list[Any] = []
                    oldest = 0.0
                    while not stop.is_set() and not finished.is_set():
                        event = stream.try_next()
                        if event is not None:
                            if not buffer:
                                oldest = time.monotonic()
                            buffer.append(event)
                            # A steady trickle never pauses the stream: flush by age as well.
                            if len(buffer) < BATCH_EVENTS and \
                                    time.monotonic() - oldest < MAX_BATCH_AGE_SECONDS:
                                continue
                        _put(batches, (buffer, stream.resume_token), finished)
                        buffer = []
            except BaseException as exc:  # noqa: BLE001 - handed to the applying thread
                failure.append(exc)
            finally:
                _put(batches, None, finished)

        reader = threading.Thread(target=read, name="change-stream-reader", daemon=True)
        reader.start()
        try:
            while True:
                item = batches.get()
                if item is None:
                    break
                events, token = item
                if events:
                    self.apply(events)
                self._checkpoint(token)
                last = self.stats.last_time
                if until is not None and last is not None and \
                        (last.time, last.inc) >= (until.time, until.inc):
                    return True
        finally:
            finished.set()
            while reader.is_alive():
                try:
                    batches.get(timeout=0.05)
                except queue.Empty:
                    pass
        if failure:
            raise failure[0]
        return False

    def _checkpoint(self, token: Any) -> None:
        time_of_token = token_time(token)
        if time_of_token is not None and (self.stats.last_time is None or (
                time_of_token.time, time_of_token.inc) > (self.stats.last_time.time,
                                                          self.stats.last_time.inc)):
            self.stats.last_time = time_of_token
        changes: dict[str, Any] = {"resumeToken": token}
        if self.stats.last_time is not None:
            changes["lastAppliedTime"] = self.stats.last_time
        self.store.update(changes)
        if self.on_applied:
            self.on_applied(self.stats)

    # -- applying --------------------------------------------------------------------------------
    def apply(self, events: list[Any]) -> None:
        pending: list[Any] = []
        for event in events:
            kind = event["operationType"]
            if kind in CRUD:
                ns = event["ns"]
                if self.namespace_filter.includes(ns["db"], ns["coll"]):
                    pending.append(event)
            else:
                self._apply_crud(pending)
                pending = []
                self._apply_ddl(event)
            self.stats.events += 1
            self.stats.last_time = event["clusterTime"]
        self._apply_crud(pending)

    def _apply_crud(self, events: list[Any]) -> None:
        by_namespace: dict[tuple[str, str], dict[bytes, list[Any]]] = {}
        for event in events:
            ns = event["ns"]
            documents = by_namespace.setdefault((ns["db"], ns["coll"]), {})
            key = event["documentKey"].raw
            if event["operationType"] == "update":
                documents.setdefault(key, []).append(event)
            else:  # a full-state write makes every earlier write to the document moot
                documents[key] = [event]
        for (db, coll), documents in by_namespace.items():
            operations: list[Any] = []
            for changes in documents.values():
                for event in changes:
                    operations.extend(self._operations(db, coll, event))
            self._write(db, coll, operations)
            self.stats.crud += sum(len(changes) for changes in documents.values())

    def _operations(self, db: str, coll: str, event: Any) -> list[Any]:
        key = event["documentKey"]
        kind = event["operationType"]
        if kind in ("insert", "replace"):
            return [ReplaceOne(key, event["fullDocument"], upsert=True)]
        if kind == "delete":
            return [DeleteOne(key)]
        description = event["updateDescription"]
        if description.get("disambiguatedPaths"):
            return [_Refetch(key)]  # field names with dots: $set cannot address them
        operations: list[Any] = []
        truncated = description.get("truncatedArrays") or []
        if truncated:
            operations.append(UpdateOne(key, {"$push": {
                entry["field"]: {"$each": [], "$slice": entry["newSize"]} for entry in truncated}}))
        update: dict[str, Any] = {}
        updated = description.get("updatedFields")
        if updated:
            update["$set"] = dict(updated.items())
        removed = description.get("removedFields")
        if removed:
            update["$unset"] = {path: "" for path in removed}
        if update:
            operations.append(UpdateOne(key, update))
        return operations

    def _write(self, db: str, coll: str, operations: list[Any]) -> None:
        target = self.destination[db].get_collection(coll, codec_options=RAW)
        while operations:
            head = operations[0]
            if isinstance(head, _Refetch):
                self._refetch(db, coll, head.key)
                operations = operations[1:]
                continue
            chunk = []
            for operation in operations:
                if isinstance(operation, _Refetch):
                    break
                chunk.append(operation)
            try:
                retrying(lambda: target.bulk_write(chunk, ordered=True,
                                                   bypass_document_validation=True))
                operations = operations[len(chunk):]
            except BulkWriteError as exc:
                failed = exc.details["writeErrors"][0]
                index = failed["index"]
                # The destination document is ahead of or behind this event in a way the
                # update cannot express (e.g. a path through a value that is not a document):
                # take the document as the source has it now; later events converge from there.
                self._refetch(db, coll, _filter_of(chunk[index]))
                operations = operations[index + 1:]

    def _refetch(self, db: str, coll: str, key: Any) -> None:
        self.stats.refetched += 1
        current = self.source[db].get_collection(coll, codec_options=RAW).find_one(key)
        target = self.destination[db].get_collection(coll, codec_options=RAW)
        if current is None:
            retrying(lambda: target.delete_one(key))
        else:
            retrying(lambda: target.replace_one(key, current, upsert=True,
                                                bypass_document_validation=True))

    # -- DDL -------------------------------------------------------------------------------------
    def _apply_ddl(self, event: Any) -> None:
        kind = event["operationType"]
        ns = event.get("ns") or {}
        db, coll = ns.get("db"), ns.get("coll")
        description = event.get("operationDescription") or {}
        handler = getattr(self, f"_ddl_{kind}", None)
        if handler is None:
            if kind in ("reshardCollection", "refineCollectionShardKey"):
                raise UnsupportedSourceChange(
                    f"{kind} on {db}.{coll} during a migration is not supported (spec §8); "
                    f"restart the migration after it completes")
            log.debug("ignoring %s event", kind)
            return
        if coll is not None and kind != "rename" and not self.namespace_filter.includes(db, coll):
            return
        if coll is None and not self.namespace_filter.includes_database(db):
            return
        try:
            retrying(lambda: handler(db, coll, description))
        except OperationFailure as exc:
            if exc.code not in IGNORED_DDL_ERRORS:
                raise
        self.stats.ddl += 1

    def _ddl_create(self, db: str, coll: str, description: Any) -> None:
        options = {k: v for k, v in dict(description).items() if k != "idIndex"}
        options = catalog.temporary_collection_options(_plain(options))
        catalog.create_collection(self.destination, db, coll, options, self.store.record_created)

    def _ddl_drop(self, db: str, coll: str, description: Any) -> None:
        self.destination[db].drop_collection(coll)

    def _ddl_dropDatabase(self, db: str, coll: None, description: Any) -> None:  # noqa: N802
        self.destination.drop_database(db)

    def _ddl_rename(self, db: str, coll: str, description: Any) -> None:
        target = description["to"]
        to_db, to_coll = target["db"], target["coll"]
        action = self.namespace_filter.rename_action(db, coll, to_db, to_coll)
        if action == "ignore":
            return
        if action == "fatal":
            raise UnsupportedSourceChange(
                f"{db}.{coll} was renamed to {to_db}.{to_coll}, which the namespace filter "
                f"excludes; include the whole target database to allow such renames")
        if action == "drop-source":
            self.destination[db].drop_collection(coll)
            return
        if action == "create-target":
            self._copy_whole_collection(to_db, to_coll)
            return
        self.store.record_created(to_db, to_coll)
        self.destination.admin.command("renameCollection", f"{db}.{coll}",
                                       to=f"{to_db}.{to_coll}",
                                       dropTarget=bool(description.get("dropTarget")))

    def _ddl_createIndexes(self, db: str, coll: str, description: Any) -> None:  # noqa: N802
        specs = [dict(_plain(spec)) for spec in description.get("indexes", [])]
        catalog.create_indexes(self.destination, db, coll,
                               catalog.indexes_to_build(specs, self.build_mode))

    def _ddl_dropIndexes(self, db: str, coll: str, description: Any) -> None:  # noqa: N802
        for spec in description.get("indexes", []):
            try:
                self.destination[db].command("dropIndexes", coll, index=spec["name"])
            except OperationFailure as exc:
                if exc.code not in IGNORED_DDL_ERRORS:
                    raise

    def _ddl_modify(self, db: str, coll: str, description: Any) -> None:
        # Index options, TTL and capped limits stay in their temporary state until commit,
        # which copies them from the source; everything else follows at once.
        change = {k: _plain(v) for k, v in dict(description).items()
                  if k in ("validator", "validationLevel", "validationAction", "viewOn",
                           "pipeline", "changeStreamPreAndPostImages")}
        if change:
            self.destination[db].command({"collMod": coll, **change})

    def _ddl_shardCollection(self, db: str, coll: str, description: Any) -> None:  # noqa: N802
        if self.destination_sharded:
            catalog.shard_collection(self.destination, db, coll,
                                     dict(_plain(description["shardKey"])))

    def _copy_whole_collection(self, db: str, coll: str) -> None:
        """A collection renamed into the filter: its documents were never inserted as events."""
        infos = list(self.source[db].list_collections(filter={"name": coll}))
        if not infos:
            return
        options = catalog.temporary_collection_options(dict(infos[0].get("options", {})))
        catalog.create_collection(self.destination, db, coll, options, self.store.record_created)
        specs = [dict(spec) for spec in self.source[db][coll].list_indexes()]
        catalog.create_indexes(self.destination, db, coll,
                               catalog.indexes_to_build(specs, self.build_mode))
        target = self.destination[db].get_collection(coll, codec_options=RAW)
        batch: list[Any] = []
        for document in self.source[db].get_collection(coll, codec_options=RAW).find():
            batch.append(ReplaceOne({"_id": document["_id"]}, document, upsert=True))
            if len(batch) == 1000:
                target.bulk_write(batch, ordered=False, bypass_document_validation=True)
                batch = []
        if batch:
            target.bulk_write(batch, ordered=False, bypass_document_validation=True)


def _put(batches: "queue.Queue[Any]", item: Any, finished: threading.Event) -> None:
    """Hand a batch over unless the applying side has stopped listening."""
    while not finished.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


@dataclass
class _Refetch:
    key: Any


def _filter_of(operation: Any) -> Any:
    return operation._filter  # noqa: SLF001 - pymongo keeps the filter of its write models here


def _plain(value: Any) -> Any:
    """Decode raw event values into plain Python structures for command arguments."""
    if isinstance(value, RawBSONDocument):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
