"""The copy in worker processes: equal data with several processes, a worker killed -9, the
parent killed, a pause during the copy, and the fence that keeps two workers off one partition.

The copy is slowed down with the destination's ``failCommand`` fail point (each of the copy's
inserts held for a while, nothing else), so that there is a copy in progress to act on; no
assertion depends on how long anything takes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.migration import Migration
from pymongosync.phases import copy as copy_phase
from pymongosync.phases import pacing
from pymongosync.request import StartRequest
from pymongosync.state import PartitionRecord, PartitionStatus
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client
from .workload import Writer

RUNNER = Path(__file__).with_name("copy_runner.py")
START = {"source": "cluster0", "destination": "cluster1"}


def seed_collections(client: pymongo.MongoClient, collections: int, documents: int) -> int:
    """``collections`` collections of ``documents`` documents each (one partition each)."""
    for number in range(collections):
        client.bulk[f"c{number}"].insert_many(
            [{"_id": n, "n": n, "payload": "p" * 200} for n in range(documents)])
    return collections * documents


def hold_copy_inserts(cluster: Cluster, milliseconds: int | None) -> None:
    """Hold each of pymongosync's inserts on the destination (the copy's, and only those:
    metadata and change application write with other commands); None lifts it."""
    if milliseconds is None:
        cluster.client.admin.command("configureFailPoint", "failCommand", mode="off")
        return
    cluster.client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
        "failCommands": ["insert"], "blockConnection": True, "blockTimeMS": milliseconds,
        "appName": APP_NAME})


def worker_pid(owner: str | None) -> int | None:
    """The process of a copy worker's claim (``<instance>:copy-<slot>:<pid>``)."""
    if owner is None or ":copy-" not in owner:
        return None
    tail = owner.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc, or None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def gone(pid: int) -> bool:
    state = process_state(pid)
    return state is None or state[0] in ("Z", "X")


def wait_until(condition: Callable[[], Any], timeout: float = 120.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not reached: {what}"
        time.sleep(0.05)


def partitions(cluster: Cluster) -> list[PartitionRecord]:
    return cluster.metadata_store().partition_records()


def copying_partition(cluster: Cluster, at_most: int) -> PartitionRecord | None:
    """A partition a worker process holds, has checkpointed, and has not finished."""
    for record in partitions(cluster):
        if worker_pid(record.owner) is not None and record.partition_phase == \
                PartitionStatus.IN_PROGRESS and 0 < record.copied_document_count <= at_most:
            return record
    return None


def commit(migration: Migration) -> None:
    migration.wait_for(lambda p: p["canCommit"], timeout=240)
    migration.commit()
    migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=240)


def assert_equal(cluster0: Cluster, cluster1: Cluster) -> None:
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()


@contextmanager
def migration_of(cluster0: Cluster, cluster1: Cluster, load_level: int = 3
                 ) -> Iterator[Migration]:
    migration = Migration.open(cluster0, cluster1, load_level=load_level)
    try:
        yield migration
    finally:
        migration.close()


def test_copy_in_worker_processes_ends_equal(source: EmulatorProcess,
                                             clusters: tuple[Cluster, Cluster]) -> None:
    """Several worker processes copy at once (paced up from one), beside the change buffer
    and a writer, with a collection renamed during the copy; the result is equal."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_collections(client, collections=10, documents=3000)
    hold_copy_inserts(cluster1, 100)
    owners: set[str] = set()
    active: list[int] = []
    with Writer(source.application_uri) as writer, migration_of(cluster0, cluster1) as migration:
        migration.start(StartRequest.from_document(START))
        migration.wait_for(lambda p: p["copyDetails"]["phase"] == "collection copy", timeout=60)
        with user_client(source) as client:
            client.bulk.c7.rename("c7_renamed")  # found again by UUID by whichever worker
        while (progress := migration.progress())["copyDetails"]["phase"] == "collection copy":
            active.append(progress["copyDetails"]["activeWorkers"])
            owners |= {record.owner for record in partitions(cluster1) if record.owner}
            time.sleep(0.05)
        hold_copy_inserts(cluster1, None)
        assert migration.progress()["copyDetails"]["activeWorkers"] == 0
        migration.wait_for(lambda p: p["totalEventsApplied"] >= 50, timeout=120)
        writer.finish()
        assert not writer.errors, writer.errors[:3]
        commit(migration)
    pids = {pid for pid in map(worker_pid, owners) if pid is not None}
    assert len(pids) >= 2 and os.getpid() not in pids, owners
    assert max(active) >= 2, active
    assert all(gone(pid) for pid in pids)  # reaped: none outlives the copy
    assert_equal(cluster0, cluster1)


def test_a_worker_killed_mid_copy_loses_nothing(source: EmulatorProcess,
                                                clusters: tuple[Cluster, Cluster],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pymongosync")
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        total = seed_collections(client, collections=6, documents=4000)
    hold_copy_inserts(cluster1, 300)
    with migration_of(cluster0, cluster1) as migration:
        migration.start(StartRequest.from_document(START))
        victim = wait_until(lambda: copying_partition(cluster1, at_most=3000), what="a copy")
        pid = worker_pid(victim.owner)
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        # This process sees it die and gives the partition back at once: another worker
        # takes it over from its checkpoint.
        retaken = wait_until(lambda: next(
            (r for r in partitions(cluster1) if r.id == victim.id and
             (r.owner not in (None, victim.owner) or r.partition_phase == PartitionStatus.DONE)),
            None), what="the partition taken over")
        assert retaken.copied_document_count >= victim.copied_document_count
        hold_copy_inserts(cluster1, None)
        commit(migration)
    assert gone(pid)
    assert any(f"(pid {pid}) ended unexpectedly (exit code -9)" in record.getMessage()
               for record in caplog.records)
    # Every batch counted once: the killed worker's unrecorded batch was copied again from
    # the checkpoint by its successor (its duplicates ignored), not counted twice.
    copied = sum(r.copied_document_count for r in partitions(cluster1)
                 if r.namespace.db == "bulk")
    assert copied == total
    assert_equal(cluster0, cluster1)


def test_workers_die_with_the_process_that_started_them(source: EmulatorProcess,
                                                        destination: EmulatorProcess,
                                                        clusters: tuple[Cluster, Cluster]
                                                        ) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_collections(client, collections=6, documents=3000)
    hold_copy_inserts(cluster1, 300)
    runner = subprocess.Popen([sys.executable, str(RUNNER), source.uri, destination.uri, "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "STARTED"
        pids = wait_until(lambda: {pid for r in partitions(cluster1)
                                   if (pid := worker_pid(r.owner)) is not None},
                          what="worker processes copying")
        for pid in pids:
            state = process_state(pid)
            assert state is not None and state[1] == runner.pid  # the runner's children
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        wait_until(lambda: all(gone(pid) for pid in pids), timeout=30,
                   what=f"workers {sorted(pids)} gone")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        hold_copy_inserts(cluster1, None)


def test_pause_during_the_copy_stops_the_workers_and_resume_goes_on(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_collections(client, collections=6, documents=3000)
    hold_copy_inserts(cluster1, 200)
    with migration_of(cluster0, cluster1) as migration:
        migration.start(StartRequest.from_document(START))
        pids = wait_until(lambda: {pid for r in partitions(cluster1)
                                   if (pid := worker_pid(r.owner)) is not None},
                          what="worker processes copying")
        migration.pause()
        assert migration.progress()["state"] == "PAUSED"
        assert all(gone(pid) for pid in pids)  # stopped and reaped before pause returned
        paused = partitions(cluster1)
        assert all(record.owner is None for record in paused)  # every claim given back
        assert any(record.partition_phase != PartitionStatus.DONE for record in paused)
        hold_copy_inserts(cluster1, None)
        migration.resume()
        commit(migration)
    assert_equal(cluster0, cluster1)


def test_a_stalled_worker_cannot_copy_a_partition_another_took_over(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A worker stopped (SIGSTOP) while it holds a partition keeps its process alive but
    stops renewing its claim: once the lease lapses another worker takes the partition over,
    and when the stalled one wakes up, the fenced checkpoint refuses it: it leaves the
    partition without recording anything, and no batch is counted twice."""
    caplog.set_level(logging.INFO, logger="pymongosync")
    monkeypatch.setattr(copy_phase, "CLAIM_LEASE_SECONDS", 1.0)
    monkeypatch.setattr(copy_phase, "RENEW_EVERY_SECONDS", 0.2)
    # Another worker must stay active to take the partition over: the pace may not fall back
    # (a loaded machine's latencies would), and the frozen worker must be fenced, not replaced.
    monkeypatch.setattr(pacing, "LATENCY_BACKOFF_FACTOR", float("inf"))
    monkeypatch.setattr(pacing, "LAG_BACKOFF_SECONDS", float("inf"))
    monkeypatch.setattr(copy_phase, "FROZEN_WORKER_SECONDS", 3600.0)
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_collections(client, collections=6, documents=5000)
    hold_copy_inserts(cluster1, 300)
    stalled: int | None = None
    try:
        with migration_of(cluster0, cluster1) as migration:
            migration.start(StartRequest.from_document(START))
            wait_until(lambda: migration.progress()["copyDetails"]["activeWorkers"] >= 2,
                       what="two copy workers")
            held = wait_until(lambda: copying_partition(cluster1, at_most=3000), what="a copy")
            stalled = worker_pid(held.owner)
            assert stalled is not None
            os.kill(stalled, signal.SIGSTOP)
            owners_after: list[str | None] = []

            def taken_over() -> bool:
                record = cluster1.metadata_store().partition(held.id)
                assert record is not None
                owners_after.append(record.owner)
                return record.owner not in (None, held.owner) or \
                    record.partition_phase == PartitionStatus.DONE
            wait_until(taken_over, what="the stalled worker's partition taken over")
            os.kill(stalled, signal.SIGCONT)
            wait_until(lambda: any(f"lost the claim on partition {held.id}" in r.getMessage()
                                   and getattr(r, "fields", {}).get("workerPid") == stalled
                                   for r in caplog.records),
                       what="the stalled worker fenced off")
            hold_copy_inserts(cluster1, None)
            commit(migration)
    finally:
        if stalled is not None and not gone(stalled):
            os.kill(stalled, signal.SIGCONT)
    final = cluster1.metadata_store().partition(held.id)
    assert final is not None and final.partition_phase == PartitionStatus.DONE
    assert final.copied_document_count == 5000  # each batch counted by one owner only
    assert_equal(cluster0, cluster1)


def test_a_frozen_worker_is_replaced_even_when_it_is_the_only_one(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """loadLevel 1 runs one copy worker: when it freezes (SIGSTOP), nobody else takes its
    partition over, so the coordinator, no longer hearing its heartbeat, kills it and starts
    another, which resumes from the checkpoint. Before, the copy waited for ever."""
    caplog.set_level(logging.INFO, logger="pymongosync")
    monkeypatch.setattr(copy_phase, "CLAIM_LEASE_SECONDS", 1.0)
    monkeypatch.setattr(copy_phase, "RENEW_EVERY_SECONDS", 0.2)
    monkeypatch.setattr(copy_phase, "FROZEN_WORKER_SECONDS", 3.0)
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        seed_collections(client, collections=2, documents=5000)
    hold_copy_inserts(cluster1, 300)
    frozen: int | None = None
    try:
        with migration_of(cluster0, cluster1, load_level=1) as migration:
            migration.start(StartRequest.from_document(START))
            held = wait_until(lambda: copying_partition(cluster1, at_most=3000), what="a copy")
            frozen = worker_pid(held.owner)
            assert frozen is not None
            os.kill(frozen, signal.SIGSTOP)
            wait_until(lambda: gone(frozen), what="the frozen worker killed")
            assert any("is frozen, and is killed and replaced" in record.getMessage()
                       for record in caplog.records)
            hold_copy_inserts(cluster1, None)
            commit(migration)
    finally:
        if frozen is not None and not gone(frozen):
            os.kill(frozen, signal.SIGKILL)
    final = cluster1.metadata_store().partition(held.id)
    assert final is not None and final.partition_phase == PartitionStatus.DONE
    assert final.owner is None or worker_pid(final.owner) != frozen
    assert_equal(cluster0, cluster1)
