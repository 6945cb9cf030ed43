"""Connections to the two clusters: URI rules, client settings, and :class:`Cluster`, the
PyMongo implementation of :class:`pymongosync.cluster_client.ClusterClient`."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from bson.int64 import Int64
from pymongo import MongoClient, uri_parser
from pymongo.client_session import ClientSession
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from pymongosync.cluster_client import Delete, RangeRead, Upsert, Write
from pymongosync.errors import InvalidConnectionString, UnsupportedCluster
from pymongosync.received import RAW
from pymongosync.retry import retrying
from pymongosync.store import MetadataStore
from pymongosync.verifier.store import MetadataVerifierStore

# The application name on every connection. With auth on, write blocking is bypassed through
# the bypassWriteBlockingMode privilege; the emulator can grant the same by application name.
APP_NAME = "pymongosync"
# Replies to commands decoded with the same care (Database.command ignores the client's).
DECODED: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
MINIMUM_VERSION = (6, 0)
NAMESPACE_EXISTS = 48
UNKNOWN_FIELD = 40415

log = logging.getLogger("pymongosync.clusters")


def check_connection_string(uri: str) -> dict[str, Any]:
    """Validate a cluster URI as mongosync does (spec §2.7); returns the parsed URI.

    Its secrets are registered first, so that no text ever logged or shown can carry them,
    whatever shape the text has (an error message of the driver included).
    """
    register_secrets(uri)
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


# URI options whose values are secrets (passwords, tokens), compared lower-case.
SECRET_OPTIONS = frozenset({"tlscertificatekeyfilepassword", "sslpemkeypassword",
                            "authmechanismproperties", "proxypassword"})
REDACTED = "<redacted>"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def uri_secrets(uri: str) -> set[str]:
    """The secrets a connection string holds: its password and the values of secret-bearing
    options, as written and as decoded. Read from the URI's structure (scheme, userinfo up to
    the last ``@`` before the host list, ``key=value`` options), so an invalid URI — a raw
    space or an unescaped character in the password — gives its secrets up too."""
    found: set[str] = set()
    scheme_end = uri.find("://")
    if scheme_end < 0:
        return found
    rest = uri[scheme_end + 3:]
    query_start = rest.find("?")
    authority = rest if query_start < 0 else rest[:query_start]
    at = authority.rfind("@")
    if at >= 0:
        userinfo = authority[:at]
        password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
        found |= {password, unquote_plus(password)}
    if query_start >= 0:
        for pair in re.split("[&;]", rest[query_start + 1:]):
            key, _, value = pair.partition("=")
            if key.lower() in SECRET_OPTIONS and value:
                found |= {value, unquote_plus(value)}
                # authMechanismProperties=NAME:VALUE,NAME:VALUE: each value is a secret too.
                found |= {part.split(":", 1)[1] for part in unquote_plus(value).split(",")
                          if ":" in part}
    return {secret for secret in found if len(secret) >= 3}


def register_secrets(uri: str) -> None:
    with _secrets_lock:
        _secrets.update(uri_secrets(uri))


def redact(text: str) -> str:
    """Remove credentials and secret option values from anything that may show them."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    # A connection string never registered (one a user typed in a request, say) still loses
    # its userinfo.
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/?]*@", r"\1<credentials>@", text)


class RawChangeStream:
    """A cluster-wide change stream (``showExpandedEvents``), or one shard's stream read through
    the router (``$_passthroughToShard``, the per-shard cursor of MongoDB 6.0+: the events that
    shard's oplog holds, in its order, with its own resume tokens), driven with
    ``aggregate``/``getMore`` and resumed once from its token after an error that MongoDB
    labels resumable, as the driver does for its own change streams.

    Events are handed out as ``RawBSONDocument``s that nothing has read: PyMongo's
    ``ChangeStream`` reads every event's ``_id`` to track the resume token, which decodes the
    whole event (about a fifth of change application's CPU, measured); here the token is read
    only when asked for (:attr:`resume_token`), once per batch in practice."""

    def __init__(self, client: MongoClient[RawBSONDocument], shard: str | None, *,
                 resume_after: Mapping[str, Any] | None, start_at: Timestamp | None,
                 batch_size: int, max_await_ms: int) -> None:
        self.client, self.shard = client, shard
        self.batch_size, self.max_await_ms = batch_size, max_await_ms
        self._batch: list[RawBSONDocument] = []  # the rest of the batch, last event first
        self._cursor_id = 0
        self._token: Mapping[str, Any] | None = resume_after
        self._token_of: RawBSONDocument | None = None  # an event whose _id is the token
        self._post_batch_token: Mapping[str, Any] | None = None
        self._open(resume_after, start_at)

    def _open(self, resume_after: Mapping[str, Any] | None, start_at: Timestamp | None) -> None:
        # showRawUpdateDescription: updates as their oplog delta, the one description that
        # tells a field moved to the end of its document from one updated in place.
        # No $changeStreamSplitLargeEvent: without images or looked-up documents, an event holds
        # at most one document or one oplog delta, within the 16 MiB + 16 KiB a server's event
        # may take, unless the _id and shard key take kilobytes; and then the stage fails too,
        # as each fragment repeats the token, which holds them.
        spec: dict[str, Any] = {"allChangesForCluster": True, "showExpandedEvents": True,
                                "showRawUpdateDescription": True}
        if resume_after is not None:
            spec["resumeAfter"] = resume_after
        elif start_at is not None:
            spec["startAtOperationTime"] = start_at
        command: dict[str, Any] = {"aggregate": 1, "pipeline": [{"$changeStream": spec}],
                                   "cursor": {"batchSize": self.batch_size}}
        if self.shard is not None:
            command["$_passthroughToShard"] = {"shard": self.shard}
        self._absorb(self.client.admin.command(command, codec_options=RAW)["cursor"],
                     "firstBatch")

    def _absorb(self, cursor: Mapping[str, Any], field: str) -> None:
        self._batch = list(cursor[field])
        self._batch.reverse()
        self._cursor_id = int(cursor["id"])
        self._post_batch_token = cursor.get("postBatchResumeToken")
        if not self._batch and self._post_batch_token is not None:
            self._token, self._token_of = self._post_batch_token, None

    def try_next(self) -> RawBSONDocument | None:
        events = self.next_events(1)
        return events[0] if events else None

    def next_events(self, limit: int) -> list[RawBSONDocument]:
        self._fill()
        if not self._batch:
            return []
        events = self._batch[-limit:]
        del self._batch[-limit:]
        events.reverse()
        # As the driver does: the last event's token, or the batch's once the batch is used up.
        if not self._batch and self._post_batch_token is not None:
            self._token, self._token_of = self._post_batch_token, None
        else:
            self._token_of = events[-1]
        return events

    def _fill(self) -> None:
        """One getMore when every event received has been handed out."""
        if not self._batch and self._cursor_id:
            try:
                reply = self.client.admin.command({
                    "getMore": Int64(self._cursor_id), "collection": "$cmd.aggregate",
                    "batchSize": self.batch_size, "maxTimeMS": self.max_await_ms},
                    codec_options=RAW)
            except OperationFailure as exc:
                if not exc.has_error_label("ResumableChangeStreamError"):
                    raise
                self._cursor_id = 0
                self._open(self.resume_token, None)  # from the last event handed out
            else:
                self._absorb(reply["cursor"], "nextBatch")

    @property
    def buffered(self) -> int:
        return len(self._batch)

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        if self._token_of is not None:
            self._token, self._token_of = self._token_of["_id"], None
        return self._token

    def close(self) -> None:
        if self._cursor_id:
            cursor_id, self._cursor_id = self._cursor_id, 0
            try:
                self.client.admin.command({"killCursors": "$cmd.aggregate",
                                           "cursors": [Int64(cursor_id)]})
            except PyMongoError:
                pass  # the server times the cursor out by itself


def _option_text(value: Any) -> str:
    """A connection-string option's value as URI text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return quote_plus(str(value), safe=":,")


def hosts_of(uri: str) -> list[str]:
    return list(_hosts_of(uri))


@functools.lru_cache(maxsize=64)
def _hosts_of(uri: str) -> tuple[str, ...]:
    # Cached: /progress shows them on every call, and parsing a connection string costs
    # about as much as the rest of /progress.
    parsed = uri_parser.parse_uri(uri, validate=False, warn=False)
    return tuple(sorted(f"{host}:{port}" for host, port in parsed["nodelist"]))


def _id_bytes(value: Any) -> bytes:
    """An ``_id`` as exact BSON (type and value), to recognise one document unambiguously."""
    return bson.encode({"_id": value}, codec_options=RAW)


@dataclass
class Cluster:
    """One side of the migration over PyMongo: its label, clients and what it is."""

    label: str  # "cluster0" or "cluster1"
    uri: str
    client: MongoClient[Any]
    # The same cluster decoding to RawBSONDocument: documents keep their exact bytes.
    raw_client: MongoClient[RawBSONDocument]
    # Learnt from the server: None until a write tells.
    _bypasses_empty_ts: bool | None = field(default=None, init=False)
    _limits: tuple[int, int] | None = field(default=None, init=False)
    _sessions: threading.local = field(default_factory=threading.local, init=False)
    _all_sessions: list[ClientSession] = field(default_factory=list, init=False)
    _txn_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @classmethod
    def connect(cls, label: str, uri: str, timeout_ms: int = 30_000) -> Cluster:
        check_connection_string(uri)
        settings: dict[str, Any] = dict(
            appname=APP_NAME, readPreference="primary", readConcernLevel="majority",
            w="majority", retryWrites=True, retryReads=True, tz_aware=True,
            datetime_conversion=DatetimeConversion.DATETIME_AUTO,
            serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
        return cls(label=label, uri=uri, client=MongoClient(uri, **settings),
                   raw_client=MongoClient(uri, document_class=RawBSONDocument, **settings))

    @classmethod
    def around(cls, label: str, client: MongoClient[Any]) -> Cluster:
        """A cluster over an existing client (reads pass raw codec options themselves; not
        for watching, which needs a client that decodes to raw BSON)."""
        hosts = ",".join(f"{host}:{port}" for host, port in
                         client.topology_description.server_descriptions())
        return cls(label=label, uri=f"mongodb://{hosts}/", client=client,
                   raw_client=client)

    def close(self) -> None:
        with self._lock:
            sessions, self._all_sessions = self._all_sessions, []
        for session in sessions:
            session.end_session()
        self.client.close()
        self.raw_client.close()

    # -- identity and cluster-wide state ---------------------------------------------------------
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

    def ping(self) -> None:
        self.client.admin.command("ping")

    # -- the shards of a sharded cluster -------------------------------------------------------
    def shard_hosts(self) -> dict[str, str]:
        """Each shard's id and its ``replicaSet/host,host`` string (``listShards``)."""
        return {str(shard["_id"]): str(shard["host"])
                for shard in self.client.admin.command("listShards")["shards"]}

    def shard_uri(self, shard_id: str, direct: bool = False) -> str:
        """A connection string for one shard's replica set, signed in as this cluster's user
        with its options; ``direct``: its first member only (directConnection)."""
        hosts = self.shard_hosts().get(shard_id)
        if hosts is None:
            raise InvalidConnectionString(f"{self.label} has no shard {shard_id!r}")
        replica_set, _, members = hosts.rpartition("/")
        parsed = uri_parser.parse_uri(self.uri, validate=False, warn=False)
        options = {key: value for key, value in parsed["options"].items()
                   if key.lower() not in ("replicaset", "directconnection", "loadbalanced",
                                          "srvservicename", "srvmaxhosts", "readpreference")}
        if direct:
            members, options["directConnection"] = members.split(",")[0], True
        elif replica_set:
            options["replicaSet"] = replica_set
        credentials = ""
        if parsed.get("username"):
            credentials = (f"{quote_plus(parsed['username'])}:"
                           f"{quote_plus(parsed['password'] or '')}@")
        query = "&".join(f"{key}={_option_text(value)}" for key, value in options.items())
        return f"mongodb://{credentials}{members}/{'?' + query if query else ''}"

    def shard(self, shard_id: str) -> Cluster:
        """One shard of this sharded cluster as a cluster of its own (its change stream is
        that shard's alone)."""
        return Cluster.connect(f"{self.label}/{shard_id}", self.shard_uri(shard_id))

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
        # A no-op note in the oplog: written again after a transient error, it changes nothing.
        reply = retrying(lambda: self.client.admin.command("appendOplogNote",
                                                           data={"pymongosync": "clock"}))
        time: Timestamp = reply["operationTime"]
        return time

    def latest_time(self) -> Timestamp:
        last_write = self.hello().get("lastWrite") or {}
        op_time = last_write.get("opTime") or {}
        newest = op_time.get("ts")
        if isinstance(newest, Timestamp):
            return newest
        time: Timestamp = self.client.admin.command("ping")["operationTime"]
        return time

    def set_write_block(self, enabled: bool) -> None:
        self.client.admin.command({"setUserWriteBlockMode": 1, "global": enabled})

    def write_blocked(self) -> bool | None:
        """Whether user writes are blocked (None when the server does not say)."""
        status = self.client.admin.command("serverStatus")
        blocking = status.get("writeBlocking") or {}
        value = blocking.get("userWritesBlocked")
        return None if value is None else bool(value)

    def balancer_running(self) -> bool | None:
        if not self.is_sharded:
            return None
        return bool(self.client.admin.command("balancerStatus").get("mode") != "off")

    def set_balancer(self, running: bool) -> None:
        self.client.admin.command("balancerStart" if running else "balancerStop")

    def metadata_store(self) -> MetadataStore:
        return MetadataStore(self.client)

    def verifier_store(self) -> MetadataVerifierStore:
        return MetadataVerifierStore(self.client)

    # -- catalog ---------------------------------------------------------------------------------
    def database_names(self) -> list[str]:
        return list(self.client.list_database_names())

    def collection_infos(self, db: str, name: str | None = None) -> list[dict[str, Any]]:
        query = None if name is None else {"name": name}
        return [dict(info) for info in self.client[db].list_collections(filter=query)]

    def find_collection_by_uuid(self, collection_uuid: Any) -> tuple[str, str] | None:
        for database in self.client.list_database_names():
            for info in self.client[database].list_collections(
                    filter={"info.uuid": collection_uuid}):
                return database, info["name"]
        return None

    def index_specs(self, db: str, coll: str) -> list[dict[str, Any]]:
        return [dict(spec) for spec in self.client[db][coll].list_indexes()]

    def collection_size(self, db: str, coll: str) -> tuple[int, int]:
        collection = self.client[db][coll]
        try:
            stats = next(collection.aggregate([{"$collStats": {"storageStats": {}}}]))
            storage = stats.get("storageStats", {})
            return int(storage.get("count", 0)), int(storage.get("size", 0))
        except (OperationFailure, StopIteration):
            return collection.estimated_document_count(), 0

    def shard_keys(self) -> dict[str, dict[str, Any]]:
        if not self.is_sharded:
            return {}
        return {entry["_id"]: dict(entry["key"])
                for entry in self.client.config.collections.find({}, {"key": 1})}

    def shard_ids(self) -> list[str]:
        return list(self.shard_hosts()) if self.is_sharded else []

    def chunk_owners(self, db: str, coll: str) -> list[tuple[Any, Any, str]]:
        if not self.is_sharded:
            return []
        entry = self.client.config.collections.find_one({"_id": f"{db}.{coll}"})
        if entry is None or dict(entry["key"]) != {"_id": 1}:
            return []
        chunks = self.client.config.chunks.find({"uuid": entry["uuid"]}).sort("min", 1)
        return [(chunk["min"]["_id"], chunk["max"]["_id"], str(chunk["shard"]))
                for chunk in chunks]

    def primary_shard(self, db: str) -> str | None:
        if not self.is_sharded:
            return None
        entry = self.client.config.databases.find_one({"_id": db})
        return None if entry is None else str(entry.get("primary"))

    def sample_ids(self, db: str, coll: str, count: int) -> list[Any]:
        sampled = self.client[db].get_collection(coll, codec_options=RAW).aggregate([
            {"$sample": {"size": count}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}])
        return [document["_id"] for document in sampled]

    # -- reading ---------------------------------------------------------------------------------
    def read_batches(self, read: RangeRead) -> Iterator[list[RawBSONDocument]]:
        """The one loop that reads collections: copy, re-copy and verification all use it.

        Ranges are read with ``min``/``max`` on the ``_id`` index rather than ``$gte``/``$lt``
        filters: index bounds follow BSON order across types, where query operators would only
        compare values of one type and silently skip documents whose ``_id`` has another.
        """
        # Majority reads, as every other read: nothing copied can be rolled back on the source.
        command: dict[str, Any] = {"filter": {}, "batchSize": read.batch_size,
                                   "readConcern": {"level": "majority"}}
        if not read.natural:
            lower = read.after.id if read.after is not None else read.lower
            command["hint"] = {"_id": 1}
            # A mongos merges its shards' answers in this order only when asked to: the copy's
            # checkpoint (the last _id copied) assumes it.
            command["sort"] = {"_id": 1}
            command["min"] = {"_id": lower}
            if read.upper is not None:  # no max at the end: a MaxKey _id is still read
                command["max"] = {"_id": read.upper}
        if read.collection_uuid is not None:
            # The server refuses the read (CollectionUUIDMismatch) if the name no longer holds
            # this collection: a rename between finding the name and reading it is noticed.
            command["collectionUUID"] = read.collection_uuid
        # The database's codec, not only the command's: getMore batches are decoded with it.
        database = self.raw_client.get_database(read.db, codec_options=RAW)
        # The command's batchSize only sizes the first batch: without the cursor's own, every
        # getMore brings up to 16 MiB of documents, all held at once, and a reader's memory
        # grew with the range it reads (mongosync verify: 82 MB at 100k documents, 231 MB at
        # 1M; the embedded verifier, reading a few ranges at once, 445 MB).
        cursor = database.cursor_command("find", read.coll, codec_options=RAW,
                                         **command).batch_size(read.batch_size)
        skip = None if read.after is None or read.natural else _id_bytes(read.after.id)
        batch: list[RawBSONDocument] = []
        size = 0
        max_bytes = read.max_bytes
        with cursor:
            for document in cursor:
                if skip is not None:
                    # min is inclusive: the first document may be the one read last time.
                    first, skip = skip, None
                    if _id_bytes(document["_id"]) == first:
                        continue
                batch.append(document)
                if max_bytes is not None:
                    size += len(document.raw)
                if len(batch) >= read.batch_size or (max_bytes is not None and
                                                     size >= max_bytes):
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch

    def find_by_id(self, db: str, coll: str, key: Mapping[str, Any]) -> RawBSONDocument | None:
        collection = self.raw_client[db].get_collection(coll, codec_options=RAW)
        document: RawBSONDocument | None = collection.find_one(key)
        return document

    def find_by_ids(self, db: str, coll: str, ids: list[Any]) -> list[RawBSONDocument]:
        collection = self.raw_client[db].get_collection(coll, codec_options=RAW)
        return list(collection.find({"_id": {"$in": ids}}, batch_size=len(ids) + 1))

    def watch(self, *, resume_after: Mapping[str, Any] | None = None,
              start_at: Timestamp | None = None, batch_size: int = 1000,
              max_await_ms: int = 250, shard: str | None = None) -> RawChangeStream:
        return RawChangeStream(self.raw_client, shard, resume_after=resume_after,
                               start_at=start_at, batch_size=batch_size,
                               max_await_ms=max_await_ms)

    # -- writing ---------------------------------------------------------------------------------
    # Writes are sent as the server's own insert/update/delete commands: they carry raw
    # documents without decoding, and options the drivers' helpers cannot pass. The one that
    # matters: ``bypassEmptyTsReplacement`` (SERVER-88750). Without it the server replaces a
    # top-level Timestamp(0, 0) with the current time on insert and replacement, changing
    # documents that legitimately hold one.
    def insert_documents(self, db: str, coll: str, documents: Sequence[RawBSONDocument]) -> None:
        statements = [(document, len(document.raw)) for document in documents]
        self._run_writes(db, "insert", coll, "documents", statements, ordered=False)

    def write(self, db: str, coll: str, writes: Sequence[Write]) -> None:
        """Ordered: consecutive updates and upserts go in one update command, deletes in one
        delete command; the first failure stops the rest, as an ordered bulk write does."""
        offset = 0
        for command, array, statements in _runs(writes):
            try:
                self._run_writes(db, command, coll, array, statements, ordered=True)
            except BulkWriteError as exc:
                raise _shifted(exc, offset) from None
            offset += len(statements)

    def _run_writes(self, db: str, command: str, coll: str, field: str,
                    statements: list[tuple[Any, int]], ordered: bool) -> None:
        limits = self._write_limits()
        errors: list[dict[str, Any]] = []
        concern_errors: list[dict[str, Any]] = []
        start = 0
        for batch in _batches(statements, *limits):
            body: dict[str, Any] = {command: coll, field: batch, "ordered": ordered,
                                    "bypassDocumentValidation": True,
                                    "writeConcern": {"w": "majority"}}
            if self._bypasses_empty_ts is not False:
                body["bypassEmptyTsReplacement"] = True
            reply = self._write_command(db, body)
            for error in reply.get("writeErrors") or []:
                errors.append({**error, "index": int(error["index"]) + start})
            if reply.get("writeConcernError"):
                concern_errors.append(dict(reply["writeConcernError"]))
            start += len(batch)
            if errors and ordered:
                break
        if errors or concern_errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": concern_errors,
                                  "nInserted": 0, "nUpserted": 0, "nMatched": 0,
                                  "nModified": 0, "nRemoved": 0, "upserted": []})

    def _write_command(self, db: str, body: dict[str, Any]) -> dict[str, Any]:
        # A retryable write (a session and a transaction number), as drivers send them: on a
        # sharded destination, a replacement that changes the shard key needs it.
        session = self._write_session()
        body["txnNumber"] = Int64(next(self._txn_numbers))
        try:
            return self.raw_client[db].command(body, codec_options=DECODED, session=session)
        except OperationFailure as exc:
            if exc.code != UNKNOWN_FIELD or "bypassEmptyTsReplacement" not in str(exc):
                raise
        # A server older than the option (SERVER-88750): its patch release is below what
        # a faithful migration needs, said once in the log; the write goes on without it.
        log.warning("%s does not know bypassEmptyTsReplacement: a top-level Timestamp(0, 0) "
                    "in a document will be replaced by the server's time on insert; upgrade "
                    "it to a patch release that has the option", self.label)
        self._bypasses_empty_ts = False
        del body["bypassEmptyTsReplacement"]
        body["txnNumber"] = Int64(next(self._txn_numbers))
        return self.raw_client[db].command(body, codec_options=DECODED, session=session)

    def _write_session(self) -> ClientSession:
        """This thread's session for writes (a session serves one operation at a time).

        From the raw client, whose session pool no driver-made retryable write ever uses: the
        transaction numbers given here are the only ones its sessions see, so they only grow.
        """
        session: ClientSession | None = getattr(self._sessions, "session", None)
        if session is None:
            session = self.raw_client.start_session(causal_consistency=False)
            self._sessions.session = session
            with self._lock:
                self._all_sessions.append(session)
        return session

    def _write_limits(self) -> tuple[int, int]:
        """(bytes, statements) one write command may carry, as the server says."""
        if self._limits is None:
            hello = self.hello()
            self._limits = (int(hello.get("maxBsonObjectSize", 16 * 1024 * 1024)),
                            int(hello.get("maxWriteBatchSize", 100_000)))
        return self._limits

    # -- DDL -------------------------------------------------------------------------------------
    def create_collection(self, db: str, coll: str, options: Mapping[str, Any]) -> bool:
        try:
            self.client[db].command({"create": coll, **options})
            return True
        except OperationFailure as exc:
            if exc.code == NAMESPACE_EXISTS:
                return False
            raise

    def drop_collection(self, db: str, coll: str) -> None:
        self.client[db].drop_collection(coll)

    def drop_database(self, db: str) -> None:
        self.client.drop_database(db)

    def rename_collection(self, source: str, target: str, drop_target: bool) -> None:
        self.client.admin.command("renameCollection", source, to=target, dropTarget=drop_target)

    def create_indexes(self, db: str, coll: str, specs: list[Mapping[str, Any]]) -> None:
        self.client[db].command("createIndexes", coll, indexes=[dict(spec) for spec in specs])

    def create_index(self, db: str, coll: str, spec: Mapping[str, Any]) -> None:
        self.client[db].command("createIndexes", coll, indexes=[dict(spec)])

    def drop_index(self, db: str, coll: str, name: str) -> None:
        self.client[db].command("dropIndexes", coll, index=name)

    def modify_collection(self, db: str, coll: str, changes: Mapping[str, Any]) -> None:
        self.client[db].command({"collMod": coll, **changes})

    def shard_collection(self, db: str, coll: str, key: Mapping[str, Any]) -> None:
        self.client.admin.command("enableSharding", db)
        self.client.admin.command("shardCollection", f"{db}.{coll}", key=dict(key))


def _statement(write: Write) -> tuple[str, str, dict[str, Any], int]:
    """(command, array field, statement, approximate size) of one write."""
    if isinstance(write, Upsert):
        return "update", "updates", {"q": write.key, "u": write.document, "upsert": True,
                                     "multi": False}, len(write.document.raw) + 64
    if isinstance(write, Delete):
        return "delete", "deletes", {"q": write.key, "limit": 1}, 128
    size = write.encoded_size
    return "update", "updates", {"q": write.key, "u": write.update, "upsert": False,
                                 "multi": False}, \
        (_encoded_size(write.update) if size is None else size) + 64


def _encoded_size(document: Mapping[str, Any] | list[Mapping[str, Any]]) -> int:
    """The BSON size of an update, its raw values counted without encoding them again (a
    change event's ``$set`` carries the source's fields as the raw bytes received)."""
    if isinstance(document, list):  # an array: a document named "0", "1", ...
        return _encoded_size({str(index): stage for index, stage in enumerate(document)})
    size = 5
    for name, value in document.items():
        raw = getattr(value, "raw", None)
        if raw is not None:
            size += 2 + len(name.encode()) + len(raw)
        elif isinstance(value, (dict, list)):
            size += 2 + len(name.encode()) + _encoded_size(value)
        else:
            size += len(bson.encode({name: value})) - 5
    return size


def _runs(writes: Sequence[Write]) -> Iterator[tuple[str, str, list[tuple[Any, int]]]]:
    """Consecutive writes of one command kind, in order."""
    current: tuple[str, str] | None = None
    statements: list[tuple[Any, int]] = []
    for write in writes:
        command, field, statement, size = _statement(write)
        if current is not None and current != (command, field):
            yield current[0], current[1], statements
            statements = []
        current = (command, field)
        statements.append((statement, size))
    if current is not None:
        yield current[0], current[1], statements


def _batches(statements: list[tuple[Any, int]], max_bytes: int,
             max_count: int) -> Iterator[list[Any]]:
    """Statements split so each command stays within the server's limits (the server takes a
    command up to its maximum document size plus 16 KiB, so one statement of the maximum size
    still fits alone)."""
    batch: list[Any] = []
    total = 0
    for statement, size in statements:
        if batch and (total + size > max_bytes or len(batch) >= max_count):
            yield batch
            batch, total = [], 0
        batch.append(statement)
        total += size
    if batch:
        yield batch


def _shifted(error: BulkWriteError, offset: int) -> BulkWriteError:
    """A write error of one command, with indexes counted from the first write of the call."""
    details = dict(error.details)
    details["writeErrors"] = [{**item, "index": int(item["index"]) + offset}
                              for item in details.get("writeErrors", [])]
    return BulkWriteError(details)
