"""Documents as received: the C decoder's documents keep their bytes and read as before."""

from __future__ import annotations

import datetime

import bson
from bson.raw_bson import RawBSONDocument

from pymongosync.changes import events as parse
from pymongosync.received import RAW, RECEIVED, ReceivedDocument, _layout_is_known


def test_this_pymongo_keeps_raw_documents_where_received_documents_put_them() -> None:
    assert _layout_is_known()
    assert RECEIVED is ReceivedDocument


def test_a_decoded_batch_keeps_every_document_byte_for_byte_and_reads_as_raw_documents() -> None:
    documents = [{"_id": bson.ObjectId(), "n": n, "nested": {"a": [1, {"b": "x" * n}]},
                  "when": datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)}
                 for n in range(5)]
    reply = bson.decode(bson.encode({"cursor": {"id": bson.Int64(0),
                                                "nextBatch": documents}}), RAW)
    batch = reply["cursor"]["nextBatch"]
    assert all(type(document) is RECEIVED for document in batch)
    assert all(isinstance(document, RawBSONDocument) for document in batch)
    for document, original in zip(batch, documents, strict=True):
        assert document.raw == bson.encode(original)
        assert bson.encode({"d": document}) == bson.encode({"d": original})
        assert document["nested"]["a"][1]["b"] == original["nested"]["a"][1]["b"]
        assert document["when"] == original["when"]
        assert list(document) == list(original)  # the fields, in their order
        assert parse.fields(document)["n"] == original["n"]
    assert batch[0] == RawBSONDocument(batch[0].raw)
