"""Kill -9 at random moments of a migration, restart it, and lose nothing."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.verifier.compare import compare_clusters

from .conftest import user_client
from .workload import Writer, seed_source

RUNNER = Path(__file__).with_name("engine_runner.py")
# Where to strike, in the order a migration meets them: the phase line to wait for, then a
# random delay (seconds) after it.
KILL_POINTS = [("start", 0.0, 0.05), ("initializing partitions", 0.0, 0.05),
               ("collection copy", 0.0, 0.3), ("collection copy", 0.2, 0.6),
               ("collection copy", 0.4, 1.0), ("building indexes", 0.0, 0.05),
               ("change event application", 0.0, 0.2),
               ("change event application", 0.2, 0.6), ("change event application", 0.5, 1.0),
               ("change event application", 0.8, 1.3), ("commit phase", 0.0, 0.02),
               ("commit phase", 0.01, 0.05), ("blocked writes on the source", 0.0, 0.05),
               ("canWrite", 0.0, 0.02)]
PHASE_ORDER = ["start", "initializing partitions", "collection copy", "building indexes",
               "change event application", "commit phase", "blocked writes on the source",
               "canWrite", "done"]


class Runner:
    def __init__(self, source: EmulatorProcess, destination: EmulatorProcess,
                 min_cea_seconds: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER), source.uri, destination.uri, str(min_cea_seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def wait_for(self, text: str, timeout: float = 120.0) -> bool:
        """Wait for a phase line; False once the run is past that phase (or has ended)."""
        later = PHASE_ORDER[PHASE_ORDER.index(text) + 1:] if text in PHASE_ORDER else []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line == "EOF":
                return False
            if text in line:
                return True
            if any(phase in line for phase in later):
                return False
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


def test_kill_at_random_points_loses_nothing(source: EmulatorProcess,
                                             destination: EmulatorProcess) -> None:
    rng = random.Random(int(os.environ.get("KILL9_SEED", "2026")))
    with user_client(source) as client:
        seed_source(client, documents=6000, with_dump=False)
        client.bulk.more.insert_many([{"i": i, "payload": "z" * 300} for i in range(40000)])
    kills: list[str] = []
    history: list[str] = []
    # The application: write-blocked on the source at commit (root would bypass the block).
    with Writer(source.application_uri, seed=3) as writer:
        for phase, low, high in KILL_POINTS:  # each in a fresh run that gets that far
            runner = Runner(source, destination, min_cea_seconds=1.5)
            if runner.wait_for(phase, timeout=60):
                time.sleep(rng.uniform(low, high))
                kills.append(phase)
            runner.kill()
            history.extend(runner.seen)
            if "commit" in phase or "canWrite" in phase or "blocked" in phase:
                writer.stop.set()  # commit blocks the source: the application is done
        writer.finish()
        final = Runner(source, destination)
        assert final.wait_for("PHASE done", timeout=180), \
            ("the migration did not finish", final.seen[-20:])
        final.process.wait(timeout=30)
    assert len(kills) >= 10, (kills, history[-12:])
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    try:
        comparison = compare_clusters(cluster0.client, cluster1.client)
        assert comparison.equal, comparison.summary()
    finally:
        cluster0.close()
        cluster1.close()
