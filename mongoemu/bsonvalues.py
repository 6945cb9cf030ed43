"""BSON value semantics shared by every part of the emulator.

The emulator keeps documents as plain ``dict`` objects decoded with :data:`CODEC`, so that
decode → store → re-encode round-trips every BSON type the ``bson`` package preserves
(int32 → ``int``, int64 → ``Int64``, double → ``float``, UUIDs stay ``Binary``).

:func:`sort_key` maps any value to a Python tuple whose natural ordering is MongoDB's BSON
comparison order, so one function serves ``_id`` indexes, sorting, ranges, ``$min``/``$max``
and equality.
"""

from __future__ import annotations

import datetime
import decimal
import math
from typing import Any

import bson
from bson.binary import Binary, UuidRepresentation
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from bson.datetime_ms import DatetimeMS

CODEC: CodecOptions = CodecOptions(
    document_class=dict,
    tz_aware=True,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    # A server stores strings byte for byte, valid UTF-8 or not (only `validate` checks): bytes
    # that are not UTF-8 decode to lone surrogates, which :func:`encode` turns back into them.
    unicode_decode_error_handler="surrogateescape",
)


class _Missing:
    """A path that resolves to nothing (distinct from an explicit ``null``)."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

# Canonical type ranks, in BSON comparison order.
RANK_MINKEY = 0
RANK_NULL = 1
RANK_NUMBER = 2
RANK_STRING = 3
RANK_OBJECT = 4
RANK_ARRAY = 5
RANK_BINARY = 6
RANK_OBJECTID = 7
RANK_BOOL = 8
RANK_DATE = 9
RANK_TIMESTAMP = 10
RANK_REGEX = 11
RANK_DBPOINTER = 12
RANK_CODE = 13
RANK_CODE_W_SCOPE = 14
RANK_MAXKEY = 100

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def datetime_to_millis(value: datetime.datetime | DatetimeMS) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def numeric_value(value: Any) -> int | float | decimal.Decimal:
    """A Python number that compares exactly with the others (int, float, Decimal)."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal128):
        return value.to_decimal().is_nan()
    return False


def type_rank(value: Any) -> int:
    if value is None or value is MISSING:
        return RANK_NULL
    if isinstance(value, Code):  # a str subclass: it must not be taken for a string
        return RANK_CODE if value.scope is None else RANK_CODE_W_SCOPE
    if isinstance(value, bool):
        return RANK_BOOL
    if isinstance(value, (int, float, Decimal128)):
        return RANK_NUMBER
    if isinstance(value, str):
        return RANK_STRING
    if isinstance(value, DBRef):
        return RANK_OBJECT
    if isinstance(value, dict):
        return RANK_OBJECT
    if isinstance(value, (list, tuple)):
        return RANK_ARRAY
    if isinstance(value, (bytes, Binary)):
        return RANK_BINARY
    if isinstance(value, ObjectId):
        return RANK_OBJECTID
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return RANK_DATE
    if isinstance(value, Timestamp):
        return RANK_TIMESTAMP
    if isinstance(value, Regex):
        return RANK_REGEX
    if isinstance(value, MinKey):
        return RANK_MINKEY
    if isinstance(value, MaxKey):
        return RANK_MAXKEY
    if hasattr(value, "pattern") and hasattr(value, "flags"):  # re.Pattern
        return RANK_REGEX
    raise TypeError(f"unsupported BSON value {value!r}")


def sort_key(value: Any) -> tuple:
    """A tuple ordered exactly as MongoDB orders BSON values (without collation)."""
    rank = type_rank(value)
    if rank == RANK_NUMBER:
        number = numeric_value(value)
        if number != number:  # NaN sorts below every other number
            return (RANK_NUMBER, 0, 0)
        return (RANK_NUMBER, 1, number)
    if rank == RANK_STRING:
        return (RANK_STRING, value)
    if rank == RANK_OBJECTID:
        return (RANK_OBJECTID, value.binary)
    if rank == RANK_OBJECT:
        if isinstance(value, DBRef):
            value = value.as_doc()
        return (RANK_OBJECT, tuple((_element_key(k, v)) for k, v in value.items()))
    if rank == RANK_ARRAY:
        return (RANK_ARRAY, tuple(sort_key(v) for v in value))
    if rank == RANK_BINARY:
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (RANK_BINARY, len(value), subtype, bytes(value))
    if rank == RANK_BOOL:
        return (RANK_BOOL, bool(value))
    if rank == RANK_DATE:
        return (RANK_DATE, datetime_to_millis(value))
    if rank == RANK_TIMESTAMP:
        return (RANK_TIMESTAMP, value.time, value.inc)
    if rank == RANK_REGEX:
        flags = value.flags if isinstance(value.flags, str) else str(value.flags)
        return (RANK_REGEX, value.pattern, flags)
    if rank == RANK_CODE:
        return (RANK_CODE, str(value))
    if rank == RANK_CODE_W_SCOPE:
        return (RANK_CODE_W_SCOPE, str(value), sort_key(value.scope))
    return (rank,)


def _element_key(name: str, value: Any) -> tuple:
    key = sort_key(value)
    return (key[0], name, key)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 following BSON comparison order."""
    ka, kb = sort_key(a), sort_key(b)
    return (ka > kb) - (ka < kb)


def values_equal(a: Any, b: Any) -> bool:
    """Equality as MongoDB's ``$eq`` sees it: numbers across types, documents field by field."""
    return sort_key(a) == sort_key(b)


def type_name(value: Any) -> str:
    """The ``$type`` alias of a value (``"int"``, ``"long"``, ``"double"``, ...)."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, Code):  # before str, which it subclasses
        return "javascriptWithScope" if value.scope is not None else "javascript"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (dict, DBRef)):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, (bytes, Binary)):
        return "binData"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return "date"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, Regex) or (hasattr(value, "pattern") and hasattr(value, "flags")):
        return "regex"
    if isinstance(value, MinKey):
        return "minKey"
    if isinstance(value, MaxKey):
        return "maxKey"
    return "unknown"


TYPE_NUMBERS: dict[str, int] = {
    "double": 1, "string": 2, "object": 3, "array": 4, "binData": 5, "undefined": 6,
    "objectId": 7, "bool": 8, "date": 9, "null": 10, "regex": 11, "dbPointer": 12,
    "javascript": 13, "symbol": 14, "javascriptWithScope": 15, "int": 16, "timestamp": 17,
    "long": 18, "decimal": 19, "minKey": -1, "maxKey": 127,
}


def decode(data: bytes) -> dict:
    return bson.decode(data, codec_options=CODEC)


def encode(document: Any) -> bytes:
    """BSON of ``document``; strings read from invalid UTF-8 get their original bytes back."""
    try:
        return bson.encode(document, codec_options=CODEC)
    except UnicodeEncodeError:
        return _document_bytes(document, top_level=True)


def utf8(text: str) -> bytes:
    """The bytes of a string as it arrived, invalid UTF-8 included (see CODEC)."""
    return text.encode("utf-8", "surrogateescape")


def _document_bytes(document: Any, top_level: bool = False) -> bytes:
    """An encoder for what the C encoder refuses: documents holding surrogate-escaped text."""
    if isinstance(document, RawBSONDocument):
        return document.raw
    if isinstance(document, DBRef):
        document = document.as_doc()
    items = list(document.items())
    if top_level and "_id" in document:  # as bson.encode does for a top-level document
        items = [("_id", document["_id"])] + [item for item in items if item[0] != "_id"]
    body = b"".join(_element_bytes(name, value) for name, value in items)
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def _string_bytes(text: str) -> bytes:
    data = utf8(text)
    return (len(data) + 1).to_bytes(4, "little") + data + b"\x00"


def _element_bytes(name: str, value: Any) -> bytes:
    key = utf8(name) + b"\x00"
    if isinstance(value, Code):
        if value.scope is None:
            return b"\x0d" + key + _string_bytes(value)
        inner = _string_bytes(value) + _document_bytes(value.scope)
        return b"\x0f" + key + (len(inner) + 4).to_bytes(4, "little") + inner
    if isinstance(value, str):
        return b"\x02" + key + _string_bytes(value)
    if isinstance(value, (dict, DBRef, RawBSONDocument)):
        return b"\x03" + key + _document_bytes(value)
    if isinstance(value, (list, tuple)):
        return b"\x04" + key + _document_bytes({str(i): v for i, v in enumerate(value)})
    if isinstance(value, Regex):
        # The option letters as the encoder writes them, from an empty pattern.
        flags = bson.encode({"": Regex("", value.flags)}, codec_options=CODEC)[7:-1]
        return b"\x0b" + key + utf8(value.pattern) + b"\x00" + flags
    encoded = bson.encode({"": value}, codec_options=CODEC)  # int32 size, type, "", value, 0
    return encoded[4:5] + key + encoded[6:-1]


BSON_UNDEFINED = 0x06

# Bytes after the element name for fixed-size types; strings and containers carry a length.
_FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
                0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}


def raw_element_type(raw: bytes, name: str) -> int | None:
    """The type byte of top-level field ``name`` in encoded document ``raw``.

    Decoding cannot tell some types apart (undefined reads as None), so rules that depend on
    the exact type look at the bytes; a malformed document answers None.
    """
    wanted = utf8(name)
    offset, end = 4, len(raw) - 1
    while offset < end:
        kind = raw[offset]
        name_end = raw.find(b"\x00", offset + 1)
        if name_end < 0:
            return None
        if raw[offset + 1:name_end] == wanted:
            return kind
        offset = name_end + 1
        if kind in _FIXED_SIZES:
            offset += _FIXED_SIZES[kind]
        elif kind in (0x02, 0x0D, 0x0E):  # string, code, symbol
            offset += 4 + int.from_bytes(raw[offset:offset + 4], "little")
        elif kind in (0x03, 0x04, 0x0F):  # document, array, code with scope
            offset += int.from_bytes(raw[offset:offset + 4], "little")
        elif kind == 0x05:
            offset += 5 + int.from_bytes(raw[offset:offset + 4], "little")
        elif kind == 0x0B:  # regex: two C strings
            offset = raw.find(b"\x00", raw.find(b"\x00", offset) + 1) + 1
            if offset == 0:
                return None
        elif kind == 0x0C:  # DBPointer: string then ObjectId
            offset += 4 + int.from_bytes(raw[offset:offset + 4], "little") + 12
        else:
            return None
    return None


def deep_copy(value: Any) -> Any:
    """Copy the mutable containers of a decoded value (BSON leaves are immutable)."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value
