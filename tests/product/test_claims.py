"""Writes to the metadata about work (claims, checkpoints and finishes of copy partitions and
verifier ranges) whose answer is lost: the destination applied the write and answered with an
error (a write concern error as a primary steps down), and the write is sent again. A claim
sent again must give back the claim already made, not look for another one and leave that one
held by a worker that never knew it had it; a count sent again must count once."""

from __future__ import annotations

from typing import Any

import pymongo

from mongoemu.testing import EmulatorProcess
from pymongosync.clusters import Cluster
from pymongosync.state import NamespaceRef, PartitionRecord, VerificationTask

LOST_ANSWERS = {"failCommands": ["findAndModify"], "appName": "pymongosync",
                "writeConcernError": {"code": 64, "errmsg": "injected write concern error"},
                "errorLabels": ["RetryableWriteError"]}


def lose_the_next_answers(destination: EmulatorProcess, times: int,
                          command: str = "findAndModify") -> None:
    # Twice: PyMongo retries a retryable write once itself, so pymongosync's retry is what
    # sends the claim again (as in campaign seed 12 with CAMPAIGN_ONE_PER_SHARD=1).
    with pymongo.MongoClient(destination.uri) as admin:
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": times},
                            data={**LOST_ANSWERS, "failCommands": [command]})


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


def test_a_checkpoint_sent_again_counts_its_batch_once(
        destination: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    # The checkpoint added the batch to the partition's counts: each time it was sent, the
    # batch was counted again, and /progress showed more documents copied than there were.
    store = clusters[1].metadata_store()
    store.add_partitions(ranges(PartitionRecord, 1))
    assert store.claim_partition("coordinator:copy-0:") is not None
    lose_the_next_answers(destination, times=2, command="update")
    assert store.record_partition_progress("app.items#0", "coordinator:copy-0:", 4, 5, 500)
    recorded = store.partition("app.items#0")
    assert recorded is not None
    assert (recorded.copied_document_count, recorded.copied_byte_count) == (5, 500)
    assert store.copy_totals().copied_documents == 5


def test_a_finished_range_sent_again_is_hashed_once(
        destination: EmulatorProcess, clusters: tuple[Cluster, Cluster]) -> None:
    # A finished range was added to a running total beside its record: sent again, it was
    # counted again in verification.*.hashedDocumentCount.
    store = clusters[1].verifier_store()
    store.ensure_tasks(ranges(VerificationTask, 2))
    task = store.claim_task("coordinator:verify-0:")
    assert task is not None
    lose_the_next_answers(destination, times=2, command="update")
    store.finish_task(task.id, 10, 9)
    summary = store.task_summary()
    assert (summary.done, summary.hashed_source, summary.hashed_destination) == (1, 10, 9)
