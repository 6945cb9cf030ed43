"""Change streams as PyMongo's ``watch()`` sees them on a running emulator."""

from __future__ import annotations

import re
import threading
import time
from typing import Iterator

import pymongo
import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from mongoemu.changestream import decode_token
from mongoemu.testing import EmulatorProcess

AWAIT_MS = 300


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


@pytest.fixture
def db(client: pymongo.MongoClient, request: pytest.FixtureRequest):
    name = "cs_" + request.node.name[:40].replace("[", "_").replace("]", "_")
    client.drop_database(name)
    yield client[name]
    client.drop_database(name)


def next_change(stream: pymongo.change_stream.ChangeStream, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        change = stream.try_next()
        if change is not None:
            return change
    raise AssertionError("no change event arrived")


def test_collection_stream_reports_crud_events(db) -> None:
    coll = db.c
    coll.insert_one({"_id": 0})  # before the stream opens: not reported
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1, "a": 1})
        db.other.insert_one({"_id": 1})
        coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$unset": {"b": ""}})
        coll.replace_one({"_id": 1}, {"b": 1})
        coll.delete_one({"_id": 1})
        insert, update, replace, delete = (next_change(stream) for _ in range(4))
    assert list(insert) == ["_id", "operationType", "clusterTime", "wallTime", "fullDocument",
                            "ns", "documentKey"]
    assert insert["fullDocument"] == {"_id": 1, "a": 1}
    assert insert["ns"] == {"db": db.name, "coll": "c"} and insert["documentKey"] == {"_id": 1}
    assert update["operationType"] == "update" and "fullDocument" not in update
    assert update["updateDescription"] == {"updatedFields": {"a": 2}, "removedFields": [],
                                           "truncatedArrays": []}
    assert replace["operationType"] == "replace" and replace["fullDocument"] == {"_id": 1, "b": 1}
    assert delete["operationType"] == "delete" and delete["documentKey"] == {"_id": 1}
    times = [change["clusterTime"] for change in (insert, update, replace, delete)]
    assert times == sorted(times) and len(set(times)) == 4


def test_token_layout_starts_with_the_cluster_time(db) -> None:
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.c.insert_one({"_id": 1})
        change = next_change(stream)
    ts = change["clusterTime"]
    assert change["_id"]["_data"].startswith(f"82{ts.time:08X}{ts.inc:08X}2B042C0100")
    token = decode_token(change["_id"])
    assert token.cluster_time == ts and token.uuid is not None
    assert token.event_identifier == {"operationType": "insert", "documentKey": {"_id": 1}}
    assert stream.resume_token == change["_id"]


def test_database_and_cluster_streams(client: pymongo.MongoClient, db) -> None:
    other = client[db.name + "_x"]
    try:
        with db.watch(max_await_time_ms=AWAIT_MS) as db_stream, \
                client.watch(max_await_time_ms=AWAIT_MS) as cluster_stream:
            db.a.insert_one({"_id": 1})
            other.b.insert_one({"_id": 2})
            db.b.insert_one({"_id": 3})
            assert [next_change(db_stream)["ns"] for _ in range(2)] == [
                {"db": db.name, "coll": "a"}, {"db": db.name, "coll": "b"}]
            assert [next_change(cluster_stream)["ns"] for _ in range(3)] == [
                {"db": db.name, "coll": "a"}, {"db": other.name, "coll": "b"},
                {"db": db.name, "coll": "b"}]
    finally:
        client.drop_database(other.name)


def test_idle_get_more_waits_then_returns_new_events(db) -> None:
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        started = time.monotonic()
        assert stream.try_next() is None
        assert time.monotonic() - started >= AWAIT_MS / 1000 * 0.9
        idle_token = stream.resume_token
        assert decode_token(idle_token).is_high_water_mark
        timer = threading.Timer(0.1, lambda: db.c.insert_one({"_id": 7}))
        timer.start()
        change = next_change(stream)
        timer.join()
    assert change["documentKey"] == {"_id": 7}
    assert change["_id"]["_data"] > idle_token["_data"]


def test_resume_after_start_after_and_start_at_operation_time(db) -> None:
    coll = db.c
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        for i in range(3):
            coll.insert_one({"_id": i})
        changes = [next_change(stream) for _ in range(3)]
    with coll.watch(resume_after=changes[0]["_id"], max_await_time_ms=AWAIT_MS) as stream:
        assert [next_change(stream)["documentKey"]["_id"] for _ in range(2)] == [1, 2]
    with coll.watch(start_after=changes[1]["_id"], max_await_time_ms=AWAIT_MS) as stream:
        assert next_change(stream)["documentKey"]["_id"] == 2
    with coll.watch(start_at_operation_time=changes[1]["clusterTime"],
                    max_await_time_ms=AWAIT_MS) as stream:
        assert [next_change(stream)["documentKey"]["_id"] for _ in range(2)] == [1, 2]


def test_drop_invalidates_and_start_after_continues(db) -> None:
    coll = db.c
    coll.insert_one({"_id": 0})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.drop()
        assert next_change(stream)["operationType"] == "drop"
        invalidate = next_change(stream)
        assert invalidate["operationType"] == "invalidate"
        assert list(invalidate) == ["_id", "operationType", "clusterTime", "wallTime"]
        assert not stream.alive
    with pytest.raises(OperationFailure) as info:
        coll.watch(resume_after=invalidate["_id"])
    assert info.value.code == 260
    coll.insert_one({"_id": 1})
    with coll.watch(start_after=invalidate["_id"], max_await_time_ms=AWAIT_MS) as stream:
        change = next_change(stream)
    assert change["operationType"] == "insert" and change["documentKey"] == {"_id": 1}


def test_rename_reports_target_and_invalidates(db) -> None:
    db.c.insert_one({"_id": 1})
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.c.rename("d")
        rename = next_change(stream)
        assert next_change(stream)["operationType"] == "invalidate"
    assert rename["operationType"] == "rename"
    assert rename["ns"] == {"db": db.name, "coll": "c"}
    assert rename["to"] == {"db": db.name, "coll": "d"}


def test_drop_database_events(client: pymongo.MongoClient, db) -> None:
    db.a.insert_one({"_id": 1})
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        client.drop_database(db.name)
        drop, drop_database, invalidate = (next_change(stream) for _ in range(3))
    assert drop["operationType"] == "drop" and drop["ns"] == {"db": db.name, "coll": "a"}
    assert drop_database["operationType"] == "dropDatabase"
    assert drop_database["ns"] == {"db": db.name}
    assert invalidate["operationType"] == "invalidate"


def test_update_lookup(db) -> None:
    coll = db.c
    coll.insert_one({"_id": 1, "n": 0})
    with coll.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        first = next_change(stream)  # looked up when returned: the latest version
        assert first["fullDocument"] == {"_id": 1, "n": 2}
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        coll.delete_one({"_id": 1})
        next_change(stream)
        after_delete = next_change(stream)
    assert after_delete["operationType"] == "update" and after_delete["fullDocument"] is None


def test_pre_and_post_images(db) -> None:
    db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
    db.c.insert_one({"_id": 1, "x": 0})
    with db.c.watch(full_document="required", full_document_before_change="required",
                    max_await_time_ms=AWAIT_MS) as stream:
        db.c.update_one({"_id": 1}, {"$set": {"x": 1}})
        db.c.delete_one({"_id": 1})
        update, delete = next_change(stream), next_change(stream)
    assert update["fullDocument"] == {"_id": 1, "x": 1}
    assert update["fullDocumentBeforeChange"] == {"_id": 1, "x": 0}
    assert list(update)[-1] == "fullDocumentBeforeChange"
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "x": 1}

    db.plain.insert_one({"_id": 1})
    with db.plain.watch(full_document_before_change="required",
                        max_await_time_ms=AWAIT_MS) as stream:
        db.plain.delete_one({"_id": 1})
        with pytest.raises(OperationFailure) as info:
            next_change(stream)
    assert info.value.code == 47


def test_expanded_events(db) -> None:
    with db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.create_collection("c")
        db.c.create_index("x")
        db.c.insert_one({"_id": 1})
        db.c.drop_index("x_1")
        create, create_indexes, insert, drop_indexes = (next_change(stream) for _ in range(4))
    assert create["operationType"] == "create"
    assert create["operationDescription"]["idIndex"]["key"] == {"_id": 1}
    assert isinstance(create["collectionUUID"], Binary) and create["collectionUUID"].subtype == 4
    assert create_indexes["operationDescription"]["indexes"][0]["key"] == {"x": 1}
    assert insert["collectionUUID"] == create["collectionUUID"]
    assert drop_indexes["operationType"] == "dropIndexes"
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.c.create_index("y")
        db.c.insert_one({"_id": 2})
        assert next_change(stream)["operationType"] == "insert"  # DDL hidden by default


def test_convert_to_capped_is_a_new_collection_renamed_over_the_old(db) -> None:
    """As MongoDB's capped_utils.cpp: a capped collection with a new UUID and only the _id
    index is created under a temporary name, filled with inserts change streams do not show,
    then renamed over the original (stayTemp false: not temporary any more)."""
    db.logs.insert_many([{"_id": i, "pad": "x" * 200} for i in range(100)])
    db.logs.create_index("pad")
    old_uuid = db.command("listCollections", filter={"name": "logs"})["cursor"][
        "firstBatch"][0]["info"]["uuid"]
    with db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.command("convertToCapped", "logs", size=8192)
        db.logs.insert_one({"_id": 100, "pad": "y"})
        create, rename, insert = (next_change(stream) for _ in range(3))
    temporary = create["ns"]["coll"]
    assert create["operationType"] == "create" and \
        re.fullmatch(r"tmp[0-9A-Za-z]{5}\.convertToCapped\.logs", temporary), create
    assert create["operationDescription"]["capped"] is True
    assert rename["operationType"] == "rename" and rename["ns"]["coll"] == temporary
    assert rename["operationDescription"]["to"] == {"db": db.name, "coll": "logs"}
    assert rename["operationDescription"]["dropTarget"] == old_uuid
    assert rename["collectionUUID"] == create["collectionUUID"] != old_uuid
    assert insert["operationType"] == "insert" and insert["documentKey"] == {"_id": 100}
    [info] = db.command("listCollections", filter={"name": "logs"})["cursor"]["firstBatch"]
    assert info["options"] == {"capped": True, "size": 8192}
    assert info["info"]["uuid"] == create["collectionUUID"]
    assert [spec["name"] for spec in db.logs.list_indexes()] == ["_id_"]
    kept = [document["_id"] for document in db.logs.find()]
    assert kept[-1] == 100 and 0 < len(kept) < 101  # the oldest did not fit
    assert db.list_collection_names() == ["logs"]
    with pytest.raises(OperationFailure) as missing:
        db.command("convertToCapped", "nothing", size=8192)
    assert missing.value.code == 26


def test_a_rename_across_databases_is_a_copy_then_a_rename_and_a_drop(
        client: pymongo.MongoClient, db) -> None:
    """The sequence of MongoDB's jstest for a rename across databases (renameBetweenDBs): the
    documents are inserted into a temporary collection of the target database, which is
    renamed onto the target (dropping it), and the source is dropped. No event renames across
    databases."""
    target_db = client[db.name + "_to"]
    client.drop_database(target_db.name)
    try:
        db.c.insert_many([{"_id": 2}, {"_id": 3}])
        db.c.update_one({"_id": 3}, {"$set": {"p": 3}})
        db.c.create_index("p")
        target_db.c.insert_one({"_id": 0})
        old_target = target_db.command("listCollections")["cursor"]["firstBatch"][0]["info"]["uuid"]
        with client.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
            client.admin.command("renameCollection", f"{db.name}.c", to=f"{target_db.name}.c",
                                 dropTarget=True)
            events = [next_change(stream) for _ in range(6)]
        kinds = [event["operationType"] for event in events]
        assert kinds == ["create", "createIndexes", "insert", "insert", "rename", "drop"], kinds
        temporary = events[0]["ns"]
        assert temporary["db"] == target_db.name and \
            re.fullmatch(r"tmp[0-9A-Za-z]{5}\.renameCollection", temporary["coll"]), temporary
        assert [event["ns"] for event in events[1:5]] == [temporary] * 4
        assert events[3]["fullDocument"] == {"_id": 3, "p": 3}
        assert events[4]["operationDescription"]["to"] == {"db": target_db.name, "coll": "c"}
        assert events[4]["operationDescription"]["dropTarget"] == old_target
        assert events[5]["ns"] == {"db": db.name, "coll": "c"}
        assert db.list_collection_names() == [] and target_db.list_collection_names() == ["c"]
        assert list(target_db.c.find()) == [{"_id": 2}, {"_id": 3, "p": 3}]
        assert [spec["name"] for spec in target_db.c.list_indexes()] == ["_id_", "p_1"]
        [info] = target_db.command("listCollections")["cursor"]["firstBatch"]
        assert "temp" not in info["options"] and info["info"]["uuid"] == events[0]["collectionUUID"]
    finally:
        client.drop_database(target_db.name)


def test_out_writes_a_temporary_collection_renamed_over_the_target(db) -> None:
    """As DocumentSourceOutReplaceColl: tmp.agg_out.<uuid> with the target's options and
    indexes, the results inserted there, then renamed over the target (dropTarget)."""
    db.src.insert_many([{"_id": i} for i in range(3)])
    db.target.insert_one({"_id": "old"})
    db.target.create_index("x")
    with db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.src.aggregate([{"$out": "target"}])
        events = [next_change(stream) for _ in range(6)]
    kinds = [event["operationType"] for event in events]
    assert kinds == ["create", "createIndexes", "insert", "insert", "insert", "rename"], kinds
    temporary = events[0]["ns"]["coll"]
    assert re.fullmatch(r"tmp\.agg_out\.[0-9a-f-]{36}", temporary), temporary
    assert events[0]["operationDescription"]["temp"] is True
    assert events[5]["operationDescription"]["to"] == {"db": db.name, "coll": "target"}
    assert "dropTarget" in events[5]["operationDescription"]
    assert sorted(db.list_collection_names()) == ["src", "target"]
    assert [d["_id"] for d in db.target.find()] == [0, 1, 2]
    assert sorted(db.target.index_information()) == ["_id_", "x_1"]
    # A failed write leaves the target as it was, and no temporary collection.
    db.bad.insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 1}])
    db.target.create_index("v", unique=True, sparse=True)
    with pytest.raises(OperationFailure):
        db.bad.aggregate([{"$out": "target"}])
    assert sorted(db.list_collection_names()) == ["bad", "src", "target"]
    assert [d["_id"] for d in db.target.find()] == [0, 1, 2]


def test_clone_collection_as_capped_shows_only_the_create(db) -> None:
    db.src.insert_many([{"_id": i, "pad": "x" * 200} for i in range(100)])
    db.src.create_index("pad")
    with db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.command("cloneCollectionAsCapped", "src", toCollection="copy", size=8192)
        db.copy.insert_one({"_id": 100})
        create, insert = next_change(stream), next_change(stream)
    assert create["operationType"] == "create" and create["ns"]["coll"] == "copy"
    assert create["operationDescription"]["capped"] is True
    assert insert["operationType"] == "insert" and insert["documentKey"] == {"_id": 100}
    kept = [document["_id"] for document in db.copy.find()]
    assert kept[-1] == 100 and 1 < len(kept) < 101  # the oldest did not fit
    assert [spec["name"] for spec in db.copy.list_indexes()] == ["_id_"]
    assert db.src.count_documents({}) == 100
    for body, code in (({"toCollection": "copy", "size": 8192}, 48),
                       ({"toCollection": "other"}, 40414),
                       ({"toCollection": "other", "size": 0}, 72)):
        with pytest.raises(OperationFailure) as refused:
            db.command({"cloneCollectionAsCapped": "src", **body})
        assert refused.value.code == code, refused.value.details
    with pytest.raises(OperationFailure) as missing:
        db.command("cloneCollectionAsCapped", "nothing", toCollection="x", size=8192)
    assert missing.value.code == 26


def test_pipeline_stages(db) -> None:
    with db.c.watch([{"$match": {"fullDocument.keep": True}},
                     {"$project": {"fullDocument": 1, "ns": 1}}],
                    max_await_time_ms=AWAIT_MS) as stream:
        db.c.insert_one({"_id": 1, "keep": False})
        db.c.insert_one({"_id": 2, "keep": True})
        change = next_change(stream)
    assert change["fullDocument"] == {"_id": 2, "keep": True}
    assert set(change) == {"_id", "fullDocument", "ns"}
    with pytest.raises(OperationFailure) as info:
        db.c.watch([{"$group": {"_id": None}}])
    assert info.value.code == 20
    with pytest.raises(OperationFailure):  # bad stage arguments fail the aggregate itself
        db.c.watch([{"$match": {"$bogusOperator": 1}}])


def test_transaction_events(client: pymongo.MongoClient, db) -> None:
    db.create_collection("c")
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as session:
            with session.start_transaction():
                db.c.insert_one({"_id": 1}, session=session)
                db.c.insert_one({"_id": 2}, session=session)
        first, second = next_change(stream), next_change(stream)
    assert list(first)[:3] == ["txnNumber", "lsid", "_id"]
    assert isinstance(first["txnNumber"], Int64) and first["lsid"] == second["lsid"]
    assert first["clusterTime"] == second["clusterTime"]
    assert [decode_token(c["_id"]).txn_op_index for c in (first, second)] == [0, 1]


def test_history_lost(client: pymongo.MongoClient, db) -> None:
    first = db.c.insert_one({"_id": 1})
    assert first.acknowledged
    with db.c.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.c.insert_one({"_id": 2})
        change = next_change(stream)
    db.c.insert_one({"_id": 3})
    latest = client.admin.command("ping")["operationTime"]
    client.admin.command({"emulatorTruncateOplog": 1, "before": latest})
    with pytest.raises(OperationFailure) as info:
        db.c.watch(resume_after=change["_id"])
    assert info.value.code == 286
    assert "NonResumableChangeStreamError" in info.value.details.get("errorLabels", [])
    with pytest.raises(OperationFailure) as info:
        db.c.watch(start_at_operation_time=Timestamp(1, 1))
    assert info.value.code == 286


def test_set_of_a_reordered_sub_document_is_reported_whole(db) -> None:
    """A $set of a whole embedded document is logged (and reported) as that document, so a
    consumer applying updatedFields gets the new field order, and array modifiers other than
    an append report the whole array."""
    coll = db.c
    coll.insert_one({"_id": 1, "a": {"x": 1, "y": 2}, "arr": [1, 2, 3]})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"a": {"y": 2, "x": 1}}})
        coll.update_one({"_id": 1}, {"$pull": {"arr": 2}})
        coll.update_one({"_id": 1}, {"$set": {"a.y": 3}})
        reordered, pulled, nested = (next_change(stream) for _ in range(3))
    fields = reordered["updateDescription"]["updatedFields"]
    assert fields == {"a": {"y": 2, "x": 1}} and list(fields["a"]) == ["y", "x"]
    assert pulled["updateDescription"]["updatedFields"] == {"arr": [1, 3]}
    assert pulled["updateDescription"]["truncatedArrays"] == []
    assert nested["updateDescription"]["updatedFields"] == {"a.y": 3}


def test_raw_update_descriptions_replay_every_update_byte_for_byte(db) -> None:
    """showRawUpdateDescription (6.0+): an update event carries its oplog entry's delta,
    ``rawUpdateDescription``, in place of ``updateDescription``, and an update pipeline's
    ``$_internalApplyOplogUpdate`` replays it. Replayed on a copy, every update gives the same
    bytes, a pipeline update that moves fields to the end included (updateDescription cannot
    tell a moved field from one updated in place)."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    documents = [{"_id": 1, "pad": "p", "a": 1, "nested": {"x": 1, "y": 2}, "arr": [1, 2, 3]},
                 {"_id": 2, "a": 1, "b": 2, "c": 3}]
    db.t1.insert_many(documents)
    db.t1copy.insert_many(documents)
    opened = db.command("aggregate", "t1", cursor={},
                        pipeline=[{"$changeStream": {"showRawUpdateDescription": True}}])
    updates = [
        (1, [{"$replaceWith": {"$mergeObjects": [{"_id": "$_id", "pad": "$pad", "new": True},
                                                 "$$ROOT"]}}]),
        (1, {"$set": {"nested.z": 3, "arr.1": 9}, "$inc": {"a": 1}}),
        (2, [{"$replaceWith": {"_id": "$_id", "c": "$c", "b": "$b", "a": "$a"}}]),
        (2, [{"$set": {"arr": [1]}}, {"$unset": ["b"]}]),
        (1, {"$push": {"arr": 4}, "$unset": {"pad": ""}}),
        (1, [{"$replaceWith": {"$setField": {"field": "x.y", "input": "$$ROOT",
                                             "value": 1}}}]),
        (1, [{"$set": {"nested": {"$mergeObjects": [{"w": 0}, "$nested"]}}}]),
    ]
    for document_id, update in updates:
        db.t1.update_one({"_id": document_id}, update)
    events: list[dict] = list(opened["cursor"]["firstBatch"])
    deadline = time.monotonic() + 10
    while len(events) < len(updates) and time.monotonic() < deadline:
        more = db.command("getMore", opened["cursor"]["id"], collection="t1",
                          maxTimeMS=AWAIT_MS)
        events.extend(more["cursor"]["nextBatch"])
    assert len(events) == len(updates)
    for event in events:
        if event["operationType"] == "replace":  # a pipeline update whose delta was larger
            db.t1copy.replace_one(event["documentKey"], event["fullDocument"])
            continue
        assert event["operationType"] == "update" and "updateDescription" not in event
        assert event["rawUpdateDescription"]["$v"] == 2
        db.t1copy.update_one(event["documentKey"], [
            {"$_internalApplyOplogUpdate": {"oplogUpdate": event["rawUpdateDescription"]}}])
    raw = CodecOptions(document_class=RawBSONDocument)
    assert [d.raw for d in db.get_collection("t1copy", codec_options=raw).find()] == \
        [d.raw for d in db.get_collection("t1", codec_options=raw).find()]
    assert list(db.t1.find_one({"_id": 2}) or {}) == ["_id", "c", "a", "arr"]


def test_internal_apply_oplog_update_checks_its_argument(db) -> None:
    db.c.insert_one({"_id": 1, "a": 1})
    for stage, code in (({"$_internalApplyOplogUpdate": 1}, 6315901),
                        ({"$_internalApplyOplogUpdate": {}}, 40414),
                        ({"$_internalApplyOplogUpdate": {"oplogUpdate": 1}}, 14),
                        ({"$_internalApplyOplogUpdate": {"oplogUpdate": {}, "x": 1}}, 40415)):
        with pytest.raises(OperationFailure) as failure:
            db.c.update_one({"_id": 1}, [stage])
        assert failure.value.code == code
    db.c.update_one({"_id": 1}, [{"$_internalApplyOplogUpdate": {"oplogUpdate": {
        "$v": 1, "$set": {"b": 3}}}}])
    db.c.update_one({"_id": 1}, [{"$_internalApplyOplogUpdate": {"oplogUpdate": {
        "$v": 2, "diff": {"d": {"a": False}, "i": {"c": 1}}}}}])
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "b": 3, "c": 1}



# A document of exactly 16 MiB, the largest MongoDB stores: its insert event is a little larger,
# within the 16 MiB + 16 KiB of the server's internal objects (what an oplog entry may take).
LARGEST = {"_id": 1, "big": "x" * (16 * 1024 * 1024 - 24)}
SPLIT = [{"$changeStreamSplitLargeEvent": {}}]
MIB = 1024 * 1024


def fragments_of(stream: pymongo.change_stream.ChangeStream, count: int) -> list[dict]:
    return [next_change(stream, timeout=20.0) for _ in range(count)]


def large_update(db) -> None:
    """An update event of 22 MiB when the post-image is looked up (7 MiB set, 15 MiB after)."""
    db.c.update_one({"_id": 1}, {"$set": {"b": "b" * (7 * MIB)}})


def test_an_event_of_a_16_mib_document_is_returned_whole(db) -> None:
    for pipeline in ([], SPLIT):
        with db.c.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
            db.c.insert_one(LARGEST)
            change = next_change(stream, timeout=20.0)
            db.c.delete_many({})
        assert change["fullDocument"] == LARGEST and "splitEvent" not in change


def test_an_event_over_16_mib_and_16_kib_fails_without_the_split_stage(db) -> None:
    db.c.insert_one({"_id": 1, "a": "a" * (8 * MIB)})
    with db.c.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        large_update(db)
        with pytest.raises(OperationFailure) as failure:
            next_change(stream, timeout=20.0)
    assert failure.value.code == 10334  # BSONObjectTooLarge


def test_large_events_are_split_into_fragments_that_resume(db) -> None:
    db.c.insert_one({"_id": 1, "a": "a" * (8 * MIB)})
    with db.c.watch(SPLIT, full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        large_update(db)
        db.c.insert_one({"_id": 2})
        first, second, after = fragments_of(stream, 3)
    assert first["splitEvent"] == {"fragment": 1, "of": 2}
    assert second["splitEvent"] == {"fragment": 2, "of": 2}
    # Smallest fields first: the first fragment holds all but the looked-up document.
    assert list(first)[:2] == ["_id", "splitEvent"] and "fullDocument" not in first
    assert first["operationType"] == "update" and first["documentKey"] == {"_id": 1}
    assert first["updateDescription"]["updatedFields"] == {"b": "b" * (7 * MIB)}
    assert list(second) == ["_id", "splitEvent", "fullDocument"]
    assert second["fullDocument"] == db.c.find_one({"_id": 1})
    tokens = [decode_token(change["_id"]) for change in (first, second, after)]
    assert [token.fragment_num for token in tokens] == [0, 1, None]
    assert tokens[0].sort_key < tokens[1].sort_key < tokens[2].sort_key
    assert after["operationType"] == "insert" and after["documentKey"] == {"_id": 2}

    # From a fragment's token: the fragments after it, then the next event.
    with db.c.watch(SPLIT, full_document="updateLookup", resume_after=first["_id"],
                    max_await_time_ms=AWAIT_MS) as stream:
        again, following = fragments_of(stream, 2)
    assert again["_id"] == second["_id"] and again["splitEvent"] == {"fragment": 2, "of": 2}
    assert following["_id"] == after["_id"]
    with db.c.watch(SPLIT, full_document="updateLookup", resume_after=second["_id"],
                    max_await_time_ms=AWAIT_MS) as stream:
        assert next_change(stream)["_id"] == after["_id"]
    # A fragment's token needs the stage, and an event that is split again.
    with pytest.raises(OperationFailure) as failure:
        db.c.watch(resume_after=first["_id"], max_await_time_ms=AWAIT_MS)
    assert failure.value.code == 280
    with pytest.raises(OperationFailure) as failure:  # the aggregate meets it at once
        with db.c.watch(SPLIT, resume_after=first["_id"], max_await_time_ms=AWAIT_MS) as stream:
            next_change(stream)
    assert failure.value.code == 280 and "not large enough" in str(failure.value)

