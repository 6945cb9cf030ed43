"""What MongoDB's tooling sees of a finished migration: a real ``mongosync`` process migrates to
COMMITTED, then its metadata, its log and its metrics log are read the way Mongosync Insights
reads them, against the facts of ``insights_facts.py`` (gathered from Insights' source)."""

from __future__ import annotations

import datetime
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
from prometheus_client.parser import text_string_to_metric_families

from mongoemu.testing import EmulatorProcess
from pymongosync.store import METADATA_DATABASE

from . import insights_facts as facts
from .processkit import (
    START,
    MongosyncFactory,
    Writer,
    admin_client,
    free_port,
    seed,
    user_client,
)

# Bigger than one partition (16 MiB), so the collection is sampled into several.
BIG_DOCUMENTS, BIG_PAYLOAD = 2_200, 8_000


def values_at(document: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted ``path`` (``name[]`` steps into each element of an array);
    nothing when a step is missing."""
    if not path:
        yield document
        return
    step, _, rest = path.partition(".")
    many = step.endswith("[]")
    step = step.removesuffix("[]")
    if not isinstance(document, dict) or step not in document:
        return
    value = document[step]
    for item in (value if many else [value]):
        yield from values_at(item, rest)


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The log as Insights reads it: lines starting with ``{``, each one JSON."""
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def logged(lines: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    matcher = re.compile(pattern, re.IGNORECASE)
    return [line for line in lines if matcher.search(line.get("message", ""))]


def wait_for_line(path: Path, pattern: str, timeout: float = 60.0,
                  having: str | None = None) -> None:
    """Until ``path`` has a line matching ``pattern`` (with the key ``having``)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and any(having is None or having in line
                                     for line in logged(lines_of(path), pattern))):
        assert time.monotonic() < deadline, f"no {pattern!r} line ({having}) in {path}"
        time.sleep(0.2)


def seed_for_tooling(source: EmulatorProcess) -> None:
    """Collections of every kind the partition lines tell apart: small ones (one partition),
    a capped one, one big enough to be sampled into several partitions; and indexes to build
    after the copy."""
    seed(source, items=2_000, payload=100)
    with user_client(source) as client:
        client.logs.create_collection("events", capped=True, size=1 << 20)
        client.logs.events.insert_many([{"n": n} for n in range(100)])
        client.big.blobs.insert_many([{"n": n, "payload": "b" * BIG_PAYLOAD}
                                      for n in range(BIG_DOCUMENTS)])
        client.big.blobs.create_index("n")


def test_a_finished_migration_shows_mongodb_tooling_everything_it_reads(
        tmp_path: Path, source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory) -> None:
    seed_for_tooling(source)
    log_directory = tmp_path / "logs"
    port = free_port()  # the log goes to the file, where the chosen port would be
    process = mongosync("--cluster0", source.uri, "--cluster1", destination.uri, "--port",
                        str(port), "--acceptDisclaimer", "--logPath", str(log_directory))
    process.port = port
    log_file = log_directory / "mongosync.log"
    wait_for_line(log_file, "HTTP server listening")
    process.wait_ready()
    assert process.post("start", START) == (200, {"success": True})
    process.wait_for(lambda p: p["info"] == "change event application", timeout=300,
                     what="change event application")
    # A DDL event and CRUD events to apply: both kinds of lag, both resume positions.
    with user_client(source) as client:
        client.app.users.create_index("n")
    writer = Writer(source)
    try:
        applying = process.wait_for(
            lambda p: p["canCommit"] and (p["lag"] or {}).get("ddlLagSeconds") is not None,
            timeout=120, what="canCommit with a DDL event applied")
        assert applying["lag"]["crudLagSeconds"] is not None
        check_metrics_endpoint(process.request("GET", "/metrics").text)
        wait_for_line(log_file, "Replication progress")
        # The line's durations cover the time since the line before it: once one has change
        # application's writes, the copy's (all before them) are in it or in an earlier one.
        wait_for_line(log_file, "Operation duration stats", having="CEADestinationWrite")
    finally:
        writer.stop()
    assert process.post("commit") == (200, {"success": True})
    process.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120, what="COMMITTED")
    process.signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0, process.output()

    with admin_client(destination) as client:
        check_metadata(client)
    check_log(log_file)
    check_metrics_log(tmp_path / "metrics")


def check_metadata(client: pymongo.MongoClient[Any]) -> None:
    assert METADATA_DATABASE in facts.METADATA_DATABASES
    # Insights picks __mdb_internal_mongosync when it exists: it must not, or it would read
    # an empty database instead of ours.
    assert facts.METADATA_DATABASES[0] not in client.list_database_names()
    metadata = client[METADATA_DATABASE]
    found = {query.collection: list(metadata[query.collection].find(query.filter))
             for query in facts.QUERIES}
    for query in facts.QUERIES:
        assert found[query.collection], f"{query.collection}: no document ({query.source})"
    (global_state,) = found["globalState"]  # find_one({}): the collection's one document
    (resume,) = found["resumeData"]
    assert metadata.resumeData.count_documents({}) == 1

    for fact in facts.METADATA_FIELDS:
        documents = found[fact.collection]
        values = [value for document in documents for value in values_at(document, fact.path)]
        assert values, f"{fact.collection}.{fact.path}: missing ({fact.source})"
        for value in values:
            assert isinstance(value, fact.types), \
                f"{fact.collection}.{fact.path} = {value!r}: not {fact.types} ({fact.source})"
            assert fact.values is None or value in fact.values, \
                f"{fact.collection}.{fact.path} = {value!r}: not one of {fact.values}"

    # A finished migration, as Insights tells it.
    assert resume["state"] == "COMMITTED" and resume["syncPhase"] == facts.FINISH_PHASE
    assert resume["syncPhase"] not in facts.SYNC_PHASES_BEFORE_CEA
    phases = [transition["phase"] for transition in resume["phaseTransitions"]]
    assert phases[0] == facts.START_PHASE and phases[-1] == facts.FINISH_PHASE, phases
    assert "collection copy" in phases and "change event application" in phases
    times = [transition["ts"] for transition in resume["phaseTransitions"]]
    assert times == sorted(times)
    assert resume["directionMapping"]["Source"].startswith("cluster0: ")
    assert global_state["writeBlockingMode"] == "sourceAndDestination"
    assert global_state["namespaceFilter"] == {"inclusionFilter": None, "exclusionFilter": None}

    # Every partition done, its bytes counted; a collection's namespace reads "db.coll".
    partitions = found["partitions"]
    assert {p["partitionPhase"] for p in partitions} == {"done"}
    namespaces = {f"{p['namespace']['db']}.{p['namespace']['coll']}" for p in partitions}
    assert {"app.users", "bulk.items", "logs.events", "big.blobs"} <= namespaces
    assert sum(p["copiedByteCount"] for p in partitions) >= BIG_DOCUMENTS * BIG_PAYLOAD
    assert sum(p["totalByteCount"] for p in partitions) > 0
    assert sum(p["namespace"]["coll"] == "blobs" for p in partitions) > 1  # sampled

    # statistics: one per collection, joined to uuidMap by UUID, complete.
    mapping = {entry["_id"]: entry for entry in found["uuidMap"]}
    for statistics in found["statistics"]:
        entry = mapping[statistics["_id"]["uuid"]]
        assert statistics["namespace"] == {"db": entry["dstDBName"],
                                           "coll": entry["dstCollName"]}
        assert statistics["numCompletedPartitions"] == statistics["numPartitions"] > 0
    assert {f"{entry['dbName']}.{entry['dstCollName']}" for entry in found["uuidMap"]} >= \
        namespaces

    # indexCorrection: every index built (the counters agree), each collection known by UUID.
    corrections = found["indexCorrection"]
    assert {(c["_id"]["dbName"], c["_id"]["indexName"]) for c in corrections} >= {
        ("app", "name_1"), ("big", "n_1")}
    for correction in corrections:
        assert correction["shouldCorrectCounter"] == correction["lastCorrectedCounter"]
        assert correction["_id"]["collUUID"] in mapping


def check_log(log_file: Path) -> None:
    assert re.match(facts.LOG_FILE_PATTERN, log_file.name)
    lines = lines_of(log_file)
    assert len(lines) == len([text for text in log_file.read_text().splitlines() if text])
    for line in lines:
        datetime.datetime.strptime(line["time"][:26], facts.TIME_FORMAT)

    for fact in facts.LOG_LINES:
        matches = logged(lines, fact.pattern)
        assert matches, f"no {fact.pattern!r} line ({fact.source})"
        for name in fact.fields:
            assert any(list(values_at(line, name)) for line in matches), \
                f"{fact.pattern!r} lines lack {name} ({fact.source})"

    # What Insights derives from them.
    phases = [line["message"] for line in logged(
        lines, "Starting .* phase|Commit handler called")]
    assert phases[0] == "Starting initializing collections and indexes phase"
    assert phases.index("Starting collection copy phase") < \
        phases.index("Starting change event application phase") < \
        phases.index("Commit handler called")
    progress = logged(lines, "Replication progress")
    assert all(isinstance(line["lagTimeSeconds"], int) for line in progress)
    assert all(isinstance(line["totalEventsApplied"], int) for line in progress)
    counts = [tuple(map(int, re.search(facts.PARTITIONS_WRITTEN, line["message"]).groups()))
              for line in logged(lines, facts.PARTITIONS_WRITTEN)]
    # One line per partition; workers log concurrently, so the lines need not be in order.
    assert len(counts) == counts[0][1] and max(counts) == (counts[0][1], counts[0][1])
    assert {total for _, total in counts} == {counts[0][1]}
    starts = [line for line in logged(lines, "Received request")
              if line.get("uri") == "/api/v1/start"]
    assert json.loads(starts[0]["body"]) == START
    bodies = [json.loads(line["body"]) for line in logged(lines, "sent response")]
    last = [body for body in bodies if "progress" in body][-1]
    for path in facts.SENT_RESPONSE_BODY_FIELDS:
        assert isinstance(next(values_at(last, path)), int), path
    single = {line["collection"]: line["reason"] for line in logged(
        lines, "Creating a single partition for whole collection")}
    assert "capped" in single["events"]
    sampled = logged(lines, "Creating initial partitions for non-capped collection")
    assert [line["collection"] for line in sampled] == ["blobs"]
    assert logged(lines, "Version info")[0]["os"]
    stats = logged(lines, "Operation duration stats")
    for kind in facts.OPERATION_DURATION_KINDS:
        figures = [line[kind] for line in stats if kind in line]
        assert figures, f"no Operation duration stats line has {kind}"
        for figure in figures:
            assert figure["numOperations"] > 0
            assert 0 <= figure["averageDurationMs"] <= figure["maximumDurationMs"], figure


def check_metrics_endpoint(text: str) -> None:
    """/metrics has the new /progress figures: per-kind lag, per-namespace copy progress;
    and mongosync's histograms of the copy's and change application's reads and writes."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in ("mongosync_collection_copy_source_read_op_duration",
                 "mongosync_collection_copy_destination_write_op_duration",
                 "mongosync_cea_source_read_op_duration"):
        assert families[name].type == "histogram", name
        counts = {sample.name: sample.value for sample in families[name].samples
                  if sample.name.endswith("_count")}
        assert counts[f"{name}_count"] > 0, name
    for name in ("mongosync_crud_lag_time", "mongosync_ddl_lag_time"):
        (sample,) = families[name].samples
        assert sample.value >= 0, name
    copied = {sample.labels["namespace"]: sample.value for sample in
              families["mongosync_collection_copy_namespace_copied_docs_count"].samples}
    assert copied["big.blobs"] == BIG_DOCUMENTS and copied["app.users"] >= 500
    done = {sample.labels["namespace"]: sample.value for sample in
            families["mongosync_collection_copy_namespace_partitions_completed_count"].samples}
    planned = {sample.labels["namespace"]: sample.value for sample in
               families["mongosync_collection_copy_namespace_partitions_total"].samples}
    assert done == planned and planned["big.blobs"] > 1


def check_metrics_log(directory: Path) -> None:
    (path,) = [path for path in directory.iterdir()
               if re.match(facts.METRICS_FILE_PATTERN, path.name)]
    entries = [json.loads(text) for text in path.read_text().splitlines()]
    assert entries
    names: set[str] = set()
    for entry in entries:
        assert set(entry) == {"time", "message"}
        datetime.datetime.strptime(entry["time"][:26], facts.TIME_FORMAT)
        names |= {match.group(1) for match in re.finditer(
            r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+\S+", entry["message"], re.M)}
    assert set(facts.METRICS_LOG_SERIES) <= names, set(facts.METRICS_LOG_SERIES) - names
