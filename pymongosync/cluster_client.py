"""What the migration needs of a cluster: the narrow interface every phase works through.

:class:`ClusterClient` lists every operation the phases perform on the source or the destination
(list namespaces with options and indexes, read ``_id`` ranges, watch, bulk writes, DDL, write
blocking, cluster time, balancer). :class:`pymongosync.clusters.Cluster` implements it over
PyMongo; the unit tests implement it in memory, so phases and the translation of change events
are tested without a server. Documents cross it as raw BSON (``RawBSONDocument``), never decoded.

Errors are PyMongo's: ``OperationFailure`` with the server's code, ``BulkWriteError`` with
``writeErrors``, the network errors :func:`pymongosync.retry.is_transient` recognises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bson.min_key import MinKey
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from pymongosync.state import CopiedId

if TYPE_CHECKING:
    from pymongosync.store import MigrationStore


class RawDocument(Protocol):
    """A document held as its BSON bytes, written as they are: a ``RawBSONDocument``, or a
    document nested in a change event (``pymongosync.changes.events.EventPart``)."""

    @property
    def raw(self) -> bytes | memoryview: ...


# Writes are not frozen: change application makes one or more per event, and a frozen
# dataclass's constructor (object.__setattr__ per field) cost 2.5 times a plain one's
# (0.32 against 0.13 µs). Nothing changes a write once made, or hashes one.
@dataclass(slots=True)
class Upsert:
    """Make the document with this ``_id`` exactly ``document`` (insert or replace)."""

    key: Mapping[str, Any]
    document: RawDocument


@dataclass(slots=True)
class Delete:
    key: Mapping[str, Any]


@dataclass(slots=True)
class Update:
    """An update applied to the document with this ``_id``: an update-operator document, or
    an update pipeline."""

    key: Mapping[str, Any]
    update: Mapping[str, Any] | list[Mapping[str, Any]]
    # The update's BSON size, when whoever made it knows it without encoding it (translation
    # knows it of the updates it makes of the source's bytes); None: counted when sent.
    encoded_size: int | None = None


Write = Upsert | Delete | Update


@dataclass(frozen=True, slots=True)
class RangeRead:
    """Documents of one collection in ``_id`` order from ``lower`` (inclusive) to ``upper``
    (exclusive; ``None`` reads to the end), or the whole collection in natural order.

    ``after``, the ``_id`` of a document already read, resumes just past it.
    ``collection_uuid``, when known, makes the read fail with ``CollectionUUIDMismatch`` if
    the name no longer holds that collection. A batch holds ``batch_size`` documents, or
    fewer once it holds ``max_bytes`` of them (at least one document), so the memory a batch
    takes is bounded whatever the documents' sizes.
    """

    db: str
    coll: str
    lower: Any = field(default_factory=MinKey)
    upper: Any = None
    after: CopiedId | None = None
    natural: bool = False
    collection_uuid: Any = None
    batch_size: int = 1000
    max_bytes: int | None = None


class EventStream(Protocol):
    """An open change stream: events as raw BSON, and where to resume after the last one."""

    def try_next(self) -> RawBSONDocument | None: ...

    def next_events(self, limit: int) -> list[RawBSONDocument]:
        """Up to ``limit`` events at once: those already received, or else what one round
        trip to the server brings (empty: nothing new yet). :attr:`resume_token` is then the
        last one's."""
        ...

    @property
    def buffered(self) -> int:
        """Events already received that :meth:`try_next` hands out without asking the
        server (0: the next call asks it)."""
        ...

    @property
    def resume_token(self) -> Mapping[str, Any] | None: ...

    def close(self) -> None: ...


class ClusterClient(Protocol):
    """One side of a migration, as the phases use it."""

    label: str  # "cluster0" or "cluster1"

    # -- identity and cluster-wide state ---------------------------------------------------------
    @property
    def hosts(self) -> list[str]: ...

    @property
    def display(self) -> str: ...

    @property
    def is_sharded(self) -> bool: ...

    def version(self) -> tuple[int, ...]: ...

    def ping(self) -> None: ...

    def cluster_time(self) -> Timestamp:
        """The newest operation time, made fresh by a no-op write."""
        ...

    def latest_time(self) -> Timestamp:
        """The newest operation time the cluster reports, without writing."""
        ...

    def set_write_block(self, enabled: bool) -> None: ...

    def write_blocked(self) -> bool | None: ...

    def balancer_running(self) -> bool | None: ...

    def set_balancer(self, running: bool) -> None: ...

    def metadata_store(self) -> MigrationStore: ...

    # -- catalog ---------------------------------------------------------------------------------
    def database_names(self) -> list[str]: ...

    def collection_infos(self, db: str, name: str | None = None) -> list[dict[str, Any]]:
        """``listCollections`` entries (all, or the one with this name)."""
        ...

    def find_collection_by_uuid(self, collection_uuid: Any) -> tuple[str, str] | None: ...

    def index_specs(self, db: str, coll: str) -> list[dict[str, Any]]: ...

    def collection_size(self, db: str, coll: str) -> tuple[int, int]:
        """(documents, bytes) as the server estimates them."""
        ...

    def shard_keys(self) -> dict[str, dict[str, Any]]: ...

    def shard_ids(self) -> list[str]:
        """A sharded cluster's shard ids in ``listShards`` order (a replica set: none)."""
        ...

    def chunk_owners(self, db: str, coll: str) -> list[tuple[Any, Any, str]]:
        """``(min, max, shard)`` of each chunk of a collection sharded on ``{_id: 1}``, in
        order; empty for any other collection."""
        ...

    def primary_shard(self, db: str) -> str | None:
        """The shard that holds a database's unsharded collections (None: not sharded)."""
        ...

    def sample_ids(self, db: str, coll: str, count: int) -> list[Any]:
        """About ``count`` random ``_id`` values, sorted in BSON order."""
        ...

    # -- reading ---------------------------------------------------------------------------------
    def read_batches(self, read: RangeRead) -> Iterator[list[RawBSONDocument]]: ...

    def find_by_id(self, db: str, coll: str, key: Mapping[str, Any]) -> RawBSONDocument | None:
        ...

    def find_by_ids(self, db: str, coll: str, ids: list[Any]) -> list[RawBSONDocument]:
        """The documents with these ``_id``s (matched by value, as the server does)."""
        ...

    def watch(self, *, resume_after: Mapping[str, Any] | None = None,
              start_at: Timestamp | None = None, batch_size: int = 1000,
              max_await_ms: int = 250, shard: str | None = None) -> EventStream:
        """Cluster-wide; an idle stream waits up to ``max_await_ms`` for an event, then moves
        its resume token to the newest time the cluster has reached. ``shard``: on a sharded
        cluster, that shard's events alone (its own stream, read through the router)."""
        ...

    # -- writing ---------------------------------------------------------------------------------
    def insert_documents(self, db: str, coll: str, documents: Sequence[RawBSONDocument]) -> None:
        """Unordered insert; raises ``BulkWriteError`` listing the documents that failed."""
        ...

    def write(self, db: str, coll: str, writes: Sequence[Write]) -> None:
        """Ordered writes; raises ``BulkWriteError`` at the first that fails."""
        ...

    # -- DDL -------------------------------------------------------------------------------------
    def create_collection(self, db: str, coll: str, options: Mapping[str, Any]) -> bool:
        """Create a collection or view; False when the namespace exists already."""
        ...

    def drop_collection(self, db: str, coll: str) -> None: ...

    def drop_database(self, db: str) -> None: ...

    def rename_collection(self, source: str, target: str, drop_target: bool) -> None: ...

    def create_index(self, db: str, coll: str, spec: Mapping[str, Any]) -> None: ...

    def create_indexes(self, db: str, coll: str, specs: list[Mapping[str, Any]]) -> None:
        """Several indexes in one ``createIndexes`` command."""
        ...

    def drop_index(self, db: str, coll: str, name: str) -> None: ...

    def modify_collection(self, db: str, coll: str, changes: Mapping[str, Any]) -> None:
        """``collMod`` with these fields."""
        ...

    def shard_collection(self, db: str, coll: str, key: Mapping[str, Any]) -> None: ...
