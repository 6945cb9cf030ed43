"""Change buffering's cost and gain, each figure measured in this one run on emulated clusters.

Run: ``.venv/bin/python -m bench.change_buffer [--documents 100000] [--rate 400] [--rounds 2]``.

The same source (``--documents`` of ~1 KiB in 4 collections) is migrated to a fresh destination
with change buffering off and on, alternately, ``--rounds`` times each, while a writer process
changes the source at ``--rate`` operations a second (inserts of ~1 KiB and updates). For each
mode (median of its rounds) it prints the copy's throughput and CPU per copied document, the
events the buffer held when the copy ended, and right after the copy: the lag when change
application began and the seconds from then to canCommit. The ratio of copy throughputs,
on/off, has a target of >= 0.9: storing the changes while copying must not slow the copy by
more than a tenth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import pymongo

from bench.verifier import load
from mongoemu.testing import start_emulator

EMULATOR_ARGS = ["--oplog-size-mb", "8192", "--noop-interval", "1"]


def writer(uri: str, rate: float) -> subprocess.Popen[bytes]:
    """A process writing to the source at a steady rate until killed."""
    code = f"""
import time, pymongo
client = pymongo.MongoClient({uri!r})
churn, docs = client.bench.churn, client.bench.c0
number, interval, due = 0, 1 / {rate}, time.monotonic()
while True:
    churn.insert_one({{"_id": number, "payload": "w" * 990}})
    docs.update_one({{"_id": number % 1000}}, {{"$inc": {{"touched": 1}}}})
    number += 1
    due += 2 * interval
    time.sleep(max(0.0, due - time.monotonic()))
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)


def one_run(source_uri: str, buffering: str, rate: float) -> dict[str, Any]:
    with start_emulator(extra_args=EMULATOR_ARGS) as destination:
        writing = writer(source_uri, rate)
        try:
            time.sleep(1)  # the writer is at its pace before the migration starts
            done = subprocess.run(
                [sys.executable, "-m", "bench.run_migration", source_uri, destination.uri,
                 "off", buffering, str(writing.pid)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the migration with buffering {buffering} failed:\n"
                                 f"{done.stderr[-3000:]}")
            output = done.stdout
        finally:
            writing.kill()
            writing.wait()
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=400.0,
                        help="writer operations per second on the source")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with start_emulator(extra_args=EMULATOR_ARGS) as source:
        load([source.uri], arguments.documents, payload=990)
        for _ in range(arguments.rounds):
            for mode in ("off", "on"):
                runs[mode].append(one_run(source.uri, mode, arguments.rate))
                with pymongo.MongoClient(source.uri) as client:
                    client.bench.churn.drop()  # the next run starts from the same data
    figures = {}
    for mode, results in runs.items():
        throughput = statistics.median(r["copy_bytes"] / r["copy_seconds"] for r in results)
        cpu = statistics.median(1e6 * r["copy_cpu_seconds"] / r["copy_documents"]
                                for r in results)
        figures[mode] = throughput
        lag = statistics.median(r["lag_after_copy_seconds"] or 0 for r in results)
        catch_up = statistics.median(r["catch_up_seconds"] for r in results)
        buffered = [r["buffered_events_at_copy_end"] for r in results]
        print(f"buffering {mode:3s}: copy {throughput / 2**20:.1f} MiB/s, {cpu:.0f} µs CPU per "
              f"copied document (the buffer's included); events in the buffer at the copy's "
              f"end {buffered}; right after the copy: lag {lag:.0f} s, {catch_up:.1f} s from "
              f"change application's start to canCommit ({len(results)} runs, median)")
    print(f"copy throughput with buffering / without: {figures['on'] / figures['off']:.2f} "
          f"(target >= 0.9) at {arguments.rate:.0f} writes/s on {arguments.documents:,} "
          f"documents")


if __name__ == "__main__":
    main()
