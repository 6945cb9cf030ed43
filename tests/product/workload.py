"""Source data and a concurrent writer for end-to-end migration tests."""

from __future__ import annotations

import datetime
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pymongo
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo.errors import PyMongoError

from mongoemu.sampledata import load_dump

DUMP = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "dump"


def every_bson_type(index: int) -> dict[str, Any]:
    return {
        "_id": index, "double": 1.5 + index, "string": f"text {index} ✓", "object": {"a": {"b": index}},
        "array": [1, "two", {"three": 3}, [4]], "binary": Binary(b"\x00\x01\x02", 0),
        "uuid": Binary(uuid.uuid4().bytes, 4), "md5": Binary(b"0" * 16, 5),
        "user_binary": Binary(b"custom", 128), "objectid": ObjectId(), "bool": index % 2 == 0,
        "date": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        + datetime.timedelta(milliseconds=index), "null": None, "regex": Regex("^a.*b$", "im"),
        "code": Code("function() { return 1; }"), "code_scope": Code("x + 1", {"x": 1}),
        "int32": index, "timestamp": Timestamp(1_700_000_000, index + 1), "int64": Int64(2**40 + index),
        "decimal": Decimal128("12345.6789"), "minkey": MinKey(), "maxkey": MaxKey(),
        "nan": float("nan"), "negative_zero": -0.0, "large": 2**62,
    }


def seed_source(client: pymongo.MongoClient, documents: int = 3000, with_dump: bool = True) -> None:
    """Sample dump plus generated collections covering the cases the engine must handle."""
    if with_dump and DUMP.exists():
        load_dump(client, DUMP)
    db = client["app"]
    db.types.insert_many([every_bson_type(i) for i in range(200)])
    mixed_ids: list[Any] = [1, 2.5, "s", ObjectId(), {"k": 1}, None, True,
                            datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
                            Int64(7), Decimal128("9.5"), Binary(b"id", 0), MinKey(), MaxKey(),
                            Timestamp(5, 5)]
    db.mixed_ids.insert_many([{"_id": value, "n": i} for i, value in enumerate(mixed_ids)])
    db.create_collection("events_capped", capped=True, size=65536, max=500)
    db.events_capped.insert_many([{"seq": i, "payload": "p" * 50} for i in range(700)])
    db.sessions_ttl.create_index("createdAt", expireAfterSeconds=3600)
    db.sessions_ttl.insert_many([{"createdAt": datetime.datetime.now(datetime.timezone.utc),
                                  "user": i} for i in range(50)])
    db.users.create_index("email", unique=True)
    db.users.create_index([("age", 1)], name="age_hidden", hidden=True)
    db.users.insert_many([{"email": f"user{i}@example.com", "age": i % 90, "name": f"user {i}"}
                          for i in range(documents)])
    db.create_collection("names_ci", collation={"locale": "en", "strength": 2})
    db.names_ci.insert_many([{"name": n} for n in ("alice", "Bob", "carol", "Dave")])
    db.create_collection("adults", viewOn="users", pipeline=[{"$match": {"age": {"$gte": 18}}}])
    db.create_collection("validated", validator={"$jsonSchema": {"required": ["x"]}})
    db.validated.insert_many([{"x": i} for i in range(20)])
    db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    db.clustered.insert_many([{"_id": i, "v": i} for i in range(100)])
    client["bulk"].items.insert_many([{"i": i, "payload": "x" * 400} for i in range(documents)])


class Writer:
    """Inserts, updates, replaces, deletes and DDL on the source until stopped."""

    def __init__(self, uri: str, seed: int = 1) -> None:
        self.client = pymongo.MongoClient(uri, appname="application")
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.operations = 0
        self.errors: list[BaseException] = []
        self._counter = 0

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()

    def _run(self) -> None:
        steps = [self._insert, self._update, self._replace, self._delete, self._ddl,
                 self._array_update, self._insert, self._update]
        while not self.stop.is_set():
            try:
                self.random.choice(steps)()
                self.operations += 1
            except PyMongoError as exc:
                if getattr(exc, "code", None) == 371:  # source blocked at commit: done
                    return
                self.errors.append(exc)
            self.stop.wait(0.002)

    def _insert(self) -> None:
        self._counter += 1
        self.client.app.users.insert_one({"email": f"new{self._counter}-{self.random.random()}@x",
                                          "age": self.random.randint(0, 99), "name": "new"})
        self.client.bulk.items.insert_one({"i": -self._counter, "payload": "y" * 100})

    def _pick(self, collection: Any) -> Any:
        document = collection.find_one({}, skip=self.random.randint(0, 50))
        return document

    def _update(self) -> None:
        document = self._pick(self.client.app.users)
        if document is not None:
            self.client.app.users.update_one(
                {"_id": document["_id"]},
                {"$set": {"age": self.random.randint(0, 99), "profile.visits": self._counter},
                 "$unset": {"name": ""}})

    def _array_update(self) -> None:
        document = self._pick(self.client.bulk.items)
        if document is not None:
            self.client.bulk.items.update_one(
                {"_id": document["_id"]}, {"$push": {"tags": {"$each": ["a", "b", "c"],
                                                             "$slice": -2}}})

    def _replace(self) -> None:
        document = self._pick(self.client.bulk.items)
        if document is not None:
            self.client.bulk.items.replace_one({"_id": document["_id"]},
                                               {"i": document.get("i"), "replaced": True})

    def _delete(self) -> None:
        document = self._pick(self.client.bulk.items)
        if document is not None:
            self.client.bulk.items.delete_one({"_id": document["_id"]})

    def _ddl(self) -> None:
        db = self.client.ddl
        step = self.random.randint(0, 6)
        name = f"c{self.random.randint(0, 3)}"
        if step == 0:
            db[name].insert_one({"created": True})
        elif step == 1:
            target = f"c{self.random.randint(0, 3)}"
            if target != name and name in db.list_collection_names():
                self.client.admin.command("renameCollection", f"ddl.{name}", to=f"ddl.{target}",
                                          dropTarget=True)
        elif step == 2:
            db[name].drop()
        elif step == 3:
            db[name].create_index("created", name="created_1")
        elif step == 4:
            if name in db.list_collection_names():
                try:
                    db[name].drop_index("created_1")
                except PyMongoError:
                    pass
        elif step == 5:
            if name in db.list_collection_names():
                db.command("collMod", name, validator={"created": {"$exists": True}},
                           validationLevel="moderate")
        else:
            db[name].insert_many([{"created": True, "n": i} for i in range(5)])


def source_is_blocked_for(uri: str) -> bool:
    with pymongo.MongoClient(uri, appname="application") as client:
        try:
            client.app.block_probe.insert_one({"probe": True})
            client.app.block_probe.drop()
            return False
        except PyMongoError as exc:
            return getattr(exc, "code", None) == 371

