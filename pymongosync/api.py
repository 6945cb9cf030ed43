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
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from pymongo.errors import PyMongoError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from pymongosync import retry
from pymongosync.clusters import redact
from pymongosync.dashboard import PAGE
from pymongosync.durations import OperationDurations, OperationKind
from pymongosync.logs import MAX_VALUE_CHARS
from pymongosync.errors import (
    ClusterUnavailable,
    InvalidStartRequest,
    MigrationError,
    PymongosyncError,
    UnsupportedCluster,
)
from pymongosync.migration import Migration
from pymongosync.progress import empty_progress
from pymongosync.request import StartRequest
from pymongosync.state import MigrationState, Phase

log = logging.getLogger("pymongosync.api")
# `*_created` timestamps double every counter's series for no use to a migration dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client has no hint

INITIALIZING = "INITIALIZING"
MAX_BODY_BYTES = 1024 * 1024
# Time limits of control requests: /start and /reverse read and prepare both clusters.
START_SECONDS = 120.0
CONTROL_SECONDS = 20.0
PREFIX = "/api/v1"
# The state each control endpoint needs (spec §3.2); the engine enforces it, this table only
# words the answer while no migration is loaded yet.
REQUIRED_STATE = {"start": MigrationState.IDLE, "pause": MigrationState.RUNNING,
                  "resume": MigrationState.PAUSED, "commit": MigrationState.RUNNING,
                  "reverse": MigrationState.COMMITTED}
STATES = [INITIALIZING, *(state.value for state in MigrationState)]


class ApiError(PymongosyncError):
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
        status = 422 if isinstance(exc, UnsupportedCluster) else \
            503 if isinstance(exc, ClusterUnavailable) else 409
        return ApiError(status, exc.error_name, exc.message)
    if isinstance(exc, PyMongoError):
        # Within the API's time limits, a timeout means a cluster did not answer in time.
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


def _finite_float(text: str) -> float:
    """JSON numbers beyond a double's range (1e400) would become infinity: refuse them."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a number")
    return value


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError saying what is wrong with it."""
    if not body.strip():
        raise ApiError(400, "InvalidRequest",
                       "the request has no body; send a JSON object, {} when the endpoint takes "
                       "no parameters (curl -XPOST --data '{}' ...)")
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                              parse_constant=_reject_constant, parse_float=_finite_float)
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


async def read_body(request: Request) -> bytes:
    """The body, read up to :data:`MAX_BODY_BYTES`: a larger one is refused before it is
    held in memory (a /start body is a few kilobytes at most)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> ApiError:
    return ApiError(413, "RequestTooLarge",
                    f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB; a /start "
                    f"body is a JSON object of a few kilobytes")


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
        # A lone instance is its own coordinator.
        return self.migration.progress(self.mongosync_id)

    def control(self, endpoint: str, body: bytes) -> None:
        """Run one control endpoint; raises ApiError or whatever the engine raised."""
        if not self._busy.acquire(blocking=False):
            raise ApiError(409, "RequestInProgress",
                           "A request is already in progress; wait for its answer, then check "
                           f"GET {PREFIX}/progress before sending another")
        try:
            document = parse_body(body)
            request = StartRequest.from_document(document) if endpoint == "start" else None
            if request is None:
                expect_no_parameters(endpoint, document)
            migration = self.migration
            if migration is None:
                raise ApiError(409, "InvalidState",
                               f"Currently in {INITIALIZING} state, needs to be in "
                               f"{REQUIRED_STATE[endpoint].value} state; mongosync is still "
                               f"connecting to the clusters: retry in a few seconds")
            before = migration.state
            # An answer in bounded time, whatever the clusters do: a cluster that does not
            # answer makes the request fail with 503 instead of hanging.
            with retry.bounded(START_SECONDS if endpoint in ("start", "reverse")
                               else CONTROL_SECONDS):
                if request is not None:
                    migration.start(request)
                else:
                    getattr(migration, endpoint)()
            if migration.state != before:
                log.info("Transitioning the state", extra={"fields": {
                    "oldState": before, "newState": migration.state, "trigger": endpoint}})
        finally:
            self._busy.release()


# Copy progress per namespace (/progress copyDetails.namespaces): series, help, field.
NAMESPACE_FIGURES = (
    ("mongosync_collection_copy_namespace_copied_docs_count", "Documents copied",
     "copiedDocuments"),
    ("mongosync_collection_copy_namespace_estimated_docs_count", "Documents to copy (estimate)",
     "estimatedDocuments"),
    ("mongosync_collection_copy_namespace_copied_bytes_count", "Bytes copied", "copiedBytes"),
    ("mongosync_collection_copy_namespace_estimated_total_bytes", "Bytes to copy (estimate)",
     "estimatedBytes"),
    ("mongosync_collection_copy_namespace_partitions_completed_count", "Partitions copied",
     "partitionsDone"),
    ("mongosync_collection_copy_namespace_partitions_total", "Partitions planned", "partitions"),
)
# The fields of /progress that mongosync itself answers (spec §3.4): what the ``sent response``
# log line carries. pymongosync's additions (copyDetails...) and the warnings' long texts are
# left out, so the line stays under the 1,024 characters a logged value may have.
MONGOSYNC_PROGRESS_FIELDS = (
    "state", "canCommit", "canWrite", "info", "ceaStage", "lag", "lagTimeSeconds",
    "totalEventsApplied", "collectionCopy", "indexBuilding", "directionMapping", "source",
    "destination", "estimatedOplogTimeRemaining", "estimatedSecondsToCEACatchup", "mongosyncID",
    "coordinatorID", "verification")


def logged_progress(document: dict[str, Any]) -> str:
    """The body of the ``sent response`` line of a /progress answer, as mongosync logs it
    (spec §17): MongoDB's tooling reads the copy figures from it, so it must stay JSON — under
    the 1,024 characters past which a logged value is cut. The verifier's figures, the longest
    part, give way first."""
    answered = {key: document[key] for key in MONGOSYNC_PROGRESS_FIELDS if key in document}
    for drop in ((), ("verification",), ("verification", "indexBuilding", "lag")):
        kept = {key: value for key, value in answered.items() if key not in drop}
        body = json.dumps({"progress": kept, "success": True}, separators=(",", ":"),
                          default=str)
        if len(body) <= MAX_VALUE_CHARS:
            break
    return body


def namespace_families(namespaces: list[dict[str, Any]]) -> Iterator[Metric]:
    """One labelled series per namespace for each figure of :data:`NAMESPACE_FIGURES`."""
    if not namespaces:
        return
    for name, documentation, key in NAMESPACE_FIGURES:
        family = GaugeMetricFamily(name, f"{documentation}, per namespace",
                                   labels=["namespace"])
        for entry in namespaces:
            family.add_metric([entry["namespace"]], float(entry[key]))
        yield family


def duration_families(durations: OperationDurations) -> Iterator[Metric]:
    """One histogram per kind of operation, as mongosync names them (seconds)."""
    for kind in OperationKind:
        histogram = durations.histogram(kind)
        yield HistogramMetricFamily(kind.metric, f"Seconds {kind.one} took",
                                    buckets=histogram.cumulative(), sum_value=histogram.total)


class MigrationCollector:
    """Prometheus figures read from /progress at scrape time, so both always agree.

    Names follow mongosync's own metrics (spec §18.1) where it has one.
    """

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        progress = self.service.progress()
        details = progress.get("copyDetails") or {}
        migration = self.service.migration
        current = None if migration is None else migration.phase
        yield StateSetMetricFamily("mongosync_state", "Migration state",
                                   {state: state == progress["state"] for state in STATES})
        # mongosync's `mongosync_phase` enum names (spec §4.3) are the phases' identifiers.
        yield StateSetMetricFamily("mongosync_phase", "Migration phase",
                                   {phase.value: phase == current for phase in Phase})
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
            ("mongosync_cea_total_hot_doc_crud_events_skipped",
             "CRUD events of hot documents (--hotDocIDs) skipped; each is taken from the source "
             "at commit",
             None if migration is None or migration.context is None
             else migration.context.counters.hot_events_skipped),
            ("mongosync_lag_time",
             "Seconds between the last applied source event and the newest source operation",
             lag),
            ("mongosync_can_commit", "1 when /commit would be accepted", progress["canCommit"]),
            ("mongosync_can_write", "1 once the destination takes writes", progress["canWrite"]),
            ("mongosync_fatal_error", "1 when the migration stopped on a fatal error",
             error is not None),
        ]
        verification = progress.get("verification") or {}
        checks = progress.get("verificationDetails") or {}
        buffer = progress.get("changeBuffer") or {}
        building = progress.get("indexBuilding") or {}
        figures += [
            ("mongosync_change_buffer_bytes", "Bytes of source changes the buffer holds",
             buffer.get("bytes")),
            ("mongosync_change_buffer_limit_bytes", "The change buffer's limit",
             buffer.get("limitBytes")),
            ("mongosync_change_buffer_events", "Source change events the buffer holds",
             buffer.get("events")),
            ("mongosync_change_buffer_lag_time",
             "Seconds between the newest source operation and what the buffer has stored",
             buffer.get("lagSeconds")),
            ("mongosync_oplog_time_remaining_seconds",
             "Seconds of source oplog left before what the migration needs rolls over",
             progress.get("oplogTimeRemainingSeconds")),
            ("mongosync_index_building_indexes_built", "Indexes built beside change application",
             building.get("indexesBuilt")),
            ("mongosync_index_building_indexes_total", "Indexes to build",
             building.get("totalIndexesToBuild")),
            ("mongosync_verifier_rechecks_pending",
             "Documents changed since they were hashed, waiting to be compared again",
             checks.get("pendingRechecks")),
            ("mongosync_verifier_rechecked_docs_count", "Documents compared again",
             checks.get("recheckedDocuments")),
            ("mongosync_verifier_mismatches_count", "Mismatches the verifier found",
             checks.get("mismatches")),
            ("mongosync_verifier_repaired_docs_count",
             "Documents `mongosync repair` took from the source after a failed verification",
             checks.get("repairedDocuments")),
        ]
        lag_parts = progress.get("lag") or {}
        figures += [
            ("mongosync_crud_lag_time",
             "Seconds between the last applied CRUD change and the newest source operation",
             lag_parts.get("crudLagSeconds")),
            ("mongosync_ddl_lag_time",
             "Seconds between the last applied DDL change and the newest source operation",
             lag_parts.get("ddlLagSeconds")),
            ("mongosync_estimated_seconds_to_cea_catchup",
             "Seconds until change event application catches up, at the pace lag fell lately",
             progress.get("estimatedSecondsToCEACatchup")),
            # Gauges of the last ping (mongosync's mongosync_src/dst_ping_latency are
            # histograms of every ping: other names, so that no query mistakes one for the other).
            ("mongosync_source_ping_latency_ms", "Milliseconds of the last ping of the source "
             "(-1: it failed)", (progress.get("source") or {}).get("pingLatencyMs")),
            ("mongosync_destination_ping_latency_ms", "Milliseconds of the last ping of the "
             "destination (-1: it failed)",
             (progress.get("destination") or {}).get("pingLatencyMs")),
        ]
        for name, documentation, value in figures:
            if value is not None:  # no sample rather than a made-up 0 (e.g. lag while paused)
                yield GaugeMetricFamily(name, documentation, value=float(value))
        yield from namespace_families(details.get("namespaces") or [])
        if migration is not None and migration.context is not None:
            yield from duration_families(migration.context.counters.durations)
        if verification:
            hashed = GaugeMetricFamily("mongosync_verifier_hashed_docs_count",
                                       "Documents hashed by the verifier", labels=["side"])
            lag = GaugeMetricFamily("mongosync_verifier_lag_time",
                                    "Seconds the verifier is behind a cluster", labels=["side"])
            for side in ("source", "destination"):
                figures_of_side = verification.get(side) or {}
                hashed.add_metric([side], float(figures_of_side.get("hashedDocumentCount", 0)))
                if figures_of_side.get("lagTimeSeconds") is not None:
                    lag.add_metric([side], float(figures_of_side["lagTimeSeconds"]))
            yield hashed
            yield lag


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
             413: "The body is too large",
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
        try:
            body = await read_body(request)
        except ApiError as exc:
            return failure(endpoint, exc)
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

        statuses = (400, 409, 413, 503) if endpoint != "start" else (400, 409, 413, 422, 503)
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
        log.debug("sent response", extra={"fields": {"uri": request.url.path,
                                                     "body": logged_progress(document)}})
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

    @app.get("/", operation_id="dashboard", response_class=HTMLResponse,
             summary="The operator's dashboard (HTML; polls /api/v1/progress)",
             responses={200: {"description": "The dashboard page",
                              "content": {"text/html": {"schema": {"type": "string"}}}}})
    async def dashboard() -> Response:
        return HTMLResponse(PAGE)

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
                                  f"{PREFIX}/progress, GET /metrics and the dashboard at GET /")
        return error_response(exc.status_code, "InvalidRequest", str(exc.detail))

    original_openapi: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        document = original_openapi()
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app
