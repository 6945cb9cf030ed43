"""What an operator or a migration tool's pre-flight reads about a deployment, as MongoDB answers
it: the feature compatibility version (and lowering it), the patch release, the filesystem in
dbStats, the oplog's size and window, persistent query settings (8.0), and zones and balancer
windows on a sharded cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pymongo
import pytest
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from mongoemu.testing import ClusterProcess, EmulatorProcess, start_cluster, start_emulator

QUERY = {"find": "orders", "filter": {"status": "open", "total": {"$gt": 10}}, "$db": "shop"}


@pytest.fixture(scope="module")
def server8() -> Iterator[EmulatorProcess]:
    with start_emulator("replset", "8.0") as emulator:
        yield emulator


@pytest.fixture
def client8(server8: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(server8.uri, serverSelectionTimeoutMS=10_000) as client:
        yield client
        client.admin.command("setFeatureCompatibilityVersion", "8.0", confirm=True)
        client.admin.command("emulatorSetDiskSize", 1, bytes=None)
        for entry in client.admin.aggregate([{"$querySettings": {}}]):
            client.admin.command("removeQuerySettings", entry["queryShapeHash"])


def fcv(client: pymongo.MongoClient) -> str:
    reply = client.admin.command("getParameter", 1, featureCompatibilityVersion=1)
    return str(reply["featureCompatibilityVersion"]["version"])


def test_fcv_goes_down_one_release_and_back_with_confirmation(
        client8: pymongo.MongoClient) -> None:
    assert fcv(client8) == "8.0"
    with pytest.raises(OperationFailure) as refused:
        client8.admin.command("setFeatureCompatibilityVersion", "7.0")
    assert refused.value.code == 7369100 and "confirm: true" in str(refused.value)
    client8.admin.command("setFeatureCompatibilityVersion", "7.0", confirm=True)
    assert fcv(client8) == "7.0"
    with pytest.raises(OperationFailure) as too_far:
        client8.admin.command("setFeatureCompatibilityVersion", "6.0", confirm=True)
    assert "expected '7.0' or '8.0'" in str(too_far.value)
    client8.admin.command("setFeatureCompatibilityVersion", "8.0", confirm=True)
    assert fcv(client8) == "8.0"
    # The binary stays what it is.
    assert client8.admin.command("buildInfo")["version"].startswith("8.0.")


def test_a_patch_release_can_be_emulated() -> None:
    with start_emulator("replset", "7.0.12") as emulator, \
            pymongo.MongoClient(emulator.uri) as client:
        info = client.admin.command("buildInfo")
        assert info["version"] == "7.0.12" and info["versionArray"][:3] == [7, 0, 12]
        assert fcv(client) == "7.0"


def test_dbstats_reports_the_filesystem_and_an_emulated_disk(
        client8: pymongo.MongoClient) -> None:
    host = client8.admin.command("dbStats")
    assert 0 < host["fsUsedSize"] <= host["fsTotalSize"]
    client8.diskdb.items.insert_many([{"i": i, "pad": "x" * 1000} for i in range(200)])
    reply = client8.admin.command("emulatorSetDiskSize", 1, bytes=10_000_000)
    assert reply["fsTotalSize"] == 10_000_000
    stats = client8.diskdb.command("dbStats")
    assert stats["fsTotalSize"] == 10_000_000
    # The emulated disk holds what the server stores: these documents at least.
    assert 200_000 < stats["fsUsedSize"] < 10_000_000
    scaled = client8.diskdb.command("dbStats", scale=1024)
    assert scaled["fsTotalSize"] == 10_000_000 // 1024
    with pytest.raises(OperationFailure, match="positive integer"):
        client8.admin.command("emulatorSetDiskSize", 1, bytes=-5)
    client8.drop_database("diskdb")


def test_the_oplog_has_collstats_and_server_status_times(client8: pymongo.MongoClient) -> None:
    client8.oplogdb.c.insert_one({"x": 1})
    stats = client8.local.command("collStats", "oplog.rs")
    assert stats["capped"] is True and stats["ns"] == "local.oplog.rs"
    assert stats["maxSize"] == 192 * 1024 * 1024  # the default --oplog-size-mb
    assert 0 < stats["size"] <= stats["maxSize"] and stats["count"] > 0
    times = client8.admin.command("serverStatus", oplog=1)["oplog"]
    assert isinstance(times["earliestOptime"], Timestamp)
    assert times["earliestOptime"] <= times["latestOptime"]
    client8.drop_database("oplogdb")


def test_query_settings_are_set_listed_and_removed_on_8_0(client8: pymongo.MongoClient) -> None:
    reply = client8.admin.command({"setQuerySettings": QUERY, "settings": {"reject": True}})
    shape_hash = reply["queryShapeHash"]
    assert len(shape_hash) == 64 and reply["settings"] == {"reject": True}
    # The same shape with other values is the same query shape: its settings are replaced.
    other_values = {**QUERY, "filter": {"status": "closed", "total": {"$gt": 99}}}
    again = client8.admin.command({"setQuerySettings": other_values,
                                   "settings": {"queryFramework": "classic"}})
    assert again["queryShapeHash"] == shape_hash
    listed = list(client8.admin.aggregate([{"$querySettings": {}}]))
    assert [entry["queryShapeHash"] for entry in listed] == [shape_hash]
    assert listed[0]["settings"] == {"queryFramework": "classic"}
    assert listed[0]["representativeQuery"]["find"] == "orders"
    with pytest.raises(OperationFailure):
        client8.admin.command({"setQuerySettings": QUERY, "settings": {}})
    with pytest.raises(OperationFailure) as not_admin:
        list(client8.shop.aggregate([{"$querySettings": {}}]))
    assert not_admin.value.code == 73
    client8.admin.command({"removeQuerySettings": shape_hash})
    assert list(client8.admin.aggregate([{"$querySettings": {}}])) == []


def test_query_settings_do_not_exist_before_8_0(replset: EmulatorProcess) -> None:
    with pymongo.MongoClient(replset.uri) as client:
        with pytest.raises(OperationFailure) as command:
            client.admin.command({"setQuerySettings": QUERY, "settings": {"reject": True}})
        assert command.value.code == 59
        with pytest.raises(OperationFailure) as stage:
            list(client.admin.aggregate([{"$querySettings": {}}]))
        assert stage.value.code == 40324


@pytest.fixture(scope="module")
def cluster8() -> Iterator[ClusterProcess]:
    with start_cluster(shards=2, server_version="8.0") as cluster:
        yield cluster


def test_zones_are_kept_in_config_shards_and_config_tags(cluster8: ClusterProcess) -> None:
    with pymongo.MongoClient(cluster8.uri) as client:
        admin = client.admin
        with pytest.raises(OperationFailure) as no_zone:
            admin.command("updateZoneKeyRange", "geo.users", min={"c": 0}, max={"c": 10},
                          zone="EU")
        assert no_zone.value.code == 177  # ZoneNotFound
        with pytest.raises(OperationFailure) as no_shard:
            admin.command("addShardToZone", "nowhere", zone="EU")
        assert no_shard.value.code == 70  # ShardNotFound
        admin.command("addShardToZone", "shard01", zone="EU")
        assert client.config.shards.find_one({"_id": "shard01"})["tags"] == ["EU"]
        # A namespace that does not exist yet may get ranges: zones prepared in advance.
        admin.command("updateZoneKeyRange", "geo.users", min={"c": 0}, max={"c": 10}, zone="EU")
        ranges = list(client.config.tags.find({"ns": "geo.users"}, {"_id": 0}))
        assert ranges == [{"ns": "geo.users", "min": {"c": 0}, "max": {"c": 10}, "tag": "EU"}]
        with pytest.raises(OperationFailure) as overlap:
            admin.command("updateZoneKeyRange", "geo.users", min={"c": 5}, max={"c": 20},
                          zone="EU")
        assert overlap.value.code == 178  # RangeOverlapConflict
        with pytest.raises(OperationFailure) as in_use:
            admin.command("removeShardFromZone", "shard01", zone="EU")
        assert in_use.value.code == 163  # ZoneStillInUse
        admin.command("updateZoneKeyRange", "geo.users", min={"c": 0}, max={"c": 10}, zone=None)
        assert client.config.tags.count_documents({"ns": "geo.users"}) == 0
        admin.command("removeShardFromZone", "shard01", zone="EU")
        assert client.config.shards.find_one({"_id": "shard01"}).get("tags") == []


def test_a_cluster_reports_balancer_windows_disks_fcv_and_query_settings(
        cluster8: ClusterProcess) -> None:
    with pymongo.MongoClient(cluster8.uri) as client:
        client.config.settings.update_one(
            {"_id": "balancer"}, {"$set": {"activeWindow": {"start": "23:00", "stop": "06:00"}}},
            upsert=True)
        try:
            window = client.config.settings.find_one({"_id": "balancer"})["activeWindow"]
            assert window == {"start": "23:00", "stop": "06:00"}
        finally:
            client.config.settings.update_one({"_id": "balancer"},
                                              {"$unset": {"activeWindow": ""}})
        client.admin.command("emulatorSetDiskSize", 1, bytes=5_000_000)
        try:
            raw = client.admin.command("dbStats")["raw"]
            assert sorted(stats["fsTotalSize"] for stats in raw.values()) == [5_000_000] * 2
        finally:
            client.admin.command("emulatorSetDiskSize", 1, bytes=None)
        client.admin.command("setFeatureCompatibilityVersion", "7.0", confirm=True)
        try:
            assert fcv(client) == "7.0"
            with pymongo.MongoClient(cluster8.shard_uri("shard02")) as shard:
                assert fcv(shard) == "7.0"
        finally:
            client.admin.command("setFeatureCompatibilityVersion", "8.0", confirm=True)
        reply = client.admin.command({"setQuerySettings": QUERY, "settings": {"reject": True}})
        listed = list(client.admin.aggregate([{"$querySettings": {}}]))
        assert [entry["queryShapeHash"] for entry in listed] == [reply["queryShapeHash"]]
        client.admin.command({"removeQuerySettings": reply["queryShapeHash"]})
