"""``mongosync verify``: a read-only, resumable comparison of two clusters after the fact."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pymongo

from mongoemu.testing import EmulatorProcess

from .processkit import MONGOSYNC, admin_client, slow_down, speed_up

DOCUMENTS = {f"c{n}": [{"_id": i, "n": i, "payload": "p" * 50} for i in range(300)]
             for n in range(5)}


def load(emulator: EmulatorProcess) -> None:
    with admin_client(emulator) as client:
        for name, documents in DOCUMENTS.items():
            client.shop[name].insert_many(documents)
        client.shop.c0.create_index("n", name="n_1")


def verify(source: EmulatorProcess, destination: EmulatorProcess, state: Path,
           *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MONGOSYNC), "verify", "--cluster0", source.uri, "--cluster1",
                           destination.uri, "--state", str(state), *more],
                          capture_output=True, text=True, timeout=120, check=False)


def done_ranges(state: Path) -> int:
    try:
        with sqlite3.connect(str(state)) as database:
            return int(database.execute("SELECT COUNT(*) FROM tasks WHERE status = 'done'")
                       .fetchone()[0])
    except sqlite3.OperationalError:  # the command has not created its tables yet
        return 0


def test_equal_then_different_then_resumed(source: EmulatorProcess,
                                           destination: EmulatorProcess, tmp_path: Path) -> None:
    load(source)
    load(destination)
    state = tmp_path / "verify.sqlite"
    with admin_client(source) as client:
        before = client.admin.command("serverStatus")["opcounters"]
    equal = verify(source, destination, state)
    assert equal.returncode == 0, equal.stdout + equal.stderr
    assert "equal: 5 collections, 1500 documents" in equal.stdout
    with admin_client(source) as client:  # read-only: no write reached the source
        after = client.admin.command("serverStatus")["opcounters"]
    assert after["insert"] == before["insert"] and after["update"] == before["update"]

    with admin_client(destination) as client:
        client.shop.c3.delete_one({"_id": 7})
        client.shop.c4.update_one({"_id": 8}, {"$set": {"n": 800}})
        client.shop.c0.drop_index("n_1")
    different = verify(source, destination, state, "--fresh")
    assert different.returncode == 1, different.stdout + different.stderr
    assert "DIFFERENT: 3 mismatches" in different.stdout
    for line in ("shop.c3 _id 7: missing", "shop.c4 _id 8: different (field 'n' differs)",
                 "shop.c0: index (index n_1 missing on the destination)"):
        assert line in different.stdout, different.stdout
    assert "emulator-root-password" not in different.stdout + different.stderr

    # Interrupted while comparing shop.c2 (its reads are slow), then run again: the ranges
    # compared before the stop are not compared again.
    slow_down(destination, "find", 4000, namespace="shop.c2")
    state.unlink()
    interrupted = subprocess.Popen([str(MONGOSYNC), "verify", "--cluster0", source.uri,
                                    "--cluster1", destination.uri, "--state", str(state)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state.exists() and done_ranges(state) >= 2):
            assert time.monotonic() < deadline and interrupted.poll() is None
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGKILL)
        interrupted.wait()
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
        speed_up(destination)
    compared_before = done_ranges(state)
    assert 2 <= compared_before < 5
    resumed = verify(source, destination, state)
    assert resumed.returncode == 1 and "resuming from" in resumed.stdout, resumed.stdout
    assert "DIFFERENT: 3 mismatches" in resumed.stdout
    with sqlite3.connect(str(state)) as database:
        hashed = database.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    assert hashed == 5 and done_ranges(state) == 5
    with pymongo.MongoClient(destination.uri) as client:  # the destination is untouched
        assert client.shop.c3.count_documents({}) == 299
