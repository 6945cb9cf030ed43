"""An independent comparison of two clusters, written with plain PyMongo and no product code, so
that a defect shared by pymongosync and its own verifier cannot hide a difference.

Documents are compared as raw BSON, keyed by the exact bytes of their ``_id`` (type included:
``1`` and ``1.0`` are different keys here, so a type swapped on the way is a missing and an
extra document). Collections and views by type and options, indexes by name and every field
but ``v``/``ns``/``background``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import bson
import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.son import SON

RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True,
                   datetime_conversion=DatetimeConversion.DATETIME_AUTO)
DECODED = CodecOptions(document_class=SON, tz_aware=True,
                       datetime_conversion=DatetimeConversion.DATETIME_AUTO)
SKIPPED_DATABASES = ("admin", "config", "local")
METADATA_PREFIXES = ("mongosync_reserved_for_internal_use", "__mdb_internal")
IGNORED_INDEX_FIELDS = ("v", "ns", "background")
# The index mongosync builds on a sharded destination collection (the shard key, then a field
# of this name) where the source's own index on the key cannot support it (README).
SHARD_KEY_STAND_IN = "mongosync_shard_key_support"

_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
          0x13: 16, 0x7F: 0, 0xFF: 0}


def _value_size(data: bytes, position: int, kind: int) -> int:
    if kind in _FIXED:
        return _FIXED[kind]
    length = int.from_bytes(data[position:position + 4], "little")
    if kind in (0x02, 0x0D, 0x0E):
        return 4 + length
    if kind in (0x03, 0x04, 0x0F):
        return length
    if kind == 0x05:
        return 5 + length
    if kind == 0x0B:
        first = data.index(b"\x00", position)
        return data.index(b"\x00", first + 1) + 1 - position
    if kind == 0x0C:
        return 4 + length + 12
    raise ValueError(f"unknown BSON type 0x{kind:02x}")


def id_bytes(raw: bytes) -> bytes:
    """The type byte and value bytes of the top-level ``_id`` element."""
    position, end = 4, len(raw) - 1
    while position < end:
        kind = raw[position]
        name_end = raw.index(b"\x00", position + 1)
        name = raw[position + 1:name_end]
        start = name_end + 1
        size = _value_size(raw, start, kind)
        if name == b"_id":
            return bytes([kind]) + raw[start:start + size]
        position = start + size
    raise ValueError("document without _id")


def _namespaces(client: pymongo.MongoClient) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for db in client.list_database_names():
        if db in SKIPPED_DATABASES or db.startswith(METADATA_PREFIXES):
            continue
        database = client.get_database(db, codec_options=DECODED)
        for info in database.list_collections():
            if info["name"].startswith("system."):
                continue
            found[f"{db}.{info['name']}"] = {"type": info.get("type", "collection"),
                                             "options": _plain(info.get("options", {}))}
    return found


def _plain(value: Any) -> Any:
    """Options compared without caring for the order of option names (not data), but keeping
    the order inside key patterns and values."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _indexes(client: pymongo.MongoClient, db: str, coll: str) -> dict[str, Any]:
    collection = client.get_database(db, codec_options=DECODED)[coll]
    specs = {}
    for spec in collection.list_indexes():
        specs[spec["name"]] = {key: (list(value.items()) if key == "key" else _plain(value))
                               for key, value in spec.items() if key not in IGNORED_INDEX_FIELDS}
    return specs


def _documents(client: pymongo.MongoClient, db: str, coll: str) -> dict[bytes, bytes]:
    collection = client.get_database(db, codec_options=RAW)[coll]
    documents: dict[bytes, bytes] = {}
    for document in collection.find({}, batch_size=2000):
        raw = bytes(document.raw)
        documents[id_bytes(raw)] = raw
    return documents


def compare(source: pymongo.MongoClient, destination: pymongo.MongoClient, *,
            include: Callable[[str, str], bool] | None = None, include_views: bool = True,
            destination_own: Iterable[str] = (),
            destination_shard_keys: Mapping[str, list[Any]] | None = None) -> list[str]:
    """Every difference between the two clusters, one line each (empty: equal).

    ``include(db, coll)``: the source namespaces migrated (a namespace filter); the destination
    must hold exactly those, apart from ``destination_own``, namespaces it held before the
    migration (pre-existing data, checked with :func:`snapshot`). ``include_views=False``: the
    source's views are not migrated (pre-existing destination data).
    ``destination_shard_keys`` (:func:`shard_keys`): a sharded destination collection may have
    one index more than its source, on exactly its shard key (sharding needs one), and the
    stand-in that supports the key in place of the source's (:data:`SHARD_KEY_STAND_IN`)."""
    shard_keys = destination_shard_keys or {}
    differences: list[str] = []
    left = {name: info for name, info in _namespaces(source).items()
            if (include is None or include(*name.split(".", 1)))
            and (include_views or info["type"] != "view")}
    own = set(destination_own)
    right = {name: info for name, info in _namespaces(destination).items() if name not in own}
    for name in sorted(set(left) - set(right)):
        differences.append(f"{name}: missing on the destination ({left[name]['type']})")
    for name in sorted(set(right) - set(left)):
        differences.append(f"{name}: only on the destination ({right[name]['type']})")
    for name in sorted(set(left) & set(right)):
        mine, theirs = left[name], right[name]
        if mine != theirs:
            differences.append(f"{name}: {mine} != {theirs}")
            continue
        if mine["type"] != "collection":
            continue
        db, coll = name.split(".", 1)
        left_indexes, right_indexes = _indexes(source, db, coll), _indexes(destination, db, coll)
        key = shard_keys.get(name)
        made_by_sharding = [index for index, spec in right_indexes.items()
                            if index not in left_indexes and spec["key"] == key]
        for index in made_by_sharding[:1]:
            del right_indexes[index]
        stand_in = right_indexes.get(SHARD_KEY_STAND_IN)
        if key is not None and stand_in is not None and SHARD_KEY_STAND_IN not in left_indexes \
                and stand_in["key"] == [*key, (SHARD_KEY_STAND_IN, 1)]:
            del right_indexes[SHARD_KEY_STAND_IN]
        if left_indexes != right_indexes:
            differences.append(f"{name}: indexes {left_indexes} != {right_indexes}")
        left_documents = _documents(source, db, coll)
        right_documents = _documents(destination, db, coll)
        for key in left_documents.keys() - right_documents.keys():
            differences.append(f"{name}: document missing on the destination: _id "
                               f"{_show_id(left_documents[key])}")
        for key in right_documents.keys() - left_documents.keys():
            differences.append(f"{name}: document only on the destination: _id "
                               f"{_show_id(right_documents[key])}")
        for key in left_documents.keys() & right_documents.keys():
            if left_documents[key] != right_documents[key]:
                differences.append(f"{name}: document differs: _id "
                                   f"{_show_id(left_documents[key])}")
    return differences


def shard_keys(client: pymongo.MongoClient) -> dict[str, list[Any]]:
    """The sharded collections of a cluster (through its router) and their key patterns, as
    :func:`_indexes` shows an index's key."""
    found: dict[str, list[Any]] = {}
    for entry in client.get_database("config", codec_options=DECODED).collections.find():
        if not entry.get("dropped"):
            found[entry["_id"]] = list(entry["key"].items())
    return found


def counts(client: pymongo.MongoClient) -> tuple[int, int]:
    """(namespaces, documents) of a cluster, as :func:`compare` sees it."""
    namespaces = _namespaces(client)
    documents = 0
    for name, info in namespaces.items():
        if info["type"] == "collection":
            db, coll = name.split(".", 1)
            documents += client[db][coll].count_documents({})
    return len(namespaces), documents


def _show_id(raw: bytes) -> str:
    try:
        return repr(bson.decode(raw, DECODED)["_id"])[:200]
    except Exception:  # noqa: BLE001 - shown for a person only
        return repr(id_bytes(raw))


def snapshot(client: pymongo.MongoClient, namespaces: Iterable[str]) -> dict[str, Any]:
    """Options, indexes and documents of some namespaces (to show they were left alone)."""
    found = _namespaces(client)
    taken: dict[str, Any] = {}
    for name in sorted(namespaces):
        db, coll = name.split(".", 1)
        info = found.get(name)
        taken[name] = None if info is None else (
            info, _indexes(client, db, coll), _documents(client, db, coll))
    return taken
