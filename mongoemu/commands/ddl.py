"""Catalog commands: create, drop, rename, indexes, collMod and the listings."""

from __future__ import annotations

import random
import string
from typing import Any

from bson.binary import Binary

from mongoemu import collection_uuid
from mongoemu.bsonvalues import decode
from mongoemu.commands.crud import cursor_reply, _batch_size
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.storage.catalog import validate_collection_name, validate_db_name
from mongoemu.storage.collection import Collection
from mongoemu.storage.indexes import ID_INDEX_NAME, id_index_spec, same_options, validate_index_spec

_GLOBAL_FIELDS = frozenset({"$db", "lsid", "txnNumber", "autocommit", "startTransaction",
                            "$clusterTime", "readConcern", "writeConcern", "maxTimeMS", "comment",
                            "$readPreference", "apiVersion", "apiStrict", "apiDeprecationErrors",
                            "$audit", "$client", "mayBypassWriteBlocking", "bypassDocumentValidation"})
_CREATE_OPTIONS = frozenset({"capped", "size", "max", "validator", "validationLevel",
                             "validationAction", "collation", "viewOn", "pipeline", "timeseries",
                             "expireAfterSeconds", "clusteredIndex", "changeStreamPreAndPostImages",
                             "storageEngine", "indexOptionDefaults", "idIndex", "encryptedFields",
                             "autoIndexId", "flags", "temp", "recordIdsReplicated"})


def _options_of(ctx: Context) -> dict[str, Any]:
    return {k: v for k, v in ctx.body.items() if k != ctx.name and k not in _GLOBAL_FIELDS}


def _check_create_options(db: str, options: dict[str, Any]) -> dict[str, Any]:
    for option in options:
        if option not in _CREATE_OPTIONS:
            raise CommandError(40415, f"BSON field 'create.{option}' is an unknown field.")
    if options.get("capped"):
        size = options.get("size")
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise CommandError(72, "the 'size' field is required when 'capped' is true")
        if size < 4096:
            options["size"] = 4096
        elif size % 256:
            options["size"] = int(size + 256 - size % 256)
    if "viewOn" in options:
        if not isinstance(options["viewOn"], str) or not options["viewOn"]:
            raise CommandError(14, "'viewOn' option must be a non-empty string")
        pipeline = options.setdefault("pipeline", [])
        if not isinstance(pipeline, list):
            raise CommandError(14, "'pipeline' option must be an array")
        from mongoemu.query.aggregate import validate_pipeline
        validate_pipeline(pipeline)
        for other in ("capped", "timeseries", "clusteredIndex", "validator"):
            if other in options:
                raise CommandError(72, f"The '{other}' option is not supported with views")
    elif "pipeline" in options:
        raise CommandError(9, "'pipeline' requires 'viewOn' to also be specified")
    if "timeseries" in options:
        spec = options["timeseries"]
        if not isinstance(spec, dict) or not isinstance(spec.get("timeField"), str):
            raise CommandError(40414, "BSON field 'timeseries.timeField' is missing but a "
                                      "required field")
        granularity = spec.get("granularity", "seconds")
        spans = {"seconds": 3600, "minutes": 86400, "hours": 2592000}
        normalized = {"timeField": spec["timeField"]}
        if "metaField" in spec:
            normalized["metaField"] = spec["metaField"]
        if "bucketMaxSpanSeconds" in spec:
            normalized["bucketMaxSpanSeconds"] = spec["bucketMaxSpanSeconds"]
            normalized["bucketRoundingSeconds"] = spec.get("bucketRoundingSeconds",
                                                           spec["bucketMaxSpanSeconds"])
        else:
            normalized["granularity"] = granularity
            normalized["bucketMaxSpanSeconds"] = spans.get(granularity, 3600)
        options["timeseries"] = normalized
    if "clusteredIndex" in options:
        spec = options["clusteredIndex"]
        if spec is True:
            options["clusteredIndex"] = {"v": 2, "key": {"_id": 1}, "name": "_id_", "unique": True}
        elif not isinstance(spec, dict) or spec.get("key") != {"_id": 1} or not spec.get("unique"):
            raise CommandError(72, "The clusteredIndex option must be {key: {_id: 1}, unique: "
                                   "true}")
        else:
            options["clusteredIndex"] = {"v": spec.get("v", 2), "key": {"_id": 1},
                                         "name": spec.get("name", "_id_"), "unique": True}
    if "validationLevel" in options and options["validationLevel"] not in ("off", "strict",
                                                                          "moderate"):
        raise CommandError(2, f"Enumeration value '{options['validationLevel']}' for field "
                              f"'validationLevel' is not a valid value.")
    if "validationAction" in options and options["validationAction"] not in ("error", "warn",
                                                                            "errorAndLog"):
        raise CommandError(2, f"Enumeration value '{options['validationAction']}' for field "
                              f"'validationAction' is not a valid value.")
    if "collation" in options:
        from mongoemu.query.collation import Collation
        Collation.from_document(options["collation"])
    options.pop("idIndex", None)
    return options


@command("create", in_transaction=True)
def create(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    validate_db_name(ctx.db)
    validate_collection_name(ctx.db, name)
    options = _check_create_options(ctx.db, _options_of(ctx))
    existing = ctx.catalog.collection(ctx.db, name)
    if existing is not None:
        if existing.options == options and not existing.is_view:
            return {}
        raise CommandError(48, f"Collection {ctx.db}.{name} already exists.")
    ctx.server.writer.create_collection(ctx, ctx.db, name, options)
    return {}


@command("drop", in_transaction=False)
def drop(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        ctx.server.writer.check_writable(ctx, ctx.db)
        if ctx.server.config.server_version == "6.0":
            raise CommandError(26, "ns not found")
        return {}
    count = len(collection.indexes)
    ctx.server.writer.drop_collection(ctx, collection)
    return {"nIndexesWas": count, "ns": collection.ns}


@command("dropDatabase")
def drop_database(ctx: Context) -> dict[str, Any]:
    if ctx.db in ("admin", "local", "config") and ctx.db != "config":
        raise CommandError(20, f"Dropping the '{ctx.db}' database is prohibited.")
    ctx.server.writer.drop_database(ctx, ctx.db)
    return {}


@command("renameCollection", admin_only=True)
def rename_collection(ctx: Context) -> dict[str, Any]:
    source, target = ctx.body["renameCollection"], ctx.body.get("to")
    if not isinstance(source, str) or not isinstance(target, str) or "." not in source \
            or "." not in target:
        raise CommandError(73, "Invalid namespace specified")
    source_db, source_name = source.split(".", 1)
    target_db, target_name = target.split(".", 1)
    collection = ctx.catalog.collection(source_db, source_name)
    if collection is None:
        raise CommandError(26, "source namespace does not exist")
    if collection.is_view:
        raise CommandError(20, "cannot rename a view")
    if source == target:
        raise CommandError(20, "Can't rename a collection to itself")
    if ctx.server.config.is_mongos and source_db != target_db:
        raise CommandError(20, "Source and destination collections must be on the same "
                               "database.")
    drop_target = bool(ctx.body.get("dropTarget"))
    if source_db != target_db:
        _rename_between_databases(ctx, collection, target_db, target_name, drop_target)
        return {}
    ctx.server.writer.rename_collection(ctx, collection, target_db, target_name, drop_target,
                                        ctx.body.get("stayTemp") is True)
    return {}


def _rename_between_databases(ctx: Context, collection: Collection, to_db: str, to_name: str,
                              drop_target: bool) -> None:
    """As MongoDB does it (rename_collection.cpp, renameBetweenDBs): a collection has one
    database, so the documents are copied. A temporary collection ``tmpXXXXX.renameCollection``
    is created in the target database (a new UUID, the source's options), given the source's
    indexes, filled with ordinary inserts, renamed onto the target within its database, and the
    source is dropped. A change stream shows each of those steps, and no rename across
    databases."""
    writer = ctx.server.writer
    writer.check_writable(ctx, collection.db)
    writer.check_writable(ctx, to_db)
    validate_db_name(to_db)
    validate_collection_name(to_db, to_name)
    if ctx.catalog.collection(to_db, to_name) is not None and not drop_target:
        raise CommandError(48, "target namespace exists")
    temporary = writer.create_collection(ctx, to_db, _temporary_name(ctx, to_db, "renameCollection"),
                                         {**collection.options, "temp": True})
    writer.create_indexes_like(ctx, temporary, collection)
    _copy_documents(ctx, collection, temporary, from_migrate=False)
    writer.rename_collection(ctx, temporary, to_db, to_name, drop_target)
    writer.drop_collection(ctx, collection)


_TEMPORARY_NAME_CHARACTERS = string.ascii_letters + string.digits


def _check_capped_size(size: Any) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise CommandError(72, "invalid size for capped collection")


def _collection_to_cap(ctx: Context, name: str) -> Collection:
    """The collection convertToCapped or cloneCollectionAsCapped copies (MongoDB's errors)."""
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        raise CommandError(26, f"source collection {ctx.db}.{name} does not exist")
    if collection.is_view:
        raise CommandError(166, f"cloneCollectionAsCapped not supported for views: "
                                f"{ctx.db}.{name}")
    return collection


def _capped_options(collection: Collection, size: int | float) -> dict[str, Any]:
    """A capped copy's options: the collection's own (its UUID is not one), capped to ``size``."""
    options = {key: value for key, value in collection.options.items()
               if key not in ("capped", "size", "max")}
    return {**options, "capped": True, "size": int(size)}


def _temporary_name(ctx: Context, db: str, suffix: str) -> str:
    """MongoDB's makeUniqueCollectionName("tmp%%%%%.<suffix>"): each % a letter or digit."""
    while True:
        name = "tmp" + "".join(random.choices(_TEMPORARY_NAME_CHARACTERS, k=5)) + "." + suffix
        if ctx.catalog.collection(db, name) is None:
            return name


def _copy_documents(ctx: Context, source: Collection, target: Collection,
                    from_migrate: bool) -> None:
    """The server's own copy of every document, in natural order, without validation;
    ``from_migrate``: logged so that change streams do not show the inserts."""
    writer = ctx.server.writer
    keys = list(source.insertion_order) if source.insertion_order is not None \
        else list(source.documents)
    copying_as, ctx.from_migrate = ctx.from_migrate, from_migrate or ctx.from_migrate
    try:
        for key in keys:
            raw = source.get_raw(key)
            if raw is not None:
                writer.insert(ctx, target, decode(raw), raw, validate=False)
    finally:
        ctx.from_migrate = copying_as


@command("createIndexes", in_transaction=True)
def create_indexes(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    specs = ctx.body.get("indexes")
    if not isinstance(specs, list) or not specs:
        raise CommandError(9 if specs is None else 14, "Must specify at least one index to create")
    normalized = [validate_index_spec(spec) for spec in specs]
    writer = ctx.server.writer
    collection = ctx.catalog.collection(ctx.db, name)
    created_collection = collection is None
    if collection is None:
        collection = writer.create_collection(ctx, ctx.db, name, {})
    if collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    before = len(collection.indexes)
    to_create = []
    for spec in normalized:
        if spec["key"] == {"_id": 1} and spec["name"] == ID_INDEX_NAME:
            continue
        if collection.is_clustered and spec["key"] == collection.options["clusteredIndex"]["key"]:
            continue  # MongoDB: createIndex on the cluster key is a no-op, whatever its name
        same_name = collection.indexes.get(spec["name"])
        if same_name is not None:
            if same_name["key"] != spec["key"]:
                raise CommandError(86, f"An existing index has the same name as the requested "
                                       f"index. When index names are not specified, they are "
                                       f"auto generated and can cause conflicts. Please refer to "
                                       f"our documentation. Requested index: {spec}, existing "
                                       f"index: {same_name}")
            if not same_options(same_name, spec):
                raise CommandError(85, f"An equivalent index already exists with the same name "
                                       f"but different options. Requested index: {spec}, "
                                       f"existing index: {same_name}")
            continue
        same_key = [s for s in collection.index_list() if s["key"] == spec["key"]]
        for existing in same_key:
            if same_options(existing, spec):
                raise CommandError(85, f"Index already exists with a different name: "
                                       f"{existing['name']}")
        to_create.append(spec)
    for spec in to_create:
        writer.create_index(ctx, collection, spec)
    reply: dict[str, Any] = {"numIndexesBefore": before, "numIndexesAfter": len(collection.indexes)}
    if not to_create:
        reply["note"] = "all indexes already exist"
    reply["createdCollectionAutomatically"] = created_collection
    if not ctx.server.config.is_mongos:
        reply["commitQuorum"] = "votingMembers"
    return reply


@command("dropIndexes", "deleteIndexes")
def drop_indexes(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        raise CommandError(26, f"ns not found {ctx.db}.{name}")
    if collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    target = ctx.body.get("index")
    count = len(collection.indexes)
    writer = ctx.server.writer
    shard_key = _shard_key(ctx, collection.ns)
    if target == "*":
        # From 6.0: all but _id's and those that could support the shard key.
        for index_name in [n for n, spec in collection.indexes.items() if n != ID_INDEX_NAME
                           and not _supports_shard_key(spec, shard_key)]:
            writer.drop_index(ctx, collection, index_name)
        return {"nIndexesWas": count, "msg": "non-_id indexes dropped for collection"}
    names = target if isinstance(target, list) else [target]
    resolved = []
    for item in names:
        spec = collection.find_index(item)
        if spec is None:
            if isinstance(item, dict):
                raise CommandError(27, f"can't find index with key: {item}")
            raise CommandError(27, f"index not found with name [{item}]")
        resolved.append(spec["name"])
    # A hashed shard key's index may go (MongoDB 7.0.3, 6.0.12); a range key's may not.
    if shard_key is not None and "hashed" not in shard_key.values() and \
            _last_supporting(collection, shard_key, resolved):
        raise CommandError(370, "Cannot drop the only compatible index for this collection's "
                                "shard key", code_name_override="CannotDropShardKeyIndex")
    for index_name in resolved:
        writer.drop_index(ctx, collection, index_name)
    return {"nIndexesWas": count}


def _shard_key(ctx: Context, ns: str) -> dict[str, Any] | None:
    """The shard key of a collection sharded through this shard (None: unsharded, or not a
    shard)."""
    if not ctx.server.config.shard_role:
        return None
    return ctx.server.sharding.shard_key(ns)


def _supports_shard_key(spec: dict[str, Any], shard_key: dict[str, Any] | None) -> bool:
    """An index a sharded collection's chunks can be found by: its key starts with the shard
    key, and it is complete (not sparse, not partial), visible and of simple collation.
    (MongoDB also rules out a multikey index; the emulator does not track that.)"""
    if shard_key is None:
        return False
    key = list(dict(spec["key"]).items())
    return key[:len(shard_key)] == list(shard_key.items()) and not spec.get("sparse") and \
        "partialFilterExpression" not in spec and not spec.get("hidden") and \
        spec.get("collation", {"locale": "simple"}).get("locale") == "simple"


def _last_supporting(collection: Any, shard_key: dict[str, Any], leaving: list[str]) -> bool:
    """Whether the indexes ``leaving`` (dropped or hidden) take away the last one supporting
    the shard key."""
    supporting = [name for name, spec in collection.indexes.items()
                  if _supports_shard_key(spec, shard_key)]
    return bool(supporting) and set(supporting) <= set(leaving)


@command("collMod")
def coll_mod(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        raise CommandError(26, f"ns does not exist: {ctx.db}.{name}")
    writer = ctx.server.writer
    writer.check_writable(ctx, ctx.db)
    changes = _options_of(ctx)
    changes.pop(collection_uuid.FIELD, None)  # checked at dispatch; not an option to change
    reply: dict[str, Any] = {}
    old_collection_options: dict[str, Any] = {}
    old_index_options: dict[str, Any] = {}
    allowed = {"validator", "validationLevel", "validationAction", "index", "viewOn", "pipeline",
               "expireAfterSeconds", "changeStreamPreAndPostImages", "timeseries", "dryRun",
               "cappedSize", "cappedMax", "recordIdsReplicated"}
    for key in changes:
        if key not in allowed:
            raise CommandError(40415, f"BSON field 'collMod.{key}' is an unknown field.")
    if collection.is_view and set(changes) - {"viewOn", "pipeline"}:
        raise CommandError(72, "option not supported on a view")
    if ("viewOn" in changes or "pipeline" in changes) and not collection.is_view:
        raise CommandError(72, "option not supported on a non-view collection")
    if "index" in changes:
        index_change = changes["index"]
        if not isinstance(index_change, dict):
            raise CommandError(14, "index must be an object")
        spec = collection.find_index(index_change.get("name") or index_change.get("keyPattern"))
        if spec is None:
            wanted = index_change.get("name") or index_change.get("keyPattern")
            raise CommandError(27, f"cannot find index {wanted} for ns {collection.ns}")
        updated = dict(spec)
        if "hidden" in index_change:
            if spec["name"] == ID_INDEX_NAME:
                raise CommandError(72, "can't hide _id index")
            shard_key = _shard_key(ctx, collection.ns)
            if index_change["hidden"] and shard_key is not None and \
                    _last_supporting(collection, shard_key, [spec["name"]]):
                raise CommandError(72, "can't hide the only index supporting this "
                                       "collection's shard key")
            old_index_options["hidden"] = bool(spec.get("hidden", False))
            reply["hidden_old"] = bool(spec.get("hidden", False))
            reply["hidden_new"] = bool(index_change["hidden"])
            if index_change["hidden"]:
                updated["hidden"] = True
            else:
                updated.pop("hidden", None)
        if "expireAfterSeconds" in index_change:
            if "expireAfterSeconds" not in spec:
                raise CommandError(72, "no expireAfterSeconds field to update")
            old_index_options["expireAfterSeconds"] = spec["expireAfterSeconds"]
            reply["expireAfterSeconds_old"] = spec["expireAfterSeconds"]
            reply["expireAfterSeconds_new"] = index_change["expireAfterSeconds"]
            updated["expireAfterSeconds"] = index_change["expireAfterSeconds"]
        if "prepareUnique" in index_change:
            old_index_options["prepareUnique"] = bool(spec.get("prepareUnique", False))
            reply["prepareUnique_old"] = bool(spec.get("prepareUnique", False))
            reply["prepareUnique_new"] = bool(index_change["prepareUnique"])
            if index_change["prepareUnique"]:
                updated["prepareUnique"] = True
            else:
                updated.pop("prepareUnique", None)
        if "unique" in index_change:
            if index_change["unique"] is not True:
                raise CommandError(72, "The 'unique' option can only be set to true")
            if not spec.get("unique"):
                if not spec.get("prepareUnique"):
                    raise CommandError(72, "Cannot make index unique with 'prepareUnique' not "
                                           "set to true")
                old_index_options["unique"] = False
                reply["unique_new"] = True
                updated["unique"] = True
                updated.pop("prepareUnique", None)
        collection.drop_index(spec["name"])
        try:
            collection.add_index(updated)
        except CommandError as exc:
            collection.add_index(spec)
            if exc.code == 11000:
                raise CommandError(359, "Cannot convert the index to unique. Please resolve "
                                        "conflicting documents before running collMod again.",
                                   code_name_override="CannotConvertIndexToUnique",
                                   extra={"violations": collection.unique_violations(updated)}
                                   ) from None
            raise
    for key in ("validator", "validationLevel", "validationAction", "viewOn", "pipeline",
                "expireAfterSeconds", "changeStreamPreAndPostImages"):
        if key in changes:
            if key in collection.options:
                old_collection_options[key] = collection.options[key]
            collection.options[key] = changes[key]
    if "timeseries" in changes and collection.is_timeseries:
        old_collection_options["timeseries"] = dict(collection.options["timeseries"])
        collection.options["timeseries"].update(changes["timeseries"])
    if "cappedSize" in changes or "cappedMax" in changes:
        if not collection.is_capped:
            raise CommandError(72, "collection is not capped")
        if "cappedSize" in changes:
            collection.options["size"] = changes["cappedSize"]
        if "cappedMax" in changes:
            collection.options["max"] = changes["cappedMax"]
    if collection.is_view:
        writer.store_view_definition(ctx, collection)
    writer.log_coll_mod(ctx, collection, {k: v for k, v in changes.items() if k != "dryRun"},
                        {"collectionOptions": old_collection_options,
                         "indexOptions": old_index_options})
    return reply


@command("convertToCapped")
def convert_to_capped(ctx: Context) -> dict[str, Any]:
    """As MongoDB does it (``capped_utils.cpp``): a new capped collection (a new UUID, only the
    ``_id`` index) is created under a temporary name, the documents are copied into it in
    natural order as fromMigrate inserts — change streams do not show them — and it is renamed
    over the original with ``dropTarget``. A change stream thus shows a ``create`` of
    ``<db>.tmpXXXXX.convertToCapped.<name>`` and a ``rename`` of it onto ``<db>.<name>``."""
    name = ctx.collection_name()
    size = ctx.body.get("size")
    _check_capped_size(size)
    collection = _collection_to_cap(ctx, name)
    writer = ctx.server.writer
    writer.check_writable(ctx, ctx.db)
    capped = writer.create_collection(ctx, ctx.db,
                                      _temporary_name(ctx, ctx.db, "convertToCapped." + name),
                                      {**_capped_options(collection, size), "temp": True})
    _copy_documents(ctx, collection, capped, from_migrate=True)
    writer.rename_collection(ctx, capped, ctx.db, name, drop_target=True)
    return {}


@command("cloneCollectionAsCapped")
def clone_collection_as_capped(ctx: Context) -> dict[str, Any]:
    """As MongoDB does it (capped_utils.cpp): a new capped collection (the source's options,
    a new UUID, only the ``_id`` index) filled in natural order with fromMigrate inserts,
    which change streams do not show: a stream shows only its ``create``."""
    name = ctx.collection_name()
    to_name = ctx.body.get("toCollection")
    size = ctx.body.get("size")
    for field, value in (("toCollection", to_name), ("size", size)):
        if value is None:
            raise CommandError(40414, f"BSON field 'cloneCollectionAsCapped.{field}' is missing "
                                      f"but a required field")
    if not isinstance(to_name, str) or not to_name:
        raise CommandError(73, "Invalid target collection name")
    _check_capped_size(size)
    collection = _collection_to_cap(ctx, name)
    if ctx.catalog.collection(ctx.db, to_name) is not None:
        raise CommandError(48, f"cloneCollectionAsCapped failed - destination collection "
                               f"{ctx.db}.{to_name} already exists. source collection: "
                               f"{ctx.db}.{name}")
    capped = ctx.server.writer.create_collection(ctx, ctx.db, to_name,
                                                 _capped_options(collection, size))
    _copy_documents(ctx, collection, capped, from_migrate=True)
    return {}


def collection_entry(collection: Collection, name_only: bool) -> dict[str, Any]:
    if name_only:
        return {"name": collection.name, "type": collection.kind}
    entry: dict[str, Any] = {"name": collection.name, "type": collection.kind,
                             "options": dict(collection.options)}
    if collection.is_view:
        entry["info"] = {"readOnly": True}
        return entry
    info: dict[str, Any] = {"readOnly": False}
    if not collection.is_timeseries:
        info["uuid"] = Binary(collection.uuid.bytes, 4)
    entry["info"] = info
    if not collection.is_clustered and not collection.is_timeseries:
        entry["idIndex"] = id_index_spec()
    return entry


@command("listCollections")
def list_collections(ctx: Context) -> dict[str, Any]:
    from mongoemu.query.matcher import Matcher
    filter_doc = ctx.body.get("filter")
    if filter_doc is not None and not isinstance(filter_doc, dict):
        raise CommandError(14, "BSON field 'listCollections.filter' is the wrong type")
    name_only = bool(ctx.body.get("nameOnly"))
    database = ctx.catalog.database(ctx.db)
    collections = sorted(database.collections.values(), key=lambda c: c.name) if database else []
    entries = [collection_entry(c, name_only) for c in collections]
    if filter_doc:
        matcher = Matcher(filter_doc)
        entries = [e for e in entries if matcher.matches(e)]
    cursor_options = ctx.body.get("cursor") or {}
    return cursor_reply(ctx, f"{ctx.db}.$cmd.listCollections", entries,
                        _batch_size(ctx, cursor_options))


@command("listIndexes")
def list_indexes(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        raise CommandError(26, f"ns does not exist: {ctx.db}.{name}")
    if collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    specs = [dict(spec) for spec in collection.index_list()]
    if collection.is_clustered:
        specs.insert(0, {**collection.options["clusteredIndex"], "clustered": True})
    cursor_options = ctx.body.get("cursor") or {}
    return cursor_reply(ctx, f"{ctx.db}.{name}", specs, _batch_size(ctx, cursor_options))

