"""``find`` projections (MongoDB 4.4+ semantics).

A projection spec is parsed once into a tree keyed by field name and applied to each document in
one walk. Inclusion output keeps the *document's* field order; computed fields, ``$elemMatch``
results and sub-documents created only for computed fields follow, in spec order, as the server's
projection executor appends them.

Results share unmodified sub-values with the input document (and an empty projection returns the
input itself): callers that mutate a projected document must copy it first.
"""

from __future__ import annotations

from typing import Any, Iterator

from bson.dbref import DBRef

from mongoemu.bsonvalues import MISSING, is_number, numeric_value
from mongoemu.errors import CommandError
from mongoemu.query.collation import Collation
from mongoemu.query.matcher import Matcher, expression_function
from mongoemu.query.paths import split_path

_META_NAMES = frozenset((
    "textScore", "indexKey", "recordId", "sortKey", "searchScore", "searchHighlights",
    "searchScoreDetails", "geoNearDistance", "geoNearPoint", "randVal", "vectorSearchScore",
    "score", "scoreDetails", "searchSequenceToken",
))


class _Flag:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INCLUDE = _Flag("INCLUDE")
EXCLUDE = _Flag("EXCLUDE")


class _Slice:
    __slots__ = ("skip", "limit")

    def __init__(self, spec: Any) -> None:
        if is_number(spec):
            self.skip: int | None = None
            self.limit = _to_int(spec)
        elif isinstance(spec, list) and len(spec) == 2 and all(is_number(v) for v in spec):
            self.skip = _to_int(spec[0])
            self.limit = _to_int(spec[1])
            if self.limit <= 0:
                raise CommandError(28724, "Second argument to $slice must be a positive number")
        else:
            raise CommandError(28667, "$slice only supports numbers and [skip, limit] arrays")

    def apply(self, value: Any) -> Any:
        if value.__class__ is not list:
            return value
        if self.skip is None:
            if self.limit >= 0:
                return value[: self.limit]
            return value[max(len(value) + self.limit, 0):]
        start = max(len(value) + self.skip, 0) if self.skip < 0 else self.skip
        return value[start:start + self.limit]


class _ElemMatch:
    """The first array element matching, as a one-element array (omitted when none matches)."""

    __slots__ = ("name", "matcher")

    def __init__(self, name: str, spec: Any, collation: Collation | None, variables: dict[str, Any]) -> None:
        self.name = name
        self.matcher = Matcher({name: {"$elemMatch": spec}}, collation, variables)

    def apply(self, value: Any) -> Any:
        matched, position = self.matcher.matches_with_position({self.name: value})
        if not matched or position is None:
            return MISSING
        return [value[position]]


class _Expr:
    __slots__ = ("evaluate",)

    def __init__(self, expression: Any, collation: Collation | None, variables: dict[str, Any]) -> None:
        self.evaluate = expression_function(expression, variables, collation)


class _Meta:
    """``{$meta: ...}``: accepted for compatibility; the emulator has no scores to report."""

    __slots__ = ()


class _Node:
    """One level of the projection tree; ``computed`` marks subtrees that add fields."""

    __slots__ = ("children", "computed")

    def __init__(self) -> None:
        self.children: dict[str, Any] = {}
        self.computed = False


Action = Any  # _Flag | _Node | _Slice | _ElemMatch | _Expr | _Meta


def _to_int(value: Any) -> int:
    number = numeric_value(value)
    if number != number:
        return 0
    if number in (float("inf"), float("-inf")):
        return 2**31 - 1 if number > 0 else -(2**31)
    return int(number)


def _is_true(value: Any) -> bool:
    return bool(numeric_value(value))


class Projection:
    """A parsed projection; ``apply`` it to every document a query returns."""

    __slots__ = ("spec", "inclusion", "_root", "_positional", "_variables")

    def __init__(
        self,
        spec: dict[str, Any] | None,
        *,
        collation: Collation | None = None,
        variables: dict[str, Any] | None = None,
    ) -> None:
        if spec is not None and not isinstance(spec, dict):
            raise CommandError(14, "projection must be an object")
        self.spec = spec or {}
        self._variables = variables or {}
        self._positional: tuple[str, ...] | None = None
        self._root = _Node()
        entries = list(_flatten(self.spec, ""))
        self.inclusion = _decide_mode(entries)
        for path, value in entries:
            self._add(path, value, collation)
        if self.inclusion and "_id" not in self._root.children:
            self._root.children = {"_id": INCLUDE, **self._root.children}

    @property
    def is_identity(self) -> bool:
        """True for an empty projection, which returns documents unchanged."""
        return not self.spec

    def _add(self, path: str, value: Any, collation: Collation | None) -> None:
        if path.endswith(".$"):
            if self._positional is not None:
                raise CommandError(31276, "Cannot specify more than one positional projection per query.")
            self._positional = split_path(path[:-2])
            self._insert(path[:-2], INCLUDE)
            return
        if isinstance(value, dict) and value:
            operator = next(iter(value))
            if operator == "$slice":
                if len(value) != 1:
                    raise CommandError(2, f"Invalid $slice projection on field {path}")
                self._insert(path, _Slice(value["$slice"]))
                return
            if operator == "$elemMatch":
                if "." in path:
                    raise CommandError(31275, "Cannot use $elemMatch projection on a nested field.")
                if not isinstance(value["$elemMatch"], dict):
                    raise CommandError(31274, "elemMatch: Invalid argument, object required.")
                self._insert(path, _ElemMatch(path, value["$elemMatch"], collation, self._variables))
                return
            if operator == "$meta":
                name = value["$meta"]
                if not isinstance(name, str) or name not in _META_NAMES:
                    raise CommandError(17308, f"Unsupported argument to $meta: {name}")
                self._insert(path, _Meta())
                return
        if _is_flag(value):
            self._insert(path, INCLUDE if _is_true(value) else EXCLUDE)
            return
        self._insert(path, _Expr(value, collation, self._variables))

    def _insert(self, path: str, action: Action) -> None:
        parts = split_path(path)
        node = self._root
        computed = isinstance(action, (_Expr, _ElemMatch))
        for depth, part in enumerate(parts[:-1]):
            if computed:
                node.computed = True
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node()
            elif not isinstance(child, _Node):
                remaining = ".".join(parts[depth + 1:])
                raise CommandError(31250, f"Path collision at {path} remaining portion {remaining}")
            node = child
        leaf = parts[-1]
        if leaf in node.children:
            raise CommandError(31250, f"Path collision at {path}")
        if computed:
            node.computed = True
        node.children[leaf] = action

    def apply(self, doc: dict[str, Any], matched_position: int | None = None) -> dict[str, Any]:
        """Project ``doc``; ``matched_position`` is the filter's array offset for ``path.$``."""
        if not self.spec:
            return doc
        if self._positional is not None:
            doc = _select_position(doc, self._positional, matched_position)
        if self.inclusion:
            return self._include(doc, self._root, doc)
        return self._exclude(doc, self._root, doc)

    def _include(self, value: dict[str, Any], node: _Node, root: dict[str, Any]) -> dict[str, Any]:
        children = node.children
        out: dict[str, Any] = {}
        for key, field_value in value.items():
            action = children.get(key)
            if action is None or action is EXCLUDE:
                continue
            if action is INCLUDE:
                out[key] = field_value
            elif action.__class__ is _Node:
                projected = self._include_value(field_value, action, root)
                if projected is not MISSING:
                    out[key] = projected
            elif action.__class__ is _Slice:
                out[key] = action.apply(field_value)
        if node.computed:
            self._add_computed(value, node, root, out)
        return out

    def _include_value(self, value: Any, node: _Node, root: dict[str, Any]) -> Any:
        """Sub-documents are projected, arrays element-wise; scalars have nothing to include."""
        cls = value.__class__
        if cls is dict:
            return self._include(value, node, root)
        if cls is list:
            out = []
            for element in value:
                projected = self._include_value(element, node, root)
                if projected is not MISSING:
                    out.append(projected)
            return out
        if cls is DBRef:
            return self._include(value.as_doc(), node, root)
        return MISSING

    def _add_computed(self, value: dict[str, Any], node: _Node, root: dict[str, Any], out: dict[str, Any]) -> None:
        for key, action in node.children.items():
            cls = action.__class__
            if cls is _Expr:
                result = action.evaluate(root)
                if result is not MISSING:
                    out[key] = result
            elif cls is _ElemMatch:
                result = action.apply(value.get(key, MISSING))
                if result is not MISSING:
                    out[key] = result
            elif cls is _Node and action.computed and key not in out:
                # The server replaces a missing or scalar value by a document of the computed fields.
                out[key] = self._include({}, action, root)

    def _exclude(self, value: dict[str, Any], node: _Node, root: dict[str, Any]) -> dict[str, Any]:
        children = node.children
        out: dict[str, Any] = {}
        for key, field_value in value.items():
            action = children.get(key)
            if action is None or action is INCLUDE or action.__class__ is _Meta:
                out[key] = field_value
            elif action.__class__ is _Node:
                out[key] = self._exclude_value(field_value, action, root)
            elif action.__class__ is _Slice:
                out[key] = action.apply(field_value)
        if node.computed:
            self._add_computed(value, node, root, out)
        return out

    def _exclude_value(self, value: Any, node: _Node, root: dict[str, Any]) -> Any:
        cls = value.__class__
        if cls is dict:
            return self._exclude(value, node, root)
        if cls is list:
            return [self._exclude_value(element, node, root) for element in value]
        return value


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool) or is_number(value)


def _flatten(spec: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """Nested specs (``{a: {b: 1}}``) become dotted paths; operator documents stay whole."""
    for key, value in spec.items():
        path = prefix + key
        parts = split_path(path)
        for depth, part in enumerate(parts):
            if part == "":
                raise CommandError(40352, "FieldPath field names may not be empty strings.")
            if part == "$" and depth > 0:
                if depth != len(parts) - 1:
                    raise CommandError(
                        31394, "As of 4.4, it's illegal to specify positional operator in the middle of a path"
                    )
            elif part.startswith("$"):
                raise CommandError(
                    16410, "FieldPath field names may not start with '$'. Consider using $getField or $setField."
                )
        if isinstance(value, dict) and not value:
            raise CommandError(
                51270, f"An empty sub-projection is not a valid value. Found empty object at path {path}"
            )
        if isinstance(value, dict) and not next(iter(value)).startswith("$"):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def _decide_mode(entries: list[tuple[str, Any]]) -> bool:
    """Inclusion (True) or exclusion (False), rejecting mixtures the way the server words it."""
    mode: bool | None = None
    has_elem_match = False
    id_included = False
    for path, value in entries:
        if isinstance(value, dict) and value and next(iter(value)) in ("$slice", "$meta"):
            continue
        if isinstance(value, dict) and value and next(iter(value)) == "$elemMatch":
            has_elem_match = True
            continue
        if path.endswith(".$"):
            if _is_flag(value) and not _is_true(value):
                raise CommandError(31395, f"Cannot exclude positional projection on field {path}")
            kind = True
        elif _is_flag(value):
            kind = _is_true(value)
            if path == "_id":
                id_included = kind
                continue
        else:
            kind = True
            if mode is False:
                raise CommandError(31252, "Cannot use expression other than $meta in exclusion projection")
        if mode is None:
            mode = kind
        elif mode != kind:
            if mode:
                raise CommandError(31254, f"Cannot do exclusion on field {path} in inclusion projection")
            raise CommandError(31253, f"Cannot do inclusion on field {path} in exclusion projection")
    if mode is None:
        return has_elem_match or id_included
    return mode


def _select_position(doc: dict[str, Any], parts: tuple[str, ...], position: int | None) -> dict[str, Any]:
    """A copy of ``doc`` whose first array along ``parts`` keeps only the matched element."""
    def narrow(value: Any, depth: int) -> Any:
        if value.__class__ is list:
            if position is None or position >= len(value):
                raise CommandError(
                    51246, "positional operator '.$' couldn't find a matching element in the array"
                )
            return [value[position]]
        if depth == len(parts) or value.__class__ is not dict or parts[depth] not in value:
            return value
        copy = dict(value)
        copy[parts[depth]] = narrow(value[parts[depth]], depth + 1)
        return copy

    return narrow(doc, 0)
