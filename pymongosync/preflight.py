"""Pre-flight checks: everything that can be known to stop or endanger a migration, found before
anything is written (spec §5.1, §19, §20, §21; §25.2 asks for exactly this).

Each check reads the clusters and returns :class:`Finding` objects: what (``check``), where
(``subject``: a namespace, a cluster or a setting), why, the fix, and whether it blocks the
start. ``/start`` runs them all (:func:`check_before_start`): the first checks keep the errors
the API has always answered (``UnsupportedCluster``, ``InvalidRequest``, ``DestinationNotEmpty``),
then every other blocking finding is refused at once, listed in one ``PreflightFailed`` (or
``InsufficientDestinationDiskSpace``, mongosync's own name, when that is the only reason);
warnings are logged. ``mongosync check`` (:func:`run_checks`) runs the same checks as a dry
run and prints every finding, the first ones included.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure, PyMongoError

from pymongosync import catalog, oplog_window
from pymongosync.clusters import Cluster, redact
from pymongosync.received import RAW
from pymongosync.errors import (
    DestinationNotEmpty,
    InsufficientDestinationDiskSpace,
    InvalidStartRequest,
    MigrationError,
    PreflightFailed,
    UnsupportedCluster,
)
from pymongosync.leftovers import describe_leftovers
from pymongosync.request import StartRequest
from pymongosync.state import NamespaceKind, NamespaceRecord

log = logging.getLogger("pymongosync.preflight")

# Spec §20.1: the oldest patch release and feature compatibility version per major release.
Version = tuple[int, ...]
MINIMUM_PATCH: dict[Version, Version] = {(6, 0): (6, 0, 24), (7, 0): (7, 0, 18),
                                         (8, 0): (8, 0, 5)}
MINIMUM_FCV: dict[Version, Version] = {(6, 0): (6, 0), (7, 0): (6, 0), (8, 0): (8, 0)}
# Spec §12.3: a sharded collection may have at most 63 indexes (mongosync may need one more
# for the shard key, and MongoDB allows 64).
MAX_SHARDED_INDEXES = 63
# Spec §5.1 (1.22): free destination disk must hold the source's data with a margin for index
# builds and the oplog entries the copy writes; a secondary source gives mongosync's 1.25.
DISK_FACTOR = 1.25
# Documents read per collection for the field-name check: the first and the last ones by _id.
FIELD_SAMPLE = 100
# The oplog window is compared with an estimate of the copy at this rate (a conservative figure
# for one mongosync process; the real rate depends on hardware and load level) and must in any
# case hold an hour of writes, room for lag, pauses and the change-application drain.
ASSUMED_COPY_BYTES_PER_SECOND = 16 * 1024 * 1024
MINIMUM_OPLOG_WINDOW_SECONDS = 3600
UNAUTHORIZED = 13


class Severity(StrEnum):
    BLOCKING = "blocking"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One thing pre-flight found, with what to do about it."""

    check: str  # stable identifier, e.g. "privileges", "disk-space"
    severity: Severity
    subject: str  # a namespace, a cluster ("cluster1 (destination)") or a setting
    message: str
    fix: str
    error: str = PreflightFailed.name  # the API's error name when this finding blocks

    @property
    def blocking(self) -> bool:
        return self.severity == Severity.BLOCKING

    def describe(self) -> str:
        return f"[{self.check}] {self.subject}: {self.message}. Fix: {self.fix}"

    def to_document(self) -> dict[str, str]:
        return {"check": self.check, "severity": self.severity.value, "subject": self.subject,
                "message": self.message, "fix": self.fix}


@dataclass
class Context:
    """What the checks share: the request, both clusters and the source's namespaces."""

    request: StartRequest
    source: Cluster
    destination: Cluster
    namespaces: list[NamespaceRecord] = field(default_factory=list)
    change_buffering: bool = True  # whether the process buffers changes during the copy

    def role(self, cluster: Cluster) -> str:
        return f"{cluster.label} ({'source' if cluster is self.source else 'destination'})"

    @property
    def collections(self) -> list[NamespaceRecord]:
        return [ns for ns in self.namespaces if ns.kind == NamespaceKind.COLLECTION]


# -- running them --------------------------------------------------------------------------------
Gate = tuple[str, str, Callable[[], None], str]  # check, subject, what raises, fix


def _gates(request: StartRequest, source: Cluster, destination: Cluster) -> list[Gate]:
    """What ``/start`` has always refused first, each raising its own error."""
    def topology() -> None:
        request.check_topology(source.is_sharded, destination.is_sharded, source.version(),
                               destination.version())

    def empty_destination() -> None:
        leftovers = describe_leftovers(source, destination,
                                       user_data_allowed=request.preExistingDestinationData)
        if leftovers:
            raise DestinationNotEmpty(leftovers)

    supported = "use MongoDB 6.0, 7.0 or 8.0 on both clusters"
    return [("supported-version", source.label, source.check_supported, supported),
            ("supported-version", destination.label, destination.check_supported, supported),
            ("topology", "request", topology,
             "change the /start body or the clusters as the message says"),
            ("destination-empty", f"{destination.label} (destination)", empty_destination,
             "empty the destination as the message says")]


def check_before_start(request: StartRequest, source: Cluster, destination: Cluster,
                       change_buffering: bool = True) -> list[Finding]:
    """``/start``'s pre-flight: raise for the first failing gate (with the error it has always
    had), then for every blocking finding together; log the warnings and return them."""
    for _, _, gate, _ in _gates(request, source, destination):
        gate()
    context = Context(request, source, destination,
                      catalog.list_namespaces(source, request.namespace_filter()),
                      change_buffering)
    timeseries = _timeseries(context)
    if timeseries:
        raise UnsupportedCluster(f"{timeseries[0].message}; {timeseries[0].fix}")
    findings = list(_checked(context))
    for finding in findings:
        if not finding.blocking:
            # "message" is the log line's own key: the finding's text goes under "finding".
            fields = finding.to_document()
            fields["finding"] = fields.pop("message")
            log.warning("Pre-flight warning", extra={"fields": fields})
    raise_for_blocking(findings)
    return findings


def run_checks(request: StartRequest, source: Cluster, destination: Cluster,
               change_buffering: bool = True) -> list[Finding]:
    """Every finding, blocking or not, the start gates included (``mongosync check``)."""
    findings: list[Finding] = []
    for check_name, subject, gate, fix in _gates(request, source, destination):
        findings += _gate(check_name, subject, gate, fix)
    context = Context(request, source, destination,
                      catalog.list_namespaces(source, request.namespace_filter()),
                      change_buffering)
    findings += _timeseries(context)
    findings += _checked(context)
    return findings


def raise_for_blocking(findings: Sequence[Finding]) -> None:
    blocking = [finding for finding in findings if finding.blocking]
    if not blocking:
        return
    text = (f"pre-flight found {len(blocking)} problem{'s' if len(blocking) > 1 else ''} "
            f"that stop{'' if len(blocking) > 1 else 's'} the migration: "
            + " ".join(f"({number}) {finding.describe()}."
                       for number, finding in enumerate(blocking, 1))
            + " Nothing was written; `mongosync check` with the same options and body lists "
              "every finding, warnings included.")
    if all(finding.error == InsufficientDestinationDiskSpace.name for finding in blocking):
        raise InsufficientDestinationDiskSpace(text)
    raise PreflightFailed(text)


def _gate(check: str, subject: str, gate: Callable[[], None], fix: str) -> list[Finding]:
    try:
        gate()
    except InvalidStartRequest as exc:
        return [Finding(check, Severity.BLOCKING, exc.field, exc.message, fix,
                        error="InvalidRequest")]
    except MigrationError as exc:
        return [Finding(check, Severity.BLOCKING, subject, exc.message, fix,
                        error=exc.error_name)]
    return []


def _timeseries(context: Context) -> list[Finding]:
    found = [ns.id for ns in context.namespaces if ns.kind == NamespaceKind.TIMESERIES]
    if not found:
        return []
    return [Finding("timeseries", Severity.BLOCKING, ", ".join(found),
                    # mongosync's text, "<namespace> is a timeseries collection", kept
                    # for the operators who search logs for it.
                    "; ".join(f"{ns} is a timeseries collection" for ns in found) +
                    ": time-series collections cannot be migrated",
                    "exclude them with excludeNamespaces and move them another way "
                    "(mongodump/mongorestore)", error=UnsupportedCluster.name)]


CHECKS: list[Callable[[Context], Iterable[Finding]]] = []


def check(function: Callable[[Context], Iterable[Finding]]
          ) -> Callable[[Context], Iterable[Finding]]:
    CHECKS.append(function)
    return function


def _checked(context: Context) -> Iterator[Finding]:
    """Every registered check; one that cannot read what it needs says so as a warning
    instead of hiding the others."""
    for function in CHECKS:
        name = function.__name__.strip("_").replace("_", "-")
        try:
            yield from function(context)
        except PyMongoError as exc:
            yield Finding(name, Severity.WARNING, "pre-flight",
                          f"this check could not run: {redact(str(exc))}",
                          "grant the connection the privileges of spec §19 (see the "
                          "privileges check), or check this by hand before starting")


# -- privileges (spec §19) -----------------------------------------------------------------------
CLUSTER: dict[str, Any] = {"cluster": True}
ANY_COLLECTION: dict[str, Any] = {"db": "", "collection": ""}
SYSTEM_BUCKETS: dict[str, Any] = {"db": "", "system_buckets": ""}


def _ns(db: str, collection: str) -> dict[str, Any]:
    return {"db": db, "collection": collection}


Requirement = tuple[dict[str, Any], frozenset[str]]


def _requirements(*pairs: tuple[dict[str, Any], str]) -> list[Requirement]:
    return [(resource, frozenset(actions.split())) for resource, actions in pairs]


# Spec §19.2, minimum privileges of the default sync. The write-blocking actions are cluster
# actions on MongoDB; they are only needed on a cluster whose writes the request blocks.
SOURCE_PRIVILEGES = _requirements(
    (CLUSTER, "appendOplogNote getDefaultRWConcern getShardMap hostInfo listDatabases "
              "listShards replSetGetConfig replSetGetStatus serverStatus"),
    (ANY_COLLECTION, "changeStream collStats find indexStats listCollections listIndexes"),
    (_ns("local", "oplog.rs"), "find collStats"),
    (_ns("admin", "system.version"), "find"),
    (_ns("", "system.js"), "listCollections listIndexes"),
    (_ns("config", "shards"), "find"), (_ns("config", "collections"), "find"),
    (_ns("config", "version"), "find"), (_ns("config", "settings"), "find update"),
    (SYSTEM_BUCKETS, "listCollections listIndexes"),
)
DESTINATION_PRIVILEGES = _requirements(
    # Spec §19.2 lists enableSharding among the cluster actions too; MongoDB applies it to
    # databases and collections (the privilege-actions reference), which is where it is needed.
    (CLUSTER, "appendOplogNote getDefaultRWConcern getShardMap hostInfo listDatabases "
              "listShards replSetGetConfig replSetGetStatus serverStatus"),
    (ANY_COLLECTION, "bypassDocumentValidation changeStream collMod convertToCapped "
                     "createCollection createIndex dropCollection dropIndex enableSharding "
                     "find indexStats insert listCollections listIndexes remove "
                     "renameCollectionSameDB update"),
    (_ns("admin", "system.version"), "find"),
    (_ns("", "system.js"), "listCollections listIndexes"),
    (_ns("", "system.views"), "dropCollection"),
    (_ns("config", "shards"), "find"), (_ns("config", "version"), "find"),
    (_ns("config", "collections"), "find"), (_ns("config", "settings"), "find"),
    (_ns("config", "tags"), "find"),
    (SYSTEM_BUCKETS, "listCollections listIndexes"),
)
WRITE_BLOCKING_PRIVILEGES = _requirements((CLUSTER, "bypassWriteBlockingMode "
                                                    "setUserWriteBlockMode"))
# Spec §19.1: the roles that hold them.
SOURCE_ROLES = ("backup", "clusterMonitor", "readAnyDatabase")
WRITING_SOURCE_ROLES = ("backup", "clusterManager", "clusterMonitor", "readWriteAnyDatabase",
                        "restore")
DESTINATION_ROLES = ("clusterManager", "clusterMonitor", "readWriteAnyDatabase", "restore")
REVERSIBLE_DESTINATION_ROLES = ("backup", "clusterManager", "clusterMonitor",
                                "dbAdminAnyDatabase", "readWriteAnyDatabase", "restore")


def _search_list(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The held resources that grant actions on ``resource`` (MongoDB's resource search list:
    'local' and 'config' are never matched by the any-database resource, system collections
    only by their own name)."""
    found: list[dict[str, Any]] = [{"anyResource": True}, resource]
    db, collection = resource.get("db"), resource.get("collection")
    if collection and db:
        normal = not collection.startswith("system.")
        if normal and db not in ("local", "config"):
            found.append(ANY_COLLECTION)
        if normal:
            found.append(_ns(db, ""))
        found.append(_ns("", collection))
    return found


def missing_privileges(held: Iterable[dict[str, Any]],
                       required: Iterable[Requirement]) -> list[tuple[dict[str, Any], list[str]]]:
    """The required (resource, actions) that ``held`` (connectionStatus privileges) lacks."""
    grants: list[tuple[dict[str, Any], set[str]]] = [
        (dict(privilege["resource"]), set(privilege.get("actions") or ())) for privilege in held]
    missing = []
    for resource, actions in required:
        candidates = _search_list(resource)
        granted: set[str] = set()
        for held_resource, held_actions in grants:
            if held_resource in candidates:
                granted |= held_actions
        lacking = sorted(actions - granted)
        if lacking:
            missing.append((resource, lacking))
    return missing


def _show_resource(resource: dict[str, Any]) -> str:
    if resource.get("cluster"):
        return "the cluster"
    if "system_buckets" in resource:
        return "system.buckets.* of any database"
    db, collection = resource.get("db") or "<any db>", resource.get("collection") or "<any>"
    return "any database and collection" if resource == ANY_COLLECTION else f"{db}.{collection}"


@check
def _privileges(context: Context) -> Iterator[Finding]:
    request = context.request
    mode = request.write_blocking_mode
    for cluster in (context.source, context.destination):
        is_source = cluster is context.source
        required = list(SOURCE_PRIVILEGES if is_source else DESTINATION_PRIVILEGES)
        if request.reversible:  # spec §19.2: the union of both, on both sides
            required = SOURCE_PRIVILEGES + DESTINATION_PRIVILEGES
        blocks = mode == "sourceAndDestination" or (not is_source and mode != "none")
        if blocks or request.reversible:
            required += WRITE_BLOCKING_PRIVILEGES
        status = cluster.client.admin.command("connectionStatus", showPrivileges=True)
        info = status.get("authInfo") or {}
        users = info.get("authenticatedUsers") or []
        if not users:
            continue  # no authentication: the server grants every privilege (spec §19.2)
        lacking = missing_privileges(info.get("authenticatedUserPrivileges") or [], required)
        if not lacking:
            continue
        user = ", ".join(f"{u['user']}@{u['db']}" for u in users)
        roles: tuple[str, ...]
        if request.reversible:
            roles = REVERSIBLE_DESTINATION_ROLES
        elif is_source:
            roles = WRITING_SOURCE_ROLES if blocks else SOURCE_ROLES
        else:
            roles = DESTINATION_ROLES
        grant = ", ".join(f'{{role: "{role}", db: "admin"}}' for role in roles)
        yield Finding(
            "privileges", Severity.BLOCKING, context.role(cluster),
            f"the connection's user {user} lacks "
            + "; ".join(f"{', '.join(actions)} on {_show_resource(resource)}"
                        for resource, actions in lacking),
            f"grant the roles of spec §19.1: db.getSiblingDB(\"{users[0]['db']}\")"
            f".grantRolesToUser(\"{users[0]['user']}\", [{grant}])")


# -- users ---------------------------------------------------------------------------------------
def _users(cluster: Cluster) -> set[str]:
    reply = cluster.client.admin.command("usersInfo", {"forAllDBs": True})
    return {f"{user['user']}@{user['db']}" for user in reply.get("users", [])}


@check
def _users_on_destination(context: Context) -> Iterator[Finding]:
    subject = context.role(context.destination)
    try:
        on_destination = _users(context.destination)
        on_source = _users(context.source)
    except OperationFailure as exc:
        if exc.code != UNAUTHORIZED:
            raise
        yield Finding("users", Severity.WARNING, subject,
                      "the users of the clusters could not be listed (usersInfo needs the "
                      "viewUser privilege)", "compare the users of both clusters by hand: "
                      "users and roles are not migrated")
        return
    if not on_destination:
        yield Finding("users", Severity.WARNING, subject,
                      "the destination has no users: without access control every client may "
                      "write to it during the migration (write blocking stops only users "
                      "without bypassWriteBlockingMode), and applications will have no "
                      "accounts there after the cutover",
                      "enable access control on the destination and create its users "
                      "(db.createUser) before starting; users and roles are not migrated")
    missing = sorted(on_source - on_destination)
    if missing and on_destination:
        yield Finding("users", Severity.WARNING, subject,
                      f"users of the source are missing on the destination: "
                      f"{', '.join(missing)} (users and roles are not migrated)",
                      "create them on the destination with the same roles (db.createUser) "
                      "before moving applications over")


# -- destination disk (spec §5.1 item 9) ---------------------------------------------------------
def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def free_disk_bytes(cluster: Cluster) -> int | None:
    """Free bytes on the filesystems holding the cluster's data (each shard's, added), or None
    when the server does not say."""
    stats = cluster.client.admin.command("dbStats")
    parts = list((stats.get("raw") or {}).values()) or [stats]
    free = 0
    for part in parts:
        total, used = part.get("fsTotalSize"), part.get("fsUsedSize")
        if not total or used is None:
            return None
        free += int(total) - int(used)
    return free


@check
def _disk_space(context: Context) -> Iterator[Finding]:
    data = sum(ns.estimated_bytes for ns in context.collections)
    needed = math.ceil(data * DISK_FACTOR)
    free = free_disk_bytes(context.destination)
    subject = context.role(context.destination)
    if free is None:
        yield Finding("disk-space", Severity.WARNING, subject,
                      "the destination does not report its free disk space (dbStats has no "
                      "fsTotalSize)", f"make sure it has at least {_human(needed)} free")
        return
    if free >= needed:
        return
    message = (f"the destination has {_human(free)} of free disk; the source's data "
               f"({_human(data)}) needs about {_human(needed)} there ({DISK_FACTOR}x for "
               f"indexes and the copy's oplog entries)")
    if context.request.skipDiskSpaceCheck:
        yield Finding("disk-space", Severity.WARNING, subject,
                      message + "; not enforced because skipDiskSpaceCheck is true",
                      "add disk to the destination before it fills up")
        return
    yield Finding("disk-space", Severity.BLOCKING, subject, message,
                  f"add at least {_human(needed - free)} of disk to the destination, or set "
                  "skipDiskSpaceCheck: true in /start if its filesystem statistics mislead",
                  error=InsufficientDestinationDiskSpace.name)


# -- balancer windows and zones (spec §12.2) -----------------------------------------------------
@check
def _balancer_window(context: Context) -> Iterator[Finding]:
    for cluster in (context.source, context.destination):
        if not cluster.is_sharded:
            continue
        settings = cluster.client.config.settings.find_one({"_id": "balancer"}) or {}
        window = settings.get("activeWindow")
        if window:
            yield Finding(
                "balancer-window", Severity.BLOCKING, f"{context.role(cluster)} balancer",
                f"a balancing window is configured ({window.get('start')} to "
                f"{window.get('stop')}); mongosync refuses a cluster with one (spec §12.2)",
                'remove it: db.getSiblingDB("config").settings.updateOne({_id: "balancer"}, '
                '{$unset: {activeWindow: ""}}); set it again after COMMITTED')


@check
def _zones(context: Context) -> Iterator[Finding]:
    destination = context.destination
    if not destination.is_sharded:
        return
    migrated = {ns.id for ns in context.namespaces}
    ranges: dict[str, list[str]] = {}
    for tag in destination.client.config.tags.find({}, {"ns": 1, "tag": 1}):
        if tag.get("ns") in migrated:
            ranges.setdefault(tag["ns"], []).append(str(tag.get("tag")))
    for namespace, zones in sorted(ranges.items()):
        yield Finding("zones", Severity.BLOCKING, namespace,
                      f"the destination already has zone ranges for this namespace (zones "
                      f"{', '.join(sorted(set(zones)))}); mongosync cannot migrate into "
                      f"namespaces that already have shard tags configured",
                      f'remove them on the destination: sh.removeRangeFromZone("{namespace}", '
                      f"<min>, <max>) for each range (config.tags), and add them again after "
                      f"COMMITTED")


# -- indexes (spec §12.3, §21) -------------------------------------------------------------------
@check
def _sharded_index_count(context: Context) -> Iterator[Finding]:
    to_shard = set(context.request.sharding_keys())
    for ns in context.collections:
        if ns.shard_key is None and ns.id not in to_shard:
            continue
        if len(ns.indexes) > MAX_SHARDED_INDEXES:
            yield Finding("sharded-index-count", Severity.BLOCKING, ns.id,
                          f"this collection is sharded on the destination and has "
                          f"{len(ns.indexes)} indexes; at most {MAX_SHARDED_INDEXES} are "
                          f"supported on a sharded collection",
                          f"drop {len(ns.indexes) - MAX_SHARDED_INDEXES} of its indexes on the "
                          f"source (db.{ns.name}.dropIndex(<name>)), or exclude it")


def _key_of(spec: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((name, value) for name, value in dict(spec["key"]).items())


@check
def _unique_and_non_unique(context: Context) -> Iterator[Finding]:
    for ns in context.collections:
        by_key: dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]] = {}
        for spec in ns.indexes:
            by_key.setdefault(_key_of(spec), []).append(spec)
        for key, specs in by_key.items():
            unique = [s["name"] for s in specs if s.get("unique")]
            plain = [s["name"] for s in specs if not s.get("unique")]
            if unique and plain:
                pattern = "{" + ", ".join(f"{name}: {value}" for name, value in key) + "}"
                yield Finding(
                    "unique-and-non-unique", Severity.BLOCKING, ns.id,
                    f"the keys {pattern} have both a unique index ({', '.join(unique)}) and a "
                    f"non-unique one ({', '.join(plain)}); mongosync does not support that "
                    f"(IndexOptionsConflict)",
                    f"drop one of them on the source before migrating, e.g. "
                    f"db.{ns.name}.dropIndex(\"{plain[0]}\")")


# -- a sharded source into a replica set -----------------------------------------------------
# How many repeated _id values a finding names.
SHOWN_DUPLICATE_IDS = 3


@check
def _ids_unique_across_shards(context: Context) -> Iterator[Finding]:
    """A sharded cluster keeps ``_id`` unique per shard only: with a shard key other than
    ``_id`` itself, two shards may hold the same ``_id``. A replica set cannot hold both, and
    one would be lost, so such collections are refused. The check reads each collection's
    ``_id`` values once (a ``$group`` through the router, spilling to disk)."""
    if not context.source.is_sharded or context.destination.is_sharded:
        return
    for ns in context.collections:
        if ns.shard_key is None or list(ns.shard_key) == ["_id"]:
            continue  # on one shard, or distributed by _id itself: unique everywhere
        repeated = list(context.source.client[ns.db][ns.name].aggregate([
            {"$group": {"_id": "$_id", "count": {"$sum": 1}}},
            {"$match": {"count": {"$gt": 1}}}, {"$limit": SHOWN_DUPLICATE_IDS}],
            allowDiskUse=True))
        if repeated:
            shown = ", ".join(f"{entry['_id']!r} ({entry['count']} documents)"
                              for entry in repeated)
            yield Finding(
                "ids-unique-across-shards", Severity.BLOCKING, ns.id,
                f"the destination is a replica set, where _id is unique per collection, but "
                f"this collection (sharded on {dict(ns.shard_key)}) holds the same _id on "
                f"several shards: {shown}; one of each would be lost",
                "give those documents distinct _id values on the source, exclude the "
                "collection (excludeNamespaces), or migrate into a sharded cluster")


# -- field names (spec §21) ----------------------------------------------------------------------
def field_name_problem(document: bytes) -> str | None:
    """The first ``$``-prefixed or duplicate field name in a BSON document (any depth), as
    "$-prefixed field a.$b" / "duplicate field a.b"; None when there is none."""
    return _walk(document, 0, "", is_array=False)


# A DBRef's fields ({$ref, $id, $db}) were always allowed, and are no limitation.
DBREF_FIELDS = frozenset({"$ref", "$id", "$db"})
_FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
                0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}


def _walk(data: bytes, start: int, prefix: str, is_array: bool) -> str | None:
    end = start + int.from_bytes(data[start:start + 4], "little") - 1
    position, seen = start + 4, set()
    while position < end:
        kind = data[position]
        name_end = data.index(b"\x00", position + 1)
        name = data[position + 1:name_end].decode("utf-8", "replace")
        position = name_end + 1
        path = f"{prefix}{name}"
        if not is_array:
            if name.startswith("$") and name not in DBREF_FIELDS:
                return f"$-prefixed field {path}"
            if name in seen:
                return f"duplicate field {path}"
            seen.add(name)
        if kind in (0x03, 0x04):
            problem = _walk(data, position, path + ".", is_array=kind == 0x04)
            if problem:
                return problem
        position += _value_size(data, position, kind)
    return None


def _value_size(data: bytes, position: int, kind: int) -> int:
    if kind in _FIXED_SIZES:
        return _FIXED_SIZES[kind]
    length = int.from_bytes(data[position:position + 4], "little")
    if kind in (0x02, 0x0D, 0x0E):  # string, JavaScript, symbol: length + bytes
        return 4 + length
    if kind in (0x03, 0x04, 0x0F):  # document, array, code with scope: length includes itself
        return length
    if kind == 0x05:  # binary: length, subtype, bytes
        return 4 + 1 + length
    if kind == 0x0B:  # regex: two C strings
        first = data.index(b"\x00", position)
        return data.index(b"\x00", first + 1) + 1 - position
    if kind == 0x0C:  # DBPointer: string, 12-byte ObjectId
        return 4 + length + 12
    raise ValueError(f"unknown BSON type 0x{kind:02x}")


def _sample(cluster: Cluster, ns: NamespaceRecord) -> Iterator[RawBSONDocument]:
    collection = cluster.raw_client[ns.db].get_collection(ns.name, codec_options=RAW)
    # find returns documents as stored (an aggregation may rebuild them without duplicates).
    yield from collection.find({}, limit=FIELD_SAMPLE, sort=[("_id", 1)])
    yield from collection.find({}, limit=FIELD_SAMPLE, sort=[("_id", -1)])


@check
def _field_names(context: Context) -> Iterator[Finding]:
    for ns in context.collections:
        if not ns.estimated_documents:
            continue
        for document in _sample(context.source, ns):
            problem = field_name_problem(bytes(document.raw))
            if problem:
                yield Finding(
                    "field-names", Severity.BLOCKING, ns.id,
                    f"document _id {document['_id']!r} has a {problem} (found in a sample of "
                    f"{2 * FIELD_SAMPLE} documents; there may be more); mongosync does not "
                    f"support $-prefixed or duplicate field names",
                    "rename the fields on the source (or exclude the collection with "
                    "excludeNamespaces and move it another way)")
                break


# -- persistent query settings (spec §5.1 item 10) -----------------------------------------------
@check
def _query_settings(context: Context) -> Iterator[Finding]:
    source = context.source
    if source.version()[:2] < (8, 0):
        return
    settings = list(source.client.admin.aggregate([{"$querySettings": {}}]))
    if not settings:
        return
    shapes = []
    for entry in settings:
        query = entry.get("representativeQuery") or {}
        command = next((name for name in ("find", "distinct", "aggregate") if name in query), "")
        shapes.append(f"{query.get('$db', '?')}.{query.get(command, '?')} ({command}, "
                      f"{entry.get('queryShapeHash', '')[:12]}...)")
    yield Finding("query-settings", Severity.WARNING, context.role(source),
                  f"{len(settings)} persistent query setting{'s' if len(settings) > 1 else ''} "
                  f"on the source will not be migrated: {', '.join(shapes)}",
                  "re-create them on the destination with setQuerySettings after the cutover "
                  "(db.aggregate([{$querySettings: {}}]) lists them)")


# -- versions (spec §20.1) -----------------------------------------------------------------------
def _version_text(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


@check
def _server_versions(context: Context) -> Iterator[Finding]:
    for cluster in (context.source, context.destination):
        version = cluster.version()
        major = version[:2]
        subject = context.role(cluster)
        minimum = MINIMUM_PATCH.get(major)
        if minimum is not None and tuple(version[:3]) < minimum:
            yield Finding("server-version", Severity.BLOCKING, subject,
                          f"it runs MongoDB {_version_text(version)}; the oldest supported "
                          f"{_version_text(major)} release is {_version_text(minimum)}",
                          f"upgrade it to {_version_text(minimum)} or later (a patch upgrade, "
                          f"possible in place before the migration)")
        try:
            reply = cluster.client.admin.command("getParameter", 1,
                                                 featureCompatibilityVersion=1)
        except OperationFailure as exc:  # e.g. a mongos that does not report it
            yield Finding("feature-compatibility-version", Severity.WARNING, subject,
                          f"the feature compatibility version could not be read "
                          f"({redact(str(exc))})",
                          "check it on each shard: db.adminCommand({getParameter: 1, "
                          "featureCompatibilityVersion: 1})")
            continue
        fcv = reply.get("featureCompatibilityVersion") or {}
        if fcv.get("targetVersion"):
            yield Finding("feature-compatibility-version", Severity.BLOCKING, subject,
                          f"its feature compatibility version is changing from "
                          f"{fcv.get('version')} to {fcv['targetVersion']}: clusters part-way "
                          f"through an upgrade or downgrade are not supported",
                          "finish the change (setFeatureCompatibilityVersion) first")
            continue
        fcv_version = tuple(int(part) for part in str(fcv.get("version", "0.0")).split("."))
        minimum_fcv = MINIMUM_FCV.get(major)
        if minimum_fcv is not None and fcv_version < minimum_fcv:
            target = _version_text(major)
            yield Finding("feature-compatibility-version", Severity.BLOCKING, subject,
                          f"its feature compatibility version is {fcv.get('version')}; MongoDB "
                          f"{target} needs at least {_version_text(minimum_fcv)} for a migration",
                          f'db.adminCommand({{setFeatureCompatibilityVersion: "{target}", '
                          f"confirm: true}})")


# -- the oplog window (spec §5.5) ----------------------------------------------------------------
@check
def _oplog_window(context: Context) -> Iterator[Finding]:
    """With change buffering the oplog only has to hold the buffer's lag and any pause, so an
    hour is advised; without it, it must hold every change made during the whole copy: a
    window shorter than the estimated copy blocks the start, one shorter than twice the copy
    is a warning."""
    source = context.source
    data = sum(ns.estimated_bytes for ns in context.collections)
    copy_seconds = data / ASSUMED_COPY_BYTES_PER_SECOND
    needed = (MINIMUM_OPLOG_WINDOW_SECONDS if context.change_buffering
              else max(2 * copy_seconds, MINIMUM_OPLOG_WINDOW_SECONDS))
    windows: list[tuple[str | None, float | None]] = []
    try:
        windows += oplog_window.window_seconds_of(source)
    except PyMongoError as exc:
        yield Finding("oplog-window", Severity.WARNING, context.role(source),
                      f"its oplog could not be read ({redact(str(exc))})",
                      "check its window with db.getReplicationInfo() on each replica set")
    for shard, window in windows:
        if window is None or window >= needed:
            continue
        subject = f"shard {shard}" if shard else context.role(source)
        held = (f"the source's oplog holds about {_duration(window)} of writes at the rate seen "
                f"so far")
        grow = ("grow the source oplog, e.g. db.adminCommand({replSetResizeOplog: 1, "
                "minRetentionHours: 24}) (or a larger size in MB), or reduce the write rate")
        if context.change_buffering:
            yield Finding(
                "oplog-window", Severity.WARNING, subject,
                f"{held}; the change buffer stores the changes made during the copy, but the "
                f"oplog must still cover the buffer's lag, any pause and the cut-over: at least "
                f"{_duration(needed)} is advised. If it rolls over, the migration fails "
                f"(ChangeStreamHistoryLost) and must restart from scratch", grow)
            continue
        estimate = (f"copying {_human(data)} is estimated at {_duration(copy_seconds)} (at an "
                    f"assumed {_human(ASSUMED_COPY_BYTES_PER_SECOND)}/s)")
        if window < copy_seconds:
            yield Finding(
                "oplog-window", Severity.BLOCKING, subject,
                f"{held}; {estimate}, and with change buffering disabled every change made "
                f"during the copy must stay in the oplog until change application begins: the "
                f"oplog would roll over (ChangeStreamHistoryLost) before the copy ends",
                f"start mongosync without --disableChangeBuffering (the change buffer then "
                f"stores the changes on the destination), or {grow}")
        else:
            yield Finding(
                "oplog-window", Severity.WARNING, subject,
                f"{held}; {estimate}, and with change buffering disabled change application "
                f"needs the oplog to cover the copy, any pause and the lag: at least "
                f"{_duration(needed)} is advised. If it rolls over, the migration fails "
                f"(ChangeStreamHistoryLost) and must restart from scratch",
                f"start mongosync without --disableChangeBuffering, or {grow}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
