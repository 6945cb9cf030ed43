"""``--discard-writes``: writes to user databases acknowledged with their counts, not stored;
the server's own databases and a migration tool's metadata stored as usual."""

from __future__ import annotations

from collections.abc import Iterator

import bson
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from mongoemu.testing import EmulatorProcess, start_emulator


@pytest.fixture(scope="module")
def sink() -> Iterator[EmulatorProcess]:
    with start_emulator(extra_args=["--discard-writes"]) as emulator:
        yield emulator


@pytest.fixture
def client(sink: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(sink.uri, serverSelectionTimeoutMS=10_000) as connection:
        yield connection


def test_inserts_are_acknowledged_and_not_stored(client: pymongo.MongoClient) -> None:
    collection = client.bench.items
    result = collection.insert_many([{"_id": n, "v": "x" * 100} for n in range(1000)],
                                    ordered=False)
    assert len(result.inserted_ids) == 1000
    reply = client.bench.command("insert", "raw", ordered=False,
                                 documents=[RawBSONDocument(bson.encode({"_id": n}))
                                            for n in range(3)])
    assert reply["n"] == 3 and "writeErrors" not in reply
    # Inserting the same _id again is no error: nothing was stored.
    assert collection.insert_one({"_id": 1}).inserted_id == 1
    assert collection.count_documents({}) == 0 and collection.find_one() is None
    assert {"items", "raw"} <= set(client.bench.list_collection_names())  # the catalog is real


def test_updates_and_deletes_answer_as_on_empty_collections(client: pymongo.MongoClient) -> None:
    collection = client.bench.changes
    assert collection.update_one({"_id": 7}, {"$set": {"a": 1}}).matched_count == 0
    upsert = collection.replace_one({"_id": "k"}, {"_id": "k", "b": 2}, upsert=True)
    assert (upsert.matched_count, upsert.upserted_id) == (0, "k")
    generated = collection.update_one({"a": 5}, {"$set": {"b": 1}}, upsert=True)
    assert generated.upserted_id is not None
    assert collection.delete_many({}).deleted_count == 0
    bulk = collection.bulk_write([pymongo.UpdateOne({"_id": 1}, {"$set": {"x": 1}}, upsert=True),
                                  pymongo.DeleteOne({"_id": 2}),
                                  pymongo.InsertOne({"_id": 3})])
    assert (bulk.upserted_count, bulk.deleted_count, bulk.inserted_count) == (1, 0, 1)
    assert bulk.upserted_ids == {0: 1}
    assert collection.count_documents({}) == 0
    with pytest.raises(OperationFailure) as refused:
        collection.find_one_and_update({"_id": 1}, {"$set": {"x": 2}}, upsert=True)
    assert refused.value.code == 238 and "--discard-writes" in str(refused.value)


def test_metadata_and_server_databases_are_stored(client: pymongo.MongoClient) -> None:
    for database in ("mongosync_reserved_for_internal_use", "admin", "config"):
        collection = client[database].sink_test
        collection.insert_one({"_id": "kept"})
        collection.update_one({"_id": "kept"}, {"$set": {"n": 1}})
        assert collection.find_one({"_id": "kept"}) == {"_id": "kept", "n": 1}
        collection.delete_one({"_id": "kept"})
        assert collection.count_documents({}) == 0


def test_without_the_flag_writes_are_stored(replset: EmulatorProcess) -> None:
    with pymongo.MongoClient(replset.uri) as connection:
        connection.sink_control.items.insert_one({"_id": 1})
        assert connection.sink_control.items.count_documents({}) == 1
        connection.drop_database("sink_control")
