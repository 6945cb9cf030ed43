"""Router cursors: the results of several shard cursors as one client cursor.

Without a sort, shards' batches are returned one shard after the other, as they come (a
mongos makes no promise of order either); with a sort, every shard sorts and the router merges
on the same sort key. Skip and limit apply after the merge. Shard cursors are read ahead one
batch each, so shards work in parallel while the client reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable

from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument

from mongoemu.bsonvalues import decode
from mongoemu.cluster.client import Remote
from mongoemu.cursors import DEFAULT_FIRST_BATCH, MAX_BATCH_BYTES
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.cluster.router import Router
    from mongoemu.context import Context

Document = Any  # RawBSONDocument from a shard, or a dict the router computed


class RemoteCursor:
    """One shard's (or the config server's) cursor, as the router reads it."""

    def __init__(self, shard: str, db: str, reply: dict[str, Any],
                 remote: Remote | None = None) -> None:
        cursor = reply["cursor"]
        self.shard = shard
        self.db = db
        self.remote = remote
        self.collection = str(cursor["ns"]).split(".", 1)[1]
        self.id = int(cursor["id"])
        self.buffer: collections.deque[Document] = collections.deque(cursor["firstBatch"])
        self.pending: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return bool(self.buffer) or self.id != 0 or self.pending is not None

    def prefetch(self, router: "Router", ctx: "Context", batch_size: int | None) -> None:
        if self.pending is None and self.id != 0:
            self.pending = asyncio.get_running_loop().create_task(
                self._get_more(router, ctx, batch_size))

    async def fetch(self, router: "Router", ctx: "Context", batch_size: int | None) -> None:
        self.prefetch(router, ctx, batch_size)
        if self.pending is not None:
            task = self.pending
            try:
                await task
            finally:
                self.pending = None

    async def _get_more(self, router: "Router", ctx: "Context", batch_size: int | None) -> None:
        from mongoemu.cluster.router import raise_for
        body: dict[str, Any] = {"getMore": Int64(self.id), "collection": self.collection}
        if batch_size:
            body["batchSize"] = batch_size
        reply = await router.send(ctx, self.shard, self.db, body, remote=self.remote)
        if reply.get("code") == 43:
            self.id = 0  # the shard closed it (e.g. killed with its session): nothing more
        raise_for(reply)
        cursor = reply["cursor"]
        self.buffer.extend(cursor["nextBatch"])
        self.id = int(cursor["id"])

    def kill(self, router: "Router") -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.id:
            remote = self.remote or router.remotes[self.shard]
            cursor_id, self.id = self.id, 0
            router._spawn(_kill(remote, self.db, self.collection, cursor_id))  # noqa: SLF001


async def _kill(remote: Remote, db: str, collection: str, cursor_id: int) -> None:
    with contextlib.suppress(Exception):
        await remote.command(db, {"killCursors": collection, "cursors": [Int64(cursor_id)]})


class MergedCursor:
    """A router cursor over shard cursors; the base getMore handler calls :meth:`get_more`."""

    awaits_data = False

    def __init__(self, router: "Router", ns: str, sources: list[RemoteCursor], *,
                 sort_key: Callable[[dict[str, Any]], Any] | None = None, skip: int = 0,
                 limit: int | None = None, transform: Callable[[Any], Any] | None = None,
                 session_id: bytes | None = None, fetch_size: int | None = None) -> None:
        self.router = router
        self.id = router.cursors.new_id()
        self.ns = ns
        self.sources = sources
        self.sort_key = sort_key
        self.skip = skip
        self.remaining = limit
        self.transform = transform
        self.session_id = session_id
        self.fetch_size = fetch_size
        self.last_used = time.monotonic()
        self._heads: dict[int, tuple[Any, Document]] = {}  # source index -> (sort key, doc)
        self.exhausted = False

    # -- reading -----------------------------------------------------------------------------
    async def _next(self, ctx: "Context") -> Document | None:
        if self.sort_key is None:
            return await self._next_unsorted(ctx)
        return await self._next_sorted(ctx)

    async def _next_unsorted(self, ctx: "Context") -> Document | None:
        while self.sources:
            source = self.sources[0]
            if source.buffer:
                return source.buffer.popleft()
            if not source.live:
                self.sources.pop(0)
                continue
            for other in self.sources[1:2]:  # the next shard reads ahead meanwhile
                if not other.buffer:
                    other.prefetch(self.router, ctx, self.fetch_size)
            await source.fetch(self.router, ctx, self.fetch_size)
        return None

    async def _next_sorted(self, ctx: "Context") -> Document | None:
        assert self.sort_key is not None
        empty = [s for s in self.sources if not s.buffer and s.live]
        for source in empty:
            source.prefetch(self.router, ctx, self.fetch_size)
        for source in empty:
            await source.fetch(self.router, ctx, self.fetch_size)
        best: tuple[Any, int] | None = None
        for index, source in enumerate(self.sources):
            if not source.buffer:
                continue
            if index not in self._heads:
                document = source.buffer[0]
                self._heads[index] = (self.sort_key(_decoded(document)), document)
            key = self._heads[index][0]
            if best is None or key < best[0]:
                best = (key, index)
        if best is None:
            return None
        index = best[1]
        del self._heads[index]
        return self.sources[index].buffer.popleft()

    async def take(self, ctx: "Context", batch_size: int | None) -> list[Document]:
        self.last_used = time.monotonic()
        batch: list[Document] = []
        size = 0
        while batch_size is None or batch_size == 0 or len(batch) < batch_size:
            if self.remaining is not None and self.remaining <= 0:
                self.exhausted = True
                break
            document = await self._next(ctx)
            if document is None:
                self.exhausted = True
                break
            if self.skip:
                self.skip -= 1
                continue
            if self.transform is not None:
                document = self.transform(document)
            length = len(document.raw) if isinstance(document, RawBSONDocument) else 0
            batch.append(document)
            size += length
            if self.remaining is not None:
                self.remaining -= 1
            if size >= MAX_BATCH_BYTES:
                break
        if not self.exhausted and not any(s.live for s in self.sources):
            self.exhausted = True
        if self.exhausted:
            self.close()
        return batch

    async def get_more(self, ctx: "Context", batch_size: int | None,
                       max_time_ms: Any) -> dict[str, Any]:
        if max_time_ms is not None:
            raise CommandError(2, "cannot set maxTimeMS on getMore command for a non-awaitData "
                                  "cursor")
        try:
            batch = await self.take(ctx, batch_size)
        except CommandError:
            self.router.cursors.kill(self.id)
            raise
        if self.exhausted:
            self.router.cursors.kill(self.id)
        return {"cursor": {"nextBatch": batch, "id": Int64(0 if self.exhausted else self.id),
                           "ns": self.ns}}

    def close(self) -> None:
        for source in self.sources:
            source.kill(self.router)


def _decoded(document: Document) -> dict[str, Any]:
    if isinstance(document, RawBSONDocument):
        return decode(bytes(document.raw))
    return dict(document)


async def first_batch(ctx: "Context", cursor: MergedCursor, batch_size: int | None,
                      single_batch: bool = False) -> dict[str, Any]:
    """The initial reply of a find/aggregate whose results a merged cursor serves."""
    limit: int | None = batch_size if batch_size is not None else DEFAULT_FIRST_BATCH
    if single_batch:
        limit = batch_size or None
    batch = await cursor.take(ctx, limit) if limit != 0 else []
    if limit == 0 and not any(source.live for source in cursor.sources):
        cursor.exhausted = True
    cursor_id = 0
    if cursor.exhausted or single_batch:
        cursor.close()
    else:
        ctx.server.cursors.register(cursor)
        cursor_id = cursor.id
    return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": cursor.ns}}
