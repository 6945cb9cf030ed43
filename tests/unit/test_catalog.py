"""The destination's temporary collection and index options, and their restoration at commit
(pymongosync.catalog), over fakes."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

from pymongosync import catalog
from pymongosync.catalog import CAPPED_SIZE_LIFTED, TTL_NEVER_EXPIRES
from pymongosync.namespaces import NamespaceFilter
from pymongosync.state import IndexRef, NamespaceKind
from tests.unit.fakes import FakeCluster, MemoryStore
from tests.unit.support import namespace_filter

EVERYTHING = NamespaceFilter()
CLUSTERED = {"key": {"_id": 1}, "unique": True}
SOURCE_INDEXES: list[dict[str, Any]] = [
    {"key": {"a": 1}, "name": "a_1", "unique": True},
    {"key": {"h": 1}, "name": "h_1", "hidden": True},
    {"key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 60},
    {"key": {"u": 1}, "name": "u_1", "unique": True, "hidden": True, "sparse": True},
    {"key": {"k": "hashed"}, "name": "k_hashed"},
    {"key": {"p": 1}, "name": "p_1", "partialFilterExpression": {"p": {"$gt": 1}}},
]


# -- temporary options --------------------------------------------------------------------------


def test_capped_collections_are_created_without_limits() -> None:
    options = {"capped": True, "size": 4096, "max": 10, "validator": {"a": 1}}
    assert catalog.temporary_collection_options(options) == {
        "capped": True, "size": CAPPED_SIZE_LIFTED, "validator": {"a": 1}}
    assert options == {"capped": True, "size": 4096, "max": 10, "validator": {"a": 1}}


def test_clustered_ttl_collections_never_expire_while_syncing() -> None:
    assert catalog.temporary_collection_options(
        {"clusteredIndex": CLUSTERED, "expireAfterSeconds": 5}) == {
        "clusteredIndex": CLUSTERED, "expireAfterSeconds": TTL_NEVER_EXPIRES}
    assert catalog.temporary_collection_options({"clusteredIndex": CLUSTERED}) == {
        "clusteredIndex": CLUSTERED}
    assert catalog.temporary_collection_options({"autoIndexId": True, "collation": {
        "locale": "fr"}}) == {"collation": {"locale": "fr"}}


def test_temporary_index_specs_relax_every_constraint() -> None:
    assert catalog.temporary_index_spec({
        "v": 2, "key": {"a": 1}, "name": "a_1", "unique": True, "prepareUnique": True,
        "hidden": True, "expireAfterSeconds": 30, "ns": "shop.orders", "background": True,
        "sparse": True, "collation": {"locale": "fr"}}) == {
        "v": 2, "key": {"a": 1}, "name": "a_1", "expireAfterSeconds": TTL_NEVER_EXPIRES,
        "sparse": True, "collation": {"locale": "fr"}}


@pytest.mark.parametrize("mode, names", [
    ("afterDataCopy", ["a_1", "h_1", "t_1", "u_1", "k_hashed", "p_1"]),
    ("beforeDataCopy", ["a_1", "h_1", "t_1", "u_1", "k_hashed", "p_1"]),
    ("excludeHashed", ["a_1", "h_1", "t_1", "u_1", "p_1"]),
    ("excludeHashedAfterCopy", ["a_1", "h_1", "t_1", "u_1", "p_1"]),
    ("never", []),
])
def test_indexes_to_build_per_mode(mode: str, names: list[str]) -> None:
    specs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}] + SOURCE_INDEXES
    chosen = catalog.indexes_to_build(specs, mode)
    assert [spec["name"] for spec in chosen] == names
    assert all("unique" not in spec and "hidden" not in spec for spec in chosen)


def test_listed_namespaces_follow_the_filter() -> None:
    source = FakeCluster(sharded=True)
    source.insert("shop", "orders", {"_id": 1, "x": "y"}, {"_id": 2})
    source.create_index("shop", "orders", {"key": {"a": 1}, "name": "a_1", "background": True})
    source.shard_collection("shop", "orders", {"_id": "hashed"})
    source.create_collection("shop", "view", {"viewOn": "orders", "pipeline": []})
    source.insert("shop", "hidden", {"_id": 1})
    source.insert("other", "x", {"_id": 1})
    listed = catalog.list_namespaces(source, namespace_filter(
        includeNamespaces=[{"database": "shop"}],
        excludeNamespaces=[{"database": "shop", "collections": ["hidden"]}]))

    assert [(ns.id, ns.kind) for ns in listed] == [("shop.orders", NamespaceKind.COLLECTION),
                                                   ("shop.view", NamespaceKind.VIEW)]
    orders, view = listed
    assert [spec["name"] for spec in orders.indexes] == ["_id_", "a_1"]
    assert "background" not in orders.indexes[1]
    assert orders.shard_key == {"_id": "hashed"}
    assert orders.estimated_documents == 2 and orders.estimated_bytes > 0
    assert orders.uuid == source.collection_infos("shop", "orders")[0]["info"]["uuid"]
    assert view.indexes == [] and view.uuid is None
    assert view.options == {"viewOn": "orders", "pipeline": []}


# -- restoration at commit ----------------------------------------------------------------------


def synced_pair(build_mode: str = "afterDataCopy") -> tuple[FakeCluster, FakeCluster]:
    """A source and a destination shaped from it as the migration does while syncing."""
    source, destination = FakeCluster("cluster0"), FakeCluster("cluster1")
    source.create_collection("shop", "capped", {"capped": True, "size": 8192, "max": 10})
    source.create_collection("shop", "ttl", {"clusteredIndex": CLUSTERED,
                                             "expireAfterSeconds": 3600})
    source.create_collection("shop", "orders", {})
    for spec in SOURCE_INDEXES:
        source.create_index("shop", "orders", spec)
    source.create_collection("shop", "view", {"viewOn": "orders", "pipeline": []})
    store = MemoryStore()
    for entry in catalog.list_namespaces(source, EVERYTHING):
        catalog.create_collection(destination, store, entry.db, entry.name,
                                  catalog.temporary_collection_options(entry.options))
        if entry.is_collection:
            catalog.create_indexes(destination, entry.db, entry.name,
                                   catalog.indexes_to_build(entry.indexes, build_mode))
    return source, destination


def shapes(cluster: FakeCluster) -> dict[str, Any]:
    """Options and index specs of every collection, to compare two clusters."""
    return {info["name"]: (info["options"], {spec["name"]: spec for spec in
                                             cluster.index_specs("shop", info["name"])})
            for info in cluster.collection_infos("shop")}


def test_the_destination_is_temporary_while_syncing() -> None:
    source, destination = synced_pair()
    options = {info["name"]: info["options"] for info in destination.collection_infos("shop")}
    assert options["capped"] == {"capped": True, "size": CAPPED_SIZE_LIFTED}
    assert options["ttl"]["expireAfterSeconds"] == TTL_NEVER_EXPIRES
    specs = {spec["name"]: spec for spec in destination.index_specs("shop", "orders")}
    assert specs["t_1"]["expireAfterSeconds"] == TTL_NEVER_EXPIRES
    assert not any(spec.get("unique") or spec.get("hidden") for spec in specs.values())
    assert shapes(source) != shapes(destination)


def test_commit_restores_the_source_shape_with_unique_last() -> None:
    source, destination = synced_pair()
    pending = catalog.restore_final_options(source, destination, EVERYTHING, "afterDataCopy")

    assert pending == [IndexRef(db="shop", coll="orders", name="a_1"),
                       IndexRef(db="shop", coll="orders", name="u_1")]
    specs = {spec["name"]: spec for spec in destination.index_specs("shop", "orders")}
    # Unique indexes only prepare for uniqueness until writes are allowed again.
    assert specs["a_1"].get("prepareUnique") is True and not specs["a_1"].get("unique")
    assert specs["t_1"]["expireAfterSeconds"] == 60
    assert specs["h_1"].get("hidden") is True and specs["u_1"].get("hidden") is True
    options = {info["name"]: info["options"] for info in destination.collection_infos("shop")}
    assert options["capped"] == {"capped": True, "size": 8192, "max": 10}
    assert options["ttl"]["expireAfterSeconds"] == 3600

    catalog.enforce_unique(destination, pending)
    assert shapes(destination) == shapes(source)


def test_restoring_again_is_harmless() -> None:
    source, destination = synced_pair()
    first = catalog.restore_final_options(source, destination, EVERYTHING, "afterDataCopy")
    assert catalog.restore_final_options(source, destination, EVERYTHING,
                                         "afterDataCopy") == first
    catalog.enforce_unique(destination, first)
    catalog.enforce_unique(destination, first)
    assert catalog.restore_final_options(source, destination, EVERYTHING,
                                         "afterDataCopy") == []
    assert shapes(destination) == shapes(source)


def test_without_indexes_only_collection_options_are_restored() -> None:
    source, destination = synced_pair("never")
    assert catalog.restore_final_options(source, destination, EVERYTHING, "never") == []
    assert set(shapes(destination)["orders"][1]) == {"_id_"}
    options = {info["name"]: info["options"] for info in destination.collection_infos("shop")}
    assert options["capped"] == {"capped": True, "size": 8192, "max": 10}


def test_hashed_indexes_left_out_stay_out() -> None:
    source, destination = synced_pair("excludeHashedAfterCopy")
    pending = catalog.restore_final_options(source, destination, EVERYTHING,
                                            "excludeHashedAfterCopy")
    catalog.enforce_unique(destination, pending)
    source_shape, destination_shape = shapes(source), shapes(destination)
    source_shape["orders"][1].pop("k_hashed")
    assert destination_shape == source_shape


def test_enforcing_unique_fails_on_duplicates() -> None:
    source, destination = synced_pair()
    destination.insert("shop", "orders", {"_id": 1, "a": 1}, {"_id": 2, "a": 1})
    pending = catalog.restore_final_options(source, destination, EVERYTHING, "afterDataCopy")
    with pytest.raises(OperationFailure) as failure:
        catalog.enforce_unique(destination, pending)
    assert failure.value.code == 359


def test_prepare_unique_of_a_non_unique_index_is_restored() -> None:
    source, destination = synced_pair()
    source.modify_collection("shop", "orders", {"index": {"name": "p_1",
                                                          "prepareUnique": True}})
    pending = catalog.restore_final_options(source, destination, EVERYTHING, "afterDataCopy")
    catalog.enforce_unique(destination, pending)
    assert shapes(destination) == shapes(source)


def test_prepare_unique_set_again_on_a_unique_index_is_restored() -> None:
    """Campaign seed 10375: prepareUnique set on an index already unique (which MongoDB
    allows and keeps), and the commit's conversion to unique, which clears prepareUnique, left
    the destination's without it: the verifier failed the commit on that index."""
    source, destination = synced_pair()
    source.modify_collection("shop", "orders", {"index": {"name": "a_1",
                                                          "prepareUnique": True}})
    pending = catalog.restore_final_options(source, destination, EVERYTHING, "afterDataCopy")
    assert IndexRef(db="shop", coll="orders", name="a_1", prepare_unique=True) in pending
    catalog.enforce_unique(destination, pending)
    specs = {spec["name"]: spec for spec in destination.index_specs("shop", "orders")}
    assert specs["a_1"].get("unique") is True and specs["a_1"].get("prepareUnique") is True
    assert shapes(destination) == shapes(source)



class RenamedWhileListed(FakeCluster):
    """``app.incoming`` (sharded) renamed over ``app.current`` with dropTarget right after the
    listing first read the shard keys."""

    renamed = False

    def shard_keys(self) -> dict[str, dict[str, Any]]:
        keys = super().shard_keys()
        if not self.renamed:
            self.renamed = True
            self.rename_collection("app.incoming", "app.current", drop_target=True)
        return keys


@pytest.mark.parametrize("settled", [False, True])
def test_a_shard_key_that_moves_while_collections_are_listed_is_listed_where_it_went(
        settled: bool) -> None:
    # Campaign seed 73 from a sharded source into a sharded destination: the shard keys were
    # read once, before the databases were listed, and a rename of a sharded collection in
    # between listed it unsharded under its new name. Created unsharded on the destination (the
    # rename, which the listing showed, was not applied again), the verifier failed the commit.
    source = RenamedWhileListed(sharded=True)
    source.insert("app", "current", {"_id": 1})
    source.insert("app", "incoming", {"_id": 2})
    source.shard_collection("app", "incoming", {"_id": "hashed"})
    listed_at: dict[str, Any] = {}
    listed = catalog.list_namespaces(
        source, EVERYTHING, listed_at=listed_at if settled else None,
        settled=(lambda db, start, end: True) if settled else None)
    assert [(ns.id, ns.shard_key) for ns in listed] == [("app.current", {"_id": "hashed"})]
