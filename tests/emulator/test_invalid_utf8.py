"""Strings that are not valid UTF-8 in a command. A server checks the BSON structure of what it
receives, not the UTF-8 of its strings (that is only the `validate` command's full check), so
it runs the command and stores such strings byte for byte; it never drops the connection."""

from __future__ import annotations

import socket
import struct
from typing import Any, Iterator

import bson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from mongoemu import wire
from mongoemu.testing import EmulatorProcess

DB = "t_invalid_utf8"
RAW_OPTIONS = CodecOptions(document_class=RawBSONDocument,
                           unicode_decode_error_handler="surrogateescape")
ESCAPING = CodecOptions(unicode_decode_error_handler="surrogateescape")


def element_string(name: bytes, value: bytes) -> bytes:
    return b"\x02" + name + b"\x00" + struct.pack("<i", len(value) + 1) + value + b"\x00"


def document(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", 4 + len(body) + 1) + body + b"\x00"


class Connection:
    """One socket, many OP_MSG commands: it must stay usable after each of them."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", emulator.port), timeout=10)
        self.request_id = 0

    def command(self, body: bytes, sequences: dict[str, list[bytes]] | None = None
                ) -> RawBSONDocument:
        self.request_id += 1
        payload = struct.pack("<I", 0) + b"\x00" + body
        for identifier, documents in (sequences or {}).items():
            section = identifier.encode() + b"\x00" + b"".join(documents)
            payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
        self.sock.sendall(struct.pack("<iiii", 16 + len(payload), self.request_id, 0,
                                      wire.OP_MSG) + payload)
        header = self._read(16)
        length = struct.unpack("<i", header[:4])[0]
        return bson.decode(self._read(length - 16)[5:], codec_options=RAW_OPTIONS)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(replset: EmulatorProcess) -> Iterator[Connection]:
    connection = Connection(replset)
    with pymongo.MongoClient(replset.uri) as client:
        client.drop_database(DB)
        yield connection
        client.drop_database(DB)
    connection.close()


def ok(reply: RawBSONDocument) -> Any:
    assert reply["ok"] == 1.0, bson.decode(reply.raw, codec_options=CodecOptions(
        unicode_decode_error_handler="replace"))
    return reply


def test_invalid_strings_are_stored_byte_for_byte(conn: Connection,
                                                  replset: EmulatorProcess) -> None:
    stored = document(element_string(b"_id", b"id\xff"), element_string(b"s", b"a\xc3"),
                      element_string(b"k\xfe", b"v"))
    insert = bson.encode({"insert": "c", "$db": DB})
    assert ok(conn.command(insert, {"documents": [stored]}))["n"] == 1
    # Matching on the invalid string finds it, and the bytes come back as they went in.
    find = document(element_string(b"find", b"c"),
                    b"\x03filter\x00" + document(element_string(b"s", b"a\xc3")),
                    element_string(b"$db", DB.encode()))
    batch = ok(conn.command(find))["cursor"]["firstBatch"]
    assert [doc.raw for doc in batch] == [stored]
    # An update keeps the other fields' bytes.
    update = bson.encode({"update": "c", "updates": [{"q": {}, "u": {"$set": {"n": 1}}}],
                          "$db": DB})
    assert ok(conn.command(update))["nModified"] == 1
    again = ok(conn.command(find))["cursor"]["firstBatch"][0]
    assert again.raw == document(element_string(b"_id", b"id\xff"),
                                 element_string(b"s", b"a\xc3"), element_string(b"k\xfe", b"v"),
                                 b"\x10n\x00" + struct.pack("<i", 1))
    with pymongo.MongoClient(replset.uri) as client:
        assert client.get_database(DB, codec_options=ESCAPING).c.find_one()["s"] == "a\udcc3"


def test_invalid_names_answer_and_keep_the_connection(conn: Connection) -> None:
    # An invalid collection name is just another name: nothing there.
    find = document(element_string(b"find", b"c\xff"), element_string(b"$db", DB.encode()))
    cursor = ok(conn.command(find))["cursor"]
    assert cursor["firstBatch"] == [] and cursor["ns"] == f"{DB}.c\udcff"
    assert ok(conn.command(bson.encode({"ping": 1, "$db": "admin"})))["ok"] == 1.0


def test_change_events_carry_the_bytes(conn: Connection, replset: EmulatorProcess) -> None:
    with pymongo.MongoClient(replset.uri) as client:
        with client.get_database(DB, codec_options=ESCAPING).c.watch(max_await_time_ms=200) \
                as stream:
            stored = document(element_string(b"_id", b"x"), element_string(b"s", b"\xed\xa0"))
            ok(conn.command(bson.encode({"insert": "c", "$db": DB}), {"documents": [stored]}))
            event = stream.next()
    assert event["fullDocument"] == {"_id": "x", "s": "\udced\udca0"}
