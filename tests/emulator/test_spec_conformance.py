"""MongoDB unified-format spec tests run against the emulator: the server's conformance gate.

The spec files live outside the repository (../shared/spec-tests); without them the tests skip.
Each suite prints its counts; crud, change-streams and transactions must pass at least 90% of
the cases that are not skipped for a written reason (see mongoemu/spectest/skips.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongoemu.spectest import run_suites

SPEC_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "spec-tests"
SUITES = ["crud", "change-streams", "transactions", "sessions", "collection-management", "index-management"]
GATED_SUITES = {"crud": 90.0, "change-streams": 90.0, "transactions": 90.0}
SERVER_VERSION = "7.0"


@pytest.fixture(scope="module")
def emulator_uris() -> Iterator[tuple[str, str | None]]:
    """A replica-set emulator and a mongos emulator shared by all suites of this module.

    A mongos that fails to start only costs the sharded-only cases (skipped with that reason);
    the replica set is required.
    """
    if not SPEC_ROOT.is_dir():
        pytest.skip("../shared/spec-tests not found")
    from mongoemu.testing import start_emulator

    with contextlib.ExitStack() as stack:
        replset = stack.enter_context(start_emulator(mode="replset", server_version=SERVER_VERSION))
        try:
            sharded_uri: str | None = stack.enter_context(
                start_emulator(mode="mongos", server_version=SERVER_VERSION)).uri
        except Exception as exc:  # noqa: BLE001 - reported, then the run goes on without sharded cases
            warnings.warn(f"mongos emulator did not start, sharded-only spec tests are skipped: {exc}")
            sharded_uri = None
        yield replset.uri, sharded_uri


@pytest.mark.parametrize("suite", SUITES)
def test_spec_suite(suite: str, emulator_uris: tuple[str, str | None], capsys: pytest.CaptureFixture[str]) -> None:
    path = SPEC_ROOT / suite
    if not path.is_dir():
        pytest.skip(f"../shared/spec-tests/{suite} not found")
    uri, sharded_uri = emulator_uris
    report = run_suites([path], uri, sharded_uri, server_version=SERVER_VERSION, log=lambda _: None)
    result = report.suite(suite)
    with capsys.disabled():
        print()
        print(result.format())
    threshold = GATED_SUITES.get(suite)
    if threshold is not None:
        rate = result.pass_rate
        assert rate is not None, f"{suite}: no case ran"
        assert rate >= threshold, (f"{suite}: pass rate {rate:.1f}% of non-skipped cases is below "
                                   f"{threshold:.0f}% ({result.failed} failed)")
