"""Every BSON type MongoDB accepts as ``_id`` works end to end; the ones it refuses are refused
with its error (fixDocumentForInsert: regex, undefined and arrays are BadValue)."""

from __future__ import annotations

import datetime
import socket
import struct
from typing import Any, Iterator

import bson
import pymongo
import pytest
from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu import wire
from mongoemu.bsonvalues import sort_key, type_name
from mongoemu.testing import EmulatorProcess

ACCEPTED: list[Any] = [
    Code("function () { return 1; }"), Code("x", {"a": 1}), MinKey(), MaxKey(), Int64(7), 2.5,
    Decimal128("1.5"), Timestamp(5, 1), Binary(b"ab", 0), Binary(b"ab", 5), "s", None, True,
    datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), ObjectId(), {"a": Code("y")},
]


@pytest.fixture(scope="module")
def coll(replset: EmulatorProcess) -> Iterator[pymongo.collection.Collection]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database("t_id_types")
        yield client.t_id_types.c
        client.drop_database("t_id_types")


@pytest.mark.parametrize("value", ACCEPTED, ids=lambda v: type(v).__name__)
def test_accepted_id_round_trips(coll: pymongo.collection.Collection, value: Any) -> None:
    coll.delete_many({})
    coll.insert_one({"_id": value, "x": 1})
    found = coll.find_one({"_id": value})
    assert found is not None
    assert bson.encode({"v": found["_id"]}) == bson.encode({"v": value})  # same type and bytes
    assert coll.update_one({"_id": value}, {"$set": {"x": 2}}).modified_count == 1
    assert coll.find_one({"_id": value})["x"] == 2
    coll.create_index("x", unique=True)
    assert coll.delete_one({"_id": value}).deleted_count == 1
    coll.drop_indexes()


def test_code_is_neither_a_string_nor_code_with_scope(coll: pymongo.collection.Collection) -> None:
    coll.delete_many({})
    coll.insert_many([{"_id": "x"}, {"_id": Code("x")}, {"_id": Code("x", {"a": 1})}])
    assert coll.count_documents({}) == 3
    assert [type(d["_id"]) for d in coll.find().sort("_id", 1)] == [str, Code, Code]
    assert coll.find_one({"_id": Code("x")})["_id"].scope is None
    assert coll.find_one({"_id": {"$type": "javascript"}})["_id"] == Code("x")
    assert coll.find_one({"_id": {"$type": "javascriptWithScope"}})["_id"].scope == {"a": 1}


def test_bson_order_and_type_names() -> None:
    # Canonical order: ... RegEx < DBPointer < Code < CodeWScope < MaxKey.
    ordered = [bson.regex.Regex("a"), Code("z"), Code("a", {}), MaxKey()]
    assert sorted(reversed(ordered), key=sort_key) == ordered
    assert sort_key(Code("a")) < sort_key(Code("b"))
    assert sort_key(Code("a", {"x": 1})) < sort_key(Code("a", {"x": 2}))
    assert type_name(Code("a")) == "javascript"
    assert type_name(Code("a", {})) == "javascriptWithScope"


def _insert_raw(emulator: EmulatorProcess, documents: list[bytes]) -> dict:
    """An insert whose documents travel as a kind-1 section, byte for byte as given."""
    body = bson.encode({"insert": "c", "$db": "t_id_types"})
    sequence = b"documents\x00" + b"".join(documents)
    payload = (struct.pack("<I", 0) + b"\x00" + body + b"\x01"
               + struct.pack("<i", 4 + len(sequence)) + sequence)
    message = struct.pack("<iiii", 16 + len(payload), 7, 0, wire.OP_MSG) + payload
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(message)
        header = sock.recv(16, socket.MSG_WAITALL)
        length = struct.unpack("<i", header[:4])[0]
        rest = sock.recv(length - 16, socket.MSG_WAITALL)
    return bson.decode(rest[5:])


def _document(element: bytes) -> bytes:
    return struct.pack("<i", 4 + len(element) + 1) + element + b"\x00"


def test_refused_id_types(replset: EmulatorProcess, coll: pymongo.collection.Collection) -> None:
    undefined_id = _document(b"\x06_id\x00")
    reply = _insert_raw(replset, [undefined_id])
    assert reply["n"] == 0
    error = reply["writeErrors"][0]
    assert (error["code"], error["errmsg"]) == (2, "can't use a undefined for _id")
    for value, text in ((bson.regex.Regex("a"), "regex"), ([1], "an array")):
        with pytest.raises(pymongo.errors.WriteError) as info:
            coll.insert_one({"_id": value})
        assert info.value.code == 2
        assert info.value.details["errmsg"] == (
            f"can't use {'a ' if text == 'regex' else ''}{text} for _id")
