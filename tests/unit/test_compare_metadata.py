"""Comparing collections' metadata (pymongosync.verifier.compare.compare_metadata)."""

from __future__ import annotations

from typing import Any

from pymongosync.state import NamespaceKind, NamespaceRecord
from pymongosync.verifier.compare import MismatchKind, compare_metadata


def record(options: dict[str, Any]) -> NamespaceRecord:
    return NamespaceRecord(_id="shop.orders", db="shop", name="orders",
                           kind=NamespaceKind.COLLECTION, options=options,
                           indexes=[{"v": 2, "key": {"_id": 1}, "name": "_id_"}])


def test_options_differ_but_temp_does_not_count() -> None:
    # The destination creates a copy of a temporary collection as a lasting one.
    assert compare_metadata([record({"temp": True, "validator": {"a": 1}})],
                            [record({"validator": {"a": 1}})]) == []
    [mismatch] = compare_metadata([record({"validator": {"a": 1}})],
                                  [record({"validator": {"a": 2}})])
    assert mismatch.kind == MismatchKind.OPTION and mismatch.namespace == "shop.orders"
