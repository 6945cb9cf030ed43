"""`/start` explains leftovers and names the reset command; a reversed migration resets too."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator

import pymongo
import pytest
from click.testing import CliRunner

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.migration import Migration
from pymongosync.errors import DestinationNotEmpty
from pymongosync.store import METADATA_DATABASE
from pymongosync.request import StartRequest
from pymongosync.cli.reset import reset_command
from pymongosync.leftovers import reset_command_line

from .resetkit import (
    START,
    migrate,
    reset,
    seed,
    snapshot,
    start_open_cluster,
    stored_migration,
    user_databases,
)


@pytest.fixture
def open_clusters() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    # The suggested command is checked as typed: connection strings without credentials
    # (a redacted password could not be typed back).
    with start_open_cluster() as source, start_open_cluster() as destination:
        yield source, destination


def test_start_names_the_leftovers_and_the_command_that_removes_them(
        open_clusters: tuple[EmulatorProcess, EmulatorProcess]) -> None:
    source, destination = open_clusters
    seed(source, documents=300)
    with pymongo.MongoClient(destination.uri, appname=APP_NAME) as client:
        # What a real mongosync 1.20+ (its metadata and verifier databases) left behind.
        client["__mdb_internal_mongosync"].resumeData.insert_one({"_id": "coordinator"})
        client["__mdb_internal_mongosync_verifier_src"].hashes.insert_one({"n": 1})
        client.app.items.insert_one({"i": 1})
        client.admin.command("setUserWriteBlockMode", 1, **{"global": True})
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    try:
        migration = Migration.open(cluster0, cluster1)
        with pytest.raises(DestinationNotEmpty) as refused:
            migration.start(StartRequest.from_document(START))
    finally:
        cluster0.close()
        cluster1.close()
    message = refused.value.message
    assert ("the metadata databases __mdb_internal_mongosync, "
            "__mdb_internal_mongosync_verifier_src and the user databases app") in message
    assert ("writes are blocked on cluster1 (the destination) and not blocked on cluster0 "
            "(the source)") in message
    command = re.search(r"`(mongosync reset [^`]+)`", message).group(1)
    assert command == (f"mongosync reset --cluster0 '{source.uri}' "
                       f"--cluster1 '{destination.uri}'")

    # The command named, as typed (less the program name), removes what it can prove is a
    # leftover; the user database needs the documented --all-user-databases.
    arguments = shlex.split(command)[2:]
    first = CliRunner().invoke(reset_command, [*arguments, "--yes"])
    assert first.exit_code == 0, first.output
    assert "drop database __mdb_internal_mongosync on cluster1: migration metadata" in \
        first.output
    assert user_databases(destination) == ["app"] and not snapshot(destination).write_blocked
    second = CliRunner().invoke(reset_command, [*arguments, "--all-user-databases", "--yes"])
    assert second.exit_code == 0, second.output
    assert user_databases(destination) == []
    migrate(source, destination)


def test_the_command_line_never_shows_a_password() -> None:
    cluster = Cluster.connect("cluster0", "mongodb://admin:s3cret@127.0.0.1:1/?authSource=admin")
    try:
        assert reset_command_line(cluster) == \
            "mongosync reset --cluster0 'mongodb://<credentials>@127.0.0.1:1/?authSource=admin'"
    finally:
        cluster.close()


def test_a_reversed_migration_is_found_and_both_records_go(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, documents=300)
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    migration = Migration.open(cluster0, cluster1)
    try:
        migration.start(StartRequest.from_document({**START, "reversible": True}))
        migration.wait_for(lambda p: p["canCommit"], timeout=60)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
        migration.reverse()
        migration.wait_for(lambda p: p["state"] == "RUNNING", timeout=60)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()
    assert stored_migration(destination).global_state.superseded_by == "reverse"
    assert stored_migration(source).global_state.destination_label == "cluster0"

    result = reset(source, destination, "--yes")
    assert "stored on cluster0" in result.output  # the reverse's destination
    assert "drop database mongosync_reserved_for_internal_use on cluster1: the metadata this " \
           "migration superseded" in result.output
    # The reverse created nothing: each cluster keeps its data, both records and blocks go.
    assert "Kept on cluster0: app, shop" in result.output
    assert user_databases(source) == ["app", "shop"] and user_databases(destination) == [
        "app", "shop"]
    assert METADATA_DATABASE not in snapshot(source).databases
    assert not snapshot(source).write_blocked and not snapshot(destination).write_blocked
