"""Engine speed and memory, each figure measured in this one run on emulated clusters.

Run: ``.venv/bin/python -m bench.migration_throughput [--documents 200000]``.

Prints: the engine's copy throughput (documents/s, MB/s); a naive raw pipe on the same data
(raw batches read from the source and inserted into the destination, nothing else) and the
engine/raw ratio (target ≥ 0.9); change-event application rate and lag under a sustained
source write load (target ≥ 10,000 events/s); and the engine process's peak memory at two
data sizes (target: it does not grow with the data).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_emulator
from pymongosync import APP_NAME

EMULATOR_ARGS = ["--oplog-size-mb", "8192", "--noop-interval", "1"]
RAW = bson.CodecOptions(document_class=RawBSONDocument)
COLLECTIONS = 4


def seed(uri: str, documents: int) -> int:
    with pymongo.MongoClient(uri) as client:
        size = 0
        per_collection = documents // COLLECTIONS
        for number in range(COLLECTIONS):
            collection = client.bench.get_collection(f"c{number}", codec_options=RAW)
            for start in range(0, per_collection, 1000):
                batch = [RawBSONDocument(bson.encode({"_id": start + i, "n": start + i,
                                                      "payload": "x" * 990}))
                         for i in range(min(1000, per_collection - start))]
                size += sum(len(d.raw) for d in batch)
                collection.insert_many(batch, ordered=False)
        return size


def raw_pipe(source_uri: str, destination_uri: str) -> float:
    """Seconds to read every document in raw batches and insert them, one collection at a time."""
    with pymongo.MongoClient(source_uri) as source, \
            pymongo.MongoClient(destination_uri, appname=APP_NAME) as destination:
        started = time.perf_counter()
        for number in range(COLLECTIONS):
            reader = source.bench.get_collection(f"c{number}", codec_options=RAW)
            writer = destination.rawpipe.get_collection(f"c{number}", codec_options=RAW)
            batch: list[RawBSONDocument] = []
            for document in reader.find(batch_size=1000):
                batch.append(document)
                if len(batch) == 1000:
                    writer.insert_many(batch, ordered=False)
                    batch = []
            if batch:
                writer.insert_many(batch, ordered=False)
        elapsed = time.perf_counter() - started
        destination.drop_database("rawpipe")
        return elapsed


class EngineProcess:
    """bench.engine_worker in a subprocess, driven through stdin commands."""

    def __init__(self, source_uri: str, destination_uri: str, load_level: int) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.engine_worker", source_uri,
                                         destination_uri, str(load_level)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.copy = json.loads(self.process.stdout.readline())

    def send(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def write_backlog(uri: str, documents: int) -> int:
    """Inserts then updates ``documents`` documents: 2 events each."""
    with pymongo.MongoClient(uri) as client:
        collection = client.bench.backlog
        for start in range(0, documents, 1000):
            collection.insert_many([{"k": start + i, "v": "b" * 100} for i in range(1000)])
        collection.update_many({}, {"$set": {"touched": True}})
    return 2 * documents


def drain_rate(engine: EngineProcess, source_uri: str, documents: int) -> float:
    """Events/s while applying a backlog written while the engine was paused."""
    before = engine.send("pause")["events"]
    events = write_backlog(source_uri, documents)
    started = time.perf_counter()
    engine.send("resume")
    while engine.send("progress")["events"] < before + events:
        time.sleep(0.05)
    return events / (time.perf_counter() - started)


def sustained_load(engine: EngineProcess, source_uri: str, seconds: float) -> list[dict]:
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with pymongo.MongoClient(source_uri) as client:
            collection = client.bench.live
            number = 0
            while not stop.is_set():
                collection.insert_many([{"k": number + i, "v": "w" * 100} for i in range(500)])
                number += 500
                written[0] += 500

    thread = threading.Thread(target=write)
    thread.start()
    samples = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        time.sleep(1.0)
        samples.append({**engine.send("progress"), "t": time.perf_counter() - started,
                        "written": written[0]})
    stop.set()
    thread.join()
    return samples


def measure(documents: int, load_level: int) -> None:
    results = {}
    for label, count in (("full", documents), ("half", documents // 2)):
        with start_emulator(extra_args=EMULATOR_ARGS) as source, \
                start_emulator(extra_args=EMULATOR_ARGS) as destination:
            size = seed(source.uri, count)
            full = label == "full"
            raw_seconds = raw_pipe(source.uri, destination.uri) if full else None
            engine = EngineProcess(source.uri, destination.uri, load_level)
            drained = drain_rate(engine, source.uri, 30_000) if full else None
            samples = sustained_load(engine, source.uri, 8.0) if full else []
            engine.close()
            results[label] = (count, size, raw_seconds, engine.copy, samples, drained)
    count, size, raw_seconds, copy, samples, drained = results["full"]
    mb = size / 1e6
    print(f"data: {count} documents of ~1 KiB in {COLLECTIONS} collections ({mb:.0f} MB)")
    print(f"raw pipe:     {count / raw_seconds:10,.0f} docs/s {mb / raw_seconds:7.1f} MB/s")
    print(f"engine copy:  {count / copy['copy_seconds']:10,.0f} docs/s "
          f"{mb / copy['copy_seconds']:7.1f} MB/s   (loadLevel {load_level})")
    print(f"copy / raw pipe ratio: {raw_seconds / copy['copy_seconds']:.2f}   (target >= 0.90)")
    print(f"change application: {drained:10,.0f} events/s draining a 60,000-event backlog "
          f"(target >= 10,000; ratio {drained / 10000:.2f})")
    if len(samples) >= 3:
        first, last = samples[1], samples[-1]
        rate = (last["events"] - first["events"]) / (last["t"] - first["t"])
        offered = (last["written"] - first["written"]) / (last["t"] - first["t"])
        lags = [s["lag"] for s in samples if s["lag"] is not None]
        print(f"under sustained writes: {offered:,.0f} events/s written, {rate:,.0f} events/s "
              f"applied; lag max {max(lags)} s, last {lags[-1]} s")
    half = results["half"]
    print(f"peak engine memory: {half[3]['max_rss_mb']:.0f} MB at {half[0]} documents, "
          f"{copy['max_rss_mb']:.0f} MB at {count} documents "
          f"(ratio {copy['max_rss_mb'] / half[3]['max_rss_mb']:.2f}; flat means ~1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--load-level", type=int, default=3)
    arguments = parser.parse_args()
    measure(arguments.documents, arguments.load_level)


if __name__ == "__main__":
    main()
