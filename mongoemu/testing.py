"""Start emulators from Python and pytest: each one a subprocess on a free port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, TypeVar
from urllib.parse import quote_plus

_READY = re.compile(r"mongoemu ready uri=(\S+) port=(\d+)")

# A deployment where user write blocking can be seen must run with authentication: without it
# every client holds every privilege, bypassWriteBlockingMode included (as on MongoDB). These
# are the two users of such a test deployment: the migration tool's (root, which holds
# bypassWriteBlockingMode through its restore role) and an application's, which does not.
ROOT_CREDENTIALS = ("root", "emulator-root-password")
APPLICATION_CREDENTIALS = ("application", "emulator-application-password")
# An application's or operator's user: it reads, writes and administers databases and may switch
# write blocking on and off (backup), but not write through it.
APPLICATION_ROLES = ["readWriteAnyDatabase", "dbAdminAnyDatabase", "clusterMonitor", "backup"]


def with_credentials(uri: str, user: str, password: str) -> str:
    """``uri`` signing in as ``user`` against the admin database."""
    scheme, rest = uri.split("://", 1)
    separator = "&" if "?" in rest else ("?" if rest.endswith("/") else "/?")
    return (f"{scheme}://{quote_plus(user)}:{quote_plus(password)}@{rest}{separator}"
            f"authSource=admin")


@dataclass
class EmulatorProcess:
    uri: str
    port: int
    mode: str
    process: subprocess.Popen
    stderr_lines: list[str] = field(default_factory=list)
    # With authentication: ``uri`` signs in as root, this one as the application user.
    application_uri: str | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# How long a replica set may take to print its ready line. It takes about 0.3 s; once, in a
# two-worker run of the suite on 2 cores, one printed nothing for 30 s (the wait is generous
# so that a stalled machine slows the tests instead of failing them).
START_TIMEOUT_S = 60.0


def start_emulator(mode: str = "replset", server_version: str = "7.0",
                   extra_args: list[str] | None = None, port: int = 0,
                   timeout: float = START_TIMEOUT_S) -> EmulatorProcess:
    """Start ``python -m mongoemu`` and wait for its ready line; ``mode="mongos"`` starts a
    2-shard cluster (:func:`start_cluster`) and answers with its router."""
    if mode == "mongos":
        return start_cluster(shards=2, server_version=server_version, extra_args=extra_args,
                             port=port, timeout=max(timeout, 60.0))
    command = [sys.executable, "-m", "mongoemu", "--port", str(port),
               "--server-version", server_version]
    command += ["--replset", "rs0"]
    command += list(extra_args or [])
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    stderr_lines: list[str] = []
    stderr_reader = threading.Thread(target=_drain, args=(process.stderr, stderr_lines),
                                     daemon=True)
    stderr_reader.start()
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()),
                              daemon=True)
    reader.start()
    started = time.monotonic()
    reader.join(timeout)
    line = result[0] if result else ""
    match = _READY.search(line)
    if not match:
        raise _not_started("emulator", process, started, (stderr_reader, stderr_lines),
                           f"{line!r} ")
    threading.Thread(target=_drain, args=(process.stdout, []), daemon=True).start()
    return EmulatorProcess(uri=match.group(1), port=int(match.group(2)), mode=mode,
                           process=process, stderr_lines=stderr_lines)


def start_secured_emulator(mode: str = "replset", server_version: str = "7.0",
                           extra_args: list[str] | None = None, port: int = 0,
                           timeout: float = START_TIMEOUT_S) -> EmulatorProcess:
    """An emulator with authentication on, where user write blocking applies to applications.

    ``uri`` signs in as :data:`ROOT_CREDENTIALS` (what a migration tool is given) and
    ``application_uri`` as :data:`APPLICATION_CREDENTIALS`, a user with
    :data:`APPLICATION_ROLES`, none of which may bypass write blocking.
    """
    root_user, root_password = ROOT_CREDENTIALS
    emulator = start_emulator(mode, server_version,
                              ["--auth", "--user", root_user, "--password", root_password,
                               *(extra_args or [])], port, timeout)
    return _with_users(emulator, timeout)


_Process = TypeVar("_Process", bound="EmulatorProcess")


def _with_users(emulator: _Process, timeout: float) -> _Process:
    """Sign ``uri`` in as root and create the application user (``application_uri``)."""
    import pymongo

    root_user, root_password = ROOT_CREDENTIALS
    plain_uri = emulator.uri
    emulator.uri = with_credentials(plain_uri, root_user, root_password)
    user, password = APPLICATION_CREDENTIALS
    try:
        with pymongo.MongoClient(emulator.uri, serverSelectionTimeoutMS=int(timeout * 1000)) \
                as client:
            client.admin.command("createUser", user, pwd=password, roles=APPLICATION_ROLES)
    except Exception:
        emulator.stop()
        raise
    emulator.application_uri = with_credentials(plain_uri, user, password)
    return emulator


# How long a process that printed no ready line is given to exit by itself before it is said
# to be still running (one that fails on its arguments exits at once, but its status comes a
# moment after its output ends).
EXIT_GRACE_S = 2.0


def _not_started(what: str, process: subprocess.Popen[str], started: float,
                 stderr: tuple[threading.Thread, list[str]], stdout: str = "") -> RuntimeError:
    """The error for a process that printed no ready line (stopped first): whether it was
    still running, and for how long, or exited, and with which status, then what it printed
    (``stderr``: the thread reading it, and the lines read)."""
    try:  # a process whose output just ended is exiting: its status is a moment away
        status: int | None = process.wait(timeout=EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        status = None
    how = (f"still running after {time.monotonic() - started:.1f} s without its ready line"
           if status is None else f"exited with status {status}")
    process.kill()
    process.wait()
    reader, lines = stderr
    reader.join(5)  # to the end of what it printed: the pipe closed when it exited
    return RuntimeError(f"{what} did not start ({how}): {stdout}{''.join(lines)[-3000:]}")


def _drain(stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        sink.append(line)
        if len(sink) > 1000:
            del sink[:500]


def emulators(count: int, **kwargs: object) -> Iterator[list[EmulatorProcess]]:
    """A generator fixture body: ``count`` emulators, all stopped afterwards."""
    started: list[EmulatorProcess] = []
    try:
        for _ in range(count):
            started.append(start_emulator(**kwargs))  # type: ignore[arg-type]
        yield started
    finally:
        for emulator in started:
            emulator.stop()


_CLUSTER_READY = re.compile(r"mongoemu ready uri=(\S+) port=(\d+) .*shards=(\S+) config=(\S+)")


@dataclass
class ClusterProcess(EmulatorProcess):
    """``python -m mongoemu cluster``: ``uri``/``port`` are the router's."""

    shards: dict[str, str] = field(default_factory=dict)  # name -> "host:port"
    config_address: str = ""
    stdout_lines: list[str] = field(default_factory=list)

    def __enter__(self) -> "ClusterProcess":
        return self

    def shard_uri(self, name: str) -> str:
        """A direct connection to one shard (it answers as its replica set's primary)."""
        return f"mongodb://{self.shards[name]}/?directConnection=true"

    @property
    def config_uri(self) -> str:
        return f"mongodb://{self.config_address}/?directConnection=true"

    def restart_router(self, timeout: float = 60.0) -> None:
        """Stop the router and start a new one on the same port (the shards keep running)."""
        seen = len(self.stdout_lines)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("router restarted" in line for line in self.stdout_lines[seen:]):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the router did not restart: {''.join(self.stderr_lines)[-2000:]}")


def start_cluster(shards: int = 3, server_version: str = "7.0",
                  extra_args: list[str] | None = None, port: int = 0,
                  timeout: float = 90.0, secured: bool = False) -> ClusterProcess:
    """Start ``python -m mongoemu cluster --shards N`` and wait for its ready line.

    ``secured``: the router requires authentication, with the users of
    :func:`start_secured_emulator` (``uri`` as root, ``application_uri`` as the application).
    """
    command = [sys.executable, "-m", "mongoemu", "cluster", "--shards", str(shards),
               "--port", str(port), "--server-version", server_version,
               *list(extra_args or [])]
    if secured:
        command += ["--auth", "--user", ROOT_CREDENTIALS[0], "--password", ROOT_CREDENTIALS[1]]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    stderr_lines: list[str] = []
    stderr_reader = threading.Thread(target=_drain, args=(process.stderr, stderr_lines),
                                     daemon=True)
    stderr_reader.start()
    stdout_lines: list[str] = []
    threading.Thread(target=_drain, args=(process.stdout, stdout_lines), daemon=True).start()
    started = time.monotonic()
    deadline = started + timeout
    match = None
    while time.monotonic() < deadline and match is None:
        match = next((m for m in map(_CLUSTER_READY.search, list(stdout_lines)) if m), None)
        if match is None:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    if match is None:
        raise _not_started("cluster", process, started, (stderr_reader, stderr_lines))
    shard_map = dict(item.split("=", 1) for item in match.group(3).split(","))
    cluster = ClusterProcess(uri=match.group(1), port=int(match.group(2)), mode="cluster",
                             process=process, stderr_lines=stderr_lines, shards=shard_map,
                             config_address=match.group(4), stdout_lines=stdout_lines)
    return _with_users(cluster, timeout) if secured else cluster
