"""One mongosync per source shard (``--id``, spec §3.9, §12.1), driven as an operator drives it:
one ``mongosync`` process per source shard, each on its own port, all given the same requests
over HTTP; killed with SIGKILL and started again with the same flags."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from mongoemu.testing import ClusterProcess, start_cluster, start_secured_emulator
from pymongosync.clusters import APP_NAME
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import compare_clusters
from tests.process.processkit import MONGOSYNC, START, Mongosync, seed, slow_down, speed_up

from .clusterkit import chunk_counts, wait_for
from .test_migrations import FAST, ShardedSourceWriter

SHARDS = ("shard01", "shard02", "shard03")


HOT_OPTION = ("--hotDocIDs", '{"db": "shop", "collection": "hotspot", "ids": [{"_id": "hot"}]}')


@pytest.fixture
def processes() -> Iterator[list[Mongosync]]:
    started: list[Mongosync] = []
    yield started
    for process in started:
        process.close()


def instance(processes: list[Mongosync], tmp_path: Path, source: ClusterProcess,
             destination: Any, shard: str | None, *more: str) -> Mongosync:
    where = tmp_path / (shard or "lone")
    where.mkdir(exist_ok=True)
    args = ["--cluster0", source.uri, "--cluster1", destination.uri, "--port", "0",
            "--acceptDisclaimer", "--loadLevel", "2", *more]
    if shard is not None:
        args += ["--id", shard]
    process = Mongosync(args, cwd=where)
    processes.append(process)
    return process


def ready(process: Mongosync) -> Mongosync:
    return process.wait_listening().wait_ready()


def unless_failed(predicate: Any) -> Any:
    def check(progress: dict[str, Any]) -> bool:
        if progress.get("error"):
            raise AssertionError(f"the migration failed: {progress['error']}")
        return bool(predicate(progress))
    return check


def three_shard_source(source: ClusterProcess) -> None:
    """bulk.items sharded on _id over three shards (chunk partitions for their owners),
    app.users hashed, shop.orders unsharded."""
    with pymongo.MongoClient(source.uri) as client:
        client.admin.command("balancerStop")
        client.admin.command("enableSharding", "bulk", primaryShard="shard01")
        # shop's collections live on shard02: its instance applies their writes, the
        # coordinator (shard01's) their DDL events.
        client.admin.command("enableSharding", "shop", primaryShard="shard02")
        client.admin.command("shardCollection", "app.users", key={"n": "hashed"})
        client.admin.command("shardCollection", "bulk.items", key={"_id": 1})
        for middle, shard in ((3000, "shard02"), (6000, "shard03")):
            client.admin.command("split", "bulk.items", middle={"_id": middle})
            client.admin.command("moveChunk", "bulk.items", find={"_id": middle}, to=shard)
        client.bulk.items.insert_many([{"_id": i, "i": i, "payload": "x" * 300}
                                       for i in range(9000)])
        client.app.users.insert_many([{"n": n, "name": f"user {n}"} for n in range(600)])
        client.shop.orders.insert_many([{"n": n, "total": n * 3} for n in range(400)])
        assert set(chunk_counts(client, "bulk.items")) == set(SHARDS)


class ItemsWriter(ShardedSourceWriter):
    """Writes to every shard: bulk.items by _id (all three shards), app.users."""

    def _run(self) -> None:
        items, users = self.client.bulk.items, self.client.app.users
        while not self.stopped.is_set():
            i = self.random.randrange(9000)
            try:
                step = self.random.randrange(4)
                if step == 0:
                    items.insert_one({"_id": 9000 + self.operations, "i": -1})
                elif step == 1:
                    items.update_one({"_id": i}, {"$inc": {"updates": 1}})
                elif step == 2:
                    items.delete_one({"_id": i})
                else:
                    users.update_one({"n": i % 600}, {"$set": {"seen": self.operations}})
                self.operations += 1
            except pymongo.errors.PyMongoError as exc:
                self.errors.append(exc)
            self.stopped.wait(0.003)


def commit_coordinator_first(instances: list[Mongosync]) -> list[tuple[int, dict[str, Any]]]:
    """/commit sent to the coordinator, and to the others once it is COMMITTING and has
    sampled its readiness again (its own /commit returns once they have it)."""
    answers: list[tuple[int, dict[str, Any]]] = []
    first = threading.Thread(target=lambda: answers.append(instances[0].post("commit")))
    first.start()
    instances[0].wait_for(lambda p: p["state"] == "COMMITTING", timeout=60, what="COMMITTING")
    time.sleep(2)  # its monitor samples every 0.5 s
    answers.extend(commit_everywhere(instances[1:]))
    first.join(timeout=120)
    return answers


def commit_everywhere(instances: list[Mongosync]) -> list[tuple[int, dict[str, Any]]]:
    """/commit sent to every instance at once: each call returns once all have it."""
    return post_everywhere(instances, "commit")


def post_everywhere(instances: list[Mongosync], endpoint: str, body: Any = None
                    ) -> list[tuple[int, dict[str, Any]]]:
    """The same request to every instance at once."""
    answers: list[tuple[int, dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda p=p: answers.append(p.post(endpoint, body)))
               for p in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_three_instances_migrate_three_shards_through_kills_and_the_commit_barrier(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=3, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        three_shard_source(source)
        slow_down(destination, "insert", 150, namespace="bulk.items")
        with pymongo.MongoClient(source.uri) as client:
            client.shop.hotspot.insert_one({"_id": "hot", "n": 0})  # on shard02
        # Only the coordinator is told of the hot document; shard02's instance, which applies
        # its events, learns of it from the migration's store (and again after its restart).
        instances = [ready(instance(processes, tmp_path, source, destination, shard,
                                    *(HOT_OPTION if shard == "shard01" else ())))
                     for shard in SHARDS]
        writer = ItemsWriter(source)
        try:
            for process in instances:
                assert process.post("start", START) == (200, {"success": True})
            progress = [process.progress() for process in instances]
            assert [p["mongosyncID"] for p in progress] == list(SHARDS)
            assert {p["coordinatorID"] for p in progress} == {"shard01"}

            # Killed during the copy, started again with the same flags: it goes on.
            second = instances[1]
            second.wait_for(unless_failed(lambda p: p["info"] == "collection copy"
                                          and p["collectionCopy"]["estimatedCopiedBytes"] > 0),
                            timeout=60, what="shard02's copy under way")
            second.kill()
            speed_up(destination)
            instances[1] = ready(instance(processes, tmp_path, source, destination, "shard02"))

            # Killed during change application, started again: it goes on.
            third = instances[2]
            third.wait_for(unless_failed(lambda p: p["info"] == "change event application"
                                         and p["totalEventsApplied"] > 0),
                           timeout=120, what="shard03 applying changes")
            third.kill()
            instances[2] = ready(instance(processes, tmp_path, source, destination, "shard03"))
            for process in instances:
                process.wait_for(unless_failed(lambda p: p["info"] == "change event application"
                                               and p["state"] == "RUNNING"),
                                 timeout=120, what="change event application")
            with pymongo.MongoClient(source.uri) as client:
                client.app.users.create_index("name")  # a DDL event, the coordinator's
                # Writes on shard02 before and after a drop the coordinator applies: in order,
                # so only the later ones remain.
                client.shop.scratch.insert_many([{"_id": i, "v": "before"} for i in range(50)])
                client.shop.scratch.drop()
                client.shop.scratch.insert_many([{"_id": i, "v": "after"} for i in range(5)])
                for _ in range(20):
                    client.shop.hotspot.update_one({"_id": "hot"}, {"$inc": {"n": 1}})
                client.shop.hotspot.insert_one({"_id": "cold"})
            with pymongo.MongoClient(destination.uri) as right:
                wait_for(lambda: right.shop.hotspot.find_one({"_id": "cold"}), timeout=120,
                         what="shard02's events applied")
                assert right.shop.hotspot.find_one({"_id": "hot"})["n"] == 0  # skipped
        finally:
            writer.stop()
        assert not writer.errors, writer.errors[:3]
        totals = [p.wait_for(unless_failed(lambda p: p["canCommit"]), timeout=180,
                             what="canCommit") for p in instances]
        copied = sum(p["collectionCopy"]["estimatedCopiedBytes"] for p in totals)
        assert copied >= totals[0]["collectionCopy"]["estimatedTotalBytes"] > 0
        assert all(p["collectionCopy"]["estimatedCopiedBytes"] > 0 for p in totals)
        # Every instance tells the coordinator's verifier lags (an int, by the contract).
        for process in instances:
            process.wait_for(lambda p: all(isinstance(p["verification"][side]["lagTimeSeconds"],
                                                      int) for side in ("source", "destination")),
                             timeout=30, what="verification lags")

        # The others asked once the coordinator commits: they refused before (canCommit
        # false for good), and the coordinator's /commit timed out waiting for them (campaign
        # seed 1 with CAMPAIGN_ONE_PER_SHARD=1).
        assert commit_coordinator_first(instances) == [(200, {"success": True})] * 3
        for process in instances:
            process.wait_for(unless_failed(lambda p: p["state"] == "COMMITTED"), timeout=180,
                             what="COMMITTED")
        final = instances[0].progress()
        assert final["canWrite"] is True
        # The coordinator's verifier verified every shard's documents.
        assert final["verificationDetails"]["verdict"] == "equal", final["verificationDetails"]
        assert final["verification"]["source"]["hashedDocumentCount"] >= 9000

        with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()
            assert comparison.documents >= 9000
            assert "name_1" in right.app.users.index_information()
            assert sorted(d["v"] for d in right.shop.scratch.find()) == ["after"] * 5
            assert right.shop.hotspot.find_one({"_id": "hot"})["n"] == 20  # taken at commit
            resumes = {d["_id"] for d in right[METADATA_DATABASE].resumeData.find()}
            assert resumes == {"coordinator", "shard02", "shard03"}
        verified = subprocess.run([str(MONGOSYNC), "verify", "--cluster0", source.uri,
                                   "--cluster1", destination.uri, "--state",
                                   str(tmp_path / "verify.sqlite")],
                                  capture_output=True, text=True, timeout=300)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_coordinator_verifies_every_shard_and_repair_finishes_the_commit(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    """Documents changed behind the tool's back on both shards' sides fail the final
    verification; `mongosync repair` refuses while any instance runs, then takes them from
    the source, and the instances started again commit."""
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("balancerStop")
            client.admin.command("enableSharding", "bulk", primaryShard="shard01")
            client.admin.command("shardCollection", "bulk.items", key={"_id": 1})
            client.admin.command("split", "bulk.items", middle={"_id": 1000})
            client.admin.command("moveChunk", "bulk.items", find={"_id": 1000}, to="shard02")
            client.bulk.items.insert_many([{"_id": i, "i": i} for i in range(2000)])
        instances = [ready(instance(processes, tmp_path, source, destination, shard))
                     for shard in SHARDS[:2]]
        # shard02's /start while the coordinator's migration is half-stored (its lease and
        # resume data written, the migration itself, written last, held back): shard02 found
        # the metadata database and refused with DestinationNotEmpty (the campaign with
        # CAMPAIGN_ONE_PER_SHARD=1, which sends /start to every instance at once).
        with pymongo.MongoClient(destination.uri) as admin:
            admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                "failCommands": ["insert"], "blockConnection": True, "blockTimeMS": 4000,
                "appName": APP_NAME})
            answers: list[Any] = []
            first = threading.Thread(target=lambda: answers.append(
                instances[0].post("start", START)))
            first.start()
            wait_for(lambda: METADATA_DATABASE in admin.list_database_names(), timeout=60)
            answers.append(instances[1].post("start", START))
            first.join(timeout=60)
        assert answers == [(200, {"success": True})] * 2, answers
        coordinator = instances[0]
        coordinator.wait_for(unless_failed(lambda p: p.get("verification", {}).get(
            "source", {}).get("phase") == "stream hashing"), timeout=120, what="stream hashing")
        with pymongo.MongoClient(source.uri) as client:  # each shard's changes: rechecked
            for _id in (10, 1500):
                client.bulk.items.update_one({"_id": _id}, {"$set": {"changed": True}})
            client.bulk.items.insert_many([{"_id": -1}, {"_id": 3000}])
        # The coordinator killed while it verifies: started again, its verifier goes on
        # following the source from where it was.
        coordinator.kill()
        coordinator = instances[0] = ready(instance(processes, tmp_path, source, destination,
                                                    "shard01"))
        coordinator.wait_for(unless_failed(lambda p: p.get("verification", {}).get(
            "source", {}).get("phase") == "stream hashing"), timeout=120, what="stream hashing")
        with pymongo.MongoClient(destination.uri) as behind_the_back:
            behind_the_back.bulk.items.delete_one({"_id": 20})  # on shard01's side
            behind_the_back.bulk.items.update_one({"_id": 1600}, {"$set": {"i": 0}})
            behind_the_back.bulk.items.insert_one({"_id": 5000})  # on shard02's side
        for process in instances:
            process.wait_for(unless_failed(lambda p: p["canCommit"]), timeout=120,
                             what="canCommit")
        assert commit_everywhere(instances) == [(200, {"success": True})] * 2
        # A fatal error: the coordinator's process exits (spec §2.6) and says why.
        assert coordinator.wait_exit(120) == 1, coordinator.output()
        assert "VerificationFailed" in coordinator.output()
        assert "the verifier found one or more mismatches: 3 found" in coordinator.output()
        # The other instance shows the coordinator's verification as stored.
        seen = instances[1].wait_for(lambda p: p.get("verificationDetails", {}).get(
            "verdict") == "mismatches", timeout=30, what="shard02's view of the verdict")
        assert seen["verificationDetails"]["mismatches"] == 3 and seen["canWrite"] is False
        assert seen["verification"]["source"]["hashedDocumentCount"] > 0

        def repair() -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(MONGOSYNC), "repair", "--cluster0", source.uri,
                                   "--cluster1", destination.uri, "--yes"],
                                  capture_output=True, text=True, timeout=120)

        assert seen["state"] == "COMMITTING"  # shard02 waits for the coordinator
        refused = repair()  # shard02's instance still holds its lease
        assert refused.returncode != 0 and "still working on the migration" in \
            refused.stdout + refused.stderr, refused.stdout + refused.stderr
        instances[1].kill()
        repaired = repair()
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        again = [ready(instance(processes, tmp_path, source, destination, shard))
                 for shard in SHARDS[:2]]
        for process in again:
            process.wait_for(unless_failed(lambda p: p["state"] == "COMMITTED"), timeout=120,
                             what="COMMITTED")
        final = again[0].progress()
        assert final["verificationDetails"]["verdict"] == "equal", final["verificationDetails"]
        assert final["verificationDetails"]["repairedDocuments"] == 3
        again[1].wait_for(lambda p: p.get("verificationDetails", {}).get("verdict") == "equal",
                          timeout=30, what="shard02's view of the verdict")
        with pymongo.MongoClient(source.uri) as left, \
                pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()


def test_instances_that_do_not_match_the_source_shards_are_refused(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        seed(source, items=200)
        wrong = ready(instance(processes, tmp_path, source, destination, "shard09"))
        status, body = wrong.post("start", START)
        assert status == 422 and body["error"] == "InstanceMismatch", body
        assert "--id shard09 is not a shard of the source cluster0" in body["errorDescription"]
        assert "shard01, shard02" in body["errorDescription"]
        wrong.close()

        first = ready(instance(processes, tmp_path, source, destination, "shard01"))
        assert first.post("start", START) == (200, {"success": True})
        # A lone instance (no --id) cannot join a migration run one instance per shard.
        lone = instance(processes, tmp_path, source, destination, None)
        assert lone.wait_exit(60) != 0
        assert "start this process with --id <shard id>" in lone.output()
        # shard02 has not received /start: the coordinator says it waits for it.
        warnings = first.wait_for(lambda p: bool(p.get("warnings")), timeout=30)["warnings"]
        assert any("waiting for the instances shard02" in text for text in warnings), warnings
        assert first.progress()["canCommit"] is False
        # A different /start body on the second instance is refused.
        second = ready(instance(processes, tmp_path, source, destination, "shard02"))
        status, body = second.post("start", {**START, "verification": {"enabled": False}})
        assert status == 409 and "same /start body" in body["errorDescription"], body


def test_a_reversible_migration_with_one_instance_per_shard_is_refused(
        tmp_path: Path, processes: list[Mongosync]) -> None:
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_cluster(shards=2, secured=True, extra_args=FAST) as destination:
        first = ready(instance(processes, tmp_path, source, destination, "shard01"))
        status, body = first.post("start", {**START, "reversible": True,
                                            "enableUserWriteBlocking": True})
        assert status == 422 and body["error"] == "InstanceMismatch", body
        assert "reversible: true is not supported with one instance per source shard" in \
            body["errorDescription"]
        with pymongo.MongoClient(destination.uri) as client:
            assert METADATA_DATABASE not in client.list_database_names()


def test_one_instance_per_shard_needs_a_sharded_source(tmp_path: Path,
                                                       processes: list[Mongosync]) -> None:
    with start_secured_emulator("replset", extra_args=FAST) as source, \
            start_secured_emulator("replset", extra_args=FAST) as destination:
        process = ready(instance(processes, tmp_path, source, destination, "shard01"))
        status, body = process.post("start", START)
        assert status == 422 and body["error"] == "InstanceMismatch", body
        assert "is a replica set, which one instance migrates" in body["errorDescription"]
