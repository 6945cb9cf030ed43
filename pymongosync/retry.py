"""Retrying transient failures (network, elections, interrupted operations)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pymongo

from pymongo.errors import (AutoReconnect, BulkWriteError, ConnectionFailure, ExecutionTimeout,
                            NetworkTimeout, NotPrimaryError, OperationFailure, PyMongoError,
                            ServerSelectionTimeoutError, WTimeoutError)

log = logging.getLogger("pymongosync.retry")

T = TypeVar("T")
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435,
                             13436, 50, 112})
TRANSIENT_LABELS = ("RetryableWriteError", "ResumableChangeStreamError",
                    "TransientTransactionError")
# mongosync retries network and availability errors for up to 30 minutes (spec §5.2).
RETRY_FOR_SECONDS = 30 * 60.0


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (AutoReconnect, ConnectionFailure, NetworkTimeout, NotPrimaryError,
                          ServerSelectionTimeoutError, WTimeoutError, ExecutionTimeout)):
        return True
    if isinstance(error, BulkWriteError):
        # Every write of this tool is idempotent: a bulk write that failed only on its write
        # concern (e.g. ShutdownInProgress while the primary steps down) is written again.
        details = error.details or {}
        concern = details.get("writeConcernErrors") or []
        return not details.get("writeErrors") and bool(concern) and all(
            entry.get("code") in TRANSIENT_CODES
            or any(label in TRANSIENT_LABELS for label in entry.get("errorLabels", ()))
            for entry in concern)
    if isinstance(error, OperationFailure):
        if error.code in TRANSIENT_CODES:
            return True
        return any(error.has_error_label(label) for label in TRANSIENT_LABELS)
    return False


_budget = threading.local()


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Everything inside gives up after ``seconds``: each driver operation (through
    ``pymongo.timeout``, server selection included) and every retry loop of this thread.

    For callers that must answer in bounded time (the HTTP API, shutdown): without it a
    cluster that does not answer would hold them for the 30 minutes of retries."""
    previous = getattr(_budget, "deadline", None)
    deadline = time.monotonic() + seconds
    _budget.deadline = deadline if previous is None else min(previous, deadline)
    try:
        with pymongo.timeout(seconds):
            yield
    finally:
        _budget.deadline = previous


def retrying(operation: Callable[[], T], give_up_after: float | None = None) -> T:
    """Run ``operation``, retrying transient errors with backoff for a bounded time."""
    deadline = time.monotonic() + (RETRY_FOR_SECONDS if give_up_after is None else give_up_after)
    budget = getattr(_budget, "deadline", None)
    if budget is not None:
        deadline = min(deadline, budget)
    delay = 0.05
    while True:
        try:
            return operation()
        except PyMongoError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("transient error, retrying in %.2fs: %s", delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
