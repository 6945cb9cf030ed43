"""Fixtures of the reset tests: two emulated clusters as pymongosync finds them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync import reset

from .resetkit import start_cluster


@pytest.fixture
def source() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def destination() -> Iterator[EmulatorProcess]:
    with start_cluster() as emulator:
        yield emulator


@pytest.fixture
def after_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the 10 s a real operator waits after stopping mongosync (its last heartbeat ages).

    Only for tests whose migration process is already dead; the refusal test keeps the wait.
    """
    monkeypatch.setattr(reset, "LIVE_HEARTBEAT_SECONDS", 0.0)
