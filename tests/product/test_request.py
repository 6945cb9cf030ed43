"""The /start body (spec §3.3): parsing, every documented invalid combination, derived settings,
cluster checks and persistence."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from pymongosync.request import InvalidStartRequest, StartRequest

BASE: dict[str, Any] = {"source": "cluster0", "destination": "cluster1"}
SHARDING: dict[str, Any] = {
    "createSupportingIndexes": True,
    "shardingEntries": [
        {
            "database": "accounts",
            "collection": "us_east",
            "shardCollection": {"key": [{"location": 1}, {"region": 1}]},
        }
    ],
}


def parse(**fields: Any) -> StartRequest:
    return StartRequest.from_document({**BASE, **fields})


def rejected(body: Any) -> InvalidStartRequest:
    with pytest.raises(InvalidStartRequest) as info:
        StartRequest.from_document(body)
    return info.value


def rejected_with(**fields: Any) -> InvalidStartRequest:
    return rejected({**BASE, **fields})


# -- the spec's example bodies ---------------------------------------------------------------------

SPEC_EXAMPLES = [
    {"source": "cluster0", "destination": "cluster1"},
    {"source": "cluster0", "destination": "cluster1", "reversible": True},
    {
        "source": "cluster0",
        "destination": "cluster1",
        "includeNamespaces": [
            {"database": "sales", "collectionsRegex": {"pattern": "^accounts_.+$", "options": "i"}},
            {"database": "marketing"},
        ],
    },
    {"source": "cluster0", "destination": "cluster1", "sharding": SHARDING},
    {"source": "cluster0", "destination": "cluster1", "verification": {"enabled": False}},
    {"source": "cluster0", "destination": "cluster1", "copyInNaturalOrder": [{"database": "."}]},
]


@pytest.mark.parametrize("body", SPEC_EXAMPLES)
def test_spec_examples_are_accepted_and_round_trip(body: dict[str, Any]) -> None:
    request = StartRequest.from_document(body)
    document = request.to_document()
    assert StartRequest.from_document(document) == request
    assert StartRequest.from_document(document).to_document() == document
    # Plain JSON-compatible data, ready for the metadata store.
    assert json.loads(json.dumps(document)) == document
    for key, value in body.items():
        assert document[key] == value or key == "verification"


def test_defaults() -> None:
    request = parse()
    assert request.source == "cluster0"
    assert request.destination == "cluster1"
    assert request.buildIndexes == "afterDataCopy"
    assert request.detectRandomId is True
    assert request.includeNamespaces is None
    assert request.excludeNamespaces is None
    assert request.copyInNaturalOrder is None
    assert request.preExistingDestinationData is False
    assert request.reversible is False
    assert request.sharding is None
    assert request.skipDiskSpaceCheck is False
    assert request.verification.enabled is True
    assert request.enableUserWriteBlocking is None
    assert request.has_namespace_filter is False


def test_explicit_defaults_describe_the_same_migration() -> None:
    explicit = parse(
        buildIndexes="afterDataCopy",
        detectRandomId=True,
        preExistingDestinationData=False,
        reversible=False,
        skipDiskSpaceCheck=False,
        verification={"enabled": True},
    )
    assert explicit == parse()
    assert parse(verification={}) == parse()


def test_the_other_direction() -> None:
    request = StartRequest.from_document({"source": "cluster1", "destination": "cluster0"})
    assert (request.source, request.destination) == ("cluster1", "cluster0")


def test_to_document_uses_exactly_the_spec_field_names() -> None:
    body = {
        **BASE,
        "buildIndexes": "never",
        "detectRandomId": False,
        "includeNamespaces": [
            {"database": "a", "collections": ["x"], "collectionsRegex": {"pattern": "^y"}},
            {"databaseRegex": {"pattern": "^b", "options": "i"}},
        ],
        "excludeNamespaces": [{"database": "a", "collections": ["z"]}],
        "copyInNaturalOrder": [{"database": "a", "collections": ["x"]}],
        "preExistingDestinationData": True,
        "skipDiskSpaceCheck": True,
        "sharding": {
            "createSupportingIndexes": False,
            "shardingEntries": [
                {"database": "a", "collection": "x", "shardCollection": {"key": [{"k": "hashed"}]}}
            ],
        },
        "verification": {"enabled": False},
        "enableUserWriteBlocking": "none",
    }
    document = StartRequest.from_document(body).to_document()
    assert document == {
        **body,
        "reversible": False,
        "includeNamespaces": [
            {
                "database": "a",
                "collections": ["x"],
                "collectionsRegex": {"pattern": "^y", "options": ""},
            },
            {"databaseRegex": {"pattern": "^b", "options": "i"}},
        ],
    }


def test_request_is_immutable() -> None:
    request = parse()
    with pytest.raises(ValidationError):
        request.reversible = True


def test_null_optional_fields_mean_absent() -> None:
    request = parse(
        includeNamespaces=None,
        excludeNamespaces=None,
        sharding=None,
        copyInNaturalOrder=None,
        enableUserWriteBlocking=None,
    )
    assert request == parse()
    assert "includeNamespaces" not in request.to_document()


def test_envelope() -> None:
    error = rejected_with(reversible="yes")
    assert error.field == "reversible"
    assert error.to_envelope() == {
        "success": False,
        "error": "InvalidRequest",
        "errorDescription": 'reversible: must be a boolean (true or false), got "yes"',
    }
    assert str(error) == error.to_envelope()["errorDescription"]


# -- shape and types -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], "start", 1, True])
def test_body_must_be_an_object(body: Any) -> None:
    assert rejected(body).field == "body"


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_source_and_destination_are_required(missing: str) -> None:
    body = dict(BASE)
    del body[missing]
    error = rejected(body)
    assert error.field == missing
    assert "is required" in error.message and "cluster0" in error.message


@pytest.mark.parametrize("value", ["cluster2", "Cluster0", "", 0, None])
def test_cluster_labels(value: Any) -> None:
    assert rejected_with(source=value).field == "source"
    assert rejected_with(destination=value).field == "destination"


@pytest.mark.parametrize("label", ["cluster0", "cluster1"])
def test_source_and_destination_must_differ(label: str) -> None:
    error = rejected({"source": label, "destination": label})
    assert error.field == "destination"
    assert "must differ" in error.message


@pytest.mark.parametrize(
    "name",
    [
        "namespaceRemap",
        "documentFilter",
        "destinationDataHandling",
        "build_indexes",
        "buildindexes",
        "BuildIndexes",
        "enableUserWriteblocking",
        "unknown",
    ],
)
def test_unknown_fields_are_rejected(name: str) -> None:
    error = rejected_with(**{name: "afterDataCopy"})
    assert error.field == name
    assert "not a recognised parameter" in error.message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("verification.extra", {"verification": {"enabled": True, "extra": 1}}),
        (
            "sharding.createSupportingIndex",
            {"sharding": {"shardingEntries": [], "createSupportingIndex": True}},
        ),
        (
            "includeNamespaces[0].collection",
            {"includeNamespaces": [{"database": "a", "collection": "b"}]},
        ),
        (
            "includeNamespaces[0].databaseRegex.flags",
            {"includeNamespaces": [{"databaseRegex": {"pattern": "a", "flags": "i"}}]},
        ),
        (
            "sharding.shardingEntries[0].key",
            {
                "sharding": {
                    "shardingEntries": [
                        {
                            "database": "a",
                            "collection": "b",
                            "key": [{"x": 1}],
                            "shardCollection": {"key": [{"x": 1}]},
                        }
                    ]
                }
            },
        ),
        (
            "copyInNaturalOrder[0].collection",
            {"copyInNaturalOrder": [{"database": "a", "collection": "b"}]},
        ),
    ],
)
def test_unknown_nested_fields_are_rejected(path: str, body: dict[str, Any]) -> None:
    assert rejected_with(**body).field == path


@pytest.mark.parametrize(
    "field", ["detectRandomId", "preExistingDestinationData", "reversible", "skipDiskSpaceCheck"]
)
@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}])
def test_boolean_fields_reject_other_types(field: str, value: Any) -> None:
    error = rejected_with(**{field: value})
    assert error.field == field
    assert "boolean" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("buildIndexes", True),
        ("buildIndexes", "AfterDataCopy"),
        ("buildIndexes", "always"),
        ("includeNamespaces", {"database": "a"}),
        ("includeNamespaces", "a"),
        ("excludeNamespaces", {"database": "a"}),
        ("copyInNaturalOrder", "."),
        ("sharding", []),
        ("sharding", True),
        ("verification", False),
        ("verification", {"enabled": "false"}),
        ("enableUserWriteBlocking", 1),
        ("enableUserWriteBlocking", "both"),
        ("enableUserWriteBlocking", "true"),
    ],
)
def test_wrong_types_are_rejected(field: str, value: Any) -> None:
    assert rejected_with(**{field: value}).field.startswith(field)


@pytest.mark.parametrize(
    "value", ["afterDataCopy", "beforeDataCopy", "excludeHashed", "excludeHashedAfterCopy", "never"]
)
def test_build_indexes_values(value: str) -> None:
    assert parse(buildIndexes=value).buildIndexes == value


def test_build_index_error_lists_the_choices() -> None:
    message = rejected_with(buildIndexes="always").message
    for value in (
        "afterDataCopy",
        "beforeDataCopy",
        "excludeHashed",
        "excludeHashedAfterCopy",
        "never",
    ):
        assert f'"{value}"' in message


@pytest.mark.parametrize(
    ("value", "before", "hashed", "none"),
    [
        ("afterDataCopy", False, False, False),
        ("beforeDataCopy", True, False, False),
        ("excludeHashed", True, True, False),
        ("excludeHashedAfterCopy", False, True, False),
        ("never", False, False, True),
    ],
)
def test_index_build_properties(value: str, before: bool, hashed: bool, none: bool) -> None:
    request = parse(buildIndexes=value)
    assert request.builds_indexes_before_copy is before
    assert request.skips_hashed_indexes is hashed
    assert request.builds_no_indexes is none


# -- namespace filters -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["includeNamespaces", "excludeNamespaces"])
@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        ({}, "[0].database", '"database" or "databaseRegex"'),
        ({"collections": ["a"]}, "[0].database", '"database" or "databaseRegex"'),
        ({"database": "a", "databaseRegex": {"pattern": "a"}}, "[0].databaseRegex", "not both"),
        ({"database": ""}, "[0].database", "empty"),
        ({"database": "a.b"}, "[0].database", "not a valid database name"),
        ({"database": "a b"}, "[0].database", "not a valid database name"),
        ({"database": "a$"}, "[0].database", "not a valid database name"),
        ({"database": "x" * 64}, "[0].database", "longer than 63"),
        ({"database": "admin"}, "[0].database", "system database"),
        ({"database": "config"}, "[0].database", "system database"),
        ({"database": "local"}, "[0].database", "system database"),
        ({"database": "__mdb_internal_mongosync"}, "[0].database", "reserved"),
        ({"database": "mongosync_reserved_for_internal_use"}, "[0].database", "reserved"),
        (
            {"database": "mongosync_reserved_for_verification_src_metadata"},
            "[0].database",
            "reserved",
        ),
        ({"database": "a", "collections": []}, "[0].collections", "empty"),
        ({"database": "a", "collections": [""]}, "[0].collections[0]", "empty"),
        (
            {"database": "a", "collections": ["x", "system.views"]},
            "[0].collections[1]",
            "system collection",
        ),
        (
            {"database": "a", "collections": ["x", "a$b"]},
            "[0].collections[1]",
            "not a valid collection name",
        ),
        ({"database": "a", "collections": ["x", "y", "x"]}, "[0].collections[2]", "listed twice"),
        ({"database": "a", "collections": "x"}, "[0].collections", "must be an array"),
        ({"database": "a", "collections": [1]}, "[0].collections[0]", "must be a string"),
        ({"database": 5}, "[0].database", "must be a string"),
        ({"databaseRegex": "^a"}, "[0].databaseRegex", "must be a document"),
        ({"databaseRegex": {}}, "[0].databaseRegex.pattern", "is required"),
        ({"databaseRegex": {"pattern": ""}}, "[0].databaseRegex.pattern", "empty"),
        ({"databaseRegex": {"pattern": "("}}, "[0].databaseRegex.pattern", "does not compile"),
        ({"databaseRegex": {"pattern": "a", "options": "g"}}, "[0].databaseRegex.options", "'g'"),
        (
            {"databaseRegex": {"pattern": "a", "options": "u"}},
            "[0].databaseRegex.options",
            "i, m, s and x",
        ),
        (
            {"databaseRegex": {"pattern": "a", "options": 1}},
            "[0].databaseRegex.options",
            "must be a string",
        ),
        (
            {"database": "a", "collectionsRegex": {"pattern": "[a-"}},
            "[0].collectionsRegex.pattern",
            "does not compile",
        ),
        (
            {"database": "a", "collectionsRegex": {"pattern": "a", "options": "I"}},
            "[0].collectionsRegex.options",
            "'I'",
        ),
    ],
)
def test_invalid_filter_entries(field: str, entry: dict[str, Any], path: str, words: str) -> None:
    error = rejected_with(**{field: [entry]})
    assert error.field == field + path
    assert words in error.message


@pytest.mark.parametrize("field", ["includeNamespaces", "excludeNamespaces"])
def test_filter_lists_must_not_be_empty(field: str) -> None:
    error = rejected_with(**{field: []})
    assert error.field == field
    assert f"leave {field} out" in error.message


@pytest.mark.parametrize("field", ["includeNamespaces", "excludeNamespaces"])
@pytest.mark.parametrize(
    "entries",
    [
        [{"database": "a"}, {"database": "a"}],
        [
            {"database": "a", "collections": ["x"]},
            {"database": "b"},
            {"database": "a", "collections": ["y"]},
        ],
        [
            {"databaseRegex": {"pattern": "^a"}},
            {"databaseRegex": {"pattern": "^a"}, "collections": ["x"]},
        ],
    ],
)
def test_one_entry_per_database(field: str, entries: list[dict[str, Any]]) -> None:
    error = rejected_with(**{field: entries})
    assert error.field == f"{field}[{len(entries) - 1}]"
    assert "merge" in error.message


def test_same_regex_with_different_options_is_a_different_database_selector() -> None:
    parse(
        includeNamespaces=[
            {"databaseRegex": {"pattern": "^a"}},
            {"databaseRegex": {"pattern": "^a", "options": "i"}},
        ]
    )


def test_exclude_identical_to_include_is_rejected() -> None:
    entry = {"database": "a", "collections": ["x"]}
    error = rejected_with(includeNamespaces=[{"database": "b"}, entry], excludeNamespaces=[entry])
    assert error.field == "excludeNamespaces[0]"
    assert "includeNamespaces[1]" in error.message


def test_excluding_a_whole_included_database_is_rejected() -> None:
    error = rejected_with(
        includeNamespaces=[{"database": "a", "collections": ["x"]}],
        excludeNamespaces=[{"database": "a"}],
    )
    assert error.field == "excludeNamespaces[0]"
    assert "remove one" in error.message


def test_include_with_narrower_exclude_is_fine() -> None:
    request = parse(
        includeNamespaces=[{"database": "a"}],
        excludeNamespaces=[{"database": "a", "collections": ["tmp"]}],
    )
    namespace_filter = request.namespace_filter()
    assert namespace_filter.includes("a", "x")
    assert not namespace_filter.includes("a", "tmp")


def test_regex_options_are_kept_as_given() -> None:
    request = parse(includeNamespaces=[{"databaseRegex": {"pattern": "^a", "options": "xsi"}}])
    assert request.to_document()["includeNamespaces"] == [
        {"databaseRegex": {"pattern": "^a", "options": "xsi"}}
    ]


@given(st.lists(st.sampled_from("imsx"), max_size=5).map("".join))
def test_any_option_combination_is_accepted(options: str) -> None:
    request = parse(
        excludeNamespaces=[
            {"database": "a", "collectionsRegex": {"pattern": "^t", "options": options}}
        ]
    )
    assert not request.namespace_filter().includes("a", "tmp")


@given(st.text(min_size=1, max_size=4).filter(lambda s: set(s) - set("imsx")))
def test_any_other_option_letter_is_rejected(options: str) -> None:
    error = rejected_with(
        includeNamespaces=[{"databaseRegex": {"pattern": "a", "options": options}}]
    )
    assert error.field == "includeNamespaces[0].databaseRegex.options"


# -- documented invalid combinations ---------------------------------------------------------------


def test_never_with_reversible() -> None:
    error = rejected_with(buildIndexes="never", reversible=True)
    assert error.field == "reversible"
    assert "never" in error.message


@pytest.mark.parametrize(
    "build", ["afterDataCopy", "beforeDataCopy", "excludeHashed", "excludeHashedAfterCopy"]
)
def test_reversible_with_other_index_modes(build: str) -> None:
    assert parse(buildIndexes=build, reversible=True).reversible


@pytest.mark.parametrize(
    "filters",
    [
        {"includeNamespaces": [{"database": "a"}]},
        {"excludeNamespaces": [{"database": "a"}]},
        {
            "includeNamespaces": [{"database": "a"}],
            "excludeNamespaces": [{"database": "a", "collections": ["b"]}],
        },
    ],
)
def test_reversible_with_filters(filters: dict[str, Any]) -> None:
    error = rejected_with(reversible=True, **filters)
    assert error.field == "reversible"
    assert "filtered" in error.message


def test_reversible_with_pre_existing_destination_data() -> None:
    error = rejected_with(
        reversible=True, preExistingDestinationData=True, includeNamespaces=[{"database": "a"}]
    )
    assert error.field == "reversible"
    error = rejected_with(reversible=True, preExistingDestinationData=True)
    assert error.field == "reversible"


def test_reversible_with_sharding() -> None:
    error = rejected_with(reversible=True, sharding=SHARDING)
    assert error.field == "reversible"
    assert "replica set to sharded" in error.message


def test_pre_existing_destination_data_needs_a_filter() -> None:
    error = rejected_with(preExistingDestinationData=True)
    assert error.field == "preExistingDestinationData"
    assert "includeNamespaces" in error.message


@pytest.mark.parametrize(
    "filters",
    [
        {"includeNamespaces": [{"database": "a"}]},
        {"excludeNamespaces": [{"database": "a"}]},
    ],
)
def test_pre_existing_destination_data_with_a_filter(filters: dict[str, Any]) -> None:
    assert parse(preExistingDestinationData=True, **filters).preExistingDestinationData


def test_sharding_without_sharding_entries() -> None:
    error = rejected_with(sharding={"createSupportingIndexes": True})
    assert error.field == "sharding.shardingEntries"
    assert '"shardingEntries": []' in error.message


def test_sharding_with_empty_entries_shards_nothing() -> None:
    request = parse(sharding={"shardingEntries": []})
    assert request.sharding is not None
    assert request.sharding.shardingEntries == []
    assert request.sharding.createSupportingIndexes is False


def _entry(**overrides: Any) -> dict[str, Any]:
    return {"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1}]}, **overrides}


@pytest.mark.parametrize(
    "key",
    [
        [{"x": 1}],
        [{"x": "hashed"}],
        [{"x": 1}, {"y": 1}],
        [{"x": "hashed"}, {"y": 1}],
        [{"x": 1}, {"y": "hashed"}],
        [{"a.b": 1}],
    ],
)
def test_valid_shard_keys(key: list[dict[str, Any]]) -> None:
    request = parse(sharding={"shardingEntries": [_entry(shardCollection={"key": key})]})
    assert request.sharding is not None
    assert request.sharding.shardingEntries[0].shardCollection.key == key


@pytest.mark.parametrize(
    ("key", "path", "words"),
    [
        ([], "key", "at least one field"),
        ([{}], "key[0]", "exactly one field"),
        ([{"x": 1, "y": 1}], "key[0]", "exactly one field"),
        ([{"x": -1}], "key[0]", 'must be 1 or "hashed"'),
        ([{"x": 1.0}], "key[0]", 'must be 1 or "hashed"'),
        ([{"x": True}], "key[0]", 'must be 1 or "hashed"'),
        ([{"x": "1"}], "key[0]", 'must be 1 or "hashed"'),
        ([{"x": "Hashed"}], "key[0]", 'must be 1 or "hashed"'),
        ([{"x": 1}, {"x": "hashed"}], "key[1]", "appears twice"),
        ([{"x": "hashed"}, {"y": "hashed"}], "key", "at most one hashed"),
        ([{"$x": 1}], "key[0]", "not a valid shard key field"),
        ([{"": 1}], "key[0]", "not a valid shard key field"),
        ({"x": 1}, "key", "must be an array"),
        ([["x", 1]], "key[0]", "must be a document"),
    ],
)
def test_invalid_shard_keys(key: Any, path: str, words: str) -> None:
    error = rejected_with(
        sharding={
            "shardingEntries": [_entry(), _entry(collection="c", shardCollection={"key": key})]
        }
    )
    assert error.field == f"sharding.shardingEntries[1].shardCollection.{path}"
    assert words in error.message


@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        (_entry(database="admin"), "database", "system database"),
        (_entry(database="__mdb_internal_x"), "database", "reserved"),
        (_entry(database="a.b"), "database", "not a valid database name"),
        (_entry(collection="system.views"), "collection", "system collection"),
        (_entry(collection=""), "collection", "empty"),
        ({"collection": "b", "shardCollection": {"key": [{"x": 1}]}}, "database", "is required"),
        ({"database": "a", "shardCollection": {"key": [{"x": 1}]}}, "collection", "is required"),
        ({"database": "a", "collection": "b"}, "shardCollection", "is required"),
        (_entry(shardCollection={}), "shardCollection.key", "is required"),
    ],
)
def test_invalid_sharding_entries(entry: dict[str, Any], path: str, words: str) -> None:
    error = rejected_with(sharding={"shardingEntries": [entry]})
    assert error.field == f"sharding.shardingEntries[0].{path}"
    assert words in error.message


def test_duplicated_sharding_entries() -> None:
    error = rejected_with(
        sharding={
            "shardingEntries": [
                _entry(),
                _entry(collection="c"),
                _entry(shardCollection={"key": [{"y": 1}]}),
            ]
        }
    )
    assert error.field == "sharding.shardingEntries[2]"
    assert "listed twice" in error.message


def test_sharding_entries_must_be_inside_the_filter() -> None:
    error = rejected_with(
        includeNamespaces=[{"database": "a", "collections": ["x"]}],
        sharding={"shardingEntries": [_entry(collection="x"), _entry(collection="y")]},
    )
    assert error.field == "sharding.shardingEntries[1]"
    assert "a.y" in error.message
    parse(excludeNamespaces=[{"database": "z"}], sharding={"shardingEntries": [_entry()]})


# -- legacy fields (spec §0.3) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "stored"),
    [
        (True, "sourceAndDestination"),
        (False, "none"),
        ("sourceAndDestination", "sourceAndDestination"),
        ("destinationOnly", "destinationOnly"),
        ("none", "none"),
    ],
)
def test_enable_user_write_blocking_is_accepted_and_normalised(
    given_value: Any, stored: str
) -> None:
    request = parse(enableUserWriteBlocking=given_value)
    assert request.enableUserWriteBlocking == stored
    assert request.write_blocking_mode == stored
    assert request.to_document()["enableUserWriteBlocking"] == stored
    assert StartRequest.from_document(request.to_document()) == request


@pytest.mark.parametrize("value", [True, "sourceAndDestination"])
def test_legacy_dual_blocking_is_impossible_with_filters(value: Any) -> None:
    error = rejected_with(enableUserWriteBlocking=value, includeNamespaces=[{"database": "a"}])
    assert error.field == "enableUserWriteBlocking"
    assert "destinationOnly" in error.message


@pytest.mark.parametrize("value", [True, "sourceAndDestination", "destinationOnly"])
def test_legacy_blocking_is_impossible_with_pre_existing_data(value: Any) -> None:
    error = rejected_with(
        enableUserWriteBlocking=value,
        preExistingDestinationData=True,
        excludeNamespaces=[{"database": "a"}],
    )
    assert error.field == "enableUserWriteBlocking"


@pytest.mark.parametrize("value", [False, "none", "destinationOnly"])
def test_legacy_reversible_needs_dual_blocking(value: Any) -> None:
    error = rejected_with(enableUserWriteBlocking=value, reversible=True)
    assert error.field == "enableUserWriteBlocking"
    assert "sourceAndDestination" in error.message
    assert (
        parse(enableUserWriteBlocking=True, reversible=True).write_blocking_mode
        == "sourceAndDestination"
    )


def test_legacy_compatible_combinations() -> None:
    assert (
        parse(
            enableUserWriteBlocking="destinationOnly", includeNamespaces=[{"database": "a"}]
        ).write_blocking_mode
        == "destinationOnly"
    )
    assert (
        parse(
            enableUserWriteBlocking="none", includeNamespaces=[{"database": "a"}]
        ).write_blocking_mode
        == "none"
    )
    assert (
        parse(
            enableUserWriteBlocking=False,
            preExistingDestinationData=True,
            includeNamespaces=[{"database": "a"}],
        ).write_blocking_mode
        == "none"
    )


@pytest.mark.parametrize("value", [0, 12, 3.5, None])
def test_lag_time_seconds_is_accepted_and_ignored(value: Any) -> None:
    request = parse(lagTimeSeconds=value)
    assert request == parse()
    assert "lagTimeSeconds" not in request.to_document()


@pytest.mark.parametrize("value", [-1, "3", True, [], {}, float("inf"), float("nan")])
def test_lag_time_seconds_must_be_a_number(value: Any) -> None:
    error = rejected_with(lagTimeSeconds=value)
    assert error.field == "lagTimeSeconds"


def test_lag_time_seconds_does_not_hide_other_errors() -> None:
    assert rejected_with(lagTimeSeconds=1, reversible=1).field == "reversible"


# -- write blocking by configuration (spec §9.2, 1.20+) --------------------------------------------


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({}, "sourceAndDestination"),
        ({"reversible": True}, "sourceAndDestination"),
        ({"sharding": {"shardingEntries": []}}, "sourceAndDestination"),
        ({"includeNamespaces": [{"database": "a"}]}, "destinationOnly"),
        ({"excludeNamespaces": [{"database": "a"}]}, "destinationOnly"),
        ({"preExistingDestinationData": True, "includeNamespaces": [{"database": "a"}]}, "none"),
        ({"preExistingDestinationData": True, "excludeNamespaces": [{"database": "a"}]}, "none"),
    ],
)
def test_write_blocking_mode(fields: dict[str, Any], mode: str) -> None:
    assert parse(**fields).write_blocking_mode == mode


# -- copyInNaturalOrder ----------------------------------------------------------------------------


def test_copy_in_natural_order_all_databases() -> None:
    request = parse(copyInNaturalOrder=[{"database": "."}])
    assert request.copies_in_natural_order("any", "thing")


def test_copy_in_natural_order_per_database_and_collection() -> None:
    request = parse(
        copyInNaturalOrder=[{"database": "a"}, {"database": "b", "collections": ["x", "y"]}]
    )
    assert request.copies_in_natural_order("a", "anything")
    assert request.copies_in_natural_order("b", "x")
    assert not request.copies_in_natural_order("b", "z")
    assert not request.copies_in_natural_order("c", "x")
    assert not parse().copies_in_natural_order("a", "x")


@pytest.mark.parametrize(
    ("entries", "path", "words"),
    [
        ([], "copyInNaturalOrder", "leave copyInNaturalOrder out"),
        (
            [{"database": ".", "collections": ["x"]}],
            "copyInNaturalOrder[0].collections",
            "all databases",
        ),
        ([{"database": "a"}, {"database": "."}], "copyInNaturalOrder[1]", "every database"),
        (
            [{"database": "a"}, {"database": "a", "collections": ["x"]}],
            "copyInNaturalOrder[1]",
            "merge",
        ),
        ([{"database": "admin"}], "copyInNaturalOrder[0].database", "system database"),
        ([{"database": "a/b"}], "copyInNaturalOrder[0].database", "not a valid database name"),
        ([{"database": "a", "collections": []}], "copyInNaturalOrder[0].collections", "empty"),
        (
            [{"database": "a", "collections": ["x", "x"]}],
            "copyInNaturalOrder[0].collections[1]",
            "twice",
        ),
        (
            [{"database": "a", "collections": ["system.js"]}],
            "copyInNaturalOrder[0].collections[0]",
            "system",
        ),
        ([{"collections": ["x"]}], "copyInNaturalOrder[0].database", "is required"),
        (
            [{"database": "a", "collections": ["x"], "natural": True}],
            "copyInNaturalOrder[0].natural",
            "recognised",
        ),
    ],
)
def test_invalid_copy_in_natural_order(
    entries: list[dict[str, Any]], path: str, words: str
) -> None:
    error = rejected_with(copyInNaturalOrder=entries)
    assert error.field == path
    assert words in error.message


# -- cluster checks --------------------------------------------------------------------------------

RS, SHARDED = False, True
V60, V70, V80 = (6, 0, 24), (7, 0, 18), (8, 0, 5)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        (V60, V70),
        (V60, V80),
        (V70, V70),
        (V70, V80),
        (V80, V80),
        ((7, 0), (8, 0)),
        ((7, 0, 15), (7, 0, 15)),
        ((6, 0, 19), (6, 0, 19)),
    ],
)
def test_supported_version_pairs(source: tuple[int, ...], destination: tuple[int, ...]) -> None:
    parse().check_topology(RS, RS, source, destination)


@pytest.mark.parametrize(
    ("source", "destination", "field", "words"),
    [
        ((5, 0, 29), V70, "source", "5.0.29"),
        ((4, 4, 29), V70, "source", "supported source releases"),
        ((7, 1, 0), V80, "source", "major releases only"),
        ((9, 0, 0), V80, "source", "supported source releases"),
        (V60, (5, 0, 0), "destination", "supported destination releases are 6.0, 7.0 and 8.0"),
        (V70, (8, 2, 0), "destination", "major releases only"),
        (V80, V70, "destination", "same or a newer release"),
    ],
)
def test_unsupported_versions(
    source: tuple[int, ...], destination: tuple[int, ...], field: str, words: str
) -> None:
    with pytest.raises(InvalidStartRequest) as info:
        parse().check_topology(RS, RS, source, destination)
    assert info.value.field == field
    assert words in info.value.message


def test_sharded_to_replica_set_is_allowed_but_not_reversible() -> None:
    parse().check_topology(SHARDED, RS, V70, V70)
    with pytest.raises(InvalidStartRequest) as info:
        parse(reversible=True).check_topology(SHARDED, RS, V70, V70)
    assert info.value.field == "reversible"
    assert "different topologies" in info.value.message


def test_replica_set_to_sharded_requires_sharding() -> None:
    with pytest.raises(InvalidStartRequest) as info:
        parse().check_topology(RS, SHARDED, V70, V70)
    assert info.value.field == "sharding"
    assert "required" in info.value.message
    parse(sharding=SHARDING).check_topology(RS, SHARDED, V70, V80)
    parse(sharding={"shardingEntries": []}).check_topology(RS, SHARDED, V70, V70)


@pytest.mark.parametrize(("source_sharded", "destination_sharded"), [(RS, RS), (SHARDED, SHARDED)])
def test_sharding_is_rejected_for_other_topologies(
    source_sharded: bool, destination_sharded: bool
) -> None:
    with pytest.raises(InvalidStartRequest) as info:
        parse(sharding=SHARDING).check_topology(source_sharded, destination_sharded, V70, V70)
    assert info.value.field == "sharding"
    assert "only accepted" in info.value.message


@pytest.mark.parametrize(("source_sharded", "destination_sharded"), [(RS, RS), (SHARDED, SHARDED)])
@pytest.mark.parametrize("version", [V70, V80])
def test_reversible_same_topology_and_release(
    source_sharded: bool, destination_sharded: bool, version: tuple[int, ...]
) -> None:
    parse(reversible=True).check_topology(source_sharded, destination_sharded, version, version)


def test_reversible_across_topologies() -> None:
    # The only mixed topology that passes the earlier checks is RS -> sharded, which needs
    # `sharding`, which a reversible request already cannot have.
    with pytest.raises(InvalidStartRequest) as info:
        parse(reversible=True).check_topology(RS, SHARDED, V70, V70)
    assert info.value.field == "sharding"


@pytest.mark.parametrize(("source", "destination"), [(V60, V70), (V70, V80), (V60, V80)])
def test_reversible_across_releases(source: tuple[int, ...], destination: tuple[int, ...]) -> None:
    with pytest.raises(InvalidStartRequest) as info:
        parse(reversible=True).check_topology(RS, RS, source, destination)
    assert info.value.field == "reversible"
    assert "different releases" in info.value.message


def test_reversible_between_6_0_clusters_is_accepted() -> None:
    parse(reversible=True).check_topology(RS, RS, V60, V60)


# -- round trips -----------------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
db_names = names.filter(lambda name: name not in ("admin", "config", "local"))
regexes = st.fixed_dictionaries(
    {
        "pattern": st.sampled_from(["^a", "b$", "c.*d", "(x|y)"]),
        "options": st.lists(st.sampled_from("imsx"), max_size=3, unique=True).map("".join),
    }
)


@st.composite
def filter_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    databases = draw(st.lists(db_names, min_size=1, max_size=3, unique=True))
    entries = []
    for database in databases:
        entry: dict[str, Any] = {"database": database}
        if draw(st.booleans()):
            entry["collections"] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            entry["collectionsRegex"] = draw(regexes)
        entries.append(entry)
    if draw(st.booleans()):
        entries.append({"databaseRegex": draw(regexes)})
    return entries


@st.composite
def start_bodies(draw: st.DrawFn) -> dict[str, Any]:
    source = draw(st.sampled_from(["cluster0", "cluster1"]))
    body: dict[str, Any] = {
        "source": source,
        "destination": "cluster1" if source == "cluster0" else "cluster0",
    }
    optional = {
        "buildIndexes": st.sampled_from(
            ["afterDataCopy", "beforeDataCopy", "excludeHashed", "excludeHashedAfterCopy", "never"]
        ),
        "detectRandomId": st.booleans(),
        "skipDiskSpaceCheck": st.booleans(),
        "verification": st.fixed_dictionaries({}, optional={"enabled": st.booleans()}),
        "copyInNaturalOrder": st.just([{"database": "."}])
        | st.lists(
            st.builds(lambda db: {"database": db}, db_names),
            min_size=1,
            max_size=3,
            unique_by=lambda entry: entry["database"],
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    kind = draw(st.sampled_from(["plain", "reversible", "filtered", "preExisting", "sharded"]))
    if kind == "reversible" and body.get("buildIndexes") != "never":
        body["reversible"] = True
    elif kind in ("filtered", "preExisting"):
        body[draw(st.sampled_from(["includeNamespaces", "excludeNamespaces"]))] = draw(
            filter_lists()
        )
        body["preExistingDestinationData"] = kind == "preExisting"
    elif kind == "sharded":
        body["sharding"] = {
            "createSupportingIndexes": draw(st.booleans()),
            "shardingEntries": [
                {
                    "database": db,
                    "collection": "c",
                    "shardCollection": {"key": [{"k": draw(st.sampled_from([1, "hashed"]))}]},
                }
                for db in draw(st.lists(db_names, max_size=3, unique=True))
            ],
        }
    return body


@given(start_bodies())
def test_round_trip(body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    request = StartRequest.from_document(body)
    assert body == original  # parsing does not modify the caller's body
    document = request.to_document()
    again = StartRequest.from_document(json.loads(json.dumps(document)))
    assert again == request
    assert again.to_document() == document
    assert again.write_blocking_mode == request.write_blocking_mode


# -- helpers for the engine ------------------------------------------------------------------------


def test_sharding_keys() -> None:
    request = parse(
        sharding={
            "shardingEntries": [
                _entry(shardCollection={"key": [{"location": 1}, {"region": "hashed"}]}),
                _entry(database="b", collection="c"),
            ]
        }
    )
    keys = request.sharding_keys()
    assert keys == {"a.b": {"location": 1, "region": "hashed"}, "b.c": {"x": 1}}
    assert list(keys["a.b"]) == ["location", "region"]
    assert parse().sharding_keys() == {}
    assert parse(sharding={"shardingEntries": []}).sharding_keys() == {}


def test_reversed() -> None:
    request = parse(
        reversible=True,
        buildIndexes="excludeHashed",
        verification={"enabled": False},
        enableUserWriteBlocking=True,
    )
    back = request.reversed()
    assert (back.source, back.destination) == ("cluster1", "cluster0")
    assert back.to_document() == {
        **request.to_document(),
        "source": "cluster1",
        "destination": "cluster0",
    }
    assert StartRequest.from_document(back.to_document()) == back
    assert back.reversed() == request
    with pytest.raises(ValueError):
        parse().reversed()
