"""The mongos surface: shards, balancer, enableSharding, shardCollection and ``config.*``.

One logical store stands behind fictitious shards; the placement metadata lives in real
``config`` collections so tools that read them directly see MongoDB's layout.
"""

from __future__ import annotations


import uuid
from typing import TYPE_CHECKING, Any

from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import decode, encode, sort_key
from mongoemu.clock import wall_clock
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.storage.collection import Collection

if TYPE_CHECKING:
    from mongoemu.server import Server


class ShardingState:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.shard_keys: dict[str, dict[str, Any]] = {}
        self.balancer_rounds = 0
        topology_time = server.clock.now
        for name in server.config.shard_names:
            self._put("shards", {"_id": name, "host": f"{name}/{server.config.address}",
                                 "state": 1, "topologyTime": topology_time})
        self._put("settings", {"_id": "balancer", "mode": "full", "stopped": False})
        self._put("settings", {"_id": "chunksize", "value": 128})
        self._put("version", {"_id": 1, "clusterId": ObjectId()})

    # -- config collections --------------------------------------------------------------------
    def _config(self, name: str) -> Collection:
        collection = self.server.catalog.collection("config", name)
        if collection is None:
            collection = Collection("config", name, {})
            self.server.catalog.add(collection)
        return collection

    def _put(self, name: str, document: dict[str, Any]) -> None:
        collection = self._config(name)
        key = sort_key(document["_id"])
        old = collection.get(key)
        if old is None:
            collection.insert(key, encode(document), document)
        else:
            collection.replace(key, encode(document), document, old)

    def _get(self, name: str, document_id: Any) -> dict[str, Any] | None:
        collection = self.server.catalog.collection("config", name)
        return None if collection is None else collection.get(sort_key(document_id))

    def _delete(self, name: str, document_id: Any) -> None:
        collection = self.server.catalog.collection("config", name)
        key = sort_key(document_id)
        if collection is not None and collection.get_raw(key) is not None:
            collection.remove(key)

    # -- placement -----------------------------------------------------------------------------
    def shard_key(self, ns: str) -> dict[str, Any] | None:
        return self.shard_keys.get(ns)

    def forget(self, ns: str) -> None:
        if self.shard_keys.pop(ns, None) is not None:
            self._delete("collections", ns)

    def set_balancer(self, running: bool) -> None:
        self._put("settings", {"_id": "balancer", "mode": "full" if running else "off",
                               "stopped": not running})

    @property
    def balancer_running(self) -> bool:
        settings = self._get("settings", "balancer") or {}
        return settings.get("mode", "full") == "full" and not settings.get("stopped", False)

    def ensure_database(self, db: str) -> None:
        if self._get("databases", db) is None:
            self._put("databases", {"_id": db, "primary": self.server.config.shard_names[0],
                                    "version": {"uuid": Binary(uuid.uuid4().bytes, 4),
                                                "timestamp": self.server.clock.now,
                                                "lastMod": 1}})


@command("listShards", admin_only=True, topology="mongos")
def list_shards(ctx: Context) -> dict[str, Any]:
    collection = ctx.server.catalog.collection("config", "shards")
    shards = [decode(raw) for _, raw in collection.scan()] if collection else []
    for shard in shards:
        shard["replSetConfigVersion"] = Int64(-1)
    return {"shards": shards}


@command("getShardMap", admin_only=True)
def get_shard_map(ctx: Context) -> dict[str, Any]:
    config = ctx.server.config
    if not config.is_mongos:
        host = f"{config.replset_name}/{config.address}"
        return {"map": {config.replset_name: host}, "hosts": {config.address: config.replset_name},
                "connStrings": {host: config.replset_name}}
    shard_map = {name: f"{name}/{config.address}" for name in config.shard_names}
    shard_map["config"] = f"configRepl/{config.address}"
    return {"map": shard_map, "hosts": {config.address: config.shard_names[0]},
            "connStrings": {v: k for k, v in shard_map.items()}}


@command("balancerStart", admin_only=True, topology="mongos")
def balancer_start(ctx: Context) -> dict[str, Any]:
    ctx.server.sharding.set_balancer(True)
    return {}


@command("balancerStop", admin_only=True, topology="mongos")
def balancer_stop(ctx: Context) -> dict[str, Any]:
    ctx.server.sharding.set_balancer(False)
    return {}


@command("balancerStatus", admin_only=True, topology="mongos")
def balancer_status(ctx: Context) -> dict[str, Any]:
    sharding = ctx.server.sharding
    return {"mode": "full" if sharding.balancer_running else "off", "inBalancerRound": False,
            "numBalancerRounds": Int64(sharding.balancer_rounds)}


@command("enableSharding", "enablesharding", admin_only=True, topology="mongos")
def enable_sharding(ctx: Context) -> dict[str, Any]:
    db = ctx.body[ctx.name]
    if not isinstance(db, str) or not db or "." in db:
        raise CommandError(73, f"invalid db name specified: {db}")
    ctx.server.writer.check_writable(ctx, db)
    ctx.server.sharding.ensure_database(db)
    return {}


@command("shardCollection", "shardcollection", admin_only=True, topology="mongos")
def shard_collection(ctx: Context) -> dict[str, Any]:
    ns = ctx.body[ctx.name]
    key = ctx.body.get("key")
    if not isinstance(ns, str) or "." not in ns:
        raise CommandError(73, f"Invalid namespace: {ns}")
    if not isinstance(key, dict) or not key:
        raise CommandError(40414, "BSON field 'shardCollection.key' is missing but a required "
                                  "field")
    for field, kind in key.items():
        if kind not in (1, 1.0, "hashed"):
            raise CommandError(2, f"Unsupported shard key pattern {key}. Pattern must either be "
                                  f"a single hashed field, or a list of ascending fields")
    db, name = ns.split(".", 1)
    sharding = ctx.server.sharding
    existing = sharding.shard_key(ns)
    if existing is not None:
        if existing == key:
            return {"collectionsharded": ns}
        raise CommandError(23, f"sharding already enabled for collection {ns} with options "
                               f"{{ key: {existing} }}")
    writer = ctx.server.writer
    collection = ctx.server.catalog.collection(db, name)
    if collection is None:
        collection = writer.create_collection(ctx, db, name, {})
    if collection.is_view:
        raise CommandError(166, f"Namespace {ns} is a view, not a collection")
    sharding.ensure_database(db)
    if collection.find_index(key) is None and key != {"_id": 1}:
        index_name = "_".join(f"{f}_{d}" for f, d in key.items())
        spec: dict[str, Any] = {"v": 2, "key": dict(key), "name": index_name}
        if ctx.body.get("unique"):
            spec["unique"] = True
        writer.create_index(ctx, collection, spec)
    sharding.shard_keys[ns] = dict(key)
    now = ctx.server.clock.now
    sharding._put("collections", {
        "_id": ns, "lastmodEpoch": ObjectId(), "lastmod": wall_clock(), "timestamp": now,
        "uuid": Binary(collection.uuid.bytes, 4), "key": dict(key),
        "unique": bool(ctx.body.get("unique", False)), "noBalance": False,
    })
    sharding._put("chunks", {
        "_id": ObjectId(), "uuid": Binary(collection.uuid.bytes, 4),
        "min": {f: _min_key() for f in key}, "max": {f: _max_key() for f in key},
        "shard": ctx.server.config.shard_names[0], "lastmod": Timestamp(1, 0),
        "onCurrentShardSince": now, "history": [{"validAfter": now,
                                                 "shard": ctx.server.config.shard_names[0]}],
    })
    writer.noop({"msg": {"shardCollection": ns}}, o2={
        "shardCollection": ns, "key": dict(key), "unique": bool(ctx.body.get("unique", False)),
        "numInitialChunks": Int64(int(ctx.body.get("numInitialChunks", 0) or 0)),
        "presplitHashedZones": bool(ctx.body.get("presplitHashedZones", False))},
        collection=collection)
    ctx.operation_time = ctx.server.clock.now
    return {"collectionsharded": ns}


def _min_key() -> Any:
    from bson.min_key import MinKey
    return MinKey()


def _max_key() -> Any:
    from bson.max_key import MaxKey
    return MaxKey()



