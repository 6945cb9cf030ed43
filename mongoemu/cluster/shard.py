"""What a replica set does as a shard (``--shardsvr``): filtering metadata and chunk migrations.

The router pushes, for every sharded collection, the shard key and the ranges this shard owns
(:class:`ShardState`). With it a shard:

* filters orphans (documents of ranges it does not own, e.g. a migrated chunk not yet deleted)
  out of every request the router versions with ``shardVersion``, as MongoDB's shard filter does;
* puts the shard-key fields in change events' ``documentKey``;
* refuses a routed update that changes a document's shard key without naming the whole key in
  its filter (31025) unless the router marked it as its own write without shard key, and one
  that would move a document out of its chunks (WouldChangeOwningShard);
* takes part in chunk migrations through the internal commands below, whose writes are logged
  with ``fromMigrate`` so change streams never report them; the donor deletes a moved range in
  the background only once no cursor opened before the move can still read it, like MongoDB's
  range deleter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from bson.binary import Binary
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey

from mongoemu.bsonvalues import MISSING, decode, sort_key
from mongoemu.cluster.shardkey import (Point, Range, bound_point, equality_values, in_ranges,
                                       overlaps, point_of, same_key)
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.query.paths import split_path
from mongoemu.writer import UpdateRequest, with_id_first

if TYPE_CHECKING:
    from mongoemu.server import Server
    from mongoemu.storage.collection import Collection

log = logging.getLogger("mongoemu.shard")

# A range deletion waits at most this long for cursors opened before the move (MongoDB's idle
# cursor timeout; afterwards such cursors are gone anyway).
RANGE_DELETION_WAIT_S = 600.0
WOULD_CHANGE_OWNING_SHARD = 283
SHARD_KEY_CHANGE = ("Must run update to shard key field in a multi-statement transaction or "
                    "with retryWrites: true.")


@dataclass(frozen=True)
class Ownership:
    """One sharded collection as this shard sees it: the key and the ranges it owns."""

    pattern: dict[str, Any]
    ranges: tuple[Range, ...]
    version: tuple[int, int]

    def owns(self, document: dict[str, Any]) -> bool:
        return in_ranges(point_of(document, self.pattern), self.ranges)


@dataclass
class RangeDeletion:
    ns: str
    bounds: Range
    waits_for: set[int]  # ids of cursors on the namespace when the range left this shard
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ShardState:
    def __init__(self, server: "Server") -> None:
        self.server = server
        self.collections: dict[str, Ownership] = {}
        self.deletions: list[RangeDeletion] = []

    # -- what the writer and the change streams ask ----------------------------------------------
    def shard_key(self, ns: str) -> dict[str, Any] | None:
        ownership = self.collections.get(ns)
        return ownership.pattern if ownership is not None else None

    def forget(self, ns: str) -> None:
        self.collections.pop(ns, None)

    def ownership_filter(self, ns: str) -> Callable[[dict[str, Any]], bool] | None:
        """The ownership at this instant: a cursor keeps the one it was opened with."""
        ownership = self.collections.get(ns)
        return ownership.owns if ownership is not None else None

    def check_update(self, ctx: Context, collection: "Collection", old_document: dict[str, Any],
                     new_document: dict[str, Any], request: UpdateRequest | None) -> None:
        """A routed update that changes a document's shard key (update_stage.cpp,
        checkUpdateChangesExistingShardKey): the new key may hold no array; the filter of the
        user's update must fix the whole key by equality (31025), unless the router sent it as
        its write without shard key (``$_allowShardKeyUpdatesWithoutFullShardKeyInQuery``,
        false outside retryable writes and transactions: IllegalOperation); and the document
        must stay in this shard's chunks (WouldChangeOwningShard, which the router resolves).
        Writes not routed (no ``shardVersion``) and a migration's are not checked."""
        if "shardVersion" not in ctx.body or ctx.from_migrate:
            return
        ownership = self.collections.get(collection.ns)
        if ownership is None or same_key(old_document, new_document, ownership.pattern):
            return
        _check_no_arrays(new_document, ownership.pattern)
        if request is not None:
            if request.allow_shard_key_updates is None:
                if equality_values(request.query, ownership.pattern) is None:
                    raise CommandError(31025, "Shard key update is not allowed without "
                                              "specifying the full shard key in the query")
            elif not request.allow_shard_key_updates:
                raise CommandError(20, SHARD_KEY_CHANGE)
        if not ownership.owns(new_document):
            raise CommandError(WOULD_CHANGE_OWNING_SHARD,
                               "This update would cause the doc to change owning shards",
                               code_name_override="WouldChangeOwningShard",
                               extra={"errInfo": {"postImage": new_document}})

    # -- range deletion ----------------------------------------------------------------------------
    def schedule_deletion(self, ns: str, bounds: Range) -> None:
        waits_for = {cursor.id for cursor in self.server.cursors.cursors.values()
                     if cursor.ns == ns}
        deletion = RangeDeletion(ns, bounds, waits_for)
        self.deletions.append(deletion)
        task = asyncio.get_running_loop().create_task(self._delete_when_unread(deletion))
        self.server._tasks.add(task)  # noqa: SLF001 - stopped with the server's other tasks
        task.add_done_callback(self.server._tasks.discard)  # noqa: SLF001

    async def _delete_when_unread(self, deletion: RangeDeletion) -> None:
        deadline = time.monotonic() + RANGE_DELETION_WAIT_S
        try:
            while (deletion.waits_for & set(self.server.cursors.cursors)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            self.delete_orphans(deletion.ns, deletion.bounds)
        finally:
            self.deletions.remove(deletion)
            deletion.done.set()

    def delete_orphans(self, ns: str, bounds: Range) -> int:
        """Delete the documents of ``bounds`` this shard does not own (checked per document at
        deletion time, so a range that came back meanwhile is kept)."""
        from mongoemu.context import Connection
        db, name = ns.split(".", 1)
        collection = self.server.catalog.collection(db, name)
        ownership = self.collections.get(ns)
        if collection is None or collection.is_view or ownership is None:
            return 0  # dropped or no longer sharded meanwhile: nothing is an orphan any more
        ctx = _internal_context(self.server, Connection(id=0, peer="range-deleter"), db)
        deleted = 0
        for key, raw in list(collection.scan()):
            document = decode(raw)
            if ownership.owns(document):
                continue
            if not bounds[0] <= point_of(document, ownership.pattern) < bounds[1]:
                continue
            if collection.get_raw(key) is not None:
                self.server.writer.delete(ctx, collection, key, document)
                deleted += 1
        self.server.oplog.notify()
        return deleted

    async def wait_for_deletions(self, ns: str, bounds: Range | None = None) -> None:
        for deletion in list(self.deletions):
            if deletion.ns == ns and (bounds is None or overlaps(deletion.bounds, bounds)):
                await deletion.done.wait()


def _check_no_arrays(document: dict[str, Any], pattern: dict[str, Any]) -> None:
    """update::assertPathsNotArray on the shard-key paths of an updated document."""
    for path in pattern:
        node: Any = document
        for part in split_path(path):
            node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
            if node is MISSING:
                break
            if isinstance(node, list):
                raise CommandError(54, f"After applying the update to the document, the field "
                                       f"'{path}' was found to be an array or array descendant.",
                                   code_name_override="NotSingleValueField")


def _internal_context(server: "Server", conn: Any, db: str) -> Context:
    ctx = Context(server, conn, db, {}, "_migration")
    ctx.from_migrate = True
    return ctx


def _state(ctx: Context) -> ShardState:
    sharding = ctx.server.sharding
    if not isinstance(sharding, ShardState):
        raise CommandError(193, "This is not a shard server (start it with --shardsvr)",
                           code_name_override="ShardingStateNotInitialized")
    return sharding


def _namespace(ctx: Context) -> tuple[str, str]:
    ns = ctx.body[ctx.name]
    if not isinstance(ns, str) or "." not in ns:
        raise CommandError(73, f"Invalid namespace: {ns}")
    db, name = ns.split(".", 1)
    return db, name


def _bounds(ctx: Context, pattern: dict[str, Any]) -> Range:
    return (bound_point(ctx.body["min"], pattern), bound_point(ctx.body["max"], pattern))


def _ownership(ctx: Context, ns: str) -> Ownership:
    ownership = _state(ctx).collections.get(ns)
    if ownership is None:
        raise CommandError(118, f"{ns} is not sharded on this shard",
                           code_name_override="NamespaceNotSharded")
    return ownership


# -- internal commands (the router's side of sharding) -----------------------------------------


@command("_emulatorShardSetMetadata", admin_only=True)
def set_metadata(ctx: Context) -> dict[str, Any]:
    """The router's view of a collection: ``{key, ranges: [[min, max]...], version}``, or
    ``key: null`` for a collection that is no longer sharded."""
    state = _state(ctx)
    db, name = _namespace(ctx)
    key = ctx.body.get("key")
    if key is None:
        state.forget(f"{db}.{name}")
        return {}
    ranges = tuple(sorted((bound_point(lower, key), bound_point(upper, key))
                          for lower, upper in ctx.body.get("ranges", [])))
    version = tuple(int(part) for part in ctx.body.get("version", [1, 0]))
    state.collections[f"{db}.{name}"] = Ownership(dict(key), ranges, (version[0], version[1]))
    return {}


@command("_emulatorShardCollection", admin_only=True)
def shard_collection(ctx: Context) -> dict[str, Any]:
    """Prepare this shard's part of ``shardCollection``: the collection (with the UUID it has on
    the primary shard), the shard-key index and, on the primary shard, the ``shardCollection``
    event. On other shards every write is logged fromMigrate."""
    _state(ctx)
    db, name = _namespace(ctx)
    body = ctx.body
    key, primary = dict(body["key"]), bool(body.get("primary"))
    ctx.from_migrate = not primary
    writer, catalog = ctx.server.writer, ctx.server.catalog
    collection = catalog.collection(db, name)
    if collection is None:
        options = dict(body.get("options") or {})
        collection = writer.create_collection(ctx, db, name, options)
        if isinstance(body.get("uuid"), Binary):  # one collection: one UUID on every shard
            collection.uuid = body["uuid"].as_uuid()
    if collection.is_view:
        raise CommandError(166, f"Namespace {db}.{name} is a view, not a collection")
    for spec in body.get("indexes") or []:
        if collection.find_index(spec["name"]) is None and collection.find_index(
                spec["key"]) is None:
            writer.create_index(ctx, collection, dict(spec))
    if primary:
        writer.noop({"msg": {"shardCollection": f"{db}.{name}"}}, o2={
            "shardCollection": f"{db}.{name}", "key": key,
            "unique": bool(body.get("unique", False)),
            "numInitialChunks": Int64(int(body.get("numInitialChunks", 0) or 0)),
            "presplitHashedZones": bool(body.get("presplitHashedZones", False))},
            collection=collection)
        ctx.operation_time = ctx.server.clock.now
    return {"uuid": Binary.from_uuid(collection.uuid), "count": len(collection),
            "size": collection.data_size}


@command("_emulatorShardSplitPoints", admin_only=True)
def split_points(ctx: Context) -> dict[str, Any]:
    """Shard-key values dividing this shard's documents of a range into ``parts`` equal parts
    (the balancer splits chunks that hold too much data at such points)."""
    db, name = _namespace(ctx)
    if isinstance(ctx.body.get("key"), dict):  # a collection being sharded: all of it counts
        ownership = Ownership(dict(ctx.body["key"]), ((bound_point(
            {f: MinKey() for f in ctx.body["key"]}, ctx.body["key"]), bound_point(
            {f: MaxKey() for f in ctx.body["key"]}, ctx.body["key"])),), (0, 0))
    else:
        ownership = _ownership(ctx, f"{db}.{name}")
    collection = ctx.server.catalog.collection(db, name)
    lower, upper = _bounds(ctx, ownership.pattern)
    parts = max(2, int(ctx.body.get("parts", 2)))
    points: list[tuple[Point, dict[str, Any]]] = []
    if collection is not None:
        for _, raw in collection.scan():
            document = decode(raw)
            point = point_of(document, ownership.pattern)
            if lower <= point < upper and ownership.owns(document):
                points.append((point, document))
    points.sort(key=lambda item: item[0])
    from mongoemu.cluster.shardkey import key_values
    splits: list[dict[str, Any]] = []
    for index in range(1, parts):
        position = len(points) * index // parts
        if 0 < position < len(points):
            values = key_values(points[position][1], ownership.pattern)
            bound = dict(zip(ownership.pattern, values))
            if not splits or sort_key(list(bound.values())) > sort_key(
                    list(splits[-1].values())):
                splits.append(bound)
    return {"splitKeys": splits, "count": len(points)}


@command("_emulatorShardReadRange", admin_only=True)
def read_range(ctx: Context) -> dict[str, Any]:
    """The donor's side of a migration's clone: a cursor over the documents of ``[min, max)``."""
    from mongoemu.commands.crud import cursor_reply
    db, name = _namespace(ctx)
    ownership = _ownership(ctx, f"{db}.{name}")
    collection = ctx.server.catalog.collection(db, name)
    lower, upper = _bounds(ctx, ownership.pattern)

    def documents() -> Any:
        if collection is None:
            return
        for _, raw in collection.scan():
            if lower <= point_of(decode(raw), ownership.pattern) < upper:
                yield raw

    return cursor_reply(ctx, f"{db}.{name}", documents(), int(ctx.body.get("batchSize", 1000)))


@command("_emulatorShardPrepareRange", admin_only=True)
async def prepare_range(ctx: Context) -> dict[str, Any]:
    """A recipient first waits for its own pending deletion of an overlapping range, so the
    deletion can never remove documents the migration is about to bring back."""
    db, name = _namespace(ctx)
    ownership = _ownership(ctx, f"{db}.{name}")
    await _state(ctx).wait_for_deletions(f"{db}.{name}", _bounds(ctx, ownership.pattern))
    return {}


@command("_emulatorShardInsertMigrated", admin_only=True)
def insert_migrated(ctx: Context) -> dict[str, Any]:
    """The recipient's side of the clone: store the donor's documents (an orphan left by an
    earlier migration is replaced), logged fromMigrate."""
    db, name = _namespace(ctx)
    ctx.from_migrate = True
    writer = ctx.server.writer
    collection = writer.collection_for_write(ctx, db, name)
    documents = ctx.body.get("documents") or []
    raw_documents = getattr(documents, "raw", None)
    for index, document in enumerate(documents):
        stored = with_id_first(document)
        key = collection.key_for(stored)
        old = collection.get(key)
        raw = raw_documents[index] if raw_documents is not None and stored is document else None
        if old is not None:
            writer.update(ctx, collection, key, old, stored, kind="replacement")
        else:
            writer.insert(ctx, collection, stored, raw)
    return {"n": len(documents)}


@command("_emulatorShardDeleteRange", admin_only=True)
def delete_range(ctx: Context) -> dict[str, Any]:
    """The donor, after the move is committed: delete ``[min, max)`` once unread (async)."""
    db, name = _namespace(ctx)
    ownership = _ownership(ctx, f"{db}.{name}")
    _state(ctx).schedule_deletion(f"{db}.{name}", _bounds(ctx, ownership.pattern))
    return {}


@command("cleanupOrphaned", admin_only=True)
async def cleanup_orphaned(ctx: Context) -> dict[str, Any]:
    """MongoDB 6.0+: wait until the range deletions pending for the namespace are done."""
    db, name = _namespace(ctx)
    await _state(ctx).wait_for_deletions(f"{db}.{name}")
    return {}
