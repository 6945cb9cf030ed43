"""Tests of restarting a migration from scratch (a package, so that this directory's
conftest is not imported as the top-level ``conftest`` module tests/product imports from)."""
