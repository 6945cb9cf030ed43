"""Fuzzing the frame parser and the command dispatcher: no input may crash the server."""

from __future__ import annotations

import socket
import struct

import bson
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mongoemu import wire
from mongoemu.commands.registry import REGISTRY
from mongoemu.testing import EmulatorProcess

FUZZ_SETTINGS = settings(max_examples=300, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


def _frame(opcode: int, payload: bytes, length: int | None = None) -> bytes:
    size = length if length is not None else 16 + len(payload)
    return struct.pack("<iiii", size, 7, 0, opcode) + payload


def _exchange(emulator: EmulatorProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> pymongo.MongoClient:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


def test_parser_rejects_malformed_frames() -> None:
    good = bson.encode({"ping": 1, "$db": "admin"})
    with pytest.raises(wire.ProtocolError):
        wire.parse_op_msg(1, b"\x00\x00\x00\x00\x02" + good)  # unknown section kind
    with pytest.raises(wire.ProtocolError):
        wire.parse_op_msg(1, b"\x04\x00\x00\x00\x00" + good)  # unknown required flag bit 2
    with pytest.raises(wire.ProtocolError):
        wire.parse_op_msg(1, b"\x00\x00\x00\x00\x00" + good[:-3])  # truncated document
    with pytest.raises(wire.ProtocolError):
        wire.parse_op_msg(1, b"\x00\x00\x00\x00\x00" + good + b"\x00" + good)  # two bodies
    with pytest.raises(wire.ProtocolError):
        wire.parse_header(struct.pack("<iiii", 49_000_000, 1, 0, wire.OP_MSG))
    parsed = wire.parse_op_msg(1, b"\x00\x00\x00\x00\x00" + good)
    assert parsed.body == {"ping": 1, "$db": "admin"}


def test_checksum_trailer_is_accepted(replset: EmulatorProcess) -> None:
    import crc32c
    body = b"\x01\x00\x00\x00\x00" + bson.encode({"ping": 1, "$db": "admin"})
    header = struct.pack("<iiii", 16 + len(body) + 4, 9, 0, wire.OP_MSG)
    trailer = struct.pack("<I", crc32c.crc32c(header + body))
    reply = _exchange(replset, header + body + trailer)
    assert len(reply) > 21
    assert bson.decode(reply[21:])["ok"] == 1.0
    assert struct.unpack("<i", reply[16:20])[0] == 0  # never sets checksumPresent on replies


@FUZZ_SETTINGS
@given(st.binary(max_size=512), st.sampled_from([wire.OP_MSG, wire.OP_QUERY, 2001, 2012, 99]),
       st.one_of(st.none(), st.integers(-10, 100_000_000)))
def test_random_frames_never_crash_the_server(replset: EmulatorProcess, client: pymongo.MongoClient,
                                              payload: bytes, opcode: int,
                                              length: int | None) -> None:
    _exchange(replset, _frame(opcode, payload, length))
    assert client.admin.command("ping")["ok"] == 1.0


@FUZZ_SETTINGS
@given(st.lists(st.integers(0, 4), max_size=4), st.binary(max_size=64))
def test_mutated_op_msg_never_crashes_the_server(replset: EmulatorProcess,
                                                 client: pymongo.MongoClient,
                                                 kinds: list[int], noise: bytes) -> None:
    payload = b"\x00\x00\x00\x00"
    for kind in kinds:
        payload += bytes([kind]) + bson.encode({"insert": "fuzz", "$db": "fuzz"}) + noise
    _exchange(replset, _frame(wire.OP_MSG, payload))
    assert client.admin.command("ping")["ok"] == 1.0


bson_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
              st.text(max_size=12), st.binary(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)

COMMAND_NAMES = sorted(name for name in REGISTRY
                       if name not in ("shutdown", "setUserWriteBlockMode", "configureFailPoint",
                                       "waitForFailPoint", "emulatorTruncateOplog",
                                       "emulatorSetOplogSize", "emulatorStepDown",
                                       "dropDatabase", "hello", "isMaster", "ismaster"))


@FUZZ_SETTINGS
@given(st.sampled_from(COMMAND_NAMES), bson_values,
       st.dictionaries(st.sampled_from(["filter", "documents", "updates", "deletes", "pipeline",
                                        "key", "query", "update", "sort", "projection", "cursor",
                                        "indexes", "index", "to", "limit", "batchSize", "hint",
                                        "collection", "data", "mode", "global"]),
                       bson_values, max_size=4))
def test_random_commands_get_a_reply(client: pymongo.MongoClient, name: str, target: object,
                                     arguments: dict) -> None:
    command = {name: target, **arguments}
    try:
        reply = client.fuzzdb.command(command)
        assert reply["ok"] == 1.0
    except pymongo.errors.OperationFailure as exc:
        assert exc.details is not None and "errmsg" in exc.details
        assert exc.code != 1, f"internal error for {command!r}: {exc.details}"
    except (bson.errors.InvalidDocument, OverflowError, pymongo.errors.InvalidOperation):
        pass  # the client itself refused to encode it
    assert client.admin.command("ping")["ok"] == 1.0
