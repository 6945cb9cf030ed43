"""Shared fixtures: emulated servers on free ports, stopped after use."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mongoemu.testing import ClusterProcess, EmulatorProcess, start_cluster, start_emulator

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test cleanly when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} not found (shared research data absent)")
    return path


@pytest.fixture(scope="session")
def replset() -> Iterator[EmulatorProcess]:
    with start_emulator("replset") as emulator:
        yield emulator


@pytest.fixture(scope="session")
def mongos() -> Iterator[ClusterProcess]:
    """The router of a 2-shard cluster (python -m mongoemu cluster), shared by the session."""
    with start_cluster(shards=2) as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[ClusterProcess]:
    """A 3-shard cluster of its own; shards write no-ops twice a second so change streams on
    the router move on quickly, and the balancer looks every half second."""
    with start_cluster(shards=3, extra_args=["--noop-interval", "0.5",
                                             "--balancer-interval", "0.5"]) as started:
        yield started


@pytest.fixture
def fresh_replset() -> Iterator[EmulatorProcess]:
    with start_emulator("replset") as emulator:
        yield emulator
