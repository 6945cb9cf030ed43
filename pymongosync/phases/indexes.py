"""Index builds, beside change application.

With ``afterDataCopy`` (the default) and ``excludeHashedAfterCopy``, the source's indexes are
built on the destination once the copy has finished, in their temporary form (spec §6). They
are built while change events are applied — not in a phase of their own before it, when lag
grew unseen — the largest collections first (their builds take longest),
``--createIndexesBatchSize`` indexes per command. ``/progress`` shows them
(``indexBuilding``), ``Index creation progress`` log lines follow them, and ``canCommit``
waits for them, as mongosync does.

:class:`BuildIndexes` is the phase of the first release's layout, kept so that a migration
stored in it moves on; its work is now the builder's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pymongo.errors import PyMongoError

from pymongosync import catalog
from pymongosync.errors import InternalError, MigrationError, Stopped
from pymongosync.phases.context import PhaseContext, PhaseStep
from pymongosync.progress import IndexFigures
from pymongosync.retry import is_transient
from pymongosync.state import NamespaceRecord, Phase

log = logging.getLogger("pymongosync.indexes")


def builds_after_copy(context: PhaseContext) -> bool:
    return context.request.buildIndexes in ("afterDataCopy", "excludeHashedAfterCopy")


class IndexBuilder:
    """Builds the indexes on a thread of its own; restarts skip what is built already."""

    def __init__(self, context: PhaseContext) -> None:
        self.context = context
        self.figures = IndexFigures(done=context.resume.index_builds_done)
        self.error: MigrationError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.figures.done:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="index-builds", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.build()
                return
            except Stopped:
                return
            except MigrationError as exc:
                self._failed(exc)
                return
            except PyMongoError as exc:
                if not is_transient(exc):
                    self._failed(InternalError(f"index builds failed: {exc}"))
                    return
                log.warning("index builds: transient error, retrying: %s", exc)
                self._stop.wait(1.0)
            except Exception as exc:  # handed to the apply phase, which records it
                log.exception("index builds failed")
                self._failed(InternalError(f"index builds failed: {type(exc).__name__}: {exc}"))
                return

    def _failed(self, error: MigrationError) -> None:
        self.error = error
        self.context.stop.set()  # change application stops; its phase raises the error

    def build(self) -> None:
        """Build every missing index, on the calling thread."""
        context = self.context
        if context.layout.multi:
            # One instance per source shard: the indexes go on once every shard is copied.
            context.group.wait(context.group.all_copied,
                               lambda: self._stop.is_set() or context.stop.is_set())
        mode = context.request.buildIndexes
        plan = sorted(((namespace, catalog.indexes_to_build(namespace.indexes, mode))
                       for namespace in context.store.namespaces() if namespace.is_collection),
                      key=lambda item: -item[0].estimated_bytes)
        plan = [(namespace, specs) for namespace, specs in plan if specs]
        figures = self.figures
        figures.indexes_total = sum(len(specs) for _, specs in plan)
        figures.collections_total = len(plan)
        figures.indexes_built = figures.collections_finished = 0
        for namespace, specs in plan:
            if self._stop.is_set():
                return
            with context.ddl_lock:  # no DDL event is applied between the check and the build
                still = self._still_on_the_source(namespace, specs)
                existing = {spec["name"] for spec in context.destination.index_specs(
                    namespace.db, namespace.name)} if still else set()
                missing = [spec for spec in still if spec["name"] not in existing]
                # indexCorrection, for MongoDB's tooling: pending until built.
                context.store.record_index_builds(namespace, [spec["name"] for spec in missing],
                                                  built=False)
                if missing:
                    catalog.create_indexes(context.destination, namespace.db, namespace.name,
                                           missing, context.create_indexes_batch_size)
            context.store.record_index_builds(namespace, [spec["name"] for spec in specs],
                                              built=True)
            figures.indexes_built += len(specs)
            figures.collections_finished += 1
            log.info("Index creation progress", extra={"fields": {
                "namespace": namespace.id, **figures.document()}})
        context.resume.index_builds_done = True
        context.save_resume("index_builds_done")
        figures.done = True


    def _still_on_the_source(self, namespace: NamespaceRecord,
                             specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The indexes of ``specs`` the source still has, on the collection listed at the
        start, under the same name: none when it was dropped or renamed since (change
        application drops or renames it here; building under the old name would create it
        again; a renamed collection gets what it misses at commit, from the write-blocked
        source), and not one dropped since (change application drops it here)."""
        source = self.context.source
        listed = [info for info in source.collection_infos(namespace.db, namespace.name)
                  if info.get("name") == namespace.name]
        if not listed or catalog.uuid_bytes((listed[0].get("info") or {}).get("uuid")) != \
                catalog.uuid_bytes(namespace.uuid):
            log.info("index builds: %s was dropped or renamed on the source since it was "
                     "listed; its indexes are not built under that name", namespace.id)
            return []
        on_source = {spec["name"]: spec.get("key") for spec in
                     source.index_specs(namespace.db, namespace.name)}
        return [spec for spec in specs if on_source.get(spec["name"]) == spec.get("key")]


def finish_builds(context: PhaseContext) -> None:
    """Build whatever is still missing, on this thread: the commit never goes on without the
    source's indexes (``canCommit`` waits for them, but a commit resumed by a new process, or
    one requested before they were done, must not skip them)."""
    if builds_after_copy(context) and not context.resume.index_builds_done:
        IndexBuilder(context).build()


class BuildIndexes(PhaseStep):
    phase = Phase.BUILD_INDEXES

    def run(self, context: PhaseContext) -> None:
        """Nothing left to do here: the builds run beside change application."""
