"""Throughput through the router of an emulated cluster with 1, 2 and 4 shards.

Run: ``.venv/bin/python -m bench.router_throughput [--documents 100000] [--shards 1 2 4]``.

For each shard count a fresh cluster (``python -m mongoemu cluster``) gets a collection sharded
on hashed ``_id`` (pre-split over every shard), then, through its router: bulk inserts of
1 KiB documents (unordered batches of 1,000, which the router splits per shard and sends at
once) and a streamed scan of the whole collection. It prints documents/s and each figure's ratio
to the 1-shard cluster of the same run. On a machine with fewer cores than processes the
ratios show the router's overhead; with a core per shard they show how the work spreads.
"""

from __future__ import annotations

import argparse
import os
import time

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_cluster

BATCH = 1000


def one_kib_document(index: int) -> RawBSONDocument:
    return RawBSONDocument(bson.encode({"_id": index, "n": index, "payload": "x" * 990}))


def measure(shards: int, documents: int) -> tuple[float, float]:
    """(inserted documents/s, scanned documents/s) through the router of ``shards`` shards."""
    with start_cluster(shards=shards, extra_args=["--oplog-size-mb", "4096"]) as cluster:
        raw = bson.CodecOptions(document_class=RawBSONDocument)
        with pymongo.MongoClient(cluster.uri) as client:
            client.admin.command("balancerStop")
            client.admin.command("shardCollection", "bench.docs", key={"_id": "hashed"})
            collection = client.bench.get_collection("docs", codec_options=raw)
            batches = [[one_kib_document(i) for i in range(start, min(start + BATCH, documents))]
                       for start in range(0, documents, BATCH)]

            started = time.perf_counter()
            for batch in batches:
                collection.insert_many(batch, ordered=False)
            insert_rate = documents / (time.perf_counter() - started)

            started = time.perf_counter()
            scanned = sum(1 for _ in collection.find(batch_size=10_000))
            scan_rate = scanned / (time.perf_counter() - started)
            assert scanned == documents, (scanned, documents)
    return insert_rate, scan_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    results = {count: measure(count, args.documents) for count in args.shards}
    base_insert, base_scan = results[args.shards[0]]
    print(f"documents: {args.documents} of 1 KiB, {os.cpu_count()} CPU cores; "
          f"ratios to {args.shards[0]} shard(s) of this run")
    print(f"{'shards':>6}  {'bulk insert docs/s':>18}  {'ratio':>5}  "
          f"{'scan docs/s':>12}  {'ratio':>5}")
    for count, (insert_rate, scan_rate) in results.items():
        print(f"{count:>6}  {insert_rate:18,.0f}  {insert_rate / base_insert:5.2f}  "
              f"{scan_rate:12,.0f}  {scan_rate / base_scan:5.2f}")


if __name__ == "__main__":
    main()
