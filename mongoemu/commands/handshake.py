"""The handshake and monitoring commands: hello/isMaster, ping, buildInfo, sessions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId

from mongoemu.clock import wall_clock
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError

ELECTION_ID = ObjectId("7fffffff0000000000000001")


def _topology_version(ctx: Context) -> dict[str, Any]:
    return {"processId": ctx.server.process_id, "counter": Int64(ctx.server.topology_counter)}


async def _await_topology_change(ctx: Context) -> None:
    """Awaitable hello: answer when the topology changes or maxAwaitTimeMS passes."""
    body = ctx.body
    has_version, has_wait = "topologyVersion" in body, "maxAwaitTimeMS" in body
    if has_version != has_wait:
        raise CommandError(9, "A request with a 'topologyVersion' must include "
                              "'maxAwaitTimeMS'" if has_version else
                              "A request with 'maxAwaitTimeMS' must include a 'topologyVersion'")
    if not has_version:
        return
    version = body["topologyVersion"]
    if not isinstance(version, dict):
        raise CommandError(14, "topologyVersion must be an object")
    wait_ms = body["maxAwaitTimeMS"]
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, (int, float)) or wait_ms < 0:
        raise CommandError(2, "maxAwaitTimeMS must be a non-negative integer")
    if version.get("processId") != ctx.server.process_id:
        return
    if int(version.get("counter", 0)) < ctx.server.topology_counter:
        return
    try:
        await asyncio.wait_for(ctx.server.topology_changed.wait(), float(wait_ms) / 1000.0)
    except asyncio.TimeoutError:
        pass


@command("hello", "isMaster", "ismaster", no_auth=True, in_transaction=True)
async def hello(ctx: Context) -> dict[str, Any]:
    await _await_topology_change(ctx)
    server, config, body = ctx.server, ctx.server.config, ctx.body
    client = body.get("client")
    if isinstance(client, dict):
        ctx.conn.client_metadata = client
        application = client.get("application")
        if isinstance(application, dict) and isinstance(application.get("name"), str):
            ctx.conn.app_name = application["name"]
    reply: dict[str, Any] = {}
    if body.get("helloOk"):
        reply["helloOk"] = True
    reply["topologyVersion"] = _topology_version(ctx)
    if ctx.name == "hello":
        reply["isWritablePrimary"] = True
    else:
        reply["ismaster"] = True
    if config.is_mongos:
        reply["msg"] = "isdbgrid"
    else:
        newest = server.oplog.newest
        last_ts = newest.ts if newest is not None else server.clock.now
        last_wall = newest.wall if newest is not None else wall_clock()
        op_time = {"ts": last_ts, "t": Int64(1)}
        reply.update({
            "hosts": [config.address], "setName": config.replset_name, "setVersion": 1,
            "secondary": False, "primary": config.address, "me": config.address,
            "electionId": ELECTION_ID,
            "lastWrite": {"opTime": op_time, "lastWriteDate": last_wall,
                          "majorityOpTime": op_time, "majorityWriteDate": last_wall},
        })
    reply.update({
        "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000,
        "maxWriteBatchSize": 100000, "localTime": wall_clock(),
        "logicalSessionTimeoutMinutes": 30, "connectionId": ctx.conn.id,
        "minWireVersion": 0, "maxWireVersion": config.max_wire_version, "readOnly": False,
    })
    mechanisms_for = body.get("saslSupportedMechs")
    if isinstance(mechanisms_for, str):
        mechanisms = server.auth_store.supported_mechanisms(mechanisms_for)
        if mechanisms:
            reply["saslSupportedMechs"] = mechanisms
    speculative = body.get("speculativeAuthenticate")
    if isinstance(speculative, dict) and config.auth:
        answer = server.auth_store.speculative_start(ctx.conn, speculative)
        if answer is not None:
            reply["speculativeAuthenticate"] = answer
    return reply


@command("ping", no_auth=True, in_transaction=True)
def ping(ctx: Context) -> dict[str, Any]:
    return {}


@command("buildInfo", "buildinfo", no_auth=True, in_transaction=True)
def build_info(ctx: Context) -> dict[str, Any]:
    config = ctx.server.config
    parts = [int(p) for p in config.full_version.split(".")]
    return {
        "version": config.full_version, "gitVersion": "0" * 40, "modules": [],
        "allocator": "tcmalloc", "javascriptEngine": "mozjs", "sysInfo": "deprecated",
        "versionArray": parts + [0], "bits": 64, "debug": False,
        "maxBsonObjectSize": 16777216, "storageEngines": ["devnull", "wiredTiger"],
        "openssl": {"running": "disabled", "compiled": "disabled"},
        "buildEnvironment": {"distmod": "mongoemu", "target_os": "linux"},
    }


@command("whatsmyuri", no_auth=True)
def whats_my_uri(ctx: Context) -> dict[str, Any]:
    return {"you": ctx.conn.peer}


@command("endSessions", no_auth=True)
def end_sessions(ctx: Context) -> dict[str, Any]:
    lsids = ctx.body["endSessions"]
    if not isinstance(lsids, list):
        raise CommandError(14, "endSessions must be an array of session ids")
    for lsid in lsids:
        session = ctx.server.sessions.end(lsid)
        if session is not None:
            _drop_session(ctx, session)
    return {}


def _drop_session(ctx: Context, session: Any) -> None:
    txn = session.transaction
    if txn is not None and txn.state == "in_progress":
        ctx.server.writer.abort_transaction(txn)
        ctx.server.sessions.release_locks(txn)
        txn.state = "aborted"
    ctx.server.cursors.kill_session(session.key)


@command("killSessions")
def kill_sessions(ctx: Context) -> dict[str, Any]:
    return end_sessions(ctx) if isinstance(ctx.body["killSessions"], list) else {}


@command("killAllSessions", "killAllSessionsByPattern")
def kill_all_sessions(ctx: Context) -> dict[str, Any]:
    for key in list(ctx.server.sessions.sessions):
        session = ctx.server.sessions.sessions.pop(key)
        _drop_session(ctx, session)
    return {}


@command("startSession")
def start_session(ctx: Context) -> dict[str, Any]:
    return {"id": {"id": Binary(uuid.uuid4().bytes, 4)}, "timeoutMinutes": 30}


@command("refreshSessions", "refreshLogicalSessionCacheNow")
def refresh_sessions(ctx: Context) -> dict[str, Any]:
    return {}
