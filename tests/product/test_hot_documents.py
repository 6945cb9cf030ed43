"""--hotDocIDs (spec §2.2, §5.6): hot documents' change events are skipped while changes are
applied, and each is taken as the source has it at commit."""

from __future__ import annotations

from typing import Any

from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64

from mongoemu.testing import EmulatorProcess
from mongoemu.testing import start_cluster as start_sharded_cluster
from mongoemu.testing import start_secured_emulator
from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.clusters import Cluster
from pymongosync.durations import OperationKind
from pymongosync.migration import EngineSettings, Migration
from pymongosync.request import StartRequest
from pymongosync.store import METADATA_DATABASE, MetadataStore
from pymongosync.verifier.compare import compare_clusters

from .conftest import CLUSTER_ARGS, user_client

START = {"source": "cluster0", "destination": "cluster1"}
# NumberLong(1) names the document of _id 1, 2.0 the one of NumberLong(2); and a date before
# year 1 (out of Python's range: the commit's read of it failed, campaign seed 4 with
# CAMPAIGN_HOT_DOCUMENTS=1).
EARLY = DatetimeMS(-100_000_000_000_004)
COUNTERS = ('{"db": "app", "collection": "counters", "ids": [{"_id": {"$numberLong": "1"}}, '
            '{"_id": 2.0}, {"_id": 3}, {"_id": {"$date": {"$numberLong": "-100000000000004"}}}]}')
DATES: CodecOptions[dict[str, Any]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)
MOVING = '{"db": "app", "collection": "moving", "ids": [{"_id": "h"}]}'


def settings(*values: str) -> EngineSettings:
    return EngineSettings(hot_documents=HotDocuments.from_options(values))


def destination_document(cluster: Cluster, coll: str, document_id: Any) -> Any:
    return cluster.client.app.get_collection(coll, codec_options=DATES).find_one(
        {"_id": document_id})


def test_hot_documents_are_skipped_then_taken_from_the_source_at_commit(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """Their events are not applied while the migration runs (the destination keeps the
    copied state), the others' are; at commit each is what the source has: updated, deleted,
    or moved by a rename of its collection (whose earlier events were skipped under the old
    name: without the writer taking it before the rename, the renamed copy kept the stale
    document and the verifier failed the commit)."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.counters.insert_many([{"_id": 1, "n": 0}, {"_id": Int64(2), "n": 0},
                                         {"_id": 3, "n": 0}, {"_id": "cold", "n": 0},
                                         {"_id": EARLY, "n": 0}])
        client.app.moving.insert_many([{"_id": "h", "n": 0}, {"_id": "c", "n": 0}])
    migration = Migration.open(cluster0, cluster1, load_level=1,
                               settings=settings(COUNTERS, MOVING))
    try:
        migration.start(StartRequest.from_document(START))
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
        with user_client(source) as client:
            for _ in range(40):
                client.app.counters.update_one({"_id": 1}, {"$inc": {"n": 1}})
                client.app.counters.update_one({"_id": 2}, {"$inc": {"n": 1}})
                client.app.counters.update_one({"_id": EARLY}, {"$inc": {"n": 1}})
                client.app.moving.update_one({"_id": "h"}, {"$inc": {"n": 1}})
            client.app.counters.delete_one({"_id": 3})
            client.app.counters.update_one({"_id": "cold"}, {"$set": {"n": 5}})
            client.app.moving.rename("moved")
            client.app.moved.update_one({"_id": "c"}, {"$set": {"n": 9}})
            client.app.counters.insert_one({"_id": "last", "n": 0})
        migration.wait_for(lambda p: destination_document(cluster1, "counters", "last")
                           is not None, timeout=60)
        # The cold document follows; the hot ones keep their copied state.
        assert destination_document(cluster1, "counters", "cold")["n"] == 5
        assert destination_document(cluster1, "counters", 1)["n"] == 0
        assert destination_document(cluster1, "counters", 2)["n"] == 0
        assert destination_document(cluster1, "counters", EARLY)["n"] == 0
        assert destination_document(cluster1, "counters", 3) is not None
        assert destination_document(cluster1, "moved", "h")["n"] == 40  # taken at the rename
        assert migration.context is not None
        assert migration.context.counters.hot_events_skipped == 40 * 4 + 1
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        final = migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        durations = migration.context.counters.durations
    finally:
        migration.close()
    assert final["state"] == "COMMITTED"
    # mongosync's hot-document metrics: the stored IDs read once, then the four documents of
    # app.counters each read from the source and written here (app.moving was renamed away).
    assert durations.histogram(OperationKind.HOT_DOC_STATES_READ).count == 1
    assert durations.histogram(OperationKind.HOT_DOC_REFETCH).count == 4
    assert durations.histogram(OperationKind.HOT_DOC_APPLY).count == 4
    for kind in (OperationKind.COPY_SOURCE_READ, OperationKind.COPY_DESTINATION_WRITE,
                 OperationKind.CEA_SOURCE_READ, OperationKind.CEA_DESTINATION_WRITE):
        assert durations.histogram(kind).count > 0, kind
    state = cluster1.client[METADATA_DATABASE].verifierState.find_one()
    assert state["verdict"] == "equal"  # the embedded verifier compared them at commit
    assert destination_document(cluster1, "counters", 1)["n"] == 40
    assert destination_document(cluster1, "counters", 2)["n"] == 40
    assert destination_document(cluster1, "counters", EARLY)["n"] == 40
    assert destination_document(cluster1, "counters", 3) is None
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()


def test_hot_document_ids_are_kept_and_added_to_across_restarts(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """As mongosync: IDs given on an earlier run stay; a restart can add more, none removed."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.counters.insert_one({"_id": 1})
    first = Migration.open(cluster0, cluster1, settings=settings(COUNTERS))
    first.start(StartRequest.from_document(START))
    first.close()
    again = Migration.open(cluster0, cluster1, settings=settings(MOVING, COUNTERS))
    again.close()
    plain = Migration.open(cluster0, cluster1)
    try:
        assert plain.context is not None
        assert len(plain.context.hot_documents) == 5
        assert ("app", "moving") in plain.context.hot_documents.namespaces
    finally:
        plain.close()
    stored = MetadataStore(cluster1.client).load_global()
    assert stored is not None and len(stored.hot_documents) == 5


def test_hot_documents_of_a_collection_sharded_on_another_key_on_mongodb_6_0() -> None:
    """A replica set into a collection sharded on another key than _id (shardingEntries): an
    upsert by _id alone (an insert or replace event's, or a hot document's at commit) cannot be
    targeted on MongoDB 6.0, and the migration failed with ShardKeyNotFound. Upserts there now
    name the whole shard key, after a delete by _id: a shard key value that changed (the hot
    document's while its events were skipped, a replace's) replaces the document, never
    doubles it on another shard."""
    with start_secured_emulator("replset", server_version="6.0",
                                extra_args=CLUSTER_ARGS) as source, \
            start_sharded_cluster(shards=2, server_version="6.0") as destination:
        with user_client(source) as client:
            client.app.counters.insert_many([{"_id": 1, "k": 1, "n": 0}] +
                                            [{"_id": 100 + i, "k": i} for i in range(50)])
        cluster0 = Cluster.connect("cluster0", source.uri)
        cluster1 = Cluster.connect("cluster1", destination.uri)
        migration = Migration.open(cluster0, cluster1, load_level=1, settings=settings(
            '{"db": "app", "collection": "counters", "ids": [{"_id": 1}]}'))
        request = {**START, "sharding": {"shardingEntries": [{
            "database": "app", "collection": "counters",
            "shardCollection": {"key": [{"k": "hashed"}]}}]}}
        try:
            migration.start(StartRequest.from_document(request))
            migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
            with user_client(source) as client:
                for n in range(10):
                    client.app.counters.update_one({"_id": 1}, {"$set": {"k": 1000 + n, "n": n}})
                # Writes of other documents by _id alone (a replica set's documentKey): the
                # first upsert answered ShardKeyNotFound, every later one names the shard key.
                client.app.counters.insert_many([{"_id": 200 + i, "k": i} for i in range(20)])
                client.app.counters.replace_one({"_id": 120}, {"k": 500, "replaced": True})
                client.app.counters.replace_one({"_id": 121}, {"k": 21, "replaced": True})
            migration.wait_for(lambda p: p["canCommit"], timeout=120)
            migration.commit()
            final = migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        finally:
            migration.close()
        assert final["state"] == "COMMITTED"
        shards = {chunk["shard"] for chunk in cluster1.client.config.chunks.find()}
        assert len(shards) == 2  # the upserts had to be targeted
        for _id, expected in ((1, {"_id": 1, "k": 1009, "n": 9}),
                              (120, {"_id": 120, "k": 500, "replaced": True})):
            assert list(cluster1.client.app.counters.find({"_id": _id})) == [expected]
        comparison = compare_clusters(cluster0.client, cluster1.client, compare_indexes=False)
        assert comparison.equal, comparison.summary()
        cluster0.close()
        cluster1.close()
