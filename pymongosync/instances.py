"""One mongosync per source shard (spec §3.9, §12.1): which instance this process is, and what
the instances of one migration read of each other.

Each process of a multi-instance migration is started with ``--id <shardId>`` (an ``_id`` of
the source's ``listShards``) against the same mongos URIs, and gets the same ``/start``. The
first shard id (in ``listShards`` order) is the **coordinator**: its ``resumeData`` has
``_id: "coordinator"``, every other instance's has its shard id. They share the destination's
metadata and meet only there:

- the coordinator prepares the destination and plans every partition, each assigned to an
  instance (a chunk of a collection sharded on ``_id`` to the instance of the shard that owns
  it); the others wait for the plan, then every instance copies its own partitions;
- every instance applies its shard's change stream (read through the router with MongoDB's
  per-shard cursor) — CRUD events only. DDL events are the coordinator's: it reads them from
  the router's stream and applies each one once every instance has applied its shard's
  events before it (``applied_before``), while every instance holds back its events from the
  pending DDL event on (``ddl_pending``) and past what the coordinator has seen
  (``ddl_seen_through``). Order across shards is the cluster time's, as the router gives it;
- ``/commit`` is a barrier: each instance records its request; the coordinator blocks the
  source's writes once all have, and fixes the commit time; each instance drains its shard to
  it (``commit_drained``); the coordinator then finishes the cut-over and every instance
  reports COMMITTED.

A lone instance (no ``--id``) drives the whole migration as before; its ``instances`` list is
empty and none of this applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bson.timestamp import Timestamp

from pymongosync.cluster_client import ClusterClient
from pymongosync.errors import InstanceMismatch, Stopped
from pymongosync.state import COORDINATOR, GlobalState, MigrationState, ResumeData
from pymongosync.store import MAIN_STREAM, MigrationStore

# How often an instance waiting for the others reads their records.
POLL_SECONDS = 0.2
# The coordinator's buffered DDL stream (store.MAIN_STREAM is a lone instance's).
DDL_STREAM = "ddl"


@dataclass(frozen=True)
class InstanceLayout:
    """The instances of a migration and which one this process is."""

    instances: tuple[str, ...] = ()  # the source's shard ids; empty: one instance
    me: str | None = None  # --id

    @property
    def multi(self) -> bool:
        return bool(self.instances)

    @property
    def coordinator(self) -> str:
        return self.instances[0] if self.instances else COORDINATOR

    @property
    def is_coordinator(self) -> bool:
        return not self.instances or self.me == self.coordinator

    def resume_id(self, instance: str | None = None) -> str:
        """The ``_id`` of an instance's ``resumeData`` (this one's by default)."""
        instance = self.me if instance is None else instance
        if not self.instances or instance == self.coordinator:
            return COORDINATOR
        assert instance is not None
        return instance

    @property
    def resume_ids(self) -> list[str]:
        return [self.resume_id(instance) for instance in self.instances] or [COORDINATOR]

    @property
    def stream(self) -> str:
        """The name this instance's change buffer is stored under."""
        return self.me if self.instances and self.me is not None else MAIN_STREAM

    @property
    def shard(self) -> str | None:
        """The shard whose change stream this instance reads (None: the whole cluster)."""
        return self.me if self.instances else None


def layout_for_start(source: ClusterClient, shard_ids: list[str],
                     instance_id: str | None) -> InstanceLayout:
    """The layout of a migration ``/start`` begins on this process (``shard_ids``: the
    source's shards, empty for a replica set)."""
    if instance_id is None:
        return InstanceLayout()
    if not source.is_sharded:
        raise InstanceMismatch(
            f"this process was started with --id {instance_id}, but the source "
            f"{source.label} is a replica set, which one instance migrates: start mongosync "
            f"without --id")
    if instance_id not in shard_ids:
        raise InstanceMismatch(
            f"--id {instance_id} is not a shard of the source {source.label} (its shards: "
            f"{', '.join(shard_ids)}): start one mongosync per source shard, each with "
            f"--id <shard id> as db.adminCommand({{listShards: 1}}) names it")
    return InstanceLayout(tuple(shard_ids), instance_id)


def layout_of_stored(global_state: GlobalState, instance_id: str | None,
                     shard_ids: list[str] | None) -> InstanceLayout:
    """The layout of a stored migration as this process joins it; refused when the process's
    --id does not fit it or the source's shards have changed since /start."""
    stored = tuple(global_state.instances)
    if not stored:
        if instance_id is not None:
            raise InstanceMismatch(
                f"the migration on this destination is driven by one instance, but this "
                f"process was started with --id {instance_id}: start it without --id")
        return InstanceLayout()
    if instance_id is None:
        raise InstanceMismatch(
            f"the migration on this destination runs one mongosync per source shard "
            f"({', '.join(stored)}): start this process with --id <shard id>, one process "
            f"per shard")
    if instance_id not in stored:
        raise InstanceMismatch(
            f"--id {instance_id} is not one of this migration's instances "
            f"({', '.join(stored)}): start one mongosync per source shard with its shard id")
    if shard_ids is not None and tuple(shard_ids) != stored:
        raise InstanceMismatch(
            f"the source's shards are now {', '.join(shard_ids) or 'none'}, not "
            f"{', '.join(stored)} as when this migration started: the number of instances "
            f"must equal the number of source shards, which must not change during a "
            f"migration; reset the destination and start again")
    return InstanceLayout(stored, instance_id)


class InstanceGroup:
    """What this instance reads of the others, from the shared metadata."""

    def __init__(self, store: MigrationStore, layout: InstanceLayout) -> None:
        self.store = store
        self.layout = layout

    def resumes(self) -> dict[str, ResumeData]:
        """Each instance's record, by instance id (missing: it has not received /start)."""
        found = self.store.resume_records()
        return {instance: found[self.layout.resume_id(instance)]
                for instance in self.layout.instances
                if self.layout.resume_id(instance) in found}

    def coordinator(self) -> ResumeData | None:
        return self.store.resume_records().get(COORDINATOR)

    def missing(self) -> list[str]:
        """Instances that have not received /start yet."""
        found = self.resumes()
        return [instance for instance in self.layout.instances if instance not in found]

    def all_copied(self) -> bool:
        return self.copies_finished() is not None

    def copies_finished(self) -> Timestamp | None:
        """When the last instance finished its copy (None until every one has)."""
        found = self.resumes()
        times = [resume.copy_finished_time for resume in found.values()]
        if len(found) < len(self.layout.instances) or None in times:
            return None
        return max(finished for finished in times if finished is not None)

    def applied_before(self) -> Timestamp | None:
        """The earliest point every instance has applied its shard's events up to."""
        found = self.resumes()
        if len(found) < len(self.layout.instances) or any(
                resume.applied_before is None for resume in found.values()):
            return None
        return min(resume.applied_before for resume in found.values()
                   if resume.applied_before is not None)

    def commit_requested_by_all(self) -> bool:
        found = self.resumes()
        return len(found) == len(self.layout.instances) and all(
            resume.state in (MigrationState.COMMITTING, MigrationState.COMMITTED)
            for resume in found.values())

    def drained_by_all(self) -> bool:
        found = self.resumes()
        return len(found) == len(self.layout.instances) and all(
            resume.commit_drained for resume in found.values())

    def wait(self, condition: Callable[[], bool], stop: Callable[[], bool]) -> None:
        """Poll the shared records until ``condition``; :class:`Stopped` when ``stop``."""
        while not condition():
            if stop():
                raise Stopped()
            time.sleep(POLL_SECONDS)
