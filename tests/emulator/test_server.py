"""The emulator as PyMongo sees it: handshake, CRUD, DDL, sessions, write blocking, mongos."""

from __future__ import annotations

import socket
import struct
import threading
import time

import bson
import pymongo
import pytest
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from mongoemu import wire
from mongoemu.testing import EmulatorProcess, start_emulator, start_secured_emulator


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> pymongo.MongoClient:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


@pytest.fixture
def db(client: pymongo.MongoClient, request: pytest.FixtureRequest):
    name = "t_" + request.node.name[:40].replace("[", "_").replace("]", "_")
    client.drop_database(name)
    yield client[name]
    client.admin.command("setUserWriteBlockMode", 1, **{"global": False})
    client.drop_database(name)


def raw_command(emulator: EmulatorProcess, document: dict, flags: int = 0) -> dict:
    body = bson.encode(document)
    payload = struct.pack("<I", flags) + b"\x00" + body
    message = struct.pack("<iiii", 16 + len(payload), 1, 0, wire.OP_MSG) + payload
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(message)
        header = sock.recv(16, socket.MSG_WAITALL)
        length = struct.unpack("<i", header[:4])[0]
        rest = b""
        while len(rest) < length - 16:
            rest += sock.recv(length - 16 - len(rest))
    return bson.decode(rest[5:])


def test_hello_as_replica_set_primary(replset: EmulatorProcess) -> None:
    reply = raw_command(replset, {"hello": 1, "$db": "admin"})
    assert reply["isWritablePrimary"] is True
    assert reply["setName"] == "rs0"
    assert reply["hosts"] == [replset.address] and reply["me"] == replset.address
    assert reply["maxWireVersion"] == 21 and reply["logicalSessionTimeoutMinutes"] == 30
    assert set(reply["topologyVersion"]) == {"processId", "counter"}
    assert isinstance(reply["lastWrite"]["opTime"]["ts"], Timestamp)
    assert isinstance(reply["operationTime"], Timestamp) and "$clusterTime" in reply


def test_awaitable_hello_waits(replset: EmulatorProcess) -> None:
    version = raw_command(replset, {"hello": 1, "$db": "admin"})["topologyVersion"]
    started = time.monotonic()
    reply = raw_command(replset, {"hello": 1, "topologyVersion": version, "maxAwaitTimeMS": 700,
                                  "$db": "admin"}, flags=1 << 16)
    assert time.monotonic() - started >= 0.6
    assert reply["ok"] == 1.0


def test_unknown_command_and_missing_db(replset: EmulatorProcess) -> None:
    reply = raw_command(replset, {"frobnicate": 1, "$db": "admin"})
    assert (reply["ok"], reply["code"], reply["codeName"]) == (0.0, 59, "CommandNotFound")
    assert "frobnicate" in reply["errmsg"]
    assert raw_command(replset, {"ping": 1})["code"] == 40571


def test_server_versions_follow_the_flag() -> None:
    for version, wire_version in (("6.0", 17), ("8.0", 25)):
        with start_emulator(server_version=version) as emulator:
            with pymongo.MongoClient(emulator.uri, serverSelectionTimeoutMS=5000) as client:
                info = client.server_info()
                assert info["version"].startswith(version)
                assert client.admin.command("hello")["maxWireVersion"] == wire_version
                fcv = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
                assert fcv["featureCompatibilityVersion"]["version"] == version


def test_crud_round_trip_keeps_types_and_order(db) -> None:
    document = {"_id": 1, "z": 1, "a": Int64(2), "m": 2.5, "nested": {"y": [1, {"x": None}]}}
    db.c.insert_one(document)
    raw = db.get_collection("c", codec_options=bson.CodecOptions(
        document_class=bson.raw_bson.RawBSONDocument)).find_one()
    assert raw.raw == bson.encode(document)
    db.c.update_one({"_id": 1}, {"$inc": {"a": 1}, "$set": {"nested.y.1.x": "set"}})
    assert db.c.find_one() == {"_id": 1, "z": 1, "a": 3, "m": 2.5,
                               "nested": {"y": [1, {"x": "set"}]}}
    assert isinstance(db.c.find_one()["a"], Int64)


def test_id_moves_first_and_is_generated(db) -> None:
    db.c.insert_one({"a": 1, "_id": "x"})
    db.c.insert_one({"b": 1})
    docs = list(db.c.find())
    assert all(next(iter(d)) == "_id" for d in docs)


def test_unique_index_and_duplicate_key(db) -> None:
    db.c.create_index("email", unique=True)
    db.c.insert_one({"_id": 1, "email": "a@x"})
    with pytest.raises(DuplicateKeyError) as info:
        db.c.insert_one({"_id": 2, "email": "a@x"})
    assert info.value.details["keyValue"] == {"email": "a@x"}
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": 1})
    with pytest.raises(pymongo.errors.BulkWriteError) as bulk:
        db.d.insert_many([{"_id": 3}, {"_id": 3}, {"_id": 4}], ordered=False)
    assert bulk.value.details["nInserted"] == 2
    with pytest.raises(pymongo.errors.BulkWriteError) as missing:  # missing key = null key
        db.c.insert_many([{"_id": 5}, {"_id": 6}])
    assert missing.value.details["writeErrors"][0]["keyValue"] == {"email": None}


def test_find_sort_skip_limit_projection_and_batches(db) -> None:
    db.c.insert_many([{"_id": i, "g": i % 5, "v": i} for i in range(1000)])
    cursor = db.c.find({"g": 3}, {"v": 1, "_id": 0}).sort("v", -1).skip(2).limit(5)
    assert [d["v"] for d in cursor] == [988, 983, 978, 973, 968]
    assert len(list(db.c.find().batch_size(7))) == 1000
    assert db.c.count_documents({"v": {"$gte": 990}}) == 10
    assert sorted(db.c.distinct("g")) == [0, 1, 2, 3, 4]
    ranged = list(db.c.find({"_id": {"$gte": 10, "$lt": 13}}))
    assert [d["_id"] for d in ranged] == [10, 11, 12]


def test_large_documents_are_batched_by_bytes(db) -> None:
    payload = "x" * (1024 * 1024)
    db.c.insert_many([{"_id": i, "p": payload} for i in range(40)])
    assert sum(1 for _ in db.c.find()) == 40


def test_aggregate_group(db) -> None:
    db.c.insert_many([{"k": i % 3, "v": i} for i in range(30)])
    result = list(db.c.aggregate([{"$group": {"_id": "$k", "total": {"$sum": "$v"}}},
                                  {"$sort": {"_id": 1}}]))
    assert result == [{"_id": 0, "total": 135}, {"_id": 1, "total": 145},
                      {"_id": 2, "total": 155}]


def test_list_collections_shapes(db) -> None:
    db.create_collection("plain")
    db.create_collection("capped", capped=True, size=8192, max=10)
    db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    db.create_collection("view", viewOn="plain", pipeline=[{"$match": {"a": 1}}])
    entries = {e["name"]: e for e in db.list_collections()}
    assert entries["plain"]["type"] == "collection" and "uuid" in entries["plain"]["info"]
    assert entries["plain"]["idIndex"] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert entries["capped"]["options"] == {"capped": True, "size": 8192, "max": 10}
    assert "idIndex" not in entries["clustered"]
    assert entries["view"]["type"] == "view" and entries["view"]["info"] == {"readOnly": True}
    assert "system.views" in entries


def test_create_index_on_the_cluster_key_is_a_no_op(db) -> None:
    # MongoDB (jstests clustered_collection_create_index_clustered_common.js): whatever the name.
    db.command("create", "c", clusteredIndex={"key": {"_id": 1}, "unique": True, "name": "by_id"})
    reply = db.command("createIndexes", "c", indexes=[
        {"key": {"_id": 1}, "name": "by_id", "clustered": True},
        {"key": {"_id": 1}, "name": "another"}])
    assert reply["numIndexesBefore"] == reply["numIndexesAfter"]
    assert [index["name"] for index in db.c.list_indexes()] == ["by_id"]


def test_capped_collection_evicts_oldest(db) -> None:
    db.create_collection("log", capped=True, size=100000, max=3)
    db.log.insert_many([{"_id": i} for i in range(5)])
    assert [d["_id"] for d in db.log.find()] == [2, 3, 4]


def test_coll_mod_index_options(db) -> None:
    db.c.create_index("a", name="a_1")
    db.c.create_index("t", expireAfterSeconds=60)
    reply = db.command("collMod", "c", index={"name": "a_1", "hidden": True})
    assert reply["hidden_old"] is False and reply["hidden_new"] is True
    db.command("collMod", "c", index={"keyPattern": {"t": 1}, "expireAfterSeconds": 3600})
    db.command("collMod", "c", index={"name": "a_1", "prepareUnique": True})
    db.c.insert_one({"a": 1})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"a": 1})
    db.command("collMod", "c", index={"name": "a_1", "unique": True})
    indexes = {i["name"]: i for i in db.c.list_indexes()}
    assert indexes["a_1"].get("unique") is True and indexes["a_1"].get("hidden") is True
    assert indexes["t_1"]["expireAfterSeconds"] == 3600


def test_rename_and_drop(db, client) -> None:
    db.a.insert_one({"x": 1})
    db.a.rename("b")
    assert db.list_collection_names() == ["b"]
    with pytest.raises(OperationFailure) as info:
        client.admin.command("renameCollection", f"{db.name}.missing", to=f"{db.name}.c")
    assert info.value.code == 26
    db.b.drop()
    assert db.name not in client.list_database_names()


def test_write_blocking_rules() -> None:
    # Blocking is seen with authentication on, by a user without bypassWriteBlockingMode.
    with start_secured_emulator() as emulator, \
            pymongo.MongoClient(emulator.application_uri) as client:
        db = client.t_write_blocking_rules
        db.c.insert_one({"_id": 1})
        client.admin.command("setUserWriteBlockMode", 1, **{"global": True})
        with pytest.raises(WriteError) as info:
            db.c.insert_one({"_id": 2})
        assert info.value.code == 371
        with pytest.raises(OperationFailure) as ddl:
            db.create_collection("other")
        assert ddl.value.code == 371
        assert db.c.count_documents({}) == 1  # reads keep working
        client.admin.command("setUserWriteBlockMode", 1, **{"global": False})
        db.c.insert_one({"_id": 2})


def test_write_blocking_bypass_by_privilege() -> None:
    with start_secured_emulator() as emulator, \
            pymongo.MongoClient(emulator.uri) as tool, \
            pymongo.MongoClient(emulator.application_uri) as user:
        tool.admin.command("setUserWriteBlockMode", 1, **{"global": True})
        tool.x.c.insert_one({"_id": 1})  # root holds bypassWriteBlockingMode (restore)
        with pytest.raises(WriteError):
            user.x.c.insert_one({"_id": 2})


def test_without_auth_every_client_bypasses_write_blocking(db, client) -> None:
    # Without authentication every client holds every privilege (as on MongoDB), so the block
    # is recorded but stops no one: a migration tool started against unauthenticated
    # emulators keeps writing its destination.
    client.admin.command("setUserWriteBlockMode", 1, **{"global": True})
    status = client.admin.command("serverStatus")["writeBlocking"]
    assert status["userWritesBlocked"] is True
    with pymongo.MongoClient(client.address[0], client.address[1], appname="application",
                             directConnection=True) as application:
        application[db.name].c.insert_one({"_id": 1})
        application[db.name].create_collection("other")
    assert db.c.count_documents({}) == 1


def test_retryable_write_is_not_applied_twice(client, db) -> None:
    client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                         data={"failCommands": ["insert"], "errorCode": 91,
                               "closeConnection": False})
    db.c.insert_one({"_id": "retried"})  # first attempt fails with a retryable error
    assert db.c.count_documents({}) == 1
    client.admin.command("configureFailPoint", "failCommand", mode="off")


def test_fail_command_error_and_labels(client, db) -> None:
    client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                         data={"failCommands": ["find"], "errorCode": 2,
                               "errorLabels": ["Custom"]})
    with pytest.raises(OperationFailure) as info:
        db.c.find_one()
    assert info.value.code == 2 and info.value.has_error_label("Custom")
    assert db.c.find_one() is None


def test_transactions_commit_and_abort(client, db) -> None:
    db.c.insert_one({"_id": 0})
    with client.start_session() as session:
        with session.start_transaction():
            db.c.insert_one({"_id": 1}, session=session)
            db.c.update_one({"_id": 0}, {"$set": {"t": 1}}, session=session)
        session.start_transaction()
        db.c.insert_one({"_id": 2}, session=session)
        session.abort_transaction()
    assert sorted(d["_id"] for d in db.c.find()) == [0, 1]
    assert db.c.find_one({"_id": 0}) == {"_id": 0, "t": 1}


def test_transaction_becomes_one_oplog_entry_in_change_stream(client, db) -> None:
    db.create_collection("c")
    with db.c.watch() as stream:
        with client.start_session() as session:
            with session.start_transaction():
                db.c.insert_one({"_id": 1}, session=session)
                db.c.insert_one({"_id": 2}, session=session)
        first, second = stream.next(), stream.next()
    assert first["clusterTime"] == second["clusterTime"]
    assert first["txnNumber"] == second["txnNumber"] and "lsid" in first


def test_append_oplog_note_advances_time(client) -> None:
    before = client.admin.command("ping")["operationTime"]
    reply = client.admin.command("appendOplogNote", data={"note": 1})
    assert reply["operationTime"] > before


def test_admin_only_commands(client, db) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("listDatabases")
    assert info.value.code == 13


def test_server_information(client) -> None:
    status = client.admin.command("replSetGetStatus")
    assert status["myState"] == 1 and status["members"][0]["stateStr"] == "PRIMARY"
    assert client.admin.command("serverStatus")["process"] == "mongod"
    assert client.admin.command("hostInfo")["system"]["numCores"] >= 1
    assert client.admin.command("getDefaultRWConcern")["defaultWriteConcern"]["w"] == "majority"
    assert client.admin.command("replSetGetConfig")["config"]["_id"] == "rs0"


def test_concurrent_clients(client, db) -> None:
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(200):
                db.c.insert_one({"_id": offset * 1000 + i})
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and db.c.count_documents({}) == 800


def test_mongos_mode(mongos: EmulatorProcess) -> None:
    with pymongo.MongoClient(mongos.uri, serverSelectionTimeoutMS=5000) as client:
        hello = client.admin.command("hello")
        assert hello["msg"] == "isdbgrid" and "setName" not in hello
        assert len(client.admin.command("listShards")["shards"]) == 2
        client.admin.command("enableSharding", "sharded")
        client.admin.command("shardCollection", "sharded.c", key={"sk": 1})
        entry = client.config.collections.find_one({"_id": "sharded.c"})
        assert entry["key"] == {"sk": 1}
        with pytest.raises(OperationFailure) as info:
            client.admin.command("shardCollection", "sharded.c", key={"other": 1})
        assert info.value.code == 23
        with client.sharded.c.watch(show_expanded_events=True) as stream:
            client.sharded.c.insert_one({"_id": 1, "sk": "a"})
            event = stream.next()
        assert event["documentKey"] == {"sk": "a", "_id": 1}
        with pytest.raises(OperationFailure) as info:
            client.admin.command("replSetGetStatus")
        assert info.value.code == 59
        client.admin.command("balancerStop")
        assert client.admin.command("balancerStatus")["mode"] == "off"
        assert client.config.settings.find_one({"_id": "balancer"})["stopped"] is True


def test_an_update_may_not_make_a_document_larger_than_16_mib(db) -> None:
    db.c.insert_one({"_id": 1, "big": "x" * (16 * 1024 * 1024 - 40)})
    with pytest.raises(OperationFailure) as failure:
        db.c.update_one({"_id": 1}, {"$set": {"more": "y" * 100}})
    assert failure.value.code == 17419
    db.c.update_one({"_id": 1}, {"$set": {"big": "z" * (16 * 1024 * 1024 - 40)}})  # the same size
    assert db.c.find_one({"_id": 1}, {"big": {"$substrBytes": ["$big", 0, 1]}})["big"] == "z"
