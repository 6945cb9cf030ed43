"""The Stable API: ``apiVersion``, ``apiStrict`` and ``apiDeprecationErrors`` on every command
(server validate_api_parameters.cpp), and the test-only commands MongoDB defines to exercise
it (``testVersion2``, ``testVersions1And2``, ``testDeprecationInVersion2``, ``testRemoval``).

The emulator checks commands, not the options or aggregation stages a strict client may not
use inside a command of API version 1.
"""

from __future__ import annotations

from typing import Any

from mongoemu.bsonvalues import type_name
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError

_V1 = frozenset({"1"})
_V2 = frozenset({"2"})
_V1_AND_V2 = frozenset({"1", "2"})

# Commands in Stable API version 1 (the manual's Stable API changelog; count since 6.0 and
# 5.0.9, bulkWrite since its introduction). hello's legacy names are the same command.
_API_VERSIONS: dict[str, frozenset[str]] = {
    name: _V1 for name in (
        "abortTransaction", "aggregate", "authenticate", "bulkWrite", "collMod",
        "commitTransaction", "count", "create", "createIndexes", "delete", "drop", "dropDatabase",
        "dropIndexes", "endSessions", "explain", "find", "findAndModify", "getMore", "hello",
        "isMaster", "ismaster", "insert", "killCursors", "listCollections", "listDatabases",
        "listIndexes", "ping", "refreshSessions", "saslContinue", "saslStart", "update",
    )
}
_API_VERSIONS.update({"testVersion2": _V2, "testVersions1And2": _V1_AND_V2,
                      "testDeprecationInVersion2": _V1_AND_V2, "testRemoval": _V1})
_DEPRECATED_API_VERSIONS: dict[str, frozenset[str]] = {"testDeprecationInVersion2": _V2}

_PARAMETERS = ("apiVersion", "apiStrict", "apiDeprecationErrors")


def validate_api_parameters(name: str, body: dict[str, Any]) -> None:
    """Raise what MongoDB raises for the command's API parameters; nothing when they are fine."""
    if "apiVersion" in body and not isinstance(body["apiVersion"], str):
        raise _wrong_type("apiVersion", body["apiVersion"], "string")
    for field in ("apiStrict", "apiDeprecationErrors"):
        if field in body and not isinstance(body[field], bool):
            raise _wrong_type(field, body[field], "bool")
    version = body.get("apiVersion")
    if ("apiStrict" in body or "apiDeprecationErrors" in body) and version is None:
        raise CommandError(4886600, "Provided apiStrict and/or apiDeprecationErrors without "
                                    "passing apiVersion")
    if version is None:
        return
    if version == "2":
        # Version 2 exists only behind the test-only acceptApiVersion2 parameter (off).
        raise CommandError(322, "Cannot accept API version 2", code_name_override="APIVersionError")
    if version != "1":
        raise CommandError(322, 'API version must be "1"', code_name_override="APIVersionError")
    if body.get("apiStrict") and version not in _API_VERSIONS.get(name, frozenset()):
        raise CommandError(
            323, f"Provided apiStrict:true, but the command {name} is not in API Version "
                 f"{version}. Information on supported commands and migrations in API Version "
                 f"{version} can be found at https://dochub.mongodb.org/core/manual-versioned-api.",
            code_name_override="APIStrictError")
    if body.get("apiDeprecationErrors") and version in _DEPRECATED_API_VERSIONS.get(name, ()):
        raise CommandError(
            324, f"Provided apiDeprecationErrors:true, but the command {name} is deprecated in "
                 f"API Version {version}.", code_name_override="APIDeprecationError")


def _wrong_type(field: str, value: Any, expected: str) -> CommandError:
    return CommandError(14, f"BSON field '{field}' is the wrong type '{type_name(value)}', "
                            f"expected type '{expected}'")


def _echo_api_parameters(ctx: Context) -> dict[str, Any]:
    """What the server's API test commands answer: the API parameters the command carried."""
    if not ctx.server.config.enable_test_commands:
        raise CommandError(59, f"no such command: '{ctx.name}'")
    return {field: ctx.body[field] for field in _PARAMETERS if field in ctx.body}


for _name in ("testVersion2", "testVersions1And2", "testDeprecationInVersion2", "testRemoval"):
    command(_name)(_echo_api_parameters)
