"""Routed writes: insert, update, delete and findAndModify on the shards owning the documents.

On a sharded collection each statement is targeted on its own: an insert by its document's
shard key; an update or delete by the shard key its filter fixes, or on every owning shard when
it may touch many documents. A single-document update or delete whose filter does not fix the
shard key is, from 7.0, resolved in two phases as MongoDB's writeWithoutShardKey protocol does
(find one matching document, then write it where it lives; an upsert goes where the new
document belongs); on 6.0 it needs an exact ``_id`` match (then every owner gets it) and an
upsert needs the full shard key. A write without shard key carries
``$_allowShardKeyUpdatesWithoutFullShardKeyInQuery`` (true in a retryable write or a
transaction, else false), which alone lets a shard change a document's shard key when the
filter does not fix the whole key; a client may not send it. An update by exact ``_id`` is no
write without shard key on MongoDB (useTwoPhaseProtocol leaves it out; findAndModify has no
such case) and goes without the mark. Statements bound for the same shard are sent in one
batch, in order for ordered writes, at once per shard for unordered ones; each batch names its
statements (``stmtIds``) so retryable writes stay exactly-once on the shards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mongoemu.bsonvalues import decode, encode
from mongoemu.cluster.commands import (command_body, on_config_server, on_primary, router_of,
                                       versioned, _config_db, _plain, _sort_key)
from mongoemu.cluster.router import raise_for, result_of, routed
from mongoemu.cluster.routing import ShardedCollection
from mongoemu.cluster.shard import SHARD_KEY_CHANGE, WOULD_CHANGE_OWNING_SHARD
from mongoemu.cluster.shardkey import equality_values, point_from_values, point_of
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.writer import ALLOW_SHARD_KEY_UPDATES, with_id_first

if TYPE_CHECKING:
    from mongoemu.cluster.router import Router


@dataclass
class Target:
    kind: str  # "one", "all", "two-phase" or "error"
    shard: str = ""  # for "one"
    error: CommandError | None = None


@dataclass
class Outcome:
    n: int = 0
    modified: int = 0
    upserted: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    concern_error: Any = None


def _id_equality(query: Any) -> bool:
    if not isinstance(query, dict) or "_id" not in query:
        return False
    value = query["_id"]
    if isinstance(value, dict):
        return list(value) == ["$eq"] and not isinstance(value["$eq"], (dict, list))
    return not isinstance(value, list) and not hasattr(value, "pattern")


def _internal_parameter() -> CommandError:
    return CommandError(72, f"{ALLOW_SHARD_KEY_UPDATES} is an internal parameter")


def _allows_shard_key_updates(ctx: Context) -> bool:
    """The value a write without shard key sends: whether the client's write is retryable or
    in a transaction (both carry ``txnNumber``)."""
    return "txnNumber" in ctx.body


def _since_70(router: "Router") -> bool:
    return router.config.max_wire_version >= 21


def _upserts_without_shard_key(router: "Router") -> bool:
    """MongoDB 7.1 (release notes): an upsert need not name the whole shard key; 7.0 writes
    one document without a shard key, but not an upsert."""
    return router.config.max_wire_version >= 22


class ShardedWrite:
    def __init__(self, ctx: Context, kind: str, field_name: str, statements: list[Any],
                 sharded: ShardedCollection) -> None:
        self.ctx = ctx
        self.router = router_of(ctx)
        self.kind = kind
        self.field = field_name
        self.statements = list(statements)
        self.raw: list[bytes] | None = list(getattr(statements, "raw", None) or []) or None
        self.sharded = sharded
        self.collection = ctx.collection_name()
        self.ordered = ctx.body.get("ordered", True) is not False
        self.extras = {key: value for key, value in command_body(ctx).items()
                       if key not in (kind, field_name, "ordered")}
        self.outcome = Outcome()

    # -- targeting ---------------------------------------------------------------------------
    def target(self, index: int, statement: Any) -> Target:
        owners = self.sharded.shards()
        if self.kind == "insert":
            if not isinstance(statement, dict):
                return Target("one", owners[0])  # the shard reports the malformed document
            document = with_id_first(statement)
            if document is not statement:
                self.statements[index] = document
                if self.raw is not None:
                    self.raw[index] = encode(document)
            return Target("one", self.sharded.chunk_for(
                point_of(document, self.sharded.key)).shard)
        if not isinstance(statement, dict) or not isinstance(statement.get("q"), dict):
            return Target("one", owners[0])
        if self.kind == "update" and ALLOW_SHARD_KEY_UPDATES in statement:
            return Target("error", error=_internal_parameter())
        query = statement["q"]
        values = equality_values(query, self.sharded.key)
        if values is not None:
            return Target("one", self.sharded.chunk_for(point_from_values(values)).shard)
        multi = bool(statement.get("multi")) if self.kind == "update" else \
            statement.get("limit") == 0
        upsert = self.kind == "update" and bool(statement.get("upsert"))
        two_phase = (not multi and _since_70(self.router)
                     and (not upsert or _upserts_without_shard_key(self.router)))
        if two_phase and self.kind == "update" and (upsert or not _id_equality(query)):
            # MongoDB's router marks its writes without shard key, also where one shard owns
            # every chunk. An update by exact _id is none: MongoDB sends it to every shard;
            # the two phases here have the same outcome and keep a transaction on one shard.
            self.statements[index] = {**statement,
                                      ALLOW_SHARD_KEY_UPDATES: _allows_shard_key_updates(self.ctx)}
        if len(owners) == 1:
            return Target("one", owners[0])
        if multi:
            if upsert:
                return Target("error", error=CommandError(
                    61, f"Failed to target upsert by query :: could not extract exact shard key "
                        f"from query {query} for key {self.sharded.key}",
                    code_name_override="ShardKeyNotFound"))
            return Target("all")
        if two_phase:
            return Target("two-phase")
        if upsert:
            return Target("error", error=CommandError(
                61, f"Failed to target upsert by query :: could not extract exact shard key "
                    f"from query {query}", code_name_override="ShardKeyNotFound"))
        if _id_equality(query):
            return Target("all")
        return Target("error", error=CommandError(72, (
            "A {multi:false} update on a sharded collection must contain an exact match on _id "
            "(and have the collection default collation) or target a single shard"
            if self.kind == "update" else
            "A single delete on a sharded collection must contain an exact match on _id (and "
            "have the collection default collation) or contain the shard key (and have the "
            "simple collation).")))

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        async with self.router.gate(self.sharded.ns).shared():
            targets = [self.target(i, s) for i, s in enumerate(self.statements)]
            if self.ordered:
                await self._run_ordered(targets)
            else:
                await self._run_unordered(targets)
        outcome = self.outcome
        reply: dict[str, Any] = {"n": outcome.n}
        if self.kind == "update":
            reply["nModified"] = outcome.modified
        if outcome.upserted:
            reply["upserted"] = sorted(outcome.upserted, key=lambda u: u["index"])
        if outcome.errors:
            reply["writeErrors"] = sorted(outcome.errors, key=lambda e: e["index"])
        if outcome.concern_error is not None:
            reply["writeConcernError"] = outcome.concern_error
        return reply

    async def _run_ordered(self, targets: list[Target]) -> None:
        index = 0
        while index < len(targets) and not self.outcome.errors:
            target = targets[index]
            if target.kind == "one":
                end = index
                while end < len(targets) and targets[end].kind == "one" and \
                        targets[end].shard == target.shard:
                    end += 1
                resume = await self._batch(target.shard, list(range(index, end)))
                index = resume if resume is not None else end
            else:
                await self._single(index, target)
                index += 1

    async def _run_unordered(self, targets: list[Target]) -> None:
        by_shard: dict[str, list[int]] = {}
        singles = []
        for index, target in enumerate(targets):
            if target.kind == "one":
                by_shard.setdefault(target.shard, []).append(index)
            else:
                singles.append(self._single(index, target))
        await asyncio.gather(*(self._batch(shard, indices)
                               for shard, indices in by_shard.items()), *singles)

    async def _single(self, index: int, target: Target) -> None:
        if target.kind == "error":
            assert target.error is not None
            self.outcome.errors.append(target.error.to_write_error(index))
        elif target.kind == "all":
            await asyncio.gather(*(self._batch(shard, [index])
                                   for shard in self.sharded.shards()))
        else:
            await self._two_phase(index)

    async def _batch(self, shard: str, indices: list[int],
                     replacement: dict[int, Any] | None = None) -> int | None:
        """Send statements ``indices`` to ``shard``; for an ordered batch stopped by a
        document that had to change shards (and was moved), where to go on from."""
        statements = [(replacement or {}).get(i, self.statements[i]) for i in indices]
        body: dict[str, Any] = {self.kind: self.collection, self.field: statements,
                                "ordered": self.ordered, **self.extras}
        sequences = None
        if self.kind == "insert" and self.raw is not None:
            del body[self.field]
            sequences = {self.field: [self.raw[i] for i in indices]}
        reply = await self.router.send(self.ctx, shard, self.ctx.db,
                                       versioned(body, self.sharded), write=True,
                                       stmt_ids=indices, sequences=sequences)
        raise_for(reply)
        outcome = self.outcome
        outcome.n += int(reply.get("n", 0))
        outcome.modified += int(reply.get("nModified", 0))
        for upserted in reply.get("upserted", []):
            outcome.upserted.append({"index": indices[int(upserted["index"])],
                                     "_id": upserted["_id"]})
        if reply.get("writeConcernError") is not None and outcome.concern_error is None:
            outcome.concern_error = reply["writeConcernError"]
        resume = None
        for error in reply.get("writeErrors", []):
            original = indices[int(error["index"])]
            if int(error["code"]) == WOULD_CHANGE_OWNING_SHARD:
                if await self._change_owning_shard(shard, original, error):
                    if self.ordered:
                        resume = original + 1
                    continue
                error = {"index": error["index"], "code": 20, "codeName": "IllegalOperation",
                         "errmsg": SHARD_KEY_CHANGE}
            outcome.errors.append({**{k: v for k, v in error.items()}, "index": original})
        return resume

    async def _change_owning_shard(self, shard: str, index: int, error: Any) -> bool:
        """MongoDB's answer to WouldChangeOwningShard for a retryable write or a transaction:
        delete the document where it was, insert its new version where it now belongs."""
        body = self.ctx.body
        if "txnNumber" not in body:
            return False
        post_image = decode(error["errInfo"]["postImage"].raw)
        deletion = {"delete": self.collection,
                    "deletes": [{"q": {"_id": post_image["_id"]}, "limit": 1}]}
        await self.router.send_checked(self.ctx, shard, self.ctx.db,
                                       versioned(deletion, self.sharded), write=True,
                                       retryable=False)
        owner = self.sharded.chunk_for(point_of(post_image, self.sharded.key)).shard
        insertion = {"insert": self.collection, "documents": [post_image]}
        await self.router.send_checked(self.ctx, owner, self.ctx.db,
                                       versioned(insertion, self.sharded), write=True,
                                       retryable=False)
        self.outcome.n += 1
        self.outcome.modified += 1
        return True

    async def _two_phase(self, index: int) -> None:
        statement = self.statements[index]
        found = await find_one_owner(self.ctx, self.sharded, self.collection, statement["q"],
                                     statement.get("sort"), statement.get("collation"),
                                     statement.get("hint"))
        if found is not None:
            shard, document_id = found
            pinned = {**statement, "q": {"$and": [statement["q"], {"_id": document_id}]}}
            pinned.pop("sort", None)
            await self._batch(shard, [index], {index: pinned})
            return
        if self.kind == "update" and statement.get("upsert"):
            shard = self._upsert_owner(statement)
            await self._batch(shard, [index])

    def _upsert_owner(self, statement: dict[str, Any]) -> str:
        """The shard the document an upsert would insert belongs to."""
        try:
            document = upsert_document(self.router, statement["q"], statement["u"],
                                       statement.get("arrayFilters"),
                                       statement.get("collation"), self.ctx.body.get("let"))
        except CommandError:
            return self.sharded.shards()[0]  # the shard reports the error the upsert raises
        return self.sharded.chunk_for(point_of(document, self.sharded.key)).shard


def upsert_document(router: "Router", query: dict[str, Any], update: Any, array_filters: Any,
                    collation: Any, let: Any) -> dict[str, Any]:
    from mongoemu.query.collation import Collation
    from mongoemu.query.update import parse_update, upsert_seed
    parsed = parse_update(update, array_filters=array_filters,
                          collation=Collation.from_document(collation) if collation else None,
                          variables=dict(let) if let else None)
    document = parsed.apply(upsert_seed(query, parsed.update), is_upsert_insert=True,
                            cluster_time=router.clock.now)
    return with_id_first(document)


async def find_one_owner(ctx: Context, sharded: ShardedCollection, collection: str,
                         query: dict[str, Any], sort: Any, collation: Any, hint: Any
                         ) -> tuple[str, Any] | None:
    """Phase one of a write without shard key: (shard, _id) of the document it would touch."""
    router = router_of(ctx)
    body: dict[str, Any] = {"find": collection, "filter": query, "limit": 1,
                            "singleBatch": True}
    if sort:
        body["sort"] = sort
    if collation:
        body["collation"] = collation
    if hint:
        body["hint"] = hint
    replies = await router.broadcast(ctx, sharded.shards(), ctx.db, versioned(body, sharded))
    hits = []
    for shard, reply in replies.items():
        raise_for(reply)
        for document in reply["cursor"]["firstBatch"]:
            hits.append((shard, _plain(document)))
    if not hits:
        return None
    if sort:
        key = _sort_key(sort, collation)
        hits.sort(key=lambda hit: key(hit[1]))
    return hits[0][0], hits[0][1]["_id"]


async def _write(ctx: Context, kind: str, field_name: str) -> dict[str, Any]:
    from mongoemu.commands.crud import _statements
    router = router_of(ctx)
    name = ctx.collection_name()
    if _config_db(ctx.db):
        return await on_config_server(ctx, command_body(ctx))
    statements = _statements(ctx, field_name)
    try:
        router.check_writable(ctx, ctx.db)
    except CommandError as exc:  # as a mongod reports it: a write error, per statement
        ordered = ctx.body.get("ordered", True) is not False
        errors = [exc.to_write_error(i) for i in range(1 if ordered else len(statements))]
        return {"n": 0, "nModified": 0, "writeErrors": errors} if kind == "update" else \
            {"n": 0, "writeErrors": errors}
    creates = kind == "insert" or any(isinstance(s, dict) and s.get("upsert")
                                      for s in statements)
    sharded = router.table.sharded(f"{ctx.db}.{name}")
    if sharded is None:
        primary = (await router.table.ensure_database(ctx.db) if creates
                   else router.table.primary_of(ctx.db) or next(iter(router.remotes)))
        body = command_body(ctx)
        sequences = None
        raw = getattr(statements, "raw", None)
        if kind == "insert" and raw is not None:
            del body[field_name]
            sequences = {field_name: list(raw)}
        reply = await router.send(ctx, primary, ctx.db, body, write=True, sequences=sequences)
        raise_for(reply)
        return result_of(reply)
    return await ShardedWrite(ctx, kind, field_name, statements, sharded).run()


@routed("insert", in_transaction=True)
async def insert(ctx: Context) -> dict[str, Any]:
    return await _write(ctx, "insert", "documents")


@routed("update", in_transaction=True)
async def update(ctx: Context) -> dict[str, Any]:
    return await _write(ctx, "update", "updates")


@routed("delete", in_transaction=True)
async def delete(ctx: Context) -> dict[str, Any]:
    return await _write(ctx, "delete", "deletes")


@routed("findAndModify", "findandmodify", in_transaction=True)
async def find_and_modify(ctx: Context) -> dict[str, Any]:
    router = router_of(ctx)
    name = ctx.collection_name()
    body = command_body(ctx)
    if ALLOW_SHARD_KEY_UPDATES in body:
        raise _internal_parameter()
    if _config_db(ctx.db):
        return await on_config_server(ctx, body)
    sharded = router.table.sharded(f"{ctx.db}.{name}")
    if sharded is None:
        return await on_primary(ctx, body, create=bool(body.get("upsert")), write=True)
    query = body.get("query") or {}
    if not isinstance(query, dict):
        return await on_primary(ctx, body, write=True)  # the shard reports the bad argument
    async with router.gate(sharded.ns).shared():
        values = equality_values(query, sharded.key)
        owners = sharded.shards()
        if values is None and _since_70(router):  # a write without shard key, even by _id
            body[ALLOW_SHARD_KEY_UPDATES] = _allows_shard_key_updates(ctx)
        if values is not None:
            shard = sharded.chunk_for(point_from_values(values)).shard
        elif len(owners) == 1:
            shard = owners[0]
        elif not _since_70(router):
            raise CommandError(61, "Query for sharded findAndModify must contain the shard key",
                               code_name_override="ShardKeyNotFound")
        else:
            found = await find_one_owner(ctx, sharded, name, query, body.get("sort"),
                                         body.get("collation"), body.get("hint"))
            if found is not None:
                shard, document_id = found
                body["query"] = {"$and": [query, {"_id": document_id}]}
                body.pop("sort", None)
            elif body.get("upsert") and body.get("update") is not None:
                try:
                    document = upsert_document(router, query, body["update"],
                                               body.get("arrayFilters"), body.get("collation"),
                                               body.get("let"))
                    shard = sharded.chunk_for(point_of(document, sharded.key)).shard
                except CommandError:
                    shard = owners[0]
            else:
                return ({"lastErrorObject": {"n": 0}, "value": None} if body.get("remove")
                        else {"lastErrorObject": {"n": 0, "updatedExisting": False},
                              "value": None})
        reply = await router.send(ctx, shard, ctx.db, versioned(body, sharded), write=True)
        if reply.get("code") == WOULD_CHANGE_OWNING_SHARD and "txnNumber" in ctx.body:
            return await _find_and_modify_across(ctx, sharded, shard, name, body, reply)
        if reply.get("code") == WOULD_CHANGE_OWNING_SHARD:
            raise CommandError(20, SHARD_KEY_CHANGE)
    raise_for(reply)
    return result_of(reply)


async def _find_and_modify_across(ctx: Context, sharded: ShardedCollection, shard: str,
                                  collection: str, body: dict[str, Any],
                                  reply: dict[str, Any]) -> dict[str, Any]:
    router = router_of(ctx)
    post_image = decode(reply["errInfo"]["postImage"].raw)
    found = await router.send_checked(ctx, shard, ctx.db, versioned(
        {"find": collection, "filter": {"_id": post_image["_id"]}, "limit": 1,
         "singleBatch": True}, sharded))
    before = [_plain(d) for d in found["cursor"]["firstBatch"]]
    await router.send_checked(ctx, shard, ctx.db, versioned(
        {"delete": collection, "deletes": [{"q": {"_id": post_image["_id"]}, "limit": 1}]},
        sharded), write=True, retryable=False)
    owner = sharded.chunk_for(point_of(post_image, sharded.key)).shard
    await router.send_checked(ctx, owner, ctx.db, versioned(
        {"insert": collection, "documents": [post_image]}, sharded), write=True,
        retryable=False)
    value = post_image if body.get("new") else (before[0] if before else None)
    if value is not None and body.get("fields"):
        from mongoemu.query.projection import Projection
        value = Projection(body["fields"]).apply(value)
    return {"lastErrorObject": {"n": 1, "updatedExisting": True}, "value": value}
