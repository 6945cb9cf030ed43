"""Unified-format spec test runner that judges the server through PyMongo's real API.

Each test case runs in a worker thread with a wall-clock limit so a hang in the server can never
hang the runner; every client it creates carries socket and server-selection timeouts for the same
reason.  Results are collected into a :class:`Report` (per suite: passed / skipped with grouped
reasons / failed with a one-line reason).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from bson import SON, json_util
from bson.json_util import JSONOptions
from gridfs import GridFSBucket
from pymongo import MongoClient, ReturnDocument, monitoring
from pymongo import common as pymongo_common
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.client_session_shared import TransactionOptions
from pymongo.collection import Collection
from pymongo.command_cursor import CommandCursor
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
)
from pymongo.operations import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    SearchIndexModel,
    UpdateMany,
    UpdateOne,
)
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import Nearest, Primary, PrimaryPreferred, Secondary, SecondaryPreferred
from pymongo.results import (
    BulkWriteResult,
    ClientBulkWriteResult,
    DeleteResult,
    InsertManyResult,
    InsertOneResult,
    UpdateResult,
)
from pymongo.server_api import ServerApi
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from mongoemu.spectest import skips
from mongoemu.spectest.matching import MatchError, exact_diff, match, match_documents, short

TEST_TIMEOUT_S = 30.0  # wall clock per test case; past it the case fails and its clients are closed
ITERATE_TIMEOUT_S = 10.0  # how long iterateUntilDocumentOrError waits for a change event
HEALTH_TIMEOUT_S = 5.0
# Root user of the emulator the runner starts with --auth for cases that require authentication.
AUTH_USER, AUTH_PASSWORD = "spectest", "spectest-password"
MAX_SCHEMA_MAJOR = 1

# Applied to every client the runner creates (test files may override them in uriOptions):
# bounded waits so that a dead or stuck server turns into an error instead of a hang.
CLIENT_TIMEOUTS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 10000,
    # Polling finds a server again within MIN_HEARTBEAT_INTERVAL (see _quick_rediscovery) after a
    # fail point closed a connection; PyMongo's streaming monitor notices its cancelled check only
    # at its next 0.5 s poll of the socket, which made that wait most of some suites' time.
    "serverMonitoringMode": "poll",
    "heartbeatFrequencyMS": 500,  # PyMongo's minimum; speeds up recovery after fail points close sockets
}
# How soon a client looks for a server again after a fail point closed its connection (see
# _quick_rediscovery).
QUICK_REDISCOVERY_SECONDS = 0.05

# Results of these operations are iterated cursors: each element is matched as a root-level document.
_CURSOR_RESULT_OPERATIONS = frozenset({
    "find", "aggregate", "listCollections", "listDatabases", "listIndexes",
})

# Code names the spec files use with errorCodeName, for server replies that carry a code but no
# codeName (the spec allows comparing by number then).
_CODE_NUMBERS: dict[str, int] = {
    "ChangeStreamFatalError": 280, "Interrupted": 11601, "NoSuchTransaction": 251,
    "OperationNotSupportedInTransaction": 263, "WriteConflict": 112, "DuplicateKey": 11000,
    "NamespaceNotFound": 26, "NamespaceExists": 48, "TransactionCommitted": 256,
    "UnknownReplWriteConcern": 79, "UnsatisfiableWriteConcern": 100, "InvalidOptions": 72,
    "IndexNotFound": 27, "MaxTimeMSExpired": 50, "FailedToParse": 9, "BadValue": 2,
}

_JSON_OPTIONS = JSONOptions(tz_aware=False)
_DATABASES_NEVER_DROPPED = frozenset({"admin", "config", "local"})


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """The verdict on one test case."""

    suite: str
    file: str
    description: str
    status: str  # "passed" | "skipped" | "failed"
    reason: str = ""
    unchecked: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.file} :: {self.description}"


def _pass_rate(passed: int, failed: int) -> float | None:
    ran = passed + failed
    return None if ran == 0 else 100.0 * passed / ran


def _format_rate(rate: float | None) -> str:
    return "n/a (nothing ran)" if rate is None else f"{rate:.1f}%"


@dataclass
class SuiteReport:
    """All case results of one suite (one directory of spec files)."""

    name: str
    path: str
    cases: list[CaseResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for case in self.cases if case.status == status)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def pass_rate(self) -> float | None:
        """Percentage of non-skipped cases that passed (None when every case was skipped)."""
        return _pass_rate(self.passed, self.failed)

    def skip_reasons(self) -> Counter[str]:
        return Counter(case.reason for case in self.cases if case.status == "skipped")

    def unchecked(self) -> Counter[str]:
        return Counter(r for case in self.cases if case.status != "skipped" for r in case.unchecked)

    def summary_line(self) -> str:
        return (f"{self.name}: {len(self.cases)} cases: passed {self.passed} / skipped {self.skipped} / "
                f"failed {self.failed}; pass rate of non-skipped {_format_rate(self.pass_rate)}")

    def format(self, verbose: bool = False) -> str:
        lines = [f"== {self.summary_line()}"]
        if self.skipped:
            lines.append("   skipped:")
            lines += [f"     {n:4d}  {why}" for why, n in self.skip_reasons().most_common()]
        unchecked = self.unchecked()
        if unchecked:
            lines.append("   assertions not checked in cases that ran:")
            lines += [f"     {n:4d}  {why}" for why, n in unchecked.most_common()]
        failures = [case for case in self.cases if case.status == "failed"]
        if failures:
            lines.append("   failed:")
            lines += [f"     {case.name} -- {case.reason}" for case in failures]
        passed = [case for case in self.cases if case.status == "passed"]
        if verbose and passed:
            lines.append("   passed:")
            lines += [f"     {case.name} ({case.seconds:.2f}s)" for case in passed]
        return "\n".join(lines)


@dataclass
class Report:
    """Results of a whole run, one SuiteReport per directory."""

    suites: list[SuiteReport] = field(default_factory=list)

    def suite(self, name: str) -> SuiteReport:
        for suite in self.suites:
            if suite.name == name:
                return suite
        raise KeyError(name)

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.suites)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.suites)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.suites)

    @property
    def pass_rate(self) -> float | None:
        return _pass_rate(self.passed, self.failed)

    def format(self, verbose: bool = False) -> str:
        parts = [suite.format(verbose) for suite in self.suites]
        total = self.passed + self.skipped + self.failed
        parts.append(f"TOTAL: {total} cases: passed {self.passed} / skipped {self.skipped} / failed "
                     f"{self.failed}; pass rate of non-skipped {_format_rate(self.pass_rate)}")
        return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Errors raised while running a case
# ------------------------------------------------------------------------------------------------
class CaseFailure(AssertionError):
    """An expectation of the test was not met (the server, or the runner's mapping, is wrong)."""


class RunnerError(Exception):
    """The runner cannot execute what the test file asks (a gap in the runner, not the server)."""


class SkipCase(Exception):
    """Decided while running that the case cannot be judged; the message is the skip reason."""


# ------------------------------------------------------------------------------------------------
# Deployments: where tests run
# ------------------------------------------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...]:
    numbers = [int(part) for part in re.findall(r"\d+", text)[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


class Deployment:
    """One server the runner talks to (replica-set primary or mongos) and the facts about it."""

    def __init__(self, kind: str, uri: str, version_hint: str) -> None:
        self.kind = kind
        self.uri = uri
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, **CLIENT_TIMEOUTS)
        self.auth = bool(parse_uri(uri).get("username"))
        self.version = self._detect_version(version_hint)
        self._parameters: dict[str, Any] | None = None

    def _detect_version(self, hint: str) -> tuple[int, ...]:
        """The version the server reports (buildInfo), else the configured one."""
        try:
            info = self.client.admin.command("buildInfo")
            return _version_tuple(str(info["version"]))
        except (PyMongoError, KeyError):
            return _version_tuple(hint)

    def parameters(self) -> dict[str, Any]:
        if self._parameters is None:
            try:
                self._parameters = dict(self.client.admin.command({"getParameter": "*"}))
            except PyMongoError:
                self._parameters = {}
        return self._parameters

    def healthy(self) -> bool:
        try:
            with pymongo.timeout(HEALTH_TIMEOUT_S):
                self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    def close(self) -> None:
        self.client.close()


class Deployments:
    """The replica set and (optionally) mongos to run against; starts emulators when none are given.

    Cases that require authentication ("auth": true) run on a third emulator, a replica set with
    --auth whose URI carries the root user's credentials; the runner starts it only when it
    owns the emulators and such a case comes up.
    """

    KINDS = ("replicaset", "sharded", "replicaset-auth")

    def __init__(self, uri: str | None, sharded_uri: str | None, server_version: str,
                 auth_uri: str | None = None, cluster_shards: int | None = None) -> None:
        self.server_version = server_version
        # With a shard count, every case runs through the router of a cluster of that many
        # shards (python -m mongoemu cluster); without, only cases needing a sharded topology
        # do, on a 2-shard cluster.
        self.cluster_shards = cluster_shards
        self._uris: dict[str, str | None] = {"replicaset": uri, "sharded": sharded_uri,
                                             "replicaset-auth": auth_uri}
        # The runner owns (starts and may restart) an emulator only when the user gave no URI at all.
        self._owned = {"replicaset": uri is None, "sharded": uri is None and sharded_uri is None,
                       "replicaset-auth": uri is None and sharded_uri is None and auth_uri is None}
        self._processes: dict[str, contextlib.ExitStack] = {}
        self._live: dict[str, Deployment] = {}
        self._start_errors: dict[str, str] = {}

    def available(self, kind: str) -> bool:
        return kind not in self._start_errors and (self._owned[kind] or self._uris[kind] is not None)

    def version_hint(self) -> tuple[int, ...]:
        live = self._live.get("replicaset") or self._live.get("sharded")
        return live.version if live else _version_tuple(self.server_version)

    def live(self, kind: str) -> Deployment | None:
        """The deployment if it is already connected (nothing is started)."""
        return self._live.get(kind)

    def get(self, kind: str) -> Deployment:
        if kind not in self._live:
            uri = self._uris[kind]
            if uri is None:
                uri = self._start(kind)
            self._live[kind] = Deployment(kind, uri, self.server_version)
        return self._live[kind]

    def _start(self, kind: str) -> str:
        try:
            from mongoemu.testing import start_cluster, start_emulator
            stack = contextlib.ExitStack()
            extra = (["--auth", "--user", AUTH_USER, "--password", AUTH_PASSWORD]
                     if kind == "replicaset-auth" else [])
            if kind == "sharded" or (kind == "replicaset-auth" and self.cluster_shards):
                # Through a cluster, authentication cases get a router with --auth.
                process = stack.enter_context(start_cluster(
                    shards=self.cluster_shards or 2, server_version=self.server_version,
                    extra_args=extra))
            else:
                process = stack.enter_context(start_emulator(
                    mode="replset", server_version=self.server_version, extra_args=extra))
        except Exception as exc:
            self._start_errors[kind] = f"{type(exc).__name__}: {exc}"
            raise RunnerError(f"could not start the {kind} emulator: {exc}") from exc
        self._processes[kind] = stack
        if kind == "replicaset-auth":
            return str(process.uri).replace("mongodb://", f"mongodb://{AUTH_USER}:{AUTH_PASSWORD}@", 1)
        return str(process.uri)

    def restart(self, kind: str) -> bool:
        """Replace a hung or dead emulator the runner owns; False when it cannot."""
        if not self._owned[kind] or kind not in self._processes:
            return False
        self._stop(kind)
        try:
            self.get(kind)
        except RunnerError:
            return False
        return True

    def start_error(self, kind: str) -> str | None:
        return self._start_errors.get(kind)

    def _stop(self, kind: str) -> None:
        live = self._live.pop(kind, None)
        if live:
            live.close()
        stack = self._processes.pop(kind, None)
        if stack:
            stack.close()

    def close(self) -> None:
        for kind in list(self._live) + list(self._processes):
            self._stop(kind)


# ------------------------------------------------------------------------------------------------
# runOnRequirements
# ------------------------------------------------------------------------------------------------
def _requirement_unmet(req: Mapping[str, Any], kind: str, version: tuple[int, ...], auth: bool,
                       parameters: Callable[[], dict[str, Any]]) -> tuple[str, str] | None:
    """(reason key, printed reason) when one runOnRequirement is not met on this deployment."""
    topologies = req.get("topologies")
    if topologies:
        ours = {"replicaset": {"replicaset"}, "sharded": {"sharded", "sharded-replicaset"}}[kind]
        if not ours & set(topologies):
            if set(topologies) <= {"single"}:
                return "topology-single", skips.reason("topology-single")
            if set(topologies) <= {"load-balanced"}:
                return "topology-load-balanced", skips.reason("topology-load-balanced")
            if set(topologies) <= {"single", "load-balanced"}:
                return "topology-single", skips.reason("topology-single")
            return "topology-other", skips.reason("topology-other", str(topologies))
    shown = ".".join(map(str, version))
    if "minServerVersion" in req and version < _version_tuple(req["minServerVersion"]):
        return "server-version", skips.reason("server-version", f"needs server version >= "
                                                                 f"{req['minServerVersion']}, emulator reports {shown}")
    if "maxServerVersion" in req and version > _version_tuple(req["maxServerVersion"]):
        # One group for all tests written for older servers: their exact bounds do not matter.
        return "server-version", skips.reason("server-version", f"written for older servers "
                                                                 f"(maxServerVersion below {shown})")
    if req.get("serverless") == "require":
        return "serverless", skips.reason("serverless")
    if "auth" in req and bool(req["auth"]) != auth:
        return ("auth", skips.reason("auth")) if req["auth"] else ("no-auth", skips.reason("no-auth"))
    if req.get("csfle"):
        return "csfle-requirement", skips.reason("csfle-requirement")
    wanted = req.get("serverParameters") or {}
    if wanted:
        actual = parameters()
        if any(actual.get(name) != value for name, value in wanted.items()):
            return "server-parameters", skips.reason("server-parameters", short(wanted))
    return None


def _requirements_unmet(reqs: list[Mapping[str, Any]] | None, kind: str, version: tuple[int, ...], auth: bool,
                        parameters: Callable[[], dict[str, Any]]) -> tuple[str, str] | None:
    """Unmet when no alternative is met; the first alternative's reason is reported."""
    if not reqs:
        return None
    reasons = [_requirement_unmet(req, kind, version, auth, parameters) for req in reqs]
    return None if any(r is None for r in reasons) else reasons[0]


# ------------------------------------------------------------------------------------------------
# Conversions from spec-file values to PyMongo objects and back
# ------------------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    """camelCase spec argument name to PyMongo's snake_case (maxTimeMS -> max_time_ms)."""
    name = re.sub(r"MS$", "Ms", name)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def read_concern(spec: Mapping[str, Any]) -> ReadConcern:
    return ReadConcern(spec.get("level"))


def write_concern(spec: Mapping[str, Any]) -> WriteConcern:
    return WriteConcern(w=spec.get("w"), wtimeout=spec.get("wtimeoutMS"),
                        j=spec.get("journal", spec.get("j")))


def read_preference(spec: Mapping[str, Any] | str) -> Any:
    if isinstance(spec, str):
        spec = {"mode": spec}
    mode = spec["mode"].lower()
    if mode == "primary":
        return Primary()
    kinds = {"primarypreferred": PrimaryPreferred, "secondary": Secondary,
             "secondarypreferred": SecondaryPreferred, "nearest": Nearest}
    return kinds[mode](tag_sets=spec.get("tagSets"), max_staleness=spec.get("maxStalenessSeconds", -1))


def _codec_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """databaseOptions / collectionOptions to get_database / get_collection keyword arguments."""
    options: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "readConcern":
            options["read_concern"] = read_concern(value)
        elif key == "writeConcern":
            options["write_concern"] = write_concern(value)
        elif key == "readPreference":
            options["read_preference"] = read_preference(value)
        else:
            raise RunnerError(f"unsupported entity option {key}")
    return options


def _update_result(result: UpdateResult) -> dict[str, Any]:
    doc: dict[str, Any] = {"matchedCount": result.matched_count, "modifiedCount": result.modified_count,
                           "upsertedCount": 1 if result.did_upsert else 0}
    if result.did_upsert:
        doc["upsertedId"] = result.upserted_id
    return doc


def _bulk_result(result: BulkWriteResult) -> dict[str, Any]:
    return {"deletedCount": result.deleted_count, "insertedCount": result.inserted_count,
            "matchedCount": result.matched_count, "modifiedCount": result.modified_count,
            "upsertedCount": result.upserted_count,
            "upsertedIds": {str(index): _id for index, _id in (result.upserted_ids or {}).items()}}


def _client_bulk_result(result: ClientBulkWriteResult) -> dict[str, Any]:
    doc: dict[str, Any] = {"deletedCount": result.deleted_count, "insertedCount": result.inserted_count,
                           "matchedCount": result.matched_count, "modifiedCount": result.modified_count,
                           "upsertedCount": result.upserted_count}
    if result.has_verbose_results:
        doc["insertResults"] = {str(i): {"insertedId": r.inserted_id} for i, r in result.insert_results.items()}
        doc["updateResults"] = {str(i): _update_result(r) for i, r in result.update_results.items()}
        for update in doc["updateResults"].values():
            update.pop("upsertedCount")
        doc["deleteResults"] = {str(i): {"deletedCount": r.deleted_count} for i, r in result.delete_results.items()}
    return doc


def coerce_result(result: Any) -> Any:
    """PyMongo result objects to the document shapes the CRUD spec (and so the tests) describe."""
    if isinstance(result, (InsertOneResult, InsertManyResult, UpdateResult, DeleteResult, BulkWriteResult,
                           ClientBulkWriteResult)) and not result.acknowledged:
        return {"acknowledged": False}
    if isinstance(result, InsertOneResult):
        return {"insertedId": result.inserted_id}
    if isinstance(result, InsertManyResult):
        return {"insertedIds": {str(i): _id for i, _id in enumerate(result.inserted_ids)}}
    if isinstance(result, UpdateResult):
        return _update_result(result)
    if isinstance(result, DeleteResult):
        return {"deletedCount": result.deleted_count}
    if isinstance(result, ClientBulkWriteResult):
        return _client_bulk_result(result)
    if isinstance(result, BulkWriteResult):
        return _bulk_result(result)
    return result


# ------------------------------------------------------------------------------------------------
# Error expectations
# ------------------------------------------------------------------------------------------------
def _top_error(exc: BaseException) -> Any:
    """For client bulk writes the top-level error (exception or reply document), else the error."""
    if isinstance(exc, ClientBulkWriteException):
        return exc.error
    return exc


def _error_documents(exc: BaseException) -> list[Mapping[str, Any]]:
    """Server reply documents an error carries, for code / codeName / message assertions.

    A collection-level BulkWriteError aggregates write errors and write concern errors (spec: any
    of them satisfies errorContains/errorCodeName).  A client bulk write's assertions use its
    top-level ``error`` only.
    """
    top = _top_error(exc)
    if isinstance(top, Mapping):
        return [top]
    if isinstance(top, BulkWriteError):
        aggregated = top.details or {}
        return list(aggregated.get("writeErrors", [])) + list(aggregated.get("writeConcernErrors", []))
    if isinstance(top, OperationFailure):
        return [top.details or {"code": top.code, "errmsg": str(top)}]
    # NotPrimaryError (e.g. code 91 ShutdownInProgress) is a connection-class error in PyMongo but
    # still carries the server's reply.
    reply = getattr(top, "details", None)
    return [reply] if isinstance(reply, Mapping) else []


def _is_server_error(exc: BaseException) -> bool:
    top = _top_error(exc)
    if isinstance(exc, ClientBulkWriteException) and top is None:
        return bool(exc.write_errors or exc.write_concern_errors)
    return isinstance(top, (OperationFailure, NotPrimaryError, Mapping))


def _has_label(exc: BaseException, label: str) -> bool:
    for err in (exc, _top_error(exc)):
        if isinstance(err, PyMongoError) and err.has_error_label(label):
            return True
        if isinstance(err, Mapping) and label in err.get("errorLabels", []):
            return True
    return False


def _write_concern_error(error: Any) -> Any:
    """A client bulk write's write concern error as the CRUD spec describes it (code, message,
    details): PyMongo keeps the server's document (code, errmsg, errInfo)."""
    if not isinstance(error, Mapping) or "errmsg" not in error:
        return error
    renamed = {"errmsg": "message", "errInfo": "details"}
    return {renamed.get(key, key): value for key, value in error.items()}


def describe_error(exc: BaseException) -> str:
    docs = _error_documents(exc)
    if docs:
        doc = docs[0]
        return (f"{type(exc).__name__} code={doc.get('code')} ({doc.get('codeName', '?')}): "
                f"{short(doc.get('errmsg', str(exc)), 160)}")
    return f"{type(exc).__name__}: {short(str(exc), 160)}"


# ------------------------------------------------------------------------------------------------
# Per-client command recording (for the lsid assertions)
# ------------------------------------------------------------------------------------------------
class CommandRecorder(monitoring.CommandListener):
    """Records the lsid of each command a client starts; ignores fail-point and redacted commands."""

    def __init__(self, ignored: Iterable[str]) -> None:
        self.ignored = {name.lower() for name in ignored} | {"configurefailpoint"}
        self.lsids: list[Any] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name.lower() in self.ignored or not event.command:
            return
        with self._lock:
            self.lsids.append(event.command.get("lsid"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Only started events are needed."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Only started events are needed."""

    def last_two(self) -> tuple[Any, Any]:
        with self._lock:
            if len(self.lsids) < 2:
                raise CaseFailure(f"need two observed commands to compare lsids, saw {len(self.lsids)}")
            first, second = self.lsids[-2], self.lsids[-1]
        if first is None or second is None:
            raise CaseFailure("one of the last two commands carried no lsid")
        return first, second


_TXN_STATES = {1: "none", 2: "starting", 3: "in_progress", 4: "committed", 5: "committed", 6: "aborted"}


# ------------------------------------------------------------------------------------------------
# One test case
# ------------------------------------------------------------------------------------------------
class SpecCase:
    """Executes one test of a spec file against one deployment; :meth:`cleanup` undoes its effects."""

    def __init__(self, deployment: Deployment, file_spec: Mapping[str, Any], test: Mapping[str, Any]) -> None:
        self.deployment = deployment
        self.file_spec = file_spec
        self.test = test
        self.entities: dict[str, Any] = {}
        self.recorders: dict[str, CommandRecorder] = {}
        self.lsids: dict[str, Mapping[str, Any]] = {}
        self.clients: list[MongoClient[Any]] = []
        self.fail_points: list[tuple[MongoClient[Any] | None, str]] = []
        self.step = "setup"

    # -- MatchContext ---------------------------------------------------------------------------
    def entity(self, name: str) -> Any:
        if name not in self.entities:
            raise RunnerError(f"unknown entity {name!r}")
        return self.entities[name]

    def session_lsid(self, name: str) -> Mapping[str, Any]:
        if name not in self.lsids:
            raise RunnerError(f"unknown session entity {name!r}")
        return self.lsids[name]

    def session(self, name: str) -> ClientSession:
        found = self.entity(name)
        if not isinstance(found, ClientSession):
            raise RunnerError(f"entity {name!r} is not a session")
        return found

    # -- lifecycle ------------------------------------------------------------------------------
    def databases(self) -> set[str]:
        """Databases the test touches, dropped after it."""
        names = {cd["databaseName"] for cd in self.file_spec.get("initialData", [])}
        names |= {cd["databaseName"] for cd in self.test.get("outcome", [])}
        entities = list(self.file_spec.get("createEntities", []))
        for op in self.test.get("operations", []):
            if op.get("name") == "createEntities":
                entities += op.get("arguments", {}).get("entities", [])
        names |= {entity["database"]["databaseName"] for entity in entities if "database" in entity}
        return names - _DATABASES_NEVER_DROPPED

    def execute(self) -> None:
        self.step = "createEntities"
        self.create_entities(self.file_spec.get("createEntities", []))
        self.step = "initialData"
        try:
            self.load_initial_data()
        except PyMongoError as exc:
            raise CaseFailure(f"setup failed: {describe_error(exc)}") from exc
        self.advance_session_cluster_times()
        for index, op in enumerate(self.test["operations"]):
            self.step = f"operations[{index}] {op['name']} on {op['object']}"
            self.run_operation(op)
        for collection_data in self.test.get("outcome", []):
            self.step = f"outcome {collection_data['databaseName']}.{collection_data['collectionName']}"
            self.check_outcome(collection_data)

    def abort(self) -> None:
        """Unblock a worker thread stuck past the wall clock: close every client it uses."""
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                client.close()

    def cleanup(self) -> list[str]:
        """Undo the test's effects; returns problems worth showing (never raises).

        Fail points go first so that ending sessions (which may abort transactions) and dropping
        databases are not themselves hit by a leftover fail point.
        """
        problems: list[str] = []
        admin = self.deployment.client.admin
        for client, name in self.fail_points:
            try:
                (client.admin if client is not None else admin).command(
                    SON([("configureFailPoint", name), ("mode", "off")]))
            except PyMongoError as exc:
                problems.append(f"disabling fail point {name} failed: {describe_error(exc)}")
            if client is not None:
                client.close()
        for value in list(self.entities.values()):
            if isinstance(value, (ChangeStream, CommandCursor)):
                with contextlib.suppress(Exception):
                    value.close()
        for value in list(self.entities.values()):
            if isinstance(value, ClientSession):
                with contextlib.suppress(Exception):
                    value.end_session()
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        with contextlib.suppress(PyMongoError):
            admin.command("killAllSessions", [])
        for name in sorted(self.databases()):
            try:
                self.deployment.client.drop_database(name)
            except PyMongoError as exc:
                problems.append(f"dropping database {name} failed: {describe_error(exc)}")
        return problems

    # -- entities -------------------------------------------------------------------------------
    def create_entities(self, specs: Iterable[Mapping[str, Any]]) -> None:
        for entity in specs:
            (entity_type, spec), = entity.items()
            name = spec["id"]
            if name in self.entities:
                raise RunnerError(f"entity {name!r} defined twice")
            if entity_type == "client":
                self.entities[name] = self._make_client(name, spec)
            elif entity_type == "database":
                client = self.entity(spec["client"])
                self.entities[name] = client.get_database(spec["databaseName"],
                                                          **_codec_options(spec.get("databaseOptions", {})))
            elif entity_type == "collection":
                database = self.entity(spec["database"])
                self.entities[name] = database.get_collection(spec["collectionName"],
                                                              **_codec_options(spec.get("collectionOptions", {})))
            elif entity_type == "session":
                self.entities[name] = self._make_session(spec)
                self.lsids[name] = dict(self.entities[name].session_id)
            elif entity_type == "bucket":
                self.entities[name] = self._make_bucket(spec)
            else:
                raise RunnerError(f"unsupported entity type {entity_type}")

    def _make_client(self, name: str, spec: Mapping[str, Any]) -> MongoClient[Any]:
        recorder = CommandRecorder(spec.get("ignoreCommandMonitoringEvents", []))
        self.recorders[name] = recorder
        options = dict(CLIENT_TIMEOUTS)
        lowered = {key.lower() for key in spec.get("uriOptions", {})}
        options = {key: value for key, value in options.items() if key.lower() not in lowered}
        options.update(spec.get("uriOptions", {}))
        if "serverApi" in spec:
            api = spec["serverApi"]
            options["server_api"] = ServerApi(
                api["version"], strict=api.get("strict"), deprecation_errors=api.get("deprecationErrors"))
        # useMultipleMongoses: the emulated cluster has one mongos, so every client uses the same URI.
        client: MongoClient[Any] = MongoClient(self.deployment.uri, event_listeners=[recorder], **options)
        self.clients.append(client)
        return client

    def _make_bucket(self, spec: Mapping[str, Any]) -> GridFSBucket:
        database: Database[Any] = self.entity(spec["database"])
        options = dict(spec.get("bucketOptions", {}))
        kwargs: dict[str, Any] = {}
        renames = {"bucketName": "bucket_name", "chunkSizeBytes": "chunk_size_bytes"}
        for key, value in options.items():
            if key in renames:
                kwargs[renames[key]] = value
            elif key == "writeConcern":
                kwargs["write_concern"] = write_concern(value)
            elif key == "readPreference":
                kwargs["read_preference"] = read_preference(value)
            else:
                raise RunnerError(f"unsupported bucketOptions {key}")
        return GridFSBucket(database, **kwargs)

    def _make_session(self, spec: Mapping[str, Any]) -> ClientSession:
        client: MongoClient[Any] = self.entity(spec["client"])
        options = spec.get("sessionOptions", {})
        kwargs: dict[str, Any] = {}
        if "causalConsistency" in options:
            kwargs["causal_consistency"] = options["causalConsistency"]
        if "snapshot" in options:
            kwargs["snapshot"] = options["snapshot"]
        if "defaultTransactionOptions" in options:
            kwargs["default_transaction_options"] = TransactionOptions(**self._txn_options(
                options["defaultTransactionOptions"]))
        unknown = set(options) - {"causalConsistency", "snapshot", "defaultTransactionOptions"}
        if unknown:
            raise RunnerError(f"unsupported sessionOptions {sorted(unknown)}")
        return client.start_session(**kwargs)

    @staticmethod
    def _txn_options(spec: Mapping[str, Any]) -> dict[str, Any]:
        converters: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "readConcern": ("read_concern", read_concern), "writeConcern": ("write_concern", write_concern),
            "readPreference": ("read_preference", read_preference),
            "maxCommitTimeMS": ("max_commit_time_ms", int),
        }
        out: dict[str, Any] = {}
        for key, value in spec.items():
            if key not in converters:
                raise RunnerError(f"unsupported transaction option {key}")
            target, convert = converters[key]
            out[target] = convert(value)
        return out

    def advance_session_cluster_times(self) -> None:
        """Spec: sessions see the cluster time of initialData so reads in transactions see it."""
        try:
            cluster_time = self.deployment.client.admin.command("ping").get("$clusterTime")
        except PyMongoError:
            return
        if cluster_time:
            for value in self.entities.values():
                if isinstance(value, ClientSession):
                    value.advance_cluster_time(cluster_time)

    # -- initial data and outcome -----------------------------------------------------------------
    def load_initial_data(self) -> None:
        majority = WriteConcern("majority")
        for collection_data in self.file_spec.get("initialData", []):
            database = self.deployment.client.get_database(collection_data["databaseName"], write_concern=majority)
            name = collection_data["collectionName"]
            database.drop_collection(name)
            create_options = collection_data.get("createOptions")
            if create_options:
                database.create_collection(name, check_exists=False, **create_options)
            if collection_data["documents"]:
                database[name].insert_many(collection_data["documents"])
            elif not create_options:
                database.create_collection(name, check_exists=False)

    def check_outcome(self, collection_data: Mapping[str, Any]) -> None:
        collection = self.deployment.client.get_database(collection_data["databaseName"]).get_collection(
            collection_data["collectionName"], read_preference=Primary(), read_concern=ReadConcern("local"))
        try:
            actual = list(collection.find({}, sort=[("_id", 1)]))
        except PyMongoError as exc:
            raise CaseFailure(f"reading outcome failed: {describe_error(exc)}") from exc
        diff = exact_diff(list(collection_data["documents"]), actual)
        if diff:
            raise CaseFailure(f"outcome of {collection.full_name} differs {diff}")

    # -- operations ------------------------------------------------------------------------------
    def run_operation(self, op: Mapping[str, Any], in_callback: bool = False) -> None:
        name, args = op["name"], dict(op.get("arguments") or {})
        if op["object"] == "testRunner":
            special = getattr(self, f"special_{name}", None)
            if special is None:
                raise RunnerError(f"unsupported testRunner operation {name}")
            special(args)
            return
        target = self.entity(op["object"])
        handler = _handler(target, name)
        try:
            result = coerce_result(handler(self, target, args))
        except (CaseFailure, RunnerError):
            raise
        except Exception as exc:
            if op.get("ignoreResultAndError") and isinstance(exc, PyMongoError):
                return
            if "expectError" in op:
                self.check_error(op["expectError"], exc)
                if in_callback:
                    raise  # withTransaction must see the callback's error (spec)
                return
            if not isinstance(exc, PyMongoError):
                raise RunnerError(f"{type(exc).__name__}: {exc}") from exc
            raise CaseFailure(f"unexpected error: {describe_error(exc)}") from exc
        if "expectError" in op:
            raise CaseFailure(f"expected an error ({short(op['expectError'])}) but the operation "
                              f"succeeded with {short(result)}")
        if op.get("ignoreResultAndError"):
            return
        if "expectResult" in op:
            try:
                if name in _CURSOR_RESULT_OPERATIONS:
                    match_documents(op["expectResult"], result, self, path="result")
                else:
                    match(op["expectResult"], result, self, root=True, path="result")
            except MatchError as exc:
                raise CaseFailure(f"result mismatch {exc}") from exc
        if "saveResultAsEntity" in op:
            if op["saveResultAsEntity"] in self.entities:
                raise RunnerError(f"entity {op['saveResultAsEntity']!r} already exists")
            self.entities[op["saveResultAsEntity"]] = result

    def check_error(self, expected: Mapping[str, Any], exc: BaseException) -> None:
        """Assert the expectError assertions that concern the server's reply."""
        what = describe_error(exc)
        docs = _error_documents(exc)
        if expected.get("isClientError") is False and not _is_server_error(exc):
            raise CaseFailure(f"expected a server error, got a client-side error {what}")
        if "errorContains" in expected:
            needle = expected["errorContains"].lower()
            messages = [str(doc.get("errmsg", "")) for doc in docs] or [str(exc)]
            if not any(needle in message.lower() for message in messages):
                raise CaseFailure(f"error message should contain {expected['errorContains']!r}, got {what}")
        if "errorCode" in expected:
            if not any(doc.get("code") == expected["errorCode"] for doc in docs):
                raise CaseFailure(f"expected error code {expected['errorCode']}, got {what}")
        if "errorCodeName" in expected:
            wanted = expected["errorCodeName"]
            if not any(str(doc.get("codeName", "")).lower() == wanted.lower()
                       or ("codeName" not in doc and doc.get("code") == _CODE_NUMBERS.get(wanted))
                       for doc in docs):
                raise CaseFailure(f"expected error code name {wanted}, got {what}")
        for label in expected.get("errorLabelsContain", []):
            if not _has_label(exc, label):
                raise CaseFailure(f"error should carry label {label}, got {what} labels={self._labels(exc)}")
        for label in expected.get("errorLabelsOmit", []):
            if _has_label(exc, label):
                raise CaseFailure(f"error should not carry label {label}, got {what}")
        try:
            if "errorResponse" in expected:
                top = _top_error(exc)
                reply = top if isinstance(top, Mapping) else getattr(top, "details", None)
                if reply is None:
                    raise CaseFailure(f"expected a server reply matching errorResponse, got {what}")
                match(expected["errorResponse"], reply, self, root=True, path="errorResponse")
            if "expectResult" in expected:
                match(expected["expectResult"], self._partial_result(exc), self, root=True, path="error.result")
            if "writeErrors" in expected:
                self._check_write_errors(expected["writeErrors"], exc)
            if "writeConcernErrors" in expected:
                actual = [_write_concern_error(error)
                          for error in getattr(exc, "write_concern_errors", None) or []]
                match_documents(expected["writeConcernErrors"], actual, self, path="writeConcernErrors")
        except MatchError as failure:
            raise CaseFailure(f"error mismatch {failure}") from failure

    @staticmethod
    def _labels(exc: BaseException) -> list[str]:
        top = _top_error(exc)
        labels = set(getattr(exc, "_error_labels", set())) | set(getattr(top, "_error_labels", set()))
        return sorted(labels)

    @staticmethod
    def _partial_result(exc: BaseException) -> Any:
        if isinstance(exc, BulkWriteError):
            return _bulk_result(BulkWriteResult(dict(exc.details or {}), True))
        if isinstance(exc, ClientBulkWriteException):
            partial = exc.partial_result
            return _client_bulk_result(partial) if partial is not None else None
        raise CaseFailure(f"expectError.expectResult needs a bulk write error, got {describe_error(exc)}")

    def _check_write_errors(self, expected: Mapping[str, Any], exc: BaseException) -> None:
        actual = {str(err["idx"]): err for err in (getattr(exc, "write_errors", None) or [])}
        for index, wanted in expected.items():
            if index not in actual:
                raise MatchError(f"writeErrors.{index}", f"no write error at index {index}; got {sorted(actual)}")
            match(wanted, actual[index], self, root=True, path=f"writeErrors.{index}")
        extra = sorted(set(actual) - set(expected))
        if extra:
            raise MatchError("writeErrors", f"unexpected write errors at indexes {extra}")

    # -- testRunner operations ------------------------------------------------------------------
    def special_failPoint(self, args: Mapping[str, Any]) -> None:
        client = self.entity(args["client"])
        self._configure_fail_point(client, args["failPoint"], None)

    def special_targetedFailPoint(self, args: Mapping[str, Any]) -> None:
        session = self.session(args["session"])
        address = session._transaction.pinned_address
        if address is None:
            raise CaseFailure(f"targetedFailPoint: session {args['session']!r} is not pinned to a mongos")
        direct: MongoClient[Any] = MongoClient(address[0], address[1], directConnection=True, **CLIENT_TIMEOUTS)
        self._configure_fail_point(direct, args["failPoint"], direct)

    def _configure_fail_point(self, client: MongoClient[Any], command: Mapping[str, Any],
                              disable_with: MongoClient[Any] | None) -> None:
        ordered = SON([("configureFailPoint", command["configureFailPoint"])])
        ordered.update(command)
        # Recorded first: even a half-applied fail point must be switched off afterwards.
        self.fail_points.append((disable_with, command["configureFailPoint"]))
        try:
            client.admin.command(ordered)
        except PyMongoError as exc:
            raise CaseFailure(f"configureFailPoint failed: {describe_error(exc)}") from exc

    def special_assertSessionTransactionState(self, args: Mapping[str, Any]) -> None:
        state = _TXN_STATES[self.session(args["session"])._transaction.state]
        if state != args["state"]:
            raise CaseFailure(f"session transaction state is {state}, expected {args['state']}")

    def special_assertSessionPinned(self, args: Mapping[str, Any]) -> None:
        if self.session(args["session"])._transaction.pinned_address is None:
            raise CaseFailure(f"session {args['session']!r} should be pinned to a mongos")

    def special_assertSessionUnpinned(self, args: Mapping[str, Any]) -> None:
        if self.session(args["session"])._transaction.pinned_address is not None:
            raise CaseFailure(f"session {args['session']!r} should not be pinned")

    def special_assertSessionDirty(self, args: Mapping[str, Any]) -> None:
        if not self.session(args["session"])._server_session.dirty:
            raise CaseFailure(f"session {args['session']!r} should be dirty")

    def special_assertSessionNotDirty(self, args: Mapping[str, Any]) -> None:
        if self.session(args["session"])._server_session.dirty:
            raise CaseFailure(f"session {args['session']!r} should not be dirty")

    def special_assertSameLsidOnLastTwoCommands(self, args: Mapping[str, Any]) -> None:
        first, second = self.recorders[args["client"]].last_two()
        if first != second:
            raise CaseFailure(f"last two commands used different lsids {short(first)} / {short(second)}")

    def special_assertDifferentLsidOnLastTwoCommands(self, args: Mapping[str, Any]) -> None:
        first, second = self.recorders[args["client"]].last_two()
        if first == second:
            raise CaseFailure(f"last two commands used the same lsid {short(first)}")

    def _collection_names(self, database: str) -> list[str]:
        return self.deployment.client[database].list_collection_names()

    def special_assertCollectionExists(self, args: Mapping[str, Any]) -> None:
        if args["collectionName"] not in self._collection_names(args["databaseName"]):
            raise CaseFailure(f"collection {args['databaseName']}.{args['collectionName']} should exist")

    def special_assertCollectionNotExists(self, args: Mapping[str, Any]) -> None:
        if args["collectionName"] in self._collection_names(args["databaseName"]):
            raise CaseFailure(f"collection {args['databaseName']}.{args['collectionName']} should not exist")

    def _index_names(self, args: Mapping[str, Any]) -> list[str]:
        collection = self.deployment.client[args["databaseName"]][args["collectionName"]]
        return [index["name"] for index in collection.list_indexes()]

    def special_assertIndexExists(self, args: Mapping[str, Any]) -> None:
        if args["indexName"] not in self._index_names(args):
            raise CaseFailure(f"index {args['indexName']} should exist on {args['collectionName']}")

    def special_assertIndexNotExists(self, args: Mapping[str, Any]) -> None:
        if args["indexName"] in self._index_names(args):
            raise CaseFailure(f"index {args['indexName']} should not exist on {args['collectionName']}")

    def special_createEntities(self, args: Mapping[str, Any]) -> None:
        self.create_entities(args["entities"])
        self.advance_session_cluster_times()

    def special_wait(self, args: Mapping[str, Any]) -> None:
        time.sleep(args["ms"] / 1000.0)


# ------------------------------------------------------------------------------------------------
# Entity operations: spec names -> PyMongo calls
# ------------------------------------------------------------------------------------------------
Handler = Callable[[SpecCase, Any, dict[str, Any]], Any]

_RETURN_DOCUMENT = {"before": ReturnDocument.BEFORE, "after": ReturnDocument.AFTER}


def _call(case: SpecCase, func: Callable[..., Any], args: Mapping[str, Any], *,
          renames: Mapping[str, str] | None = None, signature_of: Callable[..., Any] | None = None) -> Any:
    """Call a PyMongo method with spec arguments.

    Spec names become PyMongo's snake_case parameters where the method has them; otherwise, if the
    method forwards ``**kwargs`` into the command, the spec's camelCase name is passed through as a
    command field (e.g. ``maxTimeMS``, ``allowDiskUse`` for aggregate).  Anything else is a runner
    gap and raises RunnerError rather than being silently dropped.
    """
    signature = inspect.signature(signature_of or func)
    params = signature.parameters
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in args.items():
        target = (renames or {}).get(key) or _snake(key)
        if target in params and params[target].kind is not inspect.Parameter.VAR_KEYWORD:
            kwargs[target] = _convert(case, target, value)
        elif forwards:
            kwargs[key] = value
        else:
            raise RunnerError(f"argument {key!r} is not supported by {getattr(func, '__qualname__', func)}")
    return func(**kwargs)


def _convert(case: SpecCase, param: str, value: Any) -> Any:
    if param == "session":
        return case.session(value)
    if param == "read_concern":
        return read_concern(value)
    if param == "write_concern":
        return write_concern(value)
    if param == "read_preference":
        return read_preference(value)
    if param == "return_document":
        return _RETURN_DOCUMENT[str(value).lower()]
    return value


_WRITE_MODELS: dict[str, type] = {
    "insertOne": InsertOne, "updateOne": UpdateOne, "updateMany": UpdateMany,
    "replaceOne": ReplaceOne, "deleteOne": DeleteOne, "deleteMany": DeleteMany,
}


def _write_models(case: SpecCase, requests: Iterable[Mapping[str, Any]]) -> list[Any]:
    models = []
    for request in requests:
        (kind, spec), = request.items()
        models.append(_call(case, _WRITE_MODELS[kind], spec))  # the class signature is its __init__
    return models


def _with_session(case: SpecCase, args: dict[str, Any]) -> dict[str, Any]:
    """Split out the session argument for helpers that build commands by hand."""
    session = args.pop("session", None)
    return {"session": case.session(session)} if session else {}


def _command(case: SpecCase, database: Database[Any], name: str, value: Any, args: dict[str, Any],
             read_pref: Any = None) -> Any:
    extra = _with_session(case, args)
    command = SON([(name, value)])
    command.update(args)
    if read_pref is not None:
        extra["read_preference"] = read_pref
    return database.command(command, **extra)


def _collection_handlers() -> dict[str, Handler]:
    def find(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        from pymongo.cursor import Cursor
        return list(_call(case, coll.find, args, signature_of=Cursor.__init__))

    def find_one(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        from pymongo.cursor import Cursor
        return _call(case, coll.find_one, args, signature_of=Cursor.__init__)

    def bulk_write(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        args["requests"] = _write_models(case, args["requests"])
        return _call(case, coll.bulk_write, args)

    def count(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        # PyMongo removed Collection.count(); the spec's count is the `count` command.
        if "filter" in args:
            args["query"] = args.pop("filter")
        return _command(case, coll.database, "count", coll.name, args)["n"]

    def create_index(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        args["keys"] = list(args["keys"].items())
        return _call(case, coll.create_index, args)

    def rename(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        return _call(case, coll.rename, args, renames={"to": "new_name"})

    def search_index_model(spec: Mapping[str, Any]) -> SearchIndexModel:
        return SearchIndexModel(spec["definition"], name=spec.get("name"), type=spec.get("type"))

    def create_search_index(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        args["model"] = search_index_model(args["model"])
        return _call(case, coll.create_search_index, args)

    def create_search_indexes(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        args["models"] = [search_index_model(model) for model in args["models"]]
        return _call(case, coll.create_search_indexes, args)

    def list_search_indexes(case: SpecCase, coll: Collection[Any], args: dict[str, Any]) -> Any:
        args.update(args.pop("aggregationOptions", {}))  # passed on to the aggregate command
        return list(_call(case, coll.list_search_indexes, args))

    def simple(method: str, **renames: str) -> Handler:
        return lambda case, coll, args: _call(case, getattr(coll, method), args, renames=renames)

    def listing(method: str) -> Handler:
        return lambda case, coll, args: list(_call(case, getattr(coll, method), args))

    return {
        "aggregate": listing("aggregate"),
        "bulkWrite": bulk_write,
        "count": count,
        "countDocuments": simple("count_documents"),
        "createSearchIndex": create_search_index,
        "createSearchIndexes": create_search_indexes,
        "dropSearchIndex": simple("drop_search_index"),
        "listSearchIndexes": list_search_indexes,
        "updateSearchIndex": simple("update_search_index"),
        "createChangeStream": simple("watch"),
        "createIndex": create_index,
        "deleteMany": simple("delete_many"),
        "deleteOne": simple("delete_one"),
        "distinct": simple("distinct", fieldName="key"),
        "drop": simple("drop"),
        "dropIndex": simple("drop_index", name="index_or_name"),
        "dropIndexes": simple("drop_indexes"),
        "estimatedDocumentCount": simple("estimated_document_count"),
        "find": find,
        "findOne": find_one,
        "findOneAndDelete": simple("find_one_and_delete"),
        "findOneAndReplace": simple("find_one_and_replace"),
        "findOneAndUpdate": simple("find_one_and_update"),
        "insertMany": simple("insert_many"),
        "insertOne": simple("insert_one"),
        "listIndexes": listing("list_indexes"),
        "rename": rename,
        "replaceOne": simple("replace_one"),
        "updateMany": simple("update_many"),
        "updateOne": simple("update_one"),
    }


def _database_handlers() -> dict[str, Handler]:
    def run_command(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        command = dict(args.pop("command"))
        name = args.pop("commandName", next(iter(command)))
        value = command.pop(name)
        read_pref = read_preference(args.pop("readPreference")) if "readPreference" in args else None
        session = args.pop("session", None)
        if args:
            raise RunnerError(f"unsupported runCommand arguments {sorted(args)}")
        command_args = dict(command)
        if session:
            command_args["session"] = session
        return _command(case, db, name, value, command_args, read_pref)

    def create_collection(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        name = args.pop("collection")
        args.setdefault("check_exists", False)  # no listCollections probe: only the create is judged
        return _call(case, lambda **kw: db.create_collection(name, **kw), args,
                     signature_of=db.create_collection)

    def drop_collection(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        return _call(case, db.drop_collection, args, renames={"collection": "name_or_collection"})

    def modify_collection(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        # PyMongo has no helper; the operation is the collMod command.
        return _command(case, db, "collMod", args.pop("collection"), args)

    def list_collections(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        return list(_call(case, db.list_collections, args))

    def aggregate(case: SpecCase, db: Database[Any], args: dict[str, Any]) -> Any:
        return list(_call(case, db.aggregate, args))

    return {
        "aggregate": aggregate,
        "createChangeStream": lambda case, db, args: _call(case, db.watch, args),
        "createCollection": create_collection,
        "dropCollection": drop_collection,
        "listCollectionNames": lambda case, db, args: _call(case, db.list_collection_names, args),
        "listCollections": list_collections,
        "modifyCollection": modify_collection,
        "runCommand": run_command,
    }


def _client_handlers() -> dict[str, Handler]:
    def client_bulk_write(case: SpecCase, client: MongoClient[Any], args: dict[str, Any]) -> Any:
        args["models"] = _write_models(case, args["models"])
        return _call(case, client.bulk_write, args)

    return {
        "clientBulkWrite": client_bulk_write,
        "createChangeStream": lambda case, client, args: _call(case, client.watch, args),
        "listDatabaseNames": lambda case, client, args: _call(case, client.list_database_names, args),
        "listDatabases": lambda case, client, args: list(_call(case, client.list_databases, args)),
    }


def _session_handlers() -> dict[str, Handler]:
    def with_transaction(case: SpecCase, session: ClientSession, args: dict[str, Any]) -> Any:
        operations = args.pop("callback")

        def callback(_: ClientSession) -> None:
            for op in operations:
                case.run_operation(op, in_callback=True)

        options = SpecCase._txn_options(args)
        return session.with_transaction(callback, **options)

    return {
        "startTransaction": lambda case, s, args: s.start_transaction(**SpecCase._txn_options(args)),
        "commitTransaction": lambda case, s, args: s.commit_transaction(),
        "abortTransaction": lambda case, s, args: s.abort_transaction(),
        "endSession": lambda case, s, args: s.end_session(),
        "withTransaction": with_transaction,
    }


def _iterate_until_document(case: SpecCase, cursor: Any, args: dict[str, Any]) -> Any:
    """Next document of a change stream or cursor; fails (not hangs) if none arrives in time."""
    deadline = time.monotonic() + ITERATE_TIMEOUT_S
    while time.monotonic() < deadline:
        document = cursor.try_next()
        if document is not None:
            return document
        if not cursor.alive:
            raise CaseFailure("cursor closed without returning a document")
    raise CaseFailure(f"no document within {ITERATE_TIMEOUT_S:.0f}s")


def _close_cursor(case: SpecCase, cursor: Any, args: dict[str, Any]) -> None:
    with contextlib.suppress(PyMongoError):
        cursor.close()


_CURSOR_HANDLERS: dict[str, Handler] = {
    "iterateUntilDocumentOrError": _iterate_until_document,
    "iterateOnce": lambda case, cursor, args: cursor.try_next(),
    "close": _close_cursor,
}

def _bucket_handlers() -> dict[str, Handler]:
    def download(case: SpecCase, bucket: GridFSBucket, args: dict[str, Any]) -> Any:
        return _call(case, bucket.open_download_stream, args, renames={"id": "file_id"}).read()

    def download_by_name(case: SpecCase, bucket: GridFSBucket, args: dict[str, Any]) -> Any:
        return _call(case, bucket.open_download_stream_by_name, args).read()

    return {"download": download, "downloadByName": download_by_name}


_HANDLERS: list[tuple[type, dict[str, Handler]]] = [
    (MongoClient, _client_handlers()),
    (GridFSBucket, _bucket_handlers()),
    (Database, _database_handlers()),
    (Collection, _collection_handlers()),
    (ClientSession, _session_handlers()),
    (ChangeStream, _CURSOR_HANDLERS),
    (CommandCursor, _CURSOR_HANDLERS),
]

SUPPORTED_OPERATIONS: frozenset[str] = frozenset(name for _, table in _HANDLERS for name in table)


def _handler(target: Any, name: str) -> Handler:
    for entity_type, table in _HANDLERS:
        if isinstance(target, entity_type):
            if name not in table:
                raise RunnerError(f"operation {name} is not supported on {entity_type.__name__}")
            return table[name]
    raise RunnerError(f"operation {name} on unsupported entity {type(target).__name__}")


# ------------------------------------------------------------------------------------------------
# Running suites
# ------------------------------------------------------------------------------------------------
def load_spec_file(path: Path) -> dict[str, Any]:
    """Parse a spec file as extended JSON (relaxed or canonical), keeping key order."""
    spec: dict[str, Any] = json_util.loads(path.read_text(), json_options=_JSON_OPTIONS)
    return spec


class SuiteRunner:
    """Runs spec files against the deployments, one case at a time, and records the verdicts."""

    def __init__(self, deployments: Deployments, pattern: str | None = None, verbose: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.deployments = deployments
        self.pattern = re.compile(pattern, re.IGNORECASE) if pattern else None
        self.verbose = verbose
        self.log = log
        self.broken: str | None = None  # set when the server is gone and cannot be restarted

    def run_suite(self, path: Path) -> SuiteReport:
        report = SuiteReport(name=path.name, path=str(path))
        for file in sorted(path.glob("*.json")):
            self.run_file(report, file)
        return report

    def run_file(self, report: SuiteReport, file: Path) -> None:
        try:
            file_spec = load_spec_file(file)
        except (OSError, ValueError) as exc:
            report.cases.append(CaseResult(report.name, file.name, "<file>", "failed", f"cannot parse: {exc}"))
            return
        for test in file_spec.get("tests", []):
            case = CaseResult(report.name, file.name, str(test.get("description", "?")), "skipped")
            if self.pattern and not self.pattern.search(f"{report.name}/{case.name}"):
                continue
            started = time.monotonic()
            self.judge(case, file_spec, test)
            case.seconds = time.monotonic() - started
            report.cases.append(case)
            if self.verbose:
                self.log(f"  [{case.status:7s}] {report.name}/{case.name}"
                         + (f" -- {case.reason}" if case.reason else ""))

    def judge(self, case: CaseResult, file_spec: Mapping[str, Any], test: Mapping[str, Any]) -> None:
        major = str(file_spec.get("schemaVersion", "1")).split(".")[0]
        if not major.isdigit() or int(major) > MAX_SCHEMA_MAJOR:
            case.reason = skips.reason("schema-version", str(file_spec.get("schemaVersion")))
            return
        static = skips.static_skip(file_spec, test, SUPPORTED_OPERATIONS, case.file)
        if static:
            case.reason = static
            return
        if self.broken:
            case.status, case.reason = "failed", self.broken
            return
        try:
            deployment = self.choose_deployment(file_spec, test)
        except SkipCase as skip:
            case.reason = str(skip)
            return
        except RunnerError as exc:
            case.status, case.reason = "failed", str(exc)
            return
        case.unchecked = skips.unchecked_assertions(test)
        self.execute(case, deployment, file_spec, test)

    def choose_deployment(self, file_spec: Mapping[str, Any], test: Mapping[str, Any]) -> Deployment:
        """Prefer the replica set; use the mongos only for tests that cannot run on a replica set.

        The replica set is connected first (the version it reports judges every requirement); a
        mongos is only started for a case whose requirements it would meet. Run through a
        cluster (``cluster_shards``), every case goes to its router.
        """
        if self.deployments.cluster_shards:
            return self._through_router(file_spec, test)
        replset_error = self.deployments.start_error("replicaset")
        if replset_error:
            raise RunnerError(f"the replica-set emulator could not start: {replset_error}")
        replset = self.deployments.get("replicaset")
        unmet_replset = self._unmet(file_spec, test, "replicaset", replset)
        if unmet_replset is None:
            return replset
        if unmet_replset[0] == "auth" and self.deployments.available("replicaset-auth"):
            try:
                with_auth = self.deployments.get("replicaset-auth")
            except RunnerError:
                with_auth = None
            if with_auth is not None:
                unmet_auth = self._unmet(file_spec, test, "replicaset", with_auth)
                if unmet_auth is None:
                    return with_auth
                unmet_replset = unmet_auth
        mongos = self.deployments.live("sharded")
        unmet_sharded = self._unmet(file_spec, test, "sharded", mongos)
        if unmet_sharded is None and mongos is None:
            try:
                if not self.deployments.available("sharded"):
                    raise RunnerError(self.deployments.start_error("sharded") or "")
                mongos = self.deployments.get("sharded")
            except RunnerError as exc:
                raise SkipCase(skips.reason("no-mongos") + (f" (start failed: {exc})" if str(exc) else "")) from exc
            unmet_sharded = self._unmet(file_spec, test, "sharded", mongos)
        if unmet_sharded is None and mongos is not None:
            return mongos
        # A mismatch between our own two topologies says less than any other reason.
        reasons = [r for r in (unmet_replset, unmet_sharded) if r is not None]
        precise = [r for r in reasons if r[0] != "topology-other"]
        raise SkipCase((precise or reasons)[0][1])

    def _through_router(self, file_spec: Mapping[str, Any], test: Mapping[str, Any]
                        ) -> Deployment:
        error = self.deployments.start_error("sharded")
        if error:
            raise RunnerError(f"the cluster could not start: {error}")
        router = self.deployments.get("sharded")
        unmet = self._unmet(file_spec, test, "sharded", router)
        if unmet is not None and unmet[0] == "auth" and \
                self.deployments.available("replicaset-auth"):
            try:
                router = self.deployments.get("replicaset-auth")
            except RunnerError as exc:
                raise SkipCase(unmet[1]) from exc
            unmet = self._unmet(file_spec, test, "sharded", router)
        if unmet is not None:
            raise SkipCase(unmet[1])
        return router

    def _unmet(self, file_spec: Mapping[str, Any], test: Mapping[str, Any], kind: str,
               live: Deployment | None) -> tuple[str, str] | None:
        version = live.version if live else self.deployments.version_hint()
        auth = live.auth if live else False
        parameters: Callable[[], dict[str, Any]] = live.parameters if live else dict
        return (_requirements_unmet(file_spec.get("runOnRequirements"), kind, version, auth, parameters)
                or _requirements_unmet(test.get("runOnRequirements"), kind, version, auth, parameters))

    def execute(self, case: CaseResult, deployment: Deployment, file_spec: Mapping[str, Any],
                test: Mapping[str, Any]) -> None:
        runner = SpecCase(deployment, file_spec, test)
        outcome: dict[str, BaseException] = {}

        def work() -> None:
            try:
                runner.execute()
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                outcome["error"] = exc

        with contextlib.suppress(PyMongoError):
            deployment.client.admin.command("killAllSessions", [])
        worker = threading.Thread(target=work, name=f"spectest {case.name}", daemon=True)
        worker.start()
        worker.join(TEST_TIMEOUT_S)
        timed_out = worker.is_alive()
        if timed_out:
            step = runner.step
            runner.abort()
            worker.join(CLIENT_TIMEOUTS["socketTimeoutMS"] / 1000.0 + 5)
        problems = runner.cleanup()
        if timed_out:
            case.status, case.reason = "failed", f"timed out after {TEST_TIMEOUT_S:.0f}s during {step}"
        elif "error" in outcome:
            case.status, case.reason = "failed", self._failure_reason(runner.step, outcome["error"])
        elif problems:
            case.status, case.reason = "failed", f"cleanup: {problems[0]}"
        else:
            case.status, case.reason = "passed", ""
        if case.status == "failed" and not deployment.healthy():
            self._recover(deployment)

    def _failure_reason(self, step: str, exc: BaseException) -> str:
        if isinstance(exc, CaseFailure):
            return f"{step}: {exc}"
        if isinstance(exc, RunnerError):
            return f"{step}: runner cannot execute: {exc}"
        if isinstance(exc, PyMongoError):
            return f"{step}: unexpected error: {describe_error(exc)}"
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        location = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        return f"{step}: runner error {type(exc).__name__}: {short(str(exc), 160)}{location}"

    def _recover(self, deployment: Deployment) -> None:
        """The server stopped answering: restart it if the runner owns it, else stop running cases."""
        self.log(f"spectest: {deployment.kind} server at {deployment.uri} is not answering")
        if self.deployments.restart(deployment.kind):
            self.log(f"spectest: restarted the {deployment.kind} emulator")
            return
        self.broken = f"not run: the {deployment.kind} server stopped answering earlier in the run"


def run_suites(paths: Iterable[str | Path], uri: str | None, sharded_uri: str | None = None, *,
               server_version: str = "7.0", pattern: str | None = None, verbose: bool = False,
               log: Callable[[str], None] = print, auth_uri: str | None = None,
               cluster_shards: int | None = None) -> Report:
    """Run every ``*.json`` spec file in each directory; one SuiteReport per directory.

    With ``uri`` None the runner starts (and afterwards stops) emulators itself: a replica set,
    and a mongos when a test needs one.  With ``uri`` given and no ``sharded_uri``, sharded-only
    tests are skipped. ``auth_uri`` (a replica set with authentication, credentials in the URI)
    serves the cases that require authentication; without any URI the runner starts one.
    """
    deployments = Deployments(uri, sharded_uri, server_version, auth_uri, cluster_shards)
    runner = SuiteRunner(deployments, pattern=pattern, verbose=verbose, log=log)
    report = Report()
    try:
        with _quick_rediscovery():
            for path in paths:
                report.suites.append(runner.run_suite(Path(path)))
    finally:
        deployments.close()
    return report


@contextlib.contextmanager
def _quick_rediscovery() -> Iterator[None]:
    """Many cases close connections with fail points; PyMongo then waits for its monitor to find
    the server again, checking at most every ``MIN_HEARTBEAT_INTERVAL`` (0.5 s). PyMongo's own
    test suite lowers the same knob (its ``client_knobs``); only clients created while the
    suites run see it, and it is put back."""
    before = pymongo_common.MIN_HEARTBEAT_INTERVAL
    pymongo_common.MIN_HEARTBEAT_INTERVAL = QUICK_REDISCOVERY_SECONDS
    try:
        yield
    finally:
        pymongo_common.MIN_HEARTBEAT_INTERVAL = before
