"""The 8.0 ``bulkWrite`` admin command: inserts, updates and deletes on any number of
namespaces in one command (what ``MongoClient.bulk_write`` sends).

Each entry of ``ops`` names its namespace by index into ``nsInfo``; the entries run through
the same statement loop and statement functions as the insert, update and delete commands
(commands/crud.py), so ordering, writeErrors, retryable-write history, transactions, write
blocking and validation behave the same. The reply is a cursor over one result per operation
(``{ok, idx, n, nModified?, upserted?}``, or ``{ok: 0, idx, code, errmsg, ...}``; only errors
with ``errorsOnly``) plus the summary counts nErrors, nInserted, nMatched, nModified,
nUpserted and nDeleted (server bulk_write.idl, bulk_write.cpp).
"""

from __future__ import annotations

from typing import Any

from mongoemu import collection_uuid
from mongoemu.bsonvalues import type_name
from mongoemu.commands import sink
from mongoemu.commands.crud import (
    StatementOutcome,
    WriteResult,
    cursor_reply,
    delete_statement,
    insert_statement,
    update_statement,
)
from mongoemu.commands.registry import command
from mongoemu.context import Context
from mongoemu.errors import CommandError
from mongoemu.storage.catalog import validate_collection_name, validate_db_name

MAX_OPERATIONS = 100000
CURSOR_NS = "admin.$cmd.bulkWrite"

# Fields of each kind of entry in ``ops`` (IDL structs are strict: anything else is refused).
_OP_FIELDS: dict[str, frozenset[str]] = {
    "insert": frozenset({"insert", "document"}),
    "update": frozenset({"update", "filter", "sort", "multi", "updateMods", "upsert",
                         "arrayFilters", "hint", "constants", "collation"}),
    "delete": frozenset({"delete", "filter", "multi", "hint", "collation"}),
}
_REQUIRED: dict[str, tuple[str, ...]] = {"insert": ("document",),
                                         "update": ("filter", "updateMods"),
                                         "delete": ("filter",)}
_NS_INFO_FIELDS = frozenset({"ns", "collectionUUID"})
# Fields MongoDB accepts but the emulator does not implement: queryable encryption and what a
# router adds for its shards. Refused rather than ignored.
_UNSUPPORTED_FIELDS = frozenset({"encryptionInformation", "isTimeseriesNamespace", "shardVersion",
                                 "databaseVersion", "upsertSupplied", "sampleId",
                                 "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery"})


class _Namespace:
    """One nsInfo entry: where its operations write, and the UUID they expect there."""

    def __init__(self, db: str, name: str, expected_uuid: Any) -> None:
        self.db = db
        self.name = name
        self.expected_uuid = expected_uuid
        self.target: list[Any] = []  # the collection once resolved, for consecutive inserts


@command("bulkWrite", in_transaction=True)
def bulk_write(ctx: Context) -> dict[str, Any]:
    if ctx.server.config.max_wire_version < 25:
        raise CommandError(59, "no such command: 'bulkWrite'")  # new in 8.0
    if ctx.db != "admin":
        raise CommandError(13, "bulkWrite may only be run against the admin database.")
    body = ctx.body
    ops = _array(body, "ops")
    namespaces = [_namespace(ctx, index, entry)
                  for index, entry in enumerate(_array(body, "nsInfo"))]
    kinds = [_check_op(op, len(namespaces)) for op in ops]
    for namespace in namespaces:
        if sink.discards(ctx, namespace.db):
            sink.refuse(ctx, "bulkWrite")
    if not ops or len(ops) > MAX_OPERATIONS:
        raise CommandError(16, f"Write batch sizes must be between 1 and {MAX_OPERATIONS}. Got "
                               f"{len(ops)} operations.", code_name_override="InvalidLength")
    for field in ("ordered", "errorsOnly", "bypassDocumentValidation"):
        if field in body and not isinstance(body[field], bool):
            raise _wrong_type(field, body[field], "bool")
    if "let" in body and not isinstance(body["let"], dict):
        raise _wrong_type("let", body["let"], "object")
    batch_size = _batch_size(body)

    result = WriteResult(keep_outcomes=True)

    def apply(index: int, op: dict[str, Any]) -> None:
        kind = kinds[index]
        namespace = namespaces[op[kind]]
        if namespace.expected_uuid is not None:
            collection_uuid.check(ctx, namespace.db, namespace.name, namespace.expected_uuid)
        if kind == "insert":
            insert_statement(ctx, namespace.db, namespace.name, op["document"], None,
                             namespace.target)
            result.n += 1
        elif kind == "update":
            update_statement(ctx, namespace.db, namespace.name, index, _update_statement(op),
                             result)
        else:
            delete_statement(ctx, namespace.db, namespace.name, _delete_statement(op), result)

    result.run(ctx, ops, apply)
    return _reply(ctx, kinds, result, bool(body.get("errorsOnly", False)), batch_size)


def _reply(ctx: Context, kinds: list[str], result: WriteResult, errors_only: bool,
           batch_size: int | None) -> dict[str, Any]:
    outcomes: dict[int, StatementOutcome] = result.outcomes or {}
    errors = {error["index"]: error for error in result.errors}
    counts = {"nInserted": 0, "nMatched": 0, "nModified": 0, "nUpserted": 0, "nDeleted": 0}
    items: list[dict[str, Any]] = []
    for index, kind in enumerate(kinds):
        outcome = outcomes.get(index)
        if outcome is not None:
            item: dict[str, Any] = {"ok": 1.0, "idx": index, "n": outcome.n}
            if kind == "insert":
                counts["nInserted"] += outcome.n
            elif kind == "delete":
                counts["nDeleted"] += outcome.n
            else:
                item["nModified"] = outcome.modified
                counts["nModified"] += outcome.modified
                if outcome.upserted:
                    item["upserted"] = {"_id": outcome.upserted[0]["_id"]}
                    counts["nUpserted"] += 1
                else:
                    counts["nMatched"] += outcome.n
            if not errors_only:
                items.append(item)
        elif index in errors:
            items.append(_error_item(index, kind, errors[index]))
    ctx.server.opcounters["insert"] += counts["nInserted"]
    ctx.server.opcounters["update"] += counts["nMatched"] + counts["nUpserted"]
    ctx.server.opcounters["delete"] += counts["nDeleted"]
    # Every result fits the first batch unless the client asked for smaller batches.
    limit = batch_size if batch_size is not None else max(len(items), 1)
    reply = cursor_reply(ctx, CURSOR_NS, items, limit)
    return {**reply, "nErrors": len(errors), **counts}


def _error_item(index: int, kind: str, error: dict[str, Any]) -> dict[str, Any]:
    """A failed operation's result: its error without codeName (BulkWriteReplyItem)."""
    item: dict[str, Any] = {"ok": 0.0, "idx": index, "code": error["code"],
                            "errmsg": error["errmsg"]}
    item.update((key, value) for key, value in error.items()
                if key not in ("index", "code", "codeName", "errmsg"))
    item["n"] = 0
    if kind == "update":
        item["nModified"] = 0
    return item


def _update_statement(op: dict[str, Any]) -> dict[str, Any]:
    """The update command's statement for a bulkWrite update entry."""
    if op.get("sort") is not None and op.get("multi"):
        raise CommandError(9, "Cannot specify sort with multi=true")
    statement: dict[str, Any] = {"q": op["filter"], "u": op["updateMods"],
                                 "multi": bool(op.get("multi", False)),
                                 "upsert": bool(op.get("upsert", False))}
    for field, target in (("arrayFilters", "arrayFilters"), ("hint", "hint"),
                          ("collation", "collation"), ("constants", "c"), ("sort", "sort")):
        if field in op:
            statement[target] = op[field]
    return statement


def _delete_statement(op: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = {"q": op["filter"], "limit": 0 if op.get("multi") else 1}
    for field in ("hint", "collation"):
        if field in op:
            statement[field] = op[field]
    return statement


# -- parsing ---------------------------------------------------------------------------------


def _array(body: dict[str, Any], field: str) -> list[Any]:
    value = body.get(field)
    if value is None:
        raise CommandError(40414, f"BSON field 'bulkWrite.{field}' is missing but a required "
                                  f"field")
    if not isinstance(value, list):
        raise _wrong_type(field, value, "array")
    return value


def _namespace(ctx: Context, index: int, entry: Any) -> _Namespace:
    if not isinstance(entry, dict):
        raise _wrong_type(f"nsInfo.{index}", entry, "object")
    unknown = [field for field in entry if field not in _NS_INFO_FIELDS]
    if unknown:
        raise _unknown(f"nsInfo.{unknown[0]}", unknown[0])
    ns = entry.get("ns")
    if ns is None:
        raise CommandError(40414, "BSON field 'bulkWrite.nsInfo.ns' is missing but a required "
                                  "field")
    if not isinstance(ns, str):
        raise _wrong_type("nsInfo.ns", ns, "string")
    db, _, name = ns.partition(".")
    try:
        if not name:
            raise CommandError(73, "")
        validate_db_name(db)
        validate_collection_name(db, name)
    except CommandError as exc:
        raise CommandError(73, f"Invalid namespace specified for bulkWrite: '{ns}'") from exc
    expected = None
    if "collectionUUID" in entry:
        expected = collection_uuid.expected_uuid(ctx, entry["collectionUUID"],
                                                 "bulkWrite.nsInfo.collectionUUID")
    return _Namespace(db, name, expected)


def _check_op(op: Any, namespace_count: int) -> str:
    """The kind of an ops entry (insert, update or delete), refusing a malformed one."""
    if not isinstance(op, dict) or not op:
        raise CommandError(2, "BulkWrite ops entry must be a non-empty object")
    kind = next(iter(op))
    if kind not in _OP_FIELDS:
        raise CommandError(40415, f"BSON field 'bulkWrite.ops.{kind}' is an unknown field.")
    unknown = [field for field in op if field not in _OP_FIELDS[kind]]
    if unknown:
        raise _unknown(f"ops.{unknown[0]}", unknown[0])
    index = op[kind]
    if isinstance(index, bool) or not isinstance(index, (int, float)) or index != int(index):
        raise _wrong_type(f"ops.{kind}", index, "int")
    if index < 0:
        raise CommandError(51024, f"BSON field '{kind}' value must be >= 0, actual value "
                                  f"'{int(index)}'")
    op[kind] = int(index)
    for field in _REQUIRED[kind]:
        if field not in op:
            raise CommandError(40414, f"BSON field 'bulkWrite.ops.{field}' is missing but a "
                                      f"required field")
    document_fields = {"document": "object", "filter": "object", "sort": "object",
                       "constants": "object", "collation": "object"}
    for field, expected in document_fields.items():
        if field in op and not isinstance(op[field], dict):
            raise _wrong_type(f"ops.{field}", op[field], expected)
    if "updateMods" in op and not isinstance(op["updateMods"], (dict, list)):
        raise _wrong_type("ops.updateMods", op["updateMods"], "object")
    for field in ("multi", "upsert"):
        if field in op and not isinstance(op[field], bool):
            raise _wrong_type(f"ops.{field}", op[field], "bool")
    if "arrayFilters" in op and not isinstance(op["arrayFilters"], list):
        raise _wrong_type("ops.arrayFilters", op["arrayFilters"], "array")
    if op[kind] >= namespace_count:
        raise CommandError(2, f"BulkWrite ops entry {op} has an invalid nsInfo index.")
    return kind


def _batch_size(body: dict[str, Any]) -> int | None:
    cursor = body.get("cursor")
    if cursor is None:
        return None
    if not isinstance(cursor, dict):
        raise _wrong_type("cursor", cursor, "object")
    size = cursor.get("batchSize")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise _wrong_type("cursor.batchSize", size, "int")
    if size < 0:
        raise CommandError(51024, f"BSON field 'batchSize' value must be >= 0, actual value "
                                  f"'{size}'")
    return size


def _unknown(path: str, field: str) -> CommandError:
    if field in _UNSUPPORTED_FIELDS:
        return CommandError(115, f"BSON field 'bulkWrite.{path}' is not supported by the emulator "
                                 f"(queryable encryption and router-to-shard fields are out of "
                                 f"its scope)")
    return CommandError(40415, f"BSON field 'bulkWrite.{path}' is an unknown field.")


def _wrong_type(field: str, value: Any, expected: str) -> CommandError:
    return CommandError(14, f"BSON field 'bulkWrite.{field}' is the wrong type "
                            f"'{type_name(value)}', expected type '{expected}'")
