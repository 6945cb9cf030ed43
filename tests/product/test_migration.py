"""End-to-end migrations between two emulated clusters, driven through the engine library."""

from __future__ import annotations

import time

import pymongo
import pytest
from pymongo.errors import PyMongoError

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.migration import EngineSettings, Migration
from pymongosync.errors import DestinationNotEmpty, InvalidState
from pymongosync.store import METADATA_DATABASE, MetadataStore
from pymongosync.request import StartRequest
from pymongosync.verifier.compare import compare_clusters

from .conftest import start_cluster, user_client
from .workload import Writer, seed_source

START = {"source": "cluster0", "destination": "cluster1"}


def run_to_commit(migration: Migration, writer: Writer | None = None,
                  events_before_commit: int = 200) -> dict:
    migration.start(StartRequest.from_document(START))
    if writer is not None:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=180)
        migration.wait_for(lambda p: p["totalEventsApplied"] >= events_before_commit, timeout=180)
        writer.finish()
        assert not writer.errors, writer.errors[:3]
    migration.wait_for(lambda p: p["canCommit"], timeout=180)
    migration.commit()
    return migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=180)


def test_migration_with_concurrent_writes_ends_equal(source: EmulatorProcess,
                                                     destination: EmulatorProcess,
                                                     clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_source(client, documents=3000)
    writer = Writer(source.application_uri).__enter__()  # during copy and change application
    migration = Migration.open(cluster0, cluster1)
    try:
        final = run_to_commit(migration, writer)
    finally:
        writer.finish()
        migration.close()
    assert final["canWrite"] is True and final["info"] == "commit completed"
    assert writer.operations > 100
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()
    assert comparison.documents > 3000
    # Spec §9: the source stays blocked after commit, the destination takes writes.
    with user_client(source) as application:
        with pytest.raises(PyMongoError) as blocked:
            application.app.users.insert_one({"late": True})
        assert getattr(blocked.value, "code", None) == 371
    with user_client(destination) as application:
        application.app.users.insert_one({"email": "after@commit", "age": 1})
    # No temporary change left: unique enforced, hidden hidden, TTL and capped restored.
    indexes = {i["name"]: i for i in cluster1.client.app.users.list_indexes()}
    assert indexes["email_1"].get("unique") is True and indexes["age_hidden"].get("hidden")
    ttl = {i["name"]: i for i in cluster1.client.app.sessions_ttl.list_indexes()}
    assert ttl["createdAt_1"]["expireAfterSeconds"] == 3600
    options = cluster1.client.app.events_capped.options()
    assert options["capped"] and options["size"] == 65536 and options["max"] == 500
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        cluster1.client.app.users.insert_one({"email": "user1@example.com"})


def test_destination_writes_blocked_until_can_write(source: EmulatorProcess,
                                                    destination: EmulatorProcess,
                                                    clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(100)])
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["canCommit"], timeout=60)
        with user_client(destination) as application:
            with pytest.raises(PyMongoError) as blocked:
                application.app.items.insert_one({"n": -1})
            assert getattr(blocked.value, "code", None) == 371
        with pytest.raises(InvalidState):
            migration.start(StartRequest.from_document(START))
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        migration.close()


def test_pause_and_resume(source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(2000)])
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    migration.wait_for(lambda p: p["info"] == "change event application", timeout=60)
    migration.pause()
    paused = migration.progress()
    assert paused["state"] == "PAUSED" and paused["lag"] is None and paused["lagTimeSeconds"] is None
    with user_client(source) as client:
        client.app.items.insert_many([{"n": -i} for i in range(1, 101)])
    reopened = Migration.open(cluster0, cluster1)  # a restarted process stays PAUSED
    assert reopened.progress()["state"] == "PAUSED"
    reopened.resume()
    try:
        reopened.wait_for(lambda p: p["canCommit"], timeout=60)
        reopened.commit()
        reopened.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        reopened.close()
        migration.close()
    assert compare_clusters(cluster0.client, cluster1.client).equal


def test_start_refuses_a_destination_with_data(destination: EmulatorProcess,
                                               clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    cluster1.client.existing.data.insert_one({"x": 1})
    migration = Migration.open(cluster0, cluster1)
    with pytest.raises(DestinationNotEmpty) as info:
        migration.start(StartRequest.from_document(START))
    assert "existing" in info.value.message
    assert METADATA_DATABASE not in cluster1.client.list_database_names()


def test_oplog_rollover_is_a_named_recorded_error(source: EmulatorProcess,
                                                  clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.bulk.items.insert_many([{"i": i, "payload": "x" * 500} for i in range(20000)])
    # Without the change buffer, change application needs the source's history from the start
    # of the copy, so truncating it during the copy loses it whatever the timing. (With the
    # buffer, the loss depends on whether the buffer had read the late writes before the
    # truncation: test_change_buffer.py covers that case.)
    migration = Migration.open(cluster0, cluster1, load_level=1,
                               settings=EngineSettings(change_buffering=False))
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["info"] == "collection copy"
                           and p["collectionCopy"]["estimatedCopiedBytes"] > 0, timeout=60)
        with user_client(source) as client:
            client.bulk.items.insert_many([{"late": i} for i in range(10)])
            client.admin.command("emulatorTruncateOplog")  # the history CEA needs is gone
        with pytest.raises(Exception) as info:
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        assert getattr(info.value, "name", "") == "ChangeStreamHistoryLost"
    finally:
        migration.close()
    stored = MetadataStore(cluster1.client).load()
    assert stored is not None and stored.global_state.error is not None
    assert stored.global_state.error.name == "ChangeStreamHistoryLost"
    assert "oplog" in stored.global_state.error.message
    reopened = Migration.open(cluster0, cluster1)
    assert reopened.error is not None and reopened.progress()["error"]["name"] == \
        "ChangeStreamHistoryLost"


def test_resume_after_restart_mid_change_application(source: EmulatorProcess,
                                                      clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_source(client, documents=500, with_dump=False)
    writer = Writer(source.application_uri, seed=5).__enter__()
    first = Migration.open(cluster0, cluster1)
    first.start(StartRequest.from_document(START))
    first.wait_for(lambda p: p["totalEventsApplied"] > 50, timeout=120)
    first.close()  # process stops; the writer goes on
    time.sleep(0.5)
    second = Migration.open(cluster0, cluster1)
    assert second.progress()["state"] == "RUNNING"
    try:
        second.wait_for(lambda p: p["totalEventsApplied"] > 150, timeout=120)
        writer.finish()
        second.wait_for(lambda p: p["canCommit"], timeout=120)
        second.commit()
        second.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        writer.finish()
        second.close()
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()


def test_mongos_destination(source: EmulatorProcess) -> None:
    with start_cluster("mongos") as mongos:
        with user_client(source) as client:
            client.app.items.insert_many([{"n": i, "k": i % 7} for i in range(500)])
        cluster0 = Cluster.connect("cluster0", source.uri)
        cluster1 = Cluster.connect("cluster1", mongos.uri)
        migration = Migration.open(cluster0, cluster1)
        request = {**START, "sharding": {"shardingEntries": [
            {"database": "app", "collection": "items", "shardCollection": {"key": [{"k": 1}]}}]}}
        migration.start(StartRequest.from_document(request))
        try:
            migration.wait_for(lambda p: p["canCommit"], timeout=60)
            migration.commit()
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
        finally:
            migration.close()
        assert cluster1.client.config.collections.find_one({"_id": "app.items"})["key"] == {"k": 1}
        assert compare_clusters(cluster0.client, cluster1.client, compare_indexes=False).equal
        assert cluster1.client.admin.command("balancerStatus")["mode"] == "full"
        cluster0.close()
        cluster1.close()


def test_a_sharding_entry_renamed_during_change_application_keeps_its_shard_key(
        source: EmulatorProcess) -> None:
    """mongosync documents that renaming a collection of shardingEntries during change
    application fails its verifier with a shard key mismatch; here the renamed collection
    keeps the shard key it was given, and the verifier expects it there."""
    with start_cluster("mongos") as mongos:
        with user_client(source) as client:
            client.app.items.insert_many([{"n": i, "k": i % 7} for i in range(500)])
            client.app.items.create_index("k")
        cluster0 = Cluster.connect("cluster0", source.uri)
        cluster1 = Cluster.connect("cluster1", mongos.uri)
        migration = Migration.open(cluster0, cluster1, load_level=1)
        request = {**START, "sharding": {"shardingEntries": [
            {"database": "app", "collection": "items", "shardCollection": {"key": [{"k": 1}]}}]}}
        try:
            migration.start(StartRequest.from_document(request))
            migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
            with user_client(source) as client:
                client.app.items.rename("moved")
                client.app.moved.insert_one({"n": -1, "k": 3})
            migration.wait_for(lambda p: p["canCommit"], timeout=60)
            migration.commit()
            final = migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
        finally:
            migration.close()
        assert final["verificationDetails"]["verdict"] == "equal"
        moved = cluster1.client.config.collections.find_one({"_id": "app.moved"})
        assert moved is not None and moved["key"] == {"k": 1}
        assert compare_clusters(cluster0.client, cluster1.client, compare_indexes=False).equal
        cluster0.close()
        cluster1.close()
