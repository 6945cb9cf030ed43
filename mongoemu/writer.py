"""The single write path: every change to data or catalog goes through here.

One place decides write blocking, document validation, unique keys, capped eviction,
transaction buffering and the oplog entry (with the images and update description change
streams need), so no command can forget one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import MISSING, encode, sort_key
from mongoemu.clock import wall_clock
from mongoemu.errors import CommandError
from mongoemu.oplog import OplogEntry
from mongoemu.storage.catalog import INTERNAL_DATABASES, validate_collection_name, validate_db_name
from mongoemu.storage.collection import Collection
from mongoemu.storage.indexes import ID_INDEX_NAME, id_index_spec

if TYPE_CHECKING:
    from mongoemu.context import Context
    from mongoemu.server import Server


# The router's mark on an update statement (or a findAndModify) it sends in the "write without
# shard key" protocol: true for a retryable write or a transaction, false otherwise.
ALLOW_SHARD_KEY_UPDATES = "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery"


@dataclass(frozen=True)
class UpdateRequest:
    """What a shard's checks of a changed shard key need from the update statement or
    findAndModify that changed the document (after MongoDB's UpdateRequest): its filter and
    the router's ``$_allowShardKeyUpdatesWithoutFullShardKeyInQuery`` (None when absent)."""

    query: Any
    allow_shard_key_updates: bool | None = None

    @classmethod
    def of(cls, query: Any, carrier: dict[str, Any]) -> "UpdateRequest":
        """The request of ``query``, with the flag ``carrier`` (the statement or the
        findAndModify command) holds."""
        flag = carrier.get(ALLOW_SHARD_KEY_UPDATES)
        return cls(query, None if flag is None else bool(flag))


def with_id_first(document: dict[str, Any]) -> dict[str, Any]:
    """MongoDB stores ``_id`` as the first field, generating an ObjectId when absent."""
    if "_id" not in document:
        return {"_id": ObjectId(), **document}
    if next(iter(document)) == "_id":
        return document
    reordered = {"_id": document["_id"]}
    reordered.update((k, v) for k, v in document.items() if k != "_id")
    return reordered


def fill_empty_timestamps(document: dict[str, Any],
                          next_time: Callable[[], Timestamp]) -> dict[str, Any]:
    """``document`` as the server stores it: every top-level ``Timestamp(0, 0)`` but ``_id``'s
    takes a new cluster time (fixDocumentForInsert, ObjectReplaceExecutor). The same object
    comes back when there is none, so an unchanged document keeps its encoded bytes."""
    if not any(_is_empty_timestamp(value) for name, value in document.items() if name != "_id"):
        return document
    return {name: next_time() if name != "_id" and _is_empty_timestamp(value) else value
            for name, value in document.items()}


def _is_empty_timestamp(value: Any) -> bool:
    return isinstance(value, Timestamp) and value.time == 0 and value.inc == 0


class Writer:
    def __init__(self, server: "Server") -> None:
        self.server = server

    # -- guards ------------------------------------------------------------------------------
    def check_writable(self, ctx: "Context | None", db: str) -> None:
        server = self.server
        if not server.write_blocked or db in INTERNAL_DATABASES or ctx is None:
            return
        if ctx.from_migrate:
            return
        if server.may_bypass_write_blocking(ctx.conn):
            return
        raise CommandError(371, "User writes blocked")

    def _validate(self, ctx: "Context | None", collection: Collection, document: dict[str, Any],
                  old_document: dict[str, Any] | None) -> None:
        validator = collection.options.get("validator")
        if not validator or collection.options.get("validationLevel") == "off":
            return
        if ctx is not None and ctx.body.get("bypassDocumentValidation"):
            return
        from mongoemu.query.matcher import Matcher
        matcher = Matcher(validator)
        if matcher.matches(document):
            return
        if (old_document is not None and collection.options.get("validationLevel") == "moderate"
                and not matcher.matches(old_document)):
            return
        if collection.options.get("validationAction") == "warn":
            return
        raise CommandError(121, "Document failed validation", extra={"errInfo": {
            "failingDocumentId": document.get("_id"),
            "details": {"operatorName": "$jsonSchema" if "$jsonSchema" in validator else "$and",
                        "schemaRulesNotSatisfied": []}}})

    # -- oplog -------------------------------------------------------------------------------
    def log(self, ctx: "Context | None", entry: OplogEntry) -> None:
        txn = ctx.txn if ctx is not None else None
        if txn is not None:
            txn.operations.append(entry)
            return
        entry.ts = self.server.clock.tick()
        if ctx is not None:
            entry.from_migrate = ctx.from_migrate
            ctx.operation_time = entry.ts
            if ctx.session is not None and "txnNumber" in ctx.body:
                entry.lsid = ctx.session.lsid
                entry.txn_number = ctx.body["txnNumber"]
        self.server.oplog.append(entry)

    def _entry(self, op: str, ns: str, collection: Collection | None = None,
               **fields: Any) -> OplogEntry:
        return OplogEntry(ts=self.server.clock.now, op=op, ns=ns, wall=wall_clock(),
                          ui=collection.uuid if collection is not None else None, **fields)

    def _catalog(self, ctx: "Context | None") -> Any:
        return ctx.catalog if ctx is not None else self.server.catalog

    def commit_transaction(self, ctx: "Context") -> None:
        txn = ctx.txn
        assert txn is not None
        txn.view(self.server.catalog).merge_into_shared()
        if txn.operations:
            ts = self.server.clock.tick()
            for index, operation in enumerate(txn.operations):
                operation.ts = ts
                operation.txn_op_index = index
            entry = OplogEntry(ts=ts, op="c", ns="admin.$cmd", wall=wall_clock(),
                               command={"applyOps": True}, apply_ops=list(txn.operations),
                               lsid=ctx.session.lsid if ctx.session else None,
                               txn_number=txn.txn_number)
            self.server.oplog.append(entry)
            ctx.operation_time = ts
        txn.discard()

    def abort_transaction(self, txn: Any) -> None:
        txn.discard()

    def _track(self, ctx: "Context | None", collection: Collection, key: tuple) -> None:
        if ctx is not None and ctx.txn is not None:
            ctx.txn.record_change(collection, key)

    def _lock(self, ctx: "Context | None", collection: Collection, key: tuple) -> None:
        sessions = self.server.sessions
        if sessions.locks or (ctx is not None and ctx.txn is not None):
            sessions.lock_document(ctx.txn if ctx is not None else None, collection.ns, key)

    def document_key(self, collection: Collection, document: dict[str, Any]) -> dict[str, Any]:
        shard_key = self.server.sharding.shard_key(collection.ns) if self.server.sharding else None
        if not shard_key:
            return {"_id": document["_id"]}
        from mongoemu.query.paths import get_path
        key = {}
        for field in shard_key:
            if field != "_id":
                value = get_path(document, field)
                key[field] = None if value is MISSING else value
        key["_id"] = document["_id"]
        return key

    # -- catalog -----------------------------------------------------------------------------
    def collection_for_write(self, ctx: "Context | None", db: str, name: str) -> Collection:
        """The collection to write into, created implicitly (with its oplog entry) if absent."""
        collection = self._catalog(ctx).collection(db, name)
        if collection is not None:
            if collection.is_view:
                raise CommandError(166, f"Namespace {db}.{name} is a view, not a collection")
            return collection
        return self.create_collection(ctx, db, name, {})

    def create_collection(self, ctx: "Context | None", db: str, name: str,
                          options: dict[str, Any]) -> Collection:
        validate_db_name(db)
        validate_collection_name(db, name)
        self.check_writable(ctx, db)
        catalog = self._catalog(ctx)
        if catalog.collection(db, name) is not None:
            raise CommandError(48, f"Collection {db}.{name} already exists.")
        collection = Collection(db, name, options)
        if collection.is_view:
            self.store_view_definition(ctx, collection)
        catalog.add(collection)
        command: dict[str, Any] = {"create": name, **options}
        if not collection.is_view and not collection.is_clustered and not collection.is_timeseries:
            command["idIndex"] = id_index_spec()
        self.log(ctx, self._entry("c", f"{db}.$cmd", collection, command=command))
        return collection

    def store_view_definition(self, ctx: "Context | None", view: Collection) -> None:
        definition: dict[str, Any] = {"_id": view.ns, "viewOn": view.options["viewOn"],
                                      "pipeline": view.options.get("pipeline", [])}
        if "collation" in view.options:
            definition["collation"] = view.options["collation"]
        system_views = self.server.catalog.collection(view.db, "system.views")
        if system_views is None:
            system_views = Collection(view.db, "system.views", {})
            self.server.catalog.add(system_views)
        key = sort_key(view.ns)
        if system_views.get_raw(key) is not None:
            system_views.remove(key)
        system_views.insert(key, encode(definition), definition)

    def drop_collection(self, ctx: "Context | None", collection: Collection) -> None:
        self.check_writable(ctx, collection.db)
        catalog = self.server.catalog
        catalog.remove(collection.db, collection.name)
        if collection.is_view:
            system_views = catalog.collection(collection.db, "system.views")
            key = sort_key(collection.ns)
            if system_views is not None and system_views.get_raw(key) is not None:
                system_views.remove(key)
        if self.server.sharding:
            self.server.sharding.forget(collection.ns)
        self.log(ctx, self._entry("c", f"{collection.db}.$cmd", collection,
                                  command={"drop": collection.name},
                                  extra=_view_marker(collection)))

    def drop_database(self, ctx: "Context | None", db: str) -> None:
        database = self.server.catalog.database(db)
        if database is None:
            # Nothing is dropped, so nothing is written: no oplog entry (no change event),
            # and write blocking, which guards writes, does not apply.
            return
        self.check_writable(ctx, db)
        for collection in sorted(database.collections.values(), key=lambda c: c.name):
            if collection.name.startswith("system."):
                self.server.catalog.remove(db, collection.name)
                continue
            self.drop_collection(ctx, collection)
        self.log(ctx, self._entry("c", f"{db}.$cmd", command={"dropDatabase": 1}))

    def rename_collection(self, ctx: "Context | None", collection: Collection, to_db: str,
                          to_name: str, drop_target: bool, stay_temp: bool = False) -> None:
        validate_db_name(to_db)
        validate_collection_name(to_db, to_name)
        self.check_writable(ctx, collection.db)
        self.check_writable(ctx, to_db)
        catalog = self.server.catalog
        target = catalog.collection(to_db, to_name)
        command: dict[str, Any] = {"renameCollection": collection.ns, "to": f"{to_db}.{to_name}",
                                   "stayTemp": stay_temp}
        if target is not None:
            if not drop_target:
                raise CommandError(48, "target namespace exists")
            catalog.remove(to_db, to_name)
            command["dropTarget"] = target.uuid
        old_ns = collection.ns
        catalog.remove(collection.db, collection.name)
        collection.db, collection.name = to_db, to_name
        if not stay_temp:  # a temporary collection renamed is kept, unless asked otherwise
            collection.options.pop("temp", None)
        catalog.add(collection)
        if self.server.sharding:
            self.server.sharding.forget(old_ns)
        self.log(ctx, self._entry("c", f"{old_ns.split('.', 1)[0]}.$cmd", collection,
                                  command=command))

    def create_index(self, ctx: "Context | None", collection: Collection,
                     spec: dict[str, Any]) -> None:
        self.check_writable(ctx, collection.db)
        collection.add_index(spec)
        if ctx is not None and ctx.txn is not None:
            ctx.txn.changed.setdefault((collection.db, collection.name), set())
        self.log(ctx, self._entry("c", f"{collection.db}.$cmd", collection,
                                  command={"createIndexes": collection.name, "spec": dict(spec)}))

    def create_indexes_like(self, ctx: "Context | None", collection: Collection,
                            like: Collection) -> None:
        """``like``'s indexes but ``_id`` on ``collection``, each logged: how the server's own
        copies ($out, a rename across databases) get the indexes of the original."""
        for spec in like.index_list():
            if spec["name"] != ID_INDEX_NAME:
                self.create_index(ctx, collection, dict(spec))

    def drop_index(self, ctx: "Context | None", collection: Collection, name: str) -> dict[str, Any]:
        self.check_writable(ctx, collection.db)
        if name == ID_INDEX_NAME:
            raise CommandError(72, "cannot drop _id index")
        spec = collection.drop_index(name)
        self.log(ctx, self._entry("c", f"{collection.db}.$cmd", collection,
                                  command={"dropIndexes": collection.name, "spec": dict(spec)}))
        return spec

    def log_coll_mod(self, ctx: "Context | None", collection: Collection,
                     command: dict[str, Any], old: dict[str, Any]) -> None:
        self.log(ctx, self._entry("c", f"{collection.db}.$cmd", collection,
                                  command={"collMod": collection.name, **command}, o2=old,
                                  extra=_view_marker(collection)))

    def noop(self, message: dict[str, Any], o2: dict[str, Any] | None = None,
             collection: Collection | None = None) -> None:
        self.log(None, self._entry("n", collection.ns if collection else "", collection,
                                   command=message, o2=o2))

    # -- documents ---------------------------------------------------------------------------
    def insert(self, ctx: "Context | None", collection: Collection, document: dict[str, Any],
               raw: bytes | None = None, validate: bool = True) -> dict[str, Any]:
        """Store a document whose ``_id`` is already first; ``raw`` is its BSON when known.
        ``validate``: False for the server's own copies (the validator was passed already)."""
        self.check_writable(ctx, collection.db)
        if collection.is_view:
            raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
        if validate:
            self._validate(ctx, collection, document, None)
        if raw is None:
            raw = encode(document)
        if len(raw) > 16 * 1024 * 1024:
            raise CommandError(10334, f"object to insert too large. size in bytes: {len(raw)}, "
                                      f"max size: 16777216")
        key = collection.key_for(document)
        self._lock(ctx, collection, key)
        collection.insert(key, raw, document)
        self._track(ctx, collection, key)
        self.log(ctx, self._entry("i", collection.ns, collection, raw_document=raw,
                                  document_key=self.document_key(collection, document)))
        if collection.is_capped:
            for victim in collection.capped_overflow():
                self.delete(ctx, collection, victim, collection.get(victim) or {})
        return document

    def update(self, ctx: "Context | None", collection: Collection, key: tuple,
               old_document: dict[str, Any], new_document: dict[str, Any],
               kind: str = "operators", modifier_log: list | None = None,
               request: UpdateRequest | None = None) -> bool:
        """Store the updated document; False (and nothing logged) when nothing changed.

        ``kind`` is how the update was written ("operators", "replacement" or "pipeline"):
        like the server, replacements are logged whole and pipeline updates whole when a
        diff would not be smaller. ``modifier_log`` is what an operator update's modifiers
        did (ParsedUpdate.apply), which is what the server logs rather than an image diff.
        ``request``: the user's update that made the change (None for the server's own writes),
        which a shard checks before letting a routed update change a shard key.
        """
        self.check_writable(ctx, collection.db)
        raw = encode(new_document)
        old_raw = collection.get_raw(key)
        if raw == old_raw:
            return False
        if len(raw) > 16 * 1024 * 1024:  # as an insert's: the server's BSONObjMaxUserSize
            raise CommandError(17419, "Resulting document after update is larger than 16777216")
        if self.server.config.shard_role and ctx is not None:
            # A routed update may change a shard key only as MongoDB allows, and may not move a
            # document out of this shard's chunks (checked before validation, as on MongoDB).
            self.server.sharding.check_update(ctx, collection, old_document, new_document,
                                              request)
        self._validate(ctx, collection, new_document, old_document)
        self._lock(ctx, collection, key)
        collection.replace(key, raw, new_document, old_document)
        self._track(ctx, collection, key)
        description = None
        extra: dict[str, Any] = {}
        replacement = kind == "replacement"
        if not replacement:
            from mongoemu.query.update_description import (
                compute_diff,
                describe_diff,
                diff_from_log,
            )
            # The $v:2 diff is kept because only it can tell an array index from a field
            # named "0" (change streams' disambiguatedPaths).
            diff = diff_from_log(new_document, modifier_log) if modifier_log else None
            if diff is None:
                diff = compute_diff(old_document, new_document, size_limited=kind == "pipeline")
            if diff is None:
                replacement = True
            else:
                description = describe_diff(diff)
                extra["diff"] = diff
        images = collection.images_enabled
        self.log(ctx, self._entry(
            "u", collection.ns, collection, raw_document=raw if replacement else None,
            document_key=self.document_key(collection, old_document),
            update_description=description, images_enabled=images,
            pre_image=old_document if images else None,
            post_image=new_document if images else None, extra=extra))
        return True

    def delete(self, ctx: "Context | None", collection: Collection, key: tuple,
               old_document: dict[str, Any]) -> None:
        self.check_writable(ctx, collection.db)
        self._lock(ctx, collection, key)
        collection.remove(key, old_document)
        self._track(ctx, collection, key)
        images = collection.images_enabled
        self.log(ctx, self._entry("d", collection.ns, collection,
                                  document_key=self.document_key(collection, old_document),
                                  images_enabled=images,
                                  pre_image=old_document if images else None))


def _view_marker(collection: Collection) -> dict[str, Any]:
    """Views have no UUID and never invalidate streams; their DDL events say so."""
    return {"nsType": "view"} if collection.is_view else {}
