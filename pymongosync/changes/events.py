"""Change events read from their raw bytes: what applying one needs, and nothing more.

Events arrive as raw BSON. Reading one through ``RawBSONDocument`` decodes every top-level
field and builds a validated ``RawBSONDocument`` (a Python-level constructor) for each nested
document (``_id``, ``ns``, ``documentKey``, ``fullDocument``, ``updateDescription``), and then
again for each of those read further: measured on captured insert and update events, reading
what translation needs that way took about 10 µs per event, the largest single cost of change
application. Here the top level of an event is decoded in one call to PyMongo's C decoder
(about 3 µs), nested documents kept as their bytes (:class:`EventPart`); only what an event's
write needs is decoded further (an update's description), documents are written back as the
bytes received, and each namespace is decoded once.

Which document an event is about (:func:`id_identity`, :func:`key_identity`) follows the
server's equality of ``_id`` values (:mod:`pymongosync.identity`): 1, 1.0, NumberLong(1) and
NumberDecimal("1") are one document. ``_id`` types whose BSON encoding is their identity
(ObjectId, strings, binary, dates, ...) are compared by their bytes, integers by value; the
others go through :func:`pymongosync.identity.id_key`.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping
from typing import Any

import bson

try:  # the C decoder RawBSONDocument itself uses (pymongo < 5), without its Python wrapper
    from bson._cbson import _raw_to_dict  # type: ignore[import-not-found]
except ImportError:  # PyMongo without its C extensions: the pure-Python decoder
    from bson import _raw_to_dict
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

from pymongosync.identity import id_key
from pymongosync.namespaces import NamespaceFilter
from pymongosync.received import RECEIVED

# Documents as received: what reaches fields() from a change stream.
_RAW_TYPES = frozenset({RECEIVED, RawBSONDocument})
DECODED: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class EventPart(StopIteration):
    """A document nested in a change event, kept as the bytes the server sent.

    PyMongo's C decoder builds a raw document class (``_type_marker`` 101) by calling it with
    the bytes and the codec options, and its encoder writes such an object's ``raw`` bytes
    back unchanged. A built-in exception is the one kind of class whose constructor takes any
    arguments in C and keeps them: one costs a tenth of a ``RawBSONDocument``, whose
    constructor validates the bytes in Python. ``StopIteration`` among them, because its
    constructor also keeps the first argument in a slot read in C (``value``), which ``raw``
    names again: a Python property returning ``args[0]`` cost three times as much per read,
    and ``raw`` is read several times per event (measured: 62 against 21 ns). It is never
    raised.
    """

    _type_marker = 101
    raw: bytes = StopIteration.value


# Top-level fields of an event: nested documents as EventPart. Dates naive: the only one at
# the top level is ``wallTime``, which applying never reads.
_PARTS = CodecOptions(document_class=EventPart,  # type: ignore[type-var]
                      datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields of a change event, nested documents as :class:`EventPart`."""
    # The usual case first: an exact type test is cheaper than an ABC instance check.
    # (mypy cannot narrow on an exact type test; a cast would cost a call per event)
    data = event.raw if type(event) in _RAW_TYPES else raw_bytes(event)  # type: ignore[attr-defined]
    result: dict[str, Any] = _raw_to_dict(data, 4, len(data) - 1,
                                          _PARTS, {}, False)
    return result


def part_fields(part: EventPart) -> dict[str, Any]:
    """The top-level fields of a nested document (its own nested documents as parts)."""
    return _top_level(part.raw)


def _top_level(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = _raw_to_dict(data, 4, len(data) - 1,
                                          _PARTS, {}, False)
    return result


def raw_bytes(document: Mapping[str, Any]) -> bytes:
    """A document's BSON: as received when it is raw, encoded otherwise."""
    if isinstance(document, RawBSONDocument):
        return bytes(document.raw)
    return bson.encode(document)


def decoded(part: EventPart) -> dict[str, Any]:
    """A nested document decoded (dates timezone-aware; out-of-range ones as DatetimeMS)."""
    return bson.decode(part.raw, DECODED)


class Namespaces:
    """``ns`` values decoded, and judged by the namespace filter, once each: events repeat a
    handful of namespaces."""

    def __init__(self, namespace_filter: NamespaceFilter) -> None:
        self.namespace_filter = namespace_filter
        self._known: dict[bytes, tuple[tuple[str, str], bool]] = {}

    def of(self, part: EventPart) -> tuple[tuple[str, str], bool]:
        """((database, collection), whether the filter includes it); a database-wide event's
        collection is ``""``, and is not included."""
        data = part.raw
        found = self._known.get(data)
        if found is None:
            ns = bson.decode(data)
            db, coll = ns["db"], ns.get("coll")
            found = self._known[data] = ((db, coll), self.namespace_filter.includes(db, coll)) \
                if isinstance(coll, str) else ((db, ""), False)
        return found


# ``_id`` types whose encoding is the identity: two values of one of these types are one
# document exactly when their bytes are equal, and none equals a value of another type
# (symbols equal strings: they are read as strings). ObjectId, string, binary, bool, date,
# null, timestamp, MinKey, MaxKey.
_BY_BYTES = frozenset({0x07, 0x02, 0x05, 0x08, 0x09, 0x0A, 0x11, 0xFF, 0x7F})
_SYMBOL, _STRING, _INT32, _INT64, _OBJECT_ID = 0x0E, 0x02, 0x10, 0x12, 0x07
_OBJECT_ID_KEY_SIZE = 22  # {_id: ObjectId(...)}, the usual documentKey
_ID_NAME = b"_id\x00"
_INT32_SIZE = struct.Struct("<i")


def identify(document_key: bytes) -> tuple[bytes, Hashable]:
    """(:func:`id_document`, :func:`id_identity`) of a ``documentKey``; the usual
    ``{_id: ObjectId(...)}`` is both at once."""
    if len(document_key) == _OBJECT_ID_KEY_SIZE and document_key[4] == _OBJECT_ID and \
            document_key[5:9] == _ID_NAME:
        return document_key, document_key
    id_doc = id_document(document_key)
    return id_doc, id_identity(id_doc)


def only_updated_fields(description: bytes) -> bytes | None:
    """The ``updatedFields`` of an update description that only sets fields (nothing removed,
    truncated or ambiguous: most updates), read from its bytes; None for any other."""
    if description[4:19] != _UPDATED_FIELDS:
        return None
    end = 19 + _INT32_SIZE.unpack_from(description, 19)[0]
    return description[19:end] if description[end:] in _NOTHING_ELSE else None


_UPDATED_FIELDS = b"\x03updatedFields\x00"
# What follows updatedFields in a description that only sets fields: with the expanded events'
# disambiguatedPaths (6.1+), and without.
_NOTHING_ELSE = (b"\x04removedFields\x00\x05\x00\x00\x00\x00"
                 b"\x04truncatedArrays\x00\x05\x00\x00\x00\x00"
                 b"\x03disambiguatedPaths\x00\x05\x00\x00\x00\x00\x00",
                 b"\x04removedFields\x00\x05\x00\x00\x00\x00"
                 b"\x04truncatedArrays\x00\x05\x00\x00\x00\x00\x00")


def only_updated_delta(description: bytes) -> bytes | None:
    """The ``u`` section of a ``rawUpdateDescription`` whose delta only sets top-level fields
    in place, under names ``$set`` addresses as themselves (most updates), read from its
    bytes; None for any other."""
    if description[4:18] != _DELTA_HEAD or description[22:25] != _IN_PLACE_SECTION:
        return None
    end = 25 + _INT32_SIZE.unpack_from(description, 25)[0]
    if description[end:] != b"\x00\x00":  # the end of the delta, then of the description
        return None
    updated = description[25:end]
    return updated if addressable(updated) else None


def addressable(document: bytes) -> bool:
    """Whether every top-level field name of a BSON document is one ``$set``/``$unset``
    address as itself: no dot, no leading ``$`` (a document without either byte anywhere
    is answered without reading its names)."""
    if b"." not in document and b"$" not in document:
        return True
    return all(b"." not in name and not name.startswith(b"$")
               for name in field_names(document))


def begins_with_inserts(description: bytes) -> bool:
    """Whether the delta of a ``rawUpdateDescription`` begins with its ``i`` section (fields
    put at the end of the document: new ones, or moved ones), read from its bytes. The server
    writes a delta's sections in the order ``d``, ``u``, ``i``, then sub-documents' diffs, so
    such a delta has nothing ``$set``/``$unset`` can express exactly."""
    return description[4:18] == _DELTA_HEAD and description[22:25] == _INSERT_SECTION


_DELTA_HEAD = b"\x10$v\x00\x02\x00\x00\x00\x03diff\x00"
_IN_PLACE_SECTION = b"\x03u\x00"
_INSERT_SECTION = b"\x03i\x00"


def field_names(document: bytes) -> list[bytes]:
    """The top-level field names of a BSON document, read from its bytes."""
    names = []
    position = 4
    while document[position] != 0:
        names.append(document[position + 1:document.index(0, position + 1)])
        position = _element_end(document, position)
    return names


def id_document(document_key: bytes) -> bytes:
    """``{_id: <value>}`` from a ``documentKey`` (``_id`` alone, or a shard key and ``_id``),
    as BSON: the filter that finds the document on a replica set, and what
    :func:`id_identity` reads. The same bytes when the key holds ``_id`` alone."""
    if document_key[5:9] == _ID_NAME and (
            len(document_key) == _OBJECT_ID_KEY_SIZE and document_key[4] == _OBJECT_ID
            or _element_end(document_key, 4) == len(document_key) - 1):
        return document_key
    position = 4
    while document_key[position] != 0:
        end = _element_end(document_key, position)
        if document_key[position + 1:position + 5] == _ID_NAME:
            element = document_key[position:end]
            return _INT32_SIZE.pack(len(element) + 5) + element + b"\x00"
        position = end
    raise ValueError("a documentKey without _id")


def id_identity(id_doc: bytes) -> Hashable:
    """Which document ``{_id: <value>}`` (BSON, as :func:`id_document` gives it) names,
    as the server matches ``_id`` values."""
    kind = id_doc[4]
    if kind in _BY_BYTES:
        return id_doc
    if kind == _INT32 or kind == _INT64:
        # Equal to id_key's ("number", Decimal) for the same value, hash included.
        return ("number", int.from_bytes(id_doc[9:-1], "little", signed=True))
    if kind == _SYMBOL:
        return id_doc[:4] + bytes((_STRING,)) + id_doc[5:]
    return id_key(bson.decode(id_doc, DECODED)["_id"])


def key_identity(document_key: bytes) -> Hashable:
    """Which document a whole ``documentKey`` names (a sharded destination finds documents
    by shard key and ``_id``): by :func:`id_identity` when it holds ``_id`` alone."""
    id_doc = id_document(document_key)
    if id_doc is document_key:
        return id_identity(id_doc)
    return ("documentKey", id_key(bson.decode(document_key, DECODED)))


# Sizes of the BSON element values that have a fixed size, by type.
_FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
                0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}


def _element_end(data: bytes, position: int) -> int:
    """Where the BSON element starting at ``position`` ends."""
    kind = data[position]
    start = data.index(0, position + 1) + 1
    if kind in _FIXED_SIZES:
        return start + _FIXED_SIZES[kind]
    size: int = _INT32_SIZE.unpack_from(data, start)[0]
    if kind in (0x02, 0x0D, 0x0E):  # string, code, symbol: length-prefixed
        return start + 4 + size
    if kind == 0x05:  # binary: length, subtype, bytes
        return start + 5 + size
    if kind in (0x03, 0x04, 0x0F):  # document, array, code with scope: their size
        return start + size
    if kind == 0x0B:  # regex: two C strings
        return data.index(0, data.index(0, start) + 1) + 1
    if kind == 0x0C:  # DBPointer: string and ObjectId
        return start + 4 + size + 12
    raise ValueError(f"unknown BSON type {kind:#x}")
