"""Logical sessions, retryable-write de-duplication and multi-document transactions.

A transaction works on private copies of the collections it touches (its workspace), so it
reads its own writes while nobody else sees them; commit merges the changed documents into
the shared collections and publishes one ``applyOps`` oplog entry at a single cluster time,
abort simply forgets the workspace. Documents a transaction wrote are locked: another write
to them gets ``WriteConflict``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mongoemu.errors import CommandError
from mongoemu.oplog import OplogEntry
from mongoemu.storage.catalog import Catalog
from mongoemu.storage.collection import Collection

TRANSIENT = "TransientTransactionError"


@dataclass
class Transaction:
    txn_number: int
    state: str = "in_progress"  # in_progress | committed | aborted
    operations: list[OplogEntry] = field(default_factory=list)
    read_concern: dict[str, Any] | None = None
    touched: set[tuple[str, tuple]] = field(default_factory=set)
    # (db, name) -> the transaction's private copy; None marks "does not exist here".
    workspace: dict[tuple[str, str], Collection | None] = field(default_factory=dict)
    changed: dict[tuple[str, str], set[tuple]] = field(default_factory=dict)

    def view(self, shared: Catalog) -> "TransactionCatalog":
        return TransactionCatalog(self, shared)

    def record_change(self, collection: Collection, key: tuple) -> None:
        self.changed.setdefault((collection.db, collection.name), set()).add(key)

    def discard(self) -> None:
        self.operations.clear()
        self.workspace.clear()
        self.changed.clear()


class TransactionCatalog:
    """The catalog as a transaction sees it: shared collections overlaid by its copies."""

    def __init__(self, txn: Transaction, shared: Catalog) -> None:
        self.txn = txn
        self.shared = shared

    def collection(self, db: str, name: str) -> Collection | None:
        key = (db, name)
        if key not in self.txn.workspace:
            shared = self.shared.collection(db, name)
            self.txn.workspace[key] = None if shared is None or shared.is_view else shared.clone()
            if shared is not None and shared.is_view:
                return shared
        return self.txn.workspace[key]

    def require(self, db: str, name: str) -> Collection:
        collection = self.collection(db, name)
        if collection is None:
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return collection

    def add(self, collection: Collection) -> None:
        self.txn.workspace[(collection.db, collection.name)] = collection
        self.txn.changed.setdefault((collection.db, collection.name), set())

    def remove(self, db: str, name: str) -> Collection | None:
        collection = self.collection(db, name)
        self.txn.workspace[(db, name)] = None
        return collection

    def database(self, db: str) -> Any:
        return self.shared.database(db)

    def merge_into_shared(self) -> None:
        """Apply the transaction's changes to the shared collections (at commit)."""
        from mongoemu.bsonvalues import decode
        for (db, name), keys in self.txn.changed.items():
            private = self.txn.workspace.get((db, name))
            if private is None:
                continue
            shared = self.shared.collection(db, name)
            if shared is None:
                shared = Collection(db, name, private.options, private.uuid)
                self.shared.add(shared)
            for index_name, spec in private.indexes.items():
                if index_name not in shared.indexes:
                    shared.add_index(spec)
            for key in keys:
                new_raw = private.get_raw(key)
                old_raw = shared.get_raw(key)
                if new_raw is None:
                    if old_raw is not None:
                        shared.remove(key)
                elif old_raw is None:
                    shared.insert(key, new_raw, decode(new_raw))
                elif old_raw != new_raw:
                    shared.replace(key, new_raw, decode(new_raw), decode(old_raw))


@dataclass
class Session:
    lsid: dict[str, Any]
    key: bytes
    last_used: float = field(default_factory=time.monotonic)
    txn_number: int = -1
    # Retryable writes: txnNumber -> the reply first sent for it (single-statement commands).
    retry_replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    transaction: Transaction | None = None
    # Retryable writes with statements: the txnNumber and, by statement id, the outcome of
    # each statement that succeeded under it (what a retry must not run again).
    executed_txn_number: int = -1
    executed_statements: dict[int, Any] = field(default_factory=dict)

    def statement_history(self, txn_number: int) -> dict[int, Any]:
        if txn_number != self.executed_txn_number:
            self.executed_txn_number, self.executed_statements = txn_number, {}
        return self.executed_statements


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
