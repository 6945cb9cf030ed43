"""DDL events of a migration run one instance per source shard (pymongosync.phases.ddl_order):
the coordinator applies each once every instance has applied its shard's events before it."""

from __future__ import annotations

import pytest
from bson.timestamp import Timestamp

from pymongosync.errors import Stopped
from pymongosync.instances import InstanceLayout
from pymongosync.phases.context import PhaseContext
from pymongosync.phases.ddl_order import DdlCoordinator, DdlGate, gate_limit, just_before
from pymongosync.state import MigrationState, Phase, ResumeData
from tests.unit.fakes import change_event, token
from tests.unit.support import make_context, pair


def at(n: int) -> Timestamp:
    return Timestamp(1_700_000_000, n)


def coordinator_of_two(applied_before: dict[str, int]) -> PhaseContext:
    """The coordinator (shard01) of a two-instance migration; ``applied_before`` per instance."""
    source, destination, store, _ = pair()
    context = make_context(source, destination, store, phase=Phase.APPLY_CHANGES)
    context.layout = InstanceLayout(("shard01", "shard02"), "shard01")
    context.resume.applied_before = at(applied_before["shard01"])
    context.save_resume("applied_before")
    other = ResumeData(state=MigrationState.RUNNING, phase=Phase.APPLY_CHANGES,
                       applied_before=at(applied_before["shard02"]))
    other.id = "shard02"
    store.create(context.global_state, other)
    destination.insert("shop", "scratch", {"_id": 1})
    return context


def test_a_high_water_mark_does_not_cover_the_events_at_its_own_time() -> None:
    """A high-water mark at T sorts before T's events: a drop at T read after it is applied
    (taken as 'seen through T', it was skipped: the three-instance test lost a drop)."""
    context = coordinator_of_two({"shard01": 9, "shard02": 9})
    ddl = DdlCoordinator(context)
    ddl._take([], token(at(7), event=False), None)  # noqa: SLF001 - one batch, synchronously
    assert context.resume.ddl_seen_through == just_before(at(7))
    assert gate_limit(context.resume.ddl_seen_through, None) == at(7)  # events before T only
    drop = change_event("drop", "shop", "scratch", at(7))
    ddl._take([drop], token(at(7), event=True), None)  # noqa: SLF001
    assert context.destination.collection("shop", "scratch") is None
    assert context.resume.ddl_seen_through == at(7) and context.resume.ddl_pending is None


def test_instances_hold_back_their_events_from_the_pending_ddl_event_on() -> None:
    context = coordinator_of_two({"shard01": 9, "shard02": 9})
    context.resume.ddl_seen_through, context.resume.ddl_pending = at(3), at(6)
    context.save_resume("ddl_seen_through", "ddl_pending")
    gate = DdlGate(context)
    events = [change_event("insert", "shop", "orders", at(n), document_key={"_id": n},
                           full_document={"_id": n}) for n in (4, 5, 6, 8)]
    assert gate.admitted(events) == 2  # before the pending drop at 6, even past 3


def test_the_pending_ddl_event_waits_for_every_instance() -> None:
    context = coordinator_of_two({"shard01": 9, "shard02": 5})
    ddl = DdlCoordinator(context)
    drop = change_event("drop", "shop", "scratch", at(7))
    context.stop.set()  # shard02 has not applied its events before 7: the wait gives up
    with pytest.raises(Stopped):
        ddl._take([drop], token(at(7), event=True), None)  # noqa: SLF001
    assert context.destination.collection("shop", "scratch") is not None
    assert context.resume.ddl_pending == at(7)
