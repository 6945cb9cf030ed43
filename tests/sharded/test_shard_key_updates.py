"""Changing a document's shard key through the router, as MongoDB allows it.

MongoDB ("Change a Document's Shard Key Value"; update_stage.cpp on the shard): an update that
changes a document's shard key must name the whole shard key by equality in its filter (31025
otherwise), unless the router runs it as its write without shard key (7.1+, emulated from 7.0),
which it marks with ``$_allowShardKeyUpdatesWithoutFullShardKeyInQuery``: true in a retryable
write or a transaction, false otherwise (IllegalOperation). An update by exact ``_id`` is no
such write: the router sends it to every shard, and the owning shard refuses the change. The
key is "changed" when its values differ byte for byte (BSONObj::binaryEqual): 5 to 5.0 is a
change, a missing field to null is not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, OperationFailure, WriteError

from mongoemu.testing import ClusterProcess, start_cluster

from .clusterkit import router, shard_clients

FLAG = "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery"
_names = itertools.count()


@pytest.fixture
def items(mongos: ClusterProcess) -> Iterator[Collection]:
    """A collection sharded on ``k``: [MinKey, 100) on shard01, [100, MaxKey) on shard02."""
    db = f"skupdate{next(_names)}"
    with router(mongos) as client:
        client.admin.command("enableSharding", db, primaryShard="shard01")
        client.admin.command("shardCollection", f"{db}.items", key={"k": 1})
        client.admin.command("split", f"{db}.items", middle={"k": 100})
        client.admin.command("moveChunk", f"{db}.items", find={"k": 100}, to="shard02",
                             _waitForDelete=True)
        collection = client[db].items
        collection.insert_many([{"_id": 1, "k": 5, "tag": "a"}, {"_id": 2, "k": 10, "tag": "b"},
                                {"_id": 3, "k": 150, "tag": "c"}, {"_id": 4, "tag": "d"}])
        yield collection


def _holders(cluster: ClusterProcess, collection: Collection, document_id: Any) -> dict[str, Any]:
    """Each shard's copy of the document, read directly (None where it is not)."""
    with shard_clients(cluster) as shards:
        return {name: client[collection.database.name].items.find_one({"_id": document_id})
                for name, client in shards.items()}


def _code(error: pytest.ExceptionInfo[OperationFailure]) -> int | None:
    return error.value.code


def test_an_update_by_id_alone_may_not_change_the_shard_key(
        mongos: ClusterProcess, items: Collection) -> None:
    for change in ({"$set": {"k": 150}},  # would move to shard02
                   {"$set": {"k": 6}}):  # would stay on shard01
        with pytest.raises(WriteError) as refused:
            items.update_one({"_id": 1}, change)
        assert _code(refused) == 31025
        assert refused.value.details["errmsg"] == (
            "Shard key update is not allowed without specifying the full shard key in the query")
    with pytest.raises(WriteError) as refused:
        items.replace_one({"_id": 1}, {"k": 7, "tag": "a"})
    assert _code(refused) == 31025
    with pytest.raises(WriteError) as refused:  # a pipeline update too
        items.update_one({"_id": 1}, [{"$set": {"k": {"$add": ["$k", 1]}}}])
    assert _code(refused) == 31025
    with pytest.raises(WriteError) as refused:  # 5 and 5.0 compare equal, but not byte for byte
        items.update_one({"_id": 1}, {"$set": {"k": 5.0}})
    assert _code(refused) == 31025
    with pytest.raises(WriteError) as refused:  # even with the whole key: no array in a key
        items.update_one({"_id": 1, "k": 5}, {"$set": {"k": [5, 6]}})
    assert _code(refused) == 54  # NotSingleValueField
    assert _holders(mongos, items, 1) == {"shard01": {"_id": 1, "k": 5, "tag": "a"},
                                          "shard02": None}

    # What leaves the shard key as it was passes.
    assert items.update_one({"_id": 1}, {"$set": {"k": 5, "x": 1}}).modified_count == 1
    assert items.replace_one({"_id": 2}, {"k": 10, "tag": "B"}).modified_count == 1
    assert items.update_one({"_id": 4}, {"$set": {"k": None}}).modified_count == 1  # missing: null
    assert [d["tag"] for d in items.find({}, {"tag": 1}).sort("_id", 1)] == ["a", "B", "c", "d"]


def test_the_whole_shard_key_in_the_filter_lets_an_update_change_it(
        mongos: ClusterProcess, items: Collection) -> None:
    moved = items.update_one({"_id": 1, "k": 5}, {"$set": {"k": 150}})
    assert (moved.matched_count, moved.modified_count) == (1, 1)
    assert items.find_one({"_id": 1}) == {"_id": 1, "k": 150, "tag": "a"}
    assert _holders(mongos, items, 1) == {"shard01": None,
                                          "shard02": {"_id": 1, "k": 150, "tag": "a"}}
    # Staying on its shard; the equality may be an $eq inside a top-level $and.
    assert items.replace_one({"$and": [{"_id": 2}, {"k": {"$eq": 10}}]},
                             {"k": 20, "tag": "b"}).modified_count == 1
    assert _holders(mongos, items, 2)["shard01"] == {"_id": 2, "k": 20, "tag": "b"}
    assert items.find_one_and_update({"k": 150, "tag": "c"}, {"$set": {"k": 50}},
                                     return_document=True) == {"_id": 3, "k": 50, "tag": "c"}
    assert _holders(mongos, items, 3) == {"shard01": {"_id": 3, "k": 50, "tag": "c"},
                                          "shard02": None}


def test_a_write_without_shard_key_changes_it_only_when_retryable(
        mongos: ClusterProcess, items: Collection) -> None:
    # A filter without the shard key nor _id: the router's write without shard key.
    assert items.update_one({"tag": "a"}, {"$set": {"k": 160}}).modified_count == 1
    assert _holders(mongos, items, 1) == {"shard01": None,
                                          "shard02": {"_id": 1, "k": 160, "tag": "a"}}
    # findAndModify has no exact-_id exception: by _id it is a write without shard key too.
    assert items.find_one_and_update({"_id": 2}, {"$set": {"k": 170}},
                                     return_document=True) == {"_id": 2, "k": 170, "tag": "b"}
    assert _holders(mongos, items, 2)["shard02"] == {"_id": 2, "k": 170, "tag": "b"}

    with pymongo.MongoClient(mongos.uri, retryWrites=False) as plain:
        collection = plain[items.database.name].items
        for change in ({"$set": {"k": 20}},  # would move to shard01
                       {"$set": {"k": 155}}):  # would stay on shard02
            with pytest.raises(WriteError) as refused:
                collection.update_one({"tag": "c"}, change)
            assert _code(refused) == 20  # IllegalOperation
            with pytest.raises(OperationFailure) as refused_fam:
                collection.find_one_and_update({"_id": 3}, change)
            assert _code(refused_fam) == 20
    assert items.find_one({"_id": 3}) == {"_id": 3, "k": 150, "tag": "c"}


def test_in_a_transaction_as_in_a_retryable_write(mongos: ClusterProcess,
                                                  items: Collection) -> None:
    with router(mongos) as client:
        collection = client[items.database.name].items
        with client.start_session() as session:
            with session.start_transaction():  # stays on shard01
                assert collection.update_one({"tag": "b"}, {"$set": {"k": 20}},
                                             session=session).modified_count == 1
            with pytest.raises(WriteError) as refused:
                with session.start_transaction():
                    collection.update_one({"_id": 1}, {"$set": {"k": 6}}, session=session)
            assert _code(refused) == 31025
    assert [(d["_id"], d["k"]) for d in items.find({"_id": {"$lt": 3}}).sort("_id", 1)] == [
        (1, 5), (2, 20)]


def test_a_client_may_not_send_the_routers_internal_flag(items: Collection) -> None:
    db = items.database
    reply = db.command("update", "items", updates=[
        {"q": {"tag": "a"}, "u": {"$set": {"k": 150}}, FLAG: True},
        {"q": {"_id": 2, "k": 10}, "u": {"$set": {"x": 1}}}], ordered=False)
    assert [(e["index"], e["code"]) for e in reply["writeErrors"]] == [(0, 72)]
    assert reply["writeErrors"][0]["errmsg"] == f"{FLAG} is an internal parameter"
    assert reply["nModified"] == 1
    with pytest.raises(OperationFailure) as refused:
        db.command("findAndModify", "items", query={"tag": "a"}, update={"$set": {"k": 150}},
                   **{FLAG: True})
    assert _code(refused) == 72
    assert items.find_one({"_id": 1})["k"] == 5


def test_a_refused_statement_of_a_bulk_write_is_its_write_error(
        mongos: ClusterProcess, items: Collection) -> None:
    with pytest.raises(BulkWriteError) as refused:
        items.bulk_write([UpdateOne({"_id": 2, "k": 10}, {"$set": {"k": 11}}),
                          UpdateOne({"_id": 1}, {"$set": {"k": 150}}),
                          UpdateOne({"_id": 3}, {"$set": {"x": 1}}),
                          UpdateOne({"_id": 4, "k": None}, {"$set": {"k": 120}})], ordered=False)
    result = refused.value.details
    assert [(e["index"], e["code"]) for e in result["writeErrors"]] == [(1, 31025)]
    assert result["nModified"] == 3
    assert [(d["_id"], d["k"], d.get("x")) for d in items.find().sort("_id", 1)] == [
        (1, 5, None), (2, 11, None), (3, 150, 1), (4, 120, None)]
    assert _holders(mongos, items, 4)["shard02"] == {"_id": 4, "tag": "d", "k": 120}

    with pytest.raises(BulkWriteError) as stopped:  # ordered: nothing after the refusal runs
        items.bulk_write([UpdateOne({"_id": 2}, {"$set": {"k": 12}}),
                          UpdateOne({"_id": 3}, {"$set": {"x": 2}})])
    assert [(e["index"], e["code"]) for e in stopped.value.details["writeErrors"]] == [
        (0, 31025)]
    assert items.find_one({"_id": 3})["x"] == 1


def test_writes_the_router_did_not_send_and_unsharded_collections_are_not_checked(
        mongos: ClusterProcess, items: Collection) -> None:
    with shard_clients(mongos) as shards:  # a direct connection: no shardVersion
        direct = shards["shard01"][items.database.name].items
        assert direct.update_one({"_id": 1}, {"$set": {"k": 6}}).modified_count == 1
    plain = items.database.plain
    plain.insert_one({"_id": 1, "k": 5})
    assert plain.update_one({"_id": 1}, {"$set": {"k": 150}}).modified_count == 1
    # An upsert that inserts is no update of a shard key.
    assert items.update_one({"_id": 9, "k": 9}, {"$set": {"tag": "z"}},
                            upsert=True).upserted_id == 9


def test_a_6_0_router_sends_writes_without_shard_key_as_they_are() -> None:
    """No write without shard key before 7.1: a findAndModify by _id reaches the shard when
    one shard owns every chunk, and the shard refuses to change the key."""
    with start_cluster(shards=1, server_version="6.0") as cluster, router(cluster) as client:
        client.admin.command("shardCollection", "old.items", key={"k": 1})
        items = client.old.items
        items.insert_one({"_id": 1, "k": 5, "tag": "a"})
        with pytest.raises(OperationFailure) as refused:
            items.find_one_and_update({"_id": 1}, {"$set": {"k": 6}})
        assert _code(refused) == 31025
        with pytest.raises(WriteError) as refused:
            items.update_one({"tag": "a"}, {"$set": {"k": 6}})
        assert _code(refused) == 31025
        assert items.find_one_and_update({"_id": 1, "k": 5}, {"$set": {"k": 6}},
                                         return_document=True)["k"] == 6
