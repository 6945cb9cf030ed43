"""Databases and their collections."""

from __future__ import annotations

from typing import Any, Iterator

from mongoemu.errors import CommandError
from mongoemu.storage.collection import Collection

INTERNAL_DATABASES = frozenset({"admin", "config", "local"})
_INVALID_DB_CHARS = set('/\\. "$\x00')


def validate_db_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise CommandError(73, f"Invalid database name: '{name}'")
    if any(c in _INVALID_DB_CHARS for c in name) or len(name) >= 64:
        raise CommandError(73, f"Invalid database name: '{name}'")
    return name


def validate_collection_name(db: str, name: Any) -> str:
    if not isinstance(name, str):
        raise CommandError(2, f"collection name has invalid type {type(name).__name__}")
    if not name or "\x00" in name or name.startswith(".") or (
            "$" in name and not name.startswith("oplog.$")):
        raise CommandError(73, f"Invalid collection name: {name}")
    if len(db) + 1 + len(name) > 255:
        raise CommandError(73, f"Fully qualified namespace is too long. Namespace: {db}.{name}")
    return name


class Database:
    def __init__(self, name: str) -> None:
        self.name = name
        self.collections: dict[str, Collection] = {}

    def size_on_disk(self) -> int:
        return sum(c.data_size for c in self.collections.values()) + 4096 * len(self.collections)


class Catalog:
    def __init__(self) -> None:
        self.databases: dict[str, Database] = {}

    def database(self, name: str) -> Database | None:
        return self.databases.get(name)

    def collection(self, db: str, name: str) -> Collection | None:
        database = self.databases.get(db)
        return None if database is None else database.collections.get(name)

    def require(self, db: str, name: str) -> Collection:
        collection = self.collection(db, name)
        if collection is None:
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return collection

    def add(self, collection: Collection) -> None:
        database = self.databases.get(collection.db)
        if database is None:
            database = self.databases[collection.db] = Database(collection.db)
        database.collections[collection.name] = collection

    def remove(self, db: str, name: str) -> Collection | None:
        database = self.databases.get(db)
        if database is None:
            return None
        collection = database.collections.pop(name, None)
        if not database.collections:
            del self.databases[db]
        return collection

    def by_uuid(self, collection_uuid: Any) -> Collection | None:
        for collection in self.all_collections():
            if collection.uuid == collection_uuid:
                return collection
        return None

    def all_collections(self) -> Iterator[Collection]:
        for database in list(self.databases.values()):
            yield from list(database.collections.values())
