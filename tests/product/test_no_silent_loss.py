"""Each way adversarial testing made a migration reach COMMITTED with the destination silently
different from the source, as an end-to-end test that failed before its fix."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pymongo
import pytest
from bson import Decimal128, Int64, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import APP_NAME, Cluster
from pymongosync import reset as reset_module
from pymongosync.errors import (
    IndexConflict,
    NamespaceConflict,
    ResetInProgress,
    SourceModifiedDuringCommit,
)
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.reset import apply_reset, plan_reset
from pymongosync.store import METADATA_DATABASE, MetadataStore
from pymongosync.verifier.compare import compare_clusters

from .conftest import start_cluster, user_client

START = {"source": "cluster0", "destination": "cluster1"}


def migrate(cluster0: Cluster, cluster1: Cluster, during_cea: Callable[[], None] | None = None,
            body: dict[str, Any] | None = None, during_copy: Callable[[], None] | None = None,
            load_level: int = 3) -> dict[str, Any]:
    """Start, run the callbacks in their phase, commit; returns the final progress."""
    migration = Migration.open(cluster0, cluster1, load_level=load_level)
    migration.start(StartRequest.from_document(body or START))
    try:
        if during_copy is not None:
            migration.wait_for(lambda p: p["copyDetails"]["phase"] == "collection copy",
                               timeout=120)
            during_copy()
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=180)
        if during_cea is not None:
            during_cea()
            events = migration.progress()["totalEventsApplied"]
            migration.wait_for(lambda p: p["totalEventsApplied"] > events, timeout=60)
        migration.wait_for(lambda p: p["canCommit"], timeout=180)
        migration.commit()
        return migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=180)
    finally:
        migration.close()


def assert_equal(cluster0: Cluster, cluster1: Cluster, documents: int | None = None) -> None:
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()
    if documents is not None:
        assert comparison.documents == documents


def test_numerically_equal_ids_swapped_during_change_application(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.ids.insert_many([{"_id": 1.0, "v": "double"}, {"_id": 7, "v": "int"},
                                    {"_id": Int64(3), "v": "long"}, {"_id": "x", "v": "s"}])

    def swap_types() -> None:
        with user_client(source) as client:
            ids = client.app.ids
            for old, new in ((1.0, 1), (7, Decimal128("7")), (Int64(3), 3.0)):
                ids.delete_one({"_id": old})
                ids.insert_one({"_id": new, "v": "swapped"})
                ids.delete_one({"_id": new})
                ids.insert_one({"_id": old, "v": "back"})

    migrate(cluster0, cluster1, during_cea=swap_types)
    assert_equal(cluster0, cluster1, documents=4)
    with pymongo.MongoClient(cluster1.uri) as client:
        values = {repr(d["_id"]): d["v"] for d in client.app.ids.find()}
    assert values == {"1.0": "back", "7": "back", "3": "back", "'x'": "s"}


def slow_down(emulator: EmulatorProcess, command: str, milliseconds: int) -> None:
    """Make pymongosync's ``command`` calls on this cluster wait before they run."""
    with pymongo.MongoClient(emulator.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": [command], "blockConnection": True, "blockTimeMS": milliseconds,
            "appName": APP_NAME})


def speed_up(emulator: EmulatorProcess) -> None:
    with pymongo.MongoClient(emulator.uri) as client:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.mark.parametrize("drop_target", [False, True])
def test_rename_during_the_copy(source: EmulatorProcess, clusters: tuple[Cluster, Cluster],
                                drop_target: bool) -> None:
    """The copy found the collection by UUID, then read by name: a rename in between made the
    partition read nothing and be marked done (all 5,000 documents lost)."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.moving.insert_many([{"n": i, "pad": "p" * 100} for i in range(5000)])
        if drop_target:
            client.app.moved.insert_many([{"old": i} for i in range(2000)])
    slow_down(source, "find", 400)

    def rename() -> None:
        with user_client(source) as client:
            client.app.moving.rename("moved", dropTarget=drop_target)
        speed_up(source)

    try:
        migrate(cluster0, cluster1, during_copy=rename, load_level=1)
    finally:
        speed_up(source)
    assert_equal(cluster0, cluster1, documents=5000)
    with pymongo.MongoClient(cluster1.uri) as client:
        assert client.app.list_collection_names() == ["moved"]
        assert client.app.moved.count_documents({"n": {"$exists": True}}) == 5000


PRE_EXISTING = {**START, "preExistingDestinationData": True,
                "includeNamespaces": [{"database": "app"}]}


def test_pre_existing_data_with_a_conflicting_namespace_is_refused(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """/start accepted a namespace that existed on both sides; the copy then ignored the
    duplicate keys and the destination kept its own documents instead of the source's."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"_id": i, "side": "source"} for i in range(100)])
        client.app.other.insert_one({"x": 1})
    with user_client(destination) as client:
        client.app.items.insert_many([{"_id": i, "side": "destination"} for i in range(50)])
    migration = Migration.open(cluster0, cluster1)
    with pytest.raises(NamespaceConflict) as refused:
        migration.start(StartRequest.from_document(PRE_EXISTING))
    assert "app.items" in refused.value.message and "app.other" not in refused.value.message
    assert METADATA_DATABASE not in cluster1.client.list_database_names()
    assert cluster1.client.app.list_collection_names() == ["items"]


def test_pre_existing_data_keeps_views_out_and_reset_keeps_what_existed(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """Views were migrated (mongosync does not migrate them with pre-existing data), and
    reset dropped a pre-existing database as "created by this migration"."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(300)])
        client.app.create_collection("recent", viewOn="items", pipeline=[{"$match": {}}])
    with user_client(destination) as client:
        client.app.notes.insert_one({"kept": True})  # a database both sides use
        client.legacy.data.insert_one({"kept": True})  # unrelated
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(PRE_EXISTING))
    try:
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
    finally:
        migration.close()
    assert sorted(cluster1.client.app.list_collection_names()) == ["items", "notes"]
    assert cluster1.client.app.items.count_documents({}) == 300
    # Abandon it: reset drops what the migration created and nothing else.
    plan = plan_reset(cluster0, cluster1, destination="cluster1", all_user_databases=False)
    assert any(action.target == "app.items" for action in plan.actions), plan.describe()
    assert not any(action.target in ("app", "legacy") for action in plan.actions), \
        plan.describe()
    apply_reset(plan)
    assert cluster1.client.app.list_collection_names() == ["notes"]
    assert cluster1.client.legacy.data.count_documents({}) == 1


def test_a_process_refuses_a_migration_whose_reset_was_interrupted(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reset drops data first and the metadata last: a process started in between found the
    metadata, resumed and committed a partial destination (12 of 30 collections missing)."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        for number in range(30):
            client[f"db{number:02d}"].items.insert_many([{"n": i} for i in range(20)])
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
    finally:
        migration.close()
    plan = plan_reset(cluster0, cluster1)
    # The reset is cut off inside its step runner, as a crash would cut it off.
    real_apply = reset_module._apply  # noqa: SLF001
    done: list[object] = []

    def crash_after_twelve(cluster: Cluster, action: Any) -> None:
        if len(done) == 13:  # the unblock, then 12 databases
            raise KeyboardInterrupt("the reset process is killed here")
        real_apply(cluster, action)
        done.append(action)

    monkeypatch.setattr(reset_module, "_apply", crash_after_twelve)
    with pytest.raises(KeyboardInterrupt):
        apply_reset(plan)
    monkeypatch.setattr(reset_module, "_apply", real_apply)
    remaining = [name for name in cluster1.client.list_database_names() if name.startswith("db")]
    assert len(remaining) == 18 and METADATA_DATABASE in cluster1.client.list_database_names()

    with pytest.raises(ResetInProgress) as refused:
        Migration.open(cluster0, cluster1)
    assert "mongosync reset" in refused.value.message
    assert len([n for n in cluster1.client.list_database_names() if n.startswith("db")]) == 18
    apply_reset(plan_reset(cluster0, cluster1))  # running reset again finishes the job
    assert not [n for n in cluster1.client.list_database_names()
                if n.startswith("db") or n == METADATA_DATABASE]
    migrate(cluster0, cluster1)
    assert_equal(cluster0, cluster1, documents=600)


def test_dates_outside_python_range(source: EmulatorProcess,
                                    clusters: tuple[Cluster, Cluster]) -> None:
    """Valid BSON dates before year 1 or after 9999 stopped the migration with a fatal
    InvalidBSON, and every restart failed the same way."""
    cluster0, cluster1 = clusters
    far_past, far_future = DatetimeMS(-(10 ** 14)), DatetimeMS(10 ** 15)
    options = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
    with pymongo.MongoClient(source.application_uri, datetime_conversion=DatetimeConversion.DATETIME_AUTO) \
            as client:
        items = client.app.get_collection("items", codec_options=options)
        items.insert_many([{"_id": far_past, "at": far_future},
                           {"_id": 1, "at": far_past, "nested": {"when": far_future}}])

    def write_dates() -> None:
        with pymongo.MongoClient(source.application_uri,
                                 datetime_conversion=DatetimeConversion.DATETIME_AUTO) as client:
            items = client.app.get_collection("items", codec_options=options)
            items.update_one({"_id": 1}, {"$set": {"at": far_future, "list": [far_past]}})
            items.insert_one({"_id": far_future, "at": far_past})
            items.update_one({"_id": far_past}, {"$unset": {"at": ""}})

    migrate(cluster0, cluster1, during_cea=write_dates)
    assert_equal(cluster0, cluster1, documents=3)


def test_unique_index_on_the_shard_key_survives_replica_set_to_sharded(
        source: EmulatorProcess) -> None:
    """The destination sharded the collection with an index of its own on the key; the
    source's unique index on the same key then failed to be created (IndexOptionsConflict,
    ignored), and the destination accepted duplicates after commit."""
    with start_cluster("mongos") as mongos:
        with user_client(source) as client:
            client.app.items.insert_many([{"k": i, "v": i % 7} for i in range(500)])
            client.app.items.create_index("k", unique=True, name="uniq_k")
            client.app.items.create_index("v", name="by_v")
        cluster0 = Cluster.connect("cluster0", source.uri)
        cluster1 = Cluster.connect("cluster1", mongos.uri)
        try:
            body = {**START, "sharding": {"shardingEntries": [
                {"database": "app", "collection": "items",
                 "shardCollection": {"key": [{"k": 1}]}}]}}
            migrate(cluster0, cluster1, body=body)
            comparison = compare_clusters(cluster0.client, cluster1.client)
            assert comparison.equal, comparison.summary()
            indexes = {spec["name"]: spec for spec in cluster1.client.app.items.list_indexes()}
            assert indexes["uniq_k"].get("unique") is True
            with pytest.raises(pymongo.errors.DuplicateKeyError):
                cluster1.client.app.items.insert_one({"k": 3})
        finally:
            cluster0.close()
            cluster1.close()


def test_an_index_that_cannot_be_built_as_on_the_source_is_an_error(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """createIndexes errors 68/85/86 were ignored: an index could go missing silently."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"a": i} for i in range(100)])
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(START))
    try:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
        # Behind the tool's back, the destination gets an index of that name with another key:
        # the source's index can no longer be built as it is.
        with pymongo.MongoClient(cluster1.uri) as client:
            client.app.items.create_index([("other", 1)], name="a_1")
        with user_client(source) as client:
            client.app.items.create_index("a", name="a_1")
        with pytest.raises(IndexConflict) as failed:
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        migration.close()
    assert "app.items" in failed.value.message and "a_1" in failed.value.message


def test_empty_timestamps_are_copied_as_they_are(source: EmulatorProcess,
                                                 clusters: tuple[Cluster, Cluster]) -> None:
    """A server replaces a top-level Timestamp(0, 0) with the current time on insert and on
    replacement, unless the write passes bypassEmptyTsReplacement, which the product never
    did: documents holding one (set by an update, which the server keeps as is) changed."""
    cluster0, cluster1 = clusters
    empty = Timestamp(0, 0)
    with user_client(source) as client:
        client.app.items.insert_many([{"_id": i, "n": i} for i in range(50)])
        client.app.items.update_many({}, {"$set": {"ts": empty, "nested": {"ts": empty}}})

    def write_empty_timestamps() -> None:
        with user_client(source) as client:
            client.app.items.update_one({"_id": 1}, {"$set": {"again": empty}})
            client.app.items.update_one({"_id": 2}, {"$set": {"n": -2}})  # a full replace below
            client.app.items.replace_one({"_id": 3}, {"n": 3})
            client.app.items.update_one({"_id": 3}, {"$set": {"ts": empty}})

    migrate(cluster0, cluster1, during_cea=write_empty_timestamps)
    assert_equal(cluster0, cluster1, documents=50)
    assert cluster1.client.app.items.find_one({"_id": 7})["ts"] == empty


def test_reverse_twice(source: EmulatorProcess, destination: EmulatorProcess,
                       clusters: tuple[Cluster, Cluster]) -> None:
    """commit → reverse → commit → reverse was accepted and then stayed REVERSING forever: the
    second reverse found the first migration's superseded record and resumed it instead."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(100)])
    body = {**START, "reversible": True}
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(body))
    try:
        for writer, reader in ((destination, cluster1), (source, cluster0),
                               (destination, cluster1)):
            migration.wait_for(lambda p: p["canCommit"], timeout=120)
            migration.commit()
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
            with user_client(writer) as application:  # the new side takes writes
                application.app.items.insert_one({"after": writer.port})
            migration.reverse()
            migration.wait_for(lambda p: p["state"] == "RUNNING", timeout=60)
            assert migration.progress()["directionMapping"]["Source"].startswith(
                reader.label)
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        migration.close()
    assert_equal(cluster1, cluster0, documents=103)


def test_a_user_database_named_like_beta_metadata_is_migrated(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """Source databases named mongosync_internal_* were skipped as if they were metadata (and
    reset dropped them as such)."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.mongosync_internal_reports.daily.insert_many([{"day": i} for i in range(10)])
        client.app.items.insert_one({"x": 1})
    migrate(cluster0, cluster1)
    assert cluster1.client.mongosync_internal_reports.daily.count_documents({}) == 10
    assert_equal(cluster0, cluster1, documents=11)


def test_source_writes_during_a_filtered_commit_fail_the_migration(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """With a namespace filter the source is not write-blocked at commit (destinationOnly):
    writes after the commit time were lost without a word."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([{"n": i} for i in range(100)])
    body = {**START, "includeNamespaces": [{"database": "app"}]}
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(body))
    try:
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        slow_down(destination, "listIndexes", 3000)  # the commit restores index options
        migration.commit()
        store = MetadataStore(cluster1.client)
        deadline = time.monotonic() + 30
        while (stored := store.load()) is None or stored.resume.commit_time is None:
            assert time.monotonic() < deadline, "no commit time stored"
            time.sleep(0.05)
        # Past the commit time, while the commit restores index options:
        with user_client(source) as client:
            client.app.items.insert_one({"late": True})  # after the commit time
        with pytest.raises(SourceModifiedDuringCommit) as failed:
            migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        speed_up(destination)
        migration.close()
    assert "app.items" in failed.value.message
    assert migration.progress()["canWrite"] is False


def test_a_rename_between_listing_a_collection_and_its_indexes(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """Found by the campaign (tests/campaign/repro/rename_during_listing.py): listIndexes of the
    old name found nothing, the collection was recorded without indexes, and the destination's
    renamed collection never got them."""
    cluster0, cluster1 = clusters
    with user_client(source) as application:
        application.db1.moving.insert_many([{"n": i} for i in range(50)])
        application.db1.moving.create_index("n", name="by_n")
    with pymongo.MongoClient(source.uri) as admin:
        # Every listIndexes of db1.moving by pymongosync takes 1 s.
        admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["listIndexes"], "namespace": "db1.moving",
            "blockConnection": True, "blockTimeMS": 1000, "appName": APP_NAME})
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document({**START, "verification": {"enabled": False},
                                                "buildIndexes": "beforeDataCopy"}))
    try:
        time.sleep(0.4)  # the listing has listed db1.moving and waits for its indexes
        with user_client(source) as application:
            application.admin.command("renameCollection", "db1.moving", to="db1.moved")
        with pymongo.MongoClient(source.uri) as admin:
            admin.admin.command("configureFailPoint", "failCommand", mode="off")
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        migration.close()
    assert "by_n" in cluster1.client.db1.moved.index_information()
    assert_equal(cluster0, cluster1, documents=50)


def test_collections_dropped_or_renamed_while_their_indexes_are_built(
        source: EmulatorProcess, destination: EmulatorProcess,
        clusters: tuple[Cluster, Cluster]) -> None:
    """Found by the campaign (tests/campaign/repro/index_builds_after_drop.py): the index builds
    beside change application went by the namespaces listed at the start, so createIndexes
    re-created a collection change application had dropped, and a renamed one never got its
    indexes."""
    cluster0, cluster1 = clusters
    with user_client(source) as application:
        application.app.big.insert_many([{"n": i, "pad": "x" * 1000} for i in range(2000)])
        application.app.big.create_index("n")
        application.app.gone.insert_many([{"k": i} for i in range(10)])
        application.app.gone.create_index("k")
        application.app.moving.insert_many([{"m": i} for i in range(10)])
        application.app.moving.create_index("m")
    with pymongo.MongoClient(destination.uri) as admin:
        # app.big's index build takes 3 s: the others wait behind it.
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": ["createIndexes"], "namespace": "app.big", "blockConnection": True,
            "blockTimeMS": 3000, "appName": APP_NAME})
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document({**START, "verification": {"enabled": False}}))
    try:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
        with user_client(source) as application:
            application.app.gone.drop()
            application.admin.command("renameCollection", "app.moving", to="app.moved")
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        time.sleep(1)  # what change application and the builds would still do
        # Built beside change application (not left to the commit), as listed.
        assert "n_1" in cluster1.client.app.big.index_information()
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        migration.close()
    assert "gone" not in cluster1.client.app.list_collection_names()
    assert "m_1" in cluster1.client.app.moved.index_information()
    assert_equal(cluster0, cluster1, documents=2010)


@pytest.mark.parametrize("written", ["moving", "target"])
def test_a_rename_onto_a_collection_between_start_and_the_listing(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster], written: str) -> None:
    """Found by the campaign (tests/campaign/repro/rename_before_listing.py): events before the
    listing were replayed by name. Inserts into db1.moving re-created it on the destination
    and its rename (dropTarget) then dropped the full copy of db1.target; inserts into the
    db1.target the rename dropped stayed in the copy of the renamed collection."""
    cluster0, cluster1 = clusters
    with user_client(source) as application:
        application.db1.target.insert_many([{"_id": 1000 + i, "old": True} for i in range(3)])
        application.db1.moving.insert_many([{"_id": i, "moving": True} for i in range(3)])
    with pymongo.MongoClient(source.uri) as admin:
        # The listing of the source's collections waits 1 s (the start time is taken before).
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": ["listCollections"], "blockConnection": True,
            "blockTimeMS": 1000, "appName": APP_NAME})
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document({**START, "verification": {"enabled": False}}))
    try:
        with user_client(source) as application:
            application.db1[written].insert_many([{"_id": 100 + i, "later": True}
                                                  for i in range(5)])
            application.admin.command("renameCollection", "db1.moving", to="db1.target",
                                      dropTarget=True)
        migration.wait_for(lambda p: p["canCommit"], timeout=120)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        migration.close()
    assert_equal(cluster0, cluster1, documents=8 if written == "moving" else 3)


def test_pipeline_updates_that_move_fields_during_change_application(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """Campaign defect pipeline-field-order: a pipeline update that puts new fields before
    existing ones moves those to the end of the document (logged as a delta when that is
    smaller than the document, hence the padding). Its updateDescription lists them
    among updatedFields like fields updated in place; replayed as $set they kept their place,
    and the document arrived with its fields in another order (with the verifier off, as
    here, the migration committed). The oplog delta (showRawUpdateDescription) is applied
    as the source applied it."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.items.insert_many([
            {"_id": 1, "pad": "p" * 200, "a": 1, "nested": {"x": 1, "y": 2, "pad": "q" * 200}},
            {"_id": 2, "pad": "p" * 200, "a": 1, "b": 2, "c": 3},
            {"_id": "plain", "a": 1, "b": [1, 2, 3]}])

    def move_fields() -> None:
        with user_client(source) as client:
            items = client.app.items
            items.update_one({"_id": 1}, [{"$replaceWith": {"$mergeObjects": [
                {"_id": "$_id", "pad": "$pad", "new": True}, "$$ROOT"]}}])
            items.update_one({"_id": 1}, [{"$set": {"nested": {"$mergeObjects": [
                {"w": 0}, "$nested"]}}}])
            items.update_one({"_id": 2}, [{"$replaceWith": {"_id": "$_id", "pad": "$pad",
                                                            "c": "$c", "b": "$b", "a": "$a"}}])
            items.update_one({"_id": "plain"}, {"$set": {"a": 2, "b.1": 9, "z": 1},
                                                "$unset": {"nothing": ""}})

    migrate(cluster0, cluster1, during_cea=move_fields,
            body={**START, "verification": {"enabled": False}})
    assert_equal(cluster0, cluster1, documents=3)
    with pymongo.MongoClient(cluster1.uri) as client:
        assert list(client.app.items.find_one({"_id": 1}) or {}) == \
            ["_id", "pad", "new", "a", "nested"]
        assert list(client.app.items.find_one({"_id": 2}) or {}) == \
            ["_id", "pad", "c", "b", "a"]


@pytest.mark.parametrize("during", ["copy", "change application"])
def test_convert_to_capped_on_the_source(source: EmulatorProcess,
                                         clusters: tuple[Cluster, Cluster], during: str) -> None:
    """convertToCapped copies the documents into a new capped collection with inserts that
    change streams do not show, then renames it over the original: replayed as the events
    say, the destination's collection was replaced by an empty one (mongosync stops, spec §7).
    The new collection is copied whole instead; here the capped size keeps only part of the
    documents, and writes after it evict more."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.logs.insert_many([{"n": i, "pad": "x" * 200} for i in range(100)])
        client.app.logs.create_index("n")
        client.app.other.insert_many([{"n": i, "pad": "p" * 100} for i in range(3000)])

    def convert() -> None:
        with pymongo.MongoClient(cluster0.uri) as client:
            client.app.command("convertToCapped", "logs", size=8192)
        with user_client(source) as client:
            client.app.logs.insert_many([{"n": 100 + i, "pad": "y" * 200} for i in range(10)])
        speed_up(source)

    if during == "copy":
        slow_down(source, "find", 300)  # the copy is still reading when it happens
    try:
        migrate(cluster0, cluster1, load_level=1, **{
            "during_copy" if during == "copy" else "during_cea": convert})
    finally:
        speed_up(source)
    kept = sorted(d["n"] for d in cluster0.client.app.logs.find())
    assert 0 < len(kept) < 110 and kept[-1] == 109  # the capped size evicted the oldest
    assert sorted(d["n"] for d in cluster1.client.app.logs.find()) == kept
    options = cluster1.client.app.logs.options()
    assert options["capped"] and options["size"] == cluster0.client.app.logs.options()["size"]
    # As on the source: convertToCapped keeps only the _id index.
    assert [spec["name"] for spec in cluster1.client.app.logs.list_indexes()] == ["_id_"]
    assert sorted(cluster1.client.app.list_collection_names()) == ["logs", "other"]
    assert_equal(cluster0, cluster1)


def test_a_collection_renamed_into_the_filter_then_renamed_again(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """A rename into the filter copies the collection whole from the source. It was read by
    name: renamed again before that read (both renames waiting in the stream), it was not
    found, nothing was copied, and the second rename found nothing to rename."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.staging.insert_many([{"n": i} for i in range(50)])
        client.app.other.insert_one({"n": 0})
    body = {**START, "excludeNamespaces": [{"database": "app", "collections": ["staging"]}]}
    migration = Migration.open(cluster0, cluster1)
    migration.start(StartRequest.from_document(body))
    try:
        migration.wait_for(lambda p: p["info"] == "change event application", timeout=120)
        migration.pause()
        with pymongo.MongoClient(cluster0.uri) as client:
            client.admin.command("renameCollection", "app.staging", to="app.reports")
            client.app.reports.insert_one({"n": 50})
            client.admin.command("renameCollection", "app.reports", to="app.published")
            client.app.published.insert_one({"n": 51})
        migration.resume()
        migration.wait_for(lambda p: p["canCommit"] and p["lagTimeSeconds"] == 0 and
                           p["totalEventsApplied"] >= 4, timeout=60)
        migration.commit()
        migration.wait_for(lambda p: p["state"] == "COMMITTED", timeout=60)
    finally:
        migration.close()
    assert sorted(cluster1.client.app.list_collection_names()) == ["other", "published"]
    assert sorted(d["n"] for d in cluster1.client.app.published.find()) == list(range(52))


def test_out_onto_an_existing_and_a_new_collection_during_change_application(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """$out writes its results into a temporary collection (tmp.agg_out.<uuid>, the target's
    options and indexes) and renames it over the target: the destination follows each step."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.orders.insert_many([{"n": i, "total": i * 3} for i in range(200)])
        client.app.summary.insert_many([{"_id": "stale", "total": -1}])
        client.app.summary.create_index("total", name="by_total")

    def aggregate_out() -> None:
        with user_client(source) as client:
            client.app.orders.aggregate([{"$match": {"n": {"$lt": 50}}},
                                         {"$project": {"total": 1}}, {"$out": "summary"}])
            client.app.orders.aggregate([{"$group": {"_id": None, "sum": {"$sum": "$total"}}},
                                         {"$out": "fresh"}])

    migrate(cluster0, cluster1, during_cea=aggregate_out)
    assert_equal(cluster0, cluster1)
    assert sorted(cluster1.client.app.list_collection_names()) == ["fresh", "orders", "summary"]
    assert cluster1.client.app.summary.count_documents({}) == 50
    assert "by_total" in cluster1.client.app.summary.index_information()
    assert cluster1.client.app.fresh.find_one()["sum"] == 3 * sum(range(200))


def test_clone_collection_as_capped_on_the_source_during_change_application(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    """cloneCollectionAsCapped (unsupported by mongosync) fills the capped collection it
    creates with inserts that change streams do not show: created as the event says, the
    destination's copy was empty. A capped collection is copied from the source as it is
    created, and the events after it are applied over that."""
    cluster0, cluster1 = clusters
    with user_client(source) as client:
        client.app.events.insert_many([{"n": i, "pad": "x" * 200} for i in range(100)])

    def clone() -> None:
        with pymongo.MongoClient(cluster0.uri) as client:
            client.app.command("cloneCollectionAsCapped", "events", toCollection="recent",
                               size=8192)
        with user_client(source) as client:
            client.app.recent.insert_many([{"n": 100 + i, "pad": "y" * 200} for i in range(5)])
            client.app.recent.update_one({"n": 104}, {"$set": {"pad": "z" * 200}})

    migrate(cluster0, cluster1, during_cea=clone)
    kept = sorted(d["n"] for d in cluster0.client.app.recent.find())
    assert 0 < len(kept) < 105 and kept[-1] == 104
    assert sorted(d["n"] for d in cluster1.client.app.recent.find()) == kept
    assert_equal(cluster0, cluster1)
