"""Migration options: namespace filters, index building modes, reversal."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.errors import InvalidState, UnsupportedCluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client


def migrate(cluster0: Cluster, cluster1: Cluster, request: dict[str, Any],
            during: Any = None) -> Migration:
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(request))
    migration.wait_for(lambda p: p["canCommit"], timeout=90)
    if during is not None:
        during()
        migration.wait_for(lambda p: p["canCommit"] and p["lagTimeSeconds"] == 0, timeout=90)
    migration.commit()
    migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=90)
    return migration


def commit_reversed(migration: Migration, cluster0: Cluster, cluster1: Cluster,
                    events: int) -> None:
    """Commit a reversed migration once it applied ``events``; the original source then holds
    what the new one does."""
    migration.wait_for(lambda p: p["canCommit"] and p["totalEventsApplied"] >= events,
                       timeout=60)
    migration.commit()
    migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    migration.close()
    comparison = compare_clusters(cluster1.client, cluster0.client)
    assert comparison.equal, comparison.summary()


def test_namespace_filter_and_renames(source: EmulatorProcess,
                                      clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.sales.accounts_eu.insert_many([{"n": i} for i in range(50)])
        client.sales.accounts_us.insert_many([{"n": i} for i in range(50)])
        client.sales.other.insert_one({"skip": True})
        client.marketing.leads.insert_many([{"n": i} for i in range(10)])
        client.hr.people.insert_one({"private": True})
    request = {"source": "cluster0", "destination": "cluster1",
               "includeNamespaces": [
                   {"database": "sales", "collectionsRegex": {"pattern": "^accounts_",
                                                              "options": "i"}},
                   {"database": "marketing"}],
               "excludeNamespaces": [{"database": "sales", "collections": ["accounts_us"]}]}

    def changes() -> None:
        with user_client(source) as client:
            client.marketing.leads.rename("leads_2026")  # whole database included: followed
            client.marketing.new_collection.insert_one({"fresh": True})
            client.sales.accounts_eu.insert_one({"late": True})
            client.sales.other.insert_one({"still": "excluded"})

    migration = migrate(cluster0, cluster1, request, during=changes)
    migration.close()
    assert sorted(cluster1.client.list_database_names()) == [
        "admin", "config", "local", "marketing", "mongosync_reserved_for_internal_use", "sales"]
    assert cluster1.client.sales.list_collection_names() == ["accounts_eu"]
    assert sorted(cluster1.client.marketing.list_collection_names()) == ["leads_2026",
                                                                         "new_collection"]
    namespace_filter = StartRequest.from_document(request).namespace_filter()
    comparison = compare_clusters(cluster0.client, cluster1.client, namespace_filter)
    assert comparison.equal, comparison.summary()
    # Filtered migrations never block the source (spec §9.2).
    with user_client(source) as client:
        client.sales.accounts_eu.insert_one({"after": "commit"})


def test_index_building_modes(source: EmulatorProcess, destination: EmulatorProcess) -> None:
    from .conftest import start_cluster
    with user_client(source) as client:
        client.shop.items.insert_many([{"sku": f"s{i}", "loc": i, "h": i} for i in range(100)])
        client.shop.items.create_index("sku", unique=True)
        client.shop.items.create_index([("h", "hashed")])
    for mode, expected in (("beforeDataCopy", {"_id_", "sku_1", "h_hashed"}),
                           ("excludeHashed", {"_id_", "sku_1"}),
                           ("never", {"_id_"})):
        with start_cluster() as fresh:
            cluster0 = Cluster.connect("cluster0", source.uri)
            cluster1 = Cluster.connect("cluster1", fresh.uri)
            migration = migrate(cluster0, cluster1, {"source": "cluster0",
                                                     "destination": "cluster1",
                                                     "buildIndexes": mode})
            migration.close()
            names = {spec["name"] for spec in cluster1.client.shop.items.list_indexes()}
            assert names == expected, mode
            if "sku_1" in names:
                specs = {s["name"]: s for s in cluster1.client.shop.items.list_indexes()}
                assert specs["sku_1"].get("unique") is True
            assert compare_clusters(cluster0.client, cluster1.client,
                                    compare_indexes=False).equal
            with user_client(source) as client:  # the committed source must accept writes
                client.admin.command("setUserWriteBlockMode", 1, **{"global": False})
            cluster0.close()
            cluster1.close()


def test_reverse_sync(source: EmulatorProcess, destination: EmulatorProcess,
                      clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(200)])
        client.app.items.create_index("n", unique=True)
    migration = migrate(cluster0, cluster1, {"source": "cluster0", "destination": "cluster1",
                                             "reversible": True})
    # The application moves to the new cluster and keeps writing there.
    with user_client(destination) as application:
        application.app.items.insert_many([{"n": -i} for i in range(1, 31)])
        application.app.items.update_many({"n": {"$lt": 10}}, {"$set": {"moved": True}})
    migration.reverse()
    migration.wait_for(lambda p: p["state"] == "RUNNING", timeout=60)
    progress = migration.progress()
    assert progress["directionMapping"]["Source"].startswith("cluster1")
    commit_reversed(migration, cluster0, cluster1, events=31)
    with user_client(source) as application:  # the original source takes writes again
        application.app.items.insert_one({"n": 10_000})


def test_transient_errors_are_retried(source: EmulatorProcess, destination: EmulatorProcess,
                                      clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(3000)])
    # The destination fails a few writes and the source a few reads and change-stream getMores
    # with errors a real cluster returns during elections.
    with user_client(destination) as admin:
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": 3},
                            data={"failCommands": ["insert", "update"], "errorCode": 11602,
                                  "appName": "pymongosync"})
    with user_client(source) as admin:
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": 2},
                            data={"failCommands": ["find", "getMore"], "errorCode": 91,
                                  "appName": "pymongosync"})

    def more_writes() -> None:
        with user_client(source) as client:
            client.app.items.insert_many([{"n": -i} for i in range(1, 200)])
            client.admin.command("configureFailPoint", "failCommand", mode={"times": 2},
                                 data={"failCommands": ["getMore"], "errorCode": 10107,
                                       "appName": "pymongosync"})
            client.app.items.delete_many({"n": {"$lt": -100}})

    migration = migrate(cluster0, cluster1, {"source": "cluster0", "destination": "cluster1"},
                        during=more_writes)
    migration.close()
    assert migration.error is None
    assert compare_clusters(cluster0.client, cluster1.client).equal


def test_a_lease_renewal_that_races_a_reverse_leaves_the_reversed_migration_running(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster], monkeypatch: Any) -> None:
    # The monitor reads the lease, then renews it; a reverse in between releases that lease and
    # takes the reversed migration's. The renewal then fails on the released lease, which is not
    # a loss of the migration (it stopped the reversed one, and /commit answered that the
    # destination was unreachable).
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(50)])
    migration = migrate(cluster0, cluster1, {"source": "cluster0", "destination": "cluster1",
                                             "reversible": True})
    released = migration.lease
    assert released is not None
    renew = released.renew
    reversed_once = threading.Lock()
    failures: list[BaseException] = []

    def reverse_then_renew() -> bool:
        if reversed_once.acquire(blocking=False):
            try:
                migration.reverse()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(exc)
        return renew()

    monkeypatch.setattr(released, "renew", reverse_then_renew)
    migration._keep_or_take_lease()  # noqa: SLF001 - the monitor's renewal round, now
    assert not failures, failures
    # Still the owner: /commit is refused for the state, not for a lost lease.
    with pytest.raises(InvalidState):
        migration.commit()
    migration.wait_for(lambda p: p["state"] == "RUNNING", timeout=60)
    with user_client(destination) as application:
        application.app.items.insert_one({"n": -1})
    commit_reversed(migration, cluster0, cluster1, events=1)


def test_start_retries_what_a_dropped_connection_or_a_failover_interrupts(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    # Campaign seed 626: a reset left a fault armed on the source, and /start answered 503
    # for one closed connection. /start only reads until it stores the migration, and the
    # clock note it takes is a no-op: all of it is retried like the migration's own reads.
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(100)])
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 3},
                             data={"failCommands": ["appendOplogNote", "listCollections"],
                                   "closeConnection": True, "appName": "pymongosync"})
    migration = migrate(cluster0, cluster1, {"source": "cluster0", "destination": "cluster1"})
    migration.close()
    assert migration.error is None
    assert compare_clusters(cluster0.client, cluster1.client).equal
    with user_client(source) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


def test_a_time_series_collection_is_refused_at_start_unless_excluded(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.metrics.create_collection("readings", timeseries={"timeField": "t"})
        client.shop.orders.insert_many([{"n": i} for i in range(20)])
    request = {"source": "cluster0", "destination": "cluster1"}
    migration = Migration.open(cluster0, cluster1)
    try:
        with pytest.raises(UnsupportedCluster) as refused:
            migration.start(StartRequest.from_document(request))
        # mongosync's text, and what to do about it.
        assert "metrics.readings is a timeseries collection" in str(refused.value)
        assert "excludeNamespaces" in str(refused.value)
        assert migration.progress()["state"] == "IDLE"
    finally:
        migration.close()
    assert not {"metrics", "shop", "mongosync_reserved_for_internal_use"} & \
        set(cluster1.client.list_database_names())
    excluded = {**request, "excludeNamespaces": [{"database": "metrics"}]}
    migrate(cluster0, cluster1, excluded).close()
    assert "metrics" not in cluster1.client.list_database_names()
    assert cluster1.client.shop.orders.count_documents({}) == 20
