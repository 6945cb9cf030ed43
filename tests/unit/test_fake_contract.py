"""The fakes against the real implementations: the same assertions run on FakeCluster and on
Cluster over an emulated replica set, and on MemoryStore and MetadataStore, so the fakes the
unit tests rely on cannot drift from what the phases meet in production."""

from __future__ import annotations

import datetime
import inspect
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import DatetimeConversion
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, OperationFailure

from pymongosync.changes.reader import token_time
from pymongosync.cluster_client import (
    ClusterClient,
    Delete,
    EventStream,
    RangeRead,
    Update,
    Upsert,
    Write,
)
from pymongosync.clusters import Cluster
from pymongosync.state import (
    COORDINATOR,
    CopiedId,
    IndexRef,
    LeaseRecord,
    MigrationState,
    NamespaceKind,
    NamespaceRecord,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
    Phase,
    ResumeInfo,
)
from pymongosync.store import MetadataStore, MigrationStore
from tests.unit.fakes import FakeCluster, FakeEventStream, MemoryStore, raw
from tests.unit.support import (
    global_state,
    request,
    resume_data,
    v1_migration_document,
    v1_partition_documents,
)

def protocol_members(protocol: type) -> dict[str, Any]:
    """The public methods and properties a protocol declares (its bases' included)."""
    members: dict[str, Any] = {}
    for klass in reversed(protocol.__mro__):
        if klass.__module__ in ("builtins", "typing"):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and (callable(value) or isinstance(value, property)):
                members[name] = value
    return members


@pytest.mark.parametrize("protocol, fake", [(ClusterClient, FakeCluster),
                                            (MigrationStore, MemoryStore),
                                            (EventStream, FakeEventStream)])
def test_the_fakes_implement_every_protocol_member(protocol: type, fake: type) -> None:
    """Signatures match by parameter names, kinds and defaults, so a protocol change shows
    here even where no type checker runs."""
    declared = protocol_members(protocol)
    assert declared, protocol
    for name, member in declared.items():
        assert hasattr(fake, name), f"{fake.__name__} lacks {name}"
        implemented = getattr(fake, name)
        if isinstance(member, property):
            assert isinstance(implemented, property), name
            continue
        expected = [(p.name, p.kind, p.default is inspect.Parameter.empty)
                    for p in inspect.signature(member).parameters.values()]
        actual = [(p.name, p.kind, p.default is inspect.Parameter.empty)
                  for p in inspect.signature(implemented).parameters.values()]
        assert actual == expected, f"{fake.__name__}.{name}"


ORDERED_IDS: list[Any] = [
    MinKey(), None, -1.5, 1, Int64(2), Decimal128("2.5"), "a", "b", {"k": 1},
    Binary(b"x", 0), ObjectId("65f000000000000000000001"), False, True,
    datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), Timestamp(5, 1), MaxKey()]


def exact(value: Any) -> bytes:
    """A value's exact BSON (type and content)."""
    return bson.encode({"v": value})


def ids(batches: Iterator[list[RawBSONDocument]]) -> list[bytes]:
    return [exact(document["_id"]) for batch in batches for document in batch]


@pytest.fixture(params=["fake", "emulated"])
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterClient]:
    if request.param == "fake":
        yield FakeCluster()
        return
    uri = request.getfixturevalue("emulated_uri")
    real = Cluster.connect("cluster0", uri, timeout_ms=10_000)
    try:
        yield real
    finally:
        real.close()


@pytest.fixture
def db(cluster: ClusterClient) -> Iterator[str]:
    name = f"contract_{uuid.uuid4().hex[:10]}"
    yield name
    cluster.drop_database(name)


def normalised(spec: dict[str, Any]) -> dict[str, Any]:
    return {name: dict(value) if name == "key" else value for name, value in spec.items()}


# -- reading ------------------------------------------------------------------------------------


def test_range_reads_follow_bson_order_across_types(cluster: ClusterClient, db: str) -> None:
    shuffled = ORDERED_IDS[7:] + ORDERED_IDS[:7]
    cluster.insert_documents(db, "c", [raw({"_id": value, "n": index})
                                       for index, value in enumerate(shuffled)])
    expected = [exact(value) for value in ORDERED_IDS]

    assert ids(cluster.read_batches(RangeRead(db=db, coll="c"))) == expected
    assert [len(batch) for batch in cluster.read_batches(
        RangeRead(db=db, coll="c", batch_size=6))] == [6, 6, 4]
    # upper is exclusive; lower inclusive
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c", lower=1, upper="b"))) == \
        expected[3:7]
    # after resumes just past a document already read, within the bounds
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c", lower=1, upper="b",
                                              after=CopiedId(id=Int64(2))))) == expected[5:7]
    # no upper bound: the last range reaches a MaxKey _id
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c", lower="b"))) == expected[7:]
    # natural order (used for capped collections) is insertion order
    cluster.create_collection(db, "capped", {"capped": True, "size": 1 << 20})
    cluster.insert_documents(db, "capped", [raw({"_id": value}) for value in shuffled])
    assert ids(cluster.read_batches(RangeRead(db=db, coll="capped", natural=True))) == \
        [exact(value) for value in shuffled]
    assert list(cluster.read_batches(RangeRead(db=db, coll="missing"))) == []


def test_a_null_id_is_a_resume_point_like_any_other(cluster: ClusterClient, db: str) -> None:
    cluster.insert_documents(db, "c", [raw({"_id": value}) for value in ORDERED_IDS])
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c", after=CopiedId(id=None)))) == \
        [exact(value) for value in ORDERED_IDS[2:]]


def test_find_by_id_returns_raw_documents(cluster: ClusterClient, db: str) -> None:
    document = raw({"_id": {"a": 1, "b": 2}, "x": Int64(3)})
    cluster.insert_documents(db, "c", [document])

    found = cluster.find_by_id(db, "c", {"_id": {"a": 1, "b": 2}})
    assert found is not None and found.raw == document.raw
    assert cluster.find_by_id(db, "c", {"_id": {"b": 2, "a": 1}}) is None
    assert cluster.find_by_id(db, "missing", {"_id": 1}) is None


def test_range_read_with_a_stale_collection_uuid_fails(cluster: ClusterClient,
                                                       db: str) -> None:
    cluster.create_collection(db, "c", {})
    cluster.insert_documents(db, "c", [raw({"_id": 1})])
    with pytest.raises(OperationFailure) as failure:
        list(cluster.read_batches(RangeRead(db=db, coll="c",
                                            collection_uuid=Binary(uuid.uuid4().bytes, 4))))
    assert failure.value.code == 361


# -- writing ------------------------------------------------------------------------------------


def test_duplicate_ids_fail_an_unordered_insert_without_stopping_it(cluster: ClusterClient,
                                                                    db: str) -> None:
    cluster.insert_documents(db, "c", [raw({"_id": 1, "v": "first"}), raw({"_id": 2})])

    with pytest.raises(BulkWriteError) as failure:
        cluster.insert_documents(db, "c", [raw({"_id": 1.0, "v": "second"}), raw({"_id": 3}),
                                           raw({"_id": Int64(2)})])
    errors = failure.value.details["writeErrors"]
    assert [(error["index"], error["code"]) for error in errors] == [(0, 11000), (2, 11000)]
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c"))) == [exact(1), exact(2),
                                                                      exact(3)]
    first = cluster.find_by_id(db, "c", {"_id": 1})
    assert first is not None and first["v"] == "first"


def test_ordered_writes_apply_until_the_first_failure(cluster: ClusterClient, db: str) -> None:
    cluster.insert_documents(db, "c", [raw({"_id": 1, "a": 5, "arr": [1, 2, 3, 4], "gone": 1}),
                                       raw({"_id": 2, "x": 1})])
    writes: list[Write] = [
        Update({"_id": 1}, {"$set": {"b.c": 1, "arr.0": 10}, "$unset": {"gone": ""}}),
        Update({"_id": 1}, {"$push": {"arr": {"$each": [], "$slice": 2}}}),
        Update({"_id": 9}, {"$set": {"z": 1}}),  # no such document: nothing happens
        Delete({"_id": 2}),
        Upsert({"_id": 3}, raw({"_id": 3, "y": 1})),
        Upsert({"_id": 1}, raw({"_id": 1, "a": 5, "arr": [10, 2], "b": {"c": 1}, "r": 1})),
        Update({"_id": 1}, {"$set": {"a.z": 1}}),  # through a number: fails
        Upsert({"_id": 4}, raw({"_id": 4})),  # after the failure: not applied
    ]
    with pytest.raises(BulkWriteError) as failure:
        cluster.write(db, "c", writes)

    errors = failure.value.details["writeErrors"]
    assert len(errors) == 1 and errors[0]["index"] == 6
    found = cluster.find_by_id(db, "c", {"_id": 1})
    assert found is not None
    assert found.raw == raw({"_id": 1, "a": 5, "arr": [10, 2], "b": {"c": 1}, "r": 1}).raw
    assert ids(cluster.read_batches(RangeRead(db=db, coll="c"))) == [exact(1), exact(3)]


def test_update_operators_as_the_writer_uses_them(cluster: ClusterClient, db: str) -> None:
    cluster.insert_documents(db, "c", [raw({"_id": 1, "arr": [1, 2, 3], "d": {"e": 1}})])
    cluster.write(db, "c", [
        Update({"_id": 1}, {"$push": {"arr": {"$each": [], "$slice": 1}}}),
        Update({"_id": 1}, {"$set": {"arr.2": "x", "d.f.g": True}, "$unset": {"d.e": ""}})])

    found = cluster.find_by_id(db, "c", {"_id": 1})
    assert found is not None
    assert bson.decode(found.raw) == {"_id": 1, "arr": [1, None, "x"],
                                      "d": {"f": {"g": True}}}
    with pytest.raises(BulkWriteError) as failure:
        cluster.write(db, "c", [Update({"_id": 1}, {"$push": {"d": {"$each": [1]}}})])
    assert failure.value.details["writeErrors"][0]["index"] == 0


# -- catalog ------------------------------------------------------------------------------------


def test_collection_infos_have_the_list_collections_shape(cluster: ClusterClient,
                                                          db: str) -> None:
    assert cluster.create_collection(db, "plain", {}) is True
    # As a 7.0 server: creating it again with the same options succeeds, with others not.
    assert cluster.create_collection(db, "plain", {}) is True
    assert cluster.create_collection(db, "plain", {"capped": True, "size": 4096}) is False
    assert cluster.create_collection(db, "capped", {"capped": True, "size": 5000, "max": 10})
    assert cluster.create_collection(db, "view", {"viewOn": "plain",
                                                  "pipeline": [{"$match": {"a": 1}}]})
    assert cluster.create_collection(db, "ttl", {"clusteredIndex": {"key": {"_id": 1},
                                                                    "unique": True},
                                                 "expireAfterSeconds": 100})

    infos = {info["name"]: info for info in cluster.collection_infos(db)}
    assert set(infos) == {"plain", "capped", "view", "ttl", "system.views"}
    plain_info = infos["plain"]
    assert plain_info["type"] == "collection" and plain_info["options"] == {}
    assert isinstance(plain_info["info"]["uuid"], Binary)
    assert plain_info["info"]["uuid"].subtype == 4
    assert normalised(plain_info["idIndex"]) == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert infos["capped"]["options"] == {"capped": True, "size": 5120, "max": 10}
    assert infos["view"]["type"] == "view"
    assert infos["view"]["options"] == {"viewOn": "plain", "pipeline": [{"$match": {"a": 1}}]}
    assert "uuid" not in infos["view"].get("info", {})
    assert infos["ttl"]["options"]["expireAfterSeconds"] == 100
    assert normalised(infos["ttl"]["options"]["clusteredIndex"]) == {
        "v": 2, "key": {"_id": 1}, "name": "_id_", "unique": True}
    assert [info["name"] for info in cluster.collection_infos(db, "capped")] == ["capped"]
    assert cluster.find_collection_by_uuid(plain_info["info"]["uuid"]) == (db, "plain")

    cluster.rename_collection(f"{db}.plain", f"{db}.renamed", False)
    assert cluster.find_collection_by_uuid(plain_info["info"]["uuid"]) == (db, "renamed")
    assert cluster.find_collection_by_uuid(Binary(uuid.uuid4().bytes, 4)) is None
    assert db in cluster.database_names()


def test_index_specs_and_coll_mod(cluster: ClusterClient, db: str) -> None:
    cluster.create_collection(db, "c", {})
    cluster.create_collection(db, "capped", {"capped": True, "size": 8192})
    cluster.insert_documents(db, "c", [raw({"_id": 1, "a": 1, "t": 1}),
                                       raw({"_id": 2, "a": 2, "t": 1})])
    cluster.create_index(db, "c", {"key": {"a": 1}, "name": "a_1"})
    cluster.create_index(db, "c", {"key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 60})
    cluster.create_index(db, "c", {"key": {"a": 1}, "name": "a_1"})  # again: a no-op

    assert [normalised(spec) for spec in cluster.index_specs(db, "c")] == [
        {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        {"v": 2, "key": {"a": 1}, "name": "a_1"},
        {"v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 60}]
    with pytest.raises(OperationFailure) as failure:
        cluster.create_index(db, "c", {"key": {"b": 1}, "name": "a_1"})
    assert failure.value.code in (85, 86)

    cluster.modify_collection(db, "c", {"index": {"name": "a_1", "hidden": True}})
    cluster.modify_collection(db, "c", {"index": {"name": "t_1", "expireAfterSeconds": 5}})
    with pytest.raises(OperationFailure) as failure:
        cluster.modify_collection(db, "c", {"index": {"name": "a_1", "unique": True}})
    assert failure.value.code == 72  # prepareUnique first
    cluster.modify_collection(db, "c", {"index": {"name": "a_1", "prepareUnique": True}})
    specs = {spec["name"]: spec for spec in cluster.index_specs(db, "c")}
    assert specs["a_1"].get("hidden") is True and specs["a_1"].get("prepareUnique") is True
    assert specs["t_1"]["expireAfterSeconds"] == 5
    cluster.modify_collection(db, "c", {"index": {"name": "a_1", "unique": True}})
    specs = {spec["name"]: spec for spec in cluster.index_specs(db, "c")}
    assert specs["a_1"].get("unique") is True and "prepareUnique" not in specs["a_1"]

    cluster.create_index(db, "c", {"key": {"t": 1, "a": 1}, "name": "t_a"})
    cluster.modify_collection(db, "c", {"index": {"name": "t_a", "prepareUnique": True}})
    cluster.modify_collection(db, "c", {"index": {"name": "t_a", "unique": True}})
    with pytest.raises(OperationFailure):  # t is 1 twice: a unique index on t alone fails
        cluster.create_index(db, "c", {"key": {"t": -1}, "name": "t_u", "unique": True})

    cluster.modify_collection(db, "capped", {"cappedSize": 1 << 20, "cappedMax": 7})
    assert cluster.collection_infos(db, "capped")[0]["options"] == {
        "capped": True, "size": 1 << 20, "max": 7}

    cluster.drop_index(db, "c", "t_a")
    assert "t_a" not in {spec["name"] for spec in cluster.index_specs(db, "c")}
    with pytest.raises(OperationFailure) as failure:
        cluster.drop_index(db, "c", "t_a")
    assert failure.value.code == 27
    with pytest.raises(OperationFailure) as failure:
        cluster.modify_collection(db, "missing", {"validator": {}})
    assert failure.value.code == 26
    assert cluster.index_specs(db, "missing") == []
    assert cluster.collection_size(db, "c")[0] == 2


def test_renames_and_drops(cluster: ClusterClient, db: str) -> None:
    cluster.insert_documents(db, "a", [raw({"_id": 1})])
    cluster.insert_documents(db, "b", [raw({"_id": 2})])
    with pytest.raises(OperationFailure) as failure:
        cluster.rename_collection(f"{db}.a", f"{db}.b", False)
    assert failure.value.code == 48
    cluster.rename_collection(f"{db}.a", f"{db}.b", True)
    assert ids(cluster.read_batches(RangeRead(db=db, coll="b"))) == [exact(1)]
    with pytest.raises(OperationFailure) as failure:
        cluster.rename_collection(f"{db}.a", f"{db}.c", False)
    assert failure.value.code == 26
    cluster.drop_collection(db, "missing")  # no error
    cluster.drop_collection(db, "b")
    assert cluster.collection_infos(db) == []


# -- change events ------------------------------------------------------------------------------


def _events_of(cluster: ClusterClient, db: str, count: int, **position: Any
               ) -> list[RawBSONDocument]:
    stream = cluster.watch(**position)
    found: list[RawBSONDocument] = []
    deadline = time.monotonic() + 10
    try:
        while len(found) < count and time.monotonic() < deadline:
            event = stream.try_next()
            if event is not None and event["ns"]["db"] == db:
                found.append(event)
    finally:
        stream.close()
    return found


def test_change_events_have_the_server_shape(cluster: ClusterClient, db: str) -> None:
    start = cluster.cluster_time()
    cluster.create_collection(db, "c", {})
    document = raw({"_id": 1, "a": 1, "b": 1})
    cluster.insert_documents(db, "c", [document])
    cluster.write(db, "c", [Update({"_id": 1}, {"$set": {"a": 2}, "$unset": {"b": ""}}),
                            Upsert({"_id": 1}, raw({"_id": 1, "r": True})), Delete({"_id": 1})])
    cluster.create_index(db, "c", {"key": {"x": 1}, "name": "x_1"})
    cluster.drop_index(db, "c", "x_1")
    cluster.modify_collection(db, "c", {"validator": {"x": {"$exists": True}}})
    cluster.rename_collection(f"{db}.c", f"{db}.d", False)
    cluster.drop_collection(db, "d")

    events = _events_of(cluster, db, 10, start_at=start)
    assert [event["operationType"] for event in events] == [
        "create", "insert", "update", "replace", "delete", "createIndexes", "dropIndexes",
        "modify", "rename", "drop"]
    for event in events:
        assert token_time(event["_id"]) == event["clusterTime"]
        assert event["clusterTime"] > start
    insert, update, replace, delete = events[1:5]
    assert insert["fullDocument"].raw == document.raw
    assert insert["documentKey"]["_id"] == 1 and delete["documentKey"]["_id"] == 1
    assert isinstance(insert["collectionUUID"], Binary)
    # The delta of the oplog entry, as pymongosync's streams ask for (showRawUpdateDescription).
    assert "updateDescription" not in update
    assert update["rawUpdateDescription"]["$v"] == 2
    diff = update["rawUpdateDescription"]["diff"]
    assert (dict(diff["u"]), dict(diff["d"])) == ({"a": 2}, {"b": False})
    assert "fullDocument" not in update
    assert replace["fullDocument"].raw == raw({"_id": 1, "r": True}).raw
    assert events[5]["operationDescription"]["indexes"][0]["name"] == "x_1"
    assert events[6]["operationDescription"]["indexes"][0]["name"] == "x_1"
    assert "validator" in events[7]["operationDescription"]
    assert dict(events[8]["operationDescription"]["to"]) == {"db": db, "coll": "d"}
    assert dict(events[0]["ns"]) == {"db": db, "coll": "c"}

    resumed = _events_of(cluster, db, 1, resume_after=events[3]["_id"])
    assert resumed[0]["_id"] == events[4]["_id"]


def test_events_taken_several_at_a_time_keep_their_order_and_their_resume_point(
        cluster: ClusterClient, db: str) -> None:
    start = cluster.cluster_time()
    cluster.insert_documents(db, "c", [raw({"_id": n}) for n in range(25)])
    stream = cluster.watch(start_at=start, batch_size=10)
    taken: list[RawBSONDocument] = []
    resume_points: list[tuple[int, Any]] = []  # (events taken, the stream's token then)
    deadline = time.monotonic() + 10
    try:
        while len(taken) < 25 and time.monotonic() < deadline:
            events = stream.next_events(7)
            assert len(events) <= 7
            taken.extend(event for event in events
                         if event["ns"]["db"] == db and event["operationType"] == "insert")
            if events and 0 < len(taken) < 25:
                resume_points.append((len(taken), stream.resume_token))
    finally:
        stream.close()
    assert [event["documentKey"]["_id"] for event in taken] == list(range(25))
    assert resume_points
    for count, token in (resume_points[0], resume_points[-1]):
        resumed = _events_of(cluster, db, 1, resume_after=token)
        assert resumed[0]["_id"] == taken[count]["_id"]


def test_an_idle_stream_token_passes_a_later_no_op(cluster: ClusterClient, db: str) -> None:
    """The commit waits for the stream's resume token to reach a time taken by a no-op."""
    cluster.insert_documents(db, "c", [raw({"_id": 1})])
    stream = cluster.watch(start_at=cluster.cluster_time())
    try:
        goal = cluster.cluster_time()
        reached = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stream.try_next()
            reached = token_time(stream.resume_token)
            if reached is not None and reached >= goal:
                break
        assert reached is not None and reached >= goal
    finally:
        stream.close()


def test_drop_database_reports_each_collection_then_the_database(cluster: ClusterClient,
                                                                 db: str) -> None:
    cluster.insert_documents(db, "a", [raw({"_id": 1})])
    cluster.insert_documents(db, "b", [raw({"_id": 1})])
    start = cluster.cluster_time()
    cluster.drop_database(db)

    events = _events_of(cluster, db, 3, start_at=start)
    kinds = [event["operationType"] for event in events]
    assert sorted(kinds[:2]) == ["drop", "drop"] and kinds[2] == "dropDatabase"
    assert dict(events[2]["ns"]) == {"db": db}
    assert db not in cluster.database_names()


# -- the metadata store -------------------------------------------------------------------------


@pytest.fixture(params=["memory", "emulated"])
def store(request: pytest.FixtureRequest) -> Iterator[MigrationStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    uri = request.getfixturevalue("emulated_uri")
    client: MongoClient[Any] = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000,
                                           datetime_conversion=DatetimeConversion.DATETIME_AUTO)
    database = f"contract_meta_{uuid.uuid4().hex[:10]}"
    try:
        yield MetadataStore(client, database)
    finally:
        client.drop_database(database)
        client.close()


def partition(db: str, coll: str, index: int, **fields: Any) -> PartitionRecord:
    return PartitionRecord(id=f"{db}.{coll}#{index}", namespace=NamespaceRef(db=db, coll=coll),
                           index=index, lower=MinKey() if index == 0 else index * 100,
                           upper=MaxKey(), is_last=True, **fields)


def test_store_create_load_and_partial_saves(store: MigrationStore) -> None:
    start_request = request(reversible=True, enableUserWriteBlocking=True)
    state = global_state(start_request, Timestamp(1_700_000_000, 1))
    resume = resume_data()
    stored = store.create(state, resume)
    assert stored.schema_version == 2
    assert stored.global_state == state
    assert stored.resume.state == MigrationState.RUNNING and stored.resume.phase == Phase.PREPARE

    resume.phase = Phase.APPLY_CHANGES
    resume.events_applied = 99  # not saved below: must not be persisted
    resume.crud_change_stream_resume_info = ResumeInfo(
        resume_token={"_data": "8265000000000000012B"}, last_event_ts=Timestamp(1_700_000_005, 2))
    resume.pending_unique = [IndexRef(db="d", coll="c", name="a_1")]
    store.save_resume(resume, "phase", "crud_change_stream_resume_info", "pending_unique")
    state.balancers_stopped_by_us = {"source": True, "destination": False}
    state.source_write_blocked_by_us = True  # not saved
    store.save_global(state, "balancers_stopped_by_us")
    store.record_error("InternalError", "boom")
    # A second create (a restart during the first) keeps what is stored.
    store.create(global_state(start_request, Timestamp(1, 1)), resume_data())

    loaded = store.load()
    assert loaded is not None
    assert loaded.resume.phase == Phase.PREPARE  # the second create rewrote resume data
    assert loaded.global_state.change_stream_start_time == Timestamp(1_700_000_000, 1)
    assert loaded.global_state.balancers_stopped_by_us == {"source": True,
                                                           "destination": False}
    assert loaded.global_state.source_write_blocked_by_us is False
    assert loaded.global_state.error is not None
    assert (loaded.global_state.error.name, loaded.global_state.error.message) == (
        "InternalError", "boom")
    assert store.load("other-instance") is None


def test_store_saves_only_the_named_resume_fields(store: MigrationStore) -> None:
    resume = resume_data()
    store.create(global_state(request(), Timestamp(1_700_000_000, 1)), resume)
    resume.phase = Phase.APPLY_CHANGES
    resume.events_applied = 99
    resume.crud_change_stream_resume_info = ResumeInfo(
        resume_token={"_data": "8265000000000000012B"}, last_event_ts=Timestamp(1_700_000_005, 2))
    resume.pending_unique = [IndexRef(db="d", coll="c", name="a_1")]
    resume.commit_time = Timestamp(1_700_000_009, 1)
    store.save_resume(resume, "phase", "crud_change_stream_resume_info", "pending_unique",
                      "commit_time")

    loaded = store.load()
    assert loaded is not None
    assert loaded.resume.phase == Phase.APPLY_CHANGES
    assert loaded.resume.events_applied == 0
    assert loaded.resume.crud_change_stream_resume_info == resume.crud_change_stream_resume_info
    assert loaded.resume.pending_unique == [IndexRef(db="d", coll="c", name="a_1")]
    assert loaded.resume.commit_time == Timestamp(1_700_000_009, 1)
    assert loaded.resume.updated_at is not None


def test_store_claims_are_exclusive_and_ordered(store: MigrationStore) -> None:
    store.add_partitions([partition("b", "x", 1), partition("b", "x", 0), partition("a", "y", 0),
                          partition("a", "z", 0, partition_phase=PartitionStatus.DONE)])
    first = store.claim_partition("i:copy-0")
    second = store.claim_partition("i:copy-1")
    assert first is not None and second is not None
    assert (first.id, first.owner) == ("a.y#0", "i:copy-0")
    assert (second.id, second.owner) == ("b.x#0", "i:copy-1")
    # Claimed again before it is finished (the answer to the first claim was lost): the same.
    again = store.claim_partition("i:copy-0")
    assert again is not None and again.id == "a.y#0"

    store.release_claims("i:")
    claims: list[str] = []
    lock = threading.Lock()

    def claim(worker: int) -> None:
        # Each claim by another owner: an owner that claims again gets what it holds.
        for attempt in itertools.count():
            found = store.claim_partition(f"j:copy-{worker}-{attempt}")
            if found is None:
                return
            with lock:
                claims.append(found.id)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == ["a.y#0", "b.x#0", "b.x#1"]  # each once; the done one never
    store.release_claims("other:")
    assert store.claim_partition("k") is None
    store.release_claims("j:copy-")
    reclaimed = store.claim_partition("k")
    assert reclaimed is not None and reclaimed.id == "a.y#0"


def claim_when_lapsed(store: MigrationStore, owner: str) -> PartitionRecord:
    """Claim, waiting for a lease to lapse by the store's clock (the server's, for MongoDB)."""
    deadline = time.monotonic() + 20
    while (claimed := store.claim_partition(owner, lease_seconds=60)) is None:
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.02)
    return claimed


def test_store_claim_leases_lapse_and_fence_the_previous_owner(store: MigrationStore) -> None:
    store.add_partitions([partition("d", "c", 0), partition("d", "c", 1)])
    first = store.claim_partition("w:a", lease_seconds=60)
    assert first is not None and first.id == "d.c#0" and first.claim_lease_millis == 60_000
    without_lease = store.claim_partition("w:d")  # a claim without a lease never lapses
    assert without_lease is not None and without_lease.id == "d.c#1"
    assert without_lease.claim_lease_millis is None
    assert store.claim_partition("w:b", lease_seconds=60) is None  # both held, live

    assert store.renew_partition_claim("d.c#0", "w:a") is True
    assert store.renew_partition_claim("d.c#0", "w:b") is False
    store.release_partition("d.c#0", "w:b")  # not the holder: nothing happens
    assert store.claim_partition("w:b", lease_seconds=60) is None
    store.release_partition("d.c#0", "w:a")  # given back, checkpoint kept
    taken = store.claim_partition("w:b", lease_seconds=0.05)
    assert taken is not None and taken.id == "d.c#0" and taken.owner == "w:b"
    assert store.record_partition_progress("d.c#0", "w:b", Int64(5), 5, 50) is True

    # w:b stops renewing (a stalled worker): once its lease lapses, w:c takes the partition
    # over from the checkpoint, and nothing w:b writes afterwards counts.
    took_over = claim_when_lapsed(store, "w:c")
    assert took_over.id == "d.c#0" and took_over.owner == "w:c"
    assert took_over.last_copied == CopiedId(id=Int64(5))
    assert store.record_partition_progress("d.c#0", "w:b", Int64(9), 4, 40) is False
    assert store.renew_partition_claim("d.c#0", "w:b") is False
    held = store.partition("d.c#0")
    assert held is not None and held.owner == "w:c"
    assert (held.copied_document_count, held.last_copied) == (5, CopiedId(id=Int64(5)))
    still = store.partition("d.c#1")
    assert still is not None and still.owner == "w:d"  # no lease: still held

    assert store.record_partition_progress("d.c#0", "w:c", Int64(9), 9, 90) is True
    assert store.record_partition_progress("d.c#0", "w:c", Int64(9), 9, 90) is True  # resent
    store.finish_partition("d.c#0")
    assert store.record_partition_progress("d.c#0", "w:c", Int64(10), 1, 10) is False  # done
    done = store.partition("d.c#0")
    assert done is not None and done.partition_phase == PartitionStatus.DONE
    assert done.copied_document_count == 9 and done.owner is None
    store.release_claims("w:")
    assert store.claim_partition("w:e") is not None  # d.c#1, given back
    assert store.claim_partition("w:f") is None


def test_store_partition_progress_finish_and_totals(store: MigrationStore) -> None:
    store.add_partitions([partition("d", "c", 0, estimated_document_count=10,
                                    total_byte_count=1000),
                          partition("d", "c", 1, estimated_document_count=5,
                                    total_byte_count=500)])
    claimed = store.claim_partition("i:copy-0")  # progress is recorded by a claim's holder
    assert claimed is not None and claimed.id == "d.c#0"
    assert store.record_partition_progress("d.c#0", "i:copy-0", None, 3, 300) is True
    after_null = store.partition("d.c#0")
    assert after_null is not None and after_null.last_copied == CopiedId(id=None)
    assert store.record_partition_progress("d.c#0", "i:copy-0", Int64(7), 5, 500) is True
    store.finish_partition("d.c#1")

    first, second = store.partition("d.c#0"), store.partition("d.c#1")
    assert first is not None and second is not None
    assert first.partition_phase == PartitionStatus.IN_PROGRESS
    assert first.owner == "i:copy-0" and first.claim_renewed_at is not None
    assert first.last_copied is not None and isinstance(first.last_copied.id, Int64)
    assert (first.copied_document_count, first.copied_byte_count) == (5, 500)
    assert isinstance(first.lower, MinKey) and isinstance(first.upper, MaxKey)
    assert second.partition_phase == PartitionStatus.DONE and second.owner is None
    totals = store.copy_totals()
    assert (totals.partitions, totals.partitions_done, totals.copied_documents,
            totals.copied_bytes, totals.estimated_documents, totals.estimated_bytes) == (
        2, 1, 5, 500, 15, 1500)
    assert store.partition("d.c#9") is None


def test_store_namespaces_and_created(store: MigrationStore) -> None:
    record = NamespaceRecord(id="d.c", db="d", name="c", kind=NamespaceKind.COLLECTION,
                             options={"capped": True, "size": Int64(4096)},
                             uuid=Binary(b"0123456789abcdef", 4),
                             indexes=[{"v": 2, "key": {"a": 1}, "name": "a_1"}])
    store.put_namespace(record)
    store.put_namespace(NamespaceRecord(id="a.v", db="a", name="v", kind=NamespaceKind.VIEW,
                                        options={"viewOn": "c", "pipeline": []}))
    store.mark_partitioned("d.c")
    store.record_created("d", "c", new_database=True)
    store.confirm_created("d", "c")
    store.record_created("d", "c", new_database=False)  # again: stays confirmed
    store.record_created("e", "f", new_database=True)
    store.confirm_created("e", "f")
    store.record_created("e", "existed", new_database=False)
    store.forget_created("e", "existed")  # it was there before: not the migration's
    store.record_created("old", "db", new_database=False)  # a crash before create
    store.forget_created("e", "f")  # confirmed: kept

    assert [ns.id for ns in store.namespaces()] == ["a.v", "d.c"]
    loaded = store.namespaces()[1]
    assert loaded.partitioned is True and loaded.uuid == record.uuid
    assert isinstance(loaded.options["size"], Int64)
    assert store.created_databases() == ["d", "e"]
    assert store.created_namespaces() == ["d.c", "e.f"]
    assert store.unconfirmed_namespaces() == ["old.db"]


def test_store_lease_primitives(store: MigrationStore) -> None:
    mine = LeaseRecord(id=COORDINATOR, owner="h:1:s", host="h", pid=1, process="s",
                       lease_millis=60_000)
    theirs = LeaseRecord(id=COORDINATOR, owner="h:2:s", host="h", pid=2, process="s",
                         lease_millis=60_000)
    assert store.read_lease(COORDINATOR) == (None, False)
    assert store.try_take_lease(mine) is True
    assert store.try_take_lease(theirs) is False
    record, live = store.read_lease(COORDINATOR)
    assert record is not None and record.owner == "h:1:s" and live is True
    assert record.renewed_at is not None
    assert store.renew_lease(COORDINATOR, "h:2:s") is False
    assert store.renew_lease(COORDINATOR, "h:1:s") is True
    assert store.try_take_lease(theirs, from_owner="h:1:s") is True  # that owner, taken over
    store.drop_lease(COORDINATOR, "h:1:s")  # not the owner any more: nothing happens
    assert store.read_lease(COORDINATOR)[0] is not None
    store.drop_lease(COORDINATOR, "h:2:s")
    assert store.read_lease(COORDINATOR) == (None, False)


def test_store_upgrades_the_first_release_layout(store: MigrationStore) -> None:
    if isinstance(store, MemoryStore):
        store = MemoryStore.with_v1_layout(v1_migration_document(), v1_partition_documents())
    else:
        assert isinstance(store, MetadataStore)
        store.v1_migrations.insert_one(v1_migration_document())
        store.partitions.insert_many(v1_partition_documents())

    old = store.load()
    assert old is not None and old.schema_version == 1
    assert old.resume.phase == Phase.APPLY_CHANGES and old.resume.events_applied == 1234
    store.upgrade()
    store.upgrade()  # idempotent

    new = store.load()
    assert new is not None and new.schema_version == 2
    assert new.global_state.migration_id == "v1-migration"
    assert new.resume.crud_change_stream_resume_info.last_event_ts == \
        Timestamp(1_700_000_200, 7)
    done, running = store.partition("shop.orders#0"), store.partition("shop.orders#1")
    assert done is not None and running is not None
    assert done.namespace == NamespaceRef(db="shop", coll="orders")
    assert done.partition_phase == PartitionStatus.DONE
    assert done.last_copied == CopiedId(id=Int64(499))
    assert running.partition_phase == PartitionStatus.IN_PROGRESS
    assert running.last_copied is None and running.is_last
    claimed = store.claim_partition("i:copy-0")
    assert claimed is not None and claimed.id == "shop.orders#1"



def tooling_documents(store: MigrationStore, collection: str) -> list[dict[str, Any]]:
    """The documents of one of the views for MongoDB's tooling, in either store."""
    if isinstance(store, MemoryStore):
        return list(store.tooling[collection].values())
    assert isinstance(store, MetadataStore)
    return list(store.db[collection].find())


def test_store_writes_the_views_mongodb_tooling_reads(store: MigrationStore) -> None:
    uuid_value = Binary(b"0123456789abcdef", 4)
    record = NamespaceRecord(id="d.c", db="d", name="c", kind=NamespaceKind.COLLECTION,
                             uuid=uuid_value, indexes=[{"v": 2, "key": {"a": 1}, "name": "a_1"}])
    store.put_namespace(record)
    store.put_namespace(record)  # again: still one mapping
    store.put_namespace(NamespaceRecord(id="d.v", db="d", name="v", kind=NamespaceKind.VIEW,
                                        options={"viewOn": "c", "pipeline": []}))
    assert tooling_documents(store, "uuidMap") == [
        {"_id": uuid_value, "dbName": "d", "srcDBName": "d", "srcCollName": "c",
         "dstDBName": "d", "dstCollName": "c"}]

    store.replace_partitions("d", "c", [
        partition("d", "c", 0, total_byte_count=600, estimated_document_count=6),
        partition("d", "c", 1, total_byte_count=400, estimated_document_count=4)])
    key = {"fieldName": "collectionStats", "id": "coordinator", "uuid": uuid_value}
    (planned,) = tooling_documents(store, "statistics")
    assert planned["_id"] == key
    assert (planned["numPartitions"], planned["numCompletedPartitions"],
            planned["estimatedTotalBytes"], planned["estimatedCopiedBytes"]) == (2, 0, 1000, 0)
    assert store.partition_counts() == (0, 2)

    assert store.claim_partition("i:copy-0") is not None  # d.c#0, the first in order
    assert store.record_partition_progress("d.c#0", "i:copy-0", 5, 6, 600) is True
    store.finish_partition("d.c#0")
    store.finish_partition("d.c#0")  # again: the same figures
    (copied,) = tooling_documents(store, "statistics")
    assert (copied["numPartitions"], copied["numCompletedPartitions"],
            copied["estimatedCopiedBytes"], copied["copiedDocumentCount"]) == (2, 1, 600, 6)
    assert copied["namespace"] == {"db": "d", "coll": "c"}
    assert store.partition_counts() == (1, 2)

    store.record_index_builds(record, ["a_1"], built=False)
    (pending,) = tooling_documents(store, "indexCorrection")
    assert pending["_id"] == {"dbName": "d", "collUUID": uuid_value, "indexName": "a_1"}
    assert pending["shouldCorrectCounter"] != pending["lastCorrectedCounter"]
    store.record_index_builds(record, ["a_1"], built=True)
    (built,) = tooling_documents(store, "indexCorrection")
    assert built["shouldCorrectCounter"] == built["lastCorrectedCounter"]
