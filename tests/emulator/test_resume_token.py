"""Resume tokens: the server's KeyString V1 bytes, their ordering, and decoding."""

from __future__ import annotations

import datetime
import math
import uuid

import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from mongoemu.changestream import decode_token, event_token, high_water_mark
from mongoemu.errors import CommandError

# The brief's worked example (a real 7.x insert token). The brief elides the UUID's middle
# bytes, so any UUID with the same first and last bytes must give exactly these bytes.
EXAMPLE_UUID = uuid.UUID("d3284e04-5a6b-4c7d-8e9f-a0b1c2d34c4c")
EXAMPLE_OID = ObjectId("67C867A2FB1CBCD579F4E4DE")
EXAMPLE_DATA = (
    "8267C867A200000019"  # clusterTime 1741186978 / 25
    "2B04"  # version 2
    "2C0100"  # tokenType 128 (event)
    "29"  # txnOpIndex 0
    "6E"  # fromInvalidate false
    "5A1004" + EXAMPLE_UUID.hex.upper()  # collection UUID (BinData subtype 4, 16 bytes)
    + "46"  # eventIdentifier: {
    + "3C" + b"operationType".hex().upper() + "00"
    + "3C" + b"insert".hex().upper() + "00"
    + "46" + b"documentKey".hex().upper() + "00"
    + "46" + "64" + b"_id".hex().upper() + "00" + "64" + "67C867A2FB1CBCD579F4E4DE" + "00"
    + "00"  # }
    + "04"  # end
)
INSERT_ID = {"operationType": "insert", "documentKey": {"_id": EXAMPLE_OID}}


def _token_for_id(value: object, ts: Timestamp = Timestamp(100, 1), txn_op_index: int = 0,
                  collection_uuid: uuid.UUID = EXAMPLE_UUID) -> dict:
    return event_token(ts, txn_op_index, collection_uuid,
                       {"operationType": "insert", "documentKey": {"_id": value}})


# -- exact bytes ---------------------------------------------------------------------------------


def test_worked_example_is_byte_identical() -> None:
    token = event_token(Timestamp(1741186978, 25), 0, EXAMPLE_UUID, INSERT_ID)
    assert token == {"_data": EXAMPLE_DATA}


def test_high_water_mark_example_is_byte_identical() -> None:
    expected = {"_data": "8267C867A3000000012B0429296E1404"}
    assert high_water_mark(Timestamp(0x67C867A3, 1)) == expected


def test_worked_example_decodes_to_its_fields() -> None:
    data = decode_token({"_data": EXAMPLE_DATA})
    assert data.cluster_time == Timestamp(1741186978, 25)
    assert (data.version, data.token_type, data.txn_op_index) == (2, 128, 0)
    assert data.from_invalidate is False
    assert data.uuid == EXAMPLE_UUID
    assert data.event_identifier == INSERT_ID
    assert not data.is_high_water_mark


def test_high_water_mark_decodes() -> None:
    data = decode_token(high_water_mark(Timestamp(5, 6)))
    assert data.is_high_water_mark
    assert (data.cluster_time, data.uuid, data.event_identifier) == (Timestamp(5, 6), None, None)


@pytest.mark.parametrize("value, hex_value", [
    (0, "29"), (1, "2B02"), (2, "2B04"), (7, "2B0E"), (128, "2C0100"), (-1, "27FD"),
    (-128, "26FEFF"), (1.5, "2B0380000000000000"), (True, "6F"), (False, "6E"), (None, "14"),
    ("a\x00b", "3C6100FF6200"), (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
                                 "788000000000000000"),
    ([1, "x"], "502B023C780000"), ({"k": 1}, "461E6B002B0200"),
    (Binary(b"\x01\x02", 0), "5A020001 02".replace(" ", "")),
])
def test_value_encodings(value: object, hex_value: str) -> None:
    data = _token_for_id(value)["_data"]
    prefix = "46" + "3C" + b"operationType".hex().upper() + "00" + "3C" + b"insert".hex().upper()
    element = "46" + b"documentKey".hex().upper() + "00" + "46"
    assert prefix in data and element in data
    body = data.split(element, 1)[1]
    assert body[2 + len(b"_id".hex()) + 2:].startswith(hex_value)


def test_type_bits_only_when_types_are_lossy() -> None:
    assert "_typeBits" not in _token_for_id(5)  # int32: all type bits zero
    long_token = _token_for_id(Int64(5))
    double_token = _token_for_id(5.0)
    # Same _data (5 == 5.0 == Int64(5)), different type bits.
    assert long_token["_data"] == double_token["_data"] == _token_for_id(5)["_data"]
    # 7 zero bits (version, tokenType, txnOpIndex, "insert"), then the number's 2 bits:
    # long = 0b01 -> bit 8 set; double = 0b10 -> bit 7 set. Two data bytes: size byte 0x82.
    assert long_token["_typeBits"] == Binary(b"\x82\x00\x01", 0)
    assert double_token["_typeBits"] == Binary(b"\x82\x80\x00", 0)
    assert isinstance(decode_token(long_token).event_identifier["documentKey"]["_id"], Int64)
    assert isinstance(decode_token(double_token).event_identifier["documentKey"]["_id"], float)


def test_invalidate_and_high_water_mark_positions() -> None:
    ts = Timestamp(100, 7)
    event = _token_for_id(1, ts)
    invalidate = event_token(ts, 0, EXAMPLE_UUID,
                             {"operationType": "insert", "documentKey": {"_id": 1}},
                             from_invalidate=True)
    assert high_water_mark(ts)["_data"] < event["_data"] < invalidate["_data"]
    assert invalidate["_data"] < high_water_mark(Timestamp(100, 8))["_data"]
    assert decode_token(invalidate).from_invalidate is True


# -- ordering and round trips ----------------------------------------------------------------


# BSON strings are UTF-8: no lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",)))
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=5)
timestamps = st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@settings(max_examples=200)
@given(a=st.tuples(timestamps, st.integers(0, 2**31 - 1)),
       b=st.tuples(timestamps, st.integers(0, 2**31 - 1)))
def test_tokens_order_by_time_then_txn_op_index(a: tuple, b: tuple) -> None:
    (ts_a, index_a), (ts_b, index_b) = a, b
    token_a, token_b = _token_for_id(1, ts_a, index_a), _token_for_id(1, ts_b, index_b)
    key_a = (ts_a.time, ts_a.inc, index_a)
    key_b = (ts_b.time, ts_b.inc, index_b)
    assert (token_a["_data"] < token_b["_data"]) == (key_a < key_b)
    assert (token_a["_data"] == token_b["_data"]) == (key_a == key_b)
    assert (decode_token(token_a).sort_key < decode_token(token_b).sort_key) == (key_a < key_b)


numbers = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False),
)


def _numeric(value: object) -> object:
    return int(value) if isinstance(value, int) else value


@settings(max_examples=400)
@given(numbers, numbers)
def test_numbers_order_like_bson(a: object, b: object) -> None:
    data_a, data_b = _token_for_id(a)["_data"], _token_for_id(b)["_data"]
    x, y = _numeric(a), _numeric(b)
    if x < y:  # type: ignore[operator]
        assert data_a < data_b
    elif x > y:  # type: ignore[operator]
        assert data_a > data_b
    else:
        assert data_a == data_b


@settings(max_examples=200)
@given(texts, texts)
def test_strings_order_by_utf8_bytes(a: str, b: str) -> None:
    data_a, data_b = _token_for_id(a)["_data"], _token_for_id(b)["_data"]
    assert (data_a < data_b) == (a.encode() < b.encode())


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64), st.floats(allow_nan=False), texts,
    st.binary(max_size=300).map(lambda data: Binary(data, 5)),
    st.builds(ObjectId), timestamps,
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1))
    .map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000,
                             tzinfo=datetime.timezone.utc)),
)
values = st.recursive(leaves, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(names, children, max_size=4)), max_leaves=12)


def _same(a: object, b: object) -> bool:
    """Equal with the same BSON types (``1 == 1.0`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]
    return a == b


@settings(max_examples=300)
@given(values)
def test_document_keys_round_trip(value: object) -> None:
    token = _token_for_id(value, Timestamp(3, 4), 2)
    data = decode_token(token)
    assert (data.cluster_time, data.txn_op_index, data.uuid) == (Timestamp(3, 4), 2, EXAMPLE_UUID)
    assert _same(data.event_identifier["documentKey"]["_id"], value)
    assert data.sort_key == decode_token({"_data": token["_data"].lower(),
                                          **{k: v for k, v in token.items() if k != "_data"}}
                                         ).sort_key


@pytest.mark.parametrize("value", [Decimal128("1.10"), Decimal128("-2.5E+10"), Decimal128("0.1"),
                                   Decimal128("-0E+3"), Decimal128("NaN"),
                                   Decimal128("Infinity"), Decimal128("7")])
def test_decimals_round_trip(value: Decimal128) -> None:
    decoded = decode_token(_token_for_id(value)).event_identifier["documentKey"]["_id"]
    assert isinstance(decoded, Decimal128)
    assert str(decoded) == str(value)


def test_decimal_orders_with_other_numbers() -> None:
    assert _token_for_id(Decimal128("1.5"))["_data"] == _token_for_id(1.5)["_data"]
    # Decimal 0.1 is below the double 0.1 (0.1000000000000000055...), as BSON orders them.
    assert _token_for_id(Decimal128("0.1"))["_data"] < _token_for_id(0.1)["_data"]
    assert _token_for_id(2)["_data"] < _token_for_id(Decimal128("2.000001"))["_data"]


def test_dropdatabase_style_token_has_null_uuid() -> None:
    token = event_token(Timestamp(9, 9), 0, None, {"operationType": "dropDatabase"})
    assert token["_data"].startswith("8200000009000000092B042C0100296E14")
    data = decode_token(token)
    assert data.uuid is None and data.event_identifier == {"operationType": "dropDatabase"}


# -- malformed tokens ----------------------------------------------------------------------


@pytest.mark.parametrize("token, code", [
    ({}, 40647),
    ({"_data": 5}, 40647),
    ({"_data": "8267"}, 9),  # truncated timestamp
    ({"_data": "ZZ"}, 9),
    ({"_data": high_water_mark(Timestamp(1, 1))["_data"], "_typeBits": "x"}, 40648),
    ({"_data": "04"}, 40649),
    ({"_data": "820000000100000001" "2B06" "04"}, 50795),  # version 3
    ({"_data": "820000000100000001" "04"}, 50796),
    ({"_data": "820000000100000001" "2B04" "2C0100" "29" "6E" "1404"}, 6189501),
])
def test_malformed_tokens_are_rejected(token: dict, code: int) -> None:
    with pytest.raises(CommandError) as info:
        decode_token(token)
    assert info.value.code == code
