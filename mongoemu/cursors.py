"""Server-side cursors: ids, batching by count and bytes, getMore and killCursors."""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Iterator

from bson.raw_bson import RawBSONDocument

from mongoemu.bsonvalues import encode
from mongoemu.errors import CommandError

# A batch stops growing past this many bytes of documents (the reply must stay < 16 MiB + 16 KiB).
MAX_BATCH_BYTES = 16 * 1024 * 1024 - 64 * 1024
DEFAULT_FIRST_BATCH = 101
CURSOR_TIMEOUT_S = 600.0


def as_raw(document: Any) -> bytes:
    """Raw BSON of a stored (bytes) or computed (dict) document."""
    if isinstance(document, bytes):
        return document
    if isinstance(document, RawBSONDocument):
        return document.raw
    return encode(document)


class Cursor:
    """A cursor over an iterator of documents (raw bytes or dicts)."""

    awaits_data = False

    def __init__(self, cursor_id: int, ns: str, source: Iterator[Any],
                 session_id: bytes | None = None) -> None:
        self.id = cursor_id
        self.ns = ns
        self.source = source
        self.session_id = session_id
        self.last_used = time.monotonic()
        self.exhausted = False
        self._pending: list[bytes] = []

    def take(self, batch_size: int | None) -> list[bytes]:
        """Up to ``batch_size`` documents (None: unlimited), never more than MAX_BATCH_BYTES."""
        self.last_used = time.monotonic()
        batch: list[bytes] = []
        size = 0
        limit = batch_size if batch_size else None
        while limit is None or len(batch) < limit:
            if self._pending:
                raw = self._pending.pop()
            else:
                try:
                    raw = as_raw(next(self.source))
                except StopIteration:
                    self.exhausted = True
                    break
            if batch and size + len(raw) > MAX_BATCH_BYTES:
                self._pending.append(raw)
                break
            batch.append(raw)
            size += len(raw)
        if not self._pending and not self.exhausted:
            self.peek()
        return batch

    def peek(self) -> None:
        """Learn whether the source is done so the reply can say id 0 at once."""
        try:
            self._pending.append(as_raw(next(self.source)))
        except StopIteration:
            self.exhausted = True

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class CursorManager:
    def __init__(self) -> None:
        self.cursors: dict[int, Any] = {}
        self._ids = itertools.count(random.randint(1 << 40, 1 << 50))

    def new_id(self) -> int:
        return next(self._ids)

    def register(self, cursor: Any) -> None:
        self.cursors[cursor.id] = cursor

    def get(self, cursor_id: int, ns: str) -> Any:
        self.expire_idle()
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        if cursor.ns != ns:
            raise CommandError(
                13, f"Requested getMore on namespace '{ns}', but cursor belongs to a different "
                f"namespace {cursor.ns}")
        return cursor

    def kill(self, cursor_id: int) -> bool:
        cursor = self.cursors.pop(cursor_id, None)
        if cursor is None:
            return False
        cursor.close()
        return True

    def kill_session(self, session_id: bytes) -> None:
        for cursor_id in [c.id for c in self.cursors.values() if c.session_id == session_id]:
            self.kill(cursor_id)

    def expire_idle(self) -> None:
        deadline = time.monotonic() - CURSOR_TIMEOUT_S
        for cursor_id in [c.id for c in self.cursors.values() if c.last_used < deadline]:
            self.kill(cursor_id)
