"""What a replica-set member answers of the sharding surface.

A mongos is the router of ``python -m mongoemu cluster`` (:mod:`mongoemu.cluster`), which
handles listShards, the balancer, enableSharding, shardCollection, chunks and ``config.*``;
a shard's side of sharding is :mod:`mongoemu.cluster.shard`.
"""

from __future__ import annotations

from typing import Any

from mongoemu.commands.registry import command
from mongoemu.context import Context


@command("getShardMap", admin_only=True)
def get_shard_map(ctx: Context) -> dict[str, Any]:
    """A replica set is a one-shard map of itself."""
    config = ctx.server.config
    host = f"{config.replset_name}/{config.address}"
    return {"map": {config.replset_name: host}, "hosts": {config.address: config.replset_name},
            "connStrings": {host: config.replset_name}}
