"""The emulated cluster as PyMongo sees it: real shard processes behind a router."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pymongo
import pytest
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from mongoemu.testing import ClusterProcess, start_cluster, start_emulator

from .clusterkit import (child_pids, chunk_counts, chunks_of, cleanup_orphans, counts_per_shard,
                         exited, router, shard_clients, wait_for)


def test_processes_hosts_and_a_clean_stop() -> None:
    cluster = start_cluster(shards=3)
    children = child_pids(cluster.process.pid)
    try:
        assert len(children) == 5  # config server, three shards, router
        with router(cluster) as client:
            hello = client.admin.command("hello")
            assert hello["msg"] == "isdbgrid" and "setName" not in hello
            shards = client.admin.command("listShards")["shards"]
            assert [(s["_id"], s["host"]) for s in shards] == [
                (name, f"{name}/{address}") for name, address in cluster.shards.items()]
            client.admin.command("enableSharding", "placed", primaryShard="shard02")
            assert client.config.databases.find_one({"_id": "placed"})["primary"] == "shard02"
        with shard_clients(cluster) as direct:
            for name, shard in direct.items():  # each host is that shard's own replica set
                assert shard.admin.command("hello")["setName"] == name
    finally:
        cluster.stop()
    assert cluster.process.returncode == 0
    assert exited(children)


def test_a_killed_launcher_takes_its_processes_along() -> None:
    cluster = start_cluster(shards=2)
    children = child_pids(cluster.process.pid)
    cluster.kill()  # SIGKILL: no chance to clean up, the children's parent-death signal does
    wait_for(lambda: exited(children), timeout=20, what="every child gone")


def test_a_launcher_whose_parent_dies_stops_the_cluster(tmp_path: Any) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'mongoemu', 'cluster', '--shards', '1',"
        " '--port', '0'], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline(), flush=True)\n"
        "sys.stdin.read()\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": root})
    assert parent.stdout is not None
    launcher = int(parent.stdout.readline().split()[0])
    processes = [launcher, *child_pids(launcher)]
    assert len(processes) == 4
    parent.kill()
    parent.wait()
    wait_for(lambda: exited(processes), timeout=20, what="the orphaned cluster gone")


def test_a_cluster_or_emulator_that_does_not_start_says_whether_it_is_still_running() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)cluster did not start \(exited with status 2\)"
                                           r".*unrecognized arguments: --no-such-flag"):
        start_cluster(shards=1, extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match=r"(?s)emulator did not start \(exited with status 2\)"
                                           r".*unrecognized arguments: --no-such-flag"):
        start_emulator(extra_args=["--no-such-flag"])
    # A launcher not given the time to print its ready line is stopped, and said to be running.
    with pytest.raises(RuntimeError, match=r"cluster did not start \(still running after"):
        start_cluster(shards=1, timeout=0.01)


def test_sharding_spreads_documents_over_the_shard_processes(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        # The moves below are the test's own: a balancer round (every half second here) could
        # move one of the three chunks that shard01 holds after the splits in between.
        client.admin.command("balancerStop")
        client.admin.command("shardCollection", "spread.hashed", key={"user": "hashed"})
        client.spread.hashed.insert_many([{"user": f"u{i}", "n": i} for i in range(900)])
        per_shard = counts_per_shard(cluster, "spread", "hashed")
        assert sum(per_shard.values()) == 900 and min(per_shard.values()) > 200, per_shard
        assert chunk_counts(client, "spread.hashed") == {name: 2 for name in cluster.shards}

        # A range key: the data starts on the primary shard; splits and moves spread it.
        client.admin.command("enableSharding", "spread", primaryShard="shard01")
        client.spread.ranged.insert_many([{"k": i} for i in range(300)])
        client.admin.command("shardCollection", "spread.ranged", key={"k": 1})
        assert counts_per_shard(cluster, "spread", "ranged") == {
            "shard01": 300, "shard02": 0, "shard03": 0}
        client.admin.command("split", "spread.ranged", middle={"k": 100})
        client.admin.command("split", "spread.ranged", middle={"k": 200})
        client.admin.command("moveChunk", "spread.ranged", find={"k": 150}, to="shard02",
                             _waitForDelete=True)
        client.admin.command("moveRange", "spread.ranged", min={"k": 200}, toShard="shard03",
                             _waitForDelete=True)
        assert counts_per_shard(cluster, "spread", "ranged") == {
            "shard01": 100, "shard02": 100, "shard03": 100}
        assert client.spread.ranged.count_documents({}) == 300
        entry = client.config.collections.find_one({"_id": "spread.ranged"})
        assert entry["key"] == {"k": 1} and entry["unique"] is False


def _queries(cluster: ClusterProcess) -> dict[str, int]:
    with shard_clients(cluster) as shards:
        return {name: int(client.admin.command("serverStatus")["opcounters"]["query"])
                for name, client in shards.items()}


def test_reads_and_writes_are_routed_by_shard_key(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("enableSharding", "app", primaryShard="shard01")
        client.admin.command("shardCollection", "app.orders", key={"region": 1, "n": 1})
        for middle, shard in (("m", "shard02"), ("t", "shard03")):
            client.admin.command("split", "app.orders", middle={"region": middle, "n": 0})
            client.admin.command("moveChunk", "app.orders", find={"region": middle, "n": 0},
                                 to=shard, _waitForDelete=True)
        orders = client.app.orders
        regions = ["east", "north", "west"]  # one per shard: < m, [m, t), >= t
        orders.insert_many([{"region": regions[i % 3], "n": i, "total": i * 10}
                            for i in range(300)], ordered=False)
        orders.insert_many([{"region": regions[i % 3], "n": i, "total": i * 10}
                            for i in range(300, 330)])  # ordered: runs of one statement each
        assert counts_per_shard(cluster, "app", "orders") == {
            "shard01": 110, "shard02": 110, "shard03": 110}
        with shard_clients(cluster) as shards:
            assert shards["shard02"].app.orders.count_documents({"region": "north"}) == 110

        before = _queries(cluster)
        assert orders.find_one({"region": "west", "n": 5})["total"] == 50
        after = _queries(cluster)
        assert [name for name in before if after[name] > before[name]] == ["shard03"]

        # Scatter-gather, merged in sort order, with skip, limit and getMore.
        found = list(orders.find({"total": {"$gte": 1000}}, {"_id": 0, "n": 1})
                     .sort("n", -1).skip(5).limit(40).batch_size(7))
        assert [d["n"] for d in found] == list(range(324, 284, -1))
        assert len(list(orders.find({}, batch_size=11))) == 330
        assert orders.count_documents({"total": {"$lt": 100}}) == 10
        assert orders.estimated_document_count() == 330
        assert sorted(orders.distinct("region")) == regions

        # Multi-document writes fan out; single ones without the shard key go where the
        # document is (7.0's write without shard key).
        assert orders.update_many({"n": {"$lt": 30}}, {"$set": {"flag": True}}).modified_count \
            == 30
        assert orders.update_one({"n": 7}, {"$inc": {"total": 1}}).modified_count == 1
        assert orders.find_one({"n": 7})["total"] == 71
        assert orders.find_one_and_update({"n": 8}, {"$set": {"seen": 1}},
                                          return_document=True)["seen"] == 1
        # An upsert names the whole shard key: MongoDB 7.1 lifted that, and this is 7.0.
        with pytest.raises(OperationFailure) as refused:
            orders.replace_one({"_id": "new-order"}, {"region": "zulu", "n": 1000}, upsert=True)
        assert refused.value.code == 61  # ShardKeyNotFound
        replaced = orders.replace_one({"_id": "new-order", "region": "zulu", "n": 1000},
                                      {"region": "zulu", "n": 1000}, upsert=True)
        assert replaced.upserted_id == "new-order"
        with shard_clients(cluster) as shards:
            assert shards["shard03"].app.orders.find_one({"_id": "new-order"})["n"] == 1000
        assert orders.delete_many({"flag": True}).deleted_count == 30
        assert orders.delete_one({"_id": "new-order"}).deleted_count == 1
        # A shard-key change in a retryable write moves the document to its new shard.
        orders.update_one({"region": "east", "n": 300}, {"$set": {"region": "west"}})
        with shard_clients(cluster) as shards:
            assert shards["shard01"].app.orders.count_documents({"n": 300}) == 0
            assert shards["shard03"].app.orders.find_one({"n": 300})["region"] == "west"
        with pymongo.MongoClient(cluster.uri, retryWrites=False) as plain:
            with pytest.raises(OperationFailure):
                plain.app.orders.update_one({"region": "west", "n": 300},
                                            {"$set": {"region": "east"}})
        assert orders.count_documents({}) == 300

        # Aggregation: shards run the streaming prefix, the router the rest.
        grouped = list(orders.aggregate([
            {"$match": {"n": {"$gte": 30}}}, {"$project": {"region": 1, "total": 1}},
            {"$group": {"_id": "$region", "count": {"$sum": 1}, "sum": {"$sum": "$total"}}},
            {"$sort": {"_id": 1}}, {"$limit": 2}]))
        # n 300 moved from east to west above
        assert [(g["_id"], g["count"]) for g in grouped] == [("east", 99), ("north", 100)]
        assert len(list(orders.aggregate([{"$sample": {"size": 25}}]))) == 25
        stats = list(orders.aggregate([{"$collStats": {"storageStats": {}}}]))
        assert sorted(s["shard"] for s in stats) == sorted(cluster.shards)
        assert sum(s["storageStats"]["count"] for s in stats) == 300


def test_an_upsert_without_the_whole_shard_key_is_routed_since_8_0() -> None:
    """MongoDB 7.1 lifted the need of the whole shard key in an upsert's filter (release
    notes); the emulated 8.0 routes it to the shard where the document goes."""
    with start_cluster(shards=2, server_version="8.0") as cluster, router(cluster) as client:
        client.admin.command("shardCollection", "up.items", key={"k": "hashed"})
        items = client.up.items
        items.insert_many([{"_id": i, "k": i} for i in range(20)])
        assert items.replace_one({"_id": 3}, {"k": 3, "replaced": True},
                                 upsert=True).matched_count == 1
        assert items.replace_one({"_id": "new"}, {"k": 99}, upsert=True).upserted_id == "new"
        assert items.count_documents({}) == 21 and items.find_one({"_id": 3})["replaced"]


def test_a_balancer_round_moves_chunks_and_readers_see_each_document_once(
        cluster: ClusterProcess) -> None:
    documents = 2000
    with router(cluster) as client:
        client.admin.command("balancerStop")
        client.admin.command("enableSharding", "bal", primaryShard="shard01")
        client.bal.items.insert_many([{"k": i, "v": 0} for i in range(documents)])
        client.admin.command("shardCollection", "bal.items", key={"k": 1})
        for middle in range(250, documents, 250):
            client.admin.command("split", "bal.items", middle={"k": middle})
        assert chunk_counts(client, "bal.items") == {"shard01": 8}

        problems: list[str] = []
        scans = [0]
        stop = threading.Event()

        def read() -> None:
            with router(cluster) as reader:
                while not stop.is_set():
                    seen = [d["k"] for d in reader.bal.items.find({}, {"k": 1}, batch_size=300)]
                    if len(seen) != documents or len(set(seen)) != documents:
                        problems.append(f"scan {scans[0]}: {len(seen)} documents, "
                                        f"{len(set(seen))} distinct")
                    if reader.bal.items.count_documents({"v": {"$gte": 0}}) != documents:
                        problems.append("count_documents saw orphans or missed documents")
                    scans[0] += 1

        def write() -> None:
            with router(cluster) as writer:
                step = 0
                while not stop.is_set():
                    writer.bal.items.update_one({"k": step % documents}, {"$inc": {"v": 1}})
                    step += 1

        workers = [threading.Thread(target=read), threading.Thread(target=write)]
        for worker in workers:
            worker.start()
        try:
            client.admin.command("balancerStart")
            wait_for(lambda: max(chunk_counts(client, "bal.items").values()) <= 3, timeout=60,
                     what="balanced chunks")
            wait_for(lambda: scans[0] >= 3, timeout=30, what="scans during the migrations")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert not problems, problems[:3]
        assert client.admin.command("balancerStatus")["numBalancerRounds"] >= 1
        moves = list(client.config.changelog.find({"what": "moveChunk.commit",
                                                   "ns": "bal.items"}))
        assert len(moves) >= 4
        client.admin.command("balancerStop")
        cleanup_orphans(cluster, "bal.items")
        per_shard = counts_per_shard(cluster, "bal", "items")
        assert sum(per_shard.values()) == documents and min(per_shard.values()) > 0, per_shard


def _two_chunks_on_shard01(client: pymongo.MongoClient, db: str) -> None:
    """``<db>.c``: k 0-99, range-sharded on k and split at 50, both chunks on shard01, with
    the balancer stopped (the tests move them themselves)."""
    client.admin.command("balancerStop")
    client.admin.command("enableSharding", db, primaryShard="shard01")
    client.admin.command("shardCollection", f"{db}.c", key={"k": 1})
    client[db].c.insert_many([{"k": i} for i in range(100)])
    client.admin.command("split", f"{db}.c", middle={"k": 50})

def test_orphans_stay_invisible_until_the_range_is_deleted(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        _two_chunks_on_shard01(client, "orph")
        # A cursor opened before the move holds the donor's range deletion back.
        open_cursor = client.orph.c.find({}, batch_size=5)
        first = [next(open_cursor)["k"] for _ in range(5)]
        client.admin.command("moveChunk", "orph.c", find={"k": 60}, to="shard02")
        assert counts_per_shard(cluster, "orph", "c") == {"shard01": 100, "shard02": 50,
                                                          "shard03": 0}
        assert client.orph.c.count_documents({"k": {"$gte": 0}}) == 100
        assert sorted(d["k"] for d in client.orph.c.find()) == list(range(100))
        rest = [d["k"] for d in open_cursor]
        assert sorted(first + rest) == list(range(100))
        cleanup_orphans(cluster, "orph.c")
        assert counts_per_shard(cluster, "orph", "c") == {"shard01": 50, "shard02": 50,
                                                          "shard03": 0}


def _held_move(client: pymongo.MongoClient, db: str, k: int, to: str
               ) -> tuple[Any, threading.Thread, list[Any]]:
    """A moveChunk of the chunk holding ``k`` in a thread, held in progress after its commit
    (shown by ``chunk_counts``) until the returned cursor is closed: the cursor, opened before
    the move, holds the donor's range deletion back, and with _waitForDelete the migration
    waits for it."""
    open_cursor = client[db].c.find({}, batch_size=5)
    next(open_cursor)
    outcome: list[Any] = []

    def move() -> None:
        try:
            outcome.append(client.admin.command("moveChunk", f"{db}.c", find={"k": k}, to=to,
                                                _waitForDelete=True))
        except PyMongoError as error:  # seen by the assertions, not lost in the thread
            outcome.append(error)

    mover = threading.Thread(target=move)
    mover.start()
    return open_cursor, mover, outcome


def _moved(outcome: list[Any]) -> bool:
    return bool(outcome and isinstance(outcome[0], dict) and outcome[0]["ok"] == 1)


def test_balancer_stop_does_not_wait_for_a_migration_a_client_asked_for(
        cluster: ClusterProcess) -> None:
    # MongoDB's balancerStop waits for the balancing round in progress, not for a moveChunk.
    with router(cluster) as client:
        _two_chunks_on_shard01(client, "bstop")
        open_cursor, mover, outcome = _held_move(client, "bstop", 60, "shard02")
        try:
            wait_for(lambda: chunk_counts(client, "bstop.c") == {"shard01": 1, "shard02": 1},
                     what="the chunk committed to shard02")
            started = time.monotonic()
            client.admin.command("balancerStop", maxTimeMS=300)
            assert time.monotonic() - started < 10
            status = client.admin.command("balancerStatus")
            assert status["mode"] == "off" and not status["inBalancerRound"], status
            assert mover.is_alive() and not outcome  # the migration is still in progress
            with pytest.raises(OperationFailure) as invalid:
                client.admin.command("balancerStop", maxTimeMS=-1)
            assert invalid.value.code == 2, invalid.value.details
        finally:
            open_cursor.close()  # the donor's deletion, then the migration, can finish
            mover.join(60)
        assert _moved(outcome), outcome
        assert counts_per_shard(cluster, "bstop", "c") == {"shard01": 50, "shard02": 50,
                                                           "shard03": 0}


def test_balancer_stop_waits_for_the_round_in_progress_at_most_max_time_ms(
        cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        _two_chunks_on_shard01(client, "bround")
        client.admin.command("split", "bround.c", middle={"k": 75})
        # Three chunks on shard01. One is moved to shard02 and held there in progress: the
        # round the balancer then starts wants to move another from shard01 (two chunks) to
        # shard03 (none) and waits for that migration to end, one at a time per cluster.
        open_cursor, mover, outcome = _held_move(client, "bround", 80, "shard02")
        try:
            wait_for(lambda: chunk_counts(client, "bround.c") == {"shard01": 2, "shard02": 1},
                     what="the chunk committed to shard02")
            client.admin.command("balancerStart")
            wait_for(lambda: client.admin.command("balancerStatus")["inBalancerRound"],
                     what="a balancing round waiting for the migration")
            started = time.monotonic()
            with pytest.raises(OperationFailure) as expired:
                client.admin.command("balancerStop", maxTimeMS=300)
            assert expired.value.code == 50, expired.value.details
            assert time.monotonic() - started < 10
            status = client.admin.command("balancerStatus")
            assert status["mode"] == "off" and status["inBalancerRound"], status
        finally:
            open_cursor.close()
            mover.join(60)
        assert _moved(outcome), outcome
        # The round in progress finishes its move although the balancer is off; balancerStop
        # returns once it has.
        client.admin.command("balancerStop", maxTimeMS=30_000)
        assert not client.admin.command("balancerStatus")["inBalancerRound"]
        assert chunk_counts(client, "bround.c") == {"shard01": 1, "shard02": 1, "shard03": 1}


def _read(stream: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append(event)
    return events


def test_a_router_stream_merges_every_shard_once_in_cluster_time_order(
        cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("shardCollection", "cs.items", key={"k": "hashed"})
        client.cs.items.insert_one({"k": -1})
        with client.watch(show_expanded_events=True) as stream:
            expected = []
            for i in range(40):
                result = client.cs.items.insert_one({"k": i})
                expected.append(("insert", result.inserted_id))
                if i % 4 == 0:
                    client.cs.items.update_one({"k": i}, {"$set": {"seen": True}})
                    expected.append(("update", result.inserted_id))
                if i % 10 == 9:
                    client.cs.items.delete_one({"k": i})
                    expected.append(("delete", result.inserted_id))
            # A chunk migration in the middle: its copies and deletions are not user events.
            chunk = chunks_of(client, "cs.items")[0]
            target = next(name for name in cluster.shards if name != chunk["shard"])
            client.admin.command("moveChunk", "cs.items", bounds=[chunk["min"], chunk["max"]],
                                 to=target, _waitForDelete=True)
            client.cs.items.insert_one({"k": "last"})
            events = _read(stream, len(expected) + 1)
            time.sleep(1.5)  # anything further would arrive within a no-op interval or two
            events += _read(stream, 1, timeout=1.0)
        assert [(e["operationType"], e["documentKey"]["_id"]) for e in events[:-1]] == expected
        assert events[-1]["fullDocument"]["k"] == "last" and len(events) == len(expected) + 1
        shard_keys = {tuple(e["documentKey"]) for e in events}
        assert shard_keys == {("k", "_id")}
        times = [(e["clusterTime"].time, e["clusterTime"].inc) for e in events]
        assert times == sorted(times)
        tokens = [e["_id"]["_data"] for e in events]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_a_router_stream_resumes_across_shards_after_a_router_restart(
        cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("shardCollection", "rs.items", key={"k": "hashed"})
        start = client.admin.command("ping")["operationTime"]
        ids = [client.rs.items.insert_one({"k": i}).inserted_id for i in range(6)]
        with client.rs.items.watch(start_at_operation_time=start) as stream:
            seen = _read(stream, 3)
        assert [e["documentKey"]["_id"] for e in seen] == ids[:3]
        token = seen[-1]["_id"]
    cluster.restart_router()
    with router(cluster) as client:
        ids += [client.rs.items.insert_one({"k": i}).inserted_id for i in range(6, 9)]
        with client.rs.items.watch(resume_after=token) as stream:
            resumed = _read(stream, 6)
        assert [e["documentKey"]["_id"] for e in resumed] == ids[3:]
        assert client.config.collections.find_one({"_id": "rs.items"})["key"] == {"k": "hashed"}


def test_a_router_stream_splits_large_events_and_resumes_from_a_fragment(
        cluster: ClusterProcess) -> None:
    """$changeStreamSplitLargeEvent through the router: the shard splits, the router merges the
    fragments in token order with the other shards' events."""
    split = [{"$changeStreamSplitLargeEvent": {}}]
    mib = 1024 * 1024
    with router(cluster) as client:
        client.admin.command("shardCollection", "sp.items", key={"_id": "hashed"})
        client.sp.items.insert_many([{"_id": i, "a": "a" * (8 * mib) if i == 0 else i}
                                     for i in range(6)])
        with client.sp.items.watch(split, full_document="updateLookup") as stream:
            # An update event of 22 MiB with its post-image (7 MiB set, 15 MiB after).
            client.sp.items.update_one({"_id": 0}, {"$set": {"b": "b" * (7 * mib)}})
            client.sp.items.update_many({"_id": {"$gt": 0}}, {"$set": {"seen": True}})
            events = _read(stream, 7)
        assert [e.get("splitEvent") for e in events[:2]] == [{"fragment": 1, "of": 2},
                                                             {"fragment": 2, "of": 2}]
        assert events[1]["fullDocument"]["b"] == "b" * (7 * mib)
        assert sorted(e["documentKey"]["_id"] for e in events[2:]) == [1, 2, 3, 4, 5]
        tokens = [e["_id"]["_data"] for e in events]
        assert tokens == sorted(tokens)
        with client.sp.items.watch(split, full_document="updateLookup",
                                   resume_after=events[0]["_id"]) as stream:
            resumed = _read(stream, 6)
        assert [e["_id"] for e in resumed] == [e["_id"] for e in events[1:]]


def test_history_lost_on_one_shard_fails_the_router_stream(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("shardCollection", "hl.items", key={"k": "hashed"})
        old = client.admin.command("ping")["operationTime"]
        client.hl.items.insert_many([{"k": i} for i in range(30)])
        with shard_clients(cluster) as shards:
            shards["shard02"].admin.command("emulatorTruncateOplog")
        with pytest.raises(OperationFailure) as info:
            with client.watch(start_at_operation_time=old) as stream:
                stream.try_next()
        assert info.value.code == 286
        with client.watch(start_at_operation_time=client.admin.command("ping")[
                "operationTime"]) as stream:
            stream.try_next()  # from now on the history is there again


def test_cluster_time_is_shared_by_every_process(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("shardCollection", "ct.items", key={"k": 1})
        client.admin.command("split", "ct.items", middle={"k": 0})
        client.admin.command("moveChunk", "ct.items", find={"k": 0}, to="shard02")
        with client.start_session() as session:
            times = []
            for i in range(10):
                key = -1 - i if i % 2 else i  # alternating shards
                client.ct.items.insert_one({"k": key}, session=session)
                times.append(session.operation_time)
        assert all(isinstance(t, Timestamp) for t in times)
        assert times == sorted(times, key=lambda t: (t.time, t.inc)) and len(set(times)) == 10
        note = client.admin.command("appendOplogNote", data={"test": 1})["operationTime"]
        assert (note.time, note.inc) > (times[-1].time, times[-1].inc)
        with shard_clients(cluster) as shards:
            for shard in shards.values():  # every shard's clock has reached the router's
                reached = shard.admin.command("ping")["$clusterTime"]["clusterTime"]
                assert (reached.time, reached.inc) >= (note.time, note.inc)


def test_write_blocking_applies_on_every_shard() -> None:
    with start_cluster(shards=2, secured=True) as cluster:
        with router(cluster) as root, \
                pymongo.MongoClient(cluster.application_uri) as application:
            root.admin.command("shardCollection", "wb.items", key={"k": "hashed"})
            application.wb.items.insert_many([{"k": i} for i in range(20)])
            root.admin.command("setUserWriteBlockMode", 1, **{"global": True})
            with shard_clients(cluster) as shards:
                assert all(shard.admin.command("serverStatus")["writeBlocking"][
                    "userWritesBlocked"] for shard in shards.values())
            assert root.admin.command("serverStatus")["writeBlocking"]["userWritesBlocked"]
            for write in (lambda: application.wb.items.insert_one({"k": 100}),
                          lambda: application.wb.other.insert_one({"x": 1}),
                          lambda: application.wb.items.update_many({}, {"$set": {"x": 1}}),
                          lambda: application.wb.items.drop()):
                with pytest.raises(OperationFailure) as info:
                    write()
                assert info.value.code == 371
            root.wb.items.insert_one({"k": 101})  # root holds bypassWriteBlockingMode
            root.admin.command("setUserWriteBlockMode", 1, **{"global": False})
            application.wb.items.insert_one({"k": 102})
            assert application.wb.items.count_documents({}) == 22


def test_transactions_write_on_one_shard(cluster: ClusterProcess) -> None:
    with router(cluster) as client:
        client.admin.command("enableSharding", "tx", primaryShard="shard01")
        client.admin.command("shardCollection", "tx.items", key={"k": 1})
        client.admin.command("split", "tx.items", middle={"k": 100})
        client.admin.command("moveChunk", "tx.items", find={"k": 100}, to="shard02")
        client.tx.items.insert_many([{"k": 1, "v": 0}, {"k": 101, "v": 0}])
        client.tx.log.insert_one({"entries": 0})  # unsharded, on shard01
        with client.start_session() as session:
            with session.start_transaction():
                client.tx.items.update_one({"k": 1}, {"$inc": {"v": 1}}, session=session)
                client.tx.log.update_one({}, {"$inc": {"entries": 1}}, session=session)
                # Reads from a second shard are fine: it commits first, read-only.
                assert client.tx.items.find_one({"k": 101}, session=session)["v"] == 0
        assert client.tx.items.find_one({"k": 1})["v"] == 1
        assert client.tx.log.find_one()["entries"] == 1
        with client.start_session() as session:
            session.start_transaction()
            client.tx.items.update_one({"k": 1}, {"$inc": {"v": 1}}, session=session)
            with pytest.raises(OperationFailure) as info:
                client.tx.items.update_one({"k": 101}, {"$inc": {"v": 1}}, session=session)
            assert info.value.code == 263 and "two-phase commit" in str(info.value)
            session.abort_transaction()
        assert [d["v"] for d in client.tx.items.find().sort("k", 1)] == [1, 0]


def test_the_last_index_supporting_a_shard_key_cannot_be_dropped_or_hidden(
        cluster: ClusterProcess) -> None:
    """As MongoDB 6.0+: dropping or hiding the only index that supports a range shard key is
    refused (CannotDropShardKeyIndex, InvalidOptions); with another index whose key starts
    with the shard key it goes through; a hashed shard key's index may be dropped (7.0.3,
    6.0.12); ``"*"`` keeps the indexes that support the shard key."""
    with router(cluster) as client:
        client.admin.command("shardCollection", "keys.ranged", key={"z": 1})
        client.admin.command("shardCollection", "keys.hashed", key={"h": "hashed"})
        ranged, hashed = client.keys.ranged, client.keys.hashed
        ranged.insert_many([{"z": i, "w": i} for i in range(20)])
        with pytest.raises(OperationFailure) as refused:
            ranged.drop_index("z_1")
        assert refused.value.code == 370
        with pytest.raises(OperationFailure) as refused:
            client.keys.command("collMod", "ranged", index={"name": "z_1", "hidden": True})
        assert refused.value.code == 72
        ranged.create_index([("z", 1), ("w", 1)], name="z_w")
        ranged.create_index("w", name="w_1")
        ranged.drop_indexes()  # "*": all but _id's and those supporting the shard key
        assert sorted(spec["name"] for spec in ranged.list_indexes()) == ["_id_", "z_1", "z_w"]
        client.keys.command("collMod", "ranged", index={"name": "z_1", "hidden": True})
        with pytest.raises(OperationFailure) as refused:
            ranged.drop_index("z_w")  # z_1 is hidden: z_w is the last one supporting z
        assert refused.value.code == 370
        client.keys.command("collMod", "ranged", index={"name": "z_1", "hidden": False})
        ranged.drop_index("z_w")
        hashed.drop_index("h_hashed")
        assert [spec["name"] for spec in hashed.list_indexes()] == ["_id_"]
        assert ranged.count_documents({}) == 20


def test_an_unsharded_collection_renamed_over_a_sharded_one_replaces_it(
        cluster: ClusterProcess) -> None:
    """As MongoDB 5.0+: renameCollection of an unsharded collection onto a sharded one needs
    dropTarget (else NamespaceExists) and then replaces it on every shard; change streams
    report the rename alone."""
    with router(cluster) as client:
        client.admin.command("enableSharding", "over", primaryShard="shard01")
        client.admin.command("shardCollection", "over.target", key={"_id": "hashed"})
        client.over.target.insert_many([{"_id": i, "old": True} for i in range(40)])
        client.over.plain.insert_many([{"_id": 1000 + i} for i in range(5)])
        with client.over.watch() as stream:
            with pytest.raises(OperationFailure) as refused:
                client.admin.command("renameCollection", "over.plain", to="over.target")
            assert refused.value.code == 48
            client.admin.command("renameCollection", "over.plain", to="over.target",
                                 dropTarget=True)
            client.over.marker.insert_one({})
            events = _read(stream, 2)
        assert [event["operationType"] for event in events] == ["rename", "insert"]
        assert client.config.collections.find_one({"_id": "over.target", "dropped": {
            "$ne": True}}) is None
        assert sorted(d["_id"] for d in client.over.target.find()) == list(range(1000, 1005))
        assert "plain" not in client.over.list_collection_names()
    with shard_clients(cluster) as direct:
        assert {name: shard.over.target.count_documents({}) for name, shard in direct.items()} \
            == {name: (5 if name == "shard01" else 0) for name in direct}


def test_a_sharded_collection_is_renamed_within_its_database_only(
        cluster: ClusterProcess) -> None:
    """As MongoDB 5.0+: a sharded collection may be renamed within its database (it stays
    sharded), never into another one (CommandFailed, nothing changed). The emulator renamed
    it across databases (campaign seed 86 with a sharded source and destination)."""
    with router(cluster) as client:
        for db in ("here", "there"):
            client.admin.command("enableSharding", db, primaryShard="shard01")
        client.admin.command("shardCollection", "here.items", key={"_id": "hashed"})
        client.here.items.insert_many([{"_id": i} for i in range(20)])
        with pytest.raises(OperationFailure) as refused:
            client.admin.command("renameCollection", "here.items", to="there.items",
                                 dropTarget=True)
        assert refused.value.code == 125
        assert client.here.items.count_documents({}) == 20
        assert "items" not in client.there.list_collection_names()
        client.admin.command("renameCollection", "here.items", to="here.renamed")
        entry = client.config.collections.find_one({"_id": "here.renamed"})
        assert entry is not None and dict(entry["key"]) == {"_id": "hashed"}
        assert client.here.renamed.count_documents({}) == 20
