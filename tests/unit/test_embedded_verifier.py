"""The embedded verifier's figures, on stand-ins for the migration it verifies."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from bson.timestamp import Timestamp

from pymongosync.state import VerificationPhase, VerifierState
from pymongosync.verifier import embedded
from pymongosync.verifier.embedded import EmbeddedVerifier
from pymongosync.verifier.store import TaskSummary


def token_at(seconds: int) -> dict[str, Any]:
    """A resume token of that cluster time (its KeyString starts with the timestamp)."""
    return {"_data": f"82{seconds:08X}{1:08X}2B0229296E5A1004"}


def coordinators_verifier(applied_before: Timestamp) -> EmbeddedVerifier:
    """The coordinator's verifier of a migration run one instance per source shard, every
    instance having applied its shard's changes before ``applied_before``."""
    context: Any = SimpleNamespace(
        load_level=1, layout=SimpleNamespace(multi=True),
        group=SimpleNamespace(applied_before=lambda: applied_before))
    store: Any = SimpleNamespace(load_state=lambda: VerifierState(), repair_count=lambda: 0)
    return EmbeddedVerifier(context, store)


def test_the_source_lag_counts_the_changes_the_coordinators_verifier_has_not_read() -> None:
    verifier = coordinators_verifier(applied_before=Timestamp(100, 1))
    verifier.state.source_start_time = Timestamp(40, 0)
    # Every instance has applied up to 100, but its stream of the source is still at 40:
    # the changes since are not rechecks yet.
    source, _ = verifier.sides(latest_source=Timestamp(110, 0))
    assert source.lag_seconds == 70
    verifier.state.source_resume_token = token_at(105)
    source, _ = verifier.sides(latest_source=Timestamp(110, 0))
    assert source.lag_seconds == 10  # the instances' position is the later limit now
    assert verifier.applied_up_to() == Timestamp(100, 0)
    assert not verifier.notes_source_changes  # it reads the source's changes itself


def idle_verifier(monkeypatch: Any) -> tuple[EmbeddedVerifier, threading.Event]:
    """A verifier of a single-instance migration whose background tasks only wait for their
    stop, and the migration's stop."""
    stop = threading.Event()
    context: Any = SimpleNamespace(load_level=1, layout=SimpleNamespace(multi=False),
                                   instance="coordinator", stop=stop)
    store: Any = SimpleNamespace(load_state=lambda: VerifierState(), repair_count=lambda: 0,
                                 release_claims=lambda prefix: None)
    verifier = EmbeddedVerifier(context, store)
    monkeypatch.setattr(verifier, "_begin", lambda: None)
    for task in ("_hash_ranges", "_follow_destination", "_recheck_rounds"):
        # They wait for the verifier's own stop, as its tasks do.
        monkeypatch.setattr(verifier, task, lambda number: verifier._stop.wait())  # noqa: SLF001
    return verifier, stop


def test_a_stop_while_the_verifier_starts_waits_for_its_threads(monkeypatch: Any) -> None:
    """/pause stops the verifier from the API's thread while change application starts it:
    joining a thread not started yet raised RuntimeError, and /pause answered 500 (campaign
    seed 17 with a sharded source)."""
    verifier, stop = idle_verifier(monkeypatch)
    outcome: list[Any] = []

    class StopsMidway(threading.Thread):
        def start(self) -> None:
            if self.name == "verifier-hash-0":  # the first of them: a /pause comes now
                stop.set()

                def pause() -> None:
                    try:
                        outcome.append(verifier.stop(5))
                    except BaseException as exc:  # noqa: BLE001 - what the test reports
                        outcome.append(exc)
                stopper = threading.Thread(target=pause)
                stopper.start()
                stopper.join(0.3)  # stopped at once before the fix; waits for the start now
            super().start()

    monkeypatch.setattr(embedded.threading, "Thread", StopsMidway)
    verifier.ensure_started()
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome == [True]
    assert not verifier.running


def test_a_verifier_stopped_before_it_starts_starts_no_thread(monkeypatch: Any) -> None:
    verifier, stop = idle_verifier(monkeypatch)
    stop.set()  # /pause came first
    verifier.ensure_started()
    assert not verifier.running and verifier.stop(1)
    stop.clear()  # /resume
    verifier.ensure_started()
    assert verifier.running
    assert verifier.stop(5) and not verifier.running


def test_the_other_instances_tell_the_coordinators_verifier_lags_from_what_it_stored() -> None:
    """With one instance per source shard, the coordinator's verifier verifies every shard;
    the other instances' /progress showed null lags (the contract says int). They now measure
    them from the times it stored, so the lags grow while the coordinator is down."""
    verifier = coordinators_verifier(applied_before=Timestamp(100, 1))
    verifier.state.source_resume_token = token_at(105)
    verifier.state.destination_resume_token = token_at(207)
    saved: list[tuple[str, ...]] = []
    verifier.store = SimpleNamespace(
        save_state=lambda state, *fields: saved.append(fields))  # type: ignore[assignment]
    verifier._publish_verified_through()  # noqa: SLF001 - what its refresh round does
    verifier._publish_verified_through()  # noqa: SLF001 - unmoved: not stored again
    assert saved == [("source_verified_through", "destination_verified_through")]
    stored = verifier.state
    assert stored.source_verified_through == Timestamp(100, 0)
    assert stored.destination_verified_through == Timestamp(207, 1)

    figures: Any = SimpleNamespace(
        load_state=lambda: stored, recheck_count=lambda: 0, mismatch_count=lambda: 0,
        mismatches=lambda limit: [], repair_count=lambda: 0,
        task_summary=lambda: TaskSummary(tasks=1, done=1, estimated_documents=5, collections=1,
                                         collections_done=1, hashed_source=5,
                                         hashed_destination=4))
    (source, destination), _ = embedded.stored_figures(figures, Timestamp(112, 3),
                                                       Timestamp(210, 1))
    assert (source.lag_seconds, destination.lag_seconds) == (12, 3)
    assert (source.hashed_documents, destination.hashed_documents) == (5, 4)
    (source, destination), _ = embedded.stored_figures(figures, None, Timestamp(260, 1))
    assert (source.lag_seconds, destination.lag_seconds) == (None, 53)


def test_the_end_of_initial_hashing_shows_every_ranges_count_with_the_new_phase() -> None:
    # The phase moved on at once, the figures at the next refresh round: a fast migration's
    # /progress said "stream hashing" with 0 documents hashed and 0/7 collections (make demo).
    verifier = coordinators_verifier(applied_before=Timestamp(100, 1))
    verifier.state.phase = VerificationPhase.INITIAL_HASHING
    hashed = TaskSummary(tasks=7, done=7, estimated_documents=20, collections=7,
                         collections_done=7, hashed_source=20, hashed_destination=20)
    verifier.store = SimpleNamespace(  # type: ignore[assignment]
        task_summary=lambda: hashed, save_state=lambda state, *fields: None)
    verifier._initial_hashing_done()  # noqa: SLF001 - what the last hashing thread calls
    source, destination = verifier.sides(latest_source=Timestamp(110, 0))
    assert source.phase == VerificationPhase.STREAM_HASHING
    assert (source.hashed_documents, destination.hashed_documents) == (20, 20)
    assert (source.collections, source.collections_scanned) == (7, 7)
