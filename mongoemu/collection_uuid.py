"""The ``collectionUUID`` parameter (6.0+): a command names a collection and the UUID it expects
to find under that name.

When the name holds another collection (renamed, or dropped and re-created), a view, or
nothing, the command fails with ``CollectionUUIDMismatch`` instead of reading or writing the
wrong data (or none): that is how a client such as mongosync notices a rename while it copies.
The error carries ``db``, ``collectionUUID``, ``expectedCollection`` and ``actualCollection``
(the name that holds the UUID in that database, or null) — checkCollectionUUIDMismatch and
CollectionUUIDMismatchInfo in the server.

The check runs once in command dispatch for every command that accepts the field, except the
write commands, which the server checks per statement and reports as ``writeErrors``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable

from bson.binary import Binary, UuidRepresentation

from mongoemu.bsonvalues import type_name
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.context import Context

FIELD = "collectionUUID"
COLLECTION_UUID_MISMATCH = 361

# Each check: (database, collection name, expected UUID).
Check = tuple[str, str, uuid.UUID]

# Commands checked statement by statement, where a mismatch is a writeError.
PER_STATEMENT = frozenset({"insert", "update", "delete"})

# Strict parsers (IDL ``strict: true``) that have no collectionUUID field: a server refuses the
# request rather than silently ignoring a check the client asked for.
_REFUSING = frozenset({"count", "distinct", "listIndexes"})

# binData subtype names as the server prints them in type errors.
_SUBTYPE_NAMES = {0: "general", 1: "function", 2: "binary(old)", 3: "uuid(old)", 4: "UUID",
                  5: "MD5", 6: "encrypt", 7: "column", 8: "sensitive", 9: "vector"}


def expected_uuid(ctx: "Context", value: Any, path: str) -> uuid.UUID:
    """The UUID a request field holds (IDL type ``uuid``: binData of subtype 4, 16 bytes)."""
    if not isinstance(value, (bytes, Binary)):
        raise CommandError(14, f"BSON field '{path}' is the wrong type '{type_name(value)}', "
                               f"expected type 'binData'")
    subtype_number = value.subtype if isinstance(value, Binary) else 0  # subtype 0 reads as bytes
    if subtype_number != 4:
        subtype = _SUBTYPE_NAMES.get(subtype_number, "user")
        raise CommandError(14, f"BSON field '{path}' is the wrong binData type '{subtype}', "
                               f"expected type 'UUID'")
    if len(value) != 16:
        raise CommandError(207, "uuid must be a 16-byte binary field with UUID (4) subtype",
                           code_name_override="InvalidUUID")
    return value.as_uuid(UuidRepresentation.STANDARD)


def check(ctx: "Context", db: str, name: str, expected: uuid.UUID) -> None:
    """Fail unless ``db.name`` is a collection (not a view) whose UUID is ``expected``."""
    collection = ctx.catalog.collection(db, name)
    if collection is not None and not collection.is_view and collection.uuid == expected:
        return
    holder = ctx.server.catalog.by_uuid(expected)
    actual = holder.name if holder is not None and not holder.is_view \
        and holder.db == db else None
    raise CommandError(COLLECTION_UUID_MISMATCH, "Collection UUID does not match that specified",
                       code_name_override="CollectionUUIDMismatch",
                       extra={"db": db, FIELD: Binary(expected.bytes, 4),
                              "expectedCollection": name, "actualCollection": actual})


def _in_database(ctx: "Context", command: str) -> list[Check]:
    """Commands whose value is a collection of the command's database."""
    value = ctx.body.get(ctx.name)
    if FIELD not in ctx.body or not isinstance(value, str):
        return []
    return [(ctx.db, value, expected_uuid(ctx, ctx.body[FIELD], f"{command}.{FIELD}"))]


def _full_namespace(ctx: "Context", command: str) -> list[Check]:
    """Commands whose value is a whole namespace ("db.collection")."""
    value = ctx.body.get(ctx.name)
    if FIELD not in ctx.body or not isinstance(value, str) or "." not in value:
        return []
    db, name = value.split(".", 1)
    return [(db, name, expected_uuid(ctx, ctx.body[FIELD], f"{command}.{FIELD}"))]


def _rename(ctx: "Context", command: str) -> list[Check]:
    """The source's UUID in collectionUUID; a UUID as dropTarget is the target's expected one."""
    source, target = ctx.body.get(ctx.name), ctx.body.get("to")
    drop_target = ctx.body.get("dropTarget")
    target_uuid = drop_target if isinstance(drop_target, Binary) else None
    if (FIELD not in ctx.body and target_uuid is None) or not isinstance(source, str) \
            or not isinstance(target, str) or "." not in source or "." not in target:
        return []
    source_db, source_name = source.split(".", 1)
    target_db, target_name = target.split(".", 1)
    checks: list[Check] = []
    if FIELD in ctx.body:
        checks.append((source_db, source_name,
                       expected_uuid(ctx, ctx.body[FIELD], f"{command}.{FIELD}")))
    if target_uuid is not None:
        checks.append((target_db, target_name,
                       expected_uuid(ctx, target_uuid, f"{command}.dropTarget")))
    if source_db != target_db:
        raise CommandError(72, "Cannot provide an expected collection UUID when renaming "
                               "between databases")
    return checks


# Every command that accepts the parameter, with where its namespace comes from.
_ACCEPTING: dict[str, Callable[["Context", str], list[Check]]] = {
    "find": _in_database, "aggregate": _in_database, "findAndModify": _in_database,
    "insert": _in_database, "update": _in_database, "delete": _in_database,
    "createIndexes": _in_database, "dropIndexes": _in_database, "collMod": _in_database,
    "drop": _in_database, "renameCollection": _rename, "shardCollection": _full_namespace,
    "refineCollectionShardKey": _full_namespace, "reshardCollection": _full_namespace,
}


def requested_checks(ctx: "Context", command: str) -> list[Check]:
    """The checks ``command`` (its registered name) asks for; parse errors raise here."""
    resolve = _ACCEPTING.get(command)
    if resolve is not None:
        return resolve(ctx, command)
    if command in _REFUSING and FIELD in ctx.body:
        raise CommandError(40415, f"BSON field '{command}.{FIELD}' is an unknown field.")
    return []


def check_command(ctx: "Context", command: str) -> None:
    """The dispatch-time check (write commands only parse here; their statements check)."""
    checks = requested_checks(ctx, command)
    if command in PER_STATEMENT:
        return
    for db, name, expected in checks:
        check(ctx, db, name, expected)


def check_statement(ctx: "Context") -> None:
    """A write statement's check, reported by the statement loop as its writeError."""
    for db, name, expected in requested_checks(ctx, ctx.name):
        check(ctx, db, name, expected)
