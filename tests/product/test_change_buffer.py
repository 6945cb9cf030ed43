"""A migration that outlives the source's oplog: the change buffer stores the source's changes
while the copy runs, so the oplog only has to hold what the buffer has not stored yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.errors import ChangeBufferFull, ChangeStreamHistoryLost, PreflightFailed
from pymongosync.migration import EngineSettings, Migration
from pymongosync.request import StartRequest
from pymongosync.state import BufferedBatch
from pymongosync.store import MAIN_STREAM, METADATA_DATABASE, MetadataStore
from pymongosync.verifier.compare import compare_clusters

from .conftest import start_cluster, user_client

START = {"source": "cluster0", "destination": "cluster1"}
RUNNER = Path(__file__).with_name("engine_runner.py")
OPLOG_MB = 1.0  # the source's oplog: about a thousand 1 KiB changes
ROOMY_OPLOG_MB = 64.0


@pytest.fixture
def small_oplog_source() -> Iterator[EmulatorProcess]:
    with start_cluster(extra=["--oplog-size-mb", str(OPLOG_MB)]) as emulator:
        yield emulator


@pytest.fixture
def roomy_oplog_source() -> Iterator[EmulatorProcess]:
    """An oplog far larger than the buffer limit of the test that fills the buffer: the churn
    that goes on until the failure surfaces (a loaded machine takes seconds) cannot roll it over
    past where the buffer stopped, so the restart with a larger limit can go on from there."""
    with start_cluster(extra=["--oplog-size-mb", str(ROOMY_OPLOG_MB)]) as emulator:
        yield emulator


def seed(source: EmulatorProcess) -> None:
    with user_client(source) as client:
        for number in range(4):
            client.app[f"c{number}"].insert_many(
                [{"_id": i, "n": i, "pad": "s" * 400} for i in range(2500)])


def slow_copy(source: EmulatorProcess, milliseconds: int) -> None:
    """Each batch the copy reads from the source waits a while: the copy lasts."""
    with pymongo.MongoClient(source.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["find", "getMore"], "blockConnection": True,
            "blockTimeMS": milliseconds, "appName": APP_NAME, "namespace": "app.c3"})


def speed_up(source: EmulatorProcess) -> None:
    with pymongo.MongoClient(source.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


class Churn:
    """An application writing ~1 KiB changes to the source, far more than its oplog holds."""

    def __init__(self, source: EmulatorProcess) -> None:
        self.source = source
        self.stop = threading.Event()
        self.going = threading.Event()
        self.going.set()
        self.writing = threading.Lock()  # held while one round of writes is in flight
        self.written = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with user_client(self.source) as client:
            number = 0
            while not self.stop.is_set():
                self.going.wait()
                with self.writing:
                    client.app.churn.insert_one({"_id": number, "pad": "c" * 1000})
                    client.app.c0.update_one({"_id": number % 2500},
                                             {"$set": {"touched": number}})
                    if number % 7 == 0:
                        client.app.churn.delete_one({"_id": number - 3})
                number += 1
                self.written += 2

    def pause(self) -> None:
        """No write from now on (the round in flight ends first) until :meth:`resume`."""
        self.going.clear()
        with self.writing:
            pass

    def resume(self) -> None:
        self.going.set()

    def finish(self) -> int:
        self.stop.set()
        self.going.set()
        self.thread.join()
        return self.written


def churn_through_the_copy(migration: Migration, source: EmulatorProcess, at_least: int,
                           seen: list[dict[str, Any]] | None = None) -> int:
    """Write during the copy until the oplog has rolled over several times; ``seen`` collects
    the progress reports that show the change buffer at work."""
    slow_copy(source, 3000)
    churn = Churn(source)
    try:
        migration.wait_for(lambda p: p["copyDetails"]["phase"] == "collection copy", timeout=60)
        deadline = time.monotonic() + 60
        # Not past a failure (a full buffer): writes after it could roll the small oplog over
        # past where the buffer stopped, and a restart could not go on from there.
        while churn.written < at_least and migration.error is None:
            assert time.monotonic() < deadline, churn.written
            if seen is not None:
                progress = migration.progress()
                if "changeBuffer" in progress:
                    seen.append(progress)
            time.sleep(0.1)
    finally:
        written = churn.finish()
        speed_up(source)
    return written


def commit(migration: Migration) -> dict[str, Any]:
    migration.wait_for(lambda p: p["canCommit"], timeout=180)
    migration.commit()
    return migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=180)


def clusters_of(source: EmulatorProcess,
                destination: EmulatorProcess) -> tuple[Cluster, Cluster]:
    return Cluster.connect("cluster0", source.uri), Cluster.connect("cluster1", destination.uri)


def test_without_the_buffer_the_oplog_rolls_over(small_oplog_source: EmulatorProcess,
                                                 destination: EmulatorProcess) -> None:
    """What the buffer is for: the same run, buffering off, fails as before."""
    source = small_oplog_source
    seed(source)
    cluster0, cluster1 = clusters_of(source, destination)
    migration = Migration.open(cluster0, cluster1, load_level=1,
                               settings=EngineSettings(change_buffering=False))
    try:
        migration.start(StartRequest.from_document(START))
        churn_through_the_copy(migration, source, at_least=4000)
        with pytest.raises(ChangeStreamHistoryLost):
            commit(migration)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()


def test_the_buffer_outlives_the_oplog(small_oplog_source: EmulatorProcess,
                                       destination: EmulatorProcess) -> None:
    source = small_oplog_source
    seed(source)
    cluster0, cluster1 = clusters_of(source, destination)
    migration = Migration.open(cluster0, cluster1, load_level=1)
    seen: list[dict[str, Any]] = []
    try:
        migration.start(StartRequest.from_document(START))
        written = churn_through_the_copy(migration, source, at_least=4000, seen=seen)
        assert written * 1000 > 3 * OPLOG_MB * 2**20  # the oplog rolled over several times
        final = commit(migration)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()
    assert seen, "the change buffer never showed in /progress during the copy"
    busiest = max(seen, key=lambda progress: progress["changeBuffer"]["events"])
    buffer = busiest["changeBuffer"]
    assert buffer["events"] > 1000, buffer  # more than the oplog could hold
    assert buffer["receiving"] and buffer["bytes"] > 0 and buffer["limitBytes"] == 10 * 2**30
    assert busiest["estimatedOplogTimeRemaining"]  # "less than 15 minutes", "not checked yet"
    assert "changeBuffer" not in final and final["state"] == "COMMITTED"
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        comparison = compare_clusters(left, right)
        assert comparison.equal, comparison.summary()
        assert right[METADATA_DATABASE].changeBuffer.count_documents({}) == 0  # all applied


def test_the_buffer_limit_stops_the_migration_until_raised(
        roomy_oplog_source: EmulatorProcess, destination: EmulatorProcess) -> None:
    source = roomy_oplog_source
    seed(source)
    cluster0, cluster1 = clusters_of(source, destination)
    tight = EngineSettings(change_buffer_limit_bytes=300 * 1024)
    migration = Migration.open(cluster0, cluster1, load_level=1, settings=tight)
    try:
        migration.start(StartRequest.from_document(START))
        with pytest.raises(ChangeBufferFull) as full:
            churn_through_the_copy(migration, source, at_least=1500)
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        migration.close()
    assert "--changeBufferLimitMB" in full.value.message
    stored = MetadataStore(cluster1.client).load()
    assert stored is not None and stored.global_state.error is not None
    assert stored.global_state.error.name == "ChangeBufferFull"
    assert stored.global_state.error.resumable
    # Nothing was applied half-way: change application never began.
    assert stored.resume.crud_change_stream_resume_info.resume_token is None
    assert cluster1.client.app.churn.count_documents({}) == 0

    roomy = Migration.open(cluster0, cluster1, load_level=1,
                           settings=EngineSettings(change_buffer_limit_bytes=64 * 2**20))
    try:
        assert roomy.error is None and roomy.state == "RUNNING"
        commit(roomy)
    finally:
        roomy.close()
        cluster0.close()
        cluster1.close()
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        comparison = compare_clusters(left, right)
    assert comparison.equal, comparison.summary()


def runner(source: EmulatorProcess, destination: EmulatorProcess,
           commit_it: bool) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(RUNNER), source.uri, destination.uri,
                             "0" if commit_it else "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def running(process: subprocess.Popen[str]) -> bool:
    """True while the runner runs; once it has exited, a failure that shows why."""
    if process.poll() is None:
        return True
    output = process.stdout.read() if process.stdout is not None else ""
    raise AssertionError(f"the engine exited with status {process.returncode}:\n{output}")


def buffered(destination: EmulatorProcess) -> int:
    with pymongo.MongoClient(destination.uri) as client:
        return client[METADATA_DATABASE].changeBuffer.count_documents({})


def test_kill_during_buffering_and_during_replay(small_oplog_source: EmulatorProcess,
                                                 destination: EmulatorProcess) -> None:
    source = small_oplog_source
    seed(source)
    slow_copy(source, 800)
    churn = Churn(source)
    first = runner(source, destination, commit_it=False)
    try:
        deadline = time.monotonic() + 60
        while buffered(destination) < 5:
            assert time.monotonic() < deadline and running(first)
            time.sleep(0.1)
        # The churn stops while no process runs: the small oplog holds about 1,000 changes,
        # fewer than the churn writes while a new process starts on a loaded machine, and an
        # oplog that rolled over past the buffer's last stored change rightly ends the
        # migration (ChangeStreamHistoryLost), which is not what this test is about.
        churn.pause()
        os.kill(first.pid, signal.SIGKILL)  # while the buffer receives, during the copy
        first.wait()
        before = buffered(destination)
        second = runner(source, destination, commit_it=False)
        try:
            assert second.stdout is not None
            opened = second.stdout.readline()  # printed once the stored migration is resumed
            assert opened.startswith("PHASE resumed"), opened + second.stdout.read()
            churn.resume()
            deadline = time.monotonic() + 60
            while buffered(destination) <= before:
                assert time.monotonic() < deadline and running(second)
                time.sleep(0.1)
            churn.finish()
            speed_up(source)
            store = MetadataStore(pymongo.MongoClient(destination.uri, tz_aware=True))
            deadline = time.monotonic() + 120
            while True:  # change application replays the buffer: kill it half-way
                stored = store.load()
                if stored is not None and stored.resume.buffer_applied_seq > 0:
                    break
                assert time.monotonic() < deadline and running(second)
                time.sleep(0.02)
            os.kill(second.pid, signal.SIGKILL)
            second.wait()
            store.client.close()
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        churn.finish()
        speed_up(source)
        if first.poll() is None:
            first.kill()
    last = runner(source, destination, commit_it=True)
    try:
        output, _ = last.communicate(timeout=240)
    finally:
        if last.poll() is None:
            last.kill()
    assert last.returncode == 0, output[-3000:]
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        comparison = compare_clusters(left, right)
        assert comparison.equal, comparison.summary()
        assert right[METADATA_DATABASE].changeBuffer.count_documents({}) == 0


def test_start_refuses_a_copy_the_oplog_cannot_hold_without_the_buffer(
        destination: EmulatorProcess) -> None:
    """/start's estimate: about 40 MiB to copy (2.5 s at the assumed rate) against an oplog
    holding about a second of writes is refused with the numbers when buffering is off, and
    accepted with the buffer."""
    with start_cluster(extra=["--oplog-size-mb", "0.05"]) as source:
        with user_client(source) as client:
            for _ in range(4):
                client.big.docs.insert_many([{"pad": "x" * 2**20} for _ in range(10)])
            client.churn.c.insert_many([{"pad": "x" * 1000} for _ in range(200)])
        cluster0, cluster1 = clusters_of(source, destination)
        refusing = Migration.open(cluster0, cluster1,
                                  settings=EngineSettings(change_buffering=False))
        try:
            with pytest.raises(PreflightFailed) as refused:
                refusing.start(StartRequest.from_document(START))
        finally:
            refusing.close()
        assert "[oplog-window]" in refused.value.message
        assert "is estimated at 3 s" in refused.value.message
        assert MetadataStore(cluster1.client).load() is None  # nothing was written
        buffering = Migration.open(cluster0, cluster1)
        try:
            buffering.start(StartRequest.from_document(START))
            assert buffering.state == "RUNNING"
            warnings = buffering.progress().get("warnings", [])
            assert any(text.startswith("pre-flight warning: [oplog-window] cluster0 (source)")
                       and "the change buffer stores" in text for text in warnings), warnings
        finally:
            buffering.close()
            cluster0.close()
            cluster1.close()


def largest(number: int, letter: str) -> dict[str, Any]:
    """A document of exactly 16 MiB, the largest MongoDB stores: its change event is larger."""
    return {"_id": number, "big": letter * (16 * 2**20 - 24)}


def test_documents_of_16_mib_are_buffered_and_applied(source: EmulatorProcess,
                                                      destination: EmulatorProcess) -> None:
    """A change event of a 16 MiB document is over 16 MiB: the change buffer stores it in
    pieces (a document of the destination holds 16 MiB), and it is applied whole."""
    seed(source)
    cluster0, cluster1 = clusters_of(source, destination)
    migration = Migration.open(cluster0, cluster1, load_level=1)
    try:
        migration.start(StartRequest.from_document(START))
        slow_copy(source, 1000)
        try:
            migration.wait_for(lambda p: p["copyDetails"]["phase"] == "collection copy",
                               timeout=60)
            with user_client(source) as client:
                client.app.large.insert_one(largest(1, "a"))
                client.app.large.insert_one({"_id": 2})
                client.app.large.replace_one({"_id": 2}, largest(2, "b"))
                client.app.large.update_one({"_id": 1}, {"$set": {"big": "c" * (16 * 2**20
                                                                                 - 24)}})
            migration.wait_for(lambda p: p.get("changeBuffer", {}).get("events", 0) >= 4,
                               timeout=60)
        finally:
            speed_up(source)
        migration.wait_for(lambda p: p["canCommit"], timeout=180)
        with user_client(source) as client:  # and while changes are applied from the stream
            client.app.large.insert_one(largest(3, "d"))
            client.app.large.update_one({"_id": 2}, {"$set": {"big": "e" * (16 * 2**20 - 24)}})
        final = commit(migration)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()
    assert final["state"] == "COMMITTED"
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        comparison = compare_clusters(left, right)
        assert comparison.equal, comparison.summary()
        assert right.app.large.count_documents({}) == 3


@pytest.mark.parametrize("stream", [MAIN_STREAM, "shard01"])
def test_a_batch_stored_in_pieces_is_whole_or_absent(destination: EmulatorProcess,
                                                     stream: str) -> None:
    """The pieces of a large batch are written before the batch that names them: a batch that
    failed half-way is absent (its pieces are written again, or dropped with what precedes).
    ``shard01``: the stream of one instance of a migration with one per source shard."""
    big = RawBSONDocument(bson.encode({"_id": {"k": 1}, "operationType": "insert",
                                       "fullDocument": largest(1, "p")}))
    small = RawBSONDocument(bson.encode({"_id": {"k": 2}, "operationType": "delete"}))
    with pymongo.MongoClient(destination.uri) as client:
        store = MetadataStore(client)
        suffix = "" if stream == MAIN_STREAM else f".{stream}"
        pieces = client[METADATA_DATABASE][f"changeBufferPieces{suffix}"]
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": ["update"], "errorCode": 2,
            "namespace": f"{METADATA_DATABASE}.changeBuffer{suffix}"})
        with pytest.raises(pymongo.errors.OperationFailure):
            store.append_buffer(BufferedBatch(seq=1, events=[big], size=len(big.raw)), stream)
        assert pieces.count_documents({}) == 3  # written, and not part of the buffer
        assert store.buffer_batches(0, 10, stream) == []
        assert store.buffer_totals(stream).events == 0
        store.append_buffer(BufferedBatch(seq=1, events=[big, small],
                                          size=len(big.raw) + len(small.raw)), stream)
        store.append_buffer(BufferedBatch(seq=2, events=[small], size=len(small.raw)), stream)
        [first, second] = store.buffer_batches(0, 10, stream)
        assert [event.raw for event in first.events] == [big.raw, small.raw]
        assert [event.raw for event in second.events] == [small.raw]
        totals = store.buffer_totals(stream)
        assert (totals.batches, totals.events, totals.last_seq) == (2, 3, 2)
        store.drop_buffer_through(1, stream)
        assert pieces.count_documents({}) == 0
        assert [batch.seq for batch in store.buffer_batches(0, 10, stream)] == [2]
