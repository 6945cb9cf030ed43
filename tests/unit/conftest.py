"""Unit tests run without a server; only the contract tests ask for an emulated one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def emulated_uri() -> Iterator[str]:
    """One emulated replica set (with authentication, as the product tests run it), started
    the first time a contract test needs it. It fails rather than skips when the emulator does
    not start: the fakes are only trustworthy while the contract holds."""
    pytest.importorskip("mongoemu.testing")
    from tests.product.conftest import start_cluster

    with start_cluster() as emulator:
        yield emulator.uri
