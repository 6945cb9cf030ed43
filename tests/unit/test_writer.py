"""Applying translated events to a destination (pymongosync.changes.writer) over fakes."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from pymongosync.catalog import CAPPED_SIZE_LIFTED, TTL_NEVER_EXPIRES
from pymongosync.changes.events import EventPart
from pymongosync.changes.translate import translate
from pymongosync.changes.writer import ChangeWriter, converted_to_capped
from pymongosync.clusters import _encoded_size
from pymongosync.errors import UnsupportedSourceChange
from pymongosync.namespaces import NamespaceFilter
from pymongosync.progress import Counters
from tests.unit.fakes import FakeCluster, MemoryStore, change_event, update_description
from tests.unit.support import namespace_filter

EVERYTHING = NamespaceFilter()
# The whole shop database but its tmp collection.
SHOP_BUT_TMP = {"includeNamespaces": [{"database": "shop"}],
                "excludeNamespaces": [{"database": "shop", "collections": ["tmp"]}]}


class Replay:
    """A source, a destination that mirrors it, and the writer between them."""

    def __init__(self, namespace_filter: NamespaceFilter = EVERYTHING,
                 build_mode: str = "afterDataCopy", destination_sharded: bool = False) -> None:
        self.journal: list[str] = []
        self.source = FakeCluster("cluster0", journal=self.journal)
        self.destination = FakeCluster("cluster1", journal=self.journal,
                                       sharded=destination_sharded)
        self.store = MemoryStore(journal=self.journal)
        self.counters = Counters()
        self.filter = namespace_filter
        self.writer = ChangeWriter(self.source, self.destination, namespace_filter, build_mode,
                                   self.store, self.counters)
        self.mark = 0

    def both(self, db: str, coll: str, *documents: dict[str, Any],
             options: dict[str, Any] | None = None) -> None:
        """The same collection on both sides, as the copy left it (no events)."""
        for cluster in (self.source, self.destination):
            cluster.create_collection(db, coll, options or {})
            for document in documents:
                cluster.set_document(db, coll, document)
        self.since_now()

    def since_now(self) -> None:
        self.mark = len(self.source.event_log)

    def apply(self, events: list[RawBSONDocument] | None = None) -> None:
        """Apply the source's events since the mark (or the given ones)."""
        if events is None:
            events = self.source.event_log[self.mark:]
            self.since_now()
        self.writer.apply(translate(events, self.filter).steps)

    def index_specs(self, db: str, coll: str) -> dict[str, dict[str, Any]]:
        return {spec["name"]: spec for spec in self.destination.index_specs(db, coll)}


def at(n: int) -> Timestamp:
    return Timestamp(1_700_000_100, n)


# -- CRUD --------------------------------------------------------------------------------------


def test_crud_events_bring_the_destination_to_the_source_state() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1, "a": 1, "arr": [1, 2, 3]}, {"_id": 2, "a": 2},
                {"_id": 3})
    source = replay.source
    source.insert("shop", "orders", {"_id": 4, "new": True}, {"_id": "five"})
    source.update("shop", "orders", 1, updated={"a": 10, "b.c": 1}, truncated=[("arr", 1)])
    source.update("shop", "orders", 2, removed=["a"])
    source.replace("shop", "orders", {"_id": 3, "replaced": [1]})
    source.delete("shop", "orders", "five")
    source.update("shop", "orders", 4, updated={"arr": [1, 2]})
    source.update("shop", "orders", 4, updated={"arr.1": 3}, truncated=[("arr", 1)])
    replay.apply()

    assert replay.destination.documents("shop", "orders") == \
        source.documents("shop", "orders")
    assert source.document("shop", "orders", 4) == {"_id": 4, "new": True, "arr": [1, 3]}
    assert replay.counters.crud_events == 8 and replay.counters.refetched == 0


def test_a_failing_update_takes_the_document_from_the_source() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1, "a": 5, "kept": "dest"}, {"_id": 2, "n": 0})
    replay.source.set_document("shop", "orders", {"_id": 1, "a": {"b": 1}, "src": True})
    events = [
        # The destination's "a" is a number: $set a.b cannot apply there.
        change_event("update", "shop", "orders", at(1), document_key={"_id": 1},
                     update_description=update_description({"a.b": 1})),
        change_event("update", "shop", "orders", at(2), document_key={"_id": 2},
                     update_description=update_description({"n": 1}))]
    replay.apply(events)

    assert replay.destination.document("shop", "orders", 1) == {"_id": 1, "a": {"b": 1},
                                                                "src": True}
    assert replay.destination.document("shop", "orders", 2) == {"_id": 2, "n": 1}
    assert replay.counters.refetched == 1


def test_a_refetch_deletes_a_document_the_source_no_longer_has() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1, "a": 5})
    replay.source.delete("shop", "orders", 1)
    replay.since_now()
    replay.apply([change_event("update", "shop", "orders", at(1), document_key={"_id": 1},
                               update_description=update_description({"a.b": 1}))])

    assert replay.destination.documents("shop", "orders") == []
    assert replay.counters.refetched == 1


def test_dotted_field_names_are_taken_from_the_source() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1, "a.b": 1, "a": {"b": "nested"}})
    replay.source.update("shop", "orders", 1, updated={"a.b": 2},
                         disambiguated={"a.b": ["a.b"]},
                         after={"_id": 1, "a.b": 2, "a": {"b": "nested"}})
    replay.apply()

    assert replay.destination.document("shop", "orders", 1) == {
        "_id": 1, "a.b": 2, "a": {"b": "nested"}}
    assert replay.counters.refetched == 1


# -- DDL: collections --------------------------------------------------------------------------


def test_created_collections_get_their_temporary_options() -> None:
    replay = Replay()
    source = replay.source
    source.create_collection("shop", "capped", {"capped": True, "size": 4096, "max": 5})
    source.create_collection("shop", "ttl", {"clusteredIndex": {"key": {"_id": 1},
                                                                "unique": True},
                                             "expireAfterSeconds": 60})
    source.create_collection("shop", "checked", {"validator": {"a": {"$type": "int"}}})
    source.create_collection("shop", "view", {"viewOn": "checked", "pipeline": []})
    # $out's: a server drops its temporary collections when it restarts; the copy lasts.
    source.create_collection("shop", "tmp.agg_out.1", {"temp": True})
    replay.apply()

    infos = {info["name"]: info for info in replay.destination.collection_infos("shop")}
    assert infos["tmp.agg_out.1"]["options"] == {}
    assert infos["capped"]["options"] == {"capped": True, "size": CAPPED_SIZE_LIFTED}
    assert infos["ttl"]["options"]["expireAfterSeconds"] == TTL_NEVER_EXPIRES
    assert infos["checked"]["options"] == {"validator": {"a": {"$type": "int"}}}
    assert infos["view"]["type"] == "view"
    assert replay.store.created_namespaces() == ["shop.capped", "shop.checked",
                                                 "shop.tmp.agg_out.1", "shop.ttl", "shop.view"]
    # Noted before it was created, so a crash in between cannot hide it from reset.
    journal = replay.journal
    assert journal.index("store.record_created:shop.capped") < \
        journal.index("cluster1.create_collection:shop.capped")
    assert replay.counters.ddl_events == 5


def test_drops_follow_the_source_within_the_filter() -> None:
    replay = Replay(namespace_filter(excludeNamespaces=[{"database": "shop",
                                                         "collections": ["users"]}]))
    replay.both("shop", "orders", {"_id": 1})
    replay.both("shop", "users", {"_id": 1})
    replay.both("other", "x", {"_id": 1})
    replay.source.drop_collection("shop", "orders")
    replay.source.drop_collection("shop", "users")  # excluded: not followed
    replay.source.drop_database("other")
    replay.apply()

    assert replay.destination.collection("shop", "orders") is None
    assert replay.destination.documents("shop", "users") == [{"_id": 1}]
    assert "other" not in replay.destination.database_names()


def test_a_rename_within_the_filter_is_applied() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1})
    replay.both("shop", "old", {"_id": "old"})
    replay.source.rename_collection("shop.orders", "shop.archive", False)
    replay.source.rename_collection("shop.archive", "shop.old", True)  # over an existing one
    replay.source.rename_collection("shop.old", "history.orders", False)  # another database
    replay.apply()

    assert replay.destination.collection("shop", "orders") is None
    assert replay.destination.collection("shop", "old") is None
    assert replay.destination.documents("history", "orders") == [{"_id": 1}]
    assert "history.orders" in replay.store.created_namespaces()


def test_a_rename_out_of_a_whole_database_filter_drops_the_collection() -> None:
    replay = Replay(namespace_filter(**SHOP_BUT_TMP))
    replay.both("shop", "orders", {"_id": 1})
    replay.source.rename_collection("shop.orders", "shop.tmp", False)
    replay.apply()

    assert replay.destination.collection("shop", "orders") is None
    assert replay.destination.collection("shop", "tmp") is None


def test_a_rename_into_the_filter_copies_the_collection() -> None:
    replay = Replay(namespace_filter(**SHOP_BUT_TMP))
    source = replay.source
    source.create_collection("shop", "tmp", {"capped": True, "size": 8192, "max": 3})
    source.insert("shop", "tmp", {"_id": 1, "a": 1}, {"_id": 2, "a": 2})
    source.create_index("shop", "tmp", {"key": {"a": 1}, "name": "a_1", "unique": True})
    replay.since_now()  # none of it was synced: tmp is excluded
    source.rename_collection("shop.tmp", "shop.orders", False)
    replay.apply()

    destination = replay.destination
    assert destination.documents("shop", "orders") == [{"_id": 1, "a": 1}, {"_id": 2, "a": 2}]
    assert destination.collection_infos("shop", "orders")[0]["options"] == {
        "capped": True, "size": CAPPED_SIZE_LIFTED}
    assert replay.index_specs("shop", "orders")["a_1"] == {"v": 2, "key": {"a": 1},
                                                           "name": "a_1"}
    assert destination.collection("shop", "tmp") is None
    assert "shop.orders" in replay.store.created_namespaces()


def test_convert_to_capped_is_copied_whole_and_replaying_it_changes_nothing() -> None:
    """convertToCapped as the server does it: a capped collection under a temporary name,
    filled without events, renamed over the original. Applied as the events say, the
    destination's collection would be replaced by an empty one."""
    replay = Replay()
    replay.both("shop", "logs", {"_id": 1}, {"_id": 2}, {"_id": 3})
    source = replay.source
    temporary = "tmpAb3dE.convertToCapped.logs"
    source.create_collection("shop", temporary, {"capped": True, "size": 4096, "temp": True})
    for document in ({"_id": 2}, {"_id": 3}):  # the oldest did not fit
        source.set_document("shop", temporary, document)
    source.rename_collection(f"shop.{temporary}", "shop.logs", True)
    events = source.event_log[replay.mark:]
    replay.apply(events)
    assert replay.destination.documents("shop", "logs") == [{"_id": 2}, {"_id": 3}]
    replay.apply(events)  # a restart replays the batch: the same result
    destination = replay.destination
    assert [info["name"] for info in destination.collection_infos("shop")] == ["logs"]
    assert destination.documents("shop", "logs") == [{"_id": 2}, {"_id": 3}]
    assert destination.collection_infos("shop", "logs")[0]["options"]["size"] == \
        CAPPED_SIZE_LIFTED


def test_only_the_convert_to_capped_pattern_is_taken_for_it() -> None:
    assert converted_to_capped("d", "tmpAb3dE.convertToCapped.c", "d", "c", True)
    assert not converted_to_capped("d", "tmpAb3dE.convertToCapped.c", "d", "c", False)
    assert not converted_to_capped("d", "tmpAb3dE.convertToCapped.c", "e", "c", True)
    assert not converted_to_capped("d", "tmpAb3dE.convertToCapped.c", "d", "other", True)
    assert not converted_to_capped("d", "tmpAb3d.convertToCapped.c", "d", "c", True)
    assert not converted_to_capped("d", "staging", "d", "c", True)


def test_a_rename_the_filter_cannot_follow_is_fatal() -> None:
    replay = Replay(namespace_filter(includeNamespaces=[{"database": "shop",
                                                         "collections": ["orders"]}]))
    replay.both("shop", "orders", {"_id": 1})
    replay.source.rename_collection("shop.orders", "shop.archive", False)

    with pytest.raises(UnsupportedSourceChange) as failure:
        replay.apply()
    assert "shop.archive" in str(failure.value)
    assert replay.destination.documents("shop", "orders") == [{"_id": 1}]


def test_a_rename_outside_the_filter_is_ignored() -> None:
    replay = Replay(namespace_filter(includeNamespaces=[{"database": "shop"}]))
    replay.both("shop", "orders", {"_id": 1})
    replay.source.create_collection("other", "a", {})
    replay.since_now()
    replay.source.rename_collection("other.a", "other.b", False)
    replay.apply()

    assert replay.destination.database_names() == ["shop"]


def test_replayed_ddl_is_harmless() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1})
    source = replay.source
    source.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1"})
    source.create_index("shop", "orders", {"key": {"b": 1}, "name": "b_1"})
    source.drop_index("shop", "orders", "b_1")
    source.modify_collection("shop", "orders", {"validator": {"a": {"$type": "int"}}})
    source.create_collection("shop", "gone", {})
    source.drop_collection("shop", "gone")
    source.create_collection("shop", "kept", {"capped": True, "size": 4096})
    events = source.event_log[replay.mark:]
    replay.apply(events)
    replay.apply(events)  # a restart replays the last batch

    assert sorted(info["name"] for info in replay.destination.collection_infos("shop")) == \
        ["kept", "orders"]
    assert set(replay.index_specs("shop", "orders")) == {"_id_", "a_1"}
    assert replay.destination.documents("shop", "orders") == [{"_id": 1}]


def test_a_replayed_create_and_rename_leaves_no_stale_collection() -> None:
    replay = Replay()
    source = replay.source
    source.insert("shop", "staging", {"_id": 1})  # created implicitly, then filled
    source.rename_collection("shop.staging", "shop.orders", False)
    events = source.event_log[replay.mark:]
    replay.apply(events)
    replay.apply(events)

    assert [info["name"] for info in replay.destination.collection_infos("shop")] == \
        ["orders"]
    assert replay.destination.documents("shop", "orders") == [{"_id": 1}]


def test_a_replay_from_before_an_uncheckpointed_rename_keeps_the_capped_collection() -> None:
    """A capped collection created during the copy, filled, and renamed over another with
    dropTarget; the process dies after applying the rename and before checkpointing it, so
    the restart replays from the create's checkpoint. The replayed inserts found no
    collection under the old name and created a plain one, which the replayed rename put in
    the capped one's place (campaign seed 179: the commit's collMod then failed with
    "collection is not capped")."""
    replay = Replay()
    replay.both("db1", "c0", {"_id": 1})
    source = replay.source
    source.create_collection("db1", "new4", {"capped": True, "size": 65536})
    after_create = len(source.event_log)
    source.insert("db1", "new4", {"_id": 10}, {"_id": 11})
    source.rename_collection("db1.new4", "db1.c0", True)
    source.insert("db1", "c0", {"_id": 12})
    events = source.event_log[replay.mark:]
    replay.apply(events)
    replay.apply(source.event_log[after_create:])  # the restart's replay

    infos = {info["name"]: info for info in replay.destination.collection_infos("db1")}
    assert sorted(infos) == ["c0"]
    assert infos["c0"]["options"] == {"capped": True, "size": CAPPED_SIZE_LIFTED}
    assert replay.destination.documents("db1", "c0") == [{"_id": 10}, {"_id": 11}, {"_id": 12}]


def test_a_write_to_a_collection_dropped_since_creates_it_without_options() -> None:
    replay = Replay()
    source = replay.source
    source.create_collection("shop", "gone", {"capped": True, "size": 4096})
    source.insert("shop", "gone", {"_id": 1})
    inserted = source.event_log[-1:]
    source.drop_collection("shop", "gone")
    replay.apply(inserted)  # the source collection is found by UUID no more

    assert replay.destination.collection_infos("shop", "gone")[0]["options"] == {}
    assert replay.store.created_namespaces() == ["shop.gone"]  # reset drops it


def test_shard_collection_follows_on_a_sharded_destination_only() -> None:
    for sharded in (True, False):
        replay = Replay(destination_sharded=sharded)
        replay.both("shop", "orders")
        replay.apply([change_event("shardCollection", "shop", "orders", at(1),
                                   operation_description={"shardKey": {"k": 1},
                                                          "unique": False})])
        assert replay.destination.shard_keys() == ({"shop.orders": {"k": 1}} if sharded else {})


def test_a_sharded_collection_renamed_into_another_database_is_unsupported() -> None:
    # MongoDB renames a sharded collection within its database only: into a sharded
    # destination such a rename fails with a clear error, before anything is changed (the
    # emulator renamed it until campaign seed 86 showed that). Within its database it is
    # renamed, still sharded.
    replay = Replay(destination_sharded=True)
    replay.both("shop", "orders", {"_id": 1})
    replay.destination.shard_collection("shop", "orders", {"_id": "hashed"})
    replay.source.rename_collection("shop.orders", "shop.archive", False)
    replay.source.rename_collection("shop.archive", "history.orders", False)
    with pytest.raises(UnsupportedSourceChange) as failure:
        replay.apply()
    assert "history.orders" in str(failure.value)
    assert replay.destination.documents("shop", "archive") == [{"_id": 1}]
    assert replay.destination.shard_keys() == {"shop.archive": {"_id": "hashed"}}


@pytest.mark.parametrize("kind", ["reshardCollection", "refineCollectionShardKey"])
def test_resharding_on_the_source_is_unsupported(kind: str) -> None:
    replay = Replay()
    replay.both("shop", "orders")
    replay.source.emit(kind, "shop", "orders",
                       operation_description={"reshardUUID": "x", "shardKey": {"k": 1}})
    with pytest.raises(UnsupportedSourceChange):
        replay.apply()


# -- DDL: indexes and options ------------------------------------------------------------------


def test_created_indexes_get_their_temporary_spec() -> None:
    replay = Replay()
    replay.both("shop", "orders")
    source = replay.source
    source.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1", "unique": True})
    source.create_index("shop", "orders", {"key": {"h": 1}, "name": "h_1", "hidden": True})
    source.create_index("shop", "orders", {"key": {"t": 1}, "name": "t_1",
                                           "expireAfterSeconds": 3600})
    source.create_index("shop", "orders", {"key": {"k": "hashed"}, "name": "k_hashed"})
    replay.apply()

    assert replay.index_specs("shop", "orders") == {
        "_id_": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        "a_1": {"v": 2, "key": {"a": 1}, "name": "a_1"},
        "h_1": {"v": 2, "key": {"h": 1}, "name": "h_1"},
        "t_1": {"v": 2, "key": {"t": 1}, "name": "t_1",
                "expireAfterSeconds": TTL_NEVER_EXPIRES},
        "k_hashed": {"v": 2, "key": {"k": "hashed"}, "name": "k_hashed"}}


@pytest.mark.parametrize("mode, built", [("excludeHashedAfterCopy", {"_id_", "a_1"}),
                                         ("never", {"_id_"})])
def test_build_modes_apply_to_indexes_created_while_syncing(mode: str,
                                                            built: set[str]) -> None:
    replay = Replay(build_mode=mode)
    replay.both("shop", "orders")
    replay.source.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1"})
    replay.source.create_index("shop", "orders", {"key": {"k": "hashed"}, "name": "k_hashed"})
    replay.apply()

    assert set(replay.index_specs("shop", "orders")) == built


def test_dropped_indexes_follow_and_a_missing_one_is_no_error() -> None:
    replay = Replay()
    replay.both("shop", "orders")
    replay.destination.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1"})
    replay.source.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1"})
    replay.source.create_index("shop", "orders", {"key": {"b": 1}, "name": "b_1"})
    replay.since_now()
    replay.source.drop_index("shop", "orders", "a_1")
    replay.source.drop_index("shop", "orders", "b_1")  # never built on the destination
    replay.apply()

    assert set(replay.index_specs("shop", "orders")) == {"_id_"}


def test_validation_follows_at_once_but_index_and_capped_options_wait() -> None:
    replay = Replay()
    replay.both("shop", "orders", options={"capped": True, "size": 4096})
    for side in (replay.source, replay.destination):
        side.create_index("shop", "orders", {"key": {"t": 1}, "name": "t_1",
                                             "expireAfterSeconds": 10})
    replay.since_now()
    source = replay.source
    source.modify_collection("shop", "orders", {"validator": {"a": {"$exists": True}},
                                                "validationLevel": "moderate"})
    source.modify_collection("shop", "orders", {"index": {"name": "t_1", "hidden": True}})
    source.modify_collection("shop", "orders", {"index": {"name": "t_1",
                                                          "expireAfterSeconds": 99}})
    source.modify_collection("shop", "orders", {"cappedSize": 1 << 20})
    replay.apply()

    options = replay.destination.collection_infos("shop", "orders")[0]["options"]
    assert options["validator"] == {"a": {"$exists": True}}
    assert options["validationLevel"] == "moderate"
    assert options["size"] == 4096
    assert replay.index_specs("shop", "orders")["t_1"] == {
        "v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 10}


# -- defects -----------------------------------------------------------------------------------


def test_a_rename_into_the_filter_over_a_synced_target_replaces_it() -> None:
    replay = Replay(namespace_filter(**SHOP_BUT_TMP))
    replay.both("shop", "orders", {"_id": 1, "old": True}, {"_id": 2, "old": True})
    replay.source.insert("shop", "tmp", {"_id": 10, "new": True})
    replay.since_now()
    replay.source.rename_collection("shop.tmp", "shop.orders", True)  # e.g. $out
    replay.apply()

    assert replay.destination.documents("shop", "orders") == \
        replay.source.documents("shop", "orders") == [{"_id": 10, "new": True}]


def test_drop_database_leaves_destination_collections_outside_the_filter() -> None:
    replay = Replay(namespace_filter(includeNamespaces=[{"database": "shop",
                                                         "collections": ["orders"]}]))
    replay.both("shop", "orders", {"_id": 1})
    replay.destination.set_document("shop", "mine", {"_id": "pre-existing"})
    replay.source.drop_database("shop")
    replay.apply()

    assert replay.destination.collection("shop", "orders") is None
    assert replay.destination.documents("shop", "mine") == [{"_id": "pre-existing"}]


def test_a_refetch_after_a_rename_keeps_the_document() -> None:
    replay = Replay()
    replay.both("shop", "orders", {"_id": 1, "a.b": 1})
    replay.source.update("shop", "orders", 1, updated={"a.b": 2},
                         disambiguated={"a.b": ["a.b"]}, after={"_id": 1, "a.b": 2})
    replay.source.rename_collection("shop.orders", "shop.archive", False)
    replay.apply()

    assert replay.destination.documents("shop", "archive") == \
        replay.source.documents("shop", "archive") == [{"_id": 1, "a.b": 2}]


@pytest.mark.parametrize("update", [
    {"$set": {"a": [1, {"b": "x"}], "c": 1.5}, "$unset": {"z": ""}},
    {"$push": {"a": {"$each": [], "$slice": 3}}},
    {"$set": RawBSONDocument(bson.encode({"x": 1, "y": {"z": "é"}}))},
    [{"$_internalApplyOplogUpdate": {"oplogUpdate": EventPart(
        bson.encode({"$v": 2, "diff": {"i": {"new": True}}}), None)}}],
    [{"$set": {"a": 1}}, {"$unset": ["b"]}] * 6,  # indexes of two digits
])
def test_the_size_counted_for_splitting_writes_is_the_encoded_size(update: Any) -> None:
    # Commands are split by it, against the server's size limit: it must not undercount.
    assert _encoded_size(update) == len(bson.encode({"u": update})) - 8
