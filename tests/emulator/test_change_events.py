"""Change events built from hand-made oplog entries, and change-stream cursors on a fake server."""

from __future__ import annotations

import asyncio
import sys
import time
import types
import uuid
from types import SimpleNamespace
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from mongoemu.bsonvalues import CODEC, encode, sort_key
from mongoemu.changestream import (ChangeStreamCursor, change_stream_error_labels, decode_token,
                                   high_water_mark, open_change_stream)
from mongoemu.changestream import stream as stream_module
from mongoemu.changestream.events import StreamOptions, StreamScope, events_for_entry
from mongoemu.clock import Clock, wall_clock
from mongoemu.config import EmulatorConfig
from mongoemu.context import Connection, Context
from mongoemu.cursors import CursorManager
from mongoemu.errors import CommandError
from mongoemu.oplog import Oplog, OplogEntry
from mongoemu.storage.catalog import Catalog
from mongoemu.storage.collection import Collection

COLL_UUID = uuid.UUID("11111111-2222-3333-4444-555555555555")
OTHER_UUID = uuid.UUID("66666666-7777-8888-9999-aaaaaaaaaaaa")
LSID = {"id": Binary(uuid.UUID("abcdefab-cdef-abcd-efab-cdefabcdefab").bytes, 4)}

COLLECTION = StreamScope("db", "c")
DATABASE = StreamScope("db")
CLUSTER = StreamScope()


def as_dict(document: Any) -> dict[str, Any]:
    raw = document.raw if isinstance(document, RawBSONDocument) else encode(document)
    return bson.decode(raw, codec_options=CODEC)


# -- oplog entries ---------------------------------------------------------------------------


_clock = Clock()


def entry(op: str, ns: str, **fields: Any) -> OplogEntry:
    fields.setdefault("ui", COLL_UUID)
    return OplogEntry(ts=_clock.tick(), op=op, ns=ns, wall=wall_clock(), **fields)


def insert(doc: dict[str, Any], ns: str = "db.c", **fields: Any) -> OplogEntry:
    return entry("i", ns, raw_document=encode(doc), document_key={"_id": doc["_id"]}, **fields)


def update(_id: Any, description: dict[str, Any], ns: str = "db.c", **fields: Any) -> OplogEntry:
    return entry("u", ns, document_key={"_id": _id}, update_description=description, **fields)


def replace(doc: dict[str, Any], ns: str = "db.c", **fields: Any) -> OplogEntry:
    return entry("u", ns, raw_document=encode(doc), document_key={"_id": doc["_id"]}, **fields)


def delete(_id: Any, ns: str = "db.c", **fields: Any) -> OplogEntry:
    return entry("d", ns, document_key={"_id": _id}, **fields)


def command(db: str, body: dict[str, Any], **fields: Any) -> OplogEntry:
    return entry("c", f"{db}.$cmd", command=body, **fields)


SIMPLE_UPDATE = {"updatedFields": {"x": 2}, "removedFields": [], "truncatedArrays": []}


def events(oplog_entry: OplogEntry, scope: StreamScope = COLLECTION, catalog: Any = None,
           **options: Any) -> list[dict[str, Any]]:
    stream_options = StreamOptions(scope=scope, **options)
    return [event.render(stream_options, catalog or Catalog())
            for event in events_for_entry(oplog_entry, stream_options)]


# -- CRUD events -----------------------------------------------------------------------------


def test_insert_event_shape_and_raw_full_document() -> None:
    op = insert({"_id": 1, "a": "x"})
    [event] = events(op)
    assert list(event) == ["_id", "operationType", "clusterTime", "wallTime", "fullDocument",
                           "ns", "documentKey"]
    assert isinstance(event["fullDocument"], RawBSONDocument)
    assert event["fullDocument"].raw == op.raw_document  # stored bytes embedded, not re-encoded
    assert event["operationType"] == "insert"
    assert event["clusterTime"] == op.ts and event["wallTime"] == op.wall
    assert event["ns"] == {"db": "db", "coll": "c"} and event["documentKey"] == {"_id": 1}
    token = decode_token(event["_id"])
    assert token.cluster_time == op.ts and token.uuid == COLL_UUID
    assert token.event_identifier == {"operationType": "insert", "documentKey": {"_id": 1}}


def test_expanded_events_add_collection_uuid() -> None:
    [event] = events(insert({"_id": 1}), show_expanded_events=True)
    assert list(event)[:5] == ["_id", "operationType", "clusterTime", "collectionUUID",
                               "wallTime"]
    assert event["collectionUUID"] == Binary.from_uuid(COLL_UUID)


def test_update_event_shape() -> None:
    [event] = events(update(1, SIMPLE_UPDATE))
    assert list(event) == ["_id", "operationType", "clusterTime", "wallTime", "ns",
                           "documentKey", "updateDescription"]
    assert event["updateDescription"] == SIMPLE_UPDATE


def test_disambiguated_paths_only_with_expanded_events() -> None:
    from mongoemu.query.update_description import compute_diff, describe_diff
    diff = compute_diff({"_id": 1, "a": {"1": 1}}, {"_id": 1, "a": {"1": 2}})
    op = update(1, describe_diff(diff), extra={"diff": diff})
    [plain] = events(op)
    assert "disambiguatedPaths" not in plain["updateDescription"]
    [expanded] = events(op, show_expanded_events=True, disambiguated_paths=True)
    assert expanded["updateDescription"]["disambiguatedPaths"] == {"a.1": ["a", "1"]}
    [without_diff] = events(update(1, SIMPLE_UPDATE), show_expanded_events=True,
                            disambiguated_paths=True)
    assert without_diff["updateDescription"]["disambiguatedPaths"] == {}


@pytest.mark.parametrize("version, expected", [("6.0", False), ("7.0", True), ("8.0", True)])
def test_disambiguated_paths_need_6_1(version: str, expected: bool) -> None:
    server = fake_server(version)
    cursor_id = open_stream(server, {"showExpandedEvents": True})["id"]
    log(server, update(1, SIMPLE_UPDATE))
    [event] = get_more(server, cursor_id)["nextBatch"]
    assert ("disambiguatedPaths" in event["updateDescription"]) is expected


def test_replace_and_delete_events() -> None:
    [replaced] = events(replace({"_id": 1, "y": 3}))
    assert replaced["operationType"] == "replace"
    assert as_dict(replaced["fullDocument"]) == {"_id": 1, "y": 3}
    assert list(replaced) == ["_id", "operationType", "clusterTime", "wallTime", "fullDocument",
                              "ns", "documentKey"]
    [deleted] = events(delete(1))
    assert deleted["operationType"] == "delete"
    assert list(deleted) == ["_id", "operationType", "clusterTime", "wallTime", "ns",
                             "documentKey"]


def test_decoded_documents_when_tail_stages_need_dicts() -> None:
    [event] = events(insert({"_id": 1, "a": 1}), raw_documents=False)
    assert type(event["fullDocument"]) is dict and event["fullDocument"] == {"_id": 1, "a": 1}


# -- fullDocument / fullDocumentBeforeChange ---------------------------------------------------


def _catalog_with(doc: dict[str, Any] | None, collection_uuid: uuid.UUID = COLL_UUID) -> Catalog:
    catalog = Catalog()
    collection = Collection("db", "c", {}, collection_uuid)
    if doc is not None:
        collection.insert(sort_key(doc["_id"]), encode(doc), doc)
    catalog.add(collection)
    return catalog


def test_update_lookup_returns_current_document_or_null() -> None:
    op = update(1, SIMPLE_UPDATE)
    [event] = events(op, catalog=_catalog_with({"_id": 1, "x": 5}), full_document="updateLookup")
    assert list(event)[4] == "fullDocument"  # before ns, as the server places it
    assert as_dict(event["fullDocument"]) == {"_id": 1, "x": 5}
    [gone] = events(op, catalog=_catalog_with(None), full_document="updateLookup")
    assert gone["fullDocument"] is None
    # A re-created collection of the same name does not hold the updated document.
    [other] = events(op, catalog=_catalog_with({"_id": 1}, OTHER_UUID),
                     full_document="updateLookup")
    assert other["fullDocument"] is None
    # updateLookup only concerns updates.
    [deleted] = events(delete(1), catalog=_catalog_with(None), full_document="updateLookup")
    assert "fullDocument" not in deleted


def test_post_images_when_available_and_required() -> None:
    with_images = update(1, SIMPLE_UPDATE, images_enabled=True, pre_image={"_id": 1, "x": 1},
                         post_image={"_id": 1, "x": 2})
    without = update(1, SIMPLE_UPDATE)
    for mode in ("whenAvailable", "required"):
        [event] = events(with_images, full_document=mode)
        assert event["fullDocument"] == {"_id": 1, "x": 2}
    [event] = events(without, full_document="whenAvailable")
    assert event["fullDocument"] is None
    with pytest.raises(CommandError) as info:
        events(without, full_document="required")
    assert info.value.code == 47


def test_pre_images() -> None:
    with_images = delete(1, images_enabled=True, pre_image={"_id": 1, "x": 1})
    [event] = events(with_images, full_document_before_change="whenAvailable")
    assert list(event)[-1] == "fullDocumentBeforeChange"
    assert event["fullDocumentBeforeChange"] == {"_id": 1, "x": 1}
    [event] = events(delete(1), full_document_before_change="whenAvailable")
    assert event["fullDocumentBeforeChange"] is None
    with pytest.raises(CommandError) as info:
        events(replace({"_id": 1}), full_document_before_change="required")
    assert info.value.code == 47
    [event] = events(insert({"_id": 1}), full_document_before_change="required")
    assert "fullDocumentBeforeChange" not in event  # inserts have no pre-image


# -- transactions ----------------------------------------------------------------------------


def _transaction(*operations: OplogEntry) -> OplogEntry:
    commit = entry("c", "admin.$cmd", command={"applyOps": True}, apply_ops=list(operations),
                   lsid=LSID, txn_number=Int64(7), ui=None)
    for index, operation in enumerate(operations):
        operation.ts = commit.ts
        operation.txn_op_index = index
    return commit


def test_transaction_unwinds_with_lsid_and_txn_number() -> None:
    commit = _transaction(insert({"_id": 1}), insert({"_id": 9}, ns="db.other"),
                          update(1, SIMPLE_UPDATE))
    unwound = events(commit)
    assert [e["operationType"] for e in unwound] == ["insert", "update"]
    for event in unwound:
        assert list(event)[:3] == ["txnNumber", "lsid", "_id"]
        assert event["txnNumber"] == Int64(7) and event["lsid"] == LSID
        assert event["clusterTime"] == commit.ts and event["wallTime"] == commit.wall
    # txnOpIndex is the position inside applyOps, counting operations other streams see.
    assert [decode_token(e["_id"]).txn_op_index for e in unwound] == [0, 2]
    assert unwound[0]["_id"]["_data"] < unwound[1]["_id"]["_data"]
    assert len(events(commit, DATABASE)) == 3


def test_retryable_write_events_carry_no_session_fields() -> None:
    [event] = events(insert({"_id": 1}, lsid=LSID, txn_number=Int64(3)))
    assert "lsid" not in event and "txnNumber" not in event


# -- DDL and invalidation --------------------------------------------------------------------


def test_drop_invalidates_only_a_collection_stream() -> None:
    op = command("db", {"drop": "c"})
    drop, invalidate = events(op)
    assert list(drop) == ["_id", "operationType", "clusterTime", "wallTime", "ns"]
    assert drop["operationType"] == "drop" and drop["ns"] == {"db": "db", "coll": "c"}
    assert list(invalidate) == ["_id", "operationType", "clusterTime", "wallTime"]
    assert invalidate["operationType"] == "invalidate"
    assert invalidate["clusterTime"] == drop["clusterTime"]
    cause, token = decode_token(drop["_id"]), decode_token(invalidate["_id"])
    assert token.from_invalidate and not cause.from_invalidate
    assert token.event_identifier == cause.event_identifier == {"operationType": "drop"}
    assert drop["_id"]["_data"] < invalidate["_id"]["_data"]
    assert [e["operationType"] for e in events(op, DATABASE)] == ["drop"]
    assert [e["operationType"] for e in events(op, CLUSTER)] == ["drop"]
    assert events(command("db", {"drop": "other"})) == []


def test_rename_seen_from_source_and_target() -> None:
    op = command("db", {"renameCollection": "db.c", "to": "db.d", "stayTemp": False,
                        "dropTarget": OTHER_UUID})
    rename, invalidate = events(op)
    assert list(rename) == ["to", "_id", "operationType", "clusterTime", "wallTime", "ns"]
    assert rename["ns"] == {"db": "db", "coll": "c"} and rename["to"] == {"db": "db", "coll": "d"}
    assert invalidate["operationType"] == "invalidate"
    target_events = events(op, StreamScope("db", "d"))
    assert [e["operationType"] for e in target_events] == ["rename", "invalidate"]
    assert events(op, StreamScope("db", "x")) == []
    [expanded, _] = events(op, show_expanded_events=True)
    assert expanded["operationDescription"] == {"to": {"db": "db", "coll": "d"},
                                                "dropTarget": Binary.from_uuid(OTHER_UUID)}
    assert list(expanded)[-1] == "operationDescription"
    assert decode_token(rename["_id"]).event_identifier == {
        "operationType": "rename", "operationDescription": expanded["operationDescription"]}


def test_drop_database() -> None:
    op = command("db", {"dropDatabase": 1}, ui=None)
    [event, invalidate] = events(op, DATABASE, show_expanded_events=True)
    assert event["ns"] == {"db": "db"} and "collectionUUID" not in event
    assert invalidate["operationType"] == "invalidate"
    assert decode_token(event["_id"]).uuid is None
    assert [e["operationType"] for e in events(op, COLLECTION)] == ["dropDatabase", "invalidate"]
    assert [e["operationType"] for e in events(op, CLUSTER)] == ["dropDatabase"]
    assert events(op, StreamScope("other")) == []


def test_expanded_ddl_events_hidden_by_default() -> None:
    spec = {"v": 2, "key": {"x": 1}, "name": "x_1"}
    for op in (command("db", {"create": "c", "idIndex": {"v": 2, "key": {"_id": 1},
                                                         "name": "_id_"}}),
               command("db", {"createIndexes": "c", "spec": spec}),
               command("db", {"dropIndexes": "c", "spec": spec}),
               command("db", {"collMod": "c"}, o2={"collectionOptions": {}}),
               entry("n", "", command={"msg": "x"}, o2={"shardCollection": "db.c",
                                                        "key": {"_id": 1}})):
        assert events(op) == []
        assert len(events(op, show_expanded_events=True)) == 1


def test_expanded_ddl_event_shapes() -> None:
    id_index = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    [create] = events(command("db", {"create": "c", "capped": True, "size": 4096,
                                     "idIndex": id_index}), show_expanded_events=True)
    assert list(create) == ["_id", "operationType", "clusterTime", "collectionUUID", "wallTime",
                            "ns", "operationDescription"]
    assert create["operationDescription"] == {"capped": True, "size": 4096, "idIndex": id_index}
    assert decode_token(create["_id"]).event_identifier == {
        "operationType": "create", "operationDescription": create["operationDescription"]}

    spec = {"v": 2, "key": {"x": 1}, "name": "x_1"}
    [created] = events(command("db", {"createIndexes": "c", "spec": spec}),
                       show_expanded_events=True)
    assert created["operationType"] == "createIndexes"
    assert created["operationDescription"] == {"indexes": [spec]}
    [dropped] = events(command("db", {"dropIndexes": "c", "spec": spec}),
                       show_expanded_events=True)
    assert dropped["operationType"] == "dropIndexes"
    assert dropped["operationDescription"] == {"indexes": [spec]}

    [modify] = events(command("db", {"collMod": "c", "validator": {"a": 1}},
                              o2={"collectionOptions": {"validator": {}}}),
                      show_expanded_events=True)
    assert modify["operationType"] == "modify"
    assert modify["operationDescription"] == {"validator": {"a": 1}}
    assert modify["stateBeforeChange"] == {"collectionOptions": {"validator": {}}}
    assert list(modify)[-2:] == ["operationDescription", "stateBeforeChange"]

    [shard] = events(entry("n", "", command={"msg": {"shardCollection": "db.c"}},
                           o2={"shardCollection": "db.c", "key": {"_id": 1}, "unique": False,
                               "numInitialChunks": Int64(0), "presplitHashedZones": False}),
                     show_expanded_events=True)
    assert shard["operationType"] == "shardCollection"
    assert shard["operationDescription"] == {"shardKey": {"_id": 1}, "unique": False,
                                             "numInitialChunks": Int64(0),
                                             "presplitHashedZones": False}


def test_view_ddl_is_expanded_only_and_never_invalidates() -> None:
    create = command("db", {"create": "c", "viewOn": "base", "pipeline": []})
    [event] = events(create, DATABASE, show_expanded_events=True)
    assert "collectionUUID" not in event and decode_token(event["_id"]).uuid is None
    assert event["operationDescription"] == {"viewOn": "base", "pipeline": []}
    drop = command("db", {"drop": "c"}, extra={"nsType": "view"})
    assert events(drop, DATABASE) == []
    assert [e["operationType"] for e in events(drop, show_expanded_events=True)] == ["drop"]


def test_scopes_skip_internal_namespaces() -> None:
    assert events(insert({"_id": 1}, ns="db.system.js"), DATABASE) == []
    assert events(insert({"_id": 1}, ns="config.x"), CLUSTER) == []
    assert events(insert({"_id": 1}, ns="admin.x"), CLUSTER) == []
    assert len(events(insert({"_id": 1}, ns="other.x"), CLUSTER)) == 1
    assert events(insert({"_id": 1}, ns="other.x"), DATABASE) == []
    assert events(entry("n", "", command={"msg": "periodic noop"}), CLUSTER) == []


# -- streams on a fake server ------------------------------------------------------------------


def fake_server(version: str = "7.0") -> SimpleNamespace:
    return SimpleNamespace(oplog=Oplog(1 << 30), catalog=Catalog(), cursors=CursorManager(),
                           config=EmulatorConfig(server_version=version), clock=Clock())


def log(server: SimpleNamespace, op: OplogEntry) -> OplogEntry:
    op.ts = server.clock.tick()
    for operation in op.apply_ops or []:
        operation.ts = op.ts
    server.oplog.append(op)
    server.oplog.notify()  # the server notifies once per command, after its appends
    return op


def context(server: SimpleNamespace, db: str = "db", target: Any = "c") -> Context:
    return Context(server, Connection(1, "127.0.0.1:1"), db,  # type: ignore[arg-type]
                   {"aggregate": target}, "aggregate")


def open_stream(server: SimpleNamespace, spec: dict[str, Any] | None = None, db: str = "db",
                target: Any = "c", pipeline: list[dict[str, Any]] | None = None,
                batch_size: int | None = None) -> dict[str, Any]:
    options = {} if batch_size is None else {"batchSize": batch_size}
    return decoded(open_change_stream(context(server, db, target), spec or {}, pipeline or [],
                                      options)["cursor"])


def get_more(server: SimpleNamespace, cursor_id: int, batch_size: int | None = None,
             max_time_ms: int | None = 0) -> dict[str, Any]:
    cursor = server.cursors.get(cursor_id, server.cursors.cursors[cursor_id].ns)
    return decoded(asyncio.run(cursor.get_more(context(server), batch_size, max_time_ms))["cursor"])


def decoded(cursor: dict[str, Any]) -> dict[str, Any]:
    """The cursor document with its batch decoded (batches hold raw BSON documents)."""
    key = "firstBatch" if "firstBatch" in cursor else "nextBatch"
    assert all(isinstance(document, RawBSONDocument) for document in cursor[key])
    return {**cursor, key: [as_dict(document) for document in cursor[key]]}


def types_of(batch: list[Any]) -> list[str]:
    return [document["operationType"] for document in batch]


@pytest.mark.parametrize("spec, db, target, pipeline, code", [
    ({"resumeAfter": high_water_mark(Timestamp(1, 1)),
      "startAfter": high_water_mark(Timestamp(1, 1))}, "db", "c", [], 50865),
    ({"resumeAfter": high_water_mark(Timestamp(1, 1)),
      "startAtOperationTime": Timestamp(1, 1)}, "db", "c", [], 40674),
    ({}, "local", "c", [], 73),
    ({}, "config", "c", [], 73),
    ({}, "admin", 1, [], 73),
    ({}, "db", "system.js", [], 73),
    ({"allChangesForCluster": True}, "db", 1, [], 72),
    ({"allChangesForCluster": True}, "admin", "c", [], 72),
    ({}, "db", "c", [{"$group": {"_id": None}}], 20),
    ({}, "db", "c", [{"$unsupported": "foo"}], 40324),
    ({}, "db", "c", [{"$changeStream": {}}], 40602),
    ({}, "db", "c", [{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}], 7182802),
    ({"bogus": 1}, "db", "c", [], 40415),
    ({"fullDocument": "sometimes"}, "db", "c", [], 2),
    ({"showExpandedEvents": 1}, "db", "c", [], 14),
    ({"startAtOperationTime": 5}, "db", "c", [], 14),
    ({"resumeAfter": {"_data": "zz"}}, "db", "c", [], 9),
])
def test_open_validation(spec: dict[str, Any], db: str, target: Any,
                         pipeline: list[dict[str, Any]], code: int) -> None:
    with pytest.raises(CommandError) as info:
        open_stream(fake_server(), spec, db, target, pipeline)
    assert info.value.code == code


def test_resume_token_rules_on_open() -> None:
    server = fake_server()
    drop, invalidate = events(log(server, command("db", {"drop": "c"})))
    with pytest.raises(CommandError) as info:
        open_stream(server, {"resumeAfter": invalidate["_id"]})
    assert info.value.code == 260
    [dropped_db, _] = events(log(server, command("db", {"dropDatabase": 1}, ui=None)),
                             DATABASE)
    with pytest.raises(CommandError) as info:  # collection stream, event token without UUID
        open_stream(server, {"resumeAfter": dropped_db["_id"]})
    assert info.value.code == 260
    server.catalog.add(Collection("db", "v", {"viewOn": "c", "pipeline": []}))
    with pytest.raises(CommandError) as info:
        open_stream(server, target="v")
    assert info.value.code == 166


def test_open_returns_empty_batch_and_high_water_mark_after_latest_write() -> None:
    server = fake_server()
    log(server, insert({"_id": 1}))
    cursor = open_stream(server)
    assert list(cursor) == ["firstBatch", "postBatchResumeToken", "id", "ns"]
    assert cursor["firstBatch"] == [] and cursor["id"] != 0 and cursor["ns"] == "db.c"
    now = server.clock.now
    assert cursor["postBatchResumeToken"] == high_water_mark(Timestamp(now.time, now.inc + 1))
    assert open_stream(server, target=1)["ns"] == "db.$cmd.aggregate"
    assert open_stream(server, {"allChangesForCluster": True}, "admin",
                       1)["ns"] == "admin.$cmd.aggregate"
    assert isinstance(server.cursors.cursors[cursor["id"]], ChangeStreamCursor)


def test_get_more_returns_events_and_post_batch_tokens() -> None:
    server = fake_server()
    cursor = open_stream(server)
    log(server, insert({"_id": 1}))
    log(server, insert({"_id": 2}, ns="db.other"))
    log(server, insert({"_id": 3}))
    reply = get_more(server, cursor["id"], batch_size=1)
    assert [doc["documentKey"]["_id"] for doc in reply["nextBatch"]] == [1]
    # The batch ended on an event with nothing scanned after it: PBRT is that event's token.
    assert reply["postBatchResumeToken"] == reply["nextBatch"][0]["_id"]
    reply = get_more(server, cursor["id"])
    assert [doc["documentKey"]["_id"] for doc in reply["nextBatch"]] == [3]
    assert reply["postBatchResumeToken"] == reply["nextBatch"][0]["_id"]
    noop = log(server, entry("n", "", command={"msg": "periodic noop"}, ui=None))
    reply = get_more(server, cursor["id"])
    assert reply["nextBatch"] == [] and reply["id"] == cursor["id"]
    assert reply["postBatchResumeToken"] == high_water_mark(noop.ts)


def test_initial_batch_returns_available_events() -> None:
    server = fake_server()
    first = log(server, insert({"_id": 1}))
    log(server, insert({"_id": 2}))
    cursor = open_stream(server, {"startAtOperationTime": first.ts}, batch_size=5)
    assert [doc["documentKey"]["_id"] for doc in cursor["firstBatch"]] == [1, 2]
    assert open_stream(server, {"startAtOperationTime": first.ts}, batch_size=0)["firstBatch"] == []


def test_get_more_waits_for_an_append() -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    cursor = server.cursors.cursors[cursor_id]

    async def scenario() -> tuple[dict[str, Any], float]:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: log(server, insert({"_id": 42})))
        started = time.monotonic()
        reply = await cursor.get_more(context(server), None, 5000)
        return decoded(reply["cursor"]), time.monotonic() - started

    reply, elapsed = asyncio.run(scenario())
    assert [doc["documentKey"]["_id"] for doc in reply["nextBatch"]] == [42]
    assert elapsed < 2


def test_get_more_times_out_with_empty_batch() -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    started = time.monotonic()
    log(server, insert({"_id": 1}, ns="db.other"))  # out of scope: keeps waiting
    reply = get_more(server, cursor_id, max_time_ms=150)
    assert reply["nextBatch"] == [] and time.monotonic() - started >= 0.14
    assert reply["id"] == cursor_id


def test_invalidate_closes_the_cursor() -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    log(server, command("db", {"drop": "c"}))
    log(server, insert({"_id": 1}))  # re-created: never reported on this cursor
    reply = get_more(server, cursor_id)
    assert types_of(reply["nextBatch"]) == ["drop", "invalidate"]
    assert reply["id"] == 0 and cursor_id not in server.cursors.cursors
    assert reply["postBatchResumeToken"] == reply["nextBatch"][-1]["_id"]

    # startAfter the invalidate: a new stream continues after it, without re-invalidating.
    restarted = open_stream(server, {"startAfter": reply["postBatchResumeToken"]})
    assert [doc["documentKey"]["_id"] for doc in restarted["firstBatch"]] == [1]
    # resumeAfter the drop itself: the invalidate comes next.
    resumed = open_stream(server, {"resumeAfter": reply["nextBatch"][0]["_id"]})
    assert types_of(resumed["firstBatch"]) == ["invalidate"] and resumed["id"] == 0


def test_resume_after_event_and_high_water_mark() -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    for _id in range(4):
        log(server, insert({"_id": _id}))
    batch = get_more(server, cursor_id)["nextBatch"]
    resumed = open_stream(server, {"resumeAfter": batch[1]["_id"]})
    assert [doc["documentKey"]["_id"] for doc in resumed["firstBatch"]] == [2, 3]
    hwm = high_water_mark(batch[2]["clusterTime"])  # at the third event's time: includes it
    resumed = open_stream(server, {"resumeAfter": hwm})
    assert [doc["documentKey"]["_id"] for doc in resumed["firstBatch"]] == [2, 3]
    at_time = open_stream(server, {"startAtOperationTime": batch[3]["clusterTime"]})
    assert [doc["documentKey"]["_id"] for doc in at_time["firstBatch"]] == [3]


def test_resume_token_not_found_is_fatal() -> None:
    server = fake_server()
    op = insert({"_id": 1})
    op.ts = server.clock.tick()  # a time the oplog holds no such event for
    [event] = events(op)
    log(server, insert({"_id": 2}))
    with pytest.raises(CommandError) as info:
        open_stream(server, {"resumeAfter": event["_id"]})
    assert info.value.code == 280
    assert info.value.labels == ["NonResumableChangeStreamError"]


def test_history_lost() -> None:
    server = fake_server()
    first = log(server, insert({"_id": 1}))
    cursor_id = open_stream(server, {"startAtOperationTime": first.ts}, batch_size=0)["id"]
    later = log(server, insert({"_id": 2}))
    server.oplog.truncate_before(later.ts)
    with pytest.raises(CommandError) as info:
        open_stream(server, {"startAtOperationTime": first.ts})
    assert info.value.code == 286 and info.value.labels == ["NonResumableChangeStreamError"]
    with pytest.raises(CommandError) as info:  # the open cursor had not read that far
        get_more(server, cursor_id)
    assert info.value.code == 286
    assert cursor_id not in server.cursors.cursors


def test_batches_respect_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    for _id in range(3):
        log(server, insert({"_id": _id, "pad": "x" * 300}))
    event_size = len(encode(events(insert({"_id": 0, "pad": "x" * 300}))[0]))
    monkeypatch.setattr(stream_module, "MAX_BATCH_BYTES", event_size * 5 // 2)
    sizes = [len(get_more(server, cursor_id)["nextBatch"]) for _ in range(3)]
    assert sizes == [2, 1, 0]


def _fake_pipeline(documents: list[dict[str, Any]], stages: list[dict[str, Any]],
                   _collation: Any) -> list[dict[str, Any]]:
    """Just enough of $match (top-level equality) and $project/$set for these tests."""
    for stage in stages:
        (name, spec), = stage.items()
        if name == "$match":
            documents = [d for d in documents if all(d.get(k) == v for k, v in spec.items())]
        elif name == "$project":
            documents = [{k: v for k, v in d.items() if spec.get(k, 1)} for d in documents]
        elif name == "$set":
            documents = [{**d, **spec} for d in documents]
    return documents


@pytest.fixture()
def fake_aggregate(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("mongoemu.query.aggregate")
    module.run_pipeline = _fake_pipeline  # type: ignore[attr-defined]
    module.validate_pipeline = lambda stages: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mongoemu.query.aggregate", module)


@pytest.mark.usefixtures("fake_aggregate")
def test_tail_stages_filter_and_reshape_events() -> None:
    server = fake_server()
    cursor = open_stream(server, pipeline=[{"$match": {"operationType": "delete"}},
                                           {"$set": {"extra": 1}}])
    log(server, insert({"_id": 1}))
    deleted = log(server, delete(1))
    reply = get_more(server, cursor["id"])
    assert types_of(reply["nextBatch"]) == ["delete"]
    assert reply["nextBatch"][0]["extra"] == 1
    assert reply["postBatchResumeToken"] == reply["nextBatch"][0]["_id"]
    log(server, insert({"_id": 2}))  # filtered out: the PBRT moves to a high-water mark
    reply = get_more(server, cursor["id"])
    assert reply["nextBatch"] == []
    assert decode_token(reply["postBatchResumeToken"]).is_high_water_mark
    assert decode_token(reply["postBatchResumeToken"]).cluster_time > deleted.ts


@pytest.mark.usefixtures("fake_aggregate")
def test_removing_id_is_fatal() -> None:
    server = fake_server()
    cursor_id = open_stream(server, pipeline=[{"$project": {"_id": 0}}])["id"]
    log(server, insert({"_id": 1}))
    with pytest.raises(CommandError) as info:
        get_more(server, cursor_id)
    assert info.value.code == 280 and info.value.labels == ["NonResumableChangeStreamError"]
    assert cursor_id not in server.cursors.cursors


def test_required_post_image_error_has_no_label() -> None:
    server = fake_server()
    cursor_id = open_stream(server, {"fullDocument": "required"})["id"]
    log(server, update(1, SIMPLE_UPDATE))
    with pytest.raises(CommandError) as info:
        get_more(server, cursor_id)
    assert info.value.code == 47 and info.value.labels == []


def test_transaction_split_across_batches_resumes_inside_it() -> None:
    server = fake_server()
    cursor_id = open_stream(server)["id"]
    log(server, _transaction(*(insert({"_id": i}) for i in range(3))))
    first = get_more(server, cursor_id, batch_size=2)
    assert [doc["documentKey"]["_id"] for doc in first["nextBatch"]] == [0, 1]
    # Encoded in the server's order: bson.encode would have moved _id to the front.
    assert list(first["nextBatch"][0])[:3] == ["txnNumber", "lsid", "_id"]
    assert first["postBatchResumeToken"] == first["nextBatch"][-1]["_id"]
    resumed = open_stream(server, {"resumeAfter": first["postBatchResumeToken"]})
    assert [doc["documentKey"]["_id"] for doc in resumed["firstBatch"]] == [2]
    assert [doc["documentKey"]["_id"] for doc in get_more(server, cursor_id)["nextBatch"]] == [2]


def test_error_labels() -> None:
    assert change_stream_error_labels(6, "7.0") == ["ResumableChangeStreamError"]
    assert change_stream_error_labels(234, "7.0") == ["ResumableChangeStreamError"]
    assert change_stream_error_labels(63, "6.0") == ["ResumableChangeStreamError"]
    assert change_stream_error_labels(63, "7.0") == []
    assert change_stream_error_labels(216, "7.0") == []
    assert change_stream_error_labels(286, "8.0") == ["NonResumableChangeStreamError"]
