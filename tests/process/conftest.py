"""Fixtures for the process tests: emulated clusters and mongosync processes, all stopped
after each test whatever happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mongoemu.testing import EmulatorProcess

from .processkit import Mongosync, MongosyncFactory, Tripwire, start_cluster


@pytest.fixture
def source() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def destination() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture
def mongosync(tmp_path: Path) -> Iterator[MongosyncFactory]:
    """``mongosync(*args)`` starts the console script in ``tmp_path`` (where its metrics log
    goes); ``mongosync.clusters(source, destination, *more)`` adds --cluster0/--cluster1, a
    free port and --acceptDisclaimer, and waits until the process is past INITIALIZING."""
    started: list[Mongosync] = []

    def start(*args: str, stdin: object = None) -> Mongosync:
        process = Mongosync(list(args), cwd=tmp_path,
                            **({"stdin": stdin} if stdin is not None else {}))
        started.append(process)
        return process

    def clusters(cluster0: EmulatorProcess, cluster1: EmulatorProcess, *more: str) -> Mongosync:
        return start("--cluster0", cluster0.uri, "--cluster1", cluster1.uri, "--port", "0",
                     "--acceptDisclaimer", *more).wait_listening().wait_ready()

    start.clusters = clusters  # type: ignore[attr-defined]
    yield start  # type: ignore[misc]
    for process in started:
        process.close()
