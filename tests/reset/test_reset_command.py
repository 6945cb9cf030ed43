"""`mongosync reset`: after crashes, with pre-existing data, dry runs, reruns and bad input."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest
from click.testing import CliRunner

from mongoemu.testing import EmulatorProcess, start_emulator
from pymongosync import reset as reset_module
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.store import METADATA_DATABASE
from pymongosync.request import StartRequest
from pymongosync.cli.reset import reset_command

from .resetkit import (
    REPO,
    START,
    migrate,
    reset,
    run_and_crash,
    seed,
    snapshot,
    start_cluster,
    stored_migration,
    user_client,
    user_databases,
)


def stopped_migration(source: EmulatorProcess, destination: EmulatorProcess,
                      body: dict | None = None, until: str = "change event application") -> None:
    """A migration run in-process to ``until``, then its process stops (no clean-up)."""
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    migration = Migration.open(cluster0, cluster1)
    try:
        migration.start(StartRequest.from_document(body or START))
        migration.wait_for(lambda p: p["info"] == until, timeout=60)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()


def test_after_kill_during_copy(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=40000)
    run_and_crash(source, destination, kill_on="collection copy", delay=0.2)
    assert stored_migration(destination).resume.phase.label == "collection copy"
    assert snapshot(destination).write_blocked

    result = reset(source, destination, "--yes")
    assert "drop database app on cluster1: created by this migration" in result.output
    assert f"drop database {METADATA_DATABASE} on cluster1" in result.output
    assert "Databases remaining on cluster1: admin, config, local" in result.output
    assert user_databases(destination) == []
    assert not snapshot(destination).write_blocked and not snapshot(source).write_blocked
    migrate(source, destination)


def test_after_kill_during_commit_with_the_source_blocked(source: EmulatorProcess,
                                                          destination: EmulatorProcess) -> None:
    seed(source, documents=2000)
    run_and_crash(source, destination, kill_on="blocked writes on the source")
    stored = stored_migration(destination)
    assert stored.resume.state == "COMMITTING" and stored.global_state.source_write_blocked_by_us
    assert not stored.resume.can_write
    assert snapshot(source).write_blocked and snapshot(destination).write_blocked

    result = reset(source, destination, "--yes")
    assert ("disable write blocking on cluster0 (db.adminCommand({setUserWriteBlockMode: 1, "
            "global: false})): the source, blocked by this migration") in result.output
    assert not snapshot(source).write_blocked and not snapshot(destination).write_blocked
    assert user_databases(destination) == []
    with user_client(source) as application:  # the source takes writes again
        application.app.items.insert_one({"i": -1, "k": 0, "payload": "after reset"})
    migrate(source, destination)


def test_reset_twice_finds_nothing_the_second_time(source: EmulatorProcess,
                                                   destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    stopped_migration(source, destination)
    reset(source, destination, "--yes")
    after_first = (snapshot(source), snapshot(destination))
    again = reset(source, destination, "--yes")
    assert "Nothing to reset." in again.output and "Plan:" not in again.output
    assert (snapshot(source), snapshot(destination)) == after_first


def test_refused_while_the_migration_process_runs(source: EmulatorProcess,
                                                  destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=60)
        before = snapshot(destination)
        result = reset(source, destination, "--yes", expect_exit=1)
        assert "still working on the migration stored on cluster1" in result.output
        assert "Ctrl-C" in result.output and "/api/v1/pause" in result.output
        assert snapshot(destination) == before and METADATA_DATABASE in before.databases
        assert migration.progress()["state"] == "RUNNING" and migration.error is None
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()


def test_pre_existing_databases_are_kept_unless_all_user_databases(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    with user_client(destination) as client:
        client.reports.daily.insert_one({"day": 1})  # unrelated to the migration
        client.app.local_notes.insert_one({"note": "kept"})  # a database the migration shares
    body = {**START, "preExistingDestinationData": True,
            "includeNamespaces": [{"database": "app", "collections": ["items", "users"]},
                                  {"database": "shop"}]}
    stopped_migration(source, destination, body)

    result = reset(source, destination, "--yes")
    assert "drop collection app.items on cluster1" in result.output
    assert "Kept on cluster1: app, reports" in result.output, result.output
    assert user_databases(destination) == ["app", "reports"]
    with pymongo.MongoClient(destination.uri) as client:
        assert client.app.list_collection_names() == ["local_notes"]
    # Start again on the same pre-existing data: the kept databases do not get in the way.
    migrate(source, destination, body)

    # That one committed: the destination may serve applications now, so a plain reset
    # refuses, and --all-user-databases (the documented procedure) drops every user database.
    refused = reset(source, destination, "--yes", expect_exit=1)
    assert "has committed (canWrite: true)" in refused.output
    assert user_databases(destination) == ["app", METADATA_DATABASE, "reports", "shop"]
    everything = reset(source, destination, "--all-user-databases", "--yes")
    assert "drop database reports on cluster1: --all-user-databases" in everything.output
    assert user_databases(destination) == []


def test_dry_run_changes_nothing(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    run_and_crash(source, destination, kill_on="blocked writes on the source")
    before = (snapshot(source), snapshot(destination))
    assert before[0].write_blocked and before[1].write_blocked
    result = reset(source, destination, "--dry-run", "--all-user-databases",
                   "--enable-balancer")
    assert "Plan:" in result.output and "drop database app on cluster1" in result.output
    assert "Dry run: nothing was changed." in result.output
    assert (snapshot(source), snapshot(destination)) == before


def test_without_yes_and_without_a_terminal_nothing_happens(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    stopped_migration(source, destination)
    before = snapshot(destination)
    result = reset(source, destination, expect_exit=1)
    assert "standard input is not a terminal" in result.output and "--yes" in result.output
    assert snapshot(destination) == before


def test_confirmation_on_a_terminal(source: EmulatorProcess,
                                    destination: EmulatorProcess) -> None:
    """The console entry point asks before changing anything; only "y" applies the plan."""
    seed(source, documents=100)
    with user_client(destination) as client:
        client.reports.daily.insert_one({"day": 1})

    def answer(reply: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "pymongosync.cli.reset", "--cluster0", source.uri,
             "--cluster1", destination.uri, "--all-user-databases"],
            stdin=follower, stdout=follower, stderr=follower, cwd=REPO, close_fds=True)
        os.close(follower)
        output = b""
        deadline = time.monotonic() + 60
        while b"Apply this plan?" not in output and time.monotonic() < deadline:
            output += os.read(leader, 4096)
        os.write(leader, reply.encode() + b"\n")
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        return process.wait(timeout=30), output.decode()

    code, output = answer("n")
    assert code == 1 and "not confirmed. Nothing was changed" in output, output
    assert user_databases(destination) == ["reports"]
    code, output = answer("y")
    assert code == 0 and "drop database reports on cluster1" in output, output
    assert user_databases(destination) == []


def test_metadata_gone_but_migrated_databases_remain(source: EmulatorProcess,
                                                     destination: EmulatorProcess) -> None:
    seed(source, documents=500)
    stopped_migration(source, destination)
    with pymongo.MongoClient(destination.uri, appname="pymongosync") as client:
        client.drop_database(METADATA_DATABASE)  # someone dropped only the metadata

    result = reset(source, destination, "--yes")
    assert "no migration metadata records what a migration created" in result.output
    assert "--all-user-databases" in result.output
    assert user_databases(destination) == ["app", "shop"]  # listed, kept
    assert not snapshot(destination).write_blocked  # the destination is unblocked all the same

    reset(source, destination, "--all-user-databases", "--yes")
    assert user_databases(destination) == []
    migrate(source, destination)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_cluster(source: EmulatorProcess, closed_port: int,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reset_module, "CONNECT_TIMEOUT_MS", 500)
    before = snapshot(source)
    result = reset(source, f"mongodb://127.0.0.1:{closed_port}/", "--yes", expect_exit=1)
    assert f"cannot reach cluster1 (127.0.0.1:{closed_port})" in result.output
    assert "Nothing was changed" in result.output and "Traceback" not in result.output
    assert snapshot(source) == before


def test_wrong_credentials(destination: EmulatorProcess) -> None:
    with start_emulator("replset", extra_args=["--auth", "--user", "root", "--password",
                                               "right"]) as secured:
        wrong = f"mongodb://root:not-the-password@127.0.0.1:{secured.port}/?authSource=admin"
        result = reset(wrong, destination, "--yes", expect_exit=1)
    assert "cluster0 (127.0.0.1" in result.output and "credentials" in result.output
    assert "not-the-password" not in result.output


def test_source_given_as_destination(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=300)
    stopped_migration(source, destination)
    before = (snapshot(source), snapshot(destination))
    swapped = reset(destination, source, "--yes", expect_exit=1)  # --cluster0 is the destination
    assert "look swapped" in swapped.output
    named = reset(source, destination, "--destination", "cluster0", "--yes", expect_exit=1)
    assert "cluster0 is not the destination" in named.output
    same = reset(source, source, "--yes", expect_exit=1)
    assert "the same cluster" in same.output
    with start_cluster() as stranger:  # not the cluster the migration was started with
        other = reset(stranger, destination, "--yes", expect_exit=1)
    assert "was started with cluster0" in other.output
    assert (snapshot(source), snapshot(destination)) == before


def test_source_given_as_destination_without_metadata(source: EmulatorProcess,
                                                      destination: EmulatorProcess) -> None:
    seed(source, documents=100)
    result = reset(destination, source, "--all-user-databases", "--yes", expect_exit=1)
    assert "cluster1 looks like a source" in result.output
    assert user_databases(source) == ["app", "shop"]


def test_config_file_and_overrides(source: EmulatorProcess, destination: EmulatorProcess,
                                   tmp_path: Path, closed_port: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mongosync.yaml"
    config.write_text(f'cluster0: "{source.uri}"\ncluster1: "{destination.uri}"\n'
                      f'port: 27182\nverbosity: "INFO"\n')
    result = CliRunner().invoke(reset_command, ["--config", str(config), "--dry-run"])
    assert result.exit_code == 0 and "Nothing to reset." in result.output, result.output
    monkeypatch.setattr(reset_module, "CONNECT_TIMEOUT_MS", 500)
    overridden = CliRunner().invoke(reset_command, [
        "--config", str(config), "--cluster1", f"mongodb://127.0.0.1:{closed_port}/"])
    assert overridden.exit_code == 1 and "cannot reach cluster1" in overridden.output


def test_balancers_only_where_this_migration_stopped_them() -> None:
    with start_cluster("mongos") as source, start_cluster("mongos") as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.app.items.insert_many([{"i": i} for i in range(200)])
            client.admin.command("balancerStop")  # off before the migration
        stopped_migration(source, destination)
        assert snapshot(destination).balancer == "off"  # the migration stopped it

        kept_off = reset(source, destination, "--dry-run")
        assert "the balancer on cluster1 was stopped by this migration and stays off" in \
            kept_off.output
        result = reset(source, destination, "--enable-balancer", "--yes")
        assert "start the balancer on cluster1" in result.output
        assert "the balancer on cluster0 is off, and no metadata says" in result.output
        assert snapshot(destination).balancer == "full" and snapshot(source).balancer == "off"

        forced = reset(source, destination, "--force-balancer", "--yes")
        assert "start the balancer on cluster0" in forced.output
        assert snapshot(source).balancer == "full"
