"""The change stream reader: batches in order, and the change buffer's patience with a trickle."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from pymongosync.changes import reader


class TrickleStream:
    """A stream whose server has one new event each time it is asked (a trickle of writes:
    each getMore answers as soon as one event is there); records when it was asked."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.closed = False

    def try_next(self) -> RawBSONDocument:
        self.asked.append(time.monotonic())
        number = len(self.asked)
        return RawBSONDocument(bson.encode({"_id": {"n": number}, "operationType": "insert"}))

    def next_events(self, limit: int) -> list[RawBSONDocument]:
        return [self.try_next()]

    @property
    def buffered(self) -> int:
        return 0  # the one event received is handed out at once

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return {"n": len(self.asked)}

    def close(self) -> None:
        self.closed = True


class TrickleSource:
    def __init__(self) -> None:
        self.stream = TrickleStream()

    def watch(self, **_: Any) -> TrickleStream:
        return self.stream


def test_with_a_poll_interval_the_reader_lets_events_gather_between_round_trips(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 4)
    monkeypatch.setattr(reader, "MAX_BATCH_AGE_SECONDS", 60.0)  # batches end by their count
    source = TrickleSource()
    with reader.read_batches(source, threading.Event(), resume_after=None,  # type: ignore[arg-type]
                             start_at=None, poll_interval=0.05) as batches:
        first = next(batches)
        second = next(batches)
    assert [event["_id"]["n"] for event in first.events + second.events] == \
        list(range(1, 9))
    assert second.resume_token == {"n": 8}
    asked = source.stream.asked
    # Within a batch, the server was asked again only after the interval (never at once).
    gaps = [later - earlier for earlier, later in zip(asked[0:3] + asked[4:7],
                                                      asked[1:4] + asked[5:8])]
    assert min(gaps) >= 0.045, gaps
    assert source.stream.closed


def test_without_a_poll_interval_the_reader_asks_again_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_EVENTS", 4)
    monkeypatch.setattr(reader, "MAX_BATCH_AGE_SECONDS", 60.0)
    waits: list[float | None] = []

    class Spied(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait(timeout)

    with reader.read_batches(TrickleSource(), Spied(), resume_after=None,  # type: ignore[arg-type]
                             start_at=None) as batches:
        assert len(next(batches).events) == 4
    assert waits == []  # change application reads as fast as the server answers
