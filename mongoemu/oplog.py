"""The emulated ``local.oplog.rs``: an append-only, size-capped, timestamp-ordered log.

Entries keep what change streams need to build events without re-reading collection state
(pre-image, post-image, update description), so events stay correct however far behind a
stream reads.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp


@dataclass(slots=True)
class OplogEntry:
    ts: Timestamp
    op: str  # "i" insert, "u" update, "d" delete, "c" command, "n" no-op
    ns: str  # "db.coll"; for commands "db.$cmd"; "" for no-ops
    wall: datetime.datetime
    ui: uuid.UUID | None = None
    # insert: the stored document as raw BSON; replace ("u" with replacement): the new document.
    raw_document: bytes | None = None
    document_key: dict[str, Any] | None = None
    # "u": how the document changed; None for a replacement.
    update_description: dict[str, Any] | None = None
    # Images: pre_image for u/d, post_image for u (decoded dicts). Kept only while the
    # entry is retained, exactly like config.system.preimages follows the oplog window.
    pre_image: dict[str, Any] | None = None
    post_image: dict[str, Any] | None = None
    images_enabled: bool = False  # collection had changeStreamPreAndPostImages on
    # "c" and "n": the command object, e.g. {"create": "coll", ...}, {"drop": "coll"},
    # {"renameCollection": "db.a", "to": "db.b", "dropTarget": UUID?}, {"dropDatabase": 1},
    # {"createIndexes": "coll", "spec": {...}}, {"dropIndexes": "coll", "spec": {...}},
    # {"collMod": "coll", ...} with o2 = old options, {"shardCollection": "db.coll", ...},
    # {"msg": ...} for no-ops.
    command: dict[str, Any] | None = None
    o2: dict[str, Any] | None = None
    # Transactions: one "c" applyOps entry whose sub-operations are entries themselves.
    apply_ops: list["OplogEntry"] | None = None
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None
    size: int = 0
    # Set on the synthetic entries of a transaction (index inside applyOps).
    txn_op_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Written by a chunk migration or by a sharded DDL on a shard other than the database's
    # primary (the oplog's fromMigrate): change streams do not report it.
    from_migrate: bool = False

    @property
    def is_replace(self) -> bool:
        return self.op == "u" and self.update_description is None


class Oplog:
    """In-memory oplog with byte-size retention and waiters notified on every append."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: list[OplogEntry] = []
        self._keys: list[tuple[int, int]] = []
        self._first = 0  # index of the oldest retained entry; positions never shift
        self.total_bytes = 0
        self.truncated = False  # history has been lost at least once
        self._waiters: set[asyncio.Event] = set()
        self._appended = False

    # -- appending ---------------------------------------------------------------------------
    def append(self, entry: OplogEntry) -> None:
        if not entry.size:
            entry.size = _estimate_size(entry)
        self.entries.append(entry)
        self._keys.append((entry.ts.time, entry.ts.inc))
        self.total_bytes += entry.size
        while self.total_bytes > self.max_bytes and len(self.entries) - self._first > 1:
            self._drop_oldest()
        self._appended = True

    def _drop_oldest(self) -> None:
        oldest = self.entries[self._first]
        self.total_bytes -= oldest.size
        self.entries[self._first] = None  # type: ignore[call-overload]
        self._first += 1
        self.truncated = True

    def truncate_before(self, ts: Timestamp) -> None:
        """Test hook: forget every entry older than ``ts`` (simulates oplog rollover)."""
        while self._first < len(self.entries) - 1 and self._keys[self._first] < (ts.time, ts.inc):
            self._drop_oldest()

    def notify(self) -> None:
        """Wake waiting readers; called once per command rather than once per entry."""
        if self._appended:
            self._appended = False
            for waiter in self._waiters:
                waiter.set()

    async def wait_for_append(self, timeout: float) -> None:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries) - self._first

    @property
    def oldest(self) -> OplogEntry | None:
        return self.entries[self._first] if len(self) else None

    @property
    def newest(self) -> OplogEntry | None:
        return self.entries[-1] if len(self) else None

    def position_at_or_after(self, ts: Timestamp) -> int:
        """Index (for :meth:`entry_at`) of the first entry with ``entry.ts >= ts``."""
        return max(bisect.bisect_left(self._keys, (ts.time, ts.inc)), self._first)

    def position_after(self, ts: Timestamp) -> int:
        return max(bisect.bisect_right(self._keys, (ts.time, ts.inc)), self._first)

    @property
    def end_position(self) -> int:
        return len(self.entries)

    @property
    def start_position(self) -> int:
        return self._first

    def entry_at(self, position: int) -> OplogEntry | None:
        """The entry at ``position``, or None once it has been truncated away."""
        if position < self._first or position >= len(self.entries):
            return None
        return self.entries[position]

    def covers(self, ts: Timestamp) -> bool:
        """Whether history from ``ts`` onwards is still complete."""
        oldest = self.oldest
        if oldest is None:
            return True
        if not self.truncated:
            return True
        return (ts.time, ts.inc) >= (oldest.ts.time, oldest.ts.inc)


def _estimate_size(entry: OplogEntry) -> int:
    size = 64 + len(entry.ns)
    if entry.raw_document is not None:
        size += len(entry.raw_document)
    if entry.update_description is not None:
        size += 64 * (len(entry.update_description.get("updatedFields", {})) + 1)
    if entry.command is not None:
        size += 128
    if entry.apply_ops:
        size += sum(_estimate_size(op) for op in entry.apply_ops)
    return size
