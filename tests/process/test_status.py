"""What `mongosync status` shows a person for a /progress document (the end-to-end test runs
the command itself in each state; here the copy bar, its rate and ETA, and the advice)."""

from __future__ import annotations

from pymongosync.cli.status import next_step, render

URL = "http://127.0.0.1:27182"
COPYING = {
    "state": "RUNNING", "canCommit": False, "canWrite": False, "info": "collection copy",
    "lag": None, "lagTimeSeconds": None, "totalEventsApplied": 0,
    "collectionCopy": {"estimatedTotalBytes": 400 * 1024 * 1024,
                       "estimatedCopiedBytes": 100 * 1024 * 1024},
    "directionMapping": {"Source": "cluster0: a:27017", "Destination": "cluster1: b:27017"},
    "mongosyncID": "coordinator", "coordinatorID": "coordinator",
    "copyDetails": {"partitions": 8, "partitionsDone": 2, "copiedDocuments": 250_000,
                    "estimatedDocuments": 1_000_000, "phase": "collection copy"},
}


def test_copy_bar_with_rate_and_eta() -> None:
    text = render(COPYING, URL, rate=10 * 1024 * 1024)
    assert "[#######.......................]  25.0%  100.0 MiB of 400.0 MiB" in text
    assert "10.0 MiB/s  ETA 30 s" in text
    assert "partitions 2/8, documents 250,000 of about 1,000,000" in text
    assert "cluster0: a:27017 -> cluster1: b:27017" in text
    assert "the initial copy is running" in text


def test_advice_follows_the_state() -> None:
    applying = {**COPYING, "info": "change event application", "ceaStage": "steady state"}
    assert next_step({**applying, "canCommit": True, "lagTimeSeconds": 0}, URL).startswith(
        "lag is 0 s: you can commit now")
    assert "wait until it is at most 30 s" in next_step({**applying, "lagTimeSeconds": 95}, URL)
    assert "/api/v1/resume" in next_step({**COPYING, "state": "PAUSED"}, URL)
    failed = {**applying, "error": {"name": "ChangeStreamHistoryLost", "message": "oplog"}}
    assert "mongosync reset" in next_step(failed, URL)
