"""Empty timestamps: a top-level ``Timestamp(0, 0)`` is replaced with the current cluster time on
insert and by replacement-style updates (update, upsert, findAndModify), never in ``_id`` and
never by operator or pipeline updates; ``bypassEmptyTsReplacement: true`` (SERVER-88750, in
6.0, 7.0 and 8.0 releases) stores it as given. The scenarios are the server's own
(jstests/core/bypass_empty_ts_replacement.js)."""

from __future__ import annotations

from typing import Any, Iterator

import pymongo
import pytest
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from mongoemu.testing import EmulatorProcess

EMPTY = Timestamp(0, 0)


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


@pytest.fixture
def db(client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    client.drop_database("t_empty_ts")
    yield client.t_empty_ts
    client.drop_database("t_empty_ts")


def run_all(db: pymongo.database.Database, bypass: bool) -> dict[int, Any]:
    """Every way of writing ``a: Timestamp(0, 0)``; the stored value of ``a`` per _id."""
    option = {"bypassEmptyTsReplacement": bypass}

    def insert(doc: dict) -> None:
        db.command({"insert": "c", "documents": [doc], **option})

    def update(q: dict, u: Any, upsert: bool = False) -> None:
        db.command({"update": "c", "updates": [{"q": q, "u": u, "upsert": upsert}], **option})

    def find_and_modify(q: dict, u: Any, upsert: bool = False) -> None:
        db.command({"findAndModify": "c", "query": q, "update": u, "upsert": upsert, **option})

    insert({"_id": 1, "a": EMPTY})
    for i in (2, 3, 6, 7, 8, 9):
        insert({"_id": i, "a": i})
    update({"_id": 2}, {"a": EMPTY})                                  # replacement
    find_and_modify({"_id": 3}, {"a": EMPTY})                         # replacement
    update({"_id": 4}, {"a": EMPTY}, upsert=True)                     # replacement upsert
    find_and_modify({"_id": 5}, {"a": EMPTY}, upsert=True)            # replacement upsert
    update({"_id": 6}, {"$set": {"a": EMPTY}})                        # operators
    find_and_modify({"_id": 7}, {"$set": {"a": EMPTY}})
    update({"_id": 8}, [{"$addFields": {"a": EMPTY}}])                # pipeline
    find_and_modify({"_id": 9}, [{"$addFields": {"a": EMPTY}}])
    update({"_id": 12}, {"$set": {"a": EMPTY}}, upsert=True)          # operator upsert
    find_and_modify({"_id": 13}, {"$set": {"a": EMPTY}}, upsert=True)
    update({"_id": 14}, [{"$addFields": {"a": EMPTY}}], upsert=True)  # pipeline upsert
    return {doc["_id"]: doc["a"] for doc in db.c.find()}


def test_replaced_where_the_server_replaces(db: pymongo.database.Database,
                                            client: pymongo.MongoClient) -> None:
    with db.c.watch() as stream:
        before = client.admin.command("ping")["operationTime"]
        stored = run_all(db, bypass=False)
        replaced = {i for i, value in stored.items() if value != EMPTY}
        assert replaced == {1, 2, 3, 4, 5}
        for i in replaced:
            assert stored[i] > before  # the cluster time of the write
        assert len({stored[i] for i in replaced}) == len(replaced)
        # The oplog (and so every change event) carries the stored value.
        event = stream.next()
        assert event["operationType"] == "insert" and event["fullDocument"]["a"] == stored[1]
        assert stored[1] < event["clusterTime"]


def test_bypass_stores_them_as_given(db: pymongo.database.Database) -> None:
    assert set(run_all(db, bypass=True).values()) == {EMPTY}


def test_id_is_never_replaced(db: pymongo.database.Database) -> None:
    db.c.insert_one({"_id": EMPTY, "a": EMPTY, "b": {"nested": EMPTY}})
    document = db.c.find_one({"_id": EMPTY})
    assert document["_id"] == EMPTY and document["a"] != EMPTY
    assert document["b"] == {"nested": EMPTY}  # only top-level fields
    db.c.replace_one({"_id": EMPTY}, {"_id": EMPTY, "a": EMPTY})
    assert db.c.find_one({"_id": EMPTY})["a"] != EMPTY


def test_option_type(db: pymongo.database.Database) -> None:
    db.command({"insert": "c", "documents": [{"_id": 1, "a": EMPTY}],
                "bypassEmptyTsReplacement": 1})
    assert db.c.find_one({"_id": 1})["a"] == EMPTY
    with pytest.raises(OperationFailure) as info:
        db.command({"insert": "c", "documents": [{"_id": 2}], "bypassEmptyTsReplacement": "y"})
    assert info.value.code == 14
    assert "insert.bypassEmptyTsReplacement" in str(info.value)
