"""What the router does with each command: reads, DDL, administration, sharding, transactions.

Unsharded collections live on their database's primary shard and every command on them goes
there whole (aggregations with $lookup/$out included). Commands on a sharded collection go to
the shards owning chunks that the query can touch, carry ``shardVersion`` (so shards filter
orphans), and have their results merged here. The ``config`` and ``admin`` databases' own
collections are read from the config server. Writes are in :mod:`mongoemu.cluster.writes`.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from bson.int64 import Int64
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import decode, sort_key
from mongoemu.cluster.client import Remote, error_of
from mongoemu.cluster.merge import MergedCursor, RemoteCursor, first_batch
from mongoemu.cluster.router import raise_for, result_of, routed
from mongoemu.cluster.routing import ShardedCollection, hashed_initial_chunks
from mongoemu.cluster.shardkey import (bound_point, equality_values, global_max, global_min,
                                       is_hashed, point_from_values)
from mongoemu.commands.registry import REGISTRY
from mongoemu.context import Context
from mongoemu.errors import CommandError, checked_max_time_ms

if TYPE_CHECKING:
    from mongoemu.cluster.router import Router

# Arguments every command may carry; the router sets them itself on what it sends to shards.
GENERIC_FIELDS = frozenset({
    "$db", "lsid", "$clusterTime", "txnNumber", "autocommit", "startTransaction", "readConcern",
    "writeConcern", "$readPreference", "apiVersion", "apiStrict", "apiDeprecationErrors",
    "comment", "$audit", "$client", "stmtIds", "$emulatorWriteConcernError", "shardVersion",
    "fromMongos"})
# Stages a shard can run on its own part of a sharded collection before the merge.
STREAMING_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset",
                              "$replaceRoot", "$replaceWith", "$redact", "$unwind"})
# Stages reaching other collections: the router only runs them on unsharded collections
# (where the primary shard runs the whole pipeline).
FOREIGN_STAGES = frozenset({"$lookup", "$unionWith", "$graphLookup", "$out", "$merge",
                            "$facet"})
MIN_HASH_CHUNKS_PER_SHARD = 2


def router_of(ctx: Context) -> "Router":
    return ctx.server  # type: ignore[return-value]


def command_body(ctx: Context) -> dict[str, Any]:
    """The client's command without the generic arguments."""
    return {key: value for key, value in ctx.body.items() if key not in GENERIC_FIELDS}


def _config_db(db: str) -> bool:
    return db in ("config", "admin")


def targets(sharded: ShardedCollection, query: Any) -> list[str]:
    """The shards a query can touch: one when it fixes the shard key, else every owner."""
    values = equality_values(query, sharded.key)
    if values is not None:
        return [sharded.chunk_for(point_from_values(values)).shard]
    return sharded.shards()


def versioned(body: dict[str, Any], sharded: ShardedCollection) -> dict[str, Any]:
    body["shardVersion"] = sharded.shard_version()
    return body


async def wrap_cursor(ctx: Context, shard: str, db: str, reply: dict[str, Any],
                      remote: Remote | None = None, ns: str | None = None) -> dict[str, Any]:
    """A single shard's cursor reply, its cursor now owned by the router."""
    raise_for(reply)
    router = router_of(ctx)
    source = RemoteCursor(shard, db, reply, remote)
    first = list(source.buffer)
    source.buffer.clear()
    result = result_of(reply)
    cursor_ns = ns or str(reply["cursor"]["ns"])
    extra = {k: v for k, v in reply["cursor"].items()
             if k not in ("firstBatch", "id", "ns")}
    if source.id == 0:
        result["cursor"] = {"firstBatch": first, "id": Int64(0), "ns": cursor_ns, **extra}
        return result
    cursor = MergedCursor(router, cursor_ns, [source],
                          session_id=ctx.session.key if ctx.session is not None else None)
    router.cursors.register(cursor)
    result["cursor"] = {"firstBatch": first, "id": Int64(cursor.id), "ns": cursor_ns, **extra}
    return result


async def on_primary(ctx: Context, body: dict[str, Any], *, create: bool = False,
                     write: bool = False) -> dict[str, Any]:
    """Run a command on the database's primary shard, its reply as the router's."""
    router = router_of(ctx)
    primary = (await router.table.ensure_database(ctx.db) if create
               else router.table.primary_of(ctx.db) or next(iter(router.remotes)))
    reply = await router.send(ctx, primary, ctx.db, body, write=write)
    if isinstance(reply.get("cursor"), dict) or hasattr(reply.get("cursor"), "raw"):
        return await wrap_cursor(ctx, primary, ctx.db, reply)
    raise_for(reply)
    return result_of(reply)


async def on_config_server(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    router = router_of(ctx)
    reply = await router.send(ctx, "config", ctx.db, body, remote=router.config_server)
    if "cursor" in reply and error_of(reply) is None:
        return await wrap_cursor(ctx, "config", ctx.db, reply, remote=router.config_server)
    raise_for(reply)
    return result_of(reply)


def _sharded_target(ctx: Context) -> ShardedCollection | None:
    target = ctx.body.get(ctx.name)
    if not isinstance(target, str) or not target:
        return None
    return router_of(ctx).table.sharded(f"{ctx.db}.{target}")


async def forward_to_primary(ctx: Context) -> dict[str, Any]:
    """Any other mongod command: on the database's primary shard (admin: on the first shard)."""
    if _sharded_target(ctx) is not None:
        raise CommandError(20, f"{ctx.name} on the sharded collection {ctx.db}."
                               f"{ctx.body[ctx.name]} is not supported by the emulated router")
    body = command_body(ctx)
    if "writeConcern" in ctx.body:
        body["writeConcern"] = ctx.body["writeConcern"]
    return await on_primary(ctx, body)


# -- reads -------------------------------------------------------------------------------------


@routed("find", in_transaction=True)
async def find(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    name = ctx.collection_name()
    ns = f"{ctx.db}.{name}"
    body = command_body(ctx)
    if _config_db(ctx.db):
        return await on_config_server(ctx, body)
    sharded = router.table.sharded(ns)
    if sharded is None:
        return await on_primary(ctx, body)
    async with router.gate(ns).shared():
        shards = targets(sharded, body.get("filter") or {})
        versioned(body, sharded)
        if len(shards) == 1:
            reply = await router.send(ctx, shards[0], ctx.db, body)
            return await wrap_cursor(ctx, shards[0], ctx.db, reply)
        skip = int(body.pop("skip", 0) or 0)
        limit = body.get("limit")
        limit = abs(int(limit)) if limit else None
        if limit is not None:
            body["limit"] = limit + skip
        batch_size = body.get("batchSize")
        single_batch = bool(body.pop("singleBatch", False))
        sort = body.get("sort") or None
        transform = None
        if sort and body.get("projection"):
            # Shards must return the sort fields: the projection is applied after the merge.
            from mongoemu.query.projection import Projection
            projection = Projection(body.pop("projection"))
            transform = lambda document: projection.apply(_plain(document))  # noqa: E731
        if batch_size is not None:
            body["batchSize"] = int(batch_size) + skip
        replies = await router.broadcast(ctx, shards, ctx.db, body)
    for reply in replies.values():
        raise_for(reply)
    sources = [RemoteCursor(shard, ctx.db, reply) for shard, reply in replies.items()]
    cursor = MergedCursor(router, ns, sources, sort_key=_sort_key(sort, body.get("collation")),
                          skip=skip, limit=limit, transform=transform,
                          session_id=ctx.session.key if ctx.session is not None else None,
                          fetch_size=int(batch_size) if batch_size else None)
    return await first_batch(ctx, cursor, int(batch_size) if batch_size is not None else None,
                             single_batch)


def _sort_key(sort: Any, collation: Any) -> Any:
    if not sort:
        return None
    from mongoemu.query.collation import Collation
    from mongoemu.query.sorting import make_sort_key
    return make_sort_key(sort, Collation.from_document(collation) if collation else None)


def _plain(document: Any) -> dict[str, Any]:
    return decode(document.raw) if hasattr(document, "raw") else document


@routed("aggregate", in_transaction=True)
async def aggregate(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    pipeline = ctx.body.get("pipeline")
    if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    if pipeline and "$changeStream" in pipeline[0]:
        from mongoemu.cluster.changestream import open_router_stream
        return await open_router_stream(ctx)
    target = ctx.body.get("aggregate")
    body = command_body(ctx)
    if target == 1 and not isinstance(target, bool):
        if ctx.db == "admin":  # $currentOp, $listLocalSessions, $documents: the router's own
            return await _local(ctx, "aggregate")
        return await on_primary(ctx, body)
    name = ctx.collection_name()
    ns = f"{ctx.db}.{name}"
    if _config_db(ctx.db):
        return await on_config_server(ctx, body)
    sharded = router.table.sharded(ns)
    if sharded is None or body.get("explain"):
        return await on_primary(ctx, body, create=_writes(pipeline), write=_writes(pipeline))
    return await _sharded_aggregate(ctx, sharded, body, pipeline)


def _writes(pipeline: list[dict[str, Any]]) -> bool:
    return any(next(iter(stage), None) in ("$out", "$merge") for stage in pipeline)


async def _local(ctx: Context, name: str) -> dict[str, Any]:
    result = REGISTRY[name].handler(ctx)
    if asyncio.iscoroutine(result):
        result = await result
    return result  # type: ignore[return-value]


def split_pipeline(pipeline: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """(what each shard runs, what the router runs on the union of their results)."""
    shard_part: list[dict[str, Any]] = []
    index = 0
    while index < len(pipeline) and next(iter(pipeline[index])) in STREAMING_STAGES:
        shard_part.append(pipeline[index])
        index += 1
    rest = pipeline[index:]
    if rest:
        head = next(iter(rest[0]))
        if head == "$sample":
            shard_part.append(rest[0])  # each shard samples; the router samples the union
        elif head == "$sort" and len(rest) > 1 and "$limit" in rest[1]:
            shard_part += rest[:2]  # each shard's top n holds the overall top n
        elif head == "$limit":
            shard_part.append(rest[0])
    return shard_part, rest


async def _sharded_aggregate(ctx: Context, sharded: ShardedCollection, body: dict[str, Any],
                             pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    router = router_of(ctx)
    ns = sharded.ns
    first = next(iter(pipeline[0]), None) if pipeline else None
    per_shard_stage = first in ("$collStats", "$indexStats")
    shard_part, rest = ([pipeline[0]], pipeline[1:]) if per_shard_stage else split_pipeline(
        pipeline)
    foreign = sorted({next(iter(stage)) for stage in rest} & FOREIGN_STAGES)
    if foreign:
        raise CommandError(20, f"{', '.join(foreign)} on the sharded collection {ns} is not "
                               f"supported by the emulated router (it runs them only on "
                               f"unsharded collections)")
    cursor_options = body.get("cursor") or {}
    batch_size = cursor_options.get("batchSize") if isinstance(cursor_options, dict) else None
    shard_body = versioned(dict(body, pipeline=shard_part,
                                cursor={} if rest else dict(cursor_options)), sharded)
    async with router.gate(ns).shared():
        shards = sharded.shards() if per_shard_stage else targets(
            sharded, shard_part[0].get("$match") if shard_part and "$match" in shard_part[0]
            else {})
        replies = await router.broadcast(ctx, shards, ctx.db, shard_body)
    for reply in replies.values():
        raise_for(reply)
    sources = [RemoteCursor(shard, ctx.db, reply) for shard, reply in replies.items()]
    if not rest and not per_shard_stage:
        cursor = MergedCursor(router, ns, sources,
                              session_id=ctx.session.key if ctx.session is not None else None,
                              fetch_size=int(batch_size) if batch_size else None)
        return await first_batch(ctx, cursor, int(batch_size) if batch_size is not None
                                 else None)
    documents: list[dict[str, Any]] = []
    for source in sources:
        while source.live:
            while source.buffer:
                document = _plain(source.buffer.popleft())
                if per_shard_stage:
                    document = {"ns": document.pop("ns", ns), "shard": source.shard, **document}
                documents.append(document)
            if source.id:
                await source.fetch(router, ctx, None)
    from mongoemu.commands.crud import ServerPipelineContext, cursor_reply
    from mongoemu.query.aggregate import run_pipeline, validate_pipeline
    validate_pipeline(rest)
    results = run_pipeline(iter(documents), rest, ServerPipelineContext(ctx, None))
    return cursor_reply(ctx, ns, results, int(batch_size) if batch_size is not None else None)


@routed("count")
async def count(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    name = ctx.collection_name()
    ns = f"{ctx.db}.{name}"
    body = command_body(ctx)
    if _config_db(ctx.db):
        return await on_config_server(ctx, body)
    sharded = router.table.sharded(ns)
    if sharded is None:
        return await on_primary(ctx, body)
    skip = int(body.pop("skip", 0) or 0)
    limit = abs(int(body.get("limit") or 0))
    if limit:
        body["limit"] = limit + skip
    async with router.gate(ns).shared():
        replies = await router.broadcast(ctx, targets(sharded, body.get("query") or {}),
                                         ctx.db, versioned(body, sharded))
    total = 0
    for reply in replies.values():
        raise_for(reply)
        total += int(reply.get("n", 0))
    total = max(total - skip, 0)
    return {"n": min(total, limit) if limit else total}


@routed("distinct", in_transaction=True)
async def distinct(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    name = ctx.collection_name()
    body = command_body(ctx)
    if _config_db(ctx.db):
        return await on_config_server(ctx, body)
    sharded = router.table.sharded(f"{ctx.db}.{name}")
    if sharded is None:
        return await on_primary(ctx, body)
    async with router.gate(sharded.ns).shared():
        replies = await router.broadcast(ctx, targets(sharded, body.get("query") or {}),
                                         ctx.db, versioned(body, sharded))
    collation = body.get("collation")
    from mongoemu.query.collation import Collation, sort_key_collated
    collator = Collation.from_document(collation) if collation else None
    seen: dict[Any, Any] = {}
    for reply in replies.values():
        raise_for(reply)
        for value in reply.get("values", []):
            value = _plain(value) if hasattr(value, "raw") else value
            marker = sort_key_collated(value, collator) if collator else sort_key(value)
            seen.setdefault(marker, value)
    return {"values": [seen[marker] for marker in sorted(seen)]}


# -- DDL ---------------------------------------------------------------------------------------


async def _on_all_shards(ctx: Context, body: dict[str, Any], primary: str,
                         ignore: tuple[int, ...] = (26, 27)) -> dict[str, Any]:
    """A DDL on a sharded collection: the primary shard's copy is the one change streams
    report; the other shards apply it fromMigrate. The primary's reply is the router's."""
    router = router_of(ctx)
    reply = await router.send_checked(ctx, primary, ctx.db, dict(body), write=True)
    others = [shard for shard in router.remotes if shard != primary]
    replies = await router.broadcast(ctx, others, ctx.db, dict(body, fromMigrate=True),
                                     write=True)
    for other in replies.values():
        error = error_of(other)
        if error is not None and error[0] not in ignore:
            raise_for(other)
    return result_of(reply)


@routed("create", in_transaction=True)
async def create(ctx: Context) -> dict[str, Any]:
    if _config_db(ctx.db):
        return await on_config_server(ctx, command_body(ctx))
    return await on_primary(ctx, command_body(ctx), create=True, write=True)


@routed("drop")
async def drop(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    name = ctx.collection_name()
    ns = f"{ctx.db}.{name}"
    sharded = router.table.sharded(ns)
    if sharded is None:
        return await on_primary(ctx, command_body(ctx), write=True)
    async with router.balancer.migration_lock:
        primary = router.table.primary_of(ctx.db) or next(iter(router.remotes))
        result = await _on_all_shards(ctx, command_body(ctx), primary)
        await router.table.forget_collection(ns)
        await router.push_metadata(None, ns)
    return result


@routed("dropDatabase")
async def drop_database(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    primary = router.table.primary_of(ctx.db)
    if primary is None:
        return await on_primary(ctx, command_body(ctx), write=True)
    async with router.balancer.migration_lock:
        result = await _on_all_shards(ctx, command_body(ctx), primary)
        await router.table.forget_database(ctx.db)
    return result


@routed("renameCollection", admin_only=True)
async def rename_collection(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    source, target = ctx.body.get("renameCollection"), ctx.body.get("to")
    if not isinstance(source, str) or not isinstance(target, str) or "." not in source \
            or "." not in target:
        raise CommandError(73, "Invalid namespace specified")
    source_db, target_db = source.split(".", 1)[0], target.split(".", 1)[0]
    primary = router.table.primary_of(source_db)
    if primary is None:
        raise CommandError(26, "source namespace does not exist")
    router.check_writable(ctx, source_db)
    router.check_writable(ctx, target_db)
    if source_db != target_db and router.table.primary_of(target_db) not in (None, primary):
        raise CommandError(20, "Source and destination collections must be on the same "
                               "database.")
    sharded = router.table.sharded(source)
    if sharded is not None and source_db != target_db:
        # MongoDB's sharded rename coordinator renames within one database only.
        raise CommandError(125, f"Source and destination collections must be on the same "
                                f"database because {source} is sharded.")
    body = command_body(ctx)
    if sharded is None:
        await router.table.ensure_database(target_db, primary)
        if router.table.sharded(target) is None:
            reply = await router.send_checked(ctx, primary, "admin", body, write=True)
            return result_of(reply)
        if not ctx.body.get("dropTarget"):
            raise CommandError(48, "target namespace exists")
        # From 5.0 an unsharded collection may replace a sharded one (dropTarget): the primary
        # shard's rename drops its part of the target, the other shards drop theirs unreported.
        async with router.balancer.migration_lock:
            others = [shard for shard in router.remotes if shard != primary]
            replies = await router.broadcast(ctx, others, target_db, {
                "drop": target.split(".", 1)[1], "fromMigrate": True}, write=True)
            for other in replies.values():
                error = error_of(other)
                if error is not None and error[0] != 26:
                    raise_for(other)
            reply = await router.send_checked(ctx, primary, "admin", body, write=True)
            await router.table.forget_collection(target)
            await router.push_metadata(None, target)
        return result_of(reply)
    async with router.balancer.migration_lock:
        reply = await router.send_checked(ctx, primary, "admin", dict(body), write=True)
        others = [shard for shard in router.remotes if shard != primary]
        await router.broadcast(ctx, others, "admin", dict(body, fromMigrate=True), write=True)
        await router.table.rename_collection(source, target)
        await router.push_metadata(None, source)
        await router.push_metadata(router.table.sharded(target), target)
    return result_of(reply)


def _ddl_on_collection(name: str) -> None:
    async def handler(ctx: Context) -> dict[str, Any]:
        router = router_of(ctx)
        body = command_body(ctx)
        if _config_db(ctx.db):
            return await on_config_server(ctx, body)
        sharded = _sharded_target(ctx)
        if sharded is None:
            return await on_primary(ctx, body, create=name == "createIndexes", write=True)
        primary = router.table.primary_of(ctx.db) or next(iter(router.remotes))
        return await _on_all_shards(ctx, body, primary, ignore=(27, 85, 86))

    routed(name, *(("deleteIndexes",) if name == "dropIndexes" else ()),
           in_transaction=name == "createIndexes")(handler)


for _name in ("createIndexes", "dropIndexes", "collMod"):
    _ddl_on_collection(_name)


@routed("listCollections")
async def list_collections(ctx: Context) -> dict[str, Any]:
    if _config_db(ctx.db):
        return await on_config_server(ctx, command_body(ctx))
    return await on_primary(ctx, command_body(ctx))


@routed("listIndexes")
async def list_indexes(ctx: Context) -> dict[str, Any]:
    if _config_db(ctx.db):
        return await on_config_server(ctx, command_body(ctx))
    return await on_primary(ctx, command_body(ctx))


@routed("listDatabases", admin_only=True)
async def list_databases(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    body = {"listDatabases": 1}
    replies = await router.broadcast(ctx, list(router.remotes), "admin", dict(body))
    config_reply = await router.send(ctx, "config", "admin", dict(body),
                                     remote=router.config_server)
    sizes: dict[str, dict[str, int]] = {}
    for shard, reply in replies.items():
        raise_for(reply)
        for entry in reply["databases"]:
            name = entry["name"]
            if name in ("admin", "config", "local") or entry.get("empty"):
                continue
            sizes.setdefault(name, {})[shard] = int(entry["sizeOnDisk"])
    for entry in config_reply.get("databases", []):
        if entry["name"] in ("admin", "config"):
            sizes[entry["name"]] = {"config": int(entry["sizeOnDisk"])}
    entries: list[dict[str, Any]] = []
    for name in sorted(sizes):
        total = sum(sizes[name].values())
        entries.append({"name": name, "sizeOnDisk": Int64(total), "empty": total == 0,
                        "shards": {shard: Int64(size) for shard, size in sizes[name].items()}})
    filter_doc = ctx.body.get("filter")
    if filter_doc:
        from mongoemu.query.matcher import Matcher
        matcher = Matcher(filter_doc)
        entries = [entry for entry in entries if matcher.matches(entry)]
    if ctx.body.get("nameOnly"):
        return {"databases": [{"name": entry["name"]} for entry in entries]}
    total = sum(int(entry["sizeOnDisk"]) for entry in entries)
    return {"databases": entries, "totalSize": Int64(total),
            "totalSizeMb": Int64(total // (1024 * 1024))}


@routed("dbStats")
async def db_stats(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    replies = await router.broadcast(ctx, list(router.remotes), ctx.db, command_body(ctx))
    primary = router.table.primary_of(ctx.db) or next(iter(router.remotes))
    result = result_of(replies[primary])
    raise_for(replies[primary])
    for field_name in ("objects", "dataSize", "storageSize", "indexSize", "totalSize"):
        result[field_name] = sum(reply.get(field_name, 0) for reply in replies.values())
    result["raw"] = {router.shard_hosts[shard]: result_of(reply)
                     for shard, reply in replies.items()}
    return result


@routed("collStats")
async def coll_stats(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    sharded = _sharded_target(ctx)
    body = command_body(ctx)
    if sharded is None:
        return {**await on_primary(ctx, body), "sharded": False}
    replies = await router.broadcast(ctx, list(router.remotes), ctx.db, body)
    for reply in replies.values():
        raise_for(reply)
    shards = {shard: result_of(reply) for shard, reply in replies.items()}
    primary = router.table.primary_of(ctx.db) or next(iter(router.remotes))
    result = dict(shards[primary])
    for field_name in ("count", "size", "storageSize", "totalIndexSize", "totalSize"):
        result[field_name] = sum(int(s.get(field_name, 0)) for s in shards.values())
    result["avgObjSize"] = result["size"] // result["count"] if result["count"] else 0
    result.update(sharded=True, shards=shards, nchunks=len(sharded.chunks))
    return result


# -- administration ----------------------------------------------------------------------------


async def _everywhere(ctx: Context, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    router = router_of(ctx)
    replies = await router.broadcast(ctx, list(router.remotes), "admin", body)
    for reply in replies.values():
        raise_for(reply)
    return replies


@routed("setUserWriteBlockMode", admin_only=True)
async def set_user_write_block_mode(ctx: Context) -> dict[str, Any]:
    body = command_body(ctx)
    if not isinstance(body.get("global"), bool):
        REGISTRY["setUserWriteBlockMode"].handler(ctx)  # the mongod's own argument errors
    await _everywhere(ctx, body)
    router_of(ctx).write_blocked = body["global"]
    return {}


@routed("appendOplogNote", admin_only=True)
async def append_oplog_note(ctx: Context) -> dict[str, Any]:
    """On every shard; the operation time is the newest of the notes."""
    await _everywhere(ctx, command_body(ctx))
    return {}


@routed("serverStatus")
async def server_status(ctx: Context) -> dict[str, Any]:
    result = await _local(ctx, "serverStatus")
    replies = await _everywhere(ctx, {"serverStatus": 1})
    if "writeBlocking" in result:
        result["writeBlocking"] = {"userWritesBlocked": any(
            reply.get("writeBlocking", {}).get("userWritesBlocked") for reply in replies.values())}
    return result


@routed("setFeatureCompatibilityVersion", admin_only=True)
async def set_fcv(ctx: Context) -> dict[str, Any]:
    await _local(ctx, "setFeatureCompatibilityVersion")
    await _everywhere(ctx, command_body(ctx))
    return {}


def _broadcast_admin(name: str) -> None:
    """Emulator test hooks that act on every shard's oplog."""
    async def handler(ctx: Context) -> dict[str, Any]:
        replies = await _everywhere(ctx, command_body(ctx))
        return {"shards": {shard: result_of(reply) for shard, reply in replies.items()}}

    routed(name, admin_only=True)(handler)


for _name in ("emulatorTruncateOplog", "emulatorSetOplogSize", "emulatorSetDiskSize"):
    _broadcast_admin(_name)


def _sessions_command(name: str) -> None:
    async def handler(ctx: Context) -> dict[str, Any]:
        result = await _local(ctx, name)
        router = router_of(ctx)
        await router.broadcast(ctx, list(router.remotes), "admin", command_body(ctx))
        return result

    routed(name, no_auth=name == "endSessions")(handler)


for _name in ("endSessions", "killSessions", "killAllSessions", "killAllSessionsByPattern"):
    _sessions_command(_name)


@routed("isdbgrid")
async def isdbgrid(ctx: Context) -> dict[str, Any]:
    return {"isdbgrid": 1, "hostname": ctx.server.config.address}


@routed("replSetGetStatus", "replSetGetConfig", admin_only=True)
async def not_a_replica_set(ctx: Context) -> dict[str, Any]:
    raise CommandError(59, f"no such command: '{ctx.name}'")


def _refused(name: str, reason: str) -> None:
    async def handler(ctx: Context) -> dict[str, Any]:
        raise CommandError(20, f"{name} is not supported by the emulated cluster: {reason}")

    routed(name, admin_only=True)(handler)


for _name, _reason in (
        ("addShard", "its shards are fixed when it starts (--shards N)"),
        ("removeShard", "its shards are fixed when it starts (--shards N)"),
        ("reshardCollection", "resharding is not emulated"),
        ("refineCollectionShardKey", "refining shard keys is not emulated"),
        ("movePrimary", "primary shards are chosen when a database is created"),
        ("bulkWrite", "use the insert, update and delete commands")):
    _refused(_name, _reason)


# -- transactions -----------------------------------------------------------------------------


@routed("commitTransaction", admin_only=True, in_transaction=True)
async def commit_transaction(ctx: Context) -> dict[str, Any]:
    """Read-only participants commit first, then the (single) shard that wrote: without
    two-phase commit this order is what keeps the commit atomic."""
    router = router_of(ctx)
    transaction = router.transaction_of(ctx)
    if transaction is not None:
        readers = [s for s, wrote in transaction.participants.items() if not wrote]
        order = readers + ([transaction.write_shard] if transaction.write_shard else [])
    else:
        token = ctx.body.get("recoveryToken")
        shard = token.get("recoveryShardId") if isinstance(token, dict) else None
        if shard not in router.remotes:
            raise CommandError(251, "Cannot commit a transaction this router does not know "
                                    "without a recoveryToken", labels=[])
        order = [shard]
    reply: dict[str, Any] = {}
    for shard in order:
        body: dict[str, Any] = {"commitTransaction": 1, "autocommit": False}
        if "writeConcern" in ctx.body:
            body["writeConcern"] = ctx.body["writeConcern"]
        reply = await router.send(ctx, shard, "admin", body, remote=router.remotes[shard])
        raise_for(reply)
    return result_of(reply) if reply else {}


@routed("abortTransaction", admin_only=True, in_transaction=True)
async def abort_transaction(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    transaction = router.transaction_of(ctx)
    if transaction is None or not transaction.participants:
        raise CommandError(251, f"Transaction with {{ txnNumber: {ctx.body.get('txnNumber')} }}"
                                f" has no participants to abort", labels=[])
    replies = []
    for shard in transaction.participants:
        body: dict[str, Any] = {"abortTransaction": 1, "autocommit": False}
        if "writeConcern" in ctx.body:
            body["writeConcern"] = ctx.body["writeConcern"]
        replies.append(await router.send(ctx, shard, "admin", body,
                                         remote=router.remotes[shard]))
    for reply in replies:
        if error_of(reply) is not None and reply.get("code") != 251:
            raise_for(reply)
    for reply in replies:
        if reply.get("writeConcernError") is not None:
            return {"writeConcernError": reply["writeConcernError"]}
    return {}


# -- sharding ----------------------------------------------------------------------------------


@routed("listShards", admin_only=True)
async def list_shards(ctx: Context) -> dict[str, Any]:
    shards = await router_of(ctx).table.find("shards")
    for shard in shards:
        shard["replSetConfigVersion"] = Int64(-1)
    return {"shards": shards}


@routed("getShardMap", admin_only=True)
async def get_shard_map(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    shard_map = dict(router.shard_hosts)
    shard_map["config"] = f"configRepl/{router.config_server.address}"
    hosts = {host.split("/", 1)[1]: name for name, host in shard_map.items()}
    return {"map": shard_map, "hosts": hosts, "connStrings": {v: k for k, v in shard_map.items()}}


@routed("balancerStart", admin_only=True)
async def balancer_start(ctx: Context) -> dict[str, Any]:
    await router_of(ctx).table.put("settings", {"_id": "balancer", "mode": "full",
                                                "stopped": False})
    return {}


# How long balancerStop waits for the balancing round in progress when maxTimeMS is not given.
BALANCER_STOP_DEFAULT_MS = 60_000.0
_BALANCER_STOP_POLL_S = 0.01


@routed("balancerStop", admin_only=True)
async def balancer_stop(ctx: Context) -> dict[str, Any]:
    """Turns the balancer off, then returns once the balancing round in progress (if any) is
    over, as MongoDB does: for at most ``maxTimeMS`` (60 s by default, 0 for no limit), past
    which it fails with MaxTimeMSExpired and the balancer stays off. A migration a client
    asked for (``moveChunk``, ``moveRange``) is not the balancer's: it is not waited for."""
    limit_ms = checked_max_time_ms(ctx.body.get("maxTimeMS"), BALANCER_STOP_DEFAULT_MS)
    router = router_of(ctx)
    await router.table.put("settings", {"_id": "balancer", "mode": "off", "stopped": True})
    loop = asyncio.get_running_loop()
    deadline = None if limit_ms == 0 else loop.time() + limit_ms / 1000
    # A round started before the setting changed may still be moving a chunk; one that starts
    # after it reads the balancer off before its first move (Balancer.round).
    while router.balancer.in_round:
        if deadline is not None and loop.time() >= deadline:
            raise CommandError(50, "operation exceeded time limit")
        await asyncio.sleep(_BALANCER_STOP_POLL_S)
    return {}


@routed("balancerStatus", admin_only=True)
async def balancer_status(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    settings = await router.table.setting("balancer")
    running = settings.get("mode", "full") == "full" and not settings.get("stopped", False)
    return {"mode": "full" if running else "off",
            "inBalancerRound": router.balancer.in_round,
            "numBalancerRounds": Int64(router.balancer.rounds)}


@routed("enableSharding", "enablesharding", admin_only=True)
async def enable_sharding(ctx: Context) -> dict[str, Any]:
    db = ctx.body[ctx.name]
    if not isinstance(db, str) or not db or "." in db:
        raise CommandError(73, f"invalid db name specified: {db}")
    primary = ctx.body.get("primaryShard")
    await router_of(ctx).table.ensure_database(db, primary if isinstance(primary, str) else None)
    return {}


@routed("flushRouterConfig", "flushrouterconfig", admin_only=True)
async def flush_router_config(ctx: Context) -> dict[str, Any]:
    await router_of(ctx).table.load()
    return {"flushed": True}


def _check_key(key: Any) -> dict[str, Any]:
    if not isinstance(key, dict) or not key:
        raise CommandError(40414, "BSON field 'shardCollection.key' is missing but a required "
                                  "field")
    hashed = [field for field, kind in key.items() if kind == "hashed"]
    if any(kind not in (1, 1.0, "hashed") for kind in key.values()) or len(hashed) > 1:
        raise CommandError(2, f"Unsupported shard key pattern {key}. Pattern must either be "
                              f"a single hashed field, or a list of ascending fields")
    return {field: (kind if kind == "hashed" else 1) for field, kind in key.items()}


@routed("shardCollection", "shardcollection", admin_only=True)
async def shard_collection(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    ns = ctx.body[ctx.name]
    if not isinstance(ns, str) or "." not in ns:
        raise CommandError(73, f"Invalid namespace: {ns}")
    key = _check_key(ctx.body.get("key"))
    db, name = ns.split(".", 1)
    async with router.balancer.migration_lock:
        existing = router.table.sharded(ns)
        if existing is not None:
            if existing.key == key:
                return {"collectionsharded": ns}
            raise CommandError(23, f"sharding already enabled for collection {ns} with options "
                                   f"{{ key: {existing.key} }}")
        primary = await router.table.ensure_database(db)
        unique = bool(ctx.body.get("unique", False))
        index: dict[str, Any] = {"v": 2, "key": dict(key),
                                 "name": "_".join(f"{f}_{d}" for f, d in key.items())}
        if unique:
            index["unique"] = True
        description = {"key": key, "unique": unique,
                       "numInitialChunks": int(ctx.body.get("numInitialChunks", 0) or 0),
                       "presplitHashedZones": bool(ctx.body.get("presplitHashedZones", False))}
        indexes = [] if key == {"_id": 1} else [index]
        prepared = await router.send_checked(ctx, primary, "admin", {
            "_emulatorShardCollection": ns, "primary": True, "indexes": indexes, **description},
            write=True)
        listed = await router.send_checked(ctx, primary, db, {"listIndexes": name})
        all_indexes = [dict(_plain(spec)) for spec in listed["cursor"]["firstBatch"]]
        info = await router.send_checked(ctx, primary, db, {"listCollections": 1,
                                                            "filter": {"name": name}})
        options = dict(_plain(info["cursor"]["firstBatch"][0]).get("options", {}))
        others = [shard for shard in router.remotes if shard != primary]
        replies = await router.broadcast(ctx, others, "admin", {
            "_emulatorShardCollection": ns, "primary": False, "uuid": prepared["uuid"],
            "options": options, "indexes": [s for s in all_indexes if s["name"] != "_id_"],
            **description}, write=True)
        for reply in replies.values():
            raise_for(reply)
        chunks = await _initial_chunks(router, ctx, ns, key, primary, prepared)
        sharded = await router.table.add_collection(ns, key, prepared["uuid"], unique, chunks)
        await router.push_metadata(sharded, ns)
    return {"collectionsharded": ns}


async def _initial_chunks(router: "Router", ctx: Context, ns: str, key: dict[str, Any],
                          primary: str, prepared: dict[str, Any]
                          ) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """An empty collection with a hashed key is pre-split over every shard (numInitialChunks,
    default two per shard); otherwise the data stays on the primary shard, in chunks of at most
    the chunk size, for the balancer to spread."""
    shards = list(router.remotes)
    requested = int(ctx.body.get("numInitialChunks", 0) or 0)
    if is_hashed(key) and next(iter(key.values())) == "hashed" and int(prepared["count"]) == 0:
        return hashed_initial_chunks(key, shards,
                                     requested or MIN_HASH_CHUNKS_PER_SHARD * len(shards))
    chunk_size = await router.table.chunk_size_bytes()
    parts = math.ceil(int(prepared["size"]) / chunk_size) if chunk_size else 1
    bounds = [global_min(key)]
    if parts > 1:
        reply = await router.send_checked(ctx, primary, "admin", {
            "_emulatorShardSplitPoints": ns, "key": key, "min": global_min(key),
            "max": global_max(key), "parts": parts})
        bounds += [dict(_plain(point)) for point in reply["splitKeys"]]
    bounds.append(global_max(key))
    return [(bounds[i], bounds[i + 1], primary) for i in range(len(bounds) - 1)]


def _chunk_containing(sharded: ShardedCollection, document: dict[str, Any]) -> Any:
    from mongoemu.cluster.shardkey import point_of
    return sharded.chunk_for(point_of(document, sharded.key))


def _sharded_or_fail(ctx: Context) -> ShardedCollection:
    ns = ctx.body[ctx.name]
    sharded = router_of(ctx).table.sharded(ns) if isinstance(ns, str) else None
    if sharded is None:
        raise CommandError(118, f"{ns} is not sharded", code_name_override="NamespaceNotSharded")
    return sharded


def _chunk_by_bounds(sharded: ShardedCollection, bounds: Any) -> Any:
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise CommandError(9, "bounds must be an array of two documents")
    lower = bound_point(bounds[0], sharded.key)
    for chunk in sharded.chunks:
        if chunk.lower == lower:
            return chunk
    raise CommandError(2, f"no chunk starts at {bounds[0]}")


@routed("split", admin_only=True)
async def split(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    async with router.balancer.migration_lock:
        sharded = _sharded_or_fail(ctx)
        body = ctx.body
        if isinstance(body.get("middle"), dict):
            middle = dict(body["middle"])
            chunk = sharded.chunk_for(bound_point(middle, sharded.key))
        elif isinstance(body.get("find"), dict) or isinstance(body.get("bounds"), list):
            chunk = (_chunk_containing(sharded, body["find"]) if "find" in body
                     else _chunk_by_bounds(sharded, body["bounds"]))
            reply = await router.send_checked(ctx, chunk.shard, "admin", {
                "_emulatorShardSplitPoints": sharded.ns, "min": chunk.min, "max": chunk.max,
                "parts": 2})
            if not reply["splitKeys"]:
                raise CommandError(2, "the chunk holds too few documents to be split")
            middle = dict(_plain(reply["splitKeys"][0]))
        else:
            raise CommandError(9, "split needs middle, find or bounds")
        if bound_point(middle, sharded.key) == chunk.lower:
            raise CommandError(2, f"cannot split on the chunk's lower bound {middle}")
        await router.table.split(sharded, chunk, middle)
        await router.push_metadata(sharded, sharded.ns)
    return {}


@routed("moveChunk", "movechunk", admin_only=True)
async def move_chunk(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    sharded = _sharded_or_fail(ctx)
    body = ctx.body
    to = body.get("to")
    if to not in router.remotes:
        raise CommandError(70, f"Could not find shard {to}", code_name_override="ShardNotFound")
    if isinstance(body.get("find"), dict):
        chunk = _chunk_containing(sharded, body["find"])
    else:
        chunk = _chunk_by_bounds(sharded, body.get("bounds"))
    await router.balancer.move(sharded.ns, chunk.min, to, wait_for_delete=bool(
        body.get("_waitForDelete")))
    return {"millis": 0}


@routed("moveRange", admin_only=True)
async def move_range(ctx: Context) -> dict[str, Any]:
    """Move ``[min, max)`` (max defaults to the end of min's chunk), splitting first when the
    range is only part of a chunk."""
    router = router_of(ctx)
    sharded = _sharded_or_fail(ctx)
    body = ctx.body
    to = body.get("toShard")
    if to not in router.remotes:
        raise CommandError(70, f"Could not find shard {to}", code_name_override="ShardNotFound")
    if not isinstance(body.get("min"), dict):
        raise CommandError(40414, "moveRange needs min")
    lower = dict(body["min"])
    async with router.balancer.migration_lock:
        chunk = sharded.chunk_for(bound_point(lower, sharded.key))
        if bound_point(lower, sharded.key) != chunk.lower:
            await router.table.split(sharded, chunk, lower)
            chunk = sharded.chunk_for(bound_point(lower, sharded.key))
        if isinstance(body.get("max"), dict) and bound_point(body["max"], sharded.key) < \
                chunk.upper:
            await router.table.split(sharded, chunk, dict(body["max"]))
        await router.push_metadata(sharded, sharded.ns)
    await router.balancer.move(sharded.ns, lower, to,
                               wait_for_delete=bool(body.get("_waitForDelete")))
    return {}


@routed("getShardVersion", admin_only=True)
async def get_shard_version(ctx: Context) -> dict[str, Any]:
    sharded = _sharded_or_fail(ctx)
    major, minor = sharded.version
    return {"version": Timestamp(major, minor), "versionEpoch": sharded.document["lastmodEpoch"]}
