"""The migration lease when the destination is unreachable for longer than the lease."""

from __future__ import annotations

import time
from typing import Any

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.errors import ClusterUnavailable
from pymongosync.migration import Migration
from pymongosync.request import StartRequest

from .conftest import user_client

START = {"source": "cluster0", "destination": "cluster1"}


# Longer than the lease (10 s): renewals fail for that long, and the lease is lost.
UNREACHABLE_SECONDS = 13


def start_in_change_application(source: EmulatorProcess,
                                clusters: tuple[Cluster, Cluster]) -> Migration:
    cluster0, cluster1 = clusters
    with user_client(source) as application:
        application.app.items.insert_many([{"n": n} for n in range(100)])
    migration = Migration.open(cluster0, cluster1, load_level=1)
    try:
        migration.start(StartRequest.from_document(START))
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
    except BaseException:
        migration.close()
        raise
    return migration


def fail_writes(admin: pymongo.MongoClient, mode: str = "alwaysOn") -> None:
    """Every write of pymongosync's fails as during an election (PyMongo then waits for its
    next heartbeat); ``mode="off"`` ends it."""
    admin.admin.command("configureFailPoint", "failCommand", mode=mode, data={
        "failCommands": ["update", "insert", "delete", "findAndModify"],
        "writeConcernError": {"code": 189, "errmsg": "primary stepped down"},
        "errorLabels": ["RetryableWriteError"], "appName": APP_NAME})


def wait_until_applied(destination: EmulatorProcess, query: dict[str, Any], count: int) -> None:
    with pymongo.MongoClient(destination.uri) as client:
        deadline = time.monotonic() + 60
        while client.app.items.count_documents(query) < count:
            assert time.monotonic() < deadline, "change application never went on"
            time.sleep(0.2)


def test_a_lease_lost_while_the_destination_was_unreachable_is_taken_back(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """Found by the campaign (tests/campaign/repro/lease_hang.py): renewals failed for longer
    than the lease, the worker was stopped, reading the lease holder failed too, and once the
    destination was back nothing started the worker again: RUNNING forever, no error."""
    migration = start_in_change_application(source, clusters)
    try:
        with pymongo.MongoClient(destination.uri) as admin:
            fail_writes(admin)
            time.sleep(UNREACHABLE_SECONDS)
            fail_writes(admin, mode="off")
        with user_client(source) as application:
            application.app.items.insert_one({"after": True})
        wait_until_applied(destination, {"after": True}, 1)
        assert migration.progress()["state"] == "RUNNING"
    finally:
        migration.close()


def test_a_pause_answered_503_is_kept_when_the_lease_is_lost_and_taken_back(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the campaign (seed 327 with CAMPAIGN_SERVER_COPIES=1): /pause answered 503
    ("it stops at its next checkpoint and is PAUSED then") while the destination did not
    answer; the lease was lost meanwhile, and once taken back the migration was started
    again and ran on, RUNNING for good, the pause forgotten. Here the monitor's own
    completion of the pause (once the worker has stopped) is held back, so that taking the
    lease back comes first, as it did in that seed."""
    monkeypatch.setattr(Migration, "_finish_pause", lambda self: None)
    migration = start_in_change_application(source, clusters)
    try:
        with pymongo.MongoClient(destination.uri) as admin:
            fail_writes(admin)
            started = time.monotonic()
            with user_client(source) as application:  # writes for change application to do
                application.app.items.insert_many([{"late": n} for n in range(10)])
            time.sleep(1)
            with pytest.raises(ClusterUnavailable) as waited:
                migration.pause()
            assert "PAUSED then" in str(waited.value)
            time.sleep(max(0.0, UNREACHABLE_SECONDS - (time.monotonic() - started)))
            fail_writes(admin, mode="off")
        migration.wait_for(lambda p: p["state"] == "PAUSED", timeout=60)
        time.sleep(2)  # and it stays so
        assert migration.progress()["state"] == "PAUSED"
        deadline = time.monotonic() + 30
        while True:  # the lease may still be on its way back ("try again then")
            try:
                migration.resume()
                break
            except ClusterUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        wait_until_applied(destination, {"late": {"$exists": True}}, 10)
    finally:
        migration.close()
