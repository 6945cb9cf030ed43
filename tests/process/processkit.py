"""Driving the real ``mongosync`` console script as a user would: a subprocess, its HTTP API,
its JSON log lines, signals. Also emulated clusters set up as pymongosync expects, a small
concurrent writer, and a TCP tripwire that proves no cluster connection was attempted."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import pymongo
from pymongo.errors import PyMongoError

from mongoemu.testing import EmulatorProcess, start_secured_emulator
from pymongosync.clusters import APP_NAME

ROOT = Path(__file__).resolve().parents[2]
MONGOSYNC = Path(sys.executable).with_name("mongosync")
# Clusters with authentication, as write blocking needs to be seen: mongosync's URIs sign in as
# root (which holds bypassWriteBlockingMode), applications as a user that does not.
CLUSTER_ARGS = ["--noop-interval", "1"]
START = {"source": "cluster0", "destination": "cluster1"}


def start_cluster(extra: list[str] | None = None) -> EmulatorProcess:
    return start_secured_emulator("replset", extra_args=CLUSTER_ARGS + list(extra or []))


def user_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    """An application's connection (no write-blocking bypass)."""
    return pymongo.MongoClient(emulator.application_uri, appname="application",
                               serverSelectionTimeoutMS=10_000)


def admin_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    return pymongo.MongoClient(emulator.uri, appname="test-admin",
                               serverSelectionTimeoutMS=10_000)


def slow_down(emulator: EmulatorProcess, command: str, milliseconds: int,
              namespace: str | None = None) -> None:
    """Make pymongosync's ``command`` calls on this cluster take ``milliseconds`` longer."""
    data: dict[str, Any] = {"failCommands": [command], "blockConnection": True,
                            "blockTimeMS": milliseconds, "appName": APP_NAME}
    if namespace is not None:
        data["namespace"] = namespace
    with admin_client(emulator) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data=data)


def speed_up(emulator: EmulatorProcess) -> None:
    with admin_client(emulator) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


class Mongosync:
    """One ``mongosync`` process; stdout (JSON log lines) and stderr are collected."""

    def __init__(self, args: list[str], cwd: Path, stdin: Any = subprocess.DEVNULL) -> None:
        if not MONGOSYNC.exists():
            raise RuntimeError(f"{MONGOSYNC} is missing: install the project (pip install -e .)")
        self.args = args
        self.process = subprocess.Popen([str(MONGOSYNC), *args], cwd=cwd, stdin=stdin,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=_drain, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.process.stdout, self.stdout),
                                              (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()
        self.port: int | None = None
        self.http = httpx.Client(timeout=30)

    # -- reading what it says ------------------------------------------------------------------
    def log(self) -> list[dict[str, Any]]:
        """The JSON log lines written to stdout so far."""
        return [json.loads(line) for line in list(self.stdout) if line.startswith("{")]

    def wait_for_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log():
                if line.get("message") == message:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {message!r} log line; exit code {self.process.poll()}\n"
                             f"{self.output()}")

    def output(self) -> str:
        return "".join(self.stdout[-60:]) + "\n--- stderr ---\n" + "".join(self.stderr[-60:])

    def wait_listening(self, timeout: float = 30.0) -> Mongosync:
        self.port = int(self.wait_for_log("HTTP server listening", timeout)["port"])
        return self

    def wait_ready(self, timeout: float = 30.0) -> Mongosync:
        """Past INITIALIZING: connected, the stored migration (if any) loaded."""
        self.wait_for(lambda p: p["state"] != "INITIALIZING", timeout, "initialization")
        return self

    # -- HTTP ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.port is not None, "wait_listening() first"
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, content: bytes | str | None = None
                ) -> httpx.Response:
        return self.http.request(method, self.url + path, content=content)

    def post(self, endpoint: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """POST /api/v1/<endpoint> with ``body`` as JSON ({} by default)."""
        response = self.request("POST", f"/api/v1/{endpoint}",
                                json.dumps({} if body is None else body))
        return response.status_code, response.json()

    def progress(self) -> dict[str, Any]:
        response = self.request("GET", "/api/v1/progress")
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["success"] is True
        return document["progress"]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 120.0,
                 what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        progress: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"mongosync exited:\n{self.output()}"
            progress = self.progress()
            if predicate(progress):
                return progress
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached; last progress: {progress}")

    # -- stopping ----------------------------------------------------------------------------
    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit code, once what the process wrote last has been read: its last lines
        may still be in the pipes when it has exited (seen under load: a test then found
        no "second signal" line)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mongosync did not exit within {timeout} s:\n"
                                 f"{self.output()}") from None
        for reader in self._readers:  # until end of file (a worker left behind may hold it)
            reader.join(5.0)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        self.http.close()


def _drain(stream: Any, sink: list[str]) -> None:
    for line in stream:  # each line must be visible as soon as it is read
        sink.append(line)


class MongosyncFactory(Protocol):
    """The ``mongosync`` fixture: call it with arguments, or use ``.clusters``."""

    def __call__(self, *args: str, stdin: object = None) -> Mongosync: ...

    def clusters(self, cluster0: EmulatorProcess, cluster1: EmulatorProcess,
                 *more: str) -> Mongosync: ...


class Tripwire:
    """A TCP listener standing in for a cluster: it only records whether anyone connected."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.port = self.socket.getsockname()[1]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def touched(self) -> bool:
        try:
            connection, _ = self.socket.accept()
        except BlockingIOError:
            return False
        connection.close()
        return True

    def close(self) -> None:
        self.socket.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class Writer:
    """Inserts, updates and deletes on the source from a thread until stopped."""

    def __init__(self, emulator: EmulatorProcess, seed: int = 1) -> None:
        self.client = user_client(emulator)
        self.random = random.Random(seed)
        self.stopped = threading.Event()
        self.operations = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        users, items = self.client.app.users, self.client.bulk.items
        while not self.stopped.is_set():
            step = self.random.randrange(4)
            try:
                if step == 0:
                    users.insert_one({"name": f"new {self.operations}", "n": self.operations})
                elif step == 1:
                    items.update_one({"i": self.random.randrange(2000)},
                                     {"$set": {"touched": self.operations},
                                      "$inc": {"updates": 1}})
                elif step == 2:
                    items.delete_one({"i": self.random.randrange(2000)})
                else:
                    items.replace_one({"i": self.random.randrange(2000, 4000)},
                                      {"i": -1, "replaced": self.operations})
                self.operations += 1
            except PyMongoError as exc:
                self.errors.append(exc)
            self.stopped.wait(0.003)

    def stop(self) -> None:
        """Stop writing (again: a no-op)."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.thread.join()
        self.client.close()


def seed(emulator: EmulatorProcess, items: int = 4000, payload: int = 300) -> None:
    with user_client(emulator) as client:
        client.app.users.create_index("name")
        client.app.users.insert_many([{"name": f"user {i}", "n": i} for i in range(500)])
        client.bulk.items.insert_many([{"i": i, "payload": "x" * payload}
                                       for i in range(items)])


def stop_gracefully(process: Mongosync, number: int = signal.SIGTERM) -> None:
    process.signal(number)
    code = process.wait_exit(30)
    assert code == 0, process.output()
