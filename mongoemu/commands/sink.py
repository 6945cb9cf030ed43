"""``--discard-writes``: the server as a sink for benchmarks.

Writes to user databases are acknowledged as a server with empty collections answers them,
and their documents are not stored: an insert reports every document inserted, an update
matches nothing (an upsert reports the document it would have inserted and its ``_id``), a
delete removes nothing. Nothing reaches the oplog, so change streams see none of it. The
catalog stays real (collections are created implicitly, DDL works) and so do write blocking
and the databases a tool keeps its own state in (:data:`KEPT_DATABASES`), so a migration tool
runs against it unchanged while the destination costs next to nothing per document.

``findAndModify`` and ``bulkWrite`` on a discarded database are refused (they answer with the
document they changed, which a sink cannot give).
"""

from __future__ import annotations

from typing import Any

from bson.objectid import ObjectId

from mongoemu.context import Context
from mongoemu.errors import CommandError

# The server's own databases, and the metadata databases of mongosync-like tools (their
# state must survive for them to work): written to as usual.
KEPT_DATABASES = frozenset({"admin", "config", "local", "mongosync_reserved_for_internal_use"})
KEPT_PREFIXES = ("__mdb_internal", "mongosync_reserved_for")
NOT_IMPLEMENTED = 238


def discards(ctx: Context, db: str) -> bool:
    """Whether writes to ``db`` are discarded by this server."""
    return bool(ctx.server.config.discard_writes) and db not in KEPT_DATABASES and \
        not db.startswith(KEPT_PREFIXES)


def _collection(ctx: Context, name: str) -> None:
    """As a write would: write blocking applies, the collection is created if absent."""
    writer = ctx.server.writer
    writer.check_writable(ctx, ctx.db)
    writer.collection_for_write(ctx, ctx.db, name)


def insert(ctx: Context, name: str, documents: list[Any]) -> dict[str, Any]:
    _collection(ctx, name)
    errors = [{"index": index, "code": 14, "errmsg": "documents must be objects"}
              for index, document in enumerate(documents) if not isinstance(document, dict)]
    reply: dict[str, Any] = {"n": len(documents) - len(errors)}
    if errors:
        reply["writeErrors"] = errors
    ctx.server.opcounters["insert"] += reply["n"]
    return reply


def _upserted_id(statement: dict[str, Any]) -> Any:
    """The ``_id`` an upsert into an empty collection gives its document."""
    query, update = statement.get("q") or {}, statement.get("u")
    if "_id" in query and not (isinstance(query["_id"], dict) and
                               any(str(key).startswith("$") for key in query["_id"])):
        return query["_id"]
    if isinstance(update, dict) and "_id" in update:
        return update["_id"]
    return ObjectId()


def update(ctx: Context, name: str, statements: list[Any]) -> dict[str, Any]:
    _collection(ctx, name)
    upserted = [{"index": index, "_id": _upserted_id(statement)}
                for index, statement in enumerate(statements)
                if isinstance(statement, dict) and statement.get("upsert")]
    reply: dict[str, Any] = {"n": len(upserted), "nModified": 0}
    if upserted:
        reply["upserted"] = upserted
    ctx.server.opcounters["update"] += len(upserted)
    return reply


def delete(ctx: Context, name: str, statements: list[Any]) -> dict[str, Any]:
    ctx.server.writer.check_writable(ctx, ctx.db)
    return {"n": 0}


def refuse(ctx: Context, what: str) -> None:
    raise CommandError(NOT_IMPLEMENTED, f"{what} is not available on a server started with "
                                        f"--discard-writes (database {ctx.db!r})")
