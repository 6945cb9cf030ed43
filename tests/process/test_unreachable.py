"""A cluster that stops answering: the API still answers (503 where it needs that cluster),
SIGTERM still stops the process, and the migration resumes once the cluster is back."""

from __future__ import annotations

import os
import signal

import httpx

from mongoemu.testing import EmulatorProcess
from pymongosync.verifier.compare import compare_clusters

from .processkit import START, MongosyncFactory, admin_client, seed


def test_a_frozen_destination_does_not_freeze_the_process(source: EmulatorProcess,
                                                          destination: EmulatorProcess,
                                                          mongosync: MongosyncFactory) -> None:
    seed(source, items=1000)
    process = mongosync.clusters(source, destination)
    assert process.post("start", START) == (200, {"success": True})
    process.wait_for(lambda p: p["canCommit"], what="canCommit")
    process.http = httpx.Client(timeout=40)  # an answer must come well before this
    os.kill(destination.process.pid, signal.SIGSTOP)  # up, but answering nothing
    try:
        warned = process.wait_for(
            lambda p: any("destination cluster" in w and "has not answered" in w
                          for w in p.get("warnings", [])), timeout=60, what="a warning")
        assert warned["state"] == "RUNNING" and warned["destination"]["pingLatencyMs"] == -1
        assert warned["canCommit"] is False or warned["lagTimeSeconds"] is not None
        metrics = process.request("GET", "/metrics")
        assert metrics.status_code == 200 and "mongosync_state" in metrics.text
        status, refused = process.post("pause")
        assert status == 503 and refused["error"] == "ClusterUnavailable", refused
        process.signal(signal.SIGTERM)
        assert process.wait_exit(30) == 0, process.output()
    finally:
        os.kill(destination.process.pid, signal.SIGCONT)
    again = mongosync.clusters(source, destination)
    resumed = again.wait_for(lambda p: p["state"] in ("RUNNING", "PAUSED"), what="resume")
    if resumed["state"] == "PAUSED":  # the pause was recorded before the process stopped
        assert again.post("resume") == (200, {"success": True})
    again.wait_for(lambda p: p["canCommit"], what="canCommit")
    assert again.post("commit") == (200, {"success": True})
    again.wait_for(lambda p: p["state"] == "COMMITTED", what="COMMITTED")
    with admin_client(source) as left, admin_client(destination) as right:
        comparison = compare_clusters(left, right)
    assert comparison.equal, comparison.summary()
