"""Start emulators from Python and pytest: each one a subprocess on a free port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator

_READY = re.compile(r"mongoemu ready uri=(\S+) port=(\d+)")


@dataclass
class EmulatorProcess:
    uri: str
    port: int
    mode: str
    process: subprocess.Popen
    stderr_lines: list[str] = field(default_factory=list)

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


def start_emulator(mode: str = "replset", server_version: str = "7.0",
                   extra_args: list[str] | None = None, port: int = 0,
                   timeout: float = 30.0) -> EmulatorProcess:
    """Start ``python -m mongoemu`` and wait for its ready line."""
    command = [sys.executable, "-m", "mongoemu", "--port", str(port),
               "--server-version", server_version]
    command += ["--mongos"] if mode == "mongos" else ["--replset", "rs0"]
    command += list(extra_args or [])
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    stderr_lines: list[str] = []
    threading.Thread(target=_drain, args=(process.stderr, stderr_lines), daemon=True).start()
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    line = result[0] if result else ""
    match = _READY.search(line)
    if not match:
        process.kill()
        process.wait()
        raise RuntimeError(f"emulator did not start: {line!r} {''.join(stderr_lines)[-2000:]}")
    threading.Thread(target=_drain, args=(process.stdout, []), daemon=True).start()
    return EmulatorProcess(uri=match.group(1), port=int(match.group(2)), mode=mode,
                           process=process, stderr_lines=stderr_lines)


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
