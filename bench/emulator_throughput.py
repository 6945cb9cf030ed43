"""Emulator speed: bulk insert, streamed collection scan and change-event delivery.

Run: ``.venv/bin/python -m bench.emulator_throughput [--documents 200000]``.
Prints documents/s for each measurement and its ratio to the 50,000 documents/s target,
all measured in this one run against a freshly started emulator process.
"""

from __future__ import annotations

import argparse
import threading
import time

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_emulator

TARGET_DOCS_PER_S = 50_000


def one_kib_document(index: int) -> RawBSONDocument:
    return RawBSONDocument(bson.encode({"_id": index, "n": index, "payload": "x" * 990}))


def measure(documents: int) -> None:
    with start_emulator(extra_args=["--oplog-size-mb", "4096"]) as emulator:
        raw = bson.CodecOptions(document_class=RawBSONDocument)
        with pymongo.MongoClient(emulator.uri) as client:
            collection = client.bench.get_collection("docs", codec_options=raw)
            batches = [[one_kib_document(i) for i in range(start, min(start + 1000, documents))]
                       for start in range(0, documents, 1000)]
            size = len(batches[0][0].raw)

            started = time.perf_counter()
            for batch in batches:
                collection.insert_many(batch, ordered=False)
            insert_rate = documents / (time.perf_counter() - started)

            started = time.perf_counter()
            scanned = sum(1 for _ in collection.find(batch_size=10_000))
            scan_rate = scanned / (time.perf_counter() - started)
            assert scanned == documents

            events = min(documents, 50_000)
            stream_collection = client.bench.get_collection("stream", codec_options=raw)
            received = 0
            with stream_collection.watch(batch_size=10_000) as stream:
                def write() -> None:
                    with pymongo.MongoClient(emulator.uri) as writer:
                        target = writer.bench.get_collection("stream", codec_options=raw)
                        for start in range(0, events, 1000):
                            target.insert_many([one_kib_document(i)
                                                for i in range(start, start + 1000)])
                writer_thread = threading.Thread(target=write)
                started = time.perf_counter()
                writer_thread.start()
                while received < events:
                    if stream.try_next() is not None:
                        received += 1
                writer_thread.join()
            event_rate = received / (time.perf_counter() - started)

    print(f"document size: {size} bytes, documents: {documents}")
    for name, rate in (("bulk insert (batches of 1,000)", insert_rate),
                       ("streamed collection scan", scan_rate),
                       ("change events delivered", event_rate)):
        print(f"{name:34s} {rate:12,.0f} docs/s   ratio to 50k target: "
              f"{rate / TARGET_DOCS_PER_S:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=200_000)
    measure(parser.parse_args().documents)


if __name__ == "__main__":
    main()
