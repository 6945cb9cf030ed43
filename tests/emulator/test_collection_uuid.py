"""The collectionUUID parameter: a command fails with CollectionUUIDMismatch (361) unless the
namespace it names is the collection with that UUID. Scenarios follow the server's own tests
(jstests collection_uuid_find / _write_commands / _index_commands / _drop / _coll_mod /
_rename_collection)."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pymongo
import pytest
from bson.binary import Binary
from pymongo.errors import OperationFailure

from mongoemu.testing import EmulatorProcess

DB = "t_collection_uuid"


@pytest.fixture(scope="module")
def client(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000,
                             uuidRepresentation="standard") as client:
        yield client


@pytest.fixture
def db(client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    client.drop_database(DB)
    client.drop_database(DB + "_2")
    client[DB].coll.insert_one({"_id": 0, "x": 1, "y": 2})
    client[DB].coll.create_index("y")
    yield client[DB]
    client.drop_database(DB)
    client.drop_database(DB + "_2")


def uuid_of(database: pymongo.database.Database, name: str) -> uuid.UUID:
    value = next(database.list_collections(filter={"name": name}))["info"]["uuid"]
    return value.as_uuid() if isinstance(value, Binary) else value


def _raw(database: pymongo.database.Database, command: dict[str, Any]) -> dict[str, Any]:
    """The reply, failed or not."""
    try:
        return database.command(command, codec_options=database.codec_options)
    except OperationFailure as exc:
        return exc.details


def assert_mismatch(reply: dict[str, Any], db: str, expected_uuid: uuid.UUID, expected: str,
                    actual: str | None) -> None:
    assert reply["ok"] == 0.0, reply
    assert (reply["code"], reply["codeName"]) == (361, "CollectionUUIDMismatch")
    assert reply["errmsg"] == "Collection UUID does not match that specified"
    assert reply["db"] == db
    assert reply["collectionUUID"] == expected_uuid
    assert reply["expectedCollection"] == expected
    assert reply["actualCollection"] == actual


COMMANDS: dict[str, dict[str, Any]] = {
    "find": {"find": None, "filter": {}},
    "aggregate": {"aggregate": None, "pipeline": [], "cursor": {}},
    "findAndModify": {"findAndModify": None, "query": {"_id": 0}, "update": {"$set": {"u": 1}}},
    "createIndexes": {"createIndexes": None, "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
    "dropIndexes": {"dropIndexes": None, "index": {"y": 1}},
    "collMod": {"collMod": None},
    "drop": {"drop": None},
}


def command_on(name: str, collection: str, collection_uuid: uuid.UUID) -> dict[str, Any]:
    command = dict(COMMANDS[name])
    command[name] = collection
    command["collectionUUID"] = collection_uuid
    return command


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_level_checks(db: pymongo.database.Database, client: pymongo.MongoClient,
                              name: str) -> None:
    right = uuid_of(db, "coll")
    db.coll_2.insert_one({"_id": 1, "y": 1})
    db.coll_2.create_index("y")
    # Another collection's UUID, a UUID no collection has, a name that holds nothing.
    assert_mismatch(_raw(db, command_on(name, "coll_2", right)), DB, right, "coll_2", "coll")
    unknown = uuid.uuid4()
    assert_mismatch(_raw(db, command_on(name, "coll", unknown)), DB, unknown, "coll", None)
    assert_mismatch(_raw(db, command_on(name, "missing", right)), DB, right, "missing", "coll")
    assert "missing" not in db.list_collection_names()
    # actualCollection names only a collection of the same database.
    other = client[DB + "_2"]
    other.coll_3.insert_one({"_id": 2})
    assert_mismatch(_raw(other, command_on(name, "coll_3", right)), DB + "_2", right, "coll_3",
                    None)
    # A view never matches (views have no UUID).
    db.create_collection("view", viewOn="coll", pipeline=[])
    assert_mismatch(_raw(db, command_on(name, "view", right)), DB, right, "view", "coll")
    # The right UUID runs the command.
    assert _raw(db, command_on(name, "coll", right))["ok"] == 1.0


@pytest.mark.parametrize("name, statements", [
    ("insert", {"documents": [{"inserted": 1}, {"inserted": 2}]}),
    ("update", {"updates": [{"q": {"_id": 0}, "u": {"$set": {"u": 1}}},
                            {"q": {"_id": 9}, "u": {"$set": {"u": 1}}, "upsert": True}]}),
    ("delete", {"deletes": [{"q": {"_id": 0}, "limit": 1}, {"q": {}, "limit": 0}]}),
])
def test_write_statements_report_write_errors(db: pymongo.database.Database, name: str,
                                              statements: dict[str, Any]) -> None:
    right = uuid_of(db, "coll")
    for ordered, failed in ((True, [0]), (False, [0, 1])):
        reply = _raw(db, {name: "missing", **statements, "ordered": ordered,
                          "collectionUUID": right})
        assert reply["ok"] == 1.0 and reply["n"] == 0
        assert [error["index"] for error in reply["writeErrors"]] == failed
        for error in reply["writeErrors"]:
            assert_mismatch({"ok": 0.0, **error}, DB, right, "missing", "coll")
        assert "missing" not in db.list_collection_names()  # never created implicitly
    reply = _raw(db, {name: "coll", **statements, "collectionUUID": right})
    assert reply["ok"] == 1.0 and "writeErrors" not in reply and reply["n"] >= 1


def test_a_rename_during_a_copy_is_seen(db: pymongo.database.Database,
                                        client: pymongo.MongoClient) -> None:
    copied = uuid_of(db, "coll")
    client.admin.command("renameCollection", f"{DB}.coll", to=f"{DB}.renamed")
    db.coll.insert_one({"_id": "a new collection under the old name"})
    reply = _raw(db, {"find": "coll", "filter": {}, "collectionUUID": copied})
    assert_mismatch(reply, DB, copied, "coll", "renamed")


def test_rename_collection(db: pymongo.database.Database, client: pymongo.MongoClient) -> None:
    db.coll_2.insert_one({"_id": 1})
    source, target = uuid_of(db, "coll"), uuid_of(db, "coll_2")
    admin = client.admin
    # dropTarget given as a UUID must be the target's.
    assert_mismatch(_raw(admin, {"renameCollection": f"{DB}.coll", "to": f"{DB}.coll_2",
                                 "dropTarget": source}), DB, source, "coll_2", "coll")
    assert_mismatch(_raw(admin, {"renameCollection": f"{DB}.coll_2", "to": f"{DB}.coll_3",
                                 "dropTarget": target, "collectionUUID": source}),
                    DB, source, "coll_2", "coll")
    assert _raw(admin, {"renameCollection": f"{DB}.coll_2", "to": f"{DB}.coll",
                        "dropTarget": source, "collectionUUID": target})["ok"] == 1.0
    assert uuid_of(db, "coll") == target
    reply = _raw(admin, {"renameCollection": f"{DB}.coll", "to": f"{DB}_2.coll",
                         "collectionUUID": target})
    assert (reply["code"], reply["errmsg"]) == (
        72, "Cannot provide an expected collection UUID when renaming between databases")


def test_parsing(db: pymongo.database.Database) -> None:
    reply = _raw(db, {"find": "coll", "collectionUUID": "not a uuid"})
    assert (reply["code"], reply["errmsg"]) == (
        14, "BSON field 'find.collectionUUID' is the wrong type 'string', expected type "
            "'binData'")
    reply = _raw(db, {"find": "coll", "collectionUUID": Binary(b"0" * 16, 3)})
    assert (reply["code"], reply["errmsg"]) == (
        14, "BSON field 'find.collectionUUID' is the wrong binData type 'uuid(old)', expected "
            "type 'UUID'")
    # Strict parsers without the field refuse it rather than skip the check.
    for name in ("count", "distinct", "listIndexes"):
        command = {name: "coll", "collectionUUID": uuid_of(db, "coll")}
        if name == "distinct":
            command["key"] = "x"
        reply = _raw(db, command)
        assert (reply["code"], reply["errmsg"]) == (
            40415, f"BSON field '{name}.collectionUUID' is an unknown field.")


def test_on_mongos(mongos: EmulatorProcess) -> None:
    with pymongo.MongoClient(mongos.uri, uuidRepresentation="standard") as client:
        client.drop_database(DB)
        client[DB].coll.insert_one({"_id": 1})
        unknown = uuid.uuid4()
        assert_mismatch(_raw(client[DB], {"find": "coll", "collectionUUID": unknown}),
                        DB, unknown, "coll", None)
        client.drop_database(DB)
