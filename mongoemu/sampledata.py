"""Load mongodump output (``<db>/<coll>.bson`` + ``.metadata.json``) into any MongoDB.

Used to seed emulated clusters for tests, benchmarks and the demo; works against real
servers too, since it only uses PyMongo. When the dump is absent, :func:`generate` makes a
comparable synthetic data set.

``python -m mongoemu.sampledata URI`` loads the dump (``../shared/datasets/dump`` next to the
checkout, or ``--dump DIR``) or, without one, the generated data into the cluster at URI.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import bson
from bson import json_util
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import OperationFailure

Progress = Callable[[str, int], None]
_RAW = bson.CodecOptions(document_class=RawBSONDocument)
DEFAULT_DUMP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dump"
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


class ProgressReport:
    """A :data:`Progress` callback that reads well wherever it is printed: one line rewritten in
    place at a terminal, one line per finished collection in a pipe or a log file."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.current: tuple[str, int] | None = None

    def __call__(self, namespace: str, count: int) -> None:
        if self.live:
            print(f"\r  loading {namespace:45s} {count:8d} documents", end="", file=self.stream,
                  flush=True)
            return
        if self.current is not None and self.current[0] != namespace:
            self._line(*self.current)
        self.current = (namespace, count)

    def finish(self, summary: str) -> None:
        """End the report with ``summary`` on its own line."""
        if self.live:
            print("\r" + summary + " " * 40, file=self.stream, flush=True)
            return
        if self.current is not None:
            self._line(*self.current)
        print(summary, file=self.stream, flush=True)

    def _line(self, namespace: str, count: int) -> None:
        print(f"  loaded {namespace} ({count} documents)", file=self.stream, flush=True)


def load(uri: str, dump_dir: Path = DEFAULT_DUMP, documents: int = 20_000,
         report: ProgressReport | None = None) -> list[LoadedCollection]:
    """The sample dump (or, without it, generated data) into the cluster at ``uri``."""
    report = report or ProgressReport()
    started = time.perf_counter()
    with MongoClient(uri) as client:
        if dump_dir.exists():
            print(f"loading the sample dump from {dump_dir} ...", file=report.stream, flush=True)
            loaded = load_dump(client, dump_dir, report)
        else:
            print(f"{dump_dir} not found: generating sample data instead ...", file=report.stream,
                  flush=True)
            loaded = generate(client, documents=documents, progress=report)
    total = sum(c.documents for c in loaded)
    report.finish(f"loaded {total} documents into {len(loaded)} collections in "
                  f"{time.perf_counter() - started:.1f} s")
    return loaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mongoemu.sampledata",
        description="Load the sample dump (mongodump output) into a MongoDB cluster, or "
                    "generated data when there is no dump.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("uri", help="connection string of the cluster to load")
    parser.add_argument("--dump", type=Path, default=DEFAULT_DUMP,
                        help="mongodump output to load; when absent, data is generated")
    parser.add_argument("--documents", type=int, default=20_000,
                        help="how many documents to generate when there is no dump")
    args = parser.parse_args(argv)
    if args.documents < 1:
        parser.error("--documents must be at least 1")
    load(args.uri, args.dump, args.documents)


if __name__ == "__main__":
    main()
