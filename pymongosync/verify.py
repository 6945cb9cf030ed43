"""Comparing source and destination: documents byte for byte per ``_id``, indexes, options.

Used after commit (and by the demo) to show the two clusters hold the same data. It reads
both sides in ``_id`` order and compares raw BSON, so memory stays flat whatever the size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from pymongo import MongoClient

from pymongosync.clusters import RAW
from pymongosync.metadata import is_metadata_database
from pymongosync.namespaces import NamespaceFilter

_IGNORED_INDEX_FIELDS = ("ns", "background", "v")


@dataclass
class Difference:
    namespace: str
    kind: str  # "missing", "extra", "different", "indexes", "options", "collections"
    detail: str


@dataclass
class Comparison:
    namespaces: int = 0
    documents: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.equal:
            return (f"equal: {self.namespaces} namespaces, {self.documents} documents, same "
                    f"indexes and options")
        shown = "\n".join(f"  {d.namespace}: {d.kind}: {d.detail}" for d in self.differences[:20])
        return f"{len(self.differences)} differences:\n{shown}"


def _namespaces(client: MongoClient, namespace_filter: NamespaceFilter | None) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for db in client.list_database_names():
        if db in ("admin", "config", "local") or is_metadata_database(db):
            continue
        for info in client[db].list_collections():
            name = info["name"]
            if name.startswith("system."):
                continue
            if namespace_filter is not None and not namespace_filter.includes(db, name):
                continue
            found[f"{db}.{name}"] = info
    return found


def _index_specs(client: MongoClient, db: str, name: str) -> list[dict[str, Any]]:
    specs = [{k: v for k, v in dict(spec).items() if k not in _IGNORED_INDEX_FIELDS}
             for spec in client[db][name].list_indexes()]
    return sorted(specs, key=lambda spec: spec["name"])


def _raw_documents(client: MongoClient, db: str, name: str) -> Iterator[Any]:
    collection = client[db].get_collection(name, codec_options=RAW)
    return iter(collection.find({}, batch_size=5000).sort("_id", 1))


def compare_clusters(source: MongoClient, destination: MongoClient,
                     namespace_filter: NamespaceFilter | None = None,
                     compare_indexes: bool = True) -> Comparison:
    result = Comparison()
    source_namespaces = _namespaces(source, namespace_filter)
    destination_namespaces = _namespaces(destination, namespace_filter)
    for missing in sorted(set(source_namespaces) - set(destination_namespaces)):
        result.differences.append(Difference(missing, "collections", "missing on destination"))
    for extra in sorted(set(destination_namespaces) - set(source_namespaces)):
        result.differences.append(Difference(extra, "collections", "only on destination"))
    for namespace in sorted(set(source_namespaces) & set(destination_namespaces)):
        result.namespaces += 1
        db, name = namespace.split(".", 1)
        left, right = source_namespaces[namespace], destination_namespaces[namespace]
        if left.get("type") != right.get("type") or left.get("options") != right.get("options"):
            result.differences.append(Difference(
                namespace, "options", f"{left.get('options')} != {right.get('options')}"))
        if left.get("type") != "collection":
            continue
        if compare_indexes:
            left_indexes, right_indexes = (_index_specs(source, db, name),
                                           _index_specs(destination, db, name))
            if left_indexes != right_indexes:
                result.differences.append(Difference(
                    namespace, "indexes", f"{left_indexes} != {right_indexes}"))
        _compare_documents(source, destination, db, name, result)
    return result


def _compare_documents(source: MongoClient, destination: MongoClient, db: str, name: str,
                       result: Comparison) -> None:
    namespace = f"{db}.{name}"
    left, right = _raw_documents(source, db, name), _raw_documents(destination, db, name)
    by_id_left: dict[bytes, bytes] = {}
    by_id_right: dict[bytes, bytes] = {}
    # Both sides arrive in the same _id order; pair them up with a small look-aside buffer
    # so an unequal document count costs little memory.
    for document in left:
        result.documents += 1
        by_id_left[_id_key(document)] = document.raw
        other = next(right, None)
        if other is not None:
            by_id_right[_id_key(other)] = other.raw
        _settle(by_id_left, by_id_right, namespace, result)
    for other in right:
        by_id_right[_id_key(other)] = other.raw
        _settle(by_id_left, by_id_right, namespace, result)
    for key in by_id_left:
        result.differences.append(Difference(namespace, "missing", f"_id {_show(key)}"))
    for key in by_id_right:
        result.differences.append(Difference(namespace, "extra", f"_id {_show(key)}"))


def _settle(left: dict[bytes, bytes], right: dict[bytes, bytes], namespace: str,
            result: Comparison) -> None:
    for key in [k for k in left if k in right]:
        if left[key] != right[key]:
            result.differences.append(Difference(namespace, "different", f"_id {_show(key)}"))
        del left[key], right[key]


def _id_key(document: Any) -> bytes:
    import bson
    return bson.encode({"_id": document["_id"]})


def _show(key: bytes) -> str:
    import bson
    return repr(bson.decode(key)["_id"])
