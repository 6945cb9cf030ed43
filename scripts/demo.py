"""The README's main command: two emulated clusters, the source loaded with sample data.

Starts a source replica set and a destination replica set, loads ../shared/datasets/dump into
the source (or generated data when that folder is absent), shows what each holds, and keeps
both running for you to explore with mongosh until Ctrl-C (``--no-wait`` exits at once).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pymongo

from mongoemu.sampledata import generate, load_dump
from mongoemu.testing import start_emulator

DUMP = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "dump"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-wait", action="store_true", help="stop the clusters at the end")
    args = parser.parse_args()
    print("starting two emulated clusters ...", flush=True)
    with start_emulator() as source, start_emulator() as destination:
        print(f"  source      {source.uri}")
        print(f"  destination {destination.uri}")
        with pymongo.MongoClient(source.uri) as client:
            def report(namespace: str, count: int) -> None:
                print(f"\r  loading {namespace:45s} {count:8d} documents", end="", flush=True)

            started = time.perf_counter()
            if DUMP.exists():
                print(f"loading the sample dump from {DUMP} ...")
                loaded = load_dump(client, DUMP, report)
            else:
                print("../shared/datasets/dump not found: generating sample data instead ...")
                loaded = generate(client, progress=report)
            elapsed = time.perf_counter() - started
            total = sum(c.documents for c in loaded)
            print(f"\nloaded {total} documents into {len(loaded)} collections in {elapsed:.1f} s")
            for database in client.list_database_names():
                if database in ("admin", "config", "local"):
                    continue
                counts = {name: client[database][name].estimated_document_count()
                          for name in sorted(client[database].list_collection_names())}
                print(f"  {database}: " + ", ".join(f"{n} ({c})" for n, c in counts.items()))
        if args.no_wait:
            return
        print("\nboth clusters keep running; try:  .ci/node/node_modules/.bin/mongosh "
              f"'{source.uri}'\npress Ctrl-C to stop them.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping the clusters.")


if __name__ == "__main__":
    main()
