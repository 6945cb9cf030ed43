"""The emulated server: accepts connections, frames messages and dispatches commands.

Everything runs on one asyncio event loop, so command handlers see a consistent state
without locks; only handlers that wait (awaitable hello, awaitData getMore, fail points that
block) yield to other connections.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp

from mongoemu import collection_uuid, wire
from mongoemu.bsonvalues import CODEC, encode
from mongoemu.clock import Clock
from mongoemu.commands.registry import REGISTRY, CommandSpec
from mongoemu.commands.versioned_api import validate_api_parameters
from mongoemu.config import EmulatorConfig
from mongoemu.context import Connection, Context
from mongoemu.cursors import CursorManager
from mongoemu.errors import RETRIABLE_CODES, CommandError
from mongoemu.failpoints import CloseConnection, FailPoints
from mongoemu.oplog import Oplog
from mongoemu.sessions import TRANSIENT, SessionManager, Transaction
from mongoemu.storage.catalog import Catalog
from mongoemu.writer import Writer

log = logging.getLogger("mongoemu")

_ZERO_SIGNATURE = {"hash": bson.Binary(b"\x00" * 20, 0), "keyId": Int64(0)}
SNAPSHOT_READ_COMMANDS = frozenset({"find", "aggregate", "distinct", "getMore"})
STATE_CHANGE_CODES = frozenset({91, 189, 10058, 10107, 11600, 11602, 13435, 13436})
RETRYABLE_WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify", "bulkWrite"})
# Retryable writes whose statements are recorded one by one, by statement id
# (commands/crud.py WriteResult.run); the others are recorded as their whole reply.
STATEMENT_WRITE_COMMANDS = frozenset({"insert", "update", "delete", "bulkWrite"})


def _load_commands() -> None:
    """Import every module that registers handlers (the registry is filled on import)."""
    from mongoemu.commands import admin, crud, ddl, handshake, sharding, transactions  # noqa: F401
    from mongoemu.commands import bulk_write, search, versioned_api  # noqa: F401
    from mongoemu.auth import commands as auth_commands  # noqa: F401


class Server:
    def __init__(self, config: EmulatorConfig) -> None:
        _load_commands()
        self.config = config
        self.catalog = Catalog()
        self.clock = Clock()
        self.oplog = Oplog(int(config.oplog_size_mb * 1024 * 1024))
        self.cursors = CursorManager()
        self.sessions = SessionManager()
        self.failpoints = FailPoints()
        self.writer = Writer(self)
        from mongoemu.auth.manager import AuthManager
        self.auth_store = AuthManager(config)
        if config.auth:
            self.auth_store.seed_root(config.root_user, config.root_password)
        # A shard's filtering metadata (None elsewhere; a router keeps a routing table instead).
        self.sharding: Any = None
        if config.shard_role:
            from mongoemu.cluster.shard import ShardState
            self.sharding = ShardState(self)
        self.write_blocked = False
        # Administrative state a MongoDB server keeps in admin.system.version and cluster
        # parameters: the FCV (setFeatureCompatibilityVersion), persistent query settings
        # (setQuerySettings, 8.0) by query shape hash, and an emulated filesystem size for
        # dbStats (emulatorSetDiskSize; None: the host's filesystem).
        self.feature_compatibility_version = config.server_version
        self.query_settings: dict[str, dict[str, Any]] = {}
        self.emulated_disk_bytes: int | None = None
        self.process_id = ObjectId()
        self.topology_counter = 0
        self.topology_changed = asyncio.Event()
        self.started_at = time.time()
        self.connection_ids = itertools.count(1)
        self.reply_ids = itertools.count(1)
        self.connections: dict[int, tuple[Connection, asyncio.StreamWriter]] = {}
        self.opcounters = {"insert": 0, "query": 0, "update": 0, "delete": 0, "getmore": 0,
                           "command": 0}
        self.total_connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self.writer.noop({"msg": "initiating set"})

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve_connection, self.config.bind_host,
                                                  self.config.port, limit=2**20)
        port = self._server.sockets[0].getsockname()[1]
        self.config.port = port
        self._spawn(self._periodic_noop())
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for _, stream in list(self.connections.values()):
            stream.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _periodic_noop(self) -> None:
        """Keep cluster time moving on an idle server, as replica-set primaries do."""
        while True:
            await asyncio.sleep(self.config.noop_interval_s)
            newest = self.oplog.newest
            if newest is None or time.time() - newest.wall.timestamp() >= self.config.noop_interval_s:
                self.writer.noop({"msg": "periodic noop"})
                self.oplog.notify()

    def bump_topology(self) -> None:
        self.topology_counter += 1
        self.topology_changed.set()
        self.topology_changed = asyncio.Event()

    def ownership_filter(self, ctx: Context, collection: Any) -> Any:
        """On a shard, for a request the router versioned (``shardVersion``): a predicate
        keeping the documents of this shard's chunks, so orphans never reach the router."""
        if not self.config.shard_role or "shardVersion" not in ctx.body:
            return None
        return self.sharding.ownership_filter(collection.ns)

    def command_spec(self, name: str) -> CommandSpec | None:
        """The handler and rules of command ``name`` (a router resolves its own)."""
        return REGISTRY.get(name)

    def may_bypass_write_blocking(self, conn: Connection) -> bool:
        return self.auth_store.can_bypass_write_blocking(conn)

    # -- connections -------------------------------------------------------------------------
    async def _serve_connection(self, reader: asyncio.StreamReader,
                                stream: asyncio.StreamWriter) -> None:
        peer = stream.get_extra_info("peername") or ("unknown", 0)
        conn = Connection(id=next(self.connection_ids), peer=f"{peer[0]}:{peer[1]}")
        self.connections[conn.id] = (conn, stream)
        self.total_connections += 1
        try:
            while not conn.closed:
                header = await reader.readexactly(wire.HEADER.size)
                length, request_id, _, opcode = wire.parse_header(header)
                payload = await reader.readexactly(length - wire.HEADER.size)
                if opcode == wire.OP_MSG:
                    request = wire.parse_op_msg(request_id, payload, header)
                elif opcode == wire.OP_QUERY:
                    request = wire.parse_op_query(request_id, payload)
                else:
                    raise wire.ProtocolError(f"unsupported opcode {opcode}")
                await self._answer(conn, stream, request)
        except (asyncio.IncompleteReadError, ConnectionError, wire.ProtocolError,
                CloseConnection) as exc:
            if isinstance(exc, wire.ProtocolError):
                log.info("closing connection %s: %s", conn.id, exc)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("connection %s failed", conn.id)
        finally:
            conn.closed = True
            self.connections.pop(conn.id, None)
            stream.close()

    async def _answer(self, conn: Connection, stream: asyncio.StreamWriter,
                      request: wire.Request) -> None:
        if request.opcode == wire.OP_QUERY:
            reply = await self._run_op_query(conn, request)
            data = wire.encode_op_reply(next(self.reply_ids), request.request_id,
                                        encode(reply))
        else:
            reply = await self.execute(conn, request)
            if reply is None:
                return
            if request.more_to_come:
                return
            data = wire.encode_op_msg(next(self.reply_ids), request.request_id,
                                      encode(reply))
        stream.write(data)
        await stream.drain()

    async def _run_op_query(self, conn: Connection, request: wire.Request) -> dict[str, Any]:
        body = request.body
        if "$query" in body:  # legacy wrapped form {$query: {...}, $readPreference: ...}
            body = body["$query"]
        name = next(iter(body), "")
        collection = request.collection or ""
        if not collection.endswith(".$cmd") or name not in ("hello", "isMaster", "ismaster"):
            return self._finish(CommandError(
                352, f"Unsupported OP_QUERY command: {name}. The client driver may require an "
                     f"upgrade.").to_reply(), None)
        body = dict(body)
        body["$db"] = collection[: -len(".$cmd")]
        return await self.execute(conn, wire.Request(request_id=request.request_id,
                                                     opcode=wire.OP_MSG, body=body)) or {}

    # -- commands ----------------------------------------------------------------------------
    async def execute(self, conn: Connection, request: wire.Request) -> dict[str, Any] | None:
        body = request.body
        for identifier, documents in request.sequences.items():
            body[identifier] = _DocumentSequence(documents)
        ctx: Context | None = None
        try:
            if not body:
                raise CommandError(59, "no such command: ''")
            name = next(iter(body))
            db = body.get("$db")
            if db is None:
                raise CommandError(40571, "OP_MSG requests require a $db argument")
            if not isinstance(db, str):
                raise CommandError(14, "$db must be a string")
            spec = self.command_spec(name)
            if spec is None:
                raise CommandError(59, f"no such command: '{name}'")
            ctx = Context(self, conn, db, body, name)
            self.opcounters["command"] += 1
            reply = await self._run(ctx, spec, request)
        except CommandError as exc:
            reply = exc.to_reply()
            self._label(ctx, reply, exc)
            if exc.code in STATE_CHANGE_CODES:
                # With the current topologyVersion, drivers treat the error as stale and
                # retry at once instead of marking the server unknown.
                reply["topologyVersion"] = {"processId": self.process_id,
                                            "counter": Int64(self.topology_counter)}
        except CloseConnection:
            raise
        except Exception as exc:  # a handler bug becomes an InternalError reply
            log.exception("command failed")
            reply = CommandError(1, f"internal emulator error: {type(exc).__name__}: {exc}").to_reply()
        self.oplog.notify()
        if conn.closed:  # a fail point dropped the connection after the command ran
            raise CloseConnection()
        if reply is None:
            return None
        return self._finish(reply, ctx)

    async def _run(self, ctx: Context, spec: CommandSpec, request: wire.Request) -> dict[str, Any]:
        db, name, body = ctx.db, ctx.name, ctx.body
        if spec.topology and spec.topology != self.config.mode:
            raise CommandError(59, f"no such command: '{name}'")
        if spec.admin_only and db != "admin":
            raise CommandError(13, f"{name} may only be run against the admin database.")
        validate_api_parameters(name, body)
        if self.config.auth and not spec.no_auth:
            self.auth_store.check(ctx, name)
        injected = await self.failpoints.intercept(ctx, self)
        if injected is not None:
            return injected
        cluster_time = body.get("$clusterTime")
        if isinstance(cluster_time, dict) and isinstance(cluster_time.get("clusterTime"), Timestamp):
            self.clock.advance_to(cluster_time["clusterTime"])
        self._await_cluster_time(body)
        if "lsid" in body and name not in ("endSessions",):
            ctx.session = self.sessions.get(body["lsid"])
        if self.config.shard_role:
            ctx.from_migrate = body.pop("fromMigrate", False) is True
        stored = self._begin_session_work(ctx, spec)
        if stored is not None:
            # A retried write answers with the first outcome, then waits for its write concern
            # again: a write concern error is not part of what was recorded.
            reply = dict(stored)
        else:
            try:
                collection_uuid.check_command(ctx, spec.name)
                result = spec.handler(ctx)
                if inspect.isawaitable(result):
                    result = await result
            except CommandError:
                if ctx.txn is not None and name not in ("commitTransaction", "abortTransaction"):
                    self._abort(ctx)
                raise
            reply = {**result, "ok": result.get("ok", 1.0)}
            if (ctx.session is not None and "txnNumber" in body and "autocommit" not in body
                    and name in RETRYABLE_WRITE_COMMANDS and name not in STATEMENT_WRITE_COMMANDS):
                # Recorded whole (the statement commands keep their history by statement id).
                # A router sends one retryable write to a shard in several batches under one
                # txnNumber, each naming its statements (stmtIds): each batch is its own retry.
                replies = ctx.session.retry_replies
                if any(_txn_of(key) != body["txnNumber"] for key in replies):
                    replies = {}
                replies[_retry_key(body)] = dict(reply)
                ctx.session.retry_replies = replies
        concern_error = unsatisfiable_write_concern(body.get("writeConcern"))
        if concern_error is not None and "$emulatorWriteConcernError" not in body:
            body["$emulatorWriteConcernError"] = concern_error
        injected_error = body.get("$emulatorWriteConcernError")
        if injected_error is not None:
            reply["writeConcernError"] = {k: v for k, v in injected_error.items()
                                          if k != "errorLabels"}
            labels = injected_error.get("errorLabels")
            if labels is None:
                labels = write_concern_error_labels(name, body, int(injected_error.get("code", 0)))
            if labels:
                reply["errorLabels"] = list(labels)
        if ctx.txn is not None and reply.get("writeErrors"):
            self._abort(ctx)
        return reply

    def _await_cluster_time(self, body: dict[str, Any]) -> None:
        read_concern = body.get("readConcern")
        if isinstance(read_concern, dict):
            name = next(iter(body))
            if (read_concern.get("level") == "snapshot" and "autocommit" not in body
                    and name not in SNAPSHOT_READ_COMMANDS):
                raise CommandError(72, f"Command {name} does not support {{ readConcern: "
                                       f"{{ level: \"snapshot\" }} }} outside transactions")
            at = read_concern.get("atClusterTime")
            newest = self.oplog.newest
            if (isinstance(at, Timestamp) and newest is not None
                    and (newest.ts.time, newest.ts.inc) > (at.time, at.inc)):
                # No multi-version storage: history before the latest write is not kept.
                raise CommandError(239, f"Read timestamp {at} is older than the oldest available "
                                        f"timestamp.")
            after = read_concern.get("afterClusterTime")
            if isinstance(after, Timestamp) and (after.time, after.inc) > (
                    self.clock.now.time, self.clock.now.inc):
                self.clock.advance_to(after)
                self.writer.noop({"msg": "advancing cluster time"})

    def _begin_session_work(self, ctx: Context, spec: CommandSpec) -> dict[str, Any] | None:
        """Transactions and retryable writes; a stored reply when the write is a retry."""
        body, session = ctx.body, ctx.session
        if "txnNumber" not in body:
            if "autocommit" in body or "startTransaction" in body:
                raise CommandError(50768, "txnNumber must be provided for multi-document "
                                          "transactions")
            return None
        if session is None:
            raise CommandError(50768, "Transaction number requires a session ID to also be "
                                      "specified")
        txn_number = int(body["txnNumber"])
        if "autocommit" not in body:
            if ctx.name not in RETRYABLE_WRITE_COMMANDS and ctx.name not in ("commitTransaction",
                                                                              "abortTransaction"):
                raise CommandError(50768, f"Transaction numbers are only allowed on retryable "
                                          f"writes, not on {ctx.name}")
            if txn_number < session.txn_number:
                raise CommandError(225, f"Retryable write with txnNumber {txn_number} is "
                                        f"prohibited on session because a newer retryable write "
                                        f"with txnNumber {session.txn_number} has already started")
            if txn_number == session.txn_number and _retry_key(body) in session.retry_replies:
                return session.retry_replies[_retry_key(body)]
            self._retire_transaction(ctx, txn_number)
            session.txn_number = txn_number
            return None
        if body["autocommit"] is not False:
            raise CommandError(50768, "autocommit must be false when specified")
        if body.get("startTransaction"):
            if txn_number < session.txn_number:
                raise CommandError(225, f"Cannot start transaction {txn_number} on session "
                                        f"because a newer transaction {session.txn_number} has "
                                        f"already started", labels=[])
            if txn_number == session.txn_number and session.transaction is not None:
                raise CommandError(251, f"Given transaction number {txn_number} does not match "
                                        f"any in-progress transactions.", labels=[TRANSIENT])
            self._retire_transaction(ctx, txn_number)
            session.txn_number = txn_number
            session.transaction = Transaction(txn_number, read_concern=body.get("readConcern"))
        txn = session.transaction
        if txn is None or txn.txn_number != txn_number or session.txn_number != txn_number:
            raise CommandError(251, f"Transaction with {{ txnNumber: {txn_number} }} has been "
                                    f"aborted." if txn is not None and txn.state == "aborted"
                               else f"Given transaction number {txn_number} does not match any "
                                    f"in-progress transactions.", labels=[TRANSIENT])
        if txn.state == "aborted" and ctx.name != "abortTransaction":
            raise CommandError(251, f"Transaction with {{ txnNumber: {txn_number} }} has been "
                                    f"aborted.", labels=[TRANSIENT])
        if txn.state == "committed" and ctx.name not in ("commitTransaction", "abortTransaction"):
            raise CommandError(256, f"Transaction {txn_number} has been committed.")
        if not spec.in_transaction and ctx.name not in ("commitTransaction", "abortTransaction"):
            raise CommandError(263, f"Cannot run '{ctx.name}' in a multi-document transaction.")
        if txn.state == "in_progress":
            ctx.txn = txn
        return None

    def _retire_transaction(self, ctx: Context, new_txn_number: int) -> None:
        session = ctx.session
        if session is not None and session.transaction is not None:
            txn = session.transaction
            if txn.state == "in_progress" and txn.txn_number < new_txn_number:
                self.writer.abort_transaction(txn)
                self.sessions.release_locks(txn)
                txn.state = "aborted"
            if txn.txn_number < new_txn_number:
                session.transaction = None

    def _abort(self, ctx: Context) -> None:
        txn = ctx.txn
        if txn is not None and txn.state == "in_progress":
            self.writer.abort_transaction(txn)
            self.sessions.release_locks(txn)
            txn.state = "aborted"
        ctx.txn = None

    def _label(self, ctx: Context | None, reply: dict[str, Any], exc: CommandError) -> None:
        if exc.labels is not None:
            if exc.labels:
                reply["errorLabels"] = list(exc.labels)
            else:
                reply.pop("errorLabels", None)
            return
        if ctx is None:
            return
        labels = error_labels(ctx.name, ctx.body, exc.code)
        if labels:
            reply["errorLabels"] = labels

    def _finish(self, reply: dict[str, Any], ctx: Context | None) -> dict[str, Any]:
        now = self.clock.now
        operation_time = ctx.operation_time if ctx is not None and ctx.operation_time else now
        reply["$clusterTime"] = {"clusterTime": now, "signature": _ZERO_SIGNATURE}
        reply["operationTime"] = operation_time
        return reply


def _retry_key(body: dict[str, Any]) -> Any:
    statements = body.get("stmtIds")
    if isinstance(statements, list):
        return (body["txnNumber"], tuple(int(s) for s in statements))
    return body["txnNumber"]


def _txn_of(retry_key: Any) -> Any:
    return retry_key[0] if isinstance(retry_key, tuple) else retry_key


# error_labels.cpp isTransientTransactionError: WriteConflict, LockTimeout,
# PreparedTransactionInProgress, the snapshot errors (SnapshotTooOld, StaleChunkHistory,
# SnapshotUnavailable), the re-targeting errors (StaleShardVersion, StaleEpoch, StaleConfig) and
# StaleDbVersion.
TRANSIENT_TRANSACTION_CODES = frozenset({112, 24, 267, 239, 241, 246, 63, 150, 13388, 249})


def error_labels(name: str, body: dict[str, Any], code: int) -> list[str]:
    """The labels a server attaches to a command error (server error_labels.cpp rules)."""
    in_txn = "txnNumber" in body and "autocommit" in body
    commit_or_abort = name in ("commitTransaction", "abortTransaction")
    if in_txn:
        transient = code in TRANSIENT_TRANSACTION_CODES or code == 251
        if not commit_or_abort:
            transient = transient or code in RETRIABLE_CODES
        if transient:
            return [TRANSIENT]
    retryable_write = "txnNumber" in body and "autocommit" not in body
    if (retryable_write or (in_txn and commit_or_abort)) and code in RETRIABLE_CODES:
        return ["RetryableWriteError"]
    return []


def unsatisfiable_write_concern(concern: Any) -> dict[str, Any] | None:
    """The writeConcernError a single-member set reports for a concern it cannot meet."""
    if not isinstance(concern, dict):
        return None
    w = concern.get("w")
    if isinstance(w, int) and not isinstance(w, bool) and w > 1:
        return {"code": 100, "codeName": "UnsatisfiableWriteConcern",
                "errmsg": "Not enough data-bearing nodes"}
    if isinstance(w, str) and w != "majority":
        return {"code": 79, "codeName": "UnknownReplWriteConcern",
                "errmsg": f"Write Concern mode '{w}' not found in replica set configuration"}
    return None


def write_concern_error_labels(name: str, body: dict[str, Any], code: int) -> list[str]:
    """A write-concern error never makes a transaction statement transient."""
    retryable = (name in ("commitTransaction", "abortTransaction")
                 or ("txnNumber" in body and "autocommit" not in body
                     and name in RETRYABLE_WRITE_COMMANDS))
    return ["RetryableWriteError"] if retryable and code in RETRIABLE_CODES else []


class _DocumentSequence(list):
    """A kind-1 section as a list of dicts that also keeps each document's raw BSON."""

    def __init__(self, raw_documents: list[bytes]) -> None:
        super().__init__(bson.decode(raw, codec_options=CODEC) for raw in raw_documents)
        self.raw = raw_documents


def serve_forever(config: EmulatorConfig, ready: Any = None) -> None:
    """Run a server until cancelled; ``ready(port)`` is called once it listens."""

    async def main() -> None:
        server = Server(config)
        port = await server.start()
        if ready is not None:
            ready(server, port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        await server.stop()

    asyncio.run(main())

