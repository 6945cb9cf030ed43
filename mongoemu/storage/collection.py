"""One collection: documents as raw BSON ordered by ``_id``, plus its indexes and options."""

from __future__ import annotations

import collections
import itertools
import uuid
from typing import Any, Iterator

from sortedcontainers import SortedDict

from mongoemu.bsonvalues import decode, sort_key
from mongoemu.errors import CommandError
from mongoemu.storage.indexes import (ID_INDEX_NAME, all_missing, describe_key, id_index_spec,
                                      index_keys)


def format_key_value(key_value: dict[str, Any]) -> str:
    """``{ email: "a@x" }`` as duplicate-key messages show it (server value rendering)."""
    from mongoemu.query.expressions import show
    return "{ " + ", ".join(f"{k}: {show(v)}" for k, v in key_value.items()) + " }"


class UniqueIndex:
    """Maps every key of a unique index to the ``_id`` sort key of the document holding it.

    A ``prepareUnique`` index is one too, except that duplicates already present when it was
    built are tolerated: only new writes are refused.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.tolerates_existing = not spec.get("unique")
        self.entries: dict[tuple, tuple] = {}
        self._matcher = None
        partial = spec.get("partialFilterExpression")
        if partial is not None:
            from mongoemu.query.matcher import Matcher
            self._matcher = Matcher(partial)

    def keys_for(self, document: dict[str, Any]) -> list[tuple]:
        pattern = self.spec["key"]
        if self.spec.get("sparse") and all_missing(document, pattern):
            return []
        if self._matcher is not None and not self._matcher.matches(document):
            return []
        return index_keys(document, pattern)

    def conflict(self, document: dict[str, Any], own_id: tuple | None) -> list[tuple] | None:
        """The document's keys, or None when one of them belongs to another document."""
        keys = self.keys_for(document)
        for key in keys:
            holder = self.entries.get(key)
            if holder is not None and holder != own_id:
                return None
        return keys


class Collection:
    def __init__(self, db: str, name: str, options: dict[str, Any] | None = None,
                 collection_uuid: uuid.UUID | None = None) -> None:
        self.db = db
        self.name = name
        self.options: dict[str, Any] = dict(options or {})
        self.uuid = collection_uuid or uuid.uuid4()
        self.documents: SortedDict = SortedDict()
        self.indexes: dict[str, dict[str, Any]] = {}
        self.unique: dict[str, UniqueIndex] = {}
        self.data_size = 0
        self.insertion_order: collections.OrderedDict | None = (
            collections.OrderedDict() if self.options.get("capped") else None)
        if not self.is_view and not self.is_clustered and not self.is_timeseries:
            self.indexes[ID_INDEX_NAME] = id_index_spec()
        self._arrivals = itertools.count()

    def clone(self) -> "Collection":
        """A private copy a transaction can change without anyone else seeing it."""
        twin = Collection.__new__(Collection)
        twin.db, twin.name, twin.uuid = self.db, self.name, self.uuid
        twin.options = dict(self.options)
        twin.documents = self.documents.copy()
        twin.indexes = dict(self.indexes)
        twin.unique = {}
        for name, index in self.unique.items():
            copy = UniqueIndex.__new__(UniqueIndex)
            copy.__dict__.update(index.__dict__)
            copy.entries = dict(index.entries)
            twin.unique[name] = copy
        twin.data_size = self.data_size
        twin._arrivals = self._arrivals  # noqa: SLF001 - a twin of its own class
        twin.insertion_order = (None if self.insertion_order is None
                                else collections.OrderedDict(self.insertion_order))
        return twin

    # -- identity ----------------------------------------------------------------------------
    @property
    def ns(self) -> str:
        return f"{self.db}.{self.name}"

    @property
    def is_view(self) -> bool:
        return "viewOn" in self.options

    @property
    def is_capped(self) -> bool:
        return bool(self.options.get("capped"))

    @property
    def is_clustered(self) -> bool:
        return "clusteredIndex" in self.options

    @property
    def is_timeseries(self) -> bool:
        return "timeseries" in self.options

    @property
    def kind(self) -> str:
        if self.is_view:
            return "view"
        if self.is_timeseries:
            return "timeseries"
        return "collection"

    @property
    def images_enabled(self) -> bool:
        setting = self.options.get("changeStreamPreAndPostImages")
        return bool(isinstance(setting, dict) and setting.get("enabled"))

    def key_for(self, document: dict[str, Any]) -> tuple:
        """Storage key: the ``_id`` in BSON order; time-series measurements may share an _id."""
        key = sort_key(document["_id"])
        return key + (next(self._arrivals),) if self.is_timeseries else key

    # -- reads -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.documents)

    def get_raw(self, key: tuple) -> bytes | None:
        return self.documents.get(key)

    def get(self, key: tuple) -> dict[str, Any] | None:
        raw = self.documents.get(key)
        return None if raw is None else decode(raw)

    def scan(self, lower: tuple | None = None, upper: tuple | None = None,
             inclusive: tuple[bool, bool] = (True, True), reverse: bool = False,
             natural: bool = False) -> Iterator[tuple[tuple, bytes]]:
        """(id key, raw document) pairs; natural order is insertion order for capped ones.

        Iterates over a snapshot of keys so writes during a long cursor never break it; a
        document deleted meanwhile is skipped, one inserted meanwhile may or may not appear.
        """
        if natural and self.insertion_order is not None:
            keys = list(self.insertion_order)
            if reverse:
                keys.reverse()
        else:
            keys = list(self.documents.irange(lower, upper, inclusive=inclusive, reverse=reverse))
        documents = self.documents
        for key in keys:
            raw = documents.get(key)
            if raw is not None:
                yield key, raw

    # -- writes (callers handle oplog, validation and write blocking) -------------------------
    def check_unique(self, document: dict[str, Any], own_key: tuple | None) -> dict[str, list]:
        keys_by_index: dict[str, list] = {}
        for name, index in self.unique.items():
            keys = index.conflict(document, own_key)
            if keys is None:
                raise self.duplicate_key_error(index.spec, document)
            keys_by_index[name] = keys
        return keys_by_index

    def duplicate_key_error(self, spec: dict[str, Any], document: dict[str, Any]) -> CommandError:
        key_value = describe_key(spec["key"], document)
        return CommandError(
            11000,
            f"E11000 duplicate key error collection: {self.ns} index: {spec['name']} "
            f"dup key: {format_key_value(key_value)}",
            extra={"keyPattern": dict(spec["key"]), "keyValue": key_value},
        )

    def insert(self, key: tuple, raw: bytes, document: dict[str, Any]) -> None:
        if key in self.documents:
            raise self.duplicate_key_error({"key": {"_id": 1}, "name": ID_INDEX_NAME}, document)
        keys_by_index = self.check_unique(document, None) if self.unique else {}
        self.documents[key] = raw
        self.data_size += len(raw)
        for name, keys in keys_by_index.items():
            entries = self.unique[name].entries
            for index_key in keys:
                entries[index_key] = key
        if self.insertion_order is not None:
            self.insertion_order[key] = None

    def replace(self, key: tuple, raw: bytes, document: dict[str, Any],
                old_document: dict[str, Any]) -> None:
        if self.unique:
            keys_by_index = self.check_unique(document, key)
            for name, index in self.unique.items():
                for index_key in index.keys_for(old_document):
                    if index.entries.get(index_key) == key:
                        del index.entries[index_key]
                for index_key in keys_by_index[name]:
                    index.entries[index_key] = key
        self.data_size += len(raw) - len(self.documents[key])
        self.documents[key] = raw

    def remove(self, key: tuple, old_document: dict[str, Any] | None = None) -> None:
        raw = self.documents.pop(key)
        self.data_size -= len(raw)
        if self.unique:
            old_document = old_document if old_document is not None else decode(raw)
            for index in self.unique.values():
                for index_key in index.keys_for(old_document):
                    if index.entries.get(index_key) == key:
                        del index.entries[index_key]
        if self.insertion_order is not None:
            self.insertion_order.pop(key, None)

    def capped_overflow(self) -> list[tuple]:
        """Oldest keys to evict so the capped limits (size in bytes, max documents) hold."""
        if self.insertion_order is None:
            return []
        max_docs = self.options.get("max") or 0
        max_size = self.options.get("size") or 0
        victims: list[tuple] = []
        count, size = len(self.documents), self.data_size
        for key in self.insertion_order:
            if not ((max_docs and count > max_docs) or (max_size and size > max_size)):
                break
            if count <= 1:
                break
            victims.append(key)
            count -= 1
            size -= len(self.documents[key])
        return victims

    # -- indexes -----------------------------------------------------------------------------
    def add_index(self, spec: dict[str, Any]) -> None:
        if (spec.get("unique") or spec.get("prepareUnique")) and spec["name"] != ID_INDEX_NAME:
            index = UniqueIndex(spec)
            for key, raw in self.documents.items():
                document = decode(raw)
                keys = index.conflict(document, key)
                if keys is None:
                    if not index.tolerates_existing:
                        raise self.duplicate_key_error(spec, document)
                    keys = [k for k in index.keys_for(document) if k not in index.entries]
                for index_key in keys:
                    index.entries[index_key] = key
            self.unique[spec["name"]] = index
        self.indexes[spec["name"]] = spec

    def unique_violations(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Groups of documents sharing a key of ``spec`` (what blocks making it unique)."""
        holders: dict[tuple, list[Any]] = {}
        index = UniqueIndex(spec)
        for _, raw in self.documents.items():
            document = decode(raw)
            for key in index.keys_for(document):
                holders.setdefault(key, []).append(document["_id"])
        return [{"ids": ids} for ids in holders.values() if len(ids) > 1]

    def drop_index(self, name: str) -> dict[str, Any]:
        self.unique.pop(name, None)
        return self.indexes.pop(name)

    def find_index(self, name_or_key: Any) -> dict[str, Any] | None:
        clustered = self.options.get("clusteredIndex")
        if isinstance(clustered, dict) and name_or_key in (clustered.get("name"),
                                                            clustered.get("key")):
            return clustered
        if isinstance(name_or_key, str):
            return self.indexes.get(name_or_key)
        for spec in self.indexes.values():
            if spec["key"] == name_or_key:
                return spec
        return None

    def index_list(self) -> list[dict[str, Any]]:
        return list(self.indexes.values())


def id_key(value: Any) -> tuple:
    return sort_key(value)
