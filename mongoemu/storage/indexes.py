"""Index definitions and the key extraction that unique indexes enforce."""

from __future__ import annotations

from typing import Any, Iterable

from mongoemu.bsonvalues import MISSING, sort_key
from mongoemu.errors import CommandError

ID_INDEX_NAME = "_id_"

# Options that make two specs with the same key pattern different indexes.
_IDENTITY_OPTIONS = ("unique", "sparse", "partialFilterExpression", "collation", "expireAfterSeconds",
                     "hidden", "weights", "default_language", "language_override",
                     "wildcardProjection", "2dsphereIndexVersion", "bits", "min", "max",
                     "prepareUnique")


def id_index_spec() -> dict[str, Any]:
    return {"v": 2, "key": {"_id": 1}, "name": ID_INDEX_NAME}


def default_index_name(key: dict[str, Any]) -> str:
    return "_".join(f"{field}_{direction}" for field, direction in key.items())


def validate_index_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise CommandError(14, "Each index specification must be an object")
    key = spec.get("key")
    if not isinstance(key, dict) or not key:
        raise CommandError(67 if key == {} else 9,
                           "The 'key' field of an index specification must be a non-empty object")
    for field, direction in key.items():
        if not field:
            raise CommandError(67, "Index keys cannot be an empty field")
        if isinstance(direction, bool) or not (
            isinstance(direction, (int, float)) and direction != 0
            or direction in ("2dsphere", "2d", "text", "hashed", "geoHaystack")
        ):
            raise CommandError(67, f"Values in the index key pattern can't be 0 or a bad value: "
                                   f"{field}: {direction!r}")
    name = spec.get("name")
    if name is None:
        raise CommandError(9, "The 'name' field is a required property of an index specification")
    if not isinstance(name, str) or not name:
        raise CommandError(67, "The index name must be a non-empty string")
    if "expireAfterSeconds" in spec:
        ttl = spec["expireAfterSeconds"]
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
            raise CommandError(67, "TTL index 'expireAfterSeconds' option must be numeric and >= 0")
    normalized: dict[str, Any] = {"v": int(spec.get("v", 2)), "key": key, "name": name}
    for option, value in spec.items():
        if option in ("v", "key", "name", "ns", "background"):
            continue
        if option == "hidden" and value is False:
            continue
        if option == "unique" and value is False:
            continue
        normalized[option] = value
    return normalized


def same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(option) == b.get(option) for option in _IDENTITY_OPTIONS)


def _path_values(document: Any, parts: list[str]) -> list[Any]:
    """Every value a dotted path reaches, expanding arrays (multikey semantics)."""
    if not parts:
        return [document]
    if isinstance(document, dict):
        child = document.get(parts[0], MISSING)
        if child is MISSING:
            return [MISSING]
        return _path_values(child, parts[1:])
    if isinstance(document, list):
        if parts[0].isdigit() and int(parts[0]) < len(document):
            return _path_values(document[int(parts[0])], parts[1:])
        values: list[Any] = []
        for element in document:
            values.extend(_path_values(element, parts) if isinstance(element, (dict, list))
                          else [MISSING])
        return values or [MISSING]
    return [MISSING]


def index_keys(document: dict[str, Any], key_pattern: dict[str, Any],
               collation_key: Any = None) -> list[tuple]:
    """The keys one document contributes to an index (several when a field is an array)."""
    per_field: list[list[Any]] = []
    for field in key_pattern:
        values = _path_values(document, field.split("."))
        expanded: list[Any] = []
        for value in values:
            if isinstance(value, list):
                expanded.extend(value if value else [MISSING])
            else:
                expanded.append(value)
        per_field.append(expanded)
    keys: list[tuple] = [()]
    for values in per_field:
        keys = [prefix + (_key_of(value, collation_key),) for prefix in keys for value in values]
    return list(dict.fromkeys(keys))


def _key_of(value: Any, collation_key: Any) -> tuple:
    if value is MISSING:
        value = None
    if collation_key is not None and isinstance(value, str):
        return (3, collation_key(value))
    return sort_key(value)


def all_missing(document: dict[str, Any], key_pattern: dict[str, Any]) -> bool:
    return all(all(v is MISSING for v in _path_values(document, f.split(".")))
               for f in key_pattern)


def describe_key(key_pattern: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """keyValue of a duplicate-key error: the offending document's values per key field."""
    result: dict[str, Any] = {}
    for field in key_pattern:
        values = _path_values(document, field.split("."))
        value = values[0] if values else MISSING
        result[field] = None if value is MISSING else value
    return result


def iter_unique(specs: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    return (s for s in specs if s.get("unique") and s["name"] != ID_INDEX_NAME)
