"""Load mongodump output (``<db>/<coll>.bson`` + ``.metadata.json``) into any MongoDB.

Used to seed emulated clusters for tests, benchmarks and the demo; works against real
servers too, since it only uses PyMongo. When the dump is absent, :func:`generate` makes a
comparable synthetic data set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import bson
from bson import json_util
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import OperationFailure

Progress = Callable[[str, int], None]
_RAW = bson.CodecOptions(document_class=RawBSONDocument)
# Index options mongodump records that createIndexes does not take back.
_DUMP_ONLY_INDEX_FIELDS = ("ns", "background")


@dataclass
class LoadedCollection:
    namespace: str
    documents: int
    indexes: int


def read_bson_file(path: Path) -> Iterator[RawBSONDocument]:
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "little")
        yield RawBSONDocument(data[offset:offset + size])
        offset += size


def load_dump(client: MongoClient, dump_dir: Path, progress: Progress | None = None,
              batch_size: int = 1000) -> list[LoadedCollection]:
    """Create every dumped collection with its options and indexes, then insert its documents."""
    loaded: list[LoadedCollection] = []
    for metadata_path in sorted(dump_dir.glob("*/*.metadata.json")):
        db_name = metadata_path.parent.name
        coll_name = metadata_path.name[: -len(".metadata.json")]
        metadata = json_util.loads(metadata_path.read_text())
        database = client[db_name]
        options = dict(metadata.get("options") or {})
        try:
            database.create_collection(coll_name, **options)
        except OperationFailure as exc:
            if exc.code != 48:  # already exists: loading twice is fine
                raise
        collection = database.get_collection(coll_name, codec_options=_RAW)
        indexes = [{k: v for k, v in spec.items() if k not in _DUMP_ONLY_INDEX_FIELDS}
                   for spec in metadata.get("indexes", []) if spec.get("name") != "_id_"]
        if indexes:
            database.command("createIndexes", coll_name, indexes=indexes)
        count = 0
        bson_path = metadata_path.with_name(f"{coll_name}.bson")
        if bson_path.exists() and "viewOn" not in options:
            batch: list[RawBSONDocument] = []
            for document in read_bson_file(bson_path):
                batch.append(document)
                if len(batch) >= batch_size:
                    collection.insert_many(batch, ordered=False)
                    count += len(batch)
                    batch = []
                    if progress:
                        progress(f"{db_name}.{coll_name}", count)
            if batch:
                collection.insert_many(batch, ordered=False)
                count += len(batch)
        if progress:
            progress(f"{db_name}.{coll_name}", count)
        loaded.append(LoadedCollection(f"{db_name}.{coll_name}", count, len(indexes)))
    return loaded


def generate(client: MongoClient, documents: int = 20_000, databases: int = 2,
             collections_per_db: int = 3, seed: int = 7,
             progress: Progress | None = None) -> list[LoadedCollection]:
    """A synthetic stand-in for the sample dump: varied documents and a few indexes."""
    rng = random.Random(seed)
    loaded: list[LoadedCollection] = []
    per_collection = max(1, documents // (databases * collections_per_db))
    for db_index in range(databases):
        database = client[f"generated_{db_index}"]
        for coll_index in range(collections_per_db):
            name = f"items_{coll_index}"
            collection = database[name]
            collection.create_index("sku", unique=True)
            collection.create_index([("category", 1), ("price", -1)])
            batch = []
            for number in range(per_collection):
                batch.append({"sku": f"{db_index}-{coll_index}-{number}",
                              "category": rng.choice(["books", "games", "tools", "garden"]),
                              "price": round(rng.uniform(1, 500), 2),
                              "tags": rng.sample(["new", "sale", "eco", "gift", "bulk"], 2),
                              "stock": {"warehouse": rng.randint(0, 9),
                                        "count": rng.randint(0, 1000)}})
                if len(batch) == 1000:
                    collection.insert_many(batch, ordered=False)
                    batch = []
            if batch:
                collection.insert_many(batch, ordered=False)
            if progress:
                progress(f"{database.name}.{name}", per_collection)
            loaded.append(LoadedCollection(f"{database.name}.{name}", per_collection, 2))
    return loaded
