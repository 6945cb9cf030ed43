"""dropDatabase as 6.0/7.0/8.0 servers answer it: ``{ok: 1}`` whether or not the database existed
(the ``dropped`` field some shells print is added by the shell helper, not the server), and a
database that does not exist is not dropped at all: no oplog entry, so no change event."""

from __future__ import annotations

from typing import Iterator

import pymongo
import pytest

from mongoemu.testing import EmulatorProcess, start_secured_emulator


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


def _reply_fields(reply: dict) -> set[str]:
    return set(reply) - {"$clusterTime", "operationTime"}


@pytest.mark.parametrize("topology", ["replset", "mongos"])
def test_reply_has_no_dropped_field(topology: str, request: pytest.FixtureRequest) -> None:
    emulator: EmulatorProcess = request.getfixturevalue(topology)
    with pymongo.MongoClient(emulator.uri, serverSelectionTimeoutMS=5000) as client:
        client.t_dropdb_present.c.insert_one({"_id": 1})
        assert _reply_fields(client.t_dropdb_present.command("dropDatabase")) == {"ok"}
        assert _reply_fields(client.t_dropdb_missing.command("dropDatabase")) == {"ok"}


def test_missing_database_is_not_dropped(client: pymongo.MongoClient) -> None:
    with client.watch(max_await_time_ms=200) as stream:
        client.t_dropdb_never_created.command("dropDatabase")
        client.t_dropdb_marker.c.insert_one({"_id": "after"})
        event = stream.next()
    assert (event["operationType"], event["ns"]["db"]) == ("insert", "t_dropdb_marker")
    client.drop_database("t_dropdb_marker")


def test_missing_database_drop_is_not_a_blocked_write() -> None:
    # User write blocking is enforced where a write happens; dropping nothing writes nothing.
    with start_secured_emulator() as emulator, \
            pymongo.MongoClient(emulator.application_uri) as application:
        application.t_dropdb_present.c.insert_one({"_id": 1})
        application.admin.command("setUserWriteBlockMode", 1, **{"global": True})
        reply = application.t_dropdb_never_created.command("dropDatabase")
        assert reply["ok"] == 1.0
        with pytest.raises(pymongo.errors.OperationFailure) as blocked:
            application.t_dropdb_present.command("dropDatabase")
        assert blocked.value.code == 371
