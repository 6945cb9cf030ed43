"""The campaign's marker: ``-m "not campaign"`` deselects its seeds."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "campaign: the randomized differential campaign's fixed seeds (each one a "
                   "whole migration with kills and faults; about 10 s each)")
