"""What an operator (or a migration tool's pre-flight) reads about a deployment: the feature
compatibility version, the filesystem behind the data, the oplog's window, and MongoDB 8.0's
persistent query settings.

The handlers that existing commands need (``dbStats``, ``collStats``, ``serverStatus``,
``getParameter``, ``setFeatureCompatibilityVersion``, the ``$querySettings`` stage) call the
functions here; the commands that are new (``setQuerySettings``, ``removeQuerySettings`` and the
test hook ``emulatorSetDiskSize``) are registered here.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import bson
from bson.int64 import Int64

from mongoemu.commands.registry import command
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.context import Context
    from mongoemu.server import Server

# setFeatureCompatibilityVersion accepts the binary's release and the one before it (the last
# LTS); going further down needs an older binary, as on MongoDB.
PREVIOUS_RELEASE = {"6.0": "5.0", "7.0": "6.0", "8.0": "7.0"}
# Fields of the command document that are not part of the query it describes.
_GENERIC_FIELDS = frozenset({"$db", "lsid", "$clusterTime", "$readPreference", "comment",
                             "txnNumber", "apiVersion", "apiStrict", "apiDeprecationErrors",
                             "readConcern", "writeConcern", "maxTimeMS", "cursor", "hint"})
_QUERY_COMMANDS = ("find", "distinct", "aggregate")


def _release_tuple(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("."))


# -- feature compatibility version ---------------------------------------------------------------
def set_feature_compatibility_version(ctx: Context) -> dict[str, Any]:
    server = ctx.server
    binary = server.config.server_version
    target = ctx.body.get("setFeatureCompatibilityVersion")
    allowed = (PREVIOUS_RELEASE[binary], binary)
    if not isinstance(target, str):
        raise CommandError(14, "setFeatureCompatibilityVersion takes a version string, "
                               f"'{allowed[0]}' or '{allowed[1]}'")
    if target not in allowed:
        raise CommandError(2, f"Invalid feature compatibility version value '{target}'; expected "
                              f"'{allowed[0]}' or '{allowed[1]}' on a {binary} binary")
    # 7.0 made the acknowledgement mandatory: an FCV change cannot be undone without support.
    if _release_tuple(binary) >= (7, 0) and ctx.body.get("confirm") is not True and \
            target != server.feature_compatibility_version:
        raise CommandError(7369100, "Once you have upgraded or downgraded the feature "
                                    "compatibility version you may not be able to go back "
                                    "without support assistance. Please re-run this command "
                                    "with 'confirm: true' to acknowledge this and continue.")
    server.feature_compatibility_version = target
    return {}


def feature_compatibility_version(server: Server) -> dict[str, Any]:
    """The ``featureCompatibilityVersion`` parameter (getParameter)."""
    return {"version": server.feature_compatibility_version}


# -- the filesystem behind the data (dbStats fsUsedSize / fsTotalSize) -------------------------
def stored_bytes(server: Server) -> int:
    """What the emulator holds as a mongod would on disk: documents, index entries, oplog."""
    total = server.oplog.total_bytes
    for collection in server.catalog.all_collections():
        if not collection.is_view:
            total += collection.data_size + len(collection.indexes) * (4096 + 32 * len(collection))
    return total


def filesystem_sizes(server: Server) -> tuple[int, int]:
    """(used, total) bytes of the filesystem holding the data: the host's filesystem of the
    working directory (the emulator's "dbPath"), or the emulated disk set by
    ``emulatorSetDiskSize``, which this server's data fills."""
    if server.emulated_disk_bytes is not None:
        total = server.emulated_disk_bytes
        return min(stored_bytes(server), total), total
    stats = os.statvfs(os.getcwd())
    total = stats.f_blocks * stats.f_frsize
    return total - stats.f_bavail * stats.f_frsize, total


@command("emulatorSetDiskSize", admin_only=True)
def emulator_set_disk_size(ctx: Context) -> dict[str, Any]:
    """Emulator test hook: ``{emulatorSetDiskSize: 1, bytes: N}`` makes dbStats report a disk
    of N bytes filled by this server's data; ``bytes: null`` goes back to the host's disk."""
    size = ctx.body.get("bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise CommandError(2, "emulatorSetDiskSize takes bytes: a positive integer, or null "
                              "for the host's filesystem")
    ctx.server.emulated_disk_bytes = None if size is None else int(size)
    used, total = filesystem_sizes(ctx.server)
    return {"fsUsedSize": Int64(used), "fsTotalSize": Int64(total)}


# -- the oplog ---------------------------------------------------------------------------------
def oplog_stats(server: Server, scale: int) -> dict[str, Any]:
    """collStats of ``local.oplog.rs``: a capped collection of ``maxSize`` bytes."""
    oplog = server.oplog
    count, size = len(oplog), oplog.total_bytes
    return {"ns": "local.oplog.rs", "size": size // scale, "count": count,
            "avgObjSize": size // count if count else 0, "storageSize": size // scale,
            "freeStorageSize": 0, "capped": True, "max": 0, "maxSize": oplog.max_bytes // scale,
            "nindexes": 0, "indexBuilds": [], "totalIndexSize": 0, "totalSize": size // scale,
            "indexSizes": {}, "scaleFactor": scale}


def oplog_times(server: Server) -> dict[str, Any]:
    """serverStatus ``oplog`` section fields: the oldest and newest entries' timestamps."""
    oldest, newest = server.oplog.oldest, server.oplog.newest
    fields: dict[str, Any] = {}
    if newest is not None:
        fields["latestOptime"] = newest.ts
    if oldest is not None:
        fields["earliestOptime"] = oldest.ts
    return fields


# -- persistent query settings (8.0) -----------------------------------------------------------
def _query_settings_supported(ctx: Context) -> bool:
    return _release_tuple(ctx.server.config.server_version) >= (8, 0)


def _shape(value: Any) -> Any:
    """A query's shape: literal values replaced by their type, structure and names kept."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return f"?{type(value).__name__}"


def _representative_query(query: Any) -> dict[str, Any]:
    if not isinstance(query, dict):
        raise CommandError(14, "setQuerySettings takes a find, distinct or aggregate command "
                               "with its $db, or a queryShapeHash string")
    names = [name for name in _QUERY_COMMANDS if name in query]
    if len(names) != 1 or not isinstance(query.get("$db"), str):
        raise CommandError(7746402, "the query of setQuerySettings must be one find, distinct or "
                                    "aggregate command with a '$db' field naming its database")
    return dict(query)


def query_shape_hash(query: dict[str, Any]) -> str:
    """A stable hash of the query's shape (namespace, command, filter structure...)."""
    shape = {"cmdNs": {"db": query["$db"]},
             **{key: (value if key in _QUERY_COMMANDS else _shape(value))
                for key, value in query.items() if key not in _GENERIC_FIELDS}}
    return hashlib.sha256(bson.encode(shape)).hexdigest().upper()


def _settings(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise CommandError(7746604, "settings cannot be empty; give indexHints, queryFramework "
                                    "or reject (removeQuerySettings removes settings)")
    unknown = set(value) - {"indexHints", "queryFramework", "reject", "comment"}
    if unknown:
        raise CommandError(40415, f"BSON field 'settings.{sorted(unknown)[0]}' is an unknown "
                                  f"field.")
    return dict(value)


@command("setQuerySettings", admin_only=True, action="querySettings")
def set_query_settings(ctx: Context) -> dict[str, Any]:
    if not _query_settings_supported(ctx):
        raise CommandError(59, "no such command: 'setQuerySettings'")
    target = ctx.body["setQuerySettings"]
    settings = _settings(ctx.body.get("settings"))
    stored = ctx.server.query_settings
    if isinstance(target, str):
        if target not in stored:
            raise CommandError(7746401, f"New query settings can only be created with a query "
                                        f"instance, but a query hash {target} was given")
        entry = stored[target]
    else:
        query = _representative_query(target)
        shape_hash = query_shape_hash(query)
        entry = stored.setdefault(shape_hash, {"queryShapeHash": shape_hash,
                                               "representativeQuery": query})
    entry["settings"] = settings
    return {"queryShapeHash": entry["queryShapeHash"], "settings": settings,
            "representativeQuery": entry["representativeQuery"]}


@command("removeQuerySettings", admin_only=True, action="querySettings")
def remove_query_settings(ctx: Context) -> dict[str, Any]:
    if not _query_settings_supported(ctx):
        raise CommandError(59, "no such command: 'removeQuerySettings'")
    target = ctx.body["removeQuerySettings"]
    shape_hash = target if isinstance(target, str) else \
        query_shape_hash(_representative_query(target))
    ctx.server.query_settings.pop(shape_hash, None)
    return {}


def query_settings_documents(ctx: Context, spec: Any) -> list[dict[str, Any]]:
    """The ``$querySettings`` stage: one document per query shape with settings."""
    if not _query_settings_supported(ctx):
        raise CommandError(40324, "Unrecognized pipeline stage name: '$querySettings'")
    if ctx.db != "admin":
        raise CommandError(73, "$querySettings must be run against the 'admin' database with "
                               "{aggregate: 1}")
    options = spec if isinstance(spec, dict) else {}
    unknown = set(options) - {"showDebugQueryShape"}
    if unknown or not isinstance(options.get("showDebugQueryShape", False), bool):
        raise CommandError(40415, "$querySettings takes only showDebugQueryShape: <bool>")
    documents = []
    for entry in ctx.server.query_settings.values():
        document = {"queryShapeHash": entry["queryShapeHash"], "settings": entry["settings"],
                    "representativeQuery": entry["representativeQuery"]}
        if options.get("showDebugQueryShape"):
            document["debugQueryShape"] = _shape(
                {k: v for k, v in entry["representativeQuery"].items() if k != "$db"})
        documents.append(document)
    return documents
