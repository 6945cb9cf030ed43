"""The embedded verifier: it fails a migration whose destination was changed behind the tool's
back, names what differs, never reports writes in flight, and goes on after a kill -9 without
hashing again what it had hashed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.errors import VerificationFailed
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client
from .workload import Writer

START = {"source": "cluster0", "destination": "cluster1"}
RUNNER = Path(__file__).with_name("engine_runner.py")


def seed(emulator: EmulatorProcess, collections: int = 3, documents: int = 400) -> None:
    with user_client(emulator) as client:
        for number in range(collections):
            client.app[f"c{number}"].insert_many(
                [{"_id": i, "n": i, "tags": ["a", "b"], "nested": {"x": i, "y": "z"}}
                 for i in range(documents)])
        client.app.c0.create_index("n", name="n_1")
        client.app.c0.create_index("tags", name="tags_1", expireAfterSeconds=3600)


def run_until_commit_fails(cluster0: Cluster, cluster1: Cluster,
                           tamper: Callable[[pymongo.MongoClient[Any]], None],
                           when: str, while_failed: Callable[[], None] | None = None
                           ) -> VerificationFailed:
    """A migration whose destination is changed at ``when`` ("copy" or "stream hashing");
    commit must fail with the verifier's error. ``while_failed`` runs before the failed
    migration is closed."""
    migration = Migration.open(cluster0, cluster1, load_level=1)
    migration.start(StartRequest.from_document(START))
    try:
        if when == "copy":
            migration.wait_for(lambda p: p["copyDetails"]["partitionsDone"] >= 1, timeout=120)
        else:
            migration.wait_for(lambda p: p.get("verification", {}).get("source", {}).get(
                "phase") == "stream hashing", timeout=120)
        with pymongo.MongoClient(cluster1.uri) as behind_the_back:
            tamper(behind_the_back)
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        with pytest.raises(VerificationFailed) as failed:
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        progress = migration.progress()
        assert progress["canWrite"] is False and progress["error"]["name"] == \
            "VerificationFailed"
        if while_failed is not None:
            while_failed()
        return failed.value
    finally:
        migration.close()


@pytest.mark.parametrize("when", ["copy", "stream hashing"])
def test_documents_changed_behind_the_tools_back_fail_the_migration(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster], when: str) -> None:
    cluster0, cluster1 = clusters
    seed(source)

    def tamper(client: pymongo.MongoClient[Any]) -> None:
        if when == "copy":  # only what the copy has written already can be changed
            deadline = time.monotonic() + 30
            while client.app.c0.count_documents({}) < 400:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        app = client.app
        app.c0.delete_one({"_id": 10})  # missing
        app.c0.insert_one({"_id": "intruder", "n": -1})  # extra
        app.c0.update_one({"_id": 11}, {"$set": {"n": 1100}})  # a changed value
        # The same fields in another order, values and types unchanged.
        app.c0.replace_one({"_id": 12}, {"nested": {"x": 12, "y": "z"}, "tags": ["a", "b"],
                                         "n": 12})

    failure = run_until_commit_fails(cluster0, cluster1, tamper, when)
    assert "the verifier found one or more mismatches" in failure.message
    assert "4 found" in failure.message
    for expected in ("app.c0 _id 10: missing", "app.c0 _id 'intruder': extra",
                     "app.c0 _id 11: different", "app.c0 _id 12: different (the same fields "
                     "in another order"):
        assert expected in failure.message, failure.message
    report = list(cluster1.client[METADATA_DATABASE].verifierMismatches.find())
    assert sorted(str(item["documentId"]["_id"]) for item in report) == \
        ["10", "11", "12", "intruder"]


def test_a_collection_the_copy_did_not_plan_is_verified_whole(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """What a listing that missed a collection leaves (campaign seed 369: renamed across
    databases while they were listed): no range of the copy, no task of the verifier, and on
    the destination the collection without its documents, which no document event removed.
    Before the fix the verifier passed it (and, given a range to hash at commit, the final
    verification stopped itself and the commit ended without a word)."""
    cluster0, cluster1 = clusters
    seed(source)

    def tamper(client: pymongo.MongoClient[Any]) -> None:
        metadata = client[METADATA_DATABASE]
        metadata.partitions.delete_many({"namespace.coll": "c2"})
        metadata.verifierTasks.delete_many({"namespace.coll": "c2"})
        client.app.c2.drop()  # emptied without a delete event: only DDL events
        client.app.create_collection("c2")

    failure = run_until_commit_fails(cluster0, cluster1, tamper, "stream hashing")
    assert "400 found" in failure.message, failure.message
    assert "app.c2 _id 0: missing" in failure.message, failure.message


def test_a_collection_replaced_without_change_events_after_hashing_is_verified_whole(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A source change that comes without change events, after the initial hashing compared
    the collection: convertToCapped copies the documents into a new capped collection with
    inserts that change streams do not show. Here the engine is made to apply the events as
    they come, copying nothing they do not carry (what it did before it followed
    convertToCapped), which replaces the destination's collection with an empty one; nothing
    rechecks the documents no event named. The verifier passed it; the counts (and the new
    UUID) now have it hashed whole."""
    from pymongosync.changes import writer

    monkeypatch.setattr(writer, "converted_to_capped", lambda *args: False)
    monkeypatch.setattr(writer.ChangeWriter, "_copy_documents", lambda *args: None)
    cluster0, cluster1 = clusters
    seed(source)

    def convert(_: pymongo.MongoClient[Any]) -> None:
        with pymongo.MongoClient(cluster0.uri) as client:
            client.app.command("convertToCapped", "c1", size=1 << 20)

    failure = run_until_commit_fails(cluster0, cluster1, convert, "stream hashing")
    assert "400 found" in failure.message, failure.message
    assert "app.c1 _id 0: missing" in failure.message, failure.message


@pytest.mark.parametrize("change", ["dropped", "option"])
def test_indexes_changed_behind_the_tools_back_fail_the_migration(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster], change: str) -> None:
    cluster0, cluster1 = clusters
    seed(source)

    def tamper(client: pymongo.MongoClient[Any]) -> None:
        if change == "dropped":
            client.app.c0.drop_index("n_1")
        else:  # the same index, with an option the source's does not have
            client.app.c0.drop_index("n_1")
            client.app.c0.create_index("n", name="n_1", sparse=True)

    failure = run_until_commit_fails(cluster0, cluster1, tamper, "stream hashing")
    assert "app.c0: index" in failure.message
    expected = "index n_1 missing on the destination" if change == "dropped" else \
        "'sparse': True"
    assert expected in failure.message, failure.message


def test_concurrent_source_writes_are_not_reported(source: EmulatorProcess,
                                                   clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    seed(source, collections=2, documents=1000)
    writer = Writer(source.application_uri, seed=11).__enter__()
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p.get("verification", {}).get("destination", {}).get(
            "phase") == "stream hashing", timeout=180)
        applied = migration.progress()["totalEventsApplied"]
        migration.wait_for(lambda p: p["totalEventsApplied"] > applied + 200, timeout=120)
        writer.finish()
        assert not writer.errors, writer.errors[:3]
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        final = migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        writer.finish()
        migration.close()
    sides = final["verification"]
    assert sides["source"]["hashedDocumentCount"] >= 2000
    assert sides["destination"]["hashedDocumentCount"] >= 2000
    assert compare_clusters(cluster0.client, cluster1.client).equal
    state = cluster1.client[METADATA_DATABASE].verifierState.find_one()
    assert state["verdict"] == "equal" and state["recheckedDocuments"] > 0
    assert cluster1.client[METADATA_DATABASE].verifierMismatches.count_documents({}) == 0


def test_verification_can_be_turned_off(source: EmulatorProcess,
                                        clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    seed(source, collections=1, documents=50)
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document({**START, "verification": {"enabled": False}}))
    try:
        progress = migration.wait_for(lambda p: p["canCommit"], timeout=120)
        assert "verification" not in progress
        with pymongo.MongoClient(cluster1.uri) as behind_the_back:
            behind_the_back.app.c0.delete_one({"_id": 1})
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)  # not checked
    finally:
        migration.close()
    assert "verifierState" not in cluster1.client[METADATA_DATABASE].list_collection_names()


def test_a_transient_error_while_hashing_a_range_does_not_leave_it_claimed(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """Found by the campaign (tests/campaign/repro/verifier_claim.py): the range stayed
    claimed by the failed attempt, its retry claimed the next one, and initial hashing never
    finished: canCommit never came."""
    cluster0, cluster1 = clusters
    seed(source, collections=1, documents=100)
    with pymongo.MongoClient(destination.uri) as client:
        # Only the verifier reads app.c0 on the destination: its first read fails, once.
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": ["find"], "namespace": "app.c0", "errorCode": 6,
            "appName": APP_NAME})
    migration = Migration.open(cluster0, cluster1, load_level=1)
    migration.start(StartRequest.from_document(START))
    try:
        progress = migration.wait_for(lambda p: p["canCommit"], timeout=60)
        assert progress["verification"]["source"]["phase"] == "stream hashing", progress
    finally:
        migration.close()


# -- kill -9 ---------------------------------------------------------------------------------


def slow_verifier_reads(destination: EmulatorProcess, milliseconds: int) -> None:
    """The verifier's reads of the destination's collections (only it reads them there)."""
    with pymongo.MongoClient(destination.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["find", "getMore"], "blockConnection": True,
            "blockTimeMS": milliseconds, "appName": APP_NAME, "namespace": "app.c1"})


def speed_up(destination: EmulatorProcess) -> None:
    with pymongo.MongoClient(destination.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


def runner(source: EmulatorProcess, destination: EmulatorProcess,
           commit: bool) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(RUNNER), source.uri, destination.uri,
                             "0" if commit else "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def verifier_state(destination: EmulatorProcess) -> dict[str, Any]:
    with pymongo.MongoClient(destination.uri) as client:
        return client[METADATA_DATABASE].verifierState.find_one() or {}


def tasks_done(destination: EmulatorProcess) -> int:
    with pymongo.MongoClient(destination.uri) as client:
        return client[METADATA_DATABASE].verifierTasks.count_documents({"status": "done"})


def hashed_source_documents(destination: EmulatorProcess) -> int:
    """What /progress reports as the source's hashedDocumentCount once no range is running."""
    with pymongo.MongoClient(destination.uri) as client:
        return sum(task.get("hashedSource", 0) for task in
                   client[METADATA_DATABASE].verifierTasks.find({"status": "done"}))


def wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_kill_during_initial_and_stream_hashing_hashes_nothing_twice_that_was_done(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source, collections=6, documents=600)
    total = 6 * 600
    slow_verifier_reads(destination, 3000)
    first = runner(source, destination, commit=False)
    try:
        # The runner hashes one range at a time (loadLevel 1): app.c0, then app.c1 (slow).
        wait(lambda: tasks_done(destination) >= 1, "a range hashed")
        time.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)  # during initial hashing, in app.c1
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    done_before = tasks_done(destination)
    assert verifier_state(destination)["phase"] == "initial hashing"
    speed_up(destination)

    second = runner(source, destination, commit=False)
    try:
        wait(lambda: verifier_state(destination).get("phase") == "stream hashing",
             "stream hashing")
        with user_client(source) as client:  # changes for the stream to recheck
            client.app.c2.update_many({"n": {"$lt": 50}}, {"$set": {"touched": True}})
        time.sleep(1.0)
        os.kill(second.pid, signal.SIGKILL)  # during stream hashing
        second.wait()
    finally:
        if second.poll() is None:
            second.kill()
    state = verifier_state(destination)
    assert tasks_done(destination) == 6 >= done_before
    assert hashed_source_documents(destination) == total  # each range once, when finished
    rehashed = state.get("rehashedDocuments", 0)
    # Only what the killed run had read of its unfinished ranges is read again.
    print(f"documents hashed twice after kill -9 during initial hashing: {rehashed}")
    assert rehashed <= 2 * (600 + 600), rehashed

    third = runner(source, destination, commit=True)
    try:
        output, _ = third.communicate(timeout=180)
    finally:
        if third.poll() is None:
            third.kill()
    assert third.returncode == 0, output[-3000:]
    final = verifier_state(destination)
    assert final["verdict"] == "equal"
    assert hashed_source_documents(destination) == total and \
        final.get("rehashedDocuments", 0) == rehashed
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        assert compare_clusters(left, right).equal
    print(json.dumps({"rehashedDocuments": rehashed, "tasksDoneBeforeKill": done_before}))


def test_a_range_is_read_a_batch_at_a_time(source: EmulatorProcess) -> None:
    """Every read of a range (copy, re-copy, verification) holds one batch: getMore asks for
    the batch's size. Without it the server answered each getMore with up to 16 MiB, all held
    at once: mongosync verify took 82 MB at 100k documents and 231 MB at 1M, the embedded
    verifier 445 MB against 47 MB for the rest of a migration (bench.verifier)."""
    from pymongo import monitoring

    from pymongosync.cluster_client import RangeRead

    class GetMores(monitoring.CommandListener):
        def __init__(self) -> None:
            self.sizes: list[Any] = []
            self.listening = True

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if self.listening and event.command_name == "getMore":
                self.sizes.append(event.command.get("batchSize"))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    with user_client(source) as client:
        client.app.wide.insert_many([{"_id": n, "x": "y" * 100} for n in range(3500)])
    listener = GetMores()
    monitoring.register(listener)  # seen by the clients created from now on
    cluster = Cluster.connect("cluster0", source.uri)
    try:
        batches = list(cluster.read_batches(RangeRead(db="app", coll="wide",
                                                      batch_size=1000)))
    finally:
        cluster.close()
        listener.listening = False  # PyMongo cannot unregister a global listener
    assert [len(batch) for batch in batches] == [1000, 1000, 1000, 500]
    assert listener.sizes and set(listener.sizes) == {1000}


def test_a_mismatch_report_written_again_after_a_write_concern_error_is_stored_once(
        destination: EmulatorProcess) -> None:
    """The destination applies the report's write and answers with a write concern error
    (a primary stepping down); the write is retried. Inserting the records again failed with DuplicateKey, a fatal error
    of the migration (found by the campaign with a sharded destination, seed 0, when a fault
    met the report of a mismatch)."""
    from pymongosync.state import CopiedId, Mismatch, MismatchKind
    from pymongosync.verifier.store import MetadataVerifierStore

    with pymongo.MongoClient(destination.uri) as client:
        store = MetadataVerifierStore(client)
        # Twice: the driver's own retry of the write meets it too, then pymongosync retries.
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 2}, data={
            "failCommands": ["insert", "update"],
            "writeConcernError": {"code": 189, "errmsg": "primary stepped down"},
            "errorLabels": ["RetryableWriteError"]})
        try:
            store.add_mismatches([
                Mismatch(namespace="shop.orders", kind=MismatchKind.INDEX,
                         detail="index n_1 missing on the destination"),
                Mismatch(namespace="shop.orders", kind=MismatchKind.MISSING,
                         document_id=CopiedId.model_validate({"_id": 7}),
                         detail="missing on the destination")])
        finally:
            client.admin.command("configureFailPoint", "failCommand", mode="off")
        assert store.mismatch_count() == 2
        assert [mismatch.detail for mismatch in store.mismatches()] == [
            "index n_1 missing on the destination", "missing on the destination"]
