"""Users, roles, SASL conversations and the per-command authorization check.

One ``AuthManager`` lives on the server as ``server.auth_store`` whether or not auth is on:
a real server accepts createUser/usersInfo/saslStart without ``--auth`` too, it just does not
enforce anything. Enforcement (``check``) only happens when ``config.auth`` is true.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from bson.binary import UUID_SUBTYPE, Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from mongoemu.auth.roles import (
    CLUSTER_RESOURCE, Privilege, PrivilegeSet, Requirement, Resource, RoleName,
    builtin_privileges, builtin_role_names, is_builtin_role, is_builtin_role_name,
    required_privileges)
from mongoemu.auth.scram import MECHANISMS, ScramCredential, ScramServer, make_credential
from mongoemu.commands.registry import REGISTRY
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.config import EmulatorConfig
    from mongoemu.context import Connection, Context

# Real servers run one SASL conversation per connection and always number it 1.
CONVERSATION_ID = 1

_BYPASS_WRITE_BLOCKING = [[Privilege(CLUSTER_RESOURCE, frozenset({"bypassWriteBlockingMode"}))]]


@dataclass
class User:
    name: str
    db: str
    user_id: uuid.UUID
    credentials: dict[str, ScramCredential]
    roles: list[RoleName]
    custom_data: dict[str, Any] | None = None

    @property
    def mechanisms(self) -> list[str]:
        return [mechanism for mechanism in MECHANISMS if mechanism in self.credentials]


@dataclass
class Role:
    name: str
    db: str
    privileges: list[Privilege] = field(default_factory=list)
    roles: list[RoleName] = field(default_factory=list)

    @property
    def role_name(self) -> RoleName:
        return RoleName(self.name, self.db)


@dataclass
class SaslSession:
    """An in-flight conversation kept in ``Connection.sasl`` between SASL commands."""

    db: str
    scram: ScramServer


def user_not_found(name: str, db: str) -> CommandError:
    return CommandError(11, f'Could not find user "{name}" for db "{db}"')


def role_not_found(role: RoleName) -> CommandError:
    return CommandError(31, f"Could not find role: {role}")


def _invalid_role_modification(message: str) -> CommandError:
    return CommandError(70, message, code_name_override="InvalidRoleModification")


class AuthManager:
    """In-memory ``admin.system.users`` / ``admin.system.roles`` plus authentication state."""

    def __init__(self, config: "EmulatorConfig") -> None:
        self.config = config
        self._users: dict[tuple[str, str], User] = {}  # (db, name)
        self._roles: dict[tuple[str, str], Role] = {}  # (db, name)

    # ------------------------------------------------------------------------------ users

    def seed_root(self, user: str, password: str) -> None:
        """The ``--user/--password`` account: root on admin, replaced if it already exists."""
        self._users.pop(("admin", user), None)
        self.create_user("admin", user, password, [RoleName("root", "admin")])

    def create_user(self, db: str, name: str, password: str, roles: Iterable[RoleName], *,
                    mechanisms: list[str] | None = None,
                    custom_data: dict[str, Any] | None = None) -> User:
        if not name:
            raise CommandError(2, "User name must be non-empty")
        if db == "local":
            raise CommandError(2, "Cannot create users in the local database")
        if (db, name) in self._users:
            raise CommandError(51003, f'User "{name}@{db}" already exists')
        roles = self._existing_roles(roles)
        mechanisms = self._validate_mechanisms(mechanisms)
        user = User(name, db, uuid.uuid4(), self._credentials(name, password, mechanisms),
                    roles, custom_data)
        self._users[(db, name)] = user
        return user

    def update_user(self, db: str, name: str, *, password: str | None = None,
                    roles: Iterable[RoleName] | None = None, mechanisms: list[str] | None = None,
                    custom_data: dict[str, Any] | None = None) -> None:
        user = self.get_user(db, name)
        new_roles = self._existing_roles(roles) if roles is not None else None
        if mechanisms is not None:
            mechanisms = self._validate_mechanisms(mechanisms)
            if password is None and not set(mechanisms) <= set(user.credentials):
                raise CommandError(
                    2, "mechanisms field must be a subset of previously set mechanisms")
        if password is not None:
            user.credentials = self._credentials(name, password, mechanisms or user.mechanisms)
        elif mechanisms is not None:
            user.credentials = {m: c for m, c in user.credentials.items() if m in mechanisms}
        if new_roles is not None:
            user.roles = new_roles
        if custom_data is not None:
            user.custom_data = custom_data

    def get_user(self, db: str, name: str) -> User:
        user = self._users.get((db, name))
        if user is None:
            raise user_not_found(name, db)
        return user

    def drop_user(self, db: str, name: str) -> None:
        if self._users.pop((db, name), None) is None:
            raise user_not_found(name, db)

    def drop_all_users(self, db: str) -> int:
        doomed = [key for key in self._users if key[0] == db]
        for key in doomed:
            del self._users[key]
        return len(doomed)

    def grant_roles_to_user(self, db: str, name: str, roles: Iterable[RoleName]) -> None:
        user = self.get_user(db, name)
        for role in self._existing_roles(roles):
            if role not in user.roles:
                user.roles.append(role)

    def revoke_roles_from_user(self, db: str, name: str, roles: Iterable[RoleName]) -> None:
        user = self.get_user(db, name)
        revoked = set(self._existing_roles(roles))
        user.roles = [role for role in user.roles if role not in revoked]

    def users(self, db: str | None = None) -> list[User]:
        """Users of ``db`` (all users when None), in ``_id`` order like the server."""
        return [self._users[key] for key in sorted(self._users)
                if db is None or key[0] == db]

    def user_info(self, db: str, name: str, *, show_credentials: bool = False,
                  show_privileges: bool = False) -> dict[str, Any] | None:
        """One ``usersInfo`` entry, or None for an unknown user."""
        user = self._users.get((db, name))
        if user is None:
            return None
        doc: dict[str, Any] = {"_id": f"{db}.{name}", "userId": Binary.from_uuid(user.user_id),
                               "user": name, "db": db}
        if show_credentials:
            doc["credentials"] = {m: c.to_document() for m, c in user.credentials.items()}
        doc["roles"] = [role.to_document() for role in user.roles]
        if user.custom_data is not None:
            doc["customData"] = user.custom_data
        doc["mechanisms"] = user.mechanisms
        if show_privileges:
            doc["inheritedRoles"] = [role.to_document() for role in self.expand_roles(user.roles)]
            doc["inheritedPrivileges"] = self.privileges_for(user.roles).to_documents()
            doc["inheritedAuthenticationRestrictions"] = []
        return doc

    def user_documents(self) -> list[dict[str, Any]]:
        """``admin.system.users`` as the server stores it (for ``find`` on that namespace)."""
        docs = []
        for user in self.users():
            doc: dict[str, Any] = {
                "_id": f"{user.db}.{user.name}", "userId": Binary.from_uuid(user.user_id),
                "user": user.name, "db": user.db,
                "credentials": {m: c.to_document() for m, c in user.credentials.items()},
                "roles": [role.to_document() for role in user.roles]}
            if user.custom_data is not None:
                doc["customData"] = user.custom_data
            docs.append(doc)
        return docs

    def _credentials(self, name: str, password: str,
                     mechanisms: list[str]) -> dict[str, ScramCredential]:
        if not isinstance(password, str) or not password:
            raise CommandError(2, "Password cannot be empty")
        try:
            return {m: make_credential(m, name, password) for m in mechanisms}
        except ValueError as exc:  # SASLprep rejects prohibited characters
            raise CommandError(2, f"Error preparing password: {exc}") from None

    @staticmethod
    def _validate_mechanisms(mechanisms: list[str] | None) -> list[str]:
        if mechanisms is None:
            return list(MECHANISMS)
        if not mechanisms:
            raise CommandError(2, "mechanisms field must not be empty")
        for mechanism in mechanisms:
            if mechanism not in MECHANISMS:
                raise CommandError(2, f"Unknown auth mechanism '{mechanism}'")
        return [m for m in MECHANISMS if m in mechanisms]

    # ------------------------------------------------------------------------------ roles

    def role_exists(self, role: RoleName) -> bool:
        return is_builtin_role(role) or (role.db, role.role) in self._roles

    def create_role(self, db: str, name: str, privileges: Iterable[Privilege],
                    roles: Iterable[RoleName]) -> Role:
        if not name:
            raise CommandError(2, "Role name must be non-empty")
        if is_builtin_role_name(name):
            raise CommandError(2, "Cannot create roles with the same name as a built-in role")
        if (db, name) in self._roles:
            raise CommandError(51002, f'Role "{name}@{db}" already exists')
        role = Role(name, db, self._role_privileges(db, privileges),
                    self._inheritable_roles(db, roles))
        self._roles[(db, name)] = role
        return role

    def update_role(self, db: str, name: str, *, privileges: Iterable[Privilege] | None = None,
                    roles: Iterable[RoleName] | None = None) -> None:
        role = self._user_defined_role(db, name, "update")
        new_privileges = self._role_privileges(db, privileges) if privileges is not None \
            else None
        if roles is not None:
            new_roles = self._inheritable_roles(db, roles)
            self._reject_cycle(role.role_name, new_roles)
            role.roles = new_roles
        if new_privileges is not None:
            role.privileges = new_privileges

    def drop_role(self, db: str, name: str) -> None:
        dropped = self._user_defined_role(db, name, "drop").role_name
        del self._roles[(db, name)]
        # The server also removes the role from every holder.
        for user in self._users.values():
            user.roles = [role for role in user.roles if role != dropped]
        for other in self._roles.values():
            other.roles = [role for role in other.roles if role != dropped]

    def drop_all_roles(self, db: str) -> int:
        names = [name for role_db, name in self._roles if role_db == db]
        for name in names:
            self.drop_role(db, name)
        return len(names)

    def grant_privileges_to_role(self, db: str, name: str,
                                 privileges: Iterable[Privilege]) -> None:
        role = self._user_defined_role(db, name, "grant privileges to")
        merged = PrivilegeSet(role.privileges)
        merged.update(self._role_privileges(db, privileges))
        role.privileges = merged.privileges()

    def revoke_privileges_from_role(self, db: str, name: str,
                                    privileges: Iterable[Privilege]) -> None:
        role = self._user_defined_role(db, name, "revoke privileges from")
        revoked: dict[Resource, frozenset[str]] = {}
        for privilege in self._role_privileges(db, privileges):
            revoked[privilege.resource] = revoked.get(privilege.resource, frozenset()) | \
                privilege.actions
        kept = []
        for privilege in role.privileges:
            actions = privilege.actions - revoked.get(privilege.resource, frozenset())
            if actions:
                kept.append(Privilege(privilege.resource, actions))
        role.privileges = kept

    def grant_roles_to_role(self, db: str, name: str, roles: Iterable[RoleName]) -> None:
        role = self._user_defined_role(db, name, "grant roles to")
        new_roles = list(role.roles)
        for granted in self._inheritable_roles(db, roles):
            if granted not in new_roles:
                new_roles.append(granted)
        self._reject_cycle(role.role_name, new_roles)
        role.roles = new_roles

    def revoke_roles_from_role(self, db: str, name: str, roles: Iterable[RoleName]) -> None:
        role = self._user_defined_role(db, name, "revoke roles from")
        revoked = set(self._existing_roles(roles))
        role.roles = [r for r in role.roles if r not in revoked]

    def expand_roles(self, roles: Iterable[RoleName]) -> list[RoleName]:
        """``roles`` and everything they inherit, each once (built-ins are leaves: their
        sub-roles are folded into their privileges, as on the server). Roles dropped since
        they were granted are skipped."""
        seen: dict[RoleName, None] = {}
        pending = list(roles)
        while pending:
            role = pending.pop(0)
            if role in seen or not self.role_exists(role):
                continue
            seen[role] = None
            custom = self._roles.get((role.db, role.role))
            if custom is not None:
                pending.extend(custom.roles)
        return list(seen)

    def privileges_for(self, roles: Iterable[RoleName]) -> PrivilegeSet:
        merged = PrivilegeSet()
        for role in self.expand_roles(roles):
            custom = self._roles.get((role.db, role.role))
            merged.update(custom.privileges if custom is not None else builtin_privileges(role))
        return merged

    def role_info(self, role: RoleName, *, show_privileges: bool = False
                  ) -> dict[str, Any] | None:
        """One ``rolesInfo`` entry, or None for an unknown role."""
        if not self.role_exists(role):
            return None
        custom = self._roles.get((role.db, role.role))
        doc: dict[str, Any] = {"_id": f"{role.db}.{role.role}", "role": role.role,
                               "db": role.db}
        if show_privileges:
            doc["privileges"] = [p.to_document() for p in custom.privileges] if custom \
                else [p.to_document() for p in builtin_privileges(role)]
        doc["roles"] = [r.to_document() for r in custom.roles] if custom else []
        doc["isBuiltin"] = custom is None
        doc["inheritedRoles"] = [r.to_document() for r in self.expand_roles([role])
                                 if r != role]
        if show_privileges:
            doc["inheritedPrivileges"] = self.privileges_for([role]).to_documents()
        return doc

    def role_names(self, db: str, *, include_builtin: bool = False) -> list[RoleName]:
        """User-defined roles of ``db`` (sorted), optionally preceded by its built-ins."""
        custom = [RoleName(name, role_db) for role_db, name in sorted(self._roles)
                  if role_db == db]
        return (builtin_role_names(db) if include_builtin else []) + custom

    def role_documents(self) -> list[dict[str, Any]]:
        """``admin.system.roles`` as the server stores it."""
        return [{"_id": f"{db}.{name}", "role": name, "db": db,
                 "privileges": [p.to_document() for p in role.privileges],
                 "roles": [r.to_document() for r in role.roles]}
                for (db, name), role in sorted(self._roles.items())]

    def _existing_roles(self, roles: Iterable[RoleName]) -> list[RoleName]:
        result: list[RoleName] = []
        for role in roles:
            if not self.role_exists(role):
                raise role_not_found(role)
            if role not in result:
                result.append(role)
        return result

    def _user_defined_role(self, db: str, name: str, verb: str) -> Role:
        role_name = RoleName(name, db)
        if is_builtin_role(role_name):
            raise _invalid_role_modification(f"Cannot {verb} built-in role: {role_name}")
        role = self._roles.get((db, name))
        if role is None:
            raise role_not_found(role_name)
        return role

    @staticmethod
    def _role_privileges(db: str, privileges: Iterable[Privilege]) -> list[Privilege]:
        privileges = list(privileges)
        if db != "admin":
            for privilege in privileges:
                resource = privilege.resource
                if resource.db != db:  # also catches cluster/any patterns (db "")
                    raise _invalid_role_modification(
                        f"Roles on the '{db}' database cannot be granted privileges that target"
                        " other databases or the cluster")
        return PrivilegeSet(privileges).privileges()

    def _inheritable_roles(self, db: str, roles: Iterable[RoleName]) -> list[RoleName]:
        roles = self._existing_roles(roles)
        if db != "admin":
            for role in roles:
                if role.db != db:
                    raise _invalid_role_modification(
                        f"Roles on the '{db}' database cannot be granted roles from other"
                        " databases")
        return roles

    def _reject_cycle(self, role: RoleName, new_roles: list[RoleName]) -> None:
        if role in self.expand_roles(new_roles):
            raise _invalid_role_modification(
                f"Granting roles to {role} would introduce a cycle in the role graph")

    # ------------------------------------------------------------------------------ SASL

    def supported_mechanisms(self, user_spec: str) -> list[str] | None:
        """hello's ``saslSupportedMechs: "<db>.<user>"`` → that user's mechanisms, or None
        (field omitted) for an unknown user."""
        if not isinstance(user_spec, str):
            return None
        db, dot, name = user_spec.partition(".")
        user = self._users.get((db, name)) if dot else None
        return user.mechanisms if user is not None else None

    def sasl_start(self, conn: "Connection", db: str, body: Mapping[str, Any]) -> dict[str, Any]:
        mechanism = body.get("mechanism")
        if mechanism not in MECHANISMS:
            raise CommandError(
                334, f"Received authentication for mechanism {mechanism} which is unknown or "
                     "not enabled", code_name_override="MechanismUnavailable")
        options = body.get("options")
        skip_empty = isinstance(options, Mapping) and bool(options.get("skipEmptyExchange"))

        def lookup(name: str) -> ScramCredential | None:
            user = self._users.get((db, name))
            return user.credentials.get(mechanism) if user is not None else None

        scram = ScramServer(mechanism, lookup, skip_empty_exchange=skip_empty)
        # A new saslStart abandons whatever conversation was in flight.
        conn.sasl.pop(CONVERSATION_ID, None)
        server_first = scram.start(_payload(body.get("payload")))
        conn.sasl[CONVERSATION_ID] = SaslSession(db, scram)
        return {"conversationId": CONVERSATION_ID, "done": False,
                "payload": Binary(server_first)}

    def sasl_continue(self, conn: "Connection", body: Mapping[str, Any]) -> dict[str, Any]:
        conversation_id = body.get("conversationId")
        session = conn.sasl.get(conversation_id) if isinstance(conversation_id, int) else None
        if not isinstance(session, SaslSession):
            raise CommandError(17, "No SASL session state found",
                               code_name_override="ProtocolError")
        try:
            reply = session.scram.continue_(_payload(body.get("payload")))
        except CommandError:
            conn.sasl.pop(conversation_id, None)
            raise
        if session.scram.authenticated:
            conn.sasl.pop(conversation_id, None)
            self._authenticate(conn, (session.scram.user or "", session.db))
        return {"conversationId": conversation_id, "done": session.scram.authenticated,
                "payload": Binary(reply)}

    def speculative_start(self, conn: "Connection", spec: Any) -> dict[str, Any] | None:
        """Run saslStart for hello's ``speculativeAuthenticate``; the reply's
        ``speculativeAuthenticate`` value, or None to leave the field out. Never raises:
        a failed speculation must not fail the handshake."""
        try:
            if not isinstance(spec, Mapping) or spec.get("saslStart") != 1 or \
                    not isinstance(spec.get("db"), str):
                return None
            return self.sasl_start(conn, spec["db"], spec)
        except Exception:  # noqa: BLE001 - any failure just means "no speculation"
            return None

    @staticmethod
    def logout(conn: "Connection") -> None:
        conn.user = None
        conn.sasl.clear()

    @staticmethod
    def _authenticate(conn: "Connection", user: tuple[str, str]) -> None:
        if conn.user is not None and conn.user != user:
            raise CommandError(
                5626701, "Each client connection may only be authenticated once. Previously "
                         f"authenticated as: {conn.user[0]}@{conn.user[1]}")
        conn.user = user

    # ------------------------------------------------------------------------------ checks

    def connection_status(self, conn: "Connection", *,
                          show_privileges: bool = False) -> dict[str, Any]:
        roles = self._roles_of(conn)
        info: dict[str, Any] = {
            "authenticatedUsers": [{"user": conn.user[0], "db": conn.user[1]}]
            if conn.user else [],
            "authenticatedUserRoles": [role.to_document() for role in roles]}
        if show_privileges:
            info["authenticatedUserPrivileges"] = self.privileges_for(roles).to_documents()
        return {"authInfo": info}

    def check(self, ctx: "Context", command_name: str) -> None:
        """Raise Unauthorized (13) unless the connection may run this command."""
        if not self.config.auth:
            return
        spec = REGISTRY.get(command_name)
        if spec is not None and spec.no_auth:
            return
        if ctx.conn.user is None:
            raise CommandError(13, f"command {command_name} requires authentication")
        requirement = required_privileges(
            command_name, ctx.db, ctx.body, action=spec.action if spec else None,
            admin_only=spec.admin_only if spec else False, user=ctx.conn.user)
        if not self._satisfies(ctx.conn, requirement):
            body = dict(ctx.body)
            body.setdefault("$db", ctx.db)
            raise CommandError(
                13, f"not authorized on {ctx.db} to execute command {render_bson(body)}")

    def can_bypass_write_blocking(self, conn: "Connection") -> bool:
        """Whether this connection's writes go through ``setUserWriteBlockMode``.

        With auth on, only users holding ``bypassWriteBlockingMode`` (restore, root, __system)
        may. Without auth every client holds every privilege, this one included, whoever it
        authenticated as (SERVER-67545): only an authenticated deployment blocks anyone."""
        if not self.config.auth:
            return True
        return conn.user is not None and self._satisfies(conn, _BYPASS_WRITE_BLOCKING)

    def _roles_of(self, conn: "Connection") -> list[RoleName]:
        user = self._users.get((conn.user[1], conn.user[0])) if conn.user else None
        return list(user.roles) if user is not None else []

    def _satisfies(self, conn: "Connection", requirement: Requirement) -> bool:
        privileges = self.privileges_for(self._roles_of(conn))
        return any(privileges.allows_all(option) for option in requirement)


def _payload(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CommandError(14, "SASL payload must be BinData or a string")


# bson.Regex keeps Python ``re`` flag bits; the server prints its option letters.
_REGEX_FLAGS = (("i", re.IGNORECASE), ("l", re.LOCALE), ("m", re.MULTILINE), ("s", re.DOTALL),
                ("u", re.UNICODE), ("x", re.VERBOSE))


def render_bson(value: Any) -> str:
    """A value in the server's ``BSONObj::toString`` style, as quoted in Unauthorized
    messages (``{ find: "c", filter: {}, $db: "test" }``)."""
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k}: {render_bson(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[ " + ", ".join(render_bson(v) for v in value) + " ]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Binary):
        if value.subtype == UUID_SUBTYPE and len(value) == 16:
            return f'UUID("{uuid.UUID(bytes=bytes(value))}")'
        return f"BinData({value.subtype}, {bytes(value).hex().upper()})"
    if isinstance(value, (bytes, bytearray)):
        return f"BinData(0, {bytes(value).hex().upper()})"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, Int64)):
        return str(int(value))
    if isinstance(value, ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, Timestamp):
        return f"Timestamp({value.time}, {value.inc})"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return f"new Date({int(value.timestamp() * 1000)})"
    if isinstance(value, Decimal128):
        return f'NumberDecimal("{value}")'
    if isinstance(value, Regex):
        flags = "".join(letter for letter, bit in _REGEX_FLAGS if value.flags & bit)
        return f"/{value.pattern}/{flags}"
    if isinstance(value, uuid.UUID):
        return f'UUID("{value}")'
    if isinstance(value, MinKey):
        return "MinKey"
    if isinstance(value, MaxKey):
        return "MaxKey"
    return str(value)
