"""Change streams through the router: every shard's stream, merged in cluster-time order.

The router opens the client's stream on every shard (``fromMongos``: a shard skips to the resume
point without requiring the token's event, which may be another shard's) at one start time,
and reports an event only once every other shard has promised nothing earlier can follow:
it has a later event buffered, or its postBatchResumeToken has moved past the event. An idle
shard promises through its periodic no-op writes (``--noop-interval``), exactly the role they
play on MongoDB. Tokens are the shards' own (clusterTime, txnOpIndex, UUID, documentKey) and
order by their ``_data`` bytes, so a token resumes on any router, including a restarted one;
high-water marks resume every shard at the same cluster time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

from bson.int64 import Int64
from bson.timestamp import Timestamp

from mongoemu.changestream.resume_token import decode_token, high_water_mark
from mongoemu.cluster.client import RemoteUnavailable, error_of
from mongoemu.cluster.commands import command_body, router_of
from mongoemu.cluster.router import raise_for
from mongoemu.cursors import DEFAULT_FIRST_BATCH, MAX_BATCH_BYTES
from mongoemu.errors import CommandError, checked_max_time_ms

if TYPE_CHECKING:
    from mongoemu.cluster.router import Router
    from mongoemu.context import Context

DEFAULT_AWAIT_MS = 1000
HIGH_WATER_MARK = 0


def _time_of(data: str) -> tuple[int, int]:
    """The cluster time a token's KeyString starts with (``82`` + seconds + increment)."""
    return int(data[2:10], 16), int(data[10:18], 16)


def _is_high_water_mark(data: str) -> bool:
    # Timestamp (18 hex digits), version 2 (2B04), then tokenType: 29 is 0 (high-water mark).
    return data[22:24] == "29"


class ShardStream:
    """One shard's part of a router stream: its events not yet reported and its promise."""

    def __init__(self, shard: str, db: str, reply: dict[str, Any]) -> None:
        cursor = reply["cursor"]
        self.shard = shard
        self.db = db
        self.collection = str(cursor["ns"]).split(".", 1)[1]
        self.id = int(cursor["id"])
        self.events: collections.deque[tuple[str, Any]] = collections.deque()
        self.promise = ""  # the shard's postBatchResumeToken _data
        self.task: asyncio.Task[None] | None = None
        self.absorb(cursor, "firstBatch")

    def absorb(self, cursor: Any, field: str) -> None:
        for event in cursor[field]:
            self.events.append((str(event["_id"]["_data"]), event))
        token = cursor.get("postBatchResumeToken")
        if token is not None and str(token["_data"]) > self.promise:
            self.promise = str(token["_data"])
        self.id = int(cursor["id"])

    def covers(self, data: str) -> bool:
        """Whether nothing this shard reports later can sort before event ``data``."""
        if self.events or self.id == 0:
            return True
        if _is_high_water_mark(self.promise):
            # A high-water mark at T sorts before T's events, and T's own may still come.
            return _time_of(self.promise) > _time_of(data)
        return self.promise >= data

    def safe_time(self) -> tuple[int, int] | None:
        """Every event before this cluster time has been received (None: no bound)."""
        if self.events:
            return _time_of(self.events[0][0])
        if self.id == 0:
            return None
        return _time_of(self.promise)


class RouterChangeStream:
    awaits_data = True

    def __init__(self, router: "Router", ns: str, streams: list[ShardStream],
                 initial_token: dict[str, Any], session_id: bytes | None) -> None:
        self.router = router
        self.id = router.cursors.new_id()
        self.ns = ns
        self.streams = streams
        self.session_id = session_id
        self.last_used = time.monotonic()
        self.post_batch_token = dict(initial_token)
        self._pbrt = str(initial_token["_data"])
        self.exhausted = False
        self.closed = False

    # -- merging -----------------------------------------------------------------------------
    def take(self, limit: int | None) -> list[Any]:
        """Events every shard has released, in token order, without waiting."""
        self.last_used = time.monotonic()
        batch: list[Any] = []
        size = 0
        last = None
        while not self.exhausted and (limit is None or len(batch) < limit):
            candidates = [stream for stream in self.streams if stream.events]
            if not candidates:
                break
            head = min(candidates, key=lambda stream: stream.events[0][0])
            data, event = head.events[0]
            if not all(stream.covers(data) for stream in self.streams if stream is not head):
                break
            length = len(event.raw)
            if batch and size + length > MAX_BATCH_BYTES:
                break
            head.events.popleft()
            batch.append(event)
            size += length
            last = (data, event)
            if event.get("operationType") == "invalidate":  # a later fragment has none
                self.exhausted = True
        self._advance(last)
        return batch

    def _advance(self, last: tuple[str, Any] | None) -> None:
        """PBRT: the last reported event, or a high-water mark at the time before which every
        shard's events have been reported, whichever is later; it never moves backwards."""
        candidate = last[0] if last is not None else ""
        candidate_token = dict(last[1]["_id"]) if last is not None else None
        bounds = [t for t in (stream.safe_time() for stream in self.streams) if t is not None]
        if bounds and not self.exhausted:
            safe = min(bounds)
            mark = high_water_mark(Timestamp(*safe))
            if mark["_data"] > candidate:
                candidate, candidate_token = mark["_data"], mark
        if candidate_token is not None and candidate > self._pbrt:
            self._pbrt = candidate
            self.post_batch_token = candidate_token

    # -- reading from shards ---------------------------------------------------------------------
    def _request(self, ctx: "Context", stream: ShardStream, wait_ms: float) -> None:
        body = {"getMore": Int64(stream.id), "collection": stream.collection,
                "maxTimeMS": max(int(wait_ms), 1)}

        async def get_more() -> None:
            reply = await self.router.send(ctx, stream.shard, stream.db, body)
            raise_for(reply)
            stream.absorb(reply["cursor"], "nextBatch")

        stream.task = asyncio.get_running_loop().create_task(get_more())

    async def get_more(self, ctx: "Context", batch_size: int | None,
                       max_time_ms: Any) -> dict[str, Any]:
        wait_ms = checked_max_time_ms(max_time_ms, DEFAULT_AWAIT_MS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000.0
        limit = batch_size or None
        try:
            while True:
                self._collect()
                batch = self.take(limit)
                remaining = deadline - loop.time()
                if batch or self.exhausted or self.closed or remaining <= 0:
                    break
                for stream in self.streams:
                    if stream.task is None and stream.id and not stream.events:
                        self._request(ctx, stream, remaining * 1000)
                pending = [s.task for s in self.streams if s.task is not None]
                if not pending:
                    await asyncio.sleep(min(remaining, 0.05))
                    continue
                await asyncio.wait(pending, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
        except CommandError:
            self.router.cursors.kill(self.id)
            raise
        finished = self.exhausted or self.closed
        if finished:
            self.router.cursors.kill(self.id)
        return {"cursor": {"nextBatch": batch, "postBatchResumeToken": self.post_batch_token,
                           "id": Int64(0 if finished else self.id), "ns": self.ns}}

    def _collect(self) -> None:
        """Take in the shards' finished getMores (their events are already absorbed); a
        failed one fails the stream with the shard's error and labels."""
        for stream in self.streams:
            task = stream.task
            if task is not None and task.done():
                stream.task = None
                exception = task.exception()
                if isinstance(exception, RemoteUnavailable):
                    raise CommandError(6, f"Could not reach {exception}",
                                       code_name_override="HostUnreachable",
                                       labels=["ResumableChangeStreamError"])
                if exception is not None:
                    raise exception

    def close(self) -> None:
        self.closed = True
        from mongoemu.cluster.merge import _kill
        for stream in self.streams:
            if stream.task is not None:
                stream.task.cancel()
                stream.task = None
            if stream.id:
                remote = self.router.remotes[stream.shard]
                self.router._spawn(_kill(remote, stream.db, stream.collection,  # noqa: SLF001
                                         stream.id))
                stream.id = 0


async def open_router_stream(ctx: "Context") -> dict[str, Any]:
    """``aggregate`` with ``$changeStream`` on the router: the stream opened on every shard, or
    with ``$_passthroughToShard: {shard: <id>}`` on that shard alone (MongoDB's per-shard
    cursor through mongos, which one-instance-per-shard migration tools read)."""
    router = router_of(ctx)
    body = command_body(ctx)
    shards = list(router.remotes)
    passthrough = body.pop("$_passthroughToShard", None)
    if passthrough is not None:
        shard = passthrough.get("shard") if isinstance(passthrough, dict) else None
        if not isinstance(shard, str):
            raise CommandError(9, "$_passthroughToShard must be an object with a shard id: "
                                  "{shard: <string>}", code_name_override="FailedToParse")
        if shard not in router.remotes:
            raise CommandError(70, f"Shard {shard} not found", code_name_override="ShardNotFound")
        shards = [shard]
    pipeline = list(body["pipeline"])
    spec = pipeline[0]["$changeStream"]
    cursor_options: dict[str, Any] = body["cursor"] if isinstance(body.get("cursor"),
                                                                   dict) else {}
    initial: dict[str, Any] | None = None
    if isinstance(spec, dict):
        spec = dict(spec)
        token = spec.get("resumeAfter", spec.get("startAfter"))
        if token is None and "startAtOperationTime" not in spec:
            now = router.clock.now
            spec["startAtOperationTime"] = start = Timestamp(now.time, now.inc + 1)
            initial = high_water_mark(start)
        elif token is not None and isinstance(token, dict):
            decode_token(token)  # a malformed token fails here as on a shard
            initial = dict(token)
        elif isinstance(spec.get("startAtOperationTime"), Timestamp):
            initial = high_water_mark(spec["startAtOperationTime"])
        pipeline[0] = {"$changeStream": spec}
    shard_body = dict(body, pipeline=pipeline, cursor={}, fromMongos=True)
    replies = await router.broadcast(ctx, shards, ctx.db, shard_body)
    failed = [reply for reply in replies.values() if error_of(reply) is not None]
    streams = [ShardStream(shard, ctx.db, reply) for shard, reply in replies.items()
               if error_of(reply) is None]
    if failed:
        for stream in streams:
            stream.events.clear()
        RouterChangeStream(router, "", streams, {"_data": ""}, None).close()
        raise_for(failed[0])
    ns = str(next(iter(replies.values()))["cursor"]["ns"])
    assert initial is not None
    cursor = RouterChangeStream(router, ns, streams, initial,
                                ctx.session.key if ctx.session is not None else None)
    batch_size = cursor_options.get("batchSize", DEFAULT_FIRST_BATCH)
    batch = cursor.take(int(batch_size) if batch_size else None) if batch_size != 0 else []
    if cursor.exhausted:
        cursor.close()
    else:
        router.cursors.register(cursor)
    return {"cursor": {"firstBatch": batch, "postBatchResumeToken": cursor.post_batch_token,
                       "id": Int64(0 if cursor.exhausted else cursor.id), "ns": ns}}
