"""The README's main command: a complete migration, start to COMMITTED, as an operator runs it.

1. starts two emulated clusters (a source and a destination replica set);
2. loads ../shared/datasets/dump into the source (or generated data when that folder is absent);
3. starts the real ``mongosync`` console script against them;
4. drives it only through its HTTP API (``/start``, ``/progress``, ``/commit``) while a writer
   keeps changing the source, printing a progress line per second, and shows what
   ``mongosync status`` tells a person;
5. compares the two clusters document by document and exits non-zero if they differ.

Everything runs on free local ports and is stopped at the end; mongosync's own log and metrics
log stay in a temporary directory whose path is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pymongo
from pymongo.errors import PyMongoError

from mongoemu.sampledata import DEFAULT_DUMP, LoadedCollection, ProgressReport, load
from mongoemu.testing import EmulatorProcess, start_emulator
from pymongosync import compare_clusters

DUMP = DEFAULT_DUMP
MONGOSYNC = Path(sys.executable).with_name("mongosync")
# Emulators as the README starts them: without authentication, where (as on MongoDB) every
# client may write through the commit's write block; the application stops before the cutover.
CLUSTER_ARGS = ["--noop-interval", "1"]
WRITES_DURING_SYNC = 300  # change events to see applied before the writer stops
USER_WRITES_BLOCKED = 371


class Api:
    """mongosync's HTTP API, as curl would use it."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def post(self, endpoint: str, body: Any = None) -> None:
        print(f"POST /api/v1/{endpoint} {json.dumps(body or {})}")
        answer = self.call("POST", f"/api/v1/{endpoint}", body or {})
        print(f"  -> {json.dumps(answer)}")
        if not answer["success"]:
            raise SystemExit(f"mongosync refused /{endpoint}: {answer['errorDescription']}")

    def progress(self) -> dict[str, Any]:
        return self.call("GET", "/api/v1/progress")["progress"]


class Writer:
    """An application changing the source: inserts, updates, deletes, until stopped."""

    def __init__(self, uri: str, loaded: list[LoadedCollection]) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, appname="demo-application")
        self.targets = [c.namespace for c in loaded if c.documents > 50] or ["demo.orders"]
        self.random = random.Random(11)
        self.operations = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        orders = self.client.demo.orders
        while not self.stopped.is_set():
            step = self.random.randrange(4)
            try:
                if step == 0:
                    orders.insert_one({"order": self.operations, "items": self.random.randrange(9)})
                elif step == 1:
                    orders.update_one({"items": self.random.randrange(9)},
                                      {"$inc": {"revisions": 1}})
                elif step == 2:
                    orders.delete_one({"items": self.random.randrange(9)})
                else:  # touch a document of the sample data
                    db, _, name = self.random.choice(self.targets).partition(".")
                    document = self.client[db][name].find_one({}, {"_id": 1},
                                                              skip=self.random.randrange(50))
                    if document is not None:
                        self.client[db][name].update_one({"_id": document["_id"]},
                                                         {"$set": {"demoTouched": True}})
                self.operations += 1
            except PyMongoError as exc:
                if getattr(exc, "code", None) != USER_WRITES_BLOCKED:
                    raise
            self.stopped.wait(0.005)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.client.close()


def load_source(uri: str) -> list[LoadedCollection]:
    # One line rewritten in place at a terminal, one line per collection in a log file.
    return load(uri, DUMP, report=ProgressReport())


def start_mongosync(source: EmulatorProcess, destination: EmulatorProcess,
                    log_directory: Path) -> tuple[subprocess.Popen, Api]:
    command = [str(MONGOSYNC), "--cluster0", source.uri, "--cluster1", destination.uri,
               "--port", "0", "--logPath", str(log_directory), "--acceptDisclaimer",
               "--metricsLoggingFilepath", str(log_directory / "metrics")]
    print("$ " + " ".join(command))
    process = subprocess.Popen(command)
    log_file = log_directory / "mongosync.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if log_file.exists():
            for line in log_file.read_text().splitlines():
                entry = json.loads(line)
                if entry["message"] == "HTTP server listening":
                    api = Api(entry["port"])
                    while api.progress()["state"] == "INITIALIZING":
                        time.sleep(0.1)
                    return process, api
        time.sleep(0.1)
    raise SystemExit(f"mongosync did not start; see {log_file}")


def progress_line(progress: dict[str, Any], elapsed: float) -> str:
    copy = progress.get("collectionCopy") or {}
    total = copy.get("estimatedTotalBytes") or 1
    percent = 100.0 * (copy.get("estimatedCopiedBytes") or 0) / total
    lag = progress.get("lagTimeSeconds")
    phase = (progress.get("copyDetails") or {}).get("phase") or progress.get("info")
    verification = (progress.get("verification") or {}).get("source") or {}
    verifier = "" if not verification else (
        f"  verifier: {verification['phase']}, {verification['hashedDocumentCount']} hashed")
    return (f"[{elapsed:5.1f} s] {progress['state']:10s} {phase:38s} copied {percent:5.1f}%  "
            f"events applied {progress.get('totalEventsApplied') or 0:6d}  "
            f"lag {'-' if lag is None else f'{lag} s'}{verifier}")


def follow(api: Api, started: float, until: Any, timeout: float = 600) -> dict[str, Any]:
    """Print a progress line per second until ``until(progress)`` holds."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while True:
        progress = api.progress()
        if progress.get("error"):
            raise SystemExit(f"the migration failed: {progress['error']}")
        done = until(progress)
        if done or time.monotonic() - last_print >= 1.0:
            print(progress_line(progress, time.monotonic() - started), flush=True)
            last_print = time.monotonic()
        if done:
            return progress
        if time.monotonic() > deadline:
            raise SystemExit("the migration did not get there in time")
        time.sleep(0.1)


def migrate(source: EmulatorProcess, destination: EmulatorProcess,
            loaded: list[LoadedCollection], log_directory: Path, keep_running: bool) -> bool:
    process, api = start_mongosync(source, destination, log_directory)
    try:
        print(f"mongosync is up: API at {api.url}, log in {log_directory}/mongosync.log")
        print(f"dashboard: {api.url}/ (open it in a browser while the demo runs)\n", flush=True)
        writer = Writer(source.uri, loaded)
        started = time.monotonic()
        api.post("start", {"source": "cluster0", "destination": "cluster1"})
        follow(api, started, lambda p: p["info"] == "change event application"
               and (p["totalEventsApplied"] or 0) >= WRITES_DURING_SYNC)
        print(f"\nthe application made {writer.operations} writes during the sync; stopping "
              f"it before the cutover. What `mongosync status` shows now:\n")
        writer.stop()
        sys.stdout.flush()  # in a log file, what came before stays before the child's output
        subprocess.run([str(MONGOSYNC), "status", "--port", api.url.rsplit(":", 1)[1]],
                       check=False)
        print()
        follow(api, started, lambda p: p["canCommit"])
        api.post("commit")
        final = follow(api, started, lambda p: p["state"] == "COMMITTED")
        print(f"\ncommitted: canWrite={final['canWrite']}; user write blocking is on for the "
              f"source (it stops users without bypassWriteBlockingMode once authentication is "
              f"on), the destination takes writes")
        details = final.get("verificationDetails") or {}
        hashed = ((final.get("verification") or {}).get("source") or {}).get(
            "hashedDocumentCount")
        print(f"the embedded verifier's verdict: {details.get('verdict')} ({hashed} documents "
              f"hashed on each side, {details.get('recheckedDocuments')} changed documents "
              f"compared again, {details.get('mismatches')} mismatches)")
        if keep_running:
            input(f"\nmongosync and its dashboard ({api.url}/) stay up: press Enter to compare "
                  f"the clusters and stop ")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    print("\ncomparing the two clusters document by document ...")
    left: pymongo.MongoClient[dict[str, Any]]
    right: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(source.uri) as left, pymongo.MongoClient(destination.uri) as right:
        comparison = compare_clusters(left, right)
    print(("the two clusters are " if comparison.equal else "MISMATCH: ")
          + comparison.summary())
    return comparison.equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-running", action="store_true",
                        help="after COMMITTED, keep mongosync and its dashboard up until Enter "
                             "is pressed")
    arguments = parser.parse_args()
    if not MONGOSYNC.exists():
        raise SystemExit(f"{MONGOSYNC} not found: install the project first (make demo does)")
    print("starting two emulated clusters ...", flush=True)
    log_directory = Path(tempfile.mkdtemp(prefix="pymongosync-demo-"))  # kept for reading
    with start_emulator(extra_args=CLUSTER_ARGS) as source, \
            start_emulator(extra_args=CLUSTER_ARGS) as destination:
        print(f"  source      (cluster0) {source.uri}")
        print(f"  destination (cluster1) {destination.uri}")
        loaded = load_source(source.uri)
        equal = migrate(source, destination, loaded, log_directory, arguments.keep_running)
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
