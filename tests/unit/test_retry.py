"""Which errors are retried (pymongosync.retry)."""

from __future__ import annotations

from pymongo.errors import BulkWriteError

from pymongosync.retry import is_transient


def bulk_error(write_errors: list[dict[str, object]],
               concern_errors: list[dict[str, object]]) -> BulkWriteError:
    return BulkWriteError({"writeErrors": write_errors, "writeConcernErrors": concern_errors,
                           "nInserted": 0, "nUpserted": 0, "nMatched": 0, "nModified": 0,
                           "nRemoved": 0, "upserted": []})


def test_a_bulk_write_that_failed_only_on_a_transient_write_concern_is_retried() -> None:
    """Found by the campaign (seed 64): a write concern error 91 (ShutdownInProgress) with no
    write error failed the migration with an internal IndexError."""
    assert is_transient(bulk_error([], [{"code": 91, "errmsg": "shutting down"}]))
    assert is_transient(bulk_error([], [{"code": 100, "errmsg": "x",
                                         "errorLabels": ["RetryableWriteError"]}]))


def test_write_errors_and_other_write_concern_errors_are_not() -> None:
    assert not is_transient(bulk_error([{"index": 0, "code": 11000, "errmsg": "dup"}],
                                       [{"code": 91, "errmsg": "shutting down"}]))
    assert not is_transient(bulk_error([], [{"code": 100, "errmsg": "unsatisfiable"}]))
