"""A migration stored by the first release (metadata schema 1) resumes after the upgrade.

The first release kept everything in one ``migration`` document whose phase was its display
text, and partitions with a ``namespace`` string, a ``status`` and a bare ``lastId``. The test
stops a migration mid-copy, rewrites its metadata in exactly that layout (the field names the
first release's ``engine.py`` and ``metadata.py`` wrote), and checks that a process of this
release upgrades it, resumes and commits with the two clusters equal.
"""

from __future__ import annotations

from typing import Any

import pymongo

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.store import METADATA_DATABASE, MetadataStore
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client

START = {"source": "cluster0", "destination": "cluster1"}


def as_first_release_layout(client: pymongo.MongoClient[Any]) -> dict[str, Any]:
    """Rewrite the stored migration in schema 1; returns the ``migration`` document written."""
    metadata = client[METADATA_DATABASE]
    state = metadata.globalState.find_one({"_id": "globalState"})
    resume = metadata.resumeData.find_one({"_id": "coordinator"})
    assert state is not None and resume is not None
    info = resume["crudChangeStreamResumeInfo"]
    document: dict[str, Any] = {
        "_id": "migration", "migrationId": state["migrationId"], "createdAt": state["createdAt"],
        "updatedAt": resume["updatedAt"], "request": state["request"],
        "sourceLabel": state["sourceLabel"], "destinationLabel": state["destinationLabel"],
        "clusterHosts": state["clusterHosts"], "state": resume["state"],
        "phase": resume["syncPhase"], "changeStreamStartTime": state["changeStreamStartTime"],
        "resumeToken": info["resumeToken"], "counters": {"eventsApplied":
                                                         resume["eventsApplied"]},
        "writeBlocking": StartRequest.from_document(state["request"]).write_blocking_mode,
        "destinationWriteBlockedByUs": state["destinationWriteBlockedByUs"],
        "balancersStoppedByUs": {role: True for role, stopped in
                                 state["balancersStoppedByUs"].items() if stopped},
        "heartbeat": {"owner": "oldhost:1234", "at": resume["updatedAt"]},
    }
    if info.get("lastEventTs") is not None:
        document["lastAppliedTime"] = info["lastEventTs"]
    if resume.get("copyFinishedTime") is not None:
        document["copyFinishedTime"] = resume["copyFinishedTime"]
    metadata.migration.insert_one(document)
    for partition in list(metadata.partitions.find()):
        last = partition.get("lastCopied")
        metadata.partitions.replace_one({"_id": partition["_id"]}, {
            "_id": partition["_id"],
            "namespace": f"{partition['namespace']['db']}.{partition['namespace']['coll']}",
            "db": partition["namespace"]["db"], "collection": partition["namespace"]["coll"],
            "index": partition["index"], "lower": partition["lower"],
            "upper": partition["upper"], "last": partition["isLast"],
            "natural": partition["natural"], "status": partition["partitionPhase"],
            "lastId": None if last is None else last["_id"],
            "copiedDocuments": partition["copiedDocumentCount"],
            "copiedBytes": partition["copiedByteCount"],
            "estimatedDocuments": partition["estimatedDocumentCount"],
            "estimatedBytes": partition["totalByteCount"]})
    for name in ("globalState", "resumeData", "lease"):
        metadata.drop_collection(name)
    return document


def test_a_first_release_migration_resumes_to_committed(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.bulk.items.insert_many([{"i": i, "payload": "x" * 400} for i in range(30000)])
        client.app.users.insert_many([{"n": i} for i in range(500)])
        client.app.users.create_index("n", unique=True)
    first = Migration.open(cluster0, cluster1, load_level=1)
    first.start(StartRequest.from_document(START))
    try:
        first.wait_for(lambda p: p["info"] == "collection copy"
                       and p["collectionCopy"]["estimatedCopiedBytes"] > 0, timeout=120)
    finally:
        first.close()
    old = as_first_release_layout(cluster1.client)
    assert old["phase"] in ("collection copy", "initializing partitions")
    partitions = list(cluster1.client[METADATA_DATABASE].partitions.find())
    assert partitions and all("status" in p and "namespace" in p for p in partitions)
    assert any(p["lastId"] is not None for p in partitions), "stopped before any batch"
    with user_client(source) as client:  # changes made while no process ran
        client.app.users.insert_one({"n": -1})
        client.bulk.items.delete_many({"i": {"$lt": 100}})

    upgraded = Migration.open(cluster0, cluster1)
    try:
        assert upgraded.state == "RUNNING" and upgraded.error is None
        stored = MetadataStore(cluster1.client).load()
        assert stored is not None and stored.schema_version == 2
        assert METADATA_DATABASE in cluster1.client.list_database_names()
        assert "migration" not in cluster1.client[METADATA_DATABASE].list_collection_names()
        upgraded.wait_for(lambda p: p["canCommit"], timeout=180)
        upgraded.commit()
        final = upgraded.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        upgraded.close()
    assert final["canWrite"] is True
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()
    assert comparison.documents == 30000 - 100 + 501
