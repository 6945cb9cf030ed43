"""SCRAM authentication and authorization as a real MongoClient meets them."""

from __future__ import annotations

import pymongo
import pytest
from pymongo.errors import OperationFailure, WriteError

from mongoemu.testing import EmulatorProcess, start_emulator


@pytest.fixture(scope="module")
def secured() -> EmulatorProcess:
    with start_emulator(extra_args=["--auth", "--user", "root", "--password", "s3cret"]) as e:
        yield e


def client_for(emulator: EmulatorProcess, user: str | None = None, password: str | None = None,
               **options: object) -> pymongo.MongoClient:
    credentials = {"username": user, "password": password} if user else {}
    return pymongo.MongoClient(emulator.uri, serverSelectionTimeoutMS=5000, **credentials,
                               **options)


def test_unauthenticated_clients_only_get_the_handshake(secured: EmulatorProcess) -> None:
    with client_for(secured) as anonymous:
        assert anonymous.admin.command("ping")["ok"] == 1.0
        with pytest.raises(OperationFailure) as info:
            anonymous.app.c.find_one()
        assert info.value.code == 13


def test_wrong_password_fails(secured: EmulatorProcess) -> None:
    with client_for(secured, "root", "wrong") as client:
        with pytest.raises(OperationFailure) as info:
            client.admin.command("listDatabases")
        assert info.value.code == 18


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_root_authenticates_and_manages_users(secured: EmulatorProcess, mechanism: str) -> None:
    with client_for(secured, "root", "s3cret", authMechanism=mechanism) as root:
        assert "admin" in root.list_database_names()
        root.app.c.insert_one({"x": 1})
        info = root.admin.command("connectionStatus")["authInfo"]
        assert info["authenticatedUsers"] == [{"user": "root", "db": "admin"}]


def test_roles_and_write_blocking_bypass(secured: EmulatorProcess) -> None:
    with client_for(secured, "root", "s3cret") as root:
        root.admin.command("createUser", "reader", pwd="r", roles=[{"role": "read", "db": "app"}])
        root.admin.command("createUser", "writer", pwd="w",
                           roles=[{"role": "readWrite", "db": "app"}])
        root.admin.command("createUser", "syncer", pwd="y",
                           roles=["restore", "clusterMonitor", "readWriteAnyDatabase"])
        root.app.items.insert_one({"n": 1})
    with client_for(secured, "reader", "r", authSource="admin") as reader:
        assert reader.app.items.count_documents({}) == 1
        with pytest.raises(OperationFailure) as denied:
            reader.app.items.insert_one({"n": 2})
        assert denied.value.code == 13
    with client_for(secured, "root", "s3cret") as root:
        root.admin.command("setUserWriteBlockMode", 1, **{"global": True})
        try:
            with client_for(secured, "writer", "w", authSource="admin") as writer:
                with pytest.raises(WriteError) as blocked:
                    writer.app.items.insert_one({"n": 3})
                assert blocked.value.code == 371
                with pytest.raises(OperationFailure):
                    writer.admin.command("setUserWriteBlockMode", 1, **{"global": False})
            with client_for(secured, "syncer", "y", authSource="admin") as syncer:
                syncer.app.items.insert_one({"n": 4})  # restore holds bypassWriteBlockingMode
        finally:
            root.admin.command("setUserWriteBlockMode", 1, **{"global": False})
        assert root.app.items.count_documents({}) == 2
