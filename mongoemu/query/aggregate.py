"""The aggregation pipeline: parse every stage up front, then stream documents through them.

:func:`run_pipeline` validates and binds the whole pipeline before returning its iterator, so a bad
stage fails the ``aggregate`` command itself (as on the server) rather than the first ``getMore``;
:func:`validate_pipeline` is the same parse without running (views, change streams).

Stages are dispatched through :data:`_STAGES` (name → parser). A parser checks the stage's
specification and returns a *stage*: a function of the run-time state (:class:`_Runtime`:
collation, variables, context hooks) producing a *runner* ``Iterator[dict] → Iterator[dict]``.
Runners are generators wherever the stage allows streaming ($match, $project, $unwind, ...);
blocking stages ($group, $sort, $facet, ...) consume their input first, as they must.

Everything outside the documents — other collections, ``$out``/``$merge`` writes, statistics —
goes through the :class:`PipelineContext` the server passes in.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from bson.int64 import Int64
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import MISSING, deep_copy, is_number, numeric_value, type_name
from mongoemu.errors import CommandError
from mongoemu.query.expressions import (
    K_INT,
    REDACT_DESCEND,
    REDACT_KEEP,
    REDACT_PRUNE,
    Compiled,
    Env,
    NumericSum,
    add_to_date,
    check_field_name,
    compile_expression,
    date_from_millis,
    date_millis,
    is_date,
    is_operator_object,
    make_number,
    merge_object_into,
    n_argument,
    now_millis,
    parse_timezone,
    show,
    truthy,
    validate_variable_name,
    value_key,
)

Doc = dict[str, Any]
Runner = Callable[[Iterator[Doc]], Iterator[Doc]]


class PipelineContext(Protocol):
    """What the server supplies to a pipeline run.

    ``collation`` is a :class:`mongoemu.query.collation.Collation` (or ``None``; a collation
    *document* is accepted too). ``variables`` is the command's raw ``let`` document: the pipeline
    evaluates it once against an empty document. ``now``/``cluster_time`` pin ``$$NOW`` and
    ``$$CLUSTER_TIME`` for the whole command (``now`` defaults to the wall clock; without a
    ``cluster_time`` the variable is unavailable, as on a standalone). ``current_db`` resolves
    collection names given without a database.
    """

    collation: Any
    variables: dict[str, Any] | None
    now: datetime.datetime | None
    cluster_time: Timestamp | None
    current_db: str

    def read_collection(self, db: str, coll: str) -> Iterable[Doc]:
        """Documents of ``db.coll`` ($lookup, $graphLookup, $unionWith); empty if absent.

        Returned documents are only read, never modified."""

    def write_out(self, db: str, coll: str, docs: list[Doc]) -> None:
        """$out: atomically replace ``db.coll`` with ``docs`` (keeping its indexes)."""

    def merge_into(self, db: str, coll: str, docs: list[Doc], on: list[str],
                   when_matched: str | list[Doc], when_not_matched: str,
                   let: dict[str, Any] | None) -> None:
        """$merge. ``when_matched`` is "replace" | "keepExisting" | "merge" | "fail" or an update
        pipeline; run that with :func:`apply_merge_pipeline` (``let`` is the raw option, ``None``
        meaning the default ``{new: "$$ROOT"}``). ``when_not_matched`` is "insert" | "discard" |
        "fail". Raise :class:`CommandError` (e.g. 11000 for "fail") as the server would."""

    def coll_stats(self, options: dict[str, Any]) -> list[Doc]:
        """$collStats: the stage's output documents for the aggregated collection."""

    def index_stats(self) -> list[Doc]:
        """$indexStats: one document per index of the aggregated collection."""

    def server_stage(self, name: str, spec: Any) -> Iterable[Doc]:
        """Source stages answered from server state: $listLocalSessions, $listSessions,
        $currentOp, $listCatalog, $planCacheStats, $querySettings, $queryStats."""


@dataclass
class _Runtime:
    """Per-run state shared by every stage: the context, the collation and the variables."""

    ctx: PipelineContext | None
    collation: Any
    variables: dict[str, Any] = field(default_factory=dict)

    def env(self, doc: Any) -> Env:
        return Env(doc, self.variables, self.collation)

    def with_variables(self, extra: dict[str, Any]) -> "_Runtime":
        return _Runtime(self.ctx, self.collation, {**self.variables, **extra})

    def context(self, stage: str) -> PipelineContext:
        if self.ctx is None:
            raise CommandError(115, f"{stage} needs a server context, which this pipeline run has none of")
        return self.ctx

    def namespace(self, db: str | None, coll: str, stage: str) -> tuple[str, str]:
        """``db.coll``, a missing database meaning the one the command runs in."""
        return (db or self.context(stage).current_db, coll)

    def read(self, db: str | None, coll: str | None, stage: str) -> list[Doc]:
        if coll is None:  # the sub-pipeline starts with $documents
            return []
        return list(self.context(stage).read_collection(*self.namespace(db, coll, stage)))


Stage = Callable[[_Runtime], Runner]


def _coerce_collation(value: Any) -> Any:
    from mongoemu.query.collation import effective, parse_collation

    if isinstance(value, dict):
        return parse_collation(value)
    return effective(value)


def _runtime(ctx: PipelineContext | None) -> _Runtime:
    collation = _coerce_collation(getattr(ctx, "collation", None))
    variables: dict[str, Any] = {"NOW": getattr(ctx, "now", None) or now_millis()}
    cluster_time = getattr(ctx, "cluster_time", None)
    if cluster_time is not None:
        variables["CLUSTER_TIME"] = cluster_time
    let = getattr(ctx, "variables", None) or {}
    if not isinstance(let, dict):
        raise CommandError(14, f"BSON field 'let' is the wrong type '{type_name(let)}', expected type 'object'")
    runtime = _Runtime(ctx, collation, variables)
    empty = runtime.env({})
    for name, spec in let.items():
        validate_variable_name(name)
        variables[name] = compile_expression(spec)(empty)
    return runtime


def run_pipeline(docs: Iterable[Doc], pipeline: list[Doc], ctx: PipelineContext | None = None) -> Iterator[Doc]:
    """Run ``pipeline`` over ``docs``. Parsing and binding happen now; documents flow lazily."""
    stages = _parse_pipeline(pipeline)
    return _execute(stages, docs, _runtime(ctx))


def validate_pipeline(pipeline: Any) -> None:
    """Raise the :class:`CommandError` :func:`run_pipeline` would raise for ``pipeline``."""
    _parse_pipeline(pipeline)


def apply_merge_pipeline(existing: Doc, incoming: Doc, pipeline: list[Doc], let: dict[str, Any] | None,
                         ctx: PipelineContext | None = None) -> Doc:
    """The document $merge's ``whenMatched: [pipeline]`` makes of ``existing``.

    ``let`` is $merge's raw option; its expressions (default ``{new: "$$ROOT"}``) are evaluated
    against the incoming document and visible to the pipeline as variables.
    """
    runtime = _runtime(ctx)
    env = runtime.env(incoming)
    variables = {name: compile_expression(spec)(env) for name, spec in (let or {"new": "$$ROOT"}).items()}
    results = list(_execute(_parse_pipeline(pipeline, merge=True), [existing], runtime.with_variables(variables)))
    return results[0] if results else existing


def _execute(stages: list[Stage], docs: Iterable[Doc], runtime: _Runtime) -> Iterator[Doc]:
    runners = [stage(runtime) for stage in stages]  # bind eagerly: errors surface before any document
    stream: Iterator[Doc] = iter(docs)
    for runner in runners:
        stream = runner(stream)
    return stream


# --------------------------------------------------------------------------------------------
# Pipeline parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Context a stage parser passes on to the pipelines it nests."""

    sub: bool = False  # inside a $lookup/$unionWith sub-pipeline


StageParser = Callable[[Any, _Where], Stage]
_STAGES: dict[str, StageParser] = {}

_FIRST_ONLY = frozenset({
    "$documents", "$collStats", "$indexStats", "$changeStream", "$listLocalSessions", "$listSessions",
    "$currentOp", "$listCatalog", "$planCacheStats", "$querySettings", "$queryStats",
})
_LAST_ONLY = frozenset({"$out", "$merge", "$changeStreamSplitLargeEvent"})
_NOT_IN_FACET = _FIRST_ONLY | _LAST_ONLY | {"$facet"}
_NOT_IN_SUB_PIPELINE = frozenset({"$out", "$merge", "$changeStream", "$changeStreamSplitLargeEvent"})
_MERGE_PIPELINE_STAGES = frozenset({"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"})
_UNSUPPORTED = frozenset({"$geoNear", "$search", "$searchMeta", "$vectorSearch", "$listSearchIndexes",
                          "$rankFusion", "$scoreFusion"})


def _stage(*names: str) -> Callable[[StageParser], StageParser]:
    def register(parser: StageParser) -> StageParser:
        for name in names:
            _STAGES[name] = parser
        return parser

    return register


def _parse_pipeline(pipeline: Any, *, facet: bool = False, sub: bool = False, merge: bool = False) -> list[Stage]:
    if not isinstance(pipeline, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    stages: list[Stage] = []
    for index, spec in enumerate(pipeline):
        if not isinstance(spec, dict):
            raise CommandError(14, "Each element of the 'pipeline' array must be an object")
        if len(spec) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain exactly one field.")
        ((name, argument),) = spec.items()
        if name in _UNSUPPORTED:
            raise CommandError(115, f"{name} is not supported by the emulator")
        parser = _STAGES.get(name)
        if parser is None:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        _check_placement(name, index, len(pipeline), facet=facet, sub=sub, merge=merge)
        stage = parser(argument, _Where(sub))
        # $sort directly followed by $limit only needs to keep the top documents.
        if name == "$limit" and stages and isinstance(stages[-1], _SortStage) and stages[-1].limit is None:
            stages[-1].limit = _limit_value(argument)
        stages.append(stage)
    return stages


def _check_placement(name: str, index: int, count: int, *, facet: bool, sub: bool, merge: bool) -> None:
    if merge and name not in _MERGE_PIPELINE_STAGES:
        raise CommandError(
            51187,
            f"{name} is not allowed to be used within a $merge's 'whenMatched' pipeline",
        )
    if facet and name in _NOT_IN_FACET:
        raise CommandError(40600, f"{name} is not allowed to be used within a $facet stage")
    if sub and name in _NOT_IN_SUB_PIPELINE:
        raise CommandError(51047, f"{name} is not allowed within a $lookup's sub-pipeline")
    if name in _FIRST_ONLY and index != 0:
        raise CommandError(40602, f"{name} is only valid as the first stage in a pipeline")
    if name in _LAST_ONLY and index != count - 1:
        raise CommandError(40601, f"{name} can only be the final stage in the pipeline")


def _streaming(fn: Callable[[Doc, _Runtime], Iterable[Doc]]) -> Stage:
    """A stage mapping each input document to zero or more output documents."""

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            for doc in docs:
                yield from fn(doc, runtime)

        return run

    return stage


def _is_expression_spec(spec: Any) -> bool:
    """A $-path string or an operator object: what groupBy-style options must be."""
    return (isinstance(spec, str) and spec.startswith("$")) or is_operator_object(spec)


# --------------------------------------------------------------------------------------------
# Nested field helpers (no array traversal: the document-model reading of a dotted path)
# --------------------------------------------------------------------------------------------


def _split(path: str) -> list[str]:
    parts = path.split(".")
    for part in parts:
        check_field_name(part)
    return parts


def _get_nested(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(doc, dict):
            return MISSING
        doc = doc.get(part, MISSING)
    return doc


def _set_nested(doc: Doc, parts: list[str], value: Any) -> Doc:
    """A copy of ``doc`` with ``parts`` set to ``value`` (removed when MISSING); shares the rest."""
    out = dict(doc)
    head = parts[0]
    if len(parts) == 1:
        if value is MISSING:
            out.pop(head, None)
        else:
            out[head] = value
        return out
    child = out.get(head)
    if not isinstance(child, dict):
        if value is MISSING:
            return out
        child = {}
    out[head] = _set_nested(child, parts[1:], value)
    return out


# --------------------------------------------------------------------------------------------
# Projections: $project, $addFields/$set, $unset
# --------------------------------------------------------------------------------------------


class _ProjectionNode:
    """One level of a projection: included/excluded leaves, computed fields and sub-levels."""

    __slots__ = ("leaves", "children", "computed", "sequence", "order")

    def __init__(self) -> None:
        self.leaves: dict[str, bool] = {}  # field → True (include) / False (exclude)
        self.children: dict[str, _ProjectionNode] = {}
        self.computed: dict[str, Compiled] = {}
        self.sequence: list[str] = []  # names in specification order
        self.order: list[str] = []  # computed fields and computing children, in that order

    def has_computed(self) -> bool:
        return bool(self.order)

    def finish(self) -> None:
        for child in self.children.values():
            child.finish()
        self.order = [name for name in self.sequence
                      if name in self.computed or (name in self.children and self.children[name].has_computed())]


class _Projection:
    """A parsed $project ("project" flavour) or $addFields ("add" flavour) specification."""

    def __init__(self, spec: dict, flavour: str) -> None:
        self.flavour = flavour
        self.root = _ProjectionNode()
        self.mode: str | None = "add" if flavour == "add" else None
        self._fill(self.root, spec, "")
        if self.mode is None:
            # Only _id was mentioned: {_id: 0} is an exclusion, {_id: 1} an inclusion.
            self.mode = "include" if self.root.leaves.get("_id", False) else "exclude"
        if self.mode == "include" and "_id" not in self.root.leaves and "_id" not in self.root.children \
                and "_id" not in self.root.computed:
            self.root.leaves["_id"] = True
        self.root.finish()

    def _error(self, code: int, message: str) -> CommandError:
        return CommandError(code, f"Invalid $project :: caused by :: {message}")

    def _set_mode(self, mode: str, path: str) -> None:
        if self.mode is None:
            self.mode = mode
        elif self.mode != mode:
            if self.mode == "include":
                raise self._error(31253, f"Cannot do exclusion on field {path} in inclusion projection")
            raise self._error(31254, f"Cannot do inclusion on field {path} in exclusion projection")

    def _fill(self, node: _ProjectionNode, spec: dict, prefix: str) -> None:
        for key, value in spec.items():
            parts = _split(key)
            path = prefix + key
            target = node
            for part in parts[:-1]:
                if part in target.leaves or part in target.computed:
                    raise CommandError(31250, f"Path collision at {path}")
                if part not in target.children:
                    target.children[part] = _ProjectionNode()
                    target.sequence.append(part)
                target = target.children[part]
            name = parts[-1]
            if name in target.leaves or name in target.computed:
                raise CommandError(31250, f"Path collision at {path}")
            if isinstance(value, dict) and value and not is_operator_object(value):
                if name not in target.children:
                    target.children[name] = _ProjectionNode()
                    target.sequence.append(name)
                self._fill(target.children[name], value, path + ".")
                continue
            if name in target.children:
                raise CommandError(31250, f"Path collision at {path}")
            target.sequence.append(name)
            if self.flavour == "project" and isinstance(value, dict) and not value:
                raise self._error(51270, f"An empty sub-projection is not a valid value. Found empty object at path {path}")
            if self.flavour == "project" and (isinstance(value, bool) or is_number(value)):
                include = truthy(value)
                target.leaves[name] = include
                if path != "_id":
                    self._set_mode("include" if include else "exclude", path)
                continue
            if self.mode == "exclude":
                raise self._error(31252, "Cannot use expression other than $meta in exclusion projection")
            if self.flavour == "project":
                self._set_mode("include", path)
            target.computed[name] = compile_expression(value)

    def apply(self, doc: Doc, runtime: _Runtime) -> Doc:
        if self.mode == "exclude":
            return _exclude_fields(self.root, doc)
        if self.mode == "include":
            out = _include_fields(self.root, doc)
        else:
            out = dict(doc)
        if self.root.has_computed():
            _apply_computed(self.root, out, runtime.env(doc))
        return out


def _include_fields(node: _ProjectionNode, doc: Doc) -> Doc:
    out: Doc = {}
    for key, value in doc.items():
        if node.leaves.get(key) is True:
            out[key] = value
        elif key in node.children:
            child = node.children[key]
            projected = _include_value(child, value)
            # A computing child keeps its place even when nothing was projected into it.
            if projected is not MISSING or child.has_computed():
                out[key] = projected
    return out


def _include_value(node: _ProjectionNode, value: Any) -> Any:
    if isinstance(value, dict):
        return _include_fields(node, value)
    if isinstance(value, list):
        return [item for item in (_include_value(node, element) for element in value) if item is not MISSING]
    return MISSING


def _apply_computed(node: _ProjectionNode, out: Doc, env: Env) -> None:
    for name in node.order:
        if name in node.computed:
            value = node.computed[name](env)
            if value is MISSING:
                out.pop(name, None)
            else:
                out[name] = value
        else:
            out[name] = _computed_value(node.children[name], out.get(name, MISSING), env)


def _computed_value(node: _ProjectionNode, value: Any, env: Env) -> Any:
    # Like the server: sub-documents get the fields, arrays recurse, anything else is replaced by
    # a document holding just the computed fields ({"a.b": 1} applied to {a: 2} gives {a: {b: 1}}).
    if isinstance(value, list):
        return [_computed_value(node, element, env) for element in value]
    out = dict(value) if isinstance(value, dict) else {}
    _apply_computed(node, out, env)
    return out


def _exclude_fields(node: _ProjectionNode, doc: Doc) -> Doc:
    out: Doc = {}
    for key, value in doc.items():
        if node.leaves.get(key) is False:
            continue
        child = node.children.get(key)
        out[key] = value if child is None else _exclude_value(child, value)
    return out


def _exclude_value(node: _ProjectionNode, value: Any) -> Any:
    if isinstance(value, dict):
        return _exclude_fields(node, value)
    if isinstance(value, list):
        return [_exclude_value(node, element) for element in value]
    return value


def _projection_stage(projection: _Projection) -> Stage:
    return _streaming(lambda doc, runtime: (projection.apply(doc, runtime),))


@_stage("$project")
def _parse_project(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(15969, "$project specification must be an object")
    if not spec:
        raise CommandError(51272, "Invalid $project :: caused by :: projection specification must have at least one field")
    return _projection_stage(_Projection(spec, "project"))


@_stage("$addFields", "$set")
def _parse_add_fields(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40272, "$addFields specification stage must be an object, got " + type_name(spec))
    return _projection_stage(_Projection(spec, "add"))


@_stage("$unset")
def _parse_unset(spec: Any, where: _Where) -> Stage:
    fields = [spec] if isinstance(spec, str) else spec
    if not isinstance(fields, list) or not fields:
        raise CommandError(31119, "$unset specification must be a string or an array with at least one field")
    if not all(isinstance(name, str) for name in fields):
        raise CommandError(31120, "$unset specification must be a string or an array containing only string values")
    return _projection_stage(_Projection({name: 0 for name in fields}, "project"))


# --------------------------------------------------------------------------------------------
# Filtering, reshaping and paging
# --------------------------------------------------------------------------------------------


@_stage("$match")
def _parse_match(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(15959, "the match filter must be an expression in an object")
    from mongoemu.query.matcher import Matcher

    Matcher(spec)  # reject invalid filters at parse time, like the server

    def stage(runtime: _Runtime) -> Runner:
        matcher = Matcher(spec, runtime.collation, runtime.variables)
        return lambda docs: (doc for doc in docs if matcher.matches(doc))

    return stage


def _new_root(name: str, fn: Compiled) -> Callable[[Doc, _Runtime], Iterable[Doc]]:
    def replace(doc: Doc, runtime: _Runtime) -> Iterable[Doc]:
        value = fn(runtime.env(doc))
        if not isinstance(value, dict):
            raise CommandError(
                40228,
                f"'{name}' expression must evaluate to an object, but resulting value was: {show(value)}. "
                f"Type of resulting value: '{type_name(value)}'. Input document: {show(doc)}",
            )
        return (value,)

    return replace


@_stage("$replaceRoot")
def _parse_replace_root(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40229, f"expected an object as specification for $replaceRoot stage, got {type_name(spec)}")
    for name in spec:
        if name != "newRoot":
            raise CommandError(40415, f"BSON field '$replaceRoot.{name}' is an unknown field.")
    if "newRoot" not in spec:
        raise CommandError(40414, "BSON field '$replaceRoot.newRoot' is missing but a required field")
    return _streaming(_new_root("newRoot", compile_expression(spec["newRoot"])))


@_stage("$replaceWith")
def _parse_replace_with(spec: Any, where: _Where) -> Stage:
    return _streaming(_new_root("replacement document", compile_expression(spec)))


@_stage("$_internalApplyOplogUpdate")
def _parse_apply_oplog_update(spec: Any, where: _Where) -> Stage:
    """An oplog entry's update (a change stream's ``rawUpdateDescription``) applied to each
    document as oplog application applies it: a ``$v: 2`` delta (fields in its ``i`` section
    move to the end, in order), a modifier-style ``$v: 1`` update, or a replacement."""
    stage = "$_internalApplyOplogUpdate"
    if not isinstance(spec, dict):
        raise CommandError(6315901, f"Argument to {stage} stage must be an object, but found "
                                    f"type: {type_name(spec)}")
    for name in spec:
        if name != "oplogUpdate":
            raise CommandError(40415, f"BSON field '{stage}.{name}' is an unknown field.")
    if "oplogUpdate" not in spec:
        raise CommandError(40414, f"BSON field '{stage}.oplogUpdate' is missing but a required "
                                  "field")
    update = spec["oplogUpdate"]
    if not isinstance(update, dict):
        raise CommandError(14, f"BSON field '{stage}.oplogUpdate' is the wrong type "
                               f"'{type_name(update)}', expected type 'object'")
    apply = _oplog_update_applier(update)
    return _streaming(lambda doc, runtime: (apply(doc),))


def _oplog_update_applier(update: dict[str, Any]) -> Callable[[Doc], Doc]:
    """UpdateModification::parseFromOplogEntry, then the update driver in oplog-application
    mode (lenient: a delta's sub-diff of a field that is not a document or array is skipped)."""
    from mongoemu.query.update import apply_update  # lazy: the update module imports this one
    from mongoemu.query.update_description import apply_diff

    version = update.get("$v")
    if version == 2:
        diff = update.get("diff")
        if not isinstance(diff, dict):
            raise CommandError(4772601, "Expected 'diff' field to be an object, instead got "
                                        f"type: {type_name(diff)}")
        return lambda doc: apply_diff(doc, diff)
    modifiers = {name: value for name, value in update.items() if name != "$v"}
    if version not in (None, 1) or (version == 1 and not modifiers):
        raise CommandError(4772600, f"Unrecognized oplog update version: {version!r}")
    if modifiers and all(name.startswith("$") for name in modifiers):
        return lambda doc: apply_update(doc, modifiers)

    def replace(doc: Doc) -> Doc:
        return {"_id": deep_copy(doc["_id"]), **deep_copy(update)} \
            if "_id" in doc and "_id" not in update else deep_copy(update)

    return replace


class _SortStage:
    """$sort; when followed by $limit it keeps only the top ``limit`` documents."""

    def __init__(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise CommandError(15973, "the $sort key specification must be an object")
        if not spec:
            raise CommandError(15976, "$sort stage must have at least one sort key")
        from mongoemu.query.sorting import make_sort_key

        make_sort_key(spec)  # validates the directions
        self.spec = spec
        self.limit: int | None = None

    def __call__(self, runtime: _Runtime) -> Runner:
        from mongoemu.query.sorting import make_sort_key

        key = make_sort_key(self.spec, runtime.collation)
        limit = self.limit

        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            if limit is not None:
                return iter(heapq.nsmallest(limit, docs, key=key))
            return iter(sorted(docs, key=key))

        return run


@_stage("$sort")
def _parse_sort(spec: Any, where: _Where) -> Stage:
    return _SortStage(spec)


def _integral(value: Any) -> int | None:
    if not is_number(value):
        return None
    number = numeric_value(value)
    if number != number or number in (math.inf, -math.inf):
        return None
    if int(number) != number:
        return None
    return int(number)


def _limit_value(spec: Any) -> int:
    if not is_number(spec):
        raise CommandError(15957, "the limit must be specified as a number")
    count = _integral(spec)
    if count is None:
        raise CommandError(15957, f"invalid argument to $limit stage: Cannot represent as a 64-bit integer: $limit: {show(spec)}")
    if count <= 0:
        raise CommandError(15958, "the limit must be positive")
    return count


@_stage("$limit")
def _parse_limit(spec: Any, where: _Where) -> Stage:
    count = _limit_value(spec)
    return lambda runtime: (lambda docs: itertools.islice(docs, count))


@_stage("$skip")
def _parse_skip(spec: Any, where: _Where) -> Stage:
    if not is_number(spec):
        raise CommandError(15972, "Argument to $skip must be a number")
    count = _integral(spec)
    if count is None:
        raise CommandError(5107200, f"invalid argument to $skip stage: Cannot represent as a 64-bit integer: $skip: {show(spec)}")
    if count < 0:
        raise CommandError(15956, "Argument to $skip cannot be negative")
    return lambda runtime: (lambda docs: itertools.islice(docs, count, None))


@_stage("$count")
def _parse_count(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, str) or not spec:
        raise CommandError(40156, "the count field must be a non-empty string")
    if spec.startswith("$"):
        raise CommandError(40158, "the count field cannot be a $-prefixed path")
    if "." in spec:
        raise CommandError(40160, "the count field cannot contain '.'")

    def run(docs: Iterator[Doc]) -> Iterator[Doc]:
        total = sum(1 for _ in docs)
        if total:
            yield {spec: make_number(total, K_INT)}

    return lambda runtime: run


@_stage("$unwind")
def _parse_unwind(spec: Any, where: _Where) -> Stage:
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise CommandError(15981, f"expected either a string or an object as specification for $unwind stage, got {type_name(spec)}")
    for name in spec:
        if name not in ("path", "includeArrayIndex", "preserveNullAndEmptyArrays"):
            raise CommandError(28811, f"unrecognized option to $unwind stage: {name}")
    if "path" not in spec:
        raise CommandError(28812, "no path specified to $unwind stage")
    path = spec["path"]
    if not isinstance(path, str):
        raise CommandError(28808, f"expected a string as the path for $unwind stage, got {type_name(path)}")
    if not path.startswith("$"):
        raise CommandError(28818, f"path option to $unwind stage should be prefixed with a '$': {path}")
    parts = _split(path[1:])
    index_field = spec.get("includeArrayIndex")
    index_parts = None
    if index_field is not None:
        if not isinstance(index_field, str) or not index_field:
            raise CommandError(28810, "expected a non-empty string for the includeArrayIndex  option to $unwind stage")
        if index_field.startswith("$"):
            raise CommandError(28822, f"includeArrayIndex option to $unwind stage should not be prefixed with a '$': {index_field}")
        index_parts = _split(index_field)
    preserve = spec.get("preserveNullAndEmptyArrays", False)
    if not isinstance(preserve, bool):
        raise CommandError(28809, f"expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage, got {type_name(preserve)}")

    def with_index(doc: Doc, index: Any) -> Doc:
        return doc if index_parts is None else _set_nested(doc, index_parts, index)

    def unwind(doc: Doc, runtime: _Runtime) -> Iterable[Doc]:
        value = _get_nested(doc, parts)
        if isinstance(value, list):
            if value:
                return (with_index(_set_nested(doc, parts, element), Int64(i)) for i, element in enumerate(value))
            # An empty array is preserved as a document without the field.
            return (with_index(_set_nested(doc, parts, MISSING), None),) if preserve else ()
        if value is None or value is MISSING:
            return (with_index(doc, None),) if preserve else ()
        return (with_index(doc, None),)

    return _streaming(unwind)


@_stage("$sample")
def _parse_sample(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(28745, "the $sample stage specification must be an object")
    for name in spec:
        if name != "size":
            raise CommandError(28748, f"unrecognized option to $sample: {name}")
    if "size" not in spec:
        raise CommandError(28749, "$sample stage must specify a size")
    size = spec["size"]
    if not is_number(size):
        raise CommandError(28746, "size argument to $sample must be a number")
    if numeric_value(size) < 0:
        raise CommandError(28747, "size argument to $sample must not be negative")
    count = int(numeric_value(size))

    def run(docs: Iterator[Doc]) -> Iterator[Doc]:
        pool = list(docs)
        return iter(random.sample(pool, min(count, len(pool))))

    return lambda runtime: run


# --------------------------------------------------------------------------------------------
# Accumulators ($group, $bucket, $bucketAuto, $setWindowFields)
# --------------------------------------------------------------------------------------------


class _Accumulator:
    """One accumulator's state for one group (or window)."""

    __slots__ = ()

    def feed(self, env: Env) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError


# Builds a fresh accumulator for a group, given the run-time state and the group's _id.
AccumulatorSpec = Callable[[_Runtime, Any], _Accumulator]
_ACCUMULATORS: dict[str, Callable[[str, Any], AccumulatorSpec]] = {}


def _accumulator(*names: str) -> Callable[[Callable[[str, Any], AccumulatorSpec]], Callable[[str, Any], AccumulatorSpec]]:
    def register(parser: Callable[[str, Any], AccumulatorSpec]) -> Callable[[str, Any], AccumulatorSpec]:
        for name in names:
            _ACCUMULATORS[name] = parser
        return parser

    return register


class _Sum(_Accumulator):
    __slots__ = ("arg", "total", "average")

    def __init__(self, arg: Compiled, average: bool) -> None:
        self.arg = arg
        self.total = NumericSum()
        self.average = average

    def feed(self, env: Env) -> None:
        value = self.arg(env)
        # Non-numeric values (arrays included) are ignored, unlike in the expression form.
        if is_number(value):
            self.total.add(value)

    def result(self) -> Any:
        return self.total.average() if self.average else self.total.result()


@_accumulator("$sum", "$avg")
def _parse_sum(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _Sum(fn, op == "$avg")


class _Count(_Accumulator):
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def feed(self, env: Env) -> None:
        self.count += 1

    def result(self) -> Any:
        return make_number(self.count, K_INT)


@_accumulator("$count")
def _parse_count_accumulator(op: str, arg: Any) -> AccumulatorSpec:
    if arg != {}:
        raise CommandError(40181, "$count takes no arguments, i.e. $count:{}")
    return lambda runtime, group_id: _Count()


class _Extreme(_Accumulator):
    __slots__ = ("arg", "largest", "best", "best_key")

    def __init__(self, arg: Compiled, largest: bool) -> None:
        self.arg = arg
        self.largest = largest
        self.best: Any = None
        self.best_key: tuple | None = None

    def feed(self, env: Env) -> None:
        value = self.arg(env)
        if value is None or value is MISSING:
            return
        key = env.key(value)
        if self.best_key is None or (key > self.best_key if self.largest else key < self.best_key):
            self.best, self.best_key = value, key

    def result(self) -> Any:
        return self.best


@_accumulator("$min", "$max")
def _parse_extreme(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _Extreme(fn, op == "$max")


class _FirstLast(_Accumulator):
    __slots__ = ("arg", "last", "value", "seen")

    def __init__(self, arg: Compiled, last: bool) -> None:
        self.arg = arg
        self.last = last
        self.value: Any = None
        self.seen = False

    def feed(self, env: Env) -> None:
        if self.last or not self.seen:
            self.value = self.arg(env)
            self.seen = True

    def result(self) -> Any:
        return None if self.value is MISSING else self.value


@_accumulator("$first", "$last")
def _parse_first_last(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _FirstLast(fn, op == "$last")


class _Push(_Accumulator):
    __slots__ = ("arg", "values", "keys")

    def __init__(self, arg: Compiled, distinct: bool) -> None:
        self.arg = arg
        self.values: list = []
        self.keys: set | None = set() if distinct else None

    def feed(self, env: Env) -> None:
        value = self.arg(env)
        if value is MISSING:
            return
        if self.keys is not None:
            key = env.key(value)
            if key in self.keys:
                return
            self.keys.add(key)
        self.values.append(value)

    def result(self) -> Any:
        return self.values


@_accumulator("$push", "$addToSet")
def _parse_push(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _Push(fn, op == "$addToSet")


class _MergeObjects(_Accumulator):
    __slots__ = ("arg", "merged")

    def __init__(self, arg: Compiled) -> None:
        self.arg = arg
        self.merged: Doc = {}

    def feed(self, env: Env) -> None:
        merge_object_into(self.merged, self.arg(env))

    def result(self) -> Any:
        return self.merged


@_accumulator("$mergeObjects")
def _parse_merge_objects(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _MergeObjects(fn)


class _StdDev(_Accumulator):
    """Welford's online variance."""

    __slots__ = ("arg", "sample", "count", "mean", "m2")

    def __init__(self, arg: Compiled, sample: bool) -> None:
        self.arg = arg
        self.sample = sample
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def feed(self, env: Env) -> None:
        value = self.arg(env)
        if not is_number(value):
            return
        x = float(numeric_value(value))
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def result(self) -> Any:
        if self.count == 0 or (self.sample and self.count < 2):
            return None
        return math.sqrt(self.m2 / (self.count - 1 if self.sample else self.count))


@_accumulator("$stdDevPop", "$stdDevSamp")
def _parse_std_dev(op: str, arg: Any) -> AccumulatorSpec:
    fn = compile_expression(arg)
    return lambda runtime, group_id: _StdDev(fn, op == "$stdDevSamp")


def _evaluate_n(fn: Compiled, runtime: _Runtime, group_id: Any) -> int:
    # 'n' may depend on the group key only, so it is evaluated against {_id: <key>}.
    return n_argument(fn(runtime.env({"_id": group_id} if group_id is not MISSING else {})))


class _Ranked(_Accumulator):
    """$top/$bottom/$topN/$bottomN (sorted by a key) and $firstN/$lastN/$maxN/$minN.

    Values are ordered by ``key`` (descending when ``reverse``); the first ``count`` are kept,
    or the last ``count`` when ``from_end`` ($bottom*: the end of the sortBy order, in that order).
    """

    __slots__ = ("key", "output", "count", "single", "reverse", "from_end", "skip_null", "items")

    def __init__(self, key: Callable[[Env, Any], Any], output: Compiled, count: int, *, single: bool = False,
                 reverse: bool = False, from_end: bool = False, skip_null: bool = False) -> None:
        self.key = key
        self.output = output
        self.count = count
        self.single = single
        self.reverse = reverse
        self.from_end = from_end
        self.skip_null = skip_null
        self.items: list[tuple[Any, Any]] = []

    def feed(self, env: Env) -> None:
        value = self.output(env)
        if self.skip_null and (value is None or value is MISSING):
            return
        self.items.append((self.key(env, value), None if value is MISSING else value))

    def result(self) -> Any:
        ordered = sorted(self.items, key=lambda item: item[0], reverse=self.reverse)
        kept = ordered[-self.count:] if self.from_end else ordered[:self.count]
        values = [value for _, value in kept]
        if self.single:
            return values[0] if values else None
        return values


# name → (keeps the end of the sortBy order, returns a single value)
_SORTED_ACCUMULATORS = {"$top": (False, True), "$bottom": (True, True), "$topN": (False, False),
                        "$bottomN": (True, False)}


@_accumulator(*_SORTED_ACCUMULATORS)
def _parse_top_bottom(op: str, arg: Any) -> AccumulatorSpec:
    from_end, single = _SORTED_ACCUMULATORS[op]
    allowed = ("sortBy", "output") if single else ("sortBy", "output", "n")
    if not isinstance(arg, dict):
        raise CommandError(5788001, f"specification must be an object; found {show(arg)}")
    for name in arg:
        if name not in allowed:
            raise CommandError(5788002, f"Unknown argument to {op} '{name}'")
    for name in allowed:
        if name not in arg:
            raise CommandError(5788003, f"Missing value for '{name}'")
    from mongoemu.query.sorting import make_sort_key

    if not isinstance(arg["sortBy"], dict):
        raise CommandError(5788004, f"'sortBy' must be an object, found type {type_name(arg['sortBy'])}")
    make_sort_key(arg["sortBy"])
    output = compile_expression(arg["output"])
    count_fn = compile_expression(arg["n"]) if not single else None

    def build(runtime: _Runtime, group_id: Any) -> _Accumulator:
        doc_key = make_sort_key(arg["sortBy"], runtime.collation)
        count = 1 if count_fn is None else _evaluate_n(count_fn, runtime, group_id)
        return _Ranked(lambda env, value: doc_key(env.current), output, count, single=single, from_end=from_end)

    return build


@_accumulator("$firstN", "$lastN", "$maxN", "$minN")
def _parse_n_accumulator(op: str, arg: Any) -> AccumulatorSpec:
    if not isinstance(arg, dict):
        raise CommandError(5787801, f"specification must be an object; found {show(arg)}")
    for name in arg:
        if name not in ("input", "n"):
            raise CommandError(5787901, f"Unknown argument for 'n' operator: {name}")
    for name in ("input", "n"):
        if name not in arg:
            raise CommandError(5787906 if name == "n" else 5787907, f"Missing value for '{name}'")
    output = compile_expression(arg["input"])
    count_fn = compile_expression(arg["n"])

    def build(runtime: _Runtime, group_id: Any) -> _Accumulator:
        count = _evaluate_n(count_fn, runtime, group_id)
        if op in ("$firstN", "$lastN"):
            # Input order: every key is equal and the sort is stable.
            return _Ranked(lambda env, value: 0, output, count, from_end=op == "$lastN")
        return _Ranked(lambda env, value: env.key(value), output, count, reverse=op == "$maxN", skip_null=True)

    return build


@_accumulator("$accumulator", "$median", "$percentile")
def _parse_unsupported_accumulator(op: str, arg: Any) -> AccumulatorSpec:
    raise CommandError(115, f"the {op} accumulator is not supported by the emulator")


def _parse_accumulator_field(name: str, value: Any) -> AccumulatorSpec:
    if not isinstance(value, dict):
        raise CommandError(40234, f"The field '{name}' must be an accumulator object")
    if len(value) != 1:
        raise CommandError(40238, f"The field '{name}' must specify one accumulator")
    ((op, arg),) = value.items()
    parser = _ACCUMULATORS.get(op)
    if parser is None:
        raise CommandError(15952, f"unknown group operator '{op}'")
    return parser(op, arg)


def _parse_output_fields(spec: dict) -> list[tuple[str, AccumulatorSpec]]:
    fields = []
    for name, value in spec.items():
        if name.startswith("$"):
            raise CommandError(40236, f"The field name '{name}' cannot be an operator name")
        if "." in name:
            raise CommandError(40235, f"The field name '{name}' cannot contain '.'")
        fields.append((name, _parse_accumulator_field(name, value)))
    return fields


class _Groups:
    """Groups keyed by value (collation-aware), kept in first-seen order."""

    def __init__(self, runtime: _Runtime, fields: list[tuple[str, AccumulatorSpec]]) -> None:
        self.runtime = runtime
        self.fields = fields
        self.groups: dict[tuple, tuple[Any, list[_Accumulator]]] = {}

    def add(self, group_id: Any, env: Env) -> None:
        key = value_key(group_id, self.runtime.collation)
        entry = self.groups.get(key)
        if entry is None:
            entry = self.groups[key] = (group_id, [spec(self.runtime, group_id) for _, spec in self.fields])
        for accumulator in entry[1]:
            accumulator.feed(env)

    def documents(self) -> list[Doc]:
        out = []
        for group_id, accumulators in self.groups.values():
            doc: Doc = {"_id": group_id}
            for (name, _), accumulator in zip(self.fields, accumulators):
                doc[name] = accumulator.result()
            out.append(doc)
        return out


@_stage("$group")
def _parse_group(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(15947, "a group's fields must be specified in an object")
    if "_id" not in spec:
        raise CommandError(15955, "a group specification must include an _id")
    id_fn = compile_expression(spec["_id"])
    fields = _parse_output_fields({k: v for k, v in spec.items() if k != "_id"})

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            groups = _Groups(runtime, fields)
            for doc in docs:
                env = runtime.env(doc)
                group_id = id_fn(env)
                groups.add(None if group_id is MISSING else group_id, env)
            return iter(groups.documents())

        return run

    return stage


@_stage("$sortByCount")
def _parse_sort_by_count(spec: Any, where: _Where) -> Stage:
    if not _is_expression_spec(spec):
        raise CommandError(40148, "the sortByCount field must be defined as a $-prefixed path or an expression")
    id_fn = compile_expression(spec)
    fields = [("count", _parse_accumulator_field("count", {"$sum": 1}))]

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            groups = _Groups(runtime, fields)
            for doc in docs:
                env = runtime.env(doc)
                group_id = id_fn(env)
                groups.add(None if group_id is MISSING else group_id, env)
            return iter(sorted(groups.documents(), key=lambda doc: -numeric_value(doc["count"])))

        return run

    return stage


# --------------------------------------------------------------------------------------------
# $facet, $bucket, $bucketAuto
# --------------------------------------------------------------------------------------------


@_stage("$facet")
def _parse_facet(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict) or not spec:
        raise CommandError(40169, "the $facet specification must be a non-empty object")
    facets: list[tuple[str, list[Stage]]] = []
    for name, pipeline in spec.items():
        check_field_name(name)
        if not isinstance(pipeline, list):
            raise CommandError(40170, f"arguments to $facet must be arrays, {name} is type {type_name(pipeline)}")
        if not pipeline:
            raise CommandError(40171, "sub-pipeline in $facet stage cannot be empty")
        facets.append((name, _parse_pipeline(pipeline, facet=True, sub=where.sub)))

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            pool = list(docs)
            yield {name: list(_execute(stages, pool, runtime)) for name, stages in facets}

        return run

    return stage


def _default_output(spec: dict, stage: str) -> list[tuple[str, AccumulatorSpec]]:
    output = spec.get("output", {"count": {"$sum": 1}})
    if not isinstance(output, dict):
        raise CommandError(40196, f"The {stage} 'output' field must be an object, but found type: {type_name(output)}")
    return _parse_output_fields(output)


@_stage("$bucket")
def _parse_bucket(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40201, f"Argument to $bucket stage must be an object, but found type: {type_name(spec)}.")
    for name in spec:
        if name not in ("groupBy", "boundaries", "default", "output"):
            raise CommandError(40197, f"Unrecognized option to $bucket: {name}.")
    if "groupBy" not in spec or "boundaries" not in spec:
        raise CommandError(40198, "$bucket requires 'groupBy' and 'boundaries' to be specified.")
    if not _is_expression_spec(spec["groupBy"]):
        raise CommandError(40202, "The $bucket 'groupBy' field must be defined as a $-prefixed path or an "
                                  f"expression, but found: {show(spec['groupBy'])}.")
    boundaries = spec["boundaries"]
    if not isinstance(boundaries, list):
        raise CommandError(40200, f"The $bucket 'boundaries' field must be an array, but found type: {type_name(boundaries)}.")
    if len(boundaries) < 2:
        raise CommandError(40192, f"The $bucket 'boundaries' field must have at least 2 values, but found "
                                  f"{len(boundaries)} value(s).")
    keys = [value_key(value) for value in boundaries]
    for i in range(1, len(boundaries)):
        if keys[i][0] != keys[0][0]:
            raise CommandError(40193, "All values in the the 'boundaries' option to $bucket must have the same "
                                      f"type. Found conflicting types {type_name(boundaries[0])} and "
                                      f"{type_name(boundaries[i])}.")
        if not keys[i - 1] < keys[i]:
            raise CommandError(40194, f"The 'boundaries' option to $bucket must be sorted, but elements {i - 1} "
                                      f"and {i} are not in ascending order ({show(boundaries[i - 1])} is not less "
                                      f"than {show(boundaries[i])}).")
    has_default = "default" in spec
    default = spec.get("default")
    if has_default:
        default_key = value_key(default)
        if default_key[0] == keys[0][0] and keys[0] <= default_key < keys[-1]:
            raise CommandError(40199, "The $bucket 'default' field must be less than the lowest boundary or "
                                      "greater than or equal to the highest boundary.")
    group_by = compile_expression(spec["groupBy"])
    fields = _default_output(spec, "$bucket")

    def stage(runtime: _Runtime) -> Runner:
        bounds = [value_key(value, runtime.collation) for value in boundaries]

        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            groups = _Groups(runtime, fields)
            for doc in docs:
                env = runtime.env(doc)
                key = env.key(group_by(env))
                if bounds[0] <= key < bounds[-1]:
                    groups.add(boundaries[bisect_right(bounds, key) - 1], env)
                elif has_default:
                    groups.add(default, env)
                else:
                    raise CommandError(40066, "$switch could not find a matching branch for an input, and no "
                                              "default was specified.")
            return iter(sorted(groups.documents(), key=lambda doc: value_key(doc["_id"], runtime.collation)))

        return run

    return stage


def _e_series(count: int) -> tuple[float, ...]:
    # E48/E96/E192 are 10^(i/n) rounded to three significant digits (E192 has one exception).
    values = [round(10 ** (i / count), 2) for i in range(count)]
    if count == 192:
        values[185] = 9.20
    return tuple(values)


# Preferred-number series for $bucketAuto's 'granularity' (one decade each).
_SERIES: dict[str, tuple[float, ...]] = {
    "R5": (1.0, 1.6, 2.5, 4.0, 6.3),
    "R10": (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0),
    "R20": (1.0, 1.12, 1.25, 1.4, 1.6, 1.8, 2.0, 2.24, 2.5, 2.8, 3.15, 3.55, 4.0, 4.5, 5.0, 5.6, 6.3,
                      7.1, 8.0, 9.0),
    "R40": (1.0, 1.06, 1.12, 1.18, 1.25, 1.32, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.12, 2.24, 2.36, 2.5,
                      2.65, 2.8, 3.0, 3.15, 3.35, 3.55, 3.75, 4.0, 4.25, 4.5, 4.75, 5.0, 5.3, 5.6, 6.0, 6.3, 6.7,
                      7.1, 7.5, 8.0, 8.5, 9.0, 9.5),
    "R80": (1.0, 1.03, 1.06, 1.09, 1.12, 1.15, 1.18, 1.22, 1.25, 1.28, 1.32, 1.36, 1.4, 1.45, 1.5,
                      1.55, 1.6, 1.65, 1.7, 1.75, 1.8, 1.85, 1.9, 1.95, 2.0, 2.06, 2.12, 2.18, 2.24, 2.3, 2.36,
                      2.43, 2.5, 2.58, 2.65, 2.72, 2.8, 2.9, 3.0, 3.07, 3.15, 3.25, 3.35, 3.45, 3.55, 3.65,
                      3.75, 3.87, 4.0, 4.12, 4.25, 4.37, 4.5, 4.62, 4.75, 4.87, 5.0, 5.15, 5.3, 5.45, 5.6, 5.8,
                      6.0, 6.15, 6.3, 6.5, 6.7, 6.9, 7.1, 7.3, 7.5, 7.75, 8.0, 8.25, 8.5, 8.75, 9.0, 9.25, 9.5,
                      9.75),
    "1-2-5": (1.0, 2.0, 5.0),
    "E6": (1.0, 1.5, 2.2, 3.3, 4.7, 6.8),
    "E12": (1.0, 1.2, 1.5, 1.8, 2.2, 2.7, 3.3, 3.9, 4.7, 5.6, 6.8, 8.2),
    "E24": (1.0, 1.1, 1.2, 1.3, 1.5, 1.6, 1.8, 2.0, 2.2, 2.4, 2.7, 3.0, 3.3, 3.6, 3.9, 4.3, 4.7, 5.1,
                      5.6, 6.2, 6.8, 7.5, 8.2, 9.1),
    "E48": _e_series(48),
    "E96": _e_series(96),
    "E192": _e_series(192),
}
_GRANULARITIES = frozenset({*_SERIES, "POWERSOF2"})


def _clean(number: float) -> float:
    """Undo binary noise from scaling (1.6 * 100 = 160.00000000000003)."""
    return float(f"{number:.15g}")


def _round_granular(value: Any, granularity: str, up: bool) -> Any:
    """The next series value strictly above (``up``) or below ``value``."""
    if not is_number(value):
        raise CommandError(40258, "$bucketAuto can specify a 'granularity' with numeric boundaries only, but found "
                                  f"a value with type: {type_name(value)}")
    number = float(numeric_value(value))
    if number < 0:
        raise CommandError(40260 if up else 40268,
                           f"A granularity rounder cannot round {'up' if up else 'down'} a number less than 0")
    if number == 0:
        return 0.0
    if granularity == "POWERSOF2":
        exponent = math.floor(math.log2(number))
        candidate = 2.0 ** exponent
        if up:
            return candidate * 2 if candidate <= number else candidate
        return candidate / 2 if candidate >= number else candidate
    series = _SERIES[granularity]
    scale = 10.0 ** math.floor(math.log10(number))
    candidates = [_clean(s * scale / 10) for s in series] + [_clean(s * scale) for s in series] + \
        [_clean(s * scale * 10) for s in series]
    if up:
        return min(c for c in candidates if c > number)
    return max(c for c in candidates if c < number)


@_stage("$bucketAuto")
def _parse_bucket_auto(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40240, f"The argument to $bucketAuto must be an object, but found type: {type_name(spec)}.")
    for name in spec:
        if name not in ("groupBy", "buckets", "output", "granularity"):
            raise CommandError(40245, f"Unrecognized option to $bucketAuto: {name}.")
    if "groupBy" not in spec or "buckets" not in spec:
        raise CommandError(40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified")
    if not _is_expression_spec(spec["groupBy"]):
        raise CommandError(40239, "The $bucketAuto 'groupBy' field must be defined as a $-prefixed path or an "
                                  f"expression object, but found: {show(spec['groupBy'])}.")
    buckets = spec["buckets"]
    if not is_number(buckets):
        raise CommandError(40241, f"The $bucketAuto 'buckets' field must be a numeric value, but found type: {type_name(buckets)}.")
    count = _integral(buckets)
    if count is None or not -(2**31) <= count < 2**31:
        raise CommandError(40242, f"The $bucketAuto 'buckets' field must be representable as a 32-bit integer, "
                                  f"but found {show(buckets)}.")
    if count <= 0:
        raise CommandError(40243, f"The $bucketAuto 'buckets' field must be greater than 0, but found: {count}.")
    granularity = spec.get("granularity")
    if granularity is not None and granularity not in _GRANULARITIES:
        raise CommandError(40257, f"Rounding granularity not recognized: {show(granularity)}")
    group_by = compile_expression(spec["groupBy"])
    fields = _default_output(spec, "$bucketAuto")

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            entries = []
            for doc in docs:
                env = runtime.env(doc)
                value = group_by(env)
                value = None if value is MISSING else value
                if granularity is not None:
                    _round_granular(value, granularity, up=True)  # type and sign checks
                entries.append((env.key(value), value, env))
            entries.sort(key=lambda entry: entry[0])
            return iter(_auto_buckets(entries, count, granularity, runtime, fields))

        return run

    return stage


def _auto_buckets(entries: list[tuple[tuple, Any, Env]], count: int, granularity: str | None,
                  runtime: _Runtime, fields: list[tuple[str, AccumulatorSpec]]) -> list[Doc]:
    """DocumentSourceBucketAuto::populateBuckets: equal-sized buckets that never split a value."""
    if not entries:
        return []
    size = max(round(len(entries) / count), 1)
    buckets: list[dict[str, Any]] = []
    position = 0
    while position < len(entries) and len(buckets) < count:
        start = position
        last = len(buckets) == count - 1
        position = len(entries) if last else min(position + size, len(entries))
        if not last and position < len(entries):
            if granularity is not None:
                boundary = _round_granular(entries[position - 1][1], granularity, up=True)
                boundary_key = value_key(boundary)
                while position < len(entries) and entries[position][0] < boundary_key:
                    position += 1
            else:
                # Values equal to the bucket's last one stay in this bucket.
                while position < len(entries) and entries[position][0] == entries[position - 1][0]:
                    position += 1
        members = entries[start:position]
        accumulators = [spec(runtime, MISSING) for _, spec in fields]
        for _, _, env in members:
            for accumulator in accumulators:
                accumulator.feed(env)
        buckets.append({"min": members[0][1], "max": members[-1][1], "accumulators": accumulators})
    if granularity is not None:
        buckets[0]["min"] = _round_granular(buckets[0]["min"], granularity, up=False)
        for bucket in buckets:
            bucket["max"] = _round_granular(bucket["max"], granularity, up=True)
    # Each bucket ends where the next one starts.
    for previous, following in zip(buckets, buckets[1:]):
        if granularity is None:
            previous["max"] = following["min"]
        else:
            following["min"] = previous["max"]
    out = []
    for bucket in buckets:
        doc: Doc = {"_id": {"min": bucket["min"], "max": bucket["max"]}}
        for (name, _), accumulator in zip(fields, bucket["accumulators"]):
            doc[name] = accumulator.result()
        out.append(doc)
    return out


# --------------------------------------------------------------------------------------------
# Other collections: $lookup, $graphLookup, $unionWith
# --------------------------------------------------------------------------------------------


def _namespace_option(stage: str, name: str, value: Any) -> tuple[str | None, str]:
    """A collection given as ``"coll"`` or ``{db, coll}`` → (db or None for the current one, coll)."""
    if isinstance(value, str) and value:
        return None, value
    if isinstance(value, dict) and set(value) <= {"db", "coll"} and isinstance(value.get("coll"), str) \
            and isinstance(value.get("db", ""), str):
        return value.get("db"), value["coll"]
    raise CommandError(
        9 if stage == "$lookup" else 40415,
        f"{stage} '{name}' must be a non-empty string or an object with 'db' and 'coll', found {show(value)}",
    )


def _starts_with_documents(pipeline: Any) -> bool:
    return isinstance(pipeline, list) and bool(pipeline) and isinstance(pipeline[0], dict) \
        and "$documents" in pipeline[0]


class _Foreign:
    """A foreign collection searched by equality on one path ($lookup, $graphLookup).

    An index from value to documents narrows the candidates; the matcher then decides, so the
    result is exactly what ``{path: {$in: values}}`` selects (arrays, numeric components and
    collation included). Null and regex values match more than equal keys, so they scan.
    """

    def __init__(self, docs: list[Doc], path: str, collation: Any) -> None:
        from mongoemu.query.paths import get_path_values

        self.docs = docs
        self.path = path
        self.collation = collation
        self.index: dict[tuple, list[int]] = {}
        for position, doc in enumerate(docs):
            for value in get_path_values(doc, path):
                if value is not None:
                    self.index.setdefault(value_key(value, collation), []).append(position)

    def find(self, values: list[Any]) -> list[Doc]:
        from mongoemu.query.matcher import Matcher

        if not values:
            return []
        if any(value is None or type_name(value) == "regex" for value in values):
            candidates: Iterable[int] = range(len(self.docs))
        else:
            positions: set[int] = set()
            for value in values:
                positions.update(self.index.get(value_key(value, self.collation), ()))
            candidates = sorted(positions)
        matcher = Matcher({self.path: {"$in": values}}, self.collation)
        return [self.docs[i] for i in candidates if matcher.matches(self.docs[i])]


def _local_values(doc: Doc, path: str) -> list[Any]:
    """The values $lookup joins on: every value along the path, arrays flattened, else null."""
    from mongoemu.query.paths import get_path_values

    values: list[Any] = []
    for value in get_path_values(doc, path, expand_leaf_arrays=False):
        if isinstance(value, list):
            values.extend(value)
        else:
            values.append(value)
    return values or [None]


def _lookup_error(message: str) -> CommandError:
    return CommandError(9, message)


@_stage("$lookup")
def _parse_lookup(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise _lookup_error(f"the $lookup specification must be an Object, but found {type_name(spec)}")
    for name in spec:
        if name not in ("from", "as", "localField", "foreignField", "let", "pipeline"):
            raise _lookup_error(f"unknown argument to $lookup: {name}")
    if not isinstance(spec.get("as"), str):
        raise _lookup_error(f"missing 'as' option to $lookup stage specification: {show(spec)}")
    as_parts = _split(spec["as"])
    if ("localField" in spec) != ("foreignField" in spec):
        raise _lookup_error("$lookup requires both or neither of 'localField' and 'foreignField' to be specified")
    local, foreign_field = spec.get("localField"), spec.get("foreignField")
    for name, value in (("localField", local), ("foreignField", foreign_field)):
        if value is not None and not isinstance(value, str):
            raise _lookup_error(f"$lookup argument '{name}: {show(value)}' must be a string, is type {type_name(value)}")
    pipeline = spec.get("pipeline")
    if local is None and pipeline is None:
        raise _lookup_error("$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified")
    if "let" in spec and pipeline is None:
        raise _lookup_error("$lookup with 'let' must also specify 'pipeline'")
    if "from" in spec:
        db, coll = _namespace_option("$lookup", "from", spec["from"])
    elif _starts_with_documents(pipeline):
        db, coll = None, None
    else:
        raise _lookup_error(f"missing 'from' option to $lookup stage specification: {show(spec)}")
    stages = _parse_pipeline(pipeline, sub=True) if pipeline is not None else None
    let = spec.get("let", {})
    if not isinstance(let, dict):
        raise _lookup_error(f"$lookup argument 'let: {show(let)}' must be an object, is type {type_name(let)}")
    bindings = []
    for name, value in let.items():
        validate_variable_name(name)
        bindings.append((name, compile_expression(value)))

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            foreign: list[Doc] | None = None
            index: _Foreign | None = None
            for doc in docs:
                if foreign is None:
                    foreign = runtime.read(db, coll, "$lookup")
                    if foreign_field is not None:
                        index = _Foreign(foreign, foreign_field, runtime.collation)
                matched = index.find(_local_values(doc, local)) if index is not None else foreign
                if stages is not None:
                    env = runtime.env(doc)
                    variables = {name: fn(env) for name, fn in bindings}
                    matched = list(_execute(stages, matched, runtime.with_variables(variables)))
                yield _set_nested(doc, as_parts, list(matched))

        return run

    return stage


_GRAPH_REQUIRED = ("from", "startWith", "connectFromField", "connectToField", "as")
_GRAPH_OPTIONAL = ("maxDepth", "depthField", "restrictSearchWithMatch")


@_stage("$graphLookup")
def _parse_graph_lookup(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40327, f"the $graphLookup stage specification must be an object, but found {type_name(spec)}")
    for name in spec:
        if name not in _GRAPH_REQUIRED and name not in _GRAPH_OPTIONAL:
            raise CommandError(40104, f"Unknown argument to $graphLookup: {name}")
    for name in _GRAPH_REQUIRED:
        if name not in spec:
            raise CommandError(40105, f"missing '{name}' option to $graphLookup stage specification: {show(spec)}")
    for name in ("connectFromField", "connectToField", "as", "depthField"):
        if name in spec:
            if not isinstance(spec[name], str):
                raise CommandError(40103, f"expected string as argument for {name}, found: {show(spec[name])}")
            _split(spec[name])
    db, coll = _namespace_option("$graphLookup", "from", spec["from"])
    max_depth = None
    if "maxDepth" in spec:
        value = spec["maxDepth"]
        if not is_number(value):
            raise CommandError(40100, f"maxDepth must be numeric, found type: {type_name(value)}")
        if numeric_value(value) < 0:
            raise CommandError(40101, f"maxDepth requires a nonnegative argument, found: {show(value)}")
        max_depth = _integral(value)
        if max_depth is None:
            raise CommandError(40102, f"maxDepth could not be represented as a long long: {show(value)}")
    restrict = spec.get("restrictSearchWithMatch")
    if restrict is not None:
        if not isinstance(restrict, dict):
            raise CommandError(40185, f"restrictSearchWithMatch must be an object, found {type_name(restrict)}")
        from mongoemu.query.matcher import Matcher

        Matcher(restrict)
    start_with = compile_expression(spec["startWith"])
    connect_from = spec["connectFromField"]
    as_parts = _split(spec["as"])
    depth_parts = _split(spec["depthField"]) if "depthField" in spec else None

    def stage(runtime: _Runtime) -> Runner:
        from mongoemu.query.matcher import Matcher
        from mongoemu.query.paths import get_path_values

        allowed = Matcher(restrict, runtime.collation, runtime.variables) if restrict is not None else None

        def search(index: _Foreign, start: Any) -> list[Doc]:
            frontier = start if isinstance(start, list) else [start]
            found: dict[tuple, Doc] = {}
            queried: set[tuple] = set()
            depth = 0
            while frontier and (max_depth is None or depth <= max_depth):
                fresh = []
                for value in frontier:
                    key = value_key(value, runtime.collation)
                    if key not in queried:
                        queried.add(key)
                        fresh.append(value)
                following: list[Any] = []
                for doc in index.find(fresh):
                    if allowed is not None and not allowed.matches(doc):
                        continue
                    identity = value_key(doc.get("_id"), runtime.collation)
                    if identity in found:
                        continue
                    found[identity] = doc if depth_parts is None else _set_nested(doc, depth_parts, Int64(depth))
                    for value in get_path_values(doc, connect_from, expand_leaf_arrays=False):
                        following.extend(value if isinstance(value, list) else [value])
                frontier = following
                depth += 1
            return list(found.values())

        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            index: _Foreign | None = None
            for doc in docs:
                if index is None:
                    index = _Foreign(runtime.read(db, coll, "$graphLookup"), spec["connectToField"], runtime.collation)
                start = start_with(runtime.env(doc))
                results = [] if start is MISSING else search(index, start)
                yield _set_nested(doc, as_parts, results)

        return run

    return stage


@_stage("$unionWith")
def _parse_union_with(spec: Any, where: _Where) -> Stage:
    if isinstance(spec, str):
        spec = {"coll": spec}
    if not isinstance(spec, dict):
        raise CommandError(40415, f"the $unionWith stage specification must be an object or string, but found {type_name(spec)}")
    for name in spec:
        if name not in ("coll", "pipeline"):
            raise CommandError(40415, f"BSON field '$unionWith.{name}' is an unknown field.")
    pipeline = spec.get("pipeline", [])
    if "coll" in spec:
        db, coll = _namespace_option("$unionWith", "coll", spec["coll"])
    elif _starts_with_documents(pipeline):
        db, coll = None, None
    else:
        raise CommandError(40414, "BSON field '$unionWith.coll' is missing but a required field")
    stages = _parse_pipeline(pipeline, sub=True)

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            yield from docs
            yield from _execute(stages, runtime.read(db, coll, "$unionWith"), runtime)

        return run

    return stage


# --------------------------------------------------------------------------------------------
# $redact, $documents
# --------------------------------------------------------------------------------------------


@_stage("$redact")
def _parse_redact(spec: Any, where: _Where) -> Stage:
    decide = compile_expression(spec)

    def redact(value: Doc, root: Doc, runtime: _Runtime) -> Doc | None:
        decision = decide(Env(root, runtime.variables, runtime.collation, value))
        if decision == REDACT_KEEP:
            return value
        if decision == REDACT_PRUNE:
            return None
        if decision != REDACT_DESCEND:
            raise CommandError(17053, "$redact's expression should not return anything aside from the variables "
                                      f"$$KEEP, $$DESCEND, and $$PRUNE, but returned {show(decision)}")
        out: Doc = {}
        for key, item in value.items():
            if isinstance(item, dict):
                kept = redact(item, root, runtime)
                if kept is not None:
                    out[key] = kept
            elif isinstance(item, list):
                out[key] = redact_array(item, root, runtime)
            else:
                out[key] = item
        return out

    def redact_array(array: list, root: Doc, runtime: _Runtime) -> list:
        out = []
        for element in array:
            if isinstance(element, dict):
                kept = redact(element, root, runtime)
                if kept is not None:
                    out.append(kept)
            elif isinstance(element, list):
                out.append(redact_array(element, root, runtime))
            else:
                out.append(element)
        return out

    def each(doc: Doc, runtime: _Runtime) -> Iterable[Doc]:
        kept = redact(doc, doc, runtime)
        return () if kept is None else (kept,)

    return _streaming(each)


@_stage("$documents")
def _parse_documents(spec: Any, where: _Where) -> Stage:
    fn = compile_expression(spec)

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            value = fn(runtime.env({}))
            if not isinstance(value, list) or not all(isinstance(doc, dict) for doc in value):
                raise CommandError(5858203, "error during evaluation of the $documents expression :: caused by :: "
                                            f"$documents must evaluate to an array of objects, found {show(value)}")
            return iter(value)

        return run

    return stage


# --------------------------------------------------------------------------------------------
# Writes and server-provided sources: $out, $merge, $collStats, $indexStats, ...
# --------------------------------------------------------------------------------------------


@_stage("$out")
def _parse_out(spec: Any, where: _Where) -> Stage:
    if isinstance(spec, str):
        db, coll = None, spec
    elif isinstance(spec, dict):
        for name in spec:
            if name not in ("db", "coll", "timeseries"):
                raise CommandError(40415, f"BSON field '$out.{name}' is an unknown field.")
        for name in ("db", "coll"):
            if name not in spec:
                raise CommandError(40414, f"BSON field '$out.{name}' is missing but a required field")
            if not isinstance(spec[name], str):
                raise CommandError(13111, f"BSON field '$out.{name}' is the wrong type '{type_name(spec[name])}', "
                                          "expected type 'string'")
        db, coll = spec["db"], spec["coll"]
    else:
        raise CommandError(16990, f"$out only supports a string or object argument, but found {type_name(spec)}")
    if not coll:
        raise CommandError(73, "Invalid $out target namespace: collection name cannot be empty")

    def stage(runtime: _Runtime) -> Runner:
        context = runtime.context("$out")

        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            # Results may share sub-documents with stored ones; the target gets its own copies.
            context.write_out(*runtime.namespace(db, coll, "$out"), [deep_copy(doc) for doc in docs])
            return iter(())

        return run

    return stage


_WHEN_MATCHED = frozenset({"replace", "keepExisting", "merge", "fail"})
_WHEN_NOT_MATCHED = frozenset({"insert", "discard", "fail"})


@_stage("$merge")
def _parse_merge(spec: Any, where: _Where) -> Stage:
    if isinstance(spec, str):
        spec = {"into": spec}
    if not isinstance(spec, dict):
        raise CommandError(51182, f"$merge only supports a string or object argument, not {type_name(spec)}")
    for name in spec:
        if name not in ("into", "on", "let", "whenMatched", "whenNotMatched"):
            raise CommandError(40415, f"BSON field '$merge.{name}' is an unknown field.")
    if "into" not in spec:
        raise CommandError(40414, "BSON field '$merge.into' is missing but a required field")
    db, coll = _namespace_option("$merge", "into", spec["into"])
    on = spec.get("on", "_id")
    on_fields = [on] if isinstance(on, str) else on
    if not isinstance(on_fields, list) or not on_fields or not all(isinstance(f, str) for f in on_fields):
        raise CommandError(51186, "BSON field '$merge.on' must be either a string or an array of strings, but got "
                                  + type_name(on))
    for name in on_fields:
        _split(name)
    when_matched = spec.get("whenMatched", "merge")
    if isinstance(when_matched, list):
        _parse_pipeline(when_matched, merge=True)
    elif when_matched not in _WHEN_MATCHED:
        raise CommandError(2, f"Enumeration value '{when_matched}' for field '$merge.whenMatched' is not a valid value.")
    when_not_matched = spec.get("whenNotMatched", "insert")
    if when_not_matched not in _WHEN_NOT_MATCHED:
        raise CommandError(2, f"Enumeration value '{when_not_matched}' for field '$merge.whenNotMatched' is not a "
                              "valid value.")
    let = spec.get("let")
    if let is not None:
        if not isinstance(let, dict):
            raise CommandError(14, f"BSON field '$merge.let' is the wrong type '{type_name(let)}', expected type 'object'")
        if not isinstance(when_matched, list):
            raise CommandError(51199, "Cannot use 'let' variables with 'whenMatched: " + str(when_matched) + "' mode")
        for name in let:
            validate_variable_name(name)

    def stage(runtime: _Runtime) -> Runner:
        context = runtime.context("$merge")

        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            target_db, target_coll = runtime.namespace(db, coll, "$merge")
            context.merge_into(target_db, target_coll, [deep_copy(doc) for doc in docs], list(on_fields),
                               when_matched, when_not_matched, let)
            return iter(())

        return run

    return stage


def _context_source(name: str, fetch: Callable[[PipelineContext, Any], Iterable[Doc]], spec: Any) -> Stage:
    def stage(runtime: _Runtime) -> Runner:
        context = runtime.context(name)
        return lambda docs: iter(fetch(context, spec))

    return stage


@_stage("$collStats")
def _parse_coll_stats(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(40166, f"$collStats must take a nested object but found: {show(spec)}")
    for name in spec:
        if name not in ("latencyStats", "storageStats", "count", "queryExecStats"):
            raise CommandError(40168, f"unrecognized option to $collStats: {name}")
    return _context_source("$collStats", lambda context, options: context.coll_stats(options), spec)


@_stage("$indexStats")
def _parse_index_stats(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict) or spec:
        raise CommandError(28803, "The $indexStats stage specification must be an empty object")
    return _context_source("$indexStats", lambda context, options: context.index_stats(), spec)


def _server_source(name: str) -> StageParser:
    def parse(spec: Any, where: _Where) -> Stage:
        if not isinstance(spec, dict):
            raise CommandError(40415, f"{name} must take a nested object but found: {show(spec)}")
        return _context_source(name, lambda context, options: context.server_stage(name, options), spec)

    return parse


for _name in ("$listLocalSessions", "$listSessions", "$currentOp", "$listCatalog", "$planCacheStats",
              "$querySettings", "$queryStats"):
    _STAGES[_name] = _server_source(_name)


@_stage("$changeStream")
def _parse_change_stream(spec: Any, where: _Where) -> Stage:
    def stage(runtime: _Runtime) -> Runner:
        # Change streams are served by mongoemu.changestream, which validates the stages after
        # $changeStream and runs them over events; reaching this is a server bug.
        raise CommandError(1, "$changeStream must be handled by the change stream machinery, not run_pipeline")

    return stage


@_stage("$changeStreamSplitLargeEvent")
def _parse_split_large_event(spec: Any, where: _Where) -> Stage:
    if spec != {}:
        raise CommandError(7182800, "$changeStreamSplitLargeEvent accepts only an empty object")
    # Events beyond 16 MB cannot be produced by the emulator, so nothing ever needs splitting.
    return lambda runtime: (lambda docs: docs)


# --------------------------------------------------------------------------------------------
# $setWindowFields, $fill, $densify
# --------------------------------------------------------------------------------------------


@dataclass
class _Partition:
    """One partition in sort order, with what window functions need about each document."""

    docs: list[Doc]
    envs: list[Env]
    sort_values: list[Any]  # value of the single sortBy field (for range windows, $linearFill)
    sort_keys: list[Any]  # full sort key (for $rank/$denseRank)


def _partitions(docs: list[Doc], runtime: _Runtime, partition_of: Callable[[Env], Any] | None,
                sort_spec: dict | None) -> list[_Partition]:
    """Documents grouped by partition value (partitions in BSON order, like the server's sort)."""
    from mongoemu.query.sorting import make_sort_key

    groups: dict[tuple, list[tuple[Doc, Env]]] = {}
    for doc in docs:
        env = runtime.env(doc)
        value = partition_of(env) if partition_of is not None else None
        groups.setdefault(value_key(None if value is MISSING else value, runtime.collation), []).append((doc, env))
    doc_key = make_sort_key(sort_spec, runtime.collation) if sort_spec else None
    sort_path = _split(next(iter(sort_spec))) if sort_spec and len(sort_spec) == 1 else None
    out = []
    for key in sorted(groups):
        members = groups[key]
        keys = [doc_key(doc) for doc, _ in members] if doc_key is not None else [0] * len(members)
        order = sorted(range(len(members)), key=keys.__getitem__)
        out.append(_Partition(
            docs=[members[i][0] for i in order],
            envs=[members[i][1] for i in order],
            sort_values=[_get_nested(members[i][0], sort_path) if sort_path else MISSING for i in order],
            sort_keys=[keys[i] for i in order],
        ))
    return out


# Computes one output field for every document of a partition.
WindowCompute = Callable[[_Partition, _Runtime], list[Any]]


@dataclass(frozen=True)
class _Bounds:
    kind: str  # "documents" or "range"
    lower: Any  # "unbounded", "current" or a number
    upper: Any
    unit: str | None = None


_UNBOUNDED = _Bounds("documents", "unbounded", "unbounded")


def _parse_bound(kind: str, value: Any) -> Any:
    if value in ("unbounded", "current"):
        return value
    if kind == "documents" and (not is_number(value) or _integral(value) is None):
        raise CommandError(5339903, "Numeric document-based bounds must be an integer")
    if not is_number(value):
        raise CommandError(5339904, f"Range-based bounds expression must be a number, 'unbounded' or 'current', "
                                    f"found {show(value)}")
    return numeric_value(value) if kind == "range" else _integral(value)


def _parse_window(window: Any, sort_spec: dict | None) -> _Bounds:
    if window is None:
        return _UNBOUNDED
    if not isinstance(window, dict):
        raise CommandError(5397902, "'window' field must be an object")
    for name in window:
        if name not in ("documents", "range", "unit"):
            raise CommandError(5397903, f"'window' has an invalid parameter: {name}")
    if ("documents" in window) == ("range" in window):
        raise CommandError(5397904, "'window' field must specify exactly one of 'documents' or 'range'")
    kind = "documents" if "documents" in window else "range"
    bounds = window[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise CommandError(5339905, f"Window bounds must be a 2-element array: {show(bounds)}")
    lower, upper = (_parse_bound(kind, value) for value in bounds)
    unit = window.get("unit")
    if unit is not None:
        if kind != "range":
            raise CommandError(5397905, "'unit' is only valid with a range-based window")
        if unit not in ("year", "quarter", "month", "week", "day", "hour", "minute", "second", "millisecond"):
            raise CommandError(2, f"unknown time unit value: {unit}")
    if isinstance(lower, (int, float)) and isinstance(upper, (int, float)) and lower > upper:
        raise CommandError(5339900, "Lower bound must not exceed upper bound")
    if lower == "current" and isinstance(upper, (int, float)) and upper < 0 or \
            upper == "current" and isinstance(lower, (int, float)) and lower > 0:
        raise CommandError(5339900, "Lower bound must not exceed upper bound")
    if kind == "documents" and (lower, upper) != ("unbounded", "unbounded") and not sort_spec:
        raise CommandError(5339901, "Document-based bounds require a sortBy")
    if kind == "range" and (not sort_spec or len(sort_spec) != 1):
        raise CommandError(5339902, "Range-based bounds require sortBy a single field")
    return _Bounds(kind, lower, upper, unit)


def _range_position(value: Any, unit: str | None) -> Any:
    """Where a sortBy value sits on a range window's axis: a number, or epoch millis for dates."""
    if unit is not None:
        if not is_date(value):
            raise CommandError(5429513, f"Invalid range: Expected the sortBy field to be a Date, but it was {type_name(value)}")
        return date_millis(value)
    if not is_number(value):
        raise CommandError(5429414, f"Invalid range: Expected the sortBy field to be a number, but it was {type_name(value)}")
    return numeric_value(value)


def _shifted(position: Any, offset: Any, unit: str | None) -> Any:
    if unit is None:
        return position + offset
    return add_to_date(position, unit, int(offset), parse_timezone("UTC"))


def _window_indices(bounds: _Bounds, partition: _Partition, i: int) -> range | list[int]:
    count = len(partition.docs)
    if bounds.kind == "documents":
        low = 0 if bounds.lower == "unbounded" else i + (0 if bounds.lower == "current" else bounds.lower)
        high = count - 1 if bounds.upper == "unbounded" else i + (0 if bounds.upper == "current" else bounds.upper)
        return range(max(low, 0), min(high, count - 1) + 1)
    positions = [_range_position(value, bounds.unit) for value in partition.sort_values]
    here = positions[i]
    low = None if bounds.lower == "unbounded" else here if bounds.lower == "current" else _shifted(here, bounds.lower, bounds.unit)
    high = None if bounds.upper == "unbounded" else here if bounds.upper == "current" else _shifted(here, bounds.upper, bounds.unit)
    return [j for j, position in enumerate(positions)
            if (low is None or position >= low) and (high is None or position <= high)]


def _window_accumulator(spec: AccumulatorSpec, bounds: _Bounds) -> WindowCompute:
    def compute(partition: _Partition, runtime: _Runtime) -> list[Any]:
        if bounds == _UNBOUNDED:
            accumulator = spec(runtime, MISSING)
            for env in partition.envs:
                accumulator.feed(env)
            return [accumulator.result()] * len(partition.docs)
        results = []
        for i in range(len(partition.docs)):
            accumulator = spec(runtime, MISSING)
            for j in _window_indices(bounds, partition, i):
                accumulator.feed(partition.envs[j])
            results.append(accumulator.result())
        return results

    return compute


def _rank_compute(op: str) -> WindowCompute:
    def compute(partition: _Partition, runtime: _Runtime) -> list[Any]:
        results: list[Any] = []
        dense = 0
        for i, key in enumerate(partition.sort_keys):
            tie = i > 0 and key == partition.sort_keys[i - 1]
            if not tie:
                dense += 1
            if op == "$documentNumber":
                results.append(i + 1)
            elif op == "$denseRank":
                results.append(dense)
            else:
                results.append(results[-1] if tie else i + 1)
        return results

    return compute


def _locf_values(values: list[Any]) -> list[Any]:
    """Last observation carried forward: null/missing take the previous non-null value."""
    out, last = [], None
    for value in values:
        if value is not None and value is not MISSING:
            last = value
        out.append(last)
    return out


def _linear_values(values: list[Any], positions: list[Any]) -> list[Any]:
    """Null/missing values interpolated from the closest non-null neighbours by sort position."""
    known = [i for i, value in enumerate(values) if value is not None and value is not MISSING]
    out = [None if value is MISSING else value for value in values]
    for left, right in zip(known, known[1:]):
        y0, y1 = values[left], values[right]
        if not (is_number(y0) and is_number(y1)):
            raise CommandError(5429402, "Expected the input to $linearFill to be numeric")
        x0, x1 = positions[left], positions[right]
        for i in range(left + 1, right):
            ratio = (positions[i] - x0) / (x1 - x0) if x1 != x0 else 0
            out[i] = float(numeric_value(y0)) + (float(numeric_value(y1)) - float(numeric_value(y0))) * float(ratio)
    return out


def _sort_positions(partition: _Partition) -> list[Any]:
    return [_range_position(value, "millisecond" if is_date(value) else None) for value in partition.sort_values]


def _single_sort_field(op: str, sort_spec: dict | None) -> None:
    if not sort_spec or len(sort_spec) != 1:
        raise CommandError(5371602, f"{op} must be specified with a top level sortBy expression with exactly one element")


def _parse_window_function(op: str, arg: Any, window: Any, sort_spec: dict | None) -> WindowCompute:
    if op in ("$rank", "$denseRank", "$documentNumber"):
        if arg != {}:
            raise CommandError(5371603, f"{op} must be specified with an empty object")
        if window is not None:
            raise CommandError(5371601, "Rank style window functions take no other arguments")
        _single_sort_field(op, sort_spec)
        return _rank_compute(op)
    if op == "$shift":
        return _parse_shift(arg, window, sort_spec)
    if op in ("$locf", "$linearFill"):
        if window is not None:
            raise CommandError(5371601, f"{op} does not accept a window")
        fn = compile_expression(arg)
        if op == "$linearFill":
            _single_sort_field(op, sort_spec)
            return lambda partition, runtime: _linear_values([fn(env) for env in partition.envs],
                                                             _sort_positions(partition))
        return lambda partition, runtime: _locf_values([fn(env) for env in partition.envs])
    parser = _ACCUMULATORS.get(op)
    if parser is None:
        raise CommandError(5397900, f"Unrecognized window function, {op}")
    return _window_accumulator(parser(op, arg), _parse_window(window, sort_spec))


def _parse_shift(arg: Any, window: Any, sort_spec: dict | None) -> WindowCompute:
    if not isinstance(arg, dict) or "output" not in arg or "by" not in arg:
        raise CommandError(5433603, "$shift requires an object with 'output' and 'by'")
    for name in arg:
        if name not in ("output", "by", "default"):
            raise CommandError(5433602, f"Unknown argument in $shift: {name}")
    if window is not None:
        raise CommandError(5433600, "$shift does not accept a window")
    if not sort_spec:
        raise CommandError(5433601, "$shift requires a sortBy")
    offset = _integral(arg["by"]) if is_number(arg["by"]) else None
    if offset is None:
        raise CommandError(5433604, "'$shift:by' field must be an integer, but found " + show(arg["by"]))
    output = compile_expression(arg["output"])
    default = compile_expression(arg.get("default"))

    def compute(partition: _Partition, runtime: _Runtime) -> list[Any]:
        results = []
        for i, env in enumerate(partition.envs):
            j = i + offset
            value = output(partition.envs[j]) if 0 <= j < len(partition.envs) else default(env)
            results.append(None if value is MISSING else value)
        return results

    return compute


def _apply_outputs(partitions: list[_Partition], runtime: _Runtime,
                   outputs: list[tuple[list[str], WindowCompute]]) -> Iterator[Doc]:
    for partition in partitions:
        columns = [(path, compute(partition, runtime)) for path, compute in outputs]
        for i, doc in enumerate(partition.docs):
            for path, values in columns:
                doc = _set_nested(doc, path, values[i])
            yield doc


def _check_sort_spec(stage: str, sort_spec: Any) -> dict | None:
    if sort_spec is None:
        return None
    if not isinstance(sort_spec, dict) or not sort_spec:
        raise CommandError(15973, f"the {stage} sortBy specification must be a non-empty object")
    from mongoemu.query.sorting import make_sort_key

    make_sort_key(sort_spec)
    return sort_spec


@_stage("$setWindowFields")
def _parse_set_window_fields(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(5339906, f"$setWindowFields must be an object, found {type_name(spec)}")
    for name in spec:
        if name not in ("partitionBy", "sortBy", "output"):
            raise CommandError(40415, f"BSON field '$setWindowFields.{name}' is an unknown field.")
    if "output" not in spec:
        raise CommandError(40414, "BSON field '$setWindowFields.output' is missing but a required field")
    if not isinstance(spec["output"], dict):
        raise CommandError(14, "BSON field '$setWindowFields.output' is the wrong type, expected type 'object'")
    sort_spec = _check_sort_spec("$setWindowFields", spec.get("sortBy"))
    partition_of = compile_expression(spec["partitionBy"]) if "partitionBy" in spec else None
    outputs = []
    for name, value in spec["output"].items():
        path = _split(name)
        if not isinstance(value, dict):
            raise CommandError(40415, f"The field '{name}' must be an object")
        functions = [key for key in value if key != "window"]
        if len(functions) != 1:
            raise CommandError(5397901, "Expected a single window function")
        op = functions[0]
        outputs.append((path, _parse_window_function(op, value[op], value.get("window"), sort_spec)))

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            return _apply_outputs(_partitions(list(docs), runtime, partition_of, sort_spec), runtime, outputs)

        return run

    return stage


def _partition_fields_function(fields: list[str]) -> Callable[[Env], Any]:
    paths = [_split(name) for name in fields]
    return lambda env: [_get_nested(env.current, path) for path in paths]


def _check_partition_fields(stage: str, fields: Any) -> list[str]:
    if not isinstance(fields, list) or not all(isinstance(name, str) for name in fields):
        raise CommandError(14, f"BSON field '{stage}.partitionByFields' must be an array of strings")
    for name in fields:
        _split(name)
    return fields


@_stage("$fill")
def _parse_fill(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(6050200, f"$fill specification must be an object, found {type_name(spec)}")
    for name in spec:
        if name not in ("partitionBy", "partitionByFields", "sortBy", "output"):
            raise CommandError(40415, f"BSON field '$fill.{name}' is an unknown field.")
    if "partitionBy" in spec and "partitionByFields" in spec:
        raise CommandError(6050204, "Maximum one of 'partitionBy' and 'partitionByFields can be specified in '$fill'")
    if not isinstance(spec.get("output"), dict) or not spec["output"]:
        raise CommandError(40414, "BSON field '$fill.output' is missing but a required field")
    sort_spec = _check_sort_spec("$fill", spec.get("sortBy"))
    if "partitionBy" in spec:
        partition_of: Callable[[Env], Any] | None = compile_expression(spec["partitionBy"])
    elif "partitionByFields" in spec:
        partition_of = _partition_fields_function(_check_partition_fields("$fill", spec["partitionByFields"]))
    else:
        partition_of = None
    outputs = []
    for name, how in spec["output"].items():
        path = _split(name)
        if not isinstance(how, dict) or len(how) != 1 or next(iter(how)) not in ("value", "method"):
            raise CommandError(6050202, "Exactly one of 'value' or 'method' must be specified for each $fill output")
        current = compile_expression("$" + name)
        if "value" in how:
            fill = compile_expression(how["value"])
            outputs.append((path, _fill_value(current, fill)))
            continue
        method = how["method"]
        if method not in ("locf", "linear"):
            raise CommandError(6050202, f"Method must be either 'locf' or 'linear', found {show(method)}")
        if not sort_spec:
            raise CommandError(6050203, "Method 'locf' and 'linear' require a sortBy field in '$fill'")
        outputs.append((path, _parse_window_function("$locf" if method == "locf" else "$linearFill",
                                                     "$" + name, None, sort_spec)))

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            return _apply_outputs(_partitions(list(docs), runtime, partition_of, sort_spec), runtime, outputs)

        return run

    return stage


def _fill_value(current: Compiled, fill: Compiled) -> WindowCompute:
    def compute(partition: _Partition, runtime: _Runtime) -> list[Any]:
        results = []
        for env in partition.envs:
            value = current(env)
            results.append(fill(env) if value is None or value is MISSING else value)
        return results

    return compute


@_stage("$densify")
def _parse_densify(spec: Any, where: _Where) -> Stage:
    if not isinstance(spec, dict):
        raise CommandError(5733000, f"$densify specification must be an object, found {type_name(spec)}")
    for name in spec:
        if name not in ("field", "partitionByFields", "range"):
            raise CommandError(40415, f"BSON field '$densify.{name}' is an unknown field.")
    for name in ("field", "range"):
        if name not in spec:
            raise CommandError(40414, f"BSON field '$densify.{name}' is missing but a required field")
    if not isinstance(spec["field"], str):
        raise CommandError(14, "BSON field '$densify.field' must be a string")
    field_path = _split(spec["field"])
    partition_fields = _check_partition_fields("$densify", spec.get("partitionByFields", []))
    range_spec = spec["range"]
    if not isinstance(range_spec, dict) or "step" not in range_spec or "bounds" not in range_spec:
        raise CommandError(40414, "BSON field '$densify.range.step' and 'bounds' are required")
    step, unit, bounds = range_spec["step"], range_spec.get("unit"), range_spec["bounds"]
    if not is_number(step) or numeric_value(step) <= 0:
        raise CommandError(5733401, "the step parameter in a range statement must be a strictly positive numeric value")
    if unit is not None and (unit not in ("year", "quarter", "month", "week", "day", "hour", "minute", "second",
                                          "millisecond") or _integral(step) is None):
        raise CommandError(5733402, "a unit requires an integral step and must be a valid time unit")
    if bounds not in ("full", "partition") and not (isinstance(bounds, list) and len(bounds) == 2):
        raise CommandError(5946802, "the bounds in a range statement must be the string 'full', 'partition', or an "
                                    "ascending array of two numbers or two dates")
    partition_paths = [_split(name) for name in partition_fields]
    increment = numeric_value(step)

    def position(value: Any) -> Any:
        if unit is not None:
            if not is_date(value):
                raise CommandError(6053600, f"Densify field type must be a date when a unit is given, found "
                                            f"{type_name(value)}")
            return date_millis(value)
        if not is_number(value):
            raise CommandError(5733201, f"Densify field type must be numeric, found {type_name(value)}")
        return numeric_value(value)

    def point(origin: Any, k: int) -> tuple[Any, Any]:
        """The k-th grid point from ``origin`` as (comparable position, BSON value)."""
        if unit is None:
            value = origin + k * increment
            return value, value
        millis = add_to_date(origin, unit, k * int(increment), parse_timezone("UTC"))
        return millis, date_from_millis(millis)

    def fill_between(low: Any, high: Any, inclusive: bool, present: set) -> list[Any]:
        """Grid points from ``low`` (the grid's origin) up to ``high`` that no document occupies."""
        values = []
        k = 0
        while True:
            here, value = point(low, k)
            if here > high or (here == high and not inclusive):
                return values
            if here not in present:
                values.append((here, value))
            k += 1

    def stage(runtime: _Runtime) -> Runner:
        def run(docs: Iterator[Doc]) -> Iterator[Doc]:
            groups: dict[tuple, tuple[list[Any], list[tuple[Any, Doc]]]] = {}
            for doc in docs:
                value = _get_nested(doc, field_path)
                if value is None or value is MISSING:
                    yield doc  # documents without the field pass through untouched
                    continue
                key_values = [_get_nested(doc, path) for path in partition_paths]
                entry = groups.setdefault(value_key(key_values, runtime.collation), (key_values, []))
                entry[1].append((position(value), doc))
            if not groups:
                return
            everything = [here for _, members in groups.values() for here, _ in members]
            for key in sorted(groups):
                key_values, members = groups[key]
                members.sort(key=lambda member: member[0])
                present = {here for here, _ in members}
                if bounds == "full":
                    low, high, inclusive = min(everything), max(everything), True
                elif bounds == "partition":
                    low, high, inclusive = members[0][0], members[-1][0], True
                else:
                    low, high, inclusive = position(bounds[0]), position(bounds[1]), False
                generated = fill_between(low, high, inclusive, present)
                for here, doc in heapq.merge(
                    members,
                    ((here, _new_densify_doc(value, field_path, partition_paths, key_values))
                     for here, value in generated),
                    key=lambda member: member[0],
                ):
                    yield doc

        return run

    return stage


def _new_densify_doc(value: Any, field_path: list[str], partition_paths: list[list[str]],
                     key_values: list[Any]) -> Doc:
    doc: Doc = {}
    for path, partition_value in zip(partition_paths, key_values):
        doc = _set_nested(doc, path, partition_value)
    return _set_nested(doc, field_path, value)
