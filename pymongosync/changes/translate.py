"""From a batch of change events to the writes that bring the destination up to date: pure.

Events of one batch become a list of steps, in source order:

- :class:`CrudStep` — the CRUD events between two barriers, as writes grouped by applier lane
  and namespace. Per document, the source's order is kept, and every write before a full-state
  write (insert, replace, delete) is dropped: that write alone decides the document's state.
  Every write is idempotent (inserts and replaces become upserting replacements, updates set
  absolute values), so replaying a batch after a crash changes nothing. Each document's writes
  go to one lane, chosen from its ``_id`` as the server compares them (1, 1.0 and
  NumberLong(1) are one document, so one lane), so lanes applying in parallel keep every
  document's order.
- :class:`DdlStep` — one DDL event; it is a barrier: writes before it are applied before it,
  writes after it after it.
- A :class:`CrudStep` with ``barrier`` set — a multi-document transaction whose writes span
  lanes (or may, when it crosses a batch boundary): applied once everything before it is,
  and before anything after it.

Events outside the namespace filter are dropped here. Nothing in this module talks to a cluster.
"""

from __future__ import annotations


from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from pymongosync.catalog import uuid_bytes
from pymongosync.changes import events as parse
from pymongosync.changes.hot_documents import HotDocuments
from pymongosync.changes.reader import CRUD
from pymongosync.cluster_client import Delete, Update, Upsert, Write
from pymongosync.namespaces import NamespaceFilter
from pymongosync.received import RAW, RECEIVED

Namespace = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Refetch:
    """Take the document as the source has it now: the event cannot be expressed as an update
    (e.g. field names containing dots or starting with ``$``)."""

    key: Mapping[str, Any]


Operation = Write | Refetch
LaneWrites = dict[Namespace, list[Operation]]


@dataclass
class CrudStep:
    """Writes per lane and namespace ``(db, coll)``, each list in the order to apply it, and
    the UUID of each namespace's collection (to find it again if it is renamed)."""

    lanes: list[LaneWrites]
    collection_uuids: dict[Namespace, Any] = field(default_factory=dict)
    events: int = 0
    last_time: Timestamp | None = None  # of its last event (crudLagSeconds)
    # A transaction whose writes span lanes: nothing else may be in flight while it applies.
    barrier: bool = False

    @property
    def writes(self) -> LaneWrites:
        """Every lane's writes, per namespace (one lane: its own)."""
        if len(self.lanes) == 1:
            return self.lanes[0]
        merged: LaneWrites = {}
        for lane in self.lanes:
            for namespace, operations in lane.items():
                merged.setdefault(namespace, []).extend(operations)
        return merged


@dataclass(frozen=True)
class DdlStep:
    event: Mapping[str, Any]
    # Part of a transaction: a checkpoint right after it would fall inside the transaction.
    in_transaction: bool = False
    # A rename the listing saw under neither name (see Listing.ddl_action): the collection
    # was never copied, so it is copied whole under its new name instead of being renamed.
    copy_target: bool = False
    # Just before it: the event before it in its batch (None: it is the batch's first).
    before: Position | None = None
    events_before: int = 0  # the events of its batch before it (filtered or not)


Step = CrudStep | DdlStep
# What Listing.ddl_action says of a DDL event (checked by mypy where it is compared).
DdlAction = Literal["apply", "seen", "copy-target"]


@dataclass(frozen=True)
class SourceChange:
    """A document changed on the source, as the verifier is told of it."""

    db: str
    coll: str
    id_document: bytes  # {_id: <value>} as BSON
    time: Timestamp


@dataclass(frozen=True)
class Position:
    """A place in the source's change stream: a resume token and the time it stands for."""

    token: Mapping[str, Any]
    time: Timestamp | None  # None: only the token tells (a batch without events)


@dataclass(frozen=True)
class Listing:
    """What the listing of the source's namespaces saw, for the events before it.

    The change stream starts at /start's time; the namespaces are listed after it. An event
    before a database was listed is already in what the listing saw: its DDL events are not
    applied again (a rename or a drop the listing saw would undo what was copied), and its CRUD
    events are applied to the collection they concern by its UUID, where the listing found it
    (not by the name they had then), or not at all when the listing found it no more.
    """

    started: Timestamp | None = None  # before any database was listed
    times: Mapping[str, Timestamp] = field(default_factory=dict)  # per database
    locations: Mapping[bytes, Namespace] = field(default_factory=dict)  # UUID -> namespace
    until: Timestamp | None = None  # from then on, every event is after the listing

    @classmethod
    def of(cls, started: Timestamp | None, times: Mapping[str, Timestamp],
           collections: Iterable[tuple[str, str, Any]]) -> Listing:
        """From the listing's times and its collections ``(db, name, uuid)``."""
        locations = {key: (db, name) for db, name, value in collections
                     if (key := uuid_bytes(value)) is not None}
        latest = max([*times.values(), *([started] if started is not None else [])],
                     default=None)
        return cls(started, dict(times), locations, latest)

    def before(self, db: str, time: Timestamp) -> bool:
        """Whether an event of ``db`` at ``time`` came before the listing saw ``db``."""
        if self.until is None or time >= self.until:
            return False
        listed = self.times.get(db, self.started)
        return listed is not None and time < listed

    def ddl_action(self, db: str, time: Timestamp,
                   renamed_to_db: str | None = None) -> DdlAction:
        """What to do with a DDL event of ``db`` at ``time``: ``"apply"`` it; ``"seen"``, the
        listing saw its effect; or, for a rename into another database (``renamed_to_db``),
        ``"copy-target"``: the source database was listed after the rename and the target's
        before it, so the listing found the collection under neither name and nothing copied
        it (applying nothing lost it; renaming would find no collection to rename)."""
        if not self.before(db, time):
            return "apply"
        if renamed_to_db is not None and renamed_to_db != db and \
                not self.before(renamed_to_db, time):
            return "copy-target"
        return "seen"


@dataclass
class Translation:
    steps: list[Step]
    events: int  # every event of the batch, filtered or not
    crud_events: int
    last_time: Timestamp | None
    # The transaction the batch ends in, which the next batch may go on with (None: the batch
    # ends outside any transaction).
    open_transaction: Hashable | None = None
    # The last event before that transaction, when it began in this batch: the latest place a
    # checkpoint may be taken (None when the batch ends outside a transaction, or the
    # transaction began in an earlier batch).
    before_open_transaction: Position | None = None
    changes: list[SourceChange] = field(default_factory=list)
    # CRUD events of hot documents (--hotDocIDs) skipped: taken from the source at commit.
    hot_skipped: int = 0


class Translator:
    """Translates batch after batch with the same settings (and decodes each namespace once).

    ``by_document_key``: which document an event is about, and how its writes find it: by
    ``_id`` (a replica set holds one document per ``_id``), or, for a sharded destination, by
    the whole ``documentKey`` (shard key and ``_id``): a document a sharded source moves by
    changing its shard key is deleted under the old key and written under the new one. Lanes
    are chosen by ``_id`` either way, so those two writes stay in order in one lane.

    The CRUD events of ``hot_documents`` are skipped (:mod:`pymongosync.changes.hot_documents`);
    the verifier is still told of the changes they make.
    """

    def __init__(self, namespace_filter: NamespaceFilter, by_document_key: bool = False,
                 lanes: int = 1, listing: Listing | None = None,
                 hot_documents: HotDocuments | None = None) -> None:
        self.by_document_key = by_document_key
        self.hot_documents = hot_documents or HotDocuments()
        self.lanes = lanes
        self.listing = listing if listing is not None and listing.until is not None else None
        self._namespaces = parse.Namespaces(namespace_filter)
        # The transaction the previous batch ended in: this batch may go on with it.
        self._open_transaction: Hashable | None = None

    def translate(self, events: Sequence[Mapping[str, Any]],
                  note_changes: bool = False) -> Translation:
        """The steps that apply ``events`` (one batch, in stream order); with
        ``note_changes``, also each document they change (what the verifier is told)."""
        if not events:
            # The stream had nothing more to give: a transaction it was in is over (its
            # events are all handed out together, as the server groups them).
            self._open_transaction = None
        steps: list[Step] = []
        pending: list[_Added] = []  # the CRUD events of the step being gathered
        run: list[_Added] = []  # the CRUD events of the transaction being gathered
        run_id: Hashable | None = self._open_transaction
        run_continues = run_id is not None  # began in an earlier batch
        count = 0
        last_time: Timestamp | None = None
        previous: dict[str, Any] | None = None  # the event before the current one
        before_run: dict[str, Any] | None = None
        changes: list[SourceChange] = []
        hot = self.hot_documents
        hot_namespaces = hot.namespaces
        hot_skipped = 0
        namespace_of = self._namespaces.of
        by_document_key, lanes = self.by_document_key, self.lanes
        listing = self.listing
        if listing is not None and events and listing.until is not None and \
                parse.fields(events[0])["clusterTime"] >= listing.until:
            listing = None  # a batch is in time order: all of it is after the listing

        def flush() -> None:
            if pending:
                steps.append(_collapse(pending, lanes))
                pending.clear()

        def end_run(continues_after: bool) -> None:
            if not run:
                return
            spans_lanes = len({added[3] for added in run}) > 1
            if lanes > 1 and (spans_lanes or run_continues or continues_after):
                flush()
                steps.append(_collapse(run, lanes, barrier=True))
            else:
                pending.extend(run)
            run.clear()

        fields, identify = parse.fields, parse.identify
        for event in events:
            top = fields(event)
            count += 1
            if "txnNumber" in top:
                transaction: Hashable | None = _transaction_of(top)
                if transaction != run_id:
                    end_run(continues_after=False)
                    run_id, run_continues, before_run = transaction, False, previous
            elif run_id is not None:
                transaction = None
                end_run(continues_after=False)
                run_id, run_continues, before_run = None, False, previous
            else:
                transaction = None
            prior, previous = previous, top
            if top["operationType"] not in CRUD:
                action: DdlAction = "apply" if listing is None or "ns" not in top else \
                    listing.ddl_action(parse.part_fields(top["ns"])["db"], top["clusterTime"],
                                       _renamed_to_db(top))
                if action == "seen":
                    continue  # the listing saw it
                end_run(continues_after=False)
                flush()
                steps.append(DdlStep(
                    event, in_transaction=transaction is not None,
                    copy_target=action == "copy-target",
                    before=None if prior is None else
                    Position(parse.decoded(prior["_id"]), prior["clusterTime"]),
                    events_before=count - 1))
                continue
            namespace, included = namespace_of(top["ns"])
            if listing is not None and listing.before(namespace[0], top["clusterTime"]):
                listed = top.get("collectionUUID")
                if listed is not None:
                    found = listing.locations.get(uuid_bytes(listed) or b"")
                    if found is None:
                        continue  # its collection was gone when the listing came
                    namespace, included = found, True
            if not included:
                continue
            document_key = top["documentKey"].raw
            id_doc, identity = identify(document_key)
            if namespace in hot_namespaces and (namespace, identity) in hot:
                hot_skipped += 1
                if note_changes:
                    changes.append(SourceChange(*namespace, id_doc, top["clusterTime"]))
                continue
            (pending if transaction is None else run).append(
                (top, namespace, parse.key_identity(document_key), hash(identity) % lanes,
                 document_key) if by_document_key else
                (top, namespace, identity, hash(identity) % lanes, id_doc))
            if note_changes:
                changes.append(SourceChange(*namespace, id_doc, top["clusterTime"]))
        if previous is not None:
            last_time = previous["clusterTime"]
        end_run(continues_after=run_id is not None)
        flush()
        self._open_transaction = run_id
        before = None if run_id is None or run_continues or before_run is None else \
            Position(parse.decoded(before_run["_id"]), before_run["clusterTime"])
        return Translation(steps=steps, events=count,
                           crud_events=sum(step.events for step in steps
                                           if isinstance(step, CrudStep)),
                           last_time=last_time, open_transaction=run_id,
                           before_open_transaction=before, changes=changes,
                           hot_skipped=hot_skipped)

    def forget_open_transaction(self) -> None:
        """The stream is read again from a checkpoint: no batch goes on with the last one."""
        self._open_transaction = None

    def collapse(self, events: Iterable[Mapping[str, Any]]) -> CrudStep:
        """CRUD events (within the filter or not) as one step's writes."""
        added: list[_Added] = []
        for event in events:
            top = parse.fields(event)
            namespace, _ = self._namespaces.of(top["ns"])
            document_key = top["documentKey"].raw
            id_doc, identity = parse.identify(document_key)
            added.append(
                (top, namespace, parse.key_identity(document_key), hash(identity) % self.lanes,
                 document_key) if self.by_document_key else
                (top, namespace, identity, hash(identity) % self.lanes, id_doc))
        return _collapse(added, self.lanes)


def _collapse(changes: list[_Added], lanes: int, barrier: bool = False) -> CrudStep:
    """CRUD events as one step's writes: per namespace and document, nothing before the
    document's last full-state write, in the document's lane."""
    # Per namespace and document: its lane, how writes find it, its events since its last
    # full-state write.
    documents: dict[Namespace, dict[Hashable, tuple[int, bytes, list[dict[str, Any]]]]] = {}
    collection_uuids: dict[Namespace, Any] = {}
    for top, namespace, identity, lane, key in changes:
        by_key = documents.get(namespace)
        if by_key is None:
            # Between two barriers a namespace is one collection (a drop or a rename is a
            # DDL event, which ends the step): its UUID is the first event's.
            by_key = documents[namespace] = {}
            uuid = top.get("collectionUUID")
            if uuid is not None:
                collection_uuids[namespace] = uuid
        if top["operationType"] == "update":
            entry = by_key.get(identity)
            if entry is not None:
                entry[2].append(top)
                continue
        # A full-state write makes every earlier write to the document moot.
        by_key[identity] = (lane, key, [top])
    step = CrudStep(lanes=[{} for _ in range(lanes)], collection_uuids=collection_uuids,
                    events=len(changes), last_time=changes[-1][0]["clusterTime"],
                    barrier=barrier)
    for namespace, by_key in documents.items():
        for lane, key, document_events in by_key.values():
            writes = step.lanes[lane]
            operations = writes.get(namespace)
            if operations is None:
                operations = writes[namespace] = []
            key_document = RECEIVED(key, RAW)  # bytes cut from a decoded event
            for top in document_events:
                operations.extend(writes_for(top, key_document))
    return step


# A CRUD event as translation gathers it: its fields, its namespace, which document, its lane
# and how its writes find the document (BSON).
_Added = tuple[dict[str, Any], Namespace, Hashable, int, bytes]


def translate(events: Sequence[Mapping[str, Any]], namespace_filter: NamespaceFilter,
              by_document_key: bool = False, lanes: int = 1) -> Translation:
    """The steps that apply ``events`` (one batch, in stream order); see :class:`Translator`."""
    return Translator(namespace_filter, by_document_key, lanes).translate(events)


def collapse(events: list[Mapping[str, Any]], by_document_key: bool = False) -> CrudStep:
    """CRUD events as writes: per document, nothing before its last full-state write."""
    return Translator(NamespaceFilter(), by_document_key).collapse(events)


def writes_for(top: Mapping[str, Any], key: RawBSONDocument) -> list[Operation]:
    """The writes one CRUD event stands for (``top``: its fields, as :func:`events.fields`
    reads them), addressed to ``key``."""
    kind = top["operationType"]
    if kind == "insert" or kind == "replace":
        return [Upsert(key, top["fullDocument"])]  # the source's bytes, as they are
    if kind == "delete":
        return [Delete(key)]
    raw_description = top.get("rawUpdateDescription")
    if raw_description is not None:
        return _writes_for_delta(key, raw_description)
    # A server that ignored showRawUpdateDescription: its updateDescription cannot tell a
    # field moved to the end of its document from one updated in place (see above).
    updated_only = parse.only_updated_fields(top["updateDescription"].raw)
    if updated_only is not None:  # the usual update, read without decoding
        return [_set_fields(key, updated_only)] if len(updated_only) > _EMPTY_DOCUMENT else []
    description = parse.part_fields(top["updateDescription"])
    ambiguous = description.get("disambiguatedPaths")
    if ambiguous is not None and len(ambiguous.raw) > _EMPTY_DOCUMENT:
        return [Refetch(key)]  # field names with dots: $set cannot address them
    operations: list[Operation] = []
    truncated = description.get("truncatedArrays")
    if truncated:
        operations.append(Update(key, {"$push": {
            entry["field"]: {"$each": [], "$slice": entry["newSize"]}
            for entry in map(parse.decoded, truncated)}}))
    update: dict[str, Any] = {}
    updated = description.get("updatedFields")
    if updated is not None and len(updated.raw) > _EMPTY_DOCUMENT:
        update["$set"] = updated  # the source's values, byte for byte
    removed = description.get("removedFields")
    if removed:
        update["$unset"] = {path: "" for path in removed}
    if update:
        operations.append(Update(key, update))
    return operations


_EMPTY_DOCUMENT = 5  # the size of {} in BSON
_TOP_LEVEL_IN_PLACE = frozenset({b"u", b"d"})


def _writes_for_delta(key: RawBSONDocument, raw: parse.EventPart) -> list[Operation]:
    """The writes for an update read as its oplog entry (``rawUpdateDescription``, 6.0+).

    A change event's ``updateDescription`` lists a field the update moved to the end of its
    document (a pipeline update that puts a new field before existing ones re-inserts every
    field after it: the delta's ``i`` section) among ``updatedFields``, exactly like a field
    updated in place; replayed as ``$set``, the moved field keeps its old place. The delta
    itself tells them apart, and ``$_internalApplyOplogUpdate`` applies it as the source's
    oplog application did, byte for byte. The usual update, top-level fields set in place or
    removed, is written as ``$set``/``$unset`` of the delta's own bytes (the cheaper write);
    a name with a dot or a leading ``$`` cannot be addressed so and takes the delta's way.
    """
    description = raw.raw
    updated = parse.only_updated_delta(description)
    if updated is not None:  # the usual update, read without decoding
        return [_set_fields(key, updated)]
    if parse.begins_with_inserts(description):  # e.g. a new field: only the delta says where
        return [_apply_delta(key, raw)]
    fields = parse.part_fields(raw)
    diff = fields.get("diff")
    if fields.get("$v") == 2 and isinstance(diff, parse.EventPart):
        sections = parse.part_fields(diff)
        if not sections:
            return []
        names = {name.encode() for name in sections}
        if names <= _TOP_LEVEL_IN_PLACE and all(parse.addressable(section.raw)
                                                for section in sections.values()):
            update: dict[str, Any] = {}
            if "u" in sections:
                update["$set"] = sections["u"]
            if "d" in sections:
                update["$unset"] = {name.decode(): "" for name in
                                    parse.field_names(sections["d"].raw)}
            return [Update(key, update)]
    return [_apply_delta(key, raw)]


def _set_fields(key: RawBSONDocument, fields: bytes) -> Update:
    """``$set`` of the source's fields (a BSON document's bytes), as they are."""
    return Update(key, {"$set": parse.EventPart(fields, None)},
                  _SET_SIZE_WITHOUT_FIELDS + len(fields))


def _apply_delta(key: RawBSONDocument, delta: parse.EventPart) -> Update:
    """The source's oplog delta, applied as the source's oplog application did."""
    return Update(key, [{"$_internalApplyOplogUpdate": {"oplogUpdate": delta}}],
                  _DELTA_SIZE_WITHOUT_DELTA + len(delta.raw))


# The BSON sizes of those updates less their raw part (which is written as it is): the
# writer splits its commands by size, and counting it would walk each update again. (A
# pipeline of one stage is encoded as the document {"0": stage}.)
_SET_SIZE_WITHOUT_FIELDS = len(bson.encode({"$set": {}})) - _EMPTY_DOCUMENT
_DELTA_SIZE_WITHOUT_DELTA = len(bson.encode(
    {"0": {"$_internalApplyOplogUpdate": {"oplogUpdate": {}}}})) - _EMPTY_DOCUMENT


def _renamed_to_db(top: Mapping[str, Any]) -> str | None:
    """The database a rename event moves its collection to (None for any other event)."""
    if top["operationType"] != "rename" or "operationDescription" not in top:
        return None
    target = parse.part_fields(top["operationDescription"]).get("to")
    db = parse.part_fields(target).get("db") if isinstance(target, parse.EventPart) else None
    return db if isinstance(db, str) else None


def renamed_to_db(event: Mapping[str, Any]) -> str | None:
    """:func:`_renamed_to_db` of a whole event."""
    return _renamed_to_db(parse.fields(event))


def _transaction_of(top: Mapping[str, Any]) -> Hashable | None:
    """The transaction an event belongs to (its session and transaction number), if any."""
    txn_number = top.get("txnNumber")
    if txn_number is None:
        return None
    lsid = top.get("lsid")
    return (lsid.raw if isinstance(lsid, parse.EventPart) else None, int(txn_number))
