"""Change-stream resume tokens in the server's exact byte layout.

A token is ``{_data: <upper-case hex>, _typeBits?: BinData(0)}`` where ``_data`` is the KeyString
V1 encoding (the server's order-preserving index-key format) of ``clusterTime, version,
tokenType, txnOpIndex, fromInvalidate, collection UUID or null, eventIdentifier`` followed by the
end byte ``04``. Sync tools decode the timestamp from the first bytes and order tokens by
comparing ``_data`` strings, so the layout is reproduced byte for byte (brief §3.4).

``_typeBits`` records what the ordering encoding loses (int vs long vs double, string vs
symbol); it is omitted when all of its bits are zero, as the server does.

Documented simplification: a Decimal128 with more than 15 significant digits that is not
exactly a double (or one outside the double range) is encoded like the double nearest to it
towards zero, where the server appends a "decimal continuation"; such tokens still sort by
numeric value, only decimals sharing that double tie, and decoding returns the double's value
rounded to 15 digits. Every other value, including non-integral doubles and decimals of up to 15
digits, is encoded exactly as the server does.
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import datetime_to_millis, utf8
from mongoemu.errors import CommandError

TOKEN_VERSION = 2  # 6.0+ servers
EVENT_TOKEN = 128
HIGH_WATER_MARK_TOKEN = 0

# KeyString canonical types (server key_string.cpp, namespace CType).
_MINKEY = 10
_UNDEFINED = 15
_NULLISH = 20
_NUMERIC = 30
_STRING = 60
_OBJECT = 70
_ARRAY = 80
_BINDATA = 90
_OID = 100
_BOOL_FALSE = 110
_BOOL_TRUE = 111
_DATE = 120
_TIMESTAMP = 130
_REGEX = 140
_DBREF = 150
_CODE = 160
_CODE_WITH_SCOPE = 170
_MAXKEY = 240
_NUM_NAN = _NUMERIC + 0
_NUM_NEG_LARGE = _NUMERIC + 1
_NUM_NEG_8 = _NUMERIC + 2
_NUM_NEG_1 = _NUMERIC + 9
_NUM_NEG_SMALL = _NUMERIC + 10
_NUM_ZERO = _NUMERIC + 11
_NUM_POS_SMALL = _NUMERIC + 12
_NUM_POS_1 = _NUMERIC + 13
_NUM_POS_8 = _NUMERIC + 20
_NUM_POS_LARGE = _NUMERIC + 21
_END = 0x04

# Type bits (two per number, one per string).
_TB_INT, _TB_LONG, _TB_DOUBLE, _TB_DECIMAL = 0, 1, 2, 3
_TB_NEGATIVE_DOUBLE_ZERO = 0x18  # 5-bit V1 code after the 0b11 "special zero" prefix
_TB_DECIMAL_ZERO_0 = 0x1A
_DECIMAL_EXPONENT_BITS = 6
_DECIMAL_BIAS = 6176
_DECIMAL_MAX_BIASED_EXPONENT = 12287

# Decimal continuation markers stored in the low bits of fractional numbers.
_DCM_EQUAL_TO_DOUBLE = 0
_DCM_EQUAL_TO_DOUBLE_ROUNDED_15 = 1

_TWO_POW_63 = float(1 << 63)
_TINIEST_2BIT_DCM = math.ldexp(1.0, -255)
_U64 = (1 << 64) - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _double_bits(value: float) -> int:
    return struct.unpack(">Q", struct.pack(">d", value))[0]


def _bits_double(bits: int) -> float:
    return struct.unpack(">d", struct.pack(">Q", bits & _U64))[0]


def _invert(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def _clz64(value: int) -> int:
    return 64 - value.bit_length()


# -- encoding ------------------------------------------------------------------------------------


class _TypeBits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def append(self, bit: int) -> None:
        self.bits.append(bit)

    def append_numeric(self, kind: int) -> None:
        self.bits += (kind >> 1, kind & 1)

    def append_code(self, code: int, width: int) -> None:
        self.bits += ((code >> shift) & 1 for shift in range(width - 1, -1, -1))

    def serialize(self) -> bytes | None:
        """The server's TypeBits buffer, or None when every bit is zero (field omitted)."""
        if not any(self.bits):
            return None
        data = bytearray((len(self.bits) + 7) // 8)
        for index, bit in enumerate(self.bits):
            if bit:
                data[index // 8] |= 1 << (index % 8)
        if len(data) == 1 and data[0] < 0x80:
            return bytes(data)
        if len(data) <= 127:
            return bytes([0x80 | len(data)]) + bytes(data)
        return b"\x80" + struct.pack("<I", len(data)) + bytes(data)


class _Encoder:
    def __init__(self) -> None:
        self.out = bytearray()
        self.type_bits = _TypeBits()

    # values ----------------------------------------------------------------------------------
    def value(self, value: Any) -> None:
        out = self.out
        if value is None:
            out.append(_NULLISH)
        elif isinstance(value, bool):
            out.append(_BOOL_TRUE if value else _BOOL_FALSE)
        elif isinstance(value, Int64):
            self.type_bits.append_numeric(_TB_LONG)
            self._integer(int(value))
        elif isinstance(value, int):
            self.type_bits.append_numeric(_TB_INT if -(1 << 31) <= value < (1 << 31) else _TB_LONG)
            self._integer(value)
        elif isinstance(value, float):
            if value == 0.0 and math.copysign(1.0, value) < 0:
                self.type_bits.append_numeric(3)
                self.type_bits.append_code(_TB_NEGATIVE_DOUBLE_ZERO, 3)
            else:
                self.type_bits.append_numeric(_TB_DOUBLE)
            self._double(value, _DCM_EQUAL_TO_DOUBLE)
        elif isinstance(value, Decimal128):
            self._decimal(value.to_decimal())
        elif isinstance(value, Code):  # before str: Code subclasses str
            if value.scope is None:
                out.append(_CODE)
                self._string_like(str(value))
            else:
                out.append(_CODE_WITH_SCOPE)
                self._string_like(str(value))
                self._fields(value.scope)
        elif isinstance(value, str):
            self.type_bits.append(0)
            out.append(_STRING)
            self._string_like(value)
        elif isinstance(value, DBRef):
            self.value(value.as_doc())
        elif isinstance(value, Mapping):
            out.append(_OBJECT)
            self._fields(value)
        elif isinstance(value, (list, tuple)):
            out.append(_ARRAY)
            for element in value:
                self.value(element)
            out.append(0)
        elif isinstance(value, ObjectId):
            out.append(_OID)
            out += value.binary
        elif isinstance(value, uuid.UUID):
            self._bindata(value.bytes, 4)
        elif isinstance(value, Binary):
            self._bindata(bytes(value), value.subtype)
        elif isinstance(value, (bytes, bytearray)):
            self._bindata(bytes(value), 0)
        elif isinstance(value, (datetime.datetime, DatetimeMS)):
            out.append(_DATE)
            out += ((datetime_to_millis(value) & _U64) ^ (1 << 63)).to_bytes(8, "big")
        elif isinstance(value, Timestamp):
            out.append(_TIMESTAMP)
            out += struct.pack(">II", value.time, value.inc)
        elif isinstance(value, (Regex, re.Pattern)):
            regex = value if isinstance(value, Regex) else Regex.from_native(value)
            flags = regex.flags if isinstance(regex.flags, str) else _regex_flags(regex.flags)
            out.append(_REGEX)
            out += utf8(regex.pattern) + b"\x00" + flags.encode() + b"\x00"
        elif isinstance(value, MinKey):
            out.append(_MINKEY)
        elif isinstance(value, MaxKey):
            out.append(_MAXKEY)
        else:
            raise TypeError(f"cannot encode {type(value).__name__} in a resume token")

    def _fields(self, document: Mapping[str, Any]) -> None:
        for name, value in document.items():
            # Objects order by (generic type, name, value), hence the generic type byte first.
            self.out.append(_generic_type(value))
            self.out += utf8(name) + b"\x00"
            self.value(value)
        self.out.append(0)

    def _string_like(self, text: str) -> None:
        self.out += utf8(text).replace(b"\x00", b"\x00\xff") + b"\x00"

    def _bindata(self, data: bytes, subtype: int) -> None:
        self.out.append(_BINDATA)
        if len(data) < 0xFF:
            self.out.append(len(data))
        else:
            self.out += b"\xff" + struct.pack(">i", len(data))
        self.out.append(subtype)
        self.out += data

    # numbers ---------------------------------------------------------------------------------
    def _integer(self, number: int) -> None:
        if number == -(1 << 63):
            # Not representable as a positive int64 magnitude: the server encodes it as a double.
            self._large_double(float(number), _DCM_EQUAL_TO_DOUBLE)
        elif number == 0:
            self.out.append(_NUM_ZERO)
        else:
            self._preshifted(abs(number) << 1, number < 0)

    def _preshifted(self, value: int, negative: bool) -> None:
        size = (value.bit_length() + 7) // 8
        data = value.to_bytes(size, "big")
        if negative:
            self.out.append(_NUM_NEG_1 - (size - 1))
            self.out += _invert(data)
        else:
            self.out.append(_NUM_POS_1 + (size - 1))
            self.out += data

    def _double(self, number: float, dcm: int) -> None:
        negative = number < 0.0
        magnitude = -number if negative else number
        if not magnitude >= 1.0:
            if magnitude > 0.0:
                self._small_double(number, dcm)
            elif number == 0.0:
                self.out.append(_NUM_ZERO)
            else:
                self.out.append(_NUM_NAN)
            return
        if magnitude >= _TWO_POW_63:
            self._large_double(number, dcm)
            return
        integer_part = int(magnitude)
        if float(integer_part) == magnitude and dcm == _DCM_EQUAL_TO_DOUBLE:
            self._preshifted(integer_part << 1, negative)
            return
        # Fractional value: the integer part (doubled, low bit set) and as many fraction bytes
        # as fit in 8 bytes, with the continuation marker in the two lowest bits.
        fraction_bytes = _clz64(integer_part << 1) // 8
        self.out.append(_NUM_NEG_8 + fraction_bytes if negative else _NUM_POS_8 - fraction_bytes)
        encoding = int(math.ldexp(magnitude, 8 * fraction_bytes))
        encoding += (integer_part + 1) << (fraction_bytes * 8)
        encoding |= dcm
        data = encoding.to_bytes(8, "big")
        self.out += _invert(data) if negative else data

    def _small_double(self, number: float, dcm: int) -> None:
        negative = number < 0
        magnitude = -number if negative else number
        self.out.append(_NUM_NEG_SMALL if negative else _NUM_POS_SMALL)
        if magnitude >= _TINIEST_2BIT_DCM:
            encoded = (_double_bits(magnitude) << 2) | dcm
        else:
            encoded = (_double_bits(magnitude * math.ldexp(1.0, 256)) << 1) | (dcm != 0)
            encoded += 1 << 62
        data = (encoded & _U64).to_bytes(8, "big")
        self.out += _invert(data) if negative else data

    def _large_double(self, number: float, dcm: int) -> None:
        self.out.append(_NUM_POS_LARGE if number > 0 else _NUM_NEG_LARGE)
        if math.isfinite(number):
            encoded = ((_double_bits(number) << 1) & ~(1 << 63) & _U64) | (dcm != 0)
        else:
            encoded = _U64
        data = encoded.to_bytes(8, "big")
        self.out += data if number > 0 else _invert(data)

    def _decimal(self, number: decimal.Decimal) -> None:
        bits = self.type_bits
        negative = number.is_signed()
        if number.is_nan():
            self.out.append(_NUM_NAN)
            bits.append_numeric(_TB_DECIMAL)
            return
        if number.is_infinite():
            self.out.append(_NUM_NEG_LARGE if negative else _NUM_POS_LARGE)
            self.out += b"\x00" * 8 if negative else b"\xff" * 8
            bits.append_numeric(_TB_DECIMAL)
            return
        biased_exponent = number.as_tuple().exponent + _DECIMAL_BIAS  # type: ignore[operator]
        if number.is_zero():
            which = biased_exponent + (_DECIMAL_MAX_BIASED_EXPONENT + 1 if negative else 0)
            bits.append_numeric(3)
            bits.append_code((which >> 12) + _TB_DECIMAL_ZERO_0, 3)
            bits.append_code(which & 0xFFF, 12)
            self.out.append(_NUM_ZERO)
            return
        bits.append_numeric(_TB_DECIMAL)
        bits.append_code(biased_exponent & ((1 << _DECIMAL_EXPONENT_BITS) - 1),
                         _DECIMAL_EXPONENT_BITS)
        as_double = _toward_zero_double(number)
        if decimal.Decimal(as_double) == number or not (
                _TINIEST_2BIT_DCM <= abs(as_double) < 2.0 ** 53):
            self._double(as_double, _DCM_EQUAL_TO_DOUBLE)
        else:
            # Simplified (see module docstring): the double, flagged "equal up to 15 digits".
            self._double(as_double, _DCM_EQUAL_TO_DOUBLE_ROUNDED_15)


def _toward_zero_double(number: decimal.Decimal) -> float:
    result = float(number)
    if math.isinf(result):
        return math.copysign(1.7976931348623157e308, result)
    if abs(decimal.Decimal(result)) > abs(number):
        result = math.nextafter(result, 0.0)
    return result


def _regex_flags(flags: int) -> str:
    return "".join(letter for letter, bit in (("i", re.I), ("l", re.L), ("m", re.M),
                                              ("s", re.S), ("u", re.U), ("x", re.X))
                   if flags & bit)


def _generic_type(value: Any) -> int:
    if value is None:
        return _NULLISH
    if isinstance(value, bool):
        return _BOOL_FALSE
    if isinstance(value, (int, float, Decimal128)):
        return _NUMERIC
    if isinstance(value, Code):  # before str: Code subclasses str
        return _CODE if value.scope is None else _CODE_WITH_SCOPE
    if isinstance(value, str):
        return _STRING
    if isinstance(value, (Mapping, DBRef)):
        return _OBJECT
    if isinstance(value, (list, tuple)):
        return _ARRAY
    if isinstance(value, (Binary, bytes, bytearray, uuid.UUID)):
        return _BINDATA
    if isinstance(value, ObjectId):
        return _OID
    if isinstance(value, (datetime.datetime, DatetimeMS)):
        return _DATE
    if isinstance(value, Timestamp):
        return _TIMESTAMP
    if isinstance(value, (Regex, re.Pattern)):
        return _REGEX
    if isinstance(value, MinKey):
        return _MINKEY
    if isinstance(value, MaxKey):
        return _MAXKEY
    raise TypeError(f"cannot encode {type(value).__name__} in a resume token")


# -- tokens --------------------------------------------------------------------------------------


class Token(NamedTuple):
    """A token document plus the key that orders it exactly as the server compares tokens."""

    document: dict[str, Any]
    sort_key: tuple


def _sort_key(cluster_time: Timestamp, token_type: int, txn_op_index: int, from_invalidate: bool,
              uuid_bytes: bytes, event_bytes: bytes, fragment_bytes: bytes) -> tuple:
    # Field by field as the server's compareAgainstClientResumeToken; the version is not part of
    # the comparison, and the UUID/eventIdentifier compare in KeyString byte order.
    return (cluster_time.time, cluster_time.inc, token_type, txn_op_index, from_invalidate,
            uuid_bytes, event_bytes, fragment_bytes)


def _build(cluster_time: Timestamp, token_type: int, txn_op_index: int, from_invalidate: bool,
           collection_uuid: uuid.UUID | None, event_identifier: Mapping[str, Any] | None,
           fragment_num: int | None = None) -> Token:
    encoder = _Encoder()
    encoder.value(cluster_time)
    encoder.value(TOKEN_VERSION)
    encoder.value(token_type)
    encoder.value(txn_op_index)
    encoder.value(from_invalidate)
    uuid_start = len(encoder.out)
    encoder.value(collection_uuid)
    event_start = len(encoder.out)
    if event_identifier is not None:
        encoder.value(event_identifier)
    fragment_start = len(encoder.out)
    if fragment_num is not None:
        encoder.value(fragment_num)
    out = encoder.out
    key = _sort_key(cluster_time, token_type, txn_op_index, from_invalidate,
                    bytes(out[uuid_start:event_start]), bytes(out[event_start:fragment_start]),
                    bytes(out[fragment_start:]))
    out.append(_END)
    document: dict[str, Any] = {"_data": out.hex().upper()}
    type_bits = encoder.type_bits.serialize()
    if type_bits is not None:
        document["_typeBits"] = Binary(type_bits, 0)
    return Token(document, key)


def build_event_token(cluster_time: Timestamp, txn_op_index: int,
                      collection_uuid: uuid.UUID | None, event_identifier: Mapping[str, Any],
                      from_invalidate: bool = False, fragment_num: int | None = None) -> Token:
    """``fragment_num``: the token of one fragment of a split event (0 for the first)."""
    return _build(cluster_time, EVENT_TOKEN, txn_op_index, from_invalidate, collection_uuid,
                  event_identifier, fragment_num)


def build_high_water_mark(cluster_time: Timestamp) -> Token:
    return _build(cluster_time, HIGH_WATER_MARK_TOKEN, 0, False, None, None)


def event_token(cluster_time: Timestamp, txn_op_index: int, collection_uuid: uuid.UUID | None,
                event_identifier: Mapping[str, Any], from_invalidate: bool = False
                ) -> dict[str, Any]:
    """The ``_id`` of a change event: ``{_data: HEX}`` (plus ``_typeBits`` when needed)."""
    return build_event_token(cluster_time, txn_op_index, collection_uuid, event_identifier,
                             from_invalidate).document


def high_water_mark(cluster_time: Timestamp) -> dict[str, Any]:
    """A token that resumes at ``cluster_time`` without naming an event (PBRT when idle)."""
    return build_high_water_mark(cluster_time).document


# -- decoding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeTokenData:
    cluster_time: Timestamp
    version: int
    token_type: int
    txn_op_index: int
    from_invalidate: bool
    uuid: uuid.UUID | None
    event_identifier: dict[str, Any] | None
    fragment_num: int | None
    sort_key: tuple

    @property
    def is_high_water_mark(self) -> bool:
        return self.token_type == HIGH_WATER_MARK_TOKEN


class _Malformed(Exception):
    pass


class _TypeBitsReader:
    def __init__(self, buffer: bytes) -> None:
        if not buffer:
            self.data = b""
        elif 0 < buffer[0] < 0x80:
            self.data = buffer[:1]
        elif buffer[0] > 0x80:
            self.data = buffer[1:1 + (buffer[0] & 0x7F)]
        elif buffer[0] == 0x80:
            size = struct.unpack("<I", buffer[1:5])[0]
            self.data = buffer[5:5 + size]
        else:
            self.data = b""
        self.position = 0
        self.all_zeros = not any(self.data)

    def bit(self) -> int:
        if self.all_zeros:
            return 0
        index = self.position
        self.position += 1
        if index // 8 >= len(self.data):
            raise _Malformed("Invalid size byte(s).")
        return (self.data[index // 8] >> (index % 8)) & 1

    def read(self, width: int) -> int:
        value = 0
        for _ in range(width):
            value = (value << 1) | self.bit()
        return value


class _Decoder:
    def __init__(self, data: bytes, type_bits: bytes) -> None:
        self.data = data
        self.position = 0
        self.bits = _TypeBitsReader(type_bits)

    def take(self, count: int, inverted: bool = False) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise _Malformed("unexpected end of data")
        chunk = self.data[self.position:end]
        self.position = end
        return _invert(chunk) if inverted else chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def cstring(self) -> bytes:
        end = self.data.find(b"\x00", self.position)
        if end < 0:
            raise _Malformed("Failed to find null terminator in string.")
        text = self.data[self.position:end]
        self.position = end + 1
        return text

    def string_like(self) -> str:
        parts = [self.cstring()]
        while self.position < len(self.data) and self.data[self.position] == 0xFF:
            self.position += 1
            parts.append(self.cstring())
        return b"\x00".join(parts).decode()

    def value(self, ctype: int) -> Any:
        if ctype == _MINKEY:
            return MinKey()
        if ctype == _MAXKEY:
            return MaxKey()
        if ctype in (_NULLISH, _UNDEFINED):
            return None
        if ctype in (_BOOL_FALSE, _BOOL_TRUE):
            return ctype == _BOOL_TRUE
        if ctype == _DATE:
            millis = int.from_bytes(self.take(8), "big") ^ (1 << 63)
            if millis >= 1 << 63:
                millis -= 1 << 64
            try:
                return _EPOCH + datetime.timedelta(milliseconds=millis)
            except OverflowError:
                return DatetimeMS(millis)
        if ctype == _TIMESTAMP:
            return Timestamp(*struct.unpack(">II", self.take(8)))
        if ctype == _OID:
            return ObjectId(self.take(12))
        if ctype == _STRING:
            self.bits.bit()  # string or symbol: both decode to str
            return self.string_like()
        if ctype == _CODE:
            return Code(self.string_like())
        if ctype == _CODE_WITH_SCOPE:
            code = self.string_like()
            return Code(code, self.fields())
        if ctype == _BINDATA:
            size = self.byte()
            if size == 0xFF:
                size = struct.unpack(">I", self.take(4))[0]
            subtype = self.byte()
            data = self.take(size)
            return data if subtype == 0 else Binary(data, subtype)
        if ctype == _REGEX:
            pattern = self.cstring().decode()
            return Regex(pattern, self.cstring().decode())
        if ctype == _DBREF:
            size = struct.unpack(">I", self.take(4))[0]
            collection = self.take(size).decode()
            return DBRef(collection, ObjectId(self.take(12)))
        if ctype == _OBJECT:
            return self.fields()
        if ctype == _ARRAY:
            items = []
            while (element := self.byte()) != 0:
                items.append(self.value(element))
            return items
        if _NUM_NAN <= ctype <= _NUM_POS_LARGE:
            return self.number(ctype)
        raise _Malformed(f"Unknown type: {ctype}")

    def fields(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        while self.byte() != 0:
            name = self.cstring().decode()
            document[name] = self.value(self.byte())
        return document

    def number(self, ctype: int) -> Any:
        if ctype == _NUM_NAN:
            kind = self.bits.read(2)
            return Decimal128("NaN") if kind == _TB_DECIMAL else math.nan
        if ctype == _NUM_ZERO:
            return self.zero()
        negative = ctype < _NUM_ZERO
        kind = self.bits.read(2)
        if ctype in (_NUM_NEG_LARGE, _NUM_POS_LARGE):
            encoded = int.from_bytes(self.take(8, negative), "big")
            if encoded == _U64:
                return self.typed(math.inf, kind, negative, None)
            if encoded & (1 << 63):
                raise _Malformed("Invalid type bits for decimal number.")
            if encoded & 1:
                self.take(8)  # decimal continuation (only for decimals we encode approximately)
            magnitude = _bits_double((encoded >> 1) | (1 << 62))
            if kind == _TB_LONG:
                return Int64(-(1 << 63))
            return self.typed(magnitude, kind, negative, None)
        if ctype in (_NUM_NEG_SMALL, _NUM_POS_SMALL):
            encoded = int.from_bytes(self.take(8, negative), "big")
            prefix = encoded >> 62
            if prefix == 3:
                dcm = encoded & 3
                if dcm > 1:
                    self.take(8)
                return self.typed(_bits_double(encoded >> 2), kind, negative, dcm)
            if prefix in (1, 2):
                if encoded & 1:
                    self.take(8)
                scaled = _bits_double((encoded - (1 << 62)) >> 1)
                return self.typed(scaled * math.ldexp(1.0, -256), kind, negative, None)
            low = int.from_bytes(self.take(8, negative), "big")
            value = Decimal128.from_bid(low.to_bytes(8, "little") + encoded.to_bytes(8, "little"))
            return self.typed_decimal(value.to_decimal(), negative)
        size = (ctype - _NUM_POS_1 + 1) if ctype >= _NUM_POS_1 else (_NUM_NEG_1 - ctype + 1)
        encoded = int.from_bytes(self.take(size, negative), "big")
        integer_part = encoded >> 1
        if not encoded & 1:
            signed = -integer_part if negative else integer_part
            if kind == _TB_INT:
                return signed
            if kind == _TB_LONG:
                return Int64(signed)
            if kind == _TB_DOUBLE:
                return float(signed)
            return self.typed_decimal(decimal.Decimal(integer_part), negative)
        fraction_bytes = 8 - size
        encoded_fraction = integer_part
        for byte in self.take(fraction_bytes, negative):
            encoded_fraction = (encoded_fraction << 8) | byte
        magnitude = math.ldexp(float(encoded_fraction & ~3), -8 * fraction_bytes)
        dcm = (encoded_fraction & 3) if fraction_bytes else 3
        if kind == _TB_DECIMAL and dcm > 1:
            self.take(8)
        return self.typed(magnitude, kind, negative, dcm)

    def zero(self) -> Any:
        kind = self.bits.read(2)
        if kind == _TB_INT:
            return 0
        if kind == _TB_LONG:
            return Int64(0)
        if kind == _TB_DOUBLE:
            return 0.0
        code = (kind << 3) | self.bits.read(3)
        if code == _TB_NEGATIVE_DOUBLE_ZERO:
            return -0.0
        if code < _TB_DECIMAL_ZERO_0:
            raise _Malformed("Invalid numeric zero decimal.")
        which = ((code - _TB_DECIMAL_ZERO_0) << 12) | self.bits.read(12)
        negative = which > _DECIMAL_MAX_BIASED_EXPONENT
        exponent = which - (_DECIMAL_MAX_BIASED_EXPONENT + 1 if negative else 0) - _DECIMAL_BIAS
        return Decimal128(decimal.Decimal((int(negative), (0,), exponent)))

    def typed(self, magnitude: float, kind: int, negative: bool, dcm: int | None) -> Any:
        if kind == _TB_DECIMAL:
            if math.isinf(magnitude):
                return Decimal128("-Infinity" if negative else "Infinity")
            exact = decimal.Decimal(magnitude)
            if dcm == _DCM_EQUAL_TO_DOUBLE_ROUNDED_15:
                context = decimal.Context(prec=15, rounding=decimal.ROUND_CEILING)
                exact = context.plus(exact)
            return self.typed_decimal(exact, negative)
        return -magnitude if negative else magnitude

    def typed_decimal(self, magnitude: decimal.Decimal, negative: bool) -> Decimal128:
        stored = self.bits.read(_DECIMAL_EXPONENT_BITS)
        context = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN)
        value = context.plus(magnitude)
        normalized = value.normalize(context)
        digits = len(normalized.as_tuple().digits)
        highest = normalized.as_tuple().exponent
        assert isinstance(highest, int)
        # The server keeps the low 6 bits of the exponent: pick the exponent that has them and
        # represents the value exactly within 34 digits.
        for exponent in range(highest, highest - (34 - digits) - 1, -1):
            if (exponent + _DECIMAL_BIAS) & ((1 << _DECIMAL_EXPONENT_BITS) - 1) == stored:
                normalized = normalized.quantize(decimal.Decimal((0, (1,), exponent)),
                                                 context=context)
                break
        return Decimal128(normalized.copy_negate() if negative else normalized)


def _malformed(message: str, code: int = 9) -> CommandError:
    return CommandError(code, message)


def decode_token(token: Any) -> ResumeTokenData:
    """Parse a client-supplied token; any defect is a non-resumable error, as on the server."""
    if not isinstance(token, Mapping):
        raise _malformed(f"Bad resume token: expected an object, got {type(token).__name__}",
                         40647)
    data = token.get("_data")
    if not isinstance(data, str):
        raise _malformed("Bad resume token: _data of missing or of wrong type. Expected string, "
                         f"got {dict(token)}", 40647)
    raw_bits = token.get("_typeBits")
    if isinstance(raw_bits, Binary) and raw_bits.subtype == 0:
        type_bits = bytes(raw_bits)
    elif isinstance(raw_bits, bytes):
        type_bits = raw_bits
    elif raw_bits is None:
        type_bits = b""
    else:
        raise _malformed(f"Bad resume token: _typeBits of wrong type {dict(token)}", 40648)
    try:
        payload = bytes.fromhex(data)
    except ValueError:
        raise _malformed("resume token string was not a valid hex string") from None
    try:
        return _parse(payload, type_bits)
    except (_Malformed, struct.error, ValueError, IndexError) as exc:
        raise _malformed(f"KeyString format error: {exc}") from None


def _parse(payload: bytes, type_bits: bytes) -> ResumeTokenData:
    decoder = _Decoder(payload, type_bits)
    elements: list[tuple[Any, bytes]] = []
    while decoder.position < len(payload):
        ctype = decoder.byte()
        if ctype == _END:
            break
        start = decoder.position - 1
        value = decoder.value(ctype)
        elements.append((value, payload[start:decoder.position]))
    values = iter(elements)

    def next_element(code: int, message: str) -> tuple[Any, bytes]:
        element = next(values, None)
        if element is None:
            raise CommandError(code, message)
        return element

    cluster_time, _ = next_element(40649, "invalid empty resume token")
    if not isinstance(cluster_time, Timestamp):
        raise CommandError(9, "Resume token clusterTime is not a timestamp")
    version, _ = next_element(50796, "Resume Token does not contain version")
    if not _is_int32(version):
        raise CommandError(50854, "Invalid resume token: wrong type for version")
    if version not in (0, 1, 2):
        raise CommandError(50795, "Invalid Resume Token: only supports version 0, 1 and 2")
    token_type = EVENT_TOKEN
    if version >= 1:
        token_type, _ = next_element(51055, "Resume Token does not contain tokenType")
        if not _is_int32(token_type):
            raise CommandError(51056, "Resume Token tokenType is not an int.")
        if token_type not in (EVENT_TOKEN, HIGH_WATER_MARK_TOKEN):
            raise CommandError(51057, f"Token type {token_type} not recognized")
    txn_op_index, _ = next_element(50793, "Resume Token does not contain txnOpIndex")
    if not _is_int32(txn_op_index):
        raise CommandError(50855, "Resume Token txnOpIndex is not an integer")
    if txn_op_index < 0:
        raise CommandError(50794, "Invalid Resume Token: txnOpIndex should be non-negative")
    from_invalidate = False
    if version >= 1:
        from_invalidate, _ = next_element(50872, "Resume Token does not contain fromInvalidate")
        if not isinstance(from_invalidate, bool):
            raise CommandError(50870, "Resume Token fromInvalidate is not a boolean.")
    collection_uuid: uuid.UUID | None = None
    uuid_bytes = event_bytes = fragment_bytes = b""
    event_identifier: dict[str, Any] | None = None
    fragment_num: int | None = None
    element = next(values, None)
    if element is None:
        if version >= 2:
            raise CommandError(6189500, "Expected UUID or null")
    else:
        uuid_value, uuid_bytes = element
        if uuid_value is not None:
            if not (isinstance(uuid_value, Binary) and uuid_value.subtype == 4
                    and len(uuid_value) == 16):
                raise CommandError(9, "Resume token UUID is not a UUID")
            collection_uuid = uuid.UUID(bytes=bytes(uuid_value))
        element = next(values, None)
        if token_type == HIGH_WATER_MARK_TOKEN and element is not None:
            raise CommandError(6189504, "Invalid high water mark token")
        if element is None:
            if token_type == EVENT_TOKEN and version >= 2:
                raise CommandError(6189501, "Expected an eventIdentifier for an event resume token")
        else:
            event_identifier, event_bytes = element
            if not isinstance(event_identifier, dict):
                raise CommandError(6189503, "Resume Token eventIdentifier is not an object")
            element = next(values, None)
            if element is not None and version >= 2:
                fragment_num, fragment_bytes = element
                if not _is_int32(fragment_num) or fragment_num < 0:
                    raise CommandError(7182501, "Resume token 'fragmentNum' must be a "
                                                "non-negative integer.")
                element = next(values, None)
            if element is not None:
                raise CommandError(40646, "invalid oversized resume token")
    return ResumeTokenData(
        cluster_time=cluster_time, version=version, token_type=token_type,
        txn_op_index=txn_op_index, from_invalidate=from_invalidate, uuid=collection_uuid,
        event_identifier=event_identifier, fragment_num=fragment_num,
        sort_key=_sort_key(cluster_time, token_type, txn_op_index, from_invalidate, uuid_bytes,
                           event_bytes, fragment_bytes))


def _is_int32(value: Any) -> bool:
    return type(value) is int
