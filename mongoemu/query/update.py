"""The write side of the query engine: update operators, replacements, pipeline updates, upserts.

Everything here is a pure function over plain documents (dicts decoded with ``bsonvalues.CODEC``):
:func:`parse_update` validates an update statement once (parse-time errors, raised even when no
document matches), :func:`apply_update` / :meth:`ParsedUpdate.apply` return a new document and
never mutate their input, :func:`upsert_seed` builds the document an upsert starts from, and
:func:`validate_new_document` applies an insert's storage rules.

Operator updates follow the server's update tree (``src/mongo/db/update``): every ``{$op: {path:
arg}}`` entry is merged into a prefix tree of paths, which is where ConflictingUpdateOperators is
detected, and the tree is applied with the children of each node in field-name order (numeric names
in numeric order, as since 5.0) — which is why ``{$set: {b: 1, a: 1}}`` on ``{}`` yields
``{a: 1, b: 1}``.  Error codes and messages are the server's.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128, create_decimal128_context
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import (
    BSON_UNDEFINED,
    MISSING,
    compare,
    datetime_to_millis,
    deep_copy,
    is_number,
    raw_element_type,
    type_name,
    values_equal,
)
from mongoemu.errors import CommandError
from mongoemu.query.collation import Collation, sort_key_collated
from mongoemu.query.update_description import bson_identical

UpdateKind = Literal["operators", "replacement", "pipeline"]

MODIFIERS: frozenset[str] = frozenset({
    "$addToSet", "$bit", "$currentDate", "$inc", "$max", "$min", "$mul", "$pop", "$pull",
    "$pullAll", "$push", "$rename", "$set", "$setOnInsert", "$unset",
})

# Stages a pipeline-style update may use (DocumentSource::isAllowedWithinUpdatePipeline).
_UPDATE_PIPELINE_STAGES = frozenset({
    "$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith",
    "$_internalApplyOplogUpdate",
})

# Operators whose $pull argument is matched against the element itself (parsePathAcceptingKeyword).
_PATH_ACCEPTING_KEYWORDS = frozenset({
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all", "$size", "$exists",
    "$type", "$mod", "$regex", "$options", "$elemMatch", "$not", "$bitsAllSet", "$bitsAllClear",
    "$bitsAnySet", "$bitsAnyClear", "$geoIntersects", "$geoWithin", "$within", "$near",
    "$nearSphere",
})

_MAX_USER_DEPTH = 180  # BSONDepth::getMaxDepthForUserStorage()
_MAX_ARRAY_PADDING = 1500000  # pathsupport::kMaxPaddingAllowed
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PLACEHOLDER_IDENTIFIER = re.compile(r"^[a-z][a-zA-Z0-9]*$")
_DECIMAL_CONTEXT = create_decimal128_context()

_REPLACEMENT_DOLLAR_HINT = ("' is not allowed in the context of an update's replacement document. "
                            "Consider using an aggregation pipeline with $replaceWith.")


# ---------------------------------------------------------------------------------------------
# How the server prints values in error messages (BSONElement::toString)


def _double_str(value: float) -> str:
    text = "%.16g" % value
    if "." not in text and "E" not in text and "N" not in text:
        text += ".0"
    return text


def _value_str(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _double_str(value)
    if isinstance(value, Decimal128):
        return f'NumberDecimal("{value}")'
    if isinstance(value, str):
        if len(value.encode("utf-8")) > 159:
            return '"' + value.encode("utf-8")[:150].decode("utf-8", "ignore") + '..."'
        return f'"{value}"'
    if isinstance(value, DBRef):
        value = value.as_doc()
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k}: {_value_str(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[ " + ", ".join(_value_str(v) for v in value) + " ]"
    if isinstance(value, ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return f"new Date({datetime_to_millis(value)})"
    if isinstance(value, Timestamp):
        return f"Timestamp({value.time}, {value.inc})"
    if isinstance(value, (bytes, Binary)):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return f"BinData({subtype}, {bytes(value).hex().upper()})"
    if isinstance(value, Regex):
        return f"/{value.pattern}/{_regex_flags(value)}"
    if isinstance(value, re.Pattern):
        return f"/{value.pattern}/"
    if isinstance(value, MinKey):
        return "MinKey"
    if isinstance(value, MaxKey):
        return "MaxKey"
    if isinstance(value, Code):
        return str(value)
    return repr(value)


def _regex_flags(value: Regex) -> str:
    flags = value.flags
    if isinstance(flags, str):
        return flags
    letters = [("i", re.IGNORECASE), ("l", re.LOCALE), ("m", re.MULTILINE), ("s", re.DOTALL),
               ("u", re.UNICODE), ("x", re.VERBOSE)]
    return "".join(letter for letter, bit in letters if flags & bit)


def _elem_str(name: str, value: Any) -> str:
    return f"{name}: {_value_str(value)}"


def _id_str(document: Mapping[str, Any]) -> str:
    return _elem_str("_id", document["_id"]) if "_id" in document else "no id"


def _safe_num_str(value: Any) -> str:
    """SafeNum::debugString, used by the arithmetic overflow message."""
    kind = _num_kind(value)
    label = {"int": "NumberInt", "long": "NumberLong", "double": "NumberDouble",
             "decimal": "NumberDecimal"}[kind]
    return f"({label}){_value_str(value)}"


def _conflict(path: str, at: str) -> CommandError:
    return CommandError(40, f"Updating the path '{path}' would create a conflict at '{at}'")


def _merge_conflict(path: list[str]) -> CommandError:
    return CommandError(40, f"Update created a conflict at '{'.'.join(path)}'")


def _same(a: Any, b: Any, collation: Collation | None) -> bool:
    """Equality as $addToSet/$pull/$pullAll see it: BSON comparison under the collation."""
    if collation is None:
        return values_equal(a, b)
    return sort_key_collated(a, collation) == sort_key_collated(b, collation)


def _order(a: Any, b: Any, collation: Collation | None) -> int:
    if collation is None:
        return compare(a, b)
    key_a, key_b = sort_key_collated(a, collation), sort_key_collated(b, collation)
    return (key_a > key_b) - (key_a < key_b)


# ---------------------------------------------------------------------------------------------
# Field-name order and path helpers


def _is_strict_numeric(name: str) -> bool:
    return name.isascii() and name.isdigit() and (name == "0" or name[0] != "0")


def _compare_field_names(a: str, b: str) -> int:
    """Order of update application (5.0+): numeric names numerically, others lexicographically."""
    if _is_strict_numeric(a) and _is_strict_numeric(b):
        return (int(a) > int(b)) - (int(a) < int(b))
    return (a > b) - (a < b)


_field_order_key = functools.cmp_to_key(_compare_field_names)


def _parse_index(part: str) -> int | None:
    """str::parseUnsignedBase10Integer: digits only (leading zeros allowed)."""
    return int(part) if part.isascii() and part.isdigit() else None


def _is_array_filter_identifier(part: str) -> bool:
    return len(part) >= 3 and part.startswith("$[") and part.endswith("]")


def _split_path(path: str) -> list[str]:
    """FieldRef parsing, rejecting the empty paths and components the server rejects."""
    if path == "":
        raise CommandError(56, "An empty update path is not valid.")
    parts = path.split(".")
    if "" in parts:
        raise CommandError(56, f"The update path '{path}' contains an empty field name, "
                               "which is not allowed.")
    return parts


# ---------------------------------------------------------------------------------------------
# Classification


def _kind_of(update: Any) -> UpdateKind:
    """write_ops::UpdateModification: a list is a pipeline, a document whose first field starts
    with ``$`` is an operator update, any other document (even ``{}``) a replacement."""
    if isinstance(update, list):
        for stage in update:
            if not isinstance(stage, Mapping):
                raise CommandError(14, "Each element of the 'pipeline' array must be an object")
        return "pipeline"
    if not isinstance(update, Mapping):
        raise CommandError(9, "Update argument must be either an object or an array")
    first = next(iter(update), None)
    if first is None or not first.startswith("$"):
        return "replacement"
    return "operators"


def _validate_modifier(name: str, argument: Any) -> None:
    """validateMod (update_driver.cpp)."""
    if name not in MODIFIERS:
        raise CommandError(9, f"Unknown modifier: {name}. Expected a valid update modifier or "
                              "pipeline-style update specified as an array")
    if not isinstance(argument, Mapping):
        raise CommandError(9, f"Modifiers operate on fields but we found type "
                              f"{type_name(argument)} instead. For example: {{$mod: {{<field>:"
                              f" ...}}}} not {{{_elem_str(name, argument)}}}")


def classify_update(update: Any) -> UpdateKind:
    """Which kind of update ``update`` is, raising the server's parse errors for its shape.

    In an operator update every field must be a known operator with a document argument
    (``{$set: ..., a: 1}`` fails with FailedToParse).  A document that does not start with a
    ``$`` field is a replacement — a ``$``-prefixed field after a plain one is rejected only when
    the replacement is applied (DollarPrefixedFieldName), as the server does.
    """
    kind = _kind_of(update)
    if kind == "operators":
        for name, argument in update.items():
            _validate_modifier(name, argument)
    return kind


# ---------------------------------------------------------------------------------------------
# arrayFilters


def _top_level_field_name(expression: Mapping[str, Any]) -> str | None:
    """ExpressionWithPlaceholder: the single field an array filter is about (through $and/$or)."""
    found: str | None = None
    for key, value in expression.items():
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            names = [_top_level_field_name(sub) for sub in value if isinstance(sub, Mapping)]
        elif key.startswith("$"):
            continue
        else:
            names = [key.split(".", 1)[0]]
        for name in names:
            if name is None:
                continue
            if found is None:
                found = name
            elif name != found:
                raise CommandError(9, "Error parsing array filter :: caused by :: Expected a "
                                      f"single top-level field name, found '{found}' and "
                                      f"'{name}'")
    return found


def _parse_array_filters(array_filters: list | None,
                         collation: Collation | None) -> dict[str, Any]:
    """Identifier → matcher, validated the way the server validates ``arrayFilters``."""
    if array_filters is None:
        return {}
    if not isinstance(array_filters, list):
        raise CommandError(14, "BSON field 'arrayFilters' is the wrong type "
                               f"'{type_name(array_filters)}', expected type 'array'")
    from mongoemu.query.matcher import Matcher  # lazy: the matcher is another module's work

    parsed: dict[str, Any] = {}
    for index, raw in enumerate(array_filters):
        if not isinstance(raw, Mapping):
            raise CommandError(14, f"BSON field 'arrayFilters.{index}' is the wrong type "
                                   f"'{type_name(raw)}', expected type 'object'")
        for key in raw:
            if key.startswith("$") and key not in ("$and", "$or", "$nor", "$comment"):
                raise CommandError(2, "Error parsing array filter :: caused by :: unknown top "
                                      f"level operator: {key}")
        identifier = _top_level_field_name(raw)
        if identifier is None:
            raise CommandError(9, "Cannot use an expression without a top-level field name in "
                                  "arrayFilters")
        if not _PLACEHOLDER_IDENTIFIER.match(identifier):
            raise CommandError(2, "Error parsing array filter :: caused by :: The top-level field "
                                  "name must be an alphanumeric string beginning with a lowercase "
                                  f"letter, found '{identifier}'")
        if identifier in parsed:
            raise CommandError(9, "Found multiple array filters with the same top-level field "
                                  f"name {identifier}")
        try:
            parsed[identifier] = Matcher(raw, collation=collation)
        except CommandError as error:
            raise CommandError(error.code, f"Error parsing array filter :: caused by :: "
                                           f"{error.errmsg}") from error
    return parsed


# ---------------------------------------------------------------------------------------------
# The update tree


_RENAME_SOURCE = "$rename:source"  # ConflictPlaceholderNode: reserves the $rename source path


@dataclass
class _Leaf:
    op: str
    path: str  # as written, for messages
    arg: Any


@dataclass
class _ObjectNode:
    children: dict[str, Any] = field(default_factory=dict)
    positional: Any = None

    def get(self, name: str) -> Any:
        return self.positional if name == "$" else self.children.get(name)

    def set(self, name: str, child: Any) -> None:
        if name == "$":
            self.positional = child
        else:
            self.children[name] = child

    def ordered_names(self) -> list[str]:
        return sorted(self.children, key=_field_order_key)


@dataclass
class _ArrayNode:
    children: dict[str, Any] = field(default_factory=dict)  # identifier ("" for $[]) → node

    def get(self, name: str) -> Any:
        return self.children.get(name)

    def set(self, name: str, child: Any) -> None:
        self.children[name] = child


@dataclass
class _PushSpec:
    values: list
    slice: int | None = None
    sort: Any = None  # 1/-1 (whole elements) or a {field: 1/-1} document
    position: int | None = None


@dataclass
class _PullSpec:
    kind: Literal["equal", "object", "wrapped"]
    value: Any
    matcher: Any = None


def _integer_argument(value: Any) -> int | None:
    """MatchExpressionParser::parseIntegerElementToLong, returning None where it fails."""
    if not is_number(value):
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value) or value != int(value):
            return None
        if not _INT64_MIN <= value < 2.0**63:
            return None
        return int(value)
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        if not number.is_finite() or number != number.to_integral_value():
            return None
        number = int(number)
        return number if _INT64_MIN <= number <= _INT64_MAX else None
    return int(value)


def _init_push(raw: Any) -> _PushSpec:
    if not (isinstance(raw, Mapping) and "$each" in raw):
        return _PushSpec(values=[raw])
    for clause in raw:
        if clause not in ("$each", "$slice", "$sort", "$position"):
            raise CommandError(2, f"Unrecognized clause in $push: {clause}")
    each = raw["$each"]
    if not isinstance(each, list):
        raise CommandError(2, "The argument to $each in $push must be an array but it was of "
                              f"type: {type_name(each)}")
    spec = _PushSpec(values=list(each))
    if "$slice" in raw:
        spec.slice = _integer_argument(raw["$slice"])
        if spec.slice is None:
            raise CommandError(2, "The value for $slice must be an integer value but was given "
                                  f"type: {type_name(raw['$slice'])}")
    if "$sort" in raw:
        spec.sort = _init_push_sort(raw["$sort"])
    if "$position" in raw:
        spec.position = _integer_argument(raw["$position"])
        if spec.position is None:
            raise CommandError(2, "The value for $position must be an integer value, not of "
                                  f"type: {type_name(raw['$position'])}")
    return spec


def _sort_direction(value: Any) -> int | None:
    if not is_number(value):
        return None
    number = float(value.to_decimal()) if isinstance(value, Decimal128) else float(value)
    return int(number) if number in (1.0, -1.0) else None


def _init_push_sort(sort: Any) -> Any:
    if isinstance(sort, Mapping):
        if not sort:
            raise CommandError(2, "The $sort pattern is empty when it should be a set of fields.")
        pattern = {}
        for name, direction in sort.items():
            parsed = _sort_direction(direction)
            if parsed is None:
                raise CommandError(2, "The $sort element value must be either 1 or -1")
            if name == "":
                raise CommandError(2, "The $sort field cannot be empty")
            if "" in name.split("."):
                raise CommandError(2, "The $sort field is a dotted field but has an empty part: "
                                      f"{name}")
            pattern[name] = parsed
        return pattern
    if is_number(sort):
        parsed = _sort_direction(sort)
        if parsed is None:
            raise CommandError(2, "The $sort element value must be either 1 or -1")
        return parsed
    raise CommandError(2, "The $sort is invalid: use 1/-1 to sort the whole element, or "
                          "{field:1/-1} to sort embedded fields")


def _init_add_to_set(raw: Any, collation: Collation | None) -> list:
    values = [raw]
    if isinstance(raw, Mapping) and next(iter(raw), None) == "$each":
        each = raw["$each"]
        if not isinstance(each, list):
            raise CommandError(14, "The argument to $each in $addToSet must be an array but it "
                                   f"was of type {type_name(each)}")
        if len(raw) > 1:
            raise CommandError(2, "Found unexpected fields after $each in $addToSet: "
                                  f"{_value_str(raw)}")
        values = each
    deduplicated: list = []
    for value in values:
        if not any(_same(value, kept, collation) for kept in deduplicated):
            deduplicated.append(value)
    return deduplicated


def _init_pull(raw: Any, collation: Collation | None) -> _PullSpec:
    if isinstance(raw, Mapping) and next(iter(raw), "") not in _PATH_ACCEPTING_KEYWORDS:
        from mongoemu.query.matcher import Matcher  # lazy: the matcher is another module's work

        return _PullSpec("object", raw, Matcher(raw, collation=collation))
    if isinstance(raw, (Mapping, Regex, re.Pattern)):
        from mongoemu.query.matcher import Matcher

        # The server wraps condition and element under the same (empty) name; any name will do.
        return _PullSpec("wrapped", raw, Matcher({"v": raw}, collation=collation))
    return _PullSpec("equal", raw)


def _init_current_date(raw: Any) -> str:
    if isinstance(raw, bool):
        return "date"
    if isinstance(raw, Mapping):
        kind = None
        for name, value in raw.items():
            if name != "$type":
                raise CommandError(2, f"Unrecognized $currentDate option: {name}")
            if value in ("date", "timestamp"):
                kind = value
        if kind is None:
            raise CommandError(2, "The '$type' string field is required to be 'date' or "
                                  "'timestamp': {$currentDate: {field : {$type: 'date'}}}")
        return kind
    raise CommandError(2, f"{type_name(raw)} is not valid type for $currentDate. Please use a "
                          "boolean ('true') or a $type expression ({$type: 'timestamp/date'}).")


def _init_bit(raw: Any) -> list[tuple[str, int | Int64]]:
    if not isinstance(raw, Mapping):
        raise CommandError(2, f"The $bit modifier is not compatible with a {type_name(raw)}. You "
                              "must pass in an embedded document: {$bit: {field: {and/or/xor: #}}")
    operations = []
    for name, operand in raw.items():
        if name not in ("and", "or", "xor"):
            raise CommandError(2, "The $bit modifier only supports 'and', 'or', and 'xor', not "
                                  f"'{name}' which is an unknown operator: "
                                  f"{{{_elem_str(name, operand)}}}")
        if _num_kind(operand) not in ("int", "long"):
            raise CommandError(2, "The $bit modifier field must be an Integer(32/64 bit); a "
                                  f"'{type_name(operand)}' is not supported here: "
                                  f"{{{_elem_str(name, operand)}}}")
        operations.append((name, operand))
    if not operations:
        raise CommandError(2, "You must pass in at least one bitwise operation. The format is: "
                              "{$bit: {field: {and/or/xor: #}}")
    return operations


def _init_rename(source: str, target: str) -> None:
    if "\0" in target:
        raise CommandError(2, "The 'to' field for $rename cannot contain an embedded null byte")
    from_parts, to_parts = source.split("."), target.split(".")
    description = _elem_str(source, target)
    if from_parts == to_parts:
        raise CommandError(2, f"The source and target field for $rename must differ: {description}")
    shorter = min(len(from_parts), len(to_parts))
    if from_parts[:shorter] == to_parts[:shorter]:
        raise CommandError(2, "The source and target field for $rename must not be on the same "
                              f"path: {description}")
    if any(p == "$" or _is_array_filter_identifier(p) for p in from_parts):
        raise CommandError(2, f"The source field for $rename may not be dynamic: {source}")
    if any(p == "$" or _is_array_filter_identifier(p) for p in to_parts):
        raise CommandError(2, f"The destination field for $rename may not be dynamic: {target}")


def _make_leaf(op: str, path: str, raw: Any, collation: Collation | None,
               rename_source: str | None) -> _Leaf:
    """UpdateLeafNode::init: validates the operator argument."""
    if op in ("$inc", "$mul") and not is_number(raw):
        verb = "increment" if op == "$inc" else "multiply"
        raise CommandError(14, f"Cannot {verb} with non-numeric argument: "
                               f"{{{_elem_str(path, raw)}}}")
    if op == "$push":
        return _Leaf(op, path, _init_push(raw))
    if op == "$addToSet":
        return _Leaf(op, path, _init_add_to_set(raw, collation))
    if op == "$pull":
        return _Leaf(op, path, _init_pull(raw, collation))
    if op == "$pullAll":
        if not isinstance(raw, list):
            raise CommandError(2, f"$pullAll requires an array argument but was given a "
                                  f"{type_name(raw)}")
        return _Leaf(op, path, raw)
    if op == "$pop":
        count = _integer_argument(raw)
        if count is None:
            raise CommandError(9, f"Expected a number in: {_elem_str(path, raw)}")
        if count not in (1, -1):
            raise CommandError(9, f"$pop expects 1 or -1, found: {count}")
        return _Leaf(op, path, count == -1)
    if op == "$currentDate":
        return _Leaf(op, path, _init_current_date(raw))
    if op == "$bit":
        return _Leaf(op, path, _init_bit(raw))
    if op == "$rename":
        assert rename_source is not None
        _init_rename(rename_source, path)
        return _Leaf(op, path, rename_source)
    return _Leaf(op, path, raw)


def _child_name(part: str, position: int, path: str, filters: Mapping[str, Any],
                used: set[str]) -> str:
    if not _is_array_filter_identifier(part):
        return part
    if position == 0:
        raise CommandError(2, "Cannot have array filter identifier (i.e. '$[<id>]') element in the "
                              f"first position in path '{path}'")
    identifier = part[2:-1]
    if identifier:
        if identifier not in filters:
            raise CommandError(2, f"No array filter found for identifier '{identifier}' in path "
                                  f"'{path}'")
        used.add(identifier)
    return identifier


def _merge_into_tree(root: _ObjectNode, op: str, path: str, raw: Any,
                     filters: Mapping[str, Any], used: set[str],
                     collation: Collation | None, rename_source: str | None = None) -> None:
    """UpdateObjectNode::parseAndMerge."""
    parts = _split_path(path)
    positions = [i for i, part in enumerate(parts) if part == "$"]
    if len(positions) > 1:
        raise CommandError(2, f"Too many positional (i.e. '$') elements found in path '{path}'")
    if positions and positions[0] == 0:
        raise CommandError(2, "Cannot have positional (i.e. '$') element in the first position in "
                              f"path '{path}'")
    leaf = (_Leaf(op, path, None) if op == _RENAME_SOURCE
            else _make_leaf(op, path, raw, collation, rename_source))
    current: Any = root
    for i in range(len(parts) - 1):
        name = _child_name(parts[i], i, path, filters, used)
        child = current.get(name)
        wants_array = _is_array_filter_identifier(parts[i + 1])
        if child is not None:
            if not isinstance(child, _ArrayNode if wants_array else _ObjectNode):
                raise _conflict(path, ".".join(parts[:i + 1]))
        else:
            child = _ArrayNode() if wants_array else _ObjectNode()
            current.set(name, child)
        current = child
    name = _child_name(parts[-1], len(parts) - 1, path, filters, used)
    if current.get(name) is not None:
        raise _conflict(path, path)
    current.set(name, leaf)


def _parse_operator_update(update: Mapping[str, Any], filters: Mapping[str, Any],
                           collation: Collation | None) -> _ObjectNode:
    root = _ObjectNode()
    used: set[str] = set()
    for op, fields in update.items():
        _validate_modifier(op, fields)  # one operator at a time, after the previous one's paths
        for path, raw in fields.items():
            if op != "$rename":
                _merge_into_tree(root, op, path, raw, filters, used, collation)
                continue
            _merge_into_tree(root, _RENAME_SOURCE, path, raw, filters, used, collation)
            if not isinstance(raw, str):
                raise CommandError(2, f"The 'to' field for $rename must be a string: "
                                      f"{_elem_str(path, raw)}")
            _merge_into_tree(root, "$rename", raw, None, filters, used, collation,
                             rename_source=path)
    for identifier in sorted(filters):
        if identifier not in used:
            raise CommandError(9, f"The array filter for identifier '{identifier}' was not used in "
                                  f"the update {_value_str(update)}")
    return root


def _merge_nodes(left: Any, right: Any, path: list[str]) -> Any:
    """UpdateNode::createUpdateNodeByMerging: positional/array-filter updates reaching one path."""
    if isinstance(left, _ObjectNode) and isinstance(right, _ObjectNode):
        merged = _ObjectNode(children=dict(left.children))
        for name, child in right.children.items():
            merged.children[name] = (_merge_nodes(merged.children[name], child, path + [name])
                                     if name in merged.children else child)
        if left.positional is not None and right.positional is not None:
            merged.positional = _merge_nodes(left.positional, right.positional, path + ["$"])
        else:
            merged.positional = left.positional or right.positional
        return merged
    if isinstance(left, _ArrayNode) and isinstance(right, _ArrayNode):
        merged_array = _ArrayNode(children=dict(left.children))
        for name, child in right.children.items():
            merged_array.children[name] = (
                _merge_nodes(merged_array.children[name], child, path + [f"$[{name}]"])
                if name in merged_array.children else child)
        return merged_array
    raise _merge_conflict(path)


# ---------------------------------------------------------------------------------------------
# Applying the tree


@dataclass
class _Loc:
    """An element of the document being updated: its container, key, value and printable name."""

    parent: dict | list | None
    key: str | int | None
    value: Any
    name: str


LogEntry = tuple[str, tuple[str, ...], int]


@dataclass
class _State:
    doc: dict
    matched_field: str | None
    is_insert: bool
    validate: bool
    filters: Mapping[str, Any]
    current_date: datetime.datetime
    current_timestamp: Timestamp
    collation: Collation | None
    # What each modifier did, for the oplog entry (the server's update log builder):
    # ("updated" | "created" | "deleted", path, index of the first created component).
    log: list[LogEntry] | None = None

    def record(self, kind: str, path: list[str], first_created: int = 0) -> None:
        if self.log is not None:
            self.log.append((kind, tuple(path), first_created))


_NOOP: Any = object()


def _child_loc(loc: _Loc, name: str) -> _Loc | None:
    container = loc.value
    if isinstance(container, dict):
        if name in container:
            return _Loc(container, name, container[name], name)
    elif isinstance(container, list):
        index = _parse_index(name)
        if index is not None and index < len(container):
            return _Loc(container, index, container[index], name)
    return None


def _resolve(loc: _Loc, parts: list[str]) -> _Loc | None:
    for part in parts:
        found = _child_loc(loc, part)
        if found is None:
            return None
        loc = found
    return loc


def _apply_node(node: Any, loc: _Loc, taken: list[str], to_create: list[str], st: _State) -> None:
    if isinstance(node, _ObjectNode):
        _apply_object_node(node, loc, taken, to_create, st)
    elif isinstance(node, _ArrayNode):
        _apply_array_node(node, loc, taken, to_create, st)
    else:
        _apply_leaf(node, loc, taken, to_create, st)


def _apply_child(child: Any, name: str, loc: _Loc, taken: list[str], to_create: list[str],
                 st: _State) -> tuple[_Loc, list[str], list[str]]:
    found = None if to_create else _child_loc(loc, name)
    if found is not None:
        _apply_node(child, found, taken + [name], [], st)
        return loc, taken, to_create
    _apply_node(child, loc, taken, to_create + [name], st)
    if to_create:
        # A child may just have created this node's missing path: later siblings must see it.
        created = _resolve(loc, to_create)
        if created is not None:
            return created, taken + to_create, []
    return loc, taken, to_create


def _apply_object_node(node: _ObjectNode, loc: _Loc, taken: list[str], to_create: list[str],
                       st: _State) -> None:
    positional = node.positional
    matched = st.matched_field
    if positional is not None and matched is None:
        raise CommandError(2, "The positional operator did not find the match needed from the "
                              "query.")
    for name in node.ordered_names():
        child = node.children[name]
        if positional is not None and name == matched:
            child = _merge_nodes(positional, child, taken + to_create + [matched])
            positional = None
        elif positional is not None and _compare_field_names(matched, name) < 0:
            loc, taken, to_create = _apply_child(positional, matched, loc, taken, to_create, st)
            positional = None
        loc, taken, to_create = _apply_child(child, name, loc, taken, to_create, st)
    if positional is not None:
        _apply_child(positional, matched, loc, taken, to_create, st)


def _apply_array_node(node: _ArrayNode, loc: _Loc, taken: list[str], to_create: list[str],
                      st: _State) -> None:
    if to_create:
        raise CommandError(2, f"The path '{'.'.join(taken + to_create)}' must exist in the "
                              "document in order to apply array updates.")
    array = loc.value
    if not isinstance(array, list):
        raise CommandError(2, "Cannot apply array updates to non-array element "
                              f"{_elem_str(loc.name, array)}")
    # Decide every element's updates before changing any of them, as the server does.
    plan: list[tuple[int, list[Any]]] = []
    for index, element in enumerate(array):
        matching = [child for identifier, child in sorted(node.children.items())
                    if identifier == "" or st.filters[identifier].matches({identifier: element})]
        if matching:
            plan.append((index, matching))
    for index, matching in plan:
        path = taken + [str(index)]
        merged = functools.reduce(lambda a, b: _merge_nodes(a, b, path), matching)
        _apply_node(merged, _Loc(array, index, array[index], str(index)), path, [], st)


def _check_immutable(taken: list[str]) -> None:
    if taken[0] == "_id":
        raise CommandError(66, f"Performing an update on the path '{'.'.join(taken)}' would "
                               "modify the immutable field '_id'")


def _apply_leaf(leaf: _Leaf, loc: _Loc, taken: list[str], to_create: list[str],
                st: _State) -> None:
    if leaf.op == _RENAME_SOURCE or (leaf.op == "$setOnInsert" and not st.is_insert):
        return
    if leaf.op == "$rename":
        _apply_rename(leaf, loc, taken, to_create, st)
    elif to_create:
        _apply_to_missing(leaf.op, leaf.arg, loc, taken, to_create, st)
    else:
        _apply_to_existing(leaf.op, leaf.arg, loc, taken, st)


def _apply_to_existing(op: str, arg: Any, loc: _Loc, taken: list[str], st: _State) -> None:
    """ModifierNode::applyToExistingElement."""
    assert loc.parent is not None
    if op == "$unset":
        _check_immutable(taken)
        if isinstance(loc.parent, list):
            loc.parent[loc.key] = None  # $unset of an array element leaves a null in its place
            st.record("updated", taken)
        else:
            del loc.parent[loc.key]
            st.record("deleted", taken)
        return
    new_value = _updated_value(op, arg, loc.value, taken, st)
    if new_value is _NOOP:
        return
    _check_immutable(taken)
    if op == "$push" and _only_appends(arg, loc.value, new_value):
        # PushNode logs an append as the new elements alone, not the whole array.
        for index in range(len(loc.value), len(new_value)):
            st.record("created", taken + [str(index)], len(taken))
    else:
        st.record("updated", taken)
    loc.parent[loc.key] = new_value
    if st.validate:
        _validate_stored_element(loc.name, new_value, len(taken), isinstance(loc.parent, list),
                                 taken)


_CREATING_OPS = frozenset({"$set", "$setOnInsert", "$inc", "$mul", "$min", "$max",
                           "$currentDate", "$push", "$addToSet", "$bit"})


def _apply_to_missing(op: str, arg: Any, loc: _Loc, taken: list[str], to_create: list[str],
                      st: _State) -> None:
    """ModifierNode::applyToNonexistentElement."""
    if op == "$unset":
        return
    if op not in _CREATING_OPS:
        _check_viability(loc, taken, to_create)
        return
    container = loc.value
    _create_path(loc, to_create, _new_value(op, arg, st))
    st.record("created", taken + to_create, len(taken))
    if st.validate:
        _validate_stored_element(to_create[0], _resolve(loc, to_create[:1]).value,
                                 len(taken) + 1, isinstance(container, list), taken + to_create[:1])
    if taken and taken[0] == "_id":
        raise CommandError(66, f"Updating the path '{'.'.join(taken)}' to "
                               f"{_elem_str(loc.name, loc.value)} would modify the immutable "
                               "field '_id'")


def _check_viability(loc: _Loc, taken: list[str], to_create: list[str]) -> None:
    """UpdateLeafNode::checkViability, for $pop/$pull/$pullAll on a missing path."""
    value = loc.value
    if isinstance(value, dict):
        return
    if isinstance(value, list) and _parse_index(to_create[0]) is not None:
        return
    raise CommandError(28, f"Cannot use the part ({to_create[0]}) of ({'.'.join(taken)}."
                           f"{'.'.join(to_create)}) to traverse the element "
                           f"({{{_elem_str(loc.name, value)}}})")


def _create_path(loc: _Loc, parts: list[str], value: Any) -> None:
    """pathsupport::createPathAt: missing documents are created, arrays padded with nulls."""
    container = loc.value
    first = parts[0]
    nested = value
    for part in reversed(parts[1:]):
        nested = {part: nested}
    if isinstance(container, dict):
        container[first] = nested
        return
    index = _parse_index(first) if isinstance(container, list) else None
    if index is None:
        raise CommandError(28, f"Cannot create field '{first}' in element "
                               f"{{{_elem_str(loc.name, container)}}}")
    if index - len(container) > _MAX_ARRAY_PADDING:
        raise CommandError(34, f"can't backfill more than {_MAX_ARRAY_PADDING} elements",
                           code_name_override="CannotBackfillArray")
    container.extend([None] * (index - len(container)))
    container.append(nested)


def _new_value(op: str, arg: Any, st: _State) -> Any:
    """setValueForNewElement: the value a creating operator gives a missing field."""
    if op in ("$set", "$setOnInsert", "$min", "$max"):
        return deep_copy(arg)
    if op == "$inc":
        return arg
    if op == "$mul":
        return _arithmetic("$mul", arg, 0)  # zero of the argument's type
    if op == "$currentDate":
        return st.current_date if arg == "date" else st.current_timestamp
    if op == "$push":
        return _push([], arg, st.collation)
    if op == "$addToSet":
        return deep_copy(arg)
    return _apply_bits(0, arg)  # $bit


def _updated_value(op: str, arg: Any, old: Any, taken: list[str], st: _State) -> Any:
    """updateExistingElement: the new value of an existing field, or _NOOP."""
    path = ".".join(taken)
    if op in ("$set", "$setOnInsert"):
        return _NOOP if bson_identical(old, arg) else deep_copy(arg)
    if op in ("$inc", "$mul"):
        if not is_number(old):
            raise CommandError(14, f"Cannot apply {op} to a value of non-numeric type. "
                                   f"{{{_id_str(st.doc)}}} has the field '{taken[-1]}' of "
                                   f"non-numeric type {type_name(old)}")
        result = _arithmetic(op, arg, old)
        if result is None:
            raise CommandError(2, f"Failed to apply {op} operations to current value "
                                  f"({_safe_num_str(old)}) for document {{{_id_str(st.doc)}}}")
        return _NOOP if bson_identical(result, old) else result
    if op in ("$min", "$max"):
        order = _order(old, arg, st.collation)
        if order == 0 or (order > 0 if op == "$max" else order < 0):
            return _NOOP
        return deep_copy(arg)
    if op == "$currentDate":
        return st.current_date if arg == "date" else st.current_timestamp
    if op == "$bit":
        if _num_kind(old) not in ("int", "long"):
            raise CommandError(2, "Cannot apply $bit to a value of non-integral type."
                                  f"{_id_str(st.doc)} has the field {taken[-1]} of non-integer "
                                  f"type {type_name(old)}")
        result = _apply_bits(old, arg)
        return _NOOP if bson_identical(result, old) else result
    if op == "$push":
        if not isinstance(old, list):
            raise CommandError(2, f"The field '{path}' must be an array but is of type "
                                  f"{type_name(old)} in document {{{_id_str(st.doc)}}}")
        result = _push(old, arg, st.collation)
        return _NOOP if bson_identical(result, old) else result
    if op == "$addToSet":
        if not isinstance(old, list):
            raise CommandError(2, "Cannot apply $addToSet to non-array field. Field named "
                                  f"'{taken[-1]}' has non-array type {type_name(old)}")
        additions = [deep_copy(v) for v in arg if not any(_same(e, v, st.collation) for e in old)]
        return old + additions if additions else _NOOP
    if op == "$pop":
        if not isinstance(old, list):
            raise CommandError(14, f"Path '{path}' contains an element of non-array type "
                                   f"'{type_name(old)}'")
        if not old:
            return _NOOP
        return old[1:] if arg else old[:-1]
    # $pull / $pullAll
    if not isinstance(old, list):
        raise CommandError(2, "Cannot apply $pull to a non-array value")
    if op == "$pullAll":
        kept = [e for e in old if not any(_same(e, v, st.collation) for v in arg)]
    else:
        kept = [e for e in old if not _pull_matches(arg, e, st.collation)]
    return _NOOP if len(kept) == len(old) else kept


def _only_appends(spec: _PushSpec, old: list, new: list) -> bool:
    """PushNode's kArrayAppendUpdate: elements added at the end of a non-empty array, none
    moved or removed by $position, $sort or $slice."""
    if not old or len(new) != len(old) + len(spec.values) or spec.sort is not None:
        return False  # an empty array, or elements sorted or sliced away
    if spec.position is not None and spec.position <= len(old):
        return False
    return all(bson_identical(a, b) for a, b in zip(old, new))


def _pull_matches(spec: _PullSpec, element: Any, collation: Collation | None) -> bool:
    if spec.kind == "equal":
        return _same(element, spec.value, collation)
    if spec.kind == "object":
        return isinstance(element, dict) and spec.matcher.matches(element)
    return spec.matcher.matches({"v": element})


def _apply_rename(leaf: _Leaf, loc: _Loc, taken: list[str], to_create: list[str],
                  st: _State) -> None:
    """RenameNode::apply: behaves as $set of the target followed by $unset of the source."""
    source, target = leaf.arg, leaf.path
    source_parts = source.split(".")
    chain = _source_chain(st.doc, source, source_parts)
    if chain is None:
        return  # renaming a missing field is a no-op
    for container, name in reversed(chain[1:-1]):
        if isinstance(container, list):
            raise CommandError(2, f"The source field cannot be an array element, '{source}' in "
                                  f"doc with {_id_str(st.doc)} has an array field called '{name}'")
    target_chain = _target_chain(st.doc, taken)
    if not to_create:
        target_chain = target_chain[:-1]
    for container, name in reversed(target_chain):
        if isinstance(container, list):
            raise CommandError(2, f"The destination field cannot be an array element, '{target}' "
                                  f"in doc with {_id_str(st.doc)} has an array field called "
                                  f"'{name}'")
    source_parent, value = chain[-2][0], chain[-1][0]
    if to_create:
        _apply_to_missing("$set", value, loc, taken, to_create, st)
    else:
        _apply_to_existing("$set", value, loc, taken, st)
    del source_parent[source_parts[-1]]
    st.record("deleted", source_parts)
    if source_parts[0] == "_id":
        raise CommandError(66, f"Unsetting the path '{source}' using $rename would modify the "
                               "immutable field '_id'")


def _source_chain(doc: dict, source: str, parts: list[str]) -> list[tuple[Any, str]] | None:
    """Values along the $rename source path as (value, name) pairs; None if it does not exist.

    Follows pathsupport::findLongestPrefix: a path that cannot be traversed (through a scalar, or
    an array with a non-numeric part) is PathNotViable rather than missing.
    """
    chain: list[tuple[Any, str]] = [(doc, "")]
    current: Any = doc
    for i, part in enumerate(parts):
        if isinstance(current, dict):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list) and _parse_index(part) is not None:
            index = _parse_index(part)
            if index >= len(current):
                return None
            current = current[index]
        else:
            previous = parts[i - 1]
            raise CommandError(28, f"cannot use the part ({previous} of {source}) to traverse the "
                                   f"element ({{{_elem_str(previous, current)}}})")
        chain.append((current, part))
    return chain


def _target_chain(doc: dict, taken: list[str]) -> list[tuple[Any, str]]:
    """Containers along an existing path (excluding the root), with their names."""
    chain: list[tuple[Any, str]] = []
    current: Any = doc
    for part in taken:
        current = current[_parse_index(part)] if isinstance(current, list) else current[part]
        chain.append((current, part))
    return chain


# ---------------------------------------------------------------------------------------------
# Arithmetic, bits, $push (with the BSON types the server keeps)


def _num_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if _INT32_MIN <= value <= _INT32_MAX else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    return None


def _to_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        # Decimal128(double, kRoundTo15Digits): 15 significant digits, trailing zeros kept.
        return decimal.Decimal(f"{value:.14e}")
    return decimal.Decimal(int(value))


def _arithmetic(op: str, operand: Any, current: Any) -> Any:
    """SafeNum addition/multiplication; None when an int64 result overflows."""
    kinds = {_num_kind(operand), _num_kind(current)}
    if "decimal" in kinds:
        a, b = _to_decimal(operand), _to_decimal(current)
        result = _DECIMAL_CONTEXT.add(a, b) if op == "$inc" else _DECIMAL_CONTEXT.multiply(a, b)
        return Decimal128(result)
    if "double" in kinds:
        return float(operand) + float(current) if op == "$inc" else float(operand) * float(current)
    number = int(operand) + int(current) if op == "$inc" else int(operand) * int(current)
    if kinds == {"int"}:
        return number if _INT32_MIN <= number <= _INT32_MAX else Int64(number)
    return Int64(number) if _INT64_MIN <= number <= _INT64_MAX else None


def _apply_bits(value: Any, operations: list[tuple[str, Any]]) -> Any:
    long_result = _num_kind(value) == "long"
    number = int(value)
    for name, operand in operations:
        long_result = long_result or _num_kind(operand) == "long"
        if name == "and":
            number &= int(operand)
        elif name == "or":
            number |= int(operand)
        else:
            number ^= int(operand)
    return Int64(number) if long_result else number


def _field_for_sort(container: Any, path: str) -> Any:
    """dotted_path_support::extractElementAtPath, as $push's $sort reads embedded fields."""
    if isinstance(container, dict) and path in container:
        return container[path]
    if isinstance(container, list) and path.isdigit() and str(int(path)) == path \
            and int(path) < len(container):
        return container[int(path)]
    if "." in path:
        left, right = path.split(".", 1)
        sub = _field_for_sort(container, left)
        if isinstance(sub, (dict, list)) and sub:
            return _field_for_sort(sub, right)
    return MISSING


def _sorted_for_push(values: list, sort: Any, collation: Collation | None) -> list:
    """PatternElementCmp: whole elements, or the pattern's fields (null when missing).

    Python's sort is stable; the server's std::sort keeps ties in place for the small arrays
    it sorts with insertion sort, so ties keep their order here too.
    """
    if isinstance(sort, int):
        return sorted(values, key=lambda v: sort_key_collated(v, collation), reverse=sort < 0)
    pattern = list(sort.items())

    def keys(element: Any) -> list[tuple]:
        holder = element if isinstance(element, dict) else {"": element}
        out = []
        for path, _ in pattern:
            value = _field_for_sort(holder, path)
            out.append(sort_key_collated(None if value is MISSING else value, collation))
        return out

    def order(a: tuple[list[tuple], Any], b: tuple[list[tuple], Any]) -> int:
        for (ka, kb), (_, direction) in zip(zip(a[0], b[0]), pattern):
            if ka != kb:
                return direction if ka > kb else -direction
        return 0

    decorated = sorted(((keys(v), v) for v in values), key=functools.cmp_to_key(order))
    return [v for _, v in decorated]


def _push(array: list, spec: _PushSpec, collation: Collation | None) -> list:
    """PushNode::performPush: insert at $position, then $sort, then $slice."""
    result = list(array)
    values = [deep_copy(v) for v in spec.values]
    position = spec.position
    size = len(result)
    if values:
        if size == 0 or position is None or position > size:
            index = size
        elif position > 0:
            index = position
        elif position < 0 and -position < size:
            index = size + position
        else:
            index = 0
        result[index:index] = values
    if spec.sort is not None:
        result = _sorted_for_push(result, spec.sort, collation)
    if spec.slice is not None:
        limit = abs(spec.slice)
        if len(result) > limit:
            result = result[:limit] if spec.slice >= 0 else result[len(result) - limit:]
    return result


# ---------------------------------------------------------------------------------------------
# Storage validation


def _max_element_level(value: Any, level: int) -> int:
    """Deepest nesting level of the elements inside ``value`` (which sits at ``level``)."""
    deepest = level
    stack = [(value, level)]
    while stack:
        current, current_level = stack.pop()
        children = (current.values() if isinstance(current, dict)
                    else current if isinstance(current, list) else ())
        for child in children:
            deepest = max(deepest, current_level + 1)
            stack.append((child, current_level + 1))
    return deepest


def _container_depth(document: Mapping[str, Any]) -> int:
    """Documents and arrays nested in each other, the document itself included (validateDepth)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        children = current.values() if isinstance(current, Mapping) else current
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _validate_stored_element(name: str, value: Any, level: int, in_array: bool,
                             path: list[str]) -> None:
    """storage_validation::scanDocument on a modified element (5.0+ rules)."""
    if level == 1 and not in_array and name.startswith("$"):
        raise CommandError(52, f"The dollar ($) prefixed field '{name}' in '{'.'.join(path)}"
                               f"{_REPLACEMENT_DOLLAR_HINT}")
    if _max_element_level(value, level) > _MAX_USER_DEPTH:
        raise CommandError(15, f"Document exceeds maximum nesting depth of {_MAX_USER_DEPTH}",
                           code_name_override="Overflow")


def _dollar_field_in_id(value: Any) -> str | None:
    """BSONObj::storageValidEmbedded: the first '$'-prefixed name inside an _id (DBRefs allowed)."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            names = list(current)
            is_dbref = (len(names) >= 2 and names[0] == "$ref" and isinstance(current["$ref"], str)
                        and names[1] == "$id")
            for i, name in enumerate(names):
                allowed = is_dbref and (i < 2 or (i == 2 and name == "$db"
                                                  and isinstance(current[name], str)))
                if name.startswith("$") and not allowed:
                    return name
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return None


def _is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, re.Pattern))


def _check_id_for_update(value: Any) -> None:
    """storage_validation::storageValidIdField."""
    if isinstance(value, list) or _is_regex(value):
        raise CommandError(53, f"The '_id' value cannot be of type {type_name(value)}",
                           code_name_override="InvalidIdField")
    if isinstance(value, dict):
        name = _dollar_field_in_id(value)
        if name is not None:
            raise CommandError(52, "_id fields may not contain '$'-prefixed fields: "
                                   f"{name} is not valid for storage.")


def _scan_document(doc: Mapping[str, Any], allow_top_level_dollar: bool) -> None:
    for name, value in doc.items():
        if name == "_id":
            _check_id_for_update(value)
        if name.startswith("$") and not allow_top_level_dollar:
            raise CommandError(52, f"The dollar ($) prefixed field '{name}' in '{name}"
                                   f"{_REPLACEMENT_DOLLAR_HINT}")
        if _max_element_level(value, 1) > _MAX_USER_DEPTH:
            raise CommandError(15, f"Document exceeds maximum nesting depth of {_MAX_USER_DEPTH}",
                               code_name_override="Overflow")


# Each nesting level costs at least 8 BSON bytes (type, one-letter name, NUL, length, end), so a
# document shorter than this cannot exceed the nesting limit and needs no walk.
_SHALLOW_ENOUGH_BYTES = 8 * 181


def validate_new_document(doc: Mapping[str, Any], encoded_size: int | None = None, *,
                          raw: bytes | None = None) -> None:
    """The checks an insert makes before storing ``doc`` (fixDocumentForInsert, 5.0+ rules).

    Since 5.0 '$'-prefixed and dotted field names are allowed at every level of an inserted
    document (crud spec tests "dots_and_dollars"); ``_id`` may not be an array, a regex or
    undefined, nor contain '$'-prefixed names.  The nesting limit is 180 levels.  Undefined
    decodes as null, so it is seen only in ``raw``, the document as the client encoded it.
    """
    if (encoded_size is None or encoded_size >= _SHALLOW_ENOUGH_BYTES) and \
            _container_depth(doc) > _MAX_USER_DEPTH:
        raise CommandError(15, "cannot insert document because it exceeds "
                               f"{_MAX_USER_DEPTH} levels of nesting",
                           code_name_override="Overflow")
    if "_id" not in doc:
        return
    value = doc["_id"]
    if _is_regex(value):
        raise CommandError(2, "can't use a regex for _id")
    if value is None and raw is not None and raw_element_type(raw, "_id") == BSON_UNDEFINED:
        raise CommandError(2, "can't use a undefined for _id")
    if isinstance(value, list):
        raise CommandError(2, "can't use an array for _id")
    if isinstance(value, dict):
        name = _dollar_field_in_id(value)
        if name is not None:
            raise CommandError(52, "_id fields may not contain '$'-prefixed fields: "
                                   f"{name} is not valid for storage.")


# ---------------------------------------------------------------------------------------------
# Replacement and pipeline updates


def _replace(old: Mapping[str, Any], new: Mapping[str, Any], *, allow_top_level_dollar: bool,
             validate: bool) -> dict[str, Any]:
    """ObjectReplaceExecutor::applyReplacementUpdate: keeps the old _id when ``new`` has none."""
    result: dict[str, Any] = {}
    if "_id" not in new and "_id" in old:
        result["_id"] = deep_copy(old["_id"])
    for name, value in new.items():
        result[name] = deep_copy(value)
    if validate:
        _scan_document(result, allow_top_level_dollar)
    if "_id" in result:
        if isinstance(result["_id"], list):
            raise CommandError(54, "After applying the update to the document, the (immutable) "
                                   "field '_id' was found to be an array or array descendant.",
                               code_name_override="NotSingleValueField")
        if "_id" in old and compare(result["_id"], old["_id"]) != 0:
            raise CommandError(66, "After applying the update, the (immutable) field '_id' was "
                                   "found to have been altered to "
                                   f"{_elem_str('_id', result['_id'])}")
    return result


def _check_update_pipeline(pipeline: list) -> None:
    """PipelineExecutor's parse: the pipeline itself, then the stages an update may use."""
    from mongoemu.query.aggregate import validate_pipeline  # lazy: aggregation is another module

    validate_pipeline(pipeline)
    for stage in pipeline:
        name = next(iter(stage))
        if name not in _UPDATE_PIPELINE_STAGES:
            raise CommandError(72, f"{name} is not allowed to be used within an update")


@dataclass
class _UpdatePipelineContext:
    """The part of aggregate.PipelineContext an update pipeline can use (no other collections)."""

    collation: Collation | None
    variables: Mapping[str, Any] | None
    now: datetime.datetime | None
    cluster_time: Timestamp | None
    current_db: str = ""


def _run_update_pipeline(doc: Mapping[str, Any], pipeline: list,
                         context: _UpdatePipelineContext) -> dict[str, Any]:
    from mongoemu.query.aggregate import run_pipeline  # lazy: aggregation is another module

    for result in run_pipeline([deep_copy(dict(doc))], pipeline, context):
        return result
    return {}


# ---------------------------------------------------------------------------------------------
# Entry points


def _ms_precision(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


@dataclass
class ParsedUpdate:
    """An update statement parsed once (as the server does before looking for documents).

    Parsing raises every parse-time error — even when no document matches, as on a real
    server; :meth:`apply` raises only the errors that depend on a document.
    """

    kind: UpdateKind
    update: Mapping[str, Any] | list
    collation: Collation | None
    variables: Mapping[str, Any] | None
    filters: Mapping[str, Any]
    tree: _ObjectNode | None

    def apply(self, doc: Mapping[str, Any], *, is_upsert_insert: bool = False,
              matched_position: int | None = None, now: datetime.datetime | None = None,
              cluster_time: Timestamp | None = None,
              log: list[LogEntry] | None = None) -> dict[str, Any]:
        """See :func:`apply_update`; an operator update appends what it did to ``log`` (the
        paths its modifiers updated, created or deleted), from which the oplog diff is built."""
        validate = not is_upsert_insert
        if self.kind == "pipeline":
            assert isinstance(self.update, list)
            context = _UpdatePipelineContext(self.collation, self.variables,
                                             now and _ms_precision(now), cluster_time)
            result = _replace(doc, _run_update_pipeline(doc, self.update, context),
                              allow_top_level_dollar=True, validate=validate)
        elif self.kind == "replacement":
            assert isinstance(self.update, Mapping)
            result = _replace(doc, self.update, allow_top_level_dollar=False, validate=validate)
        else:
            assert self.tree is not None
            moment = _ms_precision(now or datetime.datetime.now(datetime.timezone.utc))
            state = _State(
                doc=deep_copy(dict(doc)),
                matched_field=None if matched_position is None else str(matched_position),
                is_insert=is_upsert_insert,
                validate=validate,
                filters=self.filters,
                current_date=moment,
                current_timestamp=cluster_time or Timestamp(int(moment.timestamp()), 1),
                collation=self.collation,
                log=log,
            )
            _apply_object_node(self.tree, _Loc(None, None, state.doc, ""), [], [], state)
            result = state.doc
        if is_upsert_insert:
            _scan_document(result, allow_top_level_dollar=True)
        return _id_first(result)


def parse_update(update: Mapping[str, Any] | list, *, array_filters: list | None = None,
                 collation: Collation | None = None,
                 variables: Mapping[str, Any] | None = None) -> ParsedUpdate:
    """Validate ``update`` (and its ``arrayFilters``) in the server's order, ready to apply.

    ``variables`` is the command's raw ``let`` document, visible to pipeline-style updates.
    """
    kind = _kind_of(update)
    filters = _parse_array_filters(array_filters, collation)
    tree = None
    if kind == "pipeline":
        if array_filters:
            raise CommandError(9, "arrayFilters may not be specified for pipeline-style updates")
        assert isinstance(update, list)
        _check_update_pipeline(update)
    elif kind == "operators":
        assert isinstance(update, Mapping)
        tree = _parse_operator_update(update, filters, collation)
    return ParsedUpdate(kind, update, collation, variables, filters, tree)


def apply_update(doc: Mapping[str, Any], update: Mapping[str, Any] | list, *,
                 array_filters: list | None = None, is_upsert_insert: bool = False,
                 matched_position: int | None = None, variables: Mapping[str, Any] | None = None,
                 now: datetime.datetime | None = None, cluster_time: Timestamp | None = None,
                 collation: Collation | None = None) -> dict[str, Any]:
    """The document ``doc`` becomes after ``update``; ``doc`` itself is left untouched.

    ``matched_position`` is the array index the query matched (for the positional ``$``);
    ``is_upsert_insert`` applies ``$setOnInsert`` and the upsert's validation rules (start from
    :func:`upsert_seed`; generating a missing ``_id`` is left to the caller).  ``now`` and
    ``cluster_time`` are what ``$currentDate`` writes (defaults: the wall clock, and a Timestamp
    of its seconds) and what pipelines see as ``$$NOW``/``$$CLUSTER_TIME``; ``variables`` is the
    command's raw ``let`` document for pipelines.  ``_id`` always ends up first.  Whether
    anything changed is ``not bson_identical(doc, result)``.  To apply one update to many
    documents, or to report parse errors when nothing matches, use :func:`parse_update`.
    """
    parsed = parse_update(update, array_filters=array_filters, collation=collation,
                          variables=variables)
    return parsed.apply(doc, is_upsert_insert=is_upsert_insert, matched_position=matched_position,
                        now=now, cluster_time=cluster_time)


# ---------------------------------------------------------------------------------------------
# Upserts


def _equality_operand(condition: Mapping[str, Any]) -> list[Any]:
    """Equalities a ``{path: {$op: ...}}`` condition contributes after canonicalization."""
    values = []
    for op, argument in condition.items():
        if op == "$eq":
            values.append(argument)
        elif op == "$in" and isinstance(argument, list) and argument and not any(
                _is_regex(v) for v in argument) and all(values_equal(v, argument[0])
                                                        for v in argument):
            values.append(argument[0])  # a one-value $in is rewritten to $eq
        elif op == "$all" and isinstance(argument, list):
            # $all is parsed as an $and of equalities.
            values.extend(v for v in argument if not _is_regex(v)
                          and not (isinstance(v, Mapping) and "$elemMatch" in v))
    return values


def _collect_equalities(query: Mapping[str, Any], out: list[tuple[str, Any]]) -> None:
    for key, value in query.items():
        if key == "$and" and isinstance(value, list):
            for clause in value:
                if isinstance(clause, Mapping):
                    _collect_equalities(clause, out)
        elif key == "$or" and isinstance(value, list) and len(value) == 1:
            if isinstance(value[0], Mapping):  # a one-clause $or is its clause
                _collect_equalities(value[0], out)
        elif key.startswith("$"):
            continue
        elif isinstance(value, Mapping) and next(iter(value), "").startswith("$") and \
                next(iter(value)) not in ("$ref", "$id", "$db"):
            out.extend((key, v) for v in _equality_operand(value))
        elif not _is_regex(value):
            out.append((key, value))


def upsert_seed(query: Mapping[str, Any], update: Mapping[str, Any] | list) -> dict[str, Any]:
    """The document an upsert starts from (UpdateDriver::populateDocumentWithQueryFields).

    Operator and pipeline updates take every equality of the query (top level, ``$and``, a
    one-clause ``$or``, ``$eq``, a one-value ``$in``, ``$all``), dotted paths becoming
    sub-documents, in path order; a replacement takes only ``_id``.
    """
    kind = _kind_of(update)
    equalities: list[tuple[str, Any]] = []
    _collect_equalities(query, equalities)
    if kind == "replacement":
        kept = []
        for path, value in equalities:
            first = path.split(".", 1)[0]
            if first != "_id":
                continue
            if path != "_id":
                raise CommandError(179, "field at '_id' must be exactly specified, field at "
                                        f"sub-path '{path}'found")
            kept.append((path, value))
        equalities = kept
    # The canonical query orders its equalities by path (std::map / sortTree).
    equalities.sort(key=lambda item: item[0].encode("utf-8"))
    seen: list[str] = []
    seed: dict[str, Any] = {}
    for path, value in equalities:
        parts = path.split(".")
        for size in range(len(parts), 0, -1):
            prefix = ".".join(parts[:size])
            if prefix in seen:
                message = (f"path '{path}' is matched twice" if size == len(parts)
                           else f"both paths '{path}' and '{prefix}' are matched")
                raise CommandError(54, f"cannot infer query fields to set, {message}",
                                   code_name_override="NotSingleValueField")
        seen.append(path)
        _seed_path(seed, parts, deep_copy(value))
    return seed


def _seed_path(seed: dict[str, Any], parts: list[str], value: Any) -> None:
    """pathsupport::setElementAtPath on the seed (only documents exist there)."""
    current = seed
    for part in parts[:-1]:
        current = current.setdefault(part, {})
    current[parts[-1]] = value


