"""Choosing and streaming the documents a query touches.

Equality and range predicates on ``_id`` use the ordered ``_id`` index; everything else scans.
Documents stay raw BSON until a filter, sort or projection needs them decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from mongoemu.bsonvalues import decode, sort_key
from mongoemu.errors import CommandError
from mongoemu.storage.collection import Collection


@dataclass
class Match:
    key: tuple
    raw: bytes
    document: dict[str, Any] | None = None  # decoded lazily
    position: int | None = None  # first array index a positional operator refers to

    def decoded(self) -> dict[str, Any]:
        if self.document is None:
            self.document = decode(self.raw)
        return self.document


def _id_bounds(filter_doc: dict[str, Any], collation: Any
               ) -> tuple[Any, Any, tuple[bool, bool]] | None:
    from mongoemu.query.matcher import id_range, is_simple_id_equality
    is_equality, value = is_simple_id_equality(filter_doc, collation)
    if is_equality and not isinstance(value, (dict, list)) and not hasattr(value, "pattern"):
        key = sort_key(value)
        return key, key, (True, True)
    bounds = id_range(filter_doc, collation)
    if bounds is None:
        return None
    lower, lower_inclusive, upper, upper_inclusive = bounds
    return sort_key(lower), sort_key(upper), (lower_inclusive, upper_inclusive)


class _NoBound:
    """No ``min``/``max`` given (``None`` cannot say it: ``{_id: null}`` is a real bound)."""


NO_BOUND: Any = _NoBound()


def scan(collection: Collection, filter_doc: dict[str, Any] | None, *,
         collation: dict[str, Any] | None = None, variables: dict[str, Any] | None = None,
         reverse: bool = False, natural: bool = False, want_position: bool = False,
         id_min: Any = NO_BOUND, id_max: Any = NO_BOUND) -> Iterator[Match]:
    """Matching documents in ``_id`` order (or natural order for capped collections)."""
    matcher = None
    lower = upper = None
    inclusive = (True, True)
    if filter_doc:
        from mongoemu.query.collation import Collation
        from mongoemu.query.matcher import Matcher, is_simple_id_equality
        collator = Collation.from_document(collation) if collation else None
        if not natural and not collection.is_timeseries and id_min is NO_BOUND and \
                id_max is NO_BOUND:
            is_equality, value = is_simple_id_equality(filter_doc, collator)
            if is_equality and not isinstance(value, (dict, list)) and not hasattr(value,
                                                                                   "pattern"):
                # {_id: v}: one index lookup answers it; no need to run the matcher.
                key = sort_key(value)
                raw = collection.get_raw(key)
                if raw is not None:
                    yield Match(key, raw)
                return
        matcher = Matcher(filter_doc, collator, variables)
        bounds = None if natural or collection.is_timeseries else _id_bounds(filter_doc, collator)
        if bounds is not None:
            lower, upper, inclusive = bounds
            if lower > upper or (lower == upper and inclusive != (True, True)):
                return
    if id_min is not NO_BOUND:
        lower, inclusive = sort_key(id_min), (True, inclusive[1])
    if id_max is not NO_BOUND:
        upper, inclusive = sort_key(id_max), (inclusive[0], False)
    for key, raw in collection.scan(lower, upper, inclusive, reverse=reverse, natural=natural):
        if matcher is None:
            yield Match(key, raw)
            continue
        document = decode(raw)
        if want_position:
            matched, position = matcher.matches_with_position(document)
            if matched:
                yield Match(key, raw, document, position)
        elif matcher.matches(document):
            yield Match(key, raw, document)


def hint_index(collection: Collection, hint: Any) -> dict[str, Any] | None:
    """Validate a hint the way the server does (unknown index → BadValue)."""
    if hint is None or hint == {} or hint == "":
        return None
    if isinstance(hint, dict) and "$natural" in hint:
        return {"$natural": hint["$natural"]}
    spec = collection.find_index(hint)
    if spec is None:
        raise unknown_hint()
    return spec


def unknown_hint() -> CommandError:
    return CommandError(2, "error processing query: planner returned error :: caused by :: "
                           "hint provided does not correspond to an existing index")
