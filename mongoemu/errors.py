"""MongoDB error codes and the exception every command handler raises to fail a command."""

from __future__ import annotations

from typing import Any

CODE_NAMES: dict[int, str] = {
    1: "InternalError", 2: "BadValue", 4: "NoSuchKey", 6: "HostUnreachable", 7: "HostNotFound",
    9: "FailedToParse", 11: "UserNotFound", 13: "Unauthorized", 14: "TypeMismatch",
    17: "ProtocolError", 18: "AuthenticationFailed", 20: "IllegalOperation",
    23: "AlreadyInitialized", 26: "NamespaceNotFound", 27: "IndexNotFound", 28: "PathNotViable",
    31: "RoleNotFound", 40: "ConflictingUpdateOperators", 43: "CursorNotFound",
    47: "NoMatchingDocument", 48: "NamespaceExists", 50: "MaxTimeMSExpired",
    51: "DuplicateKeyValue", 52: "DollarPrefixedFieldName", 55: "InvalidDBRef",
    56: "EmptyFieldName", 57: "DottedFieldName", 59: "CommandNotFound", 61: "ShardKeyNotFound",
    66: "ImmutableField", 67: "CannotCreateIndex", 68: "IndexAlreadyExists",
    72: "InvalidOptions", 73: "InvalidNamespace", 76: "NoReplicationEnabled",
    79: "UnknownReplWriteConcern", 85: "IndexOptionsConflict", 86: "IndexKeySpecsConflict",
    89: "NetworkTimeout", 91: "ShutdownInProgress", 96: "OperationFailed",
    100: "UnsatisfiableWriteConcern", 112: "WriteConflict", 115: "CommandNotSupported",
    117: "ConflictingOperationInProgress", 121: "DocumentValidationFailure",
    125: "CommandFailed", 133: "FailedToSatisfyReadPreference", 134: "ReadConcernMajorityNotAvailableYet",
    150: "StaleEpoch", 160: "CollectionIsEmptyLocally", 166: "CommandNotSupportedOnView",
    167: "OptionNotSupportedOnView", 168: "InvalidPipelineOperator", 179: "NotExactValueField",
    189: "PrimarySteppedDown", 202: "NetworkInterfaceExceededTimeLimit", 217: "IncompleteTransactionHistory",
    225: "TransactionTooOld", 234: "RetryChangeStream", 236: "CursorInUse", 239: "SnapshotTooOld",
    244: "TransactionTooLarge", 246: "SnapshotUnavailable", 251: "NoSuchTransaction",
    256: "TransactionCommitted", 257: "TransactionTooLargeForCache", 260: "InvalidResumeToken",
    261: "TooManyLogicalSessions", 262: "ExceededTimeLimit", 263: "OperationNotSupportedInTransaction",
    266: "FailPointSetFailed", 267: "PreparedTransactionInProgress", 280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost", 322: "APIVersionError", 323: "APIStrictError",
    324: "APIDeprecationError", 352: "UnsupportedOpQueryCommand", 361: "CollectionUUIDMismatch",
    371: "UserWritesBlocked",
    9001: "SocketException", 10058: "LegacyNotPrimary", 10107: "NotWritablePrimary",
    11000: "DuplicateKey", 11600: "InterruptedAtShutdown", 11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange", 13297: "DatabaseDifferCase",
    13388: "StaleConfig", 13435: "NotPrimaryNoSecondaryOk", 13436: "NotPrimaryOrSecondary",
    31082: "SearchNotEnabled", 40415: "IDLUnknownField", 40414: "IDLFailedToParse", 40573: "Location40573",
}

# Codes the server labels RetryableWriteError / ResumableChangeStreamError (server error_labels.cpp).
RETRIABLE_CODES: frozenset[int] = frozenset(
    {6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, f"Location{code}")


class CommandError(Exception):
    """Fails the current command with ``{ok: 0, errmsg, code, codeName, ...extra}``."""

    def __init__(
        self,
        code: int,
        errmsg: str,
        *,
        code_name_override: str | None = None,
        extra: dict[str, Any] | None = None,
        labels: list[str] | None = None,
    ) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.code_name = code_name_override or code_name(code)
        self.extra = extra or {}
        self.labels = labels

    def to_reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"ok": 0.0, "errmsg": self.errmsg, "code": self.code,
                                 "codeName": self.code_name}
        reply.update(self.extra)
        if self.labels:
            reply["errorLabels"] = list(self.labels)
        return reply

    def to_write_error(self, index: int) -> dict[str, Any]:
        error: dict[str, Any] = {"index": index, "code": self.code, "codeName": self.code_name,
                                 "errmsg": self.errmsg}
        error.update(self.extra)
        return error


def bad_value(message: str) -> CommandError:
    return CommandError(2, message)


def type_mismatch(message: str) -> CommandError:
    return CommandError(14, message)


def failed_to_parse(message: str) -> CommandError:
    return CommandError(9, message)


def checked_max_time_ms(value: Any, default: float) -> float:
    """A command's ``maxTimeMS`` (``default`` when absent), checked: a non-negative number."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise bad_value("maxTimeMS must be a non-negative number")
    return float(value)
