"""Namespace filters (spec §13): matching, always-excluded namespaces and rename decisions."""

from __future__ import annotations

import itertools
import re
import string
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pymongosync.namespaces import (
    FilterRule,
    NamespaceFilter,
    collection_name_problem,
    compile_regex,
    database_name_problem,
    is_always_excluded,
    is_reserved_database,
    is_system_collection,
    regex_flags,
)
from pymongosync.request import StartRequest


def make_filter(
    include: list[dict[str, Any]] | None = None, exclude: list[dict[str, Any]] | None = None
) -> NamespaceFilter:
    """A filter built the way the engine builds it: from a validated /start body."""
    body: dict[str, Any] = {"source": "cluster0", "destination": "cluster1"}
    if include is not None:
        body["includeNamespaces"] = include
    if exclude is not None:
        body["excludeNamespaces"] = exclude
    return StartRequest.from_document(body).namespace_filter()


RESERVED_DATABASES = [
    "admin",
    "config",
    "local",
    "mongosync_reserved_for_internal_use",
    "__mdb_internal_mongosync",
    "__mdb_internal_mongosync_verifier_src",
    "__mdb_internalanything",
    "mongosync_reserved_for_verification_src_metadata",
    "mongosync_reserved_for_verification_dst_metadata",
]


def test_a_database_named_like_beta_metadata_is_a_user_database() -> None:
    # Only the beta --migrationName (which pymongosync does not have) names its metadata so.
    assert not is_reserved_database("mongosync_internal_mymigration")


# -- always-excluded namespaces --------------------------------------------------------------------


@pytest.mark.parametrize("db", RESERVED_DATABASES)
def test_reserved_databases_are_never_included(db: str) -> None:
    assert is_reserved_database(db)
    for namespace_filter in (
        make_filter(),
        make_filter(include=[{"databaseRegex": {"pattern": ".*"}}]),
    ):
        assert not namespace_filter.includes(db, "coll")
        assert not namespace_filter.includes_database(db)
        assert not namespace_filter.whole_database_included(db)


@pytest.mark.parametrize(
    "db",
    [
        "app",
        "administrator",
        "configs",
        "locals",
        "mdb_internal",
        "mongosync",
        "mongosync_reserved",
        "_mdb_internal",
    ],
)
def test_lookalike_user_databases_are_not_reserved(db: str) -> None:
    assert not is_reserved_database(db)
    assert make_filter().includes(db, "coll")


@pytest.mark.parametrize(
    "coll", ["system.views", "system.js", "system.profile", "system.buckets.x"]
)
def test_system_collections_are_never_included(coll: str) -> None:
    assert is_system_collection(coll)
    assert is_always_excluded("app", coll)
    assert not make_filter().includes("app", coll)
    assert not make_filter(
        include=[{"database": "app", "collectionsRegex": {"pattern": "."}}]
    ).includes("app", coll)


def test_collections_merely_containing_system_are_user_collections() -> None:
    namespace_filter = make_filter()
    assert namespace_filter.includes("app", "systems")
    assert namespace_filter.includes("app", "my.system.views")


# -- semantics (spec §13.2) ------------------------------------------------------------------------


def test_no_filter_includes_everything_else() -> None:
    namespace_filter = make_filter()
    assert namespace_filter.includes("app", "users")
    assert namespace_filter.includes_database("app")
    assert namespace_filter.whole_database_included("app")


def test_include_database_selects_it_whole() -> None:
    namespace_filter = make_filter(include=[{"database": "sales"}])
    assert namespace_filter.includes("sales", "anything")
    assert not namespace_filter.includes("marketing", "anything")
    assert namespace_filter.whole_database_included("sales")
    assert not namespace_filter.includes_database("marketing")


def test_naming_collections_implicitly_excludes_the_others() -> None:
    namespace_filter = make_filter(
        include=[{"database": "sales", "collections": ["orders", "items"]}]
    )
    assert namespace_filter.includes("sales", "orders")
    assert namespace_filter.includes("sales", "items")
    assert not namespace_filter.includes("sales", "customers")
    assert namespace_filter.includes_database("sales")
    assert not namespace_filter.whole_database_included("sales")


def test_collections_and_collections_regex_in_one_entry_are_a_union() -> None:
    namespace_filter = make_filter(
        include=[
            {
                "database": "sales",
                "collections": ["orders"],
                "collectionsRegex": {"pattern": "^acc"},
            }
        ]
    )
    assert namespace_filter.includes("sales", "orders")
    assert namespace_filter.includes("sales", "accounts")
    assert not namespace_filter.includes("sales", "items")


def test_spec_example_filter() -> None:
    namespace_filter = make_filter(
        include=[
            {"database": "sales", "collectionsRegex": {"pattern": "^accounts_.+$", "options": "i"}},
            {"database": "marketing"},
        ]
    )
    assert namespace_filter.includes("sales", "accounts_eu")
    assert namespace_filter.includes("sales", "ACCOUNTS_us")
    assert not namespace_filter.includes("sales", "accounts_")
    assert not namespace_filter.includes("sales", "orders")
    assert namespace_filter.includes("marketing", "campaigns")
    assert not namespace_filter.includes("hr", "people")


def test_regexes_match_anywhere_like_dollar_regex() -> None:
    namespace_filter = make_filter(include=[{"databaseRegex": {"pattern": "prod"}}])
    assert namespace_filter.includes("eu_prod_1", "c")
    assert not namespace_filter.includes("staging", "c")
    anchored = make_filter(include=[{"databaseRegex": {"pattern": "^prod$"}}])
    assert anchored.includes("prod", "c")
    assert not anchored.includes("prod2", "c")


def test_database_regex_does_not_reach_reserved_databases() -> None:
    namespace_filter = make_filter(include=[{"databaseRegex": {"pattern": "^(admin|app)$"}}])
    assert namespace_filter.includes("app", "c")
    assert not namespace_filter.includes("admin", "c")


def test_exclude_only() -> None:
    namespace_filter = make_filter(
        exclude=[{"database": "logs"}, {"database": "app", "collections": ["tmp"]}]
    )
    assert namespace_filter.includes("app", "users")
    assert not namespace_filter.includes("app", "tmp")
    assert not namespace_filter.includes("logs", "anything")
    assert namespace_filter.includes("other", "x")
    assert not namespace_filter.includes_database("logs")
    assert namespace_filter.includes_database("app")
    assert not namespace_filter.whole_database_included("app")
    assert namespace_filter.whole_database_included("other")


def test_include_then_exclude() -> None:
    namespace_filter = make_filter(
        include=[{"databaseRegex": {"pattern": "^shop"}}],
        exclude=[
            {"database": "shop_eu", "collectionsRegex": {"pattern": "^cache_"}},
            {"database": "shop_test"},
        ],
    )
    assert namespace_filter.includes("shop_eu", "orders")
    assert not namespace_filter.includes("shop_eu", "cache_pages")
    assert not namespace_filter.includes("shop_test", "orders")
    assert not namespace_filter.includes("warehouse", "orders")
    assert namespace_filter.includes_database("shop_eu")
    assert not namespace_filter.includes_database("shop_test")
    assert namespace_filter.whole_database_included("shop_us")
    assert not namespace_filter.whole_database_included("shop_eu")


def test_database_included_through_collection_regex_only_could_match() -> None:
    namespace_filter = make_filter(
        include=[{"database": "app", "collectionsRegex": {"pattern": "^never$"}}]
    )
    assert namespace_filter.includes_database("app")
    assert not namespace_filter.whole_database_included("app")


def test_filter_rule_requires_exactly_one_database_selector() -> None:
    with pytest.raises(ValueError):
        FilterRule()
    with pytest.raises(ValueError):
        FilterRule(database="a", database_regex=re.compile("a"))


def test_default_filter_has_no_rules() -> None:
    assert NamespaceFilter().includes("app", "c")
    assert NamespaceFilter(exclude=[FilterRule(database="app")]).includes("other", "c")
    assert not NamespaceFilter(exclude=[FilterRule(database="app")]).includes("app", "c")


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a.b",
        "a/b",
        "a\\b",
        "a b",
        'a"b',
        "a$b",
        "a\x00b",
        "x" * 64,
        "admin",
        "local",
        "config",
        "__mdb_internal_x",
    ],
)
def test_invalid_filter_database_names(name: str) -> None:
    assert database_name_problem(name)


@pytest.mark.parametrize("name", ["app", "x" * 63, "Sales-2024", "ünïcode"])
def test_valid_filter_database_names(name: str) -> None:
    assert database_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "a$b", "a\x00b", "system.views"])
def test_invalid_filter_collection_names(name: str) -> None:
    assert collection_name_problem(name)


@pytest.mark.parametrize("name", ["users", "a.b", "system", "systems.x"])
def test_valid_filter_collection_names(name: str) -> None:
    assert collection_name_problem(name) is None


# -- regex options (hypothesis) --------------------------------------------------------------------

OPTION_LETTERS = "imsx"
options_strategy = st.lists(st.sampled_from(OPTION_LETTERS), max_size=6).map("".join)
names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20
)


@given(options_strategy)
def test_any_combination_of_option_letters_is_accepted(options: str) -> None:
    expected = 0
    for letter in set(options):
        expected |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}[letter]
    assert regex_flags(options) == expected
    compile_regex("^a.b$", options)


@given(st.permutations(OPTION_LETTERS), st.integers(min_value=0, max_value=4))
def test_option_order_does_not_matter(letters: list[str], count: int) -> None:
    chosen = letters[:count]
    flags = {regex_flags("".join(order)) for order in itertools.permutations(chosen)}
    assert len(flags) == 1


@given(st.text(min_size=1, max_size=5).filter(lambda s: any(c not in OPTION_LETTERS for c in s)))
def test_unknown_option_letters_are_rejected(options: str) -> None:
    with pytest.raises(ValueError, match="regex option"):
        regex_flags(options)


ascii_names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=20)


@given(ascii_names, options_strategy)
def test_i_option_makes_matching_case_insensitive(name: str, options: str) -> None:
    pattern = {"pattern": "^" + re.escape(name.upper()) + "$"}
    insensitive = make_filter(
        include=[{"database": "db", "collectionsRegex": {**pattern, "options": options + "i"}}]
    )
    assert insensitive.includes("db", name)
    assert insensitive.includes("db", name.lower())
    sensitive_options = options.replace("i", "")
    sensitive = make_filter(
        include=[{"database": "db", "collectionsRegex": {**pattern, "options": sensitive_options}}]
    )
    assert sensitive.includes("db", name) == (name == name.upper())


@given(names)
def test_s_option_lets_dot_match_newlines(prefix: str) -> None:
    name = prefix + "\nend"
    with_s = make_filter(
        include=[{"database": "db", "collectionsRegex": {"pattern": "^.*end$", "options": "s"}}]
    )
    without_s = make_filter(
        include=[{"database": "db", "collectionsRegex": {"pattern": "^.*end$"}}]
    )
    assert with_s.includes("db", name) == (not is_system_collection(name))
    assert not without_s.includes("db", name)


def test_m_option_anchors_at_line_boundaries() -> None:
    with_m = make_filter(
        include=[{"database": "db", "collectionsRegex": {"pattern": "^b$", "options": "m"}}]
    )
    without_m = make_filter(include=[{"database": "db", "collectionsRegex": {"pattern": "^b$"}}])
    assert with_m.includes("db", "a\nb")
    assert not without_m.includes("db", "a\nb")


def test_x_option_ignores_pattern_whitespace_and_comments() -> None:
    with_x = make_filter(
        include=[
            {"database": "db", "collectionsRegex": {"pattern": "^ab  c # comment", "options": "x"}}
        ]
    )
    assert with_x.includes("db", "abc")
    without_x = make_filter(include=[{"database": "db", "collectionsRegex": {"pattern": "^ab  c"}}])
    assert not without_x.includes("db", "abc")


@given(names, names)
def test_literal_names_match_exactly(name: str, other: str) -> None:
    assume(collection_name_problem(name) is None)
    namespace_filter = make_filter(include=[{"database": "db", "collections": [name]}])
    assert namespace_filter.includes("db", name)
    assert namespace_filter.includes("db", other) == (other == name)


# -- renames (spec §13.3) --------------------------------------------------------------------------

LISTED = [{"database": "app", "collections": ["orders", "orders_v2"]}]
WHOLE_APP = [{"database": "app"}]
WHOLE_APP_AND_ARCHIVE = [{"database": "app"}, {"database": "archive"}]
APP_AND_LISTED_REPORTS = [{"database": "app"}, {"database": "reports", "collections": ["daily"]}]


@pytest.mark.parametrize(
    ("include", "exclude", "rename", "expected"),
    [
        # Neither name synced: nothing to do on the destination.
        (LISTED, None, ("other", "a", "other", "b"), "ignore"),
        (LISTED, None, ("app", "tmp", "app", "tmp2"), "ignore"),
        # Within a database: allowed when the whole database is included ...
        (WHOLE_APP, None, ("app", "orders", "app", "orders_old"), "apply"),
        (None, None, ("app", "orders", "app", "orders_old"), "apply"),
        # ... or when both old and new names are listed.
        (LISTED, None, ("app", "orders", "app", "orders_v2"), "apply"),
        (
            [{"database": "app", "collectionsRegex": {"pattern": "^orders"}}],
            None,
            ("app", "orders", "app", "orders_2024"),
            "apply",
        ),
        # Within a database with an exclude carve-out, between two names still synced.
        (None, [{"database": "app", "collections": ["tmp"]}], ("app", "a", "app", "b"), "apply"),
        # Renaming a listed collection to an unlisted name stops the sync.
        (LISTED, None, ("app", "orders", "app", "orders_old"), "fatal"),
        (LISTED, None, ("app", "orders", "other", "orders"), "fatal"),
        # A collection synced through its whole database that moves out of the filter leaves it,
        # like a drop (a listed collection may be dropped; a whole-db one simply stops matching).
        (
            None,
            [{"database": "app", "collections": ["trash"]}],
            ("app", "orders", "app", "trash"),
            "drop-source",
        ),
        (WHOLE_APP, None, ("app", "orders", "other", "orders"), "drop-source"),
        (None, [{"database": "archive"}], ("app", "orders", "archive", "orders"), "drop-source"),
        # Across databases: allowed only if the whole target database is included.
        (WHOLE_APP_AND_ARCHIVE, None, ("app", "orders", "archive", "orders"), "apply"),
        (None, None, ("app", "orders", "archive", "orders"), "apply"),
        (APP_AND_LISTED_REPORTS, None, ("app", "daily_tmp", "reports", "daily"), "fatal"),
        (
            [{"database": "app", "collections": ["orders"]}, {"database": "archive"}],
            None,
            ("app", "orders", "archive", "orders"),
            "apply",
        ),
        # From an excluded name to an included one: the target must now be copied ...
        (WHOLE_APP, None, ("other", "orders", "app", "orders"), "create-target"),
        (
            None,
            [{"database": "app", "collections": ["staging"]}],
            ("app", "staging", "app", "orders"),
            "create-target",
        ),
        (None, [{"database": "staging"}], ("staging", "orders", "app", "orders"), "create-target"),
        # ... but only where the whole target database is included: a name that is only listed
        # cannot pick up a collection arriving from outside the filter (e.g. `$out` onto it).
        (LISTED, None, ("app", "tmp_agg_out", "app", "orders"), "fatal"),
        (LISTED, None, ("other", "orders", "app", "orders"), "fatal"),
        # Reserved databases and system collections are outside every filter.
        (None, None, ("app", "orders", "admin", "orders"), "drop-source"),
        (None, None, ("local", "orders", "app", "orders"), "create-target"),
        (None, None, ("admin", "a", "config", "b"), "ignore"),
        (LISTED, None, ("app", "orders", "app", "system.orders"), "fatal"),
    ],
)
def test_rename_action(
    include: list[dict[str, Any]] | None,
    exclude: list[dict[str, Any]] | None,
    rename: tuple[str, str, str, str],
    expected: str,
) -> None:
    assert make_filter(include=include, exclude=exclude).rename_action(*rename) == expected


@given(
    st.sampled_from(["app", "other", "archive"]),
    st.sampled_from(["orders", "orders_v2", "tmp"]),
    st.sampled_from(["app", "other", "archive"]),
    st.sampled_from(["orders", "orders_v2", "tmp"]),
    st.sampled_from([None, LISTED, WHOLE_APP, WHOLE_APP_AND_ARCHIVE]),
)
def test_rename_action_agrees_with_inclusion(
    from_db: str, from_coll: str, to_db: str, to_coll: str, include: list[dict[str, Any]] | None
) -> None:
    namespace_filter = make_filter(include=include)
    action = namespace_filter.rename_action(from_db, from_coll, to_db, to_coll)
    source_in = namespace_filter.includes(from_db, from_coll)
    target_in = namespace_filter.includes(to_db, to_coll)
    allowed = {
        (False, False): {"ignore"},
        (True, False): {"drop-source", "fatal"},
        (False, True): {"create-target", "fatal"},
        (True, True): {"apply", "fatal"},
    }[(source_in, target_in)]
    assert action in allowed
