"""The copy worker's loop over in-memory clusters: a claim taken over after its lease lapsed is
fenced off, a parked worker gives its partition back with its checkpoint, failures are told
to the parent by name."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from bson.max_key import MaxKey
from bson.min_key import MinKey
from pymongo.errors import OperationFailure

from pymongosync.errors import ChangeBufferFull, Stopped
from pymongosync.phases.copy_worker import (
    BatchCopied,
    ClaimLost,
    CopySettings,
    Idle,
    PartitionFinished,
    WorkerEvent,
    copy_partitions,
    describe_failure,
)
from pymongosync.state import (
    CopiedId,
    NamespaceKind,
    NamespaceRecord,
    NamespaceRef,
    PartitionRecord,
    PartitionStatus,
)
from tests.unit.fakes import FakeCluster, MemoryStore

PARTITION = "shop.orders#0"
SETTINGS = CopySettings(batch_documents=10, batch_bytes=1 << 20, claim_lease_seconds=30.0,
                        renew_every_seconds=3600.0, idle_poll_seconds=0.0)


class ScriptedSignals:
    """A parent that lets the worker run until it has nothing to do, then stops it."""

    def __init__(self, on_event: Callable[[ScriptedSignals, WorkerEvent], None] | None = None
                 ) -> None:
        self.events: list[WorkerEvent] = []
        self.is_active = True
        self.stop = False
        self.on_event = on_event

    def stopping(self) -> bool:
        return self.stop

    def active(self) -> bool:
        return self.is_active

    def pause(self, seconds: float) -> None:
        self.stop = True  # idle or parked: nothing more will happen in these tests

    def emit(self, event: WorkerEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(self, event)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def setup() -> tuple[FakeCluster, FakeCluster, MemoryStore, Clock,
                     dict[str, NamespaceRecord]]:
    clock = Clock()
    source, destination = FakeCluster("cluster0"), FakeCluster("cluster1")
    source.insert("shop", "orders", *[{"_id": n, "v": n} for n in range(30)])
    store = MemoryStore(clock=clock)
    namespace = NamespaceRecord(id="shop.orders", db="shop", name="orders",
                                kind=NamespaceKind.COLLECTION)
    store.put_namespace(namespace)
    store.add_partitions([PartitionRecord(id=PARTITION, namespace=NamespaceRef(db="shop",
                                                                               coll="orders"),
                                          index=0, lower=MinKey(), upper=MaxKey(),
                                          is_last=True)])
    return source, destination, store, clock, {namespace.id: namespace}


def run_worker(source: FakeCluster, destination: FakeCluster, store: MemoryStore,
               namespaces: dict[str, NamespaceRecord], owner: str,
               signals: ScriptedSignals) -> None:
    with pytest.raises(Stopped):
        copy_partitions(source, destination, store, namespaces, owner, SETTINGS, signals)


def test_a_worker_whose_claim_lapsed_and_was_taken_over_records_nothing_more() -> None:
    source, destination, store, clock, namespaces = setup()

    def stall_then_take_over(signals: ScriptedSignals, event: WorkerEvent) -> None:
        if isinstance(event, BatchCopied) and store.partition(PARTITION).owner == "w:a":  # type: ignore[union-attr]
            clock.now += datetime.timedelta(seconds=31)  # w:a stalled past its lease
            assert store.claim_partition("w:b", lease_seconds=30) is not None

    signals = ScriptedSignals(stall_then_take_over)
    run_worker(source, destination, store, namespaces, "w:a", signals)

    record = store.partition(PARTITION)
    assert record is not None and record.owner == "w:b"
    # w:a's second batch reached the destination (inserts are idempotent) but its checkpoint
    # was refused: the partition's figures are w:b's to write from the first checkpoint on.
    assert (record.copied_document_count, record.last_copied) == (10, CopiedId(id=9))
    assert [type(event) for event in signals.events] == [
        type(signals.events[0]), BatchCopied, ClaimLost, Idle]
    assert "store.record_partition_progress:shop.orders#0:w:a" in store.journal


def test_a_parked_worker_gives_its_partition_back_and_another_resumes_it() -> None:
    source, destination, store, _, namespaces = setup()

    def park_after_one_batch(signals: ScriptedSignals, event: WorkerEvent) -> None:
        if isinstance(event, BatchCopied):
            signals.is_active = False

    run_worker(source, destination, store, namespaces, "w:a",
               ScriptedSignals(park_after_one_batch))
    parked = store.partition(PARTITION)
    assert parked is not None and parked.owner is None
    assert parked.partition_phase == PartitionStatus.IN_PROGRESS
    assert (parked.copied_document_count, parked.last_copied) == (10, CopiedId(id=9))

    signals = ScriptedSignals()
    run_worker(source, destination, store, namespaces, "w:b", signals)
    done = store.partition(PARTITION)
    assert done is not None and done.partition_phase == PartitionStatus.DONE
    assert done.copied_document_count == 30 and done.owner is None
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")
    assert sum(isinstance(event, BatchCopied) for event in signals.events) == 2
    assert any(isinstance(event, PartitionFinished) for event in signals.events)


def test_batches_are_bounded_by_bytes_as_well_as_documents() -> None:
    source, destination, store, _, namespaces = setup()
    source.insert("shop", "orders", *[{"_id": 100 + n, "blob": "x" * 4000} for n in range(5)])
    signals = ScriptedSignals()
    small = CopySettings(batch_documents=1000, batch_bytes=6000, claim_lease_seconds=None,
                         renew_every_seconds=3600.0, idle_poll_seconds=0.0)
    with pytest.raises(Stopped):
        copy_partitions(source, destination, store, namespaces, "w:a", small, signals)
    sizes = [event.documents for event in signals.events if isinstance(event, BatchCopied)]
    # A batch ends with the document that brings it to 6,000 bytes: the 30 small ones and
    # two large ones, then two large ones, then the last.
    assert sizes == [32, 2, 1]


def test_failures_are_described_by_name_for_the_parent() -> None:
    named = describe_failure(ChangeBufferFull("the buffer is full"), keep=False)
    assert (named.error_type, named.message, named.migration_error) == (
        "ChangeBufferFull", "the buffer is full", True)
    assert named.error is None and "ChangeBufferFull" in named.details
    other = describe_failure(OperationFailure("Document failed validation", code=121),
                             keep=True)
    assert other.error_type == "OperationFailure" and not other.migration_error
    assert other.message == "Document failed validation (code 121)"
    assert isinstance(other.error, OperationFailure)
