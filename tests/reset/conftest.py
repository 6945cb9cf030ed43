"""Fixtures of the reset tests: two emulated clusters as pymongosync finds them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mongoemu.testing import EmulatorProcess

from .resetkit import start_cluster


@pytest.fixture
def source() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def destination() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator
