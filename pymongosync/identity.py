"""Which document a value identifies: ``_id`` values compared as the server compares them.

The server matches ``_id`` by value, not by bytes: 1, 1.0, NumberLong(1) and
NumberDecimal("1") are the same key, and so are ``{a: 1}`` and ``{a: 1.0}``. Anything that
groups, orders or looks up documents by ``_id`` must agree with it, or writes meant for one
document are taken for writes to two (and one of them wins by accident).

:func:`id_key` gives a hashable key with exactly the server's equality: numbers by exact
value across int32, int64, double and decimal128 (``0.1`` the double is not ``0.1`` the
decimal; all NaNs are equal; -0 equals 0), strings and symbols by their text, embedded
documents field by field in order, arrays element by element; values of different BSON type
brackets never equal.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Hashable, Mapping
from decimal import Decimal
from typing import Any

import bson
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _number(value: Decimal) -> Hashable:
    if value.is_nan():
        return ("number", "nan")
    if value.is_infinite():
        return ("number", "inf" if value > 0 else "-inf")
    return ("number", value)  # equal Decimals hash equally, whatever their exponent


def _millis(value: datetime.datetime) -> int:
    moment = value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def id_key(value: Any) -> Hashable:
    """A hashable key equal for exactly the values the server takes for the same ``_id``."""
    if isinstance(value, bool):  # before int: bool is an int in Python, not in BSON
        return ("bool", value)
    if isinstance(value, int):  # int and Int64
        return _number(Decimal(int(value)))
    if isinstance(value, float):
        return _number(Decimal("NaN") if math.isnan(value) else Decimal(value))
    if isinstance(value, Decimal128):
        return _number(value.to_decimal())
    if isinstance(value, Code):  # before str: Code is a str in Python, not in BSON
        scope = None if value.scope is None else id_key(value.scope)
        return ("code", str(value), scope)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, DBRef):
        return id_key(value.as_doc())
    if isinstance(value, Mapping):
        return ("object", tuple((name, id_key(item)) for name, item in value.items()))
    if isinstance(value, list | tuple):
        return ("array", tuple(id_key(item) for item in value))
    if isinstance(value, Binary):
        return ("binary", value.subtype, bytes(value))
    if isinstance(value, bytes):
        return ("binary", 0, value)
    if isinstance(value, ObjectId):
        return ("objectId", value.binary)
    if isinstance(value, datetime.datetime):
        return ("date", _millis(value))
    if isinstance(value, DatetimeMS):
        return ("date", int(value))
    if isinstance(value, Timestamp):
        return ("timestamp", value.time, value.inc)
    if isinstance(value, Regex):
        return ("regex", value.pattern, _flags(value.flags))
    if isinstance(value, re.Pattern):
        return id_key(Regex.from_native(value))
    if value is None:
        return ("null",)
    if isinstance(value, MinKey):
        return ("minKey",)
    if isinstance(value, MaxKey):
        return ("maxKey",)
    # Any other BSON value: its exact encoding is its identity.
    return ("bson", bson.encode({"": value}))


def _flags(flags: int | str) -> str:
    if isinstance(flags, str):
        return "".join(sorted(flags))
    letters = {re.IGNORECASE: "i", re.LOCALE: "l", re.MULTILINE: "m", re.DOTALL: "s",
               re.UNICODE: "u", re.VERBOSE: "x"}
    return "".join(sorted(letter for flag, letter in letters.items() if flags & flag))
