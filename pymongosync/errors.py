"""The one exception tree of pymongosync.

``PymongosyncError`` is the root. Under it:

- :class:`MigrationError` and its subclasses: the ways a migration can fail or refuse, each
  with a stable ``name`` that the API envelope, ``/progress``, the logs and the metadata show;
- :class:`InvalidInput`: a value an operator gave that pymongosync refuses before doing
  anything (a connection string, a ``/start`` body);
- :class:`ResetError`: ``mongosync reset`` refused or failed, and :class:`RepairError`:
  ``mongosync repair`` did;
- :class:`Stopped`: not a failure — a phase left early because the process is pausing or
  stopping; everything it did is saved.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PymongosyncError(Exception):
    """Anything pymongosync raises on purpose."""


class MigrationError(PymongosyncError):
    """A failure with a stable name (shown as ``error`` in API envelopes and the metadata)."""

    name: ClassVar[str] = "MigrationError"
    # Errors an operator can lift without starting over: recorded, but a process started
    # again goes on instead of refusing the migration.
    resumable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def error_name(self) -> str:
        return self.name

    def to_document(self) -> dict[str, str]:
        return {"name": self.error_name, "message": self.message}


class RecordedError(MigrationError):
    """A fatal error read back from the metadata: the name it was stored with is kept."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.recorded_name = name

    @property
    def error_name(self) -> str:
        return self.recorded_name


class InternalError(MigrationError):
    """An unexpected exception, recorded as fatal with its type and text."""

    name = "InternalError"


class DestinationNotEmpty(MigrationError):
    name = "DestinationNotEmpty"


class NamespaceConflict(MigrationError):
    """A namespace to migrate already exists on the destination (mongosync never allows it)."""

    name = "NamespaceConflict"


class ResetInProgress(MigrationError):
    """``mongosync reset`` began on this migration and did not finish: it must never resume."""

    name = "ResetInProgress"


class IndexConflict(MigrationError):
    """An index cannot be built on the destination as the source has it."""

    name = "IndexConflict"


class SourceModifiedDuringCommit(MigrationError):
    """The source was written after the commit time: those changes would not be migrated."""

    name = "SourceModifiedDuringCommit"


class ClusterUnavailable(MigrationError):
    """A cluster did not answer in time: the request could not be carried out (yet)."""

    name = "ClusterUnavailable"


class VerificationFailed(MigrationError):
    """The verifier found the destination different from the source, or a cluster changed
    while the final verification ran."""

    name = "VerificationFailed"


class ChangeBufferFull(MigrationError):
    """The change buffer reached its limit: the migration stops, and goes on when started
    again with a larger limit."""

    name = "ChangeBufferFull"
    resumable = True


class ClusterMismatch(MigrationError):
    name = "ClusterMismatch"


class UnsupportedCluster(MigrationError):
    name = "UnsupportedCluster"


class InstanceMismatch(UnsupportedCluster):
    """The instances started do not match the source's shards (``--id``, one per shard)."""

    name = "InstanceMismatch"


class PreflightFailed(UnsupportedCluster):
    """Pre-flight found problems that stop the migration; the message lists each one with its
    fix (``mongosync check`` prints them too)."""

    name = "PreflightFailed"


class InsufficientDestinationDiskSpace(PreflightFailed):
    """The destination's free disk cannot hold the source's data (mongosync 1.22's name)."""

    name = "InsufficientDestinationDiskSpace"


class InvalidState(MigrationError):
    name = "InvalidState"


class NotOwner(InvalidState):
    """This process is standing by: another process owns the migration (its lease is live)."""

    name = "NotOwner"


class ChangeStreamHistoryLost(MigrationError):
    name = "ChangeStreamHistoryLost"


class UnsupportedSourceChange(MigrationError):
    """A source change mongosync cannot follow (e.g. a rename out of the filter)."""

    name = "UnsupportedSourceChange"


class CopyWorkerFailed(MigrationError):
    """A copy worker process failed (an error it could not retry, or it kept dying); the
    message names the worker, the partition and the cause."""

    name = "CopyWorkerFailed"


class MetadataTooNew(MigrationError):
    """The stored migration was written by a newer pymongosync than this one."""

    name = "MetadataTooNew"


class InvalidInput(PymongosyncError, ValueError):
    """A value given by the operator that is refused before anything is done."""


class InvalidConnectionString(InvalidInput):
    """A --cluster0/--cluster1 value mongosync refuses (texts are mongosync's own)."""


class InvalidStartRequest(InvalidInput):
    """A `/start` body that cannot start a migration; `field` is the JSON path of the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_envelope(self) -> dict[str, Any]:
        """The standard error envelope of spec §3.1."""
        return {"success": False, "error": "InvalidRequest",
                "errorDescription": f"{self.field}: {self.message}"}


class ResetError(PymongosyncError):
    """Reset refused or failed; the message says what was (not) changed and what to do."""


class RepairError(PymongosyncError):
    """Repair refused or failed; the message says what was (not) changed and what to do."""


class Stopped(PymongosyncError):
    """A phase was interrupted on request (pause or shutdown); its progress is saved."""


def error_from_record(name: str, message: str) -> MigrationError:
    """The error a stored ``{name, message}`` stands for, as its own class where known."""
    for cls in _named_classes():
        if cls.name == name:
            return cls(message)
    return RecordedError(name, message)


def _named_classes() -> list[type[MigrationError]]:
    found: list[type[MigrationError]] = []
    pending: list[type[MigrationError]] = [MigrationError]
    while pending:
        cls = pending.pop()
        if cls is not RecordedError:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
