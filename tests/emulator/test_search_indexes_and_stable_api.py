"""Atlas Search index commands answered as a non-Atlas server answers them, and the Stable API
parameters (apiVersion, apiStrict, apiDeprecationErrors) checked as MongoDB checks them."""

from __future__ import annotations

from typing import Iterator

import pymongo
import pytest
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel
from pymongo.server_api import ServerApi

from mongoemu.testing import EmulatorProcess, start_emulator

ATLAS_80 = ("Using Atlas Search Database Commands and the $listSearchIndexes aggregation stage "
            "requires additional configuration.")


@pytest.fixture(scope="module")
def client70(replset: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(replset.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


@pytest.fixture(scope="module")
def server80() -> Iterator[EmulatorProcess]:
    with start_emulator("replset", server_version="8.0") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client80(server80: EmulatorProcess) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(server80.uri, serverSelectionTimeoutMS=5000) as client:
        yield client


def _search_calls(collection: pymongo.collection.Collection) -> dict[str, object]:
    model = SearchIndexModel({"mappings": {"dynamic": True}}, name="s")
    return {
        "createSearchIndexes": lambda: collection.create_search_indexes([model]),
        "updateSearchIndex": lambda: collection.update_search_index("s", {}),
        "dropSearchIndex": lambda: collection.drop_search_index("s"),
        "$listSearchIndexes": lambda: list(collection.list_search_indexes()),
    }


def test_search_index_commands_on_70(client70: pymongo.MongoClient) -> None:
    collection = client70.search_tests.c  # missing collection: the refusal comes first
    for name, call in _search_calls(collection).items():
        with pytest.raises(OperationFailure) as info:
            call()  # type: ignore[operator]
        if name == "$listSearchIndexes":
            assert info.value.code == 6047401
            assert str(info.value.details["errmsg"]) == ("$listSearchIndexes stage is only "
                                                         "allowed on MongoDB Atlas")
        else:
            assert (info.value.code, info.value.details["codeName"]) == (115, "CommandNotSupported")
            assert info.value.details["errmsg"] == "Search index commands are only supported with Atlas."


def test_search_index_commands_on_80(client80: pymongo.MongoClient) -> None:
    client80.search_tests.c.insert_one({})
    for call in _search_calls(client80.search_tests.c).values():
        with pytest.raises(OperationFailure) as info:
            call()  # type: ignore[operator]
        assert (info.value.code, info.value.details["codeName"]) == (31082, "SearchNotEnabled")
        assert info.value.details["errmsg"].startswith(ATLAS_80)
    client80.drop_database("search_tests")


def _error(client: pymongo.MongoClient, command: dict) -> tuple[int, str]:
    with pytest.raises(OperationFailure) as info:
        client.api_tests.command(command)
    return info.value.code, str(info.value.details["errmsg"])


def test_api_parameters_are_validated(client70: pymongo.MongoClient) -> None:
    assert _error(client70, {"ping": 1, "apiVersion": "server_will_never_support_this"}) == (
        322, 'API version must be "1"')
    assert _error(client70, {"ping": 1, "apiVersion": "2"}) == (322, "Cannot accept API version 2")
    assert _error(client70, {"ping": 1, "apiStrict": True})[0] == 4886600
    assert _error(client70, {"ping": 1, "apiDeprecationErrors": False})[0] == 4886600
    assert _error(client70, {"ping": 1, "apiVersion": 1}) == (
        14, "BSON field 'apiVersion' is the wrong type 'int', expected type 'string'")
    assert _error(client70, {"ping": 1, "apiVersion": "1", "apiStrict": "true"})[0] == 14
    ok = client70.api_tests.command({"ping": 1, "apiVersion": "1", "apiStrict": True,
                                     "apiDeprecationErrors": True})
    assert ok["ok"] == 1.0


def test_strict_clients_may_only_use_version_1(replset: EmulatorProcess) -> None:
    with pymongo.MongoClient(replset.uri, server_api=ServerApi("1", strict=True),
                             serverSelectionTimeoutMS=5000) as strict:
        strict.api_tests.c.insert_one({"_id": 1})
        assert strict.api_tests.c.find_one() == {"_id": 1}
        assert strict.api_tests.c.count_documents({}) == 1
        with pytest.raises(OperationFailure) as info:
            strict.api_tests.c.distinct("_id")
        assert (info.value.code, info.value.details["codeName"]) == (323, "APIStrictError")
        assert info.value.details["errmsg"].startswith(
            "Provided apiStrict:true, but the command distinct is not in API Version 1.")
        with pytest.raises(OperationFailure) as info:
            strict.api_tests.command("testVersion2")
        assert "command testVersion2 is not in API Version 1" in info.value.details["errmsg"]
        strict.drop_database("api_tests")
    with pymongo.MongoClient(replset.uri, server_api=ServerApi("1", deprecation_errors=True),
                             serverSelectionTimeoutMS=5000) as lenient:
        # Test commands echo the API parameters; this one is deprecated in version 2 only.
        reply = lenient.api_tests.command("testDeprecationInVersion2")
        assert (reply["apiVersion"], reply["apiDeprecationErrors"]) == ("1", True)
        assert lenient.api_tests.command("testVersion2")["apiVersion"] == "1"
