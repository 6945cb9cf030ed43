"""One owner at a time: a second mongosync on the same migration stands by and writes nothing,
and takes over when the owner is killed."""

from __future__ import annotations

import signal
import time
from typing import Any

from mongoemu.testing import EmulatorProcess
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import compare_clusters

from .processkit import START, MongosyncFactory, admin_client, user_client


def metadata_snapshot(destination: EmulatorProcess) -> dict[str, list[dict[str, Any]]]:
    """Every metadata document except the lease (which its owner renews all the time)."""
    with admin_client(destination) as client:
        database = client[METADATA_DATABASE]
        return {name: list(database[name].find().sort("_id", 1))
                for name in sorted(database.list_collection_names()) if name != "lease"}


def test_second_process_stands_by_then_takes_over(source: EmulatorProcess,
                                                  destination: EmulatorProcess,
                                                  mongosync: MongosyncFactory) -> None:
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i, "pad": "p" * 200} for i in range(3000)])
    first = mongosync.clusters(source, destination)
    assert first.post("start", START) == (200, {"success": True})
    first.wait_for(lambda p: p["info"] == "change event application", what="CEA")

    second = mongosync.clusters(source, destination)
    standby = second.wait_for(lambda p: "standby" in p, timeout=30, what="standby")
    assert standby["standby"]["pid"] == first.process.pid
    assert standby["state"] == "RUNNING" and standby["canCommit"] is False
    assert any("standing by" in warning for warning in standby["warnings"])
    status, refused = second.post("pause")
    assert status == 409 and refused["error"] == "NotOwner", refused
    assert str(first.process.pid) in refused["errorDescription"]

    # With the owner paused, nothing in the metadata moves: the standby writes nothing.
    assert first.post("pause") == (200, {"success": True})
    before = metadata_snapshot(destination)
    time.sleep(3)  # several of the standby's lease rounds
    assert metadata_snapshot(destination) == before
    assert second.progress()["state"] == "PAUSED" and "standby" in second.progress()
    assert first.post("resume") == (200, {"success": True})

    with user_client(source) as client:
        client.app.items.insert_many([{"n": -i} for i in range(1, 201)])
    first.signal(signal.SIGKILL)
    first.process.wait()
    took_over = second.wait_for(lambda p: "standby" not in p, timeout=30, what="take-over")
    assert took_over["state"] == "RUNNING"
    second.wait_for(lambda p: p["canCommit"], timeout=120, what="canCommit")
    assert second.post("commit") == (200, {"success": True})
    second.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120, what="COMMITTED")
    with admin_client(source) as left, admin_client(destination) as right:
        comparison = compare_clusters(left, right)
    assert comparison.equal, comparison.summary()
    assert comparison.documents == 3200
