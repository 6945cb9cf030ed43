"""A mongosync stand-in that crashes itself at a chosen moment (the reset tests' kill -9).

Usage: python crash_runner.py SOURCE_URI DESTINATION_URI KILL_ON DELAY [START_BODY_JSON]
Starts a migration (cluster0 → cluster1 unless a /start body is given), commits as soon as it
can, and SIGKILLs itself DELAY seconds after the first progress message containing KILL_ON
("collection copy", "blocked writes on the source", ...). With DELAY 0 the kill happens inside
that message's callback, so nothing after the step that produced it runs: the crash lands at
an exact point. Prints every message as ``PHASE <text>``; exits 0 if it commits unkilled.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.errors import InvalidState
from pymongosync.request import StartRequest


def crash() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    source_uri, destination_uri, kill_on, delay = sys.argv[1:5]
    body = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {"source": "cluster0",
                                                               "destination": "cluster1"}
    armed = threading.Event()

    def on_message(message: str) -> None:
        print(f"PHASE {message}", flush=True)
        if kill_on in message and not armed.is_set():
            armed.set()
            if float(delay) == 0:
                crash()
            else:
                threading.Timer(float(delay), crash).start()

    migration = Migration.open(Cluster.connect("cluster0", source_uri),
                               Cluster.connect("cluster1", destination_uri), load_level=1)
    migration.add_listener(on_message)
    migration.start(StartRequest.from_document(body))
    while True:
        progress = migration.progress()
        if migration.error is not None:
            print(f"ERROR {json.dumps(progress.get('error'))}", flush=True)
            return 2
        if progress["state"] == "COMMITTED":
            return 0
        if progress["canCommit"]:
            try:
                migration.commit()
            except InvalidState:
                pass
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
