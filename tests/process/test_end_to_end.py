"""A user's migration: the real console script, driven only over HTTP, stopped and killed on
the way, ending with a destination equal to the source."""

from __future__ import annotations

import signal
import subprocess

from mongoemu.testing import EmulatorProcess
from pymongosync.verifier.compare import compare_clusters

from .processkit import (
    MONGOSYNC,
    START,
    Mongosync,
    MongosyncFactory,
    Writer,
    admin_client,
    seed,
    slow_down,
    speed_up,
    stop_gracefully,
)


def copying(progress: dict) -> bool:
    copy = progress["collectionCopy"] or {}
    return (progress["info"] == "collection copy"
            and 0 < copy.get("estimatedCopiedBytes", 0) < copy.get("estimatedTotalBytes", 1))


def status(process: Mongosync) -> str:
    """What `mongosync status` prints about this process."""
    result = subprocess.run([str(MONGOSYNC), "status", "--port", str(process.port)], text=True,
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_migration_over_http_survives_stops_and_kills(source: EmulatorProcess,
                                                       destination: EmulatorProcess,
                                                       mongosync: MongosyncFactory) -> None:
    seed(source, items=20_000)
    # Copy batches into bulk.items take 100 ms more, so the copy lasts long enough to be
    # paused and killed in the middle.
    slow_down(destination, "insert", 100, namespace="bulk.items")
    writer = Writer(source)
    try:
        process = mongosync.clusters(source, destination, "--loadLevel", "1")
        assert process.progress()["state"] == "IDLE"
        assert "start a migration" in status(process)
        assert process.post("start", START) == (200, {"success": True})

        # Pause mid-copy; a restart keeps it paused (spec §15.1).
        process.wait_for(copying, timeout=60, what="copy under way")
        assert process.post("pause") == (200, {"success": True})
        paused = process.progress()
        assert paused["state"] == "PAUSED"
        assert paused["lag"] is None and paused["lagTimeSeconds"] is None
        stop_gracefully(process)
        process = mongosync.clusters(source, destination, "--loadLevel", "1")
        assert process.progress()["state"] == "PAUSED"
        assert "resume" in status(process)
        assert process.post("resume") == (200, {"success": True})

        # kill -9 mid-copy: the next process continues without a second /start.
        before_kill = process.wait_for(
            lambda p: copying(p) and p["collectionCopy"]["estimatedCopiedBytes"]
            > paused["collectionCopy"]["estimatedCopiedBytes"], timeout=60,
            what="copy progressing after resume")
        process.kill()
        process = mongosync.clusters(source, destination, "--loadLevel", "1")
        # The copy's figures are read back from its checkpoints by the monitor's first sample.
        resumed = process.wait_for(lambda p: p["collectionCopy"]["estimatedCopiedBytes"] > 0,
                                   timeout=30, what="the stored copy progress read back")
        assert resumed["state"] == "RUNNING" and resumed["info"] == "collection copy"
        assert resumed["collectionCopy"]["estimatedCopiedBytes"] >= \
            before_kill["collectionCopy"]["estimatedCopiedBytes"]
        speed_up(destination)

        # kill -9 mid-change-application, then a second signal during shutdown (exit at once).
        applying = process.wait_for(lambda p: p["info"] == "change event application"
                                    and p["totalEventsApplied"] > 50, timeout=120,
                                    what="change events applied")
        process.kill()
        process = mongosync.clusters(source, destination)
        assert process.progress()["state"] == "RUNNING"
        process.wait_for(lambda p: p["totalEventsApplied"] > applying["totalEventsApplied"] + 50,
                         timeout=120, what="more change events applied after the restart")
        # Two different signals, so neither the kernel nor Python merges them into one.
        process.signal(signal.SIGINT)
        process.signal(signal.SIGTERM)
        assert process.wait_exit(10) == 128 + signal.SIGTERM
        assert "second signal: exiting now" in "".join(process.stderr)
        process = mongosync.clusters(source, destination)
        assert process.progress()["state"] == "RUNNING"

        writer.stop()
        assert not writer.errors, writer.errors[:3]
        assert writer.operations > 200
        ready = process.wait_for(lambda p: p["canCommit"], timeout=120, what="canCommit")
        assert ready["ceaStage"] in ("steady state", "collection copy drain")
        assert "you can commit now" in status(process)
        assert process.post("commit") == (200, {"success": True})
        done = process.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120,
                                what="COMMITTED")
        assert done["canWrite"] is True and done["info"] == "commit completed"
        assert "done" in status(process)
        stop_gracefully(process, signal.SIGINT)
    finally:
        writer.stop()
        speed_up(destination)

    with admin_client(source) as left, admin_client(destination) as right:
        comparison = compare_clusters(left, right)
    assert comparison.equal, comparison.summary()
    assert comparison.documents >= 20_000
    # The log announces the commit as operators' scripts look for it.
    transitions = [(line.get("oldState"), line.get("newState")) for line in process.log()
                   if line["message"] == "Transitioning the state"]
    assert ("RUNNING", "COMMITTING") in transitions
