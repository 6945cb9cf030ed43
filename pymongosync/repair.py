"""``mongosync repair``: a migration whose final verification found documents that differ is
finished without starting over.

When the embedded verifier finds, during commit, documents that differ between the clusters
(missing on the destination, extra there, or different: written behind the tool's back, or lost
by a defect), the migration fails with ``VerificationFailed`` and the destination stays
write-blocked. mongosync's answer, and every peer's, is to wipe the destination and migrate
again. Yet at that point every source change up to the commit time is applied and the source
is write-blocked (``sourceAndDestination``, the default), so the documents to have are the
source's own. Repair takes exactly the reported documents from the source, and puts them up to
be compared again:

- :func:`plan_repair` reads the stored migration and the verifier's report, changing nothing;
  it refuses (:class:`RepairError`) while a process still holds the migration's lease, when the
  migration did not fail with the verifier's mismatches (a cluster changed after the final
  verification began: writes after the commit time cannot be taken back), when a mismatch is
  not a document's (an index, an option, a view, a shard key, a collection: repair takes
  documents, never metadata), or when a reported document's collection is missing on either
  cluster;
- :func:`apply_repair` replaces each reported document on the destination with the source's
  bytes (deleted first, then inserted as the source has it: an ``_id`` equal by value but of
  another type is replaced too), or deletes it where the source has none; records each one
  (``verifierRepairs``), queues it as a recheck, clears the report and the stored error. Every
  step is idempotent: an interrupted repair is run again.

Started again with the same flags, mongosync continues the commit: the final verification
runs again over every pending recheck (the repaired documents among them), and the migration
commits only if the clusters are then equal. Nothing else is trusted to the repair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from pymongosync.cluster_client import Delete, Upsert, Write
from pymongosync.clusters import Cluster, redact
from pymongosync.errors import RepairError, VerificationFailed
from pymongosync.identity import id_key
from pymongosync.leftovers import blocked_word, write_blocked
from pymongosync.reset import refuse_if_live, talking_to
from pymongosync.state import (
    DOCUMENT_KINDS,
    Mismatch,
    MismatchKind,
    Recheck,
    RecheckKey,
    Repair,
    VerificationPhase,
)
from pymongosync.store import StoredMigration, now
from pymongosync.verifier.store import MetadataVerifierStore

BATCH = 500  # documents read from the source at a time
SHOWN = 10  # documents the plan names


@dataclass
class RepairPlan:
    """What a repair will do, decided before anything changes."""

    source: Cluster
    destination: Cluster
    record: StoredMigration
    tally: dict[tuple[str, str], int]  # (namespace, kind) → documents, from the report
    first: list[Mismatch]  # the report's first documents, to show
    source_write_blocked: bool | None
    notes: list[str] = field(default_factory=list)

    @property
    def commit_time(self) -> Timestamp:
        commit_time = self.record.resume.commit_time
        assert commit_time is not None  # checked by plan_repair
        return commit_time

    @property
    def documents(self) -> int:
        return sum(self.tally.values())

    @property
    def namespaces(self) -> list[str]:
        return sorted({namespace for namespace, _ in self.tally})

    def describe(self) -> str:
        stored = self.record.global_state
        lines = [f"Migration {stored.migration_id}: {stored.source_label} → "
                 f"{stored.destination_label}, failed during commit: "
                 f"{stored.error.name if stored.error else 'no error'}",
                 f"Source {self.source.label}: writes {blocked_word(self.source_write_blocked)}"]
        if not self.tally:
            lines.append("The verifier's report is empty (an earlier repair took every document "
                         "in it).")
        else:
            lines.append(f"The verifier found {self.documents} document(s) that differ:")
            for namespace in self.namespaces:
                counts = ", ".join(f"{self.tally[(namespace, kind)]} {kind}" for kind in
                                   sorted(k for ns, k in self.tally if ns == namespace))
                lines.append(f"  {namespace}: {counts}")
            for mismatch in self.first:
                assert mismatch.document_id is not None
                lines.append(f"    {mismatch.namespace} _id {mismatch.document_id.id!r}: "
                             f"{mismatch.kind.value}")
            if self.documents > len(self.first):
                lines.append(f"    ... and {self.documents - len(self.first)} more")
        lines += [
            "Plan:",
            f"  1. take each of these documents from {self.source.label} as it is now (as of "
            f"the commit time, while its writes are blocked): replace it on "
            f"{self.destination.label}, or delete it there where {self.source.label} has none",
            "  2. record each one (verifierRepairs) and queue it to be compared again",
            "  3. clear the verifier's report and the migration's error",
            "Then start mongosync again with the same flags: it continues the commit, verifies "
            "again, and commits only if the clusters are equal.",
        ]
        if self.notes:
            lines.append("Notes:")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class RepairReport:
    replaced: int
    deleted: int

    def describe(self) -> str:
        return (f"Repaired {self.replaced + self.deleted} document(s): {self.replaced} replaced "
                f"with the source's, {self.deleted} deleted. Start mongosync again with the "
                f"same flags to finish the commit.")


# -- planning ------------------------------------------------------------------------------------
def plan_repair(cluster0: Cluster, cluster1: Cluster) -> RepairPlan:
    """Decide what a repair does, changing nothing."""
    clusters = {"cluster0": cluster0, "cluster1": cluster1}
    if cluster0.hosts == cluster1.hosts:
        raise RepairError(f"--cluster0 and --cluster1 are the same cluster "
                          f"({', '.join(cluster0.hosts)}); give the source and the destination")
    records = _load(clusters)
    refuse_if_live(clusters, records, command="repair", error=RepairError)
    live = {label: record for label, record in records.items()
            if record is not None and not record.global_state.superseded_by}
    if len(live) != 1:
        raise RepairError(
            "no migration to repair: neither cluster holds the metadata of a migration"
            if not live else "both clusters hold the metadata of a running migration; repair "
            "one migration at a time. Nothing was changed")
    ((label, record),) = live.items()
    stored = record.global_state
    if stored.destination_label != label:
        raise RepairError(f"the migration metadata found on {label} names "
                          f"{stored.destination_label} as its destination: give --cluster0 and "
                          f"--cluster1 as when the migration was started. Nothing was changed")
    for stored_label, hosts in stored.cluster_hosts.items():
        if hosts and sorted(hosts) != clusters[stored_label].hosts:
            raise RepairError(f"the migration stored on {label} was started with "
                              f"{stored_label} = {', '.join(hosts)}, not "
                              f"{', '.join(clusters[stored_label].hosts)}; give --cluster0 and "
                              f"--cluster1 as when it was started. Nothing was changed")
    source, destination = clusters[stored.source_label], clusters[label]
    _check_failed_verification(record, destination)
    with talking_to(destination, error=RepairError):
        store = destination.verifier_store()
        tally = store.mismatch_tally()
        _check_documents_only(tally, store)
        first = store.mismatches(SHOWN)
    plan = RepairPlan(source=source, destination=destination, record=record, tally=tally,
                      first=first, source_write_blocked=write_blocked(source))
    _check_collections(plan)
    if plan.source_write_blocked is not True:
        plan.notes.append(
            f"writes on {source.label} are {blocked_word(plan.source_write_blocked)}: a write "
            f"made there since the commit time fails the commit again (the final verification "
            f"refuses changes after it), and is not taken back")
    return plan


def _load(clusters: dict[str, Cluster]) -> dict[str, StoredMigration | None]:
    records: dict[str, StoredMigration | None] = {}
    for label, cluster in clusters.items():
        with talking_to(cluster, error=RepairError):
            records[label] = cluster.metadata_store().load()
    return records


def _check_failed_verification(record: StoredMigration, destination: Cluster) -> None:
    """The migration failed in its final verification, on documents, during commit."""
    error = record.global_state.error
    if error is None or error.name != VerificationFailed.name:
        raise RepairError(
            f"the migration has not failed verification (state {record.resume.state.value}"
            f"{f', error {error.name}' if error else ''}): repair only finishes a migration "
            f"whose final verification found documents that differ. Nothing was changed")
    resume = record.resume
    if resume.commit_time is None or resume.can_write:
        raise RepairError("the migration did not fail during its commit's final verification; "
                          "nothing to repair. Nothing was changed")
    with talking_to(destination, error=RepairError):
        verifier = destination.verifier_store().load_state()
    if verifier is None or verifier.verdict != "mismatches":
        raise RepairError(
            f"the verifier did not find documents that differ: the migration failed with "
            f"\"{error.message}\". Writes made to a cluster after the final verification began "
            f"cannot be taken back by a repair: run `mongosync reset` and migrate again. "
            f"Nothing was changed")


def _check_documents_only(tally: dict[tuple[str, str], int],
                          store: MetadataVerifierStore) -> None:
    others = sum(count for (_, kind), count in tally.items() if kind not in DOCUMENT_KINDS)
    if others:
        shown = "; ".join(f"{mismatch.namespace}: {mismatch.kind.value}"
                          f"{f' ({mismatch.detail})' if mismatch.detail else ''}"
                          for mismatch in store.mismatches()
                          if mismatch.kind not in DOCUMENT_KINDS)  # few: metadata, not data
        raise RepairError(
            f"the verifier found {others} difference(s) in metadata, which repair does not "
            f"change (it takes documents only): {shown}. Run `mongosync reset` and migrate "
            f"again. Nothing was changed")


def _check_collections(plan: RepairPlan) -> None:
    """Each reported document's collection exists on both clusters: a write into a missing
    one would create it without the source's options and indexes."""
    for namespace in plan.namespaces:
        db, coll = namespace.split(".", 1)
        for cluster in (plan.source, plan.destination):
            with talking_to(cluster, error=RepairError):
                present = cluster.collection_infos(db, coll)
            if not present:
                raise RepairError(
                    f"{namespace} does not exist on {cluster.label}: the difference is a whole "
                    f"collection, which repair does not create or drop. Run `mongosync reset` "
                    f"and migrate again. Nothing was changed")


# -- applying ------------------------------------------------------------------------------------
def apply_repair(plan: RepairPlan) -> RepairReport:
    """Carry the plan out, after checking no process started and the migration is the same."""
    clusters = {cluster.label: cluster for cluster in (plan.source, plan.destination)}
    records = _load(clusters)
    refuse_if_live(clusters, records, command="repair", error=RepairError)
    now_record = records[plan.destination.label]
    if now_record is None or now_record.global_state.migration_id != \
            plan.record.global_state.migration_id or now_record.global_state.error is None:
        raise RepairError("the migration metadata changed since the plan was made (a mongosync "
                          "process started?); run repair again to see the new plan. Nothing was "
                          "changed")
    report = RepairReport(replaced=0, deleted=0)
    store = plan.destination.verifier_store()
    try:
        for batch in store.mismatch_batches(BATCH):
            by_namespace: dict[str, list[Mismatch]] = defaultdict(list)
            for mismatch in batch:
                by_namespace[mismatch.namespace].append(mismatch)
            for namespace, mismatches in by_namespace.items():
                replaced, deleted = _repair_batch(plan, store, namespace, mismatches)
                report.replaced += replaced
                report.deleted += deleted
        store.clear_mismatches()
        state = store.load_state()
        if state is not None:
            state.phase, state.verdict = VerificationPhase.STREAM_HASHING, None
            store.save_state(state, "phase", "verdict")
        plan.destination.metadata_store().clear_error()
    except PyMongoError as exc:
        raise RepairError(f"repair failed: {redact(str(exc))}. "
                          f"{report.replaced + report.deleted} document(s) were repaired before "
                          f"that; repair is safe to run again") from None
    return report


def _repair_batch(plan: RepairPlan, store: MetadataVerifierStore, namespace: str,
                  mismatches: list[Mismatch]) -> tuple[int, int]:
    """One batch of a namespace's reported documents: written, queued, recorded."""
    db, coll = namespace.split(".", 1)
    kinds: dict[Hashable, MismatchKind] = {}
    ids: list[Any] = []
    for mismatch in mismatches:
        assert mismatch.document_id is not None  # document kinds carry one (checked)
        value = id_key(mismatch.document_id.id)
        if value not in kinds:  # reported twice (a final verification run again): once
            kinds[value] = mismatch.kind
            ids.append(mismatch.document_id.id)
    current = {id_key(document["_id"]): document
               for document in plan.source.find_by_ids(db, coll, ids)}
    writes: list[Write] = []
    repairs: list[Repair] = []
    at = now()
    for document_id in ids:
        # Deleted first: a replacement keeps the destination's _id, which may be equal by
        # value but not by type (1.0 for 1); the source's document then goes in as it is.
        writes.append(Delete({"_id": document_id}))
        document = current.get(id_key(document_id))
        if document is not None:
            writes.append(Upsert({"_id": document_id}, document))
        repairs.append(Repair(key=RecheckKey(ns=namespace, id=document_id),
                              kind=kinds[id_key(document_id)],
                              action="deleted" if document is None else "replaced", at=at))
    plan.destination.write(db, coll, writes)
    store.add_rechecks([Recheck(key=repair.key, due=plan.commit_time) for repair in repairs])
    store.add_repairs(repairs)
    replaced = sum(repair.action == "replaced" for repair in repairs)
    return replaced, len(repairs) - replaced
