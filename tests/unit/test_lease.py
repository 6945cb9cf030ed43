"""The ownership lease (pymongosync.lease) over a MemoryStore, with a controlled clock."""

from __future__ import annotations

import datetime
import os
from types import SimpleNamespace

import pytest
from pymongo.errors import AutoReconnect

from pymongosync import lease as lease_module
from pymongosync.lease import Lease, ProcessIdentity, pid_alive
from tests.unit.fakes import MemoryStore

SCOPE = "boot-id/pid:[4026531836]"


class Clock:
    """The destination server's clock and this host's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.server = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        self.local = 1000.0

    def now(self) -> datetime.datetime:
        return self.server

    def monotonic(self) -> float:
        return self.local

    def advance(self, seconds: float) -> None:
        self.server += datetime.timedelta(seconds=seconds)
        self.local += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # Lease keeps its own deadline with time.monotonic(): that module reference is replaced.
    monkeypatch.setattr(lease_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock.now)


def identity(host: str = "host-a", pid: int = 100, process: str = SCOPE) -> ProcessIdentity:
    return ProcessIdentity(host=host, pid=pid, process=process)


def dead_pid() -> int:
    pid = 4_000_000
    while pid_alive(pid):
        pid += 1
    return pid


def test_a_free_lease_is_taken(store: MemoryStore) -> None:
    mine = Lease(store, identity())
    assert mine.try_acquire() is True
    assert mine.held() is True
    holder = mine.holder()
    assert holder is not None and holder.live and holder.record.owner == mine.owner
    assert holder.record.lease_millis == 10_000
    assert holder.describe() == "host-a (pid 100)"


def test_a_live_lease_of_another_process_is_refused(store: MemoryStore, clock: Clock) -> None:
    first = Lease(store, identity())
    second = Lease(store, identity(host="host-b", pid=200))
    assert first.try_acquire()
    clock.advance(9)  # not expired yet

    assert second.try_acquire() is False
    assert second.held() is False
    holder = second.holder()
    assert holder is not None and holder.live and holder.record.owner == first.owner


def test_an_expired_lease_is_taken_over(store: MemoryStore, clock: Clock) -> None:
    first = Lease(store, identity())
    second = Lease(store, identity(host="host-b", pid=200))
    assert first.try_acquire()
    clock.advance(10.5)

    holder = second.holder()
    assert holder is not None and not holder.live
    assert second.try_acquire() is True
    taken = second.holder()
    assert taken is not None and taken.record.owner == second.owner
    assert first.renew() is False and first.held() is False


def test_a_dead_owner_on_this_host_is_taken_over_at_once(store: MemoryStore) -> None:
    dead = Lease(store, identity(pid=dead_pid()))
    assert dead.try_acquire()
    other_host = Lease(store, identity(host="host-b", pid=os.getpid()))
    assert other_host.try_acquire() is False  # cannot see that PID: waits for expiry
    other_scope = Lease(store, identity(pid=os.getpid(), process="another-boot/ns"))
    assert other_scope.try_acquire() is False

    successor = Lease(store, identity(pid=os.getpid()))
    assert successor.try_acquire() is True
    holder = successor.holder()
    assert holder is not None and holder.record.pid == os.getpid()


def test_a_live_owner_on_this_host_keeps_its_lease(store: MemoryStore) -> None:
    parent = Lease(store, identity(pid=os.getppid()))
    assert parent.try_acquire()
    assert Lease(store, identity(pid=os.getpid())).try_acquire() is False


def test_renewals_keep_the_lease_and_a_restart_takes_it_back(store: MemoryStore,
                                                            clock: Clock) -> None:
    mine = Lease(store, identity())
    assert mine.try_acquire()
    for _ in range(5):
        clock.advance(5)
        assert mine.renew() is True
    assert mine.held() is True
    assert Lease(store, identity(host="host-b")).try_acquire() is False
    assert Lease(store, identity()).try_acquire() is True  # the same owner, restarted


def test_ownership_ends_when_renewals_fail_past_the_deadline(store: MemoryStore,
                                                             clock: Clock) -> None:
    mine = Lease(store, identity())
    assert mine.try_acquire()
    store.fail_next("renew_lease", AutoReconnect("destination unreachable"), times=10)
    clock.advance(3)
    assert mine.renew() is True  # failed, but still within the deadline
    clock.advance(3.9)
    assert mine.held() is True
    clock.advance(0.2)  # 10 s lease less the 3 s margin: 7 s after the last renewal
    assert mine.held() is False
    assert mine.renew() is False


def test_a_renewal_counts_from_when_it_was_sent(store: MemoryStore, clock: Clock) -> None:
    mine = Lease(store, identity())
    assert mine.try_acquire()
    clock.advance(6)
    assert mine.renew()
    clock.advance(6.9)
    assert mine.held() is True
    clock.advance(0.2)
    assert mine.held() is False


def test_a_released_lease_is_free_at_once(store: MemoryStore) -> None:
    mine = Lease(store, identity())
    assert mine.try_acquire()
    mine.release()
    assert mine.held() is False and mine.holder() is None
    assert Lease(store, identity(host="host-b")).try_acquire() is True
