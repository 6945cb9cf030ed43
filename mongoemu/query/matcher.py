"""Query filters (``find``, ``update``, ``delete``, ``$match``, validators) compiled into closures.

A filter is compiled once into nested closures so that matching a document is only dict lookups
and comparisons (a ``{field: value}`` filter costs well under a microsecond per document).

Every compiled test returns an ``int`` rather than a ``bool``: :data:`NO_MATCH`, :data:`MATCH`, or
the offset of the array element that satisfied it. That offset is what MongoDB records for the
positional ``$`` operator, and carrying it in the return value keeps compiled filters free of
shared mutable state (they are safe to reuse across threads and re-entrantly).

Array traversal follows the server's ``ElementPath`` rules: a path component applied to an array
fans out over the array's sub-documents (scalars are skipped), numeric components also select an
element, and the value at the end of the path is tested both as a whole and, if it is an array,
element by element — except for ``$size``, ``$elemMatch`` and ``$exists``, which never look inside
the final array.
"""

from __future__ import annotations

import math
import operator
import random
import re
from decimal import Decimal
from typing import Any, Callable, Iterable

from bson.binary import Binary
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from bson.datetime_ms import DatetimeMS

from mongoemu.bsonvalues import (
    MISSING,
    RANK_ARRAY,
    RANK_BINARY,
    RANK_BOOL,
    RANK_DATE,
    RANK_MAXKEY,
    RANK_MINKEY,
    RANK_NULL,
    RANK_NUMBER,
    RANK_OBJECT,
    RANK_OBJECTID,
    RANK_REGEX,
    RANK_STRING,
    RANK_TIMESTAMP,
    TYPE_NUMBERS,
    compare,
    is_nan,
    is_number,
    numeric_value,
    sort_key,
    type_name,
    type_rank,
)
from mongoemu.errors import CommandError
from mongoemu.query.collation import Collation, effective, sort_key_collated
from mongoemu.query.paths import path_indexes, split_path

NO_MATCH = -2
MATCH = -1

DocTest = Callable[[Any], int]
Pred = Callable[[Any], bool]
IntPred = Callable[[Any], int]

_PATTERN_TYPE = type(re.compile(""))
_DBREF_KEYS = ("$ref", "$id", "$db")
# Operators that make an ``$elemMatch`` argument a query over sub-documents rather than values.
_QUERY_LEVEL = frozenset(("$and", "$or", "$nor", "$expr", "$where", "$text", "$comment",
                          "$jsonSchema", "$alwaysTrue", "$alwaysFalse", "$sampleRate"))
_GEO_OPERATORS = frozenset(("$near", "$nearSphere", "$geoNear", "$geoWithin", "$geoIntersects",
                            "$within", "$maxDistance", "$minDistance"))
_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le,
}
_NUMBER_TYPES = frozenset(("double", "int", "long", "decimal"))
_REGEX_OPTION_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
_KEPT_PATTERN_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE
_INT64_MIN, _INT64_LIMIT = -(2**63), 2**63


class Matcher:
    """A filter compiled once and applied to many documents."""

    __slots__ = ("filter", "collation", "_test")

    def __init__(
        self,
        filter: dict[str, Any] | None,
        collation: Collation | None = None,
        variables: dict[str, Any] | None = None,
    ) -> None:
        if filter is None:
            filter = {}
        if not isinstance(filter, dict):
            raise CommandError(14, f"filter must be an object, not {type_name(filter)}")
        self.filter = filter
        self.collation = effective(collation)
        self._test: DocTest = _Compiler(self.collation, variables or {}).filter(filter)

    def matches(self, doc: dict[str, Any]) -> bool:
        return self._test(doc) != NO_MATCH

    def matches_with_position(self, doc: dict[str, Any]) -> tuple[bool, int | None]:
        """Whether ``doc`` matches, and the array offset the positional ``$`` operator refers to."""
        result = self._test(doc)
        if result == NO_MATCH:
            return False, None
        return True, result if result >= 0 else None


# --------------------------------------------------------------------------------------------
# Path traversal


def _expanding(pred: Pred) -> IntPred:
    """A final-value test that also tries each element of a final array (implicit traversal)."""
    def test(value: Any) -> int:
        if value.__class__ is list:
            for j, element in enumerate(value):
                if pred(element):
                    return j
        return MATCH if pred(value) else NO_MATCH
    return test


def _walk_whole(node: Any, parts: tuple[str, ...], indexes: tuple[int, ...], i: int, pred: IntPred) -> int:
    """Test ``pred`` on the value(s) a path reaches; a final array is passed whole and ``pred``
    reports its own position (wrap it with :func:`_expanding` for implicit traversal)."""
    n = len(parts)
    while i < n:
        cls = node.__class__
        if cls is dict:
            node = node.get(parts[i], MISSING)
            i += 1
            continue
        if cls is list:
            part, index = parts[i], indexes[i]
            for j, element in enumerate(node):
                if j == index and _walk_whole(element, parts, indexes, i + 1, pred) != NO_MATCH:
                    return j
                if (element.__class__ is dict and (index < 0 or part in element)
                        and _walk_whole(element, parts, indexes, i, pred) != NO_MATCH):
                    return j
            return NO_MATCH
        if cls is DBRef:
            node = node.as_doc()
            continue
        node = MISSING
        break
    return pred(node)


def _path_test(path: str, pred: Pred) -> DocTest:
    parts = split_path(path)
    if len(parts) == 1:
        name = parts[0]
        final = _expanding(pred)
        return lambda doc: final(doc.get(name, MISSING))
    return _path_test_whole(path, _expanding(pred))


def _path_test_whole(path: str, pred: IntPred) -> DocTest:
    parts = split_path(path)
    if len(parts) == 1:
        name = parts[0]
        return lambda doc: pred(doc.get(name, MISSING))
    indexes = path_indexes(path)
    return lambda doc: _walk_whole(doc, parts, indexes, 0, pred)


# --------------------------------------------------------------------------------------------
# Combinators


def _all_of(tests: list[DocTest]) -> DocTest:
    """Conjunction; the position of the last positional child wins, as in the server."""
    if not tests:
        return lambda doc: MATCH
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests

        def both(doc: Any) -> int:
            a = first(doc)
            if a == NO_MATCH:
                return NO_MATCH
            b = second(doc)
            if b == NO_MATCH:
                return NO_MATCH
            return b if b >= 0 else a

        return both

    def every(doc: Any) -> int:
        position = MATCH
        for test in tests:
            result = test(doc)
            if result == NO_MATCH:
                return NO_MATCH
            if result >= 0:
                position = result
        return position

    return every


def _any_of(tests: list[DocTest]) -> DocTest:
    def any_match(doc: Any) -> int:
        for test in tests:
            result = test(doc)
            if result != NO_MATCH:
                return result
        return NO_MATCH

    return any_match


def _none_of(tests: list[DocTest]) -> DocTest:
    def no_match(doc: Any) -> int:
        for test in tests:
            if test(doc) != NO_MATCH:
                return NO_MATCH
        return MATCH

    return no_match


class _Op:
    """One operator of a field's operator document.

    ``single`` is the server's *matchesSingleElement* (one value, no traversal), which is what
    ``$elemMatch``'s value form applies to each element; ``bind`` builds the document-level test
    for a path, where traversal and negation semantics differ per operator.
    """

    __slots__ = ()

    def single(self, value: Any) -> bool:
        raise NotImplementedError

    def bind(self, path: str) -> DocTest:
        raise NotImplementedError


class _LeafOp(_Op):
    """A predicate tested on each value the path reaches, final arrays expanded."""

    __slots__ = ("pred",)

    def __init__(self, pred: Pred) -> None:
        self.pred = pred

    def single(self, value: Any) -> bool:
        return self.pred(value)

    def bind(self, path: str) -> DocTest:
        return _path_test(path, self.pred)


class _WholeOp(_Op):
    """A predicate on the value at the end of the path, never on a final array's elements."""

    __slots__ = ("pred",)

    def __init__(self, pred: IntPred) -> None:
        self.pred = pred

    def single(self, value: Any) -> bool:
        return self.pred(value) != NO_MATCH

    def bind(self, path: str) -> DocTest:
        return _path_test_whole(path, self.pred)


class _NotOp(_Op):
    """Negation at the path level: ``$ne: 1`` means *no* reachable value equals 1."""

    __slots__ = ("inner",)

    def __init__(self, inner: list[_Op]) -> None:
        self.inner = inner

    def single(self, value: Any) -> bool:
        return not all(op.single(value) for op in self.inner)

    def bind(self, path: str) -> DocTest:
        test = _all_of([op.bind(path) for op in self.inner])
        return lambda doc: MATCH if test(doc) == NO_MATCH else NO_MATCH


class _AndOp(_Op):
    """``$all``: every item must be satisfied, each possibly by a different element."""

    __slots__ = ("inner",)

    def __init__(self, inner: list[_Op]) -> None:
        self.inner = inner

    def single(self, value: Any) -> bool:
        return all(op.single(value) for op in self.inner)

    def bind(self, path: str) -> DocTest:
        return _all_of([op.bind(path) for op in self.inner])


_NEVER = _LeafOp(lambda value: False)


# --------------------------------------------------------------------------------------------
# Value predicates


def _is_operator_document(value: Any) -> bool:
    """The server's rule: a document is an operator document when its *first* key starts with $."""
    if value.__class__ is not dict or not value:
        return False
    first = next(iter(value))
    return first.startswith("$") and first not in _DBREF_KEYS


def _is_regex(value: Any) -> bool:
    return isinstance(value, (Regex, _PATTERN_TYPE))


def _null_or_missing(value: Any) -> bool:
    return value is None or value is MISSING


def _nan_value(value: Any) -> bool:
    cls = value.__class__
    if cls is float:
        return value != value
    if cls is Decimal128:
        return value.to_decimal().is_nan()
    return False


def _number_pred(compare_to: Callable[[Any, Any], bool], operand: Any) -> Pred:
    """``compare_to(x, operand)`` for numbers of every BSON width; NaN never compares."""

    def pred(value: Any) -> bool:
        cls = value.__class__
        if cls is int or cls is Int64:
            return compare_to(value, operand)
        if cls is float:
            return value == value and compare_to(value, operand)
        if cls is Decimal128:
            number = value.to_decimal()
            return not number.is_nan() and compare_to(number, operand)
        return False

    return pred


def eq_pred(operand: Any, collation: Collation | None) -> Pred:
    """Single-value ``$eq`` (numbers across types, NaN equal to NaN, null equal to missing)."""
    if operand is None:
        return _null_or_missing
    if operand is True or operand is False:
        return lambda value: value is operand
    if is_number(operand):
        if is_nan(operand):
            return _nan_value
        return _number_pred(operator.eq, numeric_value(operand))
    if operand.__class__ is str:
        if collation is not None:
            key_of = collation.collation_key
            key = key_of(operand)
            return lambda value: value.__class__ is str and key_of(value) == key
        return lambda value: value.__class__ is str and value == operand
    if operand.__class__ is ObjectId:
        return lambda value: value.__class__ is ObjectId and value == operand
    key = sort_key_collated(operand, collation)
    rank = key[0]

    def generic(value: Any) -> bool:
        return type_rank(value) == rank and sort_key_collated(value, collation) == key

    return generic


def _compare_pred(op: str, operand: Any, collation: Collation | None) -> Pred:
    """``$gt``/``$gte``/``$lt``/``$lte`` with type bracketing: only same-type values compare."""
    inclusive = op in ("$gte", "$lte")
    upward = op in ("$gt", "$gte")
    if isinstance(operand, MinKey):
        if upward:
            return (lambda value: True) if inclusive else (lambda value: not isinstance(value, MinKey))
        return (lambda value: isinstance(value, MinKey)) if inclusive else (lambda value: False)
    if isinstance(operand, MaxKey):
        if not upward:
            return (lambda value: True) if inclusive else (lambda value: not isinstance(value, MaxKey))
        return (lambda value: isinstance(value, MaxKey)) if inclusive else (lambda value: False)
    if operand is None:
        return _null_or_missing if inclusive else (lambda value: False)
    compare_to = _COMPARATORS[op]
    if is_number(operand):
        if is_nan(operand):
            return _nan_value if inclusive else (lambda value: False)
        return _number_pred(compare_to, numeric_value(operand))
    if operand.__class__ is str:
        if collation is not None:
            key_of = collation.collation_key
            key = key_of(operand)
            return lambda value: value.__class__ is str and compare_to(key_of(value), key)
        return lambda value: value.__class__ is str and compare_to(value, operand)
    key = sort_key_collated(operand, collation)
    rank = key[0]

    def generic(value: Any) -> bool:
        return type_rank(value) == rank and compare_to(sort_key_collated(value, collation), key)

    return generic


def _in_pred(operator_name: str, items: Any, collation: Collation | None) -> Pred:
    """``$in``: hashed lookups for strings and numbers, per-item predicates for the rest."""
    if not isinstance(items, list):
        raise CommandError(2, f"{operator_name} needs an array")
    strings: set[Any] = set()
    numbers: set[Any] = set()
    has_nan = has_null = False
    others: list[Pred] = []
    key_of = collation.collation_key if collation is not None else None
    for item in items:
        if _is_operator_document(item):
            raise CommandError(2, f"cannot nest $ under {operator_name}")
        if item is None:
            has_null = True
        elif _is_regex(item):
            others.append(_regex_pred(_compile_regex(item, None)))
        elif item.__class__ is str:
            strings.add(key_of(item) if key_of is not None else item)
        elif is_number(item):
            if is_nan(item):
                has_nan = True
            else:
                numbers.add(numeric_value(item))
        else:
            others.append(eq_pred(item, collation))

    def pred(value: Any) -> bool:
        cls = value.__class__
        if cls is str:
            if (key_of(value) if key_of is not None else value) in strings:
                return True
        elif cls is int or cls is Int64:
            if value in numbers:
                return True
        elif cls is float:
            if (value in numbers) if value == value else has_nan:
                return True
        elif cls is Decimal128:
            number = value.to_decimal()
            if (number in numbers) if not number.is_nan() else has_nan:
                return True
        elif has_null and (value is None or value is MISSING):
            return True
        for other in others:
            if other(value):
                return True
        return False

    return pred


def _translate_pcre(pattern: str) -> str:
    r"""Rewrite the PCRE constructs Python spells differently (\z, \Z, (?<name>, \k<name>)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "z":
                out.append(r"\Z")
            elif nxt == "Z":
                out.append(r"(?=\n?\Z)")
            elif nxt == "k" and i + 2 < n and pattern[i + 2] == "<":
                end = pattern.find(">", i + 3)
                if end < 0:
                    out.append(pattern[i:i + 2])
                else:
                    out.append(f"(?P={pattern[i + 3:end]})")
                    i = end + 1
                    continue
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _compile_regex(pattern: Any, options: Any) -> re.Pattern[str]:
    flags = 0
    if isinstance(pattern, Regex):
        if options is not None and pattern.flags:
            raise CommandError(51075, "options set in both $regex and $options")
        source = pattern.pattern
        flags = pattern.flags & _KEPT_PATTERN_FLAGS
    elif isinstance(pattern, _PATTERN_TYPE):
        if options is not None and pattern.flags & _KEPT_PATTERN_FLAGS:
            raise CommandError(51075, "options set in both $regex and $options")
        source = pattern.pattern
        flags = pattern.flags & _KEPT_PATTERN_FLAGS
    elif isinstance(pattern, str):
        source = pattern
    else:
        raise CommandError(2, "$regex has to be a string")
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    if options is not None:
        if not isinstance(options, str):
            raise CommandError(2, "$options has to be a string")
        for letter in options:
            if letter not in _REGEX_OPTION_FLAGS:
                raise CommandError(51108, f"invalid flag in regex options: {letter}")
            flags |= _REGEX_OPTION_FLAGS[letter]
    if "\x00" in source:
        raise CommandError(51109, "Regular expression cannot contain an embedded null byte")
    try:
        return re.compile(_translate_pcre(source), flags)
    except re.error as exc:
        raise CommandError(51091, f"Regular expression is invalid: {exc}") from None


def _regex_pred(compiled: re.Pattern[str]) -> Pred:
    """Strings must match; a stored regex value matches when it is the same regex."""
    search = compiled.search
    own_flags = compiled.flags & _KEPT_PATTERN_FLAGS

    def pred(value: Any) -> bool:
        if value.__class__ is str:
            return search(value) is not None
        if isinstance(value, Regex):
            return value.pattern == compiled.pattern and value.flags & _KEPT_PATTERN_FLAGS == own_flags
        return False

    return pred


def _type_names(spec: Any) -> frozenset[str]:
    """``$type`` / ``bsonType`` operands (names, numbers or arrays of them) as type_name values."""
    items = spec if isinstance(spec, list) else [spec]
    if isinstance(spec, list) and not spec:
        raise CommandError(9, "$type must match at least one type")
    names: set[str] = set()
    by_number = {number: name for name, number in TYPE_NUMBERS.items()}
    for item in items:
        if isinstance(item, str):
            if item == "number":
                names |= _NUMBER_TYPES
            elif item in TYPE_NUMBERS:
                names.add(item)
            else:
                raise CommandError(2, f"Unknown type name alias: {item}")
        elif is_number(item):
            number = numeric_value(item)
            if number != number or number != int(number) or int(number) not in by_number:
                raise CommandError(2, f"Invalid numerical type code: {item}")
            names.add(by_number[int(number)])
        else:
            raise CommandError(14, "type must be represented as a number or a string")
    return frozenset(names)


def _type_pred(spec: Any) -> Pred:
    names = _type_names(spec)
    return lambda value: type_name(value) in names


def _truncate(value: Any) -> int | None:
    """A finite number truncated toward zero, or None for NaN/±inf."""
    number = numeric_value(value)
    if isinstance(number, Decimal):
        return int(number) if number.is_finite() else None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return int(number)


def _c_remainder(dividend: int, divisor: int) -> int:
    """C++ ``%``: the result takes the sign of the dividend."""
    remainder = abs(dividend) % abs(divisor)
    return -remainder if dividend < 0 else remainder


def _mod_pred(spec: Any) -> Pred:
    if not isinstance(spec, list):
        raise CommandError(2, "malformed mod, needs to be an array")
    if len(spec) < 2:
        raise CommandError(2, "malformed mod, not enough elements")
    if len(spec) > 2:
        raise CommandError(2, "malformed mod, too many elements")
    if not is_number(spec[0]):
        raise CommandError(2, "malformed mod, divisor not a number")
    if not is_number(spec[1]):
        raise CommandError(2, "malformed mod, remainder not a number")
    divisor, remainder = _truncate(spec[0]), _truncate(spec[1])
    if divisor is None or remainder is None:
        raise CommandError(2, "malformed mod, divisor and remainder must be finite numbers")
    if divisor == 0:
        raise CommandError(2, "divisor cannot be 0")

    def pred(value: Any) -> bool:
        if not is_number(value):
            return False
        truncated = _truncate(value)
        return truncated is not None and _c_remainder(truncated, divisor) == remainder

    return pred


def _bit_positions(op: str, spec: Any) -> list[int]:
    if isinstance(spec, (bytes, Binary)):
        data = bytes(spec)
        return [i for i in range(len(data) * 8) if data[i // 8] >> (i % 8) & 1]
    if is_number(spec):
        mask = _truncate(spec)
        if mask is None or mask != numeric_value(spec) or mask < 0 or mask >= _INT64_LIMIT:
            raise CommandError(9, f"{op} takes a non-negative integral bitmask that fits in a long, "
                                  f"but received: {spec}")
        return [i for i in range(mask.bit_length()) if mask >> i & 1]
    if isinstance(spec, list):
        positions = []
        for item in spec:
            position = _truncate(item) if is_number(item) else None
            if position is None or position != numeric_value(item) or position < 0:
                raise CommandError(9, f"bit positions must be non-negative integers, but {op} got {item}")
            positions.append(position)
        return positions
    raise CommandError(2, f"{op} takes an Array, a number, or a BinData but received: {spec}")


def _bits_pred(op: str, spec: Any) -> Pred:
    positions = _bit_positions(op, spec)
    want_set = op in ("$bitsAllSet", "$bitsAnySet")
    need_all = op in ("$bitsAllSet", "$bitsAllClear")

    def pred(value: Any) -> bool:
        if isinstance(value, (bytes, Binary)):
            data = bytes(value)
            size = len(data) * 8
            bits = [p < size and bool(data[p // 8] >> (p % 8) & 1) for p in positions]
        elif is_number(value):
            number = numeric_value(value)
            truncated = _truncate(value)
            if truncated is None or truncated != number or not _INT64_MIN <= truncated < _INT64_LIMIT:
                return False
            # Python's >> on negative ints sign-extends, i.e. two's complement beyond bit 63.
            bits = [bool(truncated >> p & 1) for p in positions]
        else:
            return False
        hits = (bit == want_set for bit in bits)
        return all(hits) if need_all else any(hits)

    return pred


def _size_pred(spec: Any) -> IntPred:
    if not is_number(spec):
        raise CommandError(2, "$size needs a number")
    size = numeric_value(spec)
    if size != size or size < 0:
        raise CommandError(2, "$size may not be negative")
    if size != int(size):
        return lambda value: NO_MATCH  # the server parses a fractional size as "never matches"
    wanted = int(size)
    return lambda value: MATCH if value.__class__ is list and len(value) == wanted else NO_MATCH


def _exists_pred(value: Any) -> int:
    return NO_MATCH if value is MISSING else MATCH


def _bson_truthy(value: Any) -> bool:
    """Aggregation truthiness (false, null, missing and zero are false), used by ``$expr`` and for
    flag operands such as ``$exists: 0``."""
    if value is None or value is MISSING or value is False:
        return False
    if is_number(value):
        return numeric_value(value) != 0
    return True


def expression_function(
    expression: Any, variables: dict[str, Any], collation: Collation | None
) -> Callable[[Any], Any]:
    """An aggregation expression compiled once, as a function of the root document.

    The expression engine (``mongoemu.query.expressions``) is imported on first use so that this
    module stands alone; compiling up front reports invalid expressions when the query is parsed,
    as the server does, instead of once per document.
    """
    from mongoemu.query.expressions import Expression

    compiled = Expression(expression)
    return lambda doc: compiled.evaluate(doc, variables, collation)


# --------------------------------------------------------------------------------------------
# Compiler


class _Compiler:
    __slots__ = ("collation", "variables")

    def __init__(self, collation: Collation | None, variables: dict[str, Any]) -> None:
        self.collation = collation
        self.variables = variables

    def filter(self, spec: dict[str, Any]) -> DocTest:
        tests: list[DocTest] = []
        for key, value in spec.items():
            if key.startswith("$"):
                test = self.top_level(key, value)
                if test is not None:
                    tests.append(test)
            else:
                tests.append(self.field(key, value))
        return _all_of(tests)

    def field(self, path: str, spec: Any) -> DocTest:
        if _is_operator_document(spec):
            return _all_of([op.bind(path) for op in self.operators(spec)])
        if _is_regex(spec):
            return _path_test(path, _regex_pred(_compile_regex(spec, None)))
        return _path_test(path, eq_pred(spec, self.collation))

    def top_level(self, key: str, value: Any) -> DocTest | None:
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list):
                raise CommandError(2, f"{key} must be an array")
            if not value:
                raise CommandError(2, "$and/$or/$nor must be a nonempty array")
            children = []
            for clause in value:
                if not isinstance(clause, dict):
                    raise CommandError(2, "$or/$and/$nor entries need to be full objects")
                children.append(self.filter(clause))
            if key == "$and":
                return _all_of(children)
            return _any_of(children) if key == "$or" else _none_of(children)
        if key == "$expr":
            return self.expr(value)
        if key == "$jsonSchema":
            validate = _compile_schema(value)
            return lambda doc: MATCH if validate(doc) else NO_MATCH
        if key == "$comment":
            return None
        if key == "$alwaysTrue":
            return lambda doc: MATCH
        if key == "$alwaysFalse":
            return lambda doc: NO_MATCH
        if key == "$sampleRate":
            if not is_number(value):
                raise CommandError(2, "argument to $sampleRate must be a numeric type")
            rate = float(numeric_value(value))
            if not 0 <= rate <= 1:
                raise CommandError(2, "numeric argument to $sampleRate must be in [0, 1]")
            return lambda doc: MATCH if random.random() < rate else NO_MATCH
        if key == "$where":
            raise CommandError(2, "$where is not supported by mongoemu (no JavaScript engine)")
        if key == "$text":
            raise CommandError(27, "text index required for $text query")
        raise CommandError(2, f"unknown top level operator: {key}")

    def expr(self, expression: Any) -> DocTest:
        evaluate = expression_function(expression, self.variables, self.collation)
        return lambda doc: MATCH if _bson_truthy(evaluate(doc)) else NO_MATCH

    def operators(self, spec: dict[str, Any]) -> list[_Op]:
        """An operator document such as ``{$gt: 1, $lt: 5}``: one op per operator, ANDed."""
        collation = self.collation
        ops: list[_Op] = []
        for op, arg in spec.items():
            if op == "$eq":
                ops.append(_LeafOp(eq_pred(arg, collation)))
            elif op == "$ne":
                ops.append(_NotOp([_LeafOp(eq_pred(arg, collation))]))
            elif op in _COMPARATORS:
                ops.append(_LeafOp(_compare_pred(op, arg, collation)))
            elif op == "$in":
                ops.append(_LeafOp(_in_pred(op, arg, collation)))
            elif op == "$nin":
                ops.append(_NotOp([_LeafOp(_in_pred(op, arg, collation))]))
            elif op == "$exists":
                exists = _WholeOp(_exists_pred)
                ops.append(exists if _bson_truthy(arg) else _NotOp([exists]))
            elif op == "$type":
                ops.append(_LeafOp(_type_pred(arg)))
            elif op == "$regex":
                ops.append(_LeafOp(_regex_pred(_compile_regex(arg, spec.get("$options")))))
            elif op == "$options":
                if "$regex" not in spec:
                    raise CommandError(2, "$options needs a $regex")
            elif op == "$elemMatch":
                ops.append(_WholeOp(self.elem_match(arg)))
            elif op == "$size":
                ops.append(_WholeOp(_size_pred(arg)))
            elif op == "$all":
                ops.append(self.all(arg))
            elif op == "$not":
                ops.append(self.negation(arg))
            elif op == "$mod":
                ops.append(_LeafOp(_mod_pred(arg)))
            elif op in ("$bitsAllSet", "$bitsAnySet", "$bitsAllClear", "$bitsAnyClear"):
                ops.append(_LeafOp(_bits_pred(op, arg)))
            elif op in _GEO_OPERATORS:
                raise CommandError(2, f"{op} is not supported by mongoemu (no geospatial support)")
            else:
                raise CommandError(2, f"unknown operator: {op}")
        return ops

    def negation(self, arg: Any) -> _Op:
        if _is_regex(arg):
            return _NotOp([_LeafOp(_regex_pred(_compile_regex(arg, None)))])
        if not isinstance(arg, dict):
            raise CommandError(2, "$not needs a regex or a document")
        if not arg:
            raise CommandError(2, "$not cannot be empty")
        return _NotOp(self.operators(arg))

    def all(self, items: Any) -> _Op:
        if not isinstance(items, list):
            raise CommandError(2, "$all needs an array")
        if not items:
            return _NEVER
        elem_matches = [isinstance(item, dict) and next(iter(item), None) == "$elemMatch" for item in items]
        if any(elem_matches):
            if not all(elem_matches):
                raise CommandError(2, "$all/$elemMatch has to be consistent")
            return _AndOp([_WholeOp(self.elem_match(item["$elemMatch"])) for item in items])
        inner: list[_Op] = []
        for item in items:
            if _is_operator_document(item):
                raise CommandError(2, "no $ expressions in $all")
            if _is_regex(item):
                inner.append(_LeafOp(_regex_pred(_compile_regex(item, None))))
            else:
                inner.append(_LeafOp(eq_pred(item, self.collation)))
        return _AndOp(inner)

    def elem_match(self, spec: Any) -> IntPred:
        """``$elemMatch`` returning the offset of the first satisfying element."""
        if not isinstance(spec, dict):
            raise CommandError(2, "$elemMatch needs an Object")
        if spec and all(key.startswith("$") for key in spec) and next(iter(spec)) not in _QUERY_LEVEL:
            singles = [op.single for op in self.operators(spec)]

            def value_form(value: Any) -> int:
                if value.__class__ is list:
                    for j, element in enumerate(value):
                        if all(single(element) for single in singles):
                            return j
                return NO_MATCH

            return value_form
        sub = self.filter(spec)

        def query_form(value: Any) -> int:
            if value.__class__ is list:
                for j, element in enumerate(value):
                    cls = element.__class__
                    if cls is dict:
                        document = element
                    elif cls is list:  # an inner array is matched as the document {"0": ..., ...}
                        document = {str(k): v for k, v in enumerate(element)}
                    elif cls is DBRef:
                        document = element.as_doc()
                    else:
                        continue
                    if sub(document) != NO_MATCH:
                        return j
            return NO_MATCH

        return query_form


# --------------------------------------------------------------------------------------------
# $jsonSchema


_JSON_TYPES: dict[str, frozenset[str]] = {
    "object": frozenset(("object",)),
    "array": frozenset(("array",)),
    "number": _NUMBER_TYPES,
    "boolean": frozenset(("bool",)),
    "string": frozenset(("string",)),
    "null": frozenset(("null",)),
}
_SCHEMA_IGNORED = frozenset(("title", "description", "$comment"))

Check = Callable[[Any], bool]


def _schema_number(keyword: str, value: Any) -> Any:
    if not is_number(value):
        raise CommandError(14, f"$jsonSchema keyword '{keyword}' must be a number")
    return numeric_value(value)


def _schema_count(keyword: str, value: Any) -> int:
    number = _schema_number(keyword, value)
    if number != number or number < 0 or number != int(number):
        raise CommandError(2, f"$jsonSchema keyword '{keyword}' must be a non-negative integer")
    return int(number)


def _schema_list(keyword: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise CommandError(2, f"$jsonSchema keyword '{keyword}' must be a nonempty array")
    return value


def _compile_schema(schema: Any) -> Check:
    """A reasonable subset of draft-4 JSON Schema with MongoDB's ``bsonType`` extension.

    Like the server, keywords only constrain values of the type they are about: ``minimum`` ignores
    strings, ``properties`` ignores non-objects, and so on.
    """
    if not isinstance(schema, dict):
        raise CommandError(14, "$jsonSchema must be an object")
    if "type" in schema and "bsonType" in schema:
        raise CommandError(9, "Cannot specify both $jsonSchema keywords 'type' and 'bsonType'")
    checks: list[Check] = []
    for keyword, arg in schema.items():
        if keyword in _SCHEMA_IGNORED:
            continue
        check = _schema_keyword(schema, keyword, arg)
        if check is not None:
            checks.append(check)
    return lambda value: all(check(value) for check in checks)


def _schema_keyword(schema: dict[str, Any], keyword: str, arg: Any) -> Check | None:
    if keyword == "bsonType":
        names = _type_names(arg)
        return lambda value: type_name(value) in names
    if keyword == "type":
        names: set[str] = set()
        for item in arg if isinstance(arg, list) else [arg]:
            if item == "integer":
                raise CommandError(9, "$jsonSchema type 'integer' is not currently supported.")
            if item not in _JSON_TYPES:
                raise CommandError(2, f"Unknown type name alias: {item}")
            names |= _JSON_TYPES[item]
        return lambda value: type_name(value) in names
    if keyword == "enum":
        keys = [sort_key(item) for item in _schema_list(keyword, arg)]
        return lambda value: value is not MISSING and sort_key(value) in keys
    if keyword == "required":
        required = _schema_list(keyword, arg)
        if not all(isinstance(name, str) for name in required):
            raise CommandError(14, "$jsonSchema keyword 'required' must be an array of strings")
        return lambda value: value.__class__ is not dict or all(name in value for name in required)
    if keyword == "properties":
        if not isinstance(arg, dict):
            raise CommandError(14, "$jsonSchema keyword 'properties' must be an object")
        properties = {name: _compile_schema(sub) for name, sub in arg.items()}
        return lambda value: value.__class__ is not dict or all(
            check(value[name]) for name, check in properties.items() if name in value
        )
    if keyword == "patternProperties":
        if not isinstance(arg, dict):
            raise CommandError(14, "$jsonSchema keyword 'patternProperties' must be an object")
        patterns = [(_compile_regex(p, None).search, _compile_schema(sub)) for p, sub in arg.items()]
        return lambda value: value.__class__ is not dict or all(
            check(field_value)
            for field, field_value in value.items()
            for search, check in patterns
            if search(field)
        )
    if keyword == "additionalProperties":
        return _additional_properties(schema, arg)
    if keyword in ("minProperties", "maxProperties"):
        count = _schema_count(keyword, arg)
        compare_to = operator.ge if keyword == "minProperties" else operator.le
        return lambda value: value.__class__ is not dict or compare_to(len(value), count)
    if keyword in ("minimum", "maximum"):
        bound = _schema_number(keyword, arg)
        exclusive = schema.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum", False)
        if keyword == "minimum":
            compare_to = operator.gt if exclusive else operator.ge
        else:
            compare_to = operator.lt if exclusive else operator.le
        number_check = _number_pred(compare_to, bound)
        return lambda value: not is_number(value) or number_check(value)
    if keyword in ("exclusiveMinimum", "exclusiveMaximum"):
        if not isinstance(arg, bool):
            raise CommandError(14, f"$jsonSchema keyword '{keyword}' must be a boolean")
        bound_keyword = "minimum" if keyword == "exclusiveMinimum" else "maximum"
        if bound_keyword not in schema:
            raise CommandError(9, f"$jsonSchema keyword '{bound_keyword}' must be a present if {keyword} is present")
        return None
    if keyword == "multipleOf":
        divisor = _schema_number(keyword, arg)
        if not divisor > 0:
            raise CommandError(2, "$jsonSchema keyword 'multipleOf' must have a positive value")
        return lambda value: not is_number(value) or _is_multiple(numeric_value(value), divisor)
    if keyword in ("minLength", "maxLength"):
        length = _schema_count(keyword, arg)
        compare_to = operator.ge if keyword == "minLength" else operator.le
        return lambda value: value.__class__ is not str or compare_to(len(value), length)
    if keyword == "pattern":
        if not isinstance(arg, str):
            raise CommandError(14, "$jsonSchema keyword 'pattern' must be a string")
        search = _compile_regex(arg, None).search
        return lambda value: value.__class__ is not str or search(value) is not None
    if keyword == "items":
        return _items(schema, arg)
    if keyword == "additionalItems":
        if not isinstance(arg, (bool, dict)):
            raise CommandError(14, "$jsonSchema keyword 'additionalItems' must be either an object or a boolean")
        return None  # applied by "items", which it qualifies
    if keyword in ("minItems", "maxItems"):
        count = _schema_count(keyword, arg)
        compare_to = operator.ge if keyword == "minItems" else operator.le
        return lambda value: value.__class__ is not list or compare_to(len(value), count)
    if keyword == "uniqueItems":
        if not isinstance(arg, bool):
            raise CommandError(14, "$jsonSchema keyword 'uniqueItems' must be a boolean")
        if not arg:
            return None
        return lambda value: value.__class__ is not list or len({sort_key(v) for v in value}) == len(value)
    if keyword in ("allOf", "anyOf", "oneOf"):
        subs = [_compile_schema(sub) for sub in _schema_list(keyword, arg)]
        if keyword == "allOf":
            return lambda value: all(sub(value) for sub in subs)
        if keyword == "anyOf":
            return lambda value: any(sub(value) for sub in subs)
        return lambda value: sum(1 for sub in subs if sub(value)) == 1
    if keyword == "not":
        sub = _compile_schema(arg)
        return lambda value: not sub(value)
    if keyword == "dependencies":
        return _dependencies(arg)
    raise CommandError(9, f"Unknown $jsonSchema keyword: {keyword}")


def _is_multiple(number: Any, divisor: Any) -> bool:
    if isinstance(number, Decimal) or isinstance(divisor, Decimal):
        number, divisor = Decimal(str(number)), Decimal(str(divisor))
        return number.is_finite() and number % divisor == 0
    if isinstance(number, float) and not math.isfinite(number):
        return False
    return number % divisor == 0


def _additional_properties(schema: dict[str, Any], arg: Any) -> Check:
    if not isinstance(arg, (bool, dict)):
        raise CommandError(14, "$jsonSchema keyword 'additionalProperties' must be either an object or a boolean")
    declared = set(schema.get("properties", {}) or {})
    searches = [_compile_regex(p, None).search for p in (schema.get("patternProperties") or {})]
    extra_check: Check = (lambda value: arg) if isinstance(arg, bool) else _compile_schema(arg)

    def check(value: Any) -> bool:
        if value.__class__ is not dict:
            return True
        for field, field_value in value.items():
            if field in declared or any(search(field) for search in searches):
                continue
            if not extra_check(field_value):
                return False
        return True

    return check


def _items(schema: dict[str, Any], arg: Any) -> Check:
    if isinstance(arg, dict):
        each = _compile_schema(arg)
        return lambda value: value.__class__ is not list or all(each(element) for element in value)
    if not isinstance(arg, list):
        raise CommandError(14, "$jsonSchema keyword 'items' must be an array or an object")
    positional = [_compile_schema(sub) for sub in arg]
    additional = schema.get("additionalItems", True)
    rest: Check = (lambda value: additional) if isinstance(additional, bool) else _compile_schema(additional)

    def check(value: Any) -> bool:
        if value.__class__ is not list:
            return True
        for j, element in enumerate(value):
            if not (positional[j] if j < len(positional) else rest)(element):
                return False
        return True

    return check


def _dependencies(arg: Any) -> Check:
    if not isinstance(arg, dict):
        raise CommandError(14, "$jsonSchema keyword 'dependencies' must be an object")
    rules: list[tuple[str, Check]] = []
    for name, dependency in arg.items():
        if isinstance(dependency, list):
            needed = list(dependency)
            rules.append((name, lambda value, needed=needed: all(n in value for n in needed)))
        else:
            rules.append((name, _compile_schema(dependency)))

    def check(value: Any) -> bool:
        if value.__class__ is not dict:
            return True
        return all(rule(value) for name, rule in rules if name in value)

    return check


# --------------------------------------------------------------------------------------------
# Filter analysis for the storage and write layers


def _equality_operand(spec: Any) -> Any:
    """The value a field predicate pins the field to, or MISSING when it does not pin it."""
    if _is_regex(spec):
        return MISSING
    if _is_operator_document(spec):
        if "$eq" in spec:
            return spec["$eq"]
        items = spec.get("$in")
        if isinstance(items, list) and len(items) == 1 and not _is_regex(items[0]) \
                and not _is_operator_document(items[0]):
            return items[0]
        return MISSING
    return spec


def _contains_string(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(_contains_string(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_string(v) for v in value)
    return False


def _collation_sensitive(value: Any, collation: Collation | None) -> bool:
    return effective(collation) is not None and _contains_string(value)


def is_simple_id_equality(
    filter: Any, collation: Collation | None = None
) -> tuple[bool, Any]:
    """``(True, v)`` when the filter is exactly ``{_id: v}`` / ``{_id: {$eq: v}}``.

    Such a filter is answered by a key lookup alone, with no need to run the matcher. Under a
    non-simple collation a string ``_id`` could match other spellings, so it is not simple then.
    """
    if not isinstance(filter, dict) or "_id" not in filter:
        return False, None
    if any(key != "_id" and key != "$comment" for key in filter):
        return False, None
    spec = filter["_id"]
    if _is_operator_document(spec) and (len(spec) != 1 or "$eq" not in spec):
        return False, None
    value = _equality_operand(spec)
    if value is MISSING or isinstance(value, list) or _collation_sensitive(value, collation):
        return False, None
    return True, value


def id_values(filter: Any, collation: Collation | None = None) -> list[Any] | None:
    """The finite set of ``_id`` values a filter allows (``$eq``, ``$in``, possibly under ``$and``).

    Returns None when the filter does not restrict ``_id`` to a list of values. The result is a
    superset: the caller fetches those documents and still runs the full :class:`Matcher`.
    """
    candidates: list[Any] | None = None
    for spec in _id_predicates(filter):
        values: list[Any] | None
        pinned = _equality_operand(spec)
        if pinned is not MISSING:
            values = [pinned]
        elif _is_operator_document(spec) and isinstance(spec.get("$in"), list):
            values = list(spec["$in"])
        else:
            continue
        if any(_is_regex(v) or isinstance(v, list) or _collation_sensitive(v, collation) for v in values):
            continue
        if candidates is None:
            candidates = values
        else:
            keys = {sort_key(v) for v in values}
            candidates = [v for v in candidates if sort_key(v) in keys]
    return candidates


def _id_predicates(filter: Any) -> Iterable[Any]:
    """Every predicate on ``_id`` that must hold: top level and inside (nested) top-level ``$and``."""
    if not isinstance(filter, dict):
        return
    for key, value in filter.items():
        if key == "_id":
            yield value
        elif key == "$and" and isinstance(value, list):
            for clause in value:
                yield from _id_predicates(clause)


# Per canonical type: the smallest value of the type and the bound just above the largest one.
_BRACKETS: dict[int, tuple[Any, tuple[Any, bool]]] = {
    RANK_NUMBER: (float("-inf"), ("", False)),
    RANK_STRING: ("", ({}, False)),
    RANK_OBJECT: ({}, ([], False)),
    RANK_ARRAY: ([], (b"", False)),
    RANK_BINARY: (b"", (ObjectId(b"\x00" * 12), False)),
    RANK_OBJECTID: (ObjectId(b"\x00" * 12), (False, False)),
    RANK_BOOL: (False, (True, True)),
    RANK_DATE: (DatetimeMS(_INT64_MIN), (Timestamp(0, 0), False)),
    RANK_TIMESTAMP: (Timestamp(0, 0), (Regex("", 0), False)),
    RANK_REGEX: (Regex("", 0), (MaxKey(), False)),
}


def id_range(
    filter: Any, collation: Collation | None = None
) -> tuple[Any, bool, Any, bool] | None:
    """``(lower, lower_inclusive, upper, upper_inclusive)`` bounding ``_id`` in BSON order.

    Recognizes ``$eq``/implicit equality and ``$gt``/``$gte``/``$lt``/``$lte`` on ``_id`` at the top
    level or inside a top-level ``$and``, with type bracketing (``{$gt: 5}`` stops before the first
    string). Unbounded sides are ``MinKey()``/``MaxKey()``; an empty range has ``lower == upper``
    with an exclusive side. None means no usable bound. The range is a superset of the matches: the
    caller still runs the :class:`Matcher` on what it scans.
    """
    lower: tuple[Any, bool] = (MinKey(), True)
    upper: tuple[Any, bool] = (MaxKey(), True)
    narrowed = False
    empty = (MinKey(), False, MinKey(), False)
    for spec in _id_predicates(filter):
        for op, value in _id_bounds(spec):
            if _collation_sensitive(value, collation):
                continue
            for low, high in _bracket(op, value):
                if low is None:
                    return empty
                lower = _tighter(lower, low, 1)
                upper = _tighter(upper, high, -1)
                narrowed = True
    if not narrowed:
        return None
    return lower[0], lower[1], upper[0], upper[1]


def _id_bounds(spec: Any) -> list[tuple[str, Any]]:
    pinned = _equality_operand(spec)
    if pinned is not MISSING and not isinstance(pinned, list):
        return [("$eq", pinned)]
    if _is_operator_document(spec):
        return [(op, value) for op, value in spec.items() if op in _COMPARATORS]
    return []


def _bracket(op: str, value: Any) -> list[tuple[Any, Any]]:
    """The ``(lower, upper)`` bounds of one predicate; ``[(None, None)]`` when nothing can match."""
    rank = type_rank(value)
    if op == "$eq" or (is_nan(value) and op in ("$gte", "$lte")):
        return [((value, True), (value, True))]
    if rank == RANK_NULL:
        return [((None, True), (None, True))] if op in ("$gte", "$lte") else [(None, None)]
    if is_nan(value):
        return [(None, None)]
    inclusive = op in ("$gte", "$lte")
    if rank in (RANK_MINKEY, RANK_MAXKEY):
        if op in ("$gt", "$gte"):
            if rank == RANK_MAXKEY and not inclusive:
                return [(None, None)]
            return [((value, inclusive), (MaxKey(), True))]
        if rank == RANK_MINKEY and not inclusive:
            return [(None, None)]
        return [((MinKey(), True), (value, inclusive))]
    bracket = _BRACKETS.get(rank)
    if bracket is None:
        return []
    smallest, above = bracket
    if op in ("$gt", "$gte"):
        return [((value, inclusive), above)]
    return [((smallest, True), (value, inclusive))]


def _tighter(current: tuple[Any, bool], candidate: tuple[Any, bool], direction: int) -> tuple[Any, bool]:
    """The narrower of two lower (direction 1) or upper (direction -1) bounds."""
    order = compare(candidate[0], current[0]) * direction
    if order > 0:
        return candidate
    if order == 0:
        return current[0], current[1] and candidate[1]
    return current


def equality_fields(filter: Any) -> dict[str, Any]:
    """Paths the filter pins to one value, which an upsert copies into the inserted document.

    Covers implicit equality, ``$eq``, single-element ``$in``, and those under ``$and`` or a
    single-clause ``$or``. A path pinned twice, or pinned along with one of its prefixes, fails as on
    the server. Values are returned as-is; copy them before mutating.
    """
    out: dict[str, Any] = {}
    _collect_equalities(filter, out)
    return out


def _collect_equalities(filter: Any, out: dict[str, Any]) -> None:
    if not isinstance(filter, dict):
        return
    for key, value in filter.items():
        if key == "$and" and isinstance(value, list):
            for clause in value:
                _collect_equalities(clause, out)
        elif key == "$or" and isinstance(value, list) and len(value) == 1:
            _collect_equalities(value[0], out)
        elif not key.startswith("$"):
            pinned = _equality_operand(value)
            if pinned is not MISSING:
                _add_equality(out, key, pinned)


def _add_equality(out: dict[str, Any], path: str, value: Any) -> None:
    if path in out:
        raise CommandError(54, f"cannot infer query fields to set, path '{path}' is matched twice",
                           code_name_override="NotSingleValueField")
    for existing in out:
        if existing.startswith(path + ".") or path.startswith(existing + "."):
            raise CommandError(54, f"cannot infer query fields to set, both paths '{existing}' and "
                                   f"'{path}' are matched", code_name_override="NotSingleValueField")
    out[path] = value
