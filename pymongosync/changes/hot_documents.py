"""Hot documents (``--hotDocIDs``, spec §2.2 and §5.6): documents updated so often that
applying each of their change events holds change application back.

Their CRUD events are skipped while changes are applied (counted, as mongosync's
``mongosync_cea_total_hot_doc_crud_events_skipped``). At commit, once every change up to the
commit time is applied, each is taken as the source has it then: replaced, or deleted when
the source no longer has it (``phases/commit.py``). One moment needs them sooner: a rename of
their collection. Their events under the old name were skipped and are never applied under
the new one, so the writer takes them as the source has them just before it renames
(``changes/writer.py``).

A document is named by its namespace and ``_id`` as the server compares ``_id`` values
(1, 1.0 and NumberLong(1) name one document). The IDs are stored with the migration; a
restart adds those its flags name, and none can be removed without starting the migration
again from scratch, as in mongosync.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import bson
from bson import json_util
from bson.codec_options import DatetimeConversion
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument

from pymongosync.changes.events import DECODED, id_identity
from pymongosync.received import RAW, RECEIVED

Namespace = tuple[str, str]

EXAMPLE = '{"db": "db1", "collection": "coll1", "ids": [{"_id": {"$oid": "..."}}]}'
# Every value as it is (as DECODED reads them): a NumberLong stays one (written back as
# $numberLong), and a date out of Python's range stays a date.
_JSON = json_util.CANONICAL_JSON_OPTIONS.with_options(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


@dataclass(frozen=True)
class HotDocument:
    db: str
    coll: str
    id_document: bytes  # {_id: <value>} as BSON

    @property
    def namespace(self) -> Namespace:
        return self.db, self.coll

    @property
    def key(self) -> RawBSONDocument:
        """The filter that finds it: ``{_id: <value>}``, read as received documents are (a
        date out of Python's range stays readable when a driver looks into the filter)."""
        return RECEIVED(self.id_document, RAW)

    @property
    def identity(self) -> Hashable:
        return id_identity(self.id_document)

    def to_stored(self) -> str:
        """Canonical extended JSON: every BSON type kept, the same text for the same value."""
        value = bson.decode(self.id_document, DECODED)["_id"]
        return json_util.dumps({"db": self.db, "collection": self.coll, "_id": value},
                               json_options=_JSON)

    @classmethod
    def from_stored(cls, text: str) -> HotDocument:
        document = json_util.loads(text, json_options=_JSON)
        return cls(document["db"], document["collection"], bson.encode({"_id": document["_id"]}))


def from_option(value: str) -> list[HotDocument]:
    """The documents one ``--hotDocIDs`` value names; ValueError says what is wrong with it."""
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc}); give an object like {EXAMPLE}") from None
    if not isinstance(document, dict) or set(document) != {"db", "collection", "ids"}:
        raise ValueError(f"must be an object with exactly db, collection and ids, like {EXAMPLE}")
    db, coll, ids = document["db"], document["collection"], document["ids"]
    if not (isinstance(db, str) and db and isinstance(coll, str) and coll):
        raise ValueError("db and collection must be non-empty strings")
    if not isinstance(ids, list) or not ids or not all(
            isinstance(item, dict) and list(item) == ["_id"] for item in ids):
        raise ValueError(f'ids must be a non-empty array of {{"_id": <EJSON>}} objects, like '
                         f'{EXAMPLE}')
    documents = []
    for item in ids:
        try:
            # Extended JSON, canonical or relaxed: {"$oid": ...}, {"$numberLong": ...}, ...
            id_document = bson.encode(json_util.loads(json.dumps(item), json_options=_JSON))
        except (BSONError, ValueError, TypeError) as exc:
            raise ValueError(f"{json.dumps(item)} is not a valid extended JSON _id "
                             f"({exc})") from None
        documents.append(HotDocument(db, coll, id_document))
    return documents


class HotDocuments:
    """A set of hot documents, looked up by namespace and ``_id`` identity."""

    def __init__(self, documents: Iterable[HotDocument] = ()) -> None:
        by_identity: dict[tuple[Namespace, Hashable], HotDocument] = {}
        for document in documents:
            by_identity.setdefault((document.namespace, document.identity), document)
        self._by_identity = by_identity
        self.namespaces = frozenset(namespace for namespace, _ in by_identity)

    @classmethod
    def from_options(cls, values: Sequence[str]) -> HotDocuments:
        return cls(document for value in values for document in from_option(value))

    @classmethod
    def from_stored(cls, texts: Iterable[str]) -> HotDocuments:
        return cls(map(HotDocument.from_stored, texts))

    def __or__(self, other: HotDocuments) -> HotDocuments:
        return HotDocuments([*self, *other])

    def __iter__(self) -> Iterator[HotDocument]:
        return iter(self._by_identity.values())

    def __len__(self) -> int:
        return len(self._by_identity)

    def __contains__(self, item: tuple[Namespace, Hashable]) -> bool:
        """Whether ``(namespace, identity)`` (:func:`events.id_identity`) is hot."""
        return item in self._by_identity

    def in_namespace(self, db: str, coll: str) -> list[HotDocument]:
        if (db, coll) not in self.namespaces:
            return []
        return [document for document in self if document.namespace == (db, coll)]
