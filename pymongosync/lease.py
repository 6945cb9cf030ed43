"""One owner at a time: a lease on the destination says which process drives a migration.

The lease is one document in the metadata (``lease``, ``_id`` = the instance id). Its owner
renews it every few seconds; it is *live* while ``renewedAt + leaseMillis`` lies after the
server's clock. Both times are the destination server's (``$currentDate`` to write,
``$$NOW`` to compare), so the clocks of the hosts running pymongosync never matter.

- Taking the lease is one conditional write: it matches when the lease is ours, expired, or
  held by a process known to be dead; otherwise the upsert collides on ``_id`` and fails.
- An owner that cannot renew stops working before the lease could expire for others: it keeps
  a local deadline (last successful renewal, measured when the request was *sent*, plus the
  lease time less a margin) and gives ownership up when the deadline passes.
- A process on the same host, in the same PID namespace of the same boot, can tell that the
  owner's PID is gone; the lease is then abandoned at once rather than after it expires (a
  restarted ``mongosync`` resumes in a second, not after the lease time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from pymongosync.state import COORDINATOR, LeaseRecord

log = logging.getLogger("pymongosync.lease")

LEASE_SECONDS = 10.0
RENEW_EVERY_SECONDS = 2.0
# An owner stops this long before its lease could expire on the server.
SAFETY_MARGIN_SECONDS = 3.0


@dataclass(frozen=True)
class ProcessIdentity:
    """Who a process is: host and PID, and where that PID means something."""

    host: str
    pid: int
    # Boot id and PID namespace: two processes that share both can check each other's PIDs.
    process: str

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}:{self.process}"

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(host=socket.gethostname(), pid=os.getpid(), process=_pid_scope())

    def can_see(self, lease: LeaseRecord) -> bool:
        """Whether this process can check the lease owner's PID for itself."""
        return lease.host == self.host and lease.process == self.process and bool(self.process)


def _pid_scope() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""  # not Linux: only lease expiry tells a dead owner
    return f"{boot}/{namespace}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class LeaseStore(Protocol):
    """Where leases are kept; liveness (``renewedAt + leaseMillis`` after now) is judged by
    the store's own clock — for the metadata store, the destination server's."""

    def try_take_lease(self, lease: LeaseRecord, *, from_owner: str | None = None) -> bool: ...
    def renew_lease(self, lease_id: str, owner: str) -> bool: ...
    def drop_lease(self, lease_id: str, owner: str) -> None: ...
    def read_lease(self, lease_id: str) -> tuple[LeaseRecord | None, bool]: ...


@dataclass
class LeaseHolder:
    """Who holds a lease and whether it still counts."""

    record: LeaseRecord
    live: bool

    def describe(self) -> str:
        return f"{self.record.host} (pid {self.record.pid})"


class Lease:
    """This process's claim on one instance of a migration."""

    def __init__(self, store: LeaseStore, identity: ProcessIdentity | None = None,
                 instance: str = COORDINATOR, seconds: float = LEASE_SECONDS) -> None:
        self.store = store
        self.identity = identity or ProcessIdentity.current()
        self.instance = instance
        self.seconds = seconds
        self._deadline = 0.0  # monotonic time until which our ownership is certain
        self._lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self.identity.owner

    def holder(self) -> LeaseHolder | None:
        """The current lease, with liveness judged by the server's clock and, where this
        process can, by whether the owner's PID still exists."""
        record, live = self.store.read_lease(self.instance)
        if record is None:
            return None
        if live and record.owner != self.owner and self.identity.can_see(record):
            live = pid_alive(record.pid)
        return LeaseHolder(record, live)

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired, ours, or its owner is known dead."""
        from_owner: str | None = None
        holder = self.holder()
        if holder is not None and not holder.live and holder.record.owner != self.owner:
            # Dead by PID (or expired): take it from exactly that owner, so a process that
            # took the lease in between is not overwritten.
            from_owner = holder.record.owner
        record = LeaseRecord(id=self.instance, owner=self.owner, host=self.identity.host,
                             pid=self.identity.pid, process=self.identity.process,
                             lease_millis=int(self.seconds * 1000))
        sent = time.monotonic()
        taken = self.store.try_take_lease(record, from_owner=from_owner)
        if taken:
            self._renewed(sent)
            log.info("took the migration lease", extra={"fields": {"instance": self.instance}})
        return taken

    def renew(self) -> bool:
        """Renew; False when the lease is no longer ours or ownership can no longer be
        guaranteed (renewals failed for too long)."""
        sent = time.monotonic()
        try:
            renewed = self.store.renew_lease(self.instance, self.owner)
        except Exception as exc:  # noqa: BLE001 - an unreachable destination: judged by time
            log.warning("could not renew the migration lease: %s", exc)
            return self.held()
        if renewed:
            self._renewed(sent)
            return True
        with self._lock:
            self._deadline = 0.0
        return False

    def held(self) -> bool:
        with self._lock:
            return time.monotonic() < self._deadline

    def release(self) -> None:
        with self._lock:
            self._deadline = 0.0
        self.store.drop_lease(self.instance, self.owner)

    def _renewed(self, sent: float) -> None:
        with self._lock:
            self._deadline = sent + max(self.seconds - SAFETY_MARGIN_SECONDS, self.seconds / 2)
