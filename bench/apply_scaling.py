"""Change application: the engine's CPU per applied event, next to a raw PyMongo pipe, and
events/s with 1, 2 and 4 applier lanes, each figure from this one run.

Run: ``.venv/bin/python -m bench.apply_scaling [--documents 50000]`` (about a minute).

Method (../shared/research/performance-baseline.md): for each lane count, a fresh source and
a destination that is not the bottleneck — an emulator started with ``--discard-writes``,
which acknowledges writes without storing them (or, with ``--cluster``, a 4-shard cluster) —
and the engine in its own process with ``--loadLevel`` 1, 2 or 3 (1, 2, 4 lanes), verification
off. Once ``canCommit`` is true the engine is paused, the source gets a backlog (N inserts,
then one ``update_many`` touching them all: 2N events), the engine is resumed, and the CPU
its process spends (utime + stime from ``/proc``, children included) until
``totalEventsApplied`` has grown by 2N is divided by 2N.

The baseline reads the same backlog, in its own process, the way a plain PyMongo program
would: the driver's change stream decoding to ``RawBSONDocument``, each event turned into the
equivalent write (``ReplaceOne`` with upsert for inserts and replaces, ``UpdateOne`` with
``$set``/``$unset`` for updates, ``DeleteOne``), ordered ``bulk_write`` of 1,000 — no
checkpoints, no collapse, no parallelism: what a migration costs at least, done naively.

Scaling efficiency per added lane is rate_n / (n × rate_1). Every process of the run (two
emulators, the engine) shares this machine's cores: with fewer cores than that, the column
shows contention, not the lanes' scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pymongo
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from mongoemu.testing import EmulatorProcess, start_cluster, start_emulator

SOURCE_ARGS = ["--oplog-size-mb", "4096", "--noop-interval", "1"]
SINK_ARGS = SOURCE_ARGS + ["--discard-writes"]
LANES_AT_LOAD_LEVEL = {1: 1, 2: 2, 4: 3}  # lanes -> --loadLevel (phases/apply.py)
TARGET_CPU_US = 12.0
TARGET_EFFICIENCY = 0.7


# -- the engine, in its own process ----------------------------------------------------------------


def engine_main(source_uri: str, destination_uri: str, load_level: int,
                hot_documents: list[str] | None = None) -> None:
    """Run a migration up to canCommit, then answer commands on stdin (pause, resume, or
    anything else: progress) with a JSON line of totalEventsApplied. ``hot_documents``:
    --hotDocIDs values."""
    from pymongosync import Cluster, Migration, StartRequest
    from pymongosync.changes.hot_documents import HotDocuments
    from pymongosync.migration import EngineSettings

    destination = Cluster.connect("cluster1", destination_uri)
    settings = EngineSettings(hot_documents=HotDocuments.from_options(hot_documents or []))
    migration = Migration.open(Cluster.connect("cluster0", source_uri), destination,
                               load_level=load_level, settings=settings)
    request: dict[str, Any] = {"source": "cluster0", "destination": "cluster1",
                               "verification": {"enabled": False}}
    if destination.is_sharded:  # mongosync's rule: a sharded destination needs "sharding"
        request["sharding"] = {"shardingEntries": []}
    migration.start(StartRequest.from_document(request))
    migration.wait_for(lambda p: p["canCommit"], timeout=600, interval=0.05)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            migration.pause()
        elif command == "resume":
            migration.resume()
        print(json.dumps({"events": migration.progress()["totalEventsApplied"]}), flush=True)
    migration.close()


class Engine:
    def __init__(self, source_uri: str, destination_uri: str, load_level: int,
                 hot_documents: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.apply_scaling", "--engine", source_uri,
             destination_uri, str(load_level), *(hot_documents or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError("the engine process ended before canCommit")

    def send(self, command: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return int(json.loads(self.process.stdout.readline())["events"])

    def cpu_seconds(self) -> float:
        """utime + stime of the engine process and its waited-for children."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def drain(self, write_backlog: Callable[[], int]) -> dict[str, float]:
        """Pause, have ``write_backlog`` write a backlog (it returns how many events), resume;
        the engine's CPU per event, events/s and seconds until it has applied them all. Closes
        the engine."""
        try:
            before = self.send("pause")
            events = write_backlog()
            cpu, started = self.cpu_seconds(), time.perf_counter()
            self.send("resume")
            while self.send("progress") < before + events:
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            cpu = self.cpu_seconds() - cpu
        finally:
            self.close()
        return {"cpu_us": cpu / events * 1e6, "rate": events / seconds, "seconds": seconds}

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the backlog -----------------------------------------------------------------------------------


def write_backlog(uri: str, documents: int) -> Timestamp:
    """N inserts, then one update_many touching them all (2N events); the source's time just
    before the first."""
    with pymongo.MongoClient(uri) as client:
        client.bench.command("create", "backlog")
        start: Timestamp = client.admin.command("ping")["operationTime"]
        collection = client.bench.backlog
        for first in range(0, documents, 1000):
            collection.insert_many([{"k": first + i, "v": "b" * 100}
                                    for i in range(min(1000, documents - first))])
        collection.update_many({}, {"$set": {"touched": True}})
        return start


def measure_engine(destination_kind: str, lanes: int, documents: int) -> dict[str, float]:
    with start_emulator(extra_args=SOURCE_ARGS) as source, destination(destination_kind) as sink:
        with pymongo.MongoClient(source.uri) as client:
            client.seed.items.insert_many([{"_id": n} for n in range(100)])
        engine = Engine(source.uri, sink.uri, LANES_AT_LOAD_LEVEL[lanes])

        def backlog() -> int:
            write_backlog(source.uri, documents)
            return 2 * documents

        return engine.drain(backlog)


# -- the raw PyMongo pipe --------------------------------------------------------------------------


def raw_pipe_main(source_uri: str, destination_uri: str, start_time: int, start_inc: int,
                  events: int, write_them: int = 1) -> None:
    """Read ``events`` CRUD events from the start time and write them as a plain program
    would (or, ``write_them`` 0, only read them); prints its CPU time and seconds as JSON."""
    read = pymongo.MongoClient(source_uri, document_class=RawBSONDocument)
    write = pymongo.MongoClient(destination_uri, document_class=RawBSONDocument)
    started, cpu = time.perf_counter(), _own_cpu()
    applied = 0
    operations: dict[tuple[str, str], list[Any]] = {}

    def flush() -> None:
        for (db, coll), batch in operations.items():
            if batch:
                write[db][coll].bulk_write(batch, ordered=True)
        operations.clear()

    with read.watch(full_document=None, start_at_operation_time=Timestamp(start_time, start_inc),
                    batch_size=1000, max_await_time_ms=100) as stream:
        while applied < events:
            event = stream.try_next()
            if event is None:
                flush()
                continue
            kind = event["operationType"]
            if kind not in ("insert", "update", "replace", "delete"):
                continue
            applied += 1
            ns = event["ns"]
            key = {"_id": event["documentKey"]["_id"]}
            batch = operations.setdefault((ns["db"], ns["coll"]), [])
            if kind == "update":
                description = event["updateDescription"]
                update: dict[str, Any] = {}
                if description["updatedFields"]:
                    update["$set"] = description["updatedFields"]
                if description["removedFields"]:
                    update["$unset"] = {path: "" for path in description["removedFields"]}
                if update:
                    batch.append(pymongo.UpdateOne(key, update))
            elif kind == "delete":
                batch.append(pymongo.DeleteOne(key))
            else:
                batch.append(pymongo.ReplaceOne(key, event["fullDocument"], upsert=True))
            if not write_them:
                batch.clear()
            if len(batch) >= 1000:
                flush()
        flush()
    print(json.dumps({"cpu": _own_cpu() - cpu, "seconds": time.perf_counter() - started}),
          flush=True)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_raw_pipe(destination_kind: str, documents: int) -> dict[str, float]:
    """The raw pipe's CPU per event and events/s, and the events/s of reading the source's
    change stream alone (what bounds every rate of this run)."""
    figures: dict[str, float] = {}
    with start_emulator(extra_args=SOURCE_ARGS) as source, destination(destination_kind) as sink:
        start = write_backlog(source.uri, documents)
        events = 2 * documents
        for write_them, label in ((0, "read"), (1, "")):
            output = subprocess.run(
                [sys.executable, "-m", "bench.apply_scaling", "--raw-pipe", source.uri,
                 sink.uri, str(start.time), str(start.inc), str(events), str(write_them)],
                check=True, capture_output=True, text=True).stdout
            measured = json.loads(output)
            figures[f"{label}cpu_us"] = measured["cpu"] / events * 1e6
            figures[f"{label}rate"] = events / measured["seconds"]
    return figures


def destination(kind: str) -> EmulatorProcess:
    if kind == "cluster":
        return start_cluster(shards=4)
    return start_emulator(extra_args=SINK_ARGS)


# -- the report ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=50_000,
                        help="backlog inserts per run (events: twice as many)")
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4],
                        choices=sorted(LANES_AT_LOAD_LEVEL))
    parser.add_argument("--cluster", action="store_true",
                        help="a 4-shard emulated cluster as the destination instead of the "
                             "--discard-writes sink")
    parser.add_argument("--engine", nargs="+", help=argparse.SUPPRESS)  # SOURCE DESTINATION
    # LOAD_LEVEL [--hotDocIDs values...]
    parser.add_argument("--raw-pipe", nargs=6, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.engine:
        engine_main(arguments.engine[0], arguments.engine[1], int(arguments.engine[2]),
                    arguments.engine[3:])
        return
    if arguments.raw_pipe:
        source_uri, destination_uri, *numbers = arguments.raw_pipe
        raw_pipe_main(source_uri, destination_uri, *map(int, numbers))
        return
    kind = "cluster" if arguments.cluster else "sink"
    events = 2 * arguments.documents
    print(f"cores: {os.cpu_count()} (os.cpu_count())")
    print("destination: " + ("a 4-shard emulated cluster" if kind == "cluster" else
                             "an emulator with --discard-writes (writes acknowledged, "
                             "not stored)"))
    print(f"backlog per run: {arguments.documents:,} inserts + one update_many = "
          f"{events:,} events")
    raw = measure_raw_pipe(kind, arguments.documents)
    print(f"the source's change stream alone (read, nothing written): "
          f"{raw['readrate']:,.0f} events/s — the ceiling of every rate below")
    print(f"raw PyMongo pipe (driver change stream, RawBSONDocument, ordered bulk_write): "
          f"{raw['cpu_us']:5.1f} µs of CPU per event, {raw['rate']:8,.0f} events/s")
    print(f"{'lanes':>5}  {'loadLevel':>9}  {'engine µs/event':>15}  {'vs raw':>6}  "
          f"{'events/s':>9}  {'efficiency':>10}")
    rates: dict[int, float] = {}
    cpu: dict[int, float] = {}
    for lanes in arguments.lanes:
        figures = measure_engine(kind, lanes, arguments.documents)
        rates[lanes], cpu[lanes] = figures["rate"], figures["cpu_us"]
        efficiency = rates[lanes] / (lanes * rates[1]) if 1 in rates else float("nan")
        print(f"{lanes:>5}  {LANES_AT_LOAD_LEVEL[lanes]:>9}  {cpu[lanes]:>15.1f}  "
              f"{cpu[lanes] / raw['cpu_us']:>6.2f}  {rates[lanes]:>9,.0f}  "
              f"{efficiency:>10.2f}")
    best = min(cpu.values())
    print(f"engine CPU per event: best {best:.1f} µs (target <= {TARGET_CPU_US:.0f}: "
          f"{'met' if best <= TARGET_CPU_US else 'not met'})")
    if max(rates.values()) > 0.8 * raw["readrate"]:
        print("events/s: near what the emulated source's change stream delivers, so they "
              "measure the source; the engine's own ceiling is 1 / (its CPU per event)")
    processes = 3 if kind == "sink" else 8
    if (os.cpu_count() or 1) < processes + max(arguments.lanes):
        print(f"scaling column: this machine has {os.cpu_count()} cores for {processes} busy "
              f"processes (the source, the destination's, the engine): the efficiency figures show "
              f"contention for cores, not the lanes' scaling; it needs more cores "
              f"(target >= {TARGET_EFFICIENCY} per added lane where cores allow)")


if __name__ == "__main__":
    main()
