"""Collections, views and indexes: reading them on the source, creating them on the destination.

While syncing, the destination differs from the source on purpose (spec §6–§7), so that
replaying changes in any interleaving never fails on a constraint:
unique indexes are built non-unique, TTL indexes never expire, hidden indexes are visible and
capped collections have no limits. At commit, :func:`restore_final_options` reads the
(write-blocked, drained) source and puts every one of those properties back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from pymongosync.namespaces import NamespaceFilter

TTL_NEVER_EXPIRES = 2147483647
CAPPED_SIZE_LIFTED = 1 << 50  # 1 PiB, as mongosync does
_DUMP_ONLY_INDEX_FIELDS = ("ns", "background")
NAMESPACE_EXISTS, INDEX_EXISTS_CODES = 48, (68, 85, 86)


@dataclass
class SourceNamespace:
    db: str
    name: str
    kind: str  # "collection" | "view" | "timeseries"
    options: dict[str, Any]
    uuid: Any = None
    indexes: list[dict[str, Any]] = field(default_factory=list)
    shard_key: dict[str, Any] | None = None
    documents: int = 0
    size: int = 0

    @property
    def namespace(self) -> str:
        return f"{self.db}.{self.name}"

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.namespace, "db": self.db, "name": self.name, "kind": self.kind,
                "options": self.options, "uuid": self.uuid, "indexes": self.indexes,
                "shardKey": self.shard_key, "estimatedDocuments": self.documents,
                "estimatedBytes": self.size}


def clean_index_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _DUMP_ONLY_INDEX_FIELDS}


def list_source_namespaces(client: MongoClient, namespace_filter: NamespaceFilter,
                           sharded: bool) -> list[SourceNamespace]:
    """Every collection and view the filter includes, with options, indexes and sizes."""
    shard_keys: dict[str, dict[str, Any]] = {}
    if sharded:
        for entry in client.config.collections.find({}, {"key": 1}):
            shard_keys[entry["_id"]] = dict(entry["key"])
    found: list[SourceNamespace] = []
    for db_name in sorted(client.list_database_names()):
        if not namespace_filter.includes_database(db_name):
            continue
        database = client[db_name]
        for info in sorted(database.list_collections(), key=lambda i: i["name"]):
            name = info["name"]
            if not namespace_filter.includes(db_name, name):
                continue
            kind = info.get("type", "collection")
            entry = SourceNamespace(db=db_name, name=name, kind=kind,
                                    options=dict(info.get("options", {})),
                                    uuid=(info.get("info") or {}).get("uuid"))
            if kind == "collection":
                entry.indexes = [clean_index_spec(dict(spec)) for spec in
                                 database[name].list_indexes()]
                entry.shard_key = shard_keys.get(entry.namespace)
                stats = _stats(database, name)
                entry.documents, entry.size = stats
            found.append(entry)
    return found


def _stats(database: Any, name: str) -> tuple[int, int]:
    try:
        stats = next(database[name].aggregate([{"$collStats": {"storageStats": {}}}]))
        storage = stats.get("storageStats", {})
        return int(storage.get("count", 0)), int(storage.get("size", 0))
    except (OperationFailure, StopIteration):
        return database[name].estimated_document_count(), 0


# -- the temporary shape of things on the destination ---------------------------------------


def temporary_collection_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options to create a destination collection with while syncing."""
    temporary = dict(options)
    if temporary.get("capped"):
        temporary["size"] = CAPPED_SIZE_LIFTED
        temporary.pop("max", None)
    if "clusteredIndex" in temporary and "expireAfterSeconds" in temporary:
        temporary["expireAfterSeconds"] = TTL_NEVER_EXPIRES
    temporary.pop("autoIndexId", None)
    return temporary


def temporary_index_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """An index as it exists on the destination while syncing."""
    temporary = clean_index_spec(spec)
    temporary.pop("unique", None)
    temporary.pop("prepareUnique", None)
    temporary.pop("hidden", None)
    if "expireAfterSeconds" in temporary:
        temporary["expireAfterSeconds"] = TTL_NEVER_EXPIRES
    return temporary


def indexes_to_build(specs: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The source's indexes the destination gets under a ``buildIndexes`` mode."""
    if mode == "never":
        return []
    chosen = []
    for spec in specs:
        if spec.get("name") == "_id_":
            continue
        if mode.startswith("excludeHashed") and "hashed" in spec.get("key", {}).values():
            continue
        chosen.append(temporary_index_spec(spec))
    return chosen


def create_collection(client: MongoClient, db: str, name: str, options: dict[str, Any],
                      before_create: Callable[[str, str], None]) -> bool:
    """Create a destination collection or view; False when it already existed."""
    before_create(db, name)
    try:
        client[db].command({"create": name, **options})
        return True
    except OperationFailure as exc:
        if exc.code == NAMESPACE_EXISTS:
            return False
        raise


def create_indexes(client: MongoClient, db: str, name: str, specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        try:
            client[db].command("createIndexes", name, indexes=[spec])
        except OperationFailure as exc:
            if exc.code not in INDEX_EXISTS_CODES:
                raise


def shard_collection(client: MongoClient, db: str, name: str, key: dict[str, Any]) -> None:
    client.admin.command("enableSharding", db)
    try:
        client.admin.command("shardCollection", f"{db}.{name}", key=key)
    except OperationFailure as exc:
        if exc.code != 23:  # already sharded with this key after a restart
            raise


# -- commit: back to the source's exact shape -------------------------------------------------


def restore_final_options(source: MongoClient, destination: MongoClient,
                          namespace_filter: NamespaceFilter, build_mode: str) -> list[tuple]:
    """Undo every temporary change; unique indexes go to ``prepareUnique`` only.

    Returns the (db, collection, index name) triples still to convert to unique after writes
    are allowed again, as mongosync does (canWrite comes before the unique conversion).
    """
    pending_unique: list[tuple] = []
    for entry in list_source_namespaces(source, namespace_filter, sharded=False):
        if entry.kind != "collection":
            continue
        target = destination[entry.db]
        if entry.options.get("capped"):
            change: dict[str, Any] = {"cappedSize": entry.options["size"]}
            if entry.options.get("max"):
                change["cappedMax"] = entry.options["max"]
            target.command({"collMod": entry.name, **change})
        if "clusteredIndex" in entry.options and "expireAfterSeconds" in entry.options:
            target.command({"collMod": entry.name,
                            "expireAfterSeconds": entry.options["expireAfterSeconds"]})
        if build_mode == "never":
            continue
        existing = {spec["name"]: dict(spec) for spec in target[entry.name].list_indexes()}
        for spec in entry.indexes:
            name = spec["name"]
            if name == "_id_" or name not in existing:
                continue
            current = existing[name]
            if "expireAfterSeconds" in spec and \
                    current.get("expireAfterSeconds") != spec["expireAfterSeconds"]:
                target.command({"collMod": entry.name, "index": {
                    "name": name, "expireAfterSeconds": spec["expireAfterSeconds"]}})
            if bool(spec.get("hidden")) != bool(current.get("hidden")):
                target.command({"collMod": entry.name, "index": {
                    "name": name, "hidden": bool(spec.get("hidden"))}})
            if spec.get("unique") and not current.get("unique"):
                if not current.get("prepareUnique"):
                    target.command({"collMod": entry.name, "index": {
                        "name": name, "prepareUnique": True}})
                pending_unique.append((entry.db, entry.name, name))
    return pending_unique


def enforce_unique(destination: MongoClient, pending: list[tuple]) -> None:
    for db, collection, index in pending:
        destination[db].command({"collMod": collection, "index": {"name": index, "unique": True}})
