"""``mongosync check`` and ``/start``'s pre-flight: each finding from a cluster built to have it,
and a clean pair that has none. The console script runs as a subprocess, as an operator runs it;
``/start`` is called over HTTP on a running process."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument

from mongoemu.testing import EmulatorProcess, start_cluster, start_emulator
from tests.process.processkit import (
    MONGOSYNC,
    START,
    MongosyncFactory,
    admin_client,
    seed,
    start_cluster as start_replica_set,
)

SHARDED_BODY = {**START, "sharding": {"shardingEntries": [
    {"database": "bulk", "collection": "items", "shardCollection": {"key": [{"i": 1}]}}]}}


def check(cluster0: str, cluster1: str, *more: str, body: Any = None,
          cwd: Path | None = None) -> tuple[int, str]:
    command = [str(MONGOSYNC), "check", "--cluster0", cluster0, "--cluster1", cluster1, *more]
    if body is not None:
        command += ["--body", json.dumps(body)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def findings(cluster0: str, cluster1: str, body: Any = None) -> tuple[int, list[dict[str, Any]]]:
    code, output = check(cluster0, cluster1, "--json", body=body)
    return code, [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def by_check(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [finding for finding in found if finding["check"] == name]


@pytest.fixture
def plain_pair() -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    """Two emulators without authentication (as the README starts them)."""
    with start_emulator("replset") as source, start_emulator("replset") as destination:
        yield source, destination


# -- a clean pair ----------------------------------------------------------------------------
def test_a_clean_pair_has_no_finding(source: EmulatorProcess,
                                     destination: EmulatorProcess) -> None:
    seed(source, items=500)
    code, output = check(source.uri, destination.uri)
    assert code == 0, output
    assert "no findings: /start would pass the pre-flight checks" in output
    assert "emulator-root-password" not in output  # credentials never printed
    code, found = findings(source.uri, destination.uri)
    assert (code, found) == (0, [])


# -- privileges and users (spec §19, §21) ----------------------------------------------------
def test_a_source_user_without_the_roles_of_spec_19_blocks(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    # The application's user may switch write blocking but not write through it.
    code, found = findings(str(source.application_uri), destination.uri)
    assert code == 1
    [privileges] = by_check(found, "privileges")
    assert privileges["blocking"] is True and privileges["subject"] == "cluster0 (source)"
    assert "bypassWriteBlockingMode on the cluster" in privileges["message"]
    assert 'grantRolesToUser("application"' in privileges["fix"]
    assert '{role: "restore", db: "admin"}' in privileges["fix"]
    # A namespace filter blocks only the destination: the source then needs no such privilege.
    filtered = {**START, "includeNamespaces": [{"database": "app"}]}
    code, found = findings(str(source.application_uri), destination.uri, filtered)
    assert by_check(found, "privileges") == []


def test_users_missing_on_the_destination_are_named(
        source: EmulatorProcess, destination: EmulatorProcess,
        plain_pair: tuple[EmulatorProcess, EmulatorProcess]) -> None:
    with admin_client(source) as client:
        client.admin.command("createUser", "reporting", pwd="reporting-password",
                             roles=["readAnyDatabase"])
    code, found = findings(source.uri, destination.uri)
    assert code == 0  # a warning: users are not migrated, the start is not refused
    [users] = by_check(found, "users")
    assert users["blocking"] is False and "reporting@admin" in users["message"]
    assert "createUser" in users["fix"]
    # A destination without any user: anyone may write to it during the migration.
    plain_source, plain_destination = plain_pair
    code, found = findings(plain_source.uri, plain_destination.uri)
    [users] = by_check(found, "users")
    assert "the destination has no users" in users["message"] and code == 0


# -- destination disk (InsufficientDestinationDiskSpace, skipDiskSpaceCheck) -------------------
def test_a_small_destination_disk_blocks_unless_skipped(
        source: EmulatorProcess, destination: EmulatorProcess,
        mongosync: MongosyncFactory) -> None:
    seed(source, items=3000, payload=500)  # about 1.6 MB of documents
    with admin_client(destination) as client:
        client.admin.command("emulatorSetDiskSize", 1, bytes=400_000)
    code, output = check(source.uri, destination.uri)
    assert code == 1, output
    assert "BLOCKING  [disk-space] cluster1 (destination)" in output
    assert "skipDiskSpaceCheck: true" in output
    code, found = findings(source.uri, destination.uri, {**START, "skipDiskSpaceCheck": True})
    [disk] = by_check(found, "disk-space")
    assert code == 0 and disk["blocking"] is False and "not enforced" in disk["message"]
    # /start refuses with mongosync's own error name, and writes nothing.
    process = mongosync.clusters(source, destination)
    status, answer = process.post("start", START)
    assert (status, answer["error"]) == (422, "InsufficientDestinationDiskSpace"), answer
    assert "[disk-space]" in answer["errorDescription"]
    assert process.progress()["state"] == "IDLE"
    with admin_client(destination) as client:
        assert [name for name in client.list_database_names()
                if name not in ("admin", "config", "local")] == []
    assert process.post("start", {**START, "skipDiskSpaceCheck": True}) == \
        (200, {"success": True})
    [warning] = [line for line in process.log() if line["message"] == "Pre-flight warning"
                 and line["check"] == "disk-space"]
    assert warning["level"] == "warn" and "not enforced" in warning["finding"]


# -- sharded destinations: balancer window, zones, 63 indexes (spec §12) ---------------------
def test_balancer_window_zones_and_too_many_indexes_on_a_sharded_destination(
        source: EmulatorProcess) -> None:
    with admin_client(source) as client:
        items = client.bulk.items
        items.insert_many([{"i": i, **{f"f{n}": n for n in range(62)}} for i in range(20)])
        items.create_index("i")
        for n in range(62):  # _id, i and 62 more: 64 indexes
            items.create_index(f"f{n}")
        client.app.users.insert_one({"name": "ada"})
    with start_cluster(shards=2) as cluster, pymongo.MongoClient(cluster.uri) as router:
        router.config.settings.update_one(
            {"_id": "balancer"}, {"$set": {"activeWindow": {"start": "23:00", "stop": "06:00"}}},
            upsert=True)
        router.admin.command("addShardToZone", "shard01", zone="EU")
        router.admin.command("updateZoneKeyRange", "app.users", min={"name": "a"},
                             max={"name": "m"}, zone="EU")
        code, found = findings(source.uri, cluster.uri, SHARDED_BODY)
        assert code == 1
        [window] = by_check(found, "balancer-window")
        assert window["blocking"] and "23:00 to 06:00" in window["message"]
        assert "$unset: {activeWindow" in window["fix"]
        [zones] = by_check(found, "zones")
        assert zones["blocking"] and zones["subject"] == "app.users"
        assert "shard tags" in zones["message"] and "EU" in zones["message"]
        [indexes] = by_check(found, "sharded-index-count")
        assert indexes["blocking"] and indexes["subject"] == "bulk.items"
        assert "64 indexes" in indexes["message"]
        # Without the sharding entry the collection stays unsharded: 64 indexes are fine.
        code, found = findings(source.uri, cluster.uri,
                               {**START, "sharding": {"shardingEntries": []}})
        assert by_check(found, "sharded-index-count") == []
        # Without sharding at all, the topology check says what is missing.
        code, found = findings(source.uri, cluster.uri, START)
        [topology] = by_check(found, "topology")
        assert topology["subject"] == "sharding" and "is required" in topology["message"]


# -- indexes and documents (spec §21) --------------------------------------------------------
def test_unique_and_non_unique_indexes_on_the_same_keys_block(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    with admin_client(source) as client:
        client.shop.orders.create_index([("sku", 1), ("day", -1)], unique=True,
                                        name="sku_day_unique")
        client.shop.orders.create_index([("sku", 1), ("day", -1)], name="sku_day")
        client.shop.orders.create_index([("sku", 1)], unique=True)  # other keys: no conflict
        client.shop.orders.insert_one({"sku": "a", "day": 1})
    code, found = findings(source.uri, destination.uri)
    assert code == 1
    [conflict] = by_check(found, "unique-and-non-unique")
    assert conflict["subject"] == "shop.orders"
    assert "{sku: 1, day: -1}" in conflict["message"]
    assert "sku_day_unique" in conflict["message"] and 'dropIndex("sku_day")' in conflict["fix"]


def _raw(*elements: bytes) -> RawBSONDocument:
    """A BSON document built element by element (duplicates allowed, as on the wire)."""
    body = b"".join(elements) + b"\x00"
    return RawBSONDocument(len(body + b"1234").to_bytes(4, "little") + body)


def _int32(name: str, value: int) -> bytes:
    return b"\x10" + name.encode() + b"\x00" + value.to_bytes(4, "little")


def test_dollar_prefixed_and_duplicate_field_names_block(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    with admin_client(source) as client:
        client.good.plain.insert_many([{"a": i, "nested": {"b": i}} for i in range(50)])
        client.bad.dollar.insert_one(RawBSONDocument(bson.encode(
            {"_id": 1, "price": {"$amount": 5}})))
        client.bad.duplicate.insert_one(_raw(_int32("_id", 7), _int32("qty", 1),
                                             _int32("qty", 2)))
    code, found = findings(source.uri, destination.uri)
    assert code == 1
    problems = {finding["subject"]: finding["message"] for finding in by_check(found,
                                                                                "field-names")}
    assert set(problems) == {"bad.dollar", "bad.duplicate"}
    assert "$-prefixed field price.$amount" in problems["bad.dollar"]
    assert "document _id 7 has a duplicate field qty" in problems["bad.duplicate"]


def test_a_non_empty_destination_and_time_series_are_listed_with_the_rest(
        source: EmulatorProcess, destination: EmulatorProcess) -> None:
    with admin_client(source) as client:
        client.metrics.create_collection("readings", timeseries={"timeField": "t"})
    with admin_client(destination) as client:
        client.leftover.things.insert_one({"x": 1})
    code, found = findings(source.uri, destination.uri)
    assert code == 1
    [leftovers] = by_check(found, "destination-empty")
    assert "leftover" in leftovers["message"] and "mongosync reset" in leftovers["message"]
    [timeseries] = by_check(found, "timeseries")
    assert timeseries["subject"] == "metrics.readings"
    assert "metrics.readings is a timeseries collection" in timeseries["message"]


# -- versions (spec §20) and query settings (spec §5.1) -------------------------------------
def test_a_lowered_fcv_and_an_old_patch_release_block(mongosync: MongosyncFactory) -> None:
    with start_replica_set(["--server-version", "8.0"]) as source, \
            start_replica_set(["--server-version", "8.0.1"]) as destination:
        with admin_client(source) as client:
            client.admin.command("setFeatureCompatibilityVersion", "7.0", confirm=True)
        code, found = findings(source.uri, destination.uri)
        assert code == 1
        [fcv] = by_check(found, "feature-compatibility-version")
        assert fcv["subject"] == "cluster0 (source)" and "is 7.0" in fcv["message"]
        assert 'setFeatureCompatibilityVersion: "8.0"' in fcv["fix"]
        [patch] = by_check(found, "server-version")
        assert patch["subject"] == "cluster1 (destination)"
        assert "runs MongoDB 8.0.1; the oldest supported 8.0 release is 8.0.5" in patch["message"]
        # /start refuses both at once, listed.
        process = mongosync.clusters(source, destination)
        status, answer = process.post("start", START)
        assert (status, answer["error"]) == (422, "PreflightFailed"), answer
        assert "found 2 problems" in answer["errorDescription"]
        assert "(1) [feature-compatibility-version] cluster0 (source)" in \
            answer["errorDescription"]
        assert "(2) [server-version] cluster1 (destination)" in answer["errorDescription"]
        assert process.progress()["state"] == "IDLE"


def test_persistent_query_settings_are_a_warning() -> None:
    with start_replica_set(["--server-version", "8.0"]) as source, \
            start_replica_set(["--server-version", "8.0"]) as destination:
        with admin_client(source) as client:
            client.shop.orders.insert_one({"status": "open"})
            client.admin.command({"setQuerySettings": {"find": "orders", "filter": {
                "status": "open"}, "$db": "shop"}, "settings": {"reject": True}})
        code, found = findings(source.uri, destination.uri)
        assert code == 0
        [settings] = by_check(found, "query-settings")
        assert settings["blocking"] is False and "shop.orders (find" in settings["message"]
        assert "setQuerySettings" in settings["fix"]


# -- the oplog window (spec §5.5) ------------------------------------------------------------
def test_a_small_oplog_window_is_a_warning(destination: EmulatorProcess) -> None:
    with start_replica_set(["--oplog-size-mb", "0.05"]) as source:
        with admin_client(source) as client:  # fill 50 KiB of oplog within a second or two
            client.churn.c.insert_many([{"pad": "x" * 1000} for _ in range(200)])
        code, found = findings(source.uri, destination.uri)
        assert code == 0
        [window] = by_check(found, "oplog-window")
        assert window["subject"] == "cluster0 (source)" and window["blocking"] is False
        assert "at least 60 min is advised" in window["message"]
        assert "replSetResizeOplog" in window["fix"]


def test_a_copy_longer_than_the_oplog_window_blocks_without_change_buffering(
        destination: EmulatorProcess) -> None:
    """40 MiB to copy, estimated at 2.5 s, against an oplog that holds about a second of
    writes: without the change buffer the oplog would roll over during the copy."""
    with start_replica_set(["--oplog-size-mb", "0.05"]) as source:
        with admin_client(source) as client:
            for _ in range(4):
                client.big.docs.insert_many([{"pad": "x" * 1024 * 1024} for _ in range(10)])
            client.churn.c.insert_many([{"pad": "x" * 1000} for _ in range(200)])
        with busy(source):
            code, found = findings(source.uri, destination.uri)
            assert code == 0, found  # the change buffer stores the changes made during the copy
            [window] = by_check(found, "oplog-window")
            assert window["blocking"] is False and "the change buffer stores" in window["message"]

            code, output = check(source.uri, destination.uri, "--disableChangeBuffering")
        assert code == 1, output
        assert "BLOCKING  [oplog-window] cluster0 (source)" in output
        assert "copying 40.2 MiB is estimated at 3 s" in output
        assert "the oplog would roll over (ChangeStreamHistoryLost) before the copy ends" in output
        assert "without --disableChangeBuffering" in output


@contextmanager
def busy(source: EmulatorProcess) -> Iterator[None]:
    """The source's 200 churn documents rewritten without pause (their size unchanged), so its
    50 KiB oplog holds well under a second of writes while the checks run. Written once
    before the checks instead, the oplog's span grew with the seconds a busy machine took to
    start each check (CI measured 3 s against the copy's 2.5 s)."""
    stop = threading.Event()

    def rewrite() -> None:
        with admin_client(source) as client:
            while not stop.is_set():
                for pad in "yx":
                    client.churn.c.update_many({}, {"$set": {"pad": pad * 1000}})

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join(30)


# -- refusals of the command itself ----------------------------------------------------------
def test_bad_options_and_bodies_are_refused_by_name(tmp_path: Path,
                                                    source: EmulatorProcess) -> None:
    code, output = check(source.uri, "mongodb://127.0.0.1:9", body={"src": 1})
    assert code == 2 and "Invalid value for '--body': source: is required" in output
    code, output = check(source.uri, "mongodb://127.0.0.1:9", "--body", "{not json")
    assert code == 2 and "not valid JSON" in output
    code, output = check(source.uri, "mongodb://127.0.0.1:1/?readConcernLevel=local")
    assert code == 2 and "read concern must be majority" in output
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps({**START, "buildIndexes": "sometimes"}))
    code, output = check(source.uri, "mongodb://127.0.0.1:9", "--body", f"@{body_file}")
    assert code == 2 and "buildIndexes" in output
    config = tmp_path / "mongosync.yaml"
    config.write_text(f"cluster0: {source.uri}\ncluster1: mongodb://127.0.0.1:9\n")
    done = subprocess.run([str(MONGOSYNC), "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "cannot read the clusters" in done.stderr
