"""Change application in parallel (pymongosync.changes.appliers, translate's lanes and the
ChangeApplier's checkpoints) over FakeClusters: routing, barriers, checkpoints."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import bson
import pytest
from bson import Decimal128, Int64
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from pymongosync.changes import reader
from pymongosync.changes.appliers import LOW_PARALLELISM_TEXT, LaneBalance
from pymongosync.changes.events import id_document, id_identity, key_identity
from pymongosync.changes.translate import CrudStep, DdlStep, Operation, Translator
from pymongosync.cluster_client import Delete, Update, Upsert, Write
from pymongosync.identity import id_key
from pymongosync.namespaces import NamespaceFilter
from pymongosync.phases import apply as apply_phase
from pymongosync.phases.apply import ChangeApplier
from pymongosync.phases.context import PhaseContext
from pymongosync.state import Phase, ResumeData
from tests.unit.fakes import (RAW, FakeCluster, MemoryStore, change_event, plain, token_position,
                              update_description)
from tests.unit.support import InstantEvent, make_context

EVERYTHING = NamespaceFilter()
LANES = 4


def at(n: int) -> Timestamp:
    return Timestamp(1_700_000_000, n)


def event(n: int, kind: str, document_id: Any, coll: str = "orders",
          **fields: Any) -> RawBSONDocument:
    if kind in ("insert", "replace"):
        fields.setdefault("full_document", {"_id": document_id, "n": n})
    if kind == "update":
        fields.setdefault("update_description", {
            "updatedFields": {"n": n}, "removedFields": [], "truncatedArrays": []})
    return change_event(kind, "shop", coll, at(n), document_key={"_id": document_id}, **fields)


def in_transaction(events: Sequence[RawBSONDocument], txn_number: int,
                   session: bytes = b"s" * 16) -> list[RawBSONDocument]:
    """The events as a server reports a multi-document transaction's: with its session and
    transaction number, right after ``clusterTime``."""
    marked = []
    for one in events:
        fields = bson.decode(one.raw, RAW)
        ordered: dict[str, Any] = {}
        for name, value in fields.items():
            ordered[name] = value
            if name == "clusterTime":
                ordered["txnNumber"] = Int64(txn_number)
                ordered["lsid"] = {"id": bson.Binary(session, 4)}
        marked.append(RawBSONDocument(bson.encode(ordered), RAW))
    return marked


def lane_of_each_document(step: CrudStep) -> dict[Any, set[int]]:
    lanes: dict[Any, set[int]] = {}
    for number, writes in enumerate(step.lanes):
        for operations in writes.values():
            for operation in operations:
                lanes.setdefault(repr(plain(operation.key)["_id"]), set()).add(number)
    return lanes


def shown(operation: Operation) -> tuple[Any, ...]:
    if isinstance(operation, Upsert):
        return ("upsert", plain(operation.key), plain(bson.decode(operation.document.raw)))
    if isinstance(operation, Delete):
        return ("delete", plain(operation.key))
    if isinstance(operation, Update):
        return ("update", plain(operation.key), plain(operation.update))
    return ("refetch", plain(operation.key))


# -- which document ------------------------------------------------------------------------------

ID_VALUES: list[Any] = [
    1, Int64(1), 1.0, Decimal128("1"), Decimal128("1.000"), True, "1", bson.Code("1"),
    2**60, float(2**60), Int64(2**60), 0.1, Decimal128("0.1"), -0.0, 0, float("nan"),
    Decimal128("NaN"), float("inf"), Decimal128("Infinity"), "é", bson.ObjectId("0" * 24),
    "0" * 24, {"a": 1}, {"a": 1.0}, {"b": 2, "a": 1}, [1, {"x": Int64(2)}],
    [1.0, {"x": Decimal128("2")}], bson.Binary(b"x", 0), bson.Binary(b"x", 4), None,
    bson.MinKey(), bson.MaxKey(), bson.Timestamp(1577836800, 0), bson.Regex("a", "i"),
    datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), DatetimeMS(1577836800000),
]


def test_document_identity_is_the_servers_equality_of_ids() -> None:
    """Two _ids name one document exactly when identity.id_key (the server's equality) says
    so, however their bytes differ."""
    encoded = [bson.encode({"_id": value}) for value in ID_VALUES]
    for left, left_bytes in zip(ID_VALUES, encoded, strict=True):
        for right, right_bytes in zip(ID_VALUES, encoded, strict=True):
            same = id_key(left) == id_key(right)
            assert (id_identity(left_bytes) == id_identity(right_bytes)) is same, (left, right)
            if same:
                assert hash(id_identity(left_bytes)) == hash(id_identity(right_bytes))


def test_a_sharded_sources_document_key_gives_its_id() -> None:
    key = bson.encode({"region": "eu", "n": 1.5, "_id": Int64(7), "after": [1]})
    assert bson.decode(id_document(key)) == {"_id": 7}
    assert id_identity(id_document(key)) == id_identity(bson.encode({"_id": 7.0}))
    assert key_identity(key) == key_identity(
        bson.encode({"region": "eu", "n": Decimal128("1.5"), "_id": 7, "after": [1.0]}))
    assert key_identity(key) != key_identity(
        bson.encode({"region": "us", "n": 1.5, "_id": 7, "after": [1]}))


@pytest.mark.parametrize("description", [
    {"updatedFields": {"a.b": 1, "c": [1, 2]}, "removedFields": [], "truncatedArrays": [],
     "disambiguatedPaths": {}},  # 7.0, expanded events
    {"updatedFields": {"a.b": 1, "c": [1, 2]}, "removedFields": [], "truncatedArrays": []},
    {"updatedFields": {}, "removedFields": [], "truncatedArrays": []},
    {"updatedFields": {"x": 1}, "removedFields": ["y"], "truncatedArrays": []},
    {"updatedFields": {"x": 1}, "removedFields": [],
     "truncatedArrays": [{"field": "arr", "newSize": 1}], "disambiguatedPaths": {}},
    {"updatedFields": {"a.b": 1}, "removedFields": [], "truncatedArrays": [],
     "disambiguatedPaths": {"a.b": ["a.b"]}},
])
def test_an_update_reads_the_same_from_its_bytes_as_decoded(description: dict[str, Any]) -> None:
    """Updates that only set fields are read from the description's bytes; every other shape
    is decoded: both give the writes the description stands for."""
    update = event(1, "update", 7, update_description=description)
    [step] = Translator(EVERYTHING).translate([update]).steps or [CrudStep(lanes=[{}])]
    assert isinstance(step, CrudStep)
    operations = step.writes.get(("shop", "orders"), [])
    expected: list[tuple[Any, ...]] = []
    if description.get("disambiguatedPaths"):
        expected = [("refetch", {"_id": 7})]
    else:
        if description["truncatedArrays"]:
            expected.append(("update", {"_id": 7}, {"$push": {"arr": {"$each": [], "$slice": 1}}}))
        modifiers: dict[str, Any] = {}
        if description["updatedFields"]:
            modifiers["$set"] = description["updatedFields"]
        if description["removedFields"]:
            modifiers["$unset"] = {path: "" for path in description["removedFields"]}
        if modifiers:
            expected.append(("update", {"_id": 7}, modifiers))
    assert [shown(operation) for operation in operations] == expected


# -- routing -----------------------------------------------------------------------------------


def test_each_document_is_written_by_one_lane_in_source_order() -> None:
    events = [event(n, "insert", n) for n in range(40)]
    events += [event(100 + 40 * round_ + n, "update", n) for round_ in range(3) for n in range(40)]
    [step] = Translator(EVERYTHING, lanes=LANES).translate(events).steps
    assert isinstance(step, CrudStep)

    lanes = lane_of_each_document(step)
    assert all(len(used) == 1 for used in lanes.values()) and len(lanes) == 40
    assert len(set().union(*lanes.values())) > 1  # the work is spread
    # Within its lane, each document's writes keep the source's order: its insert, then its
    # three updates.
    for writes in step.lanes:
        for operations in writes.values():
            seen: dict[int, list[int]] = {}
            for operation in operations:
                kind, key, *what = shown(operation)
                seen.setdefault(key["_id"], []).append(
                    what[0]["n"] if kind == "upsert" else what[0]["$set"]["n"])
            assert all(values == sorted(values) and len(values) == 4 for values in seen.values())


@pytest.mark.parametrize("ids", [
    [1, 1.0, Int64(1), Decimal128("1"), Decimal128("1.000")],
    [2**40, float(2**40), Int64(2**40)],
    [-0.0, 0, Int64(0)],
])
def test_numerically_equal_ids_are_one_document_and_one_lane(ids: list[Any]) -> None:
    """The server matches _id by value: 1, 1.0 and NumberLong(1) are one document. Routed by
    their BSON bytes, a delete of 1.0 and a later insert of 1 (in a later batch) would go to
    different lanes and could be applied in either order, leaving the document deleted."""
    translator = Translator(EVERYTHING, lanes=16)
    lanes_used: set[int] = set()
    n = 0
    for value in ids * 2:
        for kind in ("delete", "insert"):
            n += 1
            [step] = translator.translate([event(n, kind, value)]).steps
            assert isinstance(step, CrudStep)
            lanes_used |= {number for number, writes in enumerate(step.lanes) if writes}
    assert len(lanes_used) == 1
    # Within a batch they collapse as one document: the last full-state write, as it is.
    events = [event(2 * n + delta, kind, value) for n, value in enumerate(ids)
              for delta, kind in ((0, "delete"), (1, "insert"))]
    [step] = translator.translate(events).steps
    assert isinstance(step, CrudStep)
    [operation] = step.writes[("shop", "orders")]
    assert isinstance(operation, Upsert)
    assert repr(bson.decode(operation.document.raw)["_id"]) == repr(ids[-1])


def test_repeated_writes_to_a_document_still_collapse() -> None:
    events = [event(1, "insert", "a"), event(2, "update", "a"), event(3, "update", "a"),
              event(4, "replace", "a", full_document={"_id": "a", "final": True}),
              event(5, "insert", "b"), event(6, "update", "b"), event(7, "delete", "b"),
              event(8, "update", "a")]
    step = Translator(EVERYTHING, lanes=LANES).translate(events).steps[0]
    assert isinstance(step, CrudStep) and step.events == 8

    assert sorted(shown(operation) for operations in step.writes.values()
                  for operation in operations) == sorted([
        ("upsert", {"_id": "a"}, {"_id": "a", "final": True}),
        ("update", {"_id": "a"}, {"$set": {"n": 8}}),
        ("delete", {"_id": "b"})])


# -- transactions ------------------------------------------------------------------------------


def test_a_transaction_across_lanes_is_applied_alone() -> None:
    before = [event(n, "insert", n) for n in range(8)]
    transaction = in_transaction([event(10 + n, "update", n) for n in range(8)], txn_number=7)
    after = [event(20, "update", 3), event(21, "insert", 99)]
    steps = Translator(EVERYTHING, lanes=LANES).translate(before + transaction + after).steps

    assert [(type(step).__name__, getattr(step, "barrier", None), getattr(step, "events", None))
            for step in steps] == [("CrudStep", False, 8), ("CrudStep", True, 8),
                                   ("CrudStep", False, 2)]


def test_a_transaction_within_one_lane_needs_no_barrier() -> None:
    transaction = in_transaction([event(1, "insert", "x"), event(2, "update", "x")], 3)
    steps = Translator(EVERYTHING, lanes=LANES).translate(
        [event(0, "insert", "y"), *transaction, event(3, "insert", "z")]).steps
    assert len(steps) == 1 and isinstance(steps[0], CrudStep) and not steps[0].barrier


def test_a_batch_ending_inside_a_transaction_gives_the_position_before_it() -> None:
    translator = Translator(EVERYTHING, lanes=LANES)
    transaction = in_transaction([event(10 + n, "insert", n) for n in range(6)], 5)
    first = translator.translate([event(1, "insert", "a"), event(2, "insert", "b"),
                                  *transaction[:3]])
    assert first.open_transaction is not None
    assert first.before_open_transaction is not None
    assert first.before_open_transaction.time == at(2)
    middle = translator.translate(transaction[3:5])  # began in an earlier batch
    assert middle.open_transaction is not None and middle.before_open_transaction is None
    last = translator.translate([transaction[5], event(30, "insert", "c")])
    assert last.open_transaction is None
    # The parts of a transaction cut by batches are barriers: their lanes are not known.
    assert [step.barrier for step in first.steps if isinstance(step, CrudStep)] == [False, True]
    assert [step.barrier for step in middle.steps if isinstance(step, CrudStep)] == [True]


# -- the lanes at work over fakes --------------------------------------------------------------


class Recorder:
    """Wraps a FakeCluster's writes and DDL: records when each began and ended (in the order
    of a shared clock), and can hold back the writes that touch chosen documents."""

    def __init__(self, destination: FakeCluster) -> None:
        self.destination = destination
        # kind, namespace, what was written (ids, and values updates set), began, ended
        self.log: list[tuple[str, str, Any, int, int]] = []
        self.slow_ids: set[Any] = set()
        self.slow_seconds = 0.05
        self._clock = 0
        self._lock = threading.Lock()
        self._write = destination.write
        destination.write = self.write  # type: ignore[method-assign]
        for method in ("create_collection", "drop_collection"):
            setattr(destination, method, self._ddl(method, getattr(destination, method)))

    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return self._clock

    def write(self, db: str, coll: str, writes: Sequence[Write]) -> None:
        ids = [plain(write.key)["_id"] for write in writes]
        began = self._tick()
        if self.slow_ids.intersection(ids):
            time.sleep(self.slow_seconds)
        self._write(db, coll, writes)
        # What the writes set "v" to (updates): tells which source changes they apply.
        values = [plain(write.update).get("$set", {}).get("v") for write in writes
                  if isinstance(write, Update)]
        self.log.append(("write", f"{db}.{coll}", (ids, values), began, self._tick()))

    def _ddl(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(db: str, coll: str, *args: Any) -> Any:
            began = self._tick()
            result = method(db, coll, *args)
            self.log.append((name, f"{db}.{coll}", None, began, self._tick()))
            return result
        return run


class Checkpoints(MemoryStore):
    """Notes, at every checkpoint, the saved position and what the destination held."""

    def __init__(self, destination: FakeCluster) -> None:
        super().__init__()
        self.destination = destination
        self.saved: list[tuple[tuple[int, int] | None, dict[str, list[Any]]]] = []

    def save_resume(self, record: ResumeData, *fields: str) -> None:
        if "crud_change_stream_resume_info" in fields:
            token = record.crud_change_stream_resume_info.resume_token
            self.saved.append((None if token is None else token_position(token),
                               {coll: self.destination.documents("shop", coll)
                                for coll in ("orders", "after")}))
        super().save_resume(record, *fields)


def applying() -> tuple[FakeCluster, FakeCluster, Checkpoints, PhaseContext, Recorder]:
    source, destination = FakeCluster("cluster0"), FakeCluster("cluster1")
    store = Checkpoints(destination)
    context = make_context(source, destination, store, phase=Phase.APPLY_CHANGES)
    return source, destination, store, context, Recorder(destination)


def apply_all(context: PhaseContext, source: FakeCluster, seconds: float = 30.0) -> None:
    """Apply every change up to now (as the commit phase does); fails, rather than hangs,
    when that never ends."""
    until = source.cluster_time()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(ChangeApplier(context, lanes=LANES).run(until=until))
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        context.stop.set()
        thread.join(10)
        pytest.fail(f"applying every change up to {until} did not end within {seconds} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    assert outcome == [True]


def test_a_ddl_event_waits_for_every_lane_and_holds_back_what_follows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 10)
    source, destination, store, context, recorder = applying()
    source.insert("shop", "orders", *({"_id": n} for n in range(20)))
    source.create_collection("shop", "ddl", {})
    source.insert("shop", "after", *({"_id": n} for n in range(20)))
    recorder.slow_ids = {3, 11}  # their lanes lag behind the others
    apply_all(context, source)

    create = next(entry for entry in recorder.log if entry[:2] == ("create_collection", "shop.ddl"))
    before = [entry for entry in recorder.log if entry[1] == "shop.orders"]
    after = [entry for entry in recorder.log if entry[1] == "shop.after"]
    assert before and after
    assert max(ended for *_, ended in before) < create[3]  # none before it after it
    assert create[4] < min(began for *_, began, _ in after)  # none after it before it
    assert destination.documents("shop", "after") == source.documents("shop", "after")


def test_a_transaction_is_applied_before_any_later_write_of_its_documents(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 50)
    source, destination, store, context, recorder = applying()
    source.insert("shop", "orders", *({"_id": n, "v": 0} for n in range(8)))
    start = len(source.event_log)
    for n in range(8):
        source.update("shop", "orders", n, updated={"v": 1})
    with source.lock:
        source.event_log[start:] = in_transaction(source.event_log[start:], txn_number=1)
    for n in range(8):
        source.update("shop", "orders", n, updated={"v": 2})
    recorder.slow_ids = {0}  # the lane of document 0 lags
    apply_all(context, source)

    def writes_setting(value: int) -> list[tuple[int, int]]:
        return [(began, ended) for kind, _, written, began, ended in recorder.log
                if kind == "write" and value in written[1]]

    transaction, later = writes_setting(1), writes_setting(2)
    assert transaction and later
    assert max(ended for _, ended in transaction) < min(began for began, _ in later)
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")


def test_checkpoints_never_pass_a_write_a_slow_lane_has_not_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 5)
    source, destination, store, context, recorder = applying()
    times: dict[int, Timestamp] = {}
    for n in range(60):
        source.insert("shop", "orders", {"_id": n})
        times[n] = source.current_time
    recorder.slow_ids = {7}  # one lane finishes its batches long after the others
    recorder.slow_seconds = 0.2
    apply_all(context, source)

    assert len(store.saved) >= 2
    for position, held in store.saved:
        assert position is not None
        applied = {document["_id"] for document in held["orders"]}
        expected = {n for n, at_time in times.items() if (at_time.time, at_time.inc) <= position}
        assert expected <= applied, sorted(expected - applied)
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")


def test_a_failing_lane_holds_the_checkpoint_and_a_restart_applies_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 5)
    source, destination, store, context, recorder = applying()
    times: dict[int, Timestamp] = {}
    for n in range(40):
        source.insert("shop", "orders", {"_id": n})
        times[n] = source.current_time
    calls = [0]
    write = recorder.write

    def failing_once(db: str, coll: str, writes: Sequence[Write]) -> None:
        calls[0] += 1
        if calls[0] == 9:  # a lane's write fails, not transient: that lane stops
            destination.fail_next("write", OperationFailure("injected", code=2))
        write(db, coll, writes)

    destination.write = failing_once  # type: ignore[method-assign]
    with pytest.raises(OperationFailure, match="injected"):
        apply_all(context, source)

    for position, held in store.saved:
        assert position is not None
        applied = {document["_id"] for document in held["orders"]}
        assert {n for n, at_time in times.items()
                if (at_time.time, at_time.inc) <= position} <= applied
    stored = store.load()
    assert stored is not None
    resumed = PhaseContext.build(source, destination, store, stored.global_state, stored.resume)
    resumed.stop = InstantEvent()
    apply_all(resumed, source)
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")


def test_the_checkpoint_never_falls_inside_a_transaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 3)
    source, destination, store, context, recorder = applying()
    source.insert("shop", "orders", *({"_id": n} for n in range(4)))
    start = len(source.event_log)
    source.insert("shop", "orders", *({"_id": n} for n in range(10, 17)))
    with source.lock:
        source.event_log[start:] = in_transaction(source.event_log[start:], txn_number=9)
        inside = [token_position(one["_id"]) for one in source.event_log[start:]]
    source.insert("shop", "orders", *({"_id": n} for n in range(20, 24)))
    apply_all(context, source)

    positions = [position for position, _ in store.saved if position is not None]
    assert positions and not set(positions) & set(inside[:-1])
    assert not any(inside[0] <= position < inside[-1] for position in positions)
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")


def test_a_transaction_at_the_end_of_the_stream_is_checkpointed_once_the_stream_is_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last batch ends inside a transaction, so its checkpoint waits before it; the idle
    stream's next (empty) batch shows the transaction was whole: the checkpoint moves past it,
    and applying up to now ends (the commit phase waits for exactly that)."""
    monkeypatch.setattr(reader, "BATCH_EVENTS", 4)
    source, destination, store, context, recorder = applying()
    source.insert("shop", "orders", *({"_id": n} for n in range(3)))
    start = len(source.event_log)
    source.insert("shop", "orders", *({"_id": n} for n in range(10, 16)))
    with source.lock:
        source.event_log[start:] = in_transaction(source.event_log[start:], txn_number=4)
        last = token_position(source.event_log[-1]["_id"])
    apply_all(context, source, seconds=10)

    positions = [position for position, _ in store.saved if position is not None]
    assert positions[-1] >= last
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")


def test_many_lanes_bring_the_destination_to_the_source_state() -> None:
    source, destination, store, context, recorder = applying()
    source.insert("shop", "orders", *({"_id": n, "v": 0} for n in range(50)))
    for round_ in range(5):
        for n in range(0, 50, round_ + 1):
            source.update("shop", "orders", n, updated={"v": round_, f"r{round_}": n})
        source.delete("shop", "orders", round_ * 7)
        source.insert("shop", "orders", {"_id": round_ * 7, "back": round_})
    source.drop_collection("shop", "after")
    source.insert("shop", "after", {"_id": "x"})
    assert ChangeApplier(context, lanes=8).run(until=source.cluster_time()) is True
    assert destination.documents("shop", "orders") == source.documents("shop", "orders")
    assert destination.documents("shop", "after") == [{"_id": "x"}]


def test_load_level_sets_the_number_of_lanes() -> None:
    assert [apply_phase.lanes_for(level) for level in (1, 2, 3, 4)] == [1, 2, 4, 8]
    source, destination = FakeCluster("cluster0"), FakeCluster("cluster1")
    context = make_context(source, destination, phase=Phase.APPLY_CHANGES, load_level=2)
    assert ChangeApplier(context).lane_count == 2


def test_ddl_steps_stay_in_place() -> None:
    steps = Translator(EVERYTHING, lanes=LANES).translate([
        event(1, "insert", 1), change_event("drop", "shop", "orders", at(2)),
        event(3, "insert", 1)]).steps
    assert [type(step) for step in steps] == [CrudStep, DdlStep, CrudStep]


# -- lane balance: mongosync's low-parallelism warning -----------------------------------------


def _updates_step(ids: Sequence[Any], lanes: int = 4) -> CrudStep:
    events = [change_event("update", "shop", "orders", Timestamp(1_700_000_000, n + 1),
                           document_key={"_id": _id},
                           update_description=update_description(updated={"n": n}))
              for n, _id in enumerate(ids)]
    step = Translator(NamespaceFilter(), lanes=lanes).translate(events).steps[0]
    assert isinstance(step, CrudStep)
    return step


@pytest.mark.parametrize("hot", ["hot", DatetimeMS(-100_000_000_000_004)])  # before year 1
def test_a_document_that_holds_one_lane_back_is_named_once_in_a_while(
        caplog: pytest.LogCaptureFixture, hot: Any) -> None:
    now = [0.0]
    balance = LaneBalance(4, window_writes=1000, every_seconds=600, clock=lambda: now[0])
    hot_and_some_others = [hot] * 7 + list(range(3))
    with caplog.at_level("WARNING", logger="pymongosync.changes"):
        for _ in range(100):
            balance.add(_updates_step(hot_and_some_others))
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 1
        assert warnings[0].startswith(LOW_PARALLELISM_TEXT)
        assert f"shop.orders ({{'_id': {hot!r}}})" in warnings[0] and "--hotDocIDs" in warnings[0]

        for _ in range(100):  # the next window, within every_seconds: not again
            balance.add(_updates_step(hot_and_some_others))
        assert len(caplog.records) == 1
        now[0] = 601.0
        for _ in range(100):
            balance.add(_updates_step(hot_and_some_others))
        assert len(caplog.records) == 2


def test_writes_spread_over_the_lanes_or_one_lane_raise_no_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    spread = LaneBalance(4, window_writes=1000)
    alone = LaneBalance(1, window_writes=1000)
    with caplog.at_level("WARNING", logger="pymongosync.changes"):
        for batch in range(20):
            spread.add(_updates_step(range(batch * 100, batch * 100 + 100)))
            alone.add(_updates_step(["hot"] * 100, lanes=1))
    assert caplog.records == []
