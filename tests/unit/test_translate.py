"""Change events to writes (pymongosync.changes.translate): collapse, translation, barriers."""

from __future__ import annotations

import uuid
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from pymongosync.changes.hot_documents import HotDocument, HotDocuments, from_option
from pymongosync.changes.translate import (
    CrudStep,
    DdlStep,
    Listing,
    Operation,
    Refetch,
    Translator,
    translate,
)
from pymongosync.changes.writer import ChangeWriter
from pymongosync.cluster_client import Delete, Update, Upsert
from pymongosync.namespaces import NamespaceFilter
from pymongosync.progress import Counters
from tests.unit.fakes import (
    FakeCluster,
    MemoryStore,
    apply_update,
    change_event,
    plain,
    update_description,
)
from tests.unit.support import namespace_filter

EVERYTHING = NamespaceFilter()


def at(n: int) -> Timestamp:
    return Timestamp(1_700_000_000, n)


def insert(n: int, document: dict[str, Any], coll: str = "orders",
           db: str = "shop") -> RawBSONDocument:
    return change_event("insert", db, coll, at(n), document_key={"_id": document["_id"]},
                        full_document=document)


def replace(n: int, document: dict[str, Any], coll: str = "orders") -> RawBSONDocument:
    return change_event("replace", "shop", coll, at(n), document_key={"_id": document["_id"]},
                        full_document=document)


def delete(n: int, document_id: Any, coll: str = "orders", db: str = "shop") -> RawBSONDocument:
    return change_event("delete", db, coll, at(n), document_key={"_id": document_id})


def update(n: int, document_id: Any, coll: str = "orders", **description: Any
           ) -> RawBSONDocument:
    return change_event("update", "shop", coll, at(n), document_key={"_id": document_id},
                        update_description=update_description(**description))


def ddl(n: int, kind: str, coll: str | None, description: dict[str, Any] | None = None,
        db: str = "shop") -> RawBSONDocument:
    return change_event(kind, db, coll, at(n), operation_description=description)


def shown(operation: Operation) -> tuple[Any, ...]:
    """An operation as plain values, to compare with what is expected."""
    if isinstance(operation, Upsert):
        return ("upsert", plain(operation.key), plain(operation.document))
    if isinstance(operation, Delete):
        return ("delete", plain(operation.key))
    if isinstance(operation, Update):
        return ("update", plain(operation.key), plain(operation.update))
    assert isinstance(operation, Refetch)
    return ("refetch", plain(operation.key))


def only_step(events: list[RawBSONDocument],
              namespace_filter: NamespaceFilter = EVERYTHING) -> CrudStep:
    translation = translate(events, namespace_filter)
    assert len(translation.steps) == 1
    step = translation.steps[0]
    assert isinstance(step, CrudStep)
    return step


def writes_of(step: CrudStep, coll: str = "orders") -> list[tuple[Any, ...]]:
    return [shown(operation) for operation in step.writes[("shop", coll)]]


def test_inserts_and_replaces_become_upserts_of_the_whole_document() -> None:
    step = only_step([insert(1, {"_id": 1, "a": 1}), replace(2, {"_id": 2, "b": [1, 2]})])

    assert writes_of(step) == [("upsert", {"_id": 1}, {"_id": 1, "a": 1}),
                               ("upsert", {"_id": 2}, {"_id": 2, "b": [1, 2]})]
    upsert = step.writes[("shop", "orders")][0]
    # The source's bytes, never decoded and encoded again.
    assert isinstance(upsert, Upsert)
    assert bytes(upsert.document.raw) == bson.encode({"_id": 1, "a": 1})
    assert step.events == 2


def test_deletes_become_deletes_by_document_key() -> None:
    step = only_step([delete(1, "x"), delete(2, {"compound": 1})])
    assert writes_of(step) == [("delete", {"_id": "x"}), ("delete", {"_id": {"compound": 1}})]


def test_updates_set_and_unset_absolute_values() -> None:
    step = only_step([update(1, 7, updated={"a.b": 2, "list.1": "x"}, removed=["gone", "c.d"])])

    assert writes_of(step) == [("update", {"_id": 7}, {
        "$set": {"a.b": 2, "list.1": "x"}, "$unset": {"gone": "", "c.d": ""}})]


def test_an_update_that_changes_nothing_writes_nothing() -> None:
    step = only_step([update(1, 7)])
    assert writes_of(step) == []
    assert step.events == 1


def test_truncated_arrays_are_sliced_before_fields_are_set() -> None:
    step = only_step([update(1, 7, updated={"arr.1": "new", "other": 1}, removed=["x"],
                            truncated=[("arr", 2), ("deep.list", 0)])])

    assert writes_of(step) == [
        ("update", {"_id": 7}, {"$push": {"arr": {"$each": [], "$slice": 2},
                                          "deep.list": {"$each": [], "$slice": 0}}}),
        ("update", {"_id": 7}, {"$set": {"arr.1": "new", "other": 1}, "$unset": {"x": ""}})]
    # Applied in that order, the writes give the source's post-image.
    document: dict[str, Any] = {"_id": 7, "arr": [1, 2, 3, 4], "deep": {"list": [1]}, "x": 0}
    for operation in step.writes[("shop", "orders")]:
        assert isinstance(operation, Update)
        document = apply_update(document, operation.update)
    assert document == {"_id": 7, "arr": [1, "new"], "deep": {"list": []}, "other": 1}


def test_dotted_field_names_are_refetched_rather_than_set() -> None:
    step = only_step([
        update(1, 7, updated={"a.b": 1}, disambiguated={"a.b": ["a.b"]}),
        update(2, 8, updated={"list.0": 1}, disambiguated={}),  # nothing ambiguous
    ])
    assert writes_of(step) == [("refetch", {"_id": 7}),
                               ("update", {"_id": 8}, {"$set": {"list.0": 1}})]


def delta(n: int, document_id: Any, diff: dict[str, Any], version: int = 2
          ) -> RawBSONDocument:
    """An update event as ``showRawUpdateDescription`` shows it: the oplog entry's delta."""
    return change_event("update", "shop", "orders", at(n), document_key={"_id": document_id},
                        raw_update_description={"$v": version, "diff": diff})


def test_a_delta_that_sets_or_removes_top_level_fields_in_place_is_set_and_unset() -> None:
    step = only_step([delta(1, 7, {"u": {"a": 2, "b": {"c": 1}}}),
                      delta(2, 8, {"d": {"gone": False, "old": False}, "u": {"a": None}}),
                      delta(3, 9, {}),
                      delta(4, 10, {"u": {"a": "x.y", "b": "$z", "c": {"d.e": 1}}})])
    assert writes_of(step) == [
        ("update", {"_id": 7}, {"$set": {"a": 2, "b": {"c": 1}}}),
        ("update", {"_id": 8}, {"$set": {"a": None}, "$unset": {"gone": "", "old": ""}}),
        ("update", {"_id": 10}, {"$set": {"a": "x.y", "b": "$z", "c": {"d.e": 1}}})]
    # The source's bytes, never decoded and encoded again.
    first = step.writes[("shop", "orders")][0]
    assert isinstance(first, Update) and isinstance(first.update, dict)
    assert bytes(first.update["$set"].raw) == bson.encode({"a": 2, "b": {"c": 1}})


def test_a_delta_that_moves_fields_is_applied_as_the_delta_itself() -> None:
    """Campaign defect pipeline-field-order: a pipeline update that puts a new field before
    existing ones re-inserts every field after it (the delta's ``i`` section). Its
    updateDescription lists them among updatedFields, and $set kept their old place; the
    delta, applied by $_internalApplyOplogUpdate, moves them as the source did."""
    moved = {"$v": 2, "diff": {"i": {"new": True, "a": 1}}}
    step = only_step([delta(1, 7, moved["diff"])])
    assert writes_of(step) == [
        ("update", {"_id": 7}, [{"$_internalApplyOplogUpdate": {"oplogUpdate": moved}}])]
    operation = step.writes[("shop", "orders")][0]
    assert isinstance(operation, Update) and isinstance(operation.update, list)
    assert bytes(operation.update[0]["$_internalApplyOplogUpdate"]["oplogUpdate"].raw) == \
        bson.encode(moved)


def test_the_sizes_translation_gives_its_updates_are_their_encoded_sizes() -> None:
    # The writer splits its commands by them, against the server's size limit: an update
    # translation made of the source's bytes carries its size, and it must not undercount.
    events = [delta(1, 1, {"u": {"a": 2, "b": "é" * 40}}),  # $set of the delta's bytes
              delta(2, 2, {"i": {"new": True}}),  # the delta applied as it is
              delta(3, 3, {"u": {"a.b": 1}}),
              update(4, 4, updated={"a": 1, "b": [1, 2]}),  # $set of updatedFields' bytes
              update(5, 5, updated={"a": 1}, removed=["c"])]
    sized = [operation for operation in only_step(events).writes[("shop", "orders")]
             if isinstance(operation, Update) and operation.encoded_size is not None]
    assert len(sized) == 4
    for operation in sized:
        assert operation.encoded_size == len(bson.encode({"u": operation.update})) - 8


def test_a_moved_field_arrives_in_its_new_place() -> None:
    destination = FakeCluster("cluster1")
    destination.insert("shop", "orders", {"_id": 7, "pad": "p", "a": 1})
    writer = ChangeWriter(FakeCluster(), destination, EVERYTHING, "afterDataCopy",
                          MemoryStore(), Counters())
    writer.apply(translate([delta(1, 7, {"i": {"new": True, "a": 1}})], EVERYTHING).steps)
    assert list(destination.document("shop", "orders", 7) or {}) == ["_id", "pad", "new", "a"]


def test_deltas_that_set_cannot_address_are_applied_as_they_are() -> None:
    diffs = [{"u": {"a.b": 1}},  # a field whose name holds a dot
             {"u": {"$dollar": 1}},
             {"d": {"x.y": False}},
             {"sa": {"u": {"b": 1}}},  # a sub-document's field
             {"sarr": {"a": True, "u1": 5}},  # an array element
             {"u": {"a": 1}, "i": {"b": 2}}]
    step = only_step([delta(n, n, diff) for n, diff in enumerate(diffs, 1)])
    assert writes_of(step) == [
        ("update", {"_id": n},
         [{"$_internalApplyOplogUpdate": {"oplogUpdate": {"$v": 2, "diff": diff}}}])
        for n, diff in enumerate(diffs, 1)]


def test_an_update_logged_in_the_old_modifier_style_is_applied_as_logged() -> None:
    event = change_event("update", "shop", "orders", at(1), document_key={"_id": 1},
                         raw_update_description={"$v": 1, "$set": {"b": 3}})
    assert writes_of(only_step([event])) == [
        ("update", {"_id": 1},
         [{"$_internalApplyOplogUpdate": {"oplogUpdate": {"$v": 1, "$set": {"b": 3}}}}])]


def test_a_full_state_write_drops_earlier_writes_of_the_same_document() -> None:
    step = only_step([
        update(1, 1, updated={"a": 1}), insert(2, {"_id": 2}), update(3, 1, updated={"b": 1}),
        replace(4, {"_id": 1, "final": True}),  # drops both updates of 1
        update(5, 2, updated={"c": 1}), delete(6, 2),  # drops the insert and update of 2
    ])
    assert writes_of(step) == [("upsert", {"_id": 1}, {"_id": 1, "final": True}),
                               ("delete", {"_id": 2})]
    assert step.events == 6


def test_updates_after_a_full_state_write_stay_in_order() -> None:
    step = only_step([update(1, 1, updated={"old": 1}), insert(2, {"_id": 1, "v": 0}),
                      update(3, 1, updated={"v": 1}), update(4, 1, updated={"v": 2}),
                      update(5, 1, removed=["v"])])
    assert writes_of(step) == [("upsert", {"_id": 1}, {"_id": 1, "v": 0}),
                               ("update", {"_id": 1}, {"$set": {"v": 1}}),
                               ("update", {"_id": 1}, {"$set": {"v": 2}}),
                               ("update", {"_id": 1}, {"$unset": {"v": ""}})]


def test_writes_are_grouped_by_namespace_in_source_order() -> None:
    step = only_step([insert(1, {"_id": 1}), insert(2, {"_id": 1}, coll="users"),
                      update(3, 1, updated={"a": 1}), update(4, 1, coll="users",
                                                             updated={"u": 1}),
                      insert(5, {"_id": 2}, coll="users")])

    assert list(step.writes) == [("shop", "orders"), ("shop", "users")]
    assert writes_of(step) == [("upsert", {"_id": 1}, {"_id": 1}),
                               ("update", {"_id": 1}, {"$set": {"a": 1}})]
    assert writes_of(step, "users") == [("upsert", {"_id": 1}, {"_id": 1}),
                                        ("update", {"_id": 1}, {"$set": {"u": 1}}),
                                        ("upsert", {"_id": 2}, {"_id": 2})]


def test_documents_are_told_apart_by_their_whole_key() -> None:
    step = only_step([insert(1, {"_id": {"a": 1, "b": 2}}), insert(2, {"_id": {"b": 2, "a": 1}}),
                      delete(3, {"a": 1, "b": 2})])
    assert writes_of(step) == [("delete", {"_id": {"a": 1, "b": 2}}),
                               ("upsert", {"_id": {"b": 2, "a": 1}}, {"_id": {"b": 2, "a": 1}})]


def test_ddl_events_are_barriers_between_crud_steps() -> None:
    translation = translate([
        insert(1, {"_id": 1}), update(2, 1, updated={"a": 1}),
        ddl(3, "create", "users", {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}),
        insert(4, {"_id": 1}, coll="users"), update(5, 1, updated={"a": 2}),
        ddl(6, "drop", "orders"), ddl(7, "dropDatabase", None),
        insert(8, {"_id": 3})], EVERYTHING)

    kinds = [type(step).__name__ for step in translation.steps]
    assert kinds == ["CrudStep", "DdlStep", "CrudStep", "DdlStep", "DdlStep", "CrudStep"]
    first, create, middle, drop, drop_database, last = translation.steps
    assert isinstance(first, CrudStep) and isinstance(middle, CrudStep)
    assert isinstance(last, CrudStep)
    assert isinstance(create, DdlStep) and create.event["operationType"] == "create"
    assert isinstance(drop, DdlStep) and drop.event["operationType"] == "drop"
    assert isinstance(drop_database, DdlStep)
    assert drop_database.event["operationType"] == "dropDatabase"
    # The update before the barrier is not merged with the one after it.
    assert writes_of(first) == [("upsert", {"_id": 1}, {"_id": 1}),
                                ("update", {"_id": 1}, {"$set": {"a": 1}})]
    assert writes_of(middle, "users") == [("upsert", {"_id": 1}, {"_id": 1})]
    assert writes_of(middle) == [("update", {"_id": 1}, {"$set": {"a": 2}})]
    assert writes_of(last) == [("upsert", {"_id": 3}, {"_id": 3})]
    assert [first.events, middle.events, last.events] == [2, 2, 1]


def test_crud_events_outside_the_filter_are_dropped() -> None:
    only_orders = namespace_filter(includeNamespaces=[{"database": "shop",
                                                       "collections": ["orders"]}])
    translation = translate([
        insert(1, {"_id": 1}), insert(2, {"_id": 1}, coll="users"),
        insert(3, {"_id": 1}, db="other"), delete(4, 1, db="admin"),
        insert(5, {"_id": 1}, coll="system.js"), update(6, 1, updated={"a": 1})], only_orders)

    assert len(translation.steps) == 1
    step = translation.steps[0]
    assert isinstance(step, CrudStep)
    assert list(step.writes) == [("shop", "orders")]
    assert (translation.events, translation.crud_events, step.events) == (6, 2, 2)
    assert translation.last_time == at(6)  # the last event, filtered or not


def test_counts_and_last_time_of_a_translation() -> None:
    translation = translate([insert(1, {"_id": 1}), ddl(2, "create", "x", {}),
                             delete(3, 1, db="other")],
                            namespace_filter(includeNamespaces=[{"database": "shop"}]))
    assert (translation.events, translation.crud_events) == (3, 1)
    assert translation.last_time == at(3)

    empty = translate([], EVERYTHING)
    assert (empty.steps, empty.events, empty.crud_events, empty.last_time) == ([], 0, 0, None)


def test_ids_equal_in_the_id_index_are_one_document() -> None:
    """_id 1 and 1.0 are one key of the _id index: a delete of 1.0 must not be reordered after
    a later insert of 1."""
    events = [insert(1, {"_id": 1, "v": "a"}), delete(2, 1), insert(3, {"_id": 1.0, "v": "b"}),
              delete(4, 1.0), insert(5, {"_id": 1, "v": "c"})]
    destination = FakeCluster("cluster1")
    writer = ChangeWriter(FakeCluster(), destination, EVERYTHING, "afterDataCopy",
                          MemoryStore(), Counters())
    writer.apply(translate(events, EVERYTHING).steps)

    assert destination.documents("shop", "orders") == [{"_id": 1, "v": "c"}]


# -- events before the listing of the source's namespaces ------------------------------------


def listed_events() -> tuple[Listing, list[RawBSONDocument]]:
    """db1.moving (U1) renamed onto db1.target (U2, dropped) at 3, before db1 was listed at 5."""
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    listing = Listing.of(at(4), {"db1": at(5)}, [("db1", "target", Binary.from_uuid(u1))])
    events = [
        change_event("insert", "db1", "moving", at(1), document_key={"_id": 1},
                     full_document={"_id": 1}, collection_uuid=Binary.from_uuid(u1)),
        change_event("insert", "db1", "target", at(2), document_key={"_id": 2},
                     full_document={"_id": 2}, collection_uuid=Binary.from_uuid(u2)),
        change_event("rename", "db1", "moving", at(3), to={"db": "db1", "coll": "target"},
                     operation_description={"to": {"db": "db1", "coll": "target"},
                                            "dropTarget": Binary.from_uuid(u2)},
                     collection_uuid=Binary.from_uuid(u1)),
        change_event("insert", "db1", "target", at(6), document_key={"_id": 3},
                     full_document={"_id": 3}, collection_uuid=Binary.from_uuid(u1)),
    ]
    return listing, events


def test_events_before_the_listing_go_by_collection_uuid_and_its_ddl_is_not_replayed() -> None:
    listing, events = listed_events()
    steps = Translator(EVERYTHING, listing=listing).translate(events).steps
    assert all(isinstance(step, CrudStep) for step in steps)  # the rename was listed already
    written = [(namespace, shown(operation)[1]) for step in steps if isinstance(step, CrudStep)
               for namespace, operations in step.writes.items() for operation in operations]
    # moving's insert goes where the listing found moving's collection; the insert into the
    # target the rename dropped goes nowhere; the one after the listing goes by its name.
    assert [(namespace, key) for namespace, key in written] == [
        (("db1", "target"), {"_id": 1}), (("db1", "target"), {"_id": 3})]


def test_without_a_listing_every_event_goes_by_name() -> None:
    _, events = listed_events()
    steps = Translator(EVERYTHING).translate(events).steps
    assert [type(step).__name__ for step in steps] == ["CrudStep", "DdlStep", "CrudStep"]


def test_a_rename_the_listing_saw_under_neither_name_copies_the_collection_whole() -> None:
    """src.moving renamed to dst.moved at 3: dst was listed at 2 (before: no dst.moved), src
    at 4 (after: no src.moving). Nothing copied the collection; skipping the rename as seen
    lost every document (campaign seed 369)."""
    source, destination = FakeCluster(), FakeCluster("cluster1")
    source.insert("dst", "moved", {"_id": 1, "v": "a"}, {"_id": 2, "v": "b"})
    moved_uuid = source.collection("dst", "moved").uuid  # type: ignore[union-attr]
    listing = Listing.of(at(1), {"dst": at(2), "src": at(4)}, [])
    rename = change_event("rename", "src", "moving", at(3),
                          to={"db": "dst", "coll": "moved"},
                          operation_description={"to": {"db": "dst", "coll": "moved"}},
                          collection_uuid=moved_uuid)
    later = change_event("insert", "dst", "moved", at(5), document_key={"_id": 3},
                         full_document={"_id": 3, "v": "c"}, collection_uuid=moved_uuid)
    steps = Translator(EVERYTHING, listing=listing).translate([rename, later]).steps
    assert [type(step).__name__ for step in steps] == ["DdlStep", "CrudStep"]
    source.insert("dst", "moved", {"_id": 3, "v": "c"})
    writer = ChangeWriter(source, destination, EVERYTHING, "afterDataCopy", MemoryStore(),
                          Counters())
    writer.apply(steps)
    writer.apply(steps)  # applied again after a restart: the same result
    assert destination.documents("dst", "moved") == source.documents("dst", "moved")
    assert len(destination.documents("dst", "moved")) == 3

    # Listed after the rename in both databases: seen; before it in both: renamed.
    both_after = Listing.of(at(1), {"dst": at(4), "src": at(4)}, [])
    assert both_after.ddl_action("src", at(3), "dst") == "seen"
    both_before = Listing.of(at(1), {"dst": at(2), "src": at(2)}, [])
    assert both_before.ddl_action("src", at(3), "dst") == "apply"
    assert listing.ddl_action("src", at(3), "dst") == "copy-target"
    assert listing.ddl_action("src", at(3), None) == "seen"


# -- hot documents (--hotDocIDs) ---------------------------------------------------------------


def test_events_of_hot_documents_are_skipped_by_id_value_and_counted() -> None:
    """--hotDocIDs names {_id: NumberLong(1)}: the events of _id 1 and 1.0 are skipped (one
    document to the server), those of _id 2 and of _id 1 in another collection are not, and
    the verifier is still told of every change."""
    hot = HotDocuments(from_option('{"db": "shop", "collection": "orders", '
                                   '"ids": [{"_id": {"$numberLong": "1"}}]}'))
    events = [insert(1, {"_id": 1, "v": "a"}), update(2, 1.0, updated={"v": "b"}),
              insert(3, {"_id": 2}), delete(4, 1), insert(5, {"_id": 1}, coll="other")]
    translator = Translator(EVERYTHING, hot_documents=hot)
    translation = translator.translate(events, note_changes=True)

    assert translation.hot_skipped == 3
    assert (translation.events, translation.crud_events) == (5, 2)
    step = translation.steps[0]
    assert isinstance(step, CrudStep)
    assert writes_of(step) == [("upsert", {"_id": 2}, {"_id": 2})]
    assert writes_of(step, "other") == [("upsert", {"_id": 1}, {"_id": 1})]
    assert len(translation.changes) == 5


def test_hot_document_ids_keep_their_types_when_stored() -> None:
    documents = from_option('{"db": "d", "collection": "c", "ids": [{"_id": {"$numberLong": '
                            '"7"}}, {"_id": 7}, {"_id": {"$oid": "6aa23c249cef3cd958e43785"}}, '
                            '{"_id": {"k": [1, "x"]}}, {"_id": {"$date": {"$numberLong": '
                            '"-100000000000004"}}}]}')  # a date before year 1: kept
    stored = [document.to_stored() for document in documents]
    assert [HotDocument.from_stored(text) for text in stored] == documents
    assert bson.decode(documents[0].id_document)["_id"].__class__.__name__ == "Int64"
    assert len(HotDocuments(documents)) == 4  # NumberLong(7) and 7 are one document


@pytest.mark.parametrize("value, problem", [
    ('{"db": "d", "collection": "c", "ids": [{"_id": {"$oid": "zz"}}]}',
     "is not a valid extended JSON _id"),
    ('{"db": "d", "collection": "", "ids": [{"_id": 1}]}', "non-empty strings"),
    ('{"db": "d", "collection": "c", "ids": [{"id": 1}]}', "ids must be a non-empty array"),
    ('[1]', "must be an object with exactly db, collection and ids"),
])
def test_a_bad_hot_document_option_is_refused_with_what_is_wrong(value: str,
                                                                  problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        from_option(value)
