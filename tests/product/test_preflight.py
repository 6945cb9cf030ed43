"""The parts of pre-flight that need no cluster: the BSON field-name walk over every BSON type,
and privilege matching with MongoDB's resource rules (no emulator involved)."""

from __future__ import annotations

import datetime
import re

import bson
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex
from bson.timestamp import Timestamp

from pymongosync.preflight import (
    ANY_COLLECTION,
    CLUSTER,
    SOURCE_PRIVILEGES,
    field_name_problem,
    missing_privileges,
)

EVERY_TYPE = {
    "_id": ObjectId(), "double": 1.5, "string": "héllo", "document": {"a": {"b": [1, {"c": 2}]}},
    "array": [1, "two", [3], {"four": 4}], "binary": Binary(b"\x00\x01", 4), "bool": True,
    "date": datetime.datetime(2024, 1, 1), "null": None, "regex": Regex("^a.*", "i"),
    "pyregex": re.compile("b+"), "code": Code("function() {}"),
    "codeWithScope": Code("function() { return x; }", {"x": 1}), "int32": 7, "int64": Int64(8),
    "timestamp": Timestamp(5, 6), "decimal": Decimal128("1.25"), "min": MinKey(), "max": MaxKey(),
    "dbref": DBRef("c", 1),
}


def _element(type_byte: int, name: str, value: bytes) -> bytes:
    return bytes([type_byte]) + name.encode() + b"\x00" + value


def _document(*elements: bytes) -> bytes:
    body = b"".join(elements) + b"\x00"
    return (len(body) + 4).to_bytes(4, "little") + body


def test_every_bson_type_is_walked_without_a_finding() -> None:
    assert field_name_problem(bson.encode(EVERY_TYPE)) is None
    # Deprecated types too: undefined (0x06), DBPointer (0x0C) and symbol (0x0E).
    old = _document(_element(0x06, "undefined", b""),
                    _element(0x0C, "pointer", (2).to_bytes(4, "little") + b"c\x00" + b"\x01" * 12),
                    _element(0x0E, "symbol", (2).to_bytes(4, "little") + b"s\x00"),
                    _element(0x10, "after", (1).to_bytes(4, "little")))
    assert field_name_problem(old) is None


def test_dollar_prefixed_names_are_found_at_any_depth() -> None:
    assert field_name_problem(bson.encode({"$top": 1})) == "$-prefixed field $top"
    nested = {**EVERY_TYPE, "array": [{"ok": 1}, {"deep": {"$inc": 2}}]}
    assert field_name_problem(bson.encode(nested)) == "$-prefixed field array.1.deep.$inc"


def test_duplicate_names_are_found_but_array_indexes_are_not_names() -> None:
    one = (1).to_bytes(4, "little")
    duplicated = _document(_element(0x10, "a", one), _element(0x03, "b", _document(
        _element(0x10, "x", one), _element(0x10, "x", one))))
    assert field_name_problem(duplicated) == "duplicate field b.x"
    assert field_name_problem(bson.encode({"a": [1, 1, 1]})) is None


def test_privileges_follow_mongodbs_resource_rules() -> None:
    any_read = {"resource": ANY_COLLECTION, "actions": ["find", "listCollections"]}
    # The any-database resource does not reach 'local' or 'config', nor system collections.
    missing = dict((str(resource), actions) for resource, actions in missing_privileges(
        [any_read], [({"db": "local", "collection": "oplog.rs"}, frozenset({"find"})),
                     ({"db": "app", "collection": "users"}, frozenset({"find"})),
                     ({"db": "app", "collection": "system.js"}, frozenset({"find"}))]))
    assert set(missing) == {str({"db": "local", "collection": "oplog.rs"}),
                            str({"db": "app", "collection": "system.js"})}
    # A database resource, a collection-name resource and anyResource each reach what they
    # name; the cluster resource only the cluster.
    held = [{"resource": {"db": "local", "collection": ""}, "actions": ["find"]},
            {"resource": {"db": "", "collection": "system.js"}, "actions": ["find"]},
            {"resource": CLUSTER, "actions": ["serverStatus"]}]
    assert missing_privileges(held, [({"db": "local", "collection": "oplog.rs"},
                                      frozenset({"find"})),
                                     ({"db": "app", "collection": "system.js"},
                                      frozenset({"find"})),
                                     (CLUSTER, frozenset({"serverStatus"}))]) == []
    assert missing_privileges([{"resource": {"anyResource": True}, "actions": ["find"]}],
                              [(ANY_COLLECTION, frozenset({"find"}))]) == []
    lacking = missing_privileges(held, SOURCE_PRIVILEGES)
    assert (CLUSTER, ["appendOplogNote", "getDefaultRWConcern", "getShardMap", "hostInfo",
                      "listDatabases", "listShards", "replSetGetConfig",
                      "replSetGetStatus"]) in lacking
