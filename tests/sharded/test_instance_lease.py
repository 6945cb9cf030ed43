"""One mongosync per source shard: an instance that loses its lease (the destination did not
answer for longer than the lease) and takes it back goes on with its own record, never the
coordinator's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pymongo

from mongoemu.testing import start_cluster, start_secured_emulator
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import compare_clusters

from .clusterkit import wait_for
from .test_migrations import FAST

START = {"source": "cluster0", "destination": "cluster1"}


def all_of(migrations: list[Migration], predicate: Callable[[dict[str, Any]], bool],
           timeout: float) -> None:
    for migration in migrations:
        migration.wait_for(predicate, timeout=timeout)


def test_an_instance_that_takes_its_lease_back_keeps_its_own_record() -> None:
    # Campaign seed 57 with CAMPAIGN_ONE_PER_SHARD=1: shard02's instance lost its lease to an
    # injected write error and took it back with the coordinator's record. It then wrote its
    # shard's resume token and applied_before over the coordinator's, and never its own: the
    # coordinator waited for shard02 to pass a DDL event for ever (canCommit never came), and
    # a restart of the coordinator would have resumed shard01's stream from shard02's token.
    with start_cluster(shards=2, secured=True, extra_args=FAST) as source, \
            start_secured_emulator(extra_args=["--noop-interval", "0.5"]) as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.admin.command("balancerStop")
            client.admin.command("enableSharding", "app", primaryShard="shard01")
            client.admin.command("enableSharding", "shop", primaryShard="shard02")
            client.app.items.insert_many([{"_id": i} for i in range(100)])
            client.shop.orders.insert_many([{"_id": i} for i in range(100)])
        clusters = [(Cluster.connect("cluster0", source.uri),
                     Cluster.connect("cluster1", destination.uri)) for _ in range(2)]
        migrations = [Migration.open(*pair, load_level=1, instance_id=shard)
                      for pair, shard in zip(clusters, ("shard01", "shard02"))]
        try:
            starts = [threading.Thread(target=m.start, args=(StartRequest.from_document(START),))
                      for m in migrations]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join(timeout=120)
            all_of(migrations, lambda p: p["info"] == "change event application", 180)

            other = migrations[1]
            lease = other.lease
            assert lease is not None
            renew = lease.renew
            lost = threading.Event()

            def renew_once_lost() -> bool:
                if not lost.is_set():
                    lost.set()
                    return False
                return renew()

            lease.renew = renew_once_lost  # type: ignore[method-assign]
            wait_for(lambda: lost.is_set() and other.standby is None
                     and not other._lease_lost,  # noqa: SLF001 - taken back
                     timeout=60, what="shard02's instance took its lease back")
            assert other.context is not None
            assert other.context.resume.id == "shard02"

            with pymongo.MongoClient(source.uri) as client:
                client.shop.orders.insert_many([{"_id": 100 + i} for i in range(20)])
                client.app.items.create_index("n")  # a DDL event: waits for shard02's writes
                client.shop.orders.insert_one({"_id": "last"})
            with pymongo.MongoClient(destination.uri) as right:
                wait_for(lambda: right.shop.orders.find_one({"_id": "last"}), timeout=120,
                         what="shard02's events applied")
                stored = {d["_id"]: d for d in right[METADATA_DATABASE].resumeData.find()}
                assert stored["shard02"]["appliedBefore"] is not None
            all_of(migrations, lambda p: p["canCommit"], 120)
            commits = [threading.Thread(target=m.commit) for m in migrations]
            for thread in commits:
                thread.start()
            for thread in commits:
                thread.join(timeout=120)
            all_of(migrations, lambda p: p["state"] == "COMMITTED", 120)
        finally:
            for migration in migrations:
                migration.close()
            for pair in clusters:
                for cluster in pair:
                    cluster.close()
        with pymongo.MongoClient(source.uri) as left, \
                pymongo.MongoClient(destination.uri) as right:
            comparison = compare_clusters(left, right)
            assert comparison.equal, comparison.summary()
            assert "n_1" in right.app.items.index_information()
