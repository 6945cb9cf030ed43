"""The migration lease when the destination is unreachable for longer than the lease."""

from __future__ import annotations

import time

import pymongo

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest

from .conftest import user_client

START = {"source": "cluster0", "destination": "cluster1"}


def test_a_lease_lost_while_the_destination_was_unreachable_is_taken_back(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """Found by the campaign (tests/campaign/repro/lease_hang.py): renewals failed for longer
    than the lease, the worker was stopped, reading the lease holder failed too, and once the
    destination was back nothing started the worker again: RUNNING forever, no error."""
    cluster0, cluster1 = clusters
    with user_client(source) as application:
        application.app.items.insert_many([{"n": n} for n in range(100)])
    migration = Migration.open(cluster0, cluster1, load_level=1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
        with pymongo.MongoClient(destination.uri) as admin:
            # Every write of pymongosync's fails as during an election (PyMongo then waits for
            # its next heartbeat): longer than the lease (10 s).
            admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                "failCommands": ["update", "insert", "delete", "findAndModify"],
                "writeConcernError": {"code": 189, "errmsg": "primary stepped down"},
                "errorLabels": ["RetryableWriteError"], "appName": APP_NAME})
            time.sleep(13)
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
        with user_client(source) as application:
            application.app.items.insert_one({"after": True})
        with pymongo.MongoClient(destination.uri) as client:
            deadline = time.monotonic() + 60
            while client.app.items.count_documents({"after": True}) == 0:
                assert time.monotonic() < deadline, "change application never went on"
                time.sleep(0.2)
        assert migration.progress()["state"] == "RUNNING"
    finally:
        migration.close()
