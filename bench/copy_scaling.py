"""The copy's CPU per document and its scaling with worker processes, from one run.

Run: ``.venv/bin/python -m bench.copy_scaling [--documents 200000] [--workers 1 2 4]``.

A source emulator is seeded with ``--documents`` documents of ~1 KiB in 8 collections; the
destination is an emulator started with ``--discard-writes`` (writes acknowledged, documents
not stored), so that the destination is not what bounds the figures. Then, in this one run:

- the baseline: a plain PyMongo pipe (raw batches of 1,000 read with ``RawBSONDocument``,
  ``insert_many(ordered=False)``) in this process, its documents/s and its CPU per document;
- the engine: for each worker count, a migration in its own process (a fresh sink each time)
  with the copy pinned to that many worker processes (no pacing), up to the end of the copy.
  Its CPU is the engine's own: the parent's and its copy workers' user + system time between
  the start and the end of the copy phase (``getrusage`` of the process and of its reaped
  children), divided by the documents copied;
- the scaling efficiency per added worker: rate(n) / (n × rate(1)).

Targets: at most 6 µs of engine CPU per document; at least 0.7 efficiency per added worker
where the machine has a core for each worker and for the servers. The source emulator (one
process) also bounds the rates: on a machine with few cores, the scaling column says more
about the cores than about the engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from typing import Any

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_emulator

SOURCE_ARGS = ["--oplog-size-mb", "8192", "--noop-interval", "1"]
SINK_ARGS = ["--discard-writes", "--noop-interval", "1"]
RAW = bson.CodecOptions(document_class=RawBSONDocument)
COLLECTIONS = 8
BATCH = 1000


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def seed(uri: str, documents: int) -> int:
    """``documents`` of ~1 KiB in COLLECTIONS collections; returns their size in bytes."""
    size = 0
    with pymongo.MongoClient(uri) as client:
        per_collection = documents // COLLECTIONS
        for number in range(COLLECTIONS):
            collection = client.bench.get_collection(f"c{number}", codec_options=RAW)
            for start in range(0, per_collection, BATCH):
                batch = [RawBSONDocument(bson.encode({"_id": start + i, "n": start + i,
                                                      "payload": "x" * 990}))
                         for i in range(min(BATCH, per_collection - start))]
                size += sum(len(document.raw) for document in batch)
                collection.insert_many(batch, ordered=False)
    return size


def raw_pipe(source_uri: str, destination_uri: str) -> dict[str, float]:
    """The baseline: read raw batches, insert them unordered; seconds and CPU of this process."""
    with pymongo.MongoClient(source_uri) as source, \
            pymongo.MongoClient(destination_uri) as destination:
        documents = 0
        started, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
        for number in range(COLLECTIONS):
            reader = source.bench.get_collection(f"c{number}", codec_options=RAW)
            writer = destination.rawpipe.get_collection(f"c{number}", codec_options=RAW)
            batch: list[RawBSONDocument] = []
            for document in reader.find(batch_size=BATCH):
                batch.append(document)
                if len(batch) == BATCH:
                    writer.insert_many(batch, ordered=False)
                    documents += len(batch)
                    batch = []
            if batch:
                writer.insert_many(batch, ordered=False)
                documents += len(batch)
        return {"seconds": time.perf_counter() - started, "documents": documents,
                "cpu_seconds": cpu_seconds(resource.RUSAGE_SELF) - cpu}


def engine(source_uri: str, destination_uri: str, workers: int) -> dict[str, Any]:
    """One migration in its own process, up to the end of its copy (``--engine`` below)."""
    done = subprocess.run([sys.executable, "-m", "bench.copy_scaling", "--engine", source_uri,
                           destination_uri, str(workers)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the engine with {workers} workers failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_engine(source_uri: str, destination_uri: str, workers: int) -> None:
    """The ``--engine`` process: a migration whose copy is pinned to ``workers`` processes;
    prints the copy's seconds, documents and CPU (this process and its workers) as JSON."""
    from pymongosync import Cluster, Migration, StartRequest
    from pymongosync.phases import runner
    from pymongosync.phases.copy import CopyCollections
    from pymongosync.state import Phase

    # The copy step with a fixed number of worker processes instead of the adaptive pace.
    runner.STEPS[Phase.COPY] = CopyCollections(workers=workers)
    marks: dict[str, tuple[float, float]] = {}

    def mark(message: str) -> None:  # called in the runner's thread, at each phase change
        if "collection copy" in message or "building indexes" in message or \
                "change event application" in message:
            marks.setdefault("copy" if "collection copy" in message else "end", (
                time.perf_counter(),
                cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)))

    startup: list[float] = []

    class StartupCpu(logging.Handler):
        """Each worker process tells what starting it cost (interpreter, imports, connections)."""

        def emit(self, record: logging.LogRecord) -> None:
            seconds = (getattr(record, "fields", None) or {}).get("startupCpuSeconds")
            if seconds is not None:
                startup.append(seconds)

    copy_log = logging.getLogger("pymongosync.copy")
    copy_log.setLevel(logging.DEBUG)
    copy_log.addHandler(StartupCpu())
    migration = Migration.open(Cluster.connect("cluster0", source_uri),
                               Cluster.connect("cluster1", destination_uri))
    migration.add_listener(mark)
    migration.start(StartRequest.from_document({"source": "cluster0", "destination": "cluster1",
                                                "verification": {"enabled": False}}))
    progress = migration.wait_for(lambda p: "end" in marks, timeout=3600, interval=0.05)
    migration.close()
    (started, cpu_start), (ended, cpu_end) = marks["copy"], marks["end"]
    print(json.dumps({"seconds": ended - started, "cpu_seconds": cpu_end - cpu_start,
                      "startup_cpu_seconds": sum(startup),
                      "documents": progress["copyDetails"]["copiedDocuments"]}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--engine"]:
        run_engine(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    arguments = parser.parse_args()
    counts = sorted(set(arguments.workers) | {1})
    cores = os.cpu_count() or 1
    with start_emulator(extra_args=SOURCE_ARGS) as source:
        size = seed(source.uri, arguments.documents)
        with start_emulator(extra_args=SINK_ARGS) as sink:
            pipe = raw_pipe(source.uri, sink.uri)
        runs = {}
        for workers in counts:
            with start_emulator(extra_args=SINK_ARGS) as sink:
                runs[workers] = engine(source.uri, sink.uri, workers)
    documents = pipe["documents"]
    print(f"os.cpu_count(): {cores}")
    print(f"data: {documents:,} documents of ~1 KiB in {COLLECTIONS} collections "
          f"({size / 2**20:.0f} MiB); destination: an emulator with --discard-writes")
    print(f"raw PyMongo pipe: {documents / pipe['seconds']:10,.0f} docs/s  "
          f"{1e6 * pipe['cpu_seconds'] / documents:5.2f} µs CPU per document")
    rate_1 = runs[1]["documents"] / runs[1]["seconds"]
    print("engine copy (CPU: the parent and its copy worker processes, over the copy phase)")
    print("  workers      docs/s   engine µs/doc   of which worker start-up   without start-up"
          "   efficiency per added worker")
    for workers in counts:
        run = runs[workers]
        rate = run["documents"] / run["seconds"]
        efficiency = rate / (workers * rate_1)
        total, startup = (1e6 * run[key] / run["documents"]
                          for key in ("cpu_seconds", "startup_cpu_seconds"))
        print(f"  {workers:7d} {rate:11,.0f}   {total:13.2f}   {startup:24.2f}   "
              f"{total - startup:16.2f}   {efficiency:27.2f}")
    steady = [1e6 * (run["cpu_seconds"] - run["startup_cpu_seconds"]) / run["documents"]
              for run in runs.values()]
    print(f"target: <= 6 µs of engine CPU per document (without the fixed start-up of the "
          f"worker processes, {runs[1]['startup_cpu_seconds']:.2f} s of CPU each): "
          f"{'met' if max(steady) <= 6 else 'NOT met'} (worst {max(steady):.2f} µs)")
    needed = max(counts) + 2  # a core per worker, plus the source and the destination
    if cores < needed:
        print(f"target: >= 0.70 efficiency per added worker needs about {needed} cores (a core "
              f"per worker, plus the source and the sink); this machine has {cores}, so the "
              f"scaling column shows this machine's cores, not the engine: run it on more cores")
    else:
        worst = min(runs[w]["documents"] / runs[w]["seconds"] / (w * rate_1) for w in counts)
        print(f"target: >= 0.70 efficiency per added worker: "
              f"{'met' if worst >= 0.7 else 'NOT met'} (worst {worst:.2f})")


if __name__ == "__main__":
    main()
