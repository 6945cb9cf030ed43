"""pymongosync migrations from and to real emulated clusters, driven as a user drives them: the
``mongosync`` console script as a subprocess, only over its HTTP API."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from mongoemu.testing import ClusterProcess, EmulatorProcess, start_cluster, \
    start_secured_emulator
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import compare_clusters
from tests.process.test_change_buffer_gauges import gauges
from tests.process.processkit import START, Mongosync, Writer, seed, slow_down, speed_up

from .clusterkit import chunk_counts, counts_per_shard, wait_for

FAST = ["--noop-interval", "0.5"]


class ShardedSourceWriter:
    """An application writing to a sharded source through its router: inserts, updates,
    replacements and deletes that keep each document's shard key (bulk.items: ``i``)."""

    def __init__(self, source: EmulatorProcess, change_shard_keys: bool = False) -> None:
        self.client = pymongo.MongoClient(source.application_uri, appname="application")
        self.change_shard_keys = change_shard_keys
        self.random = random.Random(7)
        self.stopped = threading.Event()
        self.operations = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        items, users = self.client.bulk.items, self.client.app.users
        while not self.stopped.is_set():
            i = self.random.randrange(3000)
            try:
                step = self.random.randrange(5)
                if step == 0:
                    items.insert_one({"i": 3000 + self.operations, "new": True})
                elif step == 1:
                    items.update_one({"i": i}, {"$inc": {"updates": 1}})
                elif step == 2:
                    moved_to = -1 - self.operations if self.change_shard_keys else i
                    items.replace_one({"i": i}, {"i": moved_to, "replaced": self.operations})
                elif step == 3:
                    items.delete_one({"i": i})
                else:
                    users.update_one({"n": i % 500}, {"$set": {"seen": self.operations}})
                self.operations += 1
            except pymongo.errors.PyMongoError as exc:
                self.errors.append(exc)
            self.stopped.wait(0.003)

    def stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            self.thread.join()
            self.client.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Mongosync]]:
    started: list[Mongosync] = []
    yield started
    for process in started:
        process.close()


def _mongosync(processes: list[Mongosync], tmp_path: Path, source: EmulatorProcess,
               destination: EmulatorProcess) -> Mongosync:
    process = Mongosync(["--cluster0", source.uri, "--cluster1", destination.uri, "--port", "0",
                         "--acceptDisclaimer", "--loadLevel", "2"], cwd=tmp_path)
    processes.append(process)
    return process.wait_listening().wait_ready()


def _unless_failed(predicate: Callable[[dict[str, Any]], bool]
                   ) -> Callable[[dict[str, Any]], bool]:
    """A /progress predicate that gives up at once on a fatal migration error."""
    def check(progress: dict[str, Any]) -> bool:
        if progress.get("error"):
            raise AssertionError(f"the migration failed: {progress['error']}")
        return predicate(progress)
    return check


def _migrate(process: Mongosync, writer: Writer | ShardedSourceWriter,
             body: dict[str, Any]) -> None:
    assert process.post("start", body) == (200, {"success": True})
    process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"
                                    and p["totalEventsApplied"] > 20), timeout=120,
                     what="change events applied")
    writer.stop()
    assert not writer.errors, writer.errors[:3]
    _commit(process)


def _commit(process: Mongosync) -> None:
    """/commit once it can, then COMMITTED."""
    process.wait_for(_unless_failed(lambda p: p["canCommit"]), timeout=120, what="canCommit")
    assert process.post("commit") == (200, {"success": True})
    process.wait_for(_unless_failed(lambda p: p["state"] == "COMMITTED"), timeout=120,
                     what="COMMITTED")


def test_replica_set_to_a_two_shard_cluster(tmp_path: Path,
                                            processes: list[Mongosync]) -> None:
    with start_secured_emulator("replset", extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        seed(source, items=3000)
        writer = Writer(source)
        try:
            process = _mongosync(processes, tmp_path, source, destination)
            _migrate(process, writer, {**START, "sharding": {"shardingEntries": [
                {"database": "bulk", "collection": "items",
                 "shardCollection": {"key": [{"_id": "hashed"}]}},
                {"database": "app", "collection": "users",
                 "shardCollection": {"key": [{"n": 1}]}}]}})
        finally:
            writer.stop()
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right, compare_indexes=False)
            assert comparison.equal, comparison.summary()
            assert comparison.documents >= 3000
            assert right.config.collections.find_one({"_id": "bulk.items"})["key"] == {
                "_id": "hashed"}
            assert {"_id": "hashed"} in [dict(spec["key"])
                                         for spec in right.bulk.items.list_indexes()]
            assert right.admin.command("balancerStatus")["mode"] == "full"
        per_shard = counts_per_shard(destination, "bulk", "items")
        assert min(per_shard.values()) > 1000, per_shard  # the hashed key spread the copy


def test_replica_set_to_a_sharded_cluster_when_the_shard_key_field_changes(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_secured_emulator("replset", extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        seed(source, items=1000)
        process = _mongosync(processes, tmp_path, source, destination)
        assert process.post("start", {**START, "sharding": {"shardingEntries": [
            {"database": "bulk", "collection": "items",
             "shardCollection": {"key": [{"i": "hashed"}]}}]}}) == (200, {"success": True})
        process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"),
                         timeout=120, what="change event application")
        with pymongo.MongoClient(source.application_uri) as application:
            for i in range(40):  # each document's hashed i now points at either shard
                application.bulk.items.replace_one({"i": i}, {"i": 10_000 + i, "moved": True})
        process.wait_for(_unless_failed(lambda p: p["canCommit"] and p["lagTimeSeconds"] == 0
                                        and p["totalEventsApplied"] >= 40),
                         timeout=120, what="the replacements applied")
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right, compare_indexes=False)
        assert comparison.equal, comparison.summary()


def _start_sharding_on_z(process: Mongosync, names: tuple[str, ...]) -> None:
    """/start sharding shop.<name> on {z: 1} for each name; then change event application."""
    entries = [{"database": "shop", "collection": name,
                "shardCollection": {"key": [{"z": 1}]}} for name in names]
    assert process.post("start", {**START, "sharding": {
        "createSupportingIndexes": True, "shardingEntries": entries}}) == \
        (200, {"success": True})
    process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"),
                     timeout=120, what="change event application")


def test_the_sources_indexes_on_a_destination_shard_key_are_built_dropped_and_hidden(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """Three collections sharded on {z: 1} by shardingEntries. During change application the
    source builds an index on exactly z under another name than the one sharding made
    (the destination refused it: IndexOptionsConflict, a fatal IndexConflict before; campaign
    seed 547 with CAMPAIGN_SHARDED_DESTINATION=1), drops its own index on z (the destination
    refuses to drop the last index supporting its shard key: CannotDropShardKeyIndex) and hides
    it (refused at commit for the same reason: InvalidOptions). The commit verifies equal; the
    stand-in index supports the shard key where the source's index cannot."""
    with start_secured_emulator("replset", extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        names = ("built", "dropped", "hidden")
        with pymongo.MongoClient(source.uri) as client:
            for name in names:
                client.shop[name].insert_many([{"_id": i, "z": i % 7} for i in range(300)])
            client.shop.dropped.create_index("z", name="z_source")
            client.shop.hidden.create_index("z", name="z_source")
        process = _mongosync(processes, tmp_path, source, destination)
        _start_sharding_on_z(process, names)
        with pymongo.MongoClient(source.uri) as client:
            shop = client.shop
            shop.built.create_index("z", name="z_later")
            shop.dropped.drop_index("z_source")
            shop.command("collMod", "hidden", index={"name": "z_source", "hidden": True})
            for name in names:
                shop[name].insert_one({"_id": 1000, "z": 3})
        process.wait_for(_unless_failed(lambda p: p["totalEventsApplied"] >= 3), timeout=120,
                         what="the inserts applied")
        _commit(process)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right, compare_indexes=True)
            assert comparison.equal, comparison.summary()
            indexes = {name: {spec["name"]: spec for spec in right.shop[name].list_indexes()}
                       for name in names}
            assert right.config.collections.find_one({"_id": "shop.dropped"})["key"] == {"z": 1}
        assert sorted(indexes["built"]) == ["_id_", "z_later"]
        assert sorted(indexes["dropped"]) == ["_id_", "mongosync_shard_key_support"]
        assert dict(indexes["dropped"]["mongosync_shard_key_support"]["key"]) == {
            "z": 1, "mongosync_shard_key_support": 1}
        assert sorted(indexes["hidden"]) == ["_id_", "mongosync_shard_key_support", "z_source"]
        assert indexes["hidden"]["z_source"].get("hidden") is True


def test_a_collection_replacing_a_sharding_entry_stays_unsharded_and_verifies(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """shop.replaced and shop.recreated are sharded on {z: 1} by shardingEntries. During change
    application the source renames another collection over shop.replaced (dropTarget), and
    drops and creates shop.recreated again: both are other collections than the entries named,
    and stay unsharded. The verifier expected the entries' keys by name and failed the commit
    ("shard key {'z': 1} expected, None found"; campaign seed 77, sharded destination)."""
    with start_secured_emulator("replset", extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        names = ("replaced", "recreated", "other")
        with pymongo.MongoClient(source.uri) as client:
            for name in names:
                client.shop[name].insert_many([{"_id": i, "z": i % 7} for i in range(200)])
        process = _mongosync(processes, tmp_path, source, destination)
        _start_sharding_on_z(process, names[:2])
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("renameCollection", "shop.other", to="shop.replaced",
                                 dropTarget=True)
            client.shop.drop_collection("recreated")
            client.shop.recreated.insert_one({"_id": "again", "z": 1})
        process.wait_for(_unless_failed(lambda p: p["totalEventsApplied"] >= 1), timeout=120,
                         what="the insert applied")
        _commit(process)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right, compare_indexes=True)
            assert comparison.equal, comparison.summary()
            sharded = {entry["_id"] for entry in right.config.collections.find(
                {"_id": {"$regex": "^shop\\."}, "dropped": {"$ne": True}})}
        assert sharded == set()


def _sharded_source(source: ClusterProcess, chunks: int) -> None:
    """bulk.items range-sharded in ``chunks`` chunks, all on one shard (balancer off), a hashed
    app.users, and an unsharded collection."""
    with pymongo.MongoClient(source.uri) as client:
        client.admin.command("balancerStop")
        client.admin.command("enableSharding", "bulk", primaryShard="shard01")
        client.admin.command("shardCollection", "app.users", key={"n": "hashed"})
    seed(source, items=3000)
    with pymongo.MongoClient(source.uri) as client:
        client.admin.command("shardCollection", "bulk.items", key={"i": 1})
        for middle in range(3000 // chunks, 3000, 3000 // chunks):
            client.admin.command("split", "bulk.items", middle={"i": middle})
        client.shop.orders.insert_many([{"n": n, "total": n * 3} for n in range(400)])
        assert chunk_counts(client, "bulk.items") == {"shard01": chunks}


def _balancer_stopped(status: dict[str, Any]) -> bool:
    return bool(status["mode"] == "off" and not status["inBalancerRound"])


def test_three_shards_to_two_while_the_source_balancer_moves_chunks(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=3, secured=True,
                       extra_args=[*FAST, "--balancer-interval", "0.3"]) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        _sharded_source(source, chunks=24)
        # Started before the balancer: /start then comes while the balancer is moving chunks,
        # however long a loaded machine takes to start a process.
        process = _mongosync(processes, tmp_path, source, destination)
        writer = ShardedSourceWriter(source)
        try:
            with pymongo.MongoClient(source.uri) as client:
                client.admin.command("balancerStart")
                moves = client.config.changelog
                wait_for(lambda: moves.count_documents({"what": "moveChunk.commit"}) >= 2,
                         timeout=60, what="chunk migrations on the source")
                assert process.post("start", START) == (200, {"success": True})
                # The tool stops the source's balancer; the migration then in flight finishes.
                # The mode reads "off" before that migration commits, so the count is taken
                # once no balancing round is in flight any more.
                wait_for(lambda: _balancer_stopped(client.admin.command("balancerStatus")),
                         timeout=60, what="the tool stopping the source balancer")
                moved_before_stop = moves.count_documents({"what": "moveChunk.commit"})
                assert max(chunk_counts(client, "bulk.items").values()) > 8  # not done yet
                process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"
                                                and p["totalEventsApplied"] > 20), timeout=120,
                                 what="change events applied")
                writer.stop()
                assert not writer.errors, writer.errors[:3]
                process.wait_for(_unless_failed(lambda p: p["canCommit"]), timeout=120,
                                 what="canCommit")
                assert moves.count_documents({"what": "moveChunk.commit"}) == moved_before_stop
                assert process.post("commit") == (200, {"success": True})
                process.wait_for(_unless_failed(lambda p: p["state"] == "COMMITTED"),
                                 timeout=120, what="COMMITTED")
                # Committed without reversibility: the balancer it stopped is back on.
                assert client.admin.command("balancerStatus")["mode"] == "full"
        finally:
            writer.stop()
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()
            assert comparison.documents >= 3400
            for ns in ("bulk.items", "app.users"):
                assert right.config.collections.find_one({"_id": ns})["key"] == \
                    left.config.collections.find_one({"_id": ns})["key"]
        assert moved_before_stop >= 2


def test_shard_key_changes_on_a_sharded_source_during_the_migration(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=3, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        _sharded_source(source, chunks=3)
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("moveChunk", "bulk.items", find={"i": 0}, to="shard02")
        process = _mongosync(processes, tmp_path, source, destination)
        writer = ShardedSourceWriter(source, change_shard_keys=True)
        try:
            _migrate(process, writer, START)
        finally:
            writer.stop()
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
        assert comparison.equal, comparison.summary()


def test_a_copy_from_a_sharded_source_resumes_after_a_kill(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("shardCollection", "bulk.items", key={"i": "hashed"})
            client.bulk.items.insert_many([{"i": i, "payload": "x" * 300}
                                           for i in range(12_000)])
        # Each copy batch into bulk.items takes 150 ms longer: the copy is killed midway.
        slow_down(destination, "insert", 150, namespace="bulk.items")
        process = _mongosync(processes, tmp_path, source, destination)
        assert process.post("start", START) == (200, {"success": True})
        process.wait_for(_unless_failed(lambda p: p["info"] == "collection copy" and 0 < (
            p["collectionCopy"] or {}).get("estimatedCopiedBytes", 0) < 1_500_000),
            timeout=60, what="the copy under way")
        process.kill()
        speed_up(destination)
        process = _mongosync(processes, tmp_path, source, destination)
        _commit(process)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
        assert comparison.equal, comparison.summary()


def test_a_sharded_source_into_a_replica_set(tmp_path: Path, processes: list[Mongosync]) -> None:
    """pymongosync goes beyond mongosync here: three shards into one replica set, under a
    writer, committed equal, the shard keys kept in the migration's metadata."""
    with start_cluster(shards=3, secured=True, extra_args=FAST) as source, \
            start_secured_emulator("replset", extra_args=FAST) as destination:
        _sharded_source(source, chunks=6)
        with pymongo.MongoClient(source.uri) as client:
            for number, shard in enumerate(("shard02", "shard03", "shard02")):
                client.admin.command("moveChunk", "bulk.items", find={"i": 500 * (number + 1)},
                                     to=shard)
            assert len(chunk_counts(client, "bulk.items")) == 3
        process = _mongosync(processes, tmp_path, source, destination)
        writer = ShardedSourceWriter(source)
        try:
            # The shards do not know the user mongosync signs in as (users made through a
            # router live on the config server): each shard's oplog window cannot be read, and
            # /progress says so and what to do, instead of "not checked yet" and nothing more.
            assert process.post("start", START) == (200, {"success": True})
            progress = process.wait_for(
                _unless_failed(lambda p: p["info"] == "change event application" and any(
                    "estimatedOplogTimeRemaining cannot be checked" in warning
                    for warning in p.get("warnings", []))), timeout=120, what="the warning")
            assert "shard-local user" in " ".join(progress["warnings"])
            assert progress["estimatedOplogTimeRemaining"] == "not checked yet"
            process.wait_for(_unless_failed(lambda p: p["totalEventsApplied"] > 20),
                             timeout=120, what="change events applied")
            writer.stop()
            assert not writer.errors, writer.errors[:3]
            _commit(process)
        finally:
            writer.stop()
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()
            assert comparison.documents >= 3400
            recorded = right[METADATA_DATABASE].namespaces.find_one({"_id": "bulk.items"})
            assert recorded is not None and recorded["shardKey"] == {"i": 1}
            assert right.bulk.items.index_information()["i_1"]["key"] == [("i", 1)]


def test_ids_repeated_across_shards_refuse_a_replica_set_destination(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """Two shards may hold the same _id under another shard key; a replica set cannot."""
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_secured_emulator("replset", extra_args=FAST) as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("balancerStop")
            client.admin.command("shardCollection", "bulk.items", key={"i": 1})
            client.admin.command("split", "bulk.items", middle={"i": 100})
            client.admin.command("moveChunk", "bulk.items", find={"i": 100}, to="shard02")
            client.bulk.items.insert_many([{"_id": 7, "i": 1}, {"_id": 7, "i": 200},
                                           {"_id": 8, "i": 2}])
        process = _mongosync(processes, tmp_path, source, destination)
        status, body = process.post("start", START)
        assert status == 422 and body["error"] == "PreflightFailed", body
        assert "[ids-unique-across-shards] bulk.items" in body["errorDescription"]
        assert "7 (2 documents)" in body["errorDescription"]
        assert process.progress()["state"] == "IDLE"


def test_a_hot_document_whose_shard_key_changes_is_taken_from_the_source_at_commit(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """--hotDocIDs on the mongosync command line, sharded to sharded: the hot document's events
    are skipped (the metric counts them), and at commit it is taken from the source, where a
    replacement has moved it to the other shard's chunk."""
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        _sharded_source(source, chunks=2)
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("moveChunk", "bulk.items", find={"i": 2999}, to="shard02")
            client.bulk.items.insert_one({"_id": "hot", "i": 10, "n": 0})
        process = Mongosync(["--cluster0", source.uri, "--cluster1", destination.uri,
                             "--port", "0", "--acceptDisclaimer", "--hotDocIDs",
                             '{"db": "bulk", "collection": "items", "ids": [{"_id": "hot"}]}'],
                            cwd=tmp_path)
        processes.append(process)
        process.wait_listening().wait_ready()
        assert process.post("start", START) == (200, {"success": True})
        process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"),
                         timeout=120, what="change event application")
        with pymongo.MongoClient(source.application_uri) as application:
            for _ in range(30):
                application.bulk.items.update_one({"_id": "hot"}, {"$inc": {"n": 1}})
            # The filter names the whole shard key, as MongoDB requires to change it (31025).
            application.bulk.items.replace_one({"_id": "hot", "i": 10}, {"i": 2990, "n": 100})
            application.bulk.items.update_one({"i": 5}, {"$set": {"cold": True}})
        with pymongo.MongoClient(destination.uri) as right:
            wait_for(lambda: right.bulk.items.find_one({"i": 5, "cold": True}) is not None,
                     timeout=60)
            assert right.bulk.items.find_one({"_id": "hot"})["n"] == 0  # skipped so far
        metrics = gauges(process.request("GET", "/metrics").text)
        # 30 updates, and the move to the other shard (a delete and an insert, or a replace)
        assert metrics.get("mongosync_cea_total_hot_doc_crud_events_skipped", 0) >= 31, metrics
        _commit(process)
        metrics = gauges(process.request("GET", "/metrics").text)
        # At commit: the stored IDs read, then the one hot document read and written.
        for name in ("states_read", "refetch", "apply"):
            assert metrics[f"mongosync_hot_doc_{name}_op_duration_count"] == 1, metrics
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()
            assert right.bulk.items.count_documents({"_id": "hot"}) == 1


def test_a_sharded_collection_renamed_into_the_filter_is_sharded_on_the_destination(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """shop.hidden, sharded and left out by the filter, is renamed over shop.kept during
    change application (dropTarget). The destination's shop.kept was copied whole from the
    source, unsharded: the verifier failed the commit ("shard key {'_id': 'hashed'} expected,
    None found"; campaign seed 223, sharded source and destination)."""
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        with pymongo.MongoClient(source.uri) as client:
            for name in ("hidden", "kept"):
                client.admin.command("shardCollection", f"shop.{name}", key={"_id": "hashed"})
                client.shop[name].insert_many([{"_id": i, "name": name} for i in range(300)])
        process = _mongosync(processes, tmp_path, source, destination)
        body = {**START, "includeNamespaces": [{"database": "shop"}],
                "excludeNamespaces": [{"database": "shop", "collections": ["hidden"]}]}
        assert process.post("start", body) == (200, {"success": True})
        process.wait_for(_unless_failed(lambda p: p["info"] == "change event application"),
                         timeout=120, what="change event application")
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("renameCollection", "shop.hidden", to="shop.kept",
                                 dropTarget=True)
            client.shop.kept.insert_one({"_id": "after", "name": "hidden"})
        process.wait_for(_unless_failed(lambda p: p["totalEventsApplied"] >= 1), timeout=120,
                         what="the insert applied")
        _commit(process)
        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            assert right.config.collections.find_one({"_id": "shop.kept"})["key"] == \
                {"_id": "hashed"}
            assert right.shop.kept.count_documents({"name": "hidden"}) == 301
            assert right.shop.list_collection_names() == ["kept"]
            assert left.shop.kept.count_documents({}) == 301
