"""Two emulated clusters per test, set up as pymongosync expects to find them."""

from __future__ import annotations

from typing import Iterator

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess, start_secured_emulator
from pymongosync.clusters import Cluster

# Clusters with authentication, as write blocking needs to be seen: the URIs pymongosync gets
# sign in as root, which holds bypassWriteBlockingMode (restore); applications sign in as a
# user that does not.
CLUSTER_ARGS = ["--noop-interval", "1"]


def start_cluster(mode: str = "replset", extra: list[str] | None = None) -> EmulatorProcess:
    return start_secured_emulator(mode, extra_args=CLUSTER_ARGS + list(extra or []))


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
    return pymongo.MongoClient(emulator.application_uri, appname="application",
                               serverSelectionTimeoutMS=10_000)
