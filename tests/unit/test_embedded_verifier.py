"""The embedded verifier's figures, on stand-ins for the migration it verifies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bson.timestamp import Timestamp

from pymongosync.state import VerifierState
from pymongosync.verifier.embedded import EmbeddedVerifier


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
