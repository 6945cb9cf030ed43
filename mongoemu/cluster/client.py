"""The router's client side: OP_MSG commands to shards and the config server, on its event loop.

Replies are decoded as :class:`~bson.raw_bson.RawBSONDocument` below the top level, so documents
a shard returns reach the router's client as the shard's bytes, never decoded and re-encoded.
Every command carries the router's cluster time and every reply advances it (gossip), which is
what keeps operation times and resume tokens ordered across the processes of a cluster.

Connections are pooled per application name: a shard decides write-blocking bypass from the
handshake's ``appName`` (``--bypass-write-blocking-app``), so a client's commands reach the shards
on connections that introduced themselves with that client's name.
"""

from __future__ import annotations

import asyncio
import itertools
import platform
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from mongoemu import wire
from mongoemu.bsonvalues import CODEC
from mongoemu.clock import Clock

RAW_CODEC: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument, tz_aware=True,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)
ROUTER_APP_NAME = "mongoemu-router"
_ZERO_SIGNATURE = {"hash": bson.Binary(b"\x00" * 20, 0), "keyId": bson.Int64(0)}


class RemoteUnavailable(Exception):
    """A shard or the config server could not be reached (or dropped the connection)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.broken = False

    async def round_trip(self, request_id: int, message: bytes) -> bytes:
        try:
            self.writer.write(message)
            await self.writer.drain()
            header = await self.reader.readexactly(wire.HEADER.size)
            length, _, response_to, opcode = wire.parse_header(header)
            payload = await self.reader.readexactly(length - wire.HEADER.size)
        except BaseException:
            self.broken = True  # a half-read reply must never be taken for the next one's
            raise
        if opcode != wire.OP_MSG or response_to != request_id:
            self.broken = True
            raise wire.ProtocolError(f"unexpected reply (opcode {opcode}, to {response_to})")
        return wire.op_msg_reply_body(payload)

    def close(self) -> None:
        self.broken = True
        self.writer.close()


class Remote:
    """One server of the cluster, reached over pooled connections."""

    _request_ids = itertools.count(1)

    def __init__(self, name: str, host: str, port: int, clock: Clock) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.clock = clock
        self._idle: dict[str, list[_Connection]] = {}
        self._all: set[_Connection] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def command(self, db: str, body: dict[str, Any], *, app_name: str | None = None,
                      sequences: dict[str, list[bytes]] | None = None) -> dict[str, Any]:
        """Run ``body`` on database ``db``; the reply (ok or not) as a dict of raw values."""
        body = dict(body)
        body["$db"] = db
        body["$clusterTime"] = {"clusterTime": self.clock.now, "signature": _ZERO_SIGNATURE}
        request_id = next(self._request_ids)
        message = wire.encode_op_msg_sections(request_id, bson.encode(body, codec_options=CODEC),
                                              sequences)
        app = app_name or ROUTER_APP_NAME
        connection = await self._acquire(app)
        try:
            reply_bytes = await connection.round_trip(request_id, message)
        except (OSError, asyncio.IncompleteReadError, wire.ProtocolError) as exc:
            connection.close()
            self._all.discard(connection)
            raise RemoteUnavailable(f"{self.name} ({self.address}): {exc or type(exc).__name__}"
                                    ) from None
        except BaseException:
            connection.close()
            self._all.discard(connection)
            raise
        self._idle.setdefault(app, []).append(connection)
        raw = bson.decode(reply_bytes, codec_options=RAW_CODEC)
        reply = dict(raw.items())
        cluster_time = reply.get("$clusterTime")
        if cluster_time is not None and isinstance(cluster_time.get("clusterTime"), Timestamp):
            self.clock.advance_to(cluster_time["clusterTime"])
        return reply

    async def _acquire(self, app_name: str) -> _Connection:
        idle = self._idle.get(app_name)
        while idle:
            connection = idle.pop()
            if not connection.broken:
                return connection
            self._all.discard(connection)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        except OSError as exc:
            raise RemoteUnavailable(f"{self.name} ({self.address}): {exc}") from None
        connection = _Connection(reader, writer)
        self._all.add(connection)
        hello = {"hello": 1, "helloOk": True, "$db": "admin", "client": {
            "application": {"name": app_name},
            "driver": {"name": "mongoemu-router", "version": "1"},
            "os": {"type": platform.system()}}}
        request_id = next(self._request_ids)
        try:
            await connection.round_trip(request_id, wire.encode_op_msg_sections(
                request_id, bson.encode(hello, codec_options=CODEC)))
        except (OSError, asyncio.IncompleteReadError, wire.ProtocolError) as exc:
            connection.close()
            self._all.discard(connection)
            raise RemoteUnavailable(f"{self.name} ({self.address}): {exc}") from None
        return connection

    def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()


def error_of(reply: dict[str, Any]) -> tuple[int, str] | None:
    """(code, errmsg) of a failed reply, None for ``ok: 1``."""
    if reply.get("ok") in (1, 1.0, True):
        return None
    return int(reply.get("code", 1)), str(reply.get("errmsg", "command failed"))
