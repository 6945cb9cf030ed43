"""Hot documents: change application of a backlog dominated by a few documents, with and
without ``--hotDocIDs`` naming them, each figure from this one run.

Run: ``.venv/bin/python -m bench.hot_documents [--updates 20000]`` (about a minute).

Method (../shared/research/performance-baseline.md, as ``bench/apply_scaling.py``): for each
setting, a fresh source and destination (emulators; the destination stores what it is sent,
since what a hot document costs is the destination applying its writes one after another),
the engine in its own process at ``--loadLevel`` 3 (4 applier lanes), verification off. Once
``canCommit`` is true the engine is paused; the source gets a backlog of ``--updates`` updates
of each of ``--hot`` documents, interleaved with as many updates spread over 10,000 others;
the engine is resumed, and the CPU of its process (``/proc``) and the seconds until
``totalEventsApplied`` has grown by the whole backlog give µs per event and events/s. The
documents named by ``--hotDocIDs`` are then taken from the source at commit (one read and one
write each), which this figure leaves out, as it leaves out the commit.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import pymongo

from bench.apply_scaling import SOURCE_ARGS, Engine
from mongoemu.testing import start_emulator

SPREAD_DOCUMENTS = 10_000


def write_backlog(uri: str, hot: int, updates: int) -> int:
    """Updates of each hot document interleaved with as many spread ones; how many events."""
    with pymongo.MongoClient(uri) as client:
        collection = client.bench.counters
        requests: list[Any] = []
        for n in range(updates):
            for h in range(hot):
                requests.append(pymongo.UpdateOne({"_id": f"hot{h}"}, {"$inc": {"n": 1}}))
                requests.append(pymongo.UpdateOne({"_id": (n * hot + h) % SPREAD_DOCUMENTS},
                                                  {"$inc": {"n": 1}}))
            if len(requests) >= 1000:
                collection.bulk_write(requests, ordered=False)
                requests.clear()
        if requests:
            collection.bulk_write(requests, ordered=False)
    return 2 * hot * updates


def measure(hot: int, updates: int, name_them: bool) -> dict[str, float]:
    hot_option = json.dumps({"db": "bench", "collection": "counters",
                             "ids": [{"_id": f"hot{h}"} for h in range(hot)]})
    with start_emulator(extra_args=SOURCE_ARGS) as source, \
            start_emulator(extra_args=SOURCE_ARGS) as destination:
        with pymongo.MongoClient(source.uri) as client:
            client.bench.counters.insert_many(
                [{"_id": f"hot{h}", "n": 0} for h in range(hot)]
                + [{"_id": n, "n": 0} for n in range(SPREAD_DOCUMENTS)])
        engine = Engine(source.uri, destination.uri, 3, [hot_option] if name_them else None)
        return engine.drain(lambda: write_backlog(source.uri, hot, updates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=20_000,
                        help="updates of each hot document (as many spread ones beside)")
    parser.add_argument("--hot", type=int, default=1, help="hot documents")
    arguments = parser.parse_args()
    print(f"cores: {os.cpu_count()} (os.cpu_count())")
    print(f"backlog: {arguments.updates:,} updates of each of {arguments.hot} hot document(s), "
          f"interleaved with as many over {SPREAD_DOCUMENTS:,} others "
          f"({2 * arguments.hot * arguments.updates:,} events); 4 applier lanes")
    print(f"{'--hotDocIDs':>12}  {'engine µs/event':>15}  {'events/s':>9}  {'seconds':>7}")
    figures = {}
    for name_them in (False, True):
        figures[name_them] = measure(arguments.hot, arguments.updates, name_them)
        print(f"{'named' if name_them else 'not given':>12}  "
              f"{figures[name_them]['cpu_us']:>15.1f}  {figures[name_them]['rate']:>9,.0f}  "
              f"{figures[name_them]['seconds']:>7.1f}")
    print(f"with the hot documents named: {figures[True]['rate'] / figures[False]['rate']:.2f}× "
          f"the events/s, {figures[True]['cpu_us'] / figures[False]['cpu_us']:.2f}× the engine "
          f"CPU per event (their events are read and skipped; each is taken once at commit)")


if __name__ == "__main__":
    main()
