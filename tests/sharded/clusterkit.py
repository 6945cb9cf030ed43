"""Helpers for the sharded-cluster tests: clients on the router and on each shard, chunk
placement, and the processes a cluster is made of."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pymongo

from mongoemu.testing import ClusterProcess

T = TypeVar("T")


def router(cluster: ClusterProcess, **options: Any) -> pymongo.MongoClient:
    return pymongo.MongoClient(cluster.uri, serverSelectionTimeoutMS=10_000, **options)


@contextmanager
def shard_clients(cluster: ClusterProcess) -> Iterator[dict[str, pymongo.MongoClient]]:
    """Direct connections to every shard process (what it holds, orphans included)."""
    clients = {name: pymongo.MongoClient(cluster.shard_uri(name), serverSelectionTimeoutMS=10_000)
               for name in cluster.shards}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


def counts_per_shard(cluster: ClusterProcess, db: str, collection: str) -> dict[str, int]:
    with shard_clients(cluster) as shards:
        return {name: client[db][collection].count_documents({})
                for name, client in shards.items()}


def chunks_of(client: pymongo.MongoClient, ns: str) -> list[dict[str, Any]]:
    entry = client.config.collections.find_one({"_id": ns})
    assert entry is not None, f"{ns} is not sharded"
    return list(client.config.chunks.find({"uuid": entry["uuid"]}).sort("min", 1))


def chunk_counts(client: pymongo.MongoClient, ns: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for chunk in chunks_of(client, ns):
        counts[chunk["shard"]] = counts.get(chunk["shard"], 0) + 1
    return counts


def cleanup_orphans(cluster: ClusterProcess, ns: str) -> None:
    """Wait until every shard has deleted the ranges it gave away (MongoDB's cleanupOrphaned)."""
    with shard_clients(cluster) as shards:
        for client in shards.values():
            client.admin.command("cleanupOrphaned", ns)


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited; only its parent's wait is missing


def exited(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def mongosh_path() -> str | None:
    root = Path(__file__).resolve().parents[2]
    for candidate in (os.environ.get("MONGOSH"), str(root / ".ci/node/node_modules/.bin/mongosh")):
        if candidate and Path(candidate).exists():
            return candidate
    return None
