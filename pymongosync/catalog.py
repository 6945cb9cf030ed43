"""Collections, views and indexes: reading them on the source, creating them on the destination.

While syncing, the destination differs from the source on purpose (spec §6–§7), so that
replaying changes in any interleaving never fails on a constraint:
unique indexes are built non-unique, TTL indexes never expire, hidden indexes are visible and
capped collections have no limits. At commit, :func:`restore_final_options` reads the
(write-blocked, drained) source and puts every one of those properties back.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from bson.binary import Binary
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from pymongosync.cluster_client import ClusterClient
from pymongosync.errors import IndexConflict, InternalError
from pymongosync.namespaces import NamespaceFilter
from pymongosync.state import IndexRef, NamespaceKind, NamespaceRecord

log = logging.getLogger("pymongosync.engine")

TTL_NEVER_EXPIRES = 2147483647
CAPPED_SIZE_LIFTED = 1 << 50  # 1 PiB, as mongosync does
_DUMP_ONLY_INDEX_FIELDS = ("ns", "background")
INDEX_EXISTS_CODES = (68, 85, 86)
INDEX_NOT_FOUND = 27
CANNOT_DROP_SHARD_KEY_INDEX = 370
INVALID_OPTIONS = 72
# A destination collection sharded on a key the source has no index on gets its index on the
# key from sharding. The source may later build an index on exactly that key under another
# name, drop one, or hide one, which a destination refuses while that index is the only one
# supporting its shard key (same key: IndexOptionsConflict; dropping it: CannotDropShardKeyIndex;
# hiding it: InvalidOptions). A stand-in supports the key meanwhile: the shard key followed by
# a field no document has (an index whose key starts with the shard key supports it).
SHARD_KEY_STAND_IN = "mongosync_shard_key_support"
ALREADY_SHARDED = 23
LISTING_ATTEMPTS = 20  # listings of a database whose collections keep changing meanwhile


def uuid_bytes(value: Any) -> bytes | None:
    """A collection UUID as its 16 bytes, however it was decoded (``uuid.UUID``, BSON
    binary subtype 4, or stored and read back)."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, (bytes, Binary)):
        return bytes(value)
    return None


def uuids_by_name(records: Iterable[NamespaceRecord]) -> dict[str, bytes | None]:
    """``"db.name"`` -> collection UUID bytes (to tell whether a name still holds the same
    collection)."""
    return {record.id: uuid_bytes(record.uuid) for record in records}


# The collection is no longer under the name being read (renamed, or dropped and re-created):
# CollectionUUIDMismatch, or the server killed the cursor because of it (QueryPlanKilled,
# CursorKilled). The reader finds it again by UUID (locate) and reads on from where it was.
MOVED_WHILE_READING = frozenset({361, 175, 237})


def locate(cluster: ClusterClient, db: str, name: str,
           collection_uuid: Any) -> tuple[str, str] | None:
    """Where a collection is now: ``(db, name)`` while that name holds ``collection_uuid``,
    else wherever the UUID is (renamed since), None when it is nowhere (dropped). Without a
    UUID, the name is all there is to go by."""
    if collection_uuid is None:
        return db, name
    wanted = uuid_bytes(collection_uuid)
    for info in cluster.collection_infos(db, name):
        if uuid_bytes((info.get("info") or {}).get("uuid")) == wanted:
            return db, name
    return cluster.find_collection_by_uuid(collection_uuid)


def clean_index_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _DUMP_ONLY_INDEX_FIELDS}


# Whether no DDL event touched a database between two cluster times (see _list_database).
Settled = Callable[[str, Timestamp, Timestamp], bool]


def list_namespaces(cluster: ClusterClient, namespace_filter: NamespaceFilter,
                    listed_at: dict[str, Timestamp] | None = None,
                    settled: Settled | None = None) -> list[NamespaceRecord]:
    """Every collection and view the filter includes, with options, indexes and sizes;
    ``listed_at`` gets, per database, the cluster time before its collections were listed."""
    found: list[NamespaceRecord] = []
    for db_name in sorted(cluster.database_names()):
        if namespace_filter.includes_database(db_name):
            found.extend(_list_database(cluster, db_name, namespace_filter, listed_at,
                                        settled))
    return found


def _list_database(cluster: ClusterClient, db_name: str, namespace_filter: NamespaceFilter,
                   listed_at: dict[str, Timestamp] | None,
                   settled: Settled | None = None) -> list[NamespaceRecord]:
    """One database's namespaces, listed until the collections (names and UUIDs) and their
    shard keys are the same after their indexes were read as before: a collection renamed or
    dropped in between would be recorded without its indexes (listIndexes of a name no longer
    there answers nothing), and they would never reach the destination; a sharded collection
    renamed between the reading of the shard keys (by name) and the listing would be recorded
    unsharded under its new name (campaign seed 73 with a sharded source and destination: the
    destination's collection was created unsharded, and the verifier failed the commit).

    With ``settled``, also until no DDL event touched the database between the time recorded
    in ``listed_at`` and the end of the listing. The change events after that time are applied
    over what was listed; a DDL event among them that the listing already shows would be
    applied twice. A drop, a create and a rename over the new collection within a few
    milliseconds, listed after the rename but recorded as listed before the create: the
    inserts into the created collection, applied by name, landed in the renamed one that had
    replaced it (campaign seed 9850: 4 documents too many, found by the verifier)."""
    def collections() -> list[Mapping[str, Any]]:
        return sorted((info for info in cluster.collection_infos(db_name)
                       if namespace_filter.includes(db_name, info["name"])),
                      key=lambda info: str(info["name"]))

    def identities(infos: list[Mapping[str, Any]]) -> list[tuple[str, Any]]:
        return [(str(info["name"]), (info.get("info") or {}).get("uuid")) for info in infos]

    def shard_keys() -> dict[str, dict[str, Any]]:
        return {name: key for name, key in cluster.shard_keys().items()
                if name.startswith(f"{db_name}.")}

    for _ in range(LISTING_ATTEMPTS):
        started = cluster.cluster_time() if listed_at is not None else None
        keys = shard_keys()
        before = collections()
        records = [namespace_record(cluster, db_name, info, keys) for info in before]
        if identities(collections()) == identities(before) and shard_keys() == keys and (
                settled is None or started is None
                or settled(db_name, started, cluster.cluster_time())):
            if listed_at is not None and started is not None:
                listed_at[db_name] = started
            return records
        log.info("the collections of %s changed while they were listed: listing them again",
                 db_name)
    raise InternalError(
        f"the collections of the source database {db_name} changed every time they were listed "
        f"({LISTING_ATTEMPTS} times): pause the DDL on the source while the migration starts, "
        f"then start it again")


def namespace_record(cluster: ClusterClient, db: str, info: Mapping[str, Any],
                     shard_keys: Mapping[str, dict[str, Any]] | None = None) -> NamespaceRecord:
    """One ``listCollections`` entry as a namespace record (indexes and sizes read too)."""
    name = info["name"]
    kind = NamespaceKind(info.get("type", "collection"))
    record = NamespaceRecord(id=f"{db}.{name}", db=db, name=name, kind=kind,
                             options=dict(info.get("options", {})),
                             uuid=(info.get("info") or {}).get("uuid"))
    if kind == NamespaceKind.COLLECTION:
        record.indexes = [clean_index_spec(spec) for spec in cluster.index_specs(db, name)]
        record.shard_key = (shard_keys or {}).get(record.id)
        record.estimated_documents, record.estimated_bytes = cluster.collection_size(db, name)
    return record


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
    # A temporary collection on the source (the one $out, convertToCapped or a rename across
    # databases fills, then renames with stayTemp false) is created lasting here: a server drops
    # its temporary collections when it restarts, and a destination restart before the rename
    # was applied would lose what the events had put in it.
    temporary.pop("temp", None)
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


class CreatedNamespaces(Protocol):
    """Where the namespaces a migration creates are recorded (the metadata store)."""

    def record_created(self, database: str, collection: str, *, new_database: bool) -> None: ...
    def confirm_created(self, database: str, collection: str) -> None: ...
    def forget_created(self, database: str, collection: str) -> None: ...


def create_collection(cluster: ClusterClient, created: CreatedNamespaces, db: str, name: str,
                      options: Mapping[str, Any]) -> bool:
    """Create a destination collection or view; False when it existed.

    Recorded before (a crash in between cannot hide it) and confirmed after, so that reset
    drops only what this migration really created.
    """
    new_database = db not in cluster.database_names()
    # A server (7.0+) accepts creating a collection that exists with the same options: it
    # must not be taken for one this migration created.
    if not new_database and cluster.collection_infos(db, name):
        created.forget_created(db, name)
        return False
    created.record_created(db, name, new_database=new_database)
    if cluster.create_collection(db, name, options):
        created.confirm_created(db, name)
        return True
    created.forget_created(db, name)
    return False


def _comparable(spec: Mapping[str, Any]) -> dict[str, Any]:
    """An index as it stands while syncing, without what the server adds (version)."""
    temporary = temporary_index_spec(dict(spec))
    temporary.pop("v", None)
    temporary["key"] = list(dict(temporary.get("key", {})).items())
    return temporary


def create_indexes(cluster: ClusterClient, db: str, name: str,
                   specs: list[dict[str, Any]], batch_size: int | None = None) -> None:
    """Build the indexes, ``batch_size`` per command (``--createIndexesBatchSize``; one at a
    time by default); one that exists already in the same form (a restart) is fine, any
    other conflict is an :class:`IndexConflict` naming the namespace, the index and why."""
    if batch_size is not None and batch_size > 1:
        for start in range(0, len(specs), batch_size):
            batch = specs[start:start + batch_size]
            try:
                cluster.create_indexes(db, name, list(batch))
            except OperationFailure:
                create_indexes(cluster, db, name, batch)  # one by one: which one, and why
        return
    for spec in specs:
        try:
            cluster.create_index(db, name, spec)
        except OperationFailure as exc:
            if exc.code not in INDEX_EXISTS_CODES:
                raise
            existing = {index["name"]: index for index in cluster.index_specs(db, name)}
            same = existing.get(spec["name"])
            if same is not None and _comparable(same) == _comparable(spec):
                continue  # built already (a restart)
            if not _replace_shard_key_index(cluster, db, name, spec, existing.values()):
                reason = (exc.details or {}).get("errmsg") or str(exc)
                raise IndexConflict(
                    f"the index {spec['name']} of {db}.{name} cannot be built on the "
                    f"destination as the source has it ({spec}): {reason}. Drop the "
                    f"conflicting index on the destination, or exclude {db}.{name}, then "
                    f"restart the migration") from None


def _replace_shard_key_index(cluster: ClusterClient, db: str, name: str, spec: Mapping[str, Any],
                             existing: Iterable[Mapping[str, Any]]) -> bool:
    """Build the source's index on exactly the destination collection's shard key in place of
    the one there on the same key (made by sharding: the source cannot have had two indexes
    on one key); False when ``spec`` is not on the shard key. Each step is idempotent: a
    restart replays the event and goes through them again."""
    wanted = list(dict(spec["key"]).items())
    clashing = [index for index in existing if list(dict(index["key"]).items()) == wanted]
    key = destination_shard_key(cluster, db, name) if clashing else None
    if key is None or list(key.items()) != wanted:
        return False
    support_shard_key(cluster, db, name, key)
    for index in clashing:
        log.info("replacing the index %s of %s.%s, made on its shard key by sharding, with the "
                 "source's index %s on the same key", index["name"], db, name, spec["name"])
        _drop_index_if_present(cluster, db, name, index["name"])
    cluster.create_index(db, name, spec)
    _drop_index_if_present(cluster, db, name, SHARD_KEY_STAND_IN)
    return True


def destination_shard_key(cluster: ClusterClient, db: str, name: str) -> dict[str, Any] | None:
    """The shard key of a destination collection (None: not sharded)."""
    return cluster.shard_keys().get(f"{db}.{name}") if cluster.is_sharded else None


def support_shard_key(cluster: ClusterClient, db: str, name: str,
                      key: Mapping[str, Any] | None = None) -> None:
    """Build the stand-in index (:data:`SHARD_KEY_STAND_IN`) on a sharded destination
    collection, so that no index of the source's on its shard key is the only one supporting
    it; nothing on a collection that is not sharded."""
    key = key if key is not None else destination_shard_key(cluster, db, name)
    if key is None:
        return
    try:
        cluster.create_index(db, name, {"key": {**key, SHARD_KEY_STAND_IN: 1},
                                        "name": SHARD_KEY_STAND_IN})
    except OperationFailure as exc:
        if exc.code not in INDEX_EXISTS_CODES:  # there already
            raise


def is_shard_key_stand_in(spec: Mapping[str, Any], shard_key: Mapping[str, Any] | None) -> bool:
    return shard_key is not None and spec.get("name") == SHARD_KEY_STAND_IN and \
        list(dict(spec["key"]).items()) == [*dict(shard_key).items(), (SHARD_KEY_STAND_IN, 1)]


def drop_index(cluster: ClusterClient, db: str, name: str, index: str) -> None:
    """Drop a destination index as the source did; one the destination still needs for its
    shard key is dropped once the stand-in supports the key instead."""
    try:
        cluster.drop_index(db, name, index)
    except OperationFailure as exc:
        if exc.code != CANNOT_DROP_SHARD_KEY_INDEX:
            raise
        support_shard_key(cluster, db, name)
        cluster.drop_index(db, name, index)


def hide_index(cluster: ClusterClient, db: str, name: str, index: str, hidden: bool) -> None:
    """Hide or unhide a destination index as the source has it (the stand-in first supports
    the shard key where the index was the only one that did: MongoDB refuses to hide it)."""
    try:
        cluster.modify_collection(db, name, {"index": {"name": index, "hidden": hidden}})
    except OperationFailure as exc:
        key = destination_shard_key(cluster, db, name) \
            if exc.code == INVALID_OPTIONS and hidden else None
        if key is None:
            raise
        support_shard_key(cluster, db, name, key)
        cluster.modify_collection(db, name, {"index": {"name": index, "hidden": hidden}})


def _drop_index_if_present(cluster: ClusterClient, db: str, name: str, index: str) -> None:
    try:
        cluster.drop_index(db, name, index)
    except OperationFailure as exc:
        if exc.code != INDEX_NOT_FOUND:
            raise


def shard_key_index(indexes: list[dict[str, Any]],
                    key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The source's index on exactly the shard key, if it has one."""
    wanted = list(dict(key).items())
    for spec in indexes:
        if list(dict(spec.get("key", {})).items()) == wanted:
            return spec
    return None


def shard_collection(cluster: ClusterClient, db: str, name: str, key: Mapping[str, Any],
                     source_indexes: list[dict[str, Any]]) -> None:
    """Shard a destination collection. The source's own index on the key is built first, so
    that sharding uses it: otherwise the destination would get an index of its own making on
    the key, and the source's (its name, and uniqueness at commit) could not be built."""
    index = shard_key_index(source_indexes, key)
    if index is not None and index.get("name") != "_id_":
        create_indexes(cluster, db, name, [temporary_index_spec(index)])
    try:
        cluster.shard_collection(db, name, key)
    except OperationFailure as exc:
        if exc.code != ALREADY_SHARDED:  # already sharded with this key after a restart
            raise


# -- commit: back to the source's exact shape -------------------------------------------------


def restore_final_options(source: ClusterClient, destination: ClusterClient,
                          namespace_filter: NamespaceFilter, build_mode: str,
                          built: Mapping[str, Any] | None = None) -> list[IndexRef]:
    """Undo every temporary change; unique indexes go to ``prepareUnique`` only. Indexes
    the destination lacks are built, except on the collections of ``built`` (namespace →
    the source UUID it had when listed: their indexes were built as listed, and one missing
    now was dropped behind the tool's back, which the verifier reports).

    Returns the indexes still to convert to unique after writes are allowed again, as
    mongosync does (canWrite comes before the unique conversion).
    """
    pending_unique: list[IndexRef] = []
    for entry in list_namespaces(source, namespace_filter):
        if not entry.is_collection:
            continue
        if entry.options.get("capped"):
            change: dict[str, Any] = {"cappedSize": entry.options["size"]}
            if entry.options.get("max"):
                change["cappedMax"] = entry.options["max"]
            destination.modify_collection(entry.db, entry.name, change)
        if "clusteredIndex" in entry.options and "expireAfterSeconds" in entry.options:
            destination.modify_collection(entry.db, entry.name, {
                "expireAfterSeconds": entry.options["expireAfterSeconds"]})
        if build_mode == "never":
            continue
        existing = {spec["name"]: spec for spec in destination.index_specs(entry.db, entry.name)}
        # What the destination misses of the (write-blocked, drained) source's indexes: those
        # of a collection renamed while the index builds ran, which they left to this.
        listed_here = built is not None and entry.id in built and \
            uuid_bytes(built[entry.id]) == uuid_bytes(entry.uuid)
        missing = [] if listed_here else [
            spec for spec in indexes_to_build(entry.indexes, build_mode)
            if spec["name"] not in existing]
        if missing:
            log.info("building %d index(es) of %s missing on the destination at commit",
                     len(missing), entry.id)
            create_indexes(destination, entry.db, entry.name, missing)
            existing = {spec["name"]: spec
                        for spec in destination.index_specs(entry.db, entry.name)}
        for spec in entry.indexes:
            name = spec["name"]
            if name == "_id_" or name not in existing:
                continue
            current = existing[name]
            if "expireAfterSeconds" in spec and \
                    current.get("expireAfterSeconds") != spec["expireAfterSeconds"]:
                destination.modify_collection(entry.db, entry.name, {"index": {
                    "name": name, "expireAfterSeconds": spec["expireAfterSeconds"]}})
            if bool(spec.get("hidden")) != bool(current.get("hidden")):
                hide_index(destination, entry.db, entry.name, name, bool(spec.get("hidden")))
            wants_unique = bool(spec.get("unique"))
            if (wants_unique or spec.get("prepareUnique")) and not current.get("unique") \
                    and not current.get("prepareUnique"):
                # Also for an index the source was converting to unique (prepareUnique only).
                destination.modify_collection(entry.db, entry.name, {"index": {
                    "name": name, "prepareUnique": True}})
            if wants_unique and not current.get("unique"):
                pending_unique.append(IndexRef(db=entry.db, coll=entry.name, name=name,
                                               prepare_unique=bool(spec.get("prepareUnique"))))
    return pending_unique


def enforce_unique(destination: ClusterClient, pending: list[IndexRef]) -> None:
    for index in pending:
        destination.modify_collection(index.db, index.coll,
                                      {"index": {"name": index.name, "unique": True}})
        if index.prepare_unique:  # the conversion cleared it, as it does on MongoDB
            destination.modify_collection(index.db, index.coll,
                                          {"index": {"name": index.name, "prepareUnique": True}})
