"""Retrying transient failures (network, elections, interrupted operations)."""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from pymongo.errors import (AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout,
                            NotPrimaryError, OperationFailure, PyMongoError,
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
    if isinstance(error, OperationFailure):
        if error.code in TRANSIENT_CODES:
            return True
        return any(error.has_error_label(label) for label in TRANSIENT_LABELS)
    return False


def retrying(operation: Callable[[], T], give_up_after: float | None = None) -> T:
    """Run ``operation``, retrying transient errors with backoff for a bounded time."""
    deadline = time.monotonic() + (RETRY_FOR_SECONDS if give_up_after is None else give_up_after)
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
