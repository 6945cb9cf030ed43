"""The HTTP API of spec §3 (``/api/v1/...``) and ``GET /metrics`` in Prometheus text format.

Every answer is JSON in mongosync's envelope: ``{"success": true}`` (``/progress`` adds
``"progress"``), or ``{"success": false, "error": NAME, "errorDescription": TEXT}`` with a
4xx status for anything the caller can fix — wrong state, a concurrent request, a body that is
not a JSON object or holds unknown or mistyped fields — and 503 when a cluster does not answer.
Bodies are parsed here, whatever the Content-Type (``curl --data '{}'`` sends a form type), so
the checks are the same for every client. The OpenAPI description (``/openapi.json``) declares
the bodies and answers, which is what the fuzz test generates requests from.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.process_collector import ProcessCollector
from pymongo.errors import PyMongoError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from pymongosync import engine
from pymongosync.clusters import redact
from pymongosync.engine import Migration, empty_progress
from pymongosync.errors import MigrationError, UnsupportedCluster
from pymongosync.request import InvalidStartRequest, StartRequest

log = logging.getLogger("pymongosync.api")
# `*_created` timestamps double every counter's series for no use to a migration dashboard.
disable_created_metrics()

INITIALIZING = "INITIALIZING"
PREFIX = "/api/v1"
# The state each control endpoint needs (spec §3.2); the engine enforces it, this table only
# words the answer while no migration is loaded yet.
REQUIRED_STATE = {"start": engine.IDLE, "pause": engine.RUNNING, "resume": engine.PAUSED,
                  "commit": engine.RUNNING, "reverse": engine.COMMITTED}
STATES = [INITIALIZING, engine.IDLE, engine.RUNNING, engine.PAUSED, engine.COMMITTING,
          engine.COMMITTED, engine.REVERSING]
# mongosync's `mongosync_phase` enum names (spec §4.3) for the engine's phases.
PHASES = {engine.PHASE_COLLECTIONS: "InitializingCollectionsAndIndexes",
          engine.PHASE_PARTITIONS: "InitializingPartitions",
          engine.PHASE_COPY: "CollectionCopy", engine.PHASE_INDEXES: "BuildingIndexes",
          engine.PHASE_CEA: "ChangeEventApplication", engine.PHASE_COMMIT: "Commit",
          engine.PHASE_DONE: "CommitCompleted"}


class ApiError(Exception):
    """An answer other than success: HTTP status, error name and what to do about it."""

    def __init__(self, status: int, name: str, description: str) -> None:
        super().__init__(description)
        self.status, self.name, self.description = status, name, description


def error_response(status: int, name: str, description: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": name, "errorDescription": description},
                        status_code=status)


def as_api_error(exc: Exception) -> ApiError:
    """The one mapping from any failure to a status, an error name and a text."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidStartRequest):
        envelope = exc.to_envelope()
        return ApiError(400, envelope["error"], envelope["errorDescription"])
    if isinstance(exc, MigrationError):
        # Named migration errors say the request does not fit how things are now (wrong state,
        # a destination in use: 409), except that the clusters cannot do it at all (422).
        status = 422 if isinstance(exc, UnsupportedCluster) else 409
        return ApiError(status, exc.name, exc.message)
    if isinstance(exc, PyMongoError):
        return ApiError(503, "ClusterUnavailable",
                        f"a cluster did not answer ({redact(str(exc))}); check that both "
                        f"clusters are reachable, then retry")
    log.error("request failed", exc_info=exc)
    return ApiError(500, "InternalError",
                    f"unexpected {type(exc).__name__}; the log has the details. The migration "
                    f"state is unchanged unless GET {PREFIX}/progress says otherwise")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"field {key!r} is given twice")
        document[key] = value
    return document


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError saying what is wrong with it."""
    if not body.strip():
        raise ApiError(400, "InvalidRequest",
                       "the request has no body; send a JSON object, {} when the endpoint takes "
                       "no parameters (curl -XPOST --data '{}' ...)")
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                              parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "InvalidRequest", "the body is not UTF-8 text; send JSON") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "InvalidRequest",
                       f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(document, dict):
        raise ApiError(400, "InvalidRequest",
                       f"the body must be a JSON object, got {type(document).__name__} "
                       f"{json.dumps(document)[:80]}")
    return document


def expect_no_parameters(endpoint: str, document: dict[str, Any]) -> None:
    if document:
        names = ", ".join(repr(key) for key in document)
        raise ApiError(400, "InvalidRequest",
                       f"{names}: /{endpoint} takes no parameters; send {{}}")


class Service:
    """What the API serves: the migration once the process has loaded it (INITIALIZING until
    then), with one control request at a time."""

    def __init__(self, mongosync_id: str) -> None:
        self.migration: Migration | None = None
        self.mongosync_id = mongosync_id
        self._busy = threading.Lock()
        self.registry = CollectorRegistry()
        self.api_errors = Counter("mongosync_api_errors", "API calls answered with an error",
                                  ["endpoint", "error"], registry=self.registry)
        self.registry.register(MigrationCollector(self))
        ProcessCollector(registry=self.registry)

    @property
    def state(self) -> str:
        return INITIALIZING if self.migration is None else self.migration.state

    def progress(self) -> dict[str, Any]:
        if self.migration is None:
            return empty_progress(INITIALIZING)
        progress = self.migration.progress()
        if progress.get("mongosyncID") is not None:  # a lone instance is its own coordinator
            progress["mongosyncID"] = progress["coordinatorID"] = self.mongosync_id
        return progress

    def control(self, endpoint: str, body: bytes) -> None:
        """Run one control endpoint; raises ApiError or whatever the engine raised."""
        if not self._busy.acquire(blocking=False):
            raise ApiError(409, "RequestInProgress",
                           "A request is already in progress; wait for its answer, then check "
                           f"GET {PREFIX}/progress before sending another")
        try:
            document = parse_body(body)
            if endpoint == "start":
                request = StartRequest.from_document(document)
            else:
                expect_no_parameters(endpoint, document)
            migration = self.migration
            if migration is None:
                raise ApiError(409, "InvalidState",
                               f"Currently in {INITIALIZING} state, needs to be in "
                               f"{REQUIRED_STATE[endpoint]} state; mongosync is still "
                               f"connecting to the clusters: retry in a few seconds")
            before = migration.state
            if endpoint == "start":
                migration.start(request)
            else:
                getattr(migration, endpoint)()
            if migration.state != before:
                log.info("Transitioning the state", extra={"fields": {
                    "oldState": before, "newState": migration.state, "trigger": endpoint}})
        finally:
            self._busy.release()


class MigrationCollector:
    """Prometheus figures read from /progress at scrape time, so both always agree.

    Names follow mongosync's own metrics (spec §18.1) where it has one.
    """

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        progress = self.service.progress()
        details = progress.get("copyDetails") or {}
        yield StateSetMetricFamily("mongosync_state", "Migration state",
                                   {state: state == progress["state"] for state in STATES})
        yield StateSetMetricFamily("mongosync_phase", "Migration phase",
                                   {name: phase == details.get("phase")
                                    for phase, name in PHASES.items()})
        lag = progress.get("lagTimeSeconds")
        error = progress.get("error")
        figures = [
            ("mongosync_collection_copy_copied_docs_count", "Documents copied",
             details.get("copiedDocuments")),
            ("mongosync_collection_copy_estimated_docs_count", "Documents to copy (estimate)",
             details.get("estimatedDocuments")),
            ("mongosync_collection_copy_copied_bytes_count", "Bytes copied",
             (progress.get("collectionCopy") or {}).get("estimatedCopiedBytes")),
            ("mongosync_collection_copy_estimated_total_bytes", "Bytes to copy (estimate)",
             (progress.get("collectionCopy") or {}).get("estimatedTotalBytes")),
            ("mongosync_collection_copy_partitions_completed_count", "Partitions copied",
             details.get("partitionsDone")),
            ("mongosync_collection_copy_partitions_total", "Partitions planned",
             details.get("partitions")),
            ("mongosync_cea_total_events_applied", "Change events applied",
             progress.get("totalEventsApplied")),
            ("mongosync_lag_time",
             "Seconds between the last applied source event and the newest source operation",
             lag),
            ("mongosync_can_commit", "1 when /commit would be accepted", progress["canCommit"]),
            ("mongosync_can_write", "1 once the destination takes writes", progress["canWrite"]),
            ("mongosync_fatal_error", "1 when the migration stopped on a fatal error",
             error is not None),
        ]
        for name, documentation, value in figures:
            if value is not None:  # no sample rather than a made-up 0 (e.g. lag while paused)
                yield GaugeMetricFamily(name, documentation, value=float(value))


# -- OpenAPI: what the endpoints accept and answer ---------------------------------------------
_SUCCESS = {"type": "object", "required": ["success"], "additionalProperties": False,
            "properties": {"success": {"const": True}}}
_ERROR = {"type": "object", "required": ["success", "error", "errorDescription"],
          "additionalProperties": False,
          "properties": {"success": {"const": False}, "error": {"type": "string"},
                         "errorDescription": {"type": "string"}}}
_PROGRESS = {"type": "object", "required": ["success", "progress"],
             "properties": {"success": {"const": True},
                            "progress": {"type": "object",
                                         "required": ["state", "canCommit"],
                                         "properties": {"state": {"enum": STATES},
                                                        "canCommit": {"type": "boolean"}}}}}
_NO_PARAMETERS = {"type": "object", "maxProperties": 0, "additionalProperties": False}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error_answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {400: "Malformed body or invalid parameters", 404: "No such endpoint",
             405: "Wrong method", 409: "Wrong state, or another request in progress",
             422: "The clusters cannot run this migration", 503: "A cluster did not answer"}
    return {status: _json(_ERROR, texts[status]) for status in statuses}


def _start_body_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The /start body schema and the definitions it refers to (for components/schemas)."""
    schema = StartRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    properties = schema["properties"]
    # Accepted legacy spellings (spec §0.3) that the model normalises before validating.
    properties["lagTimeSeconds"] = {"type": ["number", "null"], "minimum": 0,
                                    "deprecated": True}
    properties["enableUserWriteBlocking"] = {
        "anyOf": [properties["enableUserWriteBlocking"], {"type": "boolean"}],
        "deprecated": True}
    return schema, definitions


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="pymongosync", summary="mongosync-compatible HTTP API",
                  version="1.22-compatible", docs_url=None, redoc_url=None)
    start_schema, definitions = _start_body_schema()

    async def control(endpoint: str, request: Request) -> Response:
        body = await request.body()
        log.info("Received request", extra={"fields": {
            "uri": request.url.path, "method": request.method,
            "body": body.decode("utf-8", "replace")}})
        try:
            await run_in_threadpool(service.control, endpoint, body)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an envelope
            return failure(endpoint, as_api_error(exc))
        return JSONResponse({"success": True})

    def failure(endpoint: str, error: ApiError) -> JSONResponse:
        service.api_errors.labels(endpoint, error.name).inc()
        log.info("sent error response", extra={"fields": {
            "endpoint": endpoint, "status": error.status, "error": error.name,
            "errorDescription": error.description}})
        return error_response(error.status, error.name, error.description)

    def add_control(endpoint: str, body_schema: dict[str, Any], summary: str) -> None:
        async def handler(request: Request) -> Response:
            return await control(endpoint, request)

        statuses = (400, 409, 503) if endpoint != "start" else (400, 409, 422, 503)
        app.add_api_route(
            f"{PREFIX}/{endpoint}", handler, methods=["POST"], summary=summary,
            name=endpoint, operation_id=endpoint, response_class=JSONResponse,
            responses={200: _json(_SUCCESS, "Done"), **_error_answers(*statuses)},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": body_schema}}}})

    add_control("start", start_schema, "Start a migration (IDLE → RUNNING)")
    add_control("pause", _NO_PARAMETERS, "Pause (RUNNING → PAUSED)")
    add_control("resume", _NO_PARAMETERS, "Resume (PAUSED → RUNNING)")
    add_control("commit", _NO_PARAMETERS, "Cut over (RUNNING → COMMITTING → COMMITTED)")
    add_control("reverse", _NO_PARAMETERS, "Reverse (COMMITTED → REVERSING → RUNNING)")

    @app.get(f"{PREFIX}/progress", operation_id="progress", response_class=JSONResponse,
             responses={200: _json(_PROGRESS, "The migration's progress (spec §3.4)"),
                        **_error_answers(503)})
    async def progress(request: Request) -> Response:
        log.debug("Received request", extra={"fields": {"uri": request.url.path}})
        try:
            document = await run_in_threadpool(service.progress)
        except Exception as exc:  # noqa: BLE001
            return failure("progress", as_api_error(exc))
        return JSONResponse({"progress": document, "success": True})

    @app.get("/metrics", operation_id="metrics", response_class=Response,
             responses={200: {"description": "Prometheus text format",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                        **_error_answers(503)})
    async def metrics() -> Response:
        try:
            text = await run_in_threadpool(generate_latest, service.registry)
        except Exception as exc:  # noqa: BLE001
            return failure("metrics", as_api_error(exc))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "another method")
            return error_response(405, "MethodNotAllowed",
                                  f"{request.url.path} does not take {request.method}; use "
                                  f"{allowed}")
        if exc.status_code == 404:
            return error_response(404, "NotFound",
                                  f"there is no {request.method} {request.url.path}; the API "
                                  f"serves POST {PREFIX}/start|pause|resume|commit|reverse, GET "
                                  f"{PREFIX}/progress and GET /metrics")
        return error_response(exc.status_code, "InvalidRequest", str(exc.detail))

    original_openapi: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        document = original_openapi()
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app
