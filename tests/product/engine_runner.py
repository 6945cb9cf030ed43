"""A process that runs one migration to COMMITTED (the kill -9 test kills and restarts it).

Usage: python engine_runner.py SOURCE_URI DESTINATION_URI [MIN_CEA_SECONDS [LOAD_LEVEL]]
It resumes whatever migration is stored, or starts one; commits once it can and has spent
MIN_CEA_SECONDS (default 0) applying changes (never, when negative: it runs until killed);
prints the phase it resumed in and every phase change as ``PHASE <text>``, and exits 0 once
COMMITTED. LOAD_LEVEL (default 1) is mongosync's ``--loadLevel``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.errors import InvalidState
from pymongosync.request import StartRequest


def main() -> int:
    source_uri, destination_uri = sys.argv[1], sys.argv[2]
    min_cea_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    load_level = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    cluster0 = Cluster.connect("cluster0", source_uri)
    cluster1 = Cluster.connect("cluster1", destination_uri)
    migration = Migration.open(cluster0, cluster1, load_level=load_level)
    migration.add_listener(lambda message: print(f"PHASE {message}", flush=True))
    if migration.store is not None:
        stored = migration.store.load()
        phase = stored.resume.phase.label if stored is not None else None
        print(f"PHASE resumed in {phase} phase", flush=True)
    cea_since: float | None = None
    if migration.state == "IDLE":
        print("PHASE start", flush=True)
        migration.start(StartRequest.from_document({"source": "cluster0",
                                                    "destination": "cluster1"}))
    while True:
        progress = migration.progress()
        if migration.error is not None:
            print(f"ERROR {json.dumps(progress.get('error'))}", flush=True)
            return 2
        if progress["state"] == "COMMITTED":
            print("PHASE done", flush=True)
            return 0
        if progress["info"] == "change event application" and cea_since is None:
            cea_since = time.monotonic()
        if progress["canCommit"] and cea_since is not None and min_cea_seconds >= 0 and \
                time.monotonic() - cea_since >= min_cea_seconds:
            try:
                migration.commit()
            except InvalidState:
                pass
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
