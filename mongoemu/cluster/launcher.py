"""``python -m mongoemu cluster``: start and supervise the processes of an emulated cluster.

One config server and N shards (each ``python -m mongoemu --replset NAME``, shards with
``--shardsvr``), then the router. It prints one ready line, as the replica-set emulator does::

    mongoemu ready uri=mongodb://127.0.0.1:P/ port=P mode=cluster version=7.0 \
        shards=shard01=127.0.0.1:P1,... config=127.0.0.1:PC

SIGTERM or SIGINT stops every process; SIGHUP restarts the router alone (on the same port:
``mongoemu router restarted port=P``). Children get SIGTERM if the launcher dies (Linux's
parent-death signal), and the launcher stops everything if its own parent goes away, so a
killed test run leaves nothing behind. A child dying on its own stops the whole cluster.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import Any

from mongoemu.__main__ import _release as release_argument
from mongoemu.config import WIRE_VERSIONS

_READY = re.compile(r"mongoemu ready uri=(\S+) port=(\d+)")


def die_with_parent() -> None:
    """SIGTERM the calling process when its parent dies (Linux; elsewhere nothing). The
    launcher runs it in each child between fork and exec; the campaign's workers run it too."""
    if sys.platform.startswith("linux"):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class Child:
    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, env=env,
                                        preexec_fn=die_with_parent)
        self.port: int | None = None
        self._buffer = b""

    def poll_ready(self) -> bool:
        """Read what is available of the ready line; True once it has been seen."""
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([descriptor], [], [], 0)
            if not readable:
                return False
            chunk = os.read(descriptor, 4096)
            if not chunk:
                raise RuntimeError(f"{self.name} exited before it was ready "
                                   f"(status {self.process.wait()})")
            self._buffer += chunk
        line = self._buffer.split(b"\n", 1)[0].decode(errors="replace")
        match = _READY.search(line)
        if not match:
            raise RuntimeError(f"{self.name} did not start: {line!r}")
        self.port = int(match.group(2))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_ready(children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(children)
    while waiting:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f} s: "
                               f"{', '.join(child.name for child in waiting)}")
        waiting = [child for child in waiting if not child.poll_ready()]
        if waiting:
            time.sleep(0.02)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mongoemu cluster",
        description="A sharded cluster of emulator processes: N shard replica sets, a config "
                    "server and a router that clients reach as a mongos.")
    parser.add_argument("--shards", type=int, default=2, help="number of shards (1-16)")
    parser.add_argument("--port", type=int, default=27017,
                        help="the router's port (0 picks a free one)")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--server-version", default="7.0", type=release_argument,
                        metavar="VERSION",
                        help=f"MongoDB release every process emulates: "
                             f"{', '.join(sorted(WIRE_VERSIONS))} or a patch release (7.0.12)")
    parser.add_argument("--oplog-size-mb", type=float, default=192.0,
                        help="each shard's oplog capacity in MiB")
    parser.add_argument("--noop-interval", type=float, default=1.0,
                        help="seconds between a shard's periodic no-op writes when idle "
                             "(MongoDB's periodicNoopIntervalSecs, 1-10; the router's change "
                             "streams wait for idle shards to reach this far)")
    parser.add_argument("--balancer-interval", type=float, default=1.0,
                        help="seconds between balancer rounds")
    parser.add_argument("--auth", action="store_true",
                        help="the router requires SCRAM authentication (shards and the config "
                             "server are reached only through it)")
    parser.add_argument("--user", help="root user created at start (with --auth)")
    parser.add_argument("--password", help="password of the root user (with --auth)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if not 1 <= args.shards <= 16:
        parser.error("--shards must be between 1 and 16")
    if args.auth and not (args.user and args.password):
        parser.error("--auth needs --user and --password for the initial root user")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    parent = os.getppid()
    stopping: list[str] = []
    restart: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("SIGINT"))
    signal.signal(signal.SIGHUP, lambda *_: restart.append(True))
    python = sys.executable
    version = args.server_version[1] or args.server_version[0]
    common = ["--bind", args.bind, "--server-version", version,
              "--log-level", args.log_level]
    names = [f"shard{index:02d}" for index in range(1, args.shards + 1)]
    children: list[Child] = []
    router: Child | None = None
    try:
        config = Child("config", [python, "-m", "mongoemu", "--port", "0", "--replset",
                                  "configRepl", "--noop-interval", str(args.noop_interval),
                                  *common])
        children.append(config)
        shards = []
        for name in names:
            command = [python, "-m", "mongoemu", "--port", "0", "--replset", name,
                       "--shardsvr", "--oplog-size-mb", str(args.oplog_size_mb),
                       "--noop-interval", str(args.noop_interval), *common]
            shards.append(Child(name, command))
        children += shards
        _wait_ready(children, 60.0)

        def start_router(port: int) -> Child:
            command = [python, "-m", "mongoemu.cluster.router", "--port", str(port),
                       "--config", f"{args.bind}:{config.port}",
                       "--balancer-interval", str(args.balancer_interval), *common]
            if args.auth:
                command += ["--auth", "--user", args.user, "--password", args.password]
            for shard in shards:
                command += ["--shard", f"{shard.name}={args.bind}:{shard.port}"]
            child = Child("router", command)
            _wait_ready([child], 60.0)
            return child

        router = start_router(args.port)
        shard_list = ",".join(f"{shard.name}={args.bind}:{shard.port}" for shard in shards)
        print(f"mongoemu ready uri=mongodb://{args.bind}:{router.port}/ port={router.port} "
              f"mode=cluster version={version} shards={shard_list} "
              f"config={args.bind}:{config.port}", flush=True)
        while not stopping:
            time.sleep(0.1)
            if restart:
                restart.clear()
                port = router.port or 0
                router.stop()
                router = start_router(port)
                print(f"mongoemu router restarted port={router.port}", flush=True)
            dead = [child.name for child in [*children, router] if not child.alive]
            if dead:
                print(f"mongoemu cluster: {', '.join(dead)} exited; stopping the cluster",
                      file=sys.stderr, flush=True)
                return 1
            if os.getppid() != parent:
                return 0  # whoever started the cluster is gone
        return 0
    except RuntimeError as exc:
        print(f"mongoemu cluster: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        everyone: list[Any] = ([router] if router is not None else []) + list(reversed(children))
        for child in everyone:
            if child.alive:
                child.process.terminate()
        for child in everyone:
            child.stop()
