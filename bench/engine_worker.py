"""One migration in its own process, for the benchmark: reports copy time and peak memory.

Usage: python -m bench.engine_worker SOURCE_URI DESTINATION_URI LOAD_LEVEL
Prints one JSON line once change event application starts, then stays applying changes
until stdin closes. Each line it reads is a command: "pause", "resume" or "progress"; it
answers every one with a JSON line of the applied-event count and lag.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from pymongosync import Cluster, Migration, StartRequest


def main() -> None:
    source_uri, destination_uri, load_level = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cluster0 = Cluster.connect("cluster0", source_uri)
    cluster1 = Cluster.connect("cluster1", destination_uri)
    migration = Migration.open(cluster0, cluster1, load_level=load_level)
    copy_started: list[float] = []
    copy_ended: list[float] = []

    def on_phase(message: str) -> None:
        if "collection copy" in message:
            copy_started.append(time.perf_counter())
        if "building indexes" in message:
            copy_ended.append(time.perf_counter())

    migration.add_listener(on_phase)
    migration.start(StartRequest.from_document({"source": "cluster0", "destination": "cluster1",
                                                "verification": {"enabled": False}}))
    migration.wait_for(lambda p: p["info"] == "change event application", timeout=3600,
                       interval=0.02)
    progress = migration.progress()
    print(json.dumps({
        "copy_seconds": copy_ended[0] - copy_started[0],
        "documents": progress["copyDetails"]["copiedDocuments"],
        "bytes": progress["collectionCopy"]["estimatedCopiedBytes"],
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            migration.pause()
        elif command == "resume":
            migration.resume()
        progress = migration.progress()
        print(json.dumps({"events": progress["totalEventsApplied"],
                          "lag": progress["lagTimeSeconds"]}), flush=True)
    migration.close()


if __name__ == "__main__":
    main()
