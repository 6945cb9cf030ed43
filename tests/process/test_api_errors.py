"""Every invalid API call gets mongosync's error envelope, a 4xx status and a text saying what
to do, and leaves the migration exactly as it was."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.store import METADATA_DATABASE, MetadataStore

from .processkit import (
    START,
    Mongosync,
    Tripwire,
    admin_client,
    seed,
    slow_down,
    speed_up,
    start_cluster,
)

VALID = '{"source": "cluster0", "destination": "cluster1"}'

# (method, path, raw body, status, error name, text the description must contain)
IDLE_CASES = [
    ("POST", "/api/v1/start", "", 400, "InvalidRequest", "no body"),
    ("POST", "/api/v1/start", "{", 400, "InvalidRequest", "not valid JSON"),
    ("POST", "/api/v1/start", "[]", 400, "InvalidRequest", "must be a JSON object"),
    ("POST", "/api/v1/start", "null", 400, "InvalidRequest", "must be a JSON object"),
    ("POST", "/api/v1/start", '"cluster0"', 400, "InvalidRequest", "must be a JSON object"),
    ("POST", "/api/v1/start", b"\xff\xfe{}", 400, "InvalidRequest", "not UTF-8"),
    ("POST", "/api/v1/start", '{"source": NaN}', 400, "InvalidRequest", "NaN"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "lagTimeSeconds": 1e400}', 400, "InvalidRequest",
     "1e400 is out of the range of a number"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "pad": "' + "x" * (1024 * 1024) + '"}', 413,
     "RequestTooLarge", "larger than 1024 KiB"),
    ("POST", "/api/v1/start", '{"source": "cluster0", "source": "cluster1"}', 400,
     "InvalidRequest", "given twice"),
    ("POST", "/api/v1/start", '{"source": "cluster0"}', 400, "InvalidRequest",
     "destination: is required"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "buildindexes": "never"}', 400, "InvalidRequest",
     "buildindexes: is not a recognised parameter"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "reversible": "true"}', 400, "InvalidRequest",
     "reversible: must be a boolean"),
    ("POST", "/api/v1/start", '{"source": "cluster0", "destination": "cluster0"}', 400,
     "InvalidRequest", "must differ from source"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "reversible": true, "includeNamespaces": '
     '[{"database": "app"}]}', 400, "InvalidRequest", "filtered migrations cannot be reversed"),
    ("POST", "/api/v1/start", VALID[:-1] + ', "sharding": {"shardingEntries": []}}', 400,
     "InvalidRequest", "only accepted when migrating from a replica set to a sharded cluster"),
    ("POST", "/api/v1/pause", "", 400, "InvalidRequest", "send a JSON object, {}"),
    ("POST", "/api/v1/pause", '{"force": true}', 400, "InvalidRequest",
     "takes no parameters"),
    ("POST", "/api/v1/commit", "[{}]", 400, "InvalidRequest", "must be a JSON object"),
    ("POST", "/api/v1/pause", "{}", 409, "InvalidState",
     "Currently in IDLE state, needs to be in RUNNING state"),
    ("POST", "/api/v1/resume", "{}", 409, "InvalidState",
     "Currently in IDLE state, needs to be in PAUSED state"),
    ("POST", "/api/v1/commit", "{}", 409, "InvalidState",
     "Currently in IDLE state, needs to be in RUNNING state"),
    ("POST", "/api/v1/reverse", "{}", 409, "InvalidState",
     "Currently in IDLE state, needs to be in COMMITTED state"),
    ("GET", "/api/v1/start", None, 405, "MethodNotAllowed", "use POST"),
    ("POST", "/api/v1/progress", "{}", 405, "MethodNotAllowed", "use GET"),
    ("DELETE", "/api/v1/commit", None, 405, "MethodNotAllowed", "use POST"),
    ("GET", "/api/v1/stop", None, 404, "NotFound", "POST /api/v1/start"),
    ("GET", "/api/v2/progress", None, 404, "NotFound", "GET /api/v1/progress"),
]

RUNNING_CASES = [
    ("POST", "/api/v1/start", VALID, 409, "InvalidState",
     "Currently in RUNNING state, needs to be in IDLE state"),
    ("POST", "/api/v1/resume", "{}", 409, "InvalidState",
     "Currently in RUNNING state, needs to be in PAUSED state"),
    ("POST", "/api/v1/reverse", "{}", 409, "InvalidState",
     "Currently in RUNNING state, needs to be in COMMITTED state"),
    ("POST", "/api/v1/commit", "{}", 409, "InvalidState", "canCommit is false"),
    ("POST", "/api/v1/start", '{"source": 0}', 400, "InvalidRequest", "must be one of"),
    ("POST", "/api/v1/pause", '{"": null}', 400, "InvalidRequest", "takes no parameters"),
]


def check_refused(process: Mongosync, case: tuple[Any, ...]) -> None:
    method, path, body, status, error, text = case
    response = process.request(method, path, body)
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"success", "error", "errorDescription"}, document
    assert document["success"] is False and document["error"] == error, document
    assert text in document["errorDescription"], document


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    with start_cluster() as source, start_cluster() as destination:
        seed(source, items=3000)
        yield source, destination


@pytest.fixture(scope="module")
def process(clusters: tuple[EmulatorProcess, EmulatorProcess],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mongosync]:
    source, destination = clusters
    started = Mongosync(["--cluster0", source.uri, "--cluster1", destination.uri, "--port", "0",
                         "--acceptDisclaimer"], cwd=tmp_path_factory.mktemp("api"))
    try:
        yield started.wait_listening().wait_ready()
    finally:
        started.close()


@pytest.mark.parametrize("case", IDLE_CASES,
                         ids=[f"{case[0]} {case[1]} {case[2]!r}"[:70] for case in IDLE_CASES])
def test_invalid_calls_in_idle_are_refused_and_change_nothing(
        process: Mongosync, clusters: tuple[EmulatorProcess, EmulatorProcess],
        case: tuple[Any, ...]) -> None:
    check_refused(process, case)
    assert process.progress()["state"] == "IDLE"
    with admin_client(clusters[1]) as client:
        assert METADATA_DATABASE not in client.list_database_names()


def test_concurrent_request_is_refused(process: Mongosync,
                                       clusters: tuple[EmulatorProcess, EmulatorProcess]) -> None:
    source, destination = clusters
    # The copy into bulk.items takes seconds, so the next test finds the migration copying.
    slow_down(destination, "insert", 1500, namespace="bulk.items")
    slow_down(source, "appendOplogNote", 1500)  # /start reads the source's time: it now lasts
    answers: list[tuple[int, dict]] = []
    first = threading.Thread(target=lambda: answers.append(process.post("start", START)))
    try:
        first.start()
        time.sleep(0.3)  # the /start is in flight
        for endpoint, body in (("pause", {}), ("start", START)):
            status, document = process.post(endpoint, body)
            assert status == 409, document
            assert document["success"] is False and document["error"] == "RequestInProgress"
            assert "A request is already in progress" in document["errorDescription"]
        first.join()
    finally:
        speed_up(source)
    assert answers == [(200, {"success": True})]
    assert process.progress()["state"] == "RUNNING"


def test_invalid_calls_while_running_are_refused_and_change_nothing(
        process: Mongosync, clusters: tuple[EmulatorProcess, EmulatorProcess]) -> None:
    destination = clusters[1]
    assert process.progress()["info"] == "collection copy", "canCommit must still be false"
    try:
        with admin_client(destination) as client:
            def stored() -> tuple[object, ...]:
                record = MetadataStore(client).load()
                assert record is not None
                return (record.global_state.request, record.resume.state,
                        record.global_state.migration_id)
            for case in RUNNING_CASES:
                before = stored()
                check_refused(process, case)
                assert process.progress()["state"] == "RUNNING"
                assert stored() == before
    finally:
        speed_up(destination)
    final = process.wait_for(lambda p: p["canCommit"], timeout=60, what="canCommit")
    assert final["state"] == "RUNNING"


def test_initializing_refuses_start(tmp_path: Path, tripwire: Tripwire) -> None:
    """Before the clusters answer, /progress says INITIALIZING and /start is refused."""
    other = Tripwire()
    process = Mongosync(["--cluster0", tripwire.uri, "--cluster1", other.uri, "--port", "0",
                         "--acceptDisclaimer"], cwd=tmp_path)
    try:
        process.wait_listening()
        progress = process.progress()
        assert progress["state"] == "INITIALIZING" and progress["canCommit"] is False
        assert all(value is None for key, value in progress.items()
                   if key not in ("state", "canCommit"))
        check_refused(process, ("POST", "/api/v1/start", VALID, 409, "InvalidState",
                                "Currently in INITIALIZING state, needs to be in IDLE state"))
        check_refused(process, ("POST", "/api/v1/start", "{", 400, "InvalidRequest",
                                "not valid JSON"))
        process.signal(signal.SIGTERM)
        assert process.wait_exit(10) == 0
    finally:
        process.close()
        other.close()
