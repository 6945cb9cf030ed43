"""The routing table: databases and their primary shards, sharded collections and their chunks.

The config server (an ordinary replica-set emulator) holds it in MongoDB's own layout
(``config.shards``, ``config.databases``, ``config.collections``, ``config.chunks``,
``config.settings``, ``config.changelog``), so tools reading those collections through the
router see what they would see on MongoDB, and a restarted router loads it back. The router
is the only writer, so its in-memory copy is authoritative while it runs.
"""

from __future__ import annotations

import asyncio
import bisect
import uuid
from dataclasses import dataclass, field
from typing import Any

from bson.binary import Binary
from bson.int64 import Int64
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu.clock import Clock, wall_clock
from mongoemu.cluster.client import Remote, error_of
from mongoemu.cluster.shardkey import Point, bound_point, global_max, global_min
from mongoemu.errors import CommandError

DEFAULT_CHUNK_SIZE_MB = 128


@dataclass
class Chunk:
    document: dict[str, Any]  # as stored in config.chunks
    lower: Point
    upper: Point

    @property
    def shard(self) -> str:
        return str(self.document["shard"])

    @property
    def min(self) -> dict[str, Any]:
        return dict(self.document["min"])

    @property
    def max(self) -> dict[str, Any]:
        return dict(self.document["max"])


@dataclass
class ShardedCollection:
    document: dict[str, Any]  # as stored in config.collections
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return str(self.document["_id"])

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.document["key"])

    @property
    def uuid(self) -> Binary:
        value: Binary = self.document["uuid"]
        return value

    @property
    def version(self) -> tuple[int, int]:
        newest = max((chunk.document["lastmod"] for chunk in self.chunks),
                     key=lambda ts: (ts.time, ts.inc), default=Timestamp(1, 0))
        return newest.time, newest.inc

    def sort(self) -> None:
        self.chunks.sort(key=lambda chunk: chunk.lower)

    def chunk_for(self, point: Point) -> Chunk:
        index = bisect.bisect_right([chunk.lower for chunk in self.chunks], point) - 1
        return self.chunks[max(index, 0)]

    def shards(self) -> list[str]:
        """The shards holding at least one chunk, in chunk order of first appearance."""
        seen: list[str] = []
        for chunk in self.chunks:
            if chunk.shard not in seen:
                seen.append(chunk.shard)
        return seen

    def ranges_of(self, shard: str) -> list[list[dict[str, Any]]]:
        return [[chunk.min, chunk.max] for chunk in self.chunks if chunk.shard == shard]

    def shard_version(self) -> dict[str, Any]:
        """The ``shardVersion`` a routed request carries (``{e, t, v}`` as on 7.0)."""
        major, minor = self.version
        return {"e": self.document["lastmodEpoch"], "t": self.document["timestamp"],
                "v": Timestamp(major, minor)}


class RoutingTable:
    def __init__(self, config: Remote, shards: dict[str, Remote], clock: Clock) -> None:
        self.config = config
        self.shards = shards  # name -> Remote, in shard order
        self.clock = clock
        self.databases: dict[str, dict[str, Any]] = {}
        self.collections: dict[str, ShardedCollection] = {}
        self._database_lock = asyncio.Lock()

    # -- the config server ---------------------------------------------------------------------
    async def _command(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.config.command("config", body)
        error = error_of(reply)
        if error is not None:
            raise CommandError(error[0], f"config server: {error[1]}")
        if reply.get("writeErrors"):
            first = reply["writeErrors"][0]
            raise CommandError(int(first["code"]), f"config server: {first['errmsg']}")
        return reply

    async def find(self, collection: str, query: dict[str, Any] | None = None
                   ) -> list[dict[str, Any]]:
        reply = await self._command({"find": collection, "filter": query or {},
                                     "batchSize": 100000})
        cursor = reply["cursor"]
        documents = [_plain(document) for document in cursor["firstBatch"]]
        cursor_id = cursor["id"]
        while cursor_id:
            reply = await self._command({"getMore": cursor_id, "collection": collection})
            cursor = reply["cursor"]
            documents += [_plain(document) for document in cursor["nextBatch"]]
            cursor_id = cursor["id"]
        return documents

    async def put(self, collection: str, document: dict[str, Any]) -> None:
        await self._command({"update": collection, "updates": [
            {"q": {"_id": document["_id"]}, "u": document, "upsert": True}]})

    async def remove(self, collection: str, query: dict[str, Any]) -> None:
        await self._command({"delete": collection, "deletes": [{"q": query, "limit": 0}]})

    # -- loading -----------------------------------------------------------------------------
    async def initialize(self, shard_hosts: dict[str, str], router_address: str = "",
                         version: str = "") -> None:
        """First start: register the shards and the default settings; later starts: keep
        what the config server holds. The router announces itself in config.mongos."""
        existing = {document["_id"] for document in await self.find("shards")}
        topology_time = self.clock.now
        for name, host in shard_hosts.items():
            if name not in existing:
                await self.put("shards", {"_id": name, "host": host, "state": 1,
                                          "topologyTime": topology_time})
        if not await self.find("version"):
            await self.put("version", {"_id": 1, "clusterId": ObjectId()})
        settings = {document["_id"] for document in await self.find("settings")}
        if "balancer" not in settings:
            await self.put("settings", {"_id": "balancer", "mode": "full", "stopped": False})
        if "chunksize" not in settings:
            await self.put("settings", {"_id": "chunksize", "value": DEFAULT_CHUNK_SIZE_MB})
        if router_address:
            await self.put("mongos", {"_id": router_address, "ping": wall_clock(), "up": 0,
                                      "waiting": True, "mongoVersion": version,
                                      "advisoryHostFQDNs": []})
        await self.load()

    async def load(self) -> None:
        self.databases = {document["_id"]: document for document in await self.find("databases")}
        collections: dict[str, ShardedCollection] = {}
        by_uuid: dict[bytes, ShardedCollection] = {}
        for document in await self.find("collections"):
            sharded = ShardedCollection(document)
            collections[sharded.ns] = sharded
            by_uuid[bytes(sharded.uuid)] = sharded
        for document in await self.find("chunks"):
            owner = by_uuid.get(bytes(document["uuid"]))
            if owner is not None:
                owner.chunks.append(self._chunk(owner.key, document))
        for sharded in collections.values():
            sharded.sort()
        self.collections = collections

    @staticmethod
    def _chunk(key: dict[str, Any], document: dict[str, Any]) -> Chunk:
        return Chunk(document, bound_point(document["min"], key), bound_point(document["max"], key))

    # -- databases ---------------------------------------------------------------------------
    def primary_of(self, db: str) -> str | None:
        entry = self.databases.get(db)
        return str(entry["primary"]) if entry is not None else None

    async def ensure_database(self, db: str, primary: str | None = None) -> str:
        """The database's primary shard, choosing one (the shard that is primary for the
        fewest databases, as MongoDB picks the least loaded) when it is new."""
        async with self._database_lock:
            current = self.primary_of(db)
            if current is not None:
                return current
            if primary is None:
                load = {name: 0 for name in self.shards}
                for entry in self.databases.values():
                    if entry["primary"] in load:
                        load[entry["primary"]] += 1
                primary = min(load, key=lambda name: (load[name], list(self.shards).index(name)))
            elif primary not in self.shards:
                raise CommandError(70, f"Shard {primary} not found", code_name_override="ShardNotFound")
            document = {"_id": db, "primary": primary, "version": {
                "uuid": Binary(uuid.uuid4().bytes, 4), "timestamp": self.clock.now,
                "lastMod": 1}}
            await self.put("databases", document)
            self.databases[db] = document
            return primary

    async def forget_database(self, db: str) -> None:
        prefix = f"{db}."
        for ns in [ns for ns in self.collections if ns.startswith(prefix)]:
            await self.forget_collection(ns)
        if db in self.databases:
            await self.remove("databases", {"_id": db})
            del self.databases[db]

    # -- collections ---------------------------------------------------------------------------
    def sharded(self, ns: str) -> ShardedCollection | None:
        return self.collections.get(ns)

    async def add_collection(self, ns: str, key: dict[str, Any], collection_uuid: Binary,
                             unique: bool, chunks: list[tuple[dict[str, Any], dict[str, Any], str]]
                             ) -> ShardedCollection:
        now = self.clock.now
        document = {"_id": ns, "lastmodEpoch": ObjectId(), "lastmod": wall_clock(),
                    "timestamp": now, "uuid": collection_uuid, "key": dict(key),
                    "unique": unique, "noBalance": False}
        sharded = ShardedCollection(document)
        for index, (lower, upper, shard) in enumerate(chunks):
            chunk_document = {"_id": ObjectId(), "uuid": collection_uuid, "min": lower,
                              "max": upper, "shard": shard, "lastmod": Timestamp(1, index),
                              "onCurrentShardSince": now,
                              "history": [{"validAfter": now, "shard": shard}]}
            sharded.chunks.append(self._chunk(key, chunk_document))
        sharded.sort()
        await self.put("collections", document)
        if sharded.chunks:
            await self._command({"insert": "chunks",
                                 "documents": [chunk.document for chunk in sharded.chunks]})
        self.collections[ns] = sharded
        return sharded

    async def forget_collection(self, ns: str) -> None:
        sharded = self.collections.pop(ns, None)
        if sharded is None:
            return
        await self.remove("chunks", {"uuid": sharded.uuid})
        await self.remove("collections", {"_id": ns})

    async def rename_collection(self, source: str, target: str) -> None:
        sharded = self.collections.pop(source, None)
        if sharded is None:
            return
        await self.remove("collections", {"_id": source})
        sharded.document["_id"] = target
        await self.put("collections", sharded.document)
        self.collections[target] = sharded

    async def set_no_balance(self, ns: str, value: bool) -> None:
        sharded = self.collections[ns]
        sharded.document["noBalance"] = value
        await self.put("collections", sharded.document)

    # -- chunks ----------------------------------------------------------------------------------
    async def split(self, sharded: ShardedCollection, chunk: Chunk, middle: dict[str, Any]
                    ) -> None:
        major, minor = sharded.version
        upper_document = dict(chunk.document)
        upper_document.update({"_id": ObjectId(), "min": middle,
                               "lastmod": Timestamp(major, minor + 2)})
        chunk.document["max"] = middle
        chunk.document["lastmod"] = Timestamp(major, minor + 1)
        chunk.upper = bound_point(middle, sharded.key)
        sharded.chunks.append(self._chunk(sharded.key, upper_document))
        sharded.sort()
        await self.put("chunks", chunk.document)
        await self.put("chunks", upper_document)

    async def move(self, sharded: ShardedCollection, chunk: Chunk, to_shard: str) -> str:
        """Commit a migration in the metadata: the chunk's new owner and version."""
        donor = chunk.shard
        major, _ = sharded.version
        now = self.clock.now
        chunk.document["shard"] = to_shard
        chunk.document["lastmod"] = Timestamp(major + 1, 0)
        chunk.document["onCurrentShardSince"] = now
        chunk.document["history"] = [{"validAfter": now, "shard": to_shard},
                                     *chunk.document.get("history", [])][:10]
        await self.put("chunks", chunk.document)
        await self._command({"insert": "changelog", "documents": [{
            "_id": f"moveChunk.commit-{ObjectId()}", "server": "router", "shard": donor,
            "clientAddr": "", "time": wall_clock(), "what": "moveChunk.commit", "ns": sharded.ns,
            "details": {"min": chunk.min, "max": chunk.max, "from": donor, "to": to_shard,
                        "counts": {}}}]})
        return donor

    # -- settings ------------------------------------------------------------------------------
    async def setting(self, name: str) -> dict[str, Any]:
        found = await self.find("settings", {"_id": name})
        return found[0] if found else {}

    async def chunk_size_bytes(self) -> int:
        value = (await self.setting("chunksize")).get("value", DEFAULT_CHUNK_SIZE_MB)
        return int(float(value) * 1024 * 1024)


def hashed_initial_chunks(key: dict[str, Any], shards: list[str], count: int
                          ) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """``count`` chunks splitting the hash space evenly, dealt to the shards in turn (MongoDB
    pre-splits an empty collection with a hashed key this way)."""
    field = next(iter(key))
    rest = {name: MinKey() for name in list(key)[1:]}
    span = 2**64 // count
    bounds: list[dict[str, Any]] = [global_min(key)]
    for index in range(1, count):
        bounds.append({field: Int64(-2**63 + span * index), **rest})
    bounds.append(global_max(key))
    return [(bounds[i], bounds[i + 1], shards[i % len(shards)]) for i in range(count)]


def _plain(document: Any) -> Any:
    """A config document as plain dicts and lists (the client hands back raw BSON)."""
    from mongoemu.bsonvalues import decode
    return decode(document.raw)
