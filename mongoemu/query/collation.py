"""Collations: locale-aware string comparison, approximated without ICU.

The emulator has no ICU, so collation keys model the *levels* of the Unicode Collation Algorithm
that applications rely on — case-insensitive (strength 2), accent- and case-insensitive
(strength 1), ``caseLevel``, ``caseFirst``, ``numericOrdering``, ``alternate: "shifted"``,
``backwards`` — on top of Unicode normalization. Locale tailorings (Swedish "ä" after "z",
Spanish "ñ", ...) are not reproduced: every locale sorts like the root locale.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from bson.dbref import DBRef

from mongoemu.bsonvalues import (
    RANK_ARRAY,
    RANK_OBJECT,
    RANK_STRING,
    is_number,
    numeric_value,
    sort_key,
    type_name,
    type_rank,
)
from mongoemu.errors import CommandError

# The ICU version MongoDB 4.x–8.x reports in collation documents.
ICU_VERSION = "57.1"

_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z0-9]{2,8})*"
                        r"(?:@[A-Za-z]+=[A-Za-z0-9-]+(?:;[A-Za-z]+=[A-Za-z0-9-]+)*)?$")

_BOOL_FIELDS = ("caseLevel", "numericOrdering", "normalization", "backwards")
_ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "caseFirst": ("upper", "lower", "off"),
    "alternate": ("non-ignorable", "shifted"),
    "maxVariable": ("punct", "space"),
}
_ENUM_MESSAGES: dict[str, str] = {
    "caseFirst": "Field 'caseFirst' must be 'upper', 'lower', or 'off'. Got: {}",
    "alternate": "Field 'alternate' must be 'non-ignorable' or 'shifted'. Got: {}",
    "maxVariable": "Field 'maxVariable' must be 'punct' or 'space'. Got: {}",
}
_KNOWN_FIELDS = frozenset(("locale", "strength", "version", *_BOOL_FIELDS, *_ENUM_FIELDS))


@dataclass(frozen=True)
class Collation:
    """A parsed collation; equal settings compare (and hash) equal, as index matching needs."""

    locale: str
    strength: int = 3
    case_level: bool = False
    case_first: str = "off"
    numeric_ordering: bool = False
    alternate: str = "non-ignorable"
    max_variable: str = "punct"
    normalization: bool = False
    backwards: bool = False

    def __post_init__(self) -> None:
        # A per-instance memo: the same strings are keyed again for every document compared.
        object.__setattr__(self, "_key", lru_cache(maxsize=65536)(partial(_compute_key, self)))

    @property
    def simple(self) -> bool:
        """``locale: "simple"`` is binary comparison, i.e. no collation at all."""
        return self.locale == "simple"

    @classmethod
    def from_document(cls, spec: Any) -> "Collation":
        """Validate a ``collation`` option the way the server does (same codes and messages)."""
        if not isinstance(spec, dict):
            raise CommandError(
                14, f"BSON field 'collation' is the wrong type '{type_name(spec)}', expected type 'object'"
            )
        for name in spec:
            if name not in _KNOWN_FIELDS:
                raise CommandError(40415, f"BSON field 'collation.{name}' is an unknown field.")
        if "locale" not in spec:
            raise CommandError(40414, "BSON field 'collation.locale' is missing but a required field")
        locale = spec["locale"]
        if not isinstance(locale, str):
            raise CommandError(
                14, f"BSON field 'collation.locale' is the wrong type '{type_name(locale)}', expected type 'string'"
            )
        if locale == "simple":
            return cls(locale="simple")
        if not _LOCALE_RE.match(locale):
            raise CommandError(2, f"Field 'locale' is invalid in: {_render(spec)}")
        options: dict[str, Any] = {"locale": locale}
        if "strength" in spec:
            strength = spec["strength"]
            if not is_number(strength):
                raise CommandError(
                    14,
                    f"BSON field 'collation.strength' is the wrong type '{type_name(strength)}', "
                    "expected types '[long, int, decimal, double]'",
                )
            numeric = numeric_value(strength)
            if numeric not in (1, 2, 3, 4, 5):
                raise CommandError(2, f"Field 'strength' must be an integer 1 through 5. Got: {strength}")
            options["strength"] = int(numeric)
        for name in _BOOL_FIELDS:
            if name in spec:
                if not isinstance(spec[name], bool):
                    raise CommandError(
                        14,
                        f"BSON field 'collation.{name}' is the wrong type '{type_name(spec[name])}', "
                        "expected type 'bool'",
                    )
                options[_snake(name)] = spec[name]
        for name, allowed in _ENUM_FIELDS.items():
            if name in spec:
                value = spec[name]
                if not isinstance(value, str):
                    raise CommandError(
                        14,
                        f"BSON field 'collation.{name}' is the wrong type '{type_name(value)}', "
                        "expected type 'string'",
                    )
                if value not in allowed:
                    raise CommandError(2, _ENUM_MESSAGES[name].format(value))
                options[_snake(name)] = value
        if "version" in spec and not isinstance(spec["version"], str):
            raise CommandError(
                14,
                f"BSON field 'collation.version' is the wrong type '{type_name(spec['version'])}', "
                "expected type 'string'",
            )
        return cls(**options)

    def to_document(self) -> dict[str, Any]:
        """The fully-defaulted form servers echo in listIndexes/listCollections/explain."""
        if self.simple:
            return {"locale": "simple"}
        return {
            "locale": self.locale,
            "caseLevel": self.case_level,
            "caseFirst": self.case_first,
            "strength": self.strength,
            "numericOrdering": self.numeric_ordering,
            "alternate": self.alternate,
            "maxVariable": self.max_variable,
            "normalization": self.normalization,
            "backwards": self.backwards,
            "version": ICU_VERSION,
        }

    def collation_key(self, text: str) -> Any:
        """A value whose ordering and equality are this collation's ordering and equality."""
        if self.simple:
            return text
        return self._key(text)  # type: ignore[attr-defined]


def parse_collation(spec: Any) -> Collation | None:
    """Parse an optional ``collation`` option; ``None`` stands for binary comparison.

    Callers branch on ``None`` for their fast paths, so the simple locale maps to ``None`` too.
    """
    if spec is None:
        return None
    collation = Collation.from_document(spec)
    return None if collation.simple else collation


def effective(collation: Collation | None) -> Collation | None:
    """Collapse the simple collation to ``None`` so callers test a single condition."""
    if collation is None or collation.simple:
        return None
    return collation


def sort_key_collated(value: Any, collation: Collation | None) -> Any:
    """:func:`bsonvalues.sort_key` with every string (also inside documents/arrays) collated.

    Field names stay binary-compared, as in the server, so only values are collated.
    """
    if collation is None or collation.simple:
        return sort_key(value)
    return _collated(value, collation)


def _collated(value: Any, collation: Collation) -> Any:
    rank = type_rank(value)
    if rank == RANK_STRING:
        return (RANK_STRING, collation.collation_key(value))
    if rank == RANK_OBJECT:
        if isinstance(value, DBRef):
            value = value.as_doc()
        return (
            RANK_OBJECT,
            tuple((type_rank(v), k, _collated(v, collation)) for k, v in value.items()),
        )
    if rank == RANK_ARRAY:
        return (RANK_ARRAY, tuple(_collated(v, collation) for v in value))
    return sort_key(value)


def _compute_key(collation: Collation, text: str) -> tuple:
    decomposed = unicodedata.normalize("NFD", text)
    if collation.alternate == "shifted":
        # Shifted variable characters are ignored on levels 1-3 and only break ties at level 4.
        space_only = collation.max_variable == "space"
        significant = "".join(c for c in decomposed if not _is_variable(c, space_only))
    else:
        significant = decomposed
    folded = unicodedata.normalize("NFD", significant.casefold())
    base = "".join(c for c in folded if not unicodedata.combining(c))
    levels: list[Any] = [_numeric_runs(base) if collation.numeric_ordering else base]
    if collation.strength >= 2:
        accents = folded[::-1] if collation.backwards else folded
        levels.append(accents)
    if collation.strength >= 3 or collation.case_level:
        # Lowercase first unless caseFirst is "upper" (ICU's default for "off" is lower first).
        upper_first = collation.case_first == "upper"
        levels.append(
            tuple(c.isupper() != upper_first for c in significant if not unicodedata.combining(c))
        )
    if collation.strength >= 4 and collation.alternate == "shifted":
        levels.append(decomposed)
    if collation.strength == 5:
        levels.append(text)
    return tuple(levels)


def _numeric_runs(text: str) -> tuple:
    """Per-character weights where each digit run is one entry weighted by its numeric value.

    A digit run keeps the weight of ``"0"`` so that it still sorts between punctuation and letters,
    then compares by value, which is what ``numericOrdering`` promises ("10" after "9").
    """
    out: list[tuple] = []
    i, n = 0, len(text)
    zero = ord("0")
    while i < n:
        c = text[i]
        if c.isdecimal():
            j = i + 1
            while j < n and text[j].isdecimal():
                j += 1
            out.append((zero, int(text[i:j])))
            i = j
        else:
            out.append((ord(c),))
            i += 1
    return tuple(out)


def _is_variable(c: str, space_only: bool) -> bool:
    category = unicodedata.category(c)
    if category[0] == "Z" or c in "\t\n\r\x0b\x0c":
        return True
    return not space_only and category[0] == "P"


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


def _render(spec: dict[str, Any]) -> str:
    parts = ", ".join(f'{k}: "{v}"' if isinstance(v, str) else f"{k}: {v}" for k, v in spec.items())
    return "{ " + parts + " }"
