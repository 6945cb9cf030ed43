"""Claims of work in the metadata (copy partitions, verifier ranges) whose answer is lost: the
destination applied the claim and answered with an error (a write concern error as a primary
steps down), and the claim is sent again. The retry must give back the claim already made,
not look for another one and leave that one held by a worker that never knew it had it."""

from __future__ import annotations

from typing import Any

import pymongo

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.state import NamespaceRef, PartitionRecord, VerificationTask

LOST_ANSWERS = {"failCommands": ["findAndModify"], "appName": "pymongosync",
                "writeConcernError": {"code": 64, "errmsg": "injected write concern error"},
                "errorLabels": ["RetryableWriteError"]}


def lose_the_next_answers(destination: EmulatorProcess, times: int) -> None:
    # Twice: PyMongo retries a retryable write once itself, so pymongosync's retry is what
    # sends the claim again (as in campaign seed 12 with CAMPAIGN_ONE_PER_SHARD=1).
    with pymongo.MongoClient(destination.uri) as admin:
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": times},
                            data=LOST_ANSWERS)


def ranges(kind: Any, count: int) -> list[Any]:
    return [kind(id=f"app.items#{index}", namespace=NamespaceRef(db="app", coll="items"),
                 **({"index": index} if kind is PartitionRecord else {}),
                 lower=index * 10, upper=(index + 1) * 10, is_last=index == count - 1)
            for index in range(count)]


def test_a_verifier_range_claimed_again_is_the_one_claimed(
        destination: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    # Campaign seed 12 with CAMPAIGN_ONE_PER_SHARD=1: the retried claim found no unclaimed
    # range left, the hashing thread ended, and the range it held was never hashed: initial
    # hashing never finished and canCommit never came.
    store = clusters[1].verifier_store()
    store.ensure_tasks(ranges(VerificationTask, 1))
    lose_the_next_answers(destination, times=2)
    claimed = store.claim_task("coordinator:verify-0:")
    assert claimed is not None and claimed.id == "app.items#0"
    assert store.claim_task("coordinator:verify-1:") is None  # it is held, by the first


def test_a_partition_claimed_again_is_the_one_claimed(
        destination: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    # Copy threads claim without a lease: a partition whose claim was lost stayed held until
    # the process started again, and the copy never finished.
    store = clusters[1].metadata_store()
    store.add_partitions(ranges(PartitionRecord, 2))
    lose_the_next_answers(destination, times=2)
    claimed = store.claim_partition("coordinator:copy-0:")
    assert claimed is not None and claimed.id == "app.items#0"
    other = store.claim_partition("coordinator:copy-1:")
    assert other is not None and other.id == "app.items#1"
