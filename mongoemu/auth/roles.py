"""Privileges, built-in roles and what each command requires.

Modelled on the server's own rules (``builtin_roles.yml`` and ``ResourcePatternSearchList`` of
MongoDB 7.x/8.x): a privilege is a resource pattern plus a set of actions; a command needs, on
one or more concrete resources, actions that the union of matching privileges must cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, NamedTuple

from mongoemu.errors import CommandError

# Resource pattern kinds.
ANY = "any"  # {anyResource: true}
CLUSTER = "cluster"  # {cluster: true}
ANY_NORMAL = "any_normal"  # {db: "", collection: ""}
DATABASE = "database"  # {db: "x", collection: ""}
COLLECTION_NAME = "collection"  # {db: "", collection: "c"}
EXACT = "exact"  # {db: "x", collection: "c"}
ANY_SYSTEM_BUCKETS = "any_system_buckets"  # {db: "", system_buckets: ""}

# The action that stands for every action (only __system holds it among built-ins).
ANY_ACTION = "anyAction"

# Databases whose collections never match "any normal resource" patterns.
_SPECIAL_DATABASES = ("local", "config")
_BUCKETS_PREFIX = "system.buckets."


class RoleName(NamedTuple):
    role: str
    db: str

    def to_document(self) -> dict[str, str]:
        return {"role": self.role, "db": self.db}

    def __str__(self) -> str:
        return f"{self.role}@{self.db}"


@dataclass(frozen=True)
class Resource:
    """A resource pattern in a grant, or the concrete resource a command acts on."""

    kind: str
    db: str = ""
    collection: str = ""

    @staticmethod
    def database(db: str) -> "Resource":
        return Resource(DATABASE, db)

    @staticmethod
    def namespace(db: str, collection: str) -> "Resource":
        return Resource(EXACT, db, collection)

    @staticmethod
    def from_document(doc: Any) -> "Resource":
        """Parse the ``resource`` of a user-defined privilege."""
        if not isinstance(doc, Mapping):
            raise CommandError(14, "resource must be an object")
        keys = set(doc)
        if keys == {"anyResource"} and doc["anyResource"] is True:
            return ANY_RESOURCE
        if keys == {"cluster"} and doc["cluster"] is True:
            return CLUSTER_RESOURCE
        if keys == {"db", "collection"} and all(isinstance(doc[k], str) for k in keys):
            db, coll = doc["db"], doc["collection"]
            if db and coll:
                return Resource(EXACT, db, coll)
            if db:
                return Resource(DATABASE, db)
            if coll:
                return Resource(COLLECTION_NAME, "", coll)
            return ANY_NORMAL_RESOURCE
        if keys == {"db", "system_buckets"} and doc["db"] == "" and doc["system_buckets"] == "":
            return ANY_SYSTEM_BUCKETS_RESOURCE
        raise CommandError(9, f"{_short(doc)} is not a valid resource pattern")

    def to_document(self) -> dict[str, Any]:
        if self.kind == ANY:
            return {"anyResource": True}
        if self.kind == CLUSTER:
            return {"cluster": True}
        if self.kind == ANY_SYSTEM_BUCKETS:
            return {"db": "", "system_buckets": ""}
        return {"db": self.db, "collection": self.collection}

    def search_list(self) -> tuple["Resource", ...]:
        """Every grant pattern that can match this concrete resource (server's
        ResourcePatternSearchList): system collections and the ``local``/``config`` databases
        are deliberately out of reach of the "any normal" and database-wide patterns."""
        if self.kind == ANY:
            return (ANY_RESOURCE,)
        if self.kind in (CLUSTER, ANY_NORMAL, COLLECTION_NAME, ANY_SYSTEM_BUCKETS):
            return (ANY_RESOURCE, self)
        patterns = [ANY_RESOURCE]
        if self.kind == DATABASE:
            if self.db not in _SPECIAL_DATABASES:
                patterns.append(ANY_NORMAL_RESOURCE)
            patterns.append(self)
            return tuple(patterns)
        if is_normal_namespace(self.db, self.collection):
            if self.db not in _SPECIAL_DATABASES:
                patterns.append(ANY_NORMAL_RESOURCE)
            patterns.append(Resource(DATABASE, self.db))
        elif len(self.collection) > len(_BUCKETS_PREFIX) and \
                self.collection.startswith(_BUCKETS_PREFIX):
            patterns.append(ANY_SYSTEM_BUCKETS_RESOURCE)
        patterns.append(Resource(COLLECTION_NAME, "", self.collection))
        patterns.append(self)
        return tuple(patterns)


ANY_RESOURCE = Resource(ANY)
CLUSTER_RESOURCE = Resource(CLUSTER)
ANY_NORMAL_RESOURCE = Resource(ANY_NORMAL)
ANY_SYSTEM_BUCKETS_RESOURCE = Resource(ANY_SYSTEM_BUCKETS)


def is_normal_namespace(db: str, collection: str) -> bool:
    return not collection.startswith("system.") and \
        not (db == "local" and collection.startswith("replset."))


@dataclass(frozen=True)
class Privilege:
    resource: Resource
    actions: frozenset[str]

    @staticmethod
    def from_document(doc: Any) -> "Privilege":
        """Parse ``{resource: {...}, actions: [...]}`` from createRole & co."""
        if not isinstance(doc, Mapping) or "resource" not in doc or "actions" not in doc:
            raise CommandError(9, "privileges must be objects with 'resource' and 'actions'")
        actions = doc["actions"]
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise CommandError(14, "privilege 'actions' must be an array of strings")
        unknown = sorted(set(actions) - ALL_ACTIONS)
        if unknown:
            raise CommandError(2, f"Unrecognized action privilege string: {unknown[0]}")
        return Privilege(Resource.from_document(doc["resource"]), frozenset(actions))

    def to_document(self) -> dict[str, Any]:
        return {"resource": self.resource.to_document(), "actions": sorted(self.actions)}


class PrivilegeSet:
    """Privileges merged per resource pattern, as the server holds them for a session."""

    def __init__(self, privileges: Iterable[Privilege] = ()) -> None:
        self._actions: dict[Resource, set[str]] = {}
        self.update(privileges)

    def update(self, privileges: Iterable[Privilege]) -> None:
        for privilege in privileges:
            self._actions.setdefault(privilege.resource, set()).update(privilege.actions)

    def allows(self, required: Privilege) -> bool:
        # The server unions the actions of every matching pattern before comparing.
        granted: set[str] = set()
        for pattern in required.resource.search_list():
            granted |= self._actions.get(pattern, set())
        return ANY_ACTION in granted or required.actions <= granted

    def allows_all(self, required: Iterable[Privilege]) -> bool:
        return all(self.allows(privilege) for privilege in required)

    def privileges(self) -> list[Privilege]:
        return [Privilege(resource, frozenset(actions))
                for resource, actions in self._actions.items()]

    def to_documents(self) -> list[dict[str, Any]]:
        return [privilege.to_document() for privilege in self.privileges()]


def _short(value: Any) -> str:
    return repr(value)[:200]


# ---------------------------------------------------------------------------------------------
# Built-in roles (MongoDB 7.0/8.0 builtin_roles.yml, minus multi-tenancy details).

_READ = frozenset({
    "changeStream", "collStats", "dbHash", "dbStats", "find", "killCursors", "listCollections",
    "listIndexes", "listSearchIndexes", "planCacheRead"})
_READ_WRITE = _READ | {
    "cleanupStructuredEncryptionData", "compactStructuredEncryptionData", "convertToCapped",
    "createCollection", "createIndex", "createSearchIndexes", "dropCollection", "dropIndex",
    "dropSearchIndex", "insert", "remove", "renameCollectionSameDB", "update",
    "updateSearchIndex"}
_USER_ADMIN = frozenset({
    "changeCustomData", "changePassword", "createUser", "createRole", "dropUser", "dropRole",
    "grantRole", "revokeRole", "setAuthenticationRestriction", "viewUser", "viewRole"})
_DB_ADMIN = frozenset({
    "analyze", "bypassDocumentValidation", "collMod", "collStats", "compact", "convertToCapped",
    "createCollection", "dbStats", "dropCollection", "dropDatabase", "dropIndex",
    "dropSearchIndex", "createIndex", "createSearchIndexes", "enableProfiler", "listCollections",
    "listIndexes", "listSearchIndexes", "updateSearchIndex", "planCacheIndexFilter",
    "planCacheRead", "planCacheWrite", "reIndex", "renameCollectionSameDB", "storageDetails",
    "validate", "configureQueryAnalyzer"})
_PROFILE_ADMIN = _READ | {"convertToCapped", "createCollection", "dropCollection"}
_READ_AND_INDEX = _READ | {"createIndex", "createSearchIndexes", "dropIndex", "dropSearchIndex"}
_MONITOR_CLUSTER = frozenset({
    "connPoolStats", "getCmdLineOpts", "getDefaultRWConcern", "getLog", "getParameter",
    "getShardMap", "hostInfo", "listDatabases", "listSampledQueries", "listSessions",
    "listShards", "netstat", "operationMetrics", "replSetGetConfig", "replSetGetStatus",
    "serverStatus", "top", "useUUID", "inprog", "shardingState", "allCollectionStats",
    "shardedDataDistribution"})
_MONITOR_DB = frozenset({
    "collStats", "dbStats", "getDatabaseVersion", "getShardVersion", "indexStats"})
_HOST_MANAGER_CLUSTER = frozenset({
    "applicationMessage", "auditConfigure", "connPoolSync", "dropConnections", "logRotate",
    "oidReset", "setParameter", "shutdown", "touch", "unlock", "flushRouterConfig", "fsync",
    "invalidateUserCache", "killAnyCursor", "killAnySession", "killop", "replSetResizeOplog",
    "resync", "trafficRecord", "rotateCertificates", "oidcListKeys", "oidcRefreshKeys"})
_MANAGER_CLUSTER = frozenset({
    "appendOplogNote", "applicationMessage", "replSetConfigure", "replSetGetConfig",
    "replSetGetStatus", "replSetStateChange", "resync", "addShard", "removeShard",
    "listSessions", "listShards", "flushRouterConfig", "cleanupOrphaned", "getDefaultRWConcern",
    "runTenantMigration", "setDefaultRWConcern", "setFeatureCompatibilityVersion",
    "setClusterParameter", "getClusterParameter", "setChangeStreamState",
    "getChangeStreamState", "querySettings", "queryStatsRead", "queryStatsReadTransformed",
    "checkMetadataConsistency", "transitionFromDedicatedConfigServer",
    "transitionToDedicatedConfigServer"})
_MANAGER_DB = frozenset({
    "analyzeShardKey", "configureQueryAnalyzer", "clearJumboFlag", "splitChunk", "moveChunk",
    "moveCollection", "enableSharding", "splitVector", "refineCollectionShardKey",
    "reshardCollection"})
_WRITE = frozenset({"insert", "update", "remove"})
_RESTORE_WRITE = frozenset({
    "bypassDocumentValidation", "collMod", "convertToCapped", "createCollection", "createIndex",
    "createSearchIndexes", "dropCollection", "insert", "updateSearchIndex"})
_FIND = frozenset({"find"})


@dataclass(frozen=True)
class _Grant:
    """One privilege of a built-in role; ``db`` None means "the role's own database"."""

    kind: str
    actions: frozenset[str]
    collection: str = ""
    db: str | None = None

    def resolve(self, role_db: str) -> Privilege:
        if self.kind in (DATABASE, EXACT):
            return Privilege(Resource(self.kind, self.db or role_db, self.collection),
                             self.actions)
        return Privilege(Resource(self.kind, "", self.collection), self.actions)


@dataclass(frozen=True)
class _BuiltinRole:
    grants: tuple[_Grant, ...]
    # Sub-roles: (name, db) with db None meaning the role's own database.
    roles: tuple[tuple[str, str | None], ...] = ()
    admin_only: bool = True


def _g(kind: str, actions: Iterable[str], collection: str = "", db: str | None = None) -> _Grant:
    return _Grant(kind, frozenset(actions), collection, db)


_BUILTIN: dict[str, _BuiltinRole] = {
    "read": _BuiltinRole((_g(DATABASE, _READ), _g(EXACT, _READ, "system.js")),
                         admin_only=False),
    "readWrite": _BuiltinRole((_g(DATABASE, _READ_WRITE), _g(EXACT, _READ_WRITE, "system.js")),
                              admin_only=False),
    "userAdmin": _BuiltinRole((_g(DATABASE, _USER_ADMIN),), admin_only=False),
    "dbAdmin": _BuiltinRole((_g(DATABASE, _DB_ADMIN),
                             _g(EXACT, _PROFILE_ADMIN, "system.profile")), admin_only=False),
    "dbOwner": _BuiltinRole((), (("readWrite", None), ("dbAdmin", None), ("userAdmin", None)),
                            admin_only=False),
    "readAnyDatabase": _BuiltinRole((
        _g(ANY_NORMAL, _READ), _g(CLUSTER, {"listDatabases"}),
        _g(COLLECTION_NAME, _READ, "system.js"), _g(ANY_SYSTEM_BUCKETS, _READ))),
    "readWriteAnyDatabase": _BuiltinRole((
        _g(ANY_NORMAL, _READ_WRITE), _g(COLLECTION_NAME, _READ_WRITE, "system.js"),
        _g(ANY_SYSTEM_BUCKETS, _READ_WRITE)), (("readAnyDatabase", None),)),
    "userAdminAnyDatabase": _BuiltinRole((
        _g(ANY_NORMAL, _USER_ADMIN | {"listCachedAndActiveUsers"}),
        _g(DATABASE, _USER_ADMIN, db="local"), _g(DATABASE, _USER_ADMIN, db="config"),
        _g(CLUSTER, {"listDatabases", "authSchemaUpgrade", "invalidateUserCache", "viewUser"}),
        _g(EXACT, _READ_AND_INDEX, "system.users", "admin"),
        _g(EXACT, _READ_AND_INDEX, "system.roles", "admin"),
        _g(COLLECTION_NAME, _READ, "system.users"),
        _g(EXACT, _READ, "system.version", "admin"),
        _g(EXACT, _READ, "system.backup_users", "admin"))),
    "dbAdminAnyDatabase": _BuiltinRole((
        _g(CLUSTER, {"listDatabases", "applyOps"}), _g(ANY_NORMAL, _DB_ADMIN),
        _g(COLLECTION_NAME, _PROFILE_ADMIN, "system.profile"),
        _g(ANY_SYSTEM_BUCKETS, _DB_ADMIN))),
    "clusterMonitor": _BuiltinRole((
        _g(CLUSTER, _MONITOR_CLUSTER), _g(ANY_NORMAL, _MONITOR_DB),
        _g(DATABASE, _MONITOR_DB, db="config"),
        _g(EXACT, _MONITOR_DB, "system.sessions", "config"),
        _g(DATABASE, _MONITOR_DB, db="local"),
        _g(EXACT, _FIND, "system.replset", "local"),
        _g(EXACT, _FIND, "replset.election", "local"),
        _g(EXACT, _FIND, "replset.minvalid", "local"),
        _g(COLLECTION_NAME, _FIND, "system.profile")), (("read", "config"), ("read", "local"))),
    "hostManager": _BuiltinRole((
        _g(CLUSTER, _HOST_MANAGER_CLUSTER), _g(ANY_NORMAL, {"killCursors"}))),
    "clusterManager": _BuiltinRole((
        _g(CLUSTER, _MANAGER_CLUSTER), _g(ANY_NORMAL, _MANAGER_DB),
        _g(ANY_SYSTEM_BUCKETS, _MANAGER_DB), _g(DATABASE, _MANAGER_DB, db="config"),
        _g(DATABASE, _MANAGER_DB, db="local"), _g(EXACT, _READ, "system.replset", "local"),
        _g(ANY, {"dbCheck"}), _g(EXACT, _READ, "system.healthlog", "local"),
        # Balancer control is an update (start/stop) or find (status) on config.settings.
        _g(DATABASE, _WRITE, db="config"), _g(DATABASE, _WRITE, db="local"),
        _g(EXACT, _WRITE, "replset.election", "local"),
        _g(EXACT, _WRITE, "replset.minvalid", "local")), (("read", "config"),)),
    "clusterAdmin": _BuiltinRole((
        _g(ANY_NORMAL, {"dropDatabase"}), _g(ANY, {"importCollection", "exportCollection"})),
        (("clusterMonitor", None), ("hostManager", None), ("clusterManager", None))),
    "__queryableBackup": _BuiltinRole((
        _g(ANY, {"collStats", "listCollections", "listIndexes", "listSearchIndexes"}),
        _g(ANY_NORMAL, _FIND), _g(ANY_SYSTEM_BUCKETS, _FIND),
        _g(CLUSTER, {"getParameter", "listDatabases", "useUUID"}),
        _g(DATABASE, _FIND, db="config"), _g(DATABASE, _FIND, db="local"),
        _g(EXACT, _FIND, "replset.election", "local"),
        _g(EXACT, _FIND, "replset.minvalid", "local"),
        _g(COLLECTION_NAME, _FIND, "system.js"), _g(COLLECTION_NAME, _FIND, "system.users"),
        _g(COLLECTION_NAME, _FIND, "system.profile"),
        _g(EXACT, _FIND, "system.backup_users", "admin"),
        _g(EXACT, _FIND, "system.roles", "admin"), _g(EXACT, _FIND, "system.version", "admin"),
        _g(EXACT, _FIND, "settings", "config"))),
    "backup": _BuiltinRole((
        # setUserWriteBlockMode since 6.0 (cluster-to-cluster sync).
        _g(CLUSTER, {"appendOplogNote", "serverStatus", "setUserWriteBlockMode"}),
        _g(EXACT, {"insert", "update"}, "settings", "config")), (("__queryableBackup", None),)),
    "restore": _BuiltinRole((
        # bypassWriteBlockingMode + setUserWriteBlockMode since 6.0 (cluster-to-cluster sync).
        _g(CLUSTER, {"getParameter", "forceUUID", "useUUID", "bypassWriteBlockingMode",
                     "setUserWriteBlockMode", "applyOps"}),
        _g(DATABASE, _RESTORE_WRITE, db="local"), _g(DATABASE, _RESTORE_WRITE, db="config"),
        _g(ANY_SYSTEM_BUCKETS, _RESTORE_WRITE),
        _g(EXACT, _RESTORE_WRITE, "system.replset", "local"),
        _g(EXACT, _RESTORE_WRITE, "replset.election", "local"),
        _g(EXACT, _RESTORE_WRITE, "replset.minvalid", "local"),
        _g(ANY, {"listCollections"}), _g(ANY_NORMAL, _RESTORE_WRITE | _USER_ADMIN),
        _g(COLLECTION_NAME, _RESTORE_WRITE, "system.js"),
        _g(EXACT, _FIND, "tempusers", "admin"), _g(EXACT, _FIND, "temproles", "admin"),
        _g(EXACT, _RESTORE_WRITE, "system.backup_users", "admin"),
        _g(EXACT, _RESTORE_WRITE | _FIND, "system.version", "admin"),
        _g(COLLECTION_NAME, _RESTORE_WRITE | {"find", "update", "remove"}, "system.users"),
        _g(EXACT, {"createIndex"}, "system.roles", "admin"),
        # SERVER-94657 (7.0.22, 8.0.5): restore may drop <db>.system.views.
        _g(COLLECTION_NAME, {"dropCollection"}, "system.views"))),
    "directShardOperations": _BuiltinRole((_g(CLUSTER, {"issueDirectShardOperations"}),)),
    "root": _BuiltinRole((
        _g(ANY, {"validate"}), _g(CLUSTER, {"useTenant"}),
        _g(EXACT, {"find", "remove"}, "system.preimages", "config"),
        _g(EXACT, {"find", "insert", "remove", "update"}, "system.change_collection", "config")),
        (("clusterAdmin", None), ("userAdminAnyDatabase", None), ("dbAdminAnyDatabase", None),
         ("readWriteAnyDatabase", None), ("backup", None), ("restore", None),
         ("directShardOperations", None))),
    "__system": _BuiltinRole((_g(ANY, {ANY_ACTION}),)),
}


def is_builtin_role(name: RoleName) -> bool:
    spec = _BUILTIN.get(name.role)
    return spec is not None and (not spec.admin_only or name.db == "admin")


def is_builtin_role_name(role: str) -> bool:
    """Whether ``role`` is reserved: user-defined roles may not reuse built-in names."""
    return role in _BUILTIN


def builtin_role_names(db: str) -> list[RoleName]:
    return [RoleName(role, db) for role in _BUILTIN if is_builtin_role(RoleName(role, db))]


@lru_cache(maxsize=None)
def builtin_privileges(name: RoleName) -> tuple[Privilege, ...]:
    """All privileges of a built-in role, its built-in sub-roles included."""
    spec = _BUILTIN[name.role]
    merged = PrivilegeSet(grant.resolve(name.db) for grant in spec.grants)
    for sub_role, sub_db in spec.roles:
        merged.update(builtin_privileges(RoleName(sub_role, sub_db or name.db)))
    return tuple(merged.privileges())


# Every action the server knows (action_type.idl, minus "ID only" and removed ones); a
# user-defined role may only grant these.
ALL_ACTIONS: frozenset[str] = frozenset({
    "addShard", "advanceClusterTime", "allCollectionStats", "analyze", "analyzeShardKey",
    ANY_ACTION, "appendOplogNote", "applicationMessage", "applyOps", "auditConfigure",
    "authSchemaUpgrade", "bypassDocumentValidation", "bypassWriteBlockingMode",
    "changeCustomData", "changeOwnCustomData", "changeOwnPassword", "changePassword",
    "changeStream", "checkMetadataConsistency", "cleanupOrphaned",
    "cleanupStructuredEncryptionData", "clearJumboFlag", "collMod", "collStats", "compact",
    "compactStructuredEncryptionData", "configureQueryAnalyzer", "connPoolStats",
    "connPoolSync", "convertToCapped", "cpuProfiler", "createCollection", "createIndex",
    "createRole", "createSearchIndexes", "createUser", "dbCheck", "dbHash", "dbStats",
    "dropCollection", "dropConnections", "dropDatabase", "dropIndex", "dropRole",
    "dropSearchIndex", "dropUser", "emptycapped", "enableProfiler", "enableSharding",
    "exportCollection", "find", "flushRouterConfig", "forceUUID", "fsync", "fsyncUnlock",
    "getChangeStreamState", "getClusterParameter", "getCmdLineOpts", "getDatabaseVersion",
    "getDefaultRWConcern", "getLog", "getParameter", "getShardMap", "getShardVersion",
    "grantRole", "hostInfo", "impersonate", "importCollection", "indexStats", "inprog",
    "insert", "internal", "invalidateUserCache", "issueDirectShardOperations", "killAnyCursor",
    "killAnySession", "killCursors", "killop", "listCachedAndActiveUsers", "listCollections",
    "listCursors", "listDatabases", "listIndexes", "listSampledQueries", "listSearchIndexes",
    "listSessions", "listShards", "logRotate", "moveChunk", "moveCollection", "netstat",
    "oidReset", "oidcListKeys", "oidcRefreshKeys", "operationMetrics", "planCacheIndexFilter",
    "planCacheRead", "planCacheWrite", "querySettings", "queryStatsRead",
    "queryStatsReadTransformed", "reIndex", "refineCollectionShardKey", "remove",
    "removeShard", "renameCollectionSameDB", "replSetConfigure", "replSetGetConfig",
    "replSetGetStatus", "replSetHeartbeat", "replSetResizeOplog", "replSetStateChange",
    "reshardCollection", "resync", "revokeRole", "rotateCertificates",
    "runAsLessPrivilegedUser", "runTenantMigration", "serverStatus",
    "setAuthenticationRestriction", "setChangeStreamState", "setClusterParameter",
    "setDefaultRWConcern", "setFeatureCompatibilityVersion", "setParameter",
    "setUserWriteBlockMode", "shardedDataDistribution", "shardingState", "shutdown",
    "splitChunk", "splitVector", "storageDetails", "top", "touch", "trafficRecord",
    "transitionFromDedicatedConfigServer", "transitionToDedicatedConfigServer", "unlock",
    "update", "updateSearchIndex", "useTenant", "useUUID", "validate", "viewRole", "viewUser"})


# ---------------------------------------------------------------------------------------------
# What each command requires.
#
# ``required_privileges`` answers with alternatives: a list of privilege lists, the command
# being allowed when every privilege of at least one list is held. Most commands have exactly
# one list; an empty list inside means "any authenticated user".

Requirement = list[list[Privilege]]

# Actions on the cluster resource.
_CLUSTER_COMMANDS: dict[str, str] = {
    "serverStatus": "serverStatus", "hostInfo": "hostInfo", "getCmdLineOpts": "getCmdLineOpts",
    "getParameter": "getParameter", "setParameter": "setParameter",
    "replSetGetStatus": "replSetGetStatus", "replSetGetConfig": "replSetGetConfig",
    "replSetReconfig": "replSetConfigure", "replSetStepDown": "replSetStateChange",
    "replSetFreeze": "replSetStateChange", "replSetResizeOplog": "replSetResizeOplog",
    "listShards": "listShards", "getShardMap": "getShardMap",
    "getDefaultRWConcern": "getDefaultRWConcern", "setDefaultRWConcern": "setDefaultRWConcern",
    "appendOplogNote": "appendOplogNote", "setUserWriteBlockMode": "setUserWriteBlockMode",
    "setFeatureCompatibilityVersion": "setFeatureCompatibilityVersion", "top": "top",
    "currentOp": "inprog", "killOp": "killop", "shutdown": "shutdown", "fsync": "fsync",
    "fsyncUnlock": "unlock", "logRotate": "logRotate", "connPoolStats": "connPoolStats",
    "connPoolSync": "connPoolSync", "dropConnections": "dropConnections", "getLog": "getLog",
    "netstat": "netstat", "addShard": "addShard", "removeShard": "removeShard",
    "flushRouterConfig": "flushRouterConfig", "setClusterParameter": "setClusterParameter",
    "getClusterParameter": "getClusterParameter", "shardingState": "shardingState",
}
# Actions on the command's database.
_DATABASE_COMMANDS: dict[str, str] = {
    "dbStats": "dbStats", "listCollections": "listCollections", "dropDatabase": "dropDatabase",
    "dbHash": "dbHash", "profile": "enableProfiler",
}
# Actions on ``<db>.<command value>``.
_COLLECTION_COMMANDS: dict[str, frozenset[str]] = {
    "find": _FIND, "count": _FIND, "distinct": _FIND, "dataSize": _FIND,
    "listIndexes": frozenset({"listIndexes"}), "collStats": frozenset({"collStats"}),
    "validate": frozenset({"validate"}), "delete": frozenset({"remove"}),
    "drop": frozenset({"dropCollection"}), "createIndexes": frozenset({"createIndex"}),
    "dropIndexes": frozenset({"dropIndex"}), "deleteIndexes": frozenset({"dropIndex"}),
    "collMod": frozenset({"collMod"}), "convertToCapped": frozenset({"convertToCapped"}),
    "compact": frozenset({"compact"}), "reIndex": frozenset({"reIndex"}),
}
# Actions on the full namespace named by the command value ("db.coll").
_NAMESPACE_COMMANDS: dict[str, str] = {
    "shardCollection": "enableSharding", "reshardCollection": "reshardCollection",
    "refineCollectionShardKey": "refineCollectionShardKey", "moveChunk": "moveChunk",
    "split": "splitChunk", "moveCollection": "moveCollection",
    "unshardCollection": "moveCollection", "clearJumboFlag": "clearJumboFlag",
}
_CONFIG_SETTINGS = Resource.namespace("config", "settings")
_BALANCER_COMMANDS: dict[str, str] = {
    "balancerStart": "update", "balancerStop": "update", "balancerStatus": "find"}
# User management: action on the command's database, plus grantRole/revokeRole on the
# database of every role the command hands out or takes away.
_USER_ADMIN_COMMANDS: dict[str, tuple[frozenset[str], str | None]] = {
    "createUser": (frozenset({"createUser"}), "grantRole"),
    "dropUser": (frozenset({"dropUser"}), None),
    "dropAllUsersFromDatabase": (frozenset({"dropUser"}), None),
    "grantRolesToUser": (frozenset(), "grantRole"),
    "revokeRolesFromUser": (frozenset(), "revokeRole"),
    "createRole": (frozenset({"createRole"}), "grantRole"),
    "updateRole": (frozenset({"createRole", "dropRole"}), "grantRole"),
    "dropRole": (frozenset({"dropRole"}), None),
    "dropAllRolesFromDatabase": (frozenset({"dropRole"}), None),
    "grantRolesToRole": (frozenset(), "grantRole"),
    "revokeRolesFromRole": (frozenset(), "revokeRole"),
    "grantPrivilegesToRole": (frozenset({"grantRole"}), None),
    "revokePrivilegesFromRole": (frozenset({"revokeRole"}), None),
    "rolesInfo": (frozenset({"viewRole"}), None),
}


def required_privileges(name: str, db: str, body: Mapping[str, Any], *,
                        action: str | None = None, admin_only: bool = False,
                        user: tuple[str, str] | None = None) -> Requirement:
    """What ``body`` (command ``name`` run on ``db``) needs. ``action`` and ``admin_only`` come
    from the command's registration: an explicit action overrides the table, applied to the
    cluster for admin-only commands, else to the named collection or the database. ``user``
    is the (name, db) running it, for commands a user may always run on itself."""
    value = body.get(name)
    if action is not None:
        if admin_only:
            return [[Privilege(CLUSTER_RESOURCE, frozenset({action}))]]
        return [[Privilege(_collection_or_database(db, value), frozenset({action}))]]
    if name in _CLUSTER_COMMANDS:
        return [[Privilege(CLUSTER_RESOURCE, frozenset({_CLUSTER_COMMANDS[name]}))]]
    if name in _DATABASE_COMMANDS:
        return [[Privilege(Resource.database(db), frozenset({_DATABASE_COMMANDS[name]}))]]
    if name in _COLLECTION_COMMANDS:
        return [[Privilege(_collection_or_database(db, value), _COLLECTION_COMMANDS[name])]]
    if name in _NAMESPACE_COMMANDS:
        return [[Privilege(_full_namespace(value), frozenset({_NAMESPACE_COMMANDS[name]}))]]
    if name in _BALANCER_COMMANDS:
        return [[Privilege(_CONFIG_SETTINGS, frozenset({_BALANCER_COMMANDS[name]}))]]
    if name in _USER_ADMIN_COMMANDS:
        return [_user_admin_privileges(name, db, body)]
    if name == "explain" and isinstance(value, Mapping) and value:
        inner = next(iter(value))
        return required_privileges(inner, db, value)
    if name == "insert":
        return [[Privilege(_collection_or_database(db, value), _with_bypass({"insert"}, body))]]
    if name == "update":
        actions = {"update"}
        if any(isinstance(u, Mapping) and u.get("upsert") for u in body.get("updates") or ()):
            actions.add("insert")
        return [[Privilege(_collection_or_database(db, value), _with_bypass(actions, body))]]
    if name == "findAndModify":
        return [[Privilege(_collection_or_database(db, value), _find_and_modify_actions(body))]]
    if name == "bulkWrite":
        return [_bulk_write_privileges(body)]
    if name == "create":
        return _create_privileges(db, value, body)
    if name == "renameCollection":
        return _rename_privileges(value, body)
    if name == "cloneCollectionAsCapped":
        target = body.get("toCollection")
        return [[Privilege(_collection_or_database(db, value), _FIND),
                 Privilege(_collection_or_database(db, target),
                           frozenset({"insert", "createCollection"}))]]
    if name == "enableSharding":
        target = value if isinstance(value, str) and value else db
        return [[Privilege(Resource.database(target), frozenset({"enableSharding"}))]]
    if name == "aggregate":
        return [_pipeline_privileges(db, _collection_or_database(db, value),
                                     body.get("pipeline"), body)]
    if name == "updateUser":
        return [_update_user_privileges(db, body)]
    if name == "usersInfo":
        return [_users_info_privileges(db, body, user)]
    # Anything else needs just an authenticated user. That is deliberate for getMore,
    # killCursors, endSessions, commitTransaction/abortTransaction (ownership is checked by
    # their handlers), listDatabases (filters its answer instead of failing) and
    # configureFailPoint/waitForFailPoint (test-only; real servers do not authorize them).
    return [[]]


def _collection_or_database(db: str, value: Any) -> Resource:
    if isinstance(value, str) and value:
        return Resource.namespace(db, value)
    return Resource.database(db)


def _full_namespace(value: Any) -> Resource:
    if isinstance(value, str) and "." in value:
        db, _, coll = value.partition(".")
        return Resource.namespace(db, coll)
    return Resource.database(value if isinstance(value, str) else "")


def _with_bypass(actions: set[str], body: Mapping[str, Any]) -> frozenset[str]:
    if body.get("bypassDocumentValidation"):
        actions = actions | {"bypassDocumentValidation"}
    return frozenset(actions)


def _bulk_write_privileges(body: Mapping[str, Any]) -> list[Privilege]:
    """Each nsInfo namespace with the actions of the operations on it (bulk_write_common.cpp
    getPrivileges); a malformed request needs no more than a user, the command refuses it."""
    ns_info, ops = body.get("nsInfo"), body.get("ops")
    if not isinstance(ns_info, list) or not isinstance(ops, list):
        return []
    actions: list[set[str]] = [set() for _ in ns_info]
    for op in ops:
        if not isinstance(op, Mapping) or not op:
            continue
        kind = next(iter(op))
        index = op.get(kind)
        if kind not in ("insert", "update", "delete") or not isinstance(index, int) \
                or not 0 <= index < len(ns_info):
            continue
        needed = {"insert": {"insert"}, "update": {"update"}, "delete": {"remove"}}[kind]
        if kind == "update" and op.get("upsert"):
            needed = needed | {"insert"}
        actions[index] |= needed
    return [Privilege(_full_namespace(entry.get("ns") if isinstance(entry, Mapping) else None),
                      _with_bypass(needed, body))
            for entry, needed in zip(ns_info, actions)]


def _find_and_modify_actions(body: Mapping[str, Any]) -> frozenset[str]:
    actions = {"find", "remove" if body.get("remove") else "update"}
    if body.get("upsert"):
        actions.add("insert")
    return _with_bypass(actions, body)


def _create_privileges(db: str, value: Any, body: Mapping[str, Any]) -> Requirement:
    target = _collection_or_database(db, value)
    view_on = body.get("viewOn")
    if isinstance(view_on, str) and view_on:
        # A view also needs read access to its source and to every collection it reads.
        needed = [Privilege(target, frozenset({"createCollection"}))]
        needed += _pipeline_privileges(db, Resource.namespace(db, view_on),
                                       body.get("pipeline"), body)
        return [needed]
    # Either action lets a client create a plain collection.
    return [[Privilege(target, frozenset({"createCollection"}))],
            [Privilege(target, frozenset({"insert"}))]]


def _rename_privileges(value: Any, body: Mapping[str, Any]) -> Requirement:
    source, target = _full_namespace(value), _full_namespace(body.get("to"))
    drop_target = [Privilege(target, frozenset({"dropCollection"}))] \
        if body.get("dropTarget") else []
    cross = [Privilege(source, frozenset({"find", "dropCollection"})),
             Privilege(target, frozenset({"insert", "createIndex"}))] + drop_target
    if source.db == target.db and is_normal_namespace(source.db, source.collection) and \
            is_normal_namespace(target.db, target.collection):
        same_db = [Privilege(Resource.database(source.db),
                             frozenset({"renameCollectionSameDB"}))] + drop_target
        return [same_db, cross]
    return [cross]


def _namespace_argument(db: str, value: Any) -> Resource | None:
    """A stage's foreign collection: a name in ``db``, or ``{db, coll}``."""
    if isinstance(value, str) and value:
        return Resource.namespace(db, value)
    if isinstance(value, Mapping) and isinstance(value.get("coll"), str):
        other_db = value.get("db")
        return Resource.namespace(other_db if isinstance(other_db, str) and other_db else db,
                                  value["coll"])
    return None


def _pipeline_privileges(db: str, source: Resource | None, pipeline: Any,
                         body: Mapping[str, Any]) -> list[Privilege]:
    """Privileges of an aggregation pipeline reading ``source`` (None for a sub-pipeline,
    whose input is already accounted for by the stage that owns it)."""
    stages = [stage for stage in pipeline if isinstance(stage, Mapping) and stage] \
        if isinstance(pipeline, list) else []
    needed: list[Privilege] = []
    if source is not None:
        needed += _initial_stage_privileges(source, stages[0] if stages else None)
    for stage in stages:
        stage_name = next(iter(stage))
        spec = stage[stage_name]
        if stage_name in ("$lookup", "$graphLookup", "$unionWith"):
            foreign_spec = spec.get("from" if stage_name != "$unionWith" else "coll") \
                if isinstance(spec, Mapping) else spec
            foreign = _namespace_argument(db, foreign_spec)
            if foreign is not None:
                needed.append(Privilege(foreign, _FIND))
            if isinstance(spec, Mapping):
                needed += _pipeline_privileges(db, None, spec.get("pipeline"), body)
        elif stage_name == "$facet" and isinstance(spec, Mapping):
            for sub_pipeline in spec.values():
                needed += _pipeline_privileges(db, None, sub_pipeline, body)
        elif stage_name in ("$out", "$merge"):
            into = spec.get("into") if stage_name == "$merge" and isinstance(spec, Mapping) \
                else spec
            target = _namespace_argument(db, into)
            if target is not None:
                actions = {"insert", "remove"} if stage_name == "$out" else {"insert", "update"}
                needed.append(Privilege(target, _with_bypass(actions, body)))
    return needed


def _initial_stage_privileges(source: Resource, stage: Mapping[str, Any] | None
                              ) -> list[Privilege]:
    """Stages that produce their own input replace the implicit ``find`` on the source."""
    name = next(iter(stage)) if stage else None
    spec = stage[name] if stage and name else None
    if name == "$changeStream":
        whole_cluster = isinstance(spec, Mapping) and spec.get("allChangesForCluster")
        resource = ANY_NORMAL_RESOURCE if whole_cluster else source
        return [Privilege(resource, frozenset({"changeStream", "find"}))]
    if name == "$collStats":
        return [Privilege(source, frozenset({"collStats"}))]
    if name == "$indexStats":
        return [Privilege(source, frozenset({"indexStats"}))]
    if name in ("$currentOp", "$listSessions", "$listLocalSessions"):
        if isinstance(spec, Mapping) and spec.get("allUsers"):
            action = "inprog" if name == "$currentOp" else "listSessions"
            return [Privilege(CLUSTER_RESOURCE, frozenset({action}))]
        return []
    if name == "$documents":
        return []
    return [Privilege(source, _FIND)]


def _role_databases(db: str, roles: Any) -> set[str]:
    dbs: set[str] = set()
    for role in roles if isinstance(roles, list) else ():
        if isinstance(role, str):
            dbs.add(db)
        elif isinstance(role, Mapping) and isinstance(role.get("db"), str):
            dbs.add(role["db"])
    return dbs


def _user_admin_privileges(name: str, db: str, body: Mapping[str, Any]) -> list[Privilege]:
    actions, role_action = _USER_ADMIN_COMMANDS[name]
    needed = [Privilege(Resource.database(db), actions)] if actions else []
    if role_action is not None:
        needed += [Privilege(Resource.database(role_db), frozenset({role_action}))
                   for role_db in sorted(_role_databases(db, body.get("roles")))]
    return needed


def _update_user_privileges(db: str, body: Mapping[str, Any]) -> list[Privilege]:
    actions = set()
    if "pwd" in body:
        actions.add("changePassword")
    if "customData" in body:
        actions.add("changeCustomData")
    needed = [Privilege(Resource.database(db), frozenset(actions))] if actions else []
    if "roles" in body:
        needed += [Privilege(Resource.database(role_db), frozenset({"grantRole", "revokeRole"}))
                   for role_db in sorted(_role_databases(db, body["roles"]) | {db})]
    return needed


def _users_info_privileges(db: str, body: Mapping[str, Any],
                           self_user: tuple[str, str] | None) -> list[Privilege]:
    """usersInfo needs viewUser on every database it looks into, except when a user only
    asks about itself."""
    value = body.get("usersInfo")
    if isinstance(value, Mapping) and value.get("forAllDBs"):
        return [Privilege(CLUSTER_RESOURCE, frozenset({"viewUser"}))]
    wanted: list[tuple[str, str] | None] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            wanted.append((item, db))
        elif isinstance(item, Mapping) and isinstance(item.get("user"), str):
            wanted.append((item["user"], item.get("db", db)))
        else:
            wanted.append(None)  # "all users of db"
    if self_user is not None and wanted and all(w == self_user for w in wanted):
        return []
    dbs = sorted({w[1] if w is not None else db for w in wanted} or {db})
    return [Privilege(Resource.database(d), frozenset({"viewUser"})) for d in dbs]
