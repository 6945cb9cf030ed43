"""Conformance runner for MongoDB's unified-format specification tests, judging the server.

``python -m mongoemu.spectest DIR [DIR...]`` runs the JSON spec files in each directory through
PyMongo against an emulator (started on demand) or a given URI and prints per-suite counts.
``run_suites`` does the same for pytest and returns the :class:`Report`.
"""

from mongoemu.spectest.runner import CaseResult, Report, SuiteReport, run_suites

__all__ = ["CaseResult", "Report", "SuiteReport", "run_suites"]
