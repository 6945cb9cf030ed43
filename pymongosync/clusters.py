"""Connections to the two clusters: URI rules, client settings and what each cluster is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient, uri_parser
from pymongo.errors import ConfigurationError, InvalidURI

from pymongosync.errors import UnsupportedCluster

# The application name on every connection. With auth on, write blocking is bypassed through
# the bypassWriteBlockingMode privilege; the emulator can grant the same by application name.
APP_NAME = "pymongosync"
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
MINIMUM_VERSION = (6, 0)


class InvalidConnectionString(ValueError):
    """A --cluster0/--cluster1 value mongosync refuses (texts are mongosync's own)."""


def check_connection_string(uri: str) -> dict[str, Any]:
    """Validate a cluster URI as mongosync does (spec §2.7); returns the parsed URI."""
    try:
        parsed = uri_parser.parse_uri(uri, validate=True, warn=False, connect_timeout=5)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise InvalidConnectionString(f"Invalid connection string: {redact(str(exc))}") from None
    options = {k.lower(): v for k, v in parsed["options"].items()}
    read_preference = options.get("readpreference")
    if read_preference not in (None, "primary"):
        raise InvalidConnectionString("Invalid URI option, read preference must be primary")
    level = options.get("readconcernlevel")
    if level not in (None, "majority"):
        raise InvalidConnectionString("Invalid URI option, read concern must be majority")
    w = options.get("w")
    if w not in (None, "majority"):
        raise InvalidConnectionString("Invalid URI option, write concern must be majority")
    if "sockettimeoutms" in options:
        raise InvalidConnectionString("Invalid URI option, socketTimeoutMS is not supported")
    return parsed


def redact(text: str) -> str:
    """Remove credentials from anything that may show a connection string."""
    import re
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/\s]*@", r"\1<credentials>@", text)


def hosts_of(uri: str) -> list[str]:
    parsed = uri_parser.parse_uri(uri, validate=False, warn=False)
    return sorted(f"{host}:{port}" for host, port in parsed["nodelist"])


@dataclass
class Cluster:
    """One side of the migration: its label, client and facts learned at connect time."""

    label: str  # "cluster0" or "cluster1"
    uri: str
    client: MongoClient
    # The same cluster decoding to RawBSONDocument: change events keep documents as stored.
    raw_client: MongoClient

    @classmethod
    def connect(cls, label: str, uri: str, timeout_ms: int = 30_000) -> "Cluster":
        check_connection_string(uri)
        settings: dict[str, Any] = dict(
            appname=APP_NAME, readPreference="primary", readConcernLevel="majority",
            w="majority", retryWrites=True, retryReads=True, tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
        return cls(label=label, uri=uri, client=MongoClient(uri, **settings),
                   raw_client=MongoClient(uri, document_class=RawBSONDocument, **settings))

    def close(self) -> None:
        self.client.close()
        self.raw_client.close()

    @property
    def hosts(self) -> list[str]:
        return hosts_of(self.uri)

    @property
    def display(self) -> str:
        """``"cluster0: host:port"`` as /progress directionMapping shows it."""
        return f"{self.label}: {','.join(self.hosts)}"

    def hello(self) -> dict[str, Any]:
        return self.client.admin.command("hello")

    @property
    def is_sharded(self) -> bool:
        return self.hello().get("msg") == "isdbgrid"

    def version(self) -> tuple[int, ...]:
        info = self.client.admin.command("buildInfo")
        return tuple(int(part) for part in info.get("versionArray", [0, 0])[:3])

    def check_supported(self) -> None:
        version = self.version()
        if version[:2] < MINIMUM_VERSION:
            raise UnsupportedCluster(
                f"{self.label} runs MongoDB {'.'.join(map(str, version))}; pymongosync needs "
                f"6.0 or newer on both clusters")

    def cluster_time(self) -> Timestamp:
        """The newest operation time the cluster has (after a no-op write, so it is fresh)."""
        reply = self.client.admin.command("appendOplogNote", data={"pymongosync": "clock"})
        return reply["operationTime"]

    def set_write_block(self, enabled: bool) -> None:
        self.client.admin.command("setUserWriteBlockMode", 1, **{"global": enabled})

    def write_blocked(self) -> bool | None:
        """Whether user writes are blocked (None when the server does not say)."""
        status = self.client.admin.command("serverStatus")
        blocking = status.get("writeBlocking") or {}
        value = blocking.get("userWritesBlocked")
        return None if value is None else bool(value)

    def balancer_running(self) -> bool | None:
        if not self.is_sharded:
            return None
        return self.client.admin.command("balancerStatus").get("mode") != "off"

    def set_balancer(self, running: bool) -> None:
        self.client.admin.command("balancerStart" if running else "balancerStop")
