"""Every reason the conformance runner does not judge something, with the written reason it prints.

The runner checks what the SERVER decides.  Spec tests also assert things the driver decides
(which commands it sends, client-side validation, connection pooling) or features declared out of
scope for the emulator; those are skipped here, always with one of the reasons below so the
report says why.  Two kinds exist:

* case skips: the whole test case is not run (``SKIP_REASONS``);
* unchecked assertions: the case runs and its outcome is checked, only one driver-side assertion
  (e.g. ``expectEvents``) is not evaluated; the report counts them (``UNCHECKED_REASONS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# --- case skips ----------------------------------------------------------------------------------
SKIP_REASONS: dict[str, str] = {
    "client-error": "isClientError: the expected error is raised by the driver itself "
                    "(argument validation or an unacknowledged write with options), not by the server",
    "timeout-error": "isTimeoutError/timeoutMS: client-side operation timeouts (CSOT) are driver behaviour",
    "search-indexes": "Atlas Search index operations are out of scope for the emulator",
    "csfle": "client-side field level encryption is out of scope for the emulator",
    "raw-data": "rawData (raw timeseries bucket access) is out of scope for the emulator",
    "snapshot-time": "getSnapshotTime/snapshotTime: PyMongo 4.20 has no API for a session's snapshot "
                     "time, so the driver cannot run this test",
    "driver-special-op": "the test asserts driver internals (connection pool, SDAM, threads, event counts) "
                         "through a testRunner operation that has no server-side meaning",
    "driver-event-entities": "storeEventsAsEntities records the driver's monitoring events, not server decisions",
    "runner-unsupported": "operation or entity type that this runner does not implement",
    "topology-single": "runOnRequirements: needs a standalone server ('single'); the emulator only runs "
                       "as a replica-set primary or a mongos",
    "topology-load-balanced": "runOnRequirements: load-balanced topology is out of scope for the emulator",
    "no-mongos": "runOnRequirements: needs a sharded cluster and no mongos emulator is available",
    "serverless": "runOnRequirements: serverless is out of scope for the emulator",
    "auth": "runOnRequirements: needs authentication enabled; the emulator runs without auth",
    "csfle-requirement": "runOnRequirements: needs client-side encryption support (out of scope)",
    "server-version": "runOnRequirements: server version {detail}",
    "server-parameters": "runOnRequirements: server parameters {detail} not set on the emulator",
    "test-skip-reason": "skipReason in the spec file: {detail}",
    "schema-version": "unsupported schemaVersion {detail} (runner supports 1.x)",
}

# --- assertions not evaluated while the case still runs ----------------------------------------
UNCHECKED_REASONS: dict[str, str] = {
    "expectEvents": "expectEvents: command-monitoring events are the driver's own behaviour "
                    "(operations ran and the outcome was checked; only the event list was not)",
    "expectLogMessages": "expectLogMessages: driver log messages are the driver's own behaviour",
}

# Collection operations on Atlas Search indexes.
SEARCH_INDEX_OPERATIONS = frozenset({
    "createSearchIndex", "createSearchIndexes", "dropSearchIndex", "listSearchIndexes", "updateSearchIndex",
})

# testRunner operations that only assert driver internals.
DRIVER_SPECIAL_OPERATIONS = frozenset({
    "assertNumberConnectionsCheckedOut", "waitForEvent", "assertEventCount", "recordTopologyDescription",
    "assertTopologyType", "waitForPrimaryChange", "runOnThread", "waitForThread", "loop",
})

_SUPPORTED_ENTITY_TYPES = frozenset({"client", "database", "collection", "session"})


def reason(key: str, detail: str = "") -> str:
    """The printed reason for a case skip."""
    return SKIP_REASONS[key].format(detail=detail)


def _operations(operations: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """All operations, including those nested in withTransaction callbacks."""
    for op in operations:
        yield op
        args = op.get("arguments") or {}
        if isinstance(args.get("callback"), list):
            yield from _operations(args["callback"])


def _entity_skip(entities: Iterable[Mapping[str, Any]]) -> str | None:
    for entity in entities:
        for entity_type, spec in entity.items():
            if entity_type == "clientEncryption" or "autoEncryptOpts" in spec:
                return reason("csfle")
            if entity_type not in _SUPPORTED_ENTITY_TYPES:
                return reason("runner-unsupported")
            if "storeEventsAsEntities" in spec:
                return reason("driver-event-entities")
            if "snapshotTime" in (spec.get("sessionOptions") or {}):
                return reason("snapshot-time")
    return None


def static_skip(file_spec: Mapping[str, Any], test: Mapping[str, Any], supported: frozenset[str]) -> str | None:
    """The reason a test case is not run at all, judged from the test file alone; None to run it.

    ``supported`` holds the entity operation names the runner implements.
    """
    if "skipReason" in test:
        return reason("test-skip-reason", str(test["skipReason"]))
    found = _entity_skip(file_spec.get("createEntities", []))
    if found:
        return found
    for op in _operations(test.get("operations", [])):
        name = op.get("name", "")
        args = op.get("arguments") or {}
        expect_error = op.get("expectError") or {}
        if op.get("object") == "testRunner":
            if name in DRIVER_SPECIAL_OPERATIONS:
                return reason("driver-special-op")
            if name == "createEntities":
                found = _entity_skip(args.get("entities", []))
                if found:
                    return found
            continue
        if name in SEARCH_INDEX_OPERATIONS:
            return reason("search-indexes")
        if name == "getSnapshotTime":
            return reason("snapshot-time")
        if "rawData" in args:
            return reason("raw-data")
        if expect_error.get("isClientError") is True:
            return reason("client-error")
        if "isTimeoutError" in expect_error or "timeoutMS" in args:
            return reason("timeout-error")
        if name not in supported:
            return reason("runner-unsupported")
    return None


def unchecked_assertions(test: Mapping[str, Any]) -> tuple[str, ...]:
    """Reasons for the driver-side assertions of a case that will not be evaluated."""
    return tuple(UNCHECKED_REASONS[key] for key in UNCHECKED_REASONS if test.get(key))
