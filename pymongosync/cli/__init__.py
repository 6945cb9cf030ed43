"""The ``mongosync`` command line: the process, ``status`` and ``reset``."""

from pymongosync.cli.main import main

__all__ = ["main"]
