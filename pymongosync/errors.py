"""Named errors: every way a migration can fail, as operators and /progress see it."""

from __future__ import annotations


class MigrationError(Exception):
    """A failure with a stable name (shown as ``error`` in API envelopes and the metadata)."""

    name = "MigrationError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_document(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message}


class DestinationNotEmpty(MigrationError):
    name = "DestinationNotEmpty"


class ClusterMismatch(MigrationError):
    name = "ClusterMismatch"


class UnsupportedCluster(MigrationError):
    name = "UnsupportedCluster"


class InvalidState(MigrationError):
    name = "InvalidState"


class ChangeStreamHistoryLost(MigrationError):
    name = "ChangeStreamHistoryLost"


class UnsupportedSourceChange(MigrationError):
    """A source change mongosync cannot follow (e.g. a rename out of the filter)."""

    name = "UnsupportedSourceChange"


class CommitFailed(MigrationError):
    name = "CommitFailed"


class MigrationFailed(MigrationError):
    """The migration stopped on a fatal error recorded in the metadata; it must be restarted."""

    name = "MigrationFailed"
