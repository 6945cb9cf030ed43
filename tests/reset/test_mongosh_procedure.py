"""MongoDB's documented restart-from-scratch procedure (spec §15.3), typed into the real mongosh.

A migration is killed during its copy; the operator then follows the documentation literally
against the destination (a replica set, or a mongos), and a new migration ends equal.
"""

from __future__ import annotations

import pytest

from mongoemu.testing import EmulatorProcess
from pymongosync.store import METADATA_DATABASE

from .resetkit import (
    SYSTEM,
    migrate,
    mongosh,
    mongosh_path,
    run_and_crash,
    seed,
    shown_databases,
    snapshot,
    start_cluster,
    stored_migration,
    user_client,
)

SHARD_ITEMS = {"sharding": {"shardingEntries": [
    {"database": "app", "collection": "items", "shardCollection": {"key": [{"k": 1}]}}]}}


@pytest.mark.parametrize("topology", ["replset", "mongos"])
def test_documented_procedure_then_new_migration(source: EmulatorProcess,
                                                 topology: str) -> None:
    mongosh_path()  # skip before starting anything when mongosh is absent
    body = {"source": "cluster0", "destination": "cluster1",
            **(SHARD_ITEMS if topology == "mongos" else {})}
    seed(source, documents=40000)
    with start_cluster(topology) as destination:
        run_and_crash(source, destination, kill_on="collection copy", delay=0.2, body=body)
        assert stored_migration(destination).resume.phase.label == "collection copy"
        before = snapshot(destination)
        assert before.write_blocked and {"app", "shop", METADATA_DATABASE} <= set(
            before.databases)

        # 1. mongosync is stopped (killed). 2.-3. mongosh on the destination, unblock writes.
        listed = shown_databases(mongosh(destination, (
            "db.adminCommand({setUserWriteBlockMode: 1, global: false})\n"
            "show dbs\n")))
        assert METADATA_DATABASE in listed and "app" in listed and "shop" in listed
        # 4. Drop every database mongosync created and the reserved one; show dbs again.
        to_drop = [name for name in listed if name not in SYSTEM]
        script = "".join(f"use {name}\ndb.dropDatabase()\n" for name in to_drop) + "show dbs\n"
        if topology == "mongos":  # 5. abandoning it: the balancer back on
            script += ("db.adminCommand({balancerStart: 1})\n"
                       "print('BALANCER', db.adminCommand({balancerStatus: 1}).mode)\n")
        output = mongosh(destination, script)
        assert all(f"dropped: '{name}'" in output for name in to_drop), output
        assert set(shown_databases(output.split(f"dropped: '{to_drop[-1]}'")[1])) <= SYSTEM
        after = snapshot(destination)
        assert not after.write_blocked and set(after.databases) <= SYSTEM
        if topology == "mongos":
            assert "BALANCER full" in output and after.balancer == "full"
        with user_client(destination) as application:  # the destination takes writes again
            application.scratch.check.insert_one({"ok": 1})
            application.drop_database("scratch")

        # 6. Start again: a complete, correct new migration.
        migrate(source, destination, body, compare_indexes=topology == "replset")
