"""Result matching for unified-format spec tests ("Evaluating Matches" in the unified test format).

Two comparisons live here:

* :func:`match` implements the spec's lenient matcher used for ``expectResult``, ``errorResponse``
  and friends: extra fields are allowed in root-level documents only, numbers compare by value
  across int/long/double, and ``$$``-prefixed special operators are evaluated.
* :func:`exact_diff` implements the strict comparison the spec requires for ``outcome``
  (final collection contents): no extra fields anywhere and identical BSON types, with only the
  key order of documents allowed to vary.  Being strict there is deliberate: the outcome is the
  server's stored data, and a server that turns an int32 into a double is wrong.
"""

from __future__ import annotations

from mongoemu.bsonvalues import type_name

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bson import Binary, DBRef, Regex, json_util

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


class MatchError(AssertionError):
    """An expected value did not match the actual one; the message names the path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"at {path or '<root>'}: {message}")
        self.path = path


class MatchContext(Protocol):
    """What the matcher needs from the runner: entities for ``$$matchesEntity``/``$$sessionLsid``."""

    def entity(self, name: str) -> Any: ...

    def session_lsid(self, name: str) -> Mapping[str, Any]: ...


class NoEntities:
    """A context without entities, for matching outside a test (and in unit tests)."""

    def entity(self, name: str) -> Any:
        raise KeyError(f"no entity named {name!r}")

    def session_lsid(self, name: str) -> Mapping[str, Any]:
        raise KeyError(f"no session entity named {name!r}")


def short(value: Any, limit: int = 120) -> str:
    """A one-line repr that keeps failure reasons readable."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bson_type(value: Any) -> str:
    """The BSON type alias (as used by ``$type``) a Python value encodes to."""
    if isinstance(value, DBRef):
        return "dbPointer"
    name = type_name(value)
    return type(value).__name__ if name == "unknown" else name


_NUMBER_TYPES = frozenset({"int", "long", "double", "decimal"})
_TYPE_ALIASES: dict[str, frozenset[str]] = {
    "number": _NUMBER_TYPES,
    # PyMongo decodes the deprecated types to their modern equivalents.
    "symbol": frozenset({"string"}),
    "undefined": frozenset({"null"}),
}


def _is_flexible_number(value: Any) -> bool:
    """int, long and double compare by value; Decimal128 and bool do not (spec: flexible numerics)."""
    return bson_type(value) in ("int", "long", "double")


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if _is_flexible_number(expected) and _is_flexible_number(actual):
        return bool(expected == actual)
    if bson_type(expected) != bson_type(actual):
        return False
    if isinstance(expected, (Regex, re.Pattern)):
        return _regex_parts(expected) == _regex_parts(actual)
    return bool(expected == actual)


def _regex_parts(value: Regex[Any] | re.Pattern[str]) -> tuple[str, int]:
    """Pattern and option bits: a bson Regex and a compiled pattern compare by these."""
    regex = value if isinstance(value, Regex) else Regex.from_native(value)
    # Python sets re.UNICODE on every str pattern; BSON has no such option.
    return str(regex.pattern), int(regex.flags) & ~re.UNICODE


def _operator(expected: Any) -> tuple[str, Any] | None:
    """``(name, argument)`` when ``expected`` is a special-operator document ``{$$op: arg}``."""
    if isinstance(expected, Mapping) and len(expected) == 1:
        key = next(iter(expected))
        if isinstance(key, str) and key.startswith("$$"):
            return key, expected[key]
    return None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def match(expected: Any, actual: Any, ctx: MatchContext | None = None, *, root: bool = True, path: str = "") -> None:
    """Assert ``actual`` matches ``expected`` under the unified-format rules; raise MatchError if not.

    ``root`` says whether ``actual`` is a root-level document (extra fields allowed). Arrays always
    need the same length; their elements are never root-level unless :func:`match_documents` is used.
    """
    ctx = ctx or NoEntities()
    operator = _operator(expected)
    if operator is not None:
        # Outside a parent document "unset" can only mean the operation returned nothing.
        present = actual is not None if operator[0] == "$$unsetOrMatches" else True
        _apply_operator(operator[0], operator[1], actual, ctx, root=root, path=path, present=present)
        return
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            raise MatchError(path, f"expected a document, got {short(actual)}")
        for key, value in expected.items():
            sub = _join(path, key)
            key_operator = _operator(value)
            if key_operator is not None and key_operator[0] in ("$$exists", "$$unsetOrMatches"):
                _apply_operator(key_operator[0], key_operator[1], actual.get(key), ctx,
                                root=False, path=sub, present=key in actual)
                continue
            if key not in actual:
                raise MatchError(sub, f"field is missing (expected {short(value)})")
            match(value, actual[key], ctx, root=False, path=sub)
        if not root:
            extra = [key for key in actual if key not in expected]
            if extra:
                raise MatchError(path, f"unexpected extra field(s) {extra} in nested document {short(actual)}")
        return
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            raise MatchError(path, f"expected an array, got {short(actual)}")
        if len(expected) != len(actual):
            raise MatchError(path, f"expected {len(expected)} element(s), got {len(actual)}: {short(actual)}")
        for index, (exp, act) in enumerate(zip(expected, actual)):
            match(exp, act, ctx, root=False, path=_join(path, index))
        return
    if not _scalar_equal(expected, actual):
        raise MatchError(path, f"expected {short(expected)} ({bson_type(expected)}), "
                               f"got {short(actual)} ({bson_type(actual)})")


def match_documents(expected: Sequence[Any], actual: Sequence[Any], ctx: MatchContext | None = None,
                    *, path: str = "") -> None:
    """Match an iterated cursor result: same length, each element a root-level document."""
    if not isinstance(actual, (list, tuple)):
        raise MatchError(path, f"expected a list of documents, got {short(actual)}")
    if len(expected) != len(actual):
        raise MatchError(path, f"expected {len(expected)} document(s), got {len(actual)}: {short(actual, 300)}")
    for index, (exp, act) in enumerate(zip(expected, actual)):
        match(exp, act, ctx, root=True, path=_join(path, index))


def _apply_operator(name: str, arg: Any, actual: Any, ctx: MatchContext, *, root: bool, path: str,
                    present: bool) -> None:
    """Evaluate one ``$$`` operator; ``present`` is False when the key is absent from the parent."""
    if name == "$$exists":
        if not isinstance(arg, bool):
            raise MatchError(path, f"$$exists needs a boolean, got {short(arg)}")
        if arg and not present:
            raise MatchError(path, "field is missing ($$exists: true)")
        if not arg and present:
            raise MatchError(path, f"field should be absent ($$exists: false), got {short(actual)}")
        return
    if name == "$$unsetOrMatches":
        if present:
            match(arg, actual, ctx, root=root, path=path)
        return
    if not present:
        raise MatchError(path, f"field is missing (expected {name}: {short(arg)})")
    if name == "$$type":
        allowed = [arg] if isinstance(arg, str) else list(arg)
        expanded: set[str] = set()
        for alias in allowed:
            expanded |= _TYPE_ALIASES.get(alias, frozenset({alias}))
        if bson_type(actual) not in expanded:
            raise MatchError(path, f"expected type {allowed}, got {bson_type(actual)} {short(actual)}")
        return
    if name == "$$matchesEntity":
        match(ctx.entity(arg), actual, ctx, root=root, path=path)
        return
    if name == "$$matchesHexBytes":
        try:
            wanted = bytes.fromhex(arg)
        except (TypeError, ValueError) as exc:
            raise MatchError(path, f"malformed $$matchesHexBytes argument {short(arg)}") from exc
        if not isinstance(actual, (bytes, Binary)) or bytes(actual) != wanted:
            raise MatchError(path, f"expected bytes {arg}, got {short(actual)}")
        return
    if name == "$$sessionLsid":
        lsid = ctx.session_lsid(arg)
        if not isinstance(actual, Mapping) or dict(actual) != dict(lsid):
            raise MatchError(path, f"expected lsid of session {arg!r} {short(lsid)}, got {short(actual)}")
        return
    if name == "$$lte":
        if not (_is_flexible_number(actual) and _is_flexible_number(arg)) or not actual <= arg:
            raise MatchError(path, f"expected a number <= {short(arg)}, got {short(actual)}")
        return
    if name == "$$matchAsDocument":
        if not isinstance(actual, str):
            raise MatchError(path, f"$$matchAsDocument needs an extended JSON string, got {short(actual)}")
        match(arg, json_util.loads(actual), ctx, root=False, path=path)
        return
    if name == "$$matchAsRoot":
        match(arg, actual, ctx, root=True, path=path)
        return
    raise MatchError(path, f"unsupported special operator {name}")


def exact_diff(expected: Any, actual: Any, path: str = "") -> str | None:
    """Describe the first difference between two values, or None when they are identical.

    Strict BSON comparison for ``outcome``: same keys (any order), same array lengths and the same
    BSON type for every scalar.
    """
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"at {path or '<root>'}: expected a document, got {short(actual)}"
        missing = [key for key in expected if key not in actual]
        extra = [key for key in actual if key not in expected]
        if missing or extra:
            return f"at {path or '<root>'}: missing field(s) {missing}, extra field(s) {extra} in {short(actual)}"
        for key, value in expected.items():
            diff = exact_diff(value, actual[key], _join(path, key))
            if diff:
                return diff
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"at {path or '<root>'}: expected an array, got {short(actual)}"
        if len(expected) != len(actual):
            return f"at {path or '<root>'}: expected {len(expected)} element(s), got {len(actual)}: {short(actual)}"
        for index, (exp, act) in enumerate(zip(expected, actual)):
            diff = exact_diff(exp, act, _join(path, index))
            if diff:
                return diff
        return None
    if bson_type(expected) != bson_type(actual):
        return (f"at {path or '<root>'}: expected {short(expected)} ({bson_type(expected)}), "
                f"got {short(actual)} ({bson_type(actual)})")
    if isinstance(expected, (Regex, re.Pattern)):
        equal = _regex_parts(expected) == _regex_parts(actual)
    elif isinstance(expected, float) and expected != expected:
        equal = actual != actual  # NaN equals NaN in stored data
    else:
        equal = bool(expected == actual)
    if not equal:
        return f"at {path or '<root>'}: expected {short(expected)}, got {short(actual)}"
    return None
