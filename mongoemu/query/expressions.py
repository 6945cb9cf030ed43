"""Aggregation expressions: compile once, evaluate per document.

:func:`compile_expression` turns an expression specification into a Python closure taking an
:class:`Env` (``$$ROOT``, ``$$CURRENT``, user variables, collation); :func:`evaluate` is the
one-shot convenience. Compiling up front is what lets a pipeline reject an unknown operator even
when no document flows through it, as the server does, and keeps per-document work to calls.

Values follow the emulator's document model (:mod:`mongoemu.bsonvalues`): a path that resolves to
nothing is :data:`MISSING`, distinct from ``None`` (null). Arithmetic keeps BSON numeric types the
way the server does: int32 op int32 stays int32 and widens to int64 on overflow, int64 overflow
becomes a double, any double makes a double and Decimal128 dominates everything.

Operators are dispatched through :data:`_PARSERS` (name → parser); error codes and messages copy
the server's wherever a client could reasonably look at them.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import math
import random
import re
import zoneinfo
from functools import lru_cache
from typing import Any, Callable, Iterable

import bson
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128, create_decimal128_context
from bson.int64 import Int64
from bson.errors import InvalidId
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import (
    CODEC,
    MISSING,
    TYPE_NUMBERS,
    datetime_to_millis,
    deep_copy,
    is_number,
    numeric_value,
    sort_key,
    type_name,
)
from mongoemu.errors import CommandError

Compiled = Callable[["Env"], Any]

# The server orders "missing" (EOO/undefined) below null in expression comparisons, unlike query
# comparisons where both are null; MinKey's rank is 0 and null's is 1, so 0.5 sits in between.
_MISSING_KEY: tuple = (0.5,)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_UTC = datetime.timezone.utc
_DEC_CTX = create_decimal128_context()


def _conversion_failure(message: str) -> CommandError:
    # 241 is missing from errors.CODE_NAMES, so name it explicitly.
    return CommandError(241, message, code_name_override="ConversionFailure")


# --------------------------------------------------------------------------------------------
# Evaluation environment
# --------------------------------------------------------------------------------------------


class Env:
    """Everything an expression can see: the documents, the variables and the collation."""

    __slots__ = ("root", "current", "vars", "collation")

    def __init__(self, root: Any, variables: dict[str, Any], collation: Any = None,
                 current: Any = MISSING) -> None:
        self.root = root
        self.current = root if current is MISSING else current
        self.vars = variables
        self.collation = collation

    def bind(self, bindings: dict[str, Any]) -> "Env":
        """A child scope ($let, $map, ...); rebinding CURRENT is allowed like in the server."""
        child = Env(self.root, {**self.vars, **bindings}, self.collation, self.current)
        if "CURRENT" in bindings:
            child.current = bindings["CURRENT"]
        return child

    def key(self, value: Any) -> tuple:
        return value_key(value, self.collation)

    def compare(self, a: Any, b: Any) -> int:
        ka, kb = self.key(a), self.key(b)
        return (ka > kb) - (ka < kb)


def value_key(value: Any, collation: Any = None) -> tuple:
    """A hashable key ordered like the server's expression comparison (collation-aware)."""
    if value is MISSING:
        return _MISSING_KEY
    if collation is None:
        return sort_key(value)
    from mongoemu.query.collation import sort_key_collated

    return sort_key_collated(value, collation)


def now_millis() -> datetime.datetime:
    """``$$NOW``: the current time at BSON (millisecond) precision."""
    now = datetime.datetime.now(_UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def make_env(doc: Any, variables: dict[str, Any] | None = None, collation: Any = None) -> Env:
    """An environment for ``doc``; ``variables`` may carry ``NOW``/``CLUSTER_TIME`` to pin them."""
    scope = dict(variables) if variables else {}
    if "NOW" not in scope:
        scope["NOW"] = now_millis()
    return Env(doc, scope, collation)


class Expression:
    """A compiled expression, reusable across documents."""

    __slots__ = ("spec", "fn")

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.fn = compile_expression(spec)

    def __call__(self, env: Env) -> Any:
        return self.fn(env)

    def evaluate(self, doc: Any, variables: dict[str, Any] | None = None,
                 collation: Any = None) -> Any:
        return self.fn(make_env(doc, variables, collation))


def evaluate(expr: Any, doc: Any, variables: dict[str, Any] | None = None, *,
             collation: Any = None) -> Any:
    """Evaluate ``expr`` against ``doc``; returns :data:`MISSING` when the result is missing."""
    return compile_expression(expr)(make_env(doc, variables, collation))


def truthy(value: Any) -> bool:
    """The server's coercion to bool: false, null, missing and numeric zero are false."""
    if value is None or value is MISSING:
        return False
    if isinstance(value, bool):
        return value
    if is_number(value):
        return numeric_value(value) != 0
    return True


def _nullish(value: Any) -> bool:
    return value is None or value is MISSING


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------

_PARSERS: dict[str, Callable[[str, Any], Compiled]] = {}


def compile_expression(expr: Any) -> Compiled:
    """Compile an expression specification; raises :class:`CommandError` for invalid ones."""
    if isinstance(expr, str):
        if expr.startswith("$"):
            return _compile_field_path(expr)
        return lambda env: expr
    if isinstance(expr, dict):
        if expr and next(iter(expr)).startswith("$"):
            return _compile_operator(expr)
        return _compile_object(expr)
    if isinstance(expr, list):
        return _compile_array(expr)
    return _constant(expr)


def is_operator_object(spec: Any) -> bool:
    return isinstance(spec, dict) and bool(spec) and next(iter(spec)).startswith("$")


def _constant(value: Any) -> Compiled:
    if isinstance(value, (dict, list)):
        # Stages build output documents from expression results, so hand out fresh containers.
        return lambda env: deep_copy(value)
    return lambda env: value


def _compile_operator(expr: dict) -> Compiled:
    if len(expr) != 1:
        raise CommandError(
            15983,
            "an expression specification must contain exactly one field, the name of the "
            f"expression. Found {len(expr)} fields in {show(expr)}",
        )
    ((name, spec),) = expr.items()
    parser = _PARSERS.get(name)
    if parser is None:
        raise CommandError(168, f"Unrecognized expression '{name}'")
    return parser(name, spec)


def check_field_name(name: str) -> None:
    """The server's rules for a field name written in an expression object or projection."""
    if not name:
        raise CommandError(15998, "FieldPath field names may not be empty strings.")
    if name.startswith("$"):
        raise CommandError(
            16410,
            "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
        )
    if "\0" in name:
        raise CommandError(16411, "FieldPath field names may not contain '\\0'.")


def _compile_object(spec: dict) -> Compiled:
    fields: list[tuple[str, Compiled]] = []
    for name, value in spec.items():
        check_field_name(name)
        if "." in name:
            raise CommandError(
                16412, "FieldPath field names may not contain '.'. Consider using $getField or $setField."
            )
        fields.append((name, compile_expression(value)))

    def run(env: Env) -> dict:
        out = {}
        for name, fn in fields:
            value = fn(env)
            if value is not MISSING:
                out[name] = value
        return out

    return run


def _compile_array(spec: list) -> Compiled:
    items = [compile_expression(item) for item in spec]

    def run(env: Env) -> list:
        out = []
        for fn in items:
            value = fn(env)
            out.append(None if value is MISSING else value)
        return out

    return run


# --------------------------------------------------------------------------------------------
# Field paths and variables
# --------------------------------------------------------------------------------------------

_SYSTEM_VARIABLES = frozenset(
    {"ROOT", "CURRENT", "REMOVE", "NOW", "CLUSTER_TIME", "DESCEND", "PRUNE", "KEEP",
     "USER_ROLES", "SEARCH_META"}
)
# What $$DESCEND/$$PRUNE/$$KEEP evaluate to; $redact compares its expression's result to these.
REDACT_DESCEND, REDACT_PRUNE, REDACT_KEEP = "descend", "prune", "keep"


def _split_field_path(path: str) -> list[str]:
    parts = path.split(".")
    for part in parts:
        if not part:
            raise CommandError(15998, "FieldPath field names may not be empty strings.")
        if part.startswith("$"):
            raise CommandError(
                16410,
                "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
            )
    return parts


def _bad_variable_start(char: str) -> bool:
    # ASCII names must start with a lowercase letter; any non-ASCII character is accepted.
    return char.isascii() and not char.islower()


def _bad_variable_char(char: str) -> bool:
    return char.isascii() and not (char.isalnum() or char == "_")


def validate_variable_name(name: str) -> None:
    """Names a user may bind ($let, $map 'as', let options): lowercase start, word characters."""
    if not name:
        raise CommandError(16866, "empty variable names are not allowed")
    if name == "CURRENT":
        return
    if _bad_variable_start(name[0]):
        raise CommandError(16867, f"'{name}' starts with an invalid character for a user variable name")
    for char in name[1:]:
        if _bad_variable_char(char):
            raise CommandError(16868, f"'{name}' contains an invalid character for a variable name: '{char}'")


def _validate_variable_reference(name: str) -> None:
    if not name:
        raise CommandError(16869, "empty variable names are not allowed")
    if name in _SYSTEM_VARIABLES:
        return
    if name[0].isascii() and name[0].isupper():
        raise CommandError(17276, f"Use of undefined variable: {name}")
    if _bad_variable_start(name[0]):
        raise CommandError(16870, f"'{name}' starts with an invalid character for a user variable name")
    for char in name[1:]:
        if _bad_variable_char(char):
            raise CommandError(16871, f"'{name}' contains an invalid character for a variable name: '{char}'")


def _compile_field_path(text: str) -> Compiled:
    if text.startswith("$$"):
        name, _, rest = text[2:].partition(".")
        _validate_variable_reference(name)
        getter = _variable_getter(name)
        if not rest:
            return getter
        parts = _split_field_path(rest)
        return lambda env: _traverse(getter(env), parts)
    if text == "$":
        raise CommandError(16872, "'$' by itself is not a valid FieldPath")
    parts = _split_field_path(text[1:])
    if len(parts) == 1:
        (field,) = parts

        def top_level(env: Env) -> Any:
            current = env.current
            return current.get(field, MISSING) if isinstance(current, dict) else MISSING

        return top_level
    return lambda env: _traverse(env.current, parts)


def _variable_getter(name: str) -> Compiled:
    if name == "ROOT":
        return lambda env: env.root
    if name == "CURRENT":
        return lambda env: env.current
    if name == "REMOVE":
        return lambda env: MISSING
    if name == "DESCEND":
        return lambda env: REDACT_DESCEND
    if name == "PRUNE":
        return lambda env: REDACT_PRUNE
    if name == "KEEP":
        return lambda env: REDACT_KEEP

    def user_variable(env: Env) -> Any:
        try:
            return env.vars[name]
        except KeyError:
            if name == "CLUSTER_TIME":
                raise CommandError(51144, "Builtin variable '$$CLUSTER_TIME' is not available") from None
            if name == "NOW":
                value = env.vars["NOW"] = now_millis()
                return value
            raise CommandError(17276, f"Use of undefined variable: {name}") from None

    return user_variable


def _traverse(value: Any, parts: list[str]) -> Any:
    """An aggregation field path below ``value``: arrays fan out over their sub-documents."""
    if isinstance(value, dict):
        return _path_in_doc(value, parts, 0)
    if isinstance(value, list):
        return _path_in_array(value, parts, 0)
    return MISSING


def _path_in_doc(doc: dict, parts: list[str], index: int) -> Any:
    value = doc.get(parts[index], MISSING)
    if index == len(parts) - 1:
        return value
    if isinstance(value, dict):
        return _path_in_doc(value, parts, index + 1)
    if isinstance(value, list):
        return _path_in_array(value, parts, index + 1)
    return MISSING


def _path_in_array(array: list, parts: list[str], index: int) -> list:
    # Like ExpressionFieldPath::evaluatePathArray: only sub-documents are descended into, and
    # numeric components are field names, never array positions.
    out = []
    for element in array:
        if isinstance(element, dict):
            value = _path_in_doc(element, parts, index)
            if value is not MISSING:
                out.append(value)
    return out


# --------------------------------------------------------------------------------------------
# Registration helpers
# --------------------------------------------------------------------------------------------


def _arg_list(spec: Any) -> list:
    return spec if isinstance(spec, list) else [spec]


def _check_arity(op: str, count: int, low: int, high: int | None) -> None:
    if low == high:
        if count != low:
            raise CommandError(16020, f"Expression {op} takes exactly {low} arguments. {count} were passed in.")
    elif count < low:
        if high is None:
            raise CommandError(16021, f"Expression {op} takes at least {low} arguments, but {count} were passed in.")
        raise CommandError(
            28667, f"Expression {op} takes at least {low} arguments, and at most {high}. {count} were passed in."
        )
    elif high is not None and count > high:
        raise CommandError(
            28667, f"Expression {op} takes at least {low} arguments, and at most {high}. {count} were passed in."
        )


ValuesFn = Callable[[str, list, Env], Any]


def _values_op(*names: str, low: int = 1, high: int | None = 1) -> Callable[[ValuesFn], ValuesFn]:
    """Register ``fn(op, values, env)`` for operators that evaluate every argument first."""

    def register(fn: ValuesFn) -> ValuesFn:
        def parse(op: str, spec: Any) -> Compiled:
            args = _arg_list(spec)
            _check_arity(op, len(args), low, high)
            compiled = [compile_expression(arg) for arg in args]
            return lambda env: fn(op, [arg(env) for arg in compiled], env)

        for name in names:
            _PARSERS[name] = parse
        return fn

    return register


Parser = Callable[[str, Any], Compiled]


def _parser(*names: str) -> Callable[[Parser], Parser]:
    """Register a parser that compiles its own arguments (short-circuiting or named arguments)."""

    def register(parse: Parser) -> Parser:
        for name in names:
            _PARSERS[name] = parse
        return parse

    return register


def _named_args(op: str, spec: Any, required: Iterable[str], optional: Iterable[str] = (),
                codes: tuple[int, int, int] = (9, 9, 9)) -> dict[str, Any]:
    """Check an object-style argument; ``codes`` are (not an object, unknown field, missing)."""
    not_object, unknown, missing = codes
    if not isinstance(spec, dict):
        raise CommandError(not_object, f"{op} only supports an object as its argument")
    allowed = set(required) | set(optional)
    for name in spec:
        if name not in allowed:
            raise CommandError(unknown, f"Unrecognized parameter to {op}: {name}")
    for name in required:
        if name not in spec:
            raise CommandError(missing, f"Missing '{name}' parameter to {op}")
    return spec


def _compile_named(spec: dict, names: Iterable[str]) -> dict[str, Compiled]:
    return {name: compile_expression(spec[name]) for name in names if name in spec}


# --------------------------------------------------------------------------------------------
# Rendering values in error messages
# --------------------------------------------------------------------------------------------


def format_double(value: float) -> str:
    """How the server prints a double ($toString, error messages): shortest round-trip form."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def format_date(value: Any) -> str:
    millis = datetime_to_millis(value)
    try:
        moment = _EPOCH + datetime.timedelta(milliseconds=millis)
    except OverflowError:
        return str(millis)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def show(value: Any) -> str:
    """A value rendered the way server error messages render it (close to shell JSON)."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, (int, Decimal128)):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[ " + ", ".join(show(v) for v in value) + " ]"
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return f"new Date({datetime_to_millis(value)})"
    if isinstance(value, ObjectId):
        return f"ObjectId('{value}')"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

# Numeric kinds in widening order: the widest operand decides the result type.
K_INT, K_LONG, K_DOUBLE, K_DECIMAL = 0, 1, 2, 3


def numeric_kind(value: Any) -> int:
    if isinstance(value, float):
        return K_DOUBLE
    if isinstance(value, Decimal128):
        return K_DECIMAL
    if isinstance(value, Int64):
        return K_LONG
    return K_INT if _INT32_MIN <= value <= _INT32_MAX else K_LONG


def to_decimal(value: Any) -> decimal.Decimal:
    """A number as :class:`decimal.Decimal`; doubles keep 15 significant digits like the server."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        return double_to_decimal(value)
    return decimal.Decimal(int(value))


_WIDE_CTX = decimal.Context(prec=400, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def double_to_decimal(value: float) -> decimal.Decimal:
    """The server's double→Decimal128 conversion: 15 significant digits, trailing zeros kept."""
    exact = decimal.Decimal(value)
    if not exact.is_finite() or not exact:
        return exact
    quantum = decimal.Decimal(1).scaleb(exact.adjusted() - 14)
    return exact.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN, context=_WIDE_CTX)


def to_decimal128(value: decimal.Decimal) -> Decimal128:
    return Decimal128(_DEC_CTX.create_decimal(value))


def make_number(value: Any, kind: int) -> Any:
    """``value`` as the BSON type of ``kind``, widening integers that overflow like the server."""
    if kind == K_DECIMAL:
        return to_decimal128(value if isinstance(value, decimal.Decimal) else to_decimal(value))
    if kind == K_DOUBLE:
        return float(value)
    number = int(value)
    if kind == K_INT and _INT32_MIN <= number <= _INT32_MAX:
        return number
    if _INT64_MIN <= number <= _INT64_MAX:
        return Int64(number)
    return float(number)


def is_date(value: Any) -> bool:
    return isinstance(value, (datetime.datetime, DatetimeMS))


def date_from_millis(millis: int) -> Any:
    """A BSON date; outside Python's datetime range it stays a :class:`DatetimeMS`."""
    try:
        return _EPOCH + datetime.timedelta(milliseconds=millis)
    except OverflowError:
        return DatetimeMS(millis)


class NumericSum:
    """Running sum for $add/$sum/$avg: exact integers, compensated doubles, Decimal128."""

    __slots__ = ("kind", "ints", "double", "compensation", "nonfinite", "decimal", "count")

    def __init__(self) -> None:
        self.kind = K_INT
        self.ints = 0
        self.double = 0.0
        self.compensation = 0.0
        self.nonfinite = 0.0
        self.decimal = decimal.Decimal(0)
        self.count = 0

    def add(self, value: Any) -> None:
        kind = numeric_kind(value)
        if kind > self.kind:
            self.kind = kind
        self.count += 1
        if kind == K_DECIMAL:
            self.decimal = _DEC_CTX.add(self.decimal, value.to_decimal())
        elif kind == K_DOUBLE:
            if not math.isfinite(value):
                self.nonfinite += value
                return
            # Neumaier summation: the server sums doubles with extra precision too.
            total = self.double + value
            if abs(self.double) >= abs(value):
                self.compensation += (self.double - total) + value
            else:
                self.compensation += (value - total) + self.double
            self.double = total
        else:
            self.ints += int(value)

    def _double_total(self) -> float:
        return float(self.ints) + self.double + self.compensation + self.nonfinite

    def total(self) -> Any:
        """The sum as a Python number of the current kind (Decimal, float or int)."""
        if self.kind == K_DECIMAL:
            total = _DEC_CTX.add(self.decimal, decimal.Decimal(self.ints))
            if self.double or self.compensation or self.nonfinite:
                total = _DEC_CTX.add(total, to_decimal(self.double + self.compensation + self.nonfinite))
            return total
        if self.kind == K_DOUBLE:
            return self._double_total()
        return self.ints

    def result(self) -> Any:
        return make_number(self.total(), self.kind)

    def average(self) -> Any:
        if not self.count:
            return None
        if self.kind == K_DECIMAL:
            return to_decimal128(_DEC_CTX.divide(self.total(), decimal.Decimal(self.count)))
        if self.kind == K_DOUBLE:
            return self._double_total() / self.count
        return self.ints / self.count


def _millis_offset(op: str, value: Any) -> int:
    """A number added to a date, rounded to whole milliseconds."""
    number = numeric_value(value)
    if isinstance(number, int):
        return number
    finite = number.is_finite() if isinstance(number, decimal.Decimal) else math.isfinite(number)
    if not finite:
        raise CommandError(15, f"date overflow in {op}")
    return int(round(number))


@_values_op("$add", low=0, high=None)
def _add(op: str, values: list, env: Env) -> Any:
    acc = NumericSum()
    date_ms = None
    for value in values:
        if is_number(value):
            acc.add(value)
        elif is_date(value):
            if date_ms is not None:
                raise CommandError(16612, "only one date allowed in an $add expression")
            date_ms = datetime_to_millis(value)
        elif _nullish(value):
            return None
        else:
            raise CommandError(16554, f"$add only supports numeric or date types, not {type_name(value)}")
    if date_ms is not None:
        total = acc.total()
        if isinstance(total, decimal.Decimal):
            total = to_decimal128(total)
        return date_from_millis(date_ms + _millis_offset(op, total))
    return acc.result()


_DECIMAL_BINARY: dict[str, Callable[[decimal.Decimal, decimal.Decimal], decimal.Decimal]] = {
    "-": _DEC_CTX.subtract,
    "*": _DEC_CTX.multiply,
}
_PLAIN_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def _arith2(a: Any, b: Any, symbol: str) -> Any:
    kind = max(numeric_kind(a), numeric_kind(b))
    if kind == K_DECIMAL:
        return to_decimal128(_DECIMAL_BINARY[symbol](to_decimal(a), to_decimal(b)))
    if kind == K_DOUBLE:
        return float(_PLAIN_BINARY[symbol](float(a), float(b)))
    return make_number(_PLAIN_BINARY[symbol](int(a), int(b)), kind)


@_values_op("$subtract", low=2, high=2)
def _subtract(op: str, values: list, env: Env) -> Any:
    a, b = values
    if _nullish(a) or _nullish(b):
        return None
    if is_number(a) and is_number(b):
        return _arith2(a, b, "-")
    if is_date(a):
        if is_date(b):
            return Int64(datetime_to_millis(a) - datetime_to_millis(b))
        if is_number(b):
            return date_from_millis(datetime_to_millis(a) - _millis_offset(op, b))
    raise CommandError(16556, f"can't $subtract {type_name(b)} from {type_name(a)}")


@_values_op("$multiply", low=0, high=None)
def _multiply(op: str, values: list, env: Env) -> Any:
    product: Any = 1
    for value in values:
        if _nullish(value):
            return None
        if not is_number(value):
            raise CommandError(16555, f"$multiply only supports numeric types, not {type_name(value)}")
        product = _arith2(product, value, "*")
    return product


def _is_zero(value: Any) -> bool:
    return numeric_value(value) == 0


@_values_op("$divide", low=2, high=2)
def _divide(op: str, values: list, env: Env) -> Any:
    a, b = values
    if _nullish(a) or _nullish(b):
        return None
    if not (is_number(a) and is_number(b)):
        raise CommandError(
            16609, f"$divide only supports numeric types, not {type_name(a)} and {type_name(b)}"
        )
    if _is_zero(b):
        raise CommandError(16608, "can't $divide by zero")
    if K_DECIMAL in (numeric_kind(a), numeric_kind(b)):
        return to_decimal128(_DEC_CTX.divide(to_decimal(a), to_decimal(b)))
    if isinstance(a, float) or isinstance(b, float):
        return float(a) / float(b)
    return int(a) / int(b)


@_values_op("$mod", low=2, high=2)
def _mod(op: str, values: list, env: Env) -> Any:
    a, b = values
    if _nullish(a) or _nullish(b):
        return None
    if not (is_number(a) and is_number(b)):
        raise CommandError(16611, f"$mod only supports numeric types, not {type_name(a)} and {type_name(b)}")
    if _is_zero(b):
        raise CommandError(16610, "can't $mod by zero")
    kind = max(numeric_kind(a), numeric_kind(b))
    if kind == K_DECIMAL:
        return to_decimal128(_DEC_CTX.remainder(to_decimal(a), to_decimal(b)))
    if kind == K_DOUBLE:
        return math.fmod(float(a), float(b))
    # C semantics: the remainder takes the dividend's sign.
    remainder = abs(int(a)) % abs(int(b))
    return make_number(-remainder if a < 0 else remainder, kind)


def _require_number(op: str, value: Any, code: int = 28765) -> None:
    if not is_number(value):
        raise CommandError(code, f"{op} only supports numeric types, not {type_name(value)}")


@_values_op("$abs")
def _abs(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    _require_number(op, value)
    kind = numeric_kind(value)
    if kind == K_DECIMAL:
        return to_decimal128(_DEC_CTX.abs(value.to_decimal()))
    if kind == K_DOUBLE:
        return abs(value)
    return make_number(abs(int(value)), kind)


_INTEGRAL_ROUNDING: dict[str, tuple[Callable[[float], int], str]] = {
    "$ceil": (math.ceil, decimal.ROUND_CEILING),
    "$floor": (math.floor, decimal.ROUND_FLOOR),
}


@_values_op("$ceil", "$floor")
def _ceil_floor(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    _require_number(op, value)
    to_int, rounding = _INTEGRAL_ROUNDING[op]
    if isinstance(value, Decimal128):
        return to_decimal128(value.to_decimal().to_integral_value(rounding=rounding))
    if isinstance(value, float):
        return float(to_int(value)) if math.isfinite(value) else value
    return value


# name → (double function, Decimal method, "is the argument outside the domain?", error)
_FLOAT_FUNCTIONS: dict[str, tuple[Callable[[float], float], str, Callable[[Any], bool], tuple[int, str]]] = {
    "$sqrt": (math.sqrt, "sqrt", lambda x: x < 0, (28714, "$sqrt's argument must be greater than or equal to 0")),
    "$exp": (math.exp, "exp", lambda x: False, (0, "")),
    "$ln": (math.log, "ln", lambda x: x <= 0, (28766, "$ln's argument must be a positive number, but is {}")),
    "$log10": (math.log10, "log10", lambda x: x <= 0,
               (28761, "$log10's argument must be a positive number, but is {}")),
}


def _safe_float(fn: Callable[[float], float], x: float) -> float:
    if math.isnan(x):
        return x
    try:
        return fn(x)
    except OverflowError:
        return math.inf


@_values_op(*_FLOAT_FUNCTIONS)
def _float_function(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    _require_number(op, value)
    fn, method, invalid, (code, message) = _FLOAT_FUNCTIONS[op]
    number = numeric_value(value)
    if invalid(number):
        raise CommandError(code, message.format(show(value)))
    if isinstance(value, Decimal128):
        return to_decimal128(getattr(number, method)(_DEC_CTX))
    return _safe_float(fn, float(number))


@_values_op("$log", low=2, high=2)
def _log(op: str, values: list, env: Env) -> Any:
    value, base = values
    if _nullish(value) or _nullish(base):
        return None
    if not is_number(value):
        raise CommandError(28756, f"$log's argument must be numeric, not {type_name(value)}")
    if not is_number(base):
        raise CommandError(28757, f"$log's base must be numeric, not {type_name(base)}")
    x, b = numeric_value(value), numeric_value(base)
    if x <= 0:
        raise CommandError(28758, f"$log's argument must be a positive number, but is {show(value)}")
    if b <= 0 or b == 1:
        raise CommandError(28759, f"$log's base must be a positive number not equal to 1, but is {show(base)}")
    if isinstance(value, Decimal128) or isinstance(base, Decimal128):
        return to_decimal128(_DEC_CTX.divide(to_decimal(value).ln(_DEC_CTX), to_decimal(base).ln(_DEC_CTX)))
    return math.log(float(x)) / math.log(float(b))


@_values_op("$pow", low=2, high=2)
def _pow(op: str, values: list, env: Env) -> Any:
    base, exponent = values
    if _nullish(base) or _nullish(exponent):
        return None
    if not is_number(base):
        raise CommandError(28762, f"$pow's base must be numeric, not {type_name(base)}")
    if not is_number(exponent):
        raise CommandError(28763, f"$pow's exponent must be numeric, not {type_name(exponent)}")
    if _is_zero(base) and numeric_value(exponent) < 0:
        raise CommandError(28764, "$pow cannot take a base of 0 and a negative exponent")
    kind = max(numeric_kind(base), numeric_kind(exponent))
    if kind == K_DECIMAL:
        return to_decimal128(_DEC_CTX.power(to_decimal(base), to_decimal(exponent)))
    if kind == K_DOUBLE:
        try:
            return float(numeric_value(base)) ** float(numeric_value(exponent))
        except (OverflowError, ZeroDivisionError):
            return math.inf
    b, e = int(base), int(exponent)
    if e < 0:
        # Only 1 and -1 stay integral under negative exponents.
        if b in (1, -1):
            return make_number(1 if b == 1 or e % 2 == 0 else -1, kind)
        return float(b) ** e
    if e * max(abs(b).bit_length(), 1) > 128:
        # Far beyond int64 the server answers with a double; skip computing a huge exact power.
        try:
            return float(b) ** e
        except OverflowError:
            return -math.inf if b < 0 and e % 2 else math.inf
    return make_number(b**e, kind)


_ROUNDING_MODES = {"$round": decimal.ROUND_HALF_EVEN, "$trunc": decimal.ROUND_DOWN}


@_values_op("$round", "$trunc", low=1, high=2)
def _round(op: str, values: list, env: Env) -> Any:
    value = values[0]
    place = values[1] if len(values) > 1 else 0
    if _nullish(value) or _nullish(place):
        return None
    _require_number(op, value)
    if not is_number(place) or not _is_integral(place):
        raise CommandError(5155301, f"{op} requires \"place\" argument to be an integer between -20 and 100")
    digits = int(numeric_value(place))
    if not -20 <= digits <= 100:
        raise CommandError(5155302, f"cannot apply {op} with precision value {digits} value must be in [-20, 100]")
    kind = numeric_kind(value)
    if kind in (K_INT, K_LONG) and digits >= 0:
        return value
    if kind == K_DOUBLE and not math.isfinite(value):
        return value
    number = value.to_decimal() if kind == K_DECIMAL else decimal.Decimal(repr(value) if kind == K_DOUBLE else int(value))
    if not number.is_finite():
        return value
    quantum = decimal.Decimal(1).scaleb(-digits)
    rounded = number.quantize(quantum, rounding=_ROUNDING_MODES[op], context=decimal.Context(prec=200))
    if kind == K_DECIMAL:
        return to_decimal128(rounded)
    if kind == K_DOUBLE:
        return float(rounded)
    return make_number(int(rounded), kind)


def _is_integral(value: Any) -> bool:
    number = numeric_value(value)
    if isinstance(number, float):
        return math.isfinite(number) and number == int(number)
    if isinstance(number, decimal.Decimal):
        return number.is_finite() and number == number.to_integral_value()
    return True


# Trigonometry: name → (function, text of the domain used in the error message).
_TRIG: dict[str, tuple[Callable[..., float], str]] = {
    "$sin": (math.sin, "(-inf,inf)"), "$cos": (math.cos, "(-inf,inf)"), "$tan": (math.tan, "(-inf,inf)"),
    "$asin": (math.asin, "[-1,1]"), "$acos": (math.acos, "[-1,1]"), "$atan": (math.atan, "[-inf,inf]"),
    "$sinh": (math.sinh, "[-inf,inf]"), "$cosh": (math.cosh, "[-inf,inf]"),
    "$tanh": (math.tanh, "[-inf,inf]"), "$asinh": (math.asinh, "[-inf,inf]"),
    "$acosh": (math.acosh, "[1,inf]"), "$atanh": (math.atanh, "[-1,1]"),
    "$degreesToRadians": (math.radians, "[-inf,inf]"), "$radiansToDegrees": (math.degrees, "[-inf,inf]"),
}


@_values_op(*_TRIG)
def _trig(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    _require_number(op, value, code=28765)
    fn, domain = _TRIG[op]
    x = float(numeric_value(value))
    if math.isnan(x):
        result = x
    else:
        try:
            result = fn(x)
        except ValueError:
            raise CommandError(50989, f"cannot apply {op} to {show(value)}, value must be in {domain}") from None
        except OverflowError:
            result = math.copysign(math.inf, x) if op != "$cosh" else math.inf
    return to_decimal128(to_decimal(result)) if isinstance(value, Decimal128) else result


@_values_op("$atan2", low=2, high=2)
def _atan2(op: str, values: list, env: Env) -> Any:
    y, x = values
    if _nullish(y) or _nullish(x):
        return None
    _require_number(op, y)
    _require_number(op, x)
    result = math.atan2(float(numeric_value(y)), float(numeric_value(x)))
    if isinstance(y, Decimal128) or isinstance(x, Decimal128):
        return to_decimal128(to_decimal(result))
    return result


# --------------------------------------------------------------------------------------------
# Comparison, boolean and conditional operators
# --------------------------------------------------------------------------------------------

_COMPARISONS: dict[str, Callable[[int], Any]] = {
    "$eq": lambda c: c == 0,
    "$ne": lambda c: c != 0,
    "$gt": lambda c: c > 0,
    "$gte": lambda c: c >= 0,
    "$lt": lambda c: c < 0,
    "$lte": lambda c: c <= 0,
    "$cmp": lambda c: c,
}


@_values_op(*_COMPARISONS, low=2, high=2)
def _compare(op: str, values: list, env: Env) -> Any:
    return _COMPARISONS[op](env.compare(values[0], values[1]))


@_parser("$and", "$or")
def _parse_and_or(op: str, spec: Any) -> Compiled:
    args = [compile_expression(arg) for arg in _arg_list(spec)]
    if op == "$and":
        return lambda env: all(truthy(arg(env)) for arg in args)
    return lambda env: any(truthy(arg(env)) for arg in args)


@_values_op("$not")
def _not(op: str, values: list, env: Env) -> bool:
    return not truthy(values[0])


@_parser("$cond")
def _parse_cond(op: str, spec: Any) -> Compiled:
    if isinstance(spec, dict) and not is_operator_object(spec):
        for name in spec:
            if name not in ("if", "then", "else"):
                raise CommandError(17083, f"Unrecognized parameter to $cond: {name}")
        for name, code in (("if", 17080), ("then", 17081), ("else", 17082)):
            if name not in spec:
                raise CommandError(code, f"Missing '{name}' parameter to $cond")
        args = [spec["if"], spec["then"], spec["else"]]
    else:
        args = _arg_list(spec)
        _check_arity(op, len(args), 3, 3)
    condition, then, otherwise = (compile_expression(arg) for arg in args)
    return lambda env: then(env) if truthy(condition(env)) else otherwise(env)


@_parser("$ifNull")
def _parse_if_null(op: str, spec: Any) -> Compiled:
    args = [compile_expression(arg) for arg in _arg_list(spec)]
    _check_arity(op, len(args), 2, None)

    def run(env: Env) -> Any:
        for arg in args[:-1]:
            value = arg(env)
            if not _nullish(value):
                return value
        return args[-1](env)

    return run


@_parser("$switch")
def _parse_switch(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(40060, f"$switch requires an object as an argument, found: {type_name(spec)}")
    branches: list[tuple[Compiled, Compiled]] = []
    default: Compiled | None = None
    for name, value in spec.items():
        if name == "branches":
            if not isinstance(value, list):
                raise CommandError(40061, f"$switch expected an array for 'branches', found: {type_name(value)}")
            for branch in value:
                if not isinstance(branch, dict):
                    raise CommandError(40062, f"$switch expected each branch to be an object, found: {type_name(branch)}")
                for key in branch:
                    if key not in ("case", "then"):
                        raise CommandError(40063, f"$switch found an unknown argument to a branch: {key}")
                if "case" not in branch:
                    raise CommandError(40064, "$switch requires each branch have a 'case' expression")
                if "then" not in branch:
                    raise CommandError(40065, "$switch requires each branch have a 'then' expression.")
                branches.append((compile_expression(branch["case"]), compile_expression(branch["then"])))
        elif name == "default":
            default = compile_expression(value)
        else:
            raise CommandError(40067, f"$switch found an unknown argument: {name}")
    if not branches:
        raise CommandError(40068, "$switch requires at least one branch.")

    def run(env: Env) -> Any:
        for case, then in branches:
            if truthy(case(env)):
                return then(env)
        if default is None:
            raise CommandError(
                40066, "$switch could not find a matching branch for an input, and no default was specified."
            )
        return default(env)

    return run


@_parser("$literal")
def _parse_literal(op: str, spec: Any) -> Compiled:
    return _constant(spec)


@_parser("$let")
def _parse_let(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("vars", "in"), codes=(16874, 16875, 16876))
    if not isinstance(spec["vars"], dict):
        raise CommandError(10065, "invalid parameter: expected an object (vars)")
    bindings = []
    for name, value in spec["vars"].items():
        validate_variable_name(name)
        bindings.append((name, compile_expression(value)))
    body = compile_expression(spec["in"])

    def run(env: Env) -> Any:
        # Every binding is evaluated in the outer scope, as the server does.
        return body(env.bind({name: value(env) for name, value in bindings}))

    return run


# --------------------------------------------------------------------------------------------
# Strings
# --------------------------------------------------------------------------------------------

# The server's $toLower/$toUpper/$strcasecmp only map ASCII letters.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Default $trim characters: the null byte, ASCII whitespace and the Unicode space separators.
_TRIM_DEFAULT = "\0 \t\n\x0b\x0c\r\u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + \
    "\u202f\u205f\u3000"


def coerce_to_string(value: Any) -> str:
    """Value::coerceToString: numbers, dates and timestamps print, null/missing become ""."""
    if _nullish(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise CommandError(16007, "can't convert from BSON type bool to String")
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, (int, Decimal128)):
        return str(value)
    if is_date(value):
        return format_date(value)
    if isinstance(value, Timestamp):
        return f"Timestamp({value.time}, {value.inc})"
    raise CommandError(16007, f"can't convert from BSON type {type_name(value)} to String")


@_values_op("$concat", low=0, high=None)
def _concat(op: str, values: list, env: Env) -> Any:
    parts = []
    for value in values:
        if _nullish(value):
            return None
        if not isinstance(value, str):
            raise CommandError(16702, f"$concat only supports strings, not {type_name(value)}")
        parts.append(value)
    return "".join(parts)


@_values_op("$toLower", "$toUpper")
def _change_case(op: str, values: list, env: Env) -> str:
    text = coerce_to_string(values[0])
    return text.translate(_ASCII_LOWER if op == "$toLower" else _ASCII_UPPER)


@_values_op("$strcasecmp", low=2, high=2)
def _strcasecmp(op: str, values: list, env: Env) -> int:
    a = coerce_to_string(values[0]).translate(_ASCII_UPPER)
    b = coerce_to_string(values[1]).translate(_ASCII_UPPER)
    return (a > b) - (a < b)


def _int_argument(value: Any) -> int:
    """coerceToInt: doubles truncate toward zero."""
    number = numeric_value(value)
    if isinstance(number, (float, decimal.Decimal)):
        if isinstance(number, float) and not math.isfinite(number):
            return 0
        return int(number)
    return number


@_values_op("$substr", "$substrBytes", low=3, high=3)
def _substr_bytes(op: str, values: list, env: Env) -> str:
    text, start, length = values
    data = coerce_to_string(text).encode()
    if not is_number(start):
        raise CommandError(16034, f"{op}:  starting index must be a numeric type (is BSON type {type_name(start)})")
    if not is_number(length):
        raise CommandError(16035, f"{op}:  length must be a numeric type (is BSON type {type_name(length)})")
    begin = _int_argument(start)
    if begin < 0:
        raise CommandError(50752, f"{op}:  starting index must be non-negative (got: {begin})")
    if begin >= len(data):
        return ""
    if begin < len(data) and data[begin] & 0xC0 == 0x80:
        raise CommandError(28656, f"{op}:  Invalid range, starting index is a UTF-8 continuation byte.")
    count = _int_argument(length)
    end = len(data) if count < 0 or begin + count > len(data) else begin + count
    if end < len(data) and data[end] & 0xC0 == 0x80:
        raise CommandError(28657, f"{op}:  Invalid range, ending index is in the middle of a UTF-8 character.")
    return data[begin:end].decode()


@_values_op("$substrCP", low=3, high=3)
def _substr_cp(op: str, values: list, env: Env) -> str:
    text, start, length = values
    string = coerce_to_string(text)
    if not is_number(start):
        raise CommandError(34450, f"{op}: starting index must be a numeric type (is BSON type {type_name(start)})")
    if not _is_integral(start) or not _INT32_MIN <= numeric_value(start) <= _INT32_MAX:
        raise CommandError(34451, f"{op}: starting index cannot be represented as a 32-bit integral value: {show(start)}")
    if not is_number(length):
        raise CommandError(34452, f"{op}: length must be a numeric type (is BSON type {type_name(length)})")
    if not _is_integral(length) or not _INT32_MIN <= numeric_value(length) <= _INT32_MAX:
        raise CommandError(34453, f"{op}: length cannot be represented as a 32-bit integral value: {show(length)}")
    begin, count = int(numeric_value(start)), int(numeric_value(length))
    if begin < 0:
        raise CommandError(34455, f"{op}: the starting index must be nonnegative integer.")
    if count < 0:
        raise CommandError(34454, f"{op}: length must be a nonnegative integer.")
    return string[begin:begin + count]


@_values_op("$strLenBytes", "$strLenCP")
def _str_len(op: str, values: list, env: Env) -> int:
    (value,) = values
    if not isinstance(value, str):
        code = 34473 if op == "$strLenBytes" else 34471
        raise CommandError(code, f"{op} requires a string argument, found: {type_name(value)}")
    return len(value.encode()) if op == "$strLenBytes" else len(value)


@_values_op("$split", low=2, high=2)
def _split(op: str, values: list, env: Env) -> Any:
    text, separator = values
    if _nullish(text) or _nullish(separator):
        return None
    if not isinstance(text, str):
        raise CommandError(
            40085, f"$split requires an expression that evaluates to a string as a first argument, found: {type_name(text)}"
        )
    if not isinstance(separator, str):
        raise CommandError(
            40086,
            f"$split requires an expression that evaluates to a string as a second argument, found: {type_name(separator)}",
        )
    if not separator:
        raise CommandError(40087, "$split requires a non-empty separator")
    return text.split(separator)


_TRIM_METHODS = {"$trim": str.strip, "$ltrim": str.lstrip, "$rtrim": str.rstrip}


@_parser("$trim", "$ltrim", "$rtrim")
def _parse_trim(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(50696, f"{op} only supports an object as an argument, found: {type_name(spec)}")
    for name in spec:
        if name not in ("input", "chars"):
            raise CommandError(50694, f"{op} found an unknown argument: {name}")
    if "input" not in spec:
        raise CommandError(50695, f"{op} requires an 'input' field")
    args = _compile_named(spec, ("input", "chars"))
    method = _TRIM_METHODS[op]

    def run(env: Env) -> Any:
        text = args["input"](env)
        if _nullish(text):
            return None
        if not isinstance(text, str):
            raise CommandError(
                50699, f"{op} requires its input to be a string, got {show(text)} (of type {type_name(text)}) instead."
            )
        chars = _TRIM_DEFAULT
        if "chars" in args:
            chars = args["chars"](env)
            if _nullish(chars):
                return None
            if not isinstance(chars, str):
                raise CommandError(
                    50700,
                    f"{op} requires 'chars' to be a string, got {show(chars)} (of type {type_name(chars)}) instead.",
                )
        return method(text, chars)

    return run


def _index_bound(op: str, value: Any) -> int:
    if not is_number(value) or not _is_integral(value):
        raise CommandError(
            40096,
            f"{op} requires an integral starting index, found a value of type: {type_name(value)}, "
            f"with value: {show(value)}",
        )
    bound = int(numeric_value(value))
    if bound < 0:
        raise CommandError(40097, f"{op} requires a nonnegative start index, found: {bound}")
    return bound


@_values_op("$indexOfBytes", "$indexOfCP", low=2, high=4)
def _index_of_string(op: str, values: list, env: Env) -> Any:
    text, token = values[0], values[1]
    if _nullish(text):
        return None
    if not isinstance(text, str):
        raise CommandError(40091, f"{op} requires a string as the first argument, found: {type_name(text)}")
    if not isinstance(token, str):
        raise CommandError(40092, f"{op} requires a string as the second argument, found: {type_name(token)}")
    haystack: Any = text.encode() if op == "$indexOfBytes" else text
    needle: Any = token.encode() if op == "$indexOfBytes" else token
    start = _index_bound(op, values[2]) if len(values) > 2 else 0
    end = _index_bound(op, values[3]) if len(values) > 3 else len(haystack)
    if start > len(haystack) or start > end:
        return -1
    return haystack.find(needle, start, end)


# Python flags for the regex option letters the server accepts.
_REGEX_OPTION_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}
# Flag bits bson.Regex carries when decoded, mapped back to option letters.
_REGEX_BITS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.UNICODE, "u"), (re.VERBOSE, "x"))
_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")


def regex_options(value: Regex | re.Pattern) -> str:
    flags = value.flags
    if isinstance(flags, str):
        return flags
    return "".join(letter for bit, letter in _REGEX_BITS if flags & bit and letter != "u")


@lru_cache(maxsize=1024)
def compile_regex(pattern: str, options: str) -> re.Pattern:
    """A PCRE pattern as a Python regex (named groups ``(?<n>...)`` become ``(?P<n>...)``)."""
    flags = 0
    for letter in options:
        flags |= _REGEX_OPTION_FLAGS.get(letter, 0)
    return re.compile(_NAMED_GROUP.sub("(?P<", pattern), flags)


_REGEX_OPS = ("$regexMatch", "$regexFind", "$regexFindAll")


def _regex_result(match: re.Match) -> dict:
    return {
        "match": match.group(0),
        "idx": match.start(),
        "captures": list(match.groups()),
    }


@_parser(*_REGEX_OPS)
def _parse_regex(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(51103, f"{op} expects an object of named arguments but found: {type_name(spec)}")
    for name in spec:
        if name not in ("input", "regex", "options"):
            raise CommandError(31024, f"{op} found an unknown argument: {name}")
    if "input" not in spec:
        raise CommandError(31022, f"{op} requires 'input' parameter")
    if "regex" not in spec:
        raise CommandError(31023, f"{op} requires 'regex' parameter")
    args = _compile_named(spec, ("input", "regex", "options"))
    nothing: Any = {"$regexMatch": False, "$regexFind": None, "$regexFindAll": []}[op]

    def run(env: Env) -> Any:
        text = args["input"](env)
        regex = args["regex"](env)
        options = args["options"](env) if "options" in args else MISSING
        if not _nullish(options) and not isinstance(options, str):
            raise CommandError(51106, f"{op} needs 'options' to be of type string")
        if _nullish(regex):
            return nothing
        if isinstance(regex, (Regex, re.Pattern)):
            if not _nullish(options) and regex_options(regex):
                raise CommandError(51075, f"{op}: regex option(s) specified in both 'regex' and 'option' fields")
            pattern, flags = regex.pattern, regex_options(regex)
            if not _nullish(options):
                flags = options
        elif isinstance(regex, str):
            pattern, flags = regex, "" if _nullish(options) else options
        else:
            raise CommandError(51105, f"{op} needs 'regex' to be of type string or regex")
        for letter in flags:
            if letter not in _REGEX_OPTION_FLAGS:
                raise CommandError(51108, f"{op} invalid flag in regex options: {letter}")
        if _nullish(text):
            return nothing
        if not isinstance(text, str):
            raise CommandError(51104, f"{op} needs 'input' to be of type string")
        try:
            compiled = compile_regex(pattern, flags)
        except re.error as exc:
            raise CommandError(51111, f"Invalid Regex in {op}: {exc}") from None
        if op == "$regexMatch":
            return compiled.search(text) is not None
        if op == "$regexFind":
            found = compiled.search(text)
            return None if found is None else _regex_result(found)
        return [_regex_result(found) for found in compiled.finditer(text)]

    return run


@_parser("$replaceOne", "$replaceAll")
def _parse_replace(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("input", "find", "replacement"), codes=(51751, 51750, 51749))
    args = _compile_named(spec, ("input", "find", "replacement"))

    def run(env: Env) -> Any:
        values = {name: fn(env) for name, fn in args.items()}
        for name in ("input", "find", "replacement"):
            value = values[name]
            if not _nullish(value) and not isinstance(value, str):
                raise CommandError(51746, f"{op} requires that '{name}' be a string, found: {show(value)}")
        if any(_nullish(value) for value in values.values()):
            return None
        count = 1 if op == "$replaceOne" else -1
        return values["input"].replace(values["find"], values["replacement"], count)

    return run


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def _int32_argument(value: Any) -> int | None:
    """The value as an int32 if it is a number representable as one, else ``None``."""
    if not is_number(value) or not _is_integral(value):
        return None
    number = int(numeric_value(value))
    return number if _INT32_MIN <= number <= _INT32_MAX else None


@_values_op("$size")
def _size(op: str, values: list, env: Env) -> int:
    (value,) = values
    if not isinstance(value, list):
        raise CommandError(17124, f"The argument to $size must be an array. Type of the argument is: {type_name(value)}")
    return len(value)


@_values_op("$isArray")
def _is_array(op: str, values: list, env: Env) -> bool:
    return isinstance(values[0], list)


@_values_op("$arrayElemAt", low=2, high=2)
def _array_elem_at(op: str, values: list, env: Env) -> Any:
    array, index = values
    if _nullish(array) or _nullish(index):
        return None
    if not isinstance(array, list):
        raise CommandError(28689, f"$arrayElemAt's first argument must be an array, but is {type_name(array)}")
    if not is_number(index):
        raise CommandError(28690, f"$arrayElemAt's second argument must be a numeric value, but is {type_name(index)}")
    position = _int32_argument(index)
    if position is None:
        raise CommandError(28691, f"$arrayElemAt's second argument must be representable as a 32-bit integer: {show(index)}")
    if position < 0:
        position += len(array)
    return array[position] if 0 <= position < len(array) else MISSING


@_values_op("$first", "$last")
def _first_last(op: str, values: list, env: Env) -> Any:
    (array,) = values
    if _nullish(array):
        return None
    if not isinstance(array, list):
        raise CommandError(28689, f"{op}'s argument must be an array, but is {type_name(array)}")
    if not array:
        return MISSING
    return array[0] if op == "$first" else array[-1]


@_values_op("$slice", low=2, high=3)
def _slice(op: str, values: list, env: Env) -> Any:
    if any(_nullish(value) for value in values):
        return None
    array = values[0]
    if not isinstance(array, list):
        raise CommandError(28724, f"First argument to $slice must be an array, but is of type: {type_name(array)}")
    second = values[1]
    if not is_number(second):
        raise CommandError(28725, f"Second argument to $slice must be a numeric value, but is of type: {type_name(second)}")
    first_arg = _int32_argument(second)
    if first_arg is None:
        raise CommandError(28726, f"Second argument to $slice can't be represented as a 32-bit integer: {show(second)}")
    if len(values) == 2:
        return array[:first_arg] if first_arg >= 0 else array[max(len(array) + first_arg, 0):]
    third = values[2]
    if not is_number(third):
        raise CommandError(28727, f"Third argument to $slice must be numeric, but is of type: {type_name(third)}")
    count = _int32_argument(third)
    if count is None:
        raise CommandError(28728, f"Third argument to $slice can't be represented as a 32-bit integer: {show(third)}")
    if count <= 0:
        raise CommandError(28729, f"Third argument to $slice must be positive: {show(third)}")
    start = first_arg if first_arg >= 0 else max(len(array) + first_arg, 0)
    return array[start:start + count]


@_values_op("$concatArrays", low=0, high=None)
def _concat_arrays(op: str, values: list, env: Env) -> Any:
    out: list = []
    for value in values:
        if _nullish(value):
            return None
        if not isinstance(value, list):
            raise CommandError(28664, f"$concatArrays only supports arrays, not {type_name(value)}")
        out.extend(value)
    return out


@_values_op("$in", low=2, high=2)
def _in(op: str, values: list, env: Env) -> bool:
    value, array = values
    if not isinstance(array, list):
        raise CommandError(40081, f"$in requires an array as a second argument, found: {type_name(array)}")
    key = env.key(value)
    return any(env.key(element) == key for element in array)


@_values_op("$indexOfArray", low=2, high=4)
def _index_of_array(op: str, values: list, env: Env) -> Any:
    array, value = values[0], values[1]
    if _nullish(array):
        return None
    if not isinstance(array, list):
        raise CommandError(40090, f"$indexOfArray requires an array as a first argument, found: {type_name(array)}")
    start = _index_bound(op, values[2]) if len(values) > 2 else 0
    end = min(_index_bound(op, values[3]), len(array)) if len(values) > 3 else len(array)
    key = env.key(value)
    for position in range(start, end):
        if env.key(array[position]) == key:
            return position
    return -1


@_values_op("$reverseArray")
def _reverse_array(op: str, values: list, env: Env) -> Any:
    (array,) = values
    if _nullish(array):
        return None
    if not isinstance(array, list):
        raise CommandError(34435, f"The argument to $reverseArray must be an array, but was of type: {type_name(array)}")
    return array[::-1]


_RANGE_NAMES = (("starting value", 34443, 34444), ("ending value", 34445, 34446), ("step value", 34447, 34448))


@_values_op("$range", low=2, high=3)
def _range(op: str, values: list, env: Env) -> list:
    bounds = []
    for value, (label, type_code, int_code) in zip(values, _RANGE_NAMES):
        if not is_number(value):
            raise CommandError(type_code, f"$range requires a numeric {label}, found value of type: {type_name(value)}")
        number = _int32_argument(value)
        if number is None:
            raise CommandError(int_code, f"$range requires a {label} that can be represented as a 32-bit integer, "
                                         f"found value: {show(value)}")
        bounds.append(number)
    step = bounds[2] if len(bounds) > 2 else 1
    if step == 0:
        raise CommandError(34449, "$range requires a non-zero step value")
    return list(range(bounds[0], bounds[1], step))


@_values_op("$allElementsTrue", "$anyElementTrue")
def _all_any(op: str, values: list, env: Env) -> bool:
    (array,) = values
    if not isinstance(array, list):
        raise CommandError(17040, f"{op}'s argument must be an array, but is {type_name(array)}")
    check = all if op == "$allElementsTrue" else any
    return check(truthy(element) for element in array)


def _distinct(values: Iterable[Any], env: Env) -> dict[tuple, Any]:
    """First occurrence of each distinct value, keyed by its comparison key."""
    seen: dict[tuple, Any] = {}
    for value in values:
        seen.setdefault(env.key(value), value)
    return seen


@_values_op("$setUnion", low=0, high=None)
def _set_union(op: str, values: list, env: Env) -> Any:
    for value in values:
        if _nullish(value):
            return None
        if not isinstance(value, list):
            raise CommandError(17043, f"All operands of $setUnion must be arrays. One argument is of type: {type_name(value)}")
    return list(_distinct((element for array in values for element in array), env).values())


@_values_op("$setIntersection", low=0, high=None)
def _set_intersection(op: str, values: list, env: Env) -> Any:
    for value in values:
        if _nullish(value):
            return None
        if not isinstance(value, list):
            raise CommandError(
                17047, f"All operands of $setIntersection must be arrays. One argument is of type: {type_name(value)}"
            )
    if not values:
        return []
    result = _distinct(values[0], env)
    for array in values[1:]:
        keys = {env.key(element) for element in array}
        result = {key: value for key, value in result.items() if key in keys}
    return list(result.values())


@_values_op("$setDifference", low=2, high=2)
def _set_difference(op: str, values: list, env: Env) -> Any:
    first, second = values
    if _nullish(first) or _nullish(second):
        return None
    if not isinstance(first, list):
        raise CommandError(17048, f"both operands of $setDifference must be arrays. First argument is of type: {type_name(first)}")
    if not isinstance(second, list):
        raise CommandError(17049, f"both operands of $setDifference must be arrays. Second argument is of type: {type_name(second)}")
    excluded = {env.key(element) for element in second}
    return [value for key, value in _distinct(first, env).items() if key not in excluded]


@_values_op("$setEquals", low=2, high=None)
def _set_equals(op: str, values: list, env: Env) -> bool:
    sets = []
    for value in values:
        if not isinstance(value, list):
            raise CommandError(17044, f"All operands of $setEquals must be arrays. One argument is of type: {type_name(value)}")
        sets.append({env.key(element) for element in value})
    return all(other == sets[0] for other in sets[1:])


@_values_op("$setIsSubset", low=2, high=2)
def _set_is_subset(op: str, values: list, env: Env) -> bool:
    first, second = values
    if not isinstance(first, list):
        raise CommandError(17046, f"both operands of $setIsSubset must be arrays. First argument is of type: {type_name(first)}")
    if not isinstance(second, list):
        raise CommandError(17042, f"both operands of $setIsSubset must be arrays. Second argument is of type: {type_name(second)}")
    return {env.key(element) for element in first} <= {env.key(element) for element in second}


def _as_name(op: str, spec: dict, default: str = "this") -> str:
    name = spec.get("as", default)
    if not isinstance(name, str):
        raise CommandError(16866, f"{op} 'as' must be a string")
    validate_variable_name(name)
    return name


@_parser("$filter")
def _parse_filter(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("input", "cond"), ("as", "limit"), codes=(28646, 28647, 28648))
    name = _as_name(op, spec)
    args = _compile_named(spec, ("input", "cond", "limit"))

    def run(env: Env) -> Any:
        array = args["input"](env)
        if _nullish(array):
            return None
        if not isinstance(array, list):
            raise CommandError(28651, f"input to $filter must be an array not {type_name(array)}")
        limit = None
        if "limit" in args:
            raw = args["limit"](env)
            if not _nullish(raw):
                limit = _int32_argument(raw)
                if limit is None:
                    raise CommandError(327391, f"$filter: limit must be represented as a 32-bit integral value: {show(raw)}")
                if limit < 1:
                    raise CommandError(327392, f"$filter: limit must be greater than 0: {limit}")
        out = []
        for element in array:
            if truthy(args["cond"](env.bind({name: element}))):
                out.append(element)
                if limit is not None and len(out) >= limit:
                    break
        return out

    return run


@_parser("$map")
def _parse_map(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("input", "in"), ("as",), codes=(16878, 16879, 16880))
    name = _as_name(op, spec)
    source = compile_expression(spec["input"])
    body = compile_expression(spec["in"])

    def run(env: Env) -> Any:
        array = source(env)
        if _nullish(array):
            return None
        if not isinstance(array, list):
            raise CommandError(16883, f"input to $map must be an array not {type_name(array)}")
        out = []
        for element in array:
            value = body(env.bind({name: element}))
            out.append(None if value is MISSING else value)
        return out

    return run


@_parser("$reduce")
def _parse_reduce(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(40075, f"$reduce only supports an object as its argument, found: {type_name(spec)}")
    for name in spec:
        if name not in ("input", "initialValue", "in"):
            raise CommandError(40076, f"$reduce found an unknown argument: {name}")
    for name, code in (("input", 40077), ("initialValue", 40078), ("in", 40079)):
        if name not in spec:
            raise CommandError(code, f"$reduce requires '{name}' to be specified")
    args = _compile_named(spec, ("input", "initialValue", "in"))

    def run(env: Env) -> Any:
        array = args["input"](env)
        if _nullish(array):
            return None
        if not isinstance(array, list):
            raise CommandError(40080, f"$reduce requires that 'input' be an array, found: {show(array)}")
        accumulated = args["initialValue"](env)
        for element in array:
            accumulated = args["in"](env.bind({"value": accumulated, "this": element}))
        return accumulated

    return run


@_parser("$zip")
def _parse_zip(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(34460, f"$zip only supports an object as an argument, found {type_name(spec)}")
    for name in spec:
        if name not in ("inputs", "useLongestLength", "defaults"):
            raise CommandError(34464, f"$zip found an unknown argument: {name}")
    if "inputs" not in spec:
        raise CommandError(34465, "$zip requires at least one input array")
    if not isinstance(spec["inputs"], list):
        raise CommandError(34461, f"inputs must be an array of expressions, found {type_name(spec['inputs'])}")
    longest = spec.get("useLongestLength", False)
    if not isinstance(longest, bool):
        raise CommandError(34463, f"useLongestLength must be a bool, found {type_name(longest)}")
    if "defaults" in spec:
        if not isinstance(spec["defaults"], list):
            raise CommandError(34462, f"defaults must be an array of expressions, found {type_name(spec['defaults'])}")
        if not longest:
            raise CommandError(34466, "cannot specify defaults unless useLongestLength is true")
        if len(spec["defaults"]) != len(spec["inputs"]):
            raise CommandError(34467, "defaults and inputs must be the same length")
    inputs = [compile_expression(item) for item in spec["inputs"]]
    defaults = [compile_expression(item) for item in spec.get("defaults", [])]

    def run(env: Env) -> Any:
        arrays = []
        for fn in inputs:
            array = fn(env)
            if _nullish(array):
                return None
            if not isinstance(array, list):
                raise CommandError(34468, f"$zip found a non-array expression in input: {show(array)}")
            arrays.append(array)
        if not arrays:
            return []
        fills = [fn(env) for fn in defaults] or [None] * len(arrays)
        length = max(map(len, arrays)) if longest else min(map(len, arrays))
        return [
            [array[i] if i < len(array) else fills[j] for j, array in enumerate(arrays)]
            for i in range(length)
        ]

    return run


@_parser("$sortArray")
def _parse_sort_array(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(2942500, f"$sortArray requires an object as an argument, found: {type_name(spec)}")
    for name in spec:
        if name not in ("input", "sortBy"):
            raise CommandError(2942501, f"$sortArray found an unknown argument: {name}")
    if "input" not in spec:
        raise CommandError(2942502, "$sortArray requires 'input' to be specified")
    if "sortBy" not in spec:
        raise CommandError(2942503, "$sortArray requires 'sortBy' to be specified")
    sort_by = spec["sortBy"]
    if not (isinstance(sort_by, dict) and sort_by) and sort_by not in (1, -1):
        raise CommandError(2942505, "$sortArray requires 'sortBy' to be 1, -1 or a sort specification object")
    source = compile_expression(spec["input"])

    def run(env: Env) -> Any:
        array = source(env)
        if _nullish(array):
            return None
        if not isinstance(array, list):
            raise CommandError(2942504, f"The input argument to $sortArray must be an array, but was of type: {type_name(array)}")
        if isinstance(sort_by, dict):
            from mongoemu.query.sorting import make_sort_key

            doc_key = make_sort_key(sort_by, env.collation)
            return sorted(array, key=lambda element: doc_key(element if isinstance(element, dict) else {}))
        return sorted(array, key=env.key, reverse=sort_by == -1)

    return run


@_values_op("$arrayToObject")
def _array_to_object(op: str, values: list, env: Env) -> Any:
    (array,) = values
    if _nullish(array):
        return None
    if not isinstance(array, list):
        raise CommandError(40386, f"$arrayToObject requires an array input, found: {type_name(array)}")
    out: dict = {}
    for element in array:
        if isinstance(element, list):
            if len(element) != 2:
                raise CommandError(40397, f"$arrayToObject requires an array of size 2 arrays,found array of size: {len(element)}")
            key, value = element
        elif isinstance(element, dict):
            if set(element) != {"k", "v"} or len(element) != 2:
                raise CommandError(
                    40392, "$arrayToObject requires an object keys of 'k' and 'v'. "
                           f"Found incorrect number of keys:{len(element)}"
                )
            key, value = element["k"], element["v"]
        else:
            raise CommandError(
                40398, f"Unrecognised input type format for $arrayToObject: {type_name(element)}"
            )
        if not isinstance(key, str):
            raise CommandError(40395, f"$arrayToObject requires an array of key-value pairs, where the key must be "
                                      f"of type string. Found key type: {type_name(key)}")
        if "\0" in key:
            raise CommandError(4940400, "Key field cannot contain an embedded null byte")
        out[key] = value
    return out


@_values_op("$objectToArray")
def _object_to_array(op: str, values: list, env: Env) -> Any:
    (document,) = values
    if _nullish(document):
        return None
    if not isinstance(document, dict):
        raise CommandError(40390, f"$objectToArray requires a document input, found: {type_name(document)}")
    return [{"k": key, "v": value} for key, value in document.items()]


def n_argument(value: Any) -> int:
    """The 'n' of $firstN/$maxN/$topN...: a positive integral number."""
    if not is_number(value) or not _is_integral(value):
        raise CommandError(5787902, f"Value for 'n' must be of integral type, but found {show(value)}")
    count = int(numeric_value(value))
    if count <= 0:
        raise CommandError(5787908, f"'n' must be greater than 0, found {count}")
    return count


@_parser("$maxN", "$minN", "$firstN", "$lastN")
def _parse_n_array(op: str, spec: Any) -> Compiled:
    if not isinstance(spec, dict):
        raise CommandError(5787801, f"specification must be an object; found {show(spec)}")
    for name in spec:
        if name not in ("n", "input"):
            raise CommandError(5787901, f"Unknown argument for 'n' operator: {name}")
    if "n" not in spec:
        raise CommandError(5787906, "Missing value for 'n'")
    if "input" not in spec:
        raise CommandError(5787907, "Missing value for 'input'")
    count_fn = compile_expression(spec["n"])
    source = compile_expression(spec["input"])

    def run(env: Env) -> Any:
        count = n_argument(count_fn(env))
        array = source(env)
        if _nullish(array):
            return None
        if not isinstance(array, list):
            raise CommandError(5788200, "Input must be an array")
        if op == "$firstN":
            return array[:count]
        if op == "$lastN":
            return array[-count:]
        present = [value for value in array if not _nullish(value)]
        return sorted(present, key=env.key, reverse=op == "$maxN")[:count]

    return run


# --------------------------------------------------------------------------------------------
# $sum/$avg/$min/$max/$stdDev* in expression form
# --------------------------------------------------------------------------------------------


def _operands(values: list) -> list:
    """A single array argument means "over its elements"; several arguments are the operands."""
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    return values


def sum_of(values: Iterable[Any]) -> Any:
    acc = NumericSum()
    for value in values:
        if is_number(value):
            acc.add(value)
    return acc.result()


def average_of(values: Iterable[Any]) -> Any:
    acc = NumericSum()
    for value in values:
        if is_number(value):
            acc.add(value)
    return acc.average()


def std_dev_of(values: Iterable[Any], sample: bool) -> Any:
    numbers = [float(numeric_value(value)) for value in values if is_number(value)]
    count = len(numbers)
    if count == 0 or (sample and count < 2):
        return None
    mean = math.fsum(numbers) / count
    variance = math.fsum((x - mean) ** 2 for x in numbers) / (count - 1 if sample else count)
    return math.sqrt(variance)


def extreme_of(values: Iterable[Any], env: Env, largest: bool) -> Any:
    best = MISSING
    best_key = None
    for value in values:
        if _nullish(value):
            continue
        key = env.key(value)
        if best_key is None or (key > best_key if largest else key < best_key):
            best, best_key = value, key
    return None if best is MISSING else best


_AGGREGATES: dict[str, Callable[[list, Env], Any]] = {
    "$sum": lambda values, env: sum_of(values),
    "$avg": lambda values, env: average_of(values),
    "$min": lambda values, env: extreme_of(values, env, largest=False),
    "$max": lambda values, env: extreme_of(values, env, largest=True),
    "$stdDevPop": lambda values, env: std_dev_of(values, sample=False),
    "$stdDevSamp": lambda values, env: std_dev_of(values, sample=True),
}


@_values_op(*_AGGREGATES, low=0, high=None)
def _aggregate_expression(op: str, values: list, env: Env) -> Any:
    return _AGGREGATES[op](_operands(values), env)


# --------------------------------------------------------------------------------------------
# Types and conversion
# --------------------------------------------------------------------------------------------


@_values_op("$type")
def _type(op: str, values: list, env: Env) -> str:
    return type_name(values[0])


@_values_op("$isNumber")
def _is_number(op: str, values: list, env: Env) -> bool:
    return is_number(values[0])


class _Unconvertible(Exception):
    """A failed conversion; becomes ``onError`` or a ConversionFailure (241) error."""

    def __init__(self, head: str, reason: str | None = None) -> None:
        super().__init__(head)
        self.head = head
        self.reason = reason

    def message(self) -> str:
        text = f"{self.head} in $convert with no onError value"
        return f"{text}: {self.reason}" if self.reason else text


_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def _parse_number_text(text: str, integer: bool) -> Any:
    pattern = _INTEGER_TEXT if integer else _FLOAT_TEXT
    if not text:
        raise _Unconvertible(f"Failed to parse number '{text}'", "No digits")
    if not pattern.fullmatch(text):
        raise _Unconvertible(f"Failed to parse number '{text}'", "Did not consume whole string.")
    return int(text) if integer else text


def _unsupported(value: Any, target: str) -> _Unconvertible:
    return _Unconvertible(f"Unsupported conversion from {type_name(value)} to {target}")


def _to_integer(value: Any, target: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        number = _parse_number_text(value, integer=True)
        if not low <= number <= high:
            raise _Unconvertible(f"Failed to parse number '{value}'", "Overflow")
        return number
    if is_date(value) and target == "long":
        return datetime_to_millis(value)
    if not is_number(value):
        raise _unsupported(value, target)
    number = numeric_value(value)
    if isinstance(number, (float, decimal.Decimal)):
        if number != number:
            raise _Unconvertible("Attempt to convert NaN value to integer type")
        if number in (math.inf, -math.inf) or (isinstance(number, decimal.Decimal) and number.is_infinite()):
            raise _Unconvertible("Attempt to convert infinity value to integer type")
        number = int(number)
    if not low <= number <= high:
        raise _Unconvertible("Conversion would overflow target type")
    return number


def _convert_int(value: Any) -> int:
    return _to_integer(value, "int", _INT32_MIN, _INT32_MAX)


def _convert_long(value: Any) -> Int64:
    return Int64(_to_integer(value, "long", _INT64_MIN, _INT64_MAX))


def _convert_double(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return float(_parse_number_text(value, integer=False))
    if is_date(value):
        return float(datetime_to_millis(value))
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        result = float(number)
        if number.is_finite() and math.isinf(result):
            raise _Unconvertible("Conversion would overflow target type")
        return result
    if is_number(value):
        return float(value)
    raise _unsupported(value, "double")


def _convert_decimal(value: Any) -> Decimal128:
    if isinstance(value, bool):
        return Decimal128(str(int(value)))
    if isinstance(value, str):
        return to_decimal128(decimal.Decimal(_parse_number_text(value, integer=False)))
    if is_date(value):
        return Decimal128(str(datetime_to_millis(value)))
    if isinstance(value, Decimal128):
        return value
    if is_number(value):
        return to_decimal128(to_decimal(value))
    raise _unsupported(value, "decimal")


def _convert_bool(value: Any) -> bool:
    return truthy(value)


def to_string_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, (int, Decimal128)):
        return str(value)
    if isinstance(value, ObjectId):
        return str(value)
    if is_date(value):
        return format_date(value)
    raise _unsupported(value, "string")


def _convert_object_id(value: Any) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str):
        raise _unsupported(value, "objectId")
    if len(value) != 24:
        raise _Unconvertible(
            f"Failed to parse objectId '{value}'",
            f"Invalid string length for parsing to OID, expected 24 but found {len(value)}",
        )
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise _Unconvertible(f"Failed to parse objectId '{value}'", "Invalid character found in hex string") from None


def _convert_date(value: Any) -> Any:
    if is_date(value):
        return value
    if isinstance(value, ObjectId):
        return value.generation_time
    if isinstance(value, Timestamp):
        return date_from_millis(value.time * 1000)
    if isinstance(value, str):
        try:
            return parse_date_string(value, None, None)
        except CommandError as exc:
            raise _Unconvertible(exc.errmsg) from None
    if is_number(value) and numeric_kind(value) != K_INT:
        number = numeric_value(value)
        if isinstance(number, (float, decimal.Decimal)) and number != number:
            raise _Unconvertible("Attempt to convert NaN value to date type")
        try:
            return date_from_millis(int(number))
        except OverflowError:
            raise _Unconvertible("Conversion would overflow target type") from None
    raise _unsupported(value, "date")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "double": _convert_double,
    "string": to_string_value,
    "objectId": _convert_object_id,
    "bool": _convert_bool,
    "date": _convert_date,
    "int": _convert_int,
    "long": _convert_long,
    "decimal": _convert_decimal,
}
_TYPE_BY_NUMBER = {number: name for name, number in TYPE_NUMBERS.items()}


def _target_type(target: Any) -> str:
    if isinstance(target, str):
        if target not in TYPE_NUMBERS:
            raise CommandError(2, f"Unknown type name: {target}")
        return target
    if is_number(target):
        if not _is_integral(target) or int(numeric_value(target)) not in _TYPE_BY_NUMBER:
            raise CommandError(
                2, f"In $convert, numeric value for 'to' does not correspond to a BSON type: {show(target)}"
            )
        return _TYPE_BY_NUMBER[int(numeric_value(target))]
    raise CommandError(
        50788, f"$convert's 'to' argument must be a string or number, but is {type_name(target)}"
    )


def convert_value(value: Any, target: str) -> Any:
    """Convert like ``$convert`` without onError/onNull; raises ConversionFailure (241)."""
    converter = _CONVERTERS.get(target)
    try:
        if converter is None:
            raise _unsupported(value, target)
        return converter(value)
    except _Unconvertible as exc:
        raise _conversion_failure(exc.message()) from None


@_parser("$convert")
def _parse_convert(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("input", "to"), ("onError", "onNull", "format", "base", "byteOrder"))
    args = _compile_named(spec, ("input", "to", "onError", "onNull"))

    def run(env: Env) -> Any:
        value = args["input"](env)
        target_value = args["to"](env)
        if _nullish(target_value):
            return None
        target = _target_type(target_value)
        if _nullish(value):
            return args["onNull"](env) if "onNull" in args else None
        converter = _CONVERTERS.get(target)
        try:
            if converter is None:
                raise _unsupported(value, target)
            return converter(value)
        except _Unconvertible as exc:
            if "onError" in args:
                return args["onError"](env)
            raise _conversion_failure(exc.message()) from None

    return run


_SHORTCUTS = {
    "$toString": "string", "$toInt": "int", "$toLong": "long", "$toDouble": "double",
    "$toDecimal": "decimal", "$toBool": "bool", "$toObjectId": "objectId", "$toDate": "date",
}


@_values_op(*_SHORTCUTS)
def _convert_shortcut(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    return convert_value(value, _SHORTCUTS[op])


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------


@_values_op("$mergeObjects", low=0, high=None)
def _merge_objects(op: str, values: list, env: Env) -> dict:
    out: dict = {}
    for value in values:
        merge_object_into(out, value)
    return out


def merge_object_into(target: dict, value: Any) -> None:
    """One $mergeObjects step (shared with the accumulator): null/missing are skipped."""
    if _nullish(value):
        return
    if not isinstance(value, dict):
        raise CommandError(
            40400, f"$mergeObjects requires object inputs, but input {show(value)} is of type {type_name(value)}"
        )
    for key, item in value.items():
        if item is not MISSING:
            target[key] = item


def _field_argument(op: str, spec: Any) -> Compiled:
    """'field' of $getField/$setField/$unsetField: must produce a string."""
    if isinstance(spec, str) and spec.startswith("$"):
        raise CommandError(5654602, f"{op} requires 'field' to evaluate to a constant, but got a non-constant argument")
    fn = compile_expression(spec)

    def run(env: Env) -> str:
        name = fn(env)
        if not isinstance(name, str):
            raise CommandError(5654601, f"{op} requires 'field' to evaluate to type String, but got {type_name(name)}")
        return name

    return run


@_parser("$getField")
def _parse_get_field(op: str, spec: Any) -> Compiled:
    if isinstance(spec, dict) and not is_operator_object(spec):
        _named_args(op, spec, ("field",), ("input",), codes=(3041701, 3041701, 3041702))
        field = _field_argument(op, spec["field"])
        source = compile_expression(spec.get("input", "$$CURRENT"))
    else:
        field = _field_argument(op, spec)
        source = compile_expression("$$CURRENT")

    def run(env: Env) -> Any:
        name = field(env)
        document = source(env)
        if _nullish(document):
            return None
        if not isinstance(document, dict):
            raise CommandError(3041705, f"$getField requires 'input' to evaluate to type Object, but got {type_name(document)}")
        return document.get(name, MISSING)

    return run


@_parser("$setField", "$unsetField")
def _parse_set_field(op: str, spec: Any) -> Compiled:
    required = ("field", "input", "value") if op == "$setField" else ("field", "input")
    _named_args(op, spec, required, codes=(4161100, 4161101, 4161102))
    field = _field_argument(op, spec["field"])
    source = compile_expression(spec["input"])
    value_fn = compile_expression(spec["value"]) if op == "$setField" else (lambda env: MISSING)

    def run(env: Env) -> Any:
        name = field(env)
        document = source(env)
        if _nullish(document):
            return None
        if not isinstance(document, dict):
            raise CommandError(4161105, f"{op} requires 'input' to evaluate to type Object, but got {type_name(document)}")
        out = dict(document)
        value = value_fn(env)
        if value is MISSING:
            out.pop(name, None)
        else:
            out[name] = value
        return out

    return run


# --------------------------------------------------------------------------------------------
# Miscellaneous
# --------------------------------------------------------------------------------------------


@_parser("$rand")
def _parse_rand(op: str, spec: Any) -> Compiled:
    if spec != {} and spec != []:
        raise CommandError(3040500, "$rand does not currently accept arguments")
    return lambda env: random.random()


@_values_op("$bsonSize")
def _bson_size(op: str, values: list, env: Env) -> Any:
    (document,) = values
    if _nullish(document):
        return None
    if not isinstance(document, dict):
        raise CommandError(31393, f"$bsonSize requires a document input, found: {type_name(document)}")
    return len(bson.encode(document, codec_options=CODEC))


@_values_op("$binarySize")
def _binary_size(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, Binary)):
        return len(value)
    raise CommandError(51276, f"$binarySize requires a string or BinData argument, found: {type_name(value)}")


@_values_op("$tsSecond", "$tsIncrement")
def _timestamp_part(op: str, values: list, env: Env) -> Any:
    (value,) = values
    if _nullish(value):
        return None
    if not isinstance(value, Timestamp):
        raise CommandError(5687301, f"Argument to {op} must be a timestamp, but is {type_name(value)}")
    return Int64(value.time if op == "$tsSecond" else value.inc)


def _hash_canonical(value: Any) -> Any:
    """Equal values (1, 1.0, Int64(1), Decimal128("1")) map to one canonical, repr-stable form."""
    if is_number(value):
        number = numeric_value(value)
        if number != number:
            return ("nan",)
        return ("number", str(decimal.Decimal(number).normalize(_WIDE_CTX)))
    if isinstance(value, dict):
        return ("object", tuple((key, _hash_canonical(item)) for key, item in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_hash_canonical(item) for item in value))
    if value is None or value is MISSING:
        return ("null",)
    return (type_name(value), bson.encode({"v": value}, codec_options=CODEC))


def hashed_index_key(value: Any) -> Int64:
    """The emulator's stand-in for the server's hashed index key (``$toHashedIndexKey``).

    The server hashes the BSON element with MD5 and keeps 8 bytes; reproducing its exact
    canonicalisation is not needed by clients, so this takes the first 8 bytes (little endian,
    signed) of MD5 over a canonical rendering in which numerically equal values coincide. It is
    stable across runs and processes, which is all sharding-style bucketing relies on.
    """
    digest = hashlib.md5(repr(_hash_canonical(value)).encode()).digest()
    return Int64(int.from_bytes(digest[:8], "little", signed=True))


@_values_op("$toHashedIndexKey")
def _to_hashed_index_key(op: str, values: list, env: Env) -> Int64:
    return hashed_index_key(values[0])


_META_NAMES = frozenset({"textScore", "searchScore", "searchHighlights", "indexKey", "recordId",
                         "sortKey", "randVal", "geoNearDistance", "geoNearPoint", "searchScoreDetails",
                         "vectorSearchScore", "score", "scoreDetails"})


@_parser("$meta")
def _parse_meta(op: str, spec: Any) -> Compiled:
    if spec not in _META_NAMES:
        raise CommandError(17308, f"Unsupported argument to $meta: {spec}")
    if spec == "randVal":
        return lambda env: random.random()
    # No text or search scoring exists in the emulator, so every other metadata field is absent.
    return lambda env: MISSING


@_parser("$function", "$accumulator", "$where")
def _parse_unsupported(op: str, spec: Any) -> Compiled:
    raise CommandError(115, f"{op} is not supported by the emulator (no JavaScript engine)")


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------

_OFFSET_TZ = re.compile(r"([+-])(\d{2})(?::?(\d{2}))?")
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@lru_cache(maxsize=512)
def parse_timezone(name: str) -> datetime.tzinfo:
    """An Olson identifier or a UTC offset (``+hh``, ``+hhmm``, ``+hh:mm``)."""
    if name in ("UTC", "GMT", "Z"):
        return _UTC
    offset = _OFFSET_TZ.fullmatch(name)
    if offset:
        sign = -1 if offset.group(1) == "-" else 1
        minutes = int(offset.group(2)) * 60 + int(offset.group(3) or 0)
        return datetime.timezone(sign * datetime.timedelta(minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise CommandError(40485, f'unrecognized time zone identifier: "{name}"') from None


def _timezone_value(value: Any) -> datetime.tzinfo:
    if not isinstance(value, str):
        raise CommandError(40517, f"timezone must evaluate to a string, found {type_name(value)}")
    return parse_timezone(value)


def date_millis(value: Any) -> int:
    """A date-like operand (date, Timestamp, ObjectId) as milliseconds since the epoch."""
    if is_date(value):
        return datetime_to_millis(value)
    if isinstance(value, Timestamp):
        return value.time * 1000
    if isinstance(value, ObjectId):
        return datetime_to_millis(value.generation_time)
    raise CommandError(16006, f"can't convert from BSON type {type_name(value)} to Date")


def _local(millis: int, tz: datetime.tzinfo) -> datetime.datetime:
    try:
        return (_EPOCH + datetime.timedelta(milliseconds=millis)).astimezone(tz)
    except OverflowError:
        raise CommandError(
            18537, f"Could not convert date to string: date component was outside the supported range of 0-9999: {millis}"
        ) from None


def _from_local(naive: datetime.datetime, tz: datetime.tzinfo) -> int:
    """Milliseconds of a wall-clock time in ``tz``."""
    return datetime_to_millis(naive.replace(tzinfo=tz).astimezone(_UTC))


def _week_of_year(moment: datetime.datetime) -> int:
    # strftime's %U (weeks start on Sunday, days before the first Sunday are week 0), computed
    # directly because strftime is platform-dependent for years below 1000.
    return (moment.timetuple().tm_yday - 1 + 7 - moment.isoweekday() % 7) // 7


_DATE_PARTS: dict[str, Callable[[datetime.datetime], int]] = {
    "$year": lambda d: d.year,
    "$month": lambda d: d.month,
    "$dayOfMonth": lambda d: d.day,
    "$hour": lambda d: d.hour,
    "$minute": lambda d: d.minute,
    "$second": lambda d: d.second,
    "$millisecond": lambda d: d.microsecond // 1000,
    "$dayOfWeek": lambda d: d.isoweekday() % 7 + 1,
    "$dayOfYear": lambda d: d.timetuple().tm_yday,
    "$week": _week_of_year,
    "$isoWeek": lambda d: d.isocalendar()[1],
    "$isoWeekYear": lambda d: d.isocalendar()[0],
    "$isoDayOfWeek": lambda d: d.isoweekday(),
}


def _date_and_timezone(op: str, spec: Any) -> tuple[Compiled, Compiled | None]:
    if isinstance(spec, dict) and not is_operator_object(spec) and spec:
        _named_args(op, spec, ("date",), ("timezone",), codes=(40536, 40535, 40539))
        tz = compile_expression(spec["timezone"]) if "timezone" in spec else None
        return compile_expression(spec["date"]), tz
    args = _arg_list(spec)
    _check_arity(op, len(args), 1, 1)
    return compile_expression(args[0]), None


def _resolve_tz(tz_fn: Compiled | None, env: Env) -> datetime.tzinfo | None:
    """The timezone argument, or None when it evaluates to null (the result is then null)."""
    if tz_fn is None:
        return _UTC
    value = tz_fn(env)
    if _nullish(value):
        return None
    return _timezone_value(value)


@_parser(*_DATE_PARTS)
def _parse_date_part(op: str, spec: Any) -> Compiled:
    date_fn, tz_fn = _date_and_timezone(op, spec)
    extract = _DATE_PARTS[op]

    def run(env: Env) -> Any:
        value = date_fn(env)
        tz = _resolve_tz(tz_fn, env)
        if _nullish(value) or tz is None:
            return None
        return extract(_local(date_millis(value), tz))

    return run


def _utc_offset_minutes(moment: datetime.datetime) -> int:
    offset = moment.utcoffset() or datetime.timedelta(0)
    return int(offset.total_seconds() // 60)


def _offset_text(moment: datetime.datetime) -> str:
    minutes = _utc_offset_minutes(moment)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


_DATE_FORMATTERS: dict[str, Callable[[datetime.datetime], str]] = {
    "d": lambda d: f"{d.day:02d}",
    "G": lambda d: f"{d.isocalendar()[0]:04d}",
    "H": lambda d: f"{d.hour:02d}",
    "j": lambda d: f"{d.timetuple().tm_yday:03d}",
    "L": lambda d: f"{d.microsecond // 1000:03d}",
    "m": lambda d: f"{d.month:02d}",
    "M": lambda d: f"{d.minute:02d}",
    "S": lambda d: f"{d.second:02d}",
    "w": lambda d: str(d.isoweekday() % 7 + 1),
    "u": lambda d: str(d.isoweekday()),
    "U": lambda d: f"{_week_of_year(d):02d}",
    "V": lambda d: f"{d.isocalendar()[1]:02d}",
    "Y": lambda d: f"{d.year:04d}",
    "z": _offset_text,
    "Z": lambda d: f"{'-' if _utc_offset_minutes(d) < 0 else '+'}{abs(_utc_offset_minutes(d))}",
    "b": lambda d: _MONTH_NAMES[d.month - 1][:3],
    "B": lambda d: _MONTH_NAMES[d.month - 1],
    "%": lambda d: "%",
}
_DEFAULT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%LZ"
# With an explicit timezone the default format drops the "Z", which would be a lie.
_DEFAULT_LOCAL_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%L"


def _check_date_format(text: str, known: Iterable[str]) -> None:
    allowed = set(known)
    i = 0
    while i < len(text):
        if text[i] == "%":
            if i + 1 >= len(text):
                raise CommandError(18535, "Unmatched '%' at end of format string")
            if text[i + 1] not in allowed:
                raise CommandError(18536, f"Invalid format character '%{text[i + 1]}' in format string")
            i += 2
        else:
            i += 1


def format_date_with(moment: datetime.datetime, text: str) -> str:
    _check_date_format(text, _DATE_FORMATTERS)
    out = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            out.append(_DATE_FORMATTERS[text[i + 1]](moment))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@_parser("$dateToString")
def _parse_date_to_string(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("date",), ("format", "timezone", "onNull"), codes=(18629, 18534, 18628))
    if isinstance(spec.get("format"), str):
        _check_date_format(spec["format"], _DATE_FORMATTERS)
    args = _compile_named(spec, ("date", "format", "timezone", "onNull"))

    def run(env: Env) -> Any:
        value = args["date"](env)
        fmt = args["format"](env) if "format" in args else (
            _DEFAULT_LOCAL_DATE_FORMAT if "timezone" in args else _DEFAULT_DATE_FORMAT
        )
        tz = _resolve_tz(args.get("timezone"), env)
        if _nullish(fmt) or tz is None:
            return None
        if not isinstance(fmt, str):
            raise CommandError(18533, f"$dateToString requires that 'format' be a string, found: {type_name(fmt)} "
                                      f"with value {show(fmt)}")
        if _nullish(value):
            return args["onNull"](env) if "onNull" in args else None
        return format_date_with(_local(date_millis(value), tz), fmt)

    return run


_ISO_DATE = re.compile(
    r"(?P<Y>\d{4})[-/](?P<m>\d{1,2})[-/](?P<d>\d{1,2})"
    r"(?:[T ](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<F>\d+))?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
)
_PARSE_PATTERNS: dict[str, str] = {
    "Y": r"(?P<Y>\d{4})", "m": r"(?P<m>\d{1,2})", "d": r"(?P<d>\d{1,2})", "H": r"(?P<H>\d{1,2})",
    "M": r"(?P<M>\d{1,2})", "S": r"(?P<S>\d{1,2})", "L": r"(?P<L>\d{1,3})", "j": r"(?P<j>\d{1,3})",
    "z": r"(?P<tz>[+-]\d{2}:?\d{2}|Z)", "Z": r"(?P<Zmin>[+-]\d+)", "G": r"(?P<G>\d{4})",
    "V": r"(?P<V>\d{1,2})", "u": r"(?P<u>\d)", "b": r"(?P<b>[A-Za-z]{3})", "B": r"(?P<B>[A-Za-z]+)",
    "%": "%",
}


@lru_cache(maxsize=256)
def _format_regex(fmt: str) -> re.Pattern:
    _check_date_format(fmt, _PARSE_PATTERNS)
    pattern = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            pattern.append(_PARSE_PATTERNS[fmt[i + 1]])
            i += 2
        else:
            pattern.append(re.escape(fmt[i]))
            i += 1
    return re.compile("".join(pattern))


def _month_from_name(name: str) -> int:
    for number, month in enumerate(_MONTH_NAMES, start=1):
        if month.lower().startswith(name.lower()) and len(name) >= 3:
            return number
    raise ValueError(f"unknown month name {name}")


def parse_date_string(text: str, fmt: str | None, tz: datetime.tzinfo | None) -> datetime.datetime:
    """$dateFromString's parser: ISO-8601-like strings by default, or a %-format."""
    match = (_format_regex(fmt) if fmt is not None else _ISO_DATE).fullmatch(text.strip())
    if match is None:
        raise _conversion_failure(f"Error parsing date string '{text}'; the string does not match the expected format")
    parts = {key: value for key, value in match.groupdict().items() if value is not None}
    has_zone = "tz" in parts or "Zmin" in parts
    if has_zone and tz is not None:
        raise CommandError(
            40554,
            f"you cannot pass in a date/time string with time zone information ('{text}') together with a timezone argument",
        )
    try:
        if "G" in parts:
            day = datetime.date.fromisocalendar(int(parts["G"]), int(parts.get("V", 1)), int(parts.get("u", 1)))
        elif "j" in parts:
            day = datetime.date(int(parts.get("Y", 1970)), 1, 1) + datetime.timedelta(days=int(parts["j"]) - 1)
        else:
            month = _month_from_name(parts.get("b") or parts["B"]) if ("b" in parts or "B" in parts) else int(parts.get("m", 1))
            day = datetime.date(int(parts.get("Y", 1970)), month, int(parts.get("d", 1)))
        fraction = parts.get("F") or parts.get("L") or "0"
        millis = int((fraction + "000")[:3]) if "F" in parts else int(fraction)
        naive = datetime.datetime(day.year, day.month, day.day, int(parts.get("H", 0)), int(parts.get("M", 0)),
                                  int(parts.get("S", 0)), millis * 1000)
    except ValueError as exc:
        raise _conversion_failure(f"Error parsing date string '{text}'; {exc}") from None
    if "tz" in parts:
        zone = parse_timezone(parts["tz"])
    elif "Zmin" in parts:
        zone = datetime.timezone(datetime.timedelta(minutes=int(parts["Zmin"])))
    else:
        zone = tz or _UTC
    return naive.replace(tzinfo=zone).astimezone(_UTC)


@_parser("$dateFromString")
def _parse_date_from_string(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("dateString",), ("format", "timezone", "onError", "onNull"),
                codes=(40540, 40541, 40542))
    if isinstance(spec.get("format"), str):
        _check_date_format(spec["format"], _PARSE_PATTERNS)
    args = _compile_named(spec, ("dateString", "format", "timezone", "onError", "onNull"))

    def run(env: Env) -> Any:
        text = args["dateString"](env)
        fmt = args["format"](env) if "format" in args else None
        tz = None
        if "timezone" in args:
            tz = _resolve_tz(args["timezone"], env)
            if tz is None:
                return None
        if "format" in args and _nullish(fmt):
            return None
        if fmt is not None and not isinstance(fmt, str):
            raise CommandError(40684, f"$dateFromString requires that 'format' be a string, found: {type_name(fmt)} "
                                      f"with value {show(fmt)}")
        if _nullish(text):
            return args["onNull"](env) if "onNull" in args else None
        try:
            if not isinstance(text, str):
                raise _conversion_failure(
                    f"$dateFromString requires that 'dateString' be a string, found: {type_name(text)} with value {show(text)}"
                )
            return parse_date_string(text, fmt, tz)
        except CommandError as exc:
            if exc.code == 241 and "onError" in args:
                return args["onError"](env)
            raise

    return run


_PART_LIMIT = (-32768, 32767)


def _integral_part(name: str, value: Any) -> int:
    if not is_number(value) or not _is_integral(value):
        raise CommandError(40515, f"'{name}' must evaluate to an integer, found {type_name(value)} with value {show(value)}")
    return int(numeric_value(value))


_NATURAL_PARTS = ("year", "month", "day", "hour", "minute", "second", "millisecond")
_ISO_PARTS = ("isoWeekYear", "isoWeek", "isoDayOfWeek", "hour", "minute", "second", "millisecond")
_PART_DEFAULTS = {"month": 1, "day": 1, "isoWeek": 1, "isoDayOfWeek": 1}


@_parser("$dateFromParts")
def _parse_date_from_parts(op: str, spec: Any) -> Compiled:
    allowed = set(_NATURAL_PARTS) | set(_ISO_PARTS) | {"timezone"}
    _named_args(op, spec, (), allowed, codes=(40519, 40518, 40516))
    iso = any(name in spec for name in ("isoWeekYear", "isoWeek", "isoDayOfWeek"))
    if iso and any(name in spec for name in ("year", "month", "day")):
        raise CommandError(40489, "$dateFromParts does not allow mixing natural dates with ISO dates")
    year_name = "isoWeekYear" if iso else "year"
    if year_name not in spec:
        raise CommandError(40516, "$dateFromParts requires either 'year' or 'isoWeekYear' to be present")
    names = _ISO_PARTS if iso else _NATURAL_PARTS
    parts = _compile_named(spec, names)
    tz_fn = compile_expression(spec["timezone"]) if "timezone" in spec else None

    def run(env: Env) -> Any:
        values: dict[str, int] = {}
        for name in names:
            if name not in parts:
                values[name] = _PART_DEFAULTS.get(name, 0)
                continue
            value = parts[name](env)
            if _nullish(value):
                return None
            values[name] = _integral_part(name, value)
        tz = _resolve_tz(tz_fn, env)
        if tz is None:
            return None
        year = values[year_name]
        if not 1 <= year <= 9999:
            raise CommandError(40523, f"'{year_name}' must evaluate to an integer in the range 1 to 9999, found {year}")
        for name in names[1:]:
            if not _PART_LIMIT[0] <= values[name] <= _PART_LIMIT[1]:
                raise CommandError(31034, f"'{name}' must evaluate to a value in the range [-32768, 32767]; "
                                          f"value {values[name]} is not in range")
        try:
            if iso:
                start = datetime.datetime.combine(datetime.date.fromisocalendar(year, 1, 1), datetime.time())
                start += datetime.timedelta(weeks=values["isoWeek"] - 1, days=values["isoDayOfWeek"] - 1)
            else:
                carry_year, month = divmod(year * 12 + values["month"] - 1, 12)
                start = datetime.datetime(carry_year, month + 1, 1) + datetime.timedelta(days=values["day"] - 1)
            naive = start + datetime.timedelta(hours=values["hour"], minutes=values["minute"],
                                               seconds=values["second"], milliseconds=values["millisecond"])
        except (ValueError, OverflowError):
            raise CommandError(40523, "$dateFromParts produced a date outside the range 1 to 9999") from None
        return date_from_millis(_from_local(naive, tz))

    return run


@_parser("$dateToParts")
def _parse_date_to_parts(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("date",), ("timezone", "iso8601"), codes=(40524, 40520, 40522))
    args = _compile_named(spec, ("date", "timezone", "iso8601"))

    def run(env: Env) -> Any:
        value = args["date"](env)
        tz = _resolve_tz(args.get("timezone"), env)
        iso = args["iso8601"](env) if "iso8601" in args else False
        if _nullish(value) or tz is None or _nullish(iso):
            return None
        if not isinstance(iso, bool):
            raise CommandError(40521, f"iso8601 must evaluate to a bool, found {type_name(iso)}")
        moment = _local(date_millis(value), tz)
        if iso:
            year, week, weekday = moment.isocalendar()
            head = {"isoWeekYear": year, "isoWeek": week, "isoDayOfWeek": weekday}
        else:
            head = {"year": moment.year, "month": moment.month, "day": moment.day}
        return {**head, "hour": moment.hour, "minute": moment.minute, "second": moment.second,
                "millisecond": moment.microsecond // 1000}

    return run


# Units with a fixed length in milliseconds; longer units follow the calendar of the timezone.
_FIXED_UNITS = {"millisecond": 1, "second": 1000, "minute": 60_000, "hour": 3_600_000}
_CALENDAR_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_TIME_UNITS = frozenset({*_FIXED_UNITS, *_CALENDAR_MONTHS, "day", "week"})


def _time_unit(op: str, value: Any) -> str:
    if not isinstance(value, str):
        raise CommandError(5439013, f"{op} requires 'unit' to be a string, but got {type_name(value)}")
    if value not in _TIME_UNITS:
        raise CommandError(2, f"unknown time unit value: {value}")
    return value


def _start_of_week(op: str, value: Any) -> int:
    """Weekday index (Monday = 0) of a startOfWeek name ("monday", "mon", any case)."""
    if not isinstance(value, str):
        raise CommandError(5439015, f"{op} requires 'startOfWeek' to be a string, but got {type_name(value)}")
    lowered = value.lower()
    for index, name in enumerate(_DAY_NAMES):
        if lowered in (name, name[:3]):
            return index
    raise CommandError(5439016, f"{op} parameter 'startOfWeek' value cannot be recognized as a day of a week: {value}")


def _days_in_month(year: int, month: int) -> int:
    following = datetime.date(year + month // 12, month % 12 + 1, 1)
    return (following - datetime.timedelta(days=1)).day


def add_to_date(millis: int, unit: str, amount: int, tz: datetime.tzinfo) -> int:
    """$dateAdd: fixed units add milliseconds, calendar units move the wall clock in ``tz``."""
    if unit in _FIXED_UNITS:
        return millis + amount * _FIXED_UNITS[unit]
    local = _local(millis, tz).replace(tzinfo=None)
    if unit in ("day", "week"):
        moved = local + datetime.timedelta(days=amount * (7 if unit == "week" else 1))
    else:
        year, month = divmod(local.year * 12 + local.month - 1 + amount * _CALENDAR_MONTHS[unit], 12)
        # Past the end of a shorter month the server clamps to its last day (Jan 31 + 1 month → Feb 28).
        moved = local.replace(year=year, month=month + 1, day=min(local.day, _days_in_month(year, month + 1)))
    return _from_local(moved, tz)


def date_difference(start: int, end: int, unit: str, tz: datetime.tzinfo, week_start: int) -> int:
    """$dateDiff: how many ``unit`` boundaries lie between two instants (in ``tz``)."""
    a, b = _local(start, tz), _local(end, tz)
    if unit in _FIXED_UNITS:
        size = _FIXED_UNITS[unit]
        wall_a = start + _utc_offset_minutes(a) * 60_000
        wall_b = end + _utc_offset_minutes(b) * 60_000
        return wall_b // size - wall_a // size
    if unit == "day":
        return b.toordinal() - a.toordinal()
    if unit == "week":
        return (b.toordinal() - 1 - week_start) // 7 - (a.toordinal() - 1 - week_start) // 7
    months = _CALENDAR_MONTHS[unit]
    return (b.year * 12 + b.month - 1) // months - (a.year * 12 + a.month - 1) // months


_TRUNC_REFERENCE = datetime.datetime(2000, 1, 1)


def truncate_date(millis: int, unit: str, bin_size: int, tz: datetime.tzinfo, week_start: int) -> int:
    """$dateTrunc: bins of ``bin_size`` units aligned on 2000-01-01 in ``tz``."""
    local = _local(millis, tz).replace(tzinfo=None)
    if unit in _FIXED_UNITS or unit == "day":
        size = (_FIXED_UNITS.get(unit) or 86_400_000) * bin_size
        elapsed = (local - _TRUNC_REFERENCE) // datetime.timedelta(milliseconds=1)
        start = _TRUNC_REFERENCE + datetime.timedelta(milliseconds=elapsed // size * size)
    elif unit == "week":
        # Weeks are aligned on the first startOfWeek day on or after the reference date.
        reference = _TRUNC_REFERENCE + datetime.timedelta(days=(week_start - _TRUNC_REFERENCE.weekday()) % 7)
        days = (local - reference).days
        start = reference + datetime.timedelta(days=days // (7 * bin_size) * 7 * bin_size)
    else:
        size = _CALENDAR_MONTHS[unit] * bin_size
        elapsed = (local.year - 2000) * 12 + local.month - 1
        year, month = divmod(elapsed // size * size, 12)
        start = datetime.datetime(2000 + year, month + 1, 1)
    return _from_local(start, tz)


def _integral_amount(op: str, value: Any) -> int:
    if not is_number(value) or not _is_integral(value):
        raise CommandError(5166405, f"{op} expects integer amount of time units")
    return int(numeric_value(value))


@_parser("$dateAdd", "$dateSubtract")
def _parse_date_add(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("startDate", "unit", "amount"), ("timezone",), codes=(5166400, 5166401, 5166402))
    args = _compile_named(spec, ("startDate", "unit", "amount", "timezone"))
    sign = -1 if op == "$dateSubtract" else 1

    def run(env: Env) -> Any:
        start, unit, amount = args["startDate"](env), args["unit"](env), args["amount"](env)
        tz = _resolve_tz(args.get("timezone"), env)
        if _nullish(start) or _nullish(unit) or _nullish(amount) or tz is None:
            return None
        if not (is_date(start) or isinstance(start, (Timestamp, ObjectId))):
            raise CommandError(5166403, f"{op} requires startDate to be convertible to a date")
        unit_name = _time_unit(op, unit)
        count = _integral_amount(op, amount) * sign
        try:
            return date_from_millis(add_to_date(date_millis(start), unit_name, count, tz))
        except (OverflowError, ValueError):
            raise CommandError(5166406, f"{op} overflowed") from None

    return run


@_parser("$dateDiff")
def _parse_date_diff(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("startDate", "endDate", "unit"), ("timezone", "startOfWeek"),
                codes=(5166301, 5166302, 5166303))
    args = _compile_named(spec, ("startDate", "endDate", "unit", "timezone", "startOfWeek"))

    def run(env: Env) -> Any:
        start, end, unit = args["startDate"](env), args["endDate"](env), args["unit"](env)
        tz = _resolve_tz(args.get("timezone"), env)
        week = args["startOfWeek"](env) if "startOfWeek" in args else "sunday"
        if _nullish(start) or _nullish(end) or _nullish(unit) or tz is None or _nullish(week):
            return None
        unit_name = _time_unit(op, unit)
        week_start = _start_of_week(op, week) if unit_name == "week" else 6
        return Int64(date_difference(date_millis(start), date_millis(end), unit_name, tz, week_start))

    return run


@_parser("$dateTrunc")
def _parse_date_trunc(op: str, spec: Any) -> Compiled:
    _named_args(op, spec, ("date", "unit"), ("binSize", "timezone", "startOfWeek"),
                codes=(5439007, 5439008, 5439009))
    args = _compile_named(spec, ("date", "unit", "binSize", "timezone", "startOfWeek"))

    def run(env: Env) -> Any:
        value, unit = args["date"](env), args["unit"](env)
        bin_value = args["binSize"](env) if "binSize" in args else 1
        tz = _resolve_tz(args.get("timezone"), env)
        week = args["startOfWeek"](env) if "startOfWeek" in args else "sunday"
        if _nullish(value) or _nullish(unit) or _nullish(bin_value) or tz is None or _nullish(week):
            return None
        unit_name = _time_unit(op, unit)
        if not is_number(bin_value) or not _is_integral(bin_value) or numeric_value(bin_value) <= 0:
            raise CommandError(5439017, f"{op} requires 'binSize' to be a positive 64-bit integer, but got value "
                                        f"'{show(bin_value)}' of type {type_name(bin_value)}")
        week_start = _start_of_week(op, week) if unit_name == "week" else 6
        millis = date_millis(value)
        return date_from_millis(truncate_date(millis, unit_name, int(numeric_value(bin_value)), tz, week_start))

    return run
