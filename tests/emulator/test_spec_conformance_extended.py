"""More of MongoDB's unified-format spec suites run against the emulator: retryable writes and
reads, the convenient transactions API, the Stable API, read/write concern and index
management, at 7.0 in full and at 8.0 for a subset centred on the 8.0 ``bulkWrite`` command.

Each suite must pass at least 98% of the cases not skipped for a written reason
(mongoemu/spectest/skips.py). The spec files live outside the repository
(../shared/spec-tests); without them the tests skip. Every suite at both versions, from the
command line: ``python -m mongoemu.spectest ../shared/spec-tests/<suite> ... --server-version
8.0`` (the README lists the figures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongoemu.spectest import run_suites
from mongoemu.spectest.runner import AUTH_PASSWORD, AUTH_USER

SPEC_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "spec-tests"
SUITES_70 = ["retryable-writes", "retryable-reads", "transactions-convenient-api", "versioned-api",
             "read-write-concern", "index-management"]
# At 8.0: every client bulkWrite case (crud, retryable writes, transactions), and the suites
# whose answers change with the version (Stable API, search index commands).
SUITES_80 = {"crud": "client-bulkWrite", "retryable-writes": "client-bulkWrite",
             "transactions": "client-bulkWrite", "versioned-api": None, "index-management": None}
THRESHOLD = 98.0


def _emulators(version: str) -> Iterator[tuple[str, str, str]]:
    """A replica set, a mongos and a replica set with authentication (for the cases that
    require it), shared by the suites of one version."""
    if not SPEC_ROOT.is_dir():
        pytest.skip("../shared/spec-tests not found")
    from mongoemu.testing import start_emulator

    with contextlib.ExitStack() as stack:
        replset = stack.enter_context(start_emulator(mode="replset", server_version=version))
        mongos = stack.enter_context(start_emulator(mode="mongos", server_version=version))
        secured = stack.enter_context(start_emulator(
            mode="replset", server_version=version,
            extra_args=["--auth", "--user", AUTH_USER, "--password", AUTH_PASSWORD]))
        auth_uri = secured.uri.replace("mongodb://", f"mongodb://{AUTH_USER}:{AUTH_PASSWORD}@", 1)
        yield replset.uri, mongos.uri, auth_uri


@pytest.fixture(scope="module")
def emulators_70() -> Iterator[tuple[str, str, str]]:
    yield from _emulators("7.0")


@pytest.fixture(scope="module")
def emulators_80() -> Iterator[tuple[str, str, str]]:
    yield from _emulators("8.0")


def _check(suite: str, version: str, uris: tuple[str, str, str], pattern: str | None,
           capsys: pytest.CaptureFixture[str]) -> None:
    path = SPEC_ROOT / suite
    if not path.is_dir():
        pytest.skip(f"../shared/spec-tests/{suite} not found")
    uri, sharded_uri, auth_uri = uris
    report = run_suites([path], uri, sharded_uri, server_version=version, log=lambda _: None,
                        auth_uri=auth_uri, pattern=pattern)
    result = report.suite(suite)
    with capsys.disabled():
        print()
        print(f"[{version}] {result.format()}")
    rate = result.pass_rate
    assert rate is not None, f"{suite} at {version}: no case ran"
    assert rate >= THRESHOLD, (f"{suite} at {version}: pass rate {rate:.1f}% of non-skipped "
                               f"cases is below {THRESHOLD:.0f}% ({result.failed} failed)")


@pytest.mark.parametrize("suite", SUITES_70)
def test_spec_suite_70(suite: str, emulators_70: tuple[str, str, str],
                       capsys: pytest.CaptureFixture[str]) -> None:
    _check(suite, "7.0", emulators_70, None, capsys)


@pytest.mark.parametrize("suite", sorted(SUITES_80))
def test_spec_suite_80(suite: str, emulators_80: tuple[str, str, str],
                       capsys: pytest.CaptureFixture[str]) -> None:
    files = SUITES_80[suite]
    _check(suite, "8.0", emulators_80, rf"^{suite}/{files}" if files else None, capsys)
