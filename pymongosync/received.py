"""Documents as a cluster sent them: raw BSON, decoded only where something reads them.

Every document pymongosync moves (copied documents, change events, the documents and keys
their writes carry) is handed on as the bytes received. PyMongo's ``RawBSONDocument`` does
that, but its constructor, in Python, checks the bytes' length prefix again each time one is
made: for a batch decoded by PyMongo's C decoder, which builds one per document after
checking that document's bounds itself, that check repeats work already done, and it cost
about 1 µs per change event (measured on a getMore of 1,000 insert events: 1.18 against
0.20 µs per event without it), a twentieth of applying one.

:class:`ReceivedDocument` is a ``RawBSONDocument`` (same type marker: the encoder writes its
bytes back unchanged, and every ``isinstance`` check holds) whose constructor only keeps the
bytes. It is made by the C decoder, through :data:`RAW`, and by code that hands it bytes cut
from a document the decoder has already bounded; never from bytes of unknown origin.
"""

from __future__ import annotations

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument


class ReceivedDocument(RawBSONDocument):
    """A ``RawBSONDocument`` that trusts the bounds of its bytes (see the module)."""

    __slots__ = ()

    def __init__(self, bson_bytes: bytes | memoryview,
                 codec_options: CodecOptions[RawBSONDocument] | None = None) -> None:
        # RawBSONDocument's own (name-mangled) slots; _layout_is_known() checks them once.
        self._RawBSONDocument__raw = bson_bytes
        self._RawBSONDocument__inflated_doc = None
        self._RawBSONDocument__codec_options = codec_options or RAW


def _layout_is_known() -> bool:
    """Whether this PyMongo keeps a RawBSONDocument's state where ReceivedDocument puts it."""
    try:
        data = bson.encode({"n": 1})
        probe = ReceivedDocument(data, None)
        return bool(probe["n"] == 1 and probe.raw == data)
    except (AttributeError, KeyError, TypeError):
        return False


# Dates outside Python's range (years before 1 or after 9999) are valid BSON: decode them as
# DatetimeMS rather than fail, wherever a value has to be decoded.
RAW: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=ReceivedDocument, tz_aware=True,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)
if not _layout_is_known():  # a PyMongo whose RawBSONDocument is laid out otherwise
    RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True,
                       datetime_conversion=DatetimeConversion.DATETIME_AUTO)
RECEIVED: type[RawBSONDocument] = RAW.document_class
