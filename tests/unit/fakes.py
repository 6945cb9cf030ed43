"""In-memory fakes of the engine's two boundaries, for unit tests without a server.

- :class:`FakeCluster` implements :class:`pymongosync.cluster_client.ClusterClient`: databases of
  collections of documents kept as raw BSON and keyed by ``_id`` in MongoDB's BSON order,
  options and indexes shaped as ``listCollections``/``listIndexes`` return them, ``collMod``,
  DDL, write blocking and balancer flags, a cluster clock advanced by every write, and a
  change-event log that :meth:`FakeCluster.watch` replays as real (raw BSON) change events.
- :class:`MemoryStore` implements :class:`pymongosync.store.MigrationStore` (lease methods
  included) with :class:`pymongosync.store.MetadataStore`'s semantics.

Both take injected faults (``fail_next``) and can share a ``journal`` (a list of strings) that
records every state-changing call in order, so tests can check what happened before what.

``tests/unit/test_fake_contract.py`` runs the same assertions against these fakes and the real
implementations on an emulated server, so they cannot drift apart on what the phases rely on.
Deliberate simplifications are marked "Simplification:" below.
"""

from __future__ import annotations

import copy
import datetime
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.errors import BulkWriteError, OperationFailure

from mongoemu.bsonvalues import CODEC, sort_key
from pymongosync.cluster_client import Delete, RangeRead, Update, Upsert, Write
from pymongosync.errors import MetadataTooNew
from pymongosync.state import (
    COORDINATOR,
    SCHEMA_VERSION,
    CollectionStatistics,
    CopiedId,
    CopyTotals,
    BufferedBatch,
    BufferTotals,
    ErrorRecord,
    GlobalState,
    IndexCorrection,
    IndexCorrectionKey,
    LeaseRecord,
    NamespaceRecord,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
    ResumeData,
    UuidMapping,
    is_v1_partition,
    upgrade_v1_migration,
    upgrade_v1_partition,
)
from pymongosync.store import MAIN_STREAM, StoredMigration, copy_totals_of

# As pymongosync.clusters.RAW: what documents and events are decoded to.
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True,
                   datetime_conversion=DatetimeConversion.DATETIME_AUTO)
# As the metadata client decodes (pymongosync.clusters.Cluster.connect's settings).
METADATA_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)

DUPLICATE_KEY = 11000
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
PATH_NOT_VIABLE = 28
CONFLICTING_UPDATE_OPERATORS = 40
NAMESPACE_EXISTS = 48
IMMUTABLE_FIELD = 66
INVALID_OPTIONS = 72
INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
COMMAND_NOT_SUPPORTED_ON_VIEW = 166
HISTORY_LOST = 286
CANNOT_CONVERT_INDEX_TO_UNIQUE = 359
COLLECTION_UUID_MISMATCH = 361

# How long an idle stream's try_next waits, as the server's maxAwaitTimeMS does (shorter): it
# keeps the change-stream reader thread from spinning.
IDLE_WAIT_SECONDS = 0.002

Journal = list[str]


# -- BSON helpers ----------------------------------------------------------------------------------


def raw(document: Mapping[str, Any]) -> RawBSONDocument:
    """A document as the migration sees one: raw BSON."""
    if isinstance(document, RawBSONDocument):
        return document
    return RawBSONDocument(bson.encode(document), codec_options=RAW)


def encoded(document: Mapping[str, Any]) -> bytes:
    return bytes(raw(document).raw)


def plain(value: Any) -> Any:
    """A value decoded to plain Python (dicts, lists, bson types), whatever it was given as."""
    return bson.decode(bson.encode({"v": value}), codec_options=CODEC)["v"]


def id_key(value: Any) -> tuple[Any, ...]:
    """Where an ``_id`` sorts and what it collides with: 1, 1.0 and Int64(1) are one key, as in
    the ``_id`` index."""
    return sort_key(plain(value))


def token(ts: Timestamp, event: bool) -> dict[str, str]:
    """A resume token shaped as pymongosync.changes.reader.token_time reads one: KeyString type
    byte 0x82 then the cluster time. Event tokens sort after a high-water mark at the same
    time, as on a server."""
    return {"_data": f"82{ts.time:08X}{ts.inc:08X}{'04' if event else '01'}"}


def token_position(resume_token: Mapping[str, Any]) -> tuple[int, int]:
    data = str(resume_token["_data"])
    return int(data[2:10], 16), int(data[10:18], 16)


def change_event(operation_type: str, db: str, coll: str | None, cluster_time: Timestamp, *,
                 document_key: Mapping[str, Any] | None = None,
                 full_document: Mapping[str, Any] | None = None,
                 update_description: Mapping[str, Any] | None = None,
                 operation_description: Mapping[str, Any] | None = None,
                 collection_uuid: Binary | None = None,
                 to: Mapping[str, str] | None = None,
                 raw_update_description: Mapping[str, Any] | None = None) -> RawBSONDocument:
    """A change event as a cluster-wide stream with ``showExpandedEvents`` returns it, as raw
    BSON (field order as the server builds it); an update's ``rawUpdateDescription`` is what
    ``showRawUpdateDescription`` shows in place of ``updateDescription``."""
    event: dict[str, Any] = {}
    if to is not None:
        event["to"] = dict(to)
    event["_id"] = token(cluster_time, event=True)
    event["operationType"] = operation_type
    event["clusterTime"] = cluster_time
    if collection_uuid is not None:
        event["collectionUUID"] = collection_uuid
    event["wallTime"] = datetime.datetime.fromtimestamp(cluster_time.time, datetime.UTC)
    if full_document is not None:
        event["fullDocument"] = raw(full_document)
    event["ns"] = {"db": db} if coll is None else {"db": db, "coll": coll}
    if document_key is not None:
        event["documentKey"] = dict(document_key)
    if operation_description is not None:
        event["operationDescription"] = dict(operation_description)
    if update_description is not None:
        event["updateDescription"] = dict(update_description)
    if raw_update_description is not None:
        event["rawUpdateDescription"] = dict(raw_update_description)
    return RawBSONDocument(bson.encode(event), codec_options=RAW)


def update_description(updated: Mapping[str, Any] | None = None,
                       removed: Sequence[str] = (),
                       truncated: Sequence[tuple[str, int]] = (),
                       disambiguated: Mapping[str, Sequence[str | int]] | None = None
                       ) -> dict[str, Any]:
    """An ``updateDescription`` as a 7.0 server writes it for an expanded stream."""
    return {"updatedFields": dict(updated or {}), "removedFields": list(removed),
            "truncatedArrays": [{"field": name, "newSize": size} for name, size in truncated],
            "disambiguatedPaths": {path: list(parts)
                                   for path, parts in (disambiguated or {}).items()}}


# -- the update operators the writer uses ----------------------------------------------------------


class UpdateFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


_MISSING = object()


def top_level_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The ``$v: 2`` delta from ``before`` to ``after`` as the server computes one, without
    sub-deltas (a changed value is set whole): both documents walked in order, a field out of
    place is deleted there, and every field from the first one out of place is inserted."""
    def same(a: Any, b: Any) -> bool:
        return bson.encode({"v": a}, codec_options=CODEC) == bson.encode({"v": b},
                                                                          codec_options=CODEC)
    old, new = list(before.items()), list(after.items())
    updated: dict[str, Any] = {}
    skipped: list[str] = []
    i = j = 0
    while i < len(old) and j < len(new):
        if old[i][0] == new[j][0]:
            if not same(old[i][1], new[j][1]):
                updated[new[j][0]] = new[j][1]
            j += 1
        else:
            skipped.append(old[i][0])
        i += 1
    inserted = dict(new[j:])
    deleted = {name: False for name in [name for name, _ in old[i:]] + sorted(skipped)
               if name not in inserted}
    diff: dict[str, Any] = {}
    for section, fields in (("d", deleted), ("u", updated), ("i", inserted)):
        if fields:
            diff[section] = fields
    return diff


def _apply_delta(document: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """A ``$v: 2`` document delta applied as oplog application does: ``d`` removes, ``u``
    sets in place, ``s<name>`` applies a sub-delta, and ``i`` fields go to the end, in order
    (an existing one leaves its place)."""
    deleted, updated, inserted = diff.get("d", {}), diff.get("u", {}), diff.get("i", {})
    result: dict[str, Any] = {}
    for name, value in document.items():
        if name in deleted or name in inserted:
            continue
        sub = diff.get("s" + name)
        if name in updated:
            result[name] = updated[name]
        elif sub is not None and isinstance(value, list) and sub.get("a") is True:
            items = list(value)
            for key, item in sub.items():
                if key[0] == "u":
                    index = int(key[1:])
                    items.extend([None] * (index + 1 - len(items)))
                    items[index] = item
            result[name] = items[:sub["l"]] if "l" in sub else items
        elif sub is not None and isinstance(value, Mapping):
            result[name] = _apply_delta(value, sub)
        else:
            result[name] = value
    result.update({name: value for name, value in updated.items() if name not in result})
    result.update(inserted)
    return result


def apply_update(document: dict[str, Any],
                 update: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``document`` after an update-operator document, or after the one pipeline pymongosync
    writes (``$_internalApplyOplogUpdate`` of a ``$v: 2`` delta).

    Simplification: only ``$set`` and ``$unset`` (dotted paths, array indexes) and ``$push``
    (with ``$each``/``$slice``) are interpreted — what pymongosync writes — with the server's
    errors for a path through a non-document (28), operators on conflicting paths (40), ``_id``
    changes (66) and ``$push`` onto a non-array (2). Anything else raises code 9.
    """
    if not isinstance(update, Mapping):
        stages = plain(list(update))
        if len(stages) != 1 or "$_internalApplyOplogUpdate" not in stages[0]:
            raise UpdateFailed(9, f"unsupported update pipeline {stages}")
        oplog_update = stages[0]["$_internalApplyOplogUpdate"]["oplogUpdate"]
        if oplog_update.get("$v") != 2:
            raise UpdateFailed(9, "only $v: 2 deltas are supported")
        return _apply_delta(document, oplog_update["diff"])
    operators = {name: dict(plain(spec)) for name, spec in update.items()}
    unknown = set(operators) - {"$set", "$unset", "$push"}
    if unknown or not operators:
        raise UpdateFailed(9, f"unsupported update operators {sorted(unknown)}")
    paths = [path for spec in operators.values() for path in spec]
    for index, path in enumerate(paths):
        if path == "_id" or path.startswith("_id."):
            raise UpdateFailed(IMMUTABLE_FIELD, "Performing an update on the path '_id' would "
                               "modify the immutable field '_id'")
        for other in paths[index + 1:]:
            if path == other or other.startswith(path + ".") or path.startswith(other + "."):
                raise UpdateFailed(CONFLICTING_UPDATE_OPERATORS,
                                   f"Updating the path '{other}' would create a conflict at "
                                   f"'{path}'")
    result = copy.deepcopy(document)
    for path, value in operators.get("$set", {}).items():
        parent, last = _walk(result, path, create=True)
        _assign(parent, last, value, path)
    for path in operators.get("$unset", {}):
        parent, last = _walk(result, path, create=False)
        if isinstance(parent, dict):
            parent.pop(last, None)
        elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            parent[int(last)] = None
    for path, spec in operators.get("$push", {}).items():
        parent, last = _walk(result, path, create=True)
        current = _get(parent, last)
        if current is _MISSING:
            current = []
            _assign(parent, last, current, path)
        if not isinstance(current, list):
            raise UpdateFailed(2, f"The field '{path}' must be an array but is of type "
                               f"{type(current).__name__}")
        if isinstance(spec, dict) and "$each" in spec:
            current.extend(spec["$each"])
            if "$slice" in spec:
                size = int(spec["$slice"])
                current[:] = current[:size] if size >= 0 else current[size:]
        else:
            current.append(spec)
    return result


def _get(container: Any, part: str) -> Any:
    if isinstance(container, dict):
        return container.get(part, _MISSING)
    if isinstance(container, list) and part.isdigit() and int(part) < len(container):
        return container[int(part)]
    return _MISSING


def _walk(document: dict[str, Any], path: str, create: bool) -> tuple[Any, str]:
    """The container holding the last part of ``path``, creating documents on the way."""
    parts = path.split(".")
    container: Any = document
    for index, part in enumerate(parts[:-1]):
        child = _get(container, part)
        if child is _MISSING:
            if not create or not isinstance(container, dict | list):
                return None, parts[-1]
            child = {}
            _assign(container, part, child, path)
        elif not isinstance(child, dict | list):
            if not create:
                return None, parts[-1]
            raise UpdateFailed(PATH_NOT_VIABLE, f"Cannot create field '{parts[index + 1]}' in "
                               f"element {{{part}: {child!r}}}")
        container = child
    return container, parts[-1]


def _assign(container: Any, part: str, value: Any, path: str) -> None:
    if isinstance(container, dict):
        container[part] = value
        return
    if isinstance(container, list) and part.isdigit():
        index = int(part)
        container.extend([None] * (index + 1 - len(container)))
        container[index] = value
        return
    raise UpdateFailed(PATH_NOT_VIABLE, f"Cannot create field '{part}' for path '{path}'")


def _dotted(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = _get(value, part)
        if value is _MISSING:
            return None
    return value


# -- the cluster -----------------------------------------------------------------------------------


@dataclass
class FakeCollection:
    """One collection or view."""

    name: str
    kind: str  # "collection", "view" or "timeseries"
    options: dict[str, Any]
    uuid: Binary | None
    indexes: list[dict[str, Any]] = field(default_factory=list)
    # Insertion (natural) order; keyed by the _id's BSON sort key, so 1 and 1.0 collide.
    documents: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    shard_key: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The ``listCollections`` entry."""
        if self.kind == "view":
            return {"name": self.name, "type": "view", "options": copy.deepcopy(self.options),
                    "info": {"readOnly": True}}
        entry: dict[str, Any] = {"name": self.name, "type": self.kind,
                                 "options": copy.deepcopy(self.options),
                                 "info": {"readOnly": False, "uuid": self.uuid}}
        if "clusteredIndex" not in self.options:
            entry["idIndex"] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
        return entry

    def index(self, name: str) -> dict[str, Any] | None:
        return next((spec for spec in self.indexes if spec["name"] == name), None)

    def decoded(self) -> list[dict[str, Any]]:
        return [bson.decode(data, codec_options=CODEC) for data in self.documents.values()]

    def unique_clash(self, data: bytes, own: tuple[Any, ...]) -> str | None:
        """The unique index that a document (bytes) stored under ``own`` would violate.
        Simplification: sparse and partial unique indexes are not enforced."""
        document = bson.decode(data, codec_options=CODEC)
        for spec in self.indexes:
            if not spec.get("unique") or spec["name"] == "_id_" or spec.get("sparse") \
                    or "partialFilterExpression" in spec:
                continue
            value = [sort_key(_dotted(document, path)) for path in spec["key"]]
            for key, other in self.documents.items():
                decoded = bson.decode(other, codec_options=CODEC)
                if key != own and \
                        [sort_key(_dotted(decoded, path)) for path in spec["key"]] == value:
                    return str(spec["name"])
        return None

    def unique_violation(self, key: Mapping[str, Any]) -> bool:
        seen: set[tuple[Any, ...]] = set()
        for document in self.decoded():
            value = tuple(sort_key(_dotted(document, path)) for path in key)
            if value in seen:
                return True
            seen.add(value)
        return False


class FakeEventStream:
    """An open change stream over the cluster's event log (``EventStream``)."""

    def __init__(self, cluster: FakeCluster, position: int) -> None:
        self._cluster = cluster
        self._position = position
        self._token: Mapping[str, Any] | None = None
        self.closed = False

    def try_next(self) -> RawBSONDocument | None:
        cluster = self._cluster
        cluster.check_fault("try_next")
        with cluster.lock:
            if self._position < len(cluster.event_log):
                event = cluster.event_log[self._position]
                self._position += 1
                self._token = event["_id"]
                return event
            # Idle: the postBatchResumeToken is a high-water mark at the newest time, which
            # includes no-op writes such as cluster_time()'s.
            self._token = token(cluster.current_time, event=False)
        time.sleep(IDLE_WAIT_SECONDS)
        return None

    def next_events(self, limit: int) -> list[RawBSONDocument]:
        # One event per call: a server batch of one, which every reader must take as well.
        event = self.try_next()
        return [] if event is None else [event]

    @property
    def buffered(self) -> int:
        with self._cluster.lock:
            return len(self._cluster.event_log) - self._position

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._token

    def close(self) -> None:
        self.closed = True


class FakeCluster:
    """A cluster in memory, as the phases use one (``ClusterClient``).

    Simplifications: the migration's own client is the only client, so write blocking is a flag
    it bypasses (as the migration's user does); only user databases exist (no admin, config,
    local); capped limits are not enforced (the migration lifts them while syncing); sharding
    needs no index on the key; ``documentKey`` holds ``_id`` only (no shard key fields);
    updates applied with :meth:`write` are described by top-level fields (a server may report
    finer paths); range reads see the collection as it was when they started.
    """

    def __init__(self, label: str = "cluster0", *, sharded: bool = False,
                 hosts: Sequence[str] = ("fake0:27017",), version: tuple[int, ...] = (7, 0, 0),
                 start_time: int = 1_700_000_000, journal: Journal | None = None,
                 seed: int = 0) -> None:
        self.label = label
        self._hosts = list(hosts)
        self.sharded = sharded
        self._version = version
        self.lock = threading.RLock()
        self.databases: dict[str, dict[str, FakeCollection]] = {}
        self.current_time = Timestamp(start_time, 0)
        self.event_log: list[RawBSONDocument] = []
        self._history_start: tuple[int, int] | None = None
        self.write_block = False
        self.balancer = sharded
        self.journal: Journal = journal if journal is not None else []
        self.calls: list[str] = []
        self._faults: dict[str, list[BaseException]] = {}
        self._store: MemoryStore | None = None
        self._random = random.Random(seed)
        self.samples: dict[str, list[Any]] = {}  # "db.coll" -> what sample_ids returns

    # -- test controls -----------------------------------------------------------------------------
    def fail_next(self, method: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (before doing anything)."""
        with self.lock:
            self._faults.setdefault(method, []).extend([error] * times)

    def check_fault(self, method: str) -> None:
        with self.lock:
            pending = self._faults.get(method)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error

    def _enter(self, method: str, detail: str = "", mutates: bool = False) -> None:
        self.check_fault(method)
        with self.lock:
            self.calls.append(method)
            if mutates:
                self.journal.append(f"{self.label}.{method}{':' + detail if detail else ''}")

    def truncate_history(self) -> None:
        """Forget every event so far, as an oplog that rolled over."""
        with self.lock:
            self.event_log.clear()
            self._history_start = (self.current_time.time, self.current_time.inc)

    def emit(self, operation_type: str, db: str, coll: str | None,
             **fields: Any) -> RawBSONDocument:
        """Log an event the fake cannot produce by itself (e.g. ``reshardCollection``)."""
        with self.lock:
            return self._log(operation_type, db, coll, **fields)

    def collection(self, db: str, coll: str) -> FakeCollection | None:
        return self.databases.get(db, {}).get(coll)

    def documents(self, db: str, coll: str) -> list[dict[str, Any]]:
        """The documents, decoded, in ``_id`` order."""
        collection = self.collection(db, coll)
        if collection is None:
            return []
        return [bson.decode(collection.documents[key], codec_options=CODEC)
                for key in sorted(collection.documents)]

    def natural_documents(self, db: str, coll: str) -> list[dict[str, Any]]:
        """The documents, decoded, in insertion order."""
        collection = self.collection(db, coll)
        return [] if collection is None else collection.decoded()

    def document(self, db: str, coll: str, document_id: Any) -> dict[str, Any] | None:
        collection = self.collection(db, coll)
        data = None if collection is None else collection.documents.get(id_key(document_id))
        return None if data is None else bson.decode(data, codec_options=CODEC)

    # Writes as an application makes them on a source (each one logs its change event).
    def insert(self, db: str, coll: str, *documents: Mapping[str, Any]) -> None:
        self.insert_documents(db, coll, [raw(document) for document in documents])

    def replace(self, db: str, coll: str, document: Mapping[str, Any]) -> None:
        self.write(db, coll, [Upsert({"_id": document["_id"]}, raw(document))])

    def delete(self, db: str, coll: str, document_id: Any) -> None:
        self.write(db, coll, [Delete({"_id": document_id})])

    def update(self, db: str, coll: str, document_id: Any, *,
               updated: Mapping[str, Any] | None = None, removed: Sequence[str] = (),
               truncated: Sequence[tuple[str, int]] = (),
               disambiguated: Mapping[str, Sequence[str | int]] | None = None,
               after: Mapping[str, Any] | None = None) -> None:
        """An update event described exactly as given. The document becomes ``after`` when
        given (e.g. a field whose name has dots, which ``$set`` cannot address); otherwise
        arrays are truncated, then ``updated`` set and ``removed`` unset."""
        with self.lock:
            collection = self._require(db, coll)
            key = id_key(document_id)
            before = bson.decode(collection.documents[key], codec_options=CODEC)
            if after is None:
                result = before
                for name, size in truncated:
                    result = apply_update(result, {"$push": {name: {"$each": [],
                                                                    "$slice": size}}})
                if updated:
                    result = apply_update(result, {"$set": dict(updated)})
                if removed:
                    result = apply_update(result, {"$unset": {path: "" for path in removed}})
                after = result
            collection.documents[key] = encoded(after)
            self._log("update", db, coll, document_key={"_id": before["_id"]},
                      update_description=update_description(updated, removed, truncated,
                                                            disambiguated),
                      collection_uuid=collection.uuid)

    def set_document(self, db: str, coll: str, document: Mapping[str, Any]) -> None:
        """Put a document in place without an event (a state reached by earlier history)."""
        with self.lock:
            collection = self._collection_for_write(db, coll, log=False)
            collection.documents[id_key(document["_id"])] = encoded(document)

    # -- identity and cluster-wide state -----------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    @property
    def display(self) -> str:
        return f"{self.label}: {','.join(self.hosts)}"

    @property
    def is_sharded(self) -> bool:
        return self.sharded

    def version(self) -> tuple[int, ...]:
        self._enter("version")
        return self._version

    def ping(self) -> None:
        self._enter("ping")

    def _tick(self) -> Timestamp:
        self.current_time = Timestamp(self.current_time.time, self.current_time.inc + 1)
        return self.current_time

    def advance_clock(self, seconds: int) -> None:
        with self.lock:
            self.current_time = Timestamp(self.current_time.time + seconds, 0)

    def cluster_time(self) -> Timestamp:
        self._enter("cluster_time")
        with self.lock:
            return self._tick()  # a no-op write: in the oplog, not in change streams

    def latest_time(self) -> Timestamp:
        self._enter("latest_time")
        with self.lock:
            return self.current_time

    def set_write_block(self, enabled: bool) -> None:
        self._enter("set_write_block", str(enabled), mutates=True)
        with self.lock:
            self.write_block = enabled
            self._tick()

    def write_blocked(self) -> bool | None:
        self._enter("write_blocked")
        return self.write_block

    def balancer_running(self) -> bool | None:
        self._enter("balancer_running")
        return self.balancer if self.sharded else None

    def set_balancer(self, running: bool) -> None:
        self._enter("set_balancer", str(running), mutates=True)
        if not self.sharded:
            raise OperationFailure("no such command: 'balancerStart'", code=59)
        self.balancer = running

    def metadata_store(self) -> MemoryStore:
        with self.lock:
            if self._store is None:
                self._store = MemoryStore(journal=self.journal)
            return self._store

    # -- catalog -----------------------------------------------------------------------------------
    def database_names(self) -> list[str]:
        self._enter("database_names")
        with self.lock:
            return [name for name, collections in self.databases.items() if collections]

    def collection_infos(self, db: str, name: str | None = None) -> list[dict[str, Any]]:
        self._enter("collection_infos")
        with self.lock:
            return [collection.info() for collection in self.databases.get(db, {}).values()
                    if name is None or collection.name == name]

    def find_collection_by_uuid(self, collection_uuid: Any) -> tuple[str, str] | None:
        self._enter("find_collection_by_uuid")
        with self.lock:
            for db, collections in self.databases.items():
                for collection in collections.values():
                    if collection.uuid is not None and collection.uuid == collection_uuid:
                        return db, collection.name
        return None

    def index_specs(self, db: str, coll: str) -> list[dict[str, Any]]:
        self._enter("index_specs")
        with self.lock:
            collection = self.collection(db, coll)
            return [] if collection is None else copy.deepcopy(collection.indexes)

    def collection_size(self, db: str, coll: str) -> tuple[int, int]:
        self._enter("collection_size")
        with self.lock:
            collection = self.collection(db, coll)
            if collection is None:
                return 0, 0
            return (len(collection.documents),
                    sum(len(data) for data in collection.documents.values()))

    def shard_ids(self) -> list[str]:
        return []  # the fake's sharding is a flag: it has no shards of its own

    def chunk_owners(self, db: str, coll: str) -> list[tuple[Any, Any, str]]:
        return []

    def primary_shard(self, db: str) -> str | None:
        return None

    def shard_keys(self) -> dict[str, dict[str, Any]]:
        self._enter("shard_keys")
        if not self.sharded:
            return {}
        with self.lock:
            return {f"{db}.{collection.name}": dict(collection.shard_key)
                    for db, collections in self.databases.items()
                    for collection in collections.values() if collection.shard_key}

    def sample_ids(self, db: str, coll: str, count: int) -> list[Any]:
        """Drawn with replacement, as ``$sample``'s random cursor may repeat a document; a test
        can dictate the sample through ``samples``."""
        self._enter("sample_ids")
        with self.lock:
            if f"{db}.{coll}" in self.samples:
                chosen = list(self.samples[f"{db}.{coll}"])
            else:
                collection = self.collection(db, coll)
                stored = {} if collection is None else collection.documents
                chosen = [RawBSONDocument(stored[key], codec_options=RAW)["_id"]
                          for key in self._random.choices(list(stored), k=count)] \
                    if stored else []
        return sorted(chosen, key=id_key)

    # -- reading -----------------------------------------------------------------------------------
    def read_batches(self, read: RangeRead) -> Iterator[list[RawBSONDocument]]:
        self._enter("read_batches")
        with self.lock:
            collection = self.collection(read.db, read.coll)
            if collection is None:
                return
            if read.collection_uuid is not None and collection.uuid != read.collection_uuid:
                raise OperationFailure(f"Collection {read.db}.{read.coll} UUID differs",
                                       code=COLLECTION_UUID_MISMATCH)
            if read.natural:
                chosen = list(collection.documents.values())
            else:
                lower = id_key(read.after.id if read.after is not None else read.lower)
                upper = None if read.upper is None else id_key(read.upper)
                chosen = [collection.documents[key] for key in sorted(collection.documents)
                          if (key > lower if read.after is not None else key >= lower)
                          and (upper is None or key < upper)]
        batch: list[RawBSONDocument] = []
        size = 0
        for data in chosen:
            batch.append(RawBSONDocument(data, codec_options=RAW))
            size += len(data)
            if len(batch) >= read.batch_size or (read.max_bytes is not None and
                                                 size >= read.max_bytes):
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def find_by_id(self, db: str, coll: str, key: Mapping[str, Any]) -> RawBSONDocument | None:
        self._enter("find_by_id")
        with self.lock:
            collection = self.collection(db, coll)
            if collection is None:
                return None
            found = self._find(collection, key)
            return None if found is None else RawBSONDocument(collection.documents[found],
                                                              codec_options=RAW)

    def find_by_ids(self, db: str, coll: str, ids: list[Any]) -> list[RawBSONDocument]:
        self._enter("find_by_ids")
        found = [self.find_by_id(db, coll, {"_id": value}) for value in ids]
        return [document for document in found if document is not None]

    def watch(self, *, resume_after: Mapping[str, Any] | None = None,
              start_at: Timestamp | None = None, batch_size: int = 1000,
              max_await_ms: int = 250, shard: str | None = None) -> FakeEventStream:
        """A cluster-wide stream: events strictly after ``resume_after``, or at and after
        ``start_at``, or from now. The fake has no shards."""
        if shard is not None:
            raise ValueError(f"{self.label} is a fake replica set: it has no shard {shard!r}")
        self._enter("watch")
        with self.lock:
            if resume_after is not None:
                position = token_position(resume_after)
                self._check_history(position)
                start = next((index for index, event in enumerate(self.event_log)
                              if _time_of(event) > position), len(self.event_log))
            elif start_at is not None:
                position = (start_at.time, start_at.inc)
                self._check_history(position)
                start = next((index for index, event in enumerate(self.event_log)
                              if _time_of(event) >= position), len(self.event_log))
            else:
                start = len(self.event_log)
            return FakeEventStream(self, start)

    def _check_history(self, position: tuple[int, int]) -> None:
        if self._history_start is not None and position < self._history_start:
            raise OperationFailure("Resume of change stream was not possible, as the resume "
                                   "point may no longer be in the oplog.", code=HISTORY_LOST)

    # -- writing -----------------------------------------------------------------------------------
    def insert_documents(self, db: str, coll: str, documents: Sequence[RawBSONDocument]) -> None:
        self._enter("insert_documents", f"{db}.{coll}", mutates=True)
        errors: list[dict[str, Any]] = []
        inserted = 0
        with self.lock:
            collection = self._collection_for_write(db, coll)
            for index, document in enumerate(documents):
                document = raw(document)
                if "_id" not in document:
                    document = raw({"_id": ObjectId(), **bson.decode(document.raw, CODEC)})
                key = id_key(document["_id"])
                if key in collection.documents:
                    errors.append({"index": index, "code": DUPLICATE_KEY,
                                   "errmsg": f"E11000 duplicate key error collection: {db}."
                                             f"{coll} index: _id_ dup key: {{ _id: "
                                             f"{plain(document['_id'])!r} }}",
                                   "keyPattern": {"_id": 1},
                                   "keyValue": {"_id": document["_id"]}, "op": document})
                    continue
                clash = collection.unique_clash(bytes(document.raw), key)
                if clash is not None:
                    errors.append({"index": index, "code": DUPLICATE_KEY,
                                   "errmsg": f"E11000 duplicate key error collection: {db}."
                                             f"{coll} index: {clash}", "op": document})
                    continue
                collection.documents[key] = bytes(document.raw)
                inserted += 1
                self._log("insert", db, coll, document_key={"_id": document["_id"]},
                          full_document=document, collection_uuid=collection.uuid)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [],
                                  "nInserted": inserted, "nUpserted": 0, "nMatched": 0,
                                  "nModified": 0, "nRemoved": 0, "upserted": []})

    def write(self, db: str, coll: str, writes: Sequence[Write]) -> None:
        self._enter("write", f"{db}.{coll}", mutates=True)
        counts = {"nInserted": 0, "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0}
        upserted: list[dict[str, Any]] = []
        with self.lock:
            for index, write in enumerate(writes):
                try:
                    self._apply(db, coll, write, counts, upserted, index)
                except UpdateFailed as exc:
                    raise BulkWriteError({
                        "writeErrors": [{"index": index, "code": exc.code, "errmsg": str(exc),
                                         "op": _describe_write(write)}],
                        "writeConcernErrors": [], **counts, "upserted": upserted}) from None

    def _apply(self, db: str, coll: str, write: Write, counts: dict[str, int],
               upserted: list[dict[str, Any]], index: int) -> None:
        collection = self.collection(db, coll)
        if collection is not None and collection.kind == "view":
            raise UpdateFailed(COMMAND_NOT_SUPPORTED_ON_VIEW, "Namespace is a view, not a "
                               "collection")
        found = None if collection is None else self._find(collection, write.key)
        if isinstance(write, Upsert):
            document = raw(write.document)
            if id_key(document["_id"]) != id_key(write.key["_id"]):
                raise UpdateFailed(IMMUTABLE_FIELD, "After applying the update, the (immutable) "
                                   "field '_id' was found to have been altered")
            _check_unique(collection, bytes(document.raw), id_key(document["_id"]))
            if found is None:
                collection = self._collection_for_write(db, coll)
                collection.documents[id_key(document["_id"])] = bytes(document.raw)
                counts["nUpserted"] += 1
                upserted.append({"index": index, "_id": document["_id"]})
                self._log("insert", db, coll, document_key={"_id": document["_id"]},
                          full_document=document, collection_uuid=collection.uuid)
            else:
                assert collection is not None
                counts["nMatched"] += 1
                counts["nModified"] += collection.documents[found] != bytes(document.raw)
                collection.documents[found] = bytes(document.raw)
                self._log("replace", db, coll, document_key={"_id": document["_id"]},
                          full_document=document, collection_uuid=collection.uuid)
            return
        if found is None or collection is None:
            return  # no upsert: nothing matched, nothing done
        before = bson.decode(collection.documents[found], codec_options=CODEC)
        if isinstance(write, Delete):
            del collection.documents[found]
            counts["nRemoved"] += 1
            self._log("delete", db, coll, document_key={"_id": before["_id"]},
                      collection_uuid=collection.uuid)
            return
        assert isinstance(write, Update)
        after = apply_update(before, write.update)
        counts["nMatched"] += 1
        encoded = bson.encode(after, codec_options=CODEC)
        if encoded == collection.documents[found]:
            return  # a no-op update logs no event
        _check_unique(collection, encoded, found)
        counts["nModified"] += 1
        collection.documents[found] = encoded
        # As a 6.0+ server shows it to a stream opened with showRawUpdateDescription.
        self._log("update", db, coll, document_key={"_id": before["_id"]},
                  raw_update_description={"$v": 2, "diff": top_level_delta(before, after)},
                  collection_uuid=collection.uuid)

    def _find(self, collection: FakeCollection, key: Mapping[str, Any]) -> tuple[Any, ...] | None:
        found = id_key(key["_id"])
        data = collection.documents.get(found)
        if data is None:
            return None
        document = bson.decode(data, codec_options=CODEC)
        for path, value in key.items():
            if path != "_id" and sort_key(_dotted(document, path)) != sort_key(plain(value)):
                return None
        return found

    # -- DDL ---------------------------------------------------------------------------------------
    def create_collection(self, db: str, coll: str, options: Mapping[str, Any]) -> bool:
        self._enter("create_collection", f"{db}.{coll}", mutates=True)
        with self.lock:
            options = _normalised_options(plain(dict(options)))
            existing = self.collection(db, coll)
            if existing is not None:
                # As a server: an identical create succeeds, any other is NamespaceExists.
                return existing.kind != "view" and existing.options == options
            self._create(db, coll, options)
            return True

    def _create(self, db: str, coll: str, options: dict[str, Any],
                log: bool = True) -> FakeCollection:
        kind = "view" if "viewOn" in options else (
            "timeseries" if "timeseries" in options else "collection")
        collection = FakeCollection(
            name=coll, kind=kind, options=options,
            uuid=None if kind == "view" else Binary(uuid.uuid4().bytes, 4),
            indexes=[] if kind == "view" else [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        self.databases.setdefault(db, {})[coll] = collection
        if kind == "view":
            # As on a server, view definitions live in system.views (created without an event).
            views = self.collection(db, "system.views") or self._create(
                db, "system.views", {}, log=False)
            views.documents[id_key(f"{db}.{coll}")] = bson.encode(
                {"_id": f"{db}.{coll}", **options})
        if log:
            description = dict(options)
            if kind == "collection":
                description["idIndex"] = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
            self._log("create", db, coll, operation_description=description,
                      collection_uuid=collection.uuid)
        return collection

    def _collection_for_write(self, db: str, coll: str, log: bool = True) -> FakeCollection:
        """The collection, created implicitly (with its create event) when missing."""
        collection = self.collection(db, coll)
        if collection is None:
            collection = self._create(db, coll, {}, log=log)
        if collection.kind == "view":
            raise OperationFailure("Namespace is a view, not a collection",
                                   code=COMMAND_NOT_SUPPORTED_ON_VIEW)
        return collection

    def _require(self, db: str, coll: str) -> FakeCollection:
        collection = self.collection(db, coll)
        if collection is None:
            raise OperationFailure(f"ns does not exist: {db}.{coll}", code=NAMESPACE_NOT_FOUND)
        return collection

    def drop_collection(self, db: str, coll: str) -> None:
        self._enter("drop_collection", f"{db}.{coll}", mutates=True)
        with self.lock:
            self._drop(db, coll)

    def _drop(self, db: str, coll: str) -> None:
        collection = self.databases.get(db, {}).pop(coll, None)
        views = self.collection(db, "system.views")
        if collection is not None and collection.kind == "view" and views is not None:
            views.documents.pop(id_key(f"{db}.{coll}"), None)
        # As PyMongo's drop_collection: a missing one is no error. Change streams never report
        # system collections.
        if collection is not None and not coll.startswith("system."):
            self._log("drop", db, coll, collection_uuid=collection.uuid)

    def drop_database(self, db: str) -> None:
        self._enter("drop_database", db, mutates=True)
        with self.lock:
            collections = self.databases.get(db)
            if not collections:
                self.databases.pop(db, None)
                return
            for name in list(collections):
                self._drop(db, name)  # a server reports each collection's drop first
            del self.databases[db]
            self._log("dropDatabase", db, None)

    def rename_collection(self, source: str, target: str, drop_target: bool) -> None:
        self._enter("rename_collection", f"{source}->{target}", mutates=True)
        source_db, source_coll = source.split(".", 1)
        target_db, target_coll = target.split(".", 1)
        with self.lock:
            collection = self.collection(source_db, source_coll)
            if collection is None:
                raise OperationFailure(f"Source collection {source} does not exist",
                                       code=NAMESPACE_NOT_FOUND)
            existing = self.collection(target_db, target_coll)
            description: dict[str, Any] = {"to": {"db": target_db, "coll": target_coll}}
            if existing is not None:
                if not drop_target:
                    raise OperationFailure("target namespace exists", code=NAMESPACE_EXISTS)
                description["dropTarget"] = existing.uuid
            del self.databases[source_db][source_coll]
            old_uuid = collection.uuid
            collection.name = target_coll
            if source_db != target_db:  # copied into the other database: a new collection
                collection.uuid = Binary(uuid.uuid4().bytes, 4)
            self.databases.setdefault(target_db, {})[target_coll] = collection
            self._log("rename", source_db, source_coll, operation_description=description,
                      collection_uuid=old_uuid, to=description["to"])

    def create_indexes(self, db: str, coll: str, specs: list[Mapping[str, Any]]) -> None:
        """Simplification: one at a time (the server builds them together)."""
        for spec in specs:
            self.create_index(db, coll, spec)

    def create_index(self, db: str, coll: str, spec: Mapping[str, Any]) -> None:
        self._enter("create_index", f"{db}.{coll}:{spec.get('name')}", mutates=True)
        spec = plain(dict(spec))
        with self.lock:
            collection = self._collection_for_write(db, coll)
            stored = {"v": 2, **{k: v for k, v in spec.items() if k != "v"}}
            key = list(dict(stored["key"]).items())
            for existing in collection.indexes:
                same_key = list(dict(existing["key"]).items()) == key
                if existing["name"] == stored["name"]:
                    if not same_key:
                        raise OperationFailure("An existing index has the same name as the "
                                               "requested index but a different key",
                                               code=INDEX_KEY_SPECS_CONFLICT)
                    if _index_options(existing) != _index_options(stored):
                        raise OperationFailure("An existing index has the same name as the "
                                               "requested index with different options",
                                               code=INDEX_OPTIONS_CONFLICT)
                    return  # already there: a no-op
                if same_key and _index_options(existing) == _index_options(stored):
                    raise OperationFailure(f"Index already exists with a different name: "
                                           f"{existing['name']}", code=INDEX_OPTIONS_CONFLICT)
            if stored.get("unique") and collection.unique_violation(dict(stored["key"])):
                raise OperationFailure("E11000 duplicate key error", code=DUPLICATE_KEY)
            collection.indexes.append(stored)
            self._log("createIndexes", db, coll, operation_description={"indexes": [stored]},
                      collection_uuid=collection.uuid)

    def drop_index(self, db: str, coll: str, name: str) -> None:
        self._enter("drop_index", f"{db}.{coll}:{name}", mutates=True)
        with self.lock:
            collection = self._require(db, coll)
            if name == "_id_":
                raise OperationFailure("cannot drop _id index", code=INVALID_OPTIONS)
            spec = collection.index(name)
            if spec is None:
                raise OperationFailure(f"index not found with name [{name}]",
                                       code=INDEX_NOT_FOUND)
            collection.indexes.remove(spec)
            self._log("dropIndexes", db, coll, operation_description={"indexes": [spec]},
                      collection_uuid=collection.uuid)

    def modify_collection(self, db: str, coll: str, changes: Mapping[str, Any]) -> None:
        """``collMod``: index hidden/expireAfterSeconds/prepareUnique/unique, cappedSize,
        cappedMax, expireAfterSeconds (clustered), validation and view options."""
        self._enter("modify_collection", f"{db}.{coll}:{plain(dict(changes))}", mutates=True)
        changes = plain(dict(changes))
        with self.lock:
            collection = self._require(db, coll)
            allowed = {"index", "validator", "validationLevel", "validationAction", "viewOn",
                       "pipeline", "expireAfterSeconds", "changeStreamPreAndPostImages",
                       "cappedSize", "cappedMax"}
            unknown = set(changes) - allowed
            if unknown:
                raise OperationFailure(f"BSON field 'collMod.{sorted(unknown)[0]}' is an "
                                       f"unknown field.", code=40415)
            is_view = collection.kind == "view"
            if is_view != bool(set(changes) & {"viewOn", "pipeline"}) or (
                    is_view and set(changes) - {"viewOn", "pipeline"}):
                raise OperationFailure("option not supported on this namespace",
                                       code=INVALID_OPTIONS)
            if "index" in changes:
                self._modify_index(collection, changes["index"])
            if "expireAfterSeconds" in changes and "clusteredIndex" not in collection.options \
                    and collection.kind != "timeseries":
                raise OperationFailure("expireAfterSeconds needs a clustered collection",
                                       code=INVALID_OPTIONS)
            if ("cappedSize" in changes or "cappedMax" in changes) and \
                    not collection.options.get("capped"):
                raise OperationFailure("collection is not capped", code=INVALID_OPTIONS)
            for name in ("validator", "validationLevel", "validationAction", "viewOn",
                         "pipeline", "expireAfterSeconds", "changeStreamPreAndPostImages"):
                if name in changes:
                    collection.options[name] = changes[name]
            if "cappedSize" in changes:
                collection.options["size"] = changes["cappedSize"]
            if "cappedMax" in changes:
                collection.options["max"] = changes["cappedMax"]
            self._log("modify", db, coll, operation_description=changes,
                      collection_uuid=collection.uuid)

    def _modify_index(self, collection: FakeCollection, change: Mapping[str, Any]) -> None:
        spec = collection.index(str(change.get("name")))
        if spec is None:
            raise OperationFailure(f"cannot find index {change.get('name')}",
                                   code=INDEX_NOT_FOUND)
        updated = dict(spec)
        for option in ("hidden", "prepareUnique"):
            if option in change:
                if change[option]:
                    updated[option] = True
                else:
                    updated.pop(option, None)
        if "expireAfterSeconds" in change:
            if "expireAfterSeconds" not in spec:
                raise OperationFailure("no expireAfterSeconds field to update",
                                       code=INVALID_OPTIONS)
            updated["expireAfterSeconds"] = change["expireAfterSeconds"]
        if "unique" in change and not spec.get("unique"):
            if change["unique"] is not True or not spec.get("prepareUnique"):
                raise OperationFailure("Cannot make index unique with 'prepareUnique' not set "
                                       "to true", code=INVALID_OPTIONS)
            if collection.unique_violation(dict(spec["key"])):
                raise OperationFailure("Cannot convert the index to unique. Please resolve "
                                       "conflicting documents before running collMod again.",
                                       code=CANNOT_CONVERT_INDEX_TO_UNIQUE)
            updated["unique"] = True
            updated.pop("prepareUnique", None)
        collection.indexes[collection.indexes.index(spec)] = updated

    def shard_collection(self, db: str, coll: str, key: Mapping[str, Any]) -> None:
        self._enter("shard_collection", f"{db}.{coll}", mutates=True)
        if not self.sharded:
            raise OperationFailure("no such command: 'shardCollection'", code=59)
        with self.lock:
            collection = self._collection_for_write(db, coll)
            if collection.shard_key is not None:
                if collection.shard_key != dict(key):
                    raise OperationFailure("already sharded with another key", code=23)
                return
            collection.shard_key = dict(key)
            self._log("shardCollection", db, coll, operation_description={
                "shardKey": dict(key), "unique": False}, collection_uuid=collection.uuid)

    # -- the event log -----------------------------------------------------------------------------
    def _log(self, operation_type: str, db: str, coll: str | None,
             **fields: Any) -> RawBSONDocument:
        """Log an event at a new cluster time (every write advances the clock)."""
        event = change_event(operation_type, db, coll, self._tick(), **fields)
        self.event_log.append(event)
        return event


def _check_unique(collection: FakeCollection | None, data: bytes, own: tuple[Any, ...]) -> None:
    clash = None if collection is None else collection.unique_clash(data, own)
    if clash is not None:
        raise UpdateFailed(DUPLICATE_KEY, f"E11000 duplicate key error index: {clash}")


def _time_of(event: RawBSONDocument) -> tuple[int, int]:
    ts: Timestamp = event["clusterTime"]
    return ts.time, ts.inc


def _normalised_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as the server keeps them: capped sizes rounded up, no ``idIndex``."""
    options = {name: value for name, value in options.items() if name != "idIndex"}
    if options.get("capped"):
        size = int(options["size"])
        options["size"] = 4096 if size <= 4096 else size + (-size % 256)
    if "viewOn" in options:
        options.setdefault("pipeline", [])
    clustered = options.get("clusteredIndex")
    if clustered is not None:
        name = clustered.get("name", "_id_") if isinstance(clustered, dict) else "_id_"
        options["clusteredIndex"] = {"v": 2, "key": {"_id": 1}, "name": name, "unique": True}
    return options


def _index_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in spec.items() if name not in ("v", "key", "name")}


def _describe_write(write: Write) -> dict[str, Any]:
    if isinstance(write, Upsert):
        return {"q": dict(write.key), "u": write.document, "upsert": True}
    if isinstance(write, Delete):
        return {"q": dict(write.key), "limit": 1}
    return {"q": dict(write.key), "u": dict(write.update)}


# -- the metadata store ----------------------------------------------------------------------------


def _stored(document: Mapping[str, Any]) -> dict[str, Any]:
    """A document as the metadata database gives it back (BSON round trip: millisecond
    dates, lists for tuples, ints narrowed as BSON stores them)."""
    return bson.decode(bson.encode(document), codec_options=METADATA_CODEC)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class MemoryStore:
    """``MigrationStore`` in memory, with ``MetadataStore``'s semantics: records are stored as
    the BSON documents ``to_document`` gives (so a field not saved is not persisted), saves set
    only the named fields, claims are atomic under a lock, and ``clock`` stands for the
    destination server's clock (lease expiry, ``$currentDate``).

    Simplification: transient errors are not retried here (``MetadataStore`` retries them); a
    fault injected with ``fail_next`` stands for one that outlasted the retries.
    """

    def __init__(self, *, clock: Callable[[], datetime.datetime] = _now,
                 journal: Journal | None = None) -> None:
        self.clock = clock
        self.journal: Journal = journal if journal is not None else []
        self._lock = threading.RLock()
        self._faults: dict[str, list[BaseException]] = {}
        self.global_document: dict[str, Any] | None = None
        self.resume_documents: dict[str, dict[str, Any]] = {}
        self.namespace_documents: dict[str, dict[str, Any]] = {}
        self.partition_documents: dict[str, dict[str, Any]] = {}
        self.created: dict[str, dict[str, Any]] = {}  # _id -> {kind, confirmed}
        self.leases: dict[str, dict[str, Any]] = {}
        self.v1_migration: dict[str, Any] | None = None
        # stream -> seq -> batch
        self.buffer_documents: dict[str, dict[int, BufferedBatch]] = {}
        # The views for MongoDB's tooling: collection name -> encoded _id -> document.
        self.tooling: dict[str, dict[bytes, dict[str, Any]]] = {
            "statistics": {}, "uuidMap": {}, "indexCorrection": {}}

    def _put_tooling(self, collection: str, document: Mapping[str, Any]) -> None:
        stored = _stored(document)
        self.tooling[collection][bson.encode({"_id": stored["_id"]})] = stored

    def _refresh_statistics(self, db: str, coll: str) -> None:
        partitions = [PartitionRecord.from_document(_stored(document))
                      for document in self.partition_documents.values()
                      if document["namespace"] == {"db": db, "coll": coll}]
        namespace = self.namespace_documents.get(f"{db}.{coll}") or {}
        statistics = CollectionStatistics.of(NamespaceRef(db=db, coll=coll),
                                             namespace.get("uuid") or f"{db}.{coll}",
                                             copy_totals_of(partitions))
        self._put_tooling("statistics", statistics.to_document())

    @classmethod
    def with_v1_layout(cls, migration: Mapping[str, Any],
                       partitions: Iterable[Mapping[str, Any]] = ()) -> MemoryStore:
        """A store holding the first release's layout (one ``migration`` document)."""
        store = cls()
        store.v1_migration = _stored(migration)
        for partition in partitions:
            store.partition_documents[partition["_id"]] = _stored(partition)
        return store

    def fail_next(self, method: str, error: BaseException, times: int = 1) -> None:
        with self._lock:
            self._faults.setdefault(method, []).extend([error] * times)

    def _enter(self, method: str, detail: str = "", mutates: bool = True) -> None:
        with self._lock:
            pending = self._faults.get(method)
            error = pending.pop(0) if pending else None
            if error is None and mutates:
                self.journal.append(f"store.{method}{':' + detail if detail else ''}")
        if error is not None:
            raise error

    # -- the migration -----------------------------------------------------------------------------
    def load(self, instance: str = COORDINATOR) -> StoredMigration | None:
        self._enter("load", mutates=False)
        with self._lock:
            if self.global_document is not None:
                version = int(self.global_document.get("schemaVersion", 0))
                if version > SCHEMA_VERSION:
                    raise MetadataTooNew(f"metadata schema {version} is newer than "
                                         f"{SCHEMA_VERSION}")
                resume = self.resume_documents.get(instance)
                if resume is None:
                    return None
                return StoredMigration(GlobalState.from_document(_stored(self.global_document)),
                                       ResumeData.from_document(_stored(resume)), version)
            if self.v1_migration is None:
                return None
            global_state, resume_data = upgrade_v1_migration(_stored(self.v1_migration))
            return StoredMigration(global_state, resume_data, 1)

    def upgrade(self) -> None:
        self._enter("upgrade")
        with self._lock:
            if self.v1_migration is None:
                return
            if self.global_document is None:
                global_state, resume = upgrade_v1_migration(_stored(self.v1_migration))
                self.resume_documents[resume.id] = _stored(resume.to_document())
                self.global_document = _stored(global_state.to_document())
            for key, document in list(self.partition_documents.items()):
                if is_v1_partition(document):
                    self.partition_documents[key] = _stored(
                        upgrade_v1_partition(document).to_document())
            self.v1_migration = None

    def create(self, global_state: GlobalState, resume: ResumeData,
               replace_superseded: bool = False) -> StoredMigration:
        self._enter("create")
        with self._lock:
            stale = self.global_document
            self.resume_documents[resume.id] = _stored(resume.to_document())
            if stale is None or (replace_superseded and stale.get("supersededBy")
                                 and stale.get("migrationId") != global_state.migration_id):
                self.global_document = _stored(global_state.to_document())
        stored = self.load(resume.id)
        assert stored is not None
        return stored

    def mark_reset_started(self) -> None:
        self._enter("mark_reset_started")
        at = _stored({"t": self.clock()})["t"]
        with self._lock:
            for document in (self.global_document, self.v1_migration):
                if document is not None:
                    document["resetStartedAt"] = at

    def save_global(self, record: GlobalState, *fields: str) -> None:
        self._enter("save_global", ",".join(fields))
        with self._lock:
            if self.global_document is not None and self.global_document["_id"] == record.id:
                self.global_document.update(_stored(record.stored_values(*fields)))

    def add_hot_documents(self, documents: list[str]) -> list[str]:
        self._enter("add_hot_documents")
        with self._lock:
            if self.global_document is None:
                return list(documents)
            stored = self.global_document.setdefault("hotDocuments", [])
            stored.extend(document for document in documents if document not in stored)
            return list(stored)

    def save_resume(self, record: ResumeData, *fields: str) -> None:
        self._enter("save_resume", ",".join(fields))
        record.updated_at = self.clock()
        with self._lock:
            document = self.resume_documents.get(record.id)
            if document is not None:
                document.update(_stored(record.stored_values(*fields, "updated_at")))

    def load_global(self) -> GlobalState | None:
        self._enter("load_global", mutates=False)
        with self._lock:
            return None if self.global_document is None else \
                GlobalState.from_document(_stored(self.global_document))

    def resume_records(self) -> dict[str, ResumeData]:
        self._enter("resume_records", mutates=False)
        with self._lock:
            return {key: ResumeData.from_document(_stored(document))
                    for key, document in self.resume_documents.items()}

    def record_error(self, name: str, message: str, resumable: bool = False) -> None:
        self._enter("record_error", name)
        error = ErrorRecord(name=name, message=message, at=self.clock(), resumable=resumable)
        with self._lock:
            if self.global_document is not None:
                self.global_document["error"] = _stored(error.to_document())

    def clear_error(self) -> None:
        self._enter("clear_error")
        with self._lock:
            if self.global_document is not None:
                self.global_document["error"] = None

    # -- the change buffer ---------------------------------------------------------------------
    def append_buffer(self, batch: BufferedBatch, stream: str = MAIN_STREAM) -> None:
        self._enter("append_buffer", f"{stream}:{batch.seq}")
        with self._lock:  # events and position stored together, replacing a retried batch
            self.buffer_documents.setdefault(stream, {})[batch.seq] = copy.deepcopy(batch)

    def buffer_batches(self, after_seq: int, limit: int,
                       stream: str = MAIN_STREAM) -> list[BufferedBatch]:
        self._enter("buffer_batches", mutates=False)
        with self._lock:
            stored = self.buffer_documents.get(stream, {})
            return [copy.deepcopy(stored[seq])
                    for seq in sorted(stored) if seq > after_seq][:limit]

    def drop_buffer_through(self, seq: int, stream: str = MAIN_STREAM) -> None:
        self._enter("drop_buffer_through", f"{stream}:{seq}")
        with self._lock:
            stored = self.buffer_documents.get(stream, {})
            for key in [key for key in stored if key <= seq]:
                del stored[key]

    def buffer_totals(self, stream: str = MAIN_STREAM) -> BufferTotals:
        self._enter("buffer_totals", mutates=False)
        with self._lock:
            totals = BufferTotals()
            stored = self.buffer_documents.get(stream, {})
            batches = [stored[seq] for seq in sorted(stored)]
            totals.batches = len(batches)
            totals.events = sum(len(batch.events) for batch in batches)
            totals.size = sum(batch.size for batch in batches)
            if batches:
                totals.last_seq = batches[-1].seq
                totals.last_event_ts = batches[-1].last_event_ts
                totals.resume_token = copy.deepcopy(batches[-1].resume_token)
            return totals

    # -- namespaces --------------------------------------------------------------------------------
    def put_namespace(self, record: NamespaceRecord) -> None:
        self._enter("put_namespace", record.id)
        with self._lock:
            self.namespace_documents[record.id] = _stored(record.to_document())
            if record.is_collection and record.uuid is not None:
                self._put_tooling("uuidMap", UuidMapping.of(record).to_document())

    def remove_namespace(self, record: NamespaceRecord) -> None:
        self._enter("remove_namespace", record.id)
        with self._lock:
            self.namespace_documents.pop(record.id, None)
            if record.is_collection and record.uuid is not None:
                mapping = UuidMapping.of(record).to_document()
                self.tooling["uuidMap"].pop(bson.encode({"_id": _stored(mapping)["_id"]}), None)

    def namespaces(self) -> list[NamespaceRecord]:
        self._enter("namespaces", mutates=False)
        with self._lock:
            return [NamespaceRecord.from_document(_stored(self.namespace_documents[key]))
                    for key in sorted(self.namespace_documents)]

    def mark_partitioned(self, namespace_id: str) -> None:
        self._enter("mark_partitioned", namespace_id)
        with self._lock:
            if namespace_id in self.namespace_documents:
                self.namespace_documents[namespace_id]["partitioned"] = True

    # -- partitions --------------------------------------------------------------------------------
    def add_partitions(self, partitions: Iterable[PartitionRecord]) -> None:
        self._enter("add_partitions")
        with self._lock:
            for partition in partitions:
                self.partition_documents[partition.id] = _stored(partition.to_document())

    def replace_partitions(self, db: str, coll: str,
                           partitions: Iterable[PartitionRecord]) -> None:
        self._enter("replace_partitions")
        with self._lock:
            for key in [key for key, document in self.partition_documents.items()
                        if document["namespace"] == {"db": db, "coll": coll}]:
                del self.partition_documents[key]
            for partition in partitions:
                self.partition_documents[partition.id] = _stored(partition.to_document())
            self._refresh_statistics(db, coll)

    def partition(self, partition_id: str) -> PartitionRecord | None:
        self._enter("partition", mutates=False)
        with self._lock:
            document = self.partition_documents.get(partition_id)
            return None if document is None else PartitionRecord.from_document(_stored(document))

    def partition_records(self) -> list[PartitionRecord]:
        with self._lock:
            return [PartitionRecord.from_document(_stored(document))
                    for document in self.partition_documents.values()]

    def _claim_lapsed(self, document: Mapping[str, Any]) -> bool:
        """A claim with a lease whose renewal is older than the lease, by the store's clock."""
        millis, renewed = document.get("claimLeaseMillis"), document.get("claimRenewedAt")
        if not millis or renewed is None:
            return False
        return bool(renewed + datetime.timedelta(milliseconds=millis) < self.clock())

    def claim_partition(self, owner: str, lease_seconds: float | None = None, *,
                        instance: str | None = None) -> PartitionRecord | None:
        self._enter("claim_partition", owner, mutates=False)
        with self._lock:
            unfinished = [document for document in self.partition_documents.values()
                          if document.get("partitionPhase") != PartitionStatus.DONE.value]
            # One the owner holds already first (a claim whose answer was lost, sent again).
            free = [document for document in unfinished if document.get("owner") == owner] or \
                [document for document in unfinished
                 if (instance is None or document.get("instance") in (None, instance))
                 and (document.get("owner") is None or self._claim_lapsed(document))]
            if not free:
                return None
            document = min(free, key=lambda d: (d["namespace"]["db"], d["namespace"]["coll"],
                                                d["index"]))
            self.journal.append(f"store.claim_partition:{document['_id']}:{owner}")
            document["owner"] = owner
            document["claimLeaseMillis"] = None if lease_seconds is None else \
                max(1, int(lease_seconds * 1000))
            document["claimRenewedAt"] = _stored({"t": self.clock()})["t"]
            return PartitionRecord.from_document(_stored(document))

    def renew_partition_claim(self, partition_id: str, owner: str) -> bool:
        self._enter("renew_partition_claim", partition_id, mutates=False)
        with self._lock:
            document = self.partition_documents.get(partition_id)
            if document is None or document.get("owner") != owner:
                return False
            document["claimRenewedAt"] = _stored({"t": self.clock()})["t"]
            return True

    def release_partition(self, partition_id: str, owner: str) -> None:
        self._enter("release_partition", f"{partition_id}:{owner}")
        with self._lock:
            document = self.partition_documents.get(partition_id)
            if document is not None and document.get("owner") == owner:
                document.update({"owner": None, "claimRenewedAt": None,
                                 "claimLeaseMillis": None})

    def release_claims(self, owner_prefix: str) -> None:
        self._enter("release_claims", owner_prefix)
        with self._lock:
            for document in self.partition_documents.values():
                if document.get("owner") is not None and \
                        str(document["owner"]).startswith(owner_prefix):
                    document.update({"owner": None, "claimRenewedAt": None,
                                     "claimLeaseMillis": None})

    def record_partition_progress(self, partition_id: str, owner: str, last_id: Any,
                                  copied_documents: int, copied_bytes: int) -> bool:
        self._enter("record_partition_progress", f"{partition_id}:{owner}")
        with self._lock:
            document = self.partition_documents.get(partition_id)
            if document is None or document.get("owner") != owner or \
                    document.get("partitionPhase") == PartitionStatus.DONE.value:
                return False  # the fence: only the claim's holder records progress
            document.update(_stored({
                "partitionPhase": PartitionStatus.IN_PROGRESS.value,
                "lastCopied": CopiedId(id=last_id).to_document(),
                "claimRenewedAt": self.clock(), "copiedDocumentCount": copied_documents,
                "copiedByteCount": copied_bytes}))
            return True

    def finish_partition(self, partition_id: str) -> None:
        self._enter("finish_partition", partition_id)
        with self._lock:
            document = self.partition_documents.get(partition_id)
            if document is not None:
                document.update({"partitionPhase": PartitionStatus.DONE.value, "owner": None,
                                 "claimLeaseMillis": None})
                self._refresh_statistics(document["namespace"]["db"],
                                         document["namespace"]["coll"])

    def copy_totals(self, *, instance: str | None = None) -> CopyTotals:
        self._enter("copy_totals", mutates=False)
        return copy_totals_of(partition for partition in self.partition_records()
                              if instance is None or partition.instance in (None, instance))

    def partition_counts(self, *, instance: str | None = None) -> tuple[int, int]:
        self._enter("partition_counts", mutates=False)
        with self._lock:
            mine = [document for document in self.partition_documents.values()
                    if instance is None or document.get("instance") in (None, instance)]
            done = sum(document.get("partitionPhase") == PartitionStatus.DONE.value
                       for document in mine)
            return done, len(mine)

    def record_index_builds(self, namespace: NamespaceRecord, names: list[str], *,
                            built: bool) -> None:
        self._enter("record_index_builds", f"{namespace.id}:{built}")
        with self._lock:
            for name in names:
                self._put_tooling("indexCorrection", IndexCorrection(
                    key=IndexCorrectionKey(db_name=namespace.db,
                                           coll_uuid=namespace.uuid or namespace.id,
                                           index_name=name),
                    namespace=NamespaceRef(db=namespace.db, coll=namespace.name),
                    last_corrected_counter=1 if built else 0).to_document())

    # -- what this migration created ---------------------------------------------------------------
    def record_created(self, database: str, collection: str, *, new_database: bool) -> None:
        self._enter("record_created", f"{database}.{collection}")
        with self._lock:
            if new_database:
                self.created.setdefault(database, {"kind": "database"})
            self.created.setdefault(f"{database}.{collection}",
                                    {"kind": "collection", "confirmed": False})

    def confirm_created(self, database: str, collection: str) -> None:
        self._enter("confirm_created", f"{database}.{collection}")
        with self._lock:
            record = self.created.get(f"{database}.{collection}")
            if record is not None:
                record["confirmed"] = True

    def forget_created(self, database: str, collection: str) -> None:
        self._enter("forget_created", f"{database}.{collection}")
        with self._lock:
            record = self.created.get(f"{database}.{collection}")
            if record is not None and record.get("confirmed") is False:
                del self.created[f"{database}.{collection}"]

    def created_databases(self) -> list[str]:
        with self._lock:
            return sorted(name for name, record in self.created.items()
                          if record["kind"] == "database")

    def created_namespaces(self) -> list[str]:
        """Confirmed collections (the first release's records, without the flag, count)."""
        with self._lock:
            return sorted(name for name, record in self.created.items()
                          if record["kind"] == "collection"
                          and record.get("confirmed") is not False)

    def unconfirmed_namespaces(self) -> list[str]:
        with self._lock:
            return sorted(name for name, record in self.created.items()
                          if record["kind"] == "collection" and record.get("confirmed") is False)

    # -- the lease ---------------------------------------------------------------------------------
    def _live(self, document: Mapping[str, Any]) -> bool:
        """Live while renewedAt + leaseMillis is not past the store's clock."""
        renewed = document.get("renewedAt")
        if renewed is None:
            return False
        return bool(renewed + datetime.timedelta(milliseconds=document["leaseMillis"])
                    >= self.clock())

    def try_take_lease(self, lease: LeaseRecord, *, from_owner: str | None = None) -> bool:
        self._enter("try_take_lease", lease.owner)
        with self._lock:
            current = self.leases.get(lease.id)
            if current is not None and current.get("owner") != lease.owner:
                takeable = not self._live(current) if from_owner is None \
                    else current.get("owner") == from_owner
                if not takeable:
                    return False  # held by another owner: nothing is written
            document = _stored(lease.to_document())
            document["renewedAt"] = _stored({"t": self.clock()})["t"]
            self.leases[lease.id] = document
            return True

    def renew_lease(self, lease_id: str, owner: str) -> bool:
        self._enter("renew_lease", owner)
        with self._lock:
            current = self.leases.get(lease_id)
            if current is None or current.get("owner") != owner:
                return False
            current["renewedAt"] = _stored({"t": self.clock()})["t"]
            return True

    def drop_lease(self, lease_id: str, owner: str) -> None:
        self._enter("drop_lease", owner)
        with self._lock:
            current = self.leases.get(lease_id)
            if current is not None and current.get("owner") == owner:
                del self.leases[lease_id]

    def read_lease(self, lease_id: str) -> tuple[LeaseRecord | None, bool]:
        self._enter("read_lease", mutates=False)
        with self._lock:
            current = self.leases.get(lease_id)
            if current is None:
                return None, False
            return LeaseRecord.from_document(_stored(current)), self._live(current)

__all__ = ["FakeCluster", "FakeEventStream", "MemoryStore",
           "apply_update", "change_event", "id_key", "plain", "raw", "token",
           "update_description"]
