"""``mongosync repair``: a commit the verifier failed on documents is finished from the source,
without starting over; anything else is refused with nothing changed."""

from __future__ import annotations

from typing import Any

import pymongo
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mongoemu.testing import EmulatorProcess
from pymongosync.api import Service
from pymongosync.cli.main import main
from pymongosync.clusters import Cluster
from pymongosync.errors import RepairError, VerificationFailed
from pymongosync.migration import Migration
from pymongosync.repair import apply_repair, plan_repair
from pymongosync.store import METADATA_DATABASE, MetadataStore
from pymongosync.verifier.compare import compare_clusters

from .test_verifier import run_until_commit_fails, seed


def tamper_documents(client: pymongo.MongoClient[Any]) -> None:
    """Each kind of document difference, written behind the tool's back."""
    app = client.app
    app.c0.delete_one({"_id": 10})  # missing
    app.c0.insert_one({"_id": "intruder", "n": -1})  # extra
    app.c0.update_one({"_id": 11}, {"$set": {"n": 1100}})  # a changed value
    app.c0.replace_one({"_id": 12}, {"nested": {"x": 12, "y": "z"}, "tags": ["a", "b"],
                                     "n": 12})  # the same fields in another order
    app.c1.replace_one({"_id": 5}, {"_id": 5.0, "n": 5})  # another _id type, equal by value


def test_documents_the_verifier_found_different_are_repaired_and_the_commit_finishes(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    seed(source)

    def refused_while_held() -> None:  # the failed process still holds the migration
        with pytest.raises(RepairError, match="still working on the migration"):
            plan_repair(cluster0, cluster1)

    failure = run_until_commit_fails(cluster0, cluster1, tamper_documents, "stream hashing",
                                     while_failed=refused_while_held)
    assert "5 found" in failure.message, failure.message
    assert "mongosync repair --cluster0 <URI> --cluster1 <URI>" in failure.message

    plan = plan_repair(cluster0, cluster1)
    text = plan.describe()
    assert "5 document(s) that differ" in text, text
    assert "app.c0: 2 different, 1 extra, 1 missing" in text, text
    assert "app.c1: 1 different" in text, text
    report = apply_repair(plan)
    assert (report.replaced, report.deleted) == (4, 1)
    metadata = cluster1.client[METADATA_DATABASE]
    repairs = {str(repair["_id"]["id"]): (repair["kind"], repair["action"])
               for repair in metadata.verifierRepairs.find()}
    assert repairs == {"10": ("missing", "replaced"), "intruder": ("extra", "deleted"),
                       "11": ("different", "replaced"), "12": ("different", "replaced"),
                       "5": ("different", "replaced")}
    assert metadata.verifierMismatches.count_documents({}) == 0
    stored = MetadataStore(cluster1.client).load()
    assert stored is not None and stored.global_state.error is None

    again = Migration.open(cluster0, cluster1, load_level=1)  # the same flags: it goes on
    try:
        final = again.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
        service = Service("coordinator")
        service.migration = again
        metrics = {sample.name: sample.value for family in text_string_to_metric_families(
            generate_latest(service.registry).decode()) for sample in family.samples}
    finally:
        again.close()
    assert metrics["mongosync_verifier_repaired_docs_count"] == 5
    assert final["canWrite"] is True
    assert final["verificationDetails"]["repairedDocuments"] == 5
    assert final["verificationDetails"]["mismatches"] == 0
    assert metadata.verifierState.find_one()["verdict"] == "equal"
    comparison = compare_clusters(cluster0.client, cluster1.client)
    assert comparison.equal, comparison.summary()  # bytes: field order and _id types too
    with pytest.raises(RepairError, match="has not failed verification"):
        plan_repair(cluster0, cluster1)


def test_differences_in_metadata_are_refused_with_nothing_changed(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    seed(source)

    def tamper(client: pymongo.MongoClient[Any]) -> None:
        client.app.c0.drop_index("n_1")
        client.app.c0.delete_one({"_id": 3})

    run_until_commit_fails(cluster0, cluster1, tamper, "stream hashing")
    before = MetadataStore(cluster1.client).load()
    assert before is not None and before.global_state.error is not None
    # The final verification stopped at the documents: repaired, the commit goes on to the
    # metadata, which no repair changes.
    apply_repair(plan_repair(cluster0, cluster1))
    again = Migration.open(cluster0, cluster1, load_level=1)
    try:
        with pytest.raises(VerificationFailed) as failed:
            again.wait_for(lambda p: p["state"] == "COMMITTED", timeout=120)
    finally:
        again.close()
    assert "app.c0: index" in failed.value.message
    assert "mongosync repair" not in failed.value.message
    with pytest.raises(RepairError, match="in metadata, which repair does not change"):
        plan_repair(cluster0, cluster1)
    after = MetadataStore(cluster1.client).load()
    assert after is not None and after.global_state.error is not None
    assert cluster1.client[METADATA_DATABASE].verifierMismatches.count_documents({}) == 1


def test_the_command_shows_the_plan_and_asks_before_changing_anything(
        source: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    cluster0, cluster1 = clusters
    seed(source)
    run_until_commit_fails(cluster0, cluster1,
                           lambda client: client.app.c2.delete_one({"_id": 7}), "copy")
    metadata = cluster1.client[METADATA_DATABASE]
    (reported,) = metadata.verifierMismatches.find({}, {"_id": 0})
    metadata.verifierMismatches.insert_one(reported)  # reported again (a verification rerun)
    arguments = ["repair", "--cluster0", cluster0.uri, "--cluster1", cluster1.uri]
    runner = CliRunner()
    dry = runner.invoke(main, [*arguments, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "app.c2: 1 missing" in dry.output and "Dry run: nothing was changed" in dry.output
    unasked = runner.invoke(main, arguments)  # no terminal to confirm it
    assert unasked.exit_code == 1 and "run again with --yes" in unasked.output
    assert metadata.verifierMismatches.count_documents({}) == 2
    done = runner.invoke(main, [*arguments, "--yes"])
    assert done.exit_code == 0, done.output
    assert "Repaired 1 document(s): 1 replaced" in done.output
    assert metadata.verifierMismatches.count_documents({}) == 0
    assert cluster1.client.app.c2.find_one({"_id": 7}) is not None
