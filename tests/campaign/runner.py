"""One seed end to end: two fresh emulated clusters, the plan's initial data, the real
``mongosync`` process started over HTTP, the timeline run against the source while it copies
and applies changes (kill -9 and restarts of the process, faults injected on both clusters),
then commit and the checks: documents byte for byte, indexes and options, and write blocking.

A failing seed prints ``FAILED seed=<n>: reproduce with: .venv/bin/python -m scripts.campaign
--seed <n>`` and the differences; the run's logs stay in the directory it names.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import httpx
import pymongo
from bson.codec_options import DatetimeConversion
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from mongoemu.testing import (ClusterProcess, EmulatorProcess, start_cluster,
                              start_secured_emulator)
from pymongosync.request import StartRequest
from pymongosync.verifier.compare import compare_clusters

from . import check
from .generator import (AVOIDED, Fault, Kill, Op, Pause, Plan,
                        Reset, Step, generate, lazy_documents)

ROOT = Path(__file__).resolve().parents[2]
MONGOSYNC = Path(sys.executable).with_name("mongosync")
START = {"source": "cluster0", "destination": "cluster1"}
USER_WRITES_BLOCKED = 371

# What MongoDB itself refuses when the plan's model of the source has drifted from it (a
# document deleted by a filter, a field whose type changed, a name dropped by dropDatabase):
# the application gets the error and the source keeps its state, which is what is compared.
REFUSED_AS_MONGODB_DOES = frozenset({
    2,  # BadValue ($push on a non-array, ...)
    9,  # FailedToParse
    14,  # TypeMismatch
    20,  # IllegalOperation (e.g. renaming onto a view)
    26,  # NamespaceNotFound
    27,  # IndexNotFound
    28,  # PathNotViable
    40,  # ConflictingUpdateOperators
    48,  # NamespaceExists
    52,  # DollarPrefixedFieldName
    54,  # NotSingleValueField
    66,  # ImmutableField
    67,  # CannotCreateIndex
    72,  # InvalidOptions
    85,  # IndexOptionsConflict
    86,  # IndexKeySpecsConflict
    112,  # WriteConflict (transactions)
    121,  # DocumentValidationFailure
    125,  # CommandFailed (renaming a sharded collection into another database)
    166,  # CommandNotSupportedOnView
    197,  # InvalidIndexSpecificationOption
    251,  # NoSuchTransaction
    359,  # CannotConvertIndexToUnique
    10334,  # BSONObjectTooLarge
    11000,  # DuplicateKey
    16837,  # legacy update path errors
    17419,  # document too large after an update
    # OperationNotSupportedInTransaction (creating a collection inside a transaction on a
    # name dropped meanwhile)
    263,
    # Aggregation expressions of update pipelines given a value of another type: $slice,
    # $concatArrays, $mergeObjects, $add.
    28724, 28664, 40400, 16554,
})


def app_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    """The application: signs in as a user without bypassWriteBlockingMode."""
    return pymongo.MongoClient(emulator.application_uri, appname="campaign-app",
                               serverSelectionTimeoutMS=20_000, tz_aware=True,
                               datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def root_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    return pymongo.MongoClient(emulator.uri, appname="campaign-admin",
                               serverSelectionTimeoutMS=20_000, tz_aware=True,
                               datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def reproduce_command(seed: int, big: bool = False, long: bool = False, *,
                      server_copies: bool = False, hot_documents: bool = False,
                      sharded_destination: bool = False, sharded_source: bool = False,
                      one_per_shard: bool = False) -> str:
    flags = (" --big" if big else "") + (" --long" if long and not big else "")
    # The mode changes the seed's plan: without it, the command would run another plan.
    mode = ("CAMPAIGN_SERVER_COPIES=1 " if server_copies else "") + \
        ("CAMPAIGN_HOT_DOCUMENTS=1 " if hot_documents else "") + \
        ("CAMPAIGN_SHARDED_DESTINATION=1 " if sharded_destination else "") + \
        ("CAMPAIGN_SHARDED_SOURCE=1 " if sharded_source and not one_per_shard else "") + \
        ("CAMPAIGN_ONE_PER_SHARD=1 " if one_per_shard else "")
    return f"{mode}.venv/bin/python -m scripts.campaign --seed {seed}{flags}"


@dataclass
class Outcome:
    seed: int
    big: bool
    long: bool
    server_copies: bool = False
    hot_documents: bool = False
    sharded_destination: bool = False
    sharded_source: bool = False
    one_per_shard: bool = False
    passed: bool = False
    reason: str = ""
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    log_dir: str | None = None

    @property
    def command(self) -> str:
        return reproduce_command(self.seed, self.big, self.long,
                                 server_copies=self.server_copies,
                                 hot_documents=self.hot_documents,
                                 sharded_destination=self.sharded_destination,
                                 sharded_source=self.sharded_source,
                                 one_per_shard=self.one_per_shard)

    def line(self) -> str:
        stats = self.stats
        figures = (f"{stats['ops_ok']} ops ({stats['ops_refused']} refused), "
                   f"{stats['kills']} kills, {stats['faults']} faults, "
                   f"{stats['documents']} documents in {stats['namespaces']} namespaces, "
                   f"{stats['events']} events")
        for name in ("pauses", "resets", "resets_interrupted", "conflicts_refused"):
            if self.stats[name]:
                figures += f", {self.stats[name]} {name.replace('_', ' ')}"
        if self.stats["copy_ops_in_copy"]:
            figures += ", copy-time ops ended during the copy"
        if self.passed:
            timings = " ".join(f"{k}={v:.1f}" for k, v in self.timings.items())
            return f"PASSED seed={self.seed} in {self.seconds:.1f}s: {figures} [{timings}]"
        return (f"FAILED seed={self.seed}: reproduce with: {self.command}\n  reason: {self.reason}"
                f"\n  {figures}\n" + "\n".join(f"  {line}" for line in self.details[:60])
                + (f"\n  logs: {self.log_dir}" if self.log_dir else ""))


class CampaignFailure(Exception):
    def __init__(self, reason: str, details: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or []


# -- the mongosync process --------------------------------------------------------------------


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


class Mongosync:
    """The real console script: one process at a time, restarted after each kill -9."""

    def __init__(self, source: EmulatorProcess, destination: EmulatorProcess, log_dir: Path,
                 load_level: int, hot_documents: list[str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.source, self.destination = source, destination
        self.extra_args = extra_args or []
        # The same --hotDocIDs for every run (a restart with fewer would keep the stored ones).
        self.hot_arguments = [argument for value in hot_documents or []
                              for argument in ("--hotDocIDs", value)]
        self.log_dir = log_dir
        self.load_level = load_level
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0
        self.http = httpx.Client(timeout=30)
        self.kills = 0

    def start(self) -> None:
        for _ in range(3):
            self.runs += 1
            self.port = free_port()
            run_dir = self.log_dir / f"run{self.runs}"
            run_dir.mkdir(parents=True, exist_ok=True)
            output = open(run_dir / "output.txt", "wb")
            self.process = subprocess.Popen(
                [str(MONGOSYNC), "--cluster0", self.source.uri, "--cluster1",
                 self.destination.uri, "--port", str(self.port), "--acceptDisclaimer",
                 "--loadLevel", str(self.load_level), "--logPath", str(run_dir),
                 "--disableMetricsLogging", *self.hot_arguments, *self.extra_args],
                cwd=run_dir, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            output.close()
            # The port was free a moment ago; another process may have taken it since.
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answers():
                    return
                time.sleep(0.05)
            if self.process.poll() is None:
                return  # alive, still starting: progress() waits for it
            if "cannot serve the API" not in self.output_tail():
                return  # died for another reason: reported by the next wait
        return

    def _answers(self) -> bool:
        try:
            self.http.get(f"http://127.0.0.1:{self.port}/api/v1/progress", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    kill_one = kill  # what a Kill step kills

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop; the exit status of the SIGTERM."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.http.close()

    def output_tail(self, lines: int = 40) -> str:
        run_dir = self.log_dir / f"run{self.runs}"
        text = ""
        for name in ("output.txt", "mongosync.log"):
            path = run_dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def fatal_lines(self) -> list[str]:
        found = []
        for path in sorted(self.log_dir.glob("run*/mongosync.log")):
            for line in path.read_text(errors="replace").splitlines():
                if '"level":"fatal"' in line or "Traceback" in line or '"level":"error"' in line:
                    found.append(f"{path.parent.name}: {line[:600]}")
        return found

    def progress(self, timeout: float = 60.0) -> dict[str, Any]:
        """/progress, waiting while the process starts (never while it is dead)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                code = None if self.process is None else self.process.returncode
                raise CampaignFailure(f"mongosync exited (status {code})",
                                      self.fatal_lines() or self.output_tail().splitlines())
            try:
                response = self.http.get(f"http://127.0.0.1:{self.port}/api/v1/progress")
                document = response.json()
                progress = document["progress"]
                if progress.get("state") != "INITIALIZING":
                    if progress.get("error"):
                        raise CampaignFailure(f"mongosync reported a fatal error: "
                                              f"{json.dumps(progress['error'])[:800]}",
                                              self.fatal_lines())
                    return dict(progress)
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise CampaignFailure("mongosync did not answer /progress",
                                      self.output_tail().splitlines())
            time.sleep(0.05)

    def post(self, endpoint: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.progress()  # started and past INITIALIZING
        response = self.http.post(f"http://127.0.0.1:{self.port}/api/v1/{endpoint}",
                                  content=json.dumps(body or {}))
        return response.status_code, response.json()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                 what: str) -> dict[str, Any]:
        return wait_for_progress(self.progress, predicate, timeout, what, self.dump_stacks)

    def dump_stacks(self) -> None:
        """The process's threads into its log directory, when py-spy is at hand (set
        CAMPAIGN_PY_SPY to its path): what a stuck migration is waiting for."""
        tool = os.environ.get("CAMPAIGN_PY_SPY")
        if not tool or not self.alive or self.process is None:
            return
        result = subprocess.run([tool, "dump", "--pid", str(self.process.pid)],
                                capture_output=True, text=True, timeout=60, check=False)
        (self.log_dir / f"run{self.runs}" / "stacks.txt").write_text(result.stdout +
                                                                     result.stderr)


class MongosyncGroup:
    """One mongosync per source shard (``--id <shard>``), as mongosync runs on a large sharded
    source, behind :class:`Mongosync`'s interface: every request goes to each instance, at
    once (``/commit`` returns once every instance has it); ``/progress`` is the
    coordinator's, once every instance is alive; a Kill step kills one instance, drawn by the
    seed, and everything else all of them."""

    def __init__(self, source: ClusterProcess, destination: EmulatorProcess, log_dir: Path,
                 load_level: int, hot_documents: list[str], seed: int) -> None:
        self.members = [Mongosync(source, destination, log_dir / shard, load_level,
                                  hot_documents, ["--id", shard])
                        for shard in sorted(source.shards)]
        self.coordinator = self.members[0]
        self.log_dir = log_dir
        self.victims = random.Random(seed * 1_000_003 + 47)

    def start(self) -> None:
        for member in self.members:
            if not member.alive:
                member.start()

    @property
    def alive(self) -> bool:
        return all(member.alive for member in self.members)

    def kill(self) -> None:
        for member in self.members:
            member.kill()

    def kill_one(self) -> None:
        self.victims.choice(self.members).kill()

    def stop(self) -> int | None:
        codes = [member.stop() for member in self.members]
        return next((code for code in codes if code != 0), 0)

    def close(self) -> None:
        for member in self.members:
            member.close()

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(f"[{member.extra_args[1]}]\n{member.output_tail(lines)}"
                         for member in self.members)

    def fatal_lines(self) -> list[str]:
        return [line for member in self.members for line in member.fatal_lines()]

    def progress(self, timeout: float = 60.0) -> dict[str, Any]:
        for member in self.members[1:]:
            member.progress(timeout)  # alive, past INITIALIZING, no fatal error
        return self.coordinator.progress(timeout)

    def post(self, endpoint: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The same request to every instance at once; the first refusal, else the
        coordinator's answer."""
        answers: list[tuple[int, Any] | BaseException] = [None] * len(self.members)  # type: ignore[list-item]

        def ask(index: int) -> None:
            try:
                answers[index] = self._ask(self.members[index], endpoint, body)
            except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
                answers[index] = exc
        threads = [threading.Thread(target=ask, args=(index,))
                   for index in range(len(self.members))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        refused = [answer for answer in answers if answer[0] != 200]  # type: ignore[index]
        return refused[0] if refused else answers[0]  # type: ignore[return-value]

    @staticmethod
    def _ask(member: Mongosync, endpoint: str, body: dict[str, Any] | None
             ) -> tuple[int, Any]:
        """One instance's answer. /commit is asked again while that instance cannot commit
        yet (each decides canCommit itself), and an instance already COMMITTING (it had it
        before a kill) has it."""
        deadline = time.monotonic() + 120
        while True:
            status, answer = member.post(endpoint, body)
            if endpoint != "commit" or status == 200:
                return status, answer
            description = str(answer.get("errorDescription", ""))
            if "Currently in COMMITTING" in description or "Currently in COMMITTED" in \
                    description:
                return 200, {"success": True}
            if "canCommit is false" not in description or time.monotonic() > deadline:
                return status, answer
            time.sleep(0.2)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                 what: str) -> dict[str, Any]:
        return wait_for_progress(self.progress, predicate, timeout, what)


def wait_for_progress(progress: Callable[[], dict[str, Any]],
                      predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                      before_failing: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Poll ``progress`` until ``predicate`` holds; a CampaignFailure after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = progress()
        if predicate(last):
            return last
        time.sleep(0.1)
    before_failing()
    raise CampaignFailure(f"{what} not reached within {timeout:.0f}s",
                          [f"last progress: {json.dumps(last, default=str)[:4000]}"])


# -- the workload -----------------------------------------------------------------------------


def expand(document: Any) -> Any:
    """``{"$big": n}`` placeholders become strings of ``n`` bytes, and a field ``{"$fill": n}``
    the string that makes its document ``n`` bytes once encoded (kept small in plans)."""
    if isinstance(document, dict):
        if set(document) == {"$big"}:
            return "B" * int(document["$big"])
        expanded = {key: expand(item) for key, item in document.items()}
        for key, item in expanded.items():
            if isinstance(item, dict) and set(item) == {"$fill"}:
                expanded[key] = ""
                expanded[key] = "F" * max(0, int(item["$fill"]) - len(bson.encode(expanded)))
        return expanded
    if isinstance(document, list):
        return [expand(item) for item in document]
    return document


class Workload:
    def __init__(self, client: pymongo.MongoClient, stats: Counter[str],
                 admin: pymongo.MongoClient | None = None) -> None:
        self.client = client
        self.admin = admin  # an operator's client, for what the application may not do
        self.stats = stats
        self.refused: Counter[int] = Counter()
        self.unexpected: list[str] = []

    def run(self, op: Op) -> None:
        try:
            self._run(op, None)
            self.stats["ops_ok"] += 1
        except BulkWriteError as exc:
            codes = {error.get("code") for error in exc.details.get("writeErrors", [])}
            if codes <= REFUSED_AS_MONGODB_DOES and not exc.details.get("writeConcernErrors"):
                self.stats["ops_refused"] += 1
                for code in codes:
                    self.refused[int(code or 0)] += 1
            else:
                self.unexpected.append(f"{op.describe()}: {str(exc.details)[:400]}")
        except OperationFailure as exc:
            if exc.code in REFUSED_AS_MONGODB_DOES:
                self.stats["ops_refused"] += 1
                self.refused[int(exc.code or 0)] += 1
            else:
                self.unexpected.append(f"{op.describe()}: {exc.code} {str(exc)[:400]}")
        except PyMongoError as exc:
            self.unexpected.append(f"{op.describe()}: {type(exc).__name__}: {str(exc)[:400]}")

    def _run(self, op: Op, session: Any) -> None:
        args = op.args
        if op.kind == "noop":
            return
        if op.kind == "transaction":
            self._transaction(args["ops"], args["abort"])
            return
        client = self.client
        if op.kind == "drop_database":
            client.drop_database(op.db, session=session)
            return
        if op.kind == "shard_collection":
            # The operator shards a collection during the migration: its index on the key
            # first (shardCollection builds one only in an empty collection).
            assert self.admin is not None, "sharding needs the operator's client"
            key = args["key"]
            self.admin[op.db].command("createIndexes", op.coll, indexes=[
                {"key": key, "name": "_".join(f"{k}_{v}" for k, v in key.items())}])
            self.admin.admin.command("shardCollection", f"{op.db}.{op.coll}", key=key)
            return
        if op.kind == "rename":
            client.admin.command("renameCollection", f"{op.db}.{op.coll}",
                                 to=f"{args['to_db']}.{args['to']}",
                                 dropTarget=args["dropTarget"], session=session)
            return
        assert op.db is not None and op.coll is not None
        db = client[op.db]
        collection = db[op.coll]
        kind = op.kind
        if kind == "create":
            db.command("create", op.coll, **args["options"], session=session)
        elif kind == "create_index":
            db.command("createIndexes", op.coll, indexes=[args["spec"]], session=session)
        elif kind == "drop_index":
            db.command("dropIndexes", op.coll, index=args["name"], session=session)
        elif kind == "drop":
            db.drop_collection(op.coll, session=session)
        elif kind == "coll_mod":
            db.command("collMod", op.coll, **args["command"], session=session)
        elif kind == "convert_to_capped":
            db.command("convertToCapped", op.coll, size=args["size"], session=session)
        elif kind == "clone_capped":
            db.command("cloneCollectionAsCapped", op.coll, toCollection=args["to"],
                       size=args["size"], session=session)
        elif kind == "out":
            list(collection.aggregate([{"$out": args["to"]}], session=session))
        elif kind == "insert":
            documents = lazy_documents(args["lazy"]) if "lazy" in args else \
                [expand(document) for document in args["documents"]]
            if len(documents) == 1:
                collection.insert_one(documents[0], session=session)
            else:
                collection.insert_many(documents, ordered=args.get("ordered", True),
                                       session=session)
        elif kind == "update_one":
            collection.update_one(args["filter"], expand(args["update"]),
                                  upsert=args.get("upsert", False),
                                  array_filters=args.get("array_filters"), session=session)
        elif kind == "update_many":
            collection.update_many(args["filter"], args["update"], session=session)
        elif kind == "replace_one":
            collection.replace_one(args["filter"], expand(args["document"]),
                                   upsert=args.get("upsert", False), session=session)
        elif kind == "delete_one":
            collection.delete_one(args["filter"], session=session)
        elif kind == "delete_many":
            collection.delete_many(args["filter"], session=session)
        elif kind == "find_one_and_update":
            collection.find_one_and_update(args["filter"], args["update"], session=session)
        elif kind == "find_one_and_replace":
            collection.find_one_and_replace(args["filter"], args["document"], session=session)
        elif kind == "find_one_and_delete":
            collection.find_one_and_delete(args["filter"], session=session)
        elif kind == "bulk_write":
            requests: list[Any] = []
            for name, request in args["requests"]:
                if name == "insert":
                    requests.append(InsertOne(request["document"]))
                elif name == "update":
                    requests.append(UpdateOne(request["filter"], request["update"]))
                elif name == "replace":
                    requests.append(ReplaceOne(request["filter"], request["document"]))
                else:
                    requests.append(DeleteOne(request["filter"]))
            collection.bulk_write(requests, ordered=args["ordered"], session=session)
        else:
            raise ValueError(f"unknown operation {kind}")

    def _transaction(self, ops: list[Op], abort: bool) -> None:
        with self.client.start_session() as session:
            session.start_transaction()
            try:
                for op in ops:
                    self._run(op, session)
            except BaseException:
                if session.in_transaction:
                    session.abort_transaction()
                raise
            if abort:
                session.abort_transaction()
                self.stats["transactions_aborted"] += 1
            else:
                session.commit_transaction()
                self.stats["transactions"] += 1


# -- one seed ------------------------------------------------------------------------------------


def configure_fail_point(emulator: EmulatorProcess, mode: Any, data: dict[str, Any] | None
                         = None) -> None:
    with root_client(emulator) as client:
        command: dict[str, Any] = {"configureFailPoint": "failCommand", "mode": mode}
        if data is not None:
            command["data"] = data
        client.admin.command(command)


class SeedRun:
    def __init__(self, plan: Plan, long: bool, out: Callable[[str], None],
                 tamper: Callable[[EmulatorProcess, EmulatorProcess], None] | None = None
                 ) -> None:
        self.tamper = tamper
        self.plan = plan
        self.long = long
        self.out = out
        self.outcome = Outcome(seed=plan.seed, big=plan.big, long=long,
                               server_copies=plan.server_copies,
                               hot_documents=bool(plan.hot_documents),
                               sharded_destination=plan.sharded_destination,
                               sharded_source=plan.sharded_source,
                               one_per_shard=plan.one_per_shard)
        self.stats = self.outcome.stats
        self.restart_at: float | None = None
        self.destination_own: dict[str, Any] = {}
        self.timeline: list[str] = []
        self._last_lap = time.monotonic()
        self.pace = random.Random(plan.seed)

    def _lap(self, name: str) -> None:
        now = time.monotonic()
        self.outcome.timings[name] = now - self._last_lap
        self._last_lap = now

    def run(self, log_dir: Path) -> None:
        plan = self.plan
        extra = ["--noop-interval", "1"]
        if plan.big:
            extra += ["--oplog-size-mb", "2048"]
        # A sharded cluster: two shards behind a router, which every client of it (mongosync,
        # the application, the checks, injected faults) talks to.
        with (start_cluster(shards=2, secured=True, extra_args=extra) if plan.sharded_source
              else start_secured_emulator("replset", extra_args=extra)) as source, \
                (start_cluster(shards=2, secured=True, extra_args=extra)
                 if plan.sharded_destination
                 else start_secured_emulator("replset", extra_args=extra)) as destination:
            self.source, self.destination = source, destination
            mongosync: Mongosync | MongosyncGroup = \
                MongosyncGroup(source, destination, log_dir, plan.load_level,
                               plan.hot_documents, plan.seed) \
                if plan.one_per_shard and isinstance(source, ClusterProcess) else \
                Mongosync(source, destination, log_dir, plan.load_level, plan.hot_documents)
            self.mongosync = mongosync
            try:
                with app_client(source) as application, root_client(source) as operator:
                    workload = Workload(application, self.stats, operator)
                    self.workload = workload
                    self._lap("clusters")
                    self._setup(plan.setup)
                    self._check_workload("setup")
                    if plan.destination_setup:
                        with app_client(destination) as owner:
                            data = Workload(owner, Counter())
                            for op in plan.destination_setup:
                                data.run(op)
                            if data.unexpected:
                                raise CampaignFailure("could not load the destination's data",
                                                      data.unexpected)
                        with root_client(destination) as client:
                            self.destination_own = check.snapshot(
                                client, {f"{op.db}.{op.coll}" for op in plan.destination_setup})
                    self._lap("setup")
                    mongosync.start()
                    if plan.conflict is not None:
                        self._refused_conflict(plan.conflict)
                    status, body = mongosync.post("start", plan.start_body)
                    if status != 200:
                        raise CampaignFailure(f"/start refused: {status} {body}")
                    self._note("/start accepted")
                    slowed = source if plan.slow_side == "source" else destination
                    slow_commands = ["find", "getMore"] if plan.slow_side == "source" else \
                        ["insert"]
                    configure_fail_point(slowed, "alwaysOn", {
                        "failCommands": slow_commands, "blockConnection": True,
                        "blockTimeMS": plan.slow_ms, "appName": "pymongosync"})
                    try:
                        self._steps(plan.copy)
                        if mongosync.alive:
                            info = mongosync.progress().get("info")
                            if info in ("collection copy", "initializing collections and "
                                        "indexes", "initializing partitions"):
                                self.stats["copy_ops_in_copy"] = 1
                    finally:
                        configure_fail_point(slowed, "off")
                    self._restart_if_due(force=True)
                    self._note("copy-time steps done; slow-down off")
                    self._lap("copy")
                    mongosync.wait_for(lambda p: p.get("info") == "change event application",
                                       timeout=180, what="change event application")
                    self._lap("to_cea")
                    self._steps(plan.cea)
                    self._restart_if_due(force=True)
                    self._check_workload("timeline")
                    self._lap("cea")
                self._commit()
                self._lap("commit")
                if self.tamper is not None:
                    self.tamper(source, destination)
                self._check_end_state()
                self._lap("check")
            finally:
                mongosync.close()

    def _setup(self, setup: list[Op]) -> None:
        """The plan's setup; on a sharded source, every database on one shard first, and the
        plan's collections sharded as they are created (empty: sharding builds the index)."""
        if not self.plan.sharded_source:
            for op in setup:
                self.workload.run(op)
            return
        with root_client(self.source) as admin:
            for db in sorted({op.db for op in setup if op.db}):
                admin.admin.command("enableSharding", db, primaryShard="shard01")
            for op in setup:
                self.workload.run(op)
                key = self.plan.source_shard_keys.get(f"{op.db}.{op.coll}")
                if op.kind == "create" and key is not None:
                    admin.admin.command("shardCollection", f"{op.db}.{op.coll}", key=key)

    def _check_workload(self, where: str) -> None:
        if self.workload.unexpected:
            raise CampaignFailure(f"the workload got unexpected errors ({where})",
                                  self.workload.unexpected[:20])

    def _note(self, text: str) -> None:
        """The timeline as run, with times (timeline.txt, to read beside mongosync's log)."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S.%f")
        self.timeline.append(f"{stamp} {text}")

    def _steps(self, steps: list[Step]) -> None:
        for step in steps:
            self._restart_if_due()
            if self.plan.pace_ms:
                time.sleep(self.pace.uniform(0, self.plan.pace_ms / 1000))
            if isinstance(step, Op) and step.kind == "rename" and \
                    "rename-during-listing" in AVOIDED:
                self._after_listing()
            self._note(step.describe())
            if isinstance(step, Op):
                self.workload.run(step)
            elif isinstance(step, Pause):
                self._pause(step)
            elif isinstance(step, Reset):
                self._reset(step)
            elif isinstance(step, Kill):
                time.sleep(step.delay)
                if self.mongosync.alive:
                    self.mongosync.kill_one()
                    self.stats["kills"] += 1
                self.restart_at = time.monotonic() + step.down_for
            elif isinstance(step, Fault):
                target = self.source if step.cluster == "source" else self.destination
                configure_fail_point(target, {"times": step.times}, step.data)
                self.stats["faults"] += 1

    def _after_listing(self) -> None:
        """Wait until the migration has listed the source's namespaces (an open defect: see
        AVOIDED in generator.py)."""
        self._restart_if_due(force=True)
        if not self.mongosync.alive:
            return
        self.mongosync.wait_for(
            lambda p: (p.get("copyDetails") or {}).get("phase") not in
            (None, "initializing collections and indexes") or p.get("state") != "RUNNING",
            timeout=120, what="the listing of the source's namespaces")

    def _refused_conflict(self, namespace: str) -> None:
        """A namespace to migrate that the destination holds too: /start refuses, writing
        nothing (spec §3.3); once it is dropped there, /start is accepted."""
        db, coll = namespace.split(".", 1)
        with app_client(self.destination) as client:
            client[db][coll].insert_one({"_id": "destination's own", "conflict": True})
        status, body = self.mongosync.post("start", self.plan.start_body)
        # ensure_ascii=False: a namespace like db0.名前 is in the body as itself, not escaped.
        if status == 200 or namespace not in json.dumps(body, ensure_ascii=False):
            raise CampaignFailure(f"/start with {namespace} on both sides answered {status} "
                                  f"{body}")
        with root_client(self.destination) as client:
            if any(name.startswith("mongosync_reserved") for name in
                   client.list_database_names()):
                raise CampaignFailure("a refused /start left metadata on the destination")
            client[db].drop_collection(coll)
        self.stats["conflicts_refused"] += 1

    def _reset(self, reset: Reset) -> None:
        """Abandon the migration and start a new one (spec §15.3, with `mongosync reset`)."""
        self._restart_if_due(force=True)
        mongosync = self.mongosync
        mongosync.kill()
        self.stats["kills"] += 1
        if reset.interrupt_after is not None:
            with root_client(self.destination) as client:
                before = set(client.list_database_names())
            process = self._reset_process()
            time.sleep(reset.interrupt_after)
            if process.poll() is None:
                process.kill()
                self.stats["resets_interrupted"] += 1
            process.wait()
            # A process started now must not resume a migration whose reset began.
            mongosync.start()
            deadline = time.monotonic() + 60
            while mongosync.alive and time.monotonic() < deadline:
                try:
                    state = mongosync.progress(timeout=5).get("state")
                except CampaignFailure:
                    break
                if state == "IDLE":
                    break  # the reset had finished
                if state not in ("INITIALIZING", None):
                    with root_client(self.destination) as client:
                        dropped = before - set(client.list_database_names())
                    if dropped:
                        raise CampaignFailure(
                            f"a process started after an interrupted reset took the migration "
                            f"over ({state}) although the reset had dropped {sorted(dropped)}",
                            mongosync.output_tail().splitlines())
                    break  # killed before it changed anything: resuming is right
                time.sleep(0.2)
            mongosync.kill()
        self._run_reset()
        mongosync.start()
        status, body = mongosync.post("start", self.plan.start_body)
        if status != 200:
            raise CampaignFailure(f"/start after reset refused: {status} {body}")
        self.stats["resets"] += 1

    def _reset_process(self) -> subprocess.Popen[bytes]:
        output = open(self.mongosync.log_dir / f"reset{self.stats['resets']}.txt", "ab")
        process = subprocess.Popen(
            [str(MONGOSYNC), "reset", "--cluster0", self.source.uri, "--cluster1",
             self.destination.uri, "--yes"], stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.mongosync.log_dir)
        output.close()
        return process

    def _run_reset(self) -> None:
        """`mongosync reset --yes` until it succeeds (it refuses while the killed process's
        lease is still live)."""
        deadline = time.monotonic() + 60
        while True:
            process = self._reset_process()
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise CampaignFailure("mongosync reset did not finish in 120 s") from None
            if code == 0:
                return
            if time.monotonic() > deadline:
                log = (self.mongosync.log_dir / f"reset{self.stats['resets']}.txt")
                raise CampaignFailure(f"mongosync reset failed (status {code})",
                                      log.read_text(errors="replace").splitlines()[-20:])
            time.sleep(1)

    def _pause(self, pause: Pause) -> None:
        self._restart_if_due(force=True)
        mongosync = self.mongosync
        status, body = mongosync.post("pause")
        if status == 503 and body.get("error") == "ClusterUnavailable":
            # Waiting on a cluster (an injected fault): it pauses at its next checkpoint.
            mongosync.wait_for(lambda p: p.get("state") == "PAUSED", timeout=120,
                               what="PAUSED after a /pause answered 503")
        elif status != 200:
            # Only RUNNING can be paused; any other answer must say why, as the API promises.
            if status != 409:
                raise CampaignFailure(f"/pause answered {status} {body}")
            return
        self.stats["pauses"] += 1
        if mongosync.progress().get("state") != "PAUSED":
            raise CampaignFailure(f"not PAUSED after /pause: {mongosync.progress()}")
        time.sleep(pause.seconds)
        if pause.kill:
            mongosync.kill()
            self.stats["kills"] += 1
            mongosync.start()
            if mongosync.progress().get("state") != "PAUSED":
                raise CampaignFailure("a process restarted while PAUSED is not PAUSED: "
                                      f"{mongosync.progress()}")
        deadline = time.monotonic() + 120
        while True:
            status, body = mongosync.post("resume")
            if status == 200:
                break
            # 503 ClusterUnavailable says "try again": the process lost its lease to an
            # unreachable destination (an injected fault) and takes it back once it answers.
            # Any other refusal, or this one for two minutes, is a failure.
            if status != 503 or body.get("error") != "ClusterUnavailable" or \
                    time.monotonic() > deadline:
                raise CampaignFailure(f"/resume answered {status} {body}")
            time.sleep(0.5)

    def _restart_if_due(self, force: bool = False) -> None:
        if self.restart_at is None:
            return
        if force or time.monotonic() >= self.restart_at:
            delay = self.restart_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.restart_at = None
            self.mongosync.start()

    def _commit(self) -> None:
        mongosync = self.mongosync
        progress = mongosync.wait_for(lambda p: p.get("canCommit") is True, timeout=180,
                                      what="canCommit")
        self.stats["events"] = int(progress.get("totalEventsApplied") or 0)
        deadline = time.monotonic() + 120
        while True:
            status, body = mongosync.post("commit")
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise CampaignFailure(f"/commit refused: {status} {body}")
            time.sleep(0.2)
        for kill in self.plan.commit_kills:
            time.sleep(kill.delay)
            if mongosync.alive:
                mongosync.kill()
                self.stats["kills"] += 1
            mongosync.start()
        done = mongosync.wait_for(lambda p: p.get("state") == "COMMITTED", timeout=180,
                                  what="COMMITTED")
        if done.get("canWrite") is not True:
            raise CampaignFailure(f"COMMITTED without canWrite: {done}")
        self.stats["events"] = max(self.stats["events"],
                                   int(done.get("totalEventsApplied") or 0))

    def _check_end_state(self) -> None:
        plan = self.plan
        pre_existing = bool(plan.start_body.get("preExistingDestinationData"))
        product_filter = StartRequest.from_document(plan.start_body).namespace_filter() \
            if plan.namespace_filter is not None else None
        with root_client(self.source) as left, root_client(self.destination) as right:
            comparison = compare_clusters(left, right, namespace_filter=product_filter,
                                          compare_indexes=True, include_views=not pre_existing)
            independent = check.compare(
                left, right, include=None if plan.namespace_filter is None
                else plan.namespace_filter.includes, include_views=not pre_existing,
                destination_own=self.destination_own,
                destination_shard_keys=check.shard_keys(right)
                if plan.sharded_destination else None)
            if self.destination_own:
                now = check.snapshot(right, self.destination_own)
                for name, before in self.destination_own.items():
                    if now[name] != before:
                        independent.append(f"{name}: the destination's own data changed")
            self.stats["namespaces"], self.stats["documents"] = check.counts(left)
        details = [f"{d.namespace}: {d.kind}: {d.detail[:700]}"
                   for d in comparison.differences[:30]]
        if independent:
            details += ["independent check:"] + [f"  {line[:700]}" for line in independent[:30]]
        if not comparison.equal or independent:
            raise CampaignFailure(
                f"{len(comparison.differences)} differences after commit (verifier), "
                f"{len(independent)} (independent check)", details)
        if self.stats["namespaces"] == 0:
            raise CampaignFailure("nothing was compared: the source has no namespace left")
        # Write blocking (spec §9.2): the source is blocked at commit unless the migration is
        # filtered or has pre-existing destination data; the destination is open.
        with app_client(self.source) as application:
            try:
                application.campaign_probe.blocked.insert_one({"probe": True})
                application.drop_database("campaign_probe")
                if plan.namespace_filter is None:
                    raise CampaignFailure("the source accepts application writes after commit")
            except OperationFailure as exc:
                if exc.code != USER_WRITES_BLOCKED:
                    raise CampaignFailure(f"unexpected error writing to the source: {exc}")
                if plan.namespace_filter is not None:
                    raise CampaignFailure("a filtered migration blocked the source's writes "
                                          "(spec §9.2: destination only)") from None
        with app_client(self.destination) as application:
            try:
                application.campaign_probe.open.insert_one({"probe": True})
                application.drop_database("campaign_probe")
            except OperationFailure as exc:
                raise CampaignFailure(f"the destination refuses application writes after "
                                      f"commit: {exc}") from None
        code = self.mongosync.stop()
        if code != 0:
            raise CampaignFailure(f"mongosync did not stop cleanly on SIGTERM (status {code})",
                                  self.mongosync.output_tail().splitlines())


def run_seed(seed: int, big: bool = False, long: bool = False,
             out: Callable[[str], None] = print, keep_logs: bool = False,
             tamper: Callable[[EmulatorProcess, EmulatorProcess], None] | None = None,
             **modes: bool) -> Outcome:
    """Run one seed; never raises for a failure of the migration (see ``Outcome``).

    ``tamper(source, destination)`` runs after COMMITTED, before the checks (to show that
    they catch a difference). ``modes``: ``server_copies``, ``hot_documents`` (by default
    from the environment, see generator.py)."""
    return run_plan(generate(seed, big=big, long=long, **modes), long=long, out=out,
                    keep_logs=keep_logs, tamper=tamper)


def run_plan(plan: Plan, long: bool = False, out: Callable[[str], None] = print,
             keep_logs: bool = False,
             tamper: Callable[[EmulatorProcess, EmulatorProcess], None] | None = None
             ) -> Outcome:
    """Run a plan (a seed's, or one saved by a failed run and cut down by ``--minimize``).
    A failed run keeps its logs, ``plan.txt`` and ``plan.pickle`` (for ``--replay``)."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"campaign-{plan.seed}-"))
    run = SeedRun(plan, long, out, tamper)
    started = time.monotonic()
    try:
        run.run(log_dir)
        run.outcome.passed = True
    except CampaignFailure as failure:
        run.outcome.reason = failure.reason
        run.outcome.details = failure.details
    except Exception as exc:  # noqa: BLE001 - a crash of the campaign is a failed seed too
        run.outcome.reason = f"campaign error: {type(exc).__name__}: {exc}"
        run.outcome.details = traceback.format_exc().splitlines()[-25:]
    run.outcome.seconds = time.monotonic() - started
    if run.outcome.passed and not keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        run.outcome.log_dir = str(log_dir)
        (log_dir / "plan.txt").write_text("\n".join(plan.lines()) + "\n")
        (log_dir / "timeline.txt").write_text("\n".join(run.timeline) + "\n")
        with open(log_dir / "plan.pickle", "wb") as saved:
            pickle.dump(plan, saved)
    workload = getattr(run, "workload", None)
    if workload is not None:
        for code, count in workload.refused.items():
            run.outcome.stats[f"refused_{code}"] = count
    return run.outcome


def load_plan(path: str | Path) -> Plan:
    with open(path, "rb") as saved:
        plan = pickle.load(saved)
    assert isinstance(plan, Plan)
    return plan


def minimize(plan: Plan, same_failure: Callable[[Outcome], bool],
             out: Callable[[str], None] = print, budget: int = 80) -> Plan:
    """Remove steps of the timelines and the setup (halves, quarters, ... one by one) while
    the failure persists; at most ``budget`` runs. The smallest failing plan found."""
    runs = 0

    def parts(candidate: Plan) -> list[tuple[str, int]]:
        return [(name, index) for name in ("commit_kills", "cea", "copy", "setup")
                for index in range(len(getattr(candidate, name)))]

    def without(candidate: Plan, removed: set[tuple[str, int]]) -> Plan:
        changes = {name: [step for index, step in enumerate(getattr(candidate, name))
                          if (name, index) not in removed]
                   for name in ("commit_kills", "cea", "copy", "setup")}
        return dataclasses.replace(candidate, **changes)

    best = plan
    size = max(1, len(parts(best)) // 2)
    while size >= 1 and runs < budget:
        index = 0
        removed_any = False
        while index < len(parts(best)) and runs < budget:
            if size >= len(parts(best)):
                break  # removing everything proves nothing
            chunk = set(parts(best)[index:index + size])
            candidate = without(best, chunk)
            runs += 1
            outcome = run_plan(candidate)
            kept = not outcome.passed and same_failure(outcome)
            out(f"minimize: {len(parts(candidate))} steps: "
                f"{'still fails' if kept else 'passes or fails otherwise'} "
                f"({outcome.reason[:80] or 'passed'})")
            if kept:
                best = candidate
                removed_any = True
            else:
                index += size
        if not removed_any:
            size //= 2
    return best
