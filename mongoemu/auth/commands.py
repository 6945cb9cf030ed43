"""Authentication and user/role management commands.

They all work with auth off as well (a real server stores users without ``--auth``); the
handlers reach the store as ``ctx.server.auth_store``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from mongoemu.auth.roles import Privilege, RoleName
from mongoemu.auth.scram import auth_failed
from mongoemu.commands.registry import Reply, command
from mongoemu.errors import CommandError

if TYPE_CHECKING:
    from mongoemu.auth.manager import AuthManager
    from mongoemu.context import Context


def _store(ctx: "Context") -> "AuthManager":
    return ctx.server.auth_store


_BSON_TYPE_NAMES = {bool: "bool", int: "int", float: "double", str: "string", dict: "object",
                    list: "array", type(None): "null"}


def _type_name(value: Any) -> str:
    return _BSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _wrong_type(ctx: "Context", field: str, value: Any, expected: str) -> CommandError:
    return CommandError(14, f"BSON field '{ctx.name}.{field}' is the wrong type "
                            f"'{_type_name(value)}', expected type '{expected}'")


def _missing(ctx: "Context", field: str) -> CommandError:
    return CommandError(40414, f"BSON field '{ctx.name}.{field}' is missing but a required field")


def _name_argument(ctx: "Context") -> str:
    value = ctx.body.get(ctx.name)
    if not isinstance(value, str):
        raise _wrong_type(ctx, ctx.name, value, "string")
    return value


def _role_names(ctx: "Context", field: str) -> list[RoleName]:
    """``roles: ["name", {role, db}, ...]``; a bare name means a role of the command's db."""
    if field not in ctx.body:
        raise _missing(ctx, field)
    value = ctx.body[field]
    if not isinstance(value, list):
        raise _wrong_type(ctx, field, value, "array")
    names = []
    for item in value:
        if isinstance(item, str):
            names.append(RoleName(item, ctx.db))
        elif isinstance(item, Mapping) and isinstance(item.get("role"), str) and \
                isinstance(item.get("db"), str):
            names.append(RoleName(item["role"], item["db"]))
        else:
            raise CommandError(2, "Role names must be either strings or objects")
    return names


def _privileges(ctx: "Context", field: str) -> list[Privilege]:
    if field not in ctx.body:
        raise _missing(ctx, field)
    value = ctx.body[field]
    if not isinstance(value, list):
        raise _wrong_type(ctx, field, value, "array")
    return [Privilege.from_document(item) for item in value]


def _optional_document(ctx: "Context", field: str) -> dict[str, Any] | None:
    value = ctx.body.get(field)
    if value is not None and not isinstance(value, Mapping):
        raise _wrong_type(ctx, field, value, "object")
    return dict(value) if value is not None else None


def _mechanisms(ctx: "Context") -> list[str] | None:
    value = ctx.body.get("mechanisms")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise _wrong_type(ctx, "mechanisms", value, "array")
    return value


def _password(ctx: "Context") -> str | None:
    if "pwd" not in ctx.body:
        return None
    value = ctx.body["pwd"]
    if not isinstance(value, str):
        raise _wrong_type(ctx, "pwd", value, "string")
    return value


def _is_one(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1


# ------------------------------------------------------------------------------- authentication


@command("saslStart", no_auth=True)
def sasl_start(ctx: "Context") -> Reply:
    return _store(ctx).sasl_start(ctx.conn, ctx.db, ctx.body)


@command("saslContinue", no_auth=True)
def sasl_continue(ctx: "Context") -> Reply:
    return _store(ctx).sasl_continue(ctx.conn, ctx.body)


@command("authenticate", no_auth=True)
def authenticate(ctx: "Context") -> Reply:
    # Only MONGODB-X509 uses this command, and the emulator has no TLS client certificates.
    raise auth_failed()


@command("logout", no_auth=True)
def logout(ctx: "Context") -> Reply:
    _store(ctx).logout(ctx.conn)
    return {}


@command("connectionStatus", no_auth=True)
def connection_status(ctx: "Context") -> Reply:
    return _store(ctx).connection_status(ctx.conn,
                                         show_privileges=bool(ctx.get("showPrivileges")))


# ------------------------------------------------------------------------------- users


@command("createUser")
def create_user(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    password = _password(ctx)
    if password is None:
        raise CommandError(2, "Must provide a 'pwd' field for all user documents, except "
                              "those with '$external' as the user's source db")
    _store(ctx).create_user(ctx.db, name, password, _role_names(ctx, "roles"),
                            mechanisms=_mechanisms(ctx),
                            custom_data=_optional_document(ctx, "customData"))
    return {}


@command("updateUser")
def update_user(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    if not any(field in ctx.body for field in ("pwd", "roles", "customData", "mechanisms")):
        raise CommandError(2, "Must specify at least one field to update in updateUser")
    _store(ctx).update_user(ctx.db, name, password=_password(ctx),
                            roles=_role_names(ctx, "roles") if "roles" in ctx.body
                            else None,
                            mechanisms=_mechanisms(ctx),
                            custom_data=_optional_document(ctx, "customData"))
    return {}


@command("dropUser")
def drop_user(ctx: "Context") -> Reply:
    _store(ctx).drop_user(ctx.db, _name_argument(ctx))
    return {}


@command("dropAllUsersFromDatabase")
def drop_all_users_from_database(ctx: "Context") -> Reply:
    return {"n": _store(ctx).drop_all_users(ctx.db)}


@command("grantRolesToUser")
def grant_roles_to_user(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).grant_roles_to_user(ctx.db, name, _role_names(ctx, "roles"))
    return {}


@command("revokeRolesFromUser")
def revoke_roles_from_user(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).revoke_roles_from_user(ctx.db, name, _role_names(ctx, "roles"))
    return {}


@command("usersInfo")
def users_info(ctx: "Context") -> Reply:
    """``usersInfo: 1 | "name" | {user, db} | [...] | {forAllDBs: true}``; unknown users are
    simply absent from the answer."""
    store = _store(ctx)
    value = ctx.body.get("usersInfo")
    if isinstance(value, Mapping) and value.get("forAllDBs") is True:
        wanted = [(user.db, user.name) for user in store.users()]
    elif _is_one(value):
        wanted = [(user.db, user.name) for user in store.users(ctx.db)]
    else:
        wanted = []
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                wanted.append((ctx.db, item))
            elif isinstance(item, Mapping) and isinstance(item.get("user"), str) and \
                    isinstance(item.get("db"), str):
                wanted.append((item["db"], item["user"]))
            else:
                raise CommandError(2, "User name must be either a string or an object")
    show_credentials = bool(ctx.get("showCredentials"))
    show_privileges = bool(ctx.get("showPrivileges"))
    users = [store.user_info(db, name, show_credentials=show_credentials,
                             show_privileges=show_privileges) for db, name in wanted]
    return {"users": [user for user in users if user is not None]}


# ------------------------------------------------------------------------------- roles


@command("createRole")
def create_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).create_role(ctx.db, name, _privileges(ctx, "privileges"),
                            _role_names(ctx, "roles"))
    return {}


@command("updateRole")
def update_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    if "privileges" not in ctx.body and "roles" not in ctx.body:
        raise CommandError(2, "Must specify at least one field to update in updateRole")
    _store(ctx).update_role(ctx.db, name,
                            privileges=_privileges(ctx, "privileges")
                            if "privileges" in ctx.body else None,
                            roles=_role_names(ctx, "roles") if "roles" in ctx.body else None)
    return {}


@command("dropRole")
def drop_role(ctx: "Context") -> Reply:
    _store(ctx).drop_role(ctx.db, _name_argument(ctx))
    return {}


@command("dropAllRolesFromDatabase")
def drop_all_roles_from_database(ctx: "Context") -> Reply:
    return {"n": _store(ctx).drop_all_roles(ctx.db)}


@command("grantPrivilegesToRole")
def grant_privileges_to_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).grant_privileges_to_role(ctx.db, name, _privileges(ctx, "privileges"))
    return {}


@command("revokePrivilegesFromRole")
def revoke_privileges_from_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).revoke_privileges_from_role(ctx.db, name, _privileges(ctx, "privileges"))
    return {}


@command("grantRolesToRole")
def grant_roles_to_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).grant_roles_to_role(ctx.db, name, _role_names(ctx, "roles"))
    return {}


@command("revokeRolesFromRole")
def revoke_roles_from_role(ctx: "Context") -> Reply:
    name = _name_argument(ctx)
    _store(ctx).revoke_roles_from_role(ctx.db, name, _role_names(ctx, "roles"))
    return {}


@command("rolesInfo")
def roles_info(ctx: "Context") -> Reply:
    """``rolesInfo: 1 | "name" | {role, db} | [...]``, ``showPrivileges``,
    ``showBuiltinRoles`` (with 1); unknown roles are simply absent from the answer."""
    store = _store(ctx)
    value = ctx.body.get("rolesInfo")
    if _is_one(value):
        wanted = store.role_names(ctx.db, include_builtin=bool(ctx.get("showBuiltinRoles")))
    else:
        wanted = []
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                wanted.append(RoleName(item, ctx.db))
            elif isinstance(item, Mapping) and isinstance(item.get("role"), str) and \
                    isinstance(item.get("db"), str):
                wanted.append(RoleName(item["role"], item["db"]))
            else:
                raise CommandError(2, "Role names must be either strings or objects")
    show_privileges = bool(ctx.get("showPrivileges"))
    roles = [store.role_info(role, show_privileges=show_privileges) for role in wanted]
    return {"roles": [role for role in roles if role is not None]}
