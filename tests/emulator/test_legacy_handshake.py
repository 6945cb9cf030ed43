"""PyMongo 4.10 opens every connection with an OP_QUERY ``ismaster``; the emulator accepts it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mongoemu.testing import EmulatorProcess

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, pymongo
assert pymongo.version.startswith("4.10"), pymongo.version
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
db = client.legacy_handshake
db.c.drop()
db.c.insert_many([{"_id": i, "v": i * i} for i in range(300)])
assert db.c.count_documents({"v": {"$gte": 100}}) == 290
assert [d["_id"] for d in db.c.find().sort("_id", -1).limit(2)] == [299, 298]
with client.start_session() as session:
    with session.start_transaction():
        db.c.insert_one({"_id": "txn"}, session=session)
assert db.c.find_one({"_id": "txn"}) == {"_id": "txn"}
with db.c.watch() as stream:
    db.c.insert_one({"_id": "streamed"})
    assert stream.next()["documentKey"] == {"_id": "streamed"}
print("LEGACY-OK", client.server_info()["version"])
"""


def _old_python() -> str:
    candidate = os.environ.get("OLD_PYMONGO_PYTHON") or str(REPO / ".ci/venv-pymongo410/bin/python")
    if not Path(candidate).exists():
        pytest.skip("no PyMongo 4.10 environment (make setup creates .ci/venv-pymongo410)")
    return candidate


def test_pymongo_410_round_trip(replset: EmulatorProcess) -> None:
    result = subprocess.run([_old_python(), "-c", SCRIPT, replset.uri], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LEGACY-OK 7.0" in result.stdout
