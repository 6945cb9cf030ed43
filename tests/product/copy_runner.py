"""A process that starts a migration and runs it until it is killed (test_copy_workers kills it
during the copy and checks that its copy worker processes go with it).

Usage: python copy_runner.py SOURCE_URI DESTINATION_URI LOAD_LEVEL
Prints ``STARTED`` once the migration runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest


def main() -> int:
    source_uri, destination_uri, load_level = sys.argv[1], sys.argv[2], int(sys.argv[3])
    migration = Migration.open(Cluster.connect("cluster0", source_uri),
                               Cluster.connect("cluster1", destination_uri),
                               load_level=load_level)
    migration.start(StartRequest.from_document({"source": "cluster0", "destination": "cluster1",
                                                "verification": {"enabled": False}}))
    print("STARTED", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
