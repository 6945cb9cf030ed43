"""What the reproductions share: two authenticated emulators and a migration driven as a
library (pymongosync's Migration), the way tests/product does."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mongoemu.testing import EmulatorProcess, start_secured_emulator
from pymongosync.clusters import Cluster
from pymongosync.migration import Migration
from pymongosync.request import StartRequest

START = {"source": "cluster0", "destination": "cluster1"}


@contextlib.contextmanager
def clusters() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    with start_secured_emulator("replset", extra_args=["--noop-interval", "1"]) as source, \
            start_secured_emulator("replset", extra_args=["--noop-interval", "1"]) as destination:
        yield source, destination


def application(emulator: EmulatorProcess) -> pymongo.MongoClient:
    return pymongo.MongoClient(emulator.application_uri, appname="application")


@contextlib.contextmanager
def migration(source: EmulatorProcess, destination: EmulatorProcess,
              body: dict[str, Any] | None = None) -> Iterator[Migration]:
    cluster0 = Cluster.connect("cluster0", source.uri)
    cluster1 = Cluster.connect("cluster1", destination.uri)
    running = Migration.open(cluster0, cluster1)
    running.start(StartRequest.from_document(body or START))
    try:
        yield running
    finally:
        running.close()
        cluster0.close()
        cluster1.close()


def commit(running: Migration) -> None:
    running.wait_for(lambda p: p["canCommit"], timeout=120)
    running.commit()
    running.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)


def replay(plan: Any, failure: str, what: str, runs: int = 3) -> None:
    """Run a campaign plan ``runs`` times (its failure may depend on timing), print each
    outcome, and judge: reproduced when any run failed with ``failure`` in its reason."""
    from tests.campaign.runner import run_plan

    outcomes = [run_plan(plan, out=lambda line: None) for _ in range(runs)]
    for outcome in outcomes:
        print(outcome.line().splitlines()[0][:300])
        if not outcome.passed:
            print("  " + outcome.reason[:300])
    failed = [outcome for outcome in outcomes if failure in outcome.reason]
    verdict(bool(failed), f"{len(failed)} of {len(outcomes)} runs {what}")


def verdict(reproduced: bool, what: str) -> None:
    print(("REPRODUCED: " if reproduced else "not reproduced (fixed?): ") + what)
    sys.exit(1 if reproduced else 0)
