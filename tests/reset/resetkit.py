"""Helpers of the reset tests: clusters, a crashing migration, mongosh, the reset command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
from click.testing import CliRunner, Result

from mongoemu.testing import EmulatorProcess, start_emulator, start_secured_emulator
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.store import MetadataStore, StoredMigration
from pymongosync.request import StartRequest
from pymongosync.cli.reset import reset_command
from pymongosync.verifier.compare import compare_clusters

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("crash_runner.py")
# As in tests/product: clusters with authentication, where pymongosync's URIs (and mongosh's)
# sign in as root, which bypasses write blocking, and applications as a user that does not.
CLUSTER_ARGS = ["--noop-interval", "1"]
START = {"source": "cluster0", "destination": "cluster1"}
SYSTEM = {"admin", "config", "local"}


def start_cluster(mode: str = "replset", extra: list[str] | None = None) -> EmulatorProcess:
    return start_secured_emulator(mode, extra_args=CLUSTER_ARGS + list(extra or []))


def start_open_cluster(mode: str = "replset") -> EmulatorProcess:
    """A cluster without authentication, whose connection strings carry no credentials (where
    write blocking is recorded but every client bypasses it, as on MongoDB)."""
    return start_emulator(mode, extra_args=CLUSTER_ARGS)


def user_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    """An application's (or an operator's) connection: no bypass of write blocking."""
    return pymongo.MongoClient(emulator.application_uri or emulator.uri, appname="application",
                               serverSelectionTimeoutMS=10_000)


def seed(emulator: EmulatorProcess, documents: int = 3000) -> None:
    """Two databases, an index and a view on the source."""
    with user_client(emulator) as client:
        client.app.items.insert_many([{"i": i, "k": i % 7, "payload": "x" * 300}
                                      for i in range(documents)])
        client.app.users.insert_many([{"email": f"u{i}@example.com"} for i in range(200)])
        client.app.users.create_index("email", unique=True)
        client.shop.orders.insert_many([{"n": i, "total": i * 3} for i in range(500)])
        client.shop.command({"create": "big_orders", "viewOn": "orders",
                             "pipeline": [{"$match": {"total": {"$gt": 900}}}]})


@dataclass
class ClusterSnapshot:
    databases: list[str]
    write_blocked: bool
    balancer: str | None


def snapshot(emulator: EmulatorProcess) -> ClusterSnapshot:
    with pymongo.MongoClient(emulator.uri, serverSelectionTimeoutMS=10_000) as client:
        status = client.admin.command("serverStatus")
        balancer = (client.admin.command("balancerStatus")["mode"]
                    if status.get("process") == "mongos" else None)
        return ClusterSnapshot(sorted(client.list_database_names()),
                               bool(status["writeBlocking"]["userWritesBlocked"]), balancer)


def user_databases(emulator: EmulatorProcess) -> list[str]:
    return [name for name in snapshot(emulator).databases if name not in SYSTEM]


def stored_migration(emulator: EmulatorProcess) -> StoredMigration | None:
    with pymongo.MongoClient(emulator.uri, tz_aware=True) as client:
        return MetadataStore(client).load()


def run_and_crash(source: EmulatorProcess, destination: EmulatorProcess, kill_on: str,
                  delay: float = 0.0, body: dict[str, Any] | None = None) -> str:
    """Run a migration in a process that SIGKILLs itself at ``kill_on``; returns its output."""
    command = [sys.executable, str(RUNNER), source.uri, destination.uri, kill_on, str(delay)]
    if body is not None:
        command.append(json.dumps(body))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout,
                                                  result.stderr[-2000:])
    return result.stdout


def reset(source: EmulatorProcess | str, destination: EmulatorProcess | str, *options: str,
          expect_exit: int = 0) -> Result:
    """``mongosync reset --cluster0 SOURCE --cluster1 DESTINATION OPTIONS`` through click."""
    uris = [item if isinstance(item, str) else item.uri for item in (source, destination)]
    result = CliRunner().invoke(reset_command, ["--cluster0", uris[0], "--cluster1", uris[1],
                                                *options], catch_exceptions=False)
    assert result.exit_code == expect_exit, result.output
    return result


def migrate(source: EmulatorProcess, destination: EmulatorProcess,
            body: dict[str, Any] | None = None, compare_indexes: bool = True) -> None:
    """A new migration with the engine library, start to COMMITTED; the clusters end equal."""
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    migration = Migration.open(cluster0, cluster1)
    try:
        assert migration.state == "IDLE", migration.progress()
        request = StartRequest.from_document(body or START)
        migration.start(request)
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        # Views are not migrated when the destination holds pre-existing data (spec §3.3).
        comparison = compare_clusters(cluster0.client, cluster1.client,
                                      request.namespace_filter(), compare_indexes,
                                      include_views=not request.preExistingDestinationData)
        assert comparison.equal, comparison.summary()
        assert comparison.documents > 0
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()


def mongosh_path() -> str:
    candidates = [os.environ.get("MONGOSH"), str(REPO / ".ci/node/node_modules/.bin/mongosh"),
                  shutil.which("mongosh")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("mongosh not installed (set MONGOSH, or `make setup` installs it from npm into "
                ".ci/node)")


def mongosh(emulator: EmulatorProcess, script: str) -> str:
    """Type ``script`` into an interactive mongosh connected to ``emulator``."""
    result = subprocess.run([mongosh_path(), emulator.uri, "--quiet", "--norc"], input=script,
                            check=False,
                            capture_output=True, text=True, timeout=90,
                            env={**os.environ, "MONGOSH_NO_UPDATE_CHECK": "1",
                                 "DO_NOT_TRACK": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def shown_databases(output: str) -> list[str]:
    """The names a ``show dbs`` printed (``name   12.00 KiB`` lines, maybe after a prompt)."""
    return re.findall(r"(?:^|> )([\w.$-]+) +\d+(?:\.\d+)? (?:[KMGT]i)?B$", output, re.MULTILINE)
