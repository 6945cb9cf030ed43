"""Two emulated clusters per test, set up as pymongosync expects to find them."""

from __future__ import annotations

from typing import Iterator

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess, start_emulator
from pymongosync.clusters import APP_NAME, Cluster

# The emulator grants pymongosync's connections the bypassWriteBlockingMode privilege the
# tool's user would hold (restore role) on an authenticated cluster.
BYPASS = ["--bypass-write-blocking-app", APP_NAME, "--noop-interval", "1"]


def start_cluster(mode: str = "replset", extra: list[str] | None = None) -> EmulatorProcess:
    return start_emulator(mode, extra_args=BYPASS + list(extra or []))


@pytest.fixture
def source() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def destination() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def clusters(source: EmulatorProcess, destination: EmulatorProcess
             ) -> Iterator[tuple[Cluster, Cluster]]:
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    yield cluster0, cluster1
    cluster0.close()
    cluster1.close()


def user_client(emulator: EmulatorProcess) -> pymongo.MongoClient:
    """An application's connection: no bypass of write blocking."""
    return pymongo.MongoClient(emulator.uri, appname="application",
                               serverSelectionTimeoutMS=10_000)
