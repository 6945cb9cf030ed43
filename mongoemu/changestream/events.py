"""Turning oplog entries into the change events a stream reports (brief §3.5, §3.6).

Building an event is split in two, like the server's pipeline: :func:`events_for_entry` decides
which events an entry produces for a stream and computes their resume tokens (cheap, done for
every scanned entry, including those skipped while resuming); :meth:`ChangeEvent.render` builds
the document the client sees, looking up ``fullDocument`` and pre/post images only for events
actually returned.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson.binary import Binary
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import decode, sort_key, values_equal
from mongoemu.changestream.resume_token import Token, build_event_token
from mongoemu.errors import CommandError
from mongoemu.oplog import OplogEntry

if TYPE_CHECKING:
    from mongoemu.storage.catalog import Catalog

INTERNAL_DATABASES = frozenset({"admin", "config", "local"})

# What a stream shows without showExpandedEvents.
CLASSIC_TYPES = frozenset({"insert", "update", "replace", "delete", "drop", "rename",
                           "dropDatabase", "invalidate"})

# No-op oplog entries whose o2 announces a sharding DDL event.
SHARDING_EVENTS = ("shardCollection", "reshardCollection", "refineCollectionShardKey")

FULL_DOCUMENT_MODES = ("default", "updateLookup", "whenAvailable", "required")
BEFORE_CHANGE_MODES = ("off", "whenAvailable", "required")


@dataclass(frozen=True)
class StreamScope:
    """What a stream watches: one collection, one database, or the whole cluster."""

    db: str | None = None  # None: whole cluster
    coll: str | None = None  # None: whole database (or cluster)

    @property
    def kind(self) -> str:
        if self.db is None:
            return "cluster"
        return "database" if self.coll is None else "collection"

    def sees(self, db: str, coll: str | None) -> bool:
        """Whether events on ``db.coll`` (``coll`` None: the database itself) are in scope."""
        if self.db is None:
            return db not in INTERNAL_DATABASES and not _is_system(coll)
        if self.coll is None:
            return db == self.db and not _is_system(coll)
        return db == self.db and (coll is None or coll == self.coll)

    def invalidated_by(self, operation_type: str) -> bool:
        if self.kind == "collection":
            return operation_type in ("drop", "rename", "dropDatabase")
        if self.kind == "database":
            return operation_type == "dropDatabase"
        return False


def _is_system(coll: str | None) -> bool:
    return coll is not None and coll.startswith("system.")


@dataclass(frozen=True)
class StreamOptions:
    scope: StreamScope
    full_document: str = "default"
    full_document_before_change: str = "off"
    show_expanded_events: bool = False
    disambiguated_paths: bool = False  # updateDescription.disambiguatedPaths (expanded, 6.1+)
    # showRawUpdateDescription (6.0+): an update is reported as its oplog entry's ``o``, the
    # {$v: 2, diff} delta, in ``rawUpdateDescription`` instead of ``updateDescription``.
    raw_update_description: bool = False
    # Embed stored documents as raw BSON; False when tail stages need plain, mutable dicts.
    raw_documents: bool = True


@dataclass
class ChangeEvent:
    operation_type: str
    token: Token
    cluster_time: Timestamp
    wall: datetime.datetime
    ns: dict[str, str]
    collection_uuid: uuid.UUID | None
    operation: OplogEntry  # the (sub-)entry it came from: documents, images, descriptions
    identifier: dict[str, Any]  # the token's eventIdentifier
    txn_op_index: int
    document_key: dict[str, Any] | None = None
    operation_description: dict[str, Any] | None = None
    state_before_change: dict[str, Any] | None = None
    to: dict[str, str] | None = None
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None
    in_transaction: bool = False
    is_invalidate: bool = False
    expanded_only: bool = False

    def render(self, options: StreamOptions, catalog: "Catalog") -> dict[str, Any]:
        """The event document, field order as the server builds it (brief §3.6)."""
        expanded = options.show_expanded_events
        doc: dict[str, Any] = {}
        if self.in_transaction:
            doc["txnNumber"] = Int64(self.txn_number or 0)
            doc["lsid"] = self.lsid
        if self.to is not None:
            doc["to"] = self.to
        doc["_id"] = self.token.document
        doc["operationType"] = self.operation_type
        doc["clusterTime"] = self.cluster_time
        if self.is_invalidate:
            doc["wallTime"] = self.wall
            return doc
        if expanded and self.collection_uuid is not None:
            doc["collectionUUID"] = Binary.from_uuid(self.collection_uuid)
        doc["wallTime"] = self.wall
        if self.operation_type in ("insert", "replace"):
            doc["fullDocument"] = _document(self.operation.raw_document, options)
        elif self.operation_type == "update" and options.full_document != "default":
            doc["fullDocument"] = self._post_image(options, catalog)
        doc["ns"] = self.ns
        if self.document_key is not None:
            doc["documentKey"] = self.document_key
        if expanded and self.operation_description is not None:
            doc["operationDescription"] = self.operation_description
        if self.operation_type == "update":
            diff = self.operation.extra.get("diff")
            if options.raw_update_description and diff is not None:
                doc["rawUpdateDescription"] = {"$v": 2, "diff": diff}
            else:
                doc["updateDescription"] = self._update_description(options.disambiguated_paths)
        if expanded and self.state_before_change is not None:
            doc["stateBeforeChange"] = self.state_before_change
        if (options.full_document_before_change != "off"
                and self.operation_type in ("update", "replace", "delete")):
            doc["fullDocumentBeforeChange"] = self._pre_image(options)
        return doc

    def _post_image(self, options: StreamOptions, catalog: "Catalog") -> Any:
        operation = self.operation
        if options.full_document == "updateLookup":
            return self._lookup(options, catalog)
        if operation.images_enabled and operation.post_image is not None:
            return operation.post_image
        if options.full_document == "required":
            raise CommandError(47, "Change stream was configured to require a post-image for "
                                   "all update, delete and replace events, but the post-image "
                                   f"was not found for event: {self._describe()}")
        return None

    def _pre_image(self, options: StreamOptions) -> Any:
        operation = self.operation
        if operation.images_enabled and operation.pre_image is not None:
            return operation.pre_image
        if options.full_document_before_change == "required":
            raise CommandError(47, "Change stream was configured to require a pre-image for "
                                   "all update, delete and replace events, but the pre-image "
                                   f"was not found for event: {self._describe()}")
        return None

    def _lookup(self, options: StreamOptions, catalog: "Catalog") -> Any:
        """The document's current version (updateLookup), or None when it is gone."""
        collection = catalog.collection(self.ns["db"], self.ns["coll"])
        key = self.document_key or {}
        # A collection of the same name that is not the one the event came from (dropped and
        # re-created, renamed over) does not hold this document.
        if collection is None or collection.uuid != self.collection_uuid or "_id" not in key:
            return None
        raw = collection.get_raw(sort_key(key["_id"]))
        if raw is None:
            return None
        if len(key) > 1:
            # Sharded collection: the document must still carry the same shard-key values.
            current = decode(raw)
            if not all(values_equal(_dotted(current, path), value)
                       for path, value in key.items()):
                return None
        return _document(raw, options)

    def _update_description(self, disambiguate: bool) -> dict[str, Any]:
        source = self.operation.update_description or {}
        description = {"updatedFields": source.get("updatedFields", {}),
                       "removedFields": source.get("removedFields", []),
                       "truncatedArrays": source.get("truncatedArrays", [])}
        if disambiguate:
            # Only the $v:2 diff tells an array index from a field named "0", so the writer
            # keeps it in extra["diff"]; an entry without one has nothing ambiguous to report.
            diff = self.operation.extra.get("diff")
            if diff is None:
                description["disambiguatedPaths"] = {}
            else:
                from mongoemu.query.update_description import disambiguated_paths
                description["disambiguatedPaths"] = disambiguated_paths(diff)
        return description

    def _describe(self) -> str:
        return (f"{{_id: {self.token.document}, operationType: {self.operation_type}, "
                f"ns: {self.ns}, documentKey: {self.document_key}}}")


def events_for_entry(entry: OplogEntry, options: StreamOptions) -> list[ChangeEvent]:
    """The events (0..n) ``entry`` produces for a stream, invalidate included, in order."""
    if entry.from_migrate:  # a chunk migration or a non-primary shard's copy of a DDL
        return []
    if entry.apply_ops is not None:
        events: list[ChangeEvent] = []
        for operation in entry.apply_ops:
            events += _events(operation, entry, options, in_transaction=True)
        return events
    return _events(entry, entry, options, in_transaction=False)


def _events(operation: OplogEntry, entry: OplogEntry, options: StreamOptions,
            in_transaction: bool) -> list[ChangeEvent]:
    event = _event(operation, entry, options.scope)
    if event is None:
        return []
    expanded_only = event.expanded_only or event.operation_type not in CLASSIC_TYPES
    if expanded_only and not options.show_expanded_events:
        return []
    if in_transaction:
        event.in_transaction = True
        event.lsid = entry.lsid
        event.txn_number = entry.txn_number
    events = [event]
    if not event.expanded_only and options.scope.invalidated_by(event.operation_type):
        events.append(_invalidate(event))
    return events


def _event(operation: OplogEntry, entry: OplogEntry, scope: StreamScope) -> ChangeEvent | None:
    op = operation.op
    if op in ("i", "u", "d"):
        db, coll = operation.ns.split(".", 1)
        if not scope.sees(db, coll):
            return None
        operation_type = {"i": "insert", "d": "delete"}.get(op) or (
            "replace" if operation.is_replace else "update")
        return _make(operation_type, operation, entry, db, coll, operation.ui,
                     document_key=operation.document_key)
    if op == "c" and operation.command is not None:
        return _command_event(operation, entry, scope)
    if op == "n" and operation.o2 is not None:
        return _sharding_event(operation, entry, scope)
    return None


def _command_event(operation: OplogEntry, entry: OplogEntry,
                   scope: StreamScope) -> ChangeEvent | None:
    command = operation.command
    assert command is not None
    db = operation.ns.split(".", 1)[0]
    is_view = "viewOn" in command or operation.extra.get("nsType") == "view"
    # Views have no UUID, so their events carry none.
    collection_uuid = None if is_view else operation.ui
    name = next(iter(command), None)
    if name == "renameCollection":
        source_db, source = command["renameCollection"].split(".", 1)
        target_db, target = command["to"].split(".", 1)
        if not (scope.sees(source_db, source) or scope.sees(target_db, target)):
            return None
        to = {"db": target_db, "coll": target}
        description: dict[str, Any] = {"to": to}
        if command.get("dropTarget") is not None:
            description["dropTarget"] = _bson_value(command["dropTarget"])
        return _make("rename", operation, entry, source_db, source, collection_uuid,
                     description=description, to=to)
    if name == "dropDatabase":
        if not scope.sees(db, None):
            return None
        return _make("dropDatabase", operation, entry, db, None, None)
    kinds = {"create": "create", "drop": "drop", "createIndexes": "createIndexes",
             "dropIndexes": "dropIndexes", "collMod": "modify"}
    if name not in kinds:
        return None
    coll = command[name]
    if not scope.sees(db, coll):
        return None
    operation_type = kinds[name]
    description = None
    state_before_change = None
    if operation_type in ("create", "modify"):
        description = _bson_value({k: v for k, v in command.items() if k != name})
    elif operation_type in ("createIndexes", "dropIndexes"):
        description = {"indexes": [_bson_value(command["spec"])]}
    if operation_type == "modify":
        old = operation.o2 or {}
        state_before_change = {key: _bson_value(old[key])
                               for key in ("collectionOptions", "indexOptions") if key in old}
    event = _make(operation_type, operation, entry, db, coll, collection_uuid,
                  description=description, state_before_change=state_before_change)
    # A view's DDL is a write to system.views on a real server: only expanded streams report
    # it (even its drop), and it never invalidates.
    event.expanded_only = is_view
    return event


def _sharding_event(operation: OplogEntry, entry: OplogEntry,
                    scope: StreamScope) -> ChangeEvent | None:
    o2 = operation.o2
    assert o2 is not None
    name = next((kind for kind in SHARDING_EVENTS if kind in o2), None)
    if name is None:
        return None
    db, coll = str(o2[name]).split(".", 1)
    if not scope.sees(db, coll):
        return None
    # The server's o2 names the key "shardKey"; accept the shorter "key" for shardCollection.
    description = {("shardKey" if key == "key" else key): _bson_value(value)
                   for key, value in o2.items() if key != name}
    return _make(name, operation, entry, db, coll, operation.ui, description=description)


def _make(operation_type: str, operation: OplogEntry, entry: OplogEntry, db: str,
          coll: str | None, collection_uuid: uuid.UUID | None, *,
          document_key: dict[str, Any] | None = None,
          description: dict[str, Any] | None = None,
          state_before_change: dict[str, Any] | None = None,
          to: dict[str, str] | None = None) -> ChangeEvent:
    # v2 eventIdentifier: operationType plus documentKey (CRUD) or operationDescription (DDL,
    # omitted when the event has none) — independent of showExpandedEvents.
    identifier: dict[str, Any] = {"operationType": operation_type}
    if document_key is not None:
        identifier["documentKey"] = document_key
    elif description is not None:
        identifier["operationDescription"] = description
    txn_op_index = operation.txn_op_index  # position inside applyOps; 0 outside transactions
    token = build_event_token(entry.ts, txn_op_index, collection_uuid, identifier)
    ns = {"db": db} if coll is None else {"db": db, "coll": coll}
    return ChangeEvent(operation_type=operation_type, token=token, cluster_time=entry.ts,
                       wall=entry.wall, ns=ns, collection_uuid=collection_uuid,
                       operation=operation, identifier=identifier, txn_op_index=txn_op_index,
                       document_key=document_key,
                       operation_description=description,
                       state_before_change=state_before_change, to=to)


def _invalidate(cause: ChangeEvent) -> ChangeEvent:
    """The invalidate that follows ``cause``: same token data with fromInvalidate set."""
    token = build_event_token(cause.cluster_time, cause.txn_op_index, cause.collection_uuid,
                              cause.identifier, from_invalidate=True)
    return ChangeEvent(operation_type="invalidate", token=token, cluster_time=cause.cluster_time,
                       wall=cause.wall, ns=cause.ns, collection_uuid=cause.collection_uuid,
                       operation=cause.operation, identifier=cause.identifier,
                       txn_op_index=cause.txn_op_index, is_invalidate=True)


def _document(raw: bytes | None, options: StreamOptions) -> Any:
    """A stored document for an event: its raw BSON embedded as is, or decoded for tail stages."""
    if raw is None:
        return None
    return RawBSONDocument(raw) if options.raw_documents else decode(raw)


def _bson_value(value: Any) -> Any:
    """Oplog values as BSON can carry them: UUIDs become Binary subtype 4."""
    if isinstance(value, uuid.UUID):
        return Binary.from_uuid(value)
    if isinstance(value, dict):
        return {key: _bson_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bson_value(item) for item in value]
    return value


def _dotted(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
