"""The official shell against the router of a 3-shard cluster, typed as a person would."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from mongoemu.testing import ClusterProcess

from .clusterkit import chunk_counts, counts_per_shard, mongosh_path, router

SCRIPT = """\
db.adminCommand({shardCollection: "shop.orders", key: {region: "hashed"}})
use shop
for (let i = 0; i < 300; i++) { db.orders.insertOne({region: "r" + (i % 17), n: i}) }
print("COUNT", db.orders.countDocuments())
print("SUM", db.orders.aggregate([{$group: {_id: null, s: {$sum: "$n"}}}]).toArray()[0].s)
print("FIRST", db.orders.find().sort({n: 1}).limit(3).toArray().map(d => d.n).join(","))
db.orders.updateMany({n: {$lt: 10}}, {$set: {cheap: true}})
print("CHEAP", db.orders.countDocuments({cheap: true}))
const stream = db.orders.watch()
db.orders.insertOne({region: "north", n: 1000})
let event = null
for (let k = 0; k < 60 && !event; k++) { event = stream.tryNext() }
print("EVENT", event.operationType, event.fullDocument.n, Object.keys(event.documentKey).join("+"))
sh.status()
sh.stopBalancer()
print("BALANCER", sh.getBalancerState())
print("SHARDS", db.adminCommand({listShards: 1}).shards.length)
"""


def test_mongosh_shards_writes_reads_and_watches_through_the_router(
        cluster: ClusterProcess) -> None:
    shell = mongosh_path()
    if shell is None:
        pytest.skip("mongosh not installed (make setup installs it from npm)")
    result = subprocess.run([shell, cluster.uri, "--quiet", "--norc"], input=SCRIPT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MONGOSH_NO_UPDATE_CHECK": "1",
                                 "DO_NOT_TRACK": "1"})
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "COUNT 300" in output and "SUM 44850" in output, output[-3000:]
    assert "FIRST 0,1,2" in output and "CHEAP 10" in output
    assert "EVENT insert 1000 region+_id" in output
    # sh.status() reads config.shards, config.databases, config.collections and config.chunks.
    assert re.search(r"'shop\.orders': \{\s+shardKey: \{ region: 'hashed' \}", output)
    assert "{ shard: 'shard03', nChunks: 2 }" in output
    assert "BALANCER false" in output and "SHARDS 3" in output
    assert sum(counts_per_shard(cluster, "shop", "orders").values()) == 301
    with router(cluster) as client:
        assert chunk_counts(client, "shop.orders") == {name: 2 for name in cluster.shards}
        assert client.admin.command("balancerStatus")["mode"] == "off"
