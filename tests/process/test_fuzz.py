"""Fuzzing the running process's HTTP API from its own OpenAPI description (schemathesis).

For every operation, hypothesis generates requests that follow the schema (positive) and
requests that break it (negative), and each answer must be one the description declares —
never a 5xx — in mongosync's envelope; a schema-breaking request must get a 4xx. Valid /start
bodies really start migrations, so later cases meet RUNNING, COMMITTED and so on.
"""

from __future__ import annotations

import collections
from pathlib import Path

import hypothesis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from mongoemu.testing import EmulatorProcess

from .processkit import START, Mongosync, seed

EXAMPLES_PER_OPERATION_AND_MODE = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_api_fuzz(source: EmulatorProcess, destination: EmulatorProcess,
                  tmp_path: Path) -> None:
    seed(source, items=200)
    process = Mongosync(["--cluster0", source.uri, "--cluster1", destination.uri, "--port", "0",
                         "--acceptDisclaimer", "--verbosity", "INFO"], cwd=tmp_path)
    try:
        process.wait_listening().wait_ready()
        schema = schemathesis.openapi.from_url(f"{process.url}/openapi.json")
        counts: collections.Counter[str] = collections.Counter()
        statuses: collections.Counter[int] = collections.Counter()
        # Two rounds: every operation against an IDLE process, then against a running
        # migration (started here unless a fuzzed /start already did it).
        for round_state in ("IDLE", "RUNNING"):
            if round_state == "RUNNING" and process.progress()["state"] == "IDLE":
                assert process.post("start", START) == (200, {"success": True})
            for result in schema.get_all_operations():
                assert isinstance(result, Ok), result  # the description itself is valid
                fuzz(process, result.ok(), round_state, counts, statuses)
        total = sum(counts.values())
        print(f"\nAPI fuzz: {total} requests over {len(counts)} operation/mode/state "
              f"combinations; statuses {dict(sorted(statuses.items()))}")
        for label, count in sorted(counts.items()):
            print(f"  {label}: {count}")
        assert total > 600
        assert process.process.poll() is None, process.output()
        assert process.progress()["state"] in ("IDLE", "RUNNING", "PAUSED", "COMMITTING",
                                               "COMMITTED", "REVERSING")
        assert not any("Got a fatal error" in line.get("message", "") for line in process.log())
    finally:
        process.close()


def fuzz(process: Mongosync, operation: APIOperation, state: str,
         counts: collections.Counter[str], statuses: collections.Counter[int]) -> None:
    """Run generated cases against one operation, positive and (for bodies) negative."""
    fuzz_mode(process, operation, GenerationMode.POSITIVE, state, counts, statuses)
    if operation.method.upper() == "POST":  # GET operations take no input to negate
        fuzz_mode(process, operation, GenerationMode.NEGATIVE, state, counts, statuses)


def fuzz_mode(process: Mongosync, operation: APIOperation, mode: GenerationMode, state: str,
              counts: collections.Counter[str], statuses: collections.Counter[int]) -> None:
    label = f"{operation.label} {mode.value} in {state}"

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
              derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=process.url)
        counts[label] += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if operation.label in ("GET /metrics", "GET /"):  # Prometheus text, the HTML dashboard
            return
        document = response.json()
        if not document["success"]:
            assert 400 <= response.status_code < 500, response.text
            assert document["errorDescription"], document
        if case.meta is not None and case.meta.generation.mode.is_negative:
            assert 400 <= response.status_code < 500, (case.body, response.text)

    run()
