"""Unit tests of mongoemu.auth: the SCRAM server (against RFC test vectors, an independent
client written from RFC 5802/7677, and PyMongo's own client code), role resolution, the
authorization check and the user/role management commands."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from types import SimpleNamespace
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.auth_shared import MongoCredential, _Cache, _ScramContext
from pymongo.errors import OperationFailure
from pymongo.hello import Hello
from pymongo.synchronous.auth import authenticate as pymongo_authenticate

import mongoemu.auth.commands  # noqa: F401 - registers the handlers
from mongoemu.auth.manager import CONVERSATION_ID, AuthManager, render_bson
from mongoemu.auth.roles import (
    ANY_NORMAL_RESOURCE, CLUSTER_RESOURCE, Privilege, PrivilegeSet, Resource, RoleName,
    builtin_privileges, required_privileges)
from mongoemu.auth.scram import (
    SCRAM_SHA_1, SCRAM_SHA_256, ScramServer, derive_credential, make_credential, scram_secret)
from mongoemu.commands.registry import REGISTRY, command
from mongoemu.config import EmulatorConfig
from mongoemu.context import Connection, Context
from mongoemu.errors import CommandError

# ---------------------------------------------------------------------------------- harness


def make_store(*, auth: bool = True) -> AuthManager:
    config = EmulatorConfig(auth=auth, root_user="root" if auth else None,
                            root_password="rootpw" if auth else None)
    store = AuthManager(config)
    if auth:
        store.seed_root("root", "rootpw")
    return store


_conn_ids = iter(range(1, 1_000_000))


def new_conn() -> Connection:
    return Connection(id=next(_conn_ids), peer="127.0.0.1:50000")


def make_ctx(store: AuthManager, db: str, body: dict[str, Any],
             conn: Connection | None = None) -> Context:
    server: Any = SimpleNamespace(auth_store=store, config=store.config)
    return Context(server, conn or new_conn(), db, body, next(iter(body)))


def run(store: AuthManager, db: str, body: dict[str, Any],
        conn: Connection | None = None) -> dict[str, Any]:
    """What the dispatcher does: authorization check, then the handler."""
    ctx = make_ctx(store, db, body, conn)
    store.check(ctx, ctx.name)
    return REGISTRY[ctx.name].handler(ctx)  # type: ignore[return-value]


def allowed(store: AuthManager, conn: Connection, db: str, body: dict[str, Any]) -> bool:
    try:
        store.check(make_ctx(store, db, body, conn), next(iter(body)))
    except CommandError as exc:
        assert exc.code == 13
        return False
    return True


def wire(doc: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through BSON, as every request and reply would on the socket."""
    return bson.decode(bson.encode(doc))


class PyMongoConnection:
    """The slice of pymongo's pool Connection that pymongo.synchronous.auth uses, wired to
    the emulator's handlers (hello answers saslSupportedMechs the way the server will)."""

    def __init__(self, store: AuthManager, conn: Connection, *, auth_ctx: Any = None,
                 negotiated_mechs: list[str] | None = None) -> None:
        self.store = store
        self.conn = conn
        self.auth_ctx = auth_ctx
        self.negotiated_mechs = negotiated_mechs
        self.sent: list[str] = []

    def hello_cmd(self) -> dict[str, Any]:
        return {"hello": 1}

    def command(self, dbname: str, spec: Any, **_: Any) -> dict[str, Any]:
        body = wire(dict(spec))
        name = next(iter(body))
        self.sent.append(name)
        if name == "hello":
            reply: dict[str, Any] = {"ok": 1.0}
            mechs = self.store.supported_mechanisms(body.get("saslSupportedMechs"))
            if mechs is not None:
                reply["saslSupportedMechs"] = mechs
            return wire(reply)
        try:
            reply = run(self.store, dbname, body, self.conn)
        except CommandError as exc:
            raise OperationFailure(exc.errmsg, exc.code, exc.to_reply()) from None
        return wire({**reply, "ok": 1.0})


def credential(user: str, password: str, mechanism: str = "DEFAULT",
               source: str = "admin") -> MongoCredential:
    return MongoCredential(mechanism, source, user, password, None, _Cache())


def pymongo_login(store: AuthManager, user: str, password: str, *, mechanism: str = "DEFAULT",
                  source: str = "admin", conn: Connection | None = None) -> Connection:
    conn = conn or new_conn()
    pymongo_authenticate(credential(user, password, mechanism, source),
                         PyMongoConnection(store, conn))
    return conn


def login(store: AuthManager, user: str, password: str, db: str = "admin") -> Connection:
    """Authenticate a fresh connection through the full (non-speculative) PyMongo flow."""
    conn = pymongo_login(store, user, password, source=db)
    assert conn.user == (user, db)
    return conn


# Independent client side, straight from RFC 5802 §3 (not sharing code with the server).

def client_proof(mechanism: str, secret: bytes, client_first_bare: str, server_first: str,
                 without_proof: str) -> tuple[str, str]:
    """(base64 ClientProof, expected base64 ServerSignature)."""
    digest = hashlib.sha256 if mechanism == SCRAM_SHA_256 else hashlib.sha1
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(digest().name, secret, base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = digest(client_key).digest()
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    server_signature = hmac.new(server_key, auth_message, digest).digest()
    return base64.b64encode(proof).decode(), base64.b64encode(server_signature).decode()


def escape_name(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


def independent_exchange(server: ScramServer, mechanism: str, user: str, secret: bytes,
                         *, tamper: Any = None) -> bytes:
    bare = f"n={escape_name(user)},r=Zm9vYmFyYmF6cXV4cXV1eA"
    server_first = server.start(f"n,,{bare}".encode()).decode()
    nonce = dict(item.split("=", 1) for item in server_first.split(","))["r"]
    without_proof = f"c=biws,r={nonce}"
    proof, expected = client_proof(mechanism, secret, bare, server_first, without_proof)
    final = f"{without_proof},p={proof}"
    if tamper is not None:
        final = tamper(final)
    reply = server.continue_(final.encode())
    assert reply == f"v={expected}".encode()
    return reply


# ---------------------------------------------------------------------------------- SCRAM


def test_rfc7677_sha256_vector() -> None:
    cred = derive_credential(SCRAM_SHA_256, b"pencil",
                             base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    server = ScramServer(SCRAM_SHA_256, lambda name: cred if name == "user" else None,
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = server.continue_(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                             b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    # Without skipEmptyExchange the client still owes the empty message.
    assert not server.authenticated
    assert server.continue_(b"") == b""
    assert server.authenticated and server.user == "user"


def test_rfc5802_sha1_vector() -> None:
    cred = derive_credential(SCRAM_SHA_1, b"pencil", base64.b64decode("QSXCR+Q6sek8bf92"), 4096)
    server = ScramServer(SCRAM_SHA_1, lambda name: cred, server_nonce="3rfcNHYJY1ZVvWVs7j",
                         skip_empty_exchange=True)
    first = server.start(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    assert first == b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    final = server.continue_(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                             b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert final == b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    assert server.authenticated


def test_mongodb_sha1_secret_is_md5_prehash() -> None:
    expected = hashlib.md5(b"alice:mongo:secret").hexdigest().encode()
    assert scram_secret(SCRAM_SHA_1, "alice", "secret") == expected
    # SHA-256 SASLprep's the password (soft hyphen maps to nothing).
    assert scram_secret(SCRAM_SHA_256, "alice", "I\u00adX") == b"IX"


def test_credential_document_shape() -> None:
    cred = make_credential(SCRAM_SHA_256, "u", "p")
    doc = cred.to_document()
    assert doc["iterationCount"] == 15000
    assert len(base64.b64decode(doc["salt"])) == 28
    assert len(base64.b64decode(doc["storedKey"])) == 32
    assert make_credential(SCRAM_SHA_1, "u", "p").iteration_count == 10000


def _server_for(password: str = "pw", mechanism: str = SCRAM_SHA_256,
                **kwargs: Any) -> tuple[ScramServer, bytes]:
    secret = password.encode()
    cred = derive_credential(mechanism, secret, b"0123456789abcdef", 4096)
    return ScramServer(mechanism, lambda name: cred if name == "u" else None, **kwargs), secret


@pytest.mark.parametrize("client_first", [
    b"n,,n=nobody,r=abc",  # unknown user
    b"p=tls-unique,,n=u,r=abc",  # channel binding
    b"n,a=admin,n=u,r=abc",  # authorization identity
    b"n,,m=ext,n=u,r=abc",  # mandatory extension
    b"n,,n=u",  # no nonce
    b"n,,n=u,r=",  # empty nonce
    b"n,,n=u=2X,r=abc",  # bad saslname escape
    b"\xff\xfe",  # not UTF-8
    b"",
])
def test_bad_client_first_fails_uniformly(client_first: bytes) -> None:
    server, _ = _server_for()
    with pytest.raises(CommandError) as info:
        server.start(client_first)
    assert (info.value.code, info.value.errmsg) == (18, "Authentication failed.")
    # A failed conversation is dead.
    with pytest.raises(CommandError):
        server.continue_(b"c=biws,r=x,p=AAAA")


@pytest.mark.parametrize("tamper", [
    lambda final: final.replace("c=biws", "c=eSws"),  # channel binding data differs
    lambda final: final.replace(",r=", ",r=X"),  # nonce differs
    lambda final: final[: final.rindex(",p=")],  # no proof
    lambda final: final[:-4] + ("AAE=" if final.endswith("AAA=") else "AAA="),  # wrong proof
    lambda final: final + "!!",  # proof not base64
    lambda final: final[: final.rindex(",p=") + 3] + "AAAA",  # proof of the wrong length
])
def test_bad_client_final_fails_uniformly(tamper: Any) -> None:
    server, secret = _server_for()
    with pytest.raises(CommandError) as info:
        independent_exchange(server, SCRAM_SHA_256, "u", secret, tamper=tamper)
    assert (info.value.code, info.value.errmsg) == (18, "Authentication failed.")
    assert not server.authenticated and server.user is None


def test_wrong_password_fails() -> None:
    server, _ = _server_for("right")
    with pytest.raises(CommandError) as info:
        independent_exchange(server, SCRAM_SHA_256, "u", b"wrong")
    assert info.value.code == 18


def test_non_empty_third_message_fails() -> None:
    server, secret = _server_for()
    independent_exchange(server, SCRAM_SHA_256, "u", secret)
    with pytest.raises(CommandError):
        server.continue_(b"junk")
    assert not server.authenticated


@settings(max_examples=40, deadline=None)
@given(user=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                    max_size=12),
       secret=st.binary(min_size=1, max_size=24),
       mechanism=st.sampled_from([SCRAM_SHA_1, SCRAM_SHA_256]),
       skip=st.booleans())
def test_independent_client_roundtrip(user: str, secret: bytes, mechanism: str,
                                      skip: bool) -> None:
    cred = derive_credential(mechanism, secret, b"salt-salt-salt!!", 4096)
    server = ScramServer(mechanism, lambda name: cred if name == user else None,
                         skip_empty_exchange=skip)
    independent_exchange(server, mechanism, user, secret)
    if not skip:
        assert server.continue_(b"") == b""
    assert server.authenticated and server.user == user


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_the_proof_fails(data: st.DataObject) -> None:
    server, secret = _server_for()

    def flip(final: str) -> str:
        head, proof = final.rsplit(",p=", 1)
        raw = bytearray(base64.b64decode(proof))
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
        return f"{head},p={base64.b64encode(bytes(raw)).decode()}"

    with pytest.raises(CommandError) as info:
        independent_exchange(server, SCRAM_SHA_256, "u", secret, tamper=flip)
    assert info.value.code == 18


# ---------------------------------------------------------------------------------- PyMongo client


@pytest.mark.parametrize("mechanism", ["DEFAULT", SCRAM_SHA_256, SCRAM_SHA_1])
def test_pymongo_client_authenticates(mechanism: str) -> None:
    store = make_store()
    conn = pymongo_login(store, "root", "rootpw", mechanism=mechanism)
    assert conn.user == ("root", "admin")
    assert conn.sasl == {}


def test_pymongo_default_negotiates_sha1_for_sha1_only_user() -> None:
    store = make_store()
    store.create_user("test", "old", "pw", [RoleName("read", "test")], mechanisms=[SCRAM_SHA_1])
    assert store.supported_mechanisms("test.old") == [SCRAM_SHA_1]
    assert pymongo_login(store, "old", "pw", source="test").user == ("old", "test")
    with pytest.raises(OperationFailure) as info:
        pymongo_login(store, "old", "pw", mechanism=SCRAM_SHA_256, source="test")
    assert info.value.code == 18


@pytest.mark.parametrize("user,password", [
    ("a,b=c", "p,w=d"),  # saslname escaping
    ("ünï", "pässwörd"),
    ("plain", "I\u00adX"),  # SASLprep: soft hyphen is removed on both sides
])
def test_pymongo_names_and_passwords(user: str, password: str) -> None:
    store = make_store()
    store.create_user("admin", user, password, [])
    for mechanism in (SCRAM_SHA_1, SCRAM_SHA_256):
        assert pymongo_login(store, user, password, mechanism=mechanism).user == (user, "admin")


def test_pymongo_wrong_password_and_unknown_user_look_the_same() -> None:
    store = make_store()
    for user, password in (("root", "nope"), ("ghost", "rootpw")):
        with pytest.raises(OperationFailure) as info:
            pymongo_login(store, user, password, mechanism=SCRAM_SHA_256)
        assert (info.value.code, str(info.value.details["errmsg"])) == (
            18, "Authentication failed.")


def test_pymongo_speculative_authentication() -> None:
    store = make_store()
    creds = credential("root", "rootpw")
    auth_ctx = _ScramContext(creds, ("localhost", 27017), SCRAM_SHA_256)
    conn = new_conn()
    # The handshake: hello carries speculativeAuthenticate; the reply carries the first step.
    hello_request = wire({"hello": 1, "saslSupportedMechs": "admin.root",
                          "speculativeAuthenticate": auth_ctx.speculate_command()})
    speculative = store.speculative_start(conn, hello_request["speculativeAuthenticate"])
    assert speculative is not None
    assert speculative["conversationId"] == CONVERSATION_ID and speculative["done"] is False
    hello_reply = wire({"ok": 1.0, "speculativeAuthenticate": speculative,
                        "saslSupportedMechs": store.supported_mechanisms("admin.root")})
    auth_ctx.parse_response(Hello(hello_reply))
    pool_conn = PyMongoConnection(store, conn, auth_ctx=auth_ctx,
                                  negotiated_mechs=hello_reply["saslSupportedMechs"])
    pymongo_authenticate(creds, pool_conn)
    assert pool_conn.sent == ["saslContinue"]  # skipEmptyExchange: one round trip only
    assert conn.user == ("root", "admin")


@pytest.mark.parametrize("spec", [
    None, "x", {}, {"authenticate": 1, "mechanism": "MONGODB-X509"},
    {"saslStart": 1, "mechanism": "PLAIN", "payload": b"\x00u\x00p", "db": "admin"},
    {"saslStart": 1, "mechanism": SCRAM_SHA_256, "payload": b"n,,n=ghost,r=abc", "db": "admin"},
    {"saslStart": 1, "mechanism": SCRAM_SHA_256, "payload": 42, "db": "admin"},
    {"saslStart": 1, "mechanism": SCRAM_SHA_256, "payload": b"n,,n=root,r=abc"},  # no db
])
def test_speculative_start_never_raises(spec: Any) -> None:
    store = make_store()
    conn = new_conn()
    assert store.speculative_start(conn, spec) is None
    assert conn.sasl == {} and conn.user is None


def test_supported_mechanisms() -> None:
    store = make_store()
    assert store.supported_mechanisms("admin.root") == [SCRAM_SHA_1, SCRAM_SHA_256]
    assert store.supported_mechanisms("admin.ghost") is None
    assert store.supported_mechanisms("root") is None
    store.create_user("test", "dotted.name", "pw", [])
    assert store.supported_mechanisms("test.dotted.name") == [SCRAM_SHA_1, SCRAM_SHA_256]


def test_sasl_command_errors() -> None:
    store = make_store()
    conn = new_conn()
    with pytest.raises(CommandError) as info:
        run(store, "admin", {"saslStart": 1, "mechanism": "PLAIN", "payload": b""}, conn)
    assert info.value.code == 334
    with pytest.raises(CommandError) as info:
        run(store, "admin", {"saslContinue": 1, "conversationId": 1, "payload": b""}, conn)
    assert (info.value.code, info.value.code_name) == (17, "ProtocolError")
    with pytest.raises(CommandError) as info:
        run(store, "admin", {"authenticate": 1, "mechanism": "MONGODB-X509"}, conn)
    assert (info.value.code, info.value.errmsg) == (18, "Authentication failed.")


def test_failed_continue_drops_the_conversation() -> None:
    store = make_store()
    conn = new_conn()
    reply = run(store, "admin", {"saslStart": 1, "mechanism": SCRAM_SHA_256,
                                 "payload": Binary(b"n,,n=root,r=abcdef")}, conn)
    assert reply["conversationId"] == 1 and reply["done"] is False
    with pytest.raises(CommandError):
        run(store, "admin", {"saslContinue": 1, "conversationId": 1,
                             "payload": b"c=biws,r=wrong,p=AAAA"}, conn)
    assert conn.sasl == {} and conn.user is None


def test_one_user_per_connection() -> None:
    store = make_store()
    store.create_user("admin", "other", "pw", [])
    conn = login(store, "root", "rootpw")
    pymongo_login(store, "root", "rootpw", conn=conn)  # the same user again is fine
    with pytest.raises(OperationFailure) as info:
        pymongo_login(store, "other", "pw", conn=conn)
    assert info.value.code == 5626701
    assert "Previously authenticated as: root@admin" in str(info.value.details["errmsg"])
    assert conn.user == ("root", "admin")


def test_logout_and_connection_status() -> None:
    store = make_store()
    conn = login(store, "root", "rootpw")
    status = run(store, "admin", {"connectionStatus": 1}, conn)
    assert status == {"authInfo": {"authenticatedUsers": [{"user": "root", "db": "admin"}],
                                   "authenticatedUserRoles": [{"role": "root", "db": "admin"}]}}
    privileges = run(store, "admin", {"connectionStatus": 1, "showPrivileges": True},
                     conn)["authInfo"]["authenticatedUserPrivileges"]
    cluster = next(p for p in privileges if p["resource"] == {"cluster": True})
    assert {"serverStatus", "bypassWriteBlockingMode"} <= set(cluster["actions"])
    assert run(store, "admin", {"logout": 1}, conn) == {}
    assert conn.user is None
    assert run(store, "admin", {"connectionStatus": 1, "showPrivileges": True}, conn) == {
        "authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": [],
                     "authenticatedUserPrivileges": []}}


def test_password_change_takes_effect() -> None:
    store = make_store()
    root = login(store, "root", "rootpw")
    run(store, "test", {"createUser": "app", "pwd": "one", "roles": ["readWrite"]}, root)
    login(store, "app", "one", "test")
    run(store, "test", {"updateUser": "app", "pwd": "two"}, root)
    login(store, "app", "two", "test")
    with pytest.raises(OperationFailure):
        pymongo_login(store, "app", "one", source="test")


# ---------------------------------------------------------------------------------- roles


def privileges(*roles: RoleName) -> PrivilegeSet:
    return make_store(auth=False).privileges_for(roles)


def can(privilege_set: PrivilegeSet, resource: Resource, *actions: str) -> bool:
    return privilege_set.allows(Privilege(resource, frozenset(actions)))


def ns(namespace: str) -> Resource:
    db, _, coll = namespace.partition(".")
    return Resource.namespace(db, coll)


def test_read_and_read_write_are_scoped_to_their_database() -> None:
    read = privileges(RoleName("read", "test"))
    assert can(read, ns("test.c"), "find", "changeStream", "listIndexes")
    assert can(read, Resource.database("test"), "listCollections")
    assert not can(read, ns("test.c"), "insert")
    assert not can(read, ns("other.c"), "find")
    assert can(read, ns("test.system.js"), "find")
    assert not can(read, ns("test.system.views"), "find")
    read_write = privileges(RoleName("readWrite", "test"))
    assert can(read_write, ns("test.c"), "insert", "update", "remove", "dropCollection",
               "createIndex", "renameCollectionSameDB")
    assert not can(read_write, Resource.database("test"), "dropDatabase")


def test_any_database_roles_skip_local_config_and_system_collections() -> None:
    read_any = privileges(RoleName("readAnyDatabase", "admin"))
    assert can(read_any, ns("x.c"), "find") and can(read_any, ns("y.c"), "changeStream")
    assert can(read_any, CLUSTER_RESOURCE, "listDatabases")
    assert can(read_any, ANY_NORMAL_RESOURCE, "changeStream", "find")
    assert not can(read_any, ns("config.settings"), "find")
    assert not can(read_any, ns("local.oplog.rs"), "find")
    assert not can(read_any, ns("x.system.profile"), "find")
    assert can(read_any, ns("x.system.buckets.weather"), "find")
    # readAnyDatabase exists only on admin.
    assert make_store(auth=False).privileges_for([RoleName("readAnyDatabase", "x")]) \
        .privileges() == []


def test_cluster_monitor_and_cluster_manager() -> None:
    monitor = privileges(RoleName("clusterMonitor", "admin"))
    for action in ("serverStatus", "replSetGetStatus", "replSetGetConfig", "listShards",
                   "getShardMap", "hostInfo", "getDefaultRWConcern", "listDatabases"):
        assert can(monitor, CLUSTER_RESOURCE, action)
    assert can(monitor, ns("x.c"), "collStats", "indexStats")
    assert can(monitor, ns("config.shards"), "find")  # read@config
    assert not can(monitor, CLUSTER_RESOURCE, "appendOplogNote")
    manager = privileges(RoleName("clusterManager", "admin"))
    assert can(manager, CLUSTER_RESOURCE, "appendOplogNote")
    assert can(manager, Resource.database("x"), "enableSharding")
    assert can(manager, ns("config.settings"), "update", "find")  # balancer control
    assert not can(manager, CLUSTER_RESOURCE, "serverStatus")


def test_write_blocking_actions() -> None:
    backup = privileges(RoleName("backup", "admin"))
    restore = privileges(RoleName("restore", "admin"))
    root = privileges(RoleName("root", "admin"))
    assert can(backup, CLUSTER_RESOURCE, "setUserWriteBlockMode")
    assert not can(backup, CLUSTER_RESOURCE, "bypassWriteBlockingMode")
    assert can(restore, CLUSTER_RESOURCE, "setUserWriteBlockMode", "bypassWriteBlockingMode")
    assert can(root, CLUSTER_RESOURCE, "setUserWriteBlockMode", "bypassWriteBlockingMode")
    assert can(restore, ns("x.c"), "bypassDocumentValidation", "insert", "createIndex")
    assert can(restore, ns("x.system.views"), "dropCollection")
    assert can(backup, ns("admin.system.version"), "find")


def test_root_and_system() -> None:
    root = privileges(RoleName("root", "admin"))
    assert can(root, ns("x.c"), "find", "insert", "dropCollection", "collMod")
    assert can(root, Resource.database("x"), "dropDatabase", "createUser")
    assert can(root, ns("admin.system.users"), "find")
    assert can(root, CLUSTER_RESOURCE, "serverStatus", "appendOplogNote", "listShards")
    system = privileges(RoleName("__system", "admin"))
    assert can(system, ns("local.oplog.rs"), "insert", "someFutureAction")
    assert builtin_privileges(RoleName("__system", "admin"))[0].to_document() == {
        "resource": {"anyResource": True}, "actions": ["anyAction"]}


def test_db_owner_combines_roles() -> None:
    owner = privileges(RoleName("dbOwner", "test"))
    assert can(owner, ns("test.c"), "insert", "collMod", "bypassDocumentValidation")
    assert can(owner, Resource.database("test"), "createUser", "dropDatabase")
    assert not can(owner, ns("other.c"), "find")


def test_user_defined_roles_resolve_transitively() -> None:
    store = make_store(auth=False)
    store.create_role("test", "c", [Privilege(ns("test.b"), frozenset({"insert"}))], [])
    store.create_role("test", "b", [], [RoleName("c", "test")])
    store.create_role("test", "a", [Privilege(ns("test.a"), frozenset({"find"}))],
                      [RoleName("b", "test"), RoleName("read", "test")])
    held = store.privileges_for([RoleName("a", "test")])
    assert can(held, ns("test.b"), "insert") and can(held, ns("test.a"), "find")
    assert can(held, ns("test.other"), "find")  # via read@test
    assert store.expand_roles([RoleName("a", "test")]) == [
        RoleName("a", "test"), RoleName("b", "test"), RoleName("read", "test"),
        RoleName("c", "test")]
    store.drop_role("test", "c")
    assert store.role_info(RoleName("b", "test"))["roles"] == []
    assert not can(store.privileges_for([RoleName("a", "test")]), ns("test.b"), "insert")


def test_role_cycles_and_scope_are_rejected() -> None:
    store = make_store(auth=False)
    store.create_role("test", "a", [], [])
    store.create_role("test", "b", [], [RoleName("a", "test")])
    with pytest.raises(CommandError) as info:
        store.grant_roles_to_role("test", "a", [RoleName("b", "test")])
    assert info.value.code == 70 and "cycle" in info.value.errmsg
    with pytest.raises(CommandError) as info:
        store.create_role("test", "c", [Privilege(CLUSTER_RESOURCE, frozenset({"top"}))], [])
    assert info.value.code == 70
    with pytest.raises(CommandError) as info:
        store.create_role("test", "d", [], [RoleName("read", "other")])
    assert info.value.code == 70
    # admin roles may do both.
    store.create_role("admin", "ops", [Privilege(CLUSTER_RESOURCE, frozenset({"top"}))],
                      [RoleName("read", "other")])
    with pytest.raises(CommandError) as info:
        store.grant_privileges_to_role("test", "read", [])
    assert info.value.code == 70


# ---------------------------------------------------------------------------------- requirements


def test_required_privileges_for_common_commands() -> None:
    def only(name: str, db: str, body: dict[str, Any]) -> list[Privilege]:
        requirement = required_privileges(name, db, body)
        assert len(requirement) == 1
        return requirement[0]

    assert only("find", "d", {"find": "c"}) == [Privilege(ns("d.c"), frozenset({"find"}))]
    assert only("serverStatus", "d", {"serverStatus": 1}) == [
        Privilege(CLUSTER_RESOURCE, frozenset({"serverStatus"}))]
    assert only("listCollections", "d", {"listCollections": 1}) == [
        Privilege(Resource.database("d"), frozenset({"listCollections"}))]
    assert only("aggregate", "d", {"aggregate": "c", "pipeline": [{"$changeStream": {}}]}) == [
        Privilege(ns("d.c"), frozenset({"changeStream", "find"}))]
    assert only("aggregate", "admin", {"aggregate": 1, "pipeline": [
        {"$changeStream": {"allChangesForCluster": True}}]}) == [
        Privilege(ANY_NORMAL_RESOURCE, frozenset({"changeStream", "find"}))]
    assert only("aggregate", "d", {"aggregate": "c", "pipeline": [
        {"$lookup": {"from": "o", "as": "x", "pipeline": [{"$unionWith": "u"}]}},
        {"$out": {"db": "e", "coll": "t"}}]}) == [
        Privilege(ns("d.c"), frozenset({"find"})), Privilege(ns("d.o"), frozenset({"find"})),
        Privilege(ns("d.u"), frozenset({"find"})),
        Privilege(ns("e.t"), frozenset({"insert", "remove"}))]
    assert only("update", "d", {"update": "c", "updates": [{"q": {}, "u": {}, "upsert": True}],
                                "bypassDocumentValidation": True}) == [
        Privilege(ns("d.c"), frozenset({"update", "insert", "bypassDocumentValidation"}))]
    assert only("explain", "d", {"explain": {"count": "c"}}) == [
        Privilege(ns("d.c"), frozenset({"find"}))]
    assert only("shardCollection", "admin", {"shardCollection": "d.c", "key": {"_id": 1}}) == [
        Privilege(ns("d.c"), frozenset({"enableSharding"}))]
    assert only("balancerStop", "admin", {"balancerStop": 1}) == [
        Privilege(ns("config.settings"), frozenset({"update"}))]
    assert only("getMore", "d", {"getMore": Int64(5), "collection": "c"}) == []
    assert len(required_privileges("create", "d", {"create": "c"})) == 2  # createCollection|insert


# ---------------------------------------------------------------------------------- check()


def user_with(store: AuthManager, *roles: RoleName, db: str = "admin") -> Connection:
    name = f"u{uuid.uuid4().hex[:8]}"
    store.create_user(db, name, "pw", list(roles))
    conn = new_conn()
    conn.user = (name, db)
    return conn


def test_check_requires_authentication() -> None:
    store = make_store()
    with pytest.raises(CommandError) as info:
        run(store, "test", {"find": "c"})
    assert (info.value.code, info.value.errmsg) == (13, "command find requires authentication")
    # Commands registered no_auth go through.
    assert run(store, "admin", {"connectionStatus": 1})["authInfo"]["authenticatedUsers"] == []


def test_check_denial_message_quotes_the_command() -> None:
    store = make_store()
    conn = user_with(store, RoleName("read", "test"))
    assert allowed(store, conn, "test", {"find": "c", "filter": {}})
    body = {"insert": "c", "ordered": True, "documents": [{"_id": 1}],
            "lsid": {"id": Binary(uuid.UUID(int=1).bytes, 4)}}
    with pytest.raises(CommandError) as info:
        store.check(make_ctx(store, "test", body, conn), "insert")
    assert info.value.code == 13 and info.value.code_name == "Unauthorized"
    assert info.value.errmsg == (
        'not authorized on test to execute command { insert: "c", ordered: true, '
        'documents: [ { _id: 1 } ], lsid: { id: UUID("00000000-0000-0000-0000-000000000001") }, '
        '$db: "test" }')


def test_check_is_off_without_auth() -> None:
    store = make_store(auth=False)
    assert run(store, "test", {"usersInfo": 1}) == {"users": []}
    store.check(make_ctx(store, "admin", {"shutdown": 1}), "shutdown")


def test_check_matrix() -> None:
    store = make_store()
    rw = user_with(store, RoleName("readWrite", "test"))
    assert allowed(store, rw, "test", {"insert": "c"})
    assert allowed(store, rw, "test", {"aggregate": "c", "pipeline": [{"$changeStream": {}}]})
    assert allowed(store, rw, "test", {"aggregate": 1, "pipeline": [{"$changeStream": {}}]})
    assert not allowed(store, rw, "admin", {"aggregate": 1, "pipeline": [
        {"$changeStream": {"allChangesForCluster": True}}]})
    assert allowed(store, rw, "test", {"aggregate": "c", "pipeline": [{"$out": "x"}]})
    assert not allowed(store, rw, "test", {"aggregate": "c", "pipeline": [
        {"$out": {"db": "other", "coll": "x"}}]})
    assert allowed(store, rw, "admin", {"renameCollection": "test.a", "to": "test.b"})
    assert not allowed(store, rw, "admin", {"renameCollection": "test.a", "to": "other.b"})
    assert not allowed(store, rw, "test", {"dropDatabase": 1})
    assert allowed(store, rw, "test", {"getMore": Int64(1), "collection": "c"})
    assert not allowed(store, rw, "admin", {"serverStatus": 1})

    sync_source = user_with(store, RoleName("backup", "admin"),
                            RoleName("clusterMonitor", "admin"),
                            RoleName("readAnyDatabase", "admin"))
    for body in ({"serverStatus": 1}, {"replSetGetStatus": 1}, {"appendOplogNote": 1},
                 {"setUserWriteBlockMode": 1, "global": True}, {"listDatabases": 1},
                 {"find": "system.version"},
                 {"aggregate": 1, "pipeline": [{"$changeStream": {"allChangesForCluster": True}}]}):
        assert allowed(store, sync_source, "admin", body), body
    assert not allowed(store, sync_source, "test", {"insert": "c"})
    assert not store.can_bypass_write_blocking(sync_source)

    store.create_role("admin", "inserter", [Privilege(ns("test.c"), frozenset({"insert"}))], [])
    custom_insert = user_with(store, RoleName("inserter", "admin"))
    assert allowed(store, custom_insert, "test", {"create": "c"})  # insert suffices
    assert not allowed(store, custom_insert, "test", {"create": "d"})

    root = login(store, "root", "rootpw")
    assert allowed(store, root, "config", {"find": "settings"})
    assert allowed(store, root, "test", {"configureFailPoint": "failCommand"})
    assert allowed(store, root, "admin", {"balancerStart": 1})


def test_registered_action_override() -> None:
    name = "_authTestOverride"

    @command(name, action="setParameter", admin_only=True)
    def handler(ctx: Context) -> dict[str, Any]:
        return {}

    try:
        store = make_store()
        monitor = user_with(store, RoleName("clusterMonitor", "admin"))
        host_manager = user_with(store, RoleName("hostManager", "admin"))
        assert not allowed(store, monitor, "admin", {name: 1})
        assert allowed(store, host_manager, "admin", {name: 1})
    finally:
        del REGISTRY[name]


def test_users_info_on_self_needs_no_privilege() -> None:
    store = make_store()
    conn = user_with(store, RoleName("read", "test"), db="test")
    me, _ = conn.user or ("", "")
    assert allowed(store, conn, "test", {"usersInfo": me})
    assert allowed(store, conn, "admin", {"usersInfo": {"user": me, "db": "test"}})
    assert not allowed(store, conn, "test", {"usersInfo": 1})
    assert not allowed(store, conn, "test", {"usersInfo": "root"})


def test_can_bypass_write_blocking() -> None:
    store = make_store()
    assert not store.can_bypass_write_blocking(new_conn())
    assert store.can_bypass_write_blocking(user_with(store, RoleName("restore", "admin")))
    assert store.can_bypass_write_blocking(login(store, "root", "rootpw"))
    assert not store.can_bypass_write_blocking(user_with(store, RoleName("backup", "admin")))
    assert not store.can_bypass_write_blocking(user_with(store, RoleName("readWrite", "x")))
    # Without auth every client holds every privilege, bypassWriteBlockingMode included,
    # whether it authenticated or not (SERVER-67545).
    off = make_store(auth=False)
    assert off.can_bypass_write_blocking(new_conn())
    assert off.can_bypass_write_blocking(user_with(off, RoleName("read", "x")))


# ---------------------------------------------------------------------------------- commands


def test_create_user_and_users_info() -> None:
    store = make_store(auth=False)
    password = "correct horse battery"  # spaces never occur in base64 key material
    assert run(store, "test", {"createUser": "app", "pwd": password, "roles": [
        "readWrite", {"role": "read", "db": "other"}], "customData": {"team": "x"}}) == {}
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createUser": "app", "pwd": "pw", "roles": []})
    assert (info.value.code, info.value.errmsg) == (51003, 'User "app@test" already exists')

    users = run(store, "test", {"usersInfo": 1})["users"]
    assert len(users) == 1
    user = users[0]
    assert list(user) == ["_id", "userId", "user", "db", "roles", "customData", "mechanisms"]
    assert user["_id"] == "test.app" and user["userId"].subtype == 4
    assert user["roles"] == [{"role": "readWrite", "db": "test"}, {"role": "read", "db": "other"}]
    assert user["mechanisms"] == [SCRAM_SHA_1, SCRAM_SHA_256]
    assert user["customData"] == {"team": "x"}

    for query in ("app", {"user": "app", "db": "test"}, ["app", "ghost"]):
        assert [u["user"] for u in run(store, "test", {"usersInfo": query})["users"]] == ["app"]
    assert run(store, "test", {"usersInfo": "ghost"}) == {"users": []}
    assert run(store, "other", {"usersInfo": 1}) == {"users": []}
    assert [u["_id"] for u in run(store, "admin", {"usersInfo": {"forAllDBs": True}})[
        "users"]] == ["test.app"]

    shown = run(store, "test", {"usersInfo": "app", "showCredentials": True,
                                "showPrivileges": True})["users"][0]
    assert set(shown["credentials"]) == {SCRAM_SHA_1, SCRAM_SHA_256}
    assert set(shown["credentials"][SCRAM_SHA_256]) == {
        "iterationCount", "salt", "storedKey", "serverKey"}
    assert {"role": "read", "db": "other"} in shown["inheritedRoles"]
    assert any(p["resource"] == {"db": "test", "collection": ""} and "insert" in p["actions"]
               for p in shown["inheritedPrivileges"])
    # The stored form never holds the password.
    stored = store.user_documents()
    assert stored[0]["_id"] == "test.app" and password not in repr(stored)


def test_create_user_validation() -> None:
    store = make_store(auth=False)
    cases = [
        ({"createUser": "x", "pwd": "pw", "roles": ["nosuch"]}, 31,
         "Could not find role: nosuch@test"),
        ({"createUser": "x", "pwd": "pw", "roles": [{"role": "root", "db": "test"}]}, 31,
         "Could not find role: root@test"),
        ({"createUser": "x", "pwd": "pw"}, 40414,
         "BSON field 'createUser.roles' is missing but a required field"),
        ({"createUser": "x", "roles": []}, 2, None),
        ({"createUser": "x", "pwd": "", "roles": []}, 2, None),
        ({"createUser": "x", "pwd": "pw", "roles": [], "mechanisms": ["PLAIN"]}, 2, None),
        ({"createUser": 5, "pwd": "pw", "roles": []}, 14, None),
        ({"createUser": "x", "pwd": "pw", "roles": [5]}, 2, None),
    ]
    for body, code, message in cases:
        with pytest.raises(CommandError) as info:
            run(store, "test", body)
        assert info.value.code == code, body
        if message is not None:
            assert info.value.errmsg == message
    assert run(store, "test", {"usersInfo": 1}) == {"users": []}


def test_update_drop_and_grant_users() -> None:
    store = make_store(auth=False)
    run(store, "test", {"createUser": "app", "pwd": "pw", "roles": []})
    for body in ({"updateUser": "ghost", "pwd": "x"}, {"dropUser": "ghost"},
                 {"grantRolesToUser": "ghost", "roles": ["read"]}):
        with pytest.raises(CommandError) as info:
            run(store, "test", body)
        assert (info.value.code, info.value.errmsg) == (
            11, 'Could not find user "ghost" for db "test"')
    with pytest.raises(CommandError) as info:
        run(store, "test", {"updateUser": "app"})
    assert info.value.code == 2

    run(store, "test", {"grantRolesToUser": "app", "roles": ["read", "dbAdmin"]})
    run(store, "test", {"revokeRolesFromUser": "app", "roles": ["read"]})
    run(store, "test", {"updateUser": "app", "customData": {"k": 1}, "mechanisms": [SCRAM_SHA_256]})
    user = run(store, "test", {"usersInfo": "app"})["users"][0]
    assert user["roles"] == [{"role": "dbAdmin", "db": "test"}]
    assert user["mechanisms"] == [SCRAM_SHA_256] and user["customData"] == {"k": 1}
    with pytest.raises(CommandError):  # cannot add a mechanism without a password
        run(store, "test", {"updateUser": "app", "mechanisms": [SCRAM_SHA_1]})

    run(store, "test", {"createUser": "two", "pwd": "pw", "roles": []})
    run(store, "other", {"createUser": "three", "pwd": "pw", "roles": []})
    assert run(store, "test", {"dropUser": "app"}) == {}
    assert run(store, "test", {"dropAllUsersFromDatabase": 1}) == {"n": 1}
    assert [u["_id"] for u in store.user_documents()] == ["other.three"]


def test_role_commands() -> None:
    store = make_store(auth=False)
    privilege = {"resource": {"db": "test", "collection": "c"}, "actions": ["find", "insert"]}
    assert run(store, "test", {"createRole": "app", "privileges": [privilege],
                               "roles": ["read"]}) == {}
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createRole": "app", "privileges": [], "roles": []})
    assert (info.value.code, info.value.errmsg) == (51002, 'Role "app@test" already exists')
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createRole": "x", "privileges": [], "roles": ["ghost"]})
    assert (info.value.code, info.value.errmsg) == (31, "Could not find role: ghost@test")
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createRole": "read", "privileges": [], "roles": []})
    assert info.value.code == 2
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createRole": "x", "roles": [], "privileges": [
            {"resource": {"db": "test", "collection": "c"}, "actions": ["fly"]}]})
    assert info.value.code == 2 and "fly" in info.value.errmsg

    role = run(store, "test", {"rolesInfo": "app", "showPrivileges": True})["roles"][0]
    assert role["isBuiltin"] is False and role["roles"] == [{"role": "read", "db": "test"}]
    assert role["privileges"] == [privilege]
    assert role["inheritedRoles"] == [{"role": "read", "db": "test"}]

    run(store, "test", {"grantPrivilegesToRole": "app", "privileges": [
        {"resource": {"db": "test", "collection": "c"}, "actions": ["remove"]}]})
    run(store, "test", {"revokePrivilegesFromRole": "app", "privileges": [
        {"resource": {"db": "test", "collection": "c"}, "actions": ["find"]}]})
    run(store, "test", {"createRole": "base", "privileges": [], "roles": []})
    run(store, "test", {"grantRolesToRole": "app", "roles": ["base"]})
    run(store, "test", {"revokeRolesFromRole": "app", "roles": ["read"]})
    role = run(store, "test", {"rolesInfo": {"role": "app", "db": "test"},
                               "showPrivileges": True})["roles"][0]
    assert role["privileges"] == [{"resource": {"db": "test", "collection": "c"},
                                   "actions": ["insert", "remove"]}]
    assert role["roles"] == [{"role": "base", "db": "test"}]

    run(store, "test", {"updateRole": "app", "roles": [], "privileges": []})
    assert run(store, "test", {"rolesInfo": "app", "showPrivileges": True})["roles"][0][
        "privileges"] == []

    names = [r["role"] for r in run(store, "test", {"rolesInfo": 1})["roles"]]
    assert names == ["app", "base"]
    with_builtin = [r["role"] for r in run(store, "test", {"rolesInfo": 1,
                                                            "showBuiltinRoles": True})["roles"]]
    assert {"read", "readWrite", "dbAdmin", "dbOwner", "userAdmin"} <= set(with_builtin)
    assert "root" not in with_builtin
    builtin = run(store, "admin", {"rolesInfo": "root"})["roles"][0]
    assert builtin["isBuiltin"] is True
    assert run(store, "test", {"rolesInfo": "root"}) == {"roles": []}

    run(store, "test", {"createUser": "holder", "pwd": "pw", "roles": ["app"]})
    assert run(store, "test", {"dropRole": "app"}) == {}
    assert run(store, "test", {"usersInfo": "holder"})["users"][0]["roles"] == []
    with pytest.raises(CommandError) as info:
        run(store, "test", {"dropRole": "app"})
    assert (info.value.code, info.value.errmsg) == (31, "Could not find role: app@test")
    assert run(store, "test", {"dropAllRolesFromDatabase": 1}) == {"n": 1}
    assert store.role_documents() == []


def test_seeded_root_can_manage_users_with_auth_on() -> None:
    store = make_store()
    root = login(store, "root", "rootpw")
    run(store, "test", {"createUser": "reader", "pwd": "pw", "roles": ["read"]}, root)
    reader = login(store, "reader", "pw", "test")
    with pytest.raises(CommandError) as info:
        run(store, "test", {"createUser": "x", "pwd": "pw", "roles": []}, reader)
    assert info.value.code == 13
    with pytest.raises(CommandError) as info:
        run(store, "test", {"grantRolesToUser": "reader", "roles": ["readWrite"]}, reader)
    assert info.value.code == 13
    assert [u["user"] for u in run(store, "test", {"usersInfo": "reader"}, reader)[
        "users"]] == ["reader"]


# ---------------------------------------------------------------------------------- rendering


def test_render_bson() -> None:
    oid = ObjectId("0123456789abcdef01234567")
    assert render_bson({"a": 1, "b": 1.0, "c": Int64(7), "d": None, "e": [], "f": {},
                        "g": "q\"s", "h": False, "i": oid, "j": Timestamp(5, 6),
                        "k": Binary(b"\x01\x02", 0), "l": [1, "x"]}) == (
        '{ a: 1, b: 1.0, c: 7, d: null, e: [], f: {}, g: "q\\"s", h: false, '
        "i: ObjectId('0123456789abcdef01234567'), j: Timestamp(5, 6), k: BinData(0, 0102), "
        'l: [ 1, "x" ] }')
