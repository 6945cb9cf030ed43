"""Change application in parallel lanes, end to end on emulated clusters: under a concurrent
writer (hot documents, numerically equal ``_id``s of different types, multi-document
transactions, DDL) the migration commits byte-equal, also after kill -9 while lanes apply."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pymongo
from bson import Int64
from pymongo.errors import PyMongoError

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client

RUNNER = Path(__file__).with_name("engine_runner.py")
HOT = 200  # documents the writer keeps changing
WRITE_BLOCKED = 371
LOAD_LEVEL = 4  # 8 lanes


class HotWriter:
    """An application hammering a few hundred documents: updates, replacements, deletes and
    re-inserts under a numerically equal ``_id`` of another type (1 → 1.0 → NumberLong(1)),
    multi-document transactions, and now and then an index or a collection created."""

    def __init__(self, emulator: EmulatorProcess, seed: int) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = user_client(emulator)
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.operations = 0
        self.transactions = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HotWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.client.close()

    def _run(self) -> None:
        steps = [self._update] * 6 + [self._retype, self._replace, self._transaction,
                                      self._transaction, self._ddl]
        while not self.stop.is_set():
            try:
                self.random.choice(steps)()
                self.operations += 1
            except PyMongoError as exc:
                if getattr(exc, "code", None) == WRITE_BLOCKED:  # commit blocked the source
                    return
                self.errors.append(exc)

    def _id_of(self, n: int) -> Any:
        """The _id document n has now, whatever its numeric type."""
        found = self.client.app.hot.find_one({"_id": n}, {"_id": 1})
        return None if found is None else found["_id"]

    def _update(self) -> None:
        n = self.random.randrange(HOT)
        self.client.app.hot.update_one({"_id": n}, {"$inc": {"v": 1},
                                                   "$set": {f"f{n % 5}": self.operations}})

    def _retype(self) -> None:
        n = self.random.randrange(HOT)
        current = self._id_of(n)
        if current is None:
            return
        hot = self.client.app.hot
        document = hot.find_one({"_id": n})
        hot.delete_one({"_id": current})
        new = self.random.choice([float(n), Int64(n), n])
        hot.insert_one({**document, "_id": new, "retyped": repr(new)})

    def _replace(self) -> None:
        n = self.random.randrange(HOT)
        self.client.app.hot.replace_one({"_id": n}, {"replaced": self.operations, "v": -1})

    def _transaction(self) -> None:
        picked = self.random.sample(range(HOT), 5)

        def body(session: Any) -> None:
            for n in picked:
                self.client.app.hot.update_one({"_id": n}, {"$set": {"txn": self.operations}},
                                               session=session)
            self.client.app.ledger.insert_one({"txn": self.operations, "ids": picked},
                                              session=session)

        with self.client.start_session() as session:
            session.with_transaction(body)
        self.transactions += 1

    def _ddl(self) -> None:
        step = self.random.randrange(3)
        if step == 0:
            self.client.app.hot.create_index("v", name="v_1")
        elif step == 1:
            try:
                self.client.app.hot.drop_index("v_1")
            except PyMongoError:
                pass  # not there (yet)
        else:
            name = f"side{self.random.randrange(3)}"
            self.client.app[name].insert_many([{"n": i} for i in range(20)])


def seed(emulator: EmulatorProcess) -> None:
    with user_client(emulator) as client:
        client.app.hot.insert_many([{"_id": n, "v": 0, "pad": "h" * 200} for n in range(HOT)])
        client.app.ledger.insert_one({"txn": -1})
        client.bulk.items.insert_many([{"i": i, "pad": "b" * 300} for i in range(5000)])


def assert_equal(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    try:
        comparison = compare_clusters(cluster0.client, cluster1.client)
        assert comparison.equal, comparison.summary()
    finally:
        cluster0.close()
        cluster1.close()


def test_parallel_application_under_a_concurrent_writer_commits_equal(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source)
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    migration = Migration.open(cluster0, cluster1, load_level=LOAD_LEVEL)
    try:
        with HotWriter(source, seed=5) as writer:
            migration.start(StartRequest.from_document({"source": "cluster0",
                                                        "destination": "cluster1"}))
            migration.wait_for(lambda p: p["info"] == "change event application", timeout=180)
            applied = migration.progress()["totalEventsApplied"]
            migration.wait_for(lambda p: p["totalEventsApplied"] > applied + 2000, timeout=120)
            writer.stop.set()
        assert writer.transactions > 0 and writer.errors == [], writer.errors[:3]
        migration.wait_for(lambda p: p["canCommit"], timeout=180)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=180)
    finally:
        migration.close()
        cluster0.close()
        cluster1.close()
    assert_equal(source, destination)


class Runner:
    """engine_runner.py in a subprocess, with its phase lines."""

    def __init__(self, source: EmulatorProcess, destination: EmulatorProcess,
                 min_cea_seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER), source.uri, destination.uri, str(min_cea_seconds),
             str(LOAD_LEVEL)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return True
            if line == "EOF":
                return False
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


def test_kill_9_while_lanes_apply_then_restart_is_equal(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    seed(source)
    rng = random.Random(int(os.environ.get("KILL9_SEED", "12")))
    with HotWriter(source, seed=9) as writer:
        for round_ in range(3):
            runner = Runner(source, destination, min_cea_seconds=-1)  # never commits
            assert runner.wait_for("change event application", timeout=180), runner.seen[-20:]
            before = writer.operations
            time.sleep(rng.uniform(0.5, 2.0))
            assert writer.operations > before  # the lanes had changes to apply
            runner.kill()
        writer.stop.set()
    assert writer.errors == [], writer.errors[:3]
    final = Runner(source, destination, min_cea_seconds=0.5)
    assert final.wait_for("PHASE done", timeout=240), final.seen[-20:]
    final.process.wait(timeout=30)
    assert_equal(source, destination)
