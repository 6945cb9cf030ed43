"""The official shell, mongosh from npm, runs real shell commands against the emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mongoemu.testing import EmulatorProcess, start_emulator, start_secured_emulator

REPO = Path(__file__).resolve().parents[2]


def _mongosh() -> str:
    candidates = [os.environ.get("MONGOSH"), str(REPO / ".ci/node/node_modules/.bin/mongosh"),
                  shutil.which("mongosh")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("mongosh not installed (make setup installs it from npm)")


def shell(emulator: EmulatorProcess, script: str, timeout: float = 90,
          uri: str | None = None) -> str:
    """Feed ``script`` to an interactive mongosh, as a person typing it would."""
    result = subprocess.run([_mongosh(), uri or emulator.uri, "--quiet", "--norc"], input=script,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "MONGOSH_NO_UPDATE_CHECK": "1",
                                 "DO_NOT_TRACK": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def server() -> EmulatorProcess:
    with start_emulator("replset") as emulator:
        yield emulator


def test_show_dbs_insert_and_find(server: EmulatorProcess) -> None:
    output = shell(server, "use shop\n"
                           "db.orders.insertOne({item: 'pen', qty: 3})\n"
                           "db.orders.insertMany([{item: 'ink', qty: 1}, {item: 'pad', qty: 7}])\n"
                           "db.orders.find({qty: {$gt: 2}}, {_id: 0}).sort({qty: 1}).toArray()\n"
                           "db.orders.countDocuments()\n"
                           "show dbs\n")
    assert "item: 'pen', qty: 3" in output and "item: 'pad', qty: 7" in output
    assert "item: 'ink'" not in output
    assert "\n3\n" in output.replace("shop> ", "\n")
    assert "shop " in output and "admin " in output


def test_watch_sees_insert(server: EmulatorProcess) -> None:
    output = shell(server, "use streams\n"
                           "const cs = db.events.watch()\n"
                           "db.events.insertOne({n: 42})\n"
                           "const change = cs.next()\n"
                           "print('EVENT', change.operationType, change.fullDocument.n)\n"
                           "cs.close()\n")
    assert "EVENT insert 42" in output


def test_write_blocking_and_drop_database() -> None:
    # Blocking stops a user without bypassWriteBlockingMode, on a deployment with auth on.
    with start_secured_emulator("replset") as server:
        output = shell(server, uri=server.application_uri, script="use blocked\n"
                       "db.c.insertOne({a: 1})\n"
                       "db.adminCommand({setUserWriteBlockMode: 1, global: true})\n"
                       "db.c.insertOne({a: 2})\n"
                       "db.adminCommand({setUserWriteBlockMode: 1, global: false})\n"
                       "db.c.insertOne({a: 3})\n"
                       "print('COUNT', db.c.countDocuments())\n"
                       "db.dropDatabase()\n"
                       "show dbs\n")
    assert "UserWritesBlocked" in output
    assert "COUNT 2" in output
    assert "blocked " not in output.split("COUNT 2", 1)[1]


def test_balancer_start_on_mongos() -> None:
    with start_emulator("mongos") as mongos:
        output = shell(mongos, "db.adminCommand({balancerStop: 1})\n"
                               "print('MODE', db.adminCommand({balancerStatus: 1}).mode)\n"
                               "db.adminCommand({balancerStart: 1})\n"
                               "print('MODE', db.adminCommand({balancerStatus: 1}).mode)\n"
                               "print('SHARDS', db.adminCommand({listShards: 1}).shards.length)\n")
    assert "MODE off" in output and "MODE full" in output
    assert "SHARDS 2" in output
