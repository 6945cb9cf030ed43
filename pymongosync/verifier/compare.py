"""Comparing the two clusters: documents byte for byte by ``_id``, collections, indexes, views,
shard keys. The one comparison both the embedded verifier and ``mongosync verify`` use, and
:func:`compare_clusters`, the whole-cluster check the tests and the demo end with.

Documents are compared as BSON bytes (field order and numeric types count). A range of a
collection is read on both sides in ``_id`` index order, the order both servers use; the
documents are paired by ``_id`` value, with a small look-aside of the ones not paired yet, so
memory depends on how much the two sides differ within one range, never on the size of the
collection. Differences found that way are only candidates: they are read again, document by
document, before anything is declared (a write in flight is not a difference).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument

from pymongosync import catalog
from pymongosync.cluster_client import ClusterClient, RangeRead
from pymongosync.identity import id_key
from pymongosync.namespaces import NamespaceFilter
from pymongosync.state import CopiedId, IndexRef, Mismatch, MismatchKind, NamespaceRecord
from pymongosync.store import is_metadata_database

BATCH_DOCUMENTS = 1000
_IGNORED_INDEX_FIELDS = frozenset({"ns", "background", "v"})


def digest(document: RawBSONDocument) -> bytes:
    """A document's bytes, shortened: equal digests mean equal bytes (collisions are out of
    reach at 128 bits); what is kept in memory while pairing documents."""
    return hashlib.blake2b(document.raw, digest_size=16).digest()


@dataclass
class RangeResult:
    """One range hashed on both sides."""

    source_documents: int = 0
    destination_documents: int = 0
    differing: list[Any] = field(default_factory=list)  # _id values to read again


def _batches(cluster: ClusterClient, db: str, coll: str, lower: Any,
             upper: Any) -> Iterator[list[RawBSONDocument]]:
    return iter(cluster.read_batches(RangeRead(db=db, coll=coll, lower=lower, upper=upper,
                                               batch_size=BATCH_DOCUMENTS)))


def compare_range(source: ClusterClient, destination: ClusterClient, db: str, coll: str,
                  lower: Any = None, upper: Any = None,
                  on_batch: Callable[[int, int], None] | None = None) -> RangeResult:
    """Hash the documents of ``[lower, upper)`` (to the end when ``upper`` is None) on both
    sides and return the ``_id``s whose bytes differ or that one side lacks.

    Both sides are read at once (the destination ahead, on a thread of its own). Documents
    come in the same order from both, so the common case — the same bytes at the same place —
    costs one comparison; only documents out of step go through the look-aside, paired by
    ``_id`` value. ``on_batch(side, documents)`` after each batch read (0: source, 1:
    destination)."""
    lower = MinKey() if lower is None else lower
    result = RangeResult()
    waiting: tuple[dict[Hashable, tuple[Any, bytes]], dict[Hashable, tuple[Any, bytes]]] = ({},
                                                                                           {})
    with _prefetched(_batches(destination, db, coll, lower, upper)) as destination_batches:
        source_batches = _batches(source, db, coll, lower, upper)
        left: list[RawBSONDocument] = []
        right: list[RawBSONDocument] = []
        sides_open = [True, True]
        while sides_open[0] or sides_open[1] or left or right:
            if sides_open[0] and not left:
                batch = next(source_batches, None)
                sides_open[0] = batch is not None
                left = batch or []
                _count(result, on_batch, 0, len(left))
            if sides_open[1] and not right:
                batch = next(destination_batches, None)
                sides_open[1] = batch is not None
                right = batch or []
                _count(result, on_batch, 1, len(right))
            steps = min(len(left), len(right))
            matched = 0
            while matched < steps and not waiting[0] and not waiting[1] and \
                    left[matched].raw == right[matched].raw:
                matched += 1
            rest = ((0, left[matched:]), (1, right[matched:])) if steps else \
                ((0, left), (1, right))
            for side, documents in rest:
                for document in documents[:steps - matched] if steps else documents:
                    _pair(document, side, waiting, result)
            left, right = (left[steps:], right[steps:]) if steps else ([], [])
    for leftovers in waiting:
        result.differing.extend(value for value, _ in leftovers.values())
    return result


def _count(result: RangeResult, on_batch: Callable[[int, int], None] | None, side: int,
           documents: int) -> None:
    if side == 0:
        result.source_documents += documents
    else:
        result.destination_documents += documents
    if on_batch is not None and documents:
        on_batch(side, documents)


def _pair(document: RawBSONDocument, side: int,
          waiting: tuple[dict[Hashable, tuple[Any, bytes]], dict[Hashable, tuple[Any, bytes]]],
          result: RangeResult) -> None:
    """A document out of step: matched with its twin by ``_id`` value, or kept waiting."""
    value = document["_id"]
    key = id_key(value)
    seen = digest(document)
    other = waiting[1 - side].pop(key, None)
    if other is None:
        waiting[side][key] = (value, seen)
    elif other[1] != seen:
        result.differing.append(value)


@contextmanager
def _prefetched(batches: Iterator[list[RawBSONDocument]]
                ) -> Iterator[Iterator[list[RawBSONDocument]]]:
    """The batches, read one or two ahead on a thread of their own."""
    ahead: queue.Queue[list[RawBSONDocument] | BaseException | None] = queue.Queue(maxsize=2)
    done = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                while not done.is_set():
                    try:
                        ahead.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            ahead.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised again on the reading side
            ahead.put(exc)

    def taken() -> Iterator[list[RawBSONDocument]]:
        while True:
            item = ahead.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    reader = threading.Thread(target=read, name="verifier-prefetch", daemon=True)
    reader.start()
    try:
        yield taken()
    finally:
        done.set()
        while reader.is_alive():
            try:
                ahead.get(timeout=0.05)
            except queue.Empty:
                pass


@dataclass
class DocumentDifference:
    namespace: str
    id: Any
    kind: MismatchKind
    detail: str = ""

    def mismatch(self) -> Mismatch:
        return Mismatch(namespace=self.namespace, kind=self.kind,
                        document_id=CopiedId(id=self.id), detail=self.detail)


def compare_documents(source: ClusterClient, destination: ClusterClient, db: str, coll: str,
                      ids: list[Any]) -> list[DocumentDifference]:
    """Read the documents with these ``_id``s on both sides now; the ones that differ."""
    namespace = f"{db}.{coll}"
    on_source = _by_id(source.find_by_ids(db, coll, ids))
    on_destination = _by_id(destination.find_by_ids(db, coll, ids))
    differences: list[DocumentDifference] = []
    for value in ids:
        key = id_key(value)
        left, right = on_source.get(key), on_destination.get(key)
        if left is None and right is None:
            continue
        if right is None:
            differences.append(DocumentDifference(namespace, value, MismatchKind.MISSING,
                                                  "on the source, not on the destination"))
        elif left is None:
            differences.append(DocumentDifference(namespace, value, MismatchKind.EXTRA,
                                                  "on the destination, not on the source"))
        elif left.raw != right.raw:
            differences.append(DocumentDifference(namespace, value, MismatchKind.DIFFERENT,
                                                  _explain(left, right)))
    return differences


def _by_id(documents: Iterable[RawBSONDocument]) -> dict[Hashable, RawBSONDocument]:
    return {id_key(document["_id"]): document for document in documents}


def _explain(left: RawBSONDocument, right: RawBSONDocument) -> str:
    """Where two documents first differ, for a person."""
    left_names, right_names = list(left.keys()), list(right.keys())
    if sorted(left_names) == sorted(right_names) and left_names != right_names:
        return f"the same fields in another order ({left_names} != {right_names})"
    for name in left_names:
        if name not in right.keys():
            return f"field {name!r} missing on the destination"
        if _element_bytes(left, name) != _element_bytes(right, name):
            return f"field {name!r} differs"
    extra = [name for name in right_names if name not in left.keys()]
    if extra:
        return f"field {extra[0]!r} only on the destination"
    return "the same fields, other bytes"


def _element_bytes(document: RawBSONDocument, name: str) -> bytes:
    value = document[name]
    if isinstance(value, RawBSONDocument):
        return bytes(value.raw)
    return repr((type(value).__name__, value)).encode()


def describe(mismatch: Mismatch) -> str:
    """One mismatch in a line: where, what, why."""
    where = mismatch.namespace
    if mismatch.document_id is not None:
        where += f" _id {mismatch.document_id.id!r}"
    return f"{where}: {mismatch.kind.value}" + (f" ({mismatch.detail})" if mismatch.detail
                                                 else "")


# -- collections, indexes, views, shard keys ----------------------------------------------------


def normalized_index(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in dict(spec).items()
            if name not in _IGNORED_INDEX_FIELDS}


def _lasting(options: Mapping[str, Any]) -> dict[str, Any]:
    """A collection's options but ``temp``, which says how long a server keeps it, not what
    it is: the destination creates a copy of a temporary collection as a lasting one
    (catalog.temporary_collection_options)."""
    return {key: value for key, value in options.items() if key != "temp"}


def compare_metadata(source: list[NamespaceRecord], destination: list[NamespaceRecord], *,
                     pending_unique: Iterable[IndexRef] = (), compare_indexes: bool = True,
                     expected_shard_keys: Mapping[str, Mapping[str, Any]] | None = None,
                     build_mode: str = "afterDataCopy") -> list[Mismatch]:
    """Collections and views present on both sides with the same options, indexes and shard
    keys. ``pending_unique``: indexes the commit has not made unique yet (``prepareUnique``
    until writes are allowed), which then count as the source's unique ones. ``build_mode``:
    the request's ``buildIndexes``: indexes it leaves out are not expected."""
    mismatches: list[Mismatch] = []
    left = {record.id: record for record in source}
    right = {record.id: record for record in destination}
    for name in sorted(set(left) - set(right)):
        mismatches.append(Mismatch(namespace=name, kind=MismatchKind.COLLECTION,
                                   detail=f"{left[name].kind.value} missing on the destination"))
    for name in sorted(set(right) - set(left)):
        mismatches.append(Mismatch(namespace=name, kind=MismatchKind.COLLECTION,
                                   detail=f"{right[name].kind.value} only on the destination"))
    waiting = {(index.db, index.coll, index.name): index for index in pending_unique}
    for name in sorted(set(left) & set(right)):
        mine, theirs = left[name], right[name]
        if mine.kind != theirs.kind:
            mismatches.append(Mismatch(namespace=name, kind=MismatchKind.COLLECTION,
                                       detail=f"a {mine.kind.value} on the source, a "
                                              f"{theirs.kind.value} on the destination"))
            continue
        kind = MismatchKind.VIEW if mine.kind == "view" else MismatchKind.OPTION
        if _lasting(mine.options) != _lasting(theirs.options):
            mismatches.append(Mismatch(namespace=name, kind=kind,
                                       detail=f"options {mine.options} != {theirs.options}"))
        expected = (expected_shard_keys or {}).get(name)
        if mine.is_collection and compare_indexes:
            built = {spec["name"] for spec in catalog.indexes_to_build(mine.indexes, build_mode)}
            expected_indexes = mine.model_copy(update={"indexes": [
                spec for spec in mine.indexes if spec["name"] in built or spec["name"] == "_id_"]})
            # The index sharding needs is the destination's own shard key's, wherever the key
            # came from: a shardingEntries collection renamed since keeps its key (and index)
            # under a name no entry names. Whether the key is the expected one is checked below.
            mismatches += _compare_indexes(expected_indexes, theirs, waiting, theirs.shard_key)
        if expected is not None and dict(expected) != (theirs.shard_key or {}):
            mismatches.append(Mismatch(namespace=name, kind=MismatchKind.SHARD_KEY,
                                       detail=f"shard key {dict(expected)} expected, "
                                              f"{theirs.shard_key} found"))
    return mismatches


def _compare_indexes(source: NamespaceRecord, destination: NamespaceRecord,
                     waiting: Mapping[tuple[str, str, str], IndexRef],
                     shard_key: Mapping[str, Any] | None) -> list[Mismatch]:
    mismatches: list[Mismatch] = []
    left = {spec["name"]: normalized_index(spec) for spec in source.indexes}
    right = {spec["name"]: normalized_index(spec) for spec in destination.indexes}
    for name in sorted(set(left) - set(right)):
        mismatches.append(Mismatch(namespace=source.id, kind=MismatchKind.INDEX,
                                   detail=f"index {name} missing on the destination"))
    for name in sorted(set(right) - set(left)):
        if shard_key is not None and \
                list(dict(right[name]["key"]).items()) == list(dict(shard_key).items()):
            continue  # the index sharding needs, where the source had none on the key
        if catalog.is_shard_key_stand_in(right[name], shard_key):
            continue  # supports the shard key where the source's index on it cannot
        mismatches.append(Mismatch(namespace=source.id, kind=MismatchKind.INDEX,
                                   detail=f"index {name} only on the destination"))
    for name in sorted(set(left) & set(right)):
        mine, theirs = dict(left[name]), dict(right[name])
        pending = waiting.get((source.db, source.name, name))
        if pending is not None and mine.get("unique") and theirs.pop("prepareUnique", False):
            theirs["unique"] = True  # converted once writes are allowed (spec §6)
            if pending.prepare_unique:  # and set again after the conversion
                theirs["prepareUnique"] = True
        if mine != theirs:
            mismatches.append(Mismatch(namespace=source.id, kind=MismatchKind.INDEX,
                                       detail=f"index {name}: {mine} != {theirs}"))
    return mismatches


# -- the whole-cluster check --------------------------------------------------------------------


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


_OLD_KINDS = {MismatchKind.COLLECTION: "collections", MismatchKind.INDEX: "indexes",
              MismatchKind.OPTION: "options", MismatchKind.VIEW: "options",
              MismatchKind.SHARD_KEY: "shard keys"}


def user_namespaces(cluster: ClusterClient,
                    namespace_filter: NamespaceFilter | None = None,
                    include_views: bool = True) -> list[NamespaceRecord]:
    """Every user collection and view (not the system databases, not migration metadata)."""
    found = catalog.list_namespaces(cluster, namespace_filter or NamespaceFilter())
    return [record for record in found if not is_metadata_database(record.db)
            and (include_views or record.kind != "view")]


def compare_clusters(source: Any, destination: Any,
                     namespace_filter: NamespaceFilter | None = None,
                     compare_indexes: bool = True, include_views: bool = True) -> Comparison:
    """Whole clusters, document by document: the check the tests and the demo end with.

    ``source``/``destination`` are :class:`ClusterClient`s or PyMongo clients.
    ``include_views=False`` for a migration that does not migrate views (pre-existing
    destination data)."""
    from pymongosync.clusters import Cluster

    left = source if not _is_client(source) else Cluster.around("source", source)
    right = destination if not _is_client(destination) else \
        Cluster.around("destination", destination)
    result = Comparison()
    mine = user_namespaces(left, namespace_filter, include_views)
    theirs = user_namespaces(right, namespace_filter, include_views)
    for mismatch in compare_metadata(mine, theirs, compare_indexes=compare_indexes):
        result.differences.append(Difference(mismatch.namespace, _OLD_KINDS[mismatch.kind],
                                             mismatch.detail))
    present = {record.id for record in theirs}
    for record in mine:
        if record.id not in present:
            continue
        result.namespaces += 1
        if not record.is_collection:
            continue
        hashed = compare_range(left, right, record.db, record.name)
        result.documents += hashed.source_documents
        for start in range(0, len(hashed.differing), 500):
            ids = hashed.differing[start:start + 500]
            for difference in compare_documents(left, right, record.db, record.name, ids):
                result.differences.append(Difference(
                    difference.namespace, difference.kind.value,
                    f"_id {difference.id!r}: {difference.detail}"))
    return result


def _is_client(value: Any) -> bool:
    from pymongo import MongoClient

    return isinstance(value, MongoClient)
