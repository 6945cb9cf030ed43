"""``mongosync verify``: the verifier's comparison as a command, for a check after the fact —
of a migration by pymongosync or by any other tool.

It only reads the two clusters. Its progress is kept in a local SQLite file, so an
interrupted run goes on with the ranges not yet compared (``--fresh`` starts over). Each
collection of the source is split into ``_id`` ranges as the copy would split it; each range is
hashed on both sides; every ``_id`` that differs is read again on both sides before it is
reported; then collections, indexes and views are compared.
"""

from __future__ import annotations

import datetime
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

from pymongosync.cluster_client import ClusterClient
from pymongosync.namespaces import NamespaceFilter
from pymongosync.phases.plan import SAMPLES_PER_PARTITION, partition_count, plan_partitions
from pymongosync.state import (
    Mismatch,
    NamespaceRef,
    TaskStatus,
    VerificationPhase,
    VerificationTask,
    VerifierState,
)
from pymongosync.verifier.compare import (
    compare_documents,
    compare_metadata,
    compare_range,
    user_namespaces,
)
from pymongosync.verifier.store import TaskSummary, summarize

_VALUES: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
RECHECK_BATCH = 500


def _pack(value: Any) -> bytes:
    return bson.encode({"v": value})


def _unpack(data: bytes) -> Any:
    return bson.decode(data, codec_options=_VALUES)["v"]


class LocalVerifierStore:
    """The :class:`pymongosync.verifier.store.TaskStore` of ``mongosync verify``: a SQLite
    file (values kept as BSON, so every ``_id`` type survives)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1),
                                              document BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, document BLOB NOT NULL,
                                              status TEXT NOT NULL, owner TEXT);
            CREATE TABLE IF NOT EXISTS mismatches (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                                   document BLOB NOT NULL);
        """)

    def close(self) -> None:
        self.db.close()

    def _execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, tuple(parameters)).fetchall()

    def load_state(self) -> VerifierState | None:
        rows = self._execute("SELECT document FROM state WHERE id = 1")
        return None if not rows else VerifierState.from_document(_unpack(rows[0][0]))

    def save_state(self, state: VerifierState, *fields: str) -> None:
        self._execute("INSERT OR REPLACE INTO state (id, document) VALUES (1, ?)",
                      [_pack(state.to_document())])

    def add_counts(self, rechecked: int = 0, rehashed: int = 0) -> None:
        state = self.load_state() or VerifierState()
        state.rechecked_documents += rechecked
        state.rehashed_documents += rehashed
        self.save_state(state)

    def ensure_tasks(self, tasks: Iterable[VerificationTask]) -> None:
        for task in tasks:
            self._execute("INSERT OR IGNORE INTO tasks (id, document, status, owner) "
                          "VALUES (?, ?, ?, NULL)",
                          [task.id, _pack(task.to_document()), task.status.value])

    def _task(self, task_id: str) -> VerificationTask:
        rows = self._execute("SELECT document, status, owner FROM tasks WHERE id = ?", [task_id])
        document, status, owner = rows[0]
        return VerificationTask.from_document({**_unpack(document), "status": status,
                                               "owner": owner})

    def claim_task(self, owner: str) -> VerificationTask | None:
        with self._lock:
            rows = self.db.execute("SELECT id FROM tasks WHERE status = ? AND owner IS NULL "
                                   "ORDER BY id LIMIT 1", (TaskStatus.PENDING.value,)).fetchall()
            if not rows:
                return None
            self.db.execute("UPDATE tasks SET owner = ? WHERE id = ?", (owner, rows[0][0]))
        return self._task(rows[0][0])

    def task_progress(self, task_id: str, source: int, destination: int) -> None:
        """Nothing to keep: an interrupted range is compared again from its start."""

    def finish_task(self, task_id: str, source: int, destination: int) -> None:
        task = self._task(task_id)
        task.hashed_source, task.hashed_destination = source, destination
        self._execute("UPDATE tasks SET document = ?, status = ?, owner = NULL WHERE id = ?",
                      [_pack(task.to_document()), TaskStatus.DONE.value, task_id])

    def release_claims(self, owner_prefix: str) -> None:
        self._execute("UPDATE tasks SET owner = NULL WHERE owner LIKE ?", [owner_prefix + "%"])

    def task_summary(self) -> TaskSummary:
        ids = [row[0] for row in self._execute("SELECT id FROM tasks")]
        return summarize(self._task(task_id) for task_id in ids)

    def add_mismatches(self, mismatches: list[Mismatch]) -> None:
        for mismatch in mismatches:
            stamped = mismatch.model_copy(update={"at": mismatch.at or
                                                  datetime.datetime.now(datetime.UTC)})
            self._execute("INSERT INTO mismatches (document) VALUES (?)",
                          [_pack(stamped.to_document())])

    def mismatches(self, limit: int = 0) -> list[Mismatch]:
        sql = "SELECT document FROM mismatches ORDER BY seq"
        rows = self._execute(sql + (f" LIMIT {int(limit)}" if limit else ""))
        return [Mismatch.from_document(_unpack(row[0])) for row in rows]

    def mismatch_count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM mismatches")[0][0])

    def clear(self) -> None:
        self._execute("DELETE FROM state")
        self._execute("DELETE FROM tasks")
        self._execute("DELETE FROM mismatches")


@dataclass
class VerifyReport:
    equal: bool
    documents: int
    collections: int
    mismatches: int
    first: list[Mismatch] = field(default_factory=list)
    resumed: bool = False


def verify(source: ClusterClient, destination: ClusterClient, store: LocalVerifierStore, *,
           namespace_filter: NamespaceFilter | None = None,
           on_progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Compare the clusters; ``on_progress(documents)`` after each range."""
    state = store.load_state()
    identity = {"source": source.hosts, "destination": destination.hosts}
    resumed = state is not None
    if state is None:
        state = VerifierState(phase=VerificationPhase.INITIAL_HASHING, clusters=identity)
        store.save_state(state)
        store.ensure_tasks(_plan(source, namespace_filter))
    elif state.clusters != identity:
        raise ValueError(f"the state file {store.path} belongs to a check of other clusters "
                         f"({state.clusters}); use --fresh or another --state file")
    store.release_claims("")
    while (task := store.claim_task("verify")) is not None:
        db, coll = task.namespace.db, task.namespace.coll
        hashed = compare_range(source, destination, db, coll, task.lower,
                               None if task.is_last else task.upper)
        for start in range(0, len(hashed.differing), RECHECK_BATCH):
            found = compare_documents(source, destination, db, coll,
                                      hashed.differing[start:start + RECHECK_BATCH])
            store.add_mismatches([difference.mismatch() for difference in found])
        store.finish_task(task.id, hashed.source_documents, hashed.destination_documents)
        if on_progress is not None:
            on_progress(hashed.source_documents)
    state = store.load_state() or state
    if state.phase != VerificationPhase.STREAM_HASHING:  # metadata: once, after the ranges
        store.add_mismatches(compare_metadata(user_namespaces(source, namespace_filter),
                                              user_namespaces(destination, namespace_filter)))
        state.phase = VerificationPhase.STREAM_HASHING
        store.save_state(state)
    summary = store.task_summary()
    count = store.mismatch_count()
    return VerifyReport(equal=count == 0, documents=summary.hashed_source,
                        collections=summary.collections, mismatches=count,
                        first=store.mismatches(20), resumed=resumed)


def _plan(source: ClusterClient, namespace_filter: NamespaceFilter | None
          ) -> list[VerificationTask]:
    tasks: list[VerificationTask] = []
    for namespace in user_namespaces(source, namespace_filter):
        if not namespace.is_collection:
            continue
        count = partition_count(namespace)
        sampled = [] if count == 1 else source.sample_ids(namespace.db, namespace.name,
                                                         count * SAMPLES_PER_PARTITION)
        for partition in plan_partitions(namespace, sampled):
            tasks.append(VerificationTask(
                id=partition.id, namespace=NamespaceRef(db=namespace.db, coll=namespace.name),
                lower=partition.lower, upper=partition.upper, is_last=partition.is_last,
                estimated_documents=partition.estimated_document_count))
    return tasks


