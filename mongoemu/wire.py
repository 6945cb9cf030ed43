"""MongoDB wire protocol framing: OP_MSG, the legacy OP_QUERY handshake and OP_REPLY."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson

from mongoemu.bsonvalues import CODEC

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
MAX_MESSAGE_BYTES = 48_000_000
MIN_MESSAGE_BYTES = HEADER.size + 5

FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16
# Bits 0-15 are "required": a peer must understand every one it sees set.
_KNOWN_REQUIRED_FLAGS = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME


class ProtocolError(Exception):
    """The peer sent something that is not a valid message: close its connection."""


@dataclass
class Request:
    request_id: int
    opcode: int
    body: dict[str, Any]
    flags: int = 0
    # Raw BSON of each document of every kind-1 section, by identifier.
    sequences: dict[str, list[bytes]] = field(default_factory=dict)
    # OP_QUERY only: the full collection name (e.g. "admin.$cmd").
    collection: str | None = None

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & FLAG_MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return bool(self.flags & FLAG_EXHAUST_ALLOWED)


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    length, request_id, response_to, opcode = HEADER.unpack(data)
    if length < MIN_MESSAGE_BYTES or length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"invalid message length {length}")
    return length, request_id, response_to, opcode


def _decode_document(data: bytes | memoryview, offset: int) -> tuple[dict[str, Any], int]:
    if offset + 5 > len(data):
        raise ProtocolError("truncated BSON document")
    size = int.from_bytes(data[offset:offset + 4], "little")
    if size < 5 or offset + size > len(data):
        raise ProtocolError("invalid BSON document length")
    try:
        document = bson.decode(bytes(data[offset:offset + size]), codec_options=CODEC)
    except Exception as exc:  # noqa: BLE001 - any malformed BSON must only cost the sender its connection
        raise ProtocolError(f"invalid BSON: {exc}") from None
    return document, offset + size


def _split_documents(data: bytes, start: int, end: int) -> list[bytes]:
    documents = []
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("truncated document sequence")
        size = int.from_bytes(data[offset:offset + 4], "little")
        if size < 5 or offset + size > end:
            raise ProtocolError("invalid document length in sequence")
        if data[offset + size - 1] != 0:
            raise ProtocolError("document in sequence is not NUL-terminated")
        documents.append(data[offset:offset + size])
        offset += size
    return documents


def parse_op_msg(request_id: int, payload: bytes, header: bytes = b"") -> Request:
    if len(payload) < 5:
        raise ProtocolError("OP_MSG too short")
    flags = int.from_bytes(payload[:4], "little")
    if flags & 0xFFFF & ~_KNOWN_REQUIRED_FLAGS:
        raise ProtocolError(f"unsupported OP_MSG required flag bits {flags:#x}")
    end = len(payload)
    if flags & FLAG_CHECKSUM_PRESENT:
        end -= 4
        if end < 5:
            raise ProtocolError("OP_MSG too short for its checksum")
        _verify_checksum(header, payload, end)
    body: dict[str, Any] | None = None
    sequences: dict[str, list[bytes]] = {}
    offset = 4
    while offset < end:
        kind = payload[offset]
        offset += 1
        if kind == 0:
            if body is not None:
                raise ProtocolError("OP_MSG has more than one body section")
            body, offset = _decode_document(payload, offset)
            if offset > end:
                raise ProtocolError("body section overruns the message")
        elif kind == 1:
            if offset + 4 > end:
                raise ProtocolError("truncated document sequence header")
            size = int.from_bytes(payload[offset:offset + 4], "little")
            section_end = offset + size
            if size < 5 or section_end > end:
                raise ProtocolError("invalid document sequence size")
            name_end = payload.find(b"\x00", offset + 4, section_end)
            if name_end < 0:
                raise ProtocolError("document sequence identifier is not terminated")
            # A name, like any BSON string, need not be valid UTF-8: it is kept byte for byte.
            identifier = payload[offset + 4:name_end].decode("utf-8", "surrogateescape")
            if identifier in sequences:
                raise ProtocolError(f"duplicate document sequence {identifier!r}")
            sequences[identifier] = _split_documents(payload, name_end + 1, section_end)
            offset = section_end
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if body is None:
        raise ProtocolError("OP_MSG has no body section")
    return Request(request_id=request_id, opcode=OP_MSG, body=body, flags=flags,
                   sequences=sequences)


def _verify_checksum(header: bytes, payload: bytes, end: int) -> None:
    """CRC-32C over the whole message (header included) minus the trailer itself."""
    try:
        import crc32c
    except ImportError:  # verification is optional; stripping the trailer is what matters
        return
    if not header:
        return
    expected = int.from_bytes(payload[end:end + 4], "little")
    if crc32c.crc32c(header + payload[:end]) != expected:
        raise ProtocolError("OP_MSG checksum mismatch")


def parse_op_query(request_id: int, payload: bytes) -> Request:
    if len(payload) < 4:
        raise ProtocolError("OP_QUERY too short")
    flags = int.from_bytes(payload[:4], "little")
    name_end = payload.find(b"\x00", 4)
    if name_end < 0:
        raise ProtocolError("OP_QUERY collection name is not terminated")
    collection = payload[4:name_end].decode("utf-8", "surrogateescape")
    offset = name_end + 1 + 8  # numberToSkip, numberToReturn
    query, _ = _decode_document(payload, offset)
    return Request(request_id=request_id, opcode=OP_QUERY, body=query, flags=flags,
                   collection=collection)


def encode_op_msg(request_id: int, response_to: int, body: bytes, flags: int = 0) -> bytes:
    length = HEADER.size + 4 + 1 + len(body)
    return (HEADER.pack(length, request_id, response_to, OP_MSG) + flags.to_bytes(4, "little")
            + b"\x00" + body)


def encode_op_msg_sections(request_id: int, body: bytes,
                           sequences: dict[str, list[bytes]] | None = None) -> bytes:
    """A client's OP_MSG: the body, then one kind-1 section per document sequence (raw BSON
    documents travel as they are, without being decoded and re-encoded)."""
    parts = [(0).to_bytes(4, "little"), b"\x00", body]
    for identifier, documents in (sequences or {}).items():
        name = identifier.encode() + b"\x00"
        size = 4 + len(name) + sum(len(document) for document in documents)
        parts += [b"\x01", size.to_bytes(4, "little"), name, *documents]
    payload = b"".join(parts)
    return HEADER.pack(HEADER.size + len(payload), request_id, 0, OP_MSG) + payload


def op_msg_reply_body(payload: bytes) -> bytes:
    """The body section of a server's OP_MSG reply (flags and checksum skipped)."""
    flags = int.from_bytes(payload[:4], "little")
    end = len(payload) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
    if len(payload) < 10 or payload[4] != 0:
        raise ProtocolError("OP_MSG reply without a body section first")
    size = int.from_bytes(payload[5:9], "little")
    if 5 + size > end:
        raise ProtocolError("OP_MSG reply body overruns the message")
    return payload[5:5 + size]


def encode_op_reply(request_id: int, response_to: int, body: bytes) -> bytes:
    # responseFlags 8 = AwaitCapable, as mongod sets on handshake replies.
    prefix = struct.pack("<iqii", 8, 0, 0, 1)
    length = HEADER.size + len(prefix) + len(body)
    return HEADER.pack(length, request_id, response_to, OP_REPLY) + prefix + body
