"""Fail points as MongoDB has them: unknown names refused, ``onPrimaryTransactionalWrite``,
and what a retried write answers (statement history, write concern errors, error labels)."""

from __future__ import annotations

from typing import Any, Iterator

import pymongo
import pytest
from bson.int64 import Int64
from pymongo.errors import AutoReconnect, OperationFailure, PyMongoError, WriteError

from mongoemu.testing import EmulatorProcess


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000,
                             heartbeatFrequencyMS=500) as client:
        yield client


@pytest.fixture
def coll(client: pymongo.MongoClient, request: pytest.FixtureRequest) -> Iterator[Any]:
    db = client["fp_" + request.node.name[:40]]
    client.drop_database(db.name)
    yield db.c
    for name in ("failCommand", "onPrimaryTransactionalWrite"):
        client.admin.command("configureFailPoint", name, mode="off")
    client.drop_database(db.name)


def test_unknown_fail_point_names_are_refused(client: pymongo.MongoClient,
                                              mongos: EmulatorProcess) -> None:
    for command in ({"configureFailPoint": "noSuchFailPoint", "mode": "alwaysOn"},
                    {"configureFailPoint": "noSuchFailPoint"},  # the name is looked up first
                    {"waitForFailPoint": "noSuchFailPoint", "timesEntered": 1, "maxTimeMS": 10}):
        with pytest.raises(OperationFailure) as info:
            client.admin.command(command)
        assert info.value.code == 266
        assert info.value.details["codeName"] == "FailPointSetFailed"
        assert info.value.details["errmsg"] == "noSuchFailPoint not found"
    for name in ("failCommand", "failGetMoreAfterCursorCheckout", "onPrimaryTransactionalWrite"):
        assert client.admin.command("configureFailPoint", name, mode="off")["ok"] == 1.0
    # A mongos has no shard transaction code, hence no onPrimaryTransactionalWrite.
    with pymongo.MongoClient(mongos.uri, serverSelectionTimeoutMS=5000) as router:
        with pytest.raises(OperationFailure) as info:
            router.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode="off")
        assert info.value.code == 266
        assert router.admin.command("configureFailPoint", "failCommand", mode="off")["ok"] == 1.0


def test_write_not_committed_then_retried(client: pymongo.MongoClient, coll) -> None:
    client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode={"times": 1},
                         data={"failBeforeCommitExceptionCode": 1})
    coll.insert_many([{"_id": 1}, {"_id": 2}])  # first attempt: nothing written, socket closed
    assert sorted(d["_id"] for d in coll.find()) == [1, 2]


def test_write_never_committed(client: pymongo.MongoClient, coll) -> None:
    coll.insert_one({"_id": 1, "x": 1})
    client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode={"times": 2},
                         data={"failBeforeCommitExceptionCode": 1})
    with pytest.raises(AutoReconnect):
        coll.update_one({"_id": 1}, {"$inc": {"x": 1}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "x": 1}


def test_committed_write_is_not_applied_again_by_the_retry(client: pymongo.MongoClient,
                                                           coll) -> None:
    coll.insert_one({"_id": 1, "x": 1})
    client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode={"times": 1})
    result = coll.update_one({"_id": 1}, {"$inc": {"x": 1}})  # committed, reply lost, retried
    assert result.modified_count == 1
    assert coll.find_one({"_id": 1}) == {"_id": 1, "x": 2}


def test_error_without_closing_the_connection(client: pymongo.MongoClient, coll) -> None:
    client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode={"times": 1},
                         data={"failBeforeCommitExceptionCode": 2, "closeConnection": False})
    with pytest.raises(WriteError) as info:
        coll.insert_one({"_id": 1})
    assert info.value.code == 2
    assert coll.count_documents({}) == 0


def test_retry_runs_only_the_statements_that_did_not_succeed(replset: EmulatorProcess,
                                                             client: pymongo.MongoClient,
                                                             coll) -> None:
    coll.insert_many([{"_id": 1, "x": 0}, {"_id": 2, "x": 0}])
    command = {"update": coll.name, "ordered": True, "txnNumber": Int64(7),
               "updates": [{"q": {"_id": 1}, "u": {"$inc": {"x": 1}}},
                           {"q": {"_id": 2}, "u": {"$inc": {"x": 1}}}]}
    # The second statement fails before it commits; the first one is done.
    client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode={"skip": 1},
                         data={"failBeforeCommitExceptionCode": 1, "closeConnection": False})
    # A client of its own: its session carries a hand-made txnNumber, never to be reused.
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as own, \
            own.start_session() as session:
        database = own[coll.database.name]
        first = database.command(dict(command), session=session)
        assert first["n"] == 1 and first["writeErrors"][0]["index"] == 1
        client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode="off")
        retry = database.command(dict(command), session=session)
        assert (retry["n"], retry["nModified"]) == (2, 2) and "writeErrors" not in retry
        again = database.command(dict(command), session=session)
        assert (again["n"], again["nModified"]) == (2, 2)
    assert sorted((d["_id"], d["x"]) for d in coll.find()) == [(1, 1), (2, 1)]


def test_retry_after_a_write_concern_error_answers_without_it(client: pymongo.MongoClient,
                                                              coll) -> None:
    client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                         data={"failCommands": ["insert"], "errorLabels": ["RetryableWriteError"],
                               "writeConcernError": {"code": 91,
                                                     "errmsg": "Replication is being shut down"}})
    coll.insert_one({"_id": 1})  # the retry answers the recorded insert, now without the error
    assert coll.count_documents({}) == 1


def test_commit_errors_get_the_server_labels(client: pymongo.MongoClient, coll) -> None:
    coll.insert_one({"_id": 0})
    labels = {}
    for code in (267, 112, 91):
        # Twice: the driver retries a commit once on a RetryableWriteError.
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 2},
                             data={"failCommands": ["commitTransaction"], "errorCode": code})
        with client.start_session() as session:
            session.start_transaction()
            coll.insert_one({"_id": code}, session=session)
            with pytest.raises(PyMongoError) as info:
                session.commit_transaction()
            labels[code] = info.value.details.get("errorLabels")  # the server's, not the driver's
    assert labels == {267: ["TransientTransactionError"], 112: ["TransientTransactionError"],
                      91: ["RetryableWriteError"]}
