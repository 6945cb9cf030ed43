"""The router process: what clients reach as a mongos.

It is the emulator's :class:`~mongoemu.server.Server` (same wire handling, handshake, fail points,
cluster time, cursors for getMore/killCursors) whose commands are resolved differently: the
routed ones (:mod:`mongoemu.cluster.commands`) target shards through the routing table, a few
(handshake, server information, fail points, sessions) run locally, and everything else goes to
the database's primary shard. Transactions are passed through to the shards they touch; a
transaction may read from several shards but write to one only (no two-phase commit).

``python -m mongoemu.cluster.router --config HOST:PORT --shard NAME=HOST:PORT ...`` (the
launcher starts it; see :mod:`mongoemu.cluster.launcher`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from bson.timestamp import Timestamp

from mongoemu import wire
from mongoemu.cluster.client import Remote, RemoteUnavailable, error_of
from mongoemu.cluster.routing import RoutingTable, ShardedCollection
from mongoemu.commands.registry import REGISTRY, CommandSpec
from mongoemu.commands.versioned_api import validate_api_parameters
from mongoemu.__main__ import _release as release_argument
from mongoemu.config import EmulatorConfig
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.server import Server, write_concern_error_labels
from mongoemu.sessions import TRANSIENT

log = logging.getLogger("mongoemu.router")

# Commands a mongos answers itself.
LOCAL_COMMANDS = frozenset({
    "hello", "isMaster", "ismaster", "ping", "buildInfo", "buildinfo", "whatsmyuri", "getMore",
    "killCursors", "configureFailPoint", "waitForFailPoint", "getParameter", "setParameter",
    "getCmdLineOpts", "getLog", "hostInfo", "startSession", "refreshSessions",
    "refreshLogicalSessionCacheNow", "connectionStatus", "getDefaultRWConcern",
    "setDefaultRWConcern", "listCommands", "saslStart", "saslContinue", "authenticate", "logout",
    "dropConnections", "fsync",
    # Users and roles live in the router (as they live on the config server of a MongoDB
    # cluster, whose mongos authenticates clients).
    "createUser", "updateUser", "dropUser", "dropAllUsersFromDatabase", "grantRolesToUser",
    "revokeRolesFromUser", "usersInfo", "createRole", "updateRole", "dropRole",
    "dropAllRolesFromDatabase", "grantPrivilegesToRole", "revokePrivilegesFromRole",
    "grantRolesToRole", "revokeRolesFromRole", "rolesInfo"})
# Result fields of a shard's reply that describe the shard's own state, not the command's.
SHARD_ONLY_FIELDS = frozenset({"$clusterTime", "operationTime", "topologyVersion", "$gleStats",
                               "lastCommittedOpTime", "$configServerState", "electionId",
                               "opTime"})
MULTI_SHARD_WRITE = ("the emulated router runs a transaction's writes on one shard only "
                     "(multi-shard writes need two-phase commit, which mongoemu does not "
                     "implement); this transaction already wrote on {first} and now targets "
                     "{second}")

RoutedHandler = Callable[[Context], Awaitable[dict[str, Any]]]
ROUTED: dict[str, CommandSpec] = {}


def routed(name: str, *aliases: str, **rules: Any) -> Callable[[RoutedHandler], RoutedHandler]:
    """Register the router's handler for a command (a separate table from the mongod one)."""

    def register(handler: RoutedHandler) -> RoutedHandler:
        spec = CommandSpec(name=name, handler=handler, aliases=aliases, **rules)
        for key in (name, *aliases):
            if key in ROUTED:
                raise RuntimeError(f"routed command {key!r} registered twice")
            ROUTED[key] = spec
        return handler

    return register


@dataclass
class RouterTransaction:
    txn_number: int
    read_concern: Any = None
    participants: dict[str, bool] = field(default_factory=dict)  # shard -> wrote
    write_shard: str | None = None


class Gate:
    """Per-namespace gate: routed writes and the start of routed reads pass together; a chunk
    migration passes alone (writers waiting first, so a busy namespace cannot starve it)."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(
                lambda: not self._exclusive and not self._waiting_exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._condition:
            self._waiting_exclusive += 1
            try:
                await self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting_exclusive -= 1
                self._condition.notify_all()  # readers held back for this writer may go on
            self._exclusive = True
        try:
            yield
        finally:
            async with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class Router(Server):
    def __init__(self, config: EmulatorConfig, config_server: tuple[str, int],
                 shards: list[tuple[str, str, int]], balancer_interval_s: float = 1.0) -> None:
        super().__init__(config)
        self.config_server = Remote("config", config_server[0], config_server[1], self.clock)
        self.remotes: dict[str, Remote] = {
            name: Remote(name, host, port, self.clock) for name, host, port in shards}
        self.shard_hosts = {name: f"{name}/{host}:{port}" for name, host, port in shards}
        self.table = RoutingTable(self.config_server, self.remotes, self.clock)
        self.gates: dict[str, Gate] = {}
        self.transactions: dict[bytes, RouterTransaction] = {}
        from mongoemu.cluster.balancer import Balancer
        self.balancer = Balancer(self, balancer_interval_s)
        self._initialized = asyncio.Event()
        import mongoemu.cluster.commands
        import mongoemu.cluster.writes
        import mongoemu.cluster.zones  # noqa: F401

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve_connection, self.config.bind_host,
                                                  self.config.port, limit=2**20)
        port = int(self._server.sockets[0].getsockname()[1])
        self.config.port = port
        # Listening first (the launcher restarts a router on the port it had), answering only
        # once the routing table is loaded: a command never sees a half-known cluster.
        await self._initialize_table()
        self._initialized.set()
        self._spawn(self.balancer.run())
        return port

    async def _initialize_table(self, timeout_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                await self.table.initialize(self.shard_hosts, self.config.address,
                                            self.config.full_version)
                status = await next(iter(self.remotes.values())).command(
                    "admin", {"serverStatus": 1})
                self.write_blocked = bool((status.get("writeBlocking") or {}).get(
                    "userWritesBlocked"))
                return
            except RemoteUnavailable:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await super().stop()
        self.config_server.close()
        for remote in self.remotes.values():
            remote.close()

    # -- dispatch ----------------------------------------------------------------------------
    def command_spec(self, name: str) -> CommandSpec | None:
        if name in ROUTED:
            return ROUTED[name]
        if name in LOCAL_COMMANDS:
            return REGISTRY.get(name)
        spec = REGISTRY.get(name)
        if spec is None or spec.topology == "replset" or name.startswith("_emulatorShard"):
            return None
        from mongoemu.cluster.commands import forward_to_primary
        return CommandSpec(name=name, handler=forward_to_primary, admin_only=spec.admin_only)

    async def _run(self, ctx: Context, spec: CommandSpec, request: wire.Request
                   ) -> dict[str, Any]:
        db, name, body = ctx.db, ctx.name, ctx.body
        await self._initialized.wait()
        if spec.topology and spec.topology != "mongos":
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
        if isinstance(cluster_time, dict) and isinstance(cluster_time.get("clusterTime"),
                                                         Timestamp):
            self.clock.advance_to(cluster_time["clusterTime"])
        if "lsid" in body and name != "endSessions":
            ctx.session = self.sessions.get(body["lsid"])
        if body.get("startTransaction") and ctx.session is not None and "txnNumber" in body:
            self.transactions[ctx.session.key] = RouterTransaction(
                int(body["txnNumber"]), read_concern=body.get("readConcern"))
        try:
            result = spec.handler(ctx)
            if inspect.isawaitable(result):
                result = await result
        except RemoteUnavailable as exc:
            raise CommandError(6, f"Could not reach {exc}",
                               code_name_override="HostUnreachable") from None
        reply = {**result, "ok": result.get("ok", 1.0)}
        transaction = self.transaction_of(ctx)
        if transaction is not None and (transaction.write_shard or transaction.participants):
            reply["recoveryToken"] = {"recoveryShardId": transaction.write_shard
                                      or next(iter(transaction.participants))}
        injected_error = body.get("$emulatorWriteConcernError")
        if injected_error is not None:
            reply["writeConcernError"] = {k: v for k, v in injected_error.items()
                                          if k != "errorLabels"}
            labels = injected_error.get("errorLabels")
            if labels is None:
                labels = write_concern_error_labels(name, body,
                                                    int(injected_error.get("code", 0)))
            if labels:
                reply["errorLabels"] = list(labels)
        return reply

    # -- talking to shards -------------------------------------------------------------------
    def gate(self, ns: str) -> Gate:
        gate = self.gates.get(ns)
        if gate is None:
            gate = self.gates[ns] = Gate()
        return gate

    def transaction_of(self, ctx: Context) -> RouterTransaction | None:
        if "autocommit" not in ctx.body or ctx.session is None:
            return None
        transaction = self.transactions.get(ctx.session.key)
        if transaction is None or transaction.txn_number != int(ctx.body.get("txnNumber", -1)):
            return None
        return transaction

    async def send(self, ctx: Context, shard: str, db: str, body: dict[str, Any], *,
                   write: bool = False, stmt_ids: list[int] | None = None,
                   sequences: dict[str, list[bytes]] | None = None,
                   remote: Remote | None = None, retryable: bool = True) -> dict[str, Any]:
        """Run ``body`` on a shard for the client command ``ctx``: the session, transaction,
        concern and API fields follow it, and the reply's operation time becomes the
        command's. ``retryable=False``: a write of the router's own making inside the client's
        (it must not be taken for a retry of the client's statements)."""
        client = ctx.body
        if write and remote is None:
            self.check_writable(ctx, db)
        for name in ("lsid", "comment", "apiVersion", "apiStrict", "apiDeprecationErrors"):
            if name in client and name not in body:
                body[name] = client[name]
        in_transaction = "autocommit" in client
        if "txnNumber" in client and (in_transaction or (write and retryable)):
            body["txnNumber"] = client["txnNumber"]
        if in_transaction and remote is None:
            self._join_transaction(ctx, shard, body, write)
        else:
            for concern in ("readConcern", "writeConcern") if write else ("readConcern",):
                if concern in client and concern not in body:
                    body[concern] = client[concern]
            if stmt_ids is not None and "txnNumber" in client:
                body["stmtIds"] = stmt_ids
        target = remote or self.remotes[shard]
        reply = await target.command(db, body, app_name=ctx.conn.app_name, sequences=sequences)
        operation_time = reply.get("operationTime")
        if isinstance(operation_time, Timestamp) and (
                ctx.operation_time is None
                or (operation_time.time, operation_time.inc) > (ctx.operation_time.time,
                                                                ctx.operation_time.inc)):
            ctx.operation_time = operation_time
        return reply

    def check_writable(self, ctx: Context, db: str) -> None:
        """User write blocking, decided here: the router knows who the client is (shards see
        only the router), and the mode it set on every shard."""
        if self.write_blocked and db not in ("admin", "config", "local") and \
                not self.may_bypass_write_blocking(ctx.conn):
            raise CommandError(371, "User writes blocked")

    def _join_transaction(self, ctx: Context, shard: str, body: dict[str, Any],
                          write: bool) -> None:
        body["autocommit"] = False
        transaction = self.transaction_of(ctx)
        if transaction is None:
            raise CommandError(251, f"Transaction with {{ txnNumber: "
                                    f"{ctx.body.get('txnNumber')} }} is not known to this "
                                    f"router (it was restarted, or the transaction ended)",
                               labels=[TRANSIENT])
        if write and transaction.write_shard not in (None, shard):
            raise CommandError(263, MULTI_SHARD_WRITE.format(first=transaction.write_shard,
                                                             second=shard))
        if shard not in transaction.participants:
            body["startTransaction"] = True
            if transaction.read_concern is not None:
                body["readConcern"] = transaction.read_concern
            transaction.participants[shard] = False
        if write:
            transaction.participants[shard] = True
            transaction.write_shard = shard

    async def send_checked(self, ctx: Context, shard: str, db: str, body: dict[str, Any],
                           **options: Any) -> dict[str, Any]:
        """:meth:`send`, failing the client command with the shard's error."""
        reply = await self.send(ctx, shard, db, body, **options)
        raise_for(reply)
        return reply

    async def broadcast(self, ctx: Context, shards: list[str], db: str,
                        body: dict[str, Any], **options: Any) -> dict[str, dict[str, Any]]:
        """The same command on several shards at once (each gets its own copy)."""
        replies = await asyncio.gather(*(self.send(ctx, shard, db, dict(body), **options)
                                         for shard in shards))
        return dict(zip(shards, replies))

    async def push_metadata(self, sharded: ShardedCollection | None, ns: str) -> None:
        """Tell every shard which ranges of ``ns`` it owns now (or that it is not sharded)."""
        async def push(shard: str, remote: Remote) -> None:
            body: dict[str, Any] = {"_emulatorShardSetMetadata": ns}
            if sharded is None:
                body["key"] = None
            else:
                body.update(key=sharded.key, ranges=sharded.ranges_of(shard),
                            version=list(sharded.version))
            raise_for(await remote.command("admin", body))

        await asyncio.gather(*(push(shard, remote) for shard, remote in self.remotes.items()))


def raise_for(reply: dict[str, Any]) -> None:
    """Fail the client's command with a shard's error, its labels kept as the shard set them."""
    error = error_of(reply)
    if error is None:
        return
    code, message = error
    extra = {key: value for key, value in reply.items()
             if key not in ("ok", "errmsg", "code", "codeName", "errorLabels")
             and key not in SHARD_ONLY_FIELDS}
    raise CommandError(code, message, code_name_override=reply.get("codeName"), extra=extra,
                       labels=list(reply.get("errorLabels") or []))


def result_of(reply: dict[str, Any]) -> dict[str, Any]:
    """A shard's successful reply as the router's result (its own bookkeeping removed)."""
    return {key: value for key, value in reply.items()
            if key not in SHARD_ONLY_FIELDS and key != "ok"}


# -- the process ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mongoemu.cluster.router",
                                     description="The router (mongos) of an emulated cluster.")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--config", required=True, metavar="HOST:PORT",
                        help="the config server")
    parser.add_argument("--shard", action="append", default=[], metavar="NAME=HOST:PORT",
                        help="a shard (repeat for each)")
    parser.add_argument("--server-version", default="7.0", type=release_argument)
    parser.add_argument("--balancer-interval", type=float, default=1.0,
                        help="seconds between balancer rounds")
    parser.add_argument("--auth", action="store_true", help="require SCRAM authentication")
    parser.add_argument("--user", help="root user created at start (with --auth)")
    parser.add_argument("--password", help="password of the root user (with --auth)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.auth and not (args.user and args.password):
        parser.error("--auth needs --user and --password for the initial root user")
    if not args.shard:
        parser.error("at least one --shard is needed")
    return args


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    shards = []
    for item in args.shard:
        name, _, address = item.partition("=")
        shards.append((name, *_address(address)))
    config = EmulatorConfig(port=args.port, bind_host=args.bind, advertised_host=args.bind,
                            mode="mongos", server_version=args.server_version[0],
                            release=args.server_version[1],
                            shard_names=[name for name, _, _ in shards], auth=args.auth,
                            root_user=args.user, root_password=args.password)

    async def run() -> None:
        router = Router(config, _address(args.config), shards, args.balancer_interval)
        port = await router.start()
        print(f"mongoemu ready uri=mongodb://{config.advertised_host}:{port}/ port={port} "
              f"mode=router version={config.server_version}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await router.stop()

    asyncio.run(run())


if __name__ == "__main__":
    # Run the imported module's main: the command table must be this module's, not __main__'s.
    from mongoemu.cluster.router import main as router_main
    router_main()
