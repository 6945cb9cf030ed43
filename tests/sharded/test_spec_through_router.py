"""MongoDB's unified-format spec tests through the router of a 2-shard cluster
(``python -m mongoemu.spectest --cluster 2``): every case that may run on a sharded deployment
runs there, and none may fail. (The full comparison with a replica set, every suite, is in the
README; these two suites keep this test short.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mongoemu.spectest import run_suites

SPEC_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "spec-tests"
SUITES = ["crud", "transactions-convenient-api"]


def test_spec_suites_pass_through_the_router(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [SPEC_ROOT / suite for suite in SUITES]
    if not all(path.is_dir() for path in paths):
        pytest.skip("../shared/spec-tests not found")
    report = run_suites(paths, None, server_version="7.0", log=lambda _: None, cluster_shards=2)
    with capsys.disabled():
        print()
        print(report.format())
    for suite in SUITES:
        result = report.suite(suite)
        assert result.passed > 0 and result.failed == 0, result.format()
    assert report.suite("crud").passed >= 240
