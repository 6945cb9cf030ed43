"""Opening change streams and serving their cursors (brief §3.1–§3.3, §3.8).

A :class:`ChangeStreamCursor` reads the emulated oplog by position. Each scanned entry becomes
0..n pending events (see :mod:`mongoemu.changestream.events`); while resuming, events up to the
client's token are dropped; the rest are rendered, passed through the user's tail stages and
encoded once. The initial ``aggregate`` never waits; ``getMore`` waits for oplog appends up to
its ``maxTimeMS`` (awaitData).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import deep_copy, encode, type_name
from mongoemu.changestream.events import (BEFORE_CHANGE_MODES, FULL_DOCUMENT_MODES,
                                          ChangeEvent, StreamOptions, StreamScope,
                                          events_for_entry)
from mongoemu.changestream.resume_token import (Token, build_event_token, build_high_water_mark,
                                                decode_token)
from mongoemu.cursors import DEFAULT_FIRST_BATCH, MAX_BATCH_BYTES
from mongoemu.errors import RETRIABLE_CODES, CommandError, checked_max_time_ms

if TYPE_CHECKING:
    from mongoemu.context import Context
    from mongoemu.server import Server

DEFAULT_AWAIT_MS = 1000
# An event is a BSON object of the server's internal limit (16 MiB + 16 KiB, what an oplog entry
# may take); a larger one fails the stream with BSONObjectTooLarge.
MAX_EVENT_BYTES = 16 * 1024 * 1024 + 16 * 1024
# $changeStreamSplitLargeEvent splits events over this (8 KiB under that limit, kept for the
# reply's envelope: the server's kBSONObjMaxChangeEventSize).
SPLIT_EVENT_BYTES = MAX_EVENT_BYTES - 8 * 1024
SPLIT_STAGE = "$changeStreamSplitLargeEvent"

# Stages a user may append to $changeStream.
ALLOWED_STAGES = frozenset({"$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot",
                            "$replaceWith", "$redact", "$changeStreamSplitLargeEvent"})
# Every other stage the server knows: refused with IllegalOperation, not "unrecognized".
KNOWN_STAGES = frozenset({
    "$bucket", "$bucketAuto", "$changeStream", "$changeStreamSplitLargeEvent", "$collStats",
    "$count", "$currentOp", "$densify", "$documents", "$facet", "$fill", "$geoNear",
    "$graphLookup", "$group", "$indexStats", "$limit", "$listLocalSessions", "$listSampledQueries",
    "$listSearchIndexes", "$listSessions", "$lookup", "$merge", "$out", "$planCacheStats",
    "$queryStats", "$sample", "$search", "$searchMeta", "$setWindowFields",
    "$shardedDataDistribution", "$skip", "$sort", "$sortByCount", "$unionWith", "$unwind", "$vectorSearch",
}) | ALLOWED_STAGES

SPEC_FIELDS = frozenset({"fullDocument", "fullDocumentBeforeChange", "resumeAfter", "startAfter",
                         "startAtOperationTime", "allChangesForCluster", "showExpandedEvents",
                         # Internal options: showRawUpdateDescription reports an update as its
                         # oplog entry's delta (rawUpdateDescription); the last two lift the
                         # namespace restrictions; showSystemEvents is accepted and ignored.
                         "showSystemEvents", "showRawUpdateDescription", "allowToRunOnConfigDB",
                         "allowToRunOnSystemNS"})

# Besides RETRIABLE_CODES, the "needs re-targeting" family, RetryChangeStream and
# FailedToSatisfyReadPreference make a change-stream error resumable (server error_labels.cpp).
_RESUMABLE_EXTRA = frozenset({13388, 150, 249, 234, 133})
_NON_RESUMABLE = frozenset({280, 286})


def change_stream_error_labels(code: int, server_version: str) -> list[str]:
    """Labels a server puts on an error of a change stream's ``aggregate``/``getMore``."""
    if code in _NON_RESUMABLE:
        return ["NonResumableChangeStreamError"]
    # StaleShardVersion (63) left the re-targeting category after 6.0.
    if code in RETRIABLE_CODES or code in _RESUMABLE_EXTRA or (code == 63
                                                                and server_version == "6.0"):
        return ["ResumableChangeStreamError"]
    return []


def _labelled(exc: CommandError, server: "Server") -> CommandError:
    if exc.labels is None:
        exc.labels = change_stream_error_labels(exc.code, server.config.server_version)
    return exc


def _history_lost(ts: Timestamp) -> CommandError:
    return CommandError(286, "Resume of change stream was not possible, as the resume point may "
                             f"no longer be in the oplog. Resume point: {ts}")


# -- opening ---------------------------------------------------------------------------------


def open_change_stream(ctx: "Context", spec: Any, rest_pipeline: list[dict[str, Any]],
                       cursor_options: dict[str, Any]) -> dict[str, Any]:
    """Handle ``aggregate`` whose first stage is ``$changeStream``; never waits for events."""
    try:
        return _open(ctx, spec, rest_pipeline, cursor_options)
    except CommandError as exc:
        raise _labelled(exc, ctx.server) from None


def _open(ctx: "Context", spec: Any, rest_pipeline: list[dict[str, Any]],
          cursor_options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise CommandError(50808, "$changeStream stage expects a document as argument")
    for name in spec:
        if name not in SPEC_FIELDS:
            raise CommandError(40415, f"BSON field '$changeStream.{name}' is an unknown field.")
    full_document = _enum(spec, "fullDocument", FULL_DOCUMENT_MODES)
    before_change = _enum(spec, "fullDocumentBeforeChange", BEFORE_CHANGE_MODES)
    show_expanded = _flag(spec, "showExpandedEvents")
    raw_updates = _flag(spec, "showRawUpdateDescription")
    all_changes = _flag(spec, "allChangesForCluster")
    for name in ("resumeAfter", "startAfter"):
        if name in spec and not isinstance(spec[name], dict):
            raise _wrong_type(name, spec[name], "object")
    if "startAtOperationTime" in spec and not isinstance(spec["startAtOperationTime"], Timestamp):
        raise _wrong_type("startAtOperationTime", spec["startAtOperationTime"], "timestamp")
    if "resumeAfter" in spec and "startAfter" in spec:
        raise CommandError(50865, "Do not specify both 'resumeAfter' and 'startAfter' in a "
                                  "$changeStream stage.")
    if "startAtOperationTime" in spec and ("resumeAfter" in spec or "startAfter" in spec):
        raise CommandError(40674, "Only one type of resume option is allowed, but multiple were "
                                  "found.")

    scope, ns = _scope(ctx, spec, all_changes)
    tail = _tail_stages(rest_pipeline)
    splits = any(SPLIT_STAGE in stage for stage in tail)
    server = ctx.server
    options = StreamOptions(scope=scope, full_document=full_document,
                            full_document_before_change=before_change,
                            show_expanded_events=show_expanded,
                            # disambiguatedPaths arrived in 6.1.
                            disambiguated_paths=show_expanded
                            and server.config.server_version != "6.0",
                            raw_update_description=raw_updates,
                            raw_documents=not _transforming(tail))

    oplog = server.oplog
    resume_key: tuple | None = None  # an event token the stream must meet before reporting
    if "resumeAfter" in spec or "startAfter" in spec:
        token_document = spec.get("resumeAfter", spec.get("startAfter"))
        resume_token = decode_token(token_document)
        if resume_token.fragment_num is not None and not splits:
            raise CommandError(280, "To resume from a split event, the $changeStream pipeline "
                                    "must include a $changeStreamSplitLargeEvent stage")
        if "resumeAfter" in spec and resume_token.from_invalidate:
            raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' is "
                                    "not allowed from an invalidate notification.")
        if (scope.kind == "collection" and not resume_token.is_high_water_mark
                and resume_token.uuid is None):
            raise CommandError(260, "Attempted to resume a single-collection stream, but the "
                                    "resume token does not include a UUID.")
        start = resume_token.cluster_time
        initial = Token(dict(token_document), resume_token.sort_key)
        if not resume_token.is_high_water_mark:
            resume_key = resume_token.sort_key
    elif "startAtOperationTime" in spec:
        start = spec["startAtOperationTime"]
        initial = build_high_water_mark(start)
    else:
        # One tick after the newest write: the latest write is not returned.
        now = server.clock.now
        start = Timestamp(now.time, now.inc + 1)
        initial = build_high_water_mark(start)
    if not oplog.covers(start):
        raise _history_lost(start)

    session_id = ctx.session.key if ctx.session is not None else None
    cursor = ChangeStreamCursor(
        cursor_id=server.cursors.new_id(), ns=ns, session_id=session_id, server=server,
        options=options, tail_stages=tail, position=oplog.position_at_or_after(start),
        initial_token=initial, resume_key=resume_key, split_large_events=splits,
        # A shard answering the router only holds part of the cluster's events: the token's
        # event may be on another shard, so passing its position is no error here.
        token_may_be_elsewhere=ctx.body.get("fromMongos") is True)
    batch = cursor.take(_batch_size(cursor_options))
    if cursor.exhausted:
        cursor.close()
    else:
        server.cursors.register(cursor)
    return {"cursor": {"firstBatch": batch, "postBatchResumeToken": cursor.post_batch_token,
                       "id": Int64(0 if cursor.exhausted else cursor.id), "ns": ns}}


def _enum(spec: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = spec.get(name, allowed[0])
    if not isinstance(value, str):
        raise _wrong_type(name, value, "string")
    if value not in allowed:
        raise CommandError(2, f"Enumeration value '{value}' for field '$changeStream.{name}' is "
                              f"not a valid value.")
    return value


def _flag(spec: dict[str, Any], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise _wrong_type(name, value, "bool")
    return value


def _wrong_type(name: str, value: Any, expected: str) -> CommandError:
    return CommandError(14, f"BSON field '$changeStream.{name}' is the wrong type "
                            f"'{type_name(value)}', expected type '{expected}'")


def _scope(ctx: "Context", spec: dict[str, Any], all_changes: bool) -> tuple[StreamScope, str]:
    db = ctx.db
    target = ctx.body.get(ctx.name)
    whole_db = target == 1 and not isinstance(target, bool)
    if all_changes and not (db == "admin" and whole_db):
        raise CommandError(72, "A $changeStream with 'allChangesForCluster:true' may only be "
                               "opened on the 'admin' database, and with no collection name")
    if db == "local":
        raise CommandError(73, "$changeStream may not be opened on the internal local database")
    if db == "config" and not spec.get("allowToRunOnConfigDB"):
        raise CommandError(73, "$changeStream may not be opened on the internal config database")
    if db == "admin" and not all_changes:
        raise CommandError(73, "$changeStream may not be opened on the internal admin database")
    if all_changes:
        return StreamScope(), "admin.$cmd.aggregate"
    if whole_db:
        return StreamScope(db=db), f"{db}.$cmd.aggregate"
    coll = ctx.collection_name()
    if coll.startswith("system.") and not spec.get("allowToRunOnSystemNS"):
        raise CommandError(73, f"$changeStream may not be opened on the internal {db}.{coll} "
                               f"collection")
    collection = ctx.server.catalog.collection(db, coll)
    if collection is not None and collection.is_view:
        raise CommandError(166, f"Namespace {db}.{coll} is a view, not a collection")
    return StreamScope(db=db, coll=coll), f"{db}.{coll}"


def _tail_stages(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain "
                                      "exactly one field.")
        name = next(iter(stage))
        if name not in KNOWN_STAGES:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        if name == "$changeStream":
            raise CommandError(40602, "$changeStream is only valid as the first stage in a "
                                      "pipeline")
        if name not in ALLOWED_STAGES:
            raise CommandError(20, f"{name} is not permitted in a $changeStream pipeline")
        if name == "$changeStreamSplitLargeEvent" and index != len(stages) - 1:
            raise CommandError(7182802, "$changeStreamSplitLargeEvent must be the last stage "
                                        "in the pipeline")
    transforming = _transforming(stages)
    if transforming:
        # Malformed stage arguments fail the aggregate, not the first getMore with an event.
        from mongoemu.query.aggregate import validate_pipeline
        validate_pipeline(transforming)
    return stages


def _transforming(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stages that look at event documents (the split stage only matters for huge ones)."""
    return [stage for stage in stages if SPLIT_STAGE not in stage]


def _batch_size(cursor_options: dict[str, Any]) -> int:
    value = cursor_options.get("batchSize", DEFAULT_FIRST_BATCH)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(14, "cursor.batchSize must be a number")
    if value < 0:
        raise CommandError(51024, f"BSON field 'batchSize' value must be >= 0, actual value "
                                  f"'{int(value)}'")
    return int(value)


def _encode_event(document: dict[str, Any]) -> bytes:
    """BSON of an event in its own field order.

    ``bson.encode`` moves ``_id`` to the front of a top-level document, but transaction events
    start with ``txnNumber`` and ``lsid``; nested documents keep their order, so the event is
    encoded as the value of a one-field wrapper and cut out of it (4-byte size, type byte 0x03,
    empty name, ..., trailing NUL).
    """
    wrapper = encode({"": document})
    return wrapper[6:-1]


def split_event(document: dict[str, Any], event: ChangeEvent,
                max_fragment_bytes: int) -> list[tuple[bytes, Token]]:
    """An event cut into fragments of at most ``max_fragment_bytes``, as the server's
    ``$changeStreamSplitLargeEvent`` cuts it: top-level fields only, smallest first (ties by
    name) so that the first fragment holds as many as it can; each fragment has its own token
    (the event's, plus the fragment's index) and ``splitEvent: {fragment, of}``."""
    fields = sorted((len(encode({name: value})) - 5, name)
                    for name, value in document.items() if name != "_id")
    if not fields:
        raise CommandError(7182502, "Cannot split an empty event or an event containing solely "
                                    "'_id' field")
    built: list[tuple[dict[str, Any], Token]] = []
    position = 0
    while position < len(fields):
        token = build_event_token(event.cluster_time, event.txn_op_index, event.collection_uuid,
                                  event.identifier, fragment_num=len(built))
        fragment: dict[str, Any] = {"_id": token.document,
                                    "splitEvent": {"fragment": len(built) + 1, "of": 0}}
        size = len(encode(fragment))
        while True:  # at least one field in each fragment
            field_size, name = fields[position]
            fragment[name] = document[name]
            size += field_size
            position += 1
            if position == len(fields) or size + fields[position][0] > max_fragment_bytes:
                break
        if size > max_fragment_bytes:
            raise CommandError(7182500, f"Splitting change event failed: fragment size {size} is "
                                        f"greater than maximum allowed fragment size "
                                        f"{max_fragment_bytes}")
        built.append((fragment, token))
    for fragment, _ in built:
        fragment["splitEvent"]["of"] = len(built)
    return [(_encode_event(fragment), token) for fragment, token in built]


# -- the cursor ------------------------------------------------------------------------------


class ChangeStreamCursor:
    """A tailable, awaitData cursor over the oplog; its id stays live until invalidated/killed."""

    awaits_data = True

    def __init__(self, cursor_id: int, ns: str, session_id: bytes | None, server: "Server",
                 options: StreamOptions, tail_stages: list[dict[str, Any]], position: int,
                 initial_token: Token, resume_key: tuple | None,
                 token_may_be_elsewhere: bool = False, split_large_events: bool = False) -> None:
        self.id = cursor_id
        self.ns = ns
        self.session_id = session_id
        self.last_used = time.monotonic()
        self.server = server
        self.options = options
        self.stages = _transforming(tail_stages)
        self.position = position  # next oplog position to scan
        self.pending: collections.deque[ChangeEvent] = collections.deque()
        # Events rendered and not returned yet (the rest of a split event): bytes, token.
        self.ready: collections.deque[tuple[bytes, Token]] = collections.deque()
        # Sort key of the client's event token until the stream has met it.
        self.resume_key = resume_key
        self.split_large_events = split_large_events
        # The fragment the client's token names, once its event is met: those up to it are
        # not returned again.
        self._resume_fragment: int | None = None
        self._token_may_be_elsewhere = token_may_be_elsewhere
        self._client_token = initial_token.document
        self.post_batch_token = initial_token.document
        self._pbrt = initial_token
        self._scanned_ts: Timestamp | None = None
        self.exhausted = False  # an invalidate was consumed: no later event is ever returned
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def get_more(self, ctx: "Context", batch_size: int | None,
                       max_time_ms: Any) -> dict[str, Any]:
        """Return ready events at once, else wait for oplog appends up to ``maxTimeMS``."""
        wait_ms = checked_max_time_ms(max_time_ms, DEFAULT_AWAIT_MS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000.0
        limit = batch_size or None  # 0, like absent, means "as many as fit"
        try:
            while True:
                batch = self.take(limit)
                remaining = deadline - loop.time()
                if batch or self.exhausted or self.closed or remaining <= 0:
                    break
                await self.server.oplog.wait_for_append(remaining)
        except CommandError as exc:
            # A failed getMore destroys the cursor, as on a real server.
            self.server.cursors.kill(self.id)
            raise _labelled(exc, self.server) from None
        finished = self.exhausted or self.closed
        if finished:
            self.server.cursors.kill(self.id)
        return {"cursor": {"nextBatch": batch, "postBatchResumeToken": self.post_batch_token,
                           "id": Int64(0 if finished else self.id), "ns": self.ns}}

    def take(self, limit: int | None) -> list[RawBSONDocument]:
        """Up to ``limit`` events (None: no count limit) without waiting, within 16 MiB."""
        self.last_used = time.monotonic()
        oplog = self.server.oplog
        batch: list[RawBSONDocument] = []
        size = 0
        last_returned: Token | None = None
        while limit is None or len(batch) < limit:
            if self.ready:
                raw, token = self.ready[0]
                if batch and size + len(raw) > MAX_BATCH_BYTES:
                    break
                self.ready.popleft()
                batch.append(RawBSONDocument(raw))
                size += len(raw)
                last_returned = token
                continue
            if self.exhausted:
                break
            if not self.pending:
                if self.position < oplog.start_position:
                    raise _history_lost(self._scanned_ts or Timestamp(0, 0))
                entry = oplog.entry_at(self.position)
                if entry is None:
                    break
                self.position += 1
                self._scanned_ts = entry.ts
                self.pending.extend(events_for_entry(entry, self.options))
                last_returned = None  # something was scanned after the last returned event
                continue
            event = self.pending[0]
            if self.resume_key is not None:
                self._skip_until_resume_point(event)
                continue
            rendered = self._output(event)
            if len(rendered) == 1 and batch and size + len(rendered[0][0]) > MAX_BATCH_BYTES:
                break  # stays pending; rendered again for the next batch
            self.pending.popleft()
            if event.is_invalidate:
                self.exhausted = True  # an invalidate is never split: it is returned now
            if len(rendered) == 1:
                raw, token = rendered[0]
                batch.append(RawBSONDocument(raw))
                size += len(raw)
                last_returned = token
            else:
                self.ready.extend(rendered)
        self._advance_post_batch_token(last_returned)
        return batch

    def _skip_until_resume_point(self, event: ChangeEvent) -> None:
        assert self.resume_key is not None
        resume_key = self.resume_key
        if resume_key[-1] and event.token.sort_key[:-1] == resume_key[:-1]:
            # The client's token names a fragment of this event: it is split again and the
            # fragments after that one are returned.
            self.resume_key = None
            self._resume_fragment = decode_token(self._client_token).fragment_num
            return
        if event.token.sort_key > self.resume_key:
            if self._token_may_be_elsewhere:
                self.resume_key = None  # past the resume point: this event is reported
                return
            raise CommandError(280, "cannot resume stream; the resume token was not found. "
                                    f"{self._client_token}")
        if event.token.sort_key == self.resume_key:
            self.resume_key = None
        self.pending.popleft()

    def _output(self, event: ChangeEvent) -> list[tuple[bytes, Token]]:
        """The encoded event after the tail stages (none when they filter it out), or the
        fragments of an event too large to return whole (``$changeStreamSplitLargeEvent``)."""
        resume_fragment, self._resume_fragment = self._resume_fragment, None
        document = event.render(self.options, self.server.catalog)
        if self.stages:
            from mongoemu.query.aggregate import run_pipeline
            results = list(run_pipeline([deep_copy(document)], self.stages, None))
            if not results:
                return []
            document = results[0]
            if document.get("_id") != event.token.document:
                raise CommandError(280, "Encountered an event whose _id field, which contains "
                                        "the resume token, was modified by the pipeline. "
                                        "Modifying the _id field of an event makes it impossible "
                                        "to resume the stream from that point. Only "
                                        "transformations that retain the unmodified _id field "
                                        "are allowed.")
        raw = _encode_event(document)
        if len(raw) <= (SPLIT_EVENT_BYTES if self.split_large_events else MAX_EVENT_BYTES):
            if resume_fragment is not None:
                raise CommandError(280, "Attempted to resume from a split event fragment, but "
                                        "the event in the resumed stream was not large enough "
                                        "to be split")
            return [(raw, event.token)]
        if not self.split_large_events:
            raise CommandError(10334, f"BSONObj size: {len(raw)} (0x{len(raw):X}) is invalid. "
                                      f"Size must be between 0 and 16793600(16MB) First element: "
                                      f"_id: {event.token.document}")
        # Room is left for the postBatchResumeToken of the reply.
        fragments = split_event(document, event,
                                SPLIT_EVENT_BYTES - len(encode(event.token.document)))
        if resume_fragment is None:
            return fragments
        if resume_fragment >= len(fragments):
            raise CommandError(280, "Attempted to resume from a split event, but the resumed "
                                    "stream produced a different split. Ensure that the pipeline "
                                    "used to resume is the same as the original")
        return fragments[resume_fragment + 1:]

    def _advance_post_batch_token(self, last_returned: Token | None) -> None:
        """PBRT: the last event's token if nothing was scanned after it, else a high-water
        mark at the newest scanned entry; never moving backwards."""
        if last_returned is not None:
            candidate = last_returned
        elif self._scanned_ts is not None:
            candidate = build_high_water_mark(self._scanned_ts)
        else:
            return
        if candidate.sort_key > self._pbrt.sort_key:
            self._pbrt = candidate
            self.post_batch_token = candidate.document
