"""Server information, write blocking, fail points, oplog notes and emulator test hooks."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import time
from typing import Any

from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu.clock import wall_clock
from mongoemu.commands.deployment import (
    feature_compatibility_version,
    filesystem_sizes,
    oplog_stats,
    oplog_times,
    set_feature_compatibility_version,
)
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError

REPLICA_SET_ID = ObjectId()


def _optime(ts: Timestamp) -> dict[str, Any]:
    return {"ts": ts, "t": Int64(1)}


@command("listDatabases", admin_only=True)
def list_databases(ctx: Context) -> dict[str, Any]:
    from mongoemu.query.matcher import Matcher
    catalog, body = ctx.server.catalog, ctx.body
    entries: list[dict[str, Any]] = []
    names = set(catalog.databases)
    if not ctx.server.config.is_mongos:
        names |= {"admin", "local"}
    names.add("config")
    total = 0
    for name in sorted(names):
        database = catalog.database(name)
        size = database.size_on_disk() if database is not None else 8192
        total += size
        entry: dict[str, Any] = {"name": name, "sizeOnDisk": Int64(size),
                                 "empty": database is None or not database.collections}
        if ctx.server.config.is_mongos:
            entry["shards"] = {ctx.server.config.shard_names[0]: Int64(size)}
        entries.append(entry)
    if body.get("nameOnly"):
        entries = [{"name": e["name"]} for e in entries]
    filter_doc = body.get("filter")
    if filter_doc:
        matcher = Matcher(filter_doc)
        entries = [e for e in entries if matcher.matches(e)]
    reply: dict[str, Any] = {"databases": entries}
    if not body.get("nameOnly"):
        reply["totalSize"] = Int64(total)
        reply["totalSizeMb"] = Int64(total // (1024 * 1024))
    return reply


def _collection_stats(ctx: Context, db: str, name: str, scale: int) -> dict[str, Any]:
    collection = ctx.server.catalog.collection(db, name)
    if collection is None or collection.is_view:
        raise CommandError(26, f"Collection [{db}.{name}] not found.")
    size = collection.data_size
    count = len(collection)
    index_sizes = {index: 4096 + 32 * count for index in collection.indexes}
    stats: dict[str, Any] = {
        "ns": collection.ns, "size": size // scale, "count": count,
        "avgObjSize": size // count if count else 0, "numOrphanDocs": 0,
        "storageSize": max(size, 4096) // scale, "freeStorageSize": 0, "capped": collection.is_capped,
        "nindexes": len(collection.indexes), "indexBuilds": [],
        "totalIndexSize": sum(index_sizes.values()) // scale,
        "totalSize": (max(size, 4096) + sum(index_sizes.values())) // scale,
        "indexSizes": {k: v // scale for k, v in index_sizes.items()}, "scaleFactor": scale,
    }
    if collection.is_capped:
        stats["max"] = collection.options.get("max", 0)
        stats["maxSize"] = collection.options.get("size", 0) // scale
    return stats


@command("collStats")
def coll_stats(ctx: Context) -> dict[str, Any]:
    scale = int(ctx.body.get("scale", 1) or 1)
    if scale < 1:
        raise CommandError(2, "scale has to be >= 1")
    if ctx.db == "local" and ctx.collection_name() == "oplog.rs" and not ctx.server.config.is_mongos:
        return oplog_stats(ctx.server, scale)
    return _collection_stats(ctx, ctx.db, ctx.collection_name(), scale)


@command("dbStats")
def db_stats(ctx: Context) -> dict[str, Any]:
    scale = int(ctx.body.get("scale", 1) or 1)
    database = ctx.server.catalog.database(ctx.db)
    collections = list(database.collections.values()) if database else []
    views = [c for c in collections if c.is_view]
    data = [c for c in collections if not c.is_view]
    objects = sum(len(c) for c in data)
    data_size = sum(c.data_size for c in data)
    index_count = sum(len(c.indexes) for c in data)
    index_size = index_count * 4096
    fs_used, fs_total = filesystem_sizes(ctx.server)
    return {
        "db": ctx.db, "collections": len(data), "views": len(views), "objects": objects,
        "avgObjSize": data_size / objects if objects else 0, "dataSize": data_size / scale,
        "storageSize": data_size / scale, "indexes": index_count, "indexSize": index_size / scale,
        "totalSize": (data_size + index_size) / scale, "scaleFactor": scale,
        "fsUsedSize": Int64(fs_used // scale), "fsTotalSize": Int64(fs_total // scale),
    }


@command("serverStatus", in_transaction=False)
def server_status(ctx: Context) -> dict[str, Any]:
    server, config = ctx.server, ctx.server.config
    uptime = time.time() - server.started_at
    reply: dict[str, Any] = {
        "host": config.address, "version": config.full_version,
        "process": "mongos" if config.is_mongos else "mongod", "pid": Int64(os.getpid()),
        "uptime": float(int(uptime)), "uptimeMillis": Int64(int(uptime * 1000)),
        "uptimeEstimate": Int64(int(uptime)), "localTime": wall_clock(),
        "connections": {"current": len(server.connections), "available": 838860,
                        "totalCreated": server.total_connections},
        "opcounters": {k: Int64(v) for k, v in server.opcounters.items()},
        "storageEngine": {"name": "wiredTiger", "supportsCommittedReads": True,
                          "persistent": True},
        "mem": {"bits": 64, "resident": 0, "virtual": 0, "supported": False},
        "metrics": {}, "writeBlocking": {"userWritesBlocked": server.write_blocked},
        "oplog": {"entries": len(server.oplog), "bytes": server.oplog.total_bytes,
                  "maxBytes": server.oplog.max_bytes, **oplog_times(server)},
    }
    if not config.is_mongos:
        reply["repl"] = {
            "topologyVersion": {"processId": server.process_id,
                                "counter": Int64(server.topology_counter)},
            "hosts": [config.address], "setName": config.replset_name, "setVersion": 1,
            "isWritablePrimary": True, "secondary": False, "primary": config.address,
            "me": config.address, "electionId": ObjectId("7fffffff0000000000000001"),
            "rbid": 1,
        }
    for key, value in ctx.body.items():
        if key in reply and value in (0, False) and key != "ok":
            del reply[key]
    return reply


@command("hostInfo")
def host_info(ctx: Context) -> dict[str, Any]:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pages = 0
    return {
        "system": {"currentTime": wall_clock(), "hostname": socket.gethostname(),
                   "cpuAddrSize": 64, "memSizeMB": Int64(pages // (1024 * 1024)),
                   "memLimitMB": Int64(pages // (1024 * 1024)), "numCores": os.cpu_count() or 1,
                   "numPhysicalCores": os.cpu_count() or 1, "numCpuSockets": 1,
                   "cpuArch": platform.machine(), "numaEnabled": False, "numNumaNodes": 1},
        "os": {"type": platform.system(), "name": platform.platform(),
               "version": platform.release()},
        "extra": {"versionString": platform.version(), "pageSize": Int64(4096)},
    }


@command("replSetGetStatus", admin_only=True, topology="replset")
def repl_set_get_status(ctx: Context) -> dict[str, Any]:
    server, config = ctx.server, ctx.server.config
    now = server.clock.now
    newest = server.oplog.newest
    last = newest.ts if newest else now
    wall = newest.wall if newest else wall_clock()
    uptime = int(time.time() - server.started_at)
    return {
        "set": config.replset_name, "date": wall_clock(), "myState": 1, "term": Int64(1),
        "syncSourceHost": "", "syncSourceId": -1, "heartbeatIntervalMillis": Int64(2000),
        "majorityVoteCount": 1, "writeMajorityCount": 1, "votingMembersCount": 1,
        "writableVotingMembersCount": 1,
        "optimes": {"lastCommittedOpTime": _optime(last), "lastCommittedWallTime": wall,
                    "readConcernMajorityOpTime": _optime(last),
                    "readConcernMajorityWallTime": wall, "appliedOpTime": _optime(last),
                    "durableOpTime": _optime(last), "lastAppliedWallTime": wall,
                    "lastDurableWallTime": wall},
        "members": [{
            "_id": 0, "name": config.address, "health": 1.0, "state": 1, "stateStr": "PRIMARY",
            "uptime": uptime, "optime": _optime(last), "optimeDate": wall,
            "lastAppliedWallTime": wall, "lastDurableWallTime": wall, "syncSourceHost": "",
            "syncSourceId": -1, "infoMessage": "", "electionTime": Timestamp(int(server.started_at), 1),
            "electionDate": wall_clock(), "configVersion": 1, "configTerm": 1, "self": True,
            "lastHeartbeatMessage": "",
        }],
    }


@command("replSetGetConfig", admin_only=True, topology="replset")
def repl_set_get_config(ctx: Context) -> dict[str, Any]:
    config = ctx.server.config
    return {"config": {
        "_id": config.replset_name, "version": 1, "term": 1,
        "members": [{"_id": 0, "host": config.address, "arbiterOnly": False,
                     "buildIndexes": True, "hidden": False, "priority": 1.0, "tags": {},
                     "secondaryDelaySecs": Int64(0), "votes": 1}],
        "protocolVersion": Int64(1), "writeConcernMajorityJournalDefault": True,
        "settings": {"chainingAllowed": True, "heartbeatIntervalMillis": 2000,
                     "heartbeatTimeoutSecs": 10, "electionTimeoutMillis": 10000,
                     "catchUpTimeoutMillis": -1, "catchUpTakeoverDelayMillis": 30000,
                     "getLastErrorModes": {}, "getLastErrorDefaults": {"w": 1, "wtimeout": 0},
                     "replicaSetId": REPLICA_SET_ID},
    }}


def _parameters(ctx: Context) -> dict[str, Any]:
    config = ctx.server.config
    return {
        "featureCompatibilityVersion": feature_compatibility_version(ctx.server),
        "authenticationMechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        "transactionLifetimeLimitSeconds": 60, "cursorTimeoutMillis": Int64(600000),
        "maxBSONDepth": 200, "logLevel": 0, "enableTestCommands": config.enable_test_commands,
        "changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": "off"}},
        "internalQueryMaxBlockingSortMemoryUsageBytes": 104857600,
        "requireApiVersion": False,
    }


@command("getParameter", admin_only=True)
def get_parameter(ctx: Context) -> dict[str, Any]:
    parameters = _parameters(ctx)
    if ctx.body["getParameter"] == "*":
        return parameters
    requested = [k for k in ctx.body if k not in ("getParameter", "$db", "lsid", "$clusterTime",
                                                   "$readPreference", "comment")]
    reply = {k: parameters[k] for k in requested if k in parameters}
    if not reply:
        raise CommandError(72, "no option found to get")
    return reply


@command("setParameter", admin_only=True)
def set_parameter(ctx: Context) -> dict[str, Any]:
    return {"was": None}


@command("getCmdLineOpts", admin_only=True)
def get_cmd_line_opts(ctx: Context) -> dict[str, Any]:
    config = ctx.server.config
    parsed: dict[str, Any] = {"net": {"port": config.port, "bindIp": config.bind_host}}
    if not config.is_mongos:
        parsed["replication"] = {"replSet": config.replset_name}
    return {"argv": ["mongoemu"], "parsed": parsed}


@command("getLog", admin_only=True)
def get_log(ctx: Context) -> dict[str, Any]:
    if ctx.body["getLog"] == "*":
        return {"names": ["global", "startupWarnings"]}
    return {"totalLinesWritten": 0, "log": []}


@command("getDefaultRWConcern", admin_only=True)
def get_default_rw_concern(ctx: Context) -> dict[str, Any]:
    return {"defaultReadConcern": {"level": "local"},
            "defaultWriteConcern": {"w": "majority", "wtimeout": 0},
            "defaultReadConcernSource": "implicit", "defaultWriteConcernSource": "implicit",
            "localUpdateWallClockTime": wall_clock()}


@command("setDefaultRWConcern", admin_only=True)
def set_default_rw_concern(ctx: Context) -> dict[str, Any]:
    return get_default_rw_concern(ctx)


@command("setFeatureCompatibilityVersion", admin_only=True)
def set_fcv(ctx: Context) -> dict[str, Any]:
    return set_feature_compatibility_version(ctx)


@command("setUserWriteBlockMode", admin_only=True)
def set_user_write_block_mode(ctx: Context) -> dict[str, Any]:
    enabled = ctx.body.get("global")
    if not isinstance(enabled, bool):
        raise CommandError(40414 if enabled is None else 14,
                           "BSON field 'setUserWriteBlockMode.global' is missing but a required "
                           "field" if enabled is None else
                           "BSON field 'setUserWriteBlockMode.global' is the wrong type, expected "
                           "type 'bool'")
    ctx.server.write_blocked = enabled
    return {}


@command("appendOplogNote", admin_only=True)
def append_oplog_note(ctx: Context) -> dict[str, Any]:
    data = ctx.body.get("data")
    if not isinstance(data, dict):
        raise CommandError(40414, "BSON field 'appendOplogNote.data' is missing but a required "
                                  "field")
    ctx.server.writer.noop(data)
    ctx.operation_time = ctx.server.clock.now
    return {}


@command("configureFailPoint", admin_only=True)
def configure_fail_point(ctx: Context) -> dict[str, Any]:
    if not ctx.server.config.enable_test_commands:
        raise CommandError(59, "no such command: 'configureFailPoint'")
    name = ctx.body["configureFailPoint"]
    if not isinstance(name, str):
        raise CommandError(14, "configureFailPoint takes a fail point name")
    _check_fail_point_name(ctx, name)
    if "mode" not in ctx.body:
        raise CommandError(9, "Missing mode")
    count = ctx.server.failpoints.configure(name, ctx.body["mode"], ctx.body.get("data"))
    return {"count": count}


def _check_fail_point_name(ctx: Context, name: str) -> None:
    from mongoemu.failpoints import MONGOS_FAIL_POINTS, REPLSET_FAIL_POINTS, fail_point_not_found
    known = MONGOS_FAIL_POINTS if ctx.server.config.is_mongos else REPLSET_FAIL_POINTS
    if name not in known:
        raise fail_point_not_found(name)


@command("waitForFailPoint", admin_only=True)
async def wait_for_fail_point(ctx: Context) -> dict[str, Any]:
    name = ctx.body["waitForFailPoint"]
    if not isinstance(name, str):
        raise CommandError(14, "waitForFailPoint takes a fail point name")
    _check_fail_point_name(ctx, name)
    target = int(ctx.body.get("timesEntered", 1))
    deadline = time.monotonic() + float(ctx.body.get("maxTimeMS", 30000)) / 1000.0
    while True:
        point = ctx.server.failpoints.points.get(name)
        if point is not None and point.times_entered >= target:
            return {}
        if time.monotonic() >= deadline:
            raise CommandError(50, "operation exceeded time limit")
        await asyncio.sleep(0.01)


@command("listCommands")
def list_commands(ctx: Context) -> dict[str, Any]:
    from mongoemu.commands.registry import REGISTRY
    return {"commands": {name: {"help": "", "requiresAuth": not spec.no_auth,
                                "adminOnly": spec.admin_only}
                         for name, spec in sorted(REGISTRY.items())}}


@command("dropConnections", admin_only=True)
def drop_connections(ctx: Context) -> dict[str, Any]:
    return {}


@command("fsync", admin_only=True)
def fsync(ctx: Context) -> dict[str, Any]:
    return {"numFiles": 1}


@command("emulatorTruncateOplog", admin_only=True)
def emulator_truncate_oplog(ctx: Context) -> dict[str, Any]:
    """Test hook: drop oplog history older than ``before`` (default: all but the newest)."""
    oplog = ctx.server.oplog
    before = ctx.body.get("before")
    if before is None:
        newest = oplog.newest
        before = newest.ts if newest is not None else ctx.server.clock.now
    if not isinstance(before, Timestamp):
        raise CommandError(14, "emulatorTruncateOplog.before must be a Timestamp")
    oplog.truncate_before(before)
    oldest = oplog.oldest
    return {"oldest": oldest.ts if oldest is not None else None}


@command("emulatorStepDown", admin_only=True)
def emulator_step_down(ctx: Context) -> dict[str, Any]:
    """Test hook: signal a topology change to awaitable hellos (as after an election)."""
    ctx.server.bump_topology()
    return {}


@command("emulatorSetOplogSize", admin_only=True)
def emulator_set_oplog_size(ctx: Context) -> dict[str, Any]:
    size = ctx.body.get("bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CommandError(2, "emulatorSetOplogSize.bytes must be a positive integer")
    ctx.server.oplog.max_bytes = size
    return {}

