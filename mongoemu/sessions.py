"""Logical sessions, retryable-write de-duplication and multi-document transactions.

Transactions write through to storage and keep an undo log, so a transaction reads its own
writes; commit publishes one ``applyOps`` oplog entry at a single cluster time and abort
rolls the undo log back. Other clients can observe uncommitted writes (documented deviation
from snapshot isolation, acceptable for a single-writer test server).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mongoemu.errors import CommandError
from mongoemu.oplog import OplogEntry

TRANSIENT = "TransientTransactionError"


@dataclass
class Transaction:
    txn_number: int
    state: str = "in_progress"  # in_progress | committed | aborted
    operations: list[OplogEntry] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)
    read_concern: dict[str, Any] | None = None
    touched: set[tuple[str, tuple]] = field(default_factory=set)
    commit_reply: dict[str, Any] | None = None


@dataclass
class Session:
    lsid: dict[str, Any]
    key: bytes
    last_used: float = field(default_factory=time.monotonic)
    txn_number: int = -1
    # Retryable writes: txnNumber -> the reply first sent for it.
    retry_replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    transaction: Transaction | None = None


def session_key(lsid: Any) -> bytes:
    if not isinstance(lsid, dict) or "id" not in lsid:
        raise CommandError(40414, "BSON field 'lsid.id' is missing but a required field")
    value = lsid["id"]
    return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode()


class SessionManager:
    def __init__(self) -> None:
        self.sessions: dict[bytes, Session] = {}
        # (namespace, _id key) -> transaction holding a write on that document.
        self.locks: dict[tuple[str, tuple], Transaction] = {}

    def get(self, lsid: Any) -> Session:
        key = session_key(lsid)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session(lsid=lsid, key=key)
        session.last_used = time.monotonic()
        return session

    def end(self, lsid: Any) -> Session | None:
        try:
            key = session_key(lsid)
        except CommandError:
            return None
        return self.sessions.pop(key, None)

    def release_locks(self, txn: Transaction) -> None:
        for lock in txn.touched:
            if self.locks.get(lock) is txn:
                del self.locks[lock]
        txn.touched.clear()

    def lock_document(self, txn: Transaction | None, ns: str, key: tuple) -> None:
        """Refuse a write to a document another open transaction has written (WriteConflict)."""
        holder = self.locks.get((ns, key))
        if holder is not None and holder is not txn and holder.state == "in_progress":
            raise CommandError(112, "Caused by :: Write conflict during plan execution and "
                                    "yielding is disabled. :: Please retry your write operation "
                                    "or multi-document transaction.", labels=[TRANSIENT])
        if txn is not None:
            self.locks[(ns, key)] = txn
            txn.touched.add((ns, key))
