"""The verifier's cost, each figure measured in this one run on emulated clusters.

Run: ``.venv/bin/python -m bench.verifier [--small 100000] [--large 1000000]
[--migration 100000]``.

Prints:
1. the peak memory of ``mongosync verify`` comparing two equal clusters of ``--small`` and of
   ``--large`` documents, and their ratio (target <= 1.2: its state is per range and per
   pending recheck, never per document);
2. the time of a whole migration (start to COMMITTED) of ``--migration`` documents of ~1 KiB
   with the embedded verifier off and on, on the same data, and their ratio (target <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import start_emulator

EMULATOR_ARGS = ["--oplog-size-mb", "8192", "--noop-interval", "1"]
RAW = bson.CodecOptions(document_class=RawBSONDocument)
COLLECTIONS = 4
MONGOSYNC = Path(sys.executable).with_name("mongosync")


def load(uris: list[str], documents: int, payload: int) -> None:
    """The same documents, byte for byte, into every cluster."""
    clients = [pymongo.MongoClient(uri) for uri in uris]
    try:
        per_collection = documents // COLLECTIONS
        for number in range(COLLECTIONS):
            for start in range(0, per_collection, 2000):
                batch = [RawBSONDocument(bson.encode({"_id": start + i, "n": start + i,
                                                      "payload": "x" * payload}))
                         for i in range(min(2000, per_collection - start))]
                for client in clients:
                    client.bench.get_collection(f"c{number}", codec_options=RAW).insert_many(
                        batch, ordered=False)
    finally:
        for client in clients:
            client.close()


def verify_memory(documents: int) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds) of `mongosync verify` on two equal clusters."""
    with start_emulator(extra_args=EMULATOR_ARGS) as left, \
            start_emulator(extra_args=EMULATOR_ARGS) as right:
        load([left.uri, right.uri], documents, payload=60)
        with tempfile.TemporaryDirectory() as directory:
            process = subprocess.Popen([str(MONGOSYNC), "verify", "--cluster0", left.uri,
                                        "--cluster1", right.uri, "--state",
                                        str(Path(directory) / "state.sqlite")],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True)
            _, status, usage = os.wait4(process.pid, 0)
            output = process.stdout.read() if process.stdout else ""
            return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, output.strip()


def migration_time(documents: int) -> dict[str, dict]:
    results = {}
    with start_emulator(extra_args=EMULATOR_ARGS) as source:
        load([source.uri], documents, payload=990)
        for verification in ("off", "on"):
            with start_emulator(extra_args=EMULATOR_ARGS) as destination:
                output = subprocess.run([sys.executable, "-m", "bench.run_migration",
                                         source.uri, destination.uri, verification],
                                        capture_output=True, text=True, check=True).stdout
                results[verification] = json.loads(output.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--migration", type=int, default=100_000)
    arguments = parser.parse_args()
    small = verify_memory(arguments.small)
    large = verify_memory(arguments.large)
    print(f"mongosync verify, peak memory: {small[0]:.0f} MB at {arguments.small:,} documents "
          f"({small[1]:.1f} s CPU), {large[0]:.0f} MB at {arguments.large:,} documents "
          f"({large[1]:.1f} s CPU); ratio {large[0] / small[0]:.2f} (target <= 1.2)")
    print(f"  its verdicts: {small[2].splitlines()[-1] if small[2] else '?'} / "
          f"{large[2].splitlines()[-1] if large[2] else '?'}")
    timed = migration_time(arguments.migration)
    off, on = timed["off"]["seconds"], timed["on"]["seconds"]
    print(f"whole migration of {arguments.migration:,} documents of ~1 KiB, start to "
          f"COMMITTED: {off:.1f} s without verification, {on:.1f} s with it; ratio "
          f"{on / off:.2f} (target <= 1.3)")
    hashed = (timed["on"]["verification"] or {}).get("source", {}).get("hashedDocumentCount")
    print(f"  the verifier hashed {hashed} source documents; peak engine memory "
          f"{timed['off']['max_rss_mb']:.0f} MB without, {timed['on']['max_rss_mb']:.0f} MB with")


if __name__ == "__main__":
    main()
