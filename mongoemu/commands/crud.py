"""Reads and writes of documents: find, getMore, killCursors, insert, update, delete,
findAndModify, count, distinct and aggregate."""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument

from mongoemu import collection_uuid
from mongoemu.bsonvalues import decode, is_number, numeric_value, sort_key, type_name
from mongoemu.commands import sink
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.cursors import DEFAULT_FIRST_BATCH, Cursor
from mongoemu.errors import CommandError
from mongoemu.query import plan
from mongoemu.storage.collection import Collection
from mongoemu.writer import UpdateRequest, fill_empty_timestamps, with_id_first

# -- argument helpers ------------------------------------------------------------------------


def _document_arg(ctx: Context, name: str, default: Any = None) -> Any:
    value = ctx.body.get(name, default)
    if value is not None and not isinstance(value, dict):
        raise CommandError(14, f"BSON field '{ctx.name}.{name}' is the wrong type "
                               f"'{type(value).__name__}', expected type 'object'")
    return value


def _non_negative(ctx: Context, name: str, default: int | None = None) -> int | None:
    value = ctx.body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(14, f"BSON field '{ctx.name}.{name}' is the wrong type, expected a "
                               f"number")
    if value < 0:
        raise CommandError(51024, f"BSON field '{name}' value must be >= 0, actual value "
                                  f"'{int(value)}'")
    return int(value)


def _batch_size(ctx: Context, options: dict[str, Any] | None = None) -> int | None:
    source = options if options is not None else ctx.body
    value = source.get("batchSize")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(14, "batchSize must be a number")
    if value < 0:
        raise CommandError(51024, f"BSON field 'batchSize' value must be >= 0, actual value "
                                  f"'{int(value)}'")
    return int(value)


def _variables(ctx: Context, statement: dict[str, Any] | None = None) -> dict[str, Any] | None:
    variables: dict[str, Any] = {}
    let = ctx.body.get("let")
    if let is not None:
        if not isinstance(let, dict):
            raise CommandError(14, "let must be an object")
        from mongoemu.query.expressions import evaluate
        for name, expression in let.items():
            variables[name] = evaluate(expression, {}, variables)
    if statement is not None and isinstance(statement.get("c"), dict):
        variables.update(statement["c"])
    return variables or None


# -- cursors ---------------------------------------------------------------------------------


def cursor_reply(ctx: Context, ns: str, documents: Iterable[Any], batch_size: int | None,
                 single_batch: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Reply with a first batch and, when more remains, a registered cursor."""
    source = iter(documents)
    if limit:
        source = itertools.islice(source, limit)
    first_limit = batch_size if batch_size is not None else DEFAULT_FIRST_BATCH
    if single_batch:
        first_limit = batch_size or None
    session_id = ctx.session.key if ctx.session is not None else None
    cursor = Cursor(ctx.server.cursors.new_id(), ns, source, session_id)
    batch = cursor.take(first_limit) if first_limit != 0 else []
    if first_limit == 0:
        cursor.peek()
    cursor_id = 0
    if not cursor.exhausted and not single_batch:
        ctx.server.cursors.register(cursor)
        cursor_id = cursor.id
    else:
        cursor.close()
    return {"cursor": {"firstBatch": [RawBSONDocument(raw) for raw in batch],
                       "id": Int64(cursor_id), "ns": ns}}


@command("getMore", in_transaction=True)
async def get_more(ctx: Context) -> dict[str, Any]:
    cursor_id = ctx.body["getMore"]
    if isinstance(cursor_id, bool) or not isinstance(cursor_id, int):
        raise CommandError(14, "BSON field 'getMore.getMore' is the wrong type, expected type "
                               "'long'")
    collection = ctx.body.get("collection")
    if not isinstance(collection, str):
        raise CommandError(40414 if collection is None else 14,
                           "BSON field 'getMore.collection' is missing but a required field")
    cursor = ctx.server.cursors.get(int(cursor_id), f"{ctx.db}.{collection}")
    injected = ctx.server.failpoints.triggered("failGetMoreAfterCursorCheckout")
    if injected is not None and "errorCode" in injected:
        ctx.server.cursors.kill(cursor.id)
        code = int(injected["errorCode"])
        labels = injected.get("errorLabels")
        if labels is None and hasattr(cursor, "get_more"):
            from mongoemu.changestream.stream import change_stream_error_labels
            labels = change_stream_error_labels(code, ctx.server.config.server_version)
        raise CommandError(code, "Failing command via 'failGetMoreAfterCursorCheckout' "
                                 "failpoint", labels=list(labels) if labels is not None else None)
    batch_size = _batch_size(ctx)
    max_time_ms = ctx.body.get("maxTimeMS")
    ctx.server.opcounters["getmore"] += 1
    if hasattr(cursor, "get_more"):
        return await cursor.get_more(ctx, batch_size, max_time_ms)
    if max_time_ms is not None and not cursor.awaits_data:
        raise CommandError(2, "cannot set maxTimeMS on getMore command for a non-awaitData "
                              "cursor")
    batch = cursor.take(batch_size)
    if cursor.exhausted:
        ctx.server.cursors.kill(cursor.id)
    return {"cursor": {"nextBatch": [RawBSONDocument(raw) for raw in batch],
                       "id": Int64(0 if cursor.exhausted else cursor.id), "ns": cursor.ns}}


@command("killCursors", in_transaction=True)
def kill_cursors(ctx: Context) -> dict[str, Any]:
    ids = ctx.body.get("cursors")
    if not isinstance(ids, list):
        raise CommandError(14, "BSON field 'killCursors.cursors' must be an array")
    killed, not_found = [], []
    for cursor_id in ids:
        (killed if ctx.server.cursors.kill(int(cursor_id)) else not_found).append(Int64(cursor_id))
    return {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [],
            "cursorsUnknown": []}


# -- find ------------------------------------------------------------------------------------


def _sorted(matches: Iterable[plan.Match], sort: dict[str, Any],
            collation: dict[str, Any] | None) -> list[plan.Match]:
    from mongoemu.query.collation import Collation
    from mongoemu.query.sorting import make_sort_key
    key = make_sort_key(sort, Collation.from_document(collation) if collation else None)
    return sorted(matches, key=lambda m: key(m.decoded()))


def select(ctx: Context, collection: Collection, filter_doc: dict[str, Any] | None,
           sort: dict[str, Any] | None, collation: dict[str, Any] | None,
           variables: dict[str, Any] | None = None, want_position: bool = False,
           hint: Any = None, id_min: Any = plan.NO_BOUND,
           id_max: Any = plan.NO_BOUND) -> Iterator[plan.Match]:
    """Matching documents in the requested order, as lazily decoded matches."""
    hinted = plan.hint_index(collection, hint)
    natural = collection.is_capped
    reverse = False
    if isinstance(hinted, dict) and "$natural" in hinted:
        natural, reverse = True, hinted["$natural"] == -1
    if sort:
        if list(sort) == ["$natural"]:
            natural, reverse, sort = True, sort["$natural"] == -1, None
        elif list(sort) == ["_id"] and sort["_id"] in (1, -1) and not collation:
            reverse, natural, sort = sort["_id"] == -1, False, None
    matches = plan.scan(collection, filter_doc, collation=collation, variables=variables,
                        reverse=reverse, natural=natural, want_position=want_position,
                        id_min=id_min, id_max=id_max)
    owned = ctx.server.ownership_filter(ctx, collection)
    if owned is not None:  # a shard answering the router: orphans are not part of the result
        matches = (match for match in matches if owned(match.decoded()))
    if sort:
        return iter(_sorted(matches, sort, collation))
    return matches


def _find_documents(ctx: Context, collection: Collection) -> Iterator[Any]:
    body = ctx.body
    filter_doc = _document_arg(ctx, "filter") or {}
    sort = _document_arg(ctx, "sort")
    projection_spec = _document_arg(ctx, "projection")
    collation = _document_arg(ctx, "collation")
    skip = _non_negative(ctx, "skip") or 0
    variables = _variables(ctx)
    projection = None
    if projection_spec:
        from mongoemu.query.projection import Projection
        projection = Projection(projection_spec)
    wants_position = projection is not None and any(k.endswith(".$") for k in projection_spec)
    min_doc, max_doc = _document_arg(ctx, "min"), _document_arg(ctx, "max")
    matches = select(ctx, collection, filter_doc, sort, collation, variables, wants_position,
                     body.get("hint"),
                     id_min=min_doc["_id"] if min_doc and "_id" in min_doc else plan.NO_BOUND,
                     id_max=max_doc["_id"] if max_doc and "_id" in max_doc else plan.NO_BOUND)
    if skip:
        matches = itertools.islice(matches, skip, None)
    if body.get("returnKey"):
        return ({"_id": m.decoded()["_id"]} for m in matches)
    if projection is not None:
        return (projection.apply(m.decoded(), m.position) for m in matches)
    if body.get("showRecordId"):
        return ({**m.decoded(), "$recordId": Int64(i + 1)} for i, m in enumerate(matches))
    return (m.raw for m in matches)


@command("find", in_transaction=True)
def find(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    ns = f"{ctx.db}.{name}"
    limit = ctx.body.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise CommandError(14, "BSON field 'limit' is the wrong type, expected a number")
        if limit < 0:
            raise CommandError(51024, f"BSON field 'limit' value must be >= 0, actual value "
                                      f"'{int(limit)}'")
    batch_size = _batch_size(ctx)
    ctx.server.opcounters["query"] += 1
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        _document_arg(ctx, "filter")
        return {"cursor": {"firstBatch": [], "id": Int64(0), "ns": ns}}
    if collection.is_view:
        return _find_on_view(ctx, collection, batch_size)
    documents = _find_documents(ctx, collection)
    return cursor_reply(ctx, ns, documents, batch_size, bool(ctx.body.get("singleBatch")),
                        int(limit) if limit else None)


def _find_on_view(ctx: Context, view: Collection, batch_size: int | None) -> dict[str, Any]:
    body = ctx.body
    pipeline: list[dict[str, Any]] = []
    if body.get("filter"):
        pipeline.append({"$match": body["filter"]})
    if body.get("sort"):
        pipeline.append({"$sort": body["sort"]})
    if body.get("skip"):
        pipeline.append({"$skip": body["skip"]})
    if body.get("limit"):
        pipeline.append({"$limit": body["limit"]})
    if body.get("projection"):
        pipeline.append({"$project": body["projection"]})
    documents = run_aggregation(ctx, view.db, view.name, pipeline)
    return cursor_reply(ctx, view.ns, documents, batch_size, bool(body.get("singleBatch")))


# -- aggregation -----------------------------------------------------------------------------


class ServerPipelineContext:
    """What pipeline stages that reach outside their input ($lookup, $out, ...) call."""

    def __init__(self, ctx: Context, collection: Collection | None) -> None:
        self.ctx = ctx
        self.collection = collection
        self.current_db = ctx.db
        collation = ctx.body.get("collation")
        from mongoemu.query.collation import Collation
        self.collation = Collation.from_document(collation) if collation else None
        self.variables = ctx.body.get("let")  # raw: the pipeline evaluates it once
        from mongoemu.clock import wall_clock
        self.now = wall_clock()
        self.cluster_time = ctx.server.clock.now

    def read_collection(self, db: str, coll: str) -> Iterable[dict[str, Any]]:
        collection = self.ctx.catalog.collection(db, coll)
        if collection is None:
            return []
        if collection.is_view:
            return run_aggregation(self.ctx, db, coll, [])
        return (decode(raw) for _, raw in collection.scan())

    def write_out(self, db: str, coll: str, docs: Iterable[dict[str, Any]]) -> None:
        writer = self.ctx.server.writer
        catalog = self.ctx.catalog
        existing = catalog.collection(db, coll)
        if existing is not None and existing.is_view:
            raise CommandError(166, f"Namespace {db}.{coll} is a view, not a collection")
        documents = [with_id_first(d) for d in docs]
        # As MongoDB does it (DocumentSourceOutReplaceColl): the results go into a temporary
        # collection of the target's database, with the target's options and indexes, which
        # is then renamed over the target. A change stream shows each step; a failed write
        # drops the temporary collection and leaves the target as it was.
        options = {} if existing is None else dict(existing.options)
        temporary = writer.create_collection(self.ctx, db, f"tmp.agg_out.{uuid.uuid4()}",
                                             {**options, "temp": True})
        try:
            if existing is not None:
                writer.create_indexes_like(self.ctx, temporary, existing)
            for document in documents:
                writer.insert(self.ctx, temporary, document)
        except BaseException:
            writer.drop_collection(self.ctx, temporary)
            raise
        writer.rename_collection(self.ctx, temporary, db, coll, drop_target=True)

    def merge_into(self, db: str, coll: str, docs: Iterable[dict[str, Any]], on: list[str],
                   when_matched: Any, when_not_matched: str, let: dict[str, Any] | None) -> None:
        from mongoemu.query.aggregate import apply_merge_pipeline
        writer = self.ctx.server.writer
        target = writer.collection_for_write(self.ctx, db, coll)
        fields = list(on or ["_id"])
        for document in docs:
            query = {f: document.get(f) for f in fields}
            existing = next(plan.scan(target, query), None)
            if existing is None:
                if when_not_matched == "insert":
                    writer.insert(self.ctx, target, with_id_first(document))
                elif when_not_matched == "fail":
                    raise CommandError(13113, "$merge could not find a matching document in the "
                                              "target collection for at least one document in "
                                              "the source collection")
                continue
            old = existing.decoded()
            if when_matched == "replace":
                new = {"_id": old["_id"], **{k: v for k, v in document.items() if k != "_id"}}
            elif when_matched == "keepExisting":
                continue
            elif when_matched == "merge":
                new = {**old, **{k: v for k, v in document.items() if k != "_id"}}
            elif when_matched == "fail":
                raise target.duplicate_key_error({"key": {f: 1 for f in fields},
                                                  "name": "_id_" if fields == ["_id"] else
                                                  "_".join(f"{f}_1" for f in fields)}, document)
            else:
                new = apply_merge_pipeline(old, document, when_matched, let, self)
            writer.update(self.ctx, target, existing.key, old, new, kind="replacement")

    def coll_stats(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        from mongoemu.clock import wall_clock
        collection = self.collection
        if collection is None:
            raise CommandError(26, f"Unable to retrieve storageStats in $collStats stage :: "
                                   f"caused by :: Collection [{self.ctx.db}] not found.")
        from mongoemu.commands.admin import _collection_stats
        result: dict[str, Any] = {"ns": collection.ns, "host": self.ctx.server.config.address,
                                  "localTime": wall_clock()}
        if self.ctx.server.config.is_mongos:
            result["shard"] = self.ctx.server.config.shard_names[0]
        if "storageStats" in options:
            scale = int((options.get("storageStats") or {}).get("scale", 1) or 1)
            result["storageStats"] = _collection_stats(self.ctx, collection.db, collection.name,
                                                       scale)
        if "count" in options:
            result["count"] = len(collection)
        if "latencyStats" in options:
            result["latencyStats"] = {k: {"latency": Int64(0), "ops": Int64(0)}
                                      for k in ("reads", "writes", "commands", "transactions")}
        return [result]

    def server_stage(self, name: str, spec: Any) -> Iterable[dict[str, Any]]:
        from mongoemu.clock import wall_clock
        if name in ("$listLocalSessions", "$listSessions"):
            return [{"_id": session.lsid, "lastUse": wall_clock()}
                    for session in self.ctx.server.sessions.sessions.values()]
        if name == "$currentOp":
            return []
        if name == "$querySettings":
            from mongoemu.commands.deployment import query_settings_documents
            return query_settings_documents(self.ctx, spec)
        raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")

    def index_stats(self) -> list[dict[str, Any]]:
        from mongoemu.clock import wall_clock
        collection = self.collection
        if collection is None:
            return []
        stats = []
        for spec in collection.index_list():
            entry = {"name": spec["name"], "key": spec["key"],
                     "host": self.ctx.server.config.address,
                     "accesses": {"ops": Int64(0), "since": wall_clock()}, "spec": spec}
            if self.ctx.server.config.is_mongos:
                entry["shard"] = self.ctx.server.config.shard_names[0]
            stats.append(entry)
        return stats


def run_aggregation(ctx: Context, db: str, coll: str | None,
                    pipeline: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Run ``pipeline`` over a collection (views resolved) or, for ``coll=None``, no input."""
    from mongoemu.query.aggregate import run_pipeline
    collection = ctx.catalog.collection(db, coll) if coll is not None else None
    depth = 0
    while collection is not None and collection.is_view:
        pipeline = list(collection.options.get("pipeline", [])) + list(pipeline)
        collection = ctx.catalog.collection(db, collection.options["viewOn"])
        depth += 1
        if depth > 20:
            raise CommandError(40431, "View depth too deep or view cycle detected")
    pipeline_ctx = ServerPipelineContext(ctx, collection)
    source: Iterable[dict[str, Any]] = ()
    if collection is not None:
        first = pipeline[0] if pipeline else None
        filter_doc = first.get("$match") if isinstance(first, dict) and len(first) == 1 else None
        if isinstance(filter_doc, dict) and "$expr" not in filter_doc:
            source = (m.decoded() for m in select(ctx, collection, filter_doc, None,
                                                  ctx.body.get("collation"),
                                                  hint=ctx.body.get("hint")))
            pipeline = pipeline[1:]
        else:
            plan.hint_index(collection, ctx.body.get("hint"))
            source = (decode(raw) for _, raw in collection.scan(natural=collection.is_capped))
            owned = ctx.server.ownership_filter(ctx, collection)
            if owned is not None:
                source = (document for document in source if owned(document))
    return run_pipeline(source, pipeline, pipeline_ctx)


@command("aggregate", in_transaction=True)
def aggregate(ctx: Context) -> Any:
    target = ctx.body["aggregate"]
    pipeline = ctx.body.get("pipeline")
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    cursor_options = ctx.body.get("cursor")
    if cursor_options is None and not ctx.body.get("explain"):
        raise CommandError(9, "The 'cursor' option is required, except for aggregate with the "
                              "explain argument")
    if cursor_options is not None and not isinstance(cursor_options, dict):
        raise CommandError(14, "cursor field must be missing or an object")
    cursor_options = cursor_options or {}
    for stage in pipeline:
        if not isinstance(stage, dict):
            raise CommandError(14, "Each element of the 'pipeline' array must be an object")
        if "$listSearchIndexes" in stage:
            from mongoemu.commands.search import list_search_indexes_refused
            raise list_search_indexes_refused(ctx)
    if pipeline and "$changeStream" in pipeline[0]:
        from mongoemu.changestream import open_change_stream
        if ctx.txn is not None:
            raise CommandError(263, "Cannot run aggregate with $changeStream in a "
                                    "multi-document transaction.")
        return open_change_stream(ctx, pipeline[0]["$changeStream"], pipeline[1:], cursor_options)
    if any("$changeStream" in stage for stage in pipeline[1:]):
        raise CommandError(40602, "$changeStream is only valid as the first stage in a "
                                  "pipeline")
    if target == 1:
        coll = None
        ns = f"{ctx.db}.$cmd.aggregate"
    elif isinstance(target, str):
        coll = ctx.collection_name()
        ns = f"{ctx.db}.{coll}"
    else:
        raise CommandError(2, "Invalid aggregate namespace")
    from mongoemu.query.aggregate import validate_pipeline
    validate_pipeline(pipeline)
    writes = any(next(iter(stage)) in ("$out", "$merge") for stage in pipeline)
    if writes:
        ctx.server.writer.check_writable(ctx, ctx.db)
    documents = run_aggregation(ctx, ctx.db, coll, pipeline)
    if writes:
        for _ in documents:
            pass
        return {"cursor": {"firstBatch": [], "id": Int64(0), "ns": ns}}
    return cursor_reply(ctx, ns, documents, _batch_size(ctx, cursor_options))


# -- count / distinct ------------------------------------------------------------------------


@command("count")
def count(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    query = _document_arg(ctx, "query") or {}
    skip = _non_negative(ctx, "skip") or 0
    limit = ctx.body.get("limit") or 0
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        return {"n": 0}
    if collection.is_view:
        documents = run_aggregation(ctx, ctx.db, name, [{"$match": query}] if query else [])
        total = sum(1 for _ in documents)
    elif not query:
        if ctx.body.get("hint"):
            plan.hint_index(collection, ctx.body["hint"])
        total = len(collection)
    else:
        total = sum(1 for _ in select(ctx, collection, query, None, _document_arg(ctx, "collation"),
                                      hint=ctx.body.get("hint")))
    total = max(total - skip, 0)
    if limit:
        total = min(total, abs(int(limit)))
    return {"n": total}


@command("distinct", in_transaction=True)
def distinct(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    key = ctx.body.get("key")
    if not isinstance(key, str):
        raise CommandError(14, "BSON field 'distinct.key' is the wrong type, expected type "
                               "'string'")
    query = _document_arg(ctx, "query") or {}
    collation = _document_arg(ctx, "collation")
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is None:
        return {"values": []}
    from mongoemu.query.paths import get_path_values
    if collection.is_view:
        documents: Iterable[dict[str, Any]] = run_aggregation(
            ctx, ctx.db, name, [{"$match": query}] if query else [])
    else:
        documents = (m.decoded() for m in select(ctx, collection, query, None, collation,
                                                 hint=ctx.body.get("hint")))
    from mongoemu.query.collation import Collation
    from mongoemu.query.collation import sort_key_collated
    collator = Collation.from_document(collation) if collation else None
    seen: dict[Any, Any] = {}
    for document in documents:
        for value in get_path_values(document, key, expand_leaf_arrays=False):
            values = value if isinstance(value, list) else [value]
            for item in values:
                marker = sort_key_collated(item, collator) if collator else sort_key(item)
                seen.setdefault(marker, item)
    return {"values": [seen[k] for k in sorted(seen)]}


# -- writes ----------------------------------------------------------------------------------


class WriteResult:
    """Accumulates the per-statement outcome of a write command."""

    def __init__(self, keep_outcomes: bool = False) -> None:
        self.n = 0
        self.modified = 0
        self.upserted: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        # index -> StatementOutcome of each statement that succeeded (when kept).
        self.outcomes: dict[int, StatementOutcome] | None = {} if keep_outcomes else None

    def run(self, ctx: Context, statements: list[Any],
            apply: Callable[[int, Any], None], commits_per_statement: bool = True) -> None:
        """Apply each statement; a failure becomes a writeError and, if ordered, ends the batch.

        A retryable write records each statement that succeeded under its txnNumber; a retry
        of the command replays those outcomes instead of running them again (as the server
        does by statement id), and runs only the statements that failed or never ran.
        ``commits_per_statement`` is False for insert, which the server commits as one unit
        (what ``onPrimaryTransactionalWrite`` fires on).
        """
        ordered = _ordered(ctx)
        history = _statement_history(ctx)
        statement_ids = _statement_ids(ctx, len(statements)) if history is not None else []
        for index, statement in enumerate(statements):
            done = history.get(statement_ids[index]) if history is not None else None
            if done is not None:
                self._add(index, done)
                continue
            before_n, before_modified, before_upserted = self.n, self.modified, len(self.upserted)
            try:
                if index == 0 or commits_per_statement:
                    ctx.server.failpoints.before_transactional_write(ctx)
                apply(index, statement)
            except CommandError as exc:
                if ctx.txn is not None and exc.code == 112:
                    raise  # a conflict fails the whole transaction statement, labelled transient
                self.errors.append(exc.to_write_error(index))
                if ordered:
                    break
                continue
            if history is not None or self.outcomes is not None:
                n, modified = self.n - before_n, self.modified - before_modified
                if n == 1 and not modified and len(self.upserted) == before_upserted:
                    outcome = _ONE_INSERTED
                else:
                    outcome = StatementOutcome(n, modified, tuple(self.upserted[before_upserted:]))
                if history is not None:
                    history[statement_ids[index]] = outcome
                if self.outcomes is not None:
                    self.outcomes[index] = outcome

    def _add(self, index: int, outcome: "StatementOutcome") -> None:
        self.n += outcome.n
        self.modified += outcome.modified
        self.upserted.extend(outcome.upserted)
        if self.outcomes is not None:
            self.outcomes[index] = outcome

    def reply(self, with_modified: bool = False) -> dict[str, Any]:
        reply: dict[str, Any] = {"n": self.n}
        if with_modified:
            reply["nModified"] = self.modified
        if self.upserted:
            reply["upserted"] = self.upserted
        if self.errors:
            reply["writeErrors"] = self.errors
        return reply


class StatementOutcome(NamedTuple):
    """What one successful write statement added to its command's result."""

    n: int
    modified: int
    upserted: tuple[dict[str, Any], ...] = ()


# The outcome of every successful insert statement, shared: batches record one per document.
_ONE_INSERTED = StatementOutcome(1, 0)


def _statement_history(ctx: Context) -> dict[int, StatementOutcome] | None:
    """The statements of this retryable write that already succeeded (None: not retryable)."""
    if ctx.session is None or "txnNumber" not in ctx.body or "autocommit" in ctx.body:
        return None
    return ctx.session.statement_history(int(ctx.body["txnNumber"]))


def _statement_ids(ctx: Context, count: int) -> list[int]:
    """Each statement's id: ``stmtIds`` when given (a router's batches), else ``stmtId``
    (default 0) plus its index."""
    given = ctx.body.get("stmtIds")
    if isinstance(given, list) and len(given) == count:
        return [int(statement_id) for statement_id in given]
    first = ctx.body.get("stmtId", 0)
    first = int(first) if isinstance(first, int) and not isinstance(first, bool) else 0
    return [first + index for index in range(count)]


def _statements(ctx: Context, field: str) -> list[Any]:
    statements = ctx.body.get(field)
    if not isinstance(statements, list):
        raise CommandError(40414 if statements is None else 14,
                           f"BSON field '{ctx.name}.{field}' is missing but a required field"
                           if statements is None else
                           f"BSON field '{ctx.name}.{field}' is the wrong type, expected type "
                           f"'array'")
    if len(statements) > 100000:
        raise CommandError(10413, "Write batch sizes must be between 1 and 100000. Got "
                                  f"{len(statements)} operations.")
    if not statements:
        raise CommandError(10413, "Write batch sizes must be between 1 and 100000. Got 0 "
                                  "operations.")
    return statements


def _keeps_empty_timestamps(ctx: Context) -> bool:
    """``bypassEmptyTsReplacement`` (insert, update, findAndModify, bulkWrite): store
    ``Timestamp(0, 0)`` values as given, as a replicating tool needs (SERVER-88750)."""
    value = ctx.body.get("bypassEmptyTsReplacement", False)
    if isinstance(value, bool):
        return value
    if is_number(value):  # IDL safeBool
        return bool(numeric_value(value))
    raise CommandError(14, f"BSON field '{ctx.name}.bypassEmptyTsReplacement' is the wrong type "
                           f"'{type_name(value)}', expected types '[bool, long, int, decimal, "
                           f"double']")


def _ordered(ctx: Context) -> bool:
    ordered = ctx.body.get("ordered", True)
    return ordered is not False


def insert_statement(ctx: Context, db: str, name: str, document: Any, raw: bytes | None,
                     target: list[Collection]) -> None:
    """Insert one statement's document; ``target`` caches the collection across a batch."""
    from mongoemu.query.update import validate_new_document
    if not isinstance(document, dict):
        raise CommandError(14, "documents must be objects")
    writer = ctx.server.writer
    if not target:
        target.append(writer.collection_for_write(ctx, db, name))
    client_raw = raw
    stored = with_id_first(document)
    if not _keeps_empty_timestamps(ctx):
        stored = fill_empty_timestamps(stored, ctx.server.clock.tick)
    raw = raw if stored is document else None
    validate_new_document(stored, len(raw) if raw is not None else None, raw=client_raw)
    writer.insert(ctx, target[0], stored, raw)


@command("insert", in_transaction=True)
def insert(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    documents = _statements(ctx, "documents")
    _keeps_empty_timestamps(ctx)  # a malformed option fails the command, not each statement
    if sink.discards(ctx, ctx.db):
        return sink.insert(ctx, name, documents)
    raw_documents = getattr(documents, "raw", None)
    result = WriteResult()
    target: list[Collection] = []

    def insert_one(index: int, document: Any) -> None:
        collection_uuid.check_statement(ctx)
        insert_statement(ctx, ctx.db, name, document,
                         raw_documents[index] if raw_documents is not None else None, target)
        result.n += 1

    result.run(ctx, documents, insert_one, commits_per_statement=False)
    ctx.server.opcounters["insert"] += result.n
    return result.reply()


def _parse_update(ctx: Context, update_spec: Any, array_filters: Any, collation: Any,
                  statement: dict[str, Any] | None = None) -> Any:
    """Parse once per statement, so a bad update fails even when nothing matches."""
    from mongoemu.query.collation import Collation
    from mongoemu.query.update import classify_update, parse_update
    if isinstance(update_spec, dict) and not _keeps_empty_timestamps(ctx) \
            and classify_update(update_spec) == "replacement":
        # Once per statement, as the server's replacement executor does when it is built.
        update_spec = fill_empty_timestamps(update_spec, ctx.server.clock.tick)
    let = dict(ctx.body.get("let") or {})
    if statement is not None and isinstance(statement.get("c"), dict):
        let.update({name: {"$literal": value} for name, value in statement["c"].items()})
    return parse_update(update_spec, array_filters=array_filters,
                        collation=Collation.from_document(collation) if collation else None,
                        variables=let or None)


def _upsert(ctx: Context, collection: Collection, query: dict[str, Any], parsed: Any) -> dict[str, Any]:
    from mongoemu.query.update import upsert_seed, validate_new_document
    document = parsed.apply(upsert_seed(query, parsed.update), is_upsert_insert=True,
                            cluster_time=ctx.server.clock.now)
    document = with_id_first(document)
    validate_new_document(document)
    ctx.server.writer.insert(ctx, collection, document)
    return document


def _check_update_statement(statement: Any) -> None:
    if not isinstance(statement, dict):
        raise CommandError(14, "update statements must be objects")
    if not isinstance(statement.get("q"), dict):
        raise CommandError(40414 if "q" not in statement else 14,
                           "BSON field 'update.updates.q' is missing but a required field")
    if "u" not in statement:
        raise CommandError(40414, "BSON field 'update.updates.u' is missing but a required field")
    if not isinstance(statement["u"], (dict, list)):
        raise CommandError(14, "BSON field 'update.updates.u' is the wrong type")


def update_statement(ctx: Context, db: str, name: str, index: int, statement: Any,
                     result: WriteResult) -> None:
    """Apply one update statement ({q, u, c, multi, upsert, ...}) to ``db.name``."""
    writer = ctx.server.writer
    _check_update_statement(statement)
    query, update_spec = statement["q"], statement["u"]
    parsed = _parse_update(ctx, update_spec, statement.get("arrayFilters"),
                           statement.get("collation"), statement)
    kind = parsed.kind
    multi = bool(statement.get("multi"))
    if multi and kind == "replacement":
        raise CommandError(9, "multi update is not supported for replacement-style "
                              "update")
    if "sort" in statement and ctx.server.config.max_wire_version < 25:
        raise CommandError(40415, "BSON field 'update.updates.sort' is an unknown field.")
    variables = _variables(ctx, statement)
    collection = ctx.catalog.collection(db, name)
    if collection is not None and collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    matched = 0
    if collection is not None:
        sort = statement.get("sort") if not multi else None
        matches = select(ctx, collection, query, sort, statement.get("collation"),
                         variables, want_position=True, hint=statement.get("hint"))
        request = UpdateRequest.of(query, statement)
        for match in matches:
            old = match.decoded()
            changes: list = []
            new = parsed.apply(old, matched_position=match.position,
                               cluster_time=ctx.server.clock.now, log=changes)
            if writer.update(ctx, collection, match.key, old, new, kind=kind,
                             modifier_log=changes, request=request):
                result.modified += 1
            matched += 1
            if not multi:
                break
    elif statement.get("hint") not in (None, {}, ""):
        raise plan.unknown_hint()
    if matched:
        result.n += matched
    elif statement.get("upsert"):
        if collection is None:
            collection = writer.collection_for_write(ctx, db, name)
        document = _upsert(ctx, collection, query, parsed)
        result.n += 1
        result.upserted.append({"index": index, "_id": document["_id"]})


@command("update", in_transaction=True)
def update(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    statements = _statements(ctx, "updates")
    _keeps_empty_timestamps(ctx)  # a malformed option fails the command, not each statement
    if sink.discards(ctx, ctx.db):
        return sink.update(ctx, name, statements)
    result = WriteResult()

    def update_one(index: int, statement: Any) -> None:
        collection_uuid.check_statement(ctx)
        update_statement(ctx, ctx.db, name, index, statement, result)

    result.run(ctx, statements, update_one)
    ctx.server.opcounters["update"] += result.n
    return result.reply(with_modified=True)


def delete_statement(ctx: Context, db: str, name: str, statement: Any,
                     result: WriteResult) -> None:
    """Apply one delete statement ({q, limit, collation, hint}) to ``db.name``."""
    writer = ctx.server.writer
    if not isinstance(statement, dict) or not isinstance(statement.get("q"), dict):
        raise CommandError(40414, "BSON field 'delete.deletes.q' is missing but a "
                                  "required field")
    limit = statement.get("limit")
    if limit not in (0, 1):
        raise CommandError(9, f"The limit field in delete objects must be 0 or 1. Got "
                              f"{limit}")
    collection = ctx.catalog.collection(db, name)
    if collection is None:
        if statement.get("hint") not in (None, {}, ""):
            raise plan.unknown_hint()
        return
    if collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    writer.check_writable(ctx, db)
    matches = select(ctx, collection, statement["q"], None, statement.get("collation"),
                     _variables(ctx, statement), hint=statement.get("hint"))
    for match in matches:
        writer.delete(ctx, collection, match.key, match.decoded())
        result.n += 1
        if limit == 1:
            break


@command("delete", in_transaction=True)
def delete(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    statements = _statements(ctx, "deletes")
    if sink.discards(ctx, ctx.db):
        return sink.delete(ctx, name, statements)
    result = WriteResult()

    def delete_one(index: int, statement: Any) -> None:
        collection_uuid.check_statement(ctx)
        delete_statement(ctx, ctx.db, name, statement, result)

    result.run(ctx, statements, delete_one)
    ctx.server.opcounters["delete"] += result.n
    return result.reply()


@command("findAndModify", "findandmodify", in_transaction=True)
def find_and_modify(ctx: Context) -> dict[str, Any]:
    name = ctx.collection_name()
    if sink.discards(ctx, ctx.db):
        sink.refuse(ctx, "findAndModify")
    body = ctx.body
    _keeps_empty_timestamps(ctx)  # parsed with the command, whatever it does
    query = _document_arg(ctx, "query") or {}
    sort = _document_arg(ctx, "sort")
    fields = _document_arg(ctx, "fields")
    remove = bool(body.get("remove"))
    update_spec = body.get("update")
    if remove and update_spec is not None:
        raise CommandError(9, "Cannot specify both an update and remove=true")
    if not remove and update_spec is None:
        raise CommandError(9, "Either an update or remove=true must be specified")
    if remove and body.get("upsert"):
        raise CommandError(9, "Cannot specify both upsert=true and remove=true ")
    if remove and body.get("new"):
        raise CommandError(9, "Cannot specify both new=true and remove=true; 'remove' always "
                              "returns the deleted document")
    if update_spec is not None and not isinstance(update_spec, (dict, list)):
        raise CommandError(14, "Update argument must be either an object or an array")
    ctx.server.failpoints.before_transactional_write(ctx)
    writer = ctx.server.writer
    variables = _variables(ctx)
    collection = ctx.catalog.collection(ctx.db, name)
    if collection is not None and collection.is_view:
        raise CommandError(166, f"Namespace {collection.ns} is a view, not a collection")
    match = None
    if collection is not None:
        match = next(select(ctx, collection, query, sort, _document_arg(ctx, "collation"),
                            variables, want_position=True, hint=body.get("hint")), None)
    elif body.get("hint") not in (None, {}, ""):
        raise plan.unknown_hint()
    projection = None
    if fields:
        from mongoemu.query.projection import Projection
        projection = Projection(fields)

    def shown(document: dict[str, Any] | None, position: int | None = None) -> Any:
        if document is None:
            return None
        return projection.apply(document, position) if projection else document

    if remove:
        if match is None:
            return {"lastErrorObject": {"n": 0}, "value": None}
        old = match.decoded()
        writer.delete(ctx, collection, match.key, old)
        return {"lastErrorObject": {"n": 1}, "value": shown(old, match.position)}
    parsed = _parse_update(ctx, update_spec, body.get("arrayFilters"), body.get("collation"))
    if match is None:
        if not body.get("upsert"):
            return {"lastErrorObject": {"n": 0, "updatedExisting": False}, "value": None}
        if collection is None:
            collection = writer.collection_for_write(ctx, ctx.db, name)
        document = _upsert(ctx, collection, query, parsed)
        return {"lastErrorObject": {"n": 1, "updatedExisting": False,
                                    "upserted": document["_id"]},
                "value": shown(document) if body.get("new") else None}
    old = match.decoded()
    changes: list = []
    new = parsed.apply(old, matched_position=match.position, cluster_time=ctx.server.clock.now,
                       log=changes)
    writer.update(ctx, collection, match.key, old, new, kind=parsed.kind, modifier_log=changes,
                  request=UpdateRequest.of(query, body))
    return {"lastErrorObject": {"n": 1, "updatedExisting": True},
            "value": shown(new if body.get("new") else old, match.position)}

