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

    def namespace(self, db: str | None, coll: str) -> tuple[str, str]:
        return (db or getattr(self.ctx, "current_db", None) or "test", coll)

    def read(self, db: str | None, coll: str | None, stage: str) -> list[Doc]:
        if coll is None:
            return []
        return list(self.context(stage).read_collection(*self.namespace(db, coll)))


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
    """Where a stage sits, for the placement rules (first/last only, inside $facet/$lookup)."""

    index: int
    count: int
    facet: bool = False
    sub: bool = False


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
        stage = parser(argument, _Where(index, len(pipeline), facet, sub))
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
