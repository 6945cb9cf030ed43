"""Shared fixtures: emulated servers on free ports, stopped after use."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mongoemu.testing import EmulatorProcess, start_emulator

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
def mongos() -> Iterator[EmulatorProcess]:
    with start_emulator("mongos") as emulator:
        yield emulator


@pytest.fixture
def fresh_replset() -> Iterator[EmulatorProcess]:
    with start_emulator("replset") as emulator:
        yield emulator
