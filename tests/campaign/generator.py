"""From a seed, a plan: the source's initial data, a timeline of application operations, DDL,
kill -9 points and injected faults to run around a migration. Pure: nothing here talks to a
cluster, and the same seed always gives the same plan.

The generator keeps a model of the source (databases, collections, their kinds, the ``_id``s
it believes exist) so that most operations are ones MongoDB accepts; operations the server may
still refuse as MongoDB would (an update through a value that is no longer a document, a
duplicate key after a type-changing re-insert) are tolerated by the runner, not avoided here.

What is deliberately left out, and why:

- DDL mongosync does not support during a sync (spec §8): ``reshardCollection``,
  ``convertToCapped`` and ``cloneCollectionAsCapped`` (pymongosync follows them:
  ``tests/product/test_no_silent_loss.py``),
  ``movePrimary``, shard key refinement, chunk moves.
- time-series collections: refused at /start (spec §7).
- ``$``-prefixed and duplicate field names: unsupported by mongosync (spec §7, §21).
- Top-level ``Timestamp(0, 0)`` on insert and replacement: the server replaces it with the
  current time there (so it never reaches the stored document); it is set with ``$set``.
- clustered collections with ``expireAfterSeconds``: unsupported (spec §7).
- renames into or out of filtered namespaces: the campaign migrates everything (no filters).
- text, geo and hashed-on-array indexes: the emulator has no geo/text support.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bson import (Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex,
                  Timestamp, json_util)
from bson.datetime_ms import DatetimeMS

MIB = 1024 * 1024
# Open defects the campaign found, kept out of the plans until they are fixed so that other
# defects can still be found (the report lists each with its reproduction). Remove an entry
# to put its trigger back. None is open.
AVOIDED: frozenset[str] = frozenset()
# CAMPAIGN_SERVER_COPIES=1: plans also have the commands with which the server copies
# documents itself (convertToCapped and cloneCollectionAsCapped, with inserts change streams do
# not show; $out, through a temporary collection). Off by default, so that every seed keeps
# its plan (the suite's seeds were chosen by their plans); their draws use a random stream of
# their own.
SERVER_COPIES = os.environ.get("CAMPAIGN_SERVER_COPIES") == "1"
# CAMPAIGN_HOT_DOCUMENTS=1: mongosync is started with --hotDocIDs naming a few documents the
# plan writes by _id (their events are skipped; they are taken from the source at commit).
# Off by default, drawn from a random stream of its own: every seed keeps the rest of its plan.
HOT_DOCUMENTS = os.environ.get("CAMPAIGN_HOT_DOCUMENTS") == "1"
# CAMPAIGN_SHARDED_DESTINATION=1: the destination is a 2-shard cluster, reached through its
# router, and most plans shard one or two of the setup's collections there (/start's
# shardingEntries); the others stay unsharded on their database's primary shard. Drawn from a
# random stream of its own: every seed keeps the rest of its plan.
SHARDED_DESTINATION = os.environ.get("CAMPAIGN_SHARDED_DESTINATION") == "1"
# Keys on _id, on a field of every document (n: int, long or double; numerically equal values
# of other types hash alike), and on a nested field. The plans build indexes on {n: 1},
# {n: "hashed"} and {nested.z: 1} too: the source's own index on a shard key, and the
# destination's index on it made by sharding, meet there.
# CAMPAIGN_SHARDED_SOURCE=1: the source is a 2-shard cluster, reached through its router; its
# databases are placed on one shard (transactions on their unsharded collections stay on one
# shard: the emulated router runs no multi-shard transaction), and one to three of the setup's
# collections are sharded on {_id: "hashed"} as they are created (a key no update changes).
# Drawn from a random stream of its own: every seed keeps the rest of its plan.
SHARDED_SOURCE = os.environ.get("CAMPAIGN_SHARDED_SOURCE") == "1"
# CAMPAIGN_ONE_PER_SHARD=1: a sharded source (as above) migrated by one mongosync per shard
# (--id), every request sent to each; a kill -9 takes one of them.
ONE_PER_SHARD = os.environ.get("CAMPAIGN_ONE_PER_SHARD") == "1"
SHARD_KEYS: tuple[dict[str, Any], ...] = ({"_id": "hashed"}, {"n": 1}, {"n": "hashed"},
                                          {"nested.z": 1})
# Errors after which PyMongo marks the server unknown and waits for its next heartbeat.
STATE_CHANGE_CODES = frozenset({91, 189, 10107, 11600, 11602, 13435, 13436})
# A document near the 16 MiB limit: below it by enough to stay a valid insert once encoded.
BIG_DOCUMENT_BYTES = 16 * MIB - 4096
# The largest documents: up to 2,000 bytes under 16 MiB once encoded (the runner fills them up
# to their size). Their change events are over 16 MiB.
LARGEST_DOCUMENT_BYTES = 16 * MIB


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation of the application (or operator) on the source."""

    kind: str
    db: str | None = None
    coll: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"{self.db}.{self.coll}" if self.coll else (self.db or "")
        args = self.args
        if self.kind == "rename":
            return (f"rename({where} -> {args['to_db']}.{args['to']}"
                    f"{', dropTarget' if args['dropTarget'] else ''})")
        if self.kind == "transaction":
            inner = "; ".join(op.describe() for op in args["ops"])
            return f"transaction({'aborted: ' if args['abort'] else ''}{inner})"
        detail = []
        if isinstance(args.get("filter"), dict) and "_id" in args["filter"]:
            detail.append(f"_id={args['filter']['_id']!r}"[:60])
        if "documents" in args:
            detail.append(f"{len(args['documents'])} documents")
        if "lazy" in args:
            detail.append(f"{len(args['lazy']['ids'])} documents")
        for key in ("spec", "command", "options", "name"):
            if key in args:
                detail.append(f"{key}={args[key]!r}"[:120])
        return f"{self.kind}({where}{'; ' + ', '.join(detail) if detail else ''})"


@dataclass(frozen=True)
class Kill:
    """kill -9 the mongosync process after ``delay`` seconds, start it again after
    ``down_for`` seconds (the timeline goes on meanwhile)."""

    delay: float
    down_for: float

    def describe(self) -> str:
        return f"kill -9 after {self.delay:.2f}s, down {self.down_for:.2f}s"


@dataclass(frozen=True)
class Fault:
    """``configureFailPoint failCommand`` on one cluster, for pymongosync's connections only."""

    cluster: str  # "source" or "destination"
    times: int
    data: dict[str, Any]

    def describe(self) -> str:
        what = "closeConnection" if self.data.get("closeConnection") else (
            f"writeConcernError {self.data['writeConcernError']['code']}"
            if "writeConcernError" in self.data else f"error {self.data.get('errorCode')}")
        return (f"fault on {self.cluster}: {what} x{self.times} on "
                f"{','.join(self.data['failCommands'])}")


@dataclass(frozen=True)
class Pause:
    """``/pause``, wait ``seconds`` (the process is killed meanwhile when ``kill``), ``/resume``."""

    seconds: float
    kill: bool

    def describe(self) -> str:
        return f"pause {self.seconds:.2f}s{', killed while paused' if self.kill else ''}"


@dataclass(frozen=True)
class Reset:
    """Abandon the migration: kill -9 the process, ``mongosync reset`` (itself killed after
    ``interrupt_after`` seconds when set: the next process must refuse the half-reset
    migration, and reset run again), then a new migration from scratch (/start again)."""

    interrupt_after: float | None

    def describe(self) -> str:
        if self.interrupt_after is None:
            return "reset, new migration"
        return f"reset killed after {self.interrupt_after:.2f}s, reset again, new migration"


Step = Op | Kill | Fault | Pause | Reset


@dataclass
class Plan:
    seed: int
    big: bool
    load_level: int
    slow_side: str  # which cluster's pymongosync commands are slowed during the copy
    slow_ms: int
    setup: list[Op]
    copy: list[Step]  # from /start while the copy runs
    cea: list[Step]  # during change event application
    commit_kills: list[Kill]  # after /commit
    start_body: dict[str, Any] = field(default_factory=dict)
    pace_ms: int = 0  # at most this long between two operations (seeded)
    namespace_filter: NsFilter | None = None
    # preExistingDestinationData: what the destination holds before /start (never touched)
    destination_setup: list[Op] = field(default_factory=list)
    # A namespace that is on the destination too at the first /start (which must refuse it);
    # dropped there before /start is sent again.
    conflict: str | None = None
    # --hotDocIDs values (HOT_DOCUMENTS), given to every mongosync process of the seed.
    hot_documents: list[str] = field(default_factory=list)
    server_copies: bool = False  # drawn with the server's own copies (SERVER_COPIES)
    sharded_destination: bool = False  # a 2-shard destination (SHARDED_DESTINATION)
    # A 2-shard source (SHARDED_SOURCE), and "db.coll" -> shard key of the setup's collections
    # sharded there.
    sharded_source: bool = False
    one_per_shard: bool = False  # one mongosync per source shard (ONE_PER_SHARD)
    source_shard_keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        def count(steps: list[Step], kind: type) -> int:
            return sum(isinstance(s, kind) for s in steps)
        steps = self.copy + self.cea
        return (f"seed={self.seed}{' big' if self.big else ''} loadLevel={self.load_level} "
                f"start={self.start_body} pace={self.pace_ms}ms slowed={self.slow_side} "
                f"setup={len(self.setup)} ops, copy={count(self.copy, Op)} ops, "
                f"cea={count(self.cea, Op)} ops, kills={count(steps, Kill)}+"
                f"{len(self.commit_kills)} at commit, faults={count(steps, Fault)}")

    def lines(self) -> list[str]:
        out = [self.summary()]
        out += [f"  --hotDocIDs {value}" for value in self.hot_documents]
        for title, steps in (("setup", self.setup), ("destination", self.destination_setup),
                             ("copy", self.copy), ("cea", self.cea),
                             ("commit", self.commit_kills)):
            for index, step in enumerate(steps):
                out.append(f"  {title}[{index}] {step.describe()}")
        return out


# -- values --------------------------------------------------------------------------------------

FAR_PAST = DatetimeMS(-(10 ** 14))  # about year -1200
FAR_FUTURE = DatetimeMS(10 ** 15)  # about year 33658
EMPTY_TS = Timestamp(0, 0)
TRANSIENT_CODES = (6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436)
# What pymongosync sends to each cluster (hello and the like are left alone: failing them
# breaks the driver's monitoring, not the migration).
SOURCE_COMMANDS = ("find", "getMore", "aggregate", "listCollections", "listIndexes",
                   "listDatabases", "killCursors", "appendOplogNote")
DESTINATION_COMMANDS = ("insert", "update", "delete", "find", "getMore", "create",
                        "createIndexes", "drop", "dropDatabase", "renameCollection", "collMod",
                        "listCollections", "listIndexes", "findAndModify", "aggregate")
WRITE_COMMANDS = ("insert", "update", "delete", "findAndModify")


def _names(rng: random.Random) -> str:
    # Numeric names and names with dots: an update of them is ambiguous as a path
    # (disambiguatedPaths in change events).
    return rng.choice(["f", "g", "h", "k", "v", "w", "état", "名前", "a_b", "Z", "x1", "y2",
                       "0", "1", "12", "a.b", "long_field_name_" + "q" * rng.randint(1, 40)])


def value(rng: random.Random, depth: int = 3) -> Any:
    """A random BSON value of any type (nested up to ``depth``)."""
    kind = rng.randrange(32 if depth > 0 else 28)
    if kind == 0:
        return rng.choice([1.5, -0.0, 0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324,
                           rng.uniform(-1e6, 1e6), 0.1, 2.0 ** 53 + 1])
    if kind == 1:
        return rng.choice(["", "text", "é✓😀", "a" * rng.randint(1, 300), "nul\x00inside",
                           "new\nline", str(rng.random())])
    if kind == 2:
        return Binary(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))), 0)
    if kind == 3:
        subtype = rng.choice([1, 2, 3, 4, 5, 8, 0x80, 0x90])
        size = 16 if subtype in (3, 4, 5) else rng.randint(0, 24)
        return Binary(bytes(rng.getrandbits(8) for _ in range(size)), subtype)
    if kind == 4:
        return ObjectId(bytes(rng.getrandbits(8) for _ in range(12)))
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + \
            datetime.timedelta(milliseconds=rng.randint(-10 ** 12, 10 ** 12))
    if kind == 7:
        return rng.choice([FAR_PAST, FAR_FUTURE, DatetimeMS(-1), DatetimeMS(2 ** 62),
                           DatetimeMS(-(2 ** 62)), DatetimeMS(253402300800000)])
    if kind == 8:
        return None
    if kind == 9:
        return Regex(rng.choice(["^a.*b$", "", "x|y", "[0-9]+", "é"]),
                     rng.choice(["", "i", "im", "imsx", "s", "u"]))
    if kind == 10:
        return Code(rng.choice(["function() { return 1; }", "x + 1", ""]))
    if kind == 11:
        return Code("x + y", {"x": rng.randint(0, 9), "y": value(rng, 0)})
    if kind == 12:
        return rng.choice([0, 1, -1, 2 ** 31 - 1, -(2 ** 31), rng.randint(-1000, 1000)])
    if kind == 13:
        return Int64(rng.choice([0, 1, -1, 2 ** 63 - 1, -(2 ** 63), rng.randint(-10 ** 15,
                                                                                 10 ** 15)]))
    if kind == 14:
        # Timestamp(0, 0) is fine anywhere but at the top level of an insert or replacement.
        return rng.choice([Timestamp(1, 1), Timestamp(2 ** 32 - 1, 2 ** 32 - 1), EMPTY_TS,
                           Timestamp(1_700_000_000, rng.randint(1, 1000))])
    if kind == 15:
        return Decimal128(rng.choice(["1.5", "-0", "0", "NaN", "-NaN", "Infinity", "-Infinity",
                                      "1E+6144", "1E-6176", "9999999999999999999999999999999999",
                                      "1.000", "-1.23E-400", str(rng.randint(-99, 99))]))
    if kind == 16:
        return MinKey()
    if kind == 17:
        return MaxKey()
    if kind == 18:
        return DBRef(rng.choice(["c", "other"]), rng.randint(0, 5),
                     rng.choice([None, "db0"]))
    if kind == 19:
        return Binary(uuid.UUID(int=rng.getrandbits(128)).bytes, 4)
    if kind in (20, 21, 22, 23):
        return rng.choice([rng.randint(-5, 5), 1.0, Int64(7), Decimal128("7"), "s"])
    if kind in (24, 25, 26, 27):
        return f"v{rng.randint(0, 50)}"
    if kind in (28, 29):
        return {_names(rng): value(rng, depth - 1) for _ in range(rng.randint(0, 4))}
    return [value(rng, depth - 1) for _ in range(rng.randint(0, 5))]


def deep(rng: random.Random, levels: int) -> Any:
    """A chain of nested documents and arrays ``levels`` deep."""
    inner: Any = value(rng, 0)
    for level in range(levels):
        inner = [inner, level] if rng.random() < 0.3 else {"d": inner, "l": level}
    return inner


# -- _id values ------------------------------------------------------------------------------------


def id_value(rng: random.Random, number: int, strings: bool = True) -> Any:
    """An ``_id`` for key ``number``: numbers in every numeric type (1, 1.0, NumberLong(1),
    NumberDecimal("1") and "1.0" are all the same key for the server), and other types."""
    kind = rng.randrange(20 if strings else 12)
    if kind < 3:
        return number
    if kind < 5:
        return float(number) if number != 0 else rng.choice([0.0, -0.0])
    if kind < 7:
        return Int64(number)
    if kind < 8:
        return Decimal128(str(number))
    if kind < 9:
        return Decimal128(f"{number}.0")
    if kind < 10:
        return Decimal128(f"{number}E0") if number else Decimal128("-0")
    if kind < 11:
        return {"k": number, "t": "doc"} if rng.random() < 0.5 else {"t": "doc", "k": number}
    if kind < 12:
        return datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc) + \
            datetime.timedelta(seconds=number)
    if kind < 14:
        return f"k{number:04d}"
    if kind < 15:
        return ObjectId(number.to_bytes(12, "big"))
    if kind < 16:
        return Binary(number.to_bytes(4, "big"), rng.choice([0, 0x80]))
    if kind < 17:
        return Timestamp(number + 1, 1)
    if kind < 18:
        return DatetimeMS(-(10 ** 14) - number) if rng.random() < 0.5 else \
            DatetimeMS(10 ** 15 + number)
    if kind < 19:
        return rng.choice([True, False, None, MinKey(), MaxKey(), math.nan,
                           Decimal128("NaN"), math.inf, Decimal128("-Infinity")])
    return {"nested": {"k": number}}


def same_key_other_type(rng: random.Random, current: Any) -> Any:
    """A value the server takes for the same ``_id`` as ``current``, of another type."""
    number = numeric(current)
    if number is None or number != number.to_integral_value() or abs(number) > 2 ** 52:
        return current
    whole = int(number)
    options = [whole, float(whole), Int64(whole), Decimal128(str(whole)),
               Decimal128(f"{whole}.00")]
    if whole == 0:
        options += [-0.0, Decimal128("-0")]
    choices = [o for o in options if type(o) is not type(current) or repr(o) != repr(current)]
    return rng.choice(choices) if choices else current


def numeric(value_: Any) -> Decimal | None:
    if isinstance(value_, bool):
        return None
    if isinstance(value_, int):
        return Decimal(int(value_))
    if isinstance(value_, float):
        return None if math.isnan(value_) or math.isinf(value_) else Decimal(value_)
    if isinstance(value_, Decimal128):
        number = value_.to_decimal()
        return None if number.is_nan() or number.is_infinite() else number
    return None


def key_of(value_: Any) -> Any:
    """The server's ``_id`` equality, coarsely: numbers by value, the rest by type and repr."""
    number = numeric(value_)
    if number is not None:
        return ("n", number.normalize() if number else Decimal(0))
    if isinstance(value_, float) and math.isnan(value_) or \
            isinstance(value_, Decimal128) and value_.to_decimal().is_nan():
        return ("nan",)
    if isinstance(value_, (float, Decimal128)):
        return ("inf", str(value_).lstrip("-").lower()[:3], str(value_).startswith("-"))
    return (type(value_).__name__, repr(value_))


# -- the model of the source ---------------------------------------------------------------------

PLAIN_KINDS = ("plain", "plain", "plain", "ttl", "unique", "hidden", "collated", "clustered",
               "validated")


@dataclass
class Coll:
    kind: str  # plain, ttl, unique, hidden, collated, clustered, validated, capped
    ids: dict[Any, Any] = field(default_factory=dict)  # key_of(_id) -> _id as last written
    indexes: set[str] = field(default_factory=set)
    next_number: int = 0

    @property
    def strings(self) -> bool:
        # Case-insensitive collation: keep _ids whose case could make two keys one.
        return self.kind != "collated"


@dataclass
class Model:
    dbs: dict[str, dict[str, Coll]] = field(default_factory=dict)
    views: dict[str, dict[str, str]] = field(default_factory=dict)  # db -> view -> viewOn
    unique_counter: int = 0

    def collections(self) -> list[tuple[str, str, Coll]]:
        return [(db, name, coll) for db, colls in sorted(self.dbs.items())
                for name, coll in sorted(colls.items())]

    def unique(self) -> int:
        self.unique_counter += 1
        return self.unique_counter


@dataclass
class NsFilter:
    """A namespace filter (spec §13) of the shapes the campaign uses: whole databases, listed
    collections of a database, and excluded collections of a whole database."""

    whole: set[str] = field(default_factory=set)
    listed: dict[str, set[str]] = field(default_factory=dict)
    excluded: dict[str, set[str]] = field(default_factory=dict)

    def includes(self, db: str, coll: str) -> bool:
        chosen = db in self.whole or coll in self.listed.get(db, set())
        return chosen and coll not in self.excluded.get(db, set())

    def rename_allowed(self, from_db: str, from_coll: str, to_db: str, to_coll: str) -> bool:
        """Renames mongosync follows (spec §13.3); the others stop the sync by design."""
        source_in, target_in = self.includes(from_db, from_coll), self.includes(to_db, to_coll)
        if not source_in and not target_in:
            return True
        if not target_in:
            return from_db in self.whole  # leaves the filter, like a drop
        if source_in and from_db == to_db:
            return True
        return to_db in self.whole

    def body(self) -> dict[str, Any]:
        include: list[dict[str, Any]] = [{"database": db} for db in sorted(self.whole)]
        include += [{"database": db, "collections": sorted(colls)}
                    for db, colls in sorted(self.listed.items())]
        body: dict[str, Any] = {"includeNamespaces": include}
        if self.excluded:
            body["excludeNamespaces"] = [{"database": db, "collections": sorted(colls)}
                                         for db, colls in sorted(self.excluded.items())]
        return body


class Generator:
    def __init__(self, seed: int, big: bool, long: bool, server_copies: bool = False) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.big = big
        self.long = long
        self.model = Model()
        self.name_counter = 0
        self.filter: NsFilter | None = None
        self.phase = "setup"
        self.copies_rng = random.Random(seed * 1_000_003 + 17) if server_copies else None

    # -- documents -------------------------------------------------------------------------------
    def document(self, coll: Coll, _id: Any, extra: int | None = None) -> dict[str, Any]:
        rng = self.rng
        fields: dict[str, Any] = {
            "n": rng.choice([rng.randint(0, 100), Int64(rng.randint(0, 100)),
                             float(rng.randint(0, 100))]),
            "tags": [f"t{rng.randint(0, 9)}" for _ in range(rng.randint(0, 6))],
            "arr": [{"b": rng.randint(0, 9), "c": value(rng, 1)} for _ in range(rng.randint(3, 6))],
            "nested": {"x": {"y": value(rng, 1)}, "z": rng.randint(0, 5)},
        }
        if coll.kind == "unique":
            fields["u"] = self.model.unique()
        if coll.kind == "validated":
            fields["x"] = rng.randint(0, 1000)
        if coll.kind in ("ttl", "clustered"):
            fields["createdAt"] = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc) \
                + datetime.timedelta(seconds=rng.randint(0, 10 ** 6))
        if coll.kind == "hidden":
            fields["age"] = rng.randint(0, 99)
        for _ in range(rng.randint(0, 6) if extra is None else extra):
            fields[f"f{rng.randint(0, 30)}"] = value(rng, 3)
        roll = rng.random()
        if roll < 0.04:
            fields["deep"] = deep(rng, rng.randint(20, 60))
        elif roll < 0.08:
            fields["dotted.name"] = value(rng, 1)  # needs disambiguatedPaths in update events
        elif roll < 0.12:
            fields["blob"] = "p" * rng.randint(10_000, 200_000)
        items = list(fields.items())
        rng.shuffle(items)  # field order is part of a document: every order occurs
        if rng.random() < 0.97:
            return {"_id": _id, **dict(items)}
        position = rng.randint(0, len(items))  # _id not first (the server moves it first)
        items.insert(position, ("_id", _id))
        return dict(items)

    def new_id(self, coll: Coll) -> Any:
        coll.next_number += 1
        for _ in range(10):
            candidate = id_value(self.rng, coll.next_number + self.rng.randint(0, 3),
                                 coll.strings)
            if key_of(candidate) not in coll.ids:
                return candidate
            coll.next_number += 1
        return ObjectId(self.rng.getrandbits(96).to_bytes(12, "big"))

    def big_document(self, coll: Coll, _id: Any) -> dict[str, Any]:
        document = self.document(coll, _id, extra=1)
        document["blob"] = {"$fill": LARGEST_DOCUMENT_BYTES - self.rng.randint(0, 200_000) // 100}
        return document

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> list[Op]:
        rng = self.rng
        ops: list[Op] = []
        databases = rng.randint(3, 5) if self.long else rng.randint(2, 3)
        for d in range(databases):
            db = f"db{d}"
            self.model.dbs[db] = {}
            collections = rng.randint(4, 14) if self.long else rng.randint(2, 5)
            for c in range(collections):
                kind = rng.choice(PLAIN_KINDS + ("capped",))
                ops.extend(self.create(db, f"c{c}", kind))
            if rng.random() < 0.3:  # names with dots, spaces, other scripts, long ones
                name = rng.choice(["dotted.name.c", "名前", "with space", "UPPER", "n" * 120,
                                   "system_not", "a-b_c"])
                ops.extend(self.create(db, name, rng.choice(PLAIN_KINDS)))
            # many small collections
            for s in range(rng.randint(5, 25) if self.long else rng.randint(0, 4)):
                ops.extend(self.create(db, f"small{s}", "plain"))
        for db, name, coll in self.model.collections():
            count = rng.choice([0, 1, 5, 20, 60]) if not self.long else \
                rng.choice([0, 1, 5, 40, 200, 800])
            if name.startswith("small"):
                count = rng.randint(0, 3)
            ops.extend(self.insert_ops(db, name, coll, count, batch=200))
        # a few larger collections (several batches, several partitions)
        for _ in range(rng.randint(1, 2) if not self.long else rng.randint(2, 4)):
            db, name, coll = rng.choice([c for c in self.model.collections()
                                         if c[2].kind != "capped"])
            count = rng.randint(300, 1200) if not self.long else rng.randint(2000, 8000)
            ops.extend(self.insert_ops(db, name, coll, count, batch=500, extra=1))
        if self.big:
            for _ in range(rng.randint(1, 3)):
                db, name, coll = rng.choice([c for c in self.model.collections()
                                             if c[2].kind not in ("capped", "validated")])
                _id = self.new_id(coll)
                coll.ids[key_of(_id)] = _id
                ops.append(Op("insert", db, name, {"documents": [self.big_document(coll, _id)]}))
        for _ in range(rng.randint(1, 3)):
            ops.extend(self.create_view())
        # Top-level empty timestamps, which only an update keeps.
        for db, name, coll in rng.sample(self.model.collections(),
                                         min(3, len(self.model.collections()))):
            if coll.kind != "capped" and coll.ids:
                ops.append(Op("update_many", db, name, {
                    "filter": {}, "update": {"$set": {"ts": EMPTY_TS}}}))
        return ops

    def insert_ops(self, db: str, name: str, coll: Coll, count: int, batch: int,
                   extra: int | None = None) -> list[Op]:
        """Inserts of ``count`` new documents. Their ``_id``s are chosen now; big batches are
        generated when the runner sends them (:func:`lazy_documents`), so plans stay cheap."""
        ops = []
        ids: list[Any] = []

        def flush() -> None:
            if len(ids) > 5:
                ops.append(Op("insert", db, name, {"lazy": {
                    "seed": self.rng.getrandbits(32), "kind": coll.kind, "ids": list(ids),
                    "extra": extra, "unique_base": self.model.unique_counter}}))
                self.model.unique_counter += len(ids)
            elif ids:
                ops.append(Op("insert", db, name, {
                    "documents": [self.document(coll, _id, extra) for _id in ids]}))
            ids.clear()

        for _ in range(count):
            _id = self.new_id(coll) if coll.kind != "capped" else coll.next_number
            if coll.kind == "capped":
                coll.next_number += 1
            coll.ids[key_of(_id)] = _id
            ids.append(_id)
            if len(ids) >= batch:
                flush()
        flush()
        return ops

    def create(self, db: str, name: str, kind: str) -> list[Op]:
        """Create a collection of ``kind`` (and record it in the model)."""
        rng = self.rng
        coll = Coll(kind=kind)
        self.model.dbs.setdefault(db, {})[name] = coll
        options: dict[str, Any] = {}
        indexes: list[dict[str, Any]] = []
        if kind == "capped":
            options = {"capped": True, "size": rng.choice([4096, 65536, 1 << 20])}
            if rng.random() < 0.5:
                options["max"] = rng.choice([10, 50, 200])
        elif kind == "collated":
            options = {"collation": {"locale": rng.choice(["en", "fr", "de"]),
                                     "strength": rng.choice([1, 2, 3])}}
        elif kind == "clustered":
            named = rng.random() < 0.5 and "clustered-index-name" not in AVOIDED
            options = {"clusteredIndex": {"key": {"_id": 1}, "unique": True,
                                          **({"name": "by_id"} if named else {})}}
        elif kind == "validated":
            options = {"validator": rng.choice([{"$jsonSchema": {"required": ["x"]}},
                                                {"x": {"$exists": True}}]),
                       "validationLevel": rng.choice(["strict", "moderate"]),
                       "validationAction": rng.choice(["error", "warn"])}
        elif kind == "ttl":
            indexes.append({"key": {"createdAt": 1}, "name": "ttl",
                            "expireAfterSeconds": rng.choice([0, 60, 3600, 86400 * 365])})
        elif kind == "unique":
            indexes.append({"key": {"u": 1}, "name": "u_unique", "unique": True})
            if rng.random() < 0.5:
                indexes.append({"key": {"u": -1, "n": 1}, "name": "u_n_unique", "unique": True,
                                "sparse": True})
        elif kind == "hidden":
            indexes.append({"key": {"age": 1}, "name": "age_hidden", "hidden": True})
        if rng.random() < 0.3 and kind not in ("capped",):
            indexes.append(self.index_spec())
        ops = [Op("create", db, name, {"options": options})]
        for spec in indexes:
            coll.indexes.add(spec["name"])
            ops.append(Op("create_index", db, name, {"spec": spec}))
        return ops

    def index_spec(self) -> dict[str, Any]:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            return {"key": {"n": 1}, "name": "n_1"}
        if choice == 1:
            return {"key": {"nested.x.y": -1, "n": 1}, "name": "nested_desc"}
        if choice == 2:
            return {"key": {"tags": 1}, "name": "tags_sparse", "sparse": True}
        if choice == 3:
            return {"key": {"n": 1}, "name": "n_partial",
                    "partialFilterExpression": {"n": {"$gt": 10}}}
        if choice == 4:
            return {"key": {"arr.b": 1}, "name": "arr_b", "collation": {"locale": "en",
                                                                       "strength": 2}}
        if choice == 5:
            return {"key": {"$**": 1}, "name": "wildcard"}
        if choice == 6:
            return {"key": {"n": "hashed"}, "name": "n_hashed"}
        if choice == 7:
            return {"key": {"_id": 1, "n": 1}, "name": "id_n_unique", "unique": True}
        return {"key": {"nested.z": 1}, "name": "z_hidden_later", "hidden": rng.random() < 0.5}

    def create_view(self) -> list[Op]:
        collections = [c for c in self.model.collections()]
        if not collections:
            return []
        db, name, _ = self.rng.choice(collections)
        self.name_counter += 1
        view = f"view{self.name_counter}"
        self.model.views.setdefault(db, {})[view] = name
        pipeline = self.rng.choice([[{"$match": {"n": {"$gte": 10}}}],
                                    [{"$project": {"n": 1, "tags": 1}}],
                                    [{"$match": {}}, {"$sort": {"n": -1}}]])
        options: dict[str, Any] = {"viewOn": name, "pipeline": pipeline}
        if self.rng.random() < 0.3:
            options["collation"] = {"locale": "en", "strength": 2}
        return [Op("create", db, view, {"options": options})]

    # -- the timeline ----------------------------------------------------------------------------
    def timeline(self, operations: int, kill_rate: float, fault_rate: float,
                 phase: str) -> list[Step]:
        self.phase = phase
        steps: list[Step] = []
        for _ in range(operations):
            roll = self.rng.random()
            if roll < kill_rate:
                steps.append(Kill(delay=self.rng.choice([0.0, 0.05, 0.2, 0.5, 1.0]),
                                  down_for=self.rng.choice([0.0, 0.0, 0.3, 1.0])))
            elif roll < kill_rate + fault_rate:
                steps.append(self.fault(phase))
            elif roll < kill_rate + fault_rate + 0.01:
                steps.append(Pause(seconds=self.rng.choice([0.0, 0.3, 1.0]),
                                   kill=self.rng.random() < 0.4))
            steps.extend(self.operation())
        return steps

    def fault(self, phase: str) -> Fault:
        rng = self.rng
        cluster = rng.choice(["source", "destination"])
        if phase == "copy":
            # The slowed cluster keeps its failCommand for the slow-down during the copy.
            cluster = "destination" if self.slow_side == "source" else "source"
        commands = SOURCE_COMMANDS if cluster == "source" else DESTINATION_COMMANDS
        chosen = rng.sample(commands, rng.randint(1, 3))
        data: dict[str, Any] = {"failCommands": chosen, "appName": "pymongosync"}
        roll = rng.random()
        calm = cluster == "destination" and "lease-loss-hang" in AVOIDED
        if roll < 0.25:
            data["closeConnection"] = True
        elif roll < 0.4 and cluster == "destination" and not calm:
            # Write concern errors of the retryable kind (the write happened; the reply says
            # the primary stepped down): the ones an election produces.
            writes = [c for c in chosen if c in WRITE_COMMANDS] or ["insert"]
            data["failCommands"] = writes
            data["writeConcernError"] = {"code": rng.choice([91, 11602, 189]),
                                         "errmsg": "injected write concern error"}
            data["errorLabels"] = ["RetryableWriteError"]
        else:
            codes = [c for c in TRANSIENT_CODES if not calm or c not in STATE_CHANGE_CODES]
            data["errorCode"] = rng.choice(codes)
            if rng.random() < 0.5:
                data["errorLabels"] = ["RetryableWriteError"]
        return Fault(cluster=cluster, times=rng.randint(1, 3), data=data)

    def target(self, writable: bool = True) -> tuple[str, str, Coll] | None:
        candidates = [c for c in self.model.collections()
                      if not writable or c[2].kind != "capped"]
        return self.rng.choice(candidates) if candidates else None

    def operation(self) -> list[Op]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.12:
            return self.ddl()
        if roll < 0.17:
            return self.transaction()
        if roll < 0.20:
            return self.capped_insert()
        if self.big and roll < 0.22:
            return self.big_write()
        target = self.target()
        if target is None:
            return self.ddl()
        db, name, coll = target
        return self.crud(db, name, coll)

    def existing_id(self, coll: Coll) -> Any:
        if not coll.ids or self.rng.random() < 0.08:
            return self.new_id(coll)  # an _id that may not exist: a no-op, or an upsert
        return self.rng.choice(list(coll.ids.values()))

    def crud(self, db: str, name: str, coll: Coll, in_transaction: bool = False) -> list[Op]:
        rng = self.rng
        choice = rng.randrange(100)
        if choice < 18:
            count = rng.choice([1, 1, 1, 2, 5, 20])
            _ids = []
            for _ in range(count):
                _id = self.new_id(coll)
                coll.ids[key_of(_id)] = _id
                _ids.append(_id)
            return [Op("insert", db, name, {"documents": [self.document(coll, i) for i in _ids],
                                           "ordered": rng.random() < 0.7})]
        if choice < 40:
            return [Op("update_one", db, name, {"filter": {"_id": self.existing_id(coll)},
                                               "update": self.update_operators(coll)})]
        if choice < 47:
            return [Op("update_one", db, name, {"filter": {"_id": self.existing_id(coll)},
                                               "update": self.update_pipeline(coll)})]
        if choice < 52:
            return [Op("update_one", db, name, {
                "filter": {"_id": self.existing_id(coll)},
                "update": {"$set": {"arr.$[e].c": value(rng, 1)}},
                "array_filters": [{"e.b": {"$gte": rng.randint(0, 9)}}]})]
        if choice < 57:
            return [Op("update_many", db, name, {
                "filter": {"n": {"$gte": rng.randint(0, 100)}},
                "update": rng.choice([{"$inc": {"nested.z": 1}},
                                      {"$set": {"ts": EMPTY_TS, "flag": rng.random() < 0.5}},
                                      {"$push": {"tags": {"$each": ["m"], "$slice": -3}}},
                                      {"$unset": {"f1": ""}}])})]
        if choice < 66:
            _id = self.existing_id(coll)
            coll.ids[key_of(_id)] = _id
            return [Op("replace_one", db, name, {"filter": {"_id": _id},
                                                "document": self.replacement(coll),
                                                "upsert": rng.random() < 0.3})]
        if choice < 74:
            _id = self.existing_id(coll)
            coll.ids.pop(key_of(_id), None)
            return [Op("delete_one", db, name, {"filter": {"_id": _id}})]
        if choice < 76 and not in_transaction:
            bound = rng.randint(0, 100)
            return [Op("delete_many", db, name, {"filter": {"n": {"$gt": bound}}})]
        if choice < 84:
            # Delete and re-insert the same key, often with a numerically equal _id of another
            # type: 1 -> 1.0 -> NumberLong(1) -> NumberDecimal("1")...
            _id = self.existing_id(coll)
            other = same_key_other_type(rng, _id)
            ops = [Op("delete_one", db, name, {"filter": {"_id": _id}}),
                   Op("insert", db, name, {"documents": [self.document(coll, other)]})]
            if rng.random() < 0.5:
                ops += [Op("delete_one", db, name, {"filter": {"_id": other}}),
                        Op("insert", db, name, {"documents": [self.document(coll, _id)]})]
                coll.ids[key_of(_id)] = _id
            else:
                coll.ids[key_of(other)] = other
            return ops
        if choice < 88:
            _id = self.new_id(coll) if rng.random() < 0.5 else self.existing_id(coll)
            coll.ids[key_of(_id)] = _id
            update = self.update_operators(coll)
            if coll.kind == "unique":
                update.setdefault("$setOnInsert", {})["u"] = self.model.unique()
            if coll.kind == "validated":
                update.setdefault("$setOnInsert", {})["x"] = 1
            return [Op("update_one", db, name, {"filter": {"_id": _id}, "update": update,
                                               "upsert": True})]
        if choice < 94:
            _id = self.existing_id(coll)
            kind = rng.choice(["find_one_and_update", "find_one_and_replace",
                               "find_one_and_delete"])
            if kind == "find_one_and_delete":
                coll.ids.pop(key_of(_id), None)
                return [Op(kind, db, name, {"filter": {"_id": _id}})]
            if kind == "find_one_and_replace":
                return [Op(kind, db, name, {"filter": {"_id": _id},
                                           "document": self.replacement(coll)})]
            return [Op(kind, db, name, {"filter": {"_id": _id},
                                       "update": self.update_operators(coll)})]
        # a bulk write mixing everything, ordered or not
        requests: list[tuple[str, dict[str, Any]]] = []
        for _ in range(rng.randint(2, 8)):
            step = rng.randrange(4)
            if step == 0:
                _id = self.new_id(coll)
                coll.ids[key_of(_id)] = _id
                requests.append(("insert", {"document": self.document(coll, _id)}))
            elif step == 1:
                requests.append(("update", {"filter": {"_id": self.existing_id(coll)},
                                            "update": self.update_operators(coll)}))
            elif step == 2:
                requests.append(("replace", {"filter": {"_id": self.existing_id(coll)},
                                             "document": self.replacement(coll)}))
            else:
                _id = self.existing_id(coll)
                coll.ids.pop(key_of(_id), None)
                requests.append(("delete", {"filter": {"_id": _id}}))
        return [Op("bulk_write", db, name, {"requests": requests,
                                           "ordered": rng.random() < 0.5})]

    def replacement(self, coll: Coll) -> dict[str, Any]:
        document = self.document(coll, None)
        document.pop("_id")
        return document

    def update_operators(self, coll: Coll) -> dict[str, Any]:
        rng = self.rng
        update: dict[str, Any] = {}
        for _ in range(rng.randint(1, 3)):
            choice = rng.randrange(18)
            if choice == 17:  # numeric field names in a document: ambiguous paths
                update.setdefault("$set", {})[rng.choice(["nested.0", "nested.x.1",
                                                          f"f{rng.randint(0, 30)}.1"])] = \
                    value(rng, 1)
            elif choice == 0:
                update.setdefault("$set", {})[f"f{rng.randint(0, 30)}"] = value(rng, 2)
            elif choice == 1:
                update.setdefault("$set", {})[f"arr.{rng.randint(0, 4)}.b"] = value(rng, 1)
            elif choice == 2:
                update.setdefault("$set", {})["nested.x.y"] = value(rng, 2)
            elif choice == 3:
                update.setdefault("$unset", {})[rng.choice(["f1", "f2", "nested.z", "arr.1",
                                                            "tags", "ts"])] = ""
            elif choice == 4:
                update.setdefault("$inc", {})["n"] = rng.choice([1, Int64(2), 0.5,
                                                                 Decimal128("1")])
            elif choice == 5:
                update.setdefault("$push", {})["tags"] = {
                    "$each": [f"t{rng.randint(0, 9)}" for _ in range(rng.randint(0, 4))],
                    "$slice": rng.choice([-3, 2, 0, 5])}
            elif choice == 6:
                update.setdefault("$pull", {})["tags"] = rng.choice(
                    [f"t{rng.randint(0, 9)}", {"$in": ["t1", "t2"]}])
            elif choice == 7:
                update.setdefault("$addToSet", {})["tags"] = f"t{rng.randint(0, 12)}"
            elif choice == 8:
                update.setdefault("$pop", {})["arr"] = rng.choice([1, -1])
            elif choice == 9:
                update.setdefault("$set", {})["ts"] = EMPTY_TS  # kept as is by an update
            elif choice == 10:
                update.setdefault("$rename", {})[rng.choice(["f1", "f2", "f3"])] = \
                    rng.choice(["f4", "renamed"])
            elif choice == 11:
                update.setdefault("$max", {})["nested.z"] = rng.randint(0, 9)
            elif choice == 12:
                update.setdefault("$mul", {})["n"] = rng.choice([2, Int64(3), 1.5])
            elif choice == 13:
                update.setdefault("$set", {})[f"arr.{rng.randint(5, 9)}"] = {"b": 0}  # pads
            elif choice == 14:
                update.setdefault("$set", {})["when"] = rng.choice([FAR_PAST, FAR_FUTURE])
            elif choice == 15:
                update.setdefault("$push", {})["arr"] = {"$each": [{"b": rng.randint(0, 9)}],
                                                         "$position": 0}
            else:
                update.setdefault("$set", {})["deep"] = deep(rng, rng.randint(5, 40))
        # Conflicting paths (e.g. $set and $unset of one field) are refused by the server:
        # keep the first operator that names a path.
        seen: set[str] = set()
        for operator in list(update):
            for path in list(update[operator]):
                root = path.split(".")[0]
                if root in seen or (operator == "$rename" and
                                    update[operator][path] in seen):
                    del update[operator][path]
                else:
                    seen.add(root)
                    if operator == "$rename":
                        seen.add(update[operator][path].split(".")[0])
            if not update[operator]:
                del update[operator]
        if coll.kind == "unique":
            for operator in update.values():
                operator.pop("u", None)
        return update or {"$set": {"touched": True}}

    def update_pipeline(self, coll: Coll) -> list[dict[str, Any]]:
        rng = self.rng
        choice = rng.randrange(7)
        if choice == 0:  # field order changes: new fields first, the document after
            return [{"$replaceWith": {"$mergeObjects": [{"first": rng.randint(0, 9)},
                                                        "$$ROOT"]}}]
        if choice == 1:  # truncating arrays
            return [{"$set": {"tags": {"$slice": ["$tags", rng.randint(0, 2)]},
                              "arr": {"$slice": ["$arr", rng.randint(1, 3)]}}}]
        if choice == 2:
            return [{"$set": {"n": {"$add": [{"$ifNull": ["$n", 0]}, 1]}}},
                    {"$unset": ["f1", "f2"]}]
        if choice == 3:  # a field whose name holds a dot
            return [{"$replaceWith": {"$setField": {"field": "dotted.name", "input": "$$ROOT",
                                                    "value": rng.randint(0, 99)}}}]
        if choice == 4:  # reversed field order (_id stays first)
            return [{"$replaceWith": {"$mergeObjects": [
                {"_id": "$_id"},
                {"$arrayToObject": {"$reverseArray": {"$objectToArray": "$$ROOT"}}}]}}]
        if choice == 5:
            return [{"$set": {"nested": {"z": {"$literal": rng.randint(0, 9)},
                                         "x": {"y": "replaced"}}}}]
        return [{"$set": {"arr": {"$concatArrays": ["$arr", [{"b": 1}]]}}}]

    def capped_insert(self) -> list[Op]:
        capped = [c for c in self.model.collections() if c[2].kind == "capped"]
        if not capped:
            return []
        db, name, coll = self.rng.choice(capped)
        ops = []
        documents = []
        for _ in range(self.rng.randint(1, 30)):
            coll.next_number += 1
            documents.append(self.document(coll, coll.next_number, extra=0))
        ops.append(Op("insert", db, name, {"documents": documents}))
        return ops

    def big_write(self) -> list[Op]:
        target = self.target()
        if target is None or target[2].kind == "validated":
            return []
        db, name, coll = target
        if self.rng.random() < 0.6 or not coll.ids:
            _id = self.new_id(coll)
            coll.ids[key_of(_id)] = _id
            return [Op("insert", db, name, {"documents": [self.big_document(coll, _id)]})]
        _id = self.existing_id(coll)
        if self.rng.random() < 0.5:
            document = self.big_document(coll, None)
            document.pop("_id")
            return [Op("replace_one", db, name, {"filter": {"_id": _id}, "document": document})]
        return [Op("update_one", db, name, {
            "filter": {"_id": _id},
            "update": {"$set": {"blob": {"$big": BIG_DOCUMENT_BYTES - 300_000}}}})]

    def transaction(self) -> list[Op]:
        collections = [c for c in self.model.collections() if c[2].kind != "capped"]
        if len(collections) < 2:
            return []
        chosen = self.rng.sample(collections, min(len(collections), self.rng.randint(2, 4)))
        ops: list[Op] = []
        for db, name, coll in chosen:
            for _ in range(self.rng.randint(1, 3)):
                ops.extend(op for op in self.crud(db, name, coll, in_transaction=True)
                           if op.kind != "bulk_write")
        abort = self.rng.random() < 0.2
        return [Op("transaction", args={"ops": ops, "abort": abort})]

    # -- DDL -------------------------------------------------------------------------------------
    def fresh_name(self, prefix: str) -> str:
        self.name_counter += 1
        return f"{prefix}{self.name_counter}"

    def server_copy(self) -> list[Op]:
        """convertToCapped, cloneCollectionAsCapped or $out of a collection (SERVER_COPIES)."""
        rng = self.copies_rng
        assert rng is not None
        # Not capped already, and not what a capped collection cannot be (clustered) or what
        # the capped inserts that follow could not satisfy (a validator).
        sources = [c for c in self.model.collections()
                   if c[2].kind not in ("capped", "clustered", "validated")]
        if not sources:
            return []
        db, name, coll = rng.choice(sources)
        what = rng.choice(["convert_to_capped", "clone_capped", "out"])
        size = rng.choice([4096, 65536, 1 << 20])
        # Which documents a capped collection keeps is the server's business: its capped
        # inserts take numbers no other _id has.
        numbers = 10 ** 9 + 10 ** 6 * self.model.unique()
        if what == "convert_to_capped":
            coll.kind, coll.indexes, coll.ids, coll.next_number = "capped", set(), {}, numbers
            return [Op(what, db, name, {"size": size})]
        target = self.fresh_name("copy")
        if what == "clone_capped":
            self.model.dbs[db][target] = Coll(kind="capped", next_number=numbers)
            return [Op(what, db, name, {"to": target, "size": size})]
        self.model.dbs[db][target] = Coll(kind="plain", ids=dict(coll.ids))
        return [Op(what, db, name, {"to": target})]

    def ddl(self) -> list[Op]:
        if self.copies_rng is not None and self.copies_rng.random() < 0.15:
            copied = self.server_copy()
            if copied:
                return copied
        rng = self.rng
        choice = rng.randrange(100)
        collections = self.model.collections()
        if choice < 14 or not collections:
            db = rng.choice(sorted(self.model.dbs) + ["db9"])
            kind = rng.choice(PLAIN_KINDS + ("capped",))
            ops = self.create(db, self.fresh_name("new"), kind)
            name = ops[0].coll
            assert name is not None
            coll = self.model.dbs[db][name]
            return ops + self.insert_ops(db, name, coll, rng.randint(0, 10), batch=50)
        if choice < 20:  # implicit creation by an insert
            db = rng.choice(sorted(self.model.dbs) + ["db8"])
            name = self.fresh_name("implicit")
            coll = Coll(kind="plain")
            self.model.dbs.setdefault(db, {})[name] = coll
            return self.insert_ops(db, name, coll, rng.randint(1, 5), batch=50)
        db, name, coll = rng.choice(collections)
        if choice < 30:
            self.model.dbs[db].pop(name)
            ops = [Op("drop", db, name)]
            if rng.random() < 0.4:  # re-created at once under the same name, maybe another kind
                ops += self.create(db, name, rng.choice(PLAIN_KINDS + ("capped",)))
                ops += self.insert_ops(db, name, self.model.dbs[db][name], rng.randint(0, 8),
                                       batch=50)
            return ops
        if choice < 34:
            self.model.dbs.pop(db, None)
            self.model.views.pop(db, None)
            ops = [Op("drop_database", db)]
            if rng.random() < 0.7:  # re-created at once, with the same names
                self.model.dbs[db] = {}
                for new_name in [name, "c0"][:rng.randint(1, 2)]:
                    kind = rng.choice(PLAIN_KINDS)
                    ops += self.create(db, new_name, kind)
                    created = self.model.dbs[db][new_name]
                    ops += self.insert_ops(db, new_name, created, rng.randint(1, 20), batch=50)
            return ops
        if choice < 52:
            return self.rename(db, name, coll)
        if choice < 64:
            spec = self.index_spec()
            if spec["name"] in coll.indexes:
                coll.indexes.discard(spec["name"])
                return [Op("drop_index", db, name, {"name": spec["name"]})]
            if coll.kind == "capped" and spec.get("unique"):
                return []
            coll.indexes.add(spec["name"])
            return [Op("create_index", db, name, {"spec": spec})]
        if choice < 70:
            droppable = sorted(i for i in coll.indexes if i not in ("u_unique", "ttl"))
            if not droppable:
                return []
            index = rng.choice(droppable)
            coll.indexes.discard(index)
            return [Op("drop_index", db, name, {"name": index})]
        if choice < 90:
            return self.coll_mod(db, name, coll)
        if choice < 95:
            return self.create_view()
        views = [(d, v) for d, vs in sorted(self.model.views.items()) for v in sorted(vs)]
        if not views:
            return []
        view_db, view = rng.choice(views)
        if rng.random() < 0.5:
            self.model.views[view_db].pop(view)
            return [Op("drop", view_db, view)]
        return [Op("coll_mod", view_db, view, {"command": {
            "viewOn": self.model.views[view_db][view],
            "pipeline": [{"$match": {"n": {"$lt": rng.randint(0, 100)}}}]}})]

    def rename(self, db: str, name: str, coll: Coll) -> list[Op]:
        rng = self.rng
        across = rng.random() < 0.15
        to_db = rng.choice(sorted(self.model.dbs)) if across else db
        others = [n for n in self.model.dbs.get(to_db, {}) if n != name]
        onto_existing = bool(others) and rng.random() < 0.5
        if onto_existing and self.phase == "copy" and "rename-before-listing" in AVOIDED:
            onto_existing = False  # the copy phase's renames may come before the listing
        if onto_existing:
            target = rng.choice(others)  # onto an existing collection: dropTarget
            drop_target = True
        else:
            target = self.fresh_name("renamed")
            drop_target = rng.random() < 0.3  # dropTarget with nothing to drop
        if self.filter is not None and not self.filter.rename_allowed(db, name, to_db, target):
            return []
        self.model.dbs[db].pop(name)
        self.model.dbs[to_db][target] = coll
        return [Op("rename", db, name, {"to_db": to_db, "to": target,
                                        "dropTarget": drop_target})]

    def coll_mod(self, db: str, name: str, coll: Coll) -> list[Op]:
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0 and coll.kind != "capped":
            return [Op("coll_mod", db, name, {"command": {
                "validator": rng.choice([{"n": {"$exists": True}}, {"x": {"$gte": 0}}, {}]),
                "validationLevel": rng.choice(["off", "moderate", "strict"]),
                "validationAction": rng.choice(["warn", "error"])}})]
        if choice == 1 and "ttl" in coll.indexes:
            return [Op("coll_mod", db, name, {"command": {"index": {
                "name": "ttl", "expireAfterSeconds": rng.choice([1, 120, 7200])}}})]
        if choice == 2:
            hideable = sorted(i for i in coll.indexes if i not in ("ttl",)
                              and not i.endswith("unique"))
            if hideable:
                return [Op("coll_mod", db, name, {"command": {"index": {
                    "name": rng.choice(hideable), "hidden": rng.random() < 0.5}}})]
        if choice == 3 and coll.kind == "capped":
            return [Op("coll_mod", db, name, {"command": {
                "cappedSize": rng.choice([8192, 1 << 20]),
                **({"cappedMax": rng.choice([20, 500])} if rng.random() < 0.5 else {})}})]
        if choice == 4:
            return [Op("coll_mod", db, name, {"command": {
                "changeStreamPreAndPostImages": {"enabled": rng.random() < 0.5}}})]
        if choice == 5 and "u_unique" not in coll.indexes and coll.kind not in ("capped",):
            # a unique index built in two steps, as operators convert one: prepareUnique
            # first, then unique. Every document has a distinct _id: key {_id, pu}.
            coll.indexes.add("pu_conv")
            return [Op("create_index", db, name, {"spec": {"key": {"_id": 1, "pu": 1},
                                                           "name": "pu_conv"}}),
                    Op("coll_mod", db, name, {"command": {"index": {"name": "pu_conv",
                                                                    "prepareUnique": True}}}),
                    Op("coll_mod", db, name, {"command": {"index": {"name": "pu_conv",
                                                                    "unique": True}}})]
        return [Op("coll_mod", db, name, {"command": {"validationLevel": "moderate"}}) if
                coll.kind == "validated" else Op("noop")]


def lazy_documents(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents of an insert planned with ``lazy`` (same seed, same documents)."""
    generator = Generator(spec["seed"], big=False, long=False)
    generator.model.unique_counter = spec["unique_base"]
    coll = Coll(kind=spec["kind"])
    return [generator.document(coll, _id, spec["extra"]) for _id in spec["ids"]]


def generate(seed: int, big: bool = False, long: bool = False, *,
             server_copies: bool = SERVER_COPIES, hot_documents: bool = HOT_DOCUMENTS,
             sharded_destination: bool = SHARDED_DESTINATION,
             sharded_source: bool = SHARDED_SOURCE,
             one_per_shard: bool = ONE_PER_SHARD) -> Plan:
    """The plan of ``seed``. ``long``: more data and longer timelines (the long mode);
    ``big``: documents near 16 MiB too (slow)."""
    sharded_source = sharded_source or one_per_shard
    generator = Generator(seed, big, long or big, server_copies)
    rng = generator.rng
    slow_side = rng.choice(["source", "destination"])
    generator.slow_side = slow_side  # type: ignore[attr-defined]
    setup = generator.setup()
    start_body: dict[str, Any] = {"source": "cluster0", "destination": "cluster1"}
    destination_setup: list[Op] = []
    if rng.random() < 0.25:
        generator.filter = choose_filter(rng, sorted(generator.model.dbs))
        start_body.update(generator.filter.body())
        if rng.random() < 0.5:
            start_body["preExistingDestinationData"] = True
            destination_setup = destination_data(rng, generator.filter)
    scale = 3 if long or big else 1
    copy = generator.timeline(rng.randint(8, 20) * scale, kill_rate=0.02, fault_rate=0.06,
                              phase="copy")
    cea = generator.timeline(rng.randint(10, 25) * scale, kill_rate=0.03, fault_rate=0.08,
                             phase="cea")
    commit_kills = [Kill(delay=rng.choice([0.0, 0.02, 0.1, 0.3]), down_for=0.0)
                    for _ in range(1 if rng.random() < 0.25 else 0)]
    if rng.random() < 0.06:
        at = rng.randint(0, len(cea))
        cea.insert(at, Reset(interrupt_after=rng.choice([None, 0.0, 0.2, 0.5, 1.0])))
        if "rename-before-listing" in AVOIDED:
            # After the reset a new migration lists the source again: no rename may drop a
            # target then.
            cea[at + 1:] = [dataclasses.replace(step, args={**step.args, "dropTarget": False})
                            if isinstance(step, Op) and step.kind == "rename" else step
                            for step in cea[at + 1:]]
    conflict = None
    if start_body.get("preExistingDestinationData") and rng.random() < 0.3:
        included = [(db, name) for db, name, _ in generator_collections(setup)
                    if generator.filter is not None and generator.filter.includes(db, name)]
        if included:
            db, name = rng.choice(included)
            conflict = f"{db}.{name}"
    faults = [step for step in copy + cea if isinstance(step, Fault)]
    reads_faulted = any(set(step.data["failCommands"]) & {"find", "getMore", "aggregate"}
                        for step in faults)
    # The embedded verifier is on in every seed: a false mismatch would fail the seed. (Early
    # plans turned it off in some seeds; the draw stays so that each seed keeps the rest of its
    # plan. The verifier-off path has its own tests: tests/product, tests/process.)
    rng.random()
    if "verifier-claim" in AVOIDED and reads_faulted:
        start_body["verification"] = {"enabled": False}
    build = rng.choice([None, None, "afterDataCopy", "beforeDataCopy"])
    namespace_ddl = any(isinstance(step, Op) and step.kind in ("drop", "rename", "drop_database",
                                                               "drop_index")
                        for step in copy + cea)
    if namespace_ddl and "index-builds-stale-namespaces" in AVOIDED:
        build = "beforeDataCopy"  # no index builds beside change application
    if build is not None:
        start_body["buildIndexes"] = build
    if sharded_destination and not sharded_source:
        # From a sharded source, the destination's collections take the source's shard keys.
        start_body["sharding"] = choose_sharding(seed, setup, copy + cea, generator.filter)
    source_shard_keys = choose_source_sharding(seed, setup, copy + cea) \
        if sharded_source else {}
    if sharded_source:
        copy, cea = shard_during_timeline(seed, setup, copy, cea, source_shard_keys)
    return Plan(seed=seed, big=big, load_level=rng.choice([1, 2, 3, 4]), slow_side=slow_side,
                slow_ms=rng.choice([20, 50, 100]), setup=setup, copy=copy, cea=cea,
                commit_kills=commit_kills, start_body=start_body,
                pace_ms=rng.choice([0, 0, 5, 20, 60]), namespace_filter=generator.filter,
                destination_setup=destination_setup, conflict=conflict,
                hot_documents=choose_hot_documents(seed, copy + cea) if hot_documents else [],
                server_copies=server_copies, sharded_destination=sharded_destination,
                sharded_source=sharded_source, one_per_shard=one_per_shard,
                source_shard_keys=source_shard_keys)


def _shardable(setup: list[Op], steps: list[Step]) -> list[tuple[str, str]]:
    """The setup's collections MongoDB can shard whatever the plan does to them: not capped,
    clustered, time series or collated, and without a unique index (or one converted to
    unique), since a unique index must start with the shard key."""
    unique = {(op.db, op.coll) for op in all_ops([*setup, *steps])
              if (op.kind == "create_index" and op.args["spec"].get("unique")) or
              (op.kind == "coll_mod" and {"unique", "prepareUnique"} &
               set(op.args["command"].get("index") or {}))}
    unsupported = {"capped", "clusteredIndex", "timeseries", "collation", "viewOn"}
    return [(op.db, op.coll) for op in setup
            if op.kind == "create" and op.db and op.coll
            and not unsupported & set(op.args["options"]) and (op.db, op.coll) not in unique]


def _shardable_outside_transactions(setup: list[Op], steps: list[Step]) -> list[tuple[str, str]]:
    """:func:`_shardable` collections no transaction writes (it would span the shards, which
    the emulated router does not run)."""
    in_transactions = {(op.db, op.coll) for step in steps
                       if isinstance(step, Op) and step.kind == "transaction"
                       for op in step.args["ops"]}
    return [namespace for namespace in _shardable(setup, steps)
            if namespace not in in_transactions]


def choose_source_sharding(seed: int, setup: list[Op],
                           steps: list[Step]) -> dict[str, dict[str, Any]]:
    """The source collections to shard as the setup creates them (one to three), all on
    {_id: "hashed"}; from a random stream of their own."""
    rng = random.Random(seed * 1_000_003 + 43)
    candidates = _shardable_outside_transactions(setup, steps)
    chosen = rng.sample(candidates, min(len(candidates), rng.randint(1, 3)))
    return {f"{db}.{coll}": {"_id": "hashed"} for db, coll in chosen}


def shard_during_timeline(seed: int, setup: list[Op], copy: list[Step], cea: list[Step],
                          sharded: dict[str, dict[str, Any]]
                          ) -> tuple[list[Step], list[Step]]:
    """In three plans out of five, one more collection of the setup sharded on the source
    during the copy or change application (``shardCollection`` during a migration, with the
    balancers stopped, which mongosync supports); from a random stream of its own."""
    rng = random.Random(seed * 1_000_003 + 47)
    candidates = [(db, coll) for db, coll in _shardable_outside_transactions(setup, copy + cea)
                  if f"{db}.{coll}" not in sharded]
    if not candidates or rng.random() < 0.4:
        return copy, cea
    db, coll = rng.choice(candidates)
    op = Op("shard_collection", db, coll, {"key": {"_id": "hashed"}})
    timeline = copy if rng.random() < 0.5 else cea
    at = rng.randint(0, len(timeline))
    changed = [*timeline[:at], op, *timeline[at:]]
    return (changed, cea) if timeline is copy else (copy, changed)


def choose_sharding(seed: int, setup: list[Op], steps: list[Step],
                    namespace_filter: NsFilter | None) -> dict[str, Any]:
    """/start's ``sharding`` for a sharded destination: one or two collections of the setup
    (none, in one plan out of five), each with a key of :data:`SHARD_KEYS`; drawn from a
    random stream of their own.

    Left out: capped, clustered, time series and collated collections, which MongoDB does not
    shard this way, and collections a plan gives a unique index (or converts one to unique),
    since a destination refuses a unique index whose key does not start with the shard key:
    mongosync documents both as limits of ``shardingEntries``. And collections the plan renames
    into another database: MongoDB renames a sharded collection within its database only, and
    mongosync documents renames across databases into a sharded cluster as unsupported."""
    rng = random.Random(seed * 1_000_003 + 41)
    across = {(op.db, op.coll) for op in all_ops(steps)
              if op.kind == "rename" and op.args["to_db"] != op.db}
    candidates = [(db, coll) for db, coll in _shardable(setup, steps)
                  if (namespace_filter is None or namespace_filter.includes(db, coll))
                  and (db, coll) not in across]
    if not candidates or rng.random() < 0.2:
        # A replica set into a sharded cluster needs `sharding` (spec §3.3): none sharded.
        return {"shardingEntries": []}
    chosen = rng.sample(candidates, min(len(candidates), rng.randint(1, 2)))
    entries = [{"database": db, "collection": coll,
                "shardCollection": {"key": [{name: value} for name, value in
                                            rng.choice(SHARD_KEYS).items()]}}
               for db, coll in chosen]
    # Without createSupportingIndexes every key would need an index on the source already.
    return {"createSupportingIndexes": True, "shardingEntries": entries}


def choose_hot_documents(seed: int, steps: list[Step]) -> list[str]:
    """--hotDocIDs values naming up to three documents the timelines write by _id (in
    transactions too), one value per collection; drawn from a random stream of their own."""
    rng = random.Random(seed * 1_000_003 + 29)
    written: dict[tuple[str, str, str], Any] = {}
    for op in all_ops(steps):
        if op.db and op.coll and isinstance(op.args.get("filter"), dict) and \
                "_id" in op.args["filter"]:
            _id = op.args["filter"]["_id"]
            key = json_util.dumps(_id, json_options=json_util.CANONICAL_JSON_OPTIONS)
            written.setdefault((op.db, op.coll, key), _id)
    chosen = rng.sample(sorted(written), min(len(written), rng.randint(1, 3)))
    by_namespace: dict[tuple[str, str], list[str]] = {}
    for db, coll, key in chosen:
        by_namespace.setdefault((db, coll), []).append(key)
    return [f'{{"db": {json.dumps(db)}, "collection": {json.dumps(coll)}, "ids": ['
            + ", ".join(f'{{"_id": {key}}}' for key in keys) + "]}"
            for (db, coll), keys in sorted(by_namespace.items())]


def all_ops(steps: Iterable[Any]) -> list[Op]:
    """The operations of ``steps``, in order, each transaction followed by its own."""
    flat: list[Op] = []
    for step in steps:
        if isinstance(step, Op):
            flat.append(step)
            if step.kind == "transaction":
                flat.extend(all_ops(step.args["ops"]))
    return flat


def generator_collections(setup: list[Op]) -> list[tuple[str, str, None]]:
    """The collections the setup creates, in order."""
    return [(op.db, op.coll, None) for op in setup
            if op.kind == "create" and op.db and op.coll and "viewOn" not in op.args["options"]]


def choose_filter(rng: random.Random, databases: list[str]) -> NsFilter:
    """Some databases whole (one of them maybe without a collection or two), and maybe some
    listed collections of another one."""
    chosen = NsFilter()
    shuffled = list(databases)
    rng.shuffle(shuffled)
    whole = shuffled[:rng.randint(1, max(1, len(shuffled) - 1))]
    chosen.whole = set(whole)
    if rng.random() < 0.5:
        chosen.excluded[whole[0]] = {rng.choice(["c1", "c2", "small0"])}
    rest = shuffled[len(whole):]
    if rest and rng.random() < 0.7:
        chosen.listed[rest[0]] = set(rng.sample(["c0", "c1", "c2", "c3", "small0", "small1"],
                                                rng.randint(1, 3)))
    return chosen


def destination_data(rng: random.Random, chosen: NsFilter) -> list[Op]:
    """Collections the destination holds before the migration, outside the filter (spec §3.3:
    no namespace may conflict): a database of its own, and a collection in a database the
    filter names collections of (so a dropDatabase on the source must spare it)."""
    ops = [Op("create", "pre", "kept", {"options": {}}),
           Op("insert", "pre", "kept", {"documents": [{"_id": i, "v": value(rng, 2)}
                                                      for i in range(rng.randint(1, 30))]}),
           Op("create_index", "pre", "kept", {"spec": {"key": {"v": 1}, "name": "v_1"}})]
    for db in sorted(chosen.listed):
        ops += [Op("insert", db, "keep_dest", {"documents": [{"_id": 1, "kept": True}]})]
    return ops


def features(plan: Plan) -> set[str]:
    """What a plan exercises (to pick the test suite's seeds so that together they cover
    every class of operation, fault and interruption)."""
    found: set[str] = set()

    for phase, steps in (("copy", plan.copy), ("cea", plan.cea)):
        for step in steps:
            if isinstance(step, Kill):
                found.add(f"kill during {phase}")
            elif isinstance(step, Fault):
                found.add(f"fault on {step.cluster}")
                if step.data.get("closeConnection"):
                    found.add("fault: network error")
                if "writeConcernError" in step.data:
                    found.add("fault: write concern error")
            elif isinstance(step, Pause):
                found.add("pause" + (" and kill" if step.kill else ""))
            elif isinstance(step, Reset):
                found.add("reset" + (" interrupted" if step.interrupt_after is not None
                                     else ""))
        for op in all_ops(steps):
            found.add(f"{op.kind} during {phase}")
            if op.kind == "rename":
                found.add("rename dropTarget" if op.args["dropTarget"] else "rename")
                if op.args["to_db"] != op.db:
                    found.add("rename across databases")
            if op.kind == "transaction":
                found.add("transaction aborted" if op.args["abort"] else "transaction")
            if op.kind == "coll_mod":
                found.add("collMod " + ",".join(sorted(op.args["command"])))
    if plan.commit_kills:
        found.add("kill during commit")
    found.add(f"loadLevel {plan.load_level}")
    found.add(f"buildIndexes {plan.start_body.get('buildIndexes', 'default')}")
    if plan.namespace_filter is not None:
        found.add("namespace filter")
        if plan.namespace_filter.excluded:
            found.add("namespace filter with exclusions")
        if plan.namespace_filter.listed:
            found.add("namespace filter listing collections")
    if plan.destination_setup:
        found.add("preExistingDestinationData")
    found.add("verifier " + ("off" if plan.start_body.get("verification") else "on"))
    if plan.conflict:
        found.add("conflicting namespace refused at /start")
    if plan.sharded_source:
        found.add("sharded source")
    if plan.one_per_shard:
        found.add("one mongosync per source shard")
    if plan.sharded_destination:
        found.add("sharded destination")
        for entry in plan.start_body.get("sharding", {}).get("shardingEntries", []):
            found.add(f"shard key {entry['shardCollection']['key']}")
    return found
