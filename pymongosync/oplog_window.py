"""The source's oplog window: how much history it holds (pre-flight's estimate against the
copy) and how much of it the migration still has (``estimatedOplogTimeRemaining``).

mongosync reports the time between the oldest entry the source's oplog still holds and the
oldest entry the migration still needs (spec §3.4, §5.5): when it reaches zero, the change
stream cannot resume (``ChangeStreamHistoryLost``) and the migration must start over. The
oldest entry still needed is where the change buffer has stored up to while it receives, and
where change application has applied up to after that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bson.timestamp import Timestamp
from pymongo import MongoClient, uri_parser

from pymongosync.clusters import Cluster

# Below this much headroom, /progress warns with mongosync's text.
LOW_SECONDS = 15 * 60
LOW_OPLOG_WARNING = ("The amount of available oplog on the source cluster is too small for "
                     "mongosync to complete successfully.")
# A fresh oplog that has never filled needs this much history before its rate is projected.
HISTORY_NEEDED_SECONDS = 60


# What a source answers when the user mongosync signs in as cannot read its oplog figures:
# AuthenticationFailed (a shard without that user: users created through a router live on
# the config servers) and Unauthorized.
REFUSED_CODES = (13, 18)


def earliest_entry(client: MongoClient[Any]) -> Timestamp | None:
    """The oldest entry a replica set's oplog holds (``serverStatus`` with ``oplog: 1``)."""
    times = client.admin.command("serverStatus", oplog=1).get("oplog") or {}
    earliest = times.get("earliestOptime")
    return earliest if isinstance(earliest, Timestamp) else None


def window_seconds(client: MongoClient[Any]) -> float | None:
    """How many seconds of writes a replica set's oplog holds at the rate seen so far, or None
    when a fresh oplog has too little history to tell (it has not filled yet)."""
    times = client.admin.command("serverStatus", oplog=1).get("oplog") or {}
    earliest, latest = times.get("earliestOptime"), times.get("latestOptime")
    if earliest is None or latest is None:
        return None
    span = max(latest.time - earliest.time, 1)
    stats = client.local.command("collStats", "oplog.rs")
    size, capacity = int(stats.get("size", 0)), int(stats.get("maxSize", 0))
    if capacity and size and size < 0.9 * capacity:
        if span < HISTORY_NEEDED_SECONDS:
            return None
        return float(span * capacity / size)
    return float(span)


def window_seconds_of(cluster: Cluster) -> list[tuple[str | None, float | None]]:
    """The window of each replica set of a cluster: ``[(None, seconds)]`` for a replica set,
    ``[(shard name, seconds), ...]`` for a sharded cluster."""
    if not cluster.is_sharded:
        return [(None, window_seconds(cluster.client))]
    windows: list[tuple[str | None, float | None]] = []
    for name, client in shard_clients(cluster):
        with client:
            windows.append((name, window_seconds(client)))
    return windows


def shard_clients(cluster: Cluster) -> Iterator[tuple[str, MongoClient[Any]]]:
    """A direct connection to one member of each shard of a sharded cluster, signed in as the
    cluster's user (the oplog is a shard's, not the router's)."""
    parsed = uri_parser.parse_uri(cluster.uri, validate=False, warn=False)
    options = {key: value for key, value in parsed["options"].items()
               if key.lower() not in ("replicaset", "directconnection", "loadbalanced",
                                      "srvservicename", "srvmaxhosts", "readpreference")}
    credentials: dict[str, Any] = {}
    if parsed.get("username"):
        credentials = {"username": parsed["username"], "password": parsed["password"]}
    for shard in cluster.client.admin.command("listShards")["shards"]:
        first_host = str(shard["host"]).split("/", 1)[-1].split(",")[0]
        yield shard["_id"], MongoClient(first_host, directConnection=True,
                                        serverSelectionTimeoutMS=5000, **credentials, **options)


def earliest_entry_of(cluster: Cluster) -> Timestamp | None:
    """The oldest oplog entry a cluster still holds (for a sharded one: the shard whose oplog
    reaches back least far)."""
    if not cluster.is_sharded:
        return earliest_entry(cluster.client)
    found: list[Timestamp] = []
    for _, client in shard_clients(cluster):
        with client:
            earliest = earliest_entry(client)
        if earliest is None:
            return None
        found.append(earliest)
    return max(found) if found else None


def remaining_seconds(earliest: Timestamp, needed: Timestamp) -> int:
    return max(0, needed.time - earliest.time)


def describe(seconds: int | None) -> str:
    """In mongosync's words: ``"12 hours"``, ``"45 minutes"``, ``"less than 15 minutes"``,
    ``"more than 72 hours"``, ``"not checked yet"``."""
    if seconds is None:
        return "not checked yet"
    if seconds < LOW_SECONDS:
        return "less than 15 minutes"
    if seconds > 72 * 3600:
        return "more than 72 hours"
    if seconds < 2 * 3600:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours"
