"""The change buffer seen by an operator: ``/progress`` and ``/metrics`` of a running process
while the source's changes are buffered during a slow copy, and both after the commit."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mongoemu.testing import EmulatorProcess

from .processkit import START, MongosyncFactory, Writer, seed, slow_down, speed_up, start_cluster


def gauges(text: str) -> dict[str, float]:
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def test_progress_and_metrics_show_the_buffer_during_the_copy(
        mongosync: MongosyncFactory, destination: EmulatorProcess) -> None:
    with start_cluster(["--oplog-size-mb", "4"]) as source:
        seed(source, items=3000)
        slow_down(source, "getMore", 1500, namespace="bulk.items")
        slow_down(source, "find", 1500, namespace="bulk.items")
        process = mongosync.clusters(source, destination)
        writer = Writer(source)
        try:
            assert process.post("start", START)[0] == 200
            during = process.wait_for(
                lambda p: p.get("changeBuffer", {}).get("events", 0) > 50
                and p["copyDetails"]["phase"] == "collection copy", 60, "buffered events")
            buffer = during["changeBuffer"]
            assert buffer["receiving"] and 0 < buffer["bytes"] < buffer["limitBytes"]
            assert buffer["limitBytes"] == 10 * 2**30 and buffer["lagSeconds"] >= 0
            assert during["estimatedOplogTimeRemaining"]  # a duration, or "not checked yet"
            metrics = gauges(process.request("GET", "/metrics").text)
            assert metrics["mongosync_change_buffer_bytes"] > 0
            assert metrics["mongosync_change_buffer_events"] > 0
            assert metrics["mongosync_change_buffer_limit_bytes"] == 10 * 2**30
            assert "mongosync_change_buffer_lag_time" in metrics
        finally:
            speed_up(source)
            writer.stop()
        process.wait_for(lambda p: p["canCommit"], 120, "canCommit")
        assert process.post("commit")[0] == 200
        final = process.wait_for(lambda p: p["state"] == "COMMITTED", 120, "COMMITTED")
        assert "changeBuffer" not in final
        metrics = gauges(process.request("GET", "/metrics").text)
        assert "mongosync_change_buffer_bytes" not in metrics  # no buffer left to measure
