"""Builders shared by the unit tests: requests, stored migrations, phase contexts, and the
first release's metadata layout."""

from __future__ import annotations

import datetime
import threading
from typing import Any

from bson.int64 import Int64
from bson.min_key import MinKey
from bson.timestamp import Timestamp

from pymongosync.namespaces import NamespaceFilter
from pymongosync.phases.context import PhaseContext
from pymongosync.request import StartRequest
from pymongosync.state import GlobalState, MigrationState, Phase, ResumeData
from pymongosync.store import MigrationStore
from tests.unit.fakes import FakeCluster, MemoryStore

CREATED_AT = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def request(**fields: Any) -> StartRequest:
    return StartRequest.from_document({"source": "cluster0", "destination": "cluster1", **fields})


def namespace_filter(**fields: Any) -> NamespaceFilter:
    return request(**fields).namespace_filter()


def global_state(start_request: StartRequest, start_time: Timestamp,
                 **fields: Any) -> GlobalState:
    return GlobalState(migration_id="m-1", created_at=CREATED_AT,
                       request=start_request.to_document(), source_label=start_request.source,
                       destination_label=start_request.destination,
                       cluster_hosts={"cluster0": ["fake0:27017"],
                                      "cluster1": ["fake1:27017"]},
                       change_stream_start_time=start_time, **fields)


def resume_data(state: MigrationState = MigrationState.RUNNING,
                phase: Phase = Phase.PREPARE) -> ResumeData:
    return ResumeData(state=state, phase=phase, sync_phase=phase.label)


class InstantEvent(threading.Event):
    """A stop signal whose ``wait`` does not wait: the runner's pause between retries and
    the applier's pause after a stream error cost nothing in unit tests."""

    def wait(self, timeout: float | None = None) -> bool:
        return self.is_set()


def make_context(source: FakeCluster, destination: FakeCluster,
                 store: MigrationStore | None = None, *, phase: Phase = Phase.PREPARE,
                 state: MigrationState = MigrationState.RUNNING,
                 start_time: Timestamp | None = None, load_level: int = 3,
                 **request_fields: Any) -> PhaseContext:
    """A migration stored in ``store`` (the destination's by default), as a context."""
    start_request = request(**request_fields)
    store = store if store is not None else destination.metadata_store()
    stored = store.create(
        global_state(start_request, start_time or source.cluster_time()),
        resume_data(state, phase))
    context = PhaseContext.build(source, destination, store, stored.global_state, stored.resume,
                                 load_level=load_level)
    context.stop = InstantEvent()
    return context


def pair() -> tuple[FakeCluster, FakeCluster, MemoryStore, list[str]]:
    """A source, a destination and the destination's store, sharing one journal."""
    journal: list[str] = []
    source = FakeCluster("cluster0", hosts=["fake0:27017"], journal=journal)
    destination = FakeCluster("cluster1", hosts=["fake1:27017"], journal=journal,
                              start_time=1_800_000_000)
    return source, destination, destination.metadata_store(), journal


# -- the first release's layout (schema version 1), as its engine and metadata modules wrote it ----


def v1_migration_document() -> dict[str, Any]:
    """``migration`` as the first release left it mid-way through change event application."""
    return {
        "_id": "migration", "migrationId": "v1-migration",
        "createdAt": CREATED_AT, "updatedAt": CREATED_AT,
        "request": {"source": "cluster0", "destination": "cluster1",
                    "buildIndexes": "afterDataCopy", "detectRandomId": True,
                    "preExistingDestinationData": False, "reversible": False,
                    "skipDiskSpaceCheck": False, "verification": {"enabled": True}},
        "sourceLabel": "cluster0", "destinationLabel": "cluster1",
        "clusterHosts": {"cluster0": ["a:1"], "cluster1": ["b:2"]},
        "state": "RUNNING", "phase": "change event application",
        "changeStreamStartTime": Timestamp(1_700_000_000, 3),
        "resumeToken": {"_data": "8265536580000000052B0229296E04"},
        "counters": {"eventsApplied": Int64(1234)},
        "writeBlocking": "sourceAndDestination",
        "destinationWriteBlockedByUs": True,
        "balancersStoppedByUs": {"source": True},
        "copyFinishedTime": Timestamp(1_700_000_100, 1),
        "lastAppliedTime": Timestamp(1_700_000_200, 7),
        "heartbeat": {"owner": "host:42", "at": CREATED_AT},
    }


def v1_partition_documents() -> list[dict[str, Any]]:
    """Two partitions as the first release planned and copied them."""
    return [
        {"_id": "shop.orders#0", "namespace": "shop.orders", "db": "shop",
         "collection": "orders", "index": 0, "lower": MinKey(), "upper": Int64(500),
         "last": False, "natural": False, "status": "done", "lastId": Int64(499),
         "copiedDocuments": 500, "copiedBytes": 50_000, "estimatedDocuments": 500,
         "estimatedBytes": 50_000},
        {"_id": "shop.orders#1", "namespace": "shop.orders", "db": "shop",
         "collection": "orders", "index": 1, "lower": Int64(500), "upper": "zzz",
         "last": True, "natural": False, "status": "in progress", "lastId": None,
         "copiedDocuments": 0, "copiedBytes": 0, "estimatedDocuments": 500,
         "estimatedBytes": 50_000},
    ]
