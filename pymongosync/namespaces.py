"""Namespace filters (spec §13): which databases and collections a migration syncs, and what a
rename means when it crosses the boundary of the filter.

`NamespaceFilter` is built from already-validated `FilterRule`s, normally through
`StartRequest.namespace_filter`; the helpers below are shared with the request validation so that
the validator and the engine agree on names and regex semantics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RenameAction = Literal["apply", "drop-source", "create-target", "ignore", "fatal"]

# Spec §13.2/§13.3: system databases are never synced and cannot be named in a filter.
SYSTEM_DATABASES = frozenset({"admin", "config", "local"})

# Spec §14: mongosync's own metadata databases (1.20+ names and the legacy ones), and
# §7/§23 1.18: every `__mdb_internal*` database (Atlas internals) is ignored. Syncing any of
# them would copy one migration's state into another.
_RESERVED_DATABASE_NAMES = SYSTEM_DATABASES | {"mongosync_reserved_for_internal_use"}
# (`mongosync_internal_<name>` is only the beta --migrationName's metadata, an option
# pymongosync does not have: a database of that name is a user's, and is migrated.)
_RESERVED_DATABASE_PREFIXES = (
    "__mdb_internal",
    "mongosync_reserved_for_verification_",
)

# Spec §7/§21: `system.*` collections are not replicated. Views are synced as metadata through the
# view namespaces themselves, so `system.views` (which only stores those definitions) is excluded
# like every other system collection.
_SYSTEM_COLLECTION_PREFIX = "system."

# Spec §13.1: regex options are `$regex` flag letters, concatenated in any order. Python's `re`
# stands in for the server's PCRE; these four letters mean the same thing in both.
_REGEX_FLAGS: dict[str, re.RegexFlag] = {
    "i": re.IGNORECASE,
    "m": re.MULTILINE,
    "s": re.DOTALL,
    "x": re.VERBOSE,
}

# Characters MongoDB forbids in database names on every platform.
_INVALID_DATABASE_CHARACTERS = frozenset('/\\. "$\x00')
_MAX_DATABASE_NAME_LENGTH = 63


def is_reserved_database(db: str) -> bool:
    """True for databases no migration ever copies: system and mongosync/Atlas-internal ones."""
    return db in _RESERVED_DATABASE_NAMES or db.startswith(_RESERVED_DATABASE_PREFIXES)


def is_system_collection(coll: str) -> bool:
    """True for `system.*` collections, which are never copied (views travel as metadata)."""
    return coll.startswith(_SYSTEM_COLLECTION_PREFIX)


def is_always_excluded(db: str, coll: str) -> bool:
    """True when no filter can include the namespace."""
    return is_reserved_database(db) or is_system_collection(coll)


def database_name_problem(name: str) -> str | None:
    """Why `name` cannot be a user database named in a filter, or None when it can."""
    if not name:
        return "must not be empty"
    bad = sorted(_INVALID_DATABASE_CHARACTERS.intersection(name))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"{name!r} is not a valid database name: it contains {shown}"
    if len(name) > _MAX_DATABASE_NAME_LENGTH:
        return f"{name!r} is not a valid database name: it is longer than 63 characters"
    if name in SYSTEM_DATABASES:
        return f"{name!r} is a system database; it is never synced and cannot be named, remove it"
    if is_reserved_database(name):
        return (
            f"{name!r} is a reserved internal database; it is never synced and cannot be named, "
            "remove it"
        )
    return None


def collection_name_problem(name: str) -> str | None:
    """Why `name` cannot be a user collection named in a filter, or None when it can."""
    if not name:
        return "must not be empty"
    if "$" in name or "\x00" in name:
        return f"{name!r} is not a valid collection name: it contains '$' or a NUL character"
    if is_system_collection(name):
        return (
            f"{name!r} is a system collection; system collections are never synced and cannot be "
            "named, remove it"
        )
    return None


def regex_flags(options: str) -> int:
    """The `re` flags for a `$regex`-style option string; ValueError names any unknown letter."""
    flags = 0
    for letter in options:
        if letter not in _REGEX_FLAGS:
            raise ValueError(
                f"unsupported regex option {letter!r} in {options!r}; "
                "use only the letters i, m, s and x"
            )
        flags |= _REGEX_FLAGS[letter]
    return flags


def compile_regex(pattern: str, options: str = "") -> re.Pattern[str]:
    """Compile a filter regex; ValueError explains a bad option or a pattern that won't compile."""
    flags = regex_flags(options)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc


@dataclass(frozen=True)
class FilterRule:
    """One validated filter document (spec §13.1): a database (name or regex) plus, optionally,
    the collections of it that the rule is about (names and/or a regex; a name matching either
    matches the rule). Without collections the rule covers the whole database."""

    database: str | None = None
    database_regex: re.Pattern[str] | None = None
    collections: frozenset[str] | None = None
    collections_regex: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        # The request validator guarantees this; a rule without a database would match nothing
        # (or, if we guessed, everything), so a programming error must not pass silently.
        if (self.database is None) == (self.database_regex is None):
            raise ValueError("a FilterRule needs exactly one of database and database_regex")

    @property
    def names_collections(self) -> bool:
        """True when the rule selects particular collections rather than the whole database."""
        return self.collections is not None or self.collections_regex is not None

    def matches_database(self, db: str) -> bool:
        if self.database is not None:
            return db == self.database
        assert self.database_regex is not None
        # `$regex` semantics (spec §13.1): a match anywhere in the name, not a full match.
        return self.database_regex.search(db) is not None

    def matches(self, db: str, coll: str) -> bool:
        if not self.matches_database(db):
            return False
        if not self.names_collections:
            return True
        if self.collections is not None and coll in self.collections:
            return True
        return (
            self.collections_regex is not None and self.collections_regex.search(coll) is not None
        )


class NamespaceFilter:
    """The include/exclude filter of a migration (spec §13.2).

    No include rules means everything is included; exclude rules then remove what they match.
    Reserved databases and `system.*` collections are excluded whatever the rules say.
    """

    def __init__(
        self, include: Sequence[FilterRule] = (), exclude: Sequence[FilterRule] = ()
    ) -> None:
        self._include = tuple(include)
        self._exclude = tuple(exclude)

    def includes(self, db: str, coll: str) -> bool:
        """Whether the namespace is synced: include, then remove the exclusions (spec §13.2)."""
        if is_always_excluded(db, coll):
            return False
        if self._include and not any(rule.matches(db, coll) for rule in self._include):
            return False
        return not any(rule.matches(db, coll) for rule in self._exclude)

    def includes_database(self, db: str) -> bool:
        """Whether some collection of `db` could be synced (now or once created)."""
        if is_reserved_database(db):
            return False
        if self._include and not any(rule.matches_database(db) for rule in self._include):
            return False
        return not any(
            rule.matches_database(db) and not rule.names_collections for rule in self._exclude
        )

    def whole_database_included(self, db: str) -> bool:
        """Whether every user collection of `db`, including ones created later, is synced.

        This is the "fully included" database of spec §13.3 (new collections, `$out`/`mapReduce`):
        selected without naming collections, and not touched by any exclude rule.
        """
        return self._selected_as_database(db) and not any(
            rule.matches_database(db) for rule in self._exclude
        )

    def rename_action(self, from_db: str, from_coll: str, to_db: str, to_coll: str) -> RenameAction:
        """What a source rename means for the destination (spec §13.3 "Renames").

        - "ignore": neither name is synced; nothing happens on the destination.
        - "apply": rename the destination collection the same way.
        - "drop-source": the collection leaves the synced set; drop its destination copy, as for a
          source drop (spec §13.3: a listed collection may be dropped).
        - "create-target": the collection enters the synced set; copy it under its new name.
        - "fatal": the filter cannot follow the rename; the sync must stop (spec §13.3).

        "The whole database is included" is read as: the database is selected by an include rule
        without collections (or there are no include rules). Exclude rules are accounted for by
        checking each side's own inclusion: they only remove the names they match.
        """
        source_in = self.includes(from_db, from_coll)
        target_in = self.includes(to_db, to_coll)
        if not source_in and not target_in:
            return "ignore"
        if not target_in:
            # §13.3: "Renaming a listed collection to an unlisted name is an error that stops the
            # sync." A collection synced only because it is listed by name (or collectionsRegex)
            # would silently vanish from the user's explicit selection, so that is fatal. One
            # synced because its whole database is selected simply leaves the filter, like a drop.
            return "drop-source" if self._selected_as_database(from_db) else "fatal"
        if source_in and from_db == to_db:
            # §13.3, within a database: allowed if the whole database is included or both names
            # are listed. Both names being included means one of those holds.
            return "apply"
        # The target name is synced but its collection is new to it: either it arrives from
        # another database (§13.3: across databases only if the whole target database is
        # included), or from an excluded name of the same database, where only a whole-database
        # selection lets a new name be picked up (§13.3 "New collections"; `$out` renames a
        # temporary collection onto its target and likewise needs the whole database).
        if not self._selected_as_database(to_db):
            return "fatal"
        return "apply" if source_in else "create-target"

    def _selected_as_database(self, db: str) -> bool:
        """Whether the include side selects `db` as a whole (exclude rules not considered)."""
        if is_reserved_database(db):
            return False
        if not self._include:
            return True
        return any(
            rule.matches_database(db) and not rule.names_collections for rule in self._include
        )
