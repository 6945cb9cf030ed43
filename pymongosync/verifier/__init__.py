"""Proving the destination equals the source: the comparison core, the verifier embedded in
a migration, and ``mongosync verify``."""
