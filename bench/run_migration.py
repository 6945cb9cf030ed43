"""One whole migration in its own process: start, wait for canCommit, commit, wait for
COMMITTED; prints one JSON line with what it measured: the seconds to COMMITTED, the copy's
seconds, bytes and CPU time, the lag when change application began, the seconds from the end
of the copy to canCommit, and the process's peak memory.

Usage: python -m bench.run_migration SOURCE_URI DESTINATION_URI on|off [on|off [PID]]
(the embedded verifier, then change buffering, on by default; then a process writing to the
source, stopped once canCommit is reached, as an operator stops the applications before
committing).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from typing import Any

from pymongosync import Cluster, Migration, StartRequest
from pymongosync.migration import EngineSettings
from pymongosync.state import Phase
from pymongosync.store import MetadataStore


def cpu_seconds() -> float:
    """This process's CPU time and its reaped children's: the copy's worker processes."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    source_uri, destination_uri, verification = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
    buffering = len(sys.argv) < 5 or sys.argv[4] == "on"
    writer_pid = int(sys.argv[5]) if len(sys.argv) > 5 else None
    cluster0 = Cluster.connect("cluster0", source_uri)
    cluster1 = Cluster.connect("cluster1", destination_uri)
    migration = Migration.open(cluster0, cluster1,
                               settings=EngineSettings(change_buffering=buffering))
    started, cpu_at_start = time.perf_counter(), cpu_seconds()
    migration.start(StartRequest.from_document({
        "source": "cluster0", "destination": "cluster1",
        "verification": {"enabled": verification}}))
    # Sampled every 50 ms: the last report of the copy, the first of change application.
    last_of_copy: dict[str, Any] = {}
    cpu_at_copy_end = 0.0
    while True:
        progress = migration.progress()
        if migration.error is not None:
            raise migration.error
        if progress["info"] in ("change event application", "commit") or progress["canCommit"]:
            cpu_at_copy_end = cpu_seconds() - cpu_at_start
            applying = progress
            break
        last_of_copy = progress
        time.sleep(0.05)
    migration.wait_for(lambda p: p["canCommit"], timeout=3600, interval=0.05)
    caught_up = time.perf_counter() - started
    if writer_pid is not None:
        os.kill(writer_pid, signal.SIGKILL)
        migration.wait_for(lambda p: p["lagTimeSeconds"] == 0 and p["canCommit"],
                           timeout=3600, interval=0.05)
        time.sleep(2)  # the writer's last writes are applied before the commit
    migration.commit()
    final = migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=3600, interval=0.05)
    seconds = time.perf_counter() - started
    migration.close()
    # The phases' times as the migration stored them: when the copy began and ended, and when
    # change application began.
    stored = MetadataStore(cluster1.client).load()
    assert stored is not None
    began = {transition.phase: transition.ts for transition in stored.resume.phase_transitions}
    copy_seconds = (began[Phase.BUILD_INDEXES] - began[Phase.COPY]).total_seconds() \
        if Phase.BUILD_INDEXES in began else \
        (began[Phase.APPLY_CHANGES] - began[Phase.COPY]).total_seconds()
    to_can_commit = caught_up - (began[Phase.APPLY_CHANGES] - began[Phase.PREPARE]).total_seconds()
    copied = applying["copyDetails"]
    print(json.dumps({
        "seconds": seconds, "verification": final.get("verification"),
        "copy_seconds": copy_seconds,
        "copy_bytes": applying["collectionCopy"]["estimatedCopiedBytes"],
        "copy_documents": copied["copiedDocuments"], "copy_cpu_seconds": cpu_at_copy_end,
        "lag_after_copy_seconds": applying.get("lagTimeSeconds"),
        "buffered_events_at_copy_end": (last_of_copy.get("changeBuffer") or {}).get("events"),
        "catch_up_seconds": to_can_commit,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
