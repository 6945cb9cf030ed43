"""The `POST /api/v1/start` body (spec §3.3): strict parsing, the documented cross-field rules,
the settings the engine derives from it, cluster-dependent checks, and persistence.

Everything goes through `StartRequest.from_document`, which raises `InvalidStartRequest` naming
the offending field and what to do. The models are strict on purpose: `/start` is the one place
where a typo (`"buildindexes"`, `"true"`) would otherwise silently change a long migration.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from pymongosync.errors import InvalidStartRequest
from pymongosync.namespaces import (
    FilterRule,
    NamespaceFilter,
    collection_name_problem,
    compile_regex,
    database_name_problem,
    regex_flags,
)

ClusterName = Literal["cluster0", "cluster1"]
BuildIndexes = Literal[
    "afterDataCopy", "beforeDataCopy", "excludeHashed", "excludeHashedAfterCopy", "never"
]
WriteBlockingMode = Literal["sourceAndDestination", "destinationOnly", "none"]

# Spec §20.1 (1.19+ matrix), major releases only. Pre-6.0 (5.0) sources are out of scope for
# pymongosync: they allow no DDL and need a different change-stream path.
_SOURCE_VERSIONS = ((6, 0), (7, 0), (8, 0))
# mongosync 1.19 dropped 6.0 destinations; this tool keeps supporting them (6.0 has every
# server feature the migration relies on: setUserWriteBlockMode, prepareUnique, expanded events).
_DESTINATION_VERSIONS = ((6, 0), (7, 0), (8, 0))

_ERROR_TYPE = "invalid_start_request"

# Hints for required fields whose absence users actually hit (spec §3.3, §23 1.5).
_MISSING_HINTS = {
    "source": 'set it to "cluster0" or "cluster1"',
    "destination": 'set it to "cluster0" or "cluster1", whichever is not the source',
    "sharding.shardingEntries": (
        'add "shardingEntries": [] to shard nothing, or list the collections to shard'
    ),
}


def _fail(message: str, *path: str | int) -> NoReturn:
    """Report a rule violation from inside a model; `path` is relative to the model's location."""
    raise PydanticCustomError(_ERROR_TYPE, "{message}", {"message": message, "path": list(path)})


def _check_collection_list(collections: list[str], whole_database_effect: str) -> None:
    """A non-empty list of valid, distinct collection names (filters and copyInNaturalOrder)."""
    if not collections:
        _fail(f"must not be empty; leave it out to {whole_database_effect}", "collections")
    seen: set[str] = set()
    for index, name in enumerate(collections):
        problem = collection_name_problem(name)
        if problem:
            _fail(problem, "collections", index)
        if name in seen:
            _fail(f"{name!r} is listed twice; list each collection once", "collections", index)
        seen.add(name)


def _format_path(parts: tuple[str | int, ...] | list[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """Turn one pydantic error into (field path, message that says what to do)."""
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == _ERROR_TYPE:
        return _format_path(loc + tuple(ctx["path"])), ctx["message"]
    field = _format_path(loc) or "body"
    given = _show(error.get("input"))
    if kind == "missing":
        hint = _MISSING_HINTS.get(_format_path(tuple(p for p in loc if not isinstance(p, int))))
        return field, "is required" + (f"; {hint}" if hint else "")
    if kind == "extra_forbidden":
        return field, "is not a recognised parameter here (names are case-sensitive); remove it"
    if kind == "literal_error":
        # pydantic quotes the choices Python-style; JSON users expect double quotes.
        expected = str(ctx["expected"]).replace("'", '"')
        return field, f"must be one of {expected}, got {given}"
    if kind == "bool_type":
        return field, f"must be a boolean (true or false), got {given}"
    if kind == "string_type":
        return field, f"must be a string, got {given}"
    if kind == "list_type":
        return field, f"must be an array, got {given}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return field, f"must be a document (JSON object), got {given}"
    return field, error["msg"]


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class _Document(BaseModel):
    """Strict JSON document: no unknown keys, no type coercion, immutable.

    Field names are the wire names themselves (camelCase), so the spec, the stored metadata and
    the code all use one name per setting and no alias mapping can drift.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class RegexSpec(_Document):
    """`{pattern, options}` as in `databaseRegex`/`collectionsRegex` (spec §13.1)."""

    pattern: str
    options: str = ""

    @model_validator(mode="after")
    def _compiles(self) -> RegexSpec:
        try:
            regex_flags(self.options)
        except ValueError as exc:
            _fail(str(exc), "options")
        if not self.pattern:
            _fail("must not be empty; to match every name, leave the regex out", "pattern")
        try:
            compile_regex(self.pattern, self.options)
        except ValueError as exc:
            _fail(f"{exc}; fix the pattern", "pattern")
        return self


class NamespaceFilterEntry(_Document):
    """One `includeNamespaces`/`excludeNamespaces` document (spec §13.1)."""

    database: str | None = None
    databaseRegex: RegexSpec | None = None
    collections: list[str] | None = None
    collectionsRegex: RegexSpec | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> NamespaceFilterEntry:
        if self.database is None and self.databaseRegex is None:
            _fail('needs "database" or "databaseRegex"', "database")
        if self.database is not None and self.databaseRegex is not None:
            _fail('give either "database" or "databaseRegex", not both', "databaseRegex")
        if self.database is not None:
            problem = database_name_problem(self.database)
            if problem:
                _fail(problem, "database")
        if self.collections is not None:
            _check_collection_list(self.collections, "select the whole database")
        return self

    @property
    def database_key(self) -> tuple[str, ...]:
        """What identifies the database side of the entry, for duplicate detection."""
        if self.database is not None:
            return ("name", self.database)
        assert self.databaseRegex is not None
        return ("regex", self.databaseRegex.pattern, self.databaseRegex.options)

    def to_rule(self) -> FilterRule:
        return FilterRule(
            database=self.database,
            database_regex=(
                compile_regex(self.databaseRegex.pattern, self.databaseRegex.options)
                if self.databaseRegex is not None
                else None
            ),
            collections=frozenset(self.collections) if self.collections is not None else None,
            collections_regex=(
                compile_regex(self.collectionsRegex.pattern, self.collectionsRegex.options)
                if self.collectionsRegex is not None
                else None
            ),
        )


class ShardCollection(_Document):
    """`shardCollection: {key: [{field: 1 | "hashed"}, ...]}` (spec §3.3 `sharding`)."""

    key: list[dict[str, Any]]

    @field_validator("key")
    @classmethod
    def _valid_shard_key(cls, key: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not key:
            _fail('must list at least one field, e.g. [{"region": 1}]')
        fields: set[str] = set()
        hashed = 0
        for index, part in enumerate(key):
            if len(part) != 1:
                _fail(
                    'each element must be a document with exactly one field, e.g. {"region": 1}',
                    index,
                )
            ((name, value),) = part.items()
            if not name or name.startswith("$"):
                _fail(f"{name!r} is not a valid shard key field name", index)
            if name in fields:
                _fail(f"field {name!r} appears twice in the shard key; list each field once", index)
            fields.add(name)
            # A shard key field is ascending (1) or hashed; bool is excluded because True == 1.
            if value == "hashed":
                hashed += 1
            elif not (type(value) is int and value == 1):
                _fail(f'the value for {name!r} must be 1 or "hashed", got {_show(value)}', index)
        if hashed > 1:
            _fail("a shard key may have at most one hashed field")
        return key


class ShardingEntry(_Document):
    database: str
    collection: str
    shardCollection: ShardCollection

    @model_validator(mode="after")
    def _valid_names(self) -> ShardingEntry:
        problem = database_name_problem(self.database)
        if problem:
            _fail(problem, "database")
        problem = collection_name_problem(self.collection)
        if problem:
            _fail(problem, "collection")
        return self


class Sharding(_Document):
    """The `sharding` option for replica set → sharded cluster migrations (spec §3.3)."""

    createSupportingIndexes: bool = False
    # Required with no default: a `sharding` document without it is an error (spec §23, 1.5).
    shardingEntries: list[ShardingEntry]

    @field_validator("shardingEntries")
    @classmethod
    def _no_duplicates(cls, entries: list[ShardingEntry]) -> list[ShardingEntry]:
        seen: set[tuple[str, str]] = set()
        for index, entry in enumerate(entries):
            namespace = (entry.database, entry.collection)
            if namespace in seen:
                _fail(
                    f"{entry.database}.{entry.collection} is listed twice; give each collection "
                    "one shard key",
                    index,
                )
            seen.add(namespace)
        return entries


class Verification(_Document):
    enabled: bool = True


class NaturalOrderEntry(_Document):
    """A `copyInNaturalOrder` entry: `{database, collections?}`; `database: "."` means all
    databases (the docs' example; spec §3.3 infers the per-database shape)."""

    database: str
    collections: list[str] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> NaturalOrderEntry:
        if self.database == ".":
            if self.collections is not None:
                _fail(
                    'cannot be combined with database "." (all databases); remove it', "collections"
                )
            return self
        problem = database_name_problem(self.database)
        if problem:
            _fail(problem, "database")
        if self.collections is not None:
            _check_collection_list(self.collections,
                                   "copy the whole database in natural order")
        return self


class StartRequest(_Document):
    """A validated `/start` body with every default filled in.

    Filling defaults means two bodies that mean the same migration compare equal (multi-instance
    starts must be identical, spec §3.3) and a persisted request keeps its meaning on resume even
    if a later pymongosync changes a default.
    """

    source: ClusterName
    destination: ClusterName
    # Default since 1.17 for 6.0+ sources, the only sources pymongosync accepts.
    buildIndexes: BuildIndexes = "afterDataCopy"
    detectRandomId: bool = True
    includeNamespaces: list[NamespaceFilterEntry] | None = None
    excludeNamespaces: list[NamespaceFilterEntry] | None = None
    copyInNaturalOrder: list[NaturalOrderEntry] | None = None
    preExistingDestinationData: bool = False
    reversible: bool = False
    sharding: Sharding | None = None
    skipDiskSpaceCheck: bool = False
    verification: Verification = Field(default_factory=Verification)
    # Legacy (removed in mongosync 1.20, accepted per spec §0.3); booleans are normalised to the
    # equivalent strings so the stored request has one spelling.
    enableUserWriteBlocking: WriteBlockingMode | None = None

    @classmethod
    def from_document(cls, document: object) -> StartRequest:
        """Parse a decoded JSON `/start` body or a document from `to_document()`."""
        if not isinstance(document, dict):
            raise InvalidStartRequest("body", f"must be a JSON object, got {_show(document)}")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise InvalidStartRequest(*_describe(exc.errors()[0])) from None

    def to_document(self) -> dict[str, Any]:
        """Plain dicts/lists for the metadata store; `from_document` gives back an equal request."""
        return self.model_dump(exclude_none=True)

    @model_validator(mode="before")
    @classmethod
    def _accept_legacy_lag(cls, data: Any) -> Any:
        # `lagTimeSeconds` is a /progress field that old scripts echo into /start (spec §0.3).
        # It has no meaning here: check it is a plausible value, then forget it, so two bodies
        # differing only in it describe the same migration.
        if isinstance(data, dict) and "lagTimeSeconds" in data:
            value = data["lagTimeSeconds"]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                or not math.isfinite(value)
            ):
                _fail(
                    f"must be a non-negative number or null (it is ignored), got {_show(value)}",
                    "lagTimeSeconds",
                )
            data = {key: item for key, item in data.items() if key != "lagTimeSeconds"}
        return data

    @field_validator("enableUserWriteBlocking", mode="before")
    @classmethod
    def _legacy_write_blocking(cls, value: Any) -> Any:
        # Spec §3.3: true is "sourceAndDestination", false is "none".
        if value is True:
            return "sourceAndDestination"
        if value is False:
            return "none"
        return value

    @field_validator("includeNamespaces", "excludeNamespaces")
    @classmethod
    def _valid_filter_list(
        cls, entries: list[NamespaceFilterEntry] | None, info: ValidationInfo
    ) -> list[NamespaceFilterEntry] | None:
        if entries is None:
            return None
        if not entries:
            _fail(f"must not be empty; leave {info.field_name} out instead")
        first_seen: dict[tuple[str, ...], int] = {}
        for index, entry in enumerate(entries):
            earlier = first_seen.setdefault(entry.database_key, index)
            if earlier != index:
                # Entries are unions, so two entries for one database can always be merged; keeping
                # one entry per database makes each filter readable and its meaning unambiguous.
                _fail(
                    f"names the same database as entry [{earlier}]; merge the two entries into one",
                    index,
                )
        return entries

    @field_validator("copyInNaturalOrder")
    @classmethod
    def _valid_natural_order_list(
        cls, entries: list[NaturalOrderEntry] | None
    ) -> list[NaturalOrderEntry] | None:
        if entries is None:
            return None
        if not entries:
            _fail("must not be empty; leave copyInNaturalOrder out instead")
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            earlier = seen.setdefault(entry.database, index)
            if earlier != index:
                _fail(
                    f"names the same database as entry [{earlier}]; merge the two entries into one",
                    index,
                )
        if "." in seen and len(entries) > 1:
            _fail(
                'database "." already selects every database; remove the other entries', seen["."]
            )
        return entries

    @model_validator(mode="after")
    def _consistent(self) -> StartRequest:
        if self.source == self.destination:
            _fail(
                f'must differ from source (both are "{self.source}"); use the other cluster label',
                "destination",
            )
        self._check_reversible()
        if self.preExistingDestinationData and not self.has_namespace_filter:
            _fail(
                "needs a namespace filter: give includeNamespaces and/or excludeNamespaces that "
                "select only the migrated namespaces",
                "preExistingDestinationData",
            )
        self._check_filter_overlap()
        self._check_legacy_write_blocking()
        self._check_sharding_entries_in_filter()
        return self

    def _check_reversible(self) -> None:
        # Spec §3.3 `reversible` and §11 "Not allowed with".
        if not self.reversible:
            return
        if self.buildIndexes == "never":
            _fail(
                'cannot be true with buildIndexes "never"; choose another buildIndexes value or '
                "set reversible to false",
                "reversible",
            )
        if self.has_namespace_filter:
            _fail(
                "cannot be true with includeNamespaces/excludeNamespaces; filtered migrations "
                "cannot be reversed",
                "reversible",
            )
        if self.preExistingDestinationData:
            _fail(
                "cannot be true with preExistingDestinationData; migrations into a non-empty "
                "destination cannot be reversed",
                "reversible",
            )
        if self.sharding is not None:
            _fail(
                "cannot be true with sharding: sharding is only for replica set to sharded cluster "
                "migrations, which cannot be reversed",
                "reversible",
            )

    def _check_filter_overlap(self) -> None:
        if not self.includeNamespaces or not self.excludeNamespaces:
            return
        for ex_index, excluded in enumerate(self.excludeNamespaces):
            for in_index, included in enumerate(self.includeNamespaces):
                if excluded == included:
                    _fail(
                        f"removes exactly what includeNamespaces[{in_index}] adds; "
                        "remove both entries",
                        "excludeNamespaces",
                        ex_index,
                    )
                if (
                    excluded.database is not None
                    and excluded.database == included.database
                    and excluded.collections is None
                    and excluded.collectionsRegex is None
                ):
                    _fail(
                        f"excludes all of database {excluded.database!r}, which "
                        f"includeNamespaces[{in_index}] includes; remove one of the two entries",
                        "excludeNamespaces",
                        ex_index,
                    )

    def _check_legacy_write_blocking(self) -> None:
        # The legacy field is honoured when it agrees with what the configuration permits (§9).
        requested = self.enableUserWriteBlocking
        if requested is None:
            return
        if self.preExistingDestinationData and requested != "none":
            _fail(
                'must be "none" (or false) with preExistingDestinationData: mongosync blocks '
                'writes on neither cluster then; remove the field or set it to "none"',
                "enableUserWriteBlocking",
            )
        if self.has_namespace_filter and requested == "sourceAndDestination":
            _fail(
                "cannot block source writes with a namespace filter: write blocking is "
                'cluster-wide; use "destinationOnly" and stop writes to the filtered collections '
                "yourself",
                "enableUserWriteBlocking",
            )
        if self.reversible and requested != "sourceAndDestination":
            _fail(
                'must be "sourceAndDestination" (or true) for a reversible migration; remove the '
                "field or change it",
                "enableUserWriteBlocking",
            )

    def _check_sharding_entries_in_filter(self) -> None:
        if self.sharding is None or not self.has_namespace_filter:
            return
        namespace_filter = self.namespace_filter()
        for index, entry in enumerate(self.sharding.shardingEntries):
            if not namespace_filter.includes(entry.database, entry.collection):
                _fail(
                    f"{entry.database}.{entry.collection} is not selected by the namespace filter; "
                    "include it or remove this entry",
                    "sharding",
                    "shardingEntries",
                    index,
                )

    # -- derived settings --------------------------------------------------------------------------

    def namespace_filter(self) -> NamespaceFilter:
        """The filter of this request. This compiles its regexes: build it once per migration
        and keep it."""
        return NamespaceFilter(
            include=[entry.to_rule() for entry in self.includeNamespaces or ()],
            exclude=[entry.to_rule() for entry in self.excludeNamespaces or ()],
        )

    @property
    def has_namespace_filter(self) -> bool:
        return self.includeNamespaces is not None or self.excludeNamespaces is not None

    @property
    def write_blocking_mode(self) -> WriteBlockingMode:
        """Which clusters get `setUserWriteBlockMode` (spec §9.2, 1.20+ automatic choice).

        - preExistingDestinationData: neither cluster ("none");
        - a namespace filter: the destination only, as blocking is cluster-wide (§9.1);
        - otherwise both: the destination during sync, the source from `/commit`.
        A legacy `enableUserWriteBlocking` value, already checked compatible, wins.
        """
        if self.enableUserWriteBlocking is not None:
            return self.enableUserWriteBlocking
        if self.preExistingDestinationData:
            return "none"
        if self.has_namespace_filter:
            return "destinationOnly"
        return "sourceAndDestination"

    @property
    def builds_indexes_before_copy(self) -> bool:
        return self.buildIndexes in ("beforeDataCopy", "excludeHashed")

    @property
    def skips_hashed_indexes(self) -> bool:
        return self.buildIndexes in ("excludeHashed", "excludeHashedAfterCopy")

    @property
    def builds_no_indexes(self) -> bool:
        """`never`: only `_id` and the indexes sharding needs are built (spec §3.3)."""
        return self.buildIndexes == "never"

    def sharding_keys(self) -> dict[str, dict[str, int | str]]:
        """`"db.coll"` → shard key document (fields in order) for every `shardingEntries` item."""
        if self.sharding is None:
            return {}
        return {
            f"{entry.database}.{entry.collection}": {
                name: value for part in entry.shardCollection.key for name, value in part.items()
            }
            for entry in self.sharding.shardingEntries
        }

    def reversed(self) -> StartRequest:
        """The request of the reverse migration `/reverse` starts (spec §3.8): same settings,
        source and destination swapped. Every rule that allows `reversible` is symmetric, so the
        result is valid without re-checking."""
        if not self.reversible:
            raise ValueError("only a reversible request can be reversed")
        return self.model_copy(update={"source": self.destination, "destination": self.source})

    def copies_in_natural_order(self, db: str, coll: str) -> bool:
        """Whether `copyInNaturalOrder` asks for this collection to be copied in natural order."""
        return any(
            entry.database == "."
            or (entry.database == db and (entry.collections is None or coll in entry.collections))
            for entry in self.copyInNaturalOrder or ()
        )

    # -- checks that need the clusters -------------------------------------------------------------

    def check_topology(
        self,
        source_is_sharded: bool,
        destination_is_sharded: bool,
        source_version: tuple[int, ...],
        destination_version: tuple[int, ...],
    ) -> None:
        """Raise InvalidStartRequest when the clusters cannot run this request (spec §3.3, §5.1,
        §11, §12, §20.1). Versions are `(major, minor, ...)`; patch levels are not checked."""
        source_release = tuple(source_version[:2])
        destination_release = tuple(destination_version[:2])
        if source_release not in _SOURCE_VERSIONS:
            raise InvalidStartRequest(
                "source",
                f"the source cluster ({self.source}) runs MongoDB {_release(source_version)}; "
                "supported source releases are 6.0, 7.0 and 8.0 (major releases only)",
            )
        if destination_release not in _DESTINATION_VERSIONS:
            raise InvalidStartRequest(
                "destination",
                f"the destination cluster ({self.destination}) runs MongoDB "
                f"{_release(destination_version)}; supported destination releases are 6.0, 7.0 "
                "and 8.0 (major releases only)",
            )
        if destination_release < source_release:
            raise InvalidStartRequest(
                "destination",
                f"the destination cluster ({self.destination}) runs "
                f"{_release(destination_version)}, older than the source's "
                f"{_release(source_version)}; the destination must run the same or a newer release",
            )
        # A sharded source into a replica set is allowed (mongosync refuses it): collections
        # arrive unsharded, their shard keys stay recorded in the metadata, and pre-flight
        # refuses collections whose _id values repeat across shards.
        replica_set_to_sharded = destination_is_sharded and not source_is_sharded
        if replica_set_to_sharded and self.sharding is None:
            raise InvalidStartRequest(
                "sharding",
                "is required when migrating from a replica set to a sharded cluster; add "
                '{"shardingEntries": [...]} listing the collections to shard (an empty array '
                "shards none)",
            )
        if not replica_set_to_sharded and self.sharding is not None:
            raise InvalidStartRequest(
                "sharding",
                "is only accepted when migrating from a replica set to a sharded cluster; "
                "remove it",
            )
        if self.reversible and source_is_sharded != destination_is_sharded:
            raise InvalidStartRequest(
                "reversible",
                "cannot be true when the source and destination have different topologies; "
                "set it to false",
            )
        if self.reversible and source_release != destination_release:
            raise InvalidStartRequest(
                "reversible",
                "cannot be true when the clusters run different releases "
                f"({_release(source_version)} and {_release(destination_version)}); "
                "set it to false",
            )


def _release(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)
